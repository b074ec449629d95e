use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose, SanType};
use rustls_pki_types::UnixTime;
use warden_proxy::identity::{
    ExpectedIdentity, PeerRole, SvidLeaf, TrustBundleSet, new_key_and_csr, verify_peer_svid,
};

use super::*;

fn td(name: &str) -> TrustDomain {
    TrustDomain::new(name).expect("valid trust domain")
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).expect("valid SPIFFE ID")
}

fn new_ca(dir: &Path) -> CertificateAuthority {
    CertificateAuthority::init(dir, &InitOptions::new(td("example.org"))).expect("CA init")
}

/// A CSR built from arbitrary params, signed by a fresh P-256 key.
fn csr_with(params: CertificateParams) -> Vec<u8> {
    let key = KeyPair::generate().expect("keygen");
    params.serialize_request(&key).expect("CSR").der().to_vec()
}

fn uri_params(uris: &[&str]) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI((*u).try_into().expect("ia5")))
        .collect();
    params
}

fn sign(ca: &CertificateAuthority, csr: &[u8]) -> Result<IssuedSvid, CsrError> {
    ca.sign_csr(csr, &SignRequest::default())
}

#[test]
fn init_writes_private_key_0600_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = new_ca(dir.path());
    let mode = std::fs::metadata(dir.path().join("ca.key"))
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let key_before = std::fs::read(dir.path().join("ca.key")).expect("read");
    let err = CertificateAuthority::init(dir.path(), &InitOptions::new(td("example.org")))
        .expect_err("second init");
    assert!(matches!(err, CaError::File(FileError::Exists(_))), "{err}");
    assert_eq!(
        std::fs::read(dir.path().join("ca.key")).expect("read"),
        key_before
    );
    let reloaded = CertificateAuthority::load(dir.path()).expect("load");
    assert_eq!(reloaded.bundle(), ca.bundle());
    assert!(matches!(
        CertificateAuthority::load(&dir.path().join("nope")),
        Err(CaError::NotACa(..))
    ));
}

#[test]
fn signs_an_svid_that_follows_the_spec() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = new_ca(dir.path());
    let workload = id("spiffe://example.org/ns/prod/sa/api");
    let kc = new_key_and_csr(&workload).expect("csr");
    let before = Timestamp::now();
    let svid = sign(&ca, &kc.csr_der).expect("signed");
    assert_eq!(svid.spiffe_id, workload);
    assert!(
        svid.serial.len() >= 16,
        "serial {} has fewer than 64 bits",
        svid.serial
    );
    assert!(
        before.0 - svid.not_before.0 <= 60,
        "backdated by more than a minute"
    );
    assert!(before.0 - svid.not_before.0 >= 0);
    assert_eq!(
        svid.not_after.0 - svid.not_before.0,
        3600 + BACKDATE.as_secs() as i64
    );

    let leaf = SvidLeaf::parse(&svid.chain[0], Timestamp::now()).expect("obeys every leaf rule");
    assert_eq!(leaf.spiffe_id, workload);
    assert_eq!(leaf.serial, svid.serial);
    let bundles = TrustBundleSet::new().with(ca.bundle().clone());
    for role in [PeerRole::Client, PeerRole::Server] {
        verify_peer_svid(
            &bundles,
            &svid.chain[0],
            &svid.chain[1..],
            UnixTime::now(),
            role,
            &ExpectedIdentity::exactly(workload.clone()),
        )
        .expect("validates against the CA bundle");
    }
    // Two issuances never share a serial.
    let again = sign(&ca, &kc.csr_der).expect("signed");
    assert_ne!(again.serial, svid.serial);
}

#[test]
fn accepts_pem_csrs_and_bound_ids() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = new_ca(dir.path());
    let kc = new_key_and_csr(&id("spiffe://example.org/a")).expect("csr");
    let pem = pem_encode("CERTIFICATE REQUEST", &kc.csr_der);
    assert!(sign(&ca, pem.as_bytes()).is_ok());
    // A CSR without a URI SAN gets the bound ID.
    let bare = csr_with(CertificateParams::default());
    let bound = SignRequest {
        bound_id: Some(id("spiffe://example.org/b")),
        ttl: None,
    };
    assert_eq!(
        ca.sign_csr(&bare, &bound).expect("signed").spiffe_id,
        id("spiffe://example.org/b")
    );
    assert_eq!(
        sign(&ca, &bare).expect_err("no id"),
        CsrError::MissingSpiffeId
    );
}

