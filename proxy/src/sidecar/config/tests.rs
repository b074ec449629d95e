//! Layering and validation, each error checked for the key it names.

use std::path::PathBuf;
use std::time::Duration;

use super::*;

fn load(file: &str, env: &[(&str, &str)], sets: &[&str]) -> Result<SidecarConfig, ConfigError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sidecar.toml");
    std::fs::write(&path, file).expect("write");
    SidecarConfig::load(
        Some(&path),
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        &sets.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
    )
}

const MINIMAL: &str = "[identity]\ndir = \"/run/svid\"\n[inbound]\nlisten = \"127.0.0.1:15006\"\napp = \"127.0.0.1:8080\"\n";

#[test]
fn layers_override_in_order() {
    let c = load(
        MINIMAL,
        &[
            ("WARDEN_LIMITS_MAX_CONNECTIONS", "7"),
            ("WARDEN_INBOUND_MODE", "permissive"),
            ("WARDEN_LOG", "debug"),
        ],
        &["limits.max_connections=9", "limits.drain_timeout=3s"],
    )
    .expect("valid");
    assert_eq!(c.limits.max_connections, 9);
    assert_eq!(c.inbound.mode, InboundMode::Permissive);
    assert_eq!(c.limits.drain_timeout, Duration::from_secs(3));
    assert_eq!(
        c.identity.cert_path().expect("cert"),
        PathBuf::from("/run/svid/svid.pem")
    );
}

#[test]
fn errors_name_the_key() {
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str], &'a str);
    let cases: &[Case] = &[
        (
            MINIMAL,
            &[("WARDEN_INBOUND_LISTEN", "nowhere")],
            &[],
            "inbound.listen",
        ),
        (
            MINIMAL,
            &[],
            &["limits.idle_timeout=soon"],
            "limits.idle_timeout",
        ),
        (
            MINIMAL,
            &[],
            &["limits.max_header_bytes=100"],
            "limits.max_header_bytes",
        ),
        (MINIMAL, &[], &["inbound.lisen=1"], "lisen"),
        (MINIMAL, &[], &["authz.mode=maybe"], "authz.mode"),
        (
            "[inbound]\nlisten = \"127.0.0.1:1\"\napp = \"127.0.0.1:2\"\n",
            &[],
            &[],
            "identity.cert",
        ),
        (
            "[identity]\ndir = \"/x\"\n[[outbound.routes]]\nlisten = \"127.0.0.1:1\"\nupstream = \"127.0.0.1:2\"\nidentity = \"spiffe://td/a b\"\n",
            &[],
            &[],
            "outbound.routes[0].identity",
        ),
        ("[identity]\ndir = \"/x\"\n", &[], &[], "nothing to do"),
        (
            MINIMAL,
            &[],
            &[
                "outbound.services=[{authority=\"a b\", upstream=\"127.0.0.1:1\", identity=\"spiffe://td/x\"}]",
                "outbound.proxy_listen=127.0.0.1:0",
            ],
            "outbound.services[0].authority",
        ),
        (
            MINIMAL,
            &[],
            &[
                "outbound.services=[{authority=\"a\", upstream=\"127.0.0.1:1\", identity=\"spiffe://td/x\"}]",
            ],
            "outbound.proxy_listen",
        ),
        (
            MINIMAL,
            &[],
            &["admin.listen=127.0.0.1:15006"],
            "admin.listen",
        ),
    ];
    for (file, env, sets, needle) in cases {
        let err = load(file, env, sets).expect_err(needle).to_string();
        assert!(err.contains(needle), "{needle}: {err}");
    }
}

#[test]
fn a_syntax_error_names_the_file() {
    let err = load("[inbound\n", &[], &[])
        .expect_err("syntax")
        .to_string();
    assert!(err.contains("sidecar.toml"), "{err}");
}

