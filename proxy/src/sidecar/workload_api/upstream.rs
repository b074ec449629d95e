//! `[identity] workload_api`: the sidecar's SVID and bundles streamed from
//! another SPIFFE Workload API (a SPIRE agent, another Warden sidecar), by
//! the `spiffe` crate's client, and hot-swapped into the store on every
//! message. A lost stream is reconnected with the `[rotation]` backoff; the
//! last good SVID serves meanwhile, until it expires.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use spiffe::{WorkloadApiClient, X509Context};
use tokio::sync::watch;
use tokio_stream::StreamExt as _;

use crate::identity::{
    Backoff, JwtBundle, JwtBundleSet, Svid, SvidStore, TrustBundle, TrustBundleSet, TrustDomain,
};

/// Follows `endpoint` until shutdown.
pub async fn follow_upstream(
    endpoint: String,
    store: Arc<SvidStore>,
    backoff: Backoff,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut failures: u32 = 0;
    loop {
        let ended = tokio::select! {
            ended = follow(&endpoint, &store, &mut failures) => ended,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        failures = failures.saturating_add(1);
        let delay = backoff.next_delay(failures);
        tracing::warn!(%endpoint, error = %ended, failures, ?delay, "the upstream Workload API stream ended; keeping the current SVID and reconnecting");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// One connection: installs every X.509 context and JWT bundle set it
/// streams; returns why it ended. `failures` goes back to zero once a
/// message was installed.
async fn follow(endpoint: &str, store: &SvidStore, failures: &mut u32) -> String {
    let client = match WorkloadApiClient::connect_to(endpoint).await {
        Ok(c) => c,
        Err(e) => return format!("cannot connect: {e}"),
    };
    let mut x509 = match client.stream_x509_contexts().await {
        Ok(s) => s,
        Err(e) => return format!("FetchX509SVID: {e}"),
    };
    // An upstream that serves no JWT bundles is fine: X.509 is what the
    // sidecar needs.
    let mut jwt = match client.stream_jwt_bundles().await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::debug!(error = %e, "the upstream Workload API serves no JWT bundles");
            None
        }
    };
    loop {
        tokio::select! {
            item = x509.next() => match item {
                None => return "FetchX509SVID ended".into(),
                Some(Err(e)) => return format!("FetchX509SVID: {e}"),
                Some(Ok(context)) => match install(store, &context) {
                    Ok(id) => {
                        *failures = 0;
                        tracing::info!(spiffe_id = %id, "SVID from the upstream Workload API installed");
                    }
                    Err(e) => tracing::warn!(error = %e, "the upstream Workload API sent an SVID Warden refuses; keeping the current one"),
                },
            },
            item = next_jwt(&mut jwt) => match item {
                Some(Ok(bundles)) => match jwt_bundles(&bundles) {
                    Ok(set) => store.set_jwt_bundles(set),
                    Err(e) => tracing::warn!(error = %e, "the upstream Workload API sent a JWT bundle Warden refuses; keeping the current ones"),
                },
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "the upstream JWT bundle stream ended");
                    jwt = None;
                }
                None => jwt = None,
            },
        }
    }
}

async fn next_jwt<S, T>(stream: &mut Option<S>) -> Option<T>
where
    S: tokio_stream::Stream<Item = T> + Unpin,
{
    match stream {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// Checks and installs the context's default SVID with its bundles; the
/// SVID's ID on success.
fn install(store: &SvidStore, context: &X509Context) -> Result<String, String> {
    let svid = context
        .default_svid()
        .ok_or_else(|| "the context holds no SVID".to_owned())?;
    let chain: Vec<CertificateDer<'static>> = svid
        .cert_chain()
        .iter()
        .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
        .collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        svid.private_key().as_bytes().to_vec(),
    ));
    let svid = Svid::from_der(chain, key).map_err(|e| e.to_string())?;
    let mut bundles = TrustBundleSet::new();
    for (td, bundle) in context.bundle_set().iter() {
        let td = TrustDomain::new(td.as_ref()).map_err(|e| e.to_string())?;
        let roots = bundle
            .authorities()
            .iter()
            .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
            .collect();
        bundles.insert(TrustBundle::new(td, roots).map_err(|e| e.to_string())?);
    }
    let id = svid.spiffe_id().to_string();
    store
        .install(svid, Some(bundles))
        .map_err(|e| e.to_string())?;
    Ok(id)
}

fn jwt_bundles(set: &spiffe::JwtBundleSet) -> Result<JwtBundleSet, String> {
    let mut out = JwtBundleSet::default();
    for (td, bundle) in set.iter() {
        let td = TrustDomain::new(td.as_ref()).map_err(|e| e.to_string())?;
        let keys: Vec<serde_json::Value> = bundle
            .jwt_authorities()
            .map(|a| serde_json::from_slice(a.jwk_json()).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        let jwks = serde_json::json!({ "keys": keys }).to_string();
        out.insert(JwtBundle::from_jwks(td, jwks.as_bytes()).map_err(|e| e.to_string())?);
    }
    Ok(out)
}