#[test]
fn refuses_bad_csrs_with_precise_reasons() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = new_ca(dir.path());

    let mut ca_params = uri_params(&["spiffe://example.org/x"]);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    assert_eq!(
        sign(&ca, &csr_with(ca_params)).expect_err("CA"),
        CsrError::RequestsCa("basicConstraints cA=true")
    );

    let mut cert_sign = uri_params(&["spiffe://example.org/x"]);
    cert_sign.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
    ];
    assert_eq!(
        sign(&ca, &csr_with(cert_sign)).expect_err("keyCertSign"),
        CsrError::RequestsCa("keyUsage keyCertSign")
    );

    let two = uri_params(&["spiffe://example.org/x", "spiffe://example.org/y"]);
    assert_eq!(
        sign(&ca, &csr_with(two)).expect_err("two URIs"),
        CsrError::MultipleUriSans(2)
    );

    let other_uri = uri_params(&["spiffe://example.org/x", "https://evil.example"]);
    assert_eq!(
        sign(&ca, &csr_with(other_uri)).expect_err("extra URI"),
        CsrError::MultipleUriSans(2)
    );

    let mut dns = uri_params(&["spiffe://example.org/x"]);
    dns.subject_alt_names
        .push(SanType::DnsName("api.example.org".try_into().expect("dns")));
    assert_eq!(
        sign(&ca, &csr_with(dns)).expect_err("DNS"),
        CsrError::UnsupportedSan("DNS name".into())
    );

    let not_spiffe = uri_params(&["https://example.org/x"]);
    assert!(matches!(
        sign(&ca, &csr_with(not_spiffe)),
        Err(CsrError::InvalidSpiffeId { .. })
    ));

    let foreign = uri_params(&["spiffe://other.org/x"]);
    assert!(matches!(
        sign(&ca, &csr_with(foreign)),
        Err(CsrError::ForeignTrustDomain { .. })
    ));

    let root = uri_params(&["spiffe://example.org"]);
    assert_eq!(
        sign(&ca, &csr_with(root)).expect_err("root"),
        CsrError::RootPathId("spiffe://example.org".into())
    );

    let kc = new_key_and_csr(&id("spiffe://example.org/x")).expect("csr");
    let mismatch = SignRequest {
        bound_id: Some(id("spiffe://example.org/y")),
        ttl: None,
    };
    assert!(matches!(
        ca.sign_csr(&kc.csr_der, &mismatch),
        Err(CsrError::IdentityMismatch { .. })
    ));

    // Flip the last byte: it sits in the signature.
    let mut tampered = kc.csr_der.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    assert_eq!(
        sign(&ca, &tampered).expect_err("signature"),
        CsrError::BadSignature
    );

    // Change the SPIFFE ID inside the signed part: the signature no longer matches.
    let mut forged = kc.csr_der.clone();
    let pos = forged
        .windows(1)
        .rposition(|w| w == b"x")
        .expect("path byte");
    forged[pos] = b'y';
    assert_eq!(
        sign(&ca, &forged).expect_err("forged"),
        CsrError::BadSignature
    );

    assert!(matches!(
        sign(&ca, b"\x30\x03garbage"),
        Err(CsrError::Malformed(_))
    ));
    assert!(matches!(sign(&ca, b""), Err(CsrError::Malformed(_))));
    assert!(matches!(
        sign(
            &ca,
            b"-----BEGIN CERTIFICATE REQUEST-----\n!!\n-----END CERTIFICATE REQUEST-----\n"
        ),
        Err(CsrError::Malformed(_))
    ));

    let long = SignRequest {
        bound_id: None,
        ttl: Some(Duration::from_secs(48 * 3600)),
    };
    assert_eq!(
        ca.sign_csr(&kc.csr_der, &long).expect_err("ttl"),
        CsrError::TtlTooLong {
            requested_secs: 48 * 3600,
            max_secs: 24 * 3600
        }
    );
    let short = SignRequest {
        bound_id: None,
        ttl: Some(Duration::from_secs(4)),
    };
    assert_eq!(
        ca.sign_csr(&kc.csr_der, &short).expect_err("ttl"),
        CsrError::TtlTooShort(4)
    );
}

