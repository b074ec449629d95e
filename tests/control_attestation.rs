//! Attestation from Kubernetes projected service-account tokens, end to
//! end: a real control plane configured with a JWKS whose private key this
//! test holds, tokens minted with the claims the kubelet puts in projected
//! tokens, a real sidecar that joins with one (no join token), renews over
//! mTLS, and shows in the inventory with its pod; and every bad token
//! refused with its reason, audited, nothing issued. On SQLite and a real
//! PostgreSQL.

#[macro_use]
mod support;

#[path = "support/control_flows.rs"]
mod control_flows;

use std::time::Duration;

use control_flows::refused_code;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use support::control::{Control, Db, any_port, csr_pem};
use support::k8s::{ISSUER, Issuer, POD, POD_UID, b64, claims, now};
use support::mesh::{ORDERS, Proxy, get};
use support::path_str;
use warden_proxy::control::{ControlError, api};
use warden_proxy::identity::SpiffeId;

on_both_backends!(a_pod_attests_with_its_service_account_token_and_bad_tokens_are_refused);

async fn attest(
    control: &Control,
    token: &str,
    id: &str,
) -> Result<api::SvidResponse, ControlError> {
    let (csr, _) = csr_pem(&SpiffeId::parse(id).expect("id"));
    control
        .client(false)
        .post(
            api::ATTEST_K8S,
            &api::AttestRequest {
                token: token.to_owned(),
                csr,
                ttl_secs: None,
            },
        )
        .await
}

