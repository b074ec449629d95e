//! The endpoints sidecars call: join, renew and watch.

use super::*;

/// What a join or a renewal asks to have signed.
pub(super) struct Asked<'a> {
    pub(super) csr: &'a str,
    pub(super) ttl_secs: Option<u64>,
    pub(super) kind: SvidKind,
    pub(super) instance: &'a str,
    pub(super) sidecar_version: Option<&'a str>,
}

/// Signs the CSR `asked` for `bound` at `now`, and describes the result
/// for the inventory.
pub(super) fn sign(
    cas: &Authorities,
    bound: &str,
    asked: &Asked<'_>,
    now: std::time::SystemTime,
) -> Result<Signed<api::SvidResponse>, StoreError> {
    let bound_id = SpiffeId::parse(bound)
        .map_err(|e| StoreError::refused(Reason::Internal, format!("stored ID {bound:?}: {e}")))?;
    let issued = cas
        .signing
        .sign_csr_at(
            asked.csr.as_bytes(),
            &SignRequest {
                bound_id: Some(bound_id),
                ttl: asked.ttl_secs.map(Duration::from_secs),
            },
            now,
        )
        .map_err(csr_refusal)?;
    let key_sha256 = issued
        .chain
        .first()
        .and_then(|leaf| x509_parser::certificate::X509Certificate::from_der(leaf).ok())
        .map(|(_, cert)| digest_hex(cert.tbs_certificate.subject_pki.raw))
        .unwrap_or_default();
    let record = SvidRecord {
        serial: issued.serial.clone(),
        spiffe_id: issued.spiffe_id.to_string(),
        key_sha256,
        issued_at: clock::unix_secs(now),
        expires_at: issued.not_after.0,
        kind: asked.kind,
        instance: asked.instance.to_owned(),
        revoked: false,
        sidecar_version: asked.sidecar_version.map(str::to_owned),
    };
    Ok(Signed {
        value: api::SvidResponse {
            spiffe_id: record.spiffe_id.clone(),
            serial: record.serial.clone(),
            expires_at: record.expires_at,
            chain_pem: issued.chain_pem(),
            bundle_pem: cas.bundle_pem.clone(),
        },
        record,
    })
}

/// The version a sidecar reports in `Warden-Version` (sidecars before
/// 0.2.0 send none); a malformed one is refused.
fn sidecar_version(req: &Request<Incoming>) -> Result<Option<String>, Fail> {
    let Some(value) = req.headers().get(api::VERSION_HEADER) else {
        return Ok(None);
    };
    // Anything but ASCII letters, digits and .-+ fails the check, so the
    // lossy decoding never lets a byte through.
    let text = String::from_utf8_lossy(value.as_bytes());
    api::check_version(&text)
        .map(|()| Some(text.into_owned()))
        .map_err(|e| {
            Fail::new(
                Reason::InvalidVersion,
                format!("{}: {e}", api::VERSION_HEADER),
            )
        })
}

