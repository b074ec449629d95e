//! Following the database and the CA directory: the change marks the
//! watch compares, and the CA rotation plan.

use super::*;

pub(super) async fn poll_changes(state: Arc<State>, mut shutdown: watch::Receiver<bool>) {
    let mut tick: u64 = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = shutdown.changed() => return,
        }
        tick += 1;
        state.flush_suppressed_audits().await;
        if tick.is_multiple_of(4)
            && let Some(k8s) = &state.k8s
        {
            k8s.refresh();
        }
        if tick.is_multiple_of(4)
            && let Err(e) = maintain_authorities(&state).await
        {
            tracing::warn!(error = %e, "CA rotation step failed; retrying");
        }
        // Usage past its retention: soon after start, then hourly.
        if tick == 8 || tick.is_multiple_of(4 * 3600) {
            prune_usage(&state).await;
        }
        state.refresh_changes().await;
    }
}

async fn prune_usage(state: &State) {
    let retention = i64::try_from(state.usage_retention.as_secs()).unwrap_or(i64::MAX);
    let before = state.now().saturating_sub(retention);
    let db = state.db.clone();
    match tokio::task::spawn_blocking(move || db.prune_usage(before)).await {
        Ok(Ok(0)) => {}
        Ok(Ok(rows)) => tracing::info!(rows, before, "usage past its retention deleted"),
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot delete usage past its retention"),
        Err(e) => tracing::warn!(error = %e, "usage pruning task failed"),
    }
}

impl State {
    /// Reads the marks the watch compares and wakes the watchers if any
    /// moved.
    pub(super) async fn refresh_changes(&self) {
        let db = self.db.clone();
        let at = self.now();
        let read = tokio::task::spawn_blocking(move || db.change_marks(at)).await;
        match read {
            Ok(Ok(marks)) => {
                let now = Changes {
                    revocation_seq: marks.revocation_seq,
                    policy_head: marks.policy_head,
                    bundle_digest: self.cas.load().bundle_digest.clone(),
                    endpoints_mark: marks.endpoints,
                    federation_mark: marks.federation,
                };
                self.changes.send_if_modified(|old| {
                    let changed = *old != now;
                    *old = now;
                    changed
                });
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot read the change counters"),
            Err(e) => tracing::warn!(error = %e, "change poller task failed"),
        }
    }
}

/// Follows the CA rotation plan: switches the signing CA and the bundle
/// when their times come (re-issuing the server's own SVID from the new
/// CA), and retires an old root once every SVID it signed has expired.
pub(super) async fn maintain_authorities(state: &Arc<State>) -> Result<(), ServeError> {
    let now = state.now();
    let ca_dir = state.ca_dir.clone();
    let read_plan = || {
        let dir = ca_dir.clone();
        async move {
            tokio::task::spawn_blocking(move || RotationPlan::read(&dir))
                .await
                .map_err(setup)?
                .map_err(setup)
        }
    };
    let mut plan = read_plan().await?;
    let mut retired = false;
    // Retire: an old CA that no longer signs, once its SVIDs are all expired.
    let signing = plan.signing_at(now);
    for (i, authority) in plan.authorities.iter().enumerate().take(signing) {
        if authority.retired_at.is_some() {
            continue;
        }
        let Some(next) = plan.authorities.get(i + 1) else {
            continue;
        };
        // Margin for an issuance that was deciding when the switch came.
        let switched = next.sign_from.saturating_add(5);
        if now < switched {
            continue;
        }
        let db = state.db.clone();
        let last_expiry = tokio::task::spawn_blocking(move || db.last_expiry_issued_by(switched))
            .await
            .map_err(setup)?
            .map_err(setup)?;
        if last_expiry < now {
            let dir = ca_dir.clone();
            tokio::task::spawn_blocking(move || rotation::retire(&dir, i, now))
                .await
                .map_err(setup)?
                .map_err(setup)?;
            tracing::info!(authority = %authority.dir, "every SVID of the old CA has expired; its root leaves the trust bundle");
            let db = state.db.clone();
            let event = AuditEvent::ok("ca_retire", None, None, "control-plane")
                .with_detail(format!("CA {} retired", authority.dir));
            let _ = tokio::task::spawn_blocking(move || db.audit(&event)).await;
            retired = true;
        }
    }
    if retired {
        plan = read_plan().await?;
    }
    let current = state.cas.load_full();
    if current.unchanged_at(now, &plan) {
        return Ok(());
    }
    let dir = ca_dir.clone();
    let previous = current.clone();
    let next = tokio::task::spawn_blocking(move || Authorities::load(&dir, now, Some(&previous)))
        .await
        .map_err(setup)?
        .map_err(setup)?;
    let signer_changed = !Arc::ptr_eq(&next.signing, &current.signing);
    let roots = next.bundle.roots().len();
    let next = Arc::new(next);
    // The bundle changed either way: re-issue our own SVID so it chains to
    // the oldest root still published and our store trusts exactly the
    // published roots. First, before the new bundle is served or written:
    // once a root retires, a client holding the new bundle (from the API
    // or `bundle.pem`) no longer trusts an SVID the retired root signed.
    let local = LocalSource {
        cas: Arc::new(ArcSwap::new(next.clone())),
        id: state.server_id.clone(),
        clock: state.clock.clone(),
    };
    let fresh = local.fetch().await?;
    state
        .svid_store
        .install(fresh.svid, fresh.bundles)
        .map_err(setup)?;
    state.cas.store(next.clone());
    write_bundle_file(&state.data_dir, &next)?;
    tracing::info!(roots, signer_changed, "trust bundle or signing CA changed");
    Ok(())
}
