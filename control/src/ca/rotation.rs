//! CA rotation without a restart anywhere.
//!
//! A rotation adds a new signing CA in a subdirectory of the CA directory
//! and records the plan in `rotation.json`:
//!
//! 1. at once, the new root joins the trust bundle (sidecars pick it up over
//!    their watch and then trust SVIDs from either CA);
//! 2. after the grace period, SVIDs are signed by the new CA (renewals move
//!    every workload over within half an SVID lifetime);
//! 3. once every SVID the old CA signed has expired, the old root leaves the
//!    bundle.
//!
//! Replicas sharing the CA directory follow the same plan: every step is a
//! point in time written in the file, not an event in one process.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use warden_proxy::identity::{JwtBundle, Timestamp, TrustBundle};

use super::{CaError, CertificateAuthority, InitOptions};
use crate::files::{self, PUBLIC_MODE};

pub const PLAN_FILE: &str = "rotation.json";

/// One signing CA in the plan.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Authority {
    /// Directory relative to the CA directory; `.` is the original CA.
    pub dir: String,
    /// From when its root is in the bundle (Unix time).
    pub publish_at: i64,
    /// From when it signs.
    pub sign_from: i64,
    /// When its root left the bundle, once every SVID it signed expired.
    pub retired_at: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RotationPlan {
    pub authorities: Vec<Authority>,
}

impl Default for RotationPlan {
    fn default() -> Self {
        RotationPlan {
            authorities: vec![Authority {
                dir: ".".into(),
                publish_at: 0,
                sign_from: 0,
                retired_at: None,
            }],
        }
    }
}

impl RotationPlan {
    pub fn read(ca_dir: &Path) -> Result<Self, CaError> {
        let path = ca_dir.join(PLAN_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| CaError::Invalid {
                path,
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(CaError::Read { path, source }),
        }
    }

    fn write(&self, ca_dir: &Path) -> Result<(), CaError> {
        let text = serde_json::to_string_pretty(self).unwrap_or_default();
        files::write_replace(&ca_dir.join(PLAN_FILE), text.as_bytes(), PUBLIC_MODE)?;
        Ok(())
    }

    /// Index of the authority that signs at `now`: the newest whose
    /// `sign_from` has passed.
    pub fn signing_at(&self, now: i64) -> usize {
        self.authorities
            .iter()
            .rposition(|a| a.sign_from <= now && a.retired_at.is_none())
            .unwrap_or(0)
    }

    /// Authorities whose roots are in the bundle at `now`.
    pub fn published_at(&self, now: i64) -> impl Iterator<Item = (usize, &Authority)> {
        self.authorities
            .iter()
            .enumerate()
            .filter(move |(_, a)| a.publish_at <= now && a.retired_at.is_none())
    }
}

/// The loaded CAs of a plan, the one signing now and the bundle now.
pub struct Authorities {
    pub plan: RotationPlan,
    cas: Vec<Option<Arc<CertificateAuthority>>>,
    pub signing: Arc<CertificateAuthority>,
    pub signing_index: usize,
    /// Indices of the authorities whose roots are in `bundle`.
    pub published: Vec<usize>,
    pub bundle: TrustBundle,
    /// `bundle` as PEM, and its SHA-256 (hex): what the API hands out and
    /// watchers compare, computed once per change of the bundle.
    pub bundle_pem: String,
    pub bundle_digest: String,
    /// The JWT-SVID keys of the published CAs: the JWT bundle.
    pub jwt_bundle: JwtBundle,
    /// `spiffe_sequence`: the latest moment of the plan that changed the
    /// bundle (a publication or a retirement), the same on every replica.
    pub sequence: u64,
}

impl Authorities {
    /// Loads the plan in `ca_dir` as it stands at `now`, reusing CAs
    /// already loaded in `previous`.
    pub fn load(ca_dir: &Path, now: i64, previous: Option<&Authorities>) -> Result<Self, CaError> {
        let plan = RotationPlan::read(ca_dir)?;
        let mut cas = Vec::with_capacity(plan.authorities.len());
        for (i, authority) in plan.authorities.iter().enumerate() {
            if authority.retired_at.is_some() {
                cas.push(None);
                continue;
            }
            let reused = previous.and_then(|p| {
                let same = p
                    .plan
                    .authorities
                    .get(i)
                    .is_some_and(|a| a.dir == authority.dir);
                p.cas.get(i).cloned().flatten().filter(|_| same)
            });
            let ca = match reused {
                Some(ca) => ca,
                None => Arc::new(CertificateAuthority::load(&resolve(
                    ca_dir,
                    &authority.dir,
                ))?),
            };
            cas.push(Some(ca));
        }
        let signing_index = plan.signing_at(now);
        let signing =
            cas.get(signing_index)
                .cloned()
                .flatten()
                .ok_or_else(|| CaError::Invalid {
                    path: ca_dir.join(PLAN_FILE),
                    reason: "no usable signing CA in the plan".into(),
                })?;
        let mut roots = Vec::new();
        let mut jwt_keys = Vec::new();
        let published: Vec<usize> = plan.published_at(now).map(|(i, _)| i).collect();
        for &i in &published {
            if let Some(ca) = &cas[i] {
                roots.extend(ca.bundle().roots().iter().cloned());
                jwt_keys.extend(ca.jwt_key().map(|k| k.jwk().clone()));
            }
        }
        let jwt_bundle = JwtBundle::new(signing.trust_domain().clone(), jwt_keys).map_err(|e| {
            CaError::Invalid {
                path: ca_dir.join(PLAN_FILE),
                reason: e.to_string(),
            }
        })?;
        let bundle = TrustBundle::new(signing.trust_domain().clone(), roots).map_err(|e| {
            CaError::Invalid {
                path: ca_dir.join(PLAN_FILE),
                reason: e.to_string(),
            }
        })?;
        let sequence = bundle_sequence(&plan, now);
        let bundle_pem = bundle.to_pem();
        let bundle_digest = warden_proxy::control::digest_hex(bundle_pem.as_bytes());
        Ok(Authorities {
            plan,
            cas,
            signing,
            signing_index,
            published,
            bundle,
            bundle_pem,
            bundle_digest,
            jwt_bundle,
            sequence,
        })
    }

