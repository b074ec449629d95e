//! The `warden` CLI as people use it: exit codes, messages, files.

mod support;

use std::os::unix::fs::PermissionsExt;

use support::*;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn id_check_exit_codes_and_rules() {
    let ok = warden(&["id", "check", "spiffe://example.org/ns/prod/sa/api"]);
    assert!(ok.status.success());
    assert!(
        stdout(&ok).contains("namespace:    prod"),
        "{}",
        stdout(&ok)
    );
    for (id, rule) in [
        ("spiffe://Example.org/x", "trust domain must be lowercase"),
        ("spiffe://example.org:443/x", "must not carry a port"),
        ("spiffe://user@example.org/x", "must not carry userinfo"),
        (
            "spiffe://example.org/a%2Fb",
            "percent-encoding is not allowed",
        ),
        ("spiffe://example.org/a/../b", "`.` or `..` segment"),
        ("spiffe://example.org/a/", "must not end with a slash"),
        ("spiffe://example.org/a?x", "a query is not allowed"),
        ("https://example.org/a", "scheme must be `spiffe://`"),
    ] {
        let out = warden(&["id", "check", id]);
        assert_eq!(out.status.code(), Some(1), "{id}");
        assert!(stdout(&out).contains(rule), "{id}: {}", stdout(&out));
    }
}

#[test]
fn ca_init_writes_a_0600_key_and_never_overwrites() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = tmp.path().join("ca");
    ca_init(&ca, "example.org");
    for (file, mode) in [("ca.key", 0o600), ("ca.crt", 0o644), ("bundle.pem", 0o644)] {
        let m = std::fs::metadata(ca.join(file))
            .expect("stat")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(m, mode, "{file}");
    }
    let before = std::fs::read(ca.join("ca.key")).expect("read");
    let again = warden(&[
        "ca",
        "init",
        "--trust-domain",
        "example.org",
        "--dir",
        path_str(&ca),
    ]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("already exists; refusing to overwrite"),
        "{}",
        stderr(&again)
    );
    assert_eq!(std::fs::read(ca.join("ca.key")).expect("read"), before);

    let bad_td = warden(&[
        "ca",
        "init",
        "--trust-domain",
        "Example.org",
        "--dir",
        path_str(&tmp.path().join("x")),
    ]);
    assert_eq!(bad_td.status.code(), Some(1));
    assert!(
        stderr(&bad_td).contains("--trust-domain \"Example.org\" is not a valid trust domain"),
        "{}",
        stderr(&bad_td)
    );
}

#[test]
fn ca_init_intermediate_under_an_existing_root() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    ca_init(&root, "example.org");
    let int = tmp.path().join("int");
    ca_init_intermediate(&int, &root, "example.org");
    let out = svid_issue(&int, "spiffe://example.org/api", &tmp.path().join("svid"));
    let inspect = warden(&[
        "svid",
        "inspect",
        path_str(&out.join("svid.pem")),
        "--bundle",
        path_str(&root.join("bundle.pem")),
    ]);
    assert!(inspect.status.success(), "{}", stdout(&inspect));
    assert!(
        stdout(&inspect).contains("chain:       2 certificate(s)"),
        "{}",
        stdout(&inspect)
    );
    assert!(stdout(&inspect).contains("bundle:      chain validates"));
}

