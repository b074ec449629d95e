//! Stage 5 of an upgrade request (WebSocket and the like): its own HTTP/1.1
//! connection to the app, then the two upgraded connections spliced, with
//! the caller's certificate and the policy watched for the tunnel's life.

use http::header::HeaderValue;
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;

use super::Inbound;
use super::forward::{app_timeout, app_unavailable, unforwardable};
use crate::sidecar::app::App;
use crate::sidecar::http::{
    Body, Refusal, RefusalKind, boxed, error_chain, relay_upgrade, restore_upgrade, strip_response,
};
use crate::sidecar::normalize::Target;
use crate::sidecar::splice::{PeerValidity, Reauthorize};

impl Inbound {
    pub(super) async fn upgrade(
        &self,
        app: &App,
        mut req: Request<Incoming>,
        target: &Target,
        protocol: HeaderValue,
        validity: Option<PeerValidity>,
        reauthorize: Reauthorize,
    ) -> Result<Response<Body>, Refusal> {
        let limits = &self.shared.config.limits;
        // A fresh HTTP/1.1 connection sends the target in origin form.
        *req.uri_mut() = target
            .path_and_query()
            .parse::<Uri>()
            .map_err(|_| unforwardable())?;
        *req.version_mut() = Version::HTTP_11;
        restore_upgrade(req.headers_mut(), protocol);
        let connected = app
            .addr
            .connect(limits.app_connect_timeout)
            .await
            .map_err(|e| app_unavailable(&app.addr, &e, limits.app_connect_timeout))?;
        let relayed = relay_upgrade(
            connected,
            req,
            &self.shared.lifecycle.tracker,
            limits.idle_timeout,
            validity,
            Some(reauthorize),
        );
        match tokio::time::timeout(limits.app_response_timeout, relayed).await {
            Ok(Ok(mut response)) => {
                strip_response(&mut response);
                Ok(response.map(boxed))
            }
            Ok(Err(e)) => Err(Refusal::new(
                RefusalKind::AppFailed,
                format!(
                    "app at {} failed the upgrade: {}",
                    app.addr,
                    error_chain(&e)
                ),
            )),
            Err(_) => Err(app_timeout(&app.addr, limits.app_response_timeout)),
        }
    }
}