    /// The oldest CA whose root is published: the one every sidecar trusts.
    pub fn oldest_published(&self) -> Arc<CertificateAuthority> {
        self.published
            .iter()
            .find_map(|&i| self.cas.get(i).cloned().flatten())
            .unwrap_or_else(|| self.signing.clone())
    }

    /// Whether `plan` at `now` has the same CAs signing and published as `self`.
    pub fn unchanged_at(&self, now: i64, plan: &RotationPlan) -> bool {
        *plan == self.plan
            && plan.signing_at(now) == self.signing_index
            && plan
                .published_at(now)
                .map(|(i, _)| i)
                .eq(self.published.iter().copied())
    }
}

/// The plan's latest publication or retirement at or before `now`.
fn bundle_sequence(plan: &RotationPlan, now: i64) -> u64 {
    plan.authorities
        .iter()
        .flat_map(|a| [Some(a.publish_at), a.retired_at])
        .flatten()
        .filter(|&t| t <= now)
        .max()
        .map_or(0, |t| u64::try_from(t).unwrap_or(0))
}

fn resolve(ca_dir: &Path, dir: &str) -> PathBuf {
    if dir == "." {
        ca_dir.to_owned()
    } else {
        ca_dir.join(dir)
    }
}

/// Starts a rotation: a new CA (same trust domain and SVID limits) published
/// now and signing after `grace`. Refused while another rotation is under
/// way (a CA still waiting to sign, or an old root not yet retired).
pub fn rotate(ca_dir: &Path, grace: Duration, now: i64) -> Result<RotationPlan, CaError> {
    let mut plan = RotationPlan::read(ca_dir)?;
    let live: Vec<&Authority> = plan
        .authorities
        .iter()
        .filter(|a| a.retired_at.is_none())
        .collect();
    if live.len() > 1 {
        return Err(CaError::Generate(format!(
            "a rotation is already under way ({} CAs in the bundle); the old root retires once every SVID it signed has expired",
            live.len()
        )));
    }
    let current = CertificateAuthority::load(&resolve(
        ca_dir,
        &live.first().map_or(".".to_owned(), |a| a.dir.clone()),
    ))?;
    let settings = current.settings();
    let dir = format!("rotated-{now}");
    let mut options = InitOptions::new(settings.trust_domain.clone());
    options.default_svid_ttl = Duration::from_secs(settings.default_svid_ttl_secs);
    options.max_svid_ttl = Duration::from_secs(settings.max_svid_ttl_secs);
    CertificateAuthority::init_at(
        &ca_dir.join(&dir),
        &options,
        Timestamp(now).to_system_time(),
    )?;
    let grace_secs = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
    plan.authorities.push(Authority {
        dir,
        publish_at: now,
        sign_from: now.saturating_add(grace_secs),
        retired_at: None,
    });
    plan.write(ca_dir)?;
    Ok(plan)
}

/// Marks authority `index` retired at `now`.
pub fn retire(ca_dir: &Path, index: usize, now: i64) -> Result<RotationPlan, CaError> {
    let mut plan = RotationPlan::read(ca_dir)?;
    if let Some(a) = plan.authorities.get_mut(index)
        && a.retired_at.is_none()
    {
        a.retired_at = Some(now);
        plan.write(ca_dir)?;
    }
    Ok(plan)
}
