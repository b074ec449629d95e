//! Pods for the transparent-mode tests (`tests/transparent.rs`): the apps
//! and clients that know nothing of Warden (Python scripts run with the
//! system's python3, curl, psql and a real PostgreSQL), a pod's sidecar
//! under `warden init`, and reading its admin API from inside the pod.

use std::time::Duration;

use super::eventually_blocking;
use super::mesh::{Identities, ORDERS, Proxy, sample};
use super::netns::{in_ns, ok, stdout, warden_init_in};
use super::path_str;

/// The apps' user: not the sidecars' (root), so its TCP is redirected.
pub const APP_UID: u32 = 1000;

/// A plain HTTP/1.1 app: answers every GET with what it saw (path, the
/// XFCC and peer-id headers Warden adds) as JSON, accepts WebSocket
/// upgrades (then echoes bytes); with a second port, also echoes UDP
/// datagrams there.
pub const APP: &str = r#"
import base64, hashlib, json, socket, sys, threading
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
class App(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.headers.get("upgrade", "").lower() == "websocket":
            key = self.headers["sec-websocket-key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
            self.send_response(101)
            self.send_header("upgrade", "websocket")
            self.send_header("connection", "upgrade")
            self.send_header("sec-websocket-accept", base64.b64encode(hashlib.sha1(key.encode()).digest()).decode())
            self.end_headers()
            self.wfile.flush()
            while True:
                data = self.rfile.read1(1024)
                if not data:
                    break
                self.wfile.write(b"echo:" + data)
                self.wfile.flush()
            self.close_connection = True
            return
        body = json.dumps({
            "path": self.path,
            "xfcc": self.headers.get("x-forwarded-client-cert"),
            "peer": self.headers.get("x-warden-peer-id"),
        }).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), App)
if len(sys.argv) > 2:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", int(sys.argv[2])))
    def echo():
        while True:
            data, peer = udp.recvfrom(512)
            udp.sendto(b"udp:" + data, peer)
    threading.Thread(target=echo, daemon=True).start()
print("ready", flush=True)
server.serve_forever()
"#;

