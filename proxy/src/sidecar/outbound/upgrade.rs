//! An HTTP/1.1 upgrade (WebSocket): its own mTLS connection to the peer
//! sidecar (ALPN http/1.1, as HTTP/2 cannot carry it), then spliced, with
//! the peer's certificate watched for the tunnel's life.

use http::header::HeaderValue;
use http::{Request, Response, Uri};
use hyper::body::Incoming;

use super::Route;
use super::forward::{peer_refusal, peer_timeout};
use crate::sidecar::http::{
    Body, Refusal, RefusalKind, boxed, error_chain, relay_upgrade, restore_upgrade,
    strip_hop_by_hop, strip_response,
};
use crate::sidecar::peer::Carrying;

impl Route {
    pub(super) async fn upgrade(
        &self,
        mut req: Request<Incoming>,
        protocol: HeaderValue,
    ) -> Result<Response<Body>, Refusal> {
        strip_hop_by_hop(req.headers_mut());
        restore_upgrade(req.headers_mut(), protocol);
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        if let Ok(uri) = path.parse::<Uri>() {
            *req.uri_mut() = uri;
        }
        let tls = self
            .channel
            .connect_tls(Carrying::Http1)
            .await
            .map_err(peer_refusal)?;
        let validity = self.channel.validity(&tls);
        let limits = &self.shared.config.limits;
        let timeout = limits.app_response_timeout;
        let relayed = relay_upgrade(
            tls,
            req,
            &self.shared.lifecycle.tracker,
            limits.idle_timeout,
            validity,
            None,
        );
        match tokio::time::timeout(timeout, relayed).await {
            Ok(Ok(mut response)) => {
                strip_response(&mut response);
                Ok(response.map(boxed))
            }
            Ok(Err(e)) => Err(Refusal::new(
                RefusalKind::PeerFailed,
                format!(
                    "peer sidecar {} failed the upgrade: {}",
                    self.upstream,
                    error_chain(&e)
                ),
            )),
            Err(_) => Err(peer_timeout(self.upstream, timeout)),
        }
    }
}
