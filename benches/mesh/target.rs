//! What the mesh bench measures: the app, reached directly or through a
//! pair of `warden proxy` processes started from this process.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Child;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::load::{Mode, SCENARIOS, client, one};
use crate::{Error, proc_stat, proxy, wait};

/// The app: `/echo` returns the body, anything else a short text.
pub async fn start_app() -> Result<SocketAddr, Error> {
    start_app_on("127.0.0.1:0".parse()?).await
}

/// The app, listening on `addr`.
pub async fn start_app_on(addr: SocketAddr) -> Result<SocketAddr, Error> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let body = if req.uri().path() == "/echo" {
                        req.into_body()
                            .collect()
                            .await
                            .map(|c| c.to_bytes())
                            .unwrap_or_default()
                    } else {
                        Bytes::from_static(b"ok\n")
                    };
                    Ok::<_, Infallible>(Response::new(Full::new(body)))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

pub struct Sidecar {
    child: Child,
    pub inbound: Option<SocketAddr>,
    pub outbound: Option<SocketAddr>,
}

impl Sidecar {
    pub fn start(settings: &[String], env: &[(String, String)]) -> Result<Self, Error> {
        let (child, listeners) = proxy::start(env!("CARGO_BIN_EXE_warden"), settings, env)?;
        Ok(Sidecar::from(child, &listeners))
    }

    /// In network namespace `ns`, as user and group `uid` (root runs it).
    pub fn start_in(ns: &str, uid: u32, settings: &[String]) -> Result<Self, Error> {
        let mut command = std::process::Command::new("ip");
        command.args(["netns", "exec", ns, "setpriv"]);
        command.args([
            format!("--reuid={uid}"),
            format!("--regid={uid}"),
            "--clear-groups".to_owned(),
        ]);
        command.arg(env!("CARGO_BIN_EXE_warden"));
        let (child, listeners) = proxy::start_command(command, settings, &[])?;
        Ok(Sidecar::from(child, &listeners))
    }

    fn from(child: Child, listeners: &std::collections::HashMap<String, SocketAddr>) -> Self {
        Sidecar {
            child,
            inbound: listeners.get("inbound").copied(),
            outbound: listeners.get("outbound[0]").copied(),
        }
    }

    /// CPU time (user + system) so far, and resident memory, from /proc.
    pub fn usage(&self) -> (Duration, u64) {
        let pid = self.child.id();
        (proc_stat::cpu_time(pid), proc_stat::rss_kib(pid))
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (bounded) until a request goes through `via`.
pub async fn wait_serving(via: SocketAddr) -> Result<(), Error> {
    wait::poll(Duration::from_secs(5), wait::STEP, async || {
        one(&client(Mode::KeepAlive), via, SCENARIOS[0]).await
    })
    .await
    .map_err(|_| "the sidecar pair never served a request".into())
}
