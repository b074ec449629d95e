//! Upgrades without losing anything: a database made by Warden 0.1.0
//! (`tests/fixtures/control-0.1`) migrated by today's control plane on
//! SQLite and PostgreSQL with every row still served, and a 0.1.0 sidecar
//! (its API types frozen in `support/api_0_1.rs`) against today's control
//! plane.

#[macro_use]
mod support;

#[path = "support/api_0_1.rs"]
mod api_0_1;

#[path = "support/control_fixture.rs"]
mod control_fixture;

use std::sync::Arc;

use control_fixture::{
    FIXTURE_TOKEN, NEWEST, csr_for, fixture_database, history, history_is_absent, id,
};
use http::Method;
use support::control::{Control, Db, any_port, server_id};
use warden_proxy::control::api;
use warden_proxy::identity::Svid;

on_both_backends!(a_0_1_database_is_migrated_and_a_0_1_sidecar_reads_every_row);
/// Today's control plane starts on 0.1.0's database: the schema is
/// migrated, and every row of the fixture is served. A 0.1.0 sidecar
/// (frozen types, no version header) joins with the fixture's token, renews
/// over mTLS and watches, and sees the fixture's revocations and policy.
async fn a_0_1_database_is_migrated_and_a_0_1_sidecar_reads_every_row(db: Db) {
    let (_dir, data, database) = fixture_database(&db);
    assert!(history_is_absent(&database), "the fixture has no history");

    // `warden control migrate --dry-run` lists both steps and changes
    // nothing; `warden control migrate` applies them.
    let migrate = |dry_run: bool| {
        let mut cmd = std::process::Command::new(support::warden_bin());
        cmd.args(["control", "migrate", "--data-dir"]).arg(&data);
        if dry_run {
            cmd.arg("--dry-run");
        }
        if let Db::Postgres(url) = &db {
            cmd.args(["--database", url]);
        }
        let out = cmd.output().expect("warden control migrate");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let listed = migrate(true);
    assert!(
        listed.contains("schema version 0 (this warden knows 6)")
            && listed.lines().filter(|l| l.ends_with("pending")).count() == 6
            && listed.contains("dry run: nothing was changed"),
        "{listed}"
    );
    assert!(history_is_absent(&database), "the dry run wrote");
    let applied = migrate(false);
    assert_eq!(applied.matches("applied now").count(), 6, "{applied}");
    assert_eq!(
        history(&database),
        vec![(1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (6, 1)]
    );

    let control = Control::start(&data, any_port(), &db, &[]);
    assert_eq!(
        history(&database),
        vec![(1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (6, 1)]
    );
    let admin = control.client(true);

    // Identities, SVIDs and their statuses, as 0.1.0 left them.
    let list: Vec<serde_json::Value> = admin.get(api::ADMIN_IDENTITIES).await.expect("list");
    let status = |who: &str| {
        list.iter()
            .find(|i| i["spiffe_id"] == id(who))
            .map(|i| i["status"].as_str().unwrap_or("").to_owned())
    };
    assert_eq!(status("fixture/api").as_deref(), Some("stale"), "{list:#?}");
    assert_eq!(status("fixture/new").as_deref(), Some("pending"));
    assert_eq!(status("fixture/old").as_deref(), Some("revoked"));
    let api_id: serde_json::Value = admin
        .get(&format!(
            "{}/{}",
            api::ADMIN_IDENTITIES,
            "5f1e0c0ffee00000000000000000a002"
        ))
        .await
        .expect("by serial");
    assert_eq!(api_id["labels"]["team"], "payments");
    assert_eq!(api_id["svids"].as_array().map(Vec::len), Some(2));
    assert_eq!(api_id["svids"][0]["instance"], "api-7f9c");
    assert_eq!(
        api_id["svids"][0]["sidecar_version"],
        serde_json::Value::Null
    );

    // Policy versions and the audit trail.
    let policies: serde_json::Value = admin.get(api::ADMIN_POLICIES).await.expect("policies");
    assert_eq!(policies["current"], 1, "{policies}");
    assert_eq!(policies["versions"].as_array().map(Vec::len), Some(2));
    let audit: Vec<serde_json::Value> = admin
        .get(&format!("{}?limit=1000", api::ADMIN_AUDIT))
        .await
        .expect("audit");
    for (event, outcome) in [
        ("token_created", "ok"),
        ("join", "ok"),
        ("revoke", "ok"),
        ("join", "refused"),
    ] {
        assert!(
            audit.iter().any(|e| e["event"] == event
                && e["outcome"] == outcome
                && e["at"].as_i64() < Some(1_790_000_000)),
            "fixture audit row {event}/{outcome} missing: {audit:#?}"
        );
    }

    // A 0.1.0 sidecar: join with the fixture's token, renew, watch.
    let new_id = id("fixture/new");
    let store = Arc::new(control.bundle_store());
    let old = api_0_1::OldClient::new(control.api, server_id(), store.clone());
    let (csr, key) = csr_for(&new_id);
    let joined: api_0_1::SvidResponse = old
        .post(
            api_0_1::JOIN,
            &api_0_1::JoinRequest {
                token: FIXTURE_TOKEN.into(),
                csr,
                instance: "old-sidecar".into(),
                ttl_secs: None,
            },
        )
        .await
        .expect("0.1.0 join");
    assert_eq!(joined.spiffe_id, new_id);
    let svid = Svid::from_pem(joined.chain_pem.as_bytes(), key.as_bytes()).expect("svid");
    store.install(svid, None).expect("install");
    let (csr, key) = csr_for(&new_id);
    let renewed: api_0_1::SvidResponse = old
        .post(
            api_0_1::RENEW,
            &api_0_1::RenewRequest {
                csr,
                instance: "old-sidecar".into(),
                ttl_secs: None,
            },
        )
        .await
        .expect("0.1.0 renew");
    assert_ne!(renewed.serial, joined.serial);
    let svid = Svid::from_pem(renewed.chain_pem.as_bytes(), key.as_bytes()).expect("svid");
    store.install(svid, None).expect("install");
    let (headers, watched): (_, api_0_1::WatchResponse) = old
        .call(
            Method::GET,
            &format!(
                "{}?revocations=-1&bundle=&policy=none&wait_ms=0",
                api_0_1::WATCH
            ),
            None,
        )
        .await
        .expect("0.1.0 watch");
    assert!(watched.revocations.spiffe_ids.contains(&id("fixture/old")));
    assert!(
        watched
            .revocations
            .serials
            .contains(&"5f1e0c0ffee00000000000000000b002".to_owned()),
        "{:?}",
        watched.revocations
    );
    assert_eq!(watched.policy_version, Some(1));
    let policy = watched.policy.expect("the current policy");
    assert!(policy.files["main.cedar"].starts_with("permit"));
    assert_eq!(
        headers
            .get(api::VERSION_HEADER)
            .and_then(|v| v.to_str().ok()),
        Some(api::VERSION),
        "the control plane says its version"
    );

    // Today's sidecar is recorded with its version; the old one without.
    let token: api::TokenResponse = admin
        .post(
            api::ADMIN_TOKENS,
            &api::TokenRequest {
                spiffe_id: id("fixture/today"),
                ttl_secs: None,
                labels: Default::default(),
            },
        )
        .await
        .expect("token");
    let today = control.client(false);
    let bundle: api::BundleResponse = today.get(api::BUNDLE).await.expect("bundle");
    assert_eq!(bundle.version, api::VERSION);
    assert_eq!(today.server_version().as_deref(), Some(api::VERSION));
    let (csr, _) = csr_for(&id("fixture/today"));
    let _: api::SvidResponse = today
        .post(
            api::JOIN,
            &api::JoinRequest {
                token: token.token,
                csr,
                instance: "new-sidecar".into(),
                ttl_secs: None,
            },
        )
        .await
        .expect("join");
    let list: Vec<serde_json::Value> = admin.get(api::ADMIN_IDENTITIES).await.expect("list");
    let version_of = |who: &str| {
        list.iter()
            .find(|i| i["spiffe_id"] == id(who))
            .map(|i| i["sidecar_version"].clone())
    };
    assert_eq!(version_of("fixture/today"), Some(api::VERSION.into()));
    assert_eq!(version_of("fixture/new"), Some(serde_json::Value::Null));

    // `warden control migrate --dry-run` while it serves: nothing pending.
    let mut args = vec!["control", "migrate", "--dry-run"];
    if let Db::Postgres(url) = &db {
        args.extend(["--database", url.as_str()]);
    }
    let out = control.cli_ok(&args);
    assert!(
        out.contains(&format!(
            "schema version {NEWEST} (this warden knows {NEWEST})"
        )) && !out.contains("pending"),
        "{out}"
    );
}

/// Today's request bodies are accepted by 0.1.0's strict request types
/// (its control plane refuses unknown fields): a field added to a request
/// without the version check would fail here.
#[test]
fn todays_requests_fit_0_1_request_types() {
    fn fits<New: serde::Serialize, Old: serde::de::DeserializeOwned>(new: &New) {
        let json = serde_json::to_string(new).expect("json");
        if let Err(e) = serde_json::from_str::<Old>(&json) {
            panic!("0.1.0 refuses {json}: {e}");
        }
    }
    fits::<_, api_0_1::JoinRequest>(&api::JoinRequest {
        token: "t".into(),
        csr: "c".into(),
        instance: "i".into(),
        ttl_secs: Some(60),
    });
    fits::<_, api_0_1::RenewRequest>(&api::RenewRequest {
        csr: "c".into(),
        instance: "i".into(),
        ttl_secs: None,
    });
    fits::<_, api_0_1::TokenRequest>(&api::TokenRequest {
        spiffe_id: "spiffe://example.org/a".into(),
        ttl_secs: None,
        labels: Default::default(),
    });
    // And 0.1.0's responses still decode for today's client: a control
    // plane one version older sends no `version` in its bundle.
    let old_bundle =
        serde_json::json!({"trust_domain": "example.org", "bundle_pem": "", "digest": "d"});
    let bundle: api::BundleResponse = serde_json::from_value(old_bundle).expect("old bundle");
    assert_eq!(bundle.version, "");
}