#[test]
fn one_identity_source_never_both_nor_neither() {
    let control = "[control]\naddress = \"127.0.0.1:7443\"\nserver_id = \"spiffe://td/warden/control\"\nbundle = \"/b.pem\"\ntoken = \"t\"\n[inbound]\nlisten = \"127.0.0.1:15006\"\napp = \"127.0.0.1:8080\"\n";
    let c = load(control, &[], &[]).expect("control source");
    let source = c.control().expect("control");
    assert!(matches!(source.join, Some(JoinToken::Inline(_))));
    assert!(
        !format!("{source:?}").contains("\"t\""),
        "the token is never printed"
    );
    assert!(c.identity.cert_path().is_err());
    let both = format!("{control}[identity]\ndir = \"/run/svid\"\n");
    let err = load(&both, &[], &[]).expect_err("both").to_string();
    assert!(err.contains("identity.dir"), "{err}");
    let neither = "[inbound]\nlisten = \"127.0.0.1:15006\"\napp = \"127.0.0.1:8080\"\n";
    let err = load(neither, &[], &[]).expect_err("neither").to_string();
    assert!(err.contains("identity.cert"), "{err}");
    let files = load(MINIMAL, &[], &[]).expect("files");
    let IdentitySource::Files(f) = &files.identity else {
        panic!("files expected: {:?}", files.identity);
    };
    assert_eq!(f.bundle, PathBuf::from("/run/svid/bundle.pem"));
}

#[test]
fn every_listener_of_every_section_is_unique() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["inbound.opaque=[{listen=\"127.0.0.1:15006\", app=\"127.0.0.1:5432\"}]"],
            "inbound.opaque[0].listen",
        ),
        (
            &[
                "outbound.routes=[{listen=\"127.0.0.1:4000\", upstream=\"127.0.0.1:1\", identity=\"spiffe://td/x\"}]",
                "outbound.proxy_listen=127.0.0.1:4000",
            ],
            "outbound.proxy_listen",
        ),
    ];
    for (sets, key) in cases {
        let err = load(MINIMAL, &[], sets).expect_err(key).to_string();
        assert!(
            err.contains(key) && err.contains("used by another listener"),
            "{key}: {err}"
        );
    }
    // Port 0 (any free port) is never a clash.
    load(
        MINIMAL,
        &[],
        &[
            "admin.listen=127.0.0.1:0",
            "outbound.proxy_listen=127.0.0.1:0",
        ],
    )
    .expect("port 0 twice");
}

#[test]
fn the_inbound_listener_comes_with_its_app_and_services_are_normalized() {
    let c = load(
        MINIMAL,
        &[],
        &[
            "outbound.services=[{authority=\"API.Example\", upstream=\"127.0.0.1:1\", identity=\"spiffe://td/x\"}]",
            "outbound.proxy_listen=127.0.0.1:0",
        ],
    )
    .expect("valid");
    let http = c.inbound.http.expect("inbound http");
    assert_eq!(http.listen, "127.0.0.1:15006".parse().expect("addr"));
    assert!(
        matches!(&http.app, InboundApp::Fixed(app) if app.to_string() == "127.0.0.1:8080"),
        "{:?}",
        http.app
    );
    let proxy = c.outbound.proxy.expect("proxy");
    assert_eq!(proxy.services[0].authority, "api.example:80");
}

