//! Warden's authorization model in Cedar terms: who the principal is, which
//! action a request is, what the resource is, and the request context. The
//! schema is `policies/schema.cedarschema`; this module builds values that
//! conform to it.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::str::FromStr;
use std::time::SystemTime;

use cedar_policy::{Context, Entity, EntityId, EntityTypeName, EntityUid, RestrictedExpression};

use super::context_needs::ContextNeeds;
use super::error::AuthzError;
use crate::identity::{SpiffeId, Timestamp};

/// The actions of HTTP methods the schema declares; any other method is `OTHER`.
pub const HTTP_ACTIONS: [&str; 9] = [
    "GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE", "TRACE", "OTHER",
];
/// The action of an opaque TCP connection.
pub const CONNECT_ACTION: &str = "connect";

/// The Cedar action for an HTTP method.
pub fn action_for_method(method: &str) -> &'static str {
    HTTP_ACTIONS
        .iter()
        // HTTP methods are case-sensitive: `get` is not GET.
        .find(|a| **a == method && **a != "OTHER")
        .copied()
        .unwrap_or("OTHER")
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Peer {
    /// A peer whose SVID was verified at the handshake.
    Workload(SpiffeId),
    /// Plaintext, or TLS without a client certificate (permissive mode).
    Unauthenticated(UnauthenticatedKind),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnauthenticatedKind {
    Plaintext,
    TlsWithoutCertificate,
}

impl UnauthenticatedKind {
    fn id(self) -> &'static str {
        match self {
            UnauthenticatedKind::Plaintext => "plaintext",
            UnauthenticatedKind::TlsWithoutCertificate => "tls-without-certificate",
        }
    }
}

/// The service this sidecar protects: the Cedar resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    pub name: String,
    pub trust_domain: String,
    pub namespace: Option<String>,
}

impl ServiceInfo {
    /// The service named `name`, in the trust domain and namespace of the
    /// sidecar's own SPIFFE ID.
    pub fn from_identity(name: &str, id: &SpiffeId) -> Self {
        ServiceInfo {
            name: name.to_owned(),
            trust_domain: id.trust_domain_name().to_owned(),
            namespace: id.namespace_service_account().map(|(ns, _)| ns.to_owned()),
        }
    }
}

fn type_name(name: &str) -> EntityTypeName {
    // The names used here are fixed identifiers, valid by construction.
    EntityTypeName::from_str(name).unwrap_or_else(|_| unreachable_type(name))
}

#[cold]
fn unreachable_type(name: &str) -> EntityTypeName {
    panic!("built-in Cedar type name {name:?} failed to parse")
}

pub fn uid(ty: &str, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(type_name(ty), EntityId::new(id))
}

pub fn action_uid(action: &str) -> EntityUid {
    uid("Action", action)
}

fn string(s: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(s.to_owned())
}

/// The entities describing a peer: the principal and its groups, with every
/// entity it is (transitively) in.
pub struct PrincipalEntities {
    pub uid: EntityUid,
    pub ancestors: HashSet<EntityUid>,
    pub entities: Vec<Entity>,
}

pub fn principal_entities(peer: &Peer) -> Result<PrincipalEntities, AuthzError> {
    let entity = |uid: EntityUid,
                  attrs: HashMap<String, RestrictedExpression>,
                  parents: HashSet<EntityUid>| {
        Entity::new(uid, attrs, parents).map_err(|e| AuthzError::Entities(e.to_string()))
    };
    match peer {
        Peer::Unauthenticated(kind) => {
            let uid = uid("Unauthenticated", kind.id());
            Ok(PrincipalEntities {
                entities: vec![Entity::new_no_attrs(uid.clone(), HashSet::new())],
                uid,
                ancestors: HashSet::new(),
            })
        }
        Peer::Workload(id) => {
            let td_name = id.trust_domain_name();
            let td = uid("TrustDomain", td_name);
            let mut entities = vec![Entity::new_no_attrs(td.clone(), HashSet::new())];
            let mut parents = HashSet::from([td.clone()]);
            let mut ancestors = HashSet::from([td.clone()]);
            let mut attrs = HashMap::from([
                ("trust_domain".to_owned(), string(td_name)),
                ("path".to_owned(), string(id.path())),
            ]);
            if let Some((ns, sa)) = id.namespace_service_account() {
                let ns_uid = uid("Namespace", &format!("spiffe://{td_name}/ns/{ns}"));
                let sa_uid = uid(
                    "ServiceAccount",
                    &format!("spiffe://{td_name}/ns/{ns}/sa/{sa}"),
                );
                entities.push(entity(
                    ns_uid.clone(),
                    HashMap::from([
                        ("trust_domain".to_owned(), string(td_name)),
                        ("name".to_owned(), string(ns)),
                    ]),
                    HashSet::from([td.clone()]),
                )?);
                entities.push(entity(
                    sa_uid.clone(),
                    HashMap::from([
                        ("trust_domain".to_owned(), string(td_name)),
                        ("namespace".to_owned(), string(ns)),
                        ("name".to_owned(), string(sa)),
                    ]),
                    HashSet::from([ns_uid.clone()]),
                )?);
                parents.extend([ns_uid.clone(), sa_uid.clone()]);
                ancestors.extend([ns_uid, sa_uid]);
                attrs.insert("namespace".to_owned(), string(ns));
                attrs.insert("service_account".to_owned(), string(sa));
            }
            let uid = uid("Workload", id.as_str());
            entities.push(entity(uid.clone(), attrs, parents)?);
            Ok(PrincipalEntities {
                uid,
                ancestors,
                entities,
            })
        }
    }
}

