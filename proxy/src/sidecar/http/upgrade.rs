//! Upgrades (WebSocket): relayed on a connection of their own, then the
//! two upgraded connections spliced.

use http::{Request, Response, StatusCode};

use crate::sidecar::admission::Slot;
use crate::sidecar::splice::{PeerValidity, Reauthorize, splice};

/// Sends an upgrade request on a fresh HTTP/1.1 connection over `io`; if the
/// server switches protocols, the caller's upgraded connection and the
/// server's are spliced together until either side closes.
pub async fn relay_upgrade<I>(
    io: I,
    mut req: Request<hyper::body::Incoming>,
    tracker: &tokio_util::task::TaskTracker,
    idle: std::time::Duration,
    validity: Option<PeerValidity>,
    reauthorize: Option<Reauthorize>,
) -> Result<Response<hyper::body::Incoming>, hyper::Error>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let from_caller = hyper::upgrade::on(&mut req);
    // The tunnel keeps the caller's connection's place in its table (and
    // busy, never closed to make room) after the HTTP side is done.
    let busy = req.extensions().get::<Slot>().map(Slot::busy);
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await?;
    tracker.spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(error = %e, "upgrade connection ended");
        }
    });
    let mut response = sender.send_request(req).await?;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let from_server = hyper::upgrade::on(&mut response);
        // Tracked, so a drain waits for the tunnel (up to its deadline).
        tracker.spawn(async move {
            let _busy = busy;
            match tokio::join!(from_caller, from_server) {
                (Ok(caller), Ok(server)) => {
                    let mut caller = hyper_util::rt::TokioIo::new(caller);
                    let mut server = hyper_util::rt::TokioIo::new(server);
                    if let Err(e) = splice(
                        &mut caller,
                        &mut server,
                        idle,
                        validity.as_ref(),
                        reauthorize,
                    )
                    .await
                    {
                        tracing::debug!(error = %e, "upgraded connection ended");
                    }
                }
                (caller, server) => {
                    tracing::debug!(
                        caller_ok = caller.is_ok(),
                        server_ok = server.is_ok(),
                        "upgrade not completed"
                    );
                }
            }
        });
    }
    Ok(response)
}
