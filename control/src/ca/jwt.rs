//! The JWT-SVID signing key of a CA: `jwt.key` (P-256, PKCS#8, 0600) next
//! to `ca.key`. Each CA of the rotation plan has its own, so JWT keys
//! follow the X.509 plan: published in the JWT bundle with the CA's root,
//! signing from the same moment, and removed with the root, which retires
//! only after every JWT-SVID the key signed has expired as well.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use serde::Serialize;
use warden_proxy::identity::SpiffeId;
use warden_proxy::identity::jwt::jwt_svid_use;

use super::CaError;
use crate::files::{self, FileError, PRIVATE_MODE};

pub const JWT_KEY_FILE: &str = "jwt.key";

/// A JWT-SVID signing key (ES256) and its public JWK, named by its
/// RFC 7638 thumbprint.
pub struct JwtKey {
    /// Parsed once. `jsonwebtoken::encode` takes the key as PKCS#8 bytes
    /// and parses it, deriving the public key, for every token: under
    /// callgrind that and its ECDSA signature were 2 of the 3 million
    /// instructions a JWT-SVID cost the control plane.
    signing: EcdsaKeyPair,
    rng: SystemRandom,
    jwk: Jwk,
    kid: String,
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKey").field("kid", &self.kid).finish()
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    aud: &'a [String],
    iat: i64,
    exp: i64,
}

fn invalid(path: &Path, reason: impl std::fmt::Display) -> CaError {
    CaError::Invalid {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

impl JwtKey {
    fn from_pkcs8(path: &Path, der: &[u8]) -> Result<Self, CaError> {
        let encoding = EncodingKey::from_ec_der(der);
        let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::ES256)
            .map_err(|e| invalid(path, format!("not a P-256 key: {e}")))?;
        let kid = jwk
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(|e| invalid(path, e))?;
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(jwt_svid_use());
        let rng = SystemRandom::new();
        let signing = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(|e| {
                invalid(
                    path,
                    format!("not a P-256 PKCS#8 key that holds its public key: {e}"),
                )
            })?;
        Ok(JwtKey {
            signing,
            rng,
            jwk,
            kid,
        })
    }

    /// Makes a key and writes it to `dir/jwt.key` (refusing to overwrite).
    pub fn create(dir: &Path) -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::Generate(e.to_string()))?;
        let path = dir.join(JWT_KEY_FILE);
        let made = Self::from_pkcs8(&path, &key.serialize_der())?;
        files::write_new(&path, key.serialize_pem().as_bytes(), PRIVATE_MODE)?;
        Ok(made)
    }

    /// Loads `dir/jwt.key`; `None` when there is none.
    pub fn load(dir: &Path) -> Result<Option<Self>, CaError> {
        let path = dir.join(JWT_KEY_FILE);
        let pem = match std::fs::read(&path) {
            Ok(pem) => pem,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CaError::Read { path, source }),
        };
        match PrivateKeyDer::from_pem_slice(&pem) {
            Ok(PrivateKeyDer::Pkcs8(der)) => {
                Self::from_pkcs8(&path, der.secret_pkcs8_der()).map(Some)
            }
            Ok(_) => Err(invalid(&path, "the key must be PKCS#8 (BEGIN PRIVATE KEY)")),
            Err(e) => Err(invalid(&path, format!("unreadable key: {e}"))),
        }
    }

    /// Loads `dir/jwt.key`, making it first in a CA created before JWT-SVIDs
    /// (a CA directory that cannot be written keeps none: the caller says
    /// JWT-SVIDs are off). Replicas racing to make it agree on the first.
    pub fn load_or_create(dir: &Path) -> Result<Self, CaError> {
        if let Some(key) = Self::load(dir)? {
            return Ok(key);
        }
        match Self::create(dir) {
            Ok(key) => Ok(key),
            Err(CaError::File(FileError::Exists(_))) => Self::load(dir)?
                .ok_or_else(|| invalid(&dir.join(JWT_KEY_FILE), "vanished while loading")),
            Err(e) => Err(e),
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key, with its `kid` and `use: jwt-svid`.
    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// Signs a JWT-SVID for `subject`.
    pub fn sign(
        &self,
        subject: &SpiffeId,
        audiences: &[String],
        issued_at: i64,
        expires_at: i64,
    ) -> Result<String, CaError> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        header.typ = Some("JWT".into());
        let claims = Claims {
            sub: subject.as_str(),
            aud: audiences,
            iat: issued_at,
            exp: expires_at,
        };
        // A JWS in compact form (RFC 7515): base64url of the header, of
        // the claims, and of the signature, which for ES256 is r and s of
        // 32 bytes each (RFC 7518 3.4), as ring's FIXED signing makes it.
        let failed =
            |e: &dyn std::fmt::Display| CaError::Generate(format!("signing a JWT-SVID: {e}"));
        let mut token =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).map_err(|e| failed(&e))?);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(
            serde_json::to_vec(&claims).map_err(|e| failed(&e))?,
            &mut token,
        );
        let signature = self
            .signing
            .sign(&self.rng, token.as_bytes())
            .map_err(|e| failed(&e))?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut token);
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    #[test]
    fn jwt_svids_verify_with_the_published_key_and_only_with_it() {
        let dir = tempfile::tempdir().expect("dir");
        let key = JwtKey::create(dir.path()).expect("key");
        let loaded = JwtKey::load(dir.path()).expect("load").expect("there");
        assert_eq!(loaded.kid(), key.kid());
        let id = SpiffeId::parse("spiffe://example.org/ns/shop/sa/orders").expect("id");
        let token = loaded
            .sign(&id, &["billing".into()], 1_000, 4_000_000_000)
            .expect("sign");

        let header = jsonwebtoken::decode_header(&token).expect("header");
        assert_eq!(header.alg, Algorithm::ES256);
        assert_eq!(header.kid.as_deref(), Some(key.kid()));
        assert_eq!(header.typ.as_deref(), Some("JWT"));
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&["billing"]);
        let decoding = DecodingKey::from_jwk(key.jwk()).expect("jwk");
        let claims = jsonwebtoken::decode::<serde_json::Value>(&token, &decoding, &validation)
            .expect("verifies")
            .claims;
        assert_eq!(claims["sub"], id.as_str());
        assert_eq!(claims["aud"], serde_json::json!(["billing"]));
        assert_eq!(
            (claims["iat"].as_i64(), claims["exp"].as_i64()),
            (Some(1_000), Some(4_000_000_000))
        );

        // Another key's signature, or a changed claim, does not verify.
        let other_dir = tempfile::tempdir().expect("dir");
        let other = JwtKey::create(other_dir.path()).expect("key");
        let forged = other
            .sign(&id, &["billing".into()], 1_000, 4_000_000_000)
            .expect("sign");
        assert!(
            jsonwebtoken::decode::<serde_json::Value>(&forged, &decoding, &validation).is_err()
        );
        let parts: Vec<&str> = token.split('.').collect();
        let changed = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&serde_json::json!({
                "sub": "spiffe://example.org/ns/shop/sa/admin",
                "aud": ["billing"], "iat": 1_000, "exp": 4_000_000_000_i64,
            }))
            .expect("json"),
        );
        let tampered = format!("{}.{changed}.{}", parts[0], parts[2]);
        assert!(
            jsonwebtoken::decode::<serde_json::Value>(&tampered, &decoding, &validation).is_err()
        );
    }
}
