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
use cedar_policy::{Authorizer, Context, Entities, EntityUid, Request};
use serde::Serialize;

use super::context_needs::ContextNeeds;
use super::index::ScopeEntity;
use super::model::{
    self, CONNECT_ACTION, HTTP_ACTIONS, HttpRequestFacts, Peer, ServiceInfo, TcpConnectionFacts,
};
use super::native;
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

/// The outcome of one authorization, for the response, the trace span and
/// the audit line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Whether the request may proceed (always true in audit mode).
    pub allowed: bool,
    /// What the policies decided (a deny in audit mode is still `allowed`).
    pub decision: Outcome,
    pub mode: Mode,
    pub principal: String,
    pub action: String,
    pub resource: String,
    /// The policies that decided: the permits for an allow, the forbids for
    /// a deny caused by a forbid; empty for a default deny.
    pub policies: Vec<String>,
    /// Evaluation errors; any error makes the decision a deny.
    pub errors: Vec<String>,
    pub policy_version: String,
}

/// What the policies decided, serialized as `"allow"` or `"deny"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Allow,
    Deny,
}

impl Outcome {
    /// The label in metrics, spans and access logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// So `decision.decision == "deny"` reads as it always has.
impl PartialEq<&str> for Outcome {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Decision {
    /// One JSON line for the audit log.
    pub fn audit_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Everything prepared for one peer under one policy version.
struct PreparedPeer {
    snapshot: Arc<PolicySnapshot>,
    principal: EntityUid,
    principal_text: String,
    authenticated: bool,
    entities: Entities,
    by_action: HashMap<&'static str, ActionSlice>,
}

/// What one action needs for this peer: its uid, the policies whose scope
/// can match, and the context attributes those policies can observe.
struct ActionSlice {
    uid: EntityUid,
    slice: Arc<Slice>,
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
        PeerAuthorizer {
            engine: self.clone(),
            peer,
            prepared: ArcSwapOption::empty(),
        }
    }