#[test]
fn transparent_mode_needs_no_app_and_endpoints_need_the_transparent_listener() {
    const TRANSPARENT: &str = "[identity]\ndir = \"/run/svid\"\n[inbound]\nlisten = \"0.0.0.0:15006\"\ntransparent = true\n[outbound]\ntransparent_listen = \"127.0.0.1:15001\"\nendpoints = [{address = \"198.18.0.2\", identity = \"spiffe://td/b\"}, {address = \"198.18.0.3:5432\", identity = \"spiffe://td/db\"}]\n";
    let c = load(TRANSPARENT, &[], &[]).expect("valid");
    let http = c.inbound.http.expect("inbound http");
    assert!(
        matches!(http.app, InboundApp::Transparent { fallback: None, .. }),
        "{:?}",
        http.app
    );
    let t = c.outbound.transparent.expect("transparent listener");
    assert_eq!(t.unknown, UnknownDestination::Passthrough, "the default");
    assert_eq!(t.detect_timeout, Duration::from_secs(1));
    assert_eq!(c.outbound.endpoints.len(), 2);
    let db = c
        .outbound
        .endpoints
        .lookup("198.18.0.3:5432".parse().expect("addr"))
        .expect("listed");
    assert_eq!(db.as_str(), "spiffe://td/db");
    let c = load(
        TRANSPARENT,
        &[("WARDEN_INBOUND_APP", "127.0.0.1:8080")],
        &["outbound.unknown=deny"],
    )
    .expect("valid");
    assert!(matches!(
        c.inbound.http.expect("http").app,
        InboundApp::Transparent {
            fallback: Some(_),
            ..
        }
    ));
    assert_eq!(
        c.outbound.transparent.expect("listener").unknown,
        UnknownDestination::Deny
    );
    for (set, key) in [
        ("outbound.unknown=allow", "outbound.unknown"),
        ("outbound.detect_timeout=0s", "outbound.detect_timeout"),
        (
            "outbound.transparent_listen=0.0.0.0:15006",
            "outbound.transparent_listen",
        ),
        (
            "outbound.endpoints=[{address=\"db.local\", identity=\"spiffe://td/db\"}]",
            "outbound.endpoints[0].address",
        ),
        (
            "outbound.endpoints=[{address=\"198.18.0.2\", identity=\"spiffe://td/a\"}, {address=\"198.18.0.2\", identity=\"spiffe://td/b\"}]",
            "outbound.endpoints[1].address",
        ),
        (
            "outbound.endpoints=[{address=\"198.18.0.2\", identity=\"not an id\"}]",
            "outbound.endpoints[0].identity",
        ),
    ] {
        let err = load(TRANSPARENT, &[], &[set]).expect_err(set).to_string();
        assert!(err.contains(key), "{set}: {err}");
    }
    // Endpoints without the listener that uses them.
    let err = load(
        MINIMAL,
        &[],
        &["outbound.endpoints=[{address=\"198.18.0.2\", identity=\"spiffe://td/b\"}]"],
    )
    .expect_err("endpoints alone")
    .to_string();
    assert!(err.contains("outbound.transparent_listen"), "{err}");
    // Transparent with no listener: named as inbound.listen's need.
    let err = load(
        "[identity]\ndir = \"/run/svid\"\n[inbound]\ntransparent = true\n",
        &[],
        &[],
    )
    .expect_err("no listener")
    .to_string();
    assert!(err.contains("inbound.listen"), "{err}");
}

#[test]
fn http1_to_peers_is_dedicated_unless_set_to_multiplexed() {
    let c = load(MINIMAL, &[], &[]).expect("valid");
    assert_eq!(c.outbound.peer_http1, PeerHttp1::Dedicated, "the default");
    let c = load(MINIMAL, &[], &["outbound.peer_http1=multiplexed"]).expect("valid");
    assert_eq!(c.outbound.peer_http1, PeerHttp1::Multiplexed);
    let err = load(MINIMAL, &[], &["outbound.peer_http1=pooled"])
        .expect_err("unknown value")
        .to_string();
    assert!(err.contains("outbound.peer_http1"), "{err}");
}

#[test]
fn rotation_defaults_and_bounds() {
    let c = load(MINIMAL, &[], &[]).expect("valid");
    assert_eq!(c.rotation, RotationPolicy::default());
    let c = load(
        MINIMAL,
        &[("WARDEN_ROTATION_RENEW_FRACTION", "0.6")],
        &[
            "rotation.jitter=0.05",
            "rotation.backoff_base=250ms",
            "rotation.backoff_cap=10s",
        ],
    )
    .expect("valid");
    assert_eq!(c.rotation.refresh_fraction, 0.6);
    assert_eq!(c.rotation.jitter_fraction, 0.05);
    assert_eq!(c.rotation.initial_backoff, Duration::from_millis(250));
    assert_eq!(c.rotation.max_backoff, Duration::from_secs(10));
    for (set, key) in [
        ("rotation.renew_fraction=1.5", "rotation.renew_fraction"),
        ("rotation.renew_fraction=nan", "rotation.renew_fraction"),
        ("rotation.jitter=0.6", "rotation.jitter"),
        ("rotation.backoff_base=1ms", "rotation.backoff_base"),
        ("rotation.backoff_cap=500ms", "rotation.backoff_cap"),
        ("rotation.retry=1", "retry"),
    ] {
        let err = load(MINIMAL, &[], &[set]).expect_err(set).to_string();
        assert!(err.contains(key), "{set}: {err}");
    }
}