async fn a_pod_attests_with_its_service_account_token_and_bad_tokens_are_refused(db: Db) {
    let dir = tempfile::tempdir().expect("tempdir");
    let issuer = Issuer::new("key-1");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, issuer.jwks().to_string()).expect("jwks");
    let control = Control::start(
        &dir.path().join("control"),
        any_port(),
        &db,
        &[
            "--svid-ttl",
            "6s",
            "--k8s-issuer",
            ISSUER,
            "--k8s-jwks",
            path_str(&jwks),
            "--k8s-allow",
            "shop",
            "--k8s-allow",
            "billing/payments",
        ],
    );

    // A sidecar with the pod's token instead of a join token.
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, issuer.sign(&claims("shop", "orders"))).expect("token");
    let settings = vec![
        format!("control.address={}", control.api),
        "control.server_id=spiffe://example.org/warden/control".to_owned(),
        format!(
            "control.bundle={}",
            path_str(&control.dir.join("bundle.pem"))
        ),
        format!("control.k8s_token_file={}", path_str(&token_file)),
        // What the injected pod sets from the downward API.
        format!("control.instance={POD}"),
        "service.name=orders".to_owned(),
        "admin.listen=127.0.0.1:0".to_owned(),
        "inbound.listen=127.0.0.1:0".to_owned(),
        "inbound.app=127.0.0.1:9".to_owned(),
    ];
    let sidecar = Proxy::start(&dir.path().join("orders.log"), &settings);
    sidecar.wait_ready().await;
    let identity = |body: &str| serde_json::from_str::<Value>(body).expect("/identity JSON");
    let first = identity(
        &get(sidecar.admin, "/identity", &[])
            .await
            .expect("identity")
            .body,
    );
    assert_eq!(first["spiffe_id"], ORDERS, "{first}");
    // Renewal stays mTLS with the SVID, as for joined sidecars.
    support::eventually("a renewal", Duration::from_secs(15), async || {
        let now = identity(
            &get(sidecar.admin, "/identity", &[])
                .await
                .map_err(|e| e.to_string())?
                .body,
        );
        if now["serial"] != first["serial"] {
            Ok(())
        } else {
            Err(format!("still {}", now["serial"]))
        }
    })
    .await;
    let listed = control.cli_ok(&["identities", "list", "--json"]);
    let listed: Vec<Value> = serde_json::from_str(&listed).expect("json");
    let orders = listed
        .iter()
        .find(|i| i["spiffe_id"] == ORDERS)
        .unwrap_or_else(|| panic!("orders in the inventory: {listed:#?}"));
    assert_eq!(orders["instance"], POD, "{orders}");
    assert_eq!(orders["labels"]["k8s.namespace"], "shop", "{orders}");
    let audited = control.audit_lines();
    assert!(
        audited.iter().any(|a| a["event"] == "attest"
            && a["outcome"] == "ok"
            && a["spiffe_id"] == ORDERS
            && a["detail"].as_str().is_some_and(|d| d.contains(POD_UID))),
        "{audited:#?}"
    );
    drop(sidecar);

    // Every bad token: refused with its reason, audited, nothing issued.
    let other = Issuer::new("key-1");
    let unknown_kid = Issuer::new("key-2");
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut c = claims("shop", "payments");
        edit(&mut c);
        c
    };
    let hs256 = encode(
        &Header::new(Algorithm::HS256),
        &claims("shop", "payments"),
        &EncodingKey::from_secret(b"a shared secret").expect("secret"),
    )
    .expect("hs256");
    let unsigned = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims("shop", "payments").to_string().as_bytes())
    );
    let payments = "spiffe://example.org/ns/shop/sa/payments";
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "another key",
            other.sign(&claims("shop", "payments")),
            401,
            "token_signature",
        ),
        (
            "an unknown kid",
            unknown_kid.sign(&claims("shop", "payments")),
            401,
            "token_unknown_key",
        ),
        (
            "another audience",
            issuer.sign(&with(&|c| c["aud"] = json!(["vault"]))),
            401,
            "token_audience",
        ),
        (
            "another issuer",
            issuer.sign(&with(&|c| c["iss"] = json!("https://evil.example"))),
            401,
            "token_issuer",
        ),
        (
            "expired past the 30 s skew",
            issuer.sign(&with(&|c| {
                c["iat"] = json!(now() - 600);
                c["exp"] = json!(now() - 31);
            })),
            401,
            "token_expired_jwt",
        ),
        (
            "not yet valid past the skew",
            issuer.sign(&with(&|c| c["nbf"] = json!(now() + 40))),
            401,
            "token_not_yet_valid",
        ),
        (
            "minted in the future",
            issuer.sign(&with(&|c| c["iat"] = json!(now() + 40))),
            401,
            "token_not_yet_valid",
        ),
        (
            "longer-lived than --k8s-max-token-ttl",
            issuer.sign(&with(&|c| c["exp"] = json!(now() + 7200))),
            401,
            "token_lifetime",
        ),
        (
            "no exp",
            issuer.sign(&with(&|c| {
                c.as_object_mut().expect("claims").remove("exp");
            })),
            401,
            "token_claims",
        ),
        (
            "bound to no pod",
            issuer.sign(&with(&|c| {
                c["kubernetes.io"]
                    .as_object_mut()
                    .expect("claims")
                    .remove("pod");
            })),
            401,
            "token_claims",
        ),
        (
            "a namespace that is no Kubernetes name",
            issuer.sign(&with(&|c| {
                c["kubernetes.io"]["namespace"] = json!("shop/sa/admin");
                c["sub"] = json!("system:serviceaccount:shop/sa/admin:payments");
            })),
            401,
            "token_claims",
        ),
        ("alg none", unsigned, 401, "token_algorithm"),
        ("HS256", hs256, 401, "token_algorithm"),
        (
            "a sub that is not its service account",
            issuer.sign(&with(&|c| {
                c["sub"] = json!("system:serviceaccount:shop:orders")
            })),
            401,
            "token_claims",
        ),
        ("not a JWT", "not-a-jwt".to_owned(), 401, "token_malformed"),
        (
            "a namespace not allowed",
            issuer.sign(&claims("kube-system", "payments")),
            403,
            "attestation_not_allowed",
        ),
        (
            "another account of a namespace allowed one account",
            issuer.sign(&claims("billing", "payments-admin")),
            403,
            "attestation_not_allowed",
        ),
    ];
    for (what, token, status, code) in &cases {
        let (got, reason) = refused_code(attest(&control, token, payments).await);
        assert_eq!((got, reason.as_str()), (*status, *code), "{what}");
    }
    let listed = control.cli_ok(&["identities", "list", "--json"]);
    assert!(!listed.contains("payments"), "nothing issued: {listed}");

    // Within the skew, `aud` as a string, no `kid` (every key tried): fine.
    let cart = "spiffe://example.org/ns/shop/sa/cart";
    let late = issuer.sign(&{
        let mut c = claims("shop", "cart");
        c["iat"] = json!(now() - 600);
        c["exp"] = json!(now() - 20);
        c["aud"] = json!("warden");
        c
    });
    attest(&control, &late, cart)
        .await
        .expect("within the skew");
    let mut header = Header::new(Algorithm::ES256);
    header.kid = None;
    let key = EncodingKey::from_ec_pem(issuer.key.serialize_pem().as_bytes()).expect("EC key");
    let no_kid = encode(&header, &claims("shop", "cart"), &key).expect("sign");
    let issued = attest(&control, &no_kid, cart).await.expect("no kid");
    // Revoking that SVID is not undone by replaying its token.
    control.cli_ok(&["identities", "revoke", &issued.serial, "--reason", "test"]);
    assert_eq!(
        refused_code(attest(&control, &no_kid, cart).await),
        (403, "svid_revoked".into()),
        "a replayed token after a revocation"
    );
    // Nor is revoking the identity, by any token.
    control.cli_ok(&["identities", "revoke", cart, "--reason", "test"]);
    let fresh = issuer.sign(&{
        let mut c = claims("shop", "cart");
        c["iat"] = json!(now() + 1);
        c
    });
    assert_eq!(
        refused_code(attest(&control, &fresh, cart).await),
        (403, "identity_revoked".into()),
        "a revoked identity"
    );
    let audited = control.audit_lines();
    for (what, _, _, code) in &cases {
        assert!(
            audited.iter().any(|a| a["event"] == "attest"
                && a["outcome"] == "refused"
                && a["reason"] == *code),
            "{what} audited as {code}: {audited:#?}"
        );
    }

    // The issuer rotates its keys: the new JWKS is read without a restart.
    let rotated = Issuer::new("key-3");
    std::fs::write(&jwks, rotated.jwks().to_string()).expect("jwks");
    support::eventually("the rotated keys", Duration::from_secs(10), async || {
        attest(
            &control,
            &rotated.sign(&claims("shop", "payments")),
            payments,
        )
        .await
        .map(drop)
        .map_err(|e| e.to_string())
    })
    .await;
    let retired = issuer.sign(&claims("shop", "payments"));
    assert_eq!(
        refused_code(attest(&control, &retired, payments).await),
        (401, "token_unknown_key".into()),
        "the retired key no longer attests"
    );

    // A control plane without --k8s-issuer attests nobody.
    let clock = std::sync::Arc::new(support::control::TestClock::default());
    let plain = Control::start_in_process(&dir.path().join("plain"), &db, clock).await;
    let token = rotated.sign(&claims("shop", "payments"));
    assert_eq!(
        refused_code(attest(&plain, &token, payments).await),
        (403, "attestation_disabled".into())
    );
}