    fn prepare(
        &self,
        peer: &Peer,
        snapshot: &Arc<PolicySnapshot>,
    ) -> Result<Arc<PreparedPeer>, String> {
        if let Some(p) = self.cache().get(peer)
            && Arc::ptr_eq(&p.snapshot, snapshot)
        {
            return Ok(p.clone());
        }
        let principal = model::principal_entities(peer)?;
        let (resource_uid, resource_entity) = model::service_entity(&self.service)?;
        let mut entities = principal.entities;
        entities.push(resource_entity);
        let entities =
            Entities::from_entities(entities, Some(&snapshot.schema)).map_err(|e| e.to_string())?;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slicing {
    Indexed,
    WholeSet,
}

/// Decides for one connection's peer. Cheap to create; prepares lazily and
/// re-prepares when the policy set changes.
pub struct PeerAuthorizer {
    engine: Arc<PolicyEngine>,
    peer: Peer,
    prepared: ArcSwapOption<PreparedPeer>,
}

impl PeerAuthorizer {
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// A new authorizer for the same peer and engine (one a long-lived
    /// tunnel keeps to be decided again later).
    pub fn fork(&self) -> PeerAuthorizer {
        self.engine.for_peer(self.peer.clone())
    }

    /// Whether the policy set in force now has this version.
    pub fn policy_version_is(&self, version: &str) -> bool {
        self.engine
            .snapshot
            .load()
            .as_ref()
            .is_some_and(|s| s.version() == version)
    }

    /// Authorizes one HTTP request.
    pub fn authorize_http(&self, facts: &HttpRequestFacts<'_>) -> Decision {
        self.http(facts, Slicing::Indexed)
    }

    /// The same decision computed by plain Cedar over the whole policy set,
    /// without the index: the reference the differential test and the
    /// benchmarks compare against. Never faster.
    pub fn authorize_http_unindexed(&self, facts: &HttpRequestFacts<'_>) -> Decision {
        self.http(facts, Slicing::WholeSet)
    }

    fn http(&self, facts: &HttpRequestFacts<'_>, slicing: Slicing) -> Decision {
        let action = model::action_for_method(facts.method);
        self.decide(action, slicing, Some(facts), |prepared, needs| {
            model::http_context(
                facts,
                prepared.authenticated,
                prepared.snapshot.declared_headers(),
                needs,
            )
        })
    }

    /// Authorizes one opaque TCP connection.
    pub fn authorize_tcp(&self, facts: &TcpConnectionFacts) -> Decision {
        self.decide(CONNECT_ACTION, Slicing::Indexed, None, |prepared, needs| {
            model::tcp_context(facts, prepared.authenticated, needs)
        })
    }

    fn current(&self) -> Result<Arc<PreparedPeer>, String> {
        let snapshot = self
            .engine
            .snapshot
            .load_full()
            .ok_or_else(|| "no valid policy set has been loaded".to_owned())?;
        if let Some(p) = self.prepared.load_full()
            && Arc::ptr_eq(&p.snapshot, &snapshot)
        {
            return Ok(p);
        }
        let p = self.engine.prepare(&self.peer, &snapshot)?;
        self.prepared.store(Some(p.clone()));
        Ok(p)
    }

    fn decide(
        &self,
        action: &'static str,
        slicing: Slicing,
        http: Option<&HttpRequestFacts<'_>>,
        context: impl FnOnce(&PreparedPeer, &ContextNeeds) -> Result<Context, String>,
    ) -> Decision {
        let engine = &self.engine;
        let deny = |principal: String, version: String, error: String| {
            engine.finish(false, principal, action, version, Vec::new(), vec![error])
        };
        let prepared = match self.current() {
            Ok(p) => p,
            Err(e) => {
                // Audit mode lets would-be denies through, but only under a
                // policy set: without one (never loaded, or the peer's
                // entities could not be built) nothing was decided at all.
                let mut decision = deny(format!("{:?}", self.peer), String::new(), e);
                decision.allowed = false;
                return decision;
            }
        };
        let version = prepared.snapshot.version().to_owned();
        let Some(slice) = prepared.by_action.get(action) else {
            return deny(
                prepared.principal_text.clone(),
                version,
                format!("unknown action {action}"),
            );
        };
        let everything = ContextNeeds::everything();
        let no_ids: &[String] = &[];
        let (policies, needs, empty, always_permit, always_forbid) = match slicing {
            Slicing::Indexed => {
                let s = &slice.slice;
                (
                    &s.policies,
                    &s.needs,
                    s.is_empty,
                    &s.always_permit[..],
                    &s.always_forbid[..],
                )
            }
            Slicing::WholeSet => (
                &prepared.snapshot.policies,
                &everything,
                false,
                no_ids,
                no_ids,
            ),
        };
        // Simple conditions on an HTTP request: decided here, no Cedar call,
        // unless one of them would be an error (then Cedar decides and says so).
        if let (Slicing::Indexed, Some(facts), Some(native)) = (slicing, http, &slice.slice.native)
        {
            if let Err(e) =
                model::check_duplicate_headers(facts, prepared.snapshot.declared_headers())
            {
                return deny(
                    prepared.principal_text.clone(),
                    version,
                    format!("request context: {e}"),
                );
            }
            let env = native::Env {
                facts,
                peer: &self.peer,
                service: &engine.service,
            };
            let mut forbids: Vec<String> = always_forbid.to_vec();
            let mut permits: Vec<String> = always_permit.to_vec();
            let decided = native.iter().try_for_each(|policy| {
                if native::eval(&policy.condition, &env)? {
                    if policy.permit {
                        permits.push(policy.id.clone());
                    } else {
                        forbids.push(policy.id.clone());
                    }
                }
                Some(())
            });
            if decided.is_some() {
                engine
                    .native_decisions
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return engine.conclude(
                    prepared.principal_text.clone(),
                    action,
                    version,
                    forbids,
                    permits,
                    Vec::new(),
                );
            }
        }
        // Evaluate the policies with conditions (if any) with Cedar.
        // The context is built even when nothing needs evaluating, so a bad
        // request (a repeated declared header) is refused the same way
        // whichever policies happen to apply.
        let context = match context(&prepared, needs) {
            Ok(c) => c,
            Err(e) => {
                return deny(
                    prepared.principal_text.clone(),
                    version,
                    format!("request context: {e}"),
                );
            }
        };
        let (cedar_allow, cedar_reasons, errors) = if empty {
            (false, Vec::new(), Vec::new())
        } else {
            let request = match Request::new(
                prepared.principal.clone(),
                slice.uid.clone(),
                engine.resource.clone(),
                context,
                None,
            ) {
                Ok(r) => r,
                Err(e) => {
                    return deny(
                        prepared.principal_text.clone(),
                        version,
                        format!("request: {e}"),
                    );
                }
            };
            let response = Authorizer::new().is_authorized(&request, policies, &prepared.entities);
            let errors: Vec<String> = response
                .diagnostics()
                .errors()
                .map(ToString::to_string)
                .collect();
            let reasons: Vec<String> = response
                .diagnostics()
                .reason()
                .map(ToString::to_string)
                .collect();
            (
                response.decision() == cedar_policy::Decision::Allow,
                reasons,
                errors,
            )
        };
        // Combine with the condition-free policies exactly as Cedar would
        // over the union: any satisfied forbid denies (reasons: all satisfied
        // forbids); else any satisfied permit allows (reasons: all satisfied
        // permits); else default deny. Cedar reports satisfied forbids when it
        // denies and satisfied permits when it allows.
        let mut forbids: Vec<String> = always_forbid.to_vec();
        let mut permits: Vec<String> = always_permit.to_vec();
        if cedar_allow {
            permits.extend(cedar_reasons);
        } else {
            forbids.extend(cedar_reasons);
        }
        engine.conclude(
            prepared.principal_text.clone(),
            action,
            version,
            forbids,
            permits,
            errors,
        )
    }
}

impl PolicyEngine {
    /// The decision from the satisfied forbids and permits and the
    /// evaluation errors, whichever way they were found.
    fn conclude(
        &self,
        principal: String,
        action: &str,
        policy_version: String,
        forbids: Vec<String>,
        permits: Vec<String>,
        errors: Vec<String>,
    ) -> Decision {
        let decided_allow = forbids.is_empty() && !permits.is_empty();
        // Cedar skips a policy whose evaluation errors, even a forbid; Warden
        // denies instead, so an erroring forbid can never let a request through.
        let allow = decided_allow && errors.is_empty();
        // The deciding policies: permits for an allow, forbids for a forbid
        // deny. An allow overturned by an error has none (the errors say why).
        let policies = if allow {
            permits
        } else if decided_allow {
            Vec::new()
        } else {
            forbids
        };
        self.finish(allow, principal, action, policy_version, policies, errors)
    }

    fn finish(
        &self,
        allow: bool,
        principal: String,
        action: &str,
        policy_version: String,
        mut policies: Vec<String>,
        mut errors: Vec<String>,
    ) -> Decision {
        // Cedar reports in no particular order; sorted, decisions compare and log stably.
        policies.sort();
        errors.sort();
        let decision = Decision {
            allowed: allow || self.mode == Mode::Audit,
            decision: if allow { Outcome::Allow } else { Outcome::Deny },
            mode: self.mode,
            principal,
            action: action.to_owned(),
            resource: self.resource_text.clone(),
            policies,
            errors,
            policy_version,
        };
        // The caller writes the audit line: it knows the request (id,
        // trace, path), which a second line here would not.
        decision
    }
}
