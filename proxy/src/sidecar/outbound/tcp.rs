//! An opaque TCP route: each connection from the app gets its own mTLS
//! connection to the peer's opaque port, and bytes are spliced.

use std::sync::Arc;

use super::Route;
use crate::sidecar::admission::{Listening, accept_loop};
use crate::sidecar::metrics::Direction;
use crate::sidecar::peer::Carrying;
use crate::sidecar::splice::splice;

impl Route {
    pub async fn run_tcp(self: Arc<Self>, listener: Listening) {
        accept_loop(
            listener,
            Direction::Outbound,
            self,
            |this, mut stream, _source, slot| {
                async move {
                    // An app's opaque stream is in use from the start.
                    let _busy = slot.busy();
                    this.splice(&mut stream).await;
                }
            },
        )
        .await;
    }

    /// Splices `stream` with a new mTLS connection to the peer's opaque port.
    pub async fn splice<S>(&self, stream: &mut S)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let metrics = &self.shared.metrics;
        metrics.tcp_connection(Direction::Outbound, "none");
        match self.channel.connect_tls(Carrying::Tcp).await {
            Ok(mut tls) => {
                let idle = self.shared.config.limits.idle_timeout;
                let validity = self.channel.validity(&tls);
                if let Err(e) = splice(stream, &mut tls, idle, validity.as_ref(), None).await {
                    tracing::debug!(error = %e, "opaque connection ended");
                }
            }
            Err(e) => {
                tracing::warn!(upstream = %self.upstream, error = %e, "opaque route: no connection to the peer; closing the app's");
            }
        }
    }
}
