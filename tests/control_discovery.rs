//! Discovery through the control plane: sidecars register their workload's
//! addresses over mTLS; an address belongs to one live identity (another's
//! claim is refused and audited); entries die with their SVID (expiry, on a
//! clock the test moves, and revocation); the watch delivers the registry
//! as it changes; `warden endpoints list` shows it. On SQLite and a real
//! PostgreSQL.

#[macro_use]
mod support;

#[path = "support/control_flows.rs"]
mod control_flows;

use std::sync::Arc;
use std::time::Duration;

use control_flows::{join, refused_code};
use http::Method;
use support::control::{Control, Db, TestClock, csr_pem};
use support::mesh::{FRONTEND, INTRUDER, ORDERS};
use warden_control::server::EndpointAddresses;
use warden_proxy::control::{ControlClient, ControlError, api};
use warden_proxy::identity::{SpiffeId, Svid};

on_both_backends!(
    each_address_belongs_to_one_live_identity_and_the_watch_delivers_the_registry,
    by_default_a_sidecar_registers_only_the_address_it_calls_from,
    service_addresses_are_set_by_an_administrator_and_never_taken_by_a_workload,
);

/// A workload of `id` that joined: a client presenting its SVID.
async fn workload(control: &Control, id: &str) -> ControlClient {
    let spiffe = SpiffeId::parse(id).expect("id");
    let (csr, key) = csr_pem(&spiffe);
    let svid = join(&control.client(false), &control.token(id), csr)
        .await
        .expect("join");
    let store = control.bundle_store();
    let svid = Svid::from_pem(svid.chain_pem.as_bytes(), key.as_bytes()).expect("svid");
    store.install(svid, None).expect("install");
    ControlClient::new(control.api, support::control::server_id(), Arc::new(store)).expect("client")
}

async fn register(
    client: &ControlClient,
    addresses: &[&str],
    ports: &[u16],
) -> Result<api::EndpointList, ControlError> {
    let body = api::EndpointRegistration {
        addresses: addresses.iter().map(|a| a.parse().expect("ip")).collect(),
        ports: ports.to_vec(),
    };
    let body = serde_json::to_vec(&body).expect("json");
    client
        .call(
            Method::PUT,
            api::ENDPOINTS,
            Some(body),
            Duration::from_secs(10),
        )
        .await
}

async fn registry(control: &Control) -> api::EndpointList {
    control
        .client(true)
        .get(api::ADMIN_ENDPOINTS)
        .await
        .expect("registry")
}

fn held(list: &api::EndpointList) -> Vec<(String, String)> {
    list.endpoints
        .iter()
        .map(|e| (e.address.to_string(), e.spiffe_id.clone()))
        .collect()
}

