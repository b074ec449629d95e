//! The control plane's own credentials: its SVID, issued straight from its
//! CA, and the admin token.

use super::*;

/// Reads `<data>/admin.token`, creating it (0600) on first start.
pub(super) fn admin_token_hash(data: &Path) -> Result<[u8; 32], ServeError> {
    let path = data.join(ADMIN_TOKEN_FILE);
    if !path.exists() {
        let token = new_secret("wda_");
        files::write_new(&path, format!("{token}\n").as_bytes(), PRIVATE_MODE).map_err(setup)?;
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| setup(format!("cannot read {}: {e}", path.display())))?;
    let token = text.trim();
    if token.len() < 16 {
        return Err(setup(format!(
            "{} holds no usable admin token",
            path.display()
        )));
    }
    Ok(Sha256::digest(token.as_bytes()).into())
}

/// A random secret: `prefix` and 32 bytes, base64url.
pub(super) fn new_secret(prefix: &str) -> String {
    let bytes: [u8; 32] = rand::random();
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Issues the control plane's own SVID straight from its CA.
pub(super) struct LocalSource {
    pub(super) cas: Arc<ArcSwap<Authorities>>,
    pub(super) id: SpiffeId,
    pub(super) clock: Arc<dyn Clock>,
}

impl SvidSource for LocalSource {
    type Error = ServeError;

    async fn fetch(&self) -> Result<SvidUpdate, ServeError> {
        let kc = new_key_and_csr(&self.id).map_err(setup)?;
        let cas = self.cas.load_full();
        // Signed by the oldest CA still published: every sidecar trusts
        // it, including one that has not yet learned a newer root.
        let issued = cas
            .oldest_published()
            .sign_csr_at(
                &kc.csr_der,
                &SignRequest {
                    bound_id: Some(self.id.clone()),
                    ttl: None,
                },
                self.clock.now(),
            )
            .map_err(setup)?;
        let svid =
            Svid::from_pem(issued.chain_pem().as_bytes(), kc.key_pem.as_bytes()).map_err(setup)?;
        Ok(SvidUpdate {
            svid,
            bundles: Some(TrustBundleSet::new().with(cas.bundle.clone())),
        })
    }
}
