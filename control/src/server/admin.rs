//! The admin endpoints: tokens, inventory, revocation, policies, the CA
//! rotation and the audit trail, behind the admin bearer token.

use super::*;

pub(super) fn admin_auth(
    state: &State,
    req: &Request<Incoming>,
    remote: SocketAddr,
) -> Result<(), Fail> {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(api::bearer_token);
    let fail = match presented {
        None => Fail::new(
            Reason::AdminCredentialsRequired,
            "admin calls need `Authorization: Bearer <token from admin.token>`",
        ),
        Some(token) => {
            let hash: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
            // Constant time: compare every byte whatever the first mismatch.
            let diff = hash
                .iter()
                .zip(state.admin_hash.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 {
                return Ok(());
            }
            Fail::new(Reason::BadAdminCredentials, "the admin token is not valid")
        }
    };
    Err(refused(state, "admin", &remote.to_string(), None, fail))
}

pub(super) async fn admin(
    state: &Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Fail> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let db = state.db.clone();
    match (&method, path.as_str()) {
        (&Method::POST, api::ADMIN_TOKENS) => {
            let body: api::TokenRequest = read_json(req, MAX_BODY).await?;
            create_token(state, body).await
        }
        (&Method::GET, api::ADMIN_IDENTITIES) => {
            let q = query_params(&req);
            input::only_known(&q, &["status", "expiring_within_secs", "unused_for_secs"])?;
            let status: Option<IdentityStatus> = input::one_of(&q, "status")?;
            let within: Option<i64> = input::number(&q, "expiring_within_secs")?;
            let unused_for: Option<i64> = input::number(&q, "unused_for_secs")?;
            let now = state.now();
            let mut list = blocking(move || db.identities(now)).await?;
            if let Some(status) = status {
                list.retain(|i| i.status == status);
            }
            if let Some(within) = within {
                list.retain(|i| {
                    i.status == IdentityStatus::Active
                        && i.expires_at
                            .is_some_and(|e| e <= now.saturating_add(within))
                });
            }
            if let Some(window) = unused_for {
                // Issued and renewed, here for the whole window, and no
                // request made or served in it: a candidate for removal.
                let start = now.saturating_sub(window);
                list.retain(|i| {
                    i.status == IdentityStatus::Active
                        && i.created_at <= start
                        && i.last_seen_as_caller.is_none_or(|t| t < start)
                        && i.last_seen_as_callee.is_none_or(|t| t < start)
                });
            }
            Ok(json_response(StatusCode::OK, &list))
        }
        (&Method::GET, p)
            if p.strip_prefix(api::ADMIN_IDENTITIES)
                .and_then(|rest| rest.strip_prefix('/'))
                .is_some_and(|key| !key.is_empty()) =>
        {
            let key = p
                .strip_prefix(api::ADMIN_IDENTITIES)
                .and_then(|rest| rest.strip_prefix('/'))
                .map(percent_decode)
                .unwrap_or_default();
            let now = state.now();
            let found = blocking(move || {
                let id = if key.starts_with("spiffe://") {
                    key
                } else {
                    match db.owner_of_serial(&key.to_ascii_lowercase().replace(':', ""))? {
                        Some(id) => id,
                        None => return Ok(None),
                    }
                };
                let Some(found) = db.identity(&id, now)? else {
                    return Ok(None);
                };
                Ok(Some((found, db.usage_since(0, Some(&id))?)))
            })
            .await?;
            match found {
                Some(((identity, svids), usage)) => Ok(json_response(
                    StatusCode::OK,
                    &IdentityDetail::new(identity, svids, &usage),
                )),
                None => Err(Fail::new(
                    Reason::UnknownIdentity,
                    "no such identity or serial in the inventory",
                )),
            }
        }
        (&Method::GET, api::ADMIN_BUNDLES) => {
            let stored = blocking(move || db.federated_bundles()).await?;
            let own = state.spiffe_bundle();
            let federated = state
                .federation
                .iter()
                .map(|link| {
                    let td = link.trust_domain.name();
                    let record = stored.iter().find(|r| r.trust_domain == td);
                    api::FederationStatus {
                        trust_domain: td.to_owned(),
                        endpoint_url: link.url.clone(),
                        endpoint_spiffe_id: link.endpoint_id.to_string(),
                        bundle: record.map(|r| r.bundle.clone()),
                        sequence: record.map(|r| r.sequence),
                        refreshed_at: record.map(|r| r.refreshed_at),
                        changed_at: record.map(|r| r.changed_at),
                        last_error: state.link_error(td),
                    }
                })
                .collect();
            Ok(json_response(
                StatusCode::OK,
                &api::BundleListing {
                    trust_domain: own.x509.trust_domain().name().to_owned(),
                    sequence: i64::try_from(own.sequence).unwrap_or(i64::MAX),
                    bundle: own.to_json(),
                    federated,
                },
            ))
        }
        (&Method::GET, api::ADMIN_ENDPOINTS) => {
            input::only_known(&query_params(&req), &[])?;
            let now = state.now();
            let (mark, records) = blocking(move || db.endpoints(now)).await?;
            Ok(json_response(StatusCode::OK, &endpoint_list(mark, records)))
        }
        (&Method::PUT, api::ADMIN_ENDPOINTS) => {
            let body: api::ServiceEndpoint = read_json(req, MAX_BODY).await?;
            let bad = |message: String| Fail::new(Reason::BadEndpoint, message);
            let id =
                SpiffeId::parse(&body.spiffe_id).map_err(|e| bad(format!("spiffe_id: {e}")))?;
            let trust_domain = state.cas.load().bundle.trust_domain().clone();
            if !id.is_member_of(&trust_domain) {
                return Err(bad(format!(
                    "{id} is not of this trust domain ({trust_domain})"
                )));
            }
            let name_ok = !body.name.is_empty()
                && body.name.len() <= 253
                && body
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-./".contains(&b));
            if !name_ok {
                return Err(bad(format!(
                    "name {:?}: 1 to 253 lowercase letters, digits and -./ (namespace/service)",
                    body.name
                )));
            }
            let canonical = body.address.to_canonical();
            if canonical.is_unspecified() || canonical.is_loopback() || canonical.is_multicast() {
                return Err(bad(format!(
                    "{} is not an address a peer can dial",
                    body.address
                )));
            }
            if canonical != body.address {
                return Err(bad(format!("{}: write it as {canonical}", body.address)));
            }
            if body.ports.len() > api::MAX_ENDPOINT_PORTS || body.ports.contains(&0) {
                return Err(bad(format!(
                    "ports: at most {} ports, none of them 0",
                    api::MAX_ENDPOINT_PORTS
                )));
            }
            let now = state.now();
            let record = blocking(move || {
                db.set_service_endpoint(
                    body.address,
                    &body.spiffe_id,
                    &body.name,
                    &body.ports,
                    "admin",
                    now,
                )
            })
            .await?;
            // Watchers hear of it now, not at the next poll.
            state.refresh_changes().await;
            let db = state.db.clone();
            let (mark, _) = blocking(move || db.endpoints(now)).await?;
            Ok(json_response(
                StatusCode::OK,
                &endpoint_list(mark, vec![record]),
            ))
        }
        (&Method::DELETE, api::ADMIN_ENDPOINTS) => {
            let params = query_params(&req);
            input::only_known(&params, &["address"])?;
            let address: std::net::IpAddr = params
                .get("address")
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| Fail::new(Reason::BadEndpoint, "?address=IP is required"))?;
            let removed = blocking(move || db.remove_service_endpoint(address, "admin")).await?;
            if removed {
                state.refresh_changes().await;
            }
            Ok(json_response(
                StatusCode::OK,
                &api::ServiceEndpointRemoved { removed },
            ))
        }
        (&Method::POST, api::ADMIN_REVOCATIONS) => {
            let body: api::RevokeRequest = read_json(req, MAX_BODY).await?;
            input::check_text("reason", Reason::BadReason, &body.reason, input::MAX_REASON)?;
            if body.reason.trim().is_empty() {
                return Err(Fail::new(
                    Reason::ReasonRequired,
                    "a revocation needs a reason",
                ));
            }
            let now = state.now();
            let (id, n) =
                blocking(move || db.revoke(body.target.trim(), body.reason.trim(), now)).await?;
            state.count(|c| c.revocations += 1);
            // Watchers hear of it now, not at the next poll.
            state.refresh_changes().await;
            let db = state.db.clone();
            let seq = blocking(move || db.revocation_seq()).await?;
            Ok(json_response(
                StatusCode::OK,
                &api::RevokeResponse {
                    spiffe_id: id,
                    svids_revoked: n,
                    seq,
                },
            ))
        }
        (&Method::GET, api::ADMIN_POLICIES) => {
            let (versions, current) =
                blocking(move || Ok((db.policy_versions()?, db.policy_head()?))).await?;
            let versions: Vec<_> = versions
                .into_iter()
                .map(|(version, created_at, digest)| serde_json::json!({"version": version, "created_at": created_at, "digest": digest}))
                .collect();
            Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({"current": current, "versions": versions}),
            ))
        }
        (&Method::POST, api::ADMIN_POLICIES) => {
            let body: api::PolicyPush = read_json(req, MAX_POLICY_BODY).await?;
            let (digest, count) = validate_policies(&body.files)?;
            let files = body.files;
            let d = digest.clone();
            let now = state.now();
            let (version, changed) = blocking(move || db.push_policy(&d, &files, now)).await?;
            state.count(|c| c.policy_pushes += 1);
            state.refresh_changes().await;
            Ok(json_response(
                StatusCode::OK,
                &api::PolicyPushResponse {
                    version,
                    digest,
                    changed,
                    policies: count,
                },
            ))
        }
        (&Method::POST, api::ADMIN_POLICY_ROLLBACK) => {
            let body: api::PolicyRollback = read_json(req, MAX_BODY).await?;
            let bundle = blocking(move || db.rollback_policy(body.version)).await?;
            state.refresh_changes().await;
            Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({"version": bundle.version, "digest": bundle.digest}),
            ))
        }
        (&Method::GET, api::ADMIN_CA) => {
            let cas = state.cas.load_full();
            Ok(json_response(StatusCode::OK, &ca_status(&cas)))
        }
        (&Method::POST, api::ADMIN_CA_ROTATE) => {
            let body: api::CaRotateRequest = read_json(req, MAX_BODY).await?;
            let grace = body
                .grace_secs
                .map_or(DEFAULT_ROTATION_GRACE, Duration::from_secs);
            if grace < MIN_ROTATION_GRACE || grace > MAX_ROTATION_GRACE {
                return Err(Fail::new(
                    Reason::BadGrace,
                    format!(
                        "the grace period must be between {}s and {}s: sidecars need it to learn the new root",
                        MIN_ROTATION_GRACE.as_secs(),
                        MAX_ROTATION_GRACE.as_secs()
                    ),
                ));
            }
            let dir = state.ca_dir.clone();
            let now = state.now();
            let plan = tokio::task::spawn_blocking(move || rotation::rotate(&dir, grace, now))
                .await
                .map_err(|e| Fail::new(Reason::Internal, e.to_string()))?
                .map_err(|e| Fail::new(Reason::RotationRefused, e.to_string()))?;
            let event = AuditEvent::ok("ca_rotate", None, None, "admin").with_detail(format!(
                "new CA {} signs from {}",
                plan.authorities.last().map_or("", |a| a.dir.as_str()),
                plan.authorities.last().map_or(0, |a| a.sign_from)
            ));
            let _ = blocking(move || db.audit(&event)).await;
            maintain_authorities(state)
                .await
                .map_err(|e| Fail::new(Reason::Internal, e.to_string()))?;
            Ok(json_response(
                StatusCode::OK,
                &ca_status(&state.cas.load_full()),
            ))
        }
        (&Method::GET, api::ADMIN_AUDIT) => {
            let q = query_params(&req);
            input::only_known(&q, &["limit"])?;
            let limit = input::number::<u32>(&q, "limit")?
                .unwrap_or(100)
                .min(10_000);
            let events = blocking(move || db.audit_tail(limit)).await?;
            Ok(json_response(StatusCode::OK, &events))
        }
        (_, p) if p == api::ADMIN_USAGE || p.starts_with("/v1/admin/access/") => {
            super::usage::admin_access(state, req).await
        }
        _ => Err(Fail::new(
            Reason::NotFound,
            format!("no admin endpoint {method} {path}"),
        )),
    }
}

