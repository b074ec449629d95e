//! Slicing a policy set by scope, so a decision evaluates only the policies
//! that could apply to this peer, this service and this action.
//!
//! Cedar evaluates a policy's scope (`principal ==/in/is ...`, `action ...`,
//! `resource ...`) before its conditions, with `&&` short-circuiting; a
//! policy whose scope does not match can neither apply nor raise an error.
//! Leaving such policies out therefore changes nothing in the decision, the
//! deciding policies or the errors, which the differential test checks.

use std::collections::{HashMap, HashSet};

use cedar_policy::{
    ActionConstraint, EntityTypeName, EntityUid, Policy, PolicyId, PolicySet, PrincipalConstraint,
    ResourceConstraint,
};

/// An entity and everything it is `in` (transitively).
#[derive(Debug, Clone)]
pub struct ScopeEntity<'a> {
    pub uid: &'a EntityUid,
    pub ancestors: &'a HashSet<EntityUid>,
}

impl ScopeEntity<'_> {
    fn is_in(&self, target: &EntityUid) -> bool {
        self.uid == target || self.ancestors.contains(target)
    }

    fn has_type(&self, ty: &EntityTypeName) -> bool {
        self.uid.type_name() == ty
    }
}

/// Policies grouped by their principal constraint, built once per policy set.
#[derive(Debug, Default)]
pub struct PolicyIndex {
    /// `principal` unconstrained, or `principal is T`: checked per peer.
    unindexed: Vec<PolicyId>,
    /// `principal == X` and `principal in X` (and `is T in X`), keyed by X.
    by_entity: HashMap<EntityUid, Vec<PolicyId>>,
    scopes: HashMap<PolicyId, Scope>,
}

#[derive(Debug)]
struct Scope {
    principal: PrincipalConstraint,
    action: ActionConstraint,
    resource: ResourceConstraint,
}

impl PolicyIndex {
    pub fn build(policies: &PolicySet) -> Self {
        let mut index = PolicyIndex::default();
        for policy in policies.policies() {
            let id = policy.id().clone();
            let principal = policy.principal_constraint();
            match &principal {
                PrincipalConstraint::Any | PrincipalConstraint::Is(_) => {
                    index.unindexed.push(id.clone())
                }
                PrincipalConstraint::Eq(x)
                | PrincipalConstraint::In(x)
                | PrincipalConstraint::IsIn(_, x) => {
                    index
                        .by_entity
                        .entry(x.clone())
                        .or_default()
                        .push(id.clone());
                }
            }
            index.scopes.insert(
                id,
                Scope {
                    principal,
                    action: policy.action_constraint(),
                    resource: policy.resource_constraint(),
                },
            );
        }
        index
    }

    /// Ids of the policies whose principal and resource scopes match, with
    /// their action constraints still to check per action.
    pub fn candidates(
        &self,
        principal: &ScopeEntity<'_>,
        resource: &ScopeEntity<'_>,
    ) -> Vec<PolicyId> {
        let keyed = std::iter::once(principal.uid)
            .chain(principal.ancestors.iter())
            .filter_map(|x| self.by_entity.get(x))
            .flatten();
        let mut seen = HashSet::new();
        self.unindexed
            .iter()
            .chain(keyed)
            .filter(|id| seen.insert((*id).clone()))
            .filter(|id| {
                self.scopes.get(*id).is_some_and(|s| {
                    principal_matches(&s.principal, principal)
                        && resource_matches(&s.resource, resource)
                })
            })
            .cloned()
            .collect()
    }

    /// Whether a policy's action scope matches `action`.
    pub fn action_matches(&self, id: &PolicyId, action: &ScopeEntity<'_>) -> bool {
        self.scopes.get(id).is_some_and(|s| match &s.action {
            ActionConstraint::Any => true,
            ActionConstraint::Eq(a) => action.uid == a,
            ActionConstraint::In(list) => list.iter().any(|a| action.is_in(a)),
        })
    }
}

fn principal_matches(c: &PrincipalConstraint, p: &ScopeEntity<'_>) -> bool {
    match c {
        PrincipalConstraint::Any => true,
        PrincipalConstraint::Eq(x) => p.uid == x,
        PrincipalConstraint::In(x) => p.is_in(x),
        PrincipalConstraint::Is(ty) => p.has_type(ty),
        PrincipalConstraint::IsIn(ty, x) => p.has_type(ty) && p.is_in(x),
    }
}

fn resource_matches(c: &ResourceConstraint, r: &ScopeEntity<'_>) -> bool {
    match c {
        ResourceConstraint::Any => true,
        ResourceConstraint::Eq(x) => r.uid == x,
        ResourceConstraint::In(x) => r.is_in(x),
        ResourceConstraint::Is(ty) => r.has_type(ty),
        ResourceConstraint::IsIn(ty, x) => r.has_type(ty) && r.is_in(x),
    }
}

/// A policy set holding `ids` from `all`.
pub fn subset(all: &PolicySet, ids: impl IntoIterator<Item = PolicyId>) -> PolicySet {
    let mut set = PolicySet::new();
    for id in ids {
        if let Some(policy) = all.policy(&id) {
            // Ids are unique in `all`, so adding cannot collide.
            let _ = set.add(Policy::clone(policy));
        }
    }
    set
}

/// Every policy of `all` with its scope rewritten to
/// `(principal, action, resource)`, same ids, for evaluating slices.
///
/// A slice is evaluated for one principal, action and resource whose scope
/// the index has already matched, so there the scope is true by
/// construction; yet Cedar rebuilds and evaluates it on every request (about
/// 1 µs per policy). With the scope true, `scope && conditions` equals
/// `conditions`, errors included, so decisions, deciding policies and errors
/// are unchanged (the differential test checks this). A policy that cannot
/// be rewritten is kept as it is.
pub fn without_scopes(all: &PolicySet) -> PolicySet {
    let mut set = PolicySet::new();
    for policy in all.policies() {
        let policy = without_scope(policy).unwrap_or_else(|| Policy::clone(policy));
        let _ = set.add(policy);
    }
    set
}

fn without_scope(policy: &Policy) -> Option<Policy> {
    let mut json = policy.to_json().ok()?;
    let object = json.as_object_mut()?;
    for key in ["principal", "action", "resource"] {
        object.insert(key.to_owned(), serde_json::json!({ "op": "All" }));
    }
    Policy::from_json(Some(policy.id().clone()), json).ok()
}