async fn each_address_belongs_to_one_live_identity_and_the_watch_delivers_the_registry(db: Db) {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(TestClock::default());
    // Registrations come from 127.0.0.1 here: any address may be claimed.
    let control = Control::start_in_process_with(
        &dir.path().join("control"),
        &db,
        clock.clone(),
        EndpointAddresses::Any,
    )
    .await;
    let orders = workload(&control, ORDERS).await;
    let frontend = workload(&control, FRONTEND).await;

    let mine = register(&orders, &["198.18.0.2"], &[8080])
        .await
        .expect("orders");
    assert_eq!(mine.endpoints.len(), 1);
    assert_eq!(mine.endpoints[0].ports, vec![8080]);
    // The instance is the one the SVID was issued to, whatever the body.
    assert_eq!(mine.endpoints[0].instance, "test");
    // Another identity claiming it: refused, audited, nothing changed.
    assert_eq!(
        refused_code(register(&frontend, &["198.18.0.3", "198.18.0.2"], &[]).await),
        (409, "endpoint_conflict".into())
    );
    let audited = control.audit_lines();
    assert!(
        audited.iter().any(|a| a["event"] == "endpoints_register"
            && a["outcome"] == "refused"
            && a["reason"] == "endpoint_conflict"
            && a["spiffe_id"] == FRONTEND),
        "{audited:#?}"
    );
    assert_eq!(
        held(&registry(&control).await),
        vec![("198.18.0.2".into(), ORDERS.into())],
        "the refused registration left nothing"
    );
    register(&frontend, &["198.18.0.3"], &[])
        .await
        .expect("frontend");

    // What no peer could dial, repeats, bad ports, no certificate.
    for (addresses, ports) in [
        (&[][..], &[][..]),
        (&["127.0.0.1"][..], &[][..]),
        (&["0.0.0.0"][..], &[][..]),
        (&["224.0.0.1"][..], &[][..]),
        (&["198.18.0.9", "198.18.0.9"][..], &[][..]),
        (&["::ffff:198.18.0.9"][..], &[][..]),
        (&["198.18.0.9"][..], &[0][..]),
    ] {
        assert_eq!(
            refused_code(register(&frontend, addresses, ports).await),
            (400, "bad_endpoint".into()),
            "{addresses:?} {ports:?}"
        );
    }
    assert_eq!(
        refused_code(register(&control.client(false), &["198.18.0.9"], &[]).await),
        (401, "mtls_required".into())
    );

    // The watch: the registry when asked (`endpoints=none`), then again
    // as soon as it changes.
    let watch = |mark: &str, known: Option<&api::WatchResponse>, wait_ms: u64| {
        // What the caller already has of the rest, so only the registry
        // can end the long poll.
        let (seq, digest) = known.map_or((-1, String::new()), |k| {
            (k.revocations.seq, k.bundle.digest.clone())
        });
        let path = format!(
            "{}?revocations={seq}&bundle={digest}&endpoints={mark}&policy=any&wait_ms={wait_ms}",
            api::WATCH
        );
        let client = frontend.clone();
        async move {
            client
                .call::<api::WatchResponse>(Method::GET, &path, None, Duration::from_secs(30))
                .await
                .expect("watch")
        }
    };
    // The revocation and bundle marks differ from the caller's (none), so
    // this answers at once.
    let answer = watch("none", None, 0).await;
    let first = answer.endpoints.clone().expect("the registry");
    assert_eq!(
        held(&first),
        vec![
            ("198.18.0.2".into(), ORDERS.into()),
            ("198.18.0.3".into(), FRONTEND.into())
        ]
    );
    // Without `endpoints=`, as sidecars before 0.3 ask: no registry.
    let old = frontend
        .call::<api::WatchResponse>(
            Method::GET,
            &format!("{}?policy=any", api::WATCH),
            None,
            Duration::from_secs(30),
        )
        .await
        .expect("watch");
    assert!(old.endpoints.is_none());

    // Re-registering replaces what the instance held.
    let waiting = tokio::spawn(watch(&first.mark, Some(&answer), 15_000));
    tokio::time::sleep(Duration::from_millis(100)).await;
    register(&orders, &["198.18.0.4"], &[8080, 5432])
        .await
        .expect("move");
    let moved = waiting.await.expect("watch task").endpoints;
    let moved = moved.expect("the change, before the long poll ran out");
    assert_ne!(moved.mark, first.mark);
    assert_eq!(
        held(&moved),
        vec![
            ("198.18.0.3".into(), FRONTEND.into()),
            ("198.18.0.4".into(), ORDERS.into())
        ]
    );
    let listed = control.cli_ok(&["endpoints", "list"]);
    assert!(
        listed.contains("198.18.0.4") && listed.contains("5432,8080") && listed.contains(ORDERS),
        "{listed}"
    );

    // Revoked: its entries go, and its address is free for another.
    control.cli_ok(&["identities", "revoke", ORDERS, "--reason", "test"]);
    assert_eq!(
        held(&registry(&control).await),
        vec![("198.18.0.3".into(), FRONTEND.into())]
    );
    let intruder = workload(&control, INTRUDER).await;
    register(&intruder, &["198.18.0.4"], &[])
        .await
        .expect("a dead holder's address");

    // Expired: past every SVID's lifetime, the registry is empty.
    clock.set_offset(10 * 24 * 3600);
    assert!(registry(&control).await.endpoints.is_empty());
}

/// The default (`--endpoint-addresses caller`): a workload cannot claim an
/// address it does not call from, so it cannot squat a pod IP not yet (or
/// no longer) in use. Refused and audited. (The namespace tests register
/// real pod addresses this way.)
async fn by_default_a_sidecar_registers_only_the_address_it_calls_from(db: Db) {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(TestClock::default());
    let control = Control::start_in_process(&dir.path().join("control"), &db, clock).await;
    let orders = workload(&control, ORDERS).await;
    assert_eq!(
        refused_code(register(&orders, &["198.18.0.2"], &[8080]).await),
        (403, "endpoint_not_source".into())
    );
    let audited = control.audit_lines();
    assert!(
        audited.iter().any(|a| a["event"] == "endpoints_register"
            && a["reason"] == "endpoint_not_source"
            && a["spiffe_id"] == ORDERS),
        "{audited:#?}"
    );
    assert!(registry(&control).await.endpoints.is_empty());
}

async fn set_service(
    control: &Control,
    address: &str,
    spiffe_id: &str,
    name: &str,
    ports: &[u16],
) -> Result<api::EndpointList, ControlError> {
    let body = api::ServiceEndpoint {
        address: address.parse().expect("ip"),
        spiffe_id: spiffe_id.to_owned(),
        name: name.to_owned(),
        ports: ports.to_vec(),
    };
    control
        .client(true)
        .call(
            Method::PUT,
            api::ADMIN_ENDPOINTS,
            Some(serde_json::to_vec(&body).expect("json")),
            Duration::from_secs(10),
        )
        .await
}