#[test]
fn endpoint_addresses_come_as_a_list_or_one_string_and_must_be_dialable() {
    const CONTROL: &str = "[control]\naddress = \"127.0.0.1:8443\"\nserver_id = \"spiffe://td/warden/control\"\nbundle = \"/b.pem\"\ntoken = \"t\"\n[outbound]\ntransparent_listen = \"127.0.0.1:15001\"\n";
    let addresses = |c: &SidecarConfig| c.control().expect("control").endpoint_addresses.clone();
    let from_env = load(
        CONTROL,
        &[(
            "WARDEN_CONTROL_ENDPOINT_ADDRESSES",
            "198.18.0.2, 2001:db8::2",
        )],
        &["control.endpoint_ports=[8080]"],
    )
    .expect("valid");
    assert_eq!(
        addresses(&from_env),
        vec![
            "198.18.0.2".parse::<std::net::IpAddr>().expect("ip"),
            "2001:db8::2".parse().expect("ip")
        ]
    );
    assert_eq!(
        from_env.control().expect("control").endpoint_ports,
        vec![8080]
    );
    let listed = load(
        CONTROL,
        &[],
        &["control.endpoint_addresses=[\"198.18.0.3\"]"],
    )
    .expect("valid");
    assert_eq!(addresses(&listed).len(), 1);
    for (set, key) in [
        (
            "control.endpoint_addresses=127.0.0.1",
            "control.endpoint_addresses",
        ),
        (
            "control.endpoint_addresses=0.0.0.0",
            "control.endpoint_addresses",
        ),
        (
            "control.endpoint_addresses=198.18.0.2,198.18.0.2",
            "control.endpoint_addresses",
        ),
        (
            "control.endpoint_addresses=pod.local",
            "control.endpoint_addresses",
        ),
        ("control.endpoint_ports=[8080]", "control.endpoint_ports"),
    ] {
        let err = load(CONTROL, &[], &[set]).expect_err(set).to_string();
        assert!(err.contains(key), "{set}: {err}");
    }
    // Without a control plane there is nowhere to register.
    let err = load(MINIMAL, &[], &["control.endpoint_addresses=198.18.0.2"])
        .expect_err("no control plane")
        .to_string();
    assert!(err.contains("control.address"), "{err}");
}

#[test]
fn a_service_account_token_stands_in_for_the_join_token_never_beside_it() {
    const CONTROL: &str = "[control]\naddress = \"127.0.0.1:8443\"\nserver_id = \"spiffe://td/warden/control\"\nbundle = \"/b.pem\"\n[inbound]\nlisten = \"127.0.0.1:15006\"\napp = \"127.0.0.1:8080\"\n";
    let c = load(
        CONTROL,
        &[],
        &["control.k8s_token_file=/var/run/secrets/warden/token"],
    )
    .expect("valid");
    assert!(matches!(
        c.control().expect("control").join,
        Some(JoinToken::ServiceAccount(_))
    ));
    let err = load(
        CONTROL,
        &[],
        &["control.k8s_token_file=/t", "control.token=wdt_x"],
    )
    .expect_err("both")
    .to_string();
    assert!(
        err.contains("control.token") && err.contains("one of"),
        "{err}"
    );
    let err = load(CONTROL, &[], &[]).expect_err("neither").to_string();
    assert!(err.contains("control.k8s_token_file"), "{err}");
}

