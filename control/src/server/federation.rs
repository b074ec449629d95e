//! Federation through SPIFFE bundle endpoints: our bundle served in the
//! SPIFFE format (`GET /v1/spiffe-bundle`, `https_spiffe`: the API's own
//! SVID authenticates it), and for each `--federate-with` a task that
//! fetches the foreign bundle on its refresh hint, authenticates the
//! endpoint by its SPIFFE ID against the foreign trust domain's last good
//! bundle (or the bootstrap bundle given), checks the document, and stores
//! it; sidecars get it over the watch. A failed fetch keeps the last good
//! bundle, and is counted, logged and shown by `warden bundle list`.

use std::str::FromStr;

use warden_proxy::control::{ControlAddr, ControlError};
use warden_proxy::identity::{SpiffeBundle, TrustBundle};

use super::*;
use crate::store::FederatedRecord;

/// The refresh interval when the foreign bundle gives no hint.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// Hints are held within these bounds.
pub const MIN_REFRESH: Duration = Duration::from_secs(1);
pub const MAX_REFRESH: Duration = Duration::from_secs(3600);
/// After a failed fetch, the next try comes this soon (at most the hint).
pub const RETRY: Duration = Duration::from_secs(5);

/// One `--federate-with TD=URL,spiffe_id=ID[,bundle=PATH]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Federation {
    pub trust_domain: TrustDomain,
    /// `https://host:port/path`.
    pub url: String,
    pub addr: ControlAddr,
    pub path: String,
    /// The endpoint's SPIFFE ID, a member of `trust_domain` (`https_spiffe`).
    pub endpoint_id: SpiffeId,
    /// The foreign bundle to authenticate the endpoint with until a first
    /// fetch succeeds (PEM or SPIFFE JSON).
    pub bootstrap: Option<PathBuf>,
}

impl FromStr for Federation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (td, rest) = s
            .split_once('=')
            .ok_or("expected TRUST_DOMAIN=https://HOST:PORT/PATH,spiffe_id=ID[,bundle=FILE]")?;
        let trust_domain = TrustDomain::new(td.trim()).map_err(|e| format!("{td}: {e}"))?;
        let mut parts = rest.split(',');
        let url = parts.next().unwrap_or_default().trim().to_owned();
        let (mut endpoint_id, mut bootstrap) = (None, None);
        for part in parts {
            match part.split_once('=') {
                Some(("spiffe_id", id)) => {
                    endpoint_id =
                        Some(SpiffeId::parse(id).map_err(|e| format!("spiffe_id {id}: {e}"))?);
                }
                Some(("bundle", path)) => bootstrap = Some(PathBuf::from(path)),
                _ => {
                    return Err(format!(
                        "unknown option {part:?} (spiffe_id=ID, bundle=FILE)"
                    ));
                }
            }
        }
        let Some(endpoint_id) = endpoint_id else {
            return Err(format!(
                "{url}: spiffe_id=ID is required (the https_spiffe profile: the endpoint's SPIFFE ID)"
            ));
        };
        if !endpoint_id.is_member_of(&trust_domain) {
            return Err(format!(
                "the endpoint {endpoint_id} is not in trust domain {}",
                trust_domain.name()
            ));
        }
        let without_scheme = url
            .strip_prefix("https://")
            .ok_or_else(|| format!("{url}: a bundle endpoint URL is https://HOST:PORT/PATH"))?;
        let (authority, path) = match without_scheme.find('/') {
            Some(i) => (&without_scheme[..i], &without_scheme[i..]),
            None => (without_scheme, "/"),
        };
        let addr: ControlAddr = if authority.contains(':') {
            authority.parse().map_err(|e| format!("{url}: {e}"))?
        } else {
            format!("{authority}:443")
                .parse()
                .map_err(|e| format!("{url}: {e}"))?
        };
        Ok(Federation {
            trust_domain,
            url: url.clone(),
            addr,
            path: path.to_owned(),
            endpoint_id,
            bootstrap,
        })
    }
}

/// What `warden bundle list` shows of a link besides the stored bundle.
#[derive(Debug, Clone, Default)]
pub(super) struct LinkStatus {
    pub(super) last_error: Option<String>,
}

/// Counters behind `warden_control_federation_refreshes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Outcome {
    Changed,
    Unchanged,
    Failed,
}

impl Outcome {
    pub(super) fn label(self) -> &'static str {
        match self {
            Outcome::Changed => "changed",
            Outcome::Unchanged => "unchanged",
            Outcome::Failed => "failed",
        }
    }
}

impl State {
    /// Our bundle in the SPIFFE format.
    pub(super) fn spiffe_bundle(&self) -> SpiffeBundle {
        let cas = self.cas.load();
        SpiffeBundle {
            x509: cas.bundle.clone(),
            jwt: cas.jwt_bundle.clone(),
            sequence: cas.sequence,
            refresh_hint: Some(self.bundle_refresh_hint.as_secs().max(1)),
        }
    }

    fn note_link(&self, td: &str, outcome: Outcome, error: Option<String>) {
        self.count(|c| {
            *c.federation
                .entry((td.to_owned(), outcome.label()))
                .or_default() += 1;
        });
        self.federation_status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(td.to_owned(), LinkStatus { last_error: error });
    }

