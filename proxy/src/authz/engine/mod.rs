//! Deciding: default deny, forbid wins, any evaluation error denies, and the
//! enforce/audit modes. The policy set sits in an `ArcSwap`; a request
//! decides under the set it loaded when it started.
//!
//! Per peer (fixed for a connection) and policy version, the engine prepares
//! once: the principal's entities, and for each action the slice of policies
//! whose scope can match. A decision then builds the context and evaluates
//! that slice only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use cedar_policy::{Entities, EntityUid};
use serde::Serialize;

mod authorizer;
mod decision;

pub use authorizer::PeerAuthorizer;
pub use decision::{Decision, Outcome};

use super::error::AuthzError;
use super::index::ScopeEntity;
use super::model::{self, CONNECT_ACTION, HTTP_ACTIONS, Peer, ServiceInfo};
use super::policy_set::{PolicySnapshot, Slice};

/// Whether denies are enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Denies are denies.
    #[default]
    Enforce,
    /// Decide and record, but let every request through (for rollouts).
    Audit,
}

/// Everything prepared for one peer under one policy version.
pub(super) struct PreparedPeer {
    pub snapshot: Arc<PolicySnapshot>,
    pub principal: EntityUid,
    pub principal_text: String,
    pub authenticated: bool,
    pub entities: Entities,
    pub by_action: HashMap<&'static str, ActionSlice>,
}

/// What one action needs for this peer: its uid, the policies whose scope
/// can match, and the context attributes those policies can observe.
pub(super) struct ActionSlice {
    pub uid: EntityUid,
    pub slice: Arc<Slice>,
}

/// The authorizer for the service this sidecar protects.
pub struct PolicyEngine {
    snapshot: ArcSwapOption<PolicySnapshot>,
    service: ServiceInfo,
    resource: EntityUid,
    resource_text: String,
    mode: Mode,
    /// Prepared peers of the current snapshot, shared by their connections.
    prepared: Mutex<HashMap<Peer, Arc<PreparedPeer>>>,
    /// Decisions made without calling Cedar (simple conditions only).
    native_decisions: std::sync::atomic::AtomicU64,
}

/// Prepared peers kept per snapshot; past this the cache starts over.
const MAX_PREPARED_PEERS: usize = 10_000;

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("service", &self.service)
            .field("mode", &self.mode)
            .field("version", &self.version())
            .finish_non_exhaustive()
    }
}

impl PolicyEngine {
    /// An engine with no policy set: every decision is a deny until one is installed.
    pub fn new(service: ServiceInfo, mode: Mode) -> Self {
        let resource = model::uid("Service", &service.name);
        PolicyEngine {
            snapshot: ArcSwapOption::empty(),
            service,
            resource_text: resource.to_string(),
            resource,
            mode,
            prepared: Mutex::new(HashMap::new()),
            native_decisions: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// How many HTTP decisions were made without calling Cedar, their
    /// conditions being simple enough to evaluate directly.
    pub fn decisions_without_cedar(&self) -> u64 {
        self.native_decisions
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Swaps in a new policy set. Requests already deciding finish under the old one.
    pub fn install(&self, snapshot: PolicySnapshot) {
        if snapshot.is_empty() {
            tracing::error!(
                version = snapshot.version(),
                "policy set is EMPTY: every request will be denied"
            );
        }
        self.snapshot.store(Some(Arc::new(snapshot)));
        self.cache().clear();
    }

    /// As [`PolicyEngine::install`], a snapshot other engines share (one
    /// policy set decided for several services: the control plane's
    /// replays and reports).
    pub fn install_shared(&self, snapshot: Arc<PolicySnapshot>) {
        self.snapshot.store(Some(snapshot));
        self.cache().clear();
    }

    pub fn snapshot(&self) -> Option<Arc<PolicySnapshot>> {
        self.snapshot.load_full()
    }

    /// Version of the active set, if there is one.
    pub fn version(&self) -> Option<String> {
        self.snapshot
            .load()
            .as_ref()
            .map(|s| s.version().to_owned())
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<Peer, Arc<PreparedPeer>>> {
        // A panic elsewhere cannot leave a half-written cache entry; ignore poisoning.
        self.prepared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The per-connection authorizer for `peer`.
    pub fn for_peer(self: &Arc<Self>, peer: Peer) -> PeerAuthorizer {
        PeerAuthorizer::new(self.clone(), peer)
    }

    pub(super) fn prepare(
        &self,
        peer: &Peer,
        snapshot: &Arc<PolicySnapshot>,
    ) -> Result<Arc<PreparedPeer>, AuthzError> {
        if let Some(p) = self.cache().get(peer)
            && Arc::ptr_eq(&p.snapshot, snapshot)
        {
            return Ok(p.clone());
        }
        let principal = model::principal_entities(peer)?;
        let (resource_uid, resource_entity) = model::service_entity(&self.service)?;
        let mut entities = principal.entities;
        entities.push(resource_entity);
        let entities = Entities::from_entities(entities, Some(&snapshot.schema))
            .map_err(|e| AuthzError::Entities(e.to_string()))?;

        let no_ancestors = Default::default();
        let candidates = snapshot.index.candidates(
            &ScopeEntity {
                uid: &principal.uid,
                ancestors: &principal.ancestors,
            },
            &ScopeEntity {
                uid: &resource_uid,
                ancestors: &no_ancestors,
            },
        );
        let mut by_action = HashMap::new();
        for action in HTTP_ACTIONS.iter().chain([&CONNECT_ACTION]) {
            let action_uid = model::action_uid(action);
            let ancestors = entities
                .ancestors(&action_uid)
                .map(|it| it.cloned().collect())
                .unwrap_or_default();
            let scope = ScopeEntity {
                uid: &action_uid,
                ancestors: &ancestors,
            };
            let ids = candidates
                .iter()
                .filter(|id| snapshot.index.action_matches(id, &scope))
                .cloned()
                .collect();
            by_action.insert(
                *action,
                ActionSlice {
                    uid: action_uid,
                    slice: snapshot.slice(ids),
                },
            );
        }
        let prepared = Arc::new(PreparedPeer {
            snapshot: snapshot.clone(),
            principal_text: principal.uid.to_string(),
            principal: principal.uid,
            authenticated: matches!(peer, Peer::Workload(_)),
            entities,
            by_action,
        });
        let mut cache = self.cache();
        // Only cache for the set still active: an install that happened
        // while this peer was being prepared cleared the cache for a reason.
        let still_current = self
            .snapshot
            .load()
            .as_ref()
            .is_some_and(|current| Arc::ptr_eq(current, snapshot));
        if still_current {
            if cache.len() >= MAX_PREPARED_PEERS {
                cache.clear();
            }
            cache.insert(peer.clone(), prepared.clone());
        }
        Ok(prepared)
    }
}
