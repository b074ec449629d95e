//! `warden init` in real network namespaces, with the real iptables and
//! nft: rules installed once (a second run changes nothing), removed
//! exactly, `--dry-run` touching nothing, a clear error without
//! CAP_NET_ADMIN, and traffic really redirected: inbound to the sidecar's
//! inbound port, the app's outbound to its outbound port, the sidecar's own
//! connections, loopback and the admin port left alone.
//!
//! Needs root (network namespaces). Everything is made inside namespaces
//! named for this process, on 198.18.0.0/15, and deleted by name when the
//! test ends, failed or not; the host's own rules and interfaces are never
//! touched.

mod support;

use support::netns::{
    Background, Namespaces, in_ns, link, ok, on_thread_in, python, root_or_skip, spawn_ready,
    stdout, warden_init_in as warden_in,
};

/// What is installed in `ns`, as the backend lists it.
fn listing(ns: &str, backend: &str) -> String {
    match backend {
        "nftables" => stdout(&in_ns(ns, None, &["nft", "list", "ruleset"])),
        _ => {
            let (v4, v6) = match backend {
                "iptables-legacy" => ("iptables-legacy", "ip6tables-legacy"),
                _ => ("iptables", "ip6tables"),
            };
            let v4 = stdout(&in_ns(ns, None, &[v4, "-t", "nat", "-S"]));
            let v6 = stdout(&in_ns(ns, None, &[v6, "-t", "nat", "-S"]));
            format!("{v4}{v6}")
        }
    }
}

fn install_once_remove_exactly(backend: &str, test: &str) {
    if !root_or_skip() {
        return;
    }
    let ns = Namespaces::new(test, 1);
    let ns = ns.name(0);
    let args = [
        "--proxy-uid",
        "1337",
        "--skip-inbound-ports",
        "22",
        "--skip-outbound-cidrs",
        "198.19.0.0/16,fd00::/8",
        "--backend",
        backend,
    ];
    let empty = listing(ns, backend);
    assert!(
        !empty.contains("WARDEN") && !empty.contains("warden"),
        "{empty}"
    );

    let dry = ok(warden_in(ns, &[&args[..], &["--dry-run"]].concat()));
    assert!(dry.contains("would run:"), "{dry}");
    assert!(
        dry.contains("redirect") || dry.contains("REDIRECT"),
        "{dry}"
    );
    assert_eq!(listing(ns, backend), empty, "--dry-run changes nothing");

    let first = ok(warden_in(ns, &args));
    assert!(first.contains("ran:"), "{first}");
    let installed = listing(ns, backend);
    assert_ne!(installed, empty);
    if backend == "nftables" {
        assert!(installed.contains("table inet warden"), "{installed}");
        assert!(installed.contains("redirect to :15001"), "{installed}");
    } else {
        for rule in [
            "-A PREROUTING -p tcp -j WARDEN_INBOUND",
            "-A WARDEN_INBOUND -p tcp -m tcp --dport 22 -j RETURN",
            "-A WARDEN_OUTPUT -m owner --uid-owner 1337 -j RETURN",
            "-A WARDEN_OUTPUT -d 198.19.0.0/16 -j RETURN",
            "-A WARDEN_OUTPUT -d fd00::/8 -j RETURN",
            "-A WARDEN_OUTPUT -p tcp -j REDIRECT --to-ports 15001",
        ] {
            assert!(installed.contains(rule), "{rule} missing:\n{installed}");
        }
    }

    let second = ok(warden_in(ns, &args));
    assert!(second.contains("nothing to change"), "{second}");
    assert_eq!(
        listing(ns, backend),
        installed,
        "a second run changes nothing"
    );

    let removed = ok(warden_in(ns, &[&args[..], &["--remove"]].concat()));
    assert!(removed.contains("ran:"), "{removed}");
    assert_eq!(
        listing(ns, backend),
        empty,
        "--remove takes out exactly what init added"
    );
    let again = ok(warden_in(ns, &[&args[..], &["--remove"]].concat()));
    assert!(again.contains("nothing to remove"), "{again}");
}

#[test]
fn iptables_rules_install_once_and_remove_exactly() {
    install_once_remove_exactly("iptables", "ipt");
}

#[test]
fn legacy_iptables_rules_install_once_and_remove_exactly() {
    install_once_remove_exactly("iptables-legacy", "ipl");
}

#[test]
fn nftables_rules_install_once_and_remove_exactly() {
    install_once_remove_exactly("nftables", "nft");
}