#[test]
fn init_refuses_unusable_settings_and_keeps_keys_out_of_debug() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut huge = InitOptions::new(td("example.org"));
    huge.ca_ttl = Duration::from_secs(u64::MAX / 2);
    assert!(CertificateAuthority::init(dir.path(), &huge).is_err());
    let mut short = InitOptions::new(td("example.org"));
    short.default_svid_ttl = Duration::from_secs(4);
    assert!(CertificateAuthority::init(dir.path(), &short).is_err());
    assert!(
        !dir.path().join("ca.key").exists(),
        "nothing written on refusal"
    );

    let mut with_parent = InitOptions::new(td("example.org"));
    with_parent.parent = Some(ParentCa {
        cert_pem: vec![],
        key_pem: "-----BEGIN PRIVATE KEY-----SECRET".into(),
    });
    assert!(!format!("{with_parent:?}").contains("SECRET"));
}

#[test]
fn intermediate_under_an_existing_root() {
    let root_dir = tempfile::tempdir().expect("tempdir");
    let root = new_ca(root_dir.path());
    let int_dir = tempfile::tempdir().expect("tempdir");
    let mut options = InitOptions::new(td("example.org"));
    options.parent = Some(ParentCa {
        cert_pem: std::fs::read(root_dir.path().join("ca.crt")).expect("root cert"),
        key_pem: std::fs::read_to_string(root_dir.path().join("ca.key")).expect("root key"),
    });
    let int = CertificateAuthority::init(int_dir.path(), &options).expect("intermediate");
    assert_eq!(
        int.bundle(),
        root.bundle(),
        "the bundle is the parent's root"
    );
    assert!(int.not_after() <= root.not_after());

    let workload = id("spiffe://example.org/billing");
    let svid = sign(&int, &new_key_and_csr(&workload).expect("csr").csr_der).expect("signed");
    assert_eq!(svid.chain.len(), 2, "leaf + intermediate");
    let bundles = TrustBundleSet::new().with(root.bundle().clone());
    verify_peer_svid(
        &bundles,
        &svid.chain[0],
        &svid.chain[1..],
        UnixTime::now(),
        PeerRole::Client,
        &ExpectedIdentity::AnyTrusted,
    )
    .expect("leaf -> intermediate -> root");
    // Without the intermediate the chain does not build.
    assert!(
        verify_peer_svid(
            &bundles,
            &svid.chain[0],
            &[],
            UnixTime::now(),
            PeerRole::Client,
            &ExpectedIdentity::AnyTrusted
        )
        .is_err()
    );

    // A parent key that does not match its certificate is refused.
    let other = tempfile::tempdir().expect("tempdir");
    let _unrelated = new_ca(other.path());
    let bad_dir = tempfile::tempdir().expect("tempdir");
    let mut bad = InitOptions::new(td("example.org"));
    bad.parent = Some(ParentCa {
        cert_pem: std::fs::read(root_dir.path().join("ca.crt")).expect("root cert"),
        key_pem: std::fs::read_to_string(other.path().join("ca.key")).expect("other key"),
    });
    let err = CertificateAuthority::init(bad_dir.path(), &bad).expect_err("mismatched parent key");
    assert!(err.to_string().contains("does not belong"), "{err}");
    assert!(
        !bad_dir.path().join("ca.key").exists(),
        "nothing written on refusal"
    );

    // A leaf certificate cannot be a parent.
    let leaf_dir = tempfile::tempdir().expect("tempdir");
    let leaf_key = KeyPair::generate().expect("keygen");
    let leaf_cert = uri_params(&["spiffe://example.org/leaf"])
        .self_signed(&leaf_key)
        .expect("leaf");
    let mut leaf_parent = InitOptions::new(td("example.org"));
    leaf_parent.parent = Some(ParentCa {
        cert_pem: leaf_cert.pem().into_bytes(),
        key_pem: leaf_key.serialize_pem(),
    });
    let err = CertificateAuthority::init(leaf_dir.path(), &leaf_parent).expect_err("leaf parent");
    assert!(err.to_string().contains("not a CA"), "{err}");
}