/// A Kubernetes Service's ClusterIP, set by an administrator (`warden
/// endpoints add`): in the registry the watch delivers, with no expiry;
/// never taken over by a workload's registration, nor set over a live
/// workload's address; removed by the administrator; only with the admin
/// token; bad input refused.
async fn service_addresses_are_set_by_an_administrator_and_never_taken_by_a_workload(db: Db) {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(TestClock::default());
    let control = Control::start_in_process_with(
        &dir.path().join("control"),
        &db,
        clock.clone(),
        EndpointAddresses::Any,
    )
    .await;
    let orders = workload(&control, ORDERS).await;
    let frontend = workload(&control, FRONTEND).await;
    register(&orders, &["198.18.0.2"], &[8080])
        .await
        .expect("orders' pod");

    let set = set_service(&control, "198.19.0.10", ORDERS, "shop/orders", &[80])
        .await
        .expect("service address");
    assert_eq!(set.endpoints[0].instance, "service:shop/orders");
    let listed = registry(&control).await;
    assert_eq!(
        held(&listed),
        vec![
            ("198.18.0.2".into(), ORDERS.into()),
            ("198.19.0.10".into(), ORDERS.into())
        ]
    );
    // A workload of any identity, the Service's own included, cannot take it.
    for client in [&frontend, &orders] {
        assert_eq!(
            refused_code(register(client, &["198.19.0.10"], &[]).await),
            (409, "endpoint_conflict".into())
        );
    }
    // Nor can the administrator set one over a live workload's address.
    assert_eq!(
        refused_code(set_service(&control, "198.18.0.2", FRONTEND, "shop/x", &[]).await),
        (409, "endpoint_conflict".into())
    );
    for (address, id, name, ports) in [
        ("127.0.0.1", ORDERS, "shop/orders", &[][..]),
        (
            "198.19.0.11",
            "spiffe://elsewhere.org/ns/a/sa/b",
            "shop/orders",
            &[][..],
        ),
        ("198.19.0.11", "not an id", "shop/orders", &[][..]),
        ("198.19.0.11", ORDERS, "Shop/Orders", &[][..]),
        ("198.19.0.11", ORDERS, "", &[][..]),
        ("198.19.0.11", ORDERS, "shop/orders", &[0][..]),
    ] {
        assert_eq!(
            refused_code(set_service(&control, address, id, name, ports).await),
            (400, "bad_endpoint".into()),
            "{address} {id} {name:?} {ports:?}"
        );
    }
    // A workload's own certificate is no admin credential.
    let body = serde_json::to_vec(&api::ServiceEndpoint {
        address: "198.19.0.12".parse().expect("ip"),
        spiffe_id: FRONTEND.into(),
        name: "shop/frontend".into(),
        ports: vec![],
    })
    .expect("json");
    assert_eq!(
        refused_code(
            frontend
                .call::<api::EndpointList>(
                    Method::PUT,
                    api::ADMIN_ENDPOINTS,
                    Some(body),
                    Duration::from_secs(10)
                )
                .await
        )
        .0,
        401
    );
    // Set again: replaced, not doubled. It outlives every SVID.
    set_service(&control, "198.19.0.10", ORDERS, "shop/orders", &[80, 443])
        .await
        .expect("replace");
    clock.set_offset(10 * 24 * 3600);
    let later = registry(&control).await;
    assert_eq!(held(&later), vec![("198.19.0.10".into(), ORDERS.into())]);
    assert_eq!(later.endpoints[0].ports, vec![80, 443]);
    let audited = control.audit_lines();
    assert!(
        audited
            .iter()
            .any(|a| a["event"] == "service_endpoint_set" && a["outcome"] == "ok"),
        "{audited:#?}"
    );

    let removed: api::ServiceEndpointRemoved = control
        .client(true)
        .call(
            Method::DELETE,
            &format!("{}?address=198.19.0.10", api::ADMIN_ENDPOINTS),
            None,
            Duration::from_secs(10),
        )
        .await
        .expect("remove");
    assert!(removed.removed);
    assert!(registry(&control).await.endpoints.is_empty());
    let again: api::ServiceEndpointRemoved = control
        .client(true)
        .call(
            Method::DELETE,
            &format!("{}?address=198.19.0.10", api::ADMIN_ENDPOINTS),
            None,
            Duration::from_secs(10),
        )
        .await
        .expect("remove again");
    assert!(!again.removed);
}