#[test]
fn without_cap_net_admin_the_error_says_so() {
    if !root_or_skip() {
        return;
    }
    let ns = Namespaces::new("cap", 1);
    for backend in ["iptables", "nftables"] {
        let out = in_ns(
            ns.name(0),
            Some(1000),
            &[
                env!("CARGO_BIN_EXE_warden"),
                "init",
                "--proxy-uid",
                "1337",
                "--backend",
                backend,
            ],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{backend}: {err}");
        assert!(err.contains("CAP_NET_ADMIN"), "{backend}: {err}");
    }
}

/// Listeners standing in for the sidecar's ports and the app: each answers
/// its name and closes.
const LISTENERS: &str = r#"
import socket, sys, threading
def serve(port, name):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(16)
    while True:
        c, _ = s.accept()
        c.sendall(name.encode() + b"\n")
        c.close()
for port, name in [(15006, "inbound"), (15001, "outbound"), (15000, "admin"), (8080, "app")]:
    threading.Thread(target=serve, args=(port, name), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"#;

const CONNECT: &str = r#"
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
    print(s.recv(100).decode().strip() or "closed")
except ConnectionRefusedError:
    print("refused")
except OSError as e:
    print("error", e)
"#;

fn listeners(ns: &str) -> Background {
    spawn_ready(ns, None, &[python(), "-c", LISTENERS])
}

fn connect(ns: &str, uid: u32, addr: &str, port: u16) -> String {
    let out = in_ns(
        ns,
        Some(uid),
        &[python(), "-c", CONNECT, addr, &port.to_string()],
    );
    let said = stdout(&out).trim().to_owned();
    if said.is_empty() {
        format!("no answer: {}", String::from_utf8_lossy(&out.stderr).trim())
    } else {
        said
    }
}

fn traffic_is_redirected(backend: &str, test: &str) {
    if !root_or_skip() {
        return;
    }
    let ns = Namespaces::new(test, 2);
    let (client, pod) = (ns.name(0), ns.name(1));
    link(client, pod, 20);
    let _pod_ports = listeners(pod);
    let _client_ports = listeners(client);
    // Before init: straight to the app.
    assert_eq!(connect(client, 1000, "198.18.20.2", 8080), "app");

    ok(warden_in(
        pod,
        &["--proxy-uid", "1337", "--backend", backend, "--no-ipv6"],
    ));
    // Inbound TCP goes to the sidecar's inbound port, the admin port not.
    assert_eq!(connect(client, 1000, "198.18.20.2", 8080), "inbound");
    assert_eq!(connect(client, 1000, "198.18.20.2", 15000), "admin");
    // The app's outbound TCP goes to the sidecar's outbound port...
    assert_eq!(connect(pod, 1000, "198.18.20.1", 8080), "outbound");
    // ...the sidecar's own does not (it reaches the client's app), nor loopback.
    assert_eq!(connect(pod, 1337, "198.18.20.1", 8080), "app");
    assert_eq!(connect(pod, 1000, "127.0.0.1", 8080), "app");

    ok(warden_in(
        pod,
        &[
            "--proxy-uid",
            "1337",
            "--backend",
            backend,
            "--no-ipv6",
            "--remove",
        ],
    ));
    assert_eq!(connect(client, 1000, "198.18.20.2", 8080), "app");
    assert_eq!(connect(pod, 1000, "198.18.20.1", 8080), "app");
}

#[test]
fn iptables_redirects_the_workload_and_never_the_sidecar() {
    traffic_is_redirected("iptables", "tri");
}

#[test]
fn legacy_iptables_redirects_the_workload_and_never_the_sidecar() {
    traffic_is_redirected("iptables-legacy", "trl");
}

#[test]
fn nftables_redirects_the_workload_and_never_the_sidecar() {
    traffic_is_redirected("nftables", "trn");
}

#[test]
fn a_redirected_connection_tells_where_it_was_going() {
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::time::Duration;
    use warden_proxy::intercept::{Redirected, redirected};
    if !root_or_skip() {
        return;
    }
    let ns = Namespaces::new("odst", 2);
    let (client, pod) = (ns.name(0), ns.name(1));
    link(client, pod, 30);
    // The test runs as root: the "sidecar" uid is someone else, so the
    // test's own connections count as the app's and are redirected.
    ok(warden_in(
        pod,
        &["--proxy-uid", "1337", "--backend", "iptables", "--no-ipv6"],
    ));
    let seen = on_thread_in(pod, || {
        let listener = TcpListener::bind("0.0.0.0:15001").expect("the outbound port");
        let accept = |to: SocketAddr| {
            let _client = TcpStream::connect_timeout(&to, Duration::from_secs(3))
                .expect("connect (redirected to 15001)");
            let (accepted, _) = listener.accept().expect("accept");
            let local = accepted.local_addr().expect("local address");
            redirected(&accepted, local).expect("SO_ORIGINAL_DST")
        };
        // The app calls the client's 8080: it lands on 15001, and says so.
        let away = accept("198.18.30.1:8080".parse().expect("addr"));
        // Loopback is not redirected: a direct connection to the port is a loop.
        let direct = accept("127.0.0.1:15001".parse().expect("addr"));
        (away, direct)
    });
    assert_eq!(
        seen.0,
        Redirected::To("198.18.30.1:8080".parse().expect("addr"))
    );
    assert_eq!(seen.1, Redirected::Loop);
}
