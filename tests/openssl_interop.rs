//! Interop with a tool we did not write: OpenSSL accepts Warden's SVIDs and
//! shows the fields the X.509-SVID spec requires.

mod support;

use std::process::Command;

use support::*;

fn openssl(args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl (apt-get install openssl)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn openssl_verifies_and_reads_a_root_issued_svid() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = tmp.path().join("ca");
    ca_init(&ca, "example.org");
    let out = svid_issue(
        &ca,
        "spiffe://example.org/ns/prod/sa/api",
        &tmp.path().join("svid"),
    );
    let (bundle, svid) = (out.join("bundle.pem"), out.join("svid.pem"));
    for purpose in ["sslclient", "sslserver"] {
        let (ok, text) = openssl(&[
            "verify",
            "-purpose",
            purpose,
            "-CAfile",
            path_str(&bundle),
            path_str(&svid),
        ]);
        assert!(ok, "openssl verify -purpose {purpose}: {text}");
        assert!(text.contains(": OK"), "{text}");
    }
    let (ok, text) = openssl(&["x509", "-in", path_str(&svid), "-noout", "-text"]);
    assert!(ok, "{text}");
    for needle in [
        "URI:spiffe://example.org/ns/prod/sa/api",
        "X509v3 Key Usage: critical",
        "Digital Signature",
        "TLS Web Server Authentication, TLS Web Client Authentication",
        "CA:FALSE",
        "ASN1 OID: prime256v1",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    assert!(
        !text.contains("Certificate Sign"),
        "leaf must not have keyCertSign:\n{text}"
    );
    // Exactly one URI SAN.
    assert_eq!(text.matches("URI:").count(), 1, "{text}");

    // And a certificate from another CA does not verify against this bundle.
    ca_init(&tmp.path().join("other"), "example.org");
    let other = svid_issue(
        &tmp.path().join("other"),
        "spiffe://example.org/x",
        &tmp.path().join("o"),
    );
    let (ok, text) = openssl(&[
        "verify",
        "-CAfile",
        path_str(&bundle),
        path_str(&other.join("svid.pem")),
    ]);
    assert!(!ok, "a foreign CA's SVID must not verify");
    // Refused for its issuer, not for anything else.
    assert!(
        text.contains("unable to get local issuer certificate"),
        "{text}"
    );
}

#[test]
fn openssl_verifies_an_svid_from_an_intermediate() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    ca_init(&root, "example.org");
    let int = tmp.path().join("int");
    ca_init_intermediate(&int, &root, "example.org");
    let out = svid_issue(&int, "spiffe://example.org/api", &tmp.path().join("svid"));
    // svid.pem holds leaf + intermediate; openssl wants the intermediate as -untrusted.
    let (ok, text) = openssl(&[
        "verify",
        "-CAfile",
        path_str(&root.join("bundle.pem")),
        "-untrusted",
        path_str(&int.join("chain.pem")),
        path_str(&out.join("svid.pem")),
    ]);
    assert!(ok, "{text}");
    let (_, int_text) = openssl(&[
        "x509",
        "-in",
        path_str(&int.join("ca.crt")),
        "-noout",
        "-text",
    ]);
    assert!(int_text.contains("CA:TRUE, pathlen:0"), "{int_text}");
}