pub fn service_entity(service: &ServiceInfo) -> Result<(EntityUid, Entity), AuthzError> {
    let uid = uid("Service", &service.name);
    let mut attrs = HashMap::from([
        ("name".to_owned(), string(&service.name)),
        ("trust_domain".to_owned(), string(&service.trust_domain)),
    ]);
    if let Some(ns) = &service.namespace {
        attrs.insert("namespace".to_owned(), string(ns));
    }
    let entity = Entity::new(uid.clone(), attrs, HashSet::new())
        .map_err(|e| AuthzError::Entities(e.to_string()))?;
    Ok((uid, entity))
}

/// What the proxy knows about one HTTP request.
#[derive(Debug, Clone)]
pub struct HttpRequestFacts<'a> {
    pub method: &'a str,
    /// Normalized (see `sidecar::normalize`): what the app receives.
    pub path: &'a str,
    /// Normalized: lowercase, no trailing dot, no port.
    pub host: &'a str,
    /// The port the request was addressed to (the host's, else 80/443).
    pub port: u16,
    pub source_ip: IpAddr,
    /// Request headers, names lowercase. Only headers the schema declares
    /// are passed to Cedar.
    pub headers: &'a [(&'a str, &'a str)],
    pub tls_version: TlsVersion,
    pub now: SystemTime,
}

/// What the proxy knows about one opaque TCP connection.
#[derive(Debug, Clone, Copy)]
pub struct TcpConnectionFacts {
    /// The port the connection was addressed to.
    pub port: u16,
    pub source_ip: IpAddr,
    pub tls_version: TlsVersion,
    pub now: SystemTime,
}

/// How the caller's connection was protected, as policies see it in
/// `context.tls.version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    Tls13,
    Tls12,
    /// A plaintext connection (permissive mode).
    Plaintext,
}

impl TlsVersion {
    /// The spelling in `context.tls.version` and the trace span.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsVersion::Tls13 => "TLSv1_3",
            TlsVersion::Tls12 => "TLSv1_2",
            TlsVersion::Plaintext => "none",
        }
    }

    /// The version rustls negotiated (TLS 1.3 unless it says 1.2: Warden
    /// offers no other).
    pub fn of(negotiated: Option<rustls::ProtocolVersion>) -> Self {
        match negotiated {
            Some(rustls::ProtocolVersion::TLSv1_2) => TlsVersion::Tls12,
            _ => TlsVersion::Tls13,
        }
    }
}

fn tls_record(authenticated: bool, version: TlsVersion) -> RestrictedExpression {
    record([
        (
            "authenticated",
            RestrictedExpression::new_bool(authenticated),
        ),
        ("version", string(version.as_str())),
    ])
}

fn record<'a>(
    pairs: impl IntoIterator<Item = (&'a str, RestrictedExpression)>,
) -> RestrictedExpression {
    // Keys are distinct by construction.
    RestrictedExpression::new_record(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)))
        .unwrap_or_else(|_| RestrictedExpression::new_bool(false))
}

fn datetime(now: SystemTime) -> RestrictedExpression {
    // Cedar datetimes take RFC 3339 UTC with a `Z`, at second precision here.
    let ts = Timestamp::from_system_time(now).to_string();
    RestrictedExpression::new_datetime(ts)
}

