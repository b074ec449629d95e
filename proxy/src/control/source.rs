//! The SVID source backed by the control plane: join, then renew.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::identity::{
    Svid, SvidSource, SvidStore, SvidUpdate, TrustBundle, TrustBundleSet, pem_encode,
};

use super::{ControlClient, ControlError, StateDir, api};

/// SVIDs from the control plane: the first by join token, then renewals
/// over mTLS with the current SVID, each with a key made here.
pub struct ControlSource {
    client: ControlClient,
    store: Arc<SvidStore>,
    trust_domain: crate::identity::TrustDomain,
    token: Mutex<Option<String>>,
    instance: String,
    ttl: Option<Duration>,
    state: Option<StateDir>,
    /// A Kubernetes projected token, read at each join: attests instead
    /// of a join token.
    service_account: Option<std::path::PathBuf>,
}

impl ControlSource {
    pub fn new(
        client: ControlClient,
        store: Arc<SvidStore>,
        trust_domain: crate::identity::TrustDomain,
        token: Option<String>,
        instance: String,
        ttl: Option<Duration>,
        state: Option<StateDir>,
    ) -> Self {
        ControlSource {
            client,
            store,
            trust_domain,
            token: Mutex::new(token),
            instance,
            ttl,
            state,
            service_account: None,
        }
    }

    /// Joins by the pod's projected service-account token in `path`
    /// (`control.k8s_token_file`) instead of a join token.
    pub fn with_service_account_token(mut self, path: Option<std::path::PathBuf>) -> Self {
        self.service_account = path;
        self
    }

    /// Our trust domain's bundle from the answer, with the federated ones
    /// the store holds (the watch keeps those): a renewal must not drop
    /// the trust in other trust domains until the next watch answer.
    fn bundles(&self, pem: &str) -> Result<TrustBundleSet, ControlError> {
        let bundle = TrustBundle::from_pem(self.trust_domain.clone(), pem.as_bytes())
            .map_err(|e| ControlError::Decode(format!("trust bundle: {e}")))?;
        let held = self.store.bundles();
        let mut set = TrustBundleSet::new();
        for td in held.trust_domains().filter(|td| **td != self.trust_domain) {
            if let Some(federated) = held.get(td.name()) {
                set.insert((**federated).clone());
            }
        }
        set.insert(bundle);
        Ok(set)
    }
}

impl SvidSource for ControlSource {
    type Error = ControlError;

    async fn fetch(&self) -> Result<SvidUpdate, ControlError> {
        let ttl_secs = self.ttl.map(|t| t.as_secs());
        let current = self
            .store
            .current()
            .filter(|s| s.is_valid_at(SystemTime::now()));
        let (key_pem, response) = match (current, self.service_account.as_deref()) {
            (Some(svid), _) => {
                let kc = crate::identity::new_key_and_csr(svid.spiffe_id())
                    .map_err(|e| ControlError::Local(e.to_string()))?;
                let body = api::RenewRequest {
                    csr: pem_encode("CERTIFICATE REQUEST", &kc.csr_der),
                    instance: self.instance.clone(),
                    ttl_secs,
                };
                let response: api::SvidResponse = self.client.post(api::RENEW, &body).await?;
                (kc.key_pem, response)
            }
            (None, Some(path)) => {
                let token = std::fs::read_to_string(path).map_err(|e| {
                    ControlError::Local(format!(
                        "cannot read the service-account token {}: {e}",
                        path.display()
                    ))
                })?;
                let kc = crate::identity::keygen::new_key_and_bare_csr()
                    .map_err(|e| ControlError::Local(e.to_string()))?;
                let body = api::AttestRequest {
                    token: token.trim().to_owned(),
                    csr: pem_encode("CERTIFICATE REQUEST", &kc.csr_der),
                    ttl_secs,
                };
                let response: api::SvidResponse = self.client.post(api::ATTEST_K8S, &body).await?;
                (kc.key_pem, response)
            }
            (None, None) => {
                let token = self
                    .token
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone()
                    .ok_or_else(|| {
                        ControlError::Local(
                            "no valid SVID and no unused join token: give this sidecar a new token (`warden control token create`)".into(),
                        )
                    })?;
                let kc = crate::identity::keygen::new_key_and_bare_csr()
                    .map_err(|e| ControlError::Local(e.to_string()))?;
                let body = api::JoinRequest {
                    token,
                    csr: pem_encode("CERTIFICATE REQUEST", &kc.csr_der),
                    instance: self.instance.clone(),
                    ttl_secs,
                };
                let result: Result<api::SvidResponse, _> = self.client.post(api::JOIN, &body).await;
                if let Err(ControlError::Refused { code, .. }) = &result
                    && matches!(
                        code.as_str(),
                        "token_reused" | "token_expired" | "unknown_token"
                    )
                {
                    // A token is good for one join; never send it again.
                    *self
                        .token
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
                }
                let response = result?;
                *self
                    .token
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
                (kc.key_pem, response)
            }
        };
        let svid = Svid::from_pem(response.chain_pem.as_bytes(), key_pem.as_bytes())
            .map_err(|e| ControlError::Decode(format!("SVID: {e}")))?;
        let bundles = self.bundles(&response.bundle_pem)?;
        if let Some(state) = &self.state
            && let Err(e) = state.save(&response.chain_pem, &key_pem)
        {
            tracing::warn!(dir = %state.0.display(), error = %e, "cannot save the SVID; a restart will need a new join token");
        }
        Ok(SvidUpdate {
            svid,
            bundles: Some(bundles),
        })
    }
}
