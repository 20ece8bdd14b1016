//! `SideClient`: requests the mirror makes on its own behalf (a HEAD to check a cached tag),
//! over pingora-core's connector: the same HTTP and TLS stack as proxied requests.

use http::{HeaderValue, Method};
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;

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
        headers: &[(http::header::HeaderName, &HeaderValue)],
    ) -> Result<ResponseHeader, SideError> {
        let http = |e: Box<pingora::Error>| SideError::Http(e.to_string());
        let addr = resolver.resolve(&origin.host, origin.port).await?;
        let mut peer = HttpPeer::new(addr, origin.tls, origin.sni().to_owned());
        peer.options.connection_timeout = Some(timeouts.connect_timeout);
        peer.options.total_connection_timeout = Some(timeouts.connect_timeout);
        peer.options.read_timeout = Some(timeouts.read_timeout);
        peer.options.write_timeout = Some(timeouts.read_timeout);
        let (mut session, _reused) = self.connector.get_http_session(&peer).await.map_err(http)?;
        let mut req = RequestHeader::build(Method::HEAD, path.as_bytes(), Some(headers.len() + 1))
            .map_err(http)?;
        req.insert_header(http::header::HOST, origin.authority())
            .map_err(http)?;
        for (name, value) in headers {
            req.append_header(name.clone(), (*value).clone())
                .map_err(http)?;
        }
        session
            .write_request_header(Box::new(req))
            .await
            .map_err(http)?;
        session.finish_request_body().await.map_err(http)?;
        session.read_response_header().await.map_err(http)?;
        let resp = session
            .response_header()
            .cloned()
            .ok_or_else(|| SideError::Http("no response header".into()))?;
        // The connection is not returned to the pool: a HEAD is rare enough (once per stale
        // tag) that the simplicity wins.
        Ok(resp)
    }
}