    pub(super) fn link_error(&self, td: &str) -> Option<String> {
        self.federation_status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(td)
            .and_then(|s| s.last_error.clone())
    }
}

/// Fetches `link`'s bundle until shutdown.
pub(super) async fn follow(
    state: Arc<State>,
    link: Federation,
    mut shutdown: watch::Receiver<bool>,
) {
    let td = link.trust_domain.name().to_owned();
    loop {
        let wait = match refresh(&state, &link).await {
            Ok((outcome, hint)) => {
                state.note_link(&td, outcome, None);
                if outcome == Outcome::Changed {
                    state.refresh_changes().await;
                }
                hint
            }
            Err(e) => {
                tracing::warn!(trust_domain = %td, endpoint = %link.url, error = %e, "federated bundle refresh failed; keeping the last good bundle");
                state.note_link(&td, Outcome::Failed, Some(e));
                RETRY
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// The bundle `link`'s endpoint is authenticated with: the last good one,
/// else the bootstrap file.
async fn current_bundle(
    state: &State,
    link: &Federation,
) -> Result<(TrustBundle, Option<FederatedRecord>), String> {
    let db = state.db.clone();
    let td = link.trust_domain.name().to_owned();
    let stored = tokio::task::spawn_blocking(move || db.federated_bundles())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|r| r.trust_domain == td);
    if let Some(record) = stored {
        let bundle = SpiffeBundle::parse(link.trust_domain.clone(), record.bundle.as_bytes())
            .map_err(|e| format!("the stored bundle: {e}"))?;
        return Ok((bundle.x509, Some(record)));
    }
    let Some(path) = &link.bootstrap else {
        return Err(format!(
            "no bundle of {} to authenticate its endpoint with: give bundle=FILE in --federate-with",
            link.trust_domain.name()
        ));
    };
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let bundle = TrustBundle::from_bytes(link.trust_domain.clone(), &bytes)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((bundle, None))
}

/// One fetch: what happened, and when to fetch again.
async fn refresh(state: &State, link: &Federation) -> Result<(Outcome, Duration), String> {
    let (trusted, stored) = current_bundle(state, link).await?;
    let client = ControlClient::trusting(
        link.addr.clone(),
        link.endpoint_id.clone(),
        trusted.to_pem().as_bytes(),
    )
    .map_err(|e| e.to_string())?
    .with_max_response(warden_proxy::identity::spiffe_bundle::MAX_BUNDLE_BYTES);
    let document: serde_json::Value = client.get(&link.path).await.map_err(|e| match e {
        ControlError::Decode(reason) => {
            format!("the endpoint answered something that is not a bundle: {reason}")
        }
        other => other.to_string(),
    })?;
    let text = document.to_string();
    let bundle = SpiffeBundle::parse(link.trust_domain.clone(), text.as_bytes())
        .map_err(|e| format!("the endpoint's bundle is refused: {e}"))?;
    let sequence = i64::try_from(bundle.sequence).unwrap_or(i64::MAX);
    if let Some(old) = &stored
        && sequence < old.sequence
    {
        return Err(format!(
            "the endpoint's bundle has sequence {sequence}, older than the {} held",
            old.sequence
        ));
    }
    let hint = bundle
        .refresh_hint
        .map_or(DEFAULT_REFRESH, Duration::from_secs)
        .clamp(MIN_REFRESH, MAX_REFRESH);
    let canonical = bundle.to_json();
    let record = FederatedRecord {
        trust_domain: link.trust_domain.name().to_owned(),
        endpoint_url: link.url.clone(),
        digest: warden_proxy::control::digest_hex(canonical.as_bytes()),
        bundle: canonical,
        sequence,
        refreshed_at: state.now(),
        changed_at: state.now(),
    };
    let db = state.db.clone();
    let changed = tokio::task::spawn_blocking(move || db.store_federated_bundle(&record))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    if changed {
        tracing::info!(trust_domain = %link.trust_domain.name(), sequence, "federated bundle changed");
    }
    Ok((
        if changed {
            Outcome::Changed
        } else {
            Outcome::Unchanged
        },
        hint,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn federation_flags() {
        let f: Federation =
            "other.org=https://cp.other.org:7443/v1/spiffe-bundle,spiffe_id=spiffe://other.org/warden/control,bundle=/etc/other.pem"
                .parse()
                .expect("valid");
        assert_eq!(f.trust_domain.name(), "other.org");
        assert_eq!(f.path, "/v1/spiffe-bundle");
        assert_eq!(f.endpoint_id.as_str(), "spiffe://other.org/warden/control");
        assert_eq!(f.bootstrap, Some(PathBuf::from("/etc/other.pem")));
        let f: Federation = "other.org=https://127.0.0.1:9/,spiffe_id=spiffe://other.org/x"
            .parse()
            .expect("valid");
        assert_eq!(f.path, "/");
        for bad in [
            "other.org",
            "other.org=https://h:1/p",
            "other.org=http://h:1/p,spiffe_id=spiffe://other.org/x",
            "other.org=https://h:1/p,spiffe_id=spiffe://example.org/x",
            "other.org=https://h:1/p,spiffe_id=spiffe://other.org/x,color=red",
            "bad domain=https://h:1/p,spiffe_id=spiffe://other.org/x",
        ] {
            assert!(bad.parse::<Federation>().is_err(), "{bad}");
        }
    }
}
