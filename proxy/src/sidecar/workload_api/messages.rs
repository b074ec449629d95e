//! The Workload API's messages, built from the SVID store: each carries
//! the full state (the standard's rule), so a client never merges.

use std::collections::HashMap;

use prost_types::value::Kind;
use serde_json::Value;
use tonic::Status;

use super::pb;
use crate::identity::{SvidStore, TrustBundle};

fn concat_roots(bundle: &TrustBundle) -> Vec<u8> {
    bundle
        .roots()
        .iter()
        .flat_map(|c| c.iter().copied())
        .collect()
}

/// The SVID (chain leaf first, PKCS#8 key, own bundle) and the other trust
/// domains' bundles; `None` until the sidecar holds an SVID.
pub fn x509_svid(store: &SvidStore) -> Option<Result<pb::X509svidResponse, Status>> {
    let svid = store.current()?;
    let Some(key) = svid.pkcs8_key() else {
        return Some(Err(Status::unavailable(
            "the sidecar's key was not loaded as PKCS#8, which the Workload API hands out",
        )));
    };
    let bundles = store.bundles();
    let own = svid.spiffe_id().trust_domain_name();
    let bundle = bundles
        .get(own)
        .map(|b| concat_roots(b))
        .unwrap_or_default();
    let federated_bundles = bundles
        .trust_domains()
        .filter(|td| td.name() != own)
        .filter_map(|td| Some((td.name().to_owned(), concat_roots(bundles.get(td.name())?))))
        .collect();
    Some(Ok(pb::X509svidResponse {
        svids: vec![pb::X509svid {
            spiffe_id: svid.spiffe_id().to_string(),
            x509_svid: svid
                .chain()
                .iter()
                .flat_map(|c| c.iter().copied())
                .collect(),
            x509_svid_key: key.to_vec(),
            bundle,
            hint: String::new(),
        }],
        crl: Vec::new(),
        federated_bundles,
    }))
}

/// Every trust domain's X.509 bundle; `None` while there is none.
pub fn x509_bundles(store: &SvidStore) -> Option<pb::X509BundlesResponse> {
    let bundles = store.bundles();
    if bundles.is_empty() {
        return None;
    }
    let bundles: HashMap<String, Vec<u8>> = bundles
        .trust_domains()
        .filter_map(|td| Some((td.name().to_owned(), concat_roots(bundles.get(td.name())?))))
        .collect();
    Some(pb::X509BundlesResponse {
        crl: Vec::new(),
        bundles,
    })
}

/// Every trust domain's JWT bundle (JWKS); `None` while there is none.
pub fn jwt_bundles(store: &SvidStore) -> Option<pb::JwtBundlesResponse> {
    let bundles = store.jwt_bundles();
    if bundles.is_empty() {
        return None;
    }
    Some(pb::JwtBundlesResponse {
        bundles: bundles
            .iter()
            .map(|b| {
                (
                    b.trust_domain().name().to_owned(),
                    b.to_jwks().as_bytes().to_vec(),
                )
            })
            .collect(),
    })
}

/// A token's claims as a protobuf `Struct`.
pub fn claims_struct(claims: serde_json::Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: claims.into_iter().map(|(k, v)| (k, to_value(v))).collect(),
    }
}

fn to_value(value: Value) -> prost_types::Value {
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(to_value).collect(),
        }),
        Value::Object(map) => Kind::StructValue(claims_struct(map)),
    };
    prost_types::Value { kind: Some(kind) }
}
