//! A mesh for the data-plane tests: real `warden proxy` processes, a real
//! test app, SVIDs from a real CA, all on 127.0.0.1.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use super::{ca_init, path_str, svid_issue, warden_bin};

pub const TD: &str = "example.org";
pub const FRONTEND: &str = "spiffe://example.org/ns/shop/sa/frontend";
pub const ORDERS: &str = "spiffe://example.org/ns/shop/sa/orders";
pub const INTRUDER: &str = "spiffe://example.org/ns/other/sa/intruder";
/// A policy that lets everyone do everything.
pub const ALLOW_ALL: &str = "permit (principal, action, resource);";

/// One `warden proxy` process; killed when dropped.
pub struct Proxy {
    pub child: Child,
    pub admin: SocketAddr,
    pub inbound: Option<SocketAddr>,
    pub opaque: Vec<SocketAddr>,
    pub outbound: Vec<SocketAddr>,
    pub proxy: Option<SocketAddr>,
    pub log: PathBuf,
    /// What the sidecar printed on stdout after `started` (the access log).
    pub stdout: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Proxy {
    /// Starts `warden proxy --set ...` and reads the listener addresses it prints.
    pub fn start(log: &Path, settings: &[String]) -> Proxy {
        Proxy::start_with_env(log, settings, &[])
    }

    /// As [`Proxy::start`], with extra environment variables.
    pub fn start_with_env(log: &Path, settings: &[String], env: &[(String, String)]) -> Proxy {
        let mut command = Command::new(warden_bin());
        command.arg("proxy").env("WARDEN_LOG", "info");
        command.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        for s in settings {
            command.arg("--set").arg(s);
        }
        let log_file = std::fs::File::create(log).expect("log file");
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(log_file)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn warden proxy");
        let stdout = child.stdout.take().expect("stdout");
        let mut proxy = Proxy {
            child,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            inbound: None,
            opaque: Vec::new(),
            outbound: Vec::new(),
            proxy: None,
            log: log.to_owned(),
            stdout: Default::default(),
        };
        let mut lines = BufReader::new(stdout).lines();
        while let Some(line) = lines.next() {
            let line = line.expect("stdout line");
            if line == "started" {
                let rest = proxy.stdout.clone();
                std::thread::spawn(move || {
                    for line in lines.map_while(Result::ok) {
                        rest.lock().expect("lock").push(line);
                    }
                });
                return proxy;
            }
            let (what, addr) = line.split_once(' ').expect("LISTENER ADDR");
            let addr: SocketAddr = addr.parse().expect("address");
            match what {
                "admin" => proxy.admin = addr,
                "inbound" => proxy.inbound = Some(addr),
                "proxy" => proxy.proxy = Some(addr),
                w if w.starts_with("opaque[") => proxy.opaque.push(addr),
                _ => proxy.outbound.push(addr),
            }
        }
        panic!("warden proxy exited before starting:\n{}", proxy.logs());
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn inbound(&self) -> SocketAddr {
        self.inbound.expect("inbound listener")
    }

    /// SIGTERM, then the exit status (bounded wait).
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).expect("pid");
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
        self.wait(Duration::from_secs(30))
    }

    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "warden proxy did not exit within {limit:?}:\n{}",
            self.logs()
        );
    }

    /// Waits (bounded) for `/ready` to answer 200.
    pub async fn wait_ready(&self) {
        let mut last = String::new();
        for _ in 0..200 {
            if let Ok(r) = get(self.admin, "/ready", &[]).await {
                if r.status == 200 {
                    return;
                }
                last = r.body;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("sidecar never became ready: {last}\n{}", self.logs());
    }

    pub async fn metrics(&self) -> String {
        get(self.admin, "/metrics", &[])
            .await
            .expect("metrics")
            .body
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA and SVID directories for the usual workloads.
pub struct Identities {
    pub dir: tempfile::TempDir,
}

impl Identities {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        ca_init(&dir.path().join("ca"), TD);
        let ids = Identities { dir };
        for (name, id) in [
            ("frontend", FRONTEND),
            ("orders", ORDERS),
            ("intruder", INTRUDER),
        ] {
            ids.issue(name, id);
        }
        ids
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    pub fn issue(&self, name: &str, id: &str) -> PathBuf {
        svid_issue(&self.ca(), id, &self.dir.path().join(name))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A policy directory holding `text` as its one file.
    pub fn policies(&self, text: &str) -> PathBuf {
        let dir = self.path("policies");
        std::fs::create_dir_all(&dir).expect("policy dir");
        std::fs::write(dir.join("policies.cedar"), text).expect("policy file");
        dir
    }

    /// `orders` in permissive mode (plaintext clients can be written by
    /// hand) in front of `app`, running `policy`, ready.
    pub async fn permissive(&self, app: SocketAddr, policy: &str, extra: &[&str]) -> Proxy {
        let mut settings = inbound_to(app);
        settings.push("inbound.mode=permissive".into());
        settings.push(format!(
            "authz.policies={}",
            self.policies(policy).display()
        ));
        settings.extend(extra.iter().map(|s| s.to_string()));
        let sidecar = self.start("orders", &settings);
        sidecar.wait_ready().await;
        sidecar
    }

    /// Settings for a sidecar holding the SVID in directory `name`.
    pub fn settings(&self, name: &str, extra: &[String]) -> Vec<String> {
        let mut s = vec![
            format!("identity.dir={}", path_str(&self.path(name))),
            "identity.poll_interval=100ms".to_owned(),
            format!("service.name={name}"),
            "admin.listen=127.0.0.1:0".to_owned(),
        ];
        s.extend_from_slice(extra);
        s
    }

    pub fn start(&self, name: &str, extra: &[String]) -> Proxy {
        self.start_with_env(name, extra, &[])
    }

    pub fn start_with_env(&self, name: &str, extra: &[String], env: &[(String, String)]) -> Proxy {
        Proxy::start_with_env(
            &self.path(&format!("{name}.log")),
            &self.settings(name, extra),
            env,
        )
    }
}

pub fn inbound_to(app: SocketAddr) -> Vec<String> {
    vec![
        "inbound.listen=127.0.0.1:0".to_owned(),
        format!("inbound.app={app}"),
    ]
}

pub fn route_to(upstream: SocketAddr, identity: &str) -> String {
    format!(
        "outbound.routes=[{{listen=\"127.0.0.1:0\", upstream=\"{upstream}\", identity=\"{identity}\"}}]"
    )
}

/// The usual pair: `orders` behind its sidecar, `frontend`'s sidecar routing to it.
pub struct Pair {
    pub ids: Identities,
    pub app: TestApp,
    pub server: Proxy,
    pub client: Proxy,
}

impl Pair {
    pub async fn start(server_extra: &[String], client_extra: &[String]) -> Pair {
        let ids = Identities::new();
        let app = TestApp::start().await;
        let mut s = inbound_to(app.addr);
        s.extend_from_slice(server_extra);
        let server = ids.start("orders", &s);
        let mut c = vec![route_to(server.inbound(), ORDERS)];
        c.extend_from_slice(client_extra);
        let client = ids.start("frontend", &c);
        server.wait_ready().await;
        client.wait_ready().await;
        Pair {
            ids,
            app,
            server,
            client,
        }
    }

    /// The frontend app's way to orders.
    pub fn via(&self) -> SocketAddr {
        self.client.outbound[0]
    }
}

/// What an HTTP exchange returned.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
    pub raw: Bytes,
    pub trailers: Option<http::HeaderMap>,
}

impl Reply {
    /// The test app's echo of the request it received.
    pub fn echo(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not an echo ({e}): {}", self.body))
    }
}

pub type TestBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn body(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into()).map_err(|e| match e {}).boxed()
}

pub async fn send<C>(client: &Client<C, TestBody>, req: Request<TestBody>) -> Result<Reply, String>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let response = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let (parts, incoming) = response.into_parts();
    let collected = incoming.collect().await.map_err(|e| e.to_string())?;
    let trailers = collected.trailers().cloned();
    let raw = collected.to_bytes();
    Ok(Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: String::from_utf8_lossy(&raw).into_owned(),
        raw,
        trailers,
    })
}

