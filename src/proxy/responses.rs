//! Responses the mirror writes itself: the `/` redirect, health, and registry JSON errors.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

use crate::cache::access::PRIVATE_MARK;
use crate::cache::inventory::SOURCE_HEADER;
use crate::cache::verify::DIGEST_HEADER;
use crate::registry::{Challenge, ErrorCode, RegistryError};

use super::plan::Canned;

/// Sent on every response the mirror makes itself, as registries do.
const API_VERSION: (&str, &str) = ("Docker-Distribution-Api-Version", "registry/2.0");

/// Writes a canned response; returns its status.
pub async fn send(session: &mut Session, canned: &Canned) -> Result<u16> {
    match canned {
        Canned::RedirectToV2 => {
            let mut resp = ResponseHeader::build(301, Some(2))?;
            resp.insert_header("Location", "/v2/")?;
            resp.insert_header("X-Cache-Status", "bypass")?;
            resp.insert_header("Content-Length", "0")?;
            session.write_response_header(Box::new(resp), true).await?;
            Ok(301)
        }
        Canned::ApiVersion => {
            write(
                session,
                200,
                "application/json",
                Bytes::from_static(b"{}"),
                &[],
            )
            .await?;
            Ok(200)
        }
        Canned::Healthy => {
            write(session, 200, "text/plain", Bytes::from_static(b"ok\n"), &[]).await?;
            Ok(200)
        }
        Canned::Error(e) => {
            send_error(session, e).await?;
            Ok(e.status)
        }
        Canned::Challenge { realm, service } => {
            let mut params = vec![("realm".to_owned(), realm.clone())];
            if let Some(service) = service {
                params.push(("service".to_owned(), service.clone()));
            }
            let challenge = Challenge {
                scheme: "Bearer".to_owned(),
                params,
            }
            .to_string();
            let e = RegistryError::new(401, ErrorCode::Unauthorized, "authentication required");
            write(
                session,
                401,
                "application/json",
                Bytes::from(e.body()),
                &[("WWW-Authenticate", &challenge)],
            )
            .await?;
            Ok(401)
        }
        Canned::OfflineToken => {
            let body = format!(
                r#"{{"token":"{t}","access_token":"{t}","expires_in":300}}"#,
                t = super::offline::OFFLINE_TOKEN
            );
            write(session, 200, "application/json", Bytes::from(body), &[]).await?;
            Ok(200)
        }
        Canned::TagHead(head) => {
            let mut resp = ResponseHeader::build(200, Some(5))?;
            resp.insert_header("Content-Type", head.media_type.clone())?;
            resp.insert_header("Content-Length", head.length)?;
            resp.insert_header(DIGEST_HEADER, head.digest.to_string())?;
            resp.insert_header(API_VERSION.0, API_VERSION.1)?;
            resp.insert_header("X-Cache-Status", head.served)?;
            if head.served == "stale" {
                resp.insert_header("Warning", "110 - \"Response is Stale\"")?;
            }
            session.write_response_header(Box::new(resp), true).await?;
            Ok(200)
        }
        Canned::TooMany(after) => {
            let e = RegistryError::new(
                429,
                ErrorCode::Toomanyrequests,
                "too many requests from this client",
            );
            let retry_after = after.as_secs().max(1).to_string();
            write(
                session,
                429,
                "application/json",
                Bytes::from(e.body()),
                &[("Retry-After", &retry_after)],
            )
            .await?;
            Ok(429)
        }
    }
}

/// Takes the mirror's internal headers (the private mark, the entry's label) out of a
/// stored response before it goes to a client.
pub fn strip_internal(resp: &mut ResponseHeader) {
    resp.remove_header(PRIVATE_MARK);
    resp.remove_header(SOURCE_HEADER);
}

/// Writes a registry error, unless a response has already started.
pub async fn send_error(session: &mut Session, e: &RegistryError) -> Result<()> {
    if session.response_written().is_some() {
        return Ok(());
    }
    // RFC 9110 section 15.5.6: a 405 says which methods would work.
    let allow: &[(&str, &str)] = if e.status == 405 {
        &[("Allow", "GET, HEAD")]
    } else {
        &[]
    };
    write(
        session,
        e.status,
        "application/json",
        Bytes::from(e.body()),
        allow,
    )
    .await
}

async fn write(
    session: &mut Session,
    status: u16,
    content_type: &str,
    body: Bytes,
    extra: &[(&'static str, &str)],
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(5))?;
    for (name, value) in extra {
        resp.insert_header(*name, *value)?;
    }
    resp.insert_header("Content-Type", content_type)?;
    resp.insert_header("Content-Length", body.len().to_string())?;
    resp.insert_header(API_VERSION.0, API_VERSION.1)?;
    resp.insert_header("X-Cache-Status", "bypass")?;
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}
