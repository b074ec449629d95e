//! The JWT-SVID signing key of a CA: `jwt.key` (P-256, PKCS#8, 0600) next
//! to `ca.key`. Each CA of the rotation plan has its own, so JWT keys
//! follow the X.509 plan: published in the JWT bundle with the CA's root,
//! signing from the same moment, and removed with the root, which retires
//! only after every JWT-SVID the key signed has expired as well.

use std::path::Path;

use jsonwebtoken::jwk::{Jwk, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
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
    encoding: EncodingKey,
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
        Ok(JwtKey { encoding, jwk, kid })
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
        jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| CaError::Generate(format!("signing a JWT-SVID: {e}")))
    }
}
