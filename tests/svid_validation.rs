//! Every kind of bad certificate is refused with its own error, never a
//! panic: certificates crafted with our CA's real key (the CA itself would
//! refuse to issue them), checked by Warden's SVID validation.

mod support;

use std::process::Command;
use std::time::{Duration, SystemTime};

use rcgen::{BasicConstraints, IsCa, KeyUsagePurpose, SubjectPublicKeyInfo};
use rustls::pki_types::{CertificateDer, UnixTime};
use support::*;
use warden_control::ca::{CertificateAuthority, CsrError, SignRequest};
use warden_proxy::identity::{
    ExpectedIdentity, LeafRule, PeerRole, SpiffeIdError, SvidError, TrustBundleSet,
    verify_peer_svid,
};

const ID: &str = "spiffe://example.org/ns/prod/sa/api";

struct Fixture {
    dir: tempfile::TempDir,
    raw: RawCa,
    bundles: TrustBundleSet,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        ca_init(&dir.path().join("ca"), "example.org");
        let raw = RawCa::load(&dir.path().join("ca"));
        let ca = CertificateAuthority::load(&dir.path().join("ca")).expect("load CA");
        let bundles = TrustBundleSet::new().with(ca.bundle().clone());
        Fixture { dir, raw, bundles }
    }

    fn check(&self, leaf: &CertificateDer<'_>) -> Result<(), SvidError> {
        verify_peer_svid(
            &self.bundles,
            leaf,
            &[],
            UnixTime::now(),
            PeerRole::Client,
            &ExpectedIdentity::AnyTrusted,
        )
        .map(|_| ())
    }

    fn check_params(&self, params: &rcgen::CertificateParams) -> Result<(), SvidError> {
        self.check(&self.raw.sign(params).0)
    }
}

fn rule(r: LeafRule) -> Result<(), SvidError> {
    Err(SvidError::Rule(r))
}

#[test]
fn a_well_formed_svid_passes() {
    let f = Fixture::new();
    assert_eq!(f.check_params(&svid_params(&[ID])), Ok(()));
}

#[test]
fn san_rules() {
    let f = Fixture::new();
    assert_eq!(
        f.check_params(&svid_params(&[ID, "spiffe://example.org/other"])),
        rule(LeafRule::MultipleUriSans(2))
    );
    assert_eq!(f.check_params(&svid_params(&[])), rule(LeafRule::NoUriSan));
    assert_eq!(
        f.check_params(&svid_params(&["spiffe://example.org"])),
        rule(LeafRule::RootPathId("spiffe://example.org".into()))
    );
    assert_eq!(
        f.check_params(&svid_params(&["spiffe://example.org/a/../b"])),
        rule(LeafRule::InvalidSpiffeId {
            uri: "spiffe://example.org/a/../b".into(),
            reason: SpiffeIdError::DotSegment
        })
    );
}

#[test]
fn ca_and_key_usage_rules() {
    let f = Fixture::new();
    let mut ca = svid_params(&[ID]);
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    assert_eq!(f.check_params(&ca), rule(LeafRule::CaFlagSet));

    let mut cert_sign = svid_params(&[ID]);
    cert_sign.key_usages.push(KeyUsagePurpose::KeyCertSign);
    assert_eq!(f.check_params(&cert_sign), rule(LeafRule::KeyCertSign));

    let mut crl_sign = svid_params(&[ID]);
    crl_sign.key_usages.push(KeyUsagePurpose::CrlSign);
    assert_eq!(f.check_params(&crl_sign), rule(LeafRule::CrlSign));

    let mut no_ds = svid_params(&[ID]);
    no_ds.key_usages = vec![KeyUsagePurpose::KeyAgreement];
    assert_eq!(f.check_params(&no_ds), rule(LeafRule::NoDigitalSignature));

    let mut no_ku = svid_params(&[ID]);
    no_ku.key_usages = vec![];
    assert_eq!(f.check_params(&no_ku), rule(LeafRule::NoKeyUsage));

    let mut server_only = svid_params(&[ID]);
    server_only.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    assert_eq!(
        f.check_params(&server_only),
        rule(LeafRule::MissingEku("clientAuth"))
    );
}

#[test]
fn validity_rules() {
    let f = Fixture::new();
    let now = SystemTime::now();
    let mut expired = svid_params(&[ID]);
    expired.not_before = (now - Duration::from_secs(7200)).into();
    expired.not_after = (now - Duration::from_secs(3600)).into();
    assert!(matches!(
        f.check_params(&expired),
        Err(SvidError::Rule(LeafRule::Expired(_)))
    ));

    let mut future = svid_params(&[ID]);
    future.not_before = (now + Duration::from_secs(3600)).into();
    future.not_after = (now + Duration::from_secs(7200)).into();
    assert!(matches!(
        f.check_params(&future),
        Err(SvidError::Rule(LeafRule::NotYetValid(_)))
    ));
}