pub fn http1_client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub fn h2c_client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new())
}

/// GET over a new HTTP/1.1 connection.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<Reply, String> {
    let mut req = Request::get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let client = http1_client();
    send(&client, req.body(body("")).expect("request")).await
}

/// The app behind the server sidecar. `GET /anything` echoes the request as
/// JSON; `POST /echo` streams the body back; `/slow/<ms>` answers after a
/// pause; `/big/<bytes>` answers that many bytes (up to 16 MiB); `/grpc` answers like a gRPC server (trailers); `/status/<code>`
/// answers with that status.
pub struct TestApp {
    pub addr: SocketAddr,
}

impl TestApp {
    pub async fn start() -> TestApp {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_app(stream));
            }
        });
        TestApp { addr }
    }

    /// The same app on a unix socket at `path`.
    pub fn start_unix(path: &Path) {
        let listener = tokio::net::UnixListener::bind(path).expect("bind unix socket");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_app(stream));
            }
        });
    }
}

/// Serves the test app on one connection, TCP or unix.
async fn serve_app<I>(io: I)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(io), hyper::service::service_fn(app))
        .await;
}

async fn app(mut req: Request<Incoming>) -> Result<Response<TestBody>, Infallible> {
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

/// Reads from `stream` until `want` bytes arrived, it ended, or 10 s
/// passed without data; what arrived.
pub async fn read_some(stream: &mut tokio::net::TcpStream, want: usize) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while out.len() < want {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
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

/// Sends raw bytes and reads what comes back until the peer closes (bounded).
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    out
}