#[test]
fn kubernetes_service_links_are_not_settings() {
    // What the kubelet sets for Services named warden, warden-control and
    // warden-inbound in the pod's namespace.
    let links = [
        ("WARDEN_SERVICE_HOST", "10.96.0.10"),
        ("WARDEN_SERVICE_PORT", "80"),
        ("WARDEN_SERVICE_PORT_HTTP", "80"),
        ("WARDEN_PORT", "tcp://10.96.0.10:80"),
        ("WARDEN_PORT_80_TCP", "tcp://10.96.0.10:80"),
        ("WARDEN_PORT_80_TCP_PROTO", "tcp"),
        ("WARDEN_PORT_80_TCP_PORT", "80"),
        ("WARDEN_PORT_80_TCP_ADDR", "10.96.0.10"),
        ("WARDEN_CONTROL_SERVICE_HOST", "10.96.0.11"),
        ("WARDEN_CONTROL_SERVICE_PORT_API", "7443"),
        ("WARDEN_CONTROL_PORT", "tcp://10.96.0.11:7443"),
        ("WARDEN_CONTROL_PORT_7443_TCP_ADDR", "10.96.0.11"),
        ("WARDEN_INBOUND_PORT_8080_TCP", "tcp://10.96.0.12:8080"),
        ("WARDEN_INBOUND_SERVICE_HOST", "10.96.0.12"),
    ];
    let config = load(MINIMAL, &links, &[]).expect("service links are ignored");
    assert_eq!(config.service.name, "app");
    // A real setting next to them still counts, and a typo still fails.
    assert!(load(MINIMAL, &[("WARDEN_INBOUND_LISTN", "x")], &[]).is_err());
}

#[test]
fn the_workload_api_section_and_its_identity_source() {
    let c = load(
        MINIMAL,
        &[
            ("WARDEN_WORKLOAD_API_SOCKET", "/run/warden/workload.sock"),
            ("WARDEN_WORKLOAD_API_ALLOWED_UIDS", "[1000, 1001]"),
        ],
        &["workload_api.mode=\"0600\""],
    )
    .expect("valid");
    assert_eq!(
        c.workload_api.socket,
        Some(PathBuf::from("/run/warden/workload.sock"))
    );
    assert_eq!(c.workload_api.allowed_uids, [1000, 1001]);
    assert_eq!(c.workload_api.mode, 0o600);
    let c = load(
        MINIMAL,
        &[],
        &[
            "workload_api.socket=\"/w.sock\"",
            "workload_api.allowed_uids=[7]",
            "workload_api.mode=416",
        ],
    )
    .expect("valid");
    assert_eq!(c.workload_api.mode, 0o640);

    // The Workload API alone is something to do.
    let c = load(
        "[identity]\nworkload_api = \"unix:///run/spire/agent.sock\"\n[workload_api]\nsocket = \"/w.sock\"\nallowed_uids = [1]\n",
        &[],
        &[],
    )
    .expect("valid");
    let IdentitySource::WorkloadApi(upstream) = &c.identity else {
        panic!("{:?}", c.identity)
    };
    assert_eq!(upstream.endpoint, "unix:///run/spire/agent.sock");
    assert!(c.identity.cert_path().is_err());

    let upstream = "[identity]\nworkload_api = \"unix:/run/spire/agent.sock\"\n[inbound]\nlisten = \"127.0.0.1:15006\"\napp = \"127.0.0.1:8080\"\n";
    let c = load(upstream, &[], &[]).expect("unix:/path is accepted too");
    let IdentitySource::WorkloadApi(u) = &c.identity else {
        panic!("{:?}", c.identity)
    };
    assert_eq!(u.endpoint, "unix:///run/spire/agent.sock");

    for (file, sets, key) in [
        (
            MINIMAL,
            &["workload_api.socket=\"/w.sock\""][..],
            "workload_api.allowed_uids",
        ),
        (
            MINIMAL,
            &[
                "workload_api.socket=\"w.sock\"",
                "workload_api.allowed_uids=[1]",
            ][..],
            "workload_api.socket",
        ),
        (
            MINIMAL,
            &["workload_api.mode=\"0999\""][..],
            "workload_api.mode",
        ),
        (
            MINIMAL,
            &["workload_api.mode=4096"][..],
            "workload_api.mode",
        ),
        (
            MINIMAL,
            &["identity.workload_api=\"unix:///a.sock\""][..],
            "identity.workload_api",
        ),
        (
            upstream,
            &["identity.workload_api=\"tcp://1.2.3.4:1\""][..],
            "identity.workload_api",
        ),
        (
            upstream,
            &["control.address=\"127.0.0.1:7443\""][..],
            "identity.workload_api",
        ),
    ] {
        let err = load(file, &[], sets).expect_err("refused").to_string();
        assert!(err.contains(key), "{sets:?}: {err}");
    }
}
