//! One `warden proxy` process, started with `--set` flags, and what it
//! shows: its listeners, logs, access log, admin API and metrics.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use super::client::get;
use crate::support::{eventually, eventually_blocking, warden_bin};

/// One `warden proxy` process; killed when dropped.
pub struct Proxy {
    pub child: Child,
    pub admin: SocketAddr,
    pub inbound: Option<SocketAddr>,
    pub opaque: Vec<SocketAddr>,
    pub outbound: Vec<SocketAddr>,
    pub proxy: Option<SocketAddr>,
    pub transparent: Option<SocketAddr>,
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
        command.env("WARDEN_LOG", "info");
        command.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        Proxy::start_command(command, log, settings)
    }

    /// Starts `warden proxy` inside network namespace `ns` (as root).
    pub fn start_in_namespace(ns: &str, log: &Path, settings: &[String]) -> Proxy {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", ns, warden_bin()]);
        command.env("WARDEN_LOG", "info");
        Proxy::start_command(command, log, settings)
    }

    /// Runs `command` (the `warden` binary, or a wrapper that executes it)
    /// with `proxy --set ...` and reads the listener addresses it prints.
    pub fn start_command(mut command: Command, log: &Path, settings: &[String]) -> Proxy {
        command.arg("proxy");
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
            transparent: None,
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
                "transparent" => proxy.transparent = Some(addr),
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
        eventually_blocking("warden proxy to exit", limit, || {
            match self.child.try_wait().expect("try_wait") {
                Some(status) => Ok(status),
                None => Err(format!("still running; its log:\n{}", self.logs())),
            }
        })
    }

    /// Waits (bounded) for `/ready` to answer 200.
    pub async fn wait_ready(&self) {
        eventually(
            "the sidecar to become ready",
            Duration::from_secs(10),
            async || match get(self.admin, "/ready", &[]).await {
                Ok(r) if r.status == 200 => Ok(()),
                Ok(r) => Err(format!("{} {}\n{}", r.status, r.body, self.logs())),
                Err(e) => Err(format!("{e}\n{}", self.logs())),
            },
        )
        .await
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

/// The value of the sample `line_prefix ... <value>` in an exposition.
pub fn sample(exposition: &str, line_prefix: &str) -> Option<f64> {
    exposition
        .lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}
