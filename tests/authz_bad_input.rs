//! Bad policy input gets a clear, located error and never a panic: syntax
//! and schema errors, duplicate ids, oversized, half-written, non-UTF-8 and
//! pathologically deep files.

mod support;

use std::path::Path;

use support::policies::*;
use warden_proxy::authz::{PolicyError, PolicySnapshot};

#[test]
fn bad_policy_sets_are_refused_with_file_and_line() {
    let cases: &[(&str, &str)] = &[
        (
            "permit (principal, action, resource)\nwhen { context.path == };",
            "bad.cedar:2",
        ),
        (
            "\n\npermit (principal, action, resource) when { principal.nickname == \"x\" };",
            "bad.cedar:3",
        ),
        (
            "permit (principal == Robot::\"r2d2\", action, resource);",
            "Robot",
        ),
        (
            "permit (principal, action == Action::\"GET\", resource) when { context.headers[\"x-undeclared\"] == \"1\" };",
            "x-undeclared",
        ),
        (
            "permit (principal, action, resource) when { context has headers && context.headers has \"x-undeclared\" && context.headers[\"x-undeclared\"] == \"1\" };",
            "can never apply",
        ),
        (
            "permit (principal, action == Action::\"FETCH\", resource);",
            "FETCH",
        ),
        (
            "permit (principal == ?principal, action, resource);",
            "templates",
        ),
    ];
    for (text, expect) in cases {
        let dir = dir_with(&[]);
        write(dir.path(), "bad.cedar", text);
        let err = load_err(dir.path());
        assert!(err.contains(expect), "{text}\n=> {err}");
        assert!(err.contains("bad.cedar"), "{err}");
    }
}

#[test]
fn duplicate_ids_are_refused() {
    let dir = dir_with(&[]);
    write(
        dir.path(),
        "a.cedar",
        "@id(\"same\")\npermit (principal, action, resource);\n",
    );
    write(
        dir.path(),
        "b.cedar",
        "\n@id(\"same\")\nforbid (principal, action, resource);\n",
    );
    let err = load_err(dir.path());
    assert!(
        err.contains("b.cedar:2: policy \"same\": duplicate policy id, first used at a.cedar:1"),
        "{err}"
    );
}

#[test]
fn oversized_half_written_and_non_utf8_files_are_refused() {
    let dir = dir_with(&["default.cedar"]);
    let big = "// padding\n".repeat(50 * 1024 * 1024 / 11);
    write(dir.path(), "huge.cedar", &big);
    match PolicySnapshot::load_dir(dir.path()) {
        Err(PolicyError::TooLarge { size, .. }) => assert!(size > 4 * 1024 * 1024),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    std::fs::remove_file(dir.path().join("huge.cedar")).expect("rm");
    let full = std::fs::read_to_string(Path::new(POLICIES).join("examples/orders-post.cedar"))
        .expect("read");
    write(dir.path(), "half.cedar", &full[..full.len() / 2]);
    assert!(load_err(dir.path()).contains("half.cedar"));
    std::fs::write(dir.path().join("half.cedar"), [0xff, 0xfe, 0x00]).expect("write");
    assert!(load_err(dir.path()).contains("not UTF-8"));
}

#[test]
fn pathological_policies_are_refused_without_crashing() {
    let deep = format!(
        "permit (principal, action, resource) when {{ {}true{} }};",
        "(".repeat(5000),
        ")".repeat(5000)
    );
    let chain = format!(
        "permit (principal, action, resource) when {{ {} }};",
        vec!["1 == 1"; 20_000].join(" && ")
    );
    let negations = format!(
        "permit (principal, action, resource) when {{ {}true }};",
        "!".repeat(50_000)
    );
    for text in [deep, chain, negations] {
        let dir = dir_with(&[]);
        write(dir.path(), "deep.cedar", &text);
        let err = load_err(dir.path());
        assert!(
            err.contains("deep.cedar:1")
                && (err.contains("nested deeper") || err.contains("operators")),
            "{err}"
        );
    }
}