pub(super) async fn join(
    state: &Arc<State>,
    remote: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Fail> {
    let actor = remote.to_string();
    let version = sidecar_version(&req).map_err(|f| refused(state, "join", &actor, None, f))?;
    let body: api::JoinRequest = read_json(req, MAX_BODY)
        .await
        .and_then(|body: api::JoinRequest| input::check_instance(&body.instance).map(|()| body))
        .map_err(|f| refused(state, "join", &actor, None, f))?;
    let hash = digest_hex(body.token.as_bytes());
    let actor = format!("token:{}", &hash[..12]);
    // The signing CA is read inside the transaction (which may be retried):
    // an SVID is never signed by a CA that stopped signing meanwhile.
    let cas = state.cas.clone();
    let db = state.db.clone();
    let now = state.clock.now();
    let outcome = blocking(move || {
        let asked = Asked {
            csr: &body.csr,
            ttl_secs: body.ttl_secs,
            kind: SvidKind::Join,
            instance: &body.instance,
            sidecar_version: version.as_deref(),
        };
        db.redeem_token(&hash, clock::unix_secs(now), |bound| {
            sign(&cas.load(), bound, &asked, now)
        })
    })
    .await;
    match outcome {
        Ok(svid) => {
            state.count(|c| *c.issued.entry(SvidKind::Join).or_default() += 1);
            Ok(json_response(StatusCode::OK, &svid))
        }
        Err(e) => Err(refused(state, "join", &actor, None, e.into())),
    }
}

/// `POST /v1/attest/k8s`: the first SVID of a pod, for its projected
/// service-account token. Every refusal is audited with its reason.
pub(super) async fn attest_k8s(
    state: &Arc<State>,
    remote: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Fail> {
    let actor = remote.to_string();
    let version = sidecar_version(&req).map_err(|f| refused(state, "attest", &actor, None, f))?;
    let Some(k8s) = &state.k8s else {
        return Err(refused(
            state,
            "attest",
            &actor,
            None,
            Fail::new(
                Reason::Attest(crate::reason::AttestReason::Disabled),
                "this control plane does not attest Kubernetes service-account tokens (--k8s-issuer)",
            ),
        ));
    };
    let body: api::AttestRequest = read_json(req, MAX_BODY)
        .await
        .map_err(|f| refused(state, "attest", &actor, None, f))?;
    let now = state.now();
    let attested = k8s.verify(&body.token, now).map_err(|r| {
        let (reason, message) = r.into();
        refused(state, "attest", &actor, None, Fail::new(reason, message))
    })?;
    let id = attested.spiffe_id.to_string();
    let (pod, pod_uid) = attested.pod.clone().unwrap_or_default();
    let mut labels = serde_json::Map::new();
    labels.insert("k8s.namespace".into(), attested.namespace.clone().into());
    labels.insert(
        "k8s.service_account".into(),
        attested.service_account.clone().into(),
    );
    // The pod names the instance; a token not bound to a pod, the address.
    let instance = if pod.is_empty() {
        api::sanitize_instance(&actor)
    } else {
        api::sanitize_instance(&pod)
    };
    let detail = format!("pod {pod:?} uid {pod_uid:?} from {actor}");
    let attested_id = attested.spiffe_id.clone();
    let cas = state.cas.clone();
    let db = state.db.clone();
    let now_time = state.clock.now();
    let outcome = blocking(move || {
        let asked = Asked {
            csr: &body.csr,
            ttl_secs: body.ttl_secs,
            kind: SvidKind::Attest,
            instance: &instance,
            sidecar_version: version.as_deref(),
        };
        db.attest(
            &id,
            &instance,
            attested.issued_at,
            &labels,
            now,
            &detail,
            |bound| sign(&cas.load(), bound, &asked, now_time),
        )
    })
    .await;
    match outcome {
        Ok(svid) => {
            state.count(|c| *c.issued.entry(SvidKind::Attest).or_default() += 1);
            Ok(json_response(StatusCode::OK, &svid))
        }
        Err(e) => Err(refused(
            state,
            "attest",
            &actor,
            Some(attested_id.as_str()),
            e.into(),
        )),
    }
}

/// The mTLS caller of `event`; without a client certificate, the refusal
/// (`mtls_required`, audited as anonymous) saying `why`.
pub(super) fn mtls_caller(
    state: &State,
    caller: Option<&Caller>,
    event: &'static str,
    why: &'static str,
) -> Result<Caller, Fail> {
    caller.cloned().ok_or_else(|| {
        refused(
            state,
            event,
            "anonymous",
            None,
            Fail::new(Reason::MtlsRequired, why),
        )
    })
}

pub(super) async fn renew(
    state: &Arc<State>,
    caller: Option<&Caller>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Fail> {
    let caller = mtls_caller(
        state,
        caller,
        "renew",
        "renewal needs the current SVID as the TLS client certificate",
    )?;
    let id = caller.id.to_string();
    let version = sidecar_version(&req).map_err(|f| refused(state, "renew", &id, Some(&id), f))?;
    let mut body: api::RenewRequest = read_json(req, MAX_BODY)
        .await
        .map_err(|f| refused(state, "renew", &id, Some(&id), f))?;
    // Made plain rather than refused: a sidecar enrolled before the check
    // must not lose its identity over its instance name.
    body.instance = api::sanitize_instance(&body.instance);
    let cas = state.cas.clone();
    let db = state.db.clone();
    let (bound, serial) = (id.clone(), caller.serial.clone());
    let now = state.clock.now();
    let outcome = blocking(move || {
        let asked = Asked {
            csr: &body.csr,
            ttl_secs: body.ttl_secs,
            kind: SvidKind::Renew,
            instance: &body.instance,
            sidecar_version: version.as_deref(),
        };
        db.renew(&bound, &serial, |bound| {
            sign(&cas.load(), bound, &asked, now)
        })
    })
    .await;
    match outcome {
        Ok(svid) => {
            state.count(|c| *c.issued.entry(SvidKind::Renew).or_default() += 1);
            Ok(json_response(StatusCode::OK, &svid))
        }
        Err(e) => Err(refused(state, "renew", &id, Some(&id), e.into())),
    }
}

/// `POST /v1/jwt`: a JWT-SVID for the mTLS caller's own SPIFFE ID, signed
/// by the signing CA's JWT key. It never outlives the caller's X.509-SVID,
/// so a JWT key retires with its CA once every SVID the CA signed expired.
pub(super) async fn issue_jwt(
    state: &Arc<State>,
    caller: Option<&Caller>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Fail> {
    let caller = mtls_caller(
        state,
        caller,
        "jwt",
        "a JWT-SVID is issued over mTLS, for the SPIFFE ID of the client certificate",
    )?;
    let id = caller.id.to_string();
    let refuse = |f: Fail| refused(state, "jwt", &id, Some(&id), f);
    let body: api::JwtRequest = read_json(req, MAX_BODY).await.map_err(refuse)?;
    api::check_audiences(&body.audiences).map_err(|m| refuse(Fail::new(Reason::BadAudience, m)))?;
    if let Some(ttl) = body.ttl_secs
        && ttl < api::MIN_JWT_TTL_SECS
    {
        return Err(refuse(Fail::new(
            Reason::BadTtl,
            format!(
                "a JWT-SVID lives at least {}s, not {ttl}s",
                api::MIN_JWT_TTL_SECS
            ),
        )));
    }
    let now = state.now();
    let ttl = body
        .ttl_secs
        .unwrap_or(api::DEFAULT_JWT_TTL_SECS)
        .min(api::MAX_JWT_TTL_SECS);
    let expires_at = now
        .saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX))
        .min(caller.not_after);
    let cas = state.cas.load_full();
    let Some(key) = cas.signing.jwt_key().cloned() else {
        return Err(refuse(Fail::new(
            Reason::JwtUnavailable,
            "JWT-SVIDs are off: the signing CA has no jwt.key and its directory cannot be written",
        )));
    };
    let db = state.db.clone();
    let (bound, serial) = (id.clone(), caller.serial.clone());
    let subject = caller.id.clone();
    let audiences = body.audiences;
    let outcome = blocking(move || {
        db.issue_jwt(&bound, &serial, || {
            let token = key
                .sign(&subject, &audiences, now, expires_at)
                .map_err(|e| StoreError::refused(Reason::Internal, e.to_string()))?;
            let detail = format!(
                "JWT-SVID for audiences {} (key {}), expires at {expires_at}",
                audiences.join(","),
                key.kid()
            );
            Ok((token, detail))
        })
    })
    .await;
    match outcome {
        Ok(token) => {
            state.count(|c| c.jwt_svids += 1);
            Ok(json_response(
                StatusCode::OK,
                &api::JwtResponse {
                    spiffe_id: id,
                    token,
                    expires_at,
                },
            ))
        }
        Err(e) => Err(refuse(e.into())),
    }
}

pub(super) async fn watch_changes(
    state: &Arc<State>,
    caller: Option<&Caller>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Fail> {
    let Some(caller) = caller else {
        return Err(Fail::new(
            Reason::MtlsRequired,
            "the watch needs an SVID as the TLS client certificate",
        ));
    };
    let q = query_params(&req);
    let known_seq: i64 = q
        .get("revocations")
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1);
    let known_bundle = q.get("bundle").cloned().unwrap_or_default();
    let known_policy = q.get("policy").cloned().unwrap_or_default();
    // Absent: a sidecar that does not watch the registry (before 0.3).
    let known_endpoints = q.get("endpoints").cloned();
    // Absent: a sidecar that does not take federated bundles (before 0.3).
    let known_federation = q.get("federation").cloned();
    let wait = q
        .get("wait_ms")
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(Duration::ZERO)
        .min(MAX_WATCH_WAIT);
    let policy_differs = |head: Option<i64>| match known_policy.as_str() {
        "any" => false,
        "none" | "" => head.is_some(),
        v => head.map(|h| h.to_string()) != Some(v.to_owned()),
    };
    let mut changes = state.changes.subscribe();
    let deadline = tokio::time::Instant::now() + wait;
    let endpoints_differ = |mark: &str| {
        known_endpoints
            .as_deref()
            .is_some_and(|known| known != mark)
    };
    let federation_differs = |mark: &str| {
        known_federation
            .as_deref()
            .is_some_and(|known| known != mark)
    };
    let marks = loop {
        let marks = changes.borrow_and_update().clone();
        if marks.revocation_seq != known_seq
            || known_bundle != marks.bundle_digest
            || policy_differs(marks.policy_head)
            || endpoints_differ(&marks.endpoints_mark)
            || federation_differs(&marks.federation_mark)
        {
            break marks;
        }
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => {}
            _ => break marks,
        }
    };
    let head = marks.policy_head;
    let db = state.db.clone();
    let now = state.now();
    let with_policy = policy_differs(head);
    let with_endpoints = endpoints_differ(&marks.endpoints_mark);
    let with_federation = federation_differs(&marks.federation_mark);
    let linked: Vec<String> = state
        .federation
        .iter()
        .map(|l| l.trust_domain.name().to_owned())
        .collect();
    let (revocations, policy, endpoints, federated) = blocking(move || {
        let revocations = db.revocations(now)?;
        let policy = if with_policy {
            db.current_policy()?
        } else {
            None
        };
        let endpoints = if with_endpoints {
            Some(db.endpoints(now)?)
        } else {
            None
        };
        let federated = if with_federation {
            Some(db.federated_bundles()?)
        } else {
            None
        };
        // Only the links this control plane is configured with: a link
        // removed from --federate-with stops being trusted at once.
        let federated = federated.map(|mut rows| {
            rows.retain(|r| linked.contains(&r.trust_domain));
            rows
        });
        Ok((revocations, policy, endpoints, federated))
    })
    .await?;
    // The wait may have outlived the caller's certificate.
    caller.check_current(state)?;
    if revocations
        .spiffe_ids
        .iter()
        .any(|r| *r == caller.id.as_str())
        || revocations.serials.contains(&caller.serial)
    {
        return Err(Fail::new(
            Reason::IdentityRevoked,
            format!("{} is revoked", caller.id),
        ));
    }
    Ok(json_response(
        StatusCode::OK,
        &api::WatchResponse {
            revocations: api::RevocationList {
                seq: revocations.seq,
                spiffe_ids: revocations.spiffe_ids,
                serials: revocations.serials,
            },
            bundle: state.bundle(),
            policy_version: head,
            policy: policy.map(|p| api::PolicyUpdate {
                version: p.version,
                digest: p.digest,
                files: p.files,
            }),
            // The mark the long poll compares, which the records are at
            // least as new as.
            endpoints: endpoints.map(|(_, records)| endpoint_list(marks.endpoints_mark, records)),
            federation: federated.map(|records| api::FederationList {
                mark: marks.federation_mark.clone(),
                bundles: records
                    .into_iter()
                    .map(|r| api::FederatedBundle {
                        trust_domain: r.trust_domain,
                        bundle: r.bundle,
                        sequence: r.sequence,
                        refreshed_at: r.refreshed_at,
                    })
                    .collect(),
            }),
        },
    ))
}

pub(super) fn endpoint_list(mark: String, records: Vec<EndpointRecord>) -> api::EndpointList {
    api::EndpointList {
        mark,
        endpoints: records
            .into_iter()
            .map(|r| api::Endpoint {
                address: r.address,
                ports: r.ports,
                spiffe_id: r.spiffe_id,
                instance: r.instance,
                expires_at: r.expires_at,
            })
            .collect(),
    }
}

/// `PUT /v1/endpoints`: the caller's workload addresses, for discovery. An
/// address another live identity holds refuses the whole registration,
/// audited; so do addresses no peer could dial.
pub(super) async fn register_endpoints(
    state: &Arc<State>,
    caller: Option<&Caller>,
    remote: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Fail> {
    let caller = mtls_caller(
        state,
        caller,
        "endpoints_register",
        "registering endpoints needs the current SVID as the TLS client certificate",
    )?;
    let id = caller.id.to_string();
    let body: api::EndpointRegistration = read_json(req, MAX_BODY)
        .await
        .and_then(|body: api::EndpointRegistration| {
            check_registration(&body)?;
            check_source(state.endpoint_addresses, &body, remote)?;
            Ok(body)
        })
        .map_err(|f| refused(state, "endpoints_register", &id, Some(&id), f))?;
    let db = state.db.clone();
    let now = state.now();
    let (owner_id, serial) = (id.clone(), caller.serial.clone());
    let outcome = blocking(move || {
        let owner = EndpointOwner {
            spiffe_id: &owner_id,
            serial: &serial,
        };
        let records = db.register_endpoints(&owner, &body.addresses, &body.ports, now)?;
        Ok((db.endpoints(now)?.0, records))
    })
    .await;
    match outcome {
        Ok((mark, records)) => {
            // Watchers hear of it now, not at the next poll.
            state.refresh_changes().await;
            Ok(json_response(StatusCode::OK, &endpoint_list(mark, records)))
        }
        Err(e) => Err(refused(
            state,
            "endpoints_register",
            &id,
            Some(&id),
            e.into(),
        )),
    }
}

/// With [`EndpointAddresses::Caller`], only the address the registration
/// comes from.
fn check_source(
    mode: EndpointAddresses,
    body: &api::EndpointRegistration,
    remote: SocketAddr,
) -> Result<(), Fail> {
    let source = remote.ip().to_canonical();
    match body.addresses.iter().find(|a| **a != source) {
        Some(other) if mode == EndpointAddresses::Caller => Err(Fail::new(
            Reason::EndpointNotSource,
            format!(
                "{other} is not the address this registration comes from ({source}); the control plane takes only that (--endpoint-addresses caller)"
            ),
        )),
        _ => Ok(()),
    }
}

/// Addresses a peer can dial, each once; ports that are ports; bounded.
fn check_registration(body: &api::EndpointRegistration) -> Result<(), Fail> {
    let bad = |message: String| Err(Fail::new(Reason::BadEndpoint, message));
    if body.addresses.is_empty() || body.addresses.len() > api::MAX_ENDPOINT_ADDRESSES {
        return bad(format!(
            "a registration holds 1 to {} addresses, not {}",
            api::MAX_ENDPOINT_ADDRESSES,
            body.addresses.len()
        ));
    }
    if body.ports.len() > api::MAX_ENDPOINT_PORTS {
        return bad(format!(
            "a registration lists at most {} ports (none: every port), not {}",
            api::MAX_ENDPOINT_PORTS,
            body.ports.len()
        ));
    }
    if body.ports.contains(&0) {
        return bad("port 0 is no port".into());
    }
    let mut seen = std::collections::HashSet::new();
    for address in &body.addresses {
        let canonical = address.to_canonical();
        if canonical.is_unspecified() || canonical.is_loopback() || canonical.is_multicast() {
            return bad(format!("{address} is not an address a peer can dial"));
        }
        if canonical != *address {
            return bad(format!("{address}: write it as {canonical}"));
        }
        if !seen.insert(*address) {
            return bad(format!("{address} is listed twice"));
        }
    }
    Ok(())
}
