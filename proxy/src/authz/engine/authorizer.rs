//! Deciding for one connection's peer: prepared once per policy version,
//! then each request decided natively (simple conditions) or by Cedar over
//! the slice of policies whose scope can match.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use cedar_policy::{Authorizer, Context, Request};

use super::{Decision, PolicyEngine, PreparedPeer};
use crate::authz::context_needs::ContextNeeds;
use crate::authz::error::AuthzError;
use crate::authz::model::{self, CONNECT_ACTION, HttpRequestFacts, Peer, TcpConnectionFacts};
use crate::authz::native;

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
    pub(super) fn new(engine: Arc<PolicyEngine>, peer: Peer) -> Self {
        PeerAuthorizer {
            engine,
            peer,
            prepared: ArcSwapOption::empty(),
        }
    }

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
            .snapshot()
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

    fn current(&self) -> Result<Arc<PreparedPeer>, AuthzError> {
        let snapshot = self.engine.snapshot().ok_or(AuthzError::NoPolicySet)?;
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
        context: impl FnOnce(&PreparedPeer, &ContextNeeds) -> Result<Context, AuthzError>,
    ) -> Decision {
        let engine = &self.engine;
        let deny = |principal: String, version: String, error: AuthzError| {
            engine.finish(
                false,
                principal,
                action,
                version,
                Vec::new(),
                vec![error.to_string()],
            )
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
                AuthzError::UnknownAction(action),
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
                return deny(prepared.principal_text.clone(), version, e);
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
            Err(e) => return deny(prepared.principal_text.clone(), version, e),
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
                        AuthzError::Request(e.to_string()),
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
