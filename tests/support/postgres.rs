//! A real PostgreSQL server for the control-plane tests.
//!
//! `WARDEN_TEST_POSTGRES` (an admin connection URL) names an existing
//! server. Without it, the first test to ask starts a private cluster from
//! Debian's binaries (`/usr/lib/postgresql/<version>/bin`, package
//! `postgresql`, which `.ci/run` installs) on a free 127.0.0.1 port, owned
//! by this test process: a watchdog stops it and deletes its files once the
//! process is gone. As root the server runs as the `postgres` user (it
//! refuses to run as root).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

// Through `wait` by name: the control bench includes this file and that one.
use super::wait::eventually_blocking;

pub fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    versions.retain(|p| p.join("postgres").exists() && p.join("initdb").exists());
    versions.sort();
    versions.pop().unwrap_or_else(|| {
        panic!(
            "PostgreSQL server binaries not found under /usr/lib/postgresql: install the \
             `postgresql` package (.ci/run does) or set WARDEN_TEST_POSTGRES to an admin URL"
        )
    })
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// `program args`, as the `postgres` user when we are root.
fn as_server_user(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn start_private_cluster() -> String {
    let bin = bin_dir();
    let base = std::env::temp_dir().join(format!("warden-pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).expect("cluster dir");
    if is_root() {
        let status = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&base)
            .status()
            .expect("chown");
        assert!(
            status.success(),
            "cannot give {} to the postgres user",
            base.display()
        );
    }
    let data = base.join("data");
    let out = as_server_user(&bin.join("initdb"))
        .arg("-D")
        .arg(&data)
        .args(["-A", "trust", "-U", "warden", "--no-sync", "-E", "UTF8"])
        .output()
        .expect("initdb");
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    // The watchdog: runs the server until this test process is gone
    // (checked every second), then stops it and removes the cluster.
    let script = format!(
        "{postgres} -D {data} -p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off \
         -c max_connections=200 >{base}/server.log 2>&1 & pg=$!; \
         while [ -d /proc/{parent} ] && kill -0 $pg 2>/dev/null; do sleep 1; done; \
         kill -INT $pg 2>/dev/null; wait $pg; rm -rf {base}",
        postgres = bin.join("postgres").display(),
        data = data.display(),
        base = base.display(),
        parent = std::process::id(),
    );
    let mut watchdog = as_server_user(Path::new("/bin/sh"))
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start postgres");
    // It outlives this process by design; reap it should it end earlier.
    std::thread::spawn(move || watchdog.wait());
    let url = format!("postgres://warden@127.0.0.1:{port}/postgres");
    eventually_blocking(
        "the private PostgreSQL server to come up",
        Duration::from_secs(10),
        || match postgres::Client::connect(&url, postgres::NoTls) {
            Ok(_) => Ok(()),
            Err(e) => Err(format!(
                "{e}; server.log:\n{}",
                std::fs::read_to_string(base.join("server.log")).unwrap_or_default()
            )),
        },
    );
    url
}

/// An admin URL of a running server.
pub fn admin_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| match std::env::var("WARDEN_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => url,
        _ => start_private_cluster(),
    })
}

/// A new, empty database on the server; returns its URL.
pub fn fresh_database() -> String {
    let admin = admin_url();
    let name = format!("warden_{:016x}", rand::random::<u64>());
    let mut client = postgres::Client::connect(admin, postgres::NoTls).expect("connect as admin");
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .expect("create database");
    let (base, _) = admin.rsplit_once('/').expect("URL with a database");
    format!("{base}/{name}")
}
