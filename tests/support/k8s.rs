//! Kubernetes artefacts for the tests: a service-account issuer whose
//! private key the test holds (its JWKS for the control plane), and the
//! claims the kubelet puts in a projected token; the Python tools the
//! Kubernetes tests check manifests with.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
pub const POD: &str = "orders-7c9d5-x2x4q";
pub const POD_UID: &str = "0b6c7f1e-3c1a-4d5e-9f00-7d2b5a1c9e11";

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The claims of a projected token as the kubelet mints them, for
/// `namespace`/`account`, valid for 10 minutes from now.
pub fn claims(namespace: &str, account: &str) -> Value {
    pod_claims(namespace, account, POD, POD_UID)
}

/// As [`claims`], for pod `pod` (uid `uid`).
pub fn pod_claims(namespace: &str, account: &str, pod: &str, uid: &str) -> Value {
    let now = now();
    json!({
        "aud": ["warden"],
        "exp": now + 600,
        "iat": now,
        "nbf": now,
        "iss": ISSUER,
        "jti": "6a3f4f6e-7f5a-4b61-8f43-0e1f1d2c3b4a",
        "kubernetes.io": {
            "namespace": namespace,
            "node": {"name": "node-1", "uid": "9b0e3c4d-1111-2222-3333-444455556666"},
            "pod": {"name": pod, "uid": uid},
            "serviceaccount": {"name": account, "uid": "5e6f7a8b-aaaa-bbbb-cccc-ddddeeeeffff"},
            "warnafter": now + 300
        },
        "sub": format!("system:serviceaccount:{namespace}:{account}"),
    })
}

/// An issuer: a P-256 key, and its JWKS.
pub struct Issuer {
    pub key: rcgen::KeyPair,
    pub kid: &'static str,
}

impl Issuer {
    pub fn new(kid: &'static str) -> Self {
        Issuer {
            key: rcgen::KeyPair::generate().expect("key"),
            kid,
        }
    }

    pub fn jwks(&self) -> Value {
        // The uncompressed point: 0x04, then X and Y.
        let point = self.key.public_key_raw();
        json!({"keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": self.kid,
            "x": b64(&point[1..33]), "y": b64(&point[33..65]),
        }]})
    }

    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.to_owned());
        let key = EncodingKey::from_ec_pem(self.key.serialize_pem().as_bytes()).expect("EC key");
        encode(&header, claims, &key).expect("sign")
    }
}

/// A Python with `kubernetes_validate`, `jsonpatch` and `yaml` (PyYAML,
/// a YAML 1.1 reader as Kubernetes' own is): `WARDEN_TEST_PYTHON` (`.ci/run`
/// makes one in a virtual environment), else `python3`. None, with a
/// note, when it lacks them outside CI; under CI that fails the test.
pub fn python_tools() -> Option<String> {
    let python = std::env::var("WARDEN_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let has = std::process::Command::new(&python)
        .args(["-c", "import kubernetes_validate, jsonpatch, yaml"])
        .output()
        .is_ok_and(|o| o.status.success());
    if has {
        return Some(python);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{python} lacks kubernetes_validate, jsonpatch or yaml: .ci/run installs them and sets WARDEN_TEST_PYTHON"
    );
    eprintln!("skipped: {python} lacks kubernetes_validate, jsonpatch or PyYAML (see .ci/run)");
    None
}
