//! What the control plane's API refuses, end to end: bad CSRs, tokens and
//! bodies, renewals without or with the wrong credentials, expired tokens
//! and SVIDs (on a clock the test moves), unsafe free text, unknown
//! filters and undeclared media types; each refusal precise, audited, and
//! changing nothing.

#[macro_use]
mod support;

#[path = "support/control_flows.rs"]
mod control_flows;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use control_flows::{join, refused_code};
use http::Method;
use support::control::{Control, Db, TestClock, any_port, csr_pem, eventually};
use support::mesh::{FRONTEND, INTRUDER, ORDERS, get};
use warden_proxy::control::{ControlClient, ControlError, api};
use warden_proxy::identity::{SpiffeId, Svid};

on_both_backends!(bad_requests_are_refused_precisely_audited_and_change_nothing);
fn csr_from_params(params: rcgen::CertificateParams) -> String {
    let key = rcgen::KeyPair::generate().expect("key");
    params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem")
}

/// A client presenting `svid` (chain PEM and key PEM).
fn mtls_client(control: &Control, chain: &str, key: &str) -> ControlClient {
    let store = control.bundle_store();
    let svid = Svid::from_pem(chain.as_bytes(), key.as_bytes()).expect("svid");
    store.install(svid, None).expect("install");
    ControlClient::new(control.api, support::control::server_id(), Arc::new(store)).expect("client")
}

async fn renew(client: &ControlClient, csr: String) -> Result<api::SvidResponse, ControlError> {
    client
        .post(
            api::RENEW,
            &api::RenewRequest {
                csr,
                instance: "test".into(),
                ttl_secs: None,
            },
        )
        .await
}

