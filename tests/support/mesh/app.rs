//! The test app behind the server sidecar (HTTP/1.1 and h2c, TCP or unix
//! socket), and a server-speaks-first TCP echo for opaque connections.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::client::{TestBody, body};

/// The app behind the server sidecar. `GET /anything` echoes the request as
/// JSON; `POST /echo` streams the body back; `/slow/<ms>` answers after a
/// pause; `/big/<bytes>` answers that many bytes (up to 16 MiB); `/grpc`
/// answers like a gRPC server (trailers); `/status/<code>` answers with
/// that status.
pub struct TestApp {
    pub addr: SocketAddr,
    /// How many requests are inside `/slow/<ms>` now.
    slow: Arc<watch::Sender<usize>>,
}

impl TestApp {
    pub async fn start() -> TestApp {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
        let addr = listener.local_addr().expect("addr");
        let slow = Arc::new(watch::Sender::new(0));
        let counter = slow.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_app(stream, counter.clone()));
            }
        });
        TestApp { addr, slow }
    }

    /// The same app on a unix socket at `path`.
    pub fn start_unix(path: &Path) {
        let listener = tokio::net::UnixListener::bind(path).expect("bind unix socket");
        let slow = Arc::new(watch::Sender::new(0));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_app(stream, slow.clone()));
            }
        });
    }

    /// Waits (bounded) until `n` requests are inside `/slow/<ms>` at once:
    /// then they hold whatever the sidecars in front gave them (a slot, a
    /// connection) until they are answered.
    pub async fn slow_in_flight(&self, n: usize) {
        let mut seen = self.slow.subscribe();
        let waited =
            tokio::time::timeout(Duration::from_secs(10), seen.wait_for(|now| *now >= n)).await;
        assert!(
            matches!(waited, Ok(Ok(_))),
            "{n} slow requests never reached the app at once: {} did",
            *self.slow.borrow()
        );
    }
}

/// Counts one request inside `/slow/<ms>` while it lives.
struct Slow(Arc<watch::Sender<usize>>);

impl Slow {
    fn enter(counter: &Arc<watch::Sender<usize>>) -> Slow {
        counter.send_modify(|n| *n += 1);
        Slow(counter.clone())
    }
}

impl Drop for Slow {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// Serves the test app on one connection, TCP or unix.
async fn serve_app<I>(io: I, slow: Arc<watch::Sender<usize>>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| app(req, slow.clone()));
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .await;
}

async fn app(
    mut req: Request<Incoming>,
    slow: Arc<watch::Sender<usize>>,
) -> Result<Response<TestBody>, Infallible> {
    let path = req.uri().path().to_owned();
    if let Some(protocol) = req.headers().get("upgrade").cloned() {
        // Switch protocols, then echo every byte back, upper-cased.
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 4096];
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n].to_ascii_uppercase()).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut r = Response::new(body(""));
        *r.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut().insert("upgrade", protocol);
        r.headers_mut()
            .insert("connection", http::HeaderValue::from_static("upgrade"));
        let seen = req
            .headers()
            .get("x-warden-peer-id")
            .cloned()
            .unwrap_or(http::HeaderValue::from_static("none"));
        r.headers_mut().insert("x-seen-peer", seen);
        return Ok(r);
    }
    if path == "/echo" {
        let (parts, incoming) = req.into_parts();
        let _ = parts;
        return Ok(Response::new(incoming.map_err(Into::into).boxed()));
    }
    if let Some(size) = path.strip_prefix("/big/") {
        // That many bytes, from one shared buffer, as fast as they are taken.
        static BIG: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
        let big = BIG.get_or_init(|| Bytes::from(vec![b'x'; 16 * 1024 * 1024]));
        let size: usize = size.parse().unwrap_or(0);
        return Ok(Response::new(body(big.slice(..size.min(big.len())))));
    }
    if let Some(ms) = path.strip_prefix("/slow/") {
        let ms: u64 = ms.parse().unwrap_or(1000);
        let _inside = Slow::enter(&slow);
        // The pause is the point: a slow app.
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let mut r = Response::new(body("status\n"));
        *r.status_mut() = http::StatusCode::from_u16(code.parse().unwrap_or(500)).expect("status");
        return Ok(r);
    }
    if path.starts_with("/grpc") {
        // A unary gRPC reply: one length-prefixed message, then trailers.
        let (_, incoming) = req.into_parts();
        let request = incoming
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        trailers.insert("grpc-message", http::HeaderValue::from_static("ok"));
        let frames = futures_stream(vec![Frame::data(request), Frame::trailers(trailers)]);
        let mut r = Response::new(frames);
        r.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("application/grpc"),
        );
        return Ok(r);
    }
    let headers: BTreeMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let echo = serde_json::json!({
        "method": req.method().as_str(),
        "path": path,
        "version": format!("{:?}", req.version()),
        // HTTP/2's `:authority` (HTTP/1.1 carries it in `host`).
        "authority": req.uri().authority().map(|a| a.as_str()),
        "headers": headers,
    });
    Ok(Response::new(body(echo.to_string())))
}

fn futures_stream(frames: Vec<Frame<Bytes>>) -> TestBody {
    let stream = tokio_stream_iter(frames);
    http_body_util::StreamBody::new(stream).boxed()
}

fn tokio_stream_iter(
    frames: Vec<Frame<Bytes>>,
) -> impl futures_core::Stream<Item = Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>>
+ Send
+ Sync
+ 'static {
    struct Iter(std::vec::IntoIter<Frame<Bytes>>);
    impl futures_core::Stream for Iter {
        type Item = Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            std::task::Poll::Ready(self.0.next().map(Ok))
        }
    }
    Iter(frames.into_iter())
}

/// A TCP server that greets each connection first (server speaks first, as
/// databases do), then echoes back what it reads, upper-cased.
pub async fn tcp_echo() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                if stream.write_all(b"hello\n").await.is_err() {
                    return;
                }
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0
                        || stream
                            .write_all(&buf[..n].to_ascii_uppercase())
                            .await
                            .is_err()
                    {
                        break;
                    }
                }
            });
        }
    });
    addr
}