#[test]
fn trust_rules() {
    let f = Fixture::new();
    // Another trust domain, which we hold no bundle for.
    assert_eq!(
        f.check_params(&svid_params(&["spiffe://other.org/x"])),
        Err(SvidError::UnknownTrustDomain("other.org".into()))
    );
    // A chain to another CA (different trust domain name, so a different issuer).
    ca_init(&f.dir.path().join("rogue"), "rogue.example.org");
    let rogue = RawCa::load(&f.dir.path().join("rogue"));
    let (leaf, _) = rogue.sign(&svid_params(&[ID]));
    assert_eq!(
        f.check(&leaf),
        Err(SvidError::UntrustedChain {
            trust_domain: "example.org".into(),
            reason: "issued by a CA that is not in the bundle".into()
        })
    );
    // A chain to another CA of the *same* trust domain: same issuer name,
    // different key, so only the signature check can catch it.
    ca_init(&f.dir.path().join("rogue-same"), "example.org");
    let rogue_same = RawCa::load(&f.dir.path().join("rogue-same"));
    let (leaf, _) = rogue_same.sign(&svid_params(&[ID]));
    assert_eq!(
        f.check(&leaf),
        Err(SvidError::UntrustedChain {
            trust_domain: "example.org".into(),
            reason: "a signature in the chain is invalid".into()
        })
    );
    // Identity matcher.
    let (good, _) = f.raw.sign(&svid_params(&[ID]));
    let expected = ExpectedIdentity::exactly("spiffe://example.org/other".parse().expect("id"));
    assert!(matches!(
        verify_peer_svid(
            &f.bundles,
            &good,
            &[],
            UnixTime::now(),
            PeerRole::Server,
            &expected
        ),
        Err(SvidError::UnexpectedIdentity { .. })
    ));
}

#[test]
fn garbage_der_is_malformed_never_a_panic() {
    let f = Fixture::new();
    for bytes in [
        &b""[..],
        b"\x30",
        b"\x30\x82\xff\xff",
        b"not a certificate at all",
        &[0u8; 512][..],
    ] {
        assert!(
            matches!(
                f.check(&CertificateDer::from(bytes.to_vec())),
                Err(SvidError::Malformed(_))
            ),
            "{bytes:?}"
        );
    }
    // A valid certificate with bytes flipped all over it: never a panic, never accepted.
    let (good, _) = f.raw.sign(&svid_params(&[ID]));
    for i in 0..good.len() {
        let mut bad = good.to_vec();
        bad[i] ^= 0x5a;
        assert!(
            f.check(&CertificateDer::from(bad)).is_err(),
            "flipping byte {i} still validated"
        );
    }
}

fn openssl(args: &[&str]) -> std::process::Output {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A CSR for `ID` made by OpenSSL with `key_path`, plus `extra` arguments.
fn openssl_csr(key_path: &str, extra: &[&str]) -> Vec<u8> {
    let san = format!("subjectAltName=URI:{ID}");
    let base = [
        "req", "-new", "-key", key_path, "-subj", "/O=test", "-addext", &san,
    ];
    openssl(&[&base[..], extra].concat()).stdout
}

/// A private key made by OpenSSL: `openssl genpkey -algorithm ALG -pkeyopt OPT`.
fn genpkey(dir: &std::path::Path, name: &str, algorithm: &str, option: &str) -> std::path::PathBuf {
    let key = dir.join(name);
    openssl(&[
        "genpkey",
        "-algorithm",
        algorithm,
        "-pkeyopt",
        option,
        "-out",
        key.to_str().expect("utf-8"),
    ]);
    key
}

#[test]
fn rsa_1024_is_weak_in_certificates_and_csrs() {
    let f = Fixture::new();
    let key = genpkey(f.dir.path(), "rsa1024.key", "RSA", "rsa_keygen_bits:1024");
    let key_s = key.to_str().expect("utf-8");
    let spki = openssl(&["pkey", "-in", key_s, "-pubout", "-outform", "DER"]).stdout;

    // A certificate for an RSA-1024 key, signed by our CA's key.
    let public = SubjectPublicKeyInfo::from_der(&spki).expect("RSA SPKI");
    let leaf = svid_params(&[ID])
        .signed_by(&public, &f.raw.issuer)
        .expect("sign");
    assert_eq!(f.check(leaf.der()), rule(LeafRule::WeakRsaKey(1024)));

    // A CSR for one, made by OpenSSL: the CA refuses it.
    let csr = openssl_csr(key_s, &["-outform", "DER"]);
    let ca = CertificateAuthority::load(&f.dir.path().join("ca")).expect("load CA");
    assert_eq!(
        ca.sign_csr(&csr, &SignRequest::default())
            .expect_err("weak"),
        CsrError::WeakKey(1024)
    );

    // RSA-2048 from OpenSSL is fine, and so is OpenSSL's CSR encoding.
    let key2048 = genpkey(f.dir.path(), "rsa2048.key", "RSA", "rsa_keygen_bits:2048");
    let key2048_s = key2048.to_str().expect("utf-8");
    let csr = openssl_csr(key2048_s, &[]);
    let issued = ca
        .sign_csr(&csr, &SignRequest::default())
        .expect("PEM CSR from OpenSSL");
    assert_eq!(f.check(&issued.chain[0]), Ok(()));
}

#[test]
fn openssl_csr_asking_for_ca_rights_is_refused() {
    let f = Fixture::new();
    let key = genpkey(f.dir.path(), "p256.key", "EC", "ec_paramgen_curve:P-256");
    let key_s = key.to_str().expect("utf-8");
    let csr = openssl_csr(key_s, &["-addext", "basicConstraints=critical,CA:TRUE"]);
    let ca = CertificateAuthority::load(&f.dir.path().join("ca")).expect("load CA");
    assert_eq!(
        ca.sign_csr(&csr, &SignRequest::default()).expect_err("CA"),
        CsrError::RequestsCa("basicConstraints cA=true")
    );
}
