//! Helpers for the authorization tests: the shipped schema and policies,
//! an engine for the `orders` service, and one-line requests.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use warden_proxy::authz::{
    Decision, HttpRequestFacts, Mode, Peer, PolicyEngine, PolicySnapshot, ServiceInfo, TlsVersion,
};
use warden_proxy::identity::SpiffeId;

pub const POLICIES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");

pub fn workload(id: &str) -> Peer {
    Peer::Workload(SpiffeId::parse(id).expect("valid id"))
}

pub fn orders() -> ServiceInfo {
    ServiceInfo::from_identity(
        "orders",
        &SpiffeId::parse("spiffe://example.org/ns/shop/sa/orders").expect("id"),
    )
}

/// A policy dir holding the shipped schema and the named shipped files.
pub fn dir_with(files: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        Path::new(POLICIES).join("schema.cedarschema"),
        dir.path().join("schema.cedarschema"),
    )
    .expect("schema");
    for f in files {
        let name = Path::new(f).file_name().expect("name");
        std::fs::copy(Path::new(POLICIES).join(f), dir.path().join(name)).expect("copy policy");
    }
    dir
}

pub fn engine_for(dir: &Path, mode: Mode) -> Arc<PolicyEngine> {
    let engine = Arc::new(PolicyEngine::new(orders(), mode));
    engine.install(PolicySnapshot::load_dir(dir).expect("valid policies"));
    engine
}

pub struct Req<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub now: SystemTime,
}

impl Default for Req<'_> {
    fn default() -> Self {
        Req {
            method: "GET",
            path: "/",
            headers: &[],
            now: SystemTime::now(),
        }
    }
}

pub fn decide(engine: &Arc<PolicyEngine>, peer: Peer, req: Req<'_>) -> Decision {
    let authorizer = engine.for_peer(peer);
    authorizer.authorize_http(&HttpRequestFacts {
        method: req.method,
        path: req.path,
        host: "orders.shop",
        port: 80,
        source_ip: IpAddr::from([127, 0, 0, 1]),
        headers: req.headers,
        tls_version: TlsVersion::Tls13,
        now: req.now,
    })
}

pub fn at(rfc3339: &str) -> SystemTime {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .expect("time");
    SystemTime::UNIX_EPOCH + Duration::from_secs(t.unix_timestamp() as u64)
}

pub fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).expect("write policy");
}

pub fn load_err(dir: &Path) -> String {
    match PolicySnapshot::load_dir(dir) {
        Ok(s) => panic!("expected a refusal, loaded {} policies", s.len()),
        Err(e) => e.to_string(),
    }
}
