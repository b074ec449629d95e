//! Least privilege from observed use: what the policies allow each
//! identity against what it used ([`report`]), a policy set that permits
//! exactly the observed allowed traffic ([`propose`]), what a candidate set
//! would change on the recorded traffic ([`replay`]), and the access graph
//! ([`graph`]). Every "allowed" here is the policy engine's answer, the
//! one the sidecars give, not a reading of the policy text.
//!
//! The engine is asked about a route template (`/orders/{id}`) as the
//! path, with neutral facts for what usage does not record: the host is
//! the service's name, the port 80 (a connection's port from `/tcp/<port>`),
//! the source 127.0.0.1, no headers, TLS 1.3 for workloads, the time now.
//! A policy that turns on those facts is judged on the neutral ones.

pub mod graph;
pub mod propose;
pub mod replay;
pub mod report;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::SystemTime;

use warden_proxy::authz::{
    Decision, HttpRequestFacts, Mode, Outcome, Peer, PolicyEngine, PolicyFiles, PolicySnapshot,
    ServiceInfo, TcpConnectionFacts, TlsVersion, UnauthenticatedKind,
};
use warden_proxy::control::api::UsageRow;
use warden_proxy::identity::SpiffeId;

/// One question to the engine: may `caller` do `action` on `route` of
/// `service` (served by `callee`)?
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Query {
    pub caller: String,
    pub service: String,
    pub callee: String,
    pub action: String,
    pub route: String,
}

impl Query {
    pub fn of(row: &UsageRow) -> Query {
        Query {
            caller: row.caller.clone(),
            service: row.service.clone(),
            callee: row.callee.clone(),
            action: row.action.clone(),
            route: row.route.clone(),
        }
    }
}

/// A policy set, decided for any service.
pub struct Evaluator {
    snapshot: Arc<PolicySnapshot>,
    engines: HashMap<(String, String), Arc<PolicyEngine>>,
    now: SystemTime,
}

/// The peer a usage caller names: a SPIFFE ID or `unauthenticated:<kind>`.
pub fn peer_of(caller: &str) -> Option<Peer> {
    match caller.strip_prefix("unauthenticated:") {
        Some("plaintext") => Some(Peer::Unauthenticated(UnauthenticatedKind::Plaintext)),
        Some("tls-without-certificate") => Some(Peer::Unauthenticated(
            UnauthenticatedKind::TlsWithoutCertificate,
        )),
        Some(_) => None,
        None => SpiffeId::parse(caller).ok().map(Peer::Workload),
    }
}

/// The port of a connection's route, `/tcp/<port>`.
pub fn tcp_port(route: &str) -> Option<u16> {
    route.strip_prefix("/tcp/")?.parse().ok()
}

impl Evaluator {
    /// The policy set of `files` (file name -> text, the schema as
    /// `schema.cedarschema` if any), validated as a sidecar loads it.
    pub fn from_files(files: &BTreeMap<String, String>) -> Result<Self, String> {
        let files = PolicyFiles::from_named(files)?;
        let snapshot = PolicySnapshot::from_files(files).map_err(|e| e.to_string())?;
        Ok(Self::new(Arc::new(snapshot)))
    }

    pub fn new(snapshot: Arc<PolicySnapshot>) -> Self {
        Evaluator {
            snapshot,
            engines: HashMap::new(),
            now: SystemTime::now(),
        }
    }

    pub fn snapshot(&self) -> &PolicySnapshot {
        &self.snapshot
    }

    /// Every policy id of the set, with whether it is a permit.
    pub fn policies(&self) -> Vec<(String, bool)> {
        let mut all: Vec<(String, bool)> = self
            .snapshot
            .policy_set()
            .policies()
            .map(|p| {
                (
                    p.id().to_string(),
                    p.effect() == cedar_policy::Effect::Permit,
                )
            })
            .collect();
        all.sort();
        all
    }

    fn engine(&mut self, service: &str, callee: &str) -> Arc<PolicyEngine> {
        let key = (service.to_owned(), callee.to_owned());
        if let Some(engine) = self.engines.get(&key) {
            return engine.clone();
        }
        let info = match SpiffeId::parse(callee) {
            Ok(id) => ServiceInfo::from_identity(service, &id),
            Err(_) => ServiceInfo {
                name: service.to_owned(),
                trust_domain: String::new(),
                namespace: None,
            },
        };
        let engine = Arc::new(PolicyEngine::new(info, Mode::Enforce));
        engine.install_shared(self.snapshot.clone());
        self.engines.insert(key, engine.clone());
        engine
    }

    /// The engine's decision; None for a caller that names no peer.
    pub fn decide(&mut self, q: &Query) -> Option<Decision> {
        let peer = peer_of(&q.caller)?;
        let tls_version = match peer {
            Peer::Workload(_) => TlsVersion::Tls13,
            Peer::Unauthenticated(UnauthenticatedKind::Plaintext) => TlsVersion::Plaintext,
            Peer::Unauthenticated(UnauthenticatedKind::TlsWithoutCertificate) => TlsVersion::Tls13,
        };
        let authorizer = self.engine(&q.service, &q.callee).for_peer(peer);
        let source_ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let decision = match (q.action.as_str(), tcp_port(&q.route)) {
            ("connect", Some(port)) => authorizer.authorize_tcp(&TcpConnectionFacts {
                port,
                source_ip,
                tls_version,
                now: self.now,
            }),
            _ => authorizer.authorize_http(&HttpRequestFacts {
                method: &q.action,
                path: &q.route,
                host: &q.service,
                port: 80,
                source_ip,
                headers: &[],
                tls_version,
                now: self.now,
            }),
        };
        Some(decision)
    }

    /// Whether the engine allows `q`, and the deciding policies.
    pub fn allows(&mut self, q: &Query) -> (bool, Vec<String>) {
        match self.decide(q) {
            Some(d) => (d.decision == Outcome::Allow, d.policies),
            None => (false, Vec::new()),
        }
    }
}