#[test]
fn svid_issue_and_inspect() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = tmp.path().join("ca");
    ca_init(&ca, "example.org");
    let out = tmp.path().join("svid");
    let printed = warden_ok(&[
        "svid",
        "issue",
        "--ca-dir",
        path_str(&ca),
        "--spiffe-id",
        "spiffe://example.org/api",
        "--ttl",
        "15m",
        "--out",
        path_str(&out),
    ]);
    assert!(
        printed.contains("issued spiffe://example.org/api"),
        "{printed}"
    );
    let mode = std::fs::metadata(out.join("svid.key"))
        .expect("stat")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);

    let inspect = warden(&["svid", "inspect", path_str(&out.join("svid.pem")), "--json"]);
    assert!(inspect.status.success());
    let json: serde_json::Value = serde_json::from_slice(&inspect.stdout).expect("JSON");
    assert_eq!(json["spiffe_id"], "spiffe://example.org/api");
    assert_eq!(json["broken_rules"], serde_json::json!([]));
    let left = json["seconds_left"].as_i64().expect("seconds_left");
    assert!((800..=900).contains(&left), "15m TTL, {left}s left");

    // Refusals name the reason.
    for (id, ttl, msg) in [
        (
            "spiffe://other.org/api",
            "1h",
            "outside this CA's trust domain",
        ),
        ("spiffe://example.org", "1h", "has no path"),
        (
            "spiffe://example.org/api",
            "48h",
            "exceeds this CA's maximum",
        ),
    ] {
        let r = warden(&[
            "svid",
            "issue",
            "--ca-dir",
            path_str(&ca),
            "--spiffe-id",
            id,
            "--ttl",
            ttl,
            "--out",
            path_str(&out),
        ]);
        assert_eq!(r.status.code(), Some(1), "{id}");
        assert!(stderr(&r).contains(msg), "{id}: {}", stderr(&r));
    }
    let missing = warden(&[
        "svid",
        "issue",
        "--ca-dir",
        path_str(&tmp.path().join("none")),
        "--spiffe-id",
        "spiffe://example.org/a",
        "--out",
        path_str(&out),
    ]);
    assert!(
        stderr(&missing).contains("holds no CA"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn inspect_lists_every_broken_rule_and_names_bad_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = tmp.path().join("ca");
    ca_init(&ca, "example.org");
    let raw = RawCa::load(&ca);
    let mut bad = svid_params(&["spiffe://example.org/a", "spiffe://example.org/b"]);
    bad.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    bad.key_usages.push(rcgen::KeyUsagePurpose::KeyCertSign);
    let (leaf, _) = raw.sign(&bad);
    let file = tmp.path().join("bad.der");
    std::fs::write(&file, leaf.as_ref()).expect("write");
    let out = warden(&["svid", "inspect", path_str(&file)]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    for rule in ["has 2 URI SANs", "cA=true", "keyCertSign"] {
        assert!(text.contains(rule), "missing {rule:?} in:\n{text}");
    }

    let garbage = tmp.path().join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    let out = warden(&["svid", "inspect", path_str(&garbage)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("garbage.pem"), "{}", stderr(&out));

    let missing = warden(&["svid", "inspect", path_str(&tmp.path().join("nope.pem"))]);
    assert!(
        stderr(&missing).contains("cannot read") && stderr(&missing).contains("nope.pem"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn help_is_there_for_every_command() {
    for args in [
        &["--help"][..],
        &["ca", "init", "--help"],
        &["svid", "issue", "--help"],
        &["svid", "inspect", "--help"],
        &["id", "check", "--help"],
    ] {
        let out = warden(args);
        assert!(out.status.success(), "{args:?}");
        assert!(stdout(&out).contains("Usage:"), "{args:?}");
    }
}

#[test]
fn proxy_refuses_zero_workers() {
    let out = warden(&["proxy", "--workers", "0"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--workers (WARDEN_WORKERS) must be at least 1"),
        "{err}"
    );
}

#[test]
fn policy_check_and_eval() {
    let policies = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");
    let ok = warden(&["policy", "check", policies]);
    assert!(ok.status.success(), "{}", stdout(&ok));
    assert!(stdout(&ok).contains("ok: 2 policies"), "{}", stdout(&ok));

    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        tmp.path().join("bad.cedar"),
        "\npermit (principal, action, resource) when { principal.nickname == \"x\" };\n",
    )
    .expect("write");
    let bad = warden(&["policy", "check", path_str(tmp.path())]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stdout(&bad).contains("bad.cedar:2"), "{}", stdout(&bad));

    let empty = tempfile::tempdir().expect("tempdir");
    let out = warden(&["policy", "check", path_str(empty.path())]);
    assert!(
        stdout(&out).contains("every request would be DENIED"),
        "{}",
        stdout(&out)
    );

    let service = [
        "--service",
        "orders",
        "--service-id",
        "spiffe://example.org/ns/shop/sa/orders",
    ];
    let allow = warden(
        &[
            &[
                "policy",
                "eval",
                policies,
                "--principal",
                "spiffe://example.org/ns/shop/sa/web",
            ][..],
            &service,
        ]
        .concat(),
    );
    assert_eq!(allow.status.code(), Some(0), "{}", stdout(&allow));
    assert!(
        stdout(&allow).contains("same-namespace (default.cedar:"),
        "{}",
        stdout(&allow)
    );
    let deny = warden(
        &[
            &[
                "policy",
                "eval",
                policies,
                "--principal",
                "spiffe://example.org/ns/web/sa/web",
            ][..],
            &service,
        ]
        .concat(),
    );
    assert_eq!(deny.status.code(), Some(1));
    assert!(stdout(&deny).contains("default deny"), "{}", stdout(&deny));
    let anon = warden(
        &[
            &[
                "policy",
                "eval",
                policies,
                "--principal",
                "unauthenticated",
                "--path",
                "/healthz",
                "--json",
            ][..],
            &service,
        ]
        .concat(),
    );
    let json: serde_json::Value = serde_json::from_slice(&anon.stdout).expect("json");
    assert_eq!(json["decision"], "allow");
    assert_eq!(json["policies"], serde_json::json!(["healthz"]));
}

/// `warden control serve` and `warden proxy` raise their soft limit on open
/// files to the hard one (a control plane holds a watch connection per
/// sidecar); `prlimit` (util-linux) starts them at 1024 of 4096.
#[test]
fn servers_raise_the_open_files_limit_to_the_hard_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("control");
    let data_arg = data.to_str().expect("utf-8 path");
    let mut child = std::process::Command::new("prlimit")
        .args(["--nofile=1024:4096", "--", warden_bin()])
        .args([
            "control",
            "serve",
            "--trust-domain",
            "example.org",
            "--data-dir",
            data_arg,
        ])
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("prlimit (util-linux; .ci/run installs it)");
    let stdout = child.stdout.take().expect("stdout");
    let started = std::io::BufRead::lines(std::io::BufReader::new(stdout))
        .map_while(Result::ok)
        .take(64)
        .any(|line| line == "started");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id()));
    let _ = child.kill();
    let _ = child.wait();
    assert!(started, "the control plane did not start");
    let limits = limits.expect("/proc/PID/limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("open files line");
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[3..5], ["4096", "4096"], "{line}");
}

/// `src/link/sidecar.order` (build.rs hands it to the linker for release
/// builds) lists the sidecar's code, one symbol per line: a truncated or
/// hand-edited file would quietly spread an idle sidecar over the binary
/// again. The release build's use of it is measured by the mesh bench
/// (`idle:` line: RSS, and how many listed functions the binary still has).
#[test]
fn link_order_file_lists_the_sidecars_request_path() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/link/sidecar.order");
    let text = std::fs::read_to_string(&path).expect("src/link/sidecar.order");
    // The compiler it was written with first (build.rs warns on another).
    assert!(
        text.starts_with("# rustc "),
        "no `# rustc ...` first line: {:?}",
        text.lines().next()
    );
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert!(lines.len() >= 1000, "only {} functions listed", lines.len());
    let mut seen = std::collections::HashSet::new();
    for line in &lines {
        assert!(
            !line.is_empty() && !line.contains(char::is_whitespace),
            "not a symbol: {line:?}"
        );
        assert!(seen.insert(*line), "listed twice: {line}");
    }
    // Mangled paths of what every request runs: both sidecar halves, the
    // Cedar evaluator, TLS and HTTP.
    for part in [
        "12warden_proxy7sidecar7inbound",
        "12warden_proxy7sidecar8outbound",
        "17cedar_policy_core9evaluator",
        "6rustls",
        "5hyper",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(part)),
            "no function of {part} listed"
        );
    }
}