/// A WebSocket handshake, then bytes both ways: prints the status line and
/// what came back.
pub const WS_CLIENT: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.sendall(b"GET /ws HTTP/1.1\r\nhost: orders\r\nupgrade: websocket\r\nconnection: upgrade\r\n"
          b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n")
head = b""
while b"\r\n\r\n" not in head:
    chunk = s.recv(1024)
    if not chunk:
        break
    head += chunk
print(head.split(b"\r\n")[0].decode())
s.sendall(b"hello over the tunnel")
print(s.recv(1024).decode())
"#;

/// A gRPC server (grpcio, generic handler, raw bytes): `Hello` answers with
/// the caller Warden named in `x-warden-peer-id`.
pub const GRPC_SERVER: &str = r#"
import grpc, sys
from concurrent import futures
def hello(request, context):
    peer = dict(context.invocation_metadata()).get("x-warden-peer-id", "nobody")
    return b"hello " + request + b", you are " + peer.encode()
handler = grpc.method_handlers_generic_handler("warden.Test", {"Hello": grpc.unary_unary_rpc_method_handler(hello)})
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
server.add_generic_rpc_handlers((handler,))
server.add_insecure_port("0.0.0.0:" + sys.argv[1])
server.start()
print("ready", flush=True)
server.wait_for_termination()
"#;

/// One unary call with grpcio; prints the reply or the status code.
pub const GRPC_CLIENT: &str = r#"
import grpc, sys
channel = grpc.insecure_channel(sys.argv[1])
try:
    print(channel.unary_unary("/warden.Test/Hello")(b"frontend", timeout=5).decode())
except grpc.RpcError as e:
    print(e.code().name)
"#;

/// Connects, sends argv[3] (if not empty), then prints what came back, or
/// "closed" when the connection closed without a word.
pub const SAY: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
if sys.argv[3]:
    s.sendall(sys.argv[3].encode() + b"\r\n")
try:
    print(s.recv(100).decode().strip() or "closed")
except ConnectionResetError:
    print("closed")
except socket.timeout:
    print("open")
"#;

/// An HTTP server on the pod's loopback only.
pub const LOOPBACK_ONLY: &str = r#"
from http.server import HTTPServer, BaseHTTPRequestHandler
class Local(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"loopback only")
    def log_message(self, *args):
        pass
server = HTTPServer(("127.0.0.1", 7070), Local)
print("ready", flush=True)
server.serve_forever()
"#;

/// Sends one UDP datagram and prints the answer (or "timeout").
pub const UDP_CLIENT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.sendto(b"ping", (sys.argv[1], int(sys.argv[2])))
try:
    print(s.recv(512).decode())
except socket.timeout:
    print("timeout")
"#;

/// `curl` in `ns` as the app's user: the status code ("000" when no
/// response came) and the body.
pub fn curl(ns: &str, url: &str, extra: &[&str]) -> (String, String) {
    let mut args = vec!["curl", "-s", "-m", "10", "-w", "\n%{http_code}"];
    args.extend_from_slice(extra);
    args.push(url);
    let out = in_ns(ns, Some(APP_UID), &args);
    let text = stdout(&out);
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
    (code.trim().to_owned(), body.to_owned())
}

/// The admin API of the sidecar in `ns`, on its loopback.
pub fn admin(ns: &str, path: &str) -> (String, String) {
    let out = in_ns(
        ns,
        None,
        &[
            "curl",
            "-s",
            "-m",
            "5",
            "-w",
            "\n%{http_code}",
            &format!("http://127.0.0.1:15000{path}"),
        ],
    );
    let text = stdout(&out);
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
    (code.trim().to_owned(), body.to_owned())
}

pub fn metric(ns: &str, line_prefix: &str) -> f64 {
    let (_, body) = admin(ns, "/metrics");
    sample(&body, line_prefix).unwrap_or(0.0)
}

/// `warden_transparent_connections_total` of the sidecar in `ns`, for
/// `direction` and `outcome` (0 when never counted).
pub fn transparent(ns: &str, direction: &str, outcome: &str) -> f64 {
    metric(
        ns,
        &format!(
            "warden_transparent_connections_total{{direction=\"{direction}\",outcome=\"{outcome}\"}}"
        ),
    )
}

/// One pod's sidecar: `warden init` (the sidecar's uid, root, left alone),
/// then `warden proxy` with the SVID in `ids/<svid>`, ready.
pub fn sidecar(ns: &str, ids: &Identities, svid: &str, extra: &[String]) -> Proxy {
    ok(warden_init_in(
        ns,
        &["--proxy-uid", "0", "--backend", "iptables"],
    ));
    let mut settings = vec![
        format!("identity.dir={}", path_str(&ids.path(svid))),
        format!("service.name={svid}"),
        "admin.listen=127.0.0.1:15000".to_owned(),
    ];
    settings.extend_from_slice(extra);
    let log = ids.path(&format!("{ns}.log"));
    let proxy = Proxy::start_in_namespace(ns, &log, &settings);
    ready(ns, &proxy);
    proxy
}

pub fn ready(ns: &str, proxy: &Proxy) {
    eventually_blocking(
        "the sidecar to become ready",
        Duration::from_secs(10),
        || match admin(ns, "/ready") {
            (code, _) if code == "200" => Ok(()),
            (code, body) => Err(format!("{code} {body}\n{}", proxy.logs())),
        },
    );
}

/// The settings of a pod that calls others: its transparent listener and
/// the one mesh destination, `orders` at `orders_ip`.
pub fn caller(orders_ip: &str, unknown: &str) -> Vec<String> {
    vec![
        "outbound.transparent_listen=[::]:15001".to_owned(),
        format!("outbound.unknown={unknown}"),
        format!("outbound.endpoints=[{{address = \"{orders_ip}\", identity = \"{ORDERS}\"}}]"),
    ]
}

/// A real PostgreSQL server in a pod, on every address at port 5432, run
/// as the `postgres` user (so its traffic counts as the app's); stopped and
/// its files removed when dropped.
pub struct Postgres {
    server: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Postgres {
    pub fn start(ns: &str) -> Self {
        let bin = super::postgres::bin_dir();
        let dir = tempfile::tempdir().expect("tempdir");
        ok(std::process::Command::new("chown")
            .args(["postgres:postgres", path_str(dir.path())])
            .output()
            .expect("chown"));
        let data = dir.path().join("data");
        ok(std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin.join("initdb"))
            .args([
                "-D",
                path_str(&data),
                "-A",
                "trust",
                "-U",
                "warden",
                "--no-sync",
            ])
            .output()
            .expect("initdb"));
        // The sidecar dials the pod's own address, so that is where its
        // connections come from.
        use std::io::Write as _;
        std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("pg_hba.conf"))
            .and_then(|mut f| f.write_all(b"host all all 198.18.0.0/15 trust\n"))
            .expect("pg_hba.conf");
        // setpriv execs the server itself: the child is the postmaster.
        let server = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "setpriv",
                "--reuid=postgres",
                "--regid=postgres",
            ])
            .args(["--clear-groups"])
            .arg(bin.join("postgres"))
            .args([
                "-D",
                path_str(&data),
                "-p",
                "5432",
                "-k",
                path_str(dir.path()),
            ])
            .args(["-c", "listen_addresses=0.0.0.0", "-c", "fsync=off"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start postgres");
        let pg = Postgres { server, _dir: dir };
        let isready = bin.join("pg_isready");
        eventually_blocking(
            "PostgreSQL to accept connections",
            Duration::from_secs(20),
            || {
                let out = in_ns(
                    ns,
                    None,
                    &[path_str(&isready), "-h", "127.0.0.1", "-p", "5432"],
                );
                if out.status.success() {
                    Ok(())
                } else {
                    Err(stdout(&out))
                }
            },
        );
        pg
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // A fast shutdown (SIGINT), then the wait: bounded by the kill.
        if let Some(pid) = rustix::process::Pid::from_raw(self.server.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
        }
        for _ in 0..100 {
            if matches!(self.server.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// `psql -c sql` in `ns` as the app's user; its output, or its error.
pub fn psql(ns: &str, host: &str, sql: &str) -> Result<String, String> {
    let psql = super::postgres::bin_dir().join("psql");
    let out = in_ns(
        ns,
        Some(APP_UID),
        &[
            "env",
            "PGCONNECT_TIMEOUT=5",
            path_str(&psql),
            "-X",
            "-h",
            host,
            "-p",
            "5432",
            "-U",
            "warden",
            "-d",
            "postgres",
            "-tAc",
            sql,
        ],
    );
    if out.status.success() {
        Ok(stdout(&out).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

pub fn server(mode: &str) -> Vec<String> {
    vec![
        "inbound.listen=[::]:15006".to_owned(),
        "inbound.transparent=true".to_owned(),
        "inbound.opaque_ports=[5432]".to_owned(),
        format!("inbound.mode={mode}"),
    ]
}

/// The policies of the discovery test's `orders`: the built-in set, and
/// when `closed`, a rule that forbids its `/orders` paths.
pub fn write_policies(dir: &std::path::Path, closed: bool) {
    std::fs::write(
        dir.join("default.cedar"),
        include_str!("../../policies/default.cedar"),
    )
    .expect("policy");
    let forbid = dir.join("closed.cedar");
    if closed {
        std::fs::write(
            &forbid,
            "forbid (principal, action == Action::\"GET\", resource) when { context.path like \"/orders*\" };\n",
        )
        .expect("policy");
    } else {
        let _ = std::fs::remove_file(&forbid);
    }
}
