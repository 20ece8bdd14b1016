//! `SideClient`: requests the mirror makes on its own behalf (a HEAD to check a cached tag),
//! over pingora-core's connector: the same HTTP and TLS stack as proxied requests.

use http::header::HeaderName;
use http::{HeaderValue, Method};
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::protocols::http::client::HttpSession;

use super::{Origin, Resolver};
use crate::config::UpstreamConfig;

/// Why a side request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum SideError {
    #[error(transparent)]
    Resolve(#[from] super::ResolveError),
    #[error("{0}")]
    Http(String),
}

/// What the mirror's own requests say they are.
pub const USER_AGENT: &str = concat!("pullthrough/", env!("CARGO_PKG_VERSION"));

/// Makes side requests.
pub struct SideClient {
    connector: Connector,
}

impl Default for SideClient {
    fn default() -> Self {
        SideClient::new()
    }
}

impl SideClient {
    pub fn new() -> SideClient {
        SideClient {
            connector: Connector::new(None),
        }
    }

    /// `HEAD origin+path` with the given request headers; returns the response header.
    pub async fn head(
        &self,
        resolver: &Resolver,
        timeouts: &UpstreamConfig,
        origin: &Origin,
        path: &str,
        headers: &[(HeaderName, &HeaderValue)],
    ) -> Result<ResponseHeader, SideError> {
        // Not returned to the pool: side requests are rare (a stale tag, an access check).
        let session = deadline(
            timeouts,
            self.send(resolver, timeouts, Method::HEAD, origin, path, headers),
        )
        .await??;
        response_header(&session)
    }

    /// `GET origin+path`; returns the response header and at most `limit` bytes of body.
    pub async fn get(
        &self,
        resolver: &Resolver,
        timeouts: &UpstreamConfig,
        origin: &Origin,
        path: &str,
        headers: &[(HeaderName, &HeaderValue)],
        limit: usize,
    ) -> Result<(ResponseHeader, Vec<u8>), SideError> {
        deadline(timeouts, async {
            let mut session = self
                .send(resolver, timeouts, Method::GET, origin, path, headers)
                .await?;
            let resp = response_header(&session)?;
            let mut body = Vec::new();
            while let Some(chunk) = session.read_response_body().await.map_err(http_error)? {
                if body.len() + chunk.len() > limit {
                    return Err(SideError::Http(format!("response body over {limit} bytes")));
                }
                body.extend_from_slice(&chunk);
            }
            Ok((resp, body))
        })
        .await?
    }

    async fn send(
        &self,
        resolver: &Resolver,
        timeouts: &UpstreamConfig,
        method: Method,
        origin: &Origin,
        path: &str,
        headers: &[(HeaderName, &HeaderValue)],
    ) -> Result<HttpSession, SideError> {
        let addr = resolver.resolve(&origin.host, origin.port).await?;
        let mut peer = HttpPeer::new(addr, origin.tls, origin.sni().to_owned());
        peer.options.connection_timeout = Some(timeouts.connect_timeout);
        peer.options.total_connection_timeout = Some(timeouts.connect_timeout);
        peer.options.read_timeout = Some(timeouts.read_timeout);
        peer.options.write_timeout = Some(timeouts.read_timeout);
        let (mut session, _reused) = self
            .connector
            .get_http_session(&peer)
            .await
            .map_err(http_error)?;
        let mut req = RequestHeader::build(method, path.as_bytes(), Some(headers.len() + 1))
            .map_err(http_error)?;
        req.insert_header(http::header::HOST, origin.authority())
            .map_err(http_error)?;
        req.insert_header(http::header::USER_AGENT, USER_AGENT)
            .map_err(http_error)?;
        for (name, value) in headers {
            req.append_header(name.clone(), (*value).clone())
                .map_err(http_error)?;
        }
        session
            .write_request_header(Box::new(req))
            .await
            .map_err(http_error)?;
        session.finish_request_body().await.map_err(http_error)?;
        session.read_response_header().await.map_err(http_error)?;
        Ok(session)
    }
}

/// Runs a whole side request under one deadline (connect plus one read timeout): a server
/// that trickles its answer cannot hold a probe, and the requests waiting on it, for long.
async fn deadline<T>(
    timeouts: &UpstreamConfig,
    request: impl std::future::Future<Output = T>,
) -> Result<T, SideError> {
    let limit = timeouts.connect_timeout + timeouts.read_timeout;
    tokio::time::timeout(limit, request)
        .await
        .map_err(|_| SideError::Http(format!("no complete answer within {limit:?}")))
}

fn response_header(session: &HttpSession) -> Result<ResponseHeader, SideError> {
    let resp = session.response_header().cloned();
    resp.ok_or_else(|| SideError::Http("no response header".into()))
}

fn http_error(e: Box<pingora::Error>) -> SideError {
    SideError::Http(e.to_string())
}
