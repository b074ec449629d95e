//! A real `warden control serve` process for the control-plane tests, and
//! sidecars that get their SVIDs from it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use warden_proxy::control::ControlClient;
use warden_proxy::identity::{SpiffeId, SvidStore};

use super::mesh::{Proxy, TD};
use super::{path_str, warden_bin};

pub const SERVER_ID: &str = "spiffe://example.org/warden/control";

/// 127.0.0.1, any port.
pub fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A new key and a PEM CSR for `id`: (CSR PEM, key PEM).
pub fn csr_pem(id: &SpiffeId) -> (String, String) {
    let kc = warden_proxy::identity::new_key_and_csr(id).expect("csr");
    (
        warden_proxy::identity::pem_encode("CERTIFICATE REQUEST", &kc.csr_der),
        kc.key_pem,
    )
}

pub fn server_id() -> SpiffeId {
    SpiffeId::parse(SERVER_ID).expect("server id")
}

/// Which database a control plane keeps its state in.
#[derive(Debug, Clone)]
pub enum Db {
    /// The embedded default, in the data directory.
    Sqlite,
    /// A database on a real PostgreSQL server.
    Postgres(String),
}

impl Db {
    /// A fresh database on the tests' PostgreSQL server.
    pub fn postgres() -> Db {
        // The blocking client runs its own runtime: keep it off the test's.
        let url = std::thread::spawn(super::postgres::fresh_database)
            .join()
            .expect("fresh database");
        Db::Postgres(url)
    }
}

/// A control plane (data directory `data`) on a fresh PostgreSQL database,
/// and that database's URL, for a test to act on the database directly.
pub fn on_postgres(data: &Path) -> (String, Control) {
    let db = Db::postgres();
    let control = Control::start(data, any_port(), &db, &[]);
    let Db::Postgres(url) = db else {
        unreachable!("Db::postgres() is a PostgreSQL database")
    };
    (url, control)
}

/// A clock a test sets, for a control plane started with
/// [`Control::start_in_process`]: the system time moved by an offset.
#[derive(Default)]
pub struct TestClock {
    offset_secs: AtomicI64,
}

impl TestClock {
    /// From now on the clock reads the system time plus `secs` (behind it
    /// when negative).
    pub fn set_offset(&self, secs: i64) {
        self.offset_secs.store(secs, Ordering::SeqCst);
    }

    pub fn now(&self) -> SystemTime {
        let secs = self.offset_secs.load(Ordering::SeqCst);
        let by = Duration::from_secs(secs.unsigned_abs());
        if secs >= 0 {
            SystemTime::now() + by
        } else {
            SystemTime::now() - by
        }
    }
}

/// How a [`Control`] runs.
enum Server {
    /// A `warden control serve` process.
    Process(Child),
    /// `warden_control::server::start_with` in the test process.
    InProcess(warden_control::server::ControlPlane),
    Stopped,
}

/// One `warden control serve` (or one in this process); killed (SIGKILL)
/// or stopped when dropped.
pub struct Control {
    server: Server,
    pub api: SocketAddr,
    pub metrics: SocketAddr,
    pub dir: PathBuf,
    pub log: PathBuf,
    /// Audit lines printed on stdout after `started`.
    pub stdout: Arc<Mutex<Vec<String>>>,
    /// The network namespace it runs in (its CLI runs there too).
    pub netns: Option<String>,
    /// Its trust domain (`example.org` unless started in another).
    pub trust_domain: String,
}

impl Control {
    /// Starts a control plane for trust domain `example.org` in `dir`, its
    /// API on `listen` (`127.0.0.1:0` for any port).
    pub fn start(dir: &Path, listen: SocketAddr, db: &Db, extra: &[&str]) -> Control {
        Control::start_command(Command::new(warden_bin()), None, TD, dir, listen, db, extra)
    }

    /// As [`Control::start`], for trust domain `td`.
    pub fn start_in_domain(
        td: &str,
        dir: &Path,
        listen: SocketAddr,
        db: &Db,
        extra: &[&str],
    ) -> Control {
        Control::start_command(Command::new(warden_bin()), None, td, dir, listen, db, extra)
    }

