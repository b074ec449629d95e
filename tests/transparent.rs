//! Transparent interception end to end, in real network namespaces with
//! the real iptables: pods whose apps know nothing of Warden (a Python
//! HTTP server, plain curl, PostgreSQL and psql), each pod's traffic
//! redirected by `warden init` into its own `warden proxy`, which finds the
//! destination by SO_ORIGINAL_DST, looks its identity up in the endpoints,
//! and carries the connection over mTLS to the destination pod's sidecar,
//! which authorizes it with Cedar and hands it to the app at the port the
//! caller dialled.
//!
//! Needs root (namespaces, iptables). Every namespace is named for this
//! process and deleted when the test ends, failed or not; addresses come
//! from 198.18.0.0/15; the host's own rules and interfaces are never
//! touched. The sidecars run as root (`--proxy-uid 0`), the apps and
//! clients as uid 1000, so only the apps' traffic is redirected.

mod support;

use std::time::Duration;

use support::eventually_blocking;
use support::mesh::{FRONTEND, INTRUDER, Identities, ORDERS, Proxy};
use support::netns::{
    Namespaces, bridge, in_ns, ok, python, root_or_skip, spawn_ready, stdout, warden_init_in,
};
use support::path_str;
use support::pods::*;

#[test]
fn apps_that_know_nothing_of_warden_get_mtls_and_per_request_authorization() {
    if !root_or_skip() {
        return;
    }
    let ns = Namespaces::new("tp", 5);
    let (frontend, orders, intruder, plain) = (ns.name(0), ns.name(1), ns.name(2), ns.name(3));
    let ips = bridge(ns.name(4), &[frontend, orders, intruder, plain], 60);
    let (orders_ip, plain_ip) = (&ips[1], &ips[3]);
    let ids = Identities::new();

    let _orders_app = spawn_ready(orders, Some(APP_UID), &[python(), "-c", APP, "8080"]);
    let _orders_db = Postgres::start(orders);
    let _orders_local = spawn_ready(orders, Some(APP_UID), &[python(), "-c", LOOPBACK_ONLY]);
    let _orders_grpc = spawn_ready(
        orders,
        Some(APP_UID),
        &[python(), "-c", GRPC_SERVER, "50051"],
    );
    let _plain_app = spawn_ready(plain, Some(APP_UID), &[python(), "-c", APP, "9090", "5353"]);
    let mut orders_sidecar = sidecar(orders, &ids, "orders", &server("strict"));
    let frontend_sidecar = sidecar(
        frontend,
        &ids,
        "frontend",
        &caller(orders_ip, "passthrough"),
    );
    let _intruder_sidecar = sidecar(intruder, &ids, "intruder", &caller(orders_ip, "deny"));

    // Plain curl to the other pod's address: mTLS between the sidecars,
    // and the app learns who called.
    let url = format!("http://{orders_ip}:8080/orders/1");
    let (code, body) = curl(frontend, &url, &[]);
    assert_eq!(code, "200", "{body}\n{}", orders_sidecar.logs());
    assert!(body.contains(&format!("URI={FRONTEND}")), "{body}");
    assert!(body.contains("\"path\": \"/orders/1\""), "{body}");
    // h2c from the app, HTTP/1.1 to the app behind the other sidecar.
    let (code, body) = curl(frontend, &url, &["--http2-prior-knowledge"]);
    assert_eq!(code, "200", "{body}");
    assert!(body.contains(&format!("URI={FRONTEND}")), "{body}");

    // A WebSocket: authorized, then spliced between the two apps.
    let out = in_ns(
        frontend,
        Some(APP_UID),
        &[python(), "-c", WS_CLIENT, orders_ip, "8080"],
    );
    assert_eq!(
        stdout(&out),
        "HTTP/1.1 101 Switching Protocols\necho:hello over the tunnel\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // gRPC (h2c from grpcio), to a gRPC server behind the other sidecar.
    let grpc = |ns: &str| {
        let target = format!("{orders_ip}:50051");
        let out = in_ns(ns, Some(APP_UID), &[python(), "-c", GRPC_CLIENT, &target]);
        stdout(&out).trim().to_owned()
    };
    assert_eq!(
        grpc(frontend),
        format!("hello frontend, you are {FRONTEND}")
    );
    assert_eq!(grpc(intruder), "PERMISSION_DENIED");

    // Another namespace's workload: its sidecar proves it, the policy
    // (the built-in same-namespace rule) denies it.
    let (code, body) = curl(intruder, &url, &[]);
    assert_eq!(code, "403", "{body}");
    assert!(!body.contains("URI="), "the app was never reached: {body}");

    // Not HTTP, to a port that is not in orders' inbound.opaque_ports:
    // refused, so leaving out ALPN never trades the port's per-request
    // decisions for one `connect`.
    let say = |ns: &str, host: &str, port: &str, what: &str| {
        let out = in_ns(ns, Some(APP_UID), &[python(), "-c", SAY, host, port, what]);
        stdout(&out).trim().to_owned()
    };
    assert_eq!(say(frontend, orders_ip, "8080", "HELLO"), "closed");
    assert_eq!(transparent(orders, "inbound", "refused"), 1.0);
    // A service on the pod's loopback only stays there: the sidecar dials
    // the pod's address, where nothing listens on that port.
    let (code, body) = curl(frontend, &format!("http://{orders_ip}:7070/"), &[]);
    assert_eq!(code, "503", "{body}");
    assert!(!body.contains("loopback only"), "{body}");

    // A pod without a sidecar: strict orders refuses it at the handshake.
    let (code, body) = curl(plain, &url, &[]);
    assert_eq!(code, "000", "plaintext to a strict workload: {body}");

    // psql to the pod's PostgreSQL: opaque TCP (the client speaks first,
    // and not HTTP) through mTLS, one `connect` decision each.
    let answer = psql(frontend, orders_ip, "select 'through ' || 'warden'");
    assert_eq!(
        answer.as_deref(),
        Ok("through warden"),
        "{}",
        orders_sidecar.logs()
    );
    let refused = psql(intruder, orders_ip, "select 1");
    assert!(refused.is_err(), "{refused:?}");
    let tcp = |decision: &str| {
        metric(
            orders,
            &format!(
                "warden_tcp_connections_total{{direction=\"inbound\",decision=\"{decision}\"}}"
            ),
        )
    };
    assert_eq!((tcp("allow"), tcp("deny")), (1.0, 1.0));

    // Outside the mesh: passed through in plaintext, or refused.
    let outside = format!("http://{plain_ip}:9090/public");
    let (code, body) = curl(frontend, &outside, &[]);
    assert_eq!(code, "200", "passthrough: {body}");
    assert!(
        body.contains("\"xfcc\": null"),
        "plaintext, no identity: {body}"
    );
    let (code, _) = curl(intruder, &outside, &[]);
    assert_eq!(code, "000", "outbound.unknown = deny");

    // UDP (DNS and the like) is never redirected.
    let out = in_ns(
        frontend,
        Some(APP_UID),
        &[python(), "-c", UDP_CLIENT, plain_ip, "5353"],
    );
    assert_eq!(stdout(&out).trim(), "udp:ping");

    // curl twice, the WebSocket, gRPC, the loopback-only port; psql and
    // the bytes that are not HTTP.
    assert_eq!(transparent(frontend, "outbound", "meshed_http"), 5.0);
    assert_eq!(transparent(frontend, "outbound", "passthrough"), 1.0);
    assert_eq!(transparent(frontend, "outbound", "meshed_tcp"), 2.0);
    assert_eq!(transparent(intruder, "outbound", "meshed_http"), 2.0);
    assert_eq!(transparent(intruder, "outbound", "denied"), 1.0);
    assert!(transparent(orders, "inbound", "redirected") >= 3.0);
    drop(frontend_sidecar);

    // A mesh destination that does not prove the identity its endpoint
    // names: 502, never a plaintext fallback.
    let impostor =
        format!("outbound.endpoints=[{{address = \"{orders_ip}\", identity = \"{INTRUDER}\"}}]");
    let mut settings = caller(orders_ip, "passthrough");
    settings[2] = impostor;
    ok(warden_init_in(
        frontend,
        &["--proxy-uid", "0", "--backend", "iptables", "--remove"],
    ));
    let _frontend_sidecar = sidecar(frontend, &ids, "frontend", &settings);
    let (code, body) = curl(frontend, &url, &[]);
    assert_eq!(code, "502", "{body}");
    assert!(
        body.contains(INTRUDER),
        "the refusal names the identity expected: {body}"
    );
    // Opaque TCP to it: the app's connection is closed, after an mTLS
    // attempt (never passed through).
    let refused = psql(frontend, orders_ip, "select 1");
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(transparent(frontend, "outbound", "meshed_tcp"), 1.0);
    assert_eq!(transparent(frontend, "outbound", "passthrough"), 0.0);

    // Loops: the app dialling the transparent port itself (loopback is not
    // redirected), and a peer dialling the inbound port directly (its
    // original destination is the listener; no inbound.app to send it to).
    assert_eq!(say(frontend, "127.0.0.1", "15001", ""), "closed");
    assert_eq!(say(plain, orders_ip, "15006", ""), "closed");
    assert_eq!(transparent(frontend, "outbound", "loop"), 1.0);
    assert_eq!(transparent(orders, "inbound", "loop"), 1.0);

    // Permissive: the plain pod is an unauthenticated caller; the built-in
    // policy opens /healthz to anyone, nothing else.
    let _ = orders_sidecar.terminate();
    ok(warden_init_in(
        orders,
        &["--proxy-uid", "0", "--backend", "iptables", "--remove"],
    ));
    orders_sidecar = sidecar(orders, &ids, "orders", &server("permissive"));
    let (code, body) = curl(plain, &format!("http://{orders_ip}:8080/healthz"), &[]);
    assert_eq!(code, "200", "{body}\n{}", orders_sidecar.logs());
    assert!(body.contains("\"xfcc\": null"), "{body}");
    let (code, _) = curl(plain, &url, &[]);
    assert_eq!(code, "403");
    // Plaintext that is not HTTP: refused (opaque ports take TLS only).
    assert_eq!(say(plain, orders_ip, "8080", "HELLO"), "closed");
    assert_eq!(say(plain, orders_ip, "5432", "HELLO"), "closed");
    assert_eq!(transparent(orders, "inbound", "refused"), 2.0);
}

/// The control plane in a pod of its own: `orders` registers its address
/// and port, `frontend` learns it from the watch (strict `orders` serves
/// only mTLS, so a 200 with frontend's XFCC means discovery routed it); renewals re-register before the
/// first SVID's entry expires; a policy change and a revocation take
/// effect through transparent interception as through routes. The
/// sidecars' own traffic to the control plane is not redirected (else
/// they could not join).
#[test]
fn discovery_rotation_policy_reload_and_revocation_in_transparent_mode() {
    use support::control::Control;
    if !root_or_skip() {
        return;
    }
    let ns = Namespaces::new("td", 4);
    let (frontend, orders, plane) = (ns.name(0), ns.name(1), ns.name(2));
    let ips = bridge(ns.name(3), &[frontend, orders, plane], 61);
    let (orders_ip, plane_ip) = (&ips[1], &ips[2]);
    let dir = tempfile::tempdir().expect("tempdir");
    let listen = format!("{plane_ip}:8443").parse().expect("address");
    let control = Control::start_in_namespace(
        plane,
        &dir.path().join("control"),
        listen,
        &["--svid-ttl", "12s"],
    );
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).expect("policy dir");
    write_policies(&policies, false);

    let _orders_app = spawn_ready(orders, Some(APP_UID), &[python(), "-c", APP, "8080"]);
    let start = |ns: &str, name: &str, id: &str, extra: Vec<String>| {
        ok(warden_init_in(
            ns,
            &["--proxy-uid", "0", "--backend", "nftables"],
        ));
        let mut settings = control.sidecar_settings(name, &control.token(id), &extra);
        settings.push("admin.listen=127.0.0.1:15000".to_owned());
        let proxy =
            Proxy::start_in_namespace(ns, &dir.path().join(format!("{name}.log")), &settings);
        ready(ns, &proxy);
        proxy
    };
    let mut orders_settings = server("strict");
    orders_settings.extend([
        format!("control.endpoint_addresses={orders_ip}"),
        "control.endpoint_ports=[8080]".to_owned(),
        format!("authz.policies={}", path_str(&policies)),
        "authz.reload_interval=100ms".to_owned(),
    ]);
    let orders_sidecar = start(orders, "orders", ORDERS, orders_settings);
    let frontend_sidecar = start(
        frontend,
        "frontend",
        FRONTEND,
        vec![
            "outbound.transparent_listen=[::]:15001".to_owned(),
            "outbound.unknown=passthrough".to_owned(),
        ],
    );
    let identity = |ns: &str| -> serde_json::Value {
        serde_json::from_str(&admin(ns, "/identity").1).expect("/identity is JSON")
    };
    eventually_blocking(
        "frontend to learn the registry",
        Duration::from_secs(10),
        || {
            let seen = identity(frontend);
            if seen["control"]["endpoints"].as_u64() == Some(1) {
                Ok(())
            } else {
                Err(format!("{seen}\n{}", orders_sidecar.logs()))
            }
        },
    );
    let url = format!("http://{orders_ip}:8080/orders/1");
    let (code, body) = curl(frontend, &url, &[]);
    assert_eq!(code, "200", "{body}\n{}", frontend_sidecar.logs());
    assert!(body.contains(&format!("URI={FRONTEND}")), "{body}");
    let listed = control.cli_ok(&["endpoints", "list"]);
    assert!(
        listed.contains(orders_ip.as_str()) && listed.contains(ORDERS),
        "{listed}"
    );
    // A port orders did not register, at its mesh address: closed, never
    // passed through in plaintext (though outbound.unknown says passthrough).
    let (code, _) = curl(frontend, &format!("http://{orders_ip}:9999/"), &[]);
    assert_eq!(code, "000");
    assert_eq!(
        (
            transparent(frontend, "outbound", "denied"),
            transparent(frontend, "outbound", "passthrough")
        ),
        (1.0, 0.0)
    );

    // Past the first SVIDs' lifetime: both renewed (orders re-registered,
    // or frontend, which routes only what discovery names, would refuse).
    let first = identity(orders);
    let left = first["seconds_left"].as_u64().expect("seconds_left");
    let first_expired = std::time::Instant::now() + Duration::from_secs(left + 1);
    eventually_blocking("the first SVIDs to expire", Duration::from_secs(30), || {
        let seen = identity(orders);
        if seen["serial"] != first["serial"] && std::time::Instant::now() > first_expired {
            Ok(())
        } else {
            Err(format!("{seen}"))
        }
    });
    let (code, body) = curl(frontend, &url, &[]);
    assert_eq!(
        code,
        "200",
        "after renewals: {body}\n{}",
        frontend_sidecar.logs()
    );

    // A policy change reaches connections made through interception.
    write_policies(&policies, true);
    eventually_blocking(
        "the forbid to apply",
        Duration::from_secs(10),
        || match curl(frontend, &url, &[]) {
            (code, _) if code == "403" => Ok(()),
            (code, body) => Err(format!("{code} {body}")),
        },
    );
    write_policies(&policies, false);
    eventually_blocking("the forbid to go", Duration::from_secs(10), || {
        match curl(frontend, &url, &[]) {
            (code, _) if code == "200" => Ok(()),
            (code, body) => Err(format!("{code} {body}")),
        }
    });

    // Revoked: orders refuses frontend's certificate from then on (502
    // from frontend's sidecar: the handshake failed).
    control.cli_ok(&["identities", "revoke", FRONTEND, "--reason", "test"]);
    eventually_blocking(
        "the revocation to apply",
        Duration::from_secs(10),
        || match curl(frontend, &url, &[]) {
            (code, _) if code == "502" => Ok(()),
            (code, body) => Err(format!("{code} {body}")),
        },
    );
}
