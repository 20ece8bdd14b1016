//! The floor of a Pingora 0.9.1 server, for `benches/load.sh`: a `ProxyHttp` that answers
//! every request from `request_filter` with one body held in memory and the headers of a
//! manifest hit, on the runtime layout pullthrough uses (2 threads, no work stealing). No
//! server built on Pingora's HTTP/1 stack serves a manifest hit faster than this, so beside
//! nginx it shows how much of a gap is the framework's and how much is pullthrough's.
//!
//!   pingora-floor ADDR BODY_FILE CONTENT_TYPE DIGEST

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::{http_proxy_service, ProxyHttp, Session};
use pingora::server::configuration::ServerConf;

struct Floor {
    body: Bytes,
    content_type: String,
    digest: String,
}

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        let mut header = ResponseHeader::build(200, Some(4))?;
        header.insert_header("Content-Type", &self.content_type)?;
        header.insert_header("Content-Length", self.body.len())?;
        header.insert_header("Docker-Content-Digest", &self.digest)?;
        header.insert_header("X-Cache-Status", "hit")?;
        let head_only = session.req_header().method == http::Method::HEAD;
        session
            .write_response_header(Box::new(header), head_only)
            .await?;
        if !head_only {
            session
                .write_response_body(Some(self.body.clone()), true)
                .await?;
        }
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Err(Error::explain(InternalError, "the floor has no upstream"))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, body, content_type, digest] = args.as_slice() else {
        eprintln!("usage: pingora-floor ADDR BODY_FILE CONTENT_TYPE DIGEST");
        std::process::exit(2);
    };
    let body = match std::fs::read(body) {
        Ok(b) => Bytes::from(b),
        Err(e) => {
            eprintln!("pingora-floor: cannot read {body}: {e}");
            std::process::exit(2);
        }
    };
    let conf = ServerConf {
        threads: 2,
        work_stealing: false,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let floor = Floor {
        body,
        content_type: content_type.clone(),
        digest: digest.clone(),
    };
    let mut service = http_proxy_service(&server.configuration, floor);
    service.add_tcp(addr);
    server.add_service(service);
    server.run_forever();
}