type Pairs = Vec<(String, RestrictedExpression)>;

/// Adds attribute `name` if the policies can observe it; the value is only
/// built then (some cost microseconds).
fn push_if_needed(
    pairs: &mut Pairs,
    needs: &ContextNeeds,
    name: &str,
    value: impl FnOnce() -> RestrictedExpression,
) {
    if needs.wants(name) {
        pairs.push((name.to_owned(), value()));
    }
}

/// The attributes HTTP and TCP contexts share: who connected, how, and when.
fn push_connection_attrs(
    pairs: &mut Pairs,
    needs: &ContextNeeds,
    source_ip: IpAddr,
    authenticated: bool,
    tls_version: TlsVersion,
    now: SystemTime,
) {
    push_if_needed(pairs, needs, "source_ip", || {
        // An IPv4-mapped IPv6 address (dual-stack listener) is the IPv4 address.
        RestrictedExpression::new_ip(source_ip.to_canonical().to_string())
    });
    push_if_needed(pairs, needs, "tls", || {
        tls_record(authenticated, tls_version)
    });
    push_if_needed(pairs, needs, "now", || datetime(now));
}

/// The HTTP request context, with only the attributes `needs` asks for.
pub fn http_context(
    facts: &HttpRequestFacts<'_>,
    authenticated: bool,
    declared_headers: &[String],
    needs: &ContextNeeds,
) -> Result<Context, AuthzError> {
    // Checked whether or not the policies read headers, so the decision does
    // not depend on which policies happen to be evaluated.
    check_duplicate_headers(facts, declared_headers)?;
    let mut pairs = Vec::with_capacity(8);
    push_if_needed(&mut pairs, needs, "method", || string(facts.method));
    push_if_needed(&mut pairs, needs, "path", || string(facts.path));
    push_if_needed(&mut pairs, needs, "host", || string(facts.host));
    push_if_needed(&mut pairs, needs, "port", || {
        RestrictedExpression::new_long(i64::from(facts.port))
    });
    if needs.wants("headers") {
        pairs.push((
            "headers".to_owned(),
            headers_record(facts, declared_headers)?,
        ));
    }
    push_connection_attrs(
        &mut pairs,
        needs,
        facts.source_ip,
        authenticated,
        facts.tls_version,
        facts.now,
    );
    Context::from_pairs(pairs).map_err(|e| AuthzError::Context(e.to_string()))
}

fn headers_record(
    facts: &HttpRequestFacts<'_>,
    declared_headers: &[String],
) -> Result<RestrictedExpression, AuthzError> {
    let headers = facts
        .headers
        .iter()
        .filter(|(name, _)| {
            declared_headers
                .iter()
                .any(|d| d.eq_ignore_ascii_case(name))
        })
        .map(|(name, value)| (name.to_ascii_lowercase(), string(value)));
    RestrictedExpression::new_record(headers).map_err(|e| AuthzError::Context(e.to_string()))
}

/// A declared header sent twice could dodge a forbid on its value (which
/// copy would the policy see?): refuse to guess.
pub(crate) fn check_duplicate_headers(
    facts: &HttpRequestFacts<'_>,
    declared_headers: &[String],
) -> Result<(), AuthzError> {
    // Few headers are declared: a small list beats hashing, and allocates
    // only when a declared header is present.
    let mut seen: Vec<&str> = Vec::new();
    for (name, _) in facts.headers {
        if !declared_headers
            .iter()
            .any(|d| d.eq_ignore_ascii_case(name))
        {
            continue;
        }
        if seen.iter().any(|s| s.eq_ignore_ascii_case(name)) {
            return Err(AuthzError::DuplicateHeader((*name).to_owned()));
        }
        seen.push(name);
    }
    Ok(())
}

/// The TCP connection context, with only the attributes `needs` asks for.
pub fn tcp_context(
    facts: &TcpConnectionFacts,
    authenticated: bool,
    needs: &ContextNeeds,
) -> Result<Context, AuthzError> {
    let mut pairs = Vec::with_capacity(4);
    push_if_needed(&mut pairs, needs, "port", || {
        RestrictedExpression::new_long(i64::from(facts.port))
    });
    push_connection_attrs(
        &mut pairs,
        needs,
        facts.source_ip,
        authenticated,
        facts.tls_version,
        facts.now,
    );
    Context::from_pairs(pairs).map_err(|e| AuthzError::Context(e.to_string()))
}