/// Labels a join token (and so an identity) may carry.
const MAX_LABELS: usize = 32;

/// Default time a new root is published before it signs.
pub const DEFAULT_ROTATION_GRACE: Duration = Duration::from_secs(600);
/// Bounds of the grace period: long enough for connected sidecars' watches
/// to bring the new root, short enough that a rotation finishes.
pub const MIN_ROTATION_GRACE: Duration = Duration::from_secs(2);
pub const MAX_ROTATION_GRACE: Duration = Duration::from_secs(30 * 24 * 3600);

pub(super) fn ca_status(cas: &Authorities) -> serde_json::Value {
    serde_json::json!({
        "trust_domain": cas.signing.trust_domain().to_string(),
        "signing": cas.plan.authorities.get(cas.signing_index).map(|a| a.dir.clone()),
        "signing_ca_expires_at": Timestamp::from_system_time(cas.signing.not_after()).0,
        "bundle_roots": cas.bundle.roots().len(),
        "bundle_digest": cas.bundle_digest,
        "authorities": cas.plan.authorities,
    })
}

#[derive(Serialize)]
struct IdentityDetail {
    #[serde(flatten)]
    identity: IdentityRecord,
    svids: Vec<SvidRecord>,
    /// The services it called (within the usage retention).
    called: Vec<UseSummary>,
    /// The callers it served.
    callers: Vec<UseSummary>,
}

