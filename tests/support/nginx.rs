//! A real nginx (Debian's package) as the app behind a sidecar: it
//! normalizes request paths and hosts the way most servers do, which is
//! what a policy bypass exploits. Runs in the foreground from a temporary
//! prefix on 127.0.0.1 and is killed when dropped.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::eventually_blocking;

pub struct Nginx {
    child: Child,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

/// The nginx binary, or a clear panic: `.ci/run` installs package `nginx`.
fn binary() -> PathBuf {
    for candidate in ["/usr/sbin/nginx", "/usr/bin/nginx"] {
        if std::path::Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    panic!("nginx is not installed (apt-get install nginx; .ci/run does it)");
}

impl Nginx {
    /// Starts nginx with `servers` (one or more `server { ... }` blocks,
    /// where `LISTEN` stands for the address to listen on).
    pub fn start(servers: &str) -> Nginx {
        // nginx cannot listen on port 0: take a free port, then hand it
        // over; on the rare collision, try again with another.
        for _ in 0..10 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            if let Some(nginx) = Nginx::try_start(servers, addr) {
                return nginx;
            }
        }
        panic!("nginx did not start on any of 10 ports");
    }

    fn try_start(servers: &str, addr: SocketAddr) -> Option<Nginx> {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {pid};\nerror_log {dir}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n  fastcgi_temp_path {dir}/fastcgi;\n  uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n  default_type text/plain;\n{servers}\n}}\n",
            pid = dir.path().join("nginx.pid").display(),
            dir = dir.path().display(),
            servers = servers.replace("LISTEN", &addr.to_string()),
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).expect("nginx.conf");
        let child = Command::new(binary())
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx");
        // Ready once it accepts; gone if the port was taken. Killed (by
        // drop) if it does neither in time.
        let mut nginx = Nginx { child, addr, dir };
        let started = eventually_blocking(
            format_args!("nginx to accept on {addr}"),
            Duration::from_secs(5),
            || {
                if let Ok(Some(_)) = nginx.child.try_wait() {
                    return Ok(false);
                }
                match std::net::TcpStream::connect(addr) {
                    Ok(_) => Ok(true),
                    Err(e) => Err(format!("{e}; error.log: {}", nginx.error_log())),
                }
            },
        );
        started.then_some(nginx)
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