    /// Its SPIFFE ID, `spiffe://<trust domain>/warden/control`.
    pub fn server_id(&self) -> SpiffeId {
        SpiffeId::parse(&format!("spiffe://{}/warden/control", self.trust_domain))
            .expect("server id")
    }

    /// As [`Control::start`], inside network namespace `ns` (as root).
    pub fn start_in_namespace(ns: &str, dir: &Path, listen: SocketAddr, extra: &[&str]) -> Control {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", ns, warden_bin()]);
        Control::start_command(command, Some(ns), TD, dir, listen, &Db::Sqlite, extra)
    }

    fn start_command(
        mut command: Command,
        netns: Option<&str>,
        td: &str,
        dir: &Path,
        listen: SocketAddr,
        db: &Db,
        extra: &[&str],
    ) -> Control {
        let log = dir.with_extension(format!("log{}", rand::random::<u32>()));
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut child = command
            .args(["control", "serve", "--trust-domain", td, "--data-dir"])
            .arg(dir)
            .args([
                "--listen",
                &listen.to_string(),
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .args(extra)
            .args(match db {
                Db::Sqlite => vec![],
                Db::Postgres(url) => vec!["--database".to_owned(), url.clone()],
            })
            .env("WARDEN_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log_file)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn warden control serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let (mut api, mut metrics) = (None, None);
        while let Some(Ok(line)) = lines.next() {
            if line == "started" {
                let collected = Arc::new(Mutex::new(Vec::new()));
                let rest = collected.clone();
                std::thread::spawn(move || {
                    for line in lines.map_while(Result::ok) {
                        rest.lock().expect("lock").push(line);
                    }
                });
                return Control {
                    server: Server::Process(child),
                    api: api.expect("api address"),
                    metrics: metrics.expect("metrics address"),
                    dir: dir.to_owned(),
                    log,
                    stdout: collected,
                    netns: netns.map(str::to_owned),
                    trust_domain: td.to_owned(),
                };
            }
            match line.split_once(' ') {
                Some(("api", a)) => api = a.parse().ok(),
                Some(("metrics", a)) => metrics = a.parse().ok(),
                _ => {}
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "warden control serve exited before starting:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// As [`Control::start`] (any port), but in this process and on
    /// `clock`, so that a test moves the time instead of sleeping. Audit
    /// lines go to [`Control::audit_lines`] as they would on stdout.
    pub async fn start_in_process(dir: &Path, db: &Db, clock: Arc<TestClock>) -> Control {
        Control::start_in_process_with(dir, db, clock, Default::default()).await
    }

    /// As [`Control::start_in_process`], with `endpoint_addresses`.
    pub async fn start_in_process_with(
        dir: &Path,
        db: &Db,
        clock: Arc<TestClock>,
        endpoint_addresses: warden_control::server::EndpointAddresses,
    ) -> Control {
        use warden_control::server::{ServeOptions, Surroundings, start_with};
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let lines = stdout.clone();
        let options = ServeOptions {
            data_dir: dir.to_owned(),
            listen: any_port(),
            metrics_listen: any_port(),
            ca_dir: None,
            trust_domain: Some(warden_proxy::identity::TrustDomain::new(TD).expect("td")),
            svid_ttl: None,
            database: match db {
                Db::Sqlite => None,
                Db::Postgres(url) => Some(warden_control::store::Database::Postgres(url.clone())),
            },
            audit_stdout: true,
            endpoint_addresses,
            k8s: None,
            federate_with: Vec::new(),
            bundle_refresh_hint: warden_control::server::DEFAULT_REFRESH,
            usage_retention: warden_control::server::DEFAULT_USAGE_RETENTION,
            database_connections: warden_control::store::PG_POOL,
        };
        let surroundings = Surroundings {
            clock: Arc::new(move || clock.now()),
            audit_sink: Some(Arc::new(move |line: &str| {
                lines.lock().expect("lock").push(line.to_owned());
            })),
        };
        let plane = start_with(options, surroundings)
            .await
            .expect("start the control plane in process");
        Control {
            api: plane.endpoint.address,
            metrics: plane.endpoint.metrics_address,
            server: Server::InProcess(plane),
            dir: dir.to_owned(),
            // Its logs go to the test's tracing (none): nothing to read.
            log: dir.with_extension("no-log"),
            stdout,
            netns: None,
            trust_domain: TD.to_owned(),
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no chance to flush or clean up. (In process: stopped.)
    pub fn kill9(&mut self) {
        match std::mem::replace(&mut self.server, Server::Stopped) {
            Server::Process(mut child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Server::InProcess(plane) => drop(plane),
            Server::Stopped => {}
        }
    }

    /// `warden ARGS --data-dir DIR`, as an operator would run it.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, warden_bin()]);
                c
            }
            None => Command::new(warden_bin()),
        };
        command
            .args(args)
            .arg("--data-dir")
            .arg(&self.dir)
            .env("WARDEN_LOG", "warn")
            .output()
            .expect("spawn warden")
    }

    /// As [`Control::cli`], insisting on success; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "warden {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A join token for `id`, from the CLI.
    pub fn token(&self, id: &str) -> String {
        self.cli_ok(&[
            "control",
            "token",
            "create",
            "--spiffe-id",
            id,
            "--label",
            "owner=tests",
        ])
        .trim()
        .to_owned()
    }

    /// An API client trusting the control plane's bundle; `admin` adds the
    /// admin token. No client certificate.
    pub fn client(&self, admin: bool) -> ControlClient {
        if admin {
            return warden_control::server::admin_client(&self.dir).expect("admin client");
        }
        let pem = std::fs::read(self.dir.join("bundle.pem")).expect("bundle.pem");
        ControlClient::trusting(self.api, self.server_id(), &pem).expect("client")
    }

    /// One request written by hand over TLS (no client certificate): the
    /// raw response, for what `ControlClient` would never send.
    pub async fn raw_request(&self, request: &[u8]) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tls = warden_proxy::tls::client_config(
            Arc::new(self.bundle_store()),
            warden_proxy::identity::ExpectedIdentity::exactly(self.server_id()),
            warden_proxy::tls::TlsVersions::Tls13Only,
            &[b"http/1.1"],
        )
        .expect("TLS config");
        let tcp = tokio::net::TcpStream::connect(self.api)
            .await
            .expect("connect");
        let name = rustls::pki_types::ServerName::try_from("warden-control").expect("name");
        let mut stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .expect("TLS");
        stream.write_all(request).await.expect("write");
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    /// A store holding only the control plane's bundle.
    pub fn bundle_store(&self) -> SvidStore {
        let pem = std::fs::read(self.dir.join("bundle.pem")).expect("bundle.pem");
        warden_proxy::control::trust_store(&self.server_id(), &pem).expect("bundle")
    }

    /// Settings for a sidecar named `name` that joins with `token`.
    pub fn sidecar_settings(&self, name: &str, token: &str, extra: &[String]) -> Vec<String> {
        let mut s = vec![
            format!("control.address={}", self.api),
            format!("control.server_id={}", self.server_id()),
            format!("control.bundle={}", path_str(&self.dir.join("bundle.pem"))),
            format!("control.token={token}"),
            format!("control.instance={name}-1"),
            format!("service.name={name}"),
            "admin.listen=127.0.0.1:0".to_owned(),
        ];
        s.extend_from_slice(extra);
        s
    }

    /// Starts a sidecar for `id` that joins with a fresh token.
    pub fn sidecar(&self, logs: &Path, name: &str, id: &str, extra: &[String]) -> Proxy {
        let token = self.token(id);
        Proxy::start(
            &logs.join(format!("{name}.log")),
            &self.sidecar_settings(name, &token, extra),
        )
    }

    /// Audit lines seen on stdout so far.
    pub fn audit_lines(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lock()
            .expect("lock")
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v.get("audit").cloned())
            .collect()
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// [`super::eventually`] in the argument order the control-plane tests use.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    super::eventually(what, limit, async || f().await).await
}