/// Requests between an identity and one peer, as `identities show` lists them.
#[derive(Serialize, Default)]
struct UseSummary {
    spiffe_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    service: Option<String>,
    allowed: u64,
    denied: u64,
    last_seen: i64,
}

impl IdentityDetail {
    fn new(identity: IdentityRecord, svids: Vec<SvidRecord>, usage: &[api::UsageRow]) -> Self {
        let mut called: BTreeMap<String, UseSummary> = BTreeMap::new();
        let mut callers: BTreeMap<String, UseSummary> = BTreeMap::new();
        for row in usage {
            let (map, peer, service) = if row.caller == identity.spiffe_id {
                (&mut called, &row.callee, Some(row.service.clone()))
            } else {
                (&mut callers, &row.caller, None)
            };
            let s = map.entry(peer.clone()).or_insert_with(|| UseSummary {
                spiffe_id: peer.clone(),
                service,
                ..UseSummary::default()
            });
            if row.decision == "allow" {
                s.allowed += row.count;
            } else {
                s.denied += row.count;
            }
            s.last_seen = s.last_seen.max(row.last_seen);
        }
        IdentityDetail {
            identity,
            svids,
            called: called.into_values().collect(),
            callers: callers.into_values().collect(),
        }
    }
}

pub(super) async fn create_token(
    state: &Arc<State>,
    body: api::TokenRequest,
) -> Result<Response<Body>, Fail> {
    let bad = |reason: Reason, m: String| Fail::new(reason, m);
    let id = SpiffeId::parse(&body.spiffe_id).map_err(|e| {
        bad(
            Reason::InvalidSpiffeId,
            format!("{:?}: {e}", body.spiffe_id),
        )
    })?;
    let trust_domain = state.cas.load().signing.trust_domain().clone();
    if !id.is_member_of(&trust_domain) {
        return Err(bad(
            Reason::ForeignTrustDomain,
            format!("{id} is outside this CA's trust domain {}", trust_domain),
        ));
    }
    if id.is_root() || id == state.server_id {
        return Err(bad(
            Reason::ReservedId,
            format!("{id} cannot be given to a workload"),
        ));
    }
    let ttl = body
        .ttl_secs
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TOKEN_TTL);
    if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
        return Err(bad(
            Reason::BadTtl,
            format!(
                "token TTL must be between 1s and {}s",
                MAX_TOKEN_TTL.as_secs()
            ),
        ));
    }
    if body.labels.len() > MAX_LABELS {
        return Err(bad(
            Reason::BadLabel,
            format!("at most {MAX_LABELS} labels per token"),
        ));
    }
    let mut labels = serde_json::Map::new();
    for (k, v) in body.labels {
        input::check_label(&k, &v)?;
        labels.insert(k, serde_json::Value::String(v));
    }
    let token = new_secret("wdt_");
    let hash = digest_hex(token.as_bytes());
    let token_id = hash[..12].to_owned();
    let now = state.now();
    let expires_at = now.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX));
    let db = state.db.clone();
    let (sid, tid) = (id.to_string(), token_id.clone());
    blocking(move || db.create_token(&hash, &tid, &sid, &labels, now, expires_at)).await?;
    Ok(json_response(
        StatusCode::OK,
        &api::TokenResponse {
            token,
            token_id,
            spiffe_id: id.to_string(),
            expires_at,
        },
    ))
}

/// Checks a pushed bundle the way a sidecar will load it; returns its digest
/// and policy count.
pub(super) fn validate_policies(files: &BTreeMap<String, String>) -> Result<(String, usize), Fail> {
    let bad = |m: String| Fail::new(Reason::InvalidPolicy, m);
    let policy_files = PolicyFiles::from_named(files).map_err(bad)?;
    let snapshot = PolicySnapshot::from_files(policy_files).map_err(|e| bad(e.to_string()))?;
    Ok((snapshot.version().to_owned(), snapshot.len()))
}