async fn bad_requests_are_refused_precisely_audited_and_change_nothing(db: Db) {
    let dir = tempfile::tempdir().expect("tempdir");
    // In process, on a clock the test moves: expiries without sleeping.
    let clock = Arc::new(TestClock::default());
    let control = Control::start_in_process(&dir.path().join("control"), &db, clock.clone()).await;
    let anon = control.client(false);
    let orders = SpiffeId::parse(ORDERS).expect("id");
    let token = control.token(ORDERS);

    // A CSR for another identity than the token's.
    let (other, _) = csr_pem(&SpiffeId::parse(INTRUDER).expect("id"));
    assert_eq!(
        refused_code(join(&anon, &token, other).await),
        (400, "csr_identity_mismatch".into())
    );
    // A CSR asking for CA rights, and one with two URI SANs.
    let mut ca = support::svid_params(&[ORDERS]);
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    assert_eq!(
        refused_code(join(&anon, &token, csr_from_params(ca)).await),
        (400, "csr_requests_ca".into())
    );
    let two = support::svid_params(&[ORDERS, FRONTEND]);
    assert_eq!(
        refused_code(join(&anon, &token, csr_from_params(two)).await),
        (400, "csr_multiple_uri_sans".into())
    );
    // Malformed JSON, an unknown field, a huge body.
    let raw = |body: Vec<u8>| {
        anon.call::<api::SvidResponse>(Method::POST, api::JOIN, Some(body), Duration::from_secs(10))
    };
    assert_eq!(
        refused_code(raw(b"{\"token\": ".to_vec()).await),
        (400, "malformed_json".into())
    );
    assert_eq!(
        refused_code(raw(br#"{"token":"x","csr":"y","ca":true}"#.to_vec()).await),
        (400, "malformed_json".into())
    );
    assert_eq!(
        refused_code(raw(vec![b' '; 1 << 20]).await),
        (413, "body_too_large".into())
    );
    assert_eq!(
        refused_code(join(&anon, "wdt_not-a-token", csr_pem(&orders).0).await),
        (403, "unknown_token".into())
    );

    // None of that used the token up.
    let (csr, key) = csr_pem(&orders);
    let first = join(&anon, &token, csr).await.expect("join");
    assert_eq!(first.spiffe_id, ORDERS);
    // A replayed token.
    assert_eq!(
        refused_code(join(&anon, &token, csr_pem(&orders).0).await),
        (403, "token_reused".into())
    );
    // An expired token.
    let short: api::TokenResponse = control
        .client(true)
        .post(
            api::ADMIN_TOKENS,
            &api::TokenRequest {
                spiffe_id: FRONTEND.into(),
                ttl_secs: Some(1),
                labels: BTreeMap::new(),
            },
        )
        .await
        .expect("token");
    // Two seconds later on the control plane's clock, the 1 s token is expired.
    clock.set_offset(2);
    let frontend = SpiffeId::parse(FRONTEND).expect("id");
    assert_eq!(
        refused_code(join(&anon, &short.token, csr_pem(&frontend).0).await),
        (403, "token_expired".into())
    );
    clock.set_offset(0);

    // Renewal: needs mTLS, the same ID only, a new key each time.
    assert_eq!(
        refused_code(renew(&anon, csr_pem(&orders).0).await),
        (401, "mtls_required".into())
    );
    let holder = mtls_client(&control, &first.chain_pem, &key);
    assert_eq!(
        refused_code(renew(&holder, csr_pem(&frontend).0).await),
        (400, "csr_identity_mismatch".into())
    );
    let (csr2, key2) = csr_pem(&orders);
    let second = renew(&holder, csr2).await.expect("renew");
    assert_ne!(second.serial, first.serial);

    // Admin calls without or with a wrong credential.
    let no_admin = control.client(false);
    assert_eq!(
        refused_code(
            no_admin
                .get::<serde_json::Value>(api::ADMIN_IDENTITIES)
                .await
        ),
        (401, "admin_credentials_required".into())
    );
    let wrong = control.client(false).with_bearer("wda_guess".into());
    assert_eq!(
        refused_code(wrong.get::<serde_json::Value>(api::ADMIN_IDENTITIES).await),
        (401, "bad_admin_credentials".into())
    );

    // Revoked: the old and the new SVID can no longer renew.
    control.cli_ok(&[
        "identities",
        "revoke",
        &first.serial,
        "--reason",
        "key leaked",
    ]);
    assert_eq!(
        refused_code(renew(&holder, csr_pem(&orders).0).await),
        (403, "svid_revoked".into())
    );
    control.cli_ok(&["identities", "revoke", ORDERS, "--reason", "decommissioned"]);
    let holder2 = mtls_client(&control, &second.chain_pem, &key2);
    assert_eq!(
        refused_code(renew(&holder2, csr_pem(&orders).0).await),
        (403, "svid_revoked".into())
    );

    // Renewal with an expired SVID: refused at the handshake, and audited.
    let short_id = SpiffeId::parse("spiffe://example.org/ns/shop/sa/short-lived").expect("id");
    let short_token = control.token(short_id.as_str());
    let (csr, key) = csr_pem(&short_id);
    // Signed 3 s in the past: still valid now (it must be, to be presented),
    // expired within about 2 s.
    clock.set_offset(-3);
    let short: api::SvidResponse = anon
        .post(
            api::JOIN,
            &api::JoinRequest {
                token: short_token,
                csr,
                instance: "test".into(),
                ttl_secs: Some(5),
            },
        )
        .await
        .expect("join with a 5 s SVID");
    clock.set_offset(0);
    let expiring = mtls_client(&control, &short.chain_pem, &key);
    // Past its expiry as the server's handshake sees it (the system time;
    // certificate times are whole seconds).
    eventually(
        Duration::from_secs(10),
        "the short SVID to expire",
        || async { (warden_control::store::unix_now() > short.expires_at).then_some(()) },
    )
    .await;
    match renew(&expiring, csr_pem(&short_id).0).await {
        // TLS 1.3: the server's refusal of a client certificate reaches the
        // client as an alert, seen during the handshake or on its first read.
        Err(ControlError::Tls { .. } | ControlError::Http(_)) => {}
        other => panic!("an expired SVID renewed: {other:?}"),
    }

    // Nothing refused changed state: one identity joined, two SVIDs, both revoked.
    let admin = control.client(true);
    let list: Vec<serde_json::Value> = admin.get(api::ADMIN_IDENTITIES).await.expect("list");
    let orders_entry = list
        .iter()
        .find(|i| i["spiffe_id"] == ORDERS)
        .expect("orders");
    assert_eq!(orders_entry["svids_issued"], 2);
    assert_eq!(orders_entry["status"], "revoked");
    let frontend_entry = list
        .iter()
        .find(|i| i["spiffe_id"] == FRONTEND)
        .expect("frontend");
    assert_eq!(
        frontend_entry["status"], "pending",
        "the expired token issued nothing"
    );
    assert!(list.iter().all(|i| i["spiffe_id"] != INTRUDER));

    // Every refusal is an audit row and an audit line.
    let audit: Vec<serde_json::Value> = admin
        .get(&format!("{}?limit=1000", api::ADMIN_AUDIT))
        .await
        .expect("audit");
    let refusals: BTreeSet<String> = audit
        .iter()
        .filter(|e| e["outcome"] == "refused")
        .map(|e| {
            format!(
                "{}:{}",
                e["event"].as_str().unwrap_or(""),
                e["reason"].as_str().unwrap_or("")
            )
        })
        .collect();
    for expected in [
        "join:csr_identity_mismatch",
        "join:csr_requests_ca",
        "join:csr_multiple_uri_sans",
        "join:malformed_json",
        "join:body_too_large",
        "join:unknown_token",
        "join:token_reused",
        "join:token_expired",
        "renew:mtls_required",
        "renew:csr_identity_mismatch",
        "renew:svid_revoked",
        "admin:admin_credentials_required",
        "admin:bad_admin_credentials",
        "handshake:bad_client_certificate",
    ] {
        assert!(
            refusals.contains(expected),
            "no audit record {expected}: {refusals:?}"
        );
    }
    let lines = control.audit_lines();
    assert!(
        lines
            .iter()
            .any(|l| l["event"] == "join" && l["reason"] == "token_reused"),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["event"] == "revoke" && l["outcome"] == "ok")
    );
    let metrics = get(control.metrics, "/metrics", &[])
        .await
        .expect("metrics")
        .body;
    assert!(
        metrics.contains("warden_control_refusals_total{event=\"join\",reason=\"token_reused\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("warden_control_identities{status=\"revoked\"} 1"),
        "{metrics}"
    );
    if let Err(problems) = support::promtool(&metrics) {
        panic!("promtool on the control plane's /metrics:\n{problems}\n{metrics}");
    }
}

/// Free text is bounded and plain, filters are known values, bodies are
/// declared JSON: nothing a caller sends can forge an inventory row in an
/// operator's terminal or read as an empty answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_text_filters_and_media_types_are_checked_at_the_api() {
    let dir = tempfile::tempdir().expect("tempdir");
    let control = Control::start(&dir.path().join("control"), any_port(), &Db::Sqlite, &[]);
    let anon = control.client(false);
    let admin = control.client(true);
    let orders = SpiffeId::parse(ORDERS).expect("id");
    let token = control.token(ORDERS);
    let join_as = |instance: String| {
        let (csr, _) = csr_pem(&orders);
        let anon = anon.clone();
        let token = token.clone();
        async move {
            anon.post::<_, api::SvidResponse>(
                api::JOIN,
                &api::JoinRequest {
                    token,
                    csr,
                    ttl_secs: None,
                    instance,
                },
            )
            .await
        }
    };
    // Terminal escapes and a newline that would forge a second row.
    let forged = "host-1\x1b[2K\rspiffe://example.org/ns/x/sa/admin active".to_owned();
    assert_eq!(
        refused_code(join_as(forged).await),
        (400, "bad_instance".into())
    );
    assert_eq!(
        refused_code(join_as("h".repeat(300)).await),
        (400, "bad_instance".into())
    );
    // Refused before the token was looked at: it still works.
    let joined = join_as("orders-7f9c/pod_1.x:8080".into())
        .await
        .expect("a plain instance joins");
    assert_eq!(joined.spiffe_id, ORDERS);

    // Labels: keys plain, values without controls or bidi overrides, few.
    let token_with = |labels: BTreeMap<String, String>| {
        let admin = admin.clone();
        async move {
            admin
                .post::<_, api::TokenResponse>(
                    api::ADMIN_TOKENS,
                    &api::TokenRequest {
                        spiffe_id: FRONTEND.into(),
                        ttl_secs: Some(60),
                        labels,
                    },
                )
                .await
        }
    };
    for (k, v) in [
        ("team", "pay\u{202e}ments"),
        ("team", "a\x07b"),
        ("a b", "x"),
        ("", "x"),
    ] {
        assert_eq!(
            refused_code(token_with(BTreeMap::from([(k.to_owned(), v.to_owned())])).await),
            (400, "bad_label".into()),
            "{k:?}={v:?}"
        );
    }
    let many: BTreeMap<String, String> = (0..33).map(|i| (format!("k{i}"), "v".into())).collect();
    assert_eq!(
        refused_code(token_with(many).await),
        (400, "bad_label".into())
    );
    token_with(BTreeMap::from([("team".into(), "payments, EU".into())]))
        .await
        .expect("plain labels");

    // A revocation reason is free text too.
    assert_eq!(
        refused_code(
            admin
                .post::<_, api::RevokeResponse>(
                    api::ADMIN_REVOCATIONS,
                    &api::RevokeRequest {
                        target: ORDERS.into(),
                        reason: "key leaked\x1b]0;owned\x07".into(),
                    },
                )
                .await
        ),
        (400, "bad_reason".into())
    );

    // Filters: unknown values and parameters are 400, not an empty list.
    for query in [
        "?status=bogus",
        "?status=Active",
        "?colour=red",
        "?expiring_within_secs=soon",
    ] {
        let path = format!("{}{query}", api::ADMIN_IDENTITIES);
        assert_eq!(
            refused_code(admin.get::<serde_json::Value>(&path).await),
            (400, "bad_query".into()),
            "{query}"
        );
    }
    let active: Vec<serde_json::Value> = admin
        .get(&format!("{}?status=active", api::ADMIN_IDENTITIES))
        .await
        .expect("known filter");
    assert_eq!(active.len(), 1);
    assert_eq!(
        refused_code(
            admin
                .get::<serde_json::Value>(&format!("{}?limit=all", api::ADMIN_AUDIT))
                .await
        ),
        (400, "bad_query".into())
    );

    // Bodies must be declared JSON; the admin scheme is case-insensitive.
    let admin_token =
        std::fs::read_to_string(control.dir.join("admin.token")).expect("admin token");
    let body = format!(r#"{{"spiffe_id":"{FRONTEND}"}}"#);
    let post = |content_type: &str, scheme: &str| {
        let ct = if content_type.is_empty() {
            String::new()
        } else {
            format!("content-type: {content_type}\r\n")
        };
        format!(
            "POST {} HTTP/1.1\r\nhost: warden-control\r\nauthorization: {scheme} {}\r\n{ct}content-length: {}\r\nconnection: close\r\n\r\n{body}",
            api::ADMIN_TOKENS,
            admin_token.trim(),
            body.len()
        )
    };
    for ct in ["text/plain", "", "application/x-www-form-urlencoded"] {
        let reply = control.raw_request(post(ct, "Bearer").as_bytes()).await;
        assert!(reply.starts_with("HTTP/1.1 415"), "{ct:?}: {reply}");
        assert!(reply.contains("unsupported_media_type"), "{reply}");
    }
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let reply = control
            .raw_request(post("Application/JSON; charset=utf-8", scheme).as_bytes())
            .await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{scheme}: {reply}");
    }
}

async fn jwt(client: &ControlClient) -> Result<api::JwtResponse, ControlError> {
    client
        .post(
            api::JWT,
            &api::JwtRequest {
                audiences: vec!["kept".into()],
                ttl_secs: None,
            },
        )
        .await
}

/// Calls reuse a kept connection while it is made with the current SVID;
/// a new SVID opens a new one; and a kept connection whose client
/// certificate expired is refused by the control plane, per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_connections_follow_the_svid_and_do_not_outlive_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(TestClock::default());
    let control =
        Control::start_in_process(&dir.path().join("control"), &Db::Sqlite, clock.clone()).await;
    let orders = SpiffeId::parse(ORDERS).expect("id");

    // Anonymous calls share one connection.
    let anon = control.client(false);
    let (csr, key) = csr_pem(&orders);
    let first = join(&anon, &control.token(ORDERS), csr)
        .await
        .expect("join");
    let _: serde_json::Value = anon.get(api::BUNDLE).await.expect("bundle");
    assert_eq!(anon.connections_made(), 1);

    // A renewal, then a JWT-SVID: one connection, with the first SVID.
    let store = Arc::new(control.bundle_store());
    let held = Svid::from_pem(first.chain_pem.as_bytes(), key.as_bytes()).expect("svid");
    store.install(held, None).expect("install");
    let client = ControlClient::new(control.api, support::control::server_id(), store.clone())
        .expect("client");
    let (csr, key) = csr_pem(&orders);
    let second = renew(&client, csr).await.expect("renew");
    jwt(&client).await.expect("jwt");
    assert_eq!(client.connections_made(), 1);

    // The first SVID revoked, the second in place: the next call makes a
    // new connection, which presents the second (with the first, the
    // renewal would be refused as revoked).
    let _: api::RevokeResponse = control
        .client(true)
        .post(
            api::ADMIN_REVOCATIONS,
            &api::RevokeRequest {
                target: first.serial.clone(),
                reason: "superseded".into(),
            },
        )
        .await
        .expect("revoke");
    let held = Svid::from_pem(second.chain_pem.as_bytes(), key.as_bytes()).expect("svid");
    store.install(held, None).expect("install");
    renew(&client, csr_pem(&orders).0)
        .await
        .expect("renew with the second SVID");
    assert_eq!(client.connections_made(), 2);

    // Past that SVID's expiry on the control plane's clock, the kept
    // connection's next request is refused, though its handshake passed.
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("time")
            .as_secs(),
    )
    .expect("secs");
    clock.set_offset(second.expires_at - now + 5);
    assert_eq!(
        refused_code(jwt(&client).await),
        (401, "bad_client_certificate".into())
    );
    assert_eq!(
        client.connections_made(),
        2,
        "refused on the kept connection"
    );
    // The control plane closed it: the next call connects again.
    clock.set_offset(0);
    jwt(&client).await.expect("jwt once the clock is back");
    assert_eq!(client.connections_made(), 3);
}
