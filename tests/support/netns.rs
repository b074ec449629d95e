//! Network namespaces for the interception tests: "pods" made and deleted
//! by name (each name carries this process's id and the test's tag), joined
//! by veth pairs created inside them, on 198.18.0.0/15 only, with no route
//! out. Nothing is ever made in, or changed of, the host's own namespace.
//! Needs root; CI runs as root and must run these tests.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

/// Network namespaces of one test, deleted (with everything in them) on drop.
pub struct Namespaces(Vec<String>);

impl Namespaces {
    /// `count` namespaces named `wi<pid><test><i>`.
    pub fn new(test: &str, count: usize) -> Self {
        let names: Vec<String> = (0..count)
            .map(|i| format!("wi{}{test}{i}", std::process::id()))
            .collect();
        // Made one by one into the guard, so a failure part-way still
        // deletes those already made.
        let mut made = Namespaces(Vec::new());
        for name in names {
            ip(&["netns", "add", &name]);
            made.0.push(name.clone());
            ip(&["-n", &name, "link", "set", "lo", "up"]);
        }
        made
    }

    pub fn name(&self, i: usize) -> &str {
        &self.0[i]
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// Joins `client` (198.18.`net`.1/30) and `pod` (198.18.`net`.2/30) by a
/// veth made inside the client namespace with its peer in the pod's:
/// nothing is ever created in the host's namespace.
pub fn link(client: &str, pod: &str, net: u8) {
    ip(&[
        "-n", client, "link", "add", "wc0", "type", "veth", "peer", "name", "wp0", "netns", pod,
    ]);
    for (ns, dev, host) in [(client, "wc0", 1), (pod, "wp0", 2)] {
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("198.18.{net}.{host}/30"),
            "dev",
            dev,
        ]);
        ip(&["-n", ns, "link", "set", dev, "up"]);
    }
}

/// Puts every pod on one segment: a bridge in namespace `switch`, and for
/// pod `i` an `eth0` at 198.18.`net`.(`i` + 1)/24 whose peer is a port of
/// that bridge. Returns the pods' addresses.
pub fn bridge(switch: &str, pods: &[&str], net: u8) -> Vec<String> {
    ip(&["-n", switch, "link", "add", "br0", "type", "bridge"]);
    ip(&["-n", switch, "link", "set", "br0", "up"]);
    let mut addresses = Vec::new();
    for (i, pod) in pods.iter().enumerate() {
        let port = format!("p{i}");
        ip(&[
            "-n", pod, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns",
            switch,
        ]);
        ip(&["-n", switch, "link", "set", &port, "master", "br0"]);
        ip(&["-n", switch, "link", "set", &port, "up"]);
        let address = format!("198.18.{net}.{}", i + 1);
        ip(&[
            "-n",
            pod,
            "addr",
            "add",
            &format!("{address}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", pod, "link", "set", "eth0", "up"]);
        addresses.push(address);
    }
    addresses
}

pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `args` run inside namespace `ns` (as `uid` when given), not yet started.
pub fn command_in(ns: &str, uid: Option<u32>, args: &[&str]) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", ns]);
    if let Some(uid) = uid {
        let uid = uid.to_string();
        command.args([
            "setpriv",
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
        ]);
    }
    command.args(args);
    command
}

/// Runs `args` inside namespace `ns` (as `uid` when given).
pub fn in_ns(ns: &str, uid: Option<u32>, args: &[&str]) -> Output {
    command_in(ns, uid, args)
        .output()
        .expect("ip netns exec runs")
}

/// `warden init ARGS` inside `ns`.
pub fn warden_init_in(ns: &str, args: &[&str]) -> Output {
    let mut all = vec![env!("CARGO_BIN_EXE_warden"), "init"];
    all.extend_from_slice(args);
    in_ns(ns, None, &all)
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The command's stdout, after insisting that it succeeded.
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out)
}

/// Root is needed for namespaces: CI runs as root and must run these.
pub fn root_or_skip() -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        assert!(
            std::env::var_os("CI").is_none(),
            "these tests need root, and CI runs as root"
        );
        eprintln!("skipped: needs root (network namespaces, iptables)");
    }
    root
}

/// The system's python3: a client runs under another uid, which cannot
/// reach a per-user install (pyenv under /root).
pub fn python() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// A process running in a namespace; killed when dropped.
pub struct Background(pub Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `args` in `ns` (as `uid` when given) and waits for its first
/// line of output, which must be `ready`.
pub fn spawn_ready(ns: &str, uid: Option<u32>, args: &[&str]) -> Background {
    let mut child = command_in(ns, uid, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn in namespace");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("first line");
    let started = Background(child);
    assert_eq!(line.trim(), "ready", "{args:?} did not start");
    started
}

/// Runs `f` on a thread moved into namespace `ns` (sockets it makes stay
/// there), and returns what it returns.
pub fn on_thread_in<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    use std::os::fd::AsFd;
    let file = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("namespace file");
    std::thread::spawn(move || {
        rustix::thread::move_into_link_name_space(
            file.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .expect("setns into the test's namespace");
        f()
    })
    .join()
    .expect("the namespace thread")
}
