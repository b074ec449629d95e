//! Join tokens, joins and renewals: every SVID is recorded in the
//! transaction that authorizes it.

use super::backend::{Row, Sql, Val};
use super::{
    AuditEvent, INSERT_AUDIT, Reason, Signed, Store, StoreError, SvidRecord, audit_params,
    insert_audit, labels_map,
};

impl Store {
    /// Stores a join token (by its hash only) bound to `spiffe_id`. Refused
    /// for a revoked identity.
    pub fn create_token(
        &self,
        hash: &str,
        token_id: &str,
        spiffe_id: &str,
        labels: &serde_json::Map<String, serde_json::Value>,
        now: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let event = AuditEvent::ok("token_created", Some(spiffe_id), None, "admin")
            .with_detail(format!("token {token_id} expires at {expires_at}"));
        let labels_text = serde_json::Value::Object(labels.clone()).to_string();
        self.backend.tx(|sql| {
            let existing = sql.row(
                "SELECT revoked_at, labels FROM identities WHERE spiffe_id = ?1",
                &[spiffe_id.into()],
            )?;
            if let Some(row) = &existing
                && row.opt_int(0)?.is_some()
            {
                return Err(StoreError::refused(
                    Reason::IdentityRevoked,
                    format!("{spiffe_id} is revoked; no token can be made for it"),
                ));
            }
            sql.exec(
                "INSERT INTO tokens (hash, token_id, spiffe_id, labels, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                &[hash.into(), token_id.into(), spiffe_id.into(), labels_text.clone().into(), now.into(), expires_at.into()],
            )?;
            // Labels given at token creation describe the identity; later
            // tokens may add labels, never drop them.
            match existing {
                None => {
                    sql.exec(
                        "INSERT INTO identities (spiffe_id, labels, created_at) VALUES (?1, ?2, ?3)",
                        &[spiffe_id.into(), labels_text.clone().into(), now.into()],
                    )?;
                }
                Some(row) => {
                    let mut merged = labels_map(&row.text(1)?);
                    merged.extend(labels.clone());
                    sql.exec(
                        "UPDATE identities SET labels = ?2 WHERE spiffe_id = ?1",
                        &[spiffe_id.into(), serde_json::Value::Object(merged).to_string().into()],
                    )?;
                }
            }
            insert_audit(sql, &event)
        })?;
        self.echo(&event);
        Ok(())
    }

    /// Redeems a join token: checks it (unused, unexpired, identity not
    /// revoked), calls `sign` with the bound SPIFFE ID, records the SVID and
    /// marks the token used, in one transaction. A refusal changes nothing.
    /// `sign` may run more than once (a transaction retried after a
    /// conflict with another replica); only one result is ever returned.
    pub fn redeem_token<T>(
        &self,
        hash: &str,
        now: i64,
        sign: impl Fn(&str) -> Result<Signed<T>, StoreError>,
    ) -> Result<T, StoreError> {
        let (value, event) = self.backend.tx(|sql| {
            let row = sql.row(TOKEN_AND_IDENTITY, &[hash.into()])?;
            let Some(row) = row else {
                return Err(StoreError::refused(
                    Reason::UnknownToken,
                    "the join token is not known to this control plane",
                ));
            };
            let (token_id, spiffe_id) = (row.text(0)?, row.text(1)?);
            if let Some(used) = row.opt_int(3)? {
                return Err(StoreError::refused(
                    Reason::TokenReused,
                    format!(
                        "join token {token_id} was already used at {used}; tokens are single-use"
                    ),
                ));
            }
            let expires_at = row.int(2)?;
            if expires_at <= now {
                return Err(StoreError::refused(
                    Reason::TokenExpired,
                    format!("join token {token_id} expired at {expires_at}"),
                ));
            }
            identity_not_revoked(&spiffe_id, &row, 4)?;
            let signed = sign(&spiffe_id)?;
            let event = AuditEvent::ok(
                "join",
                Some(&spiffe_id),
                Some(&signed.record.serial),
                &format!("token:{token_id}"),
            )
            .with_detail(format!(
                "instance {} expires at {}",
                signed.record.instance, signed.record.expires_at
            ));
            let used: [Val; 2] = [hash.into(), now.into()];
            let (svid, audit) = (svid_params(&signed.record), audit_params(&event));
            sql.exec_all(&[
                (INSERT_SVID, &svid),
                ("UPDATE tokens SET used_at = ?2 WHERE hash = ?1", &used),
                (INSERT_AUDIT, &audit),
            ])?;
            Ok((signed.value, event))
        })?;
        self.echo(&event);
        Ok(value)
    }

    /// The first SVID of an attested workload (its Kubernetes
    /// service-account token verified by the caller): the identity is made
    /// when new, with `labels`; refused when revoked. `sign` may run more
    /// than once, as for [`Store::redeem_token`].
    ///
    /// A token minted before one of this pod's (`instance`'s) SVIDs was
    /// revoked cannot attest it again: revoking a serial is not undone by
    /// replaying the token that obtained it.
    #[allow(clippy::too_many_arguments)]
    pub fn attest<T>(
        &self,
        spiffe_id: &str,
        instance: &str,
        token_issued_at: i64,
        labels: &serde_json::Map<String, serde_json::Value>,
        now: i64,
        detail: &str,
        sign: impl Fn(&str) -> Result<Signed<T>, StoreError>,
    ) -> Result<T, StoreError> {
        let labels_text = serde_json::Value::Object(labels.clone()).to_string();
        let (value, event) = self.backend.tx(|sql| {
            let known = sql
                .row(
                    "SELECT 1 FROM identities WHERE spiffe_id = ?1",
                    &[spiffe_id.into()],
                )?
                .is_some();
            if known {
                check_not_revoked(sql, spiffe_id)?;
                let revoked = sql
                    .row(
                        "SELECT MAX(r.at) FROM revocations r JOIN svids s ON s.serial = r.serial \
                         WHERE s.spiffe_id = ?1 AND s.instance = ?2",
                        &[spiffe_id.into(), instance.into()],
                    )?
                    .map(|r| r.opt_int(0))
                    .transpose()?
                    .flatten();
                if let Some(at) = revoked
                    && at >= token_issued_at
                {
                    return Err(StoreError::refused(
                        Reason::SvidRevoked,
                        format!(
                            "an SVID of pod {instance:?} was revoked at {at}; a token minted before that cannot attest it again"
                        ),
                    ));
                }
            } else {
                sql.exec(
                    "INSERT INTO identities (spiffe_id, labels, created_at) VALUES (?1, ?2, ?3)",
                    &[spiffe_id.into(), labels_text.as_str().into(), now.into()],
                )?;
            }
            let signed = sign(spiffe_id)?;
            let event = AuditEvent::ok(
                "attest",
                Some(spiffe_id),
                Some(&signed.record.serial),
                "k8s",
            )
            .with_detail(format!("{detail}; expires at {}", signed.record.expires_at));
            insert_svid_and_audit(sql, &signed.record, &event)?;
            Ok((signed.value, event))
        })?;
        self.echo(&event);
        Ok(value)
    }

    /// Renews for the holder of `serial` (its current SVID, already verified
    /// by the TLS handshake): refused if that SVID was not issued here, or
    /// it or its identity is revoked. `sign` may run more than once, as for
    /// [`Store::redeem_token`].
    pub fn renew<T>(
        &self,
        spiffe_id: &str,
        serial: &str,
        sign: impl Fn(&str) -> Result<Signed<T>, StoreError>,
    ) -> Result<T, StoreError> {
        let (value, event) = self.backend.tx(|sql| {
            check_holder(sql, spiffe_id, serial)?;
            let signed = sign(spiffe_id)?;
            let event = AuditEvent::ok(
                "renew",
                Some(spiffe_id),
                Some(&signed.record.serial),
                spiffe_id,
            )
            .with_detail(format!(
                "renewed {serial}; instance {} expires at {}",
                signed.record.instance, signed.record.expires_at
            ));
            insert_svid_and_audit(sql, &signed.record, &event)?;
            Ok((signed.value, event))
        })?;
        self.echo(&event);
        Ok(value)
    }
}

impl Store {
    /// A JWT-SVID for the holder of SVID `serial`: `sign` runs once the
    /// holder is checked (as for a renewal), and the issuance is audited in
    /// the same transaction.
    pub fn issue_jwt<T>(
        &self,
        spiffe_id: &str,
        serial: &str,
        sign: impl Fn() -> Result<(T, String), StoreError>,
    ) -> Result<T, StoreError> {
        let (value, event) = self.backend.tx(|sql| {
            check_holder(sql, spiffe_id, serial)?;
            let (value, detail) = sign()?;
            let event =
                AuditEvent::ok("jwt", Some(spiffe_id), Some(serial), spiffe_id).with_detail(detail);
            insert_audit(sql, &event)?;
            Ok((value, event))
        })?;
        self.echo(&event);
        Ok(value)
    }
}

pub(super) fn revoked_at(
    sql: &mut dyn Sql,
    spiffe_id: &str,
) -> Result<Option<Option<i64>>, StoreError> {
    sql.row(
        "SELECT revoked_at FROM identities WHERE spiffe_id = ?1",
        &[spiffe_id.into()],
    )?
    .map(|r| r.opt_int(0))
    .transpose()
}

/// Refused unless `serial` is an SVID this control plane issued to
/// `spiffe_id`, neither of them revoked: who may renew or get a JWT-SVID.
fn check_holder(sql: &mut dyn Sql, spiffe_id: &str, serial: &str) -> Result<(), StoreError> {
    let row = sql.row(SVID_AND_IDENTITY, &[serial.into()])?;
    let Some(row) = row else {
        return Err(StoreError::refused(
            Reason::UnknownSvid,
            format!("SVID {serial} was not issued by this control plane"),
        ));
    };
    let owner = row.text(0)?;
    if owner != spiffe_id {
        return Err(StoreError::refused(
            Reason::IdentityMismatch,
            format!("SVID {serial} belongs to {owner}, not {spiffe_id}"),
        ));
    }
    if row.int(1)? != 0 {
        return Err(StoreError::refused(
            Reason::SvidRevoked,
            format!("SVID {serial} is revoked"),
        ));
    }
    identity_not_revoked(spiffe_id, &row, 2)
}

// A join token or an SVID with its identity, in one statement (one round
// trip on PostgreSQL). Subqueries, not a LEFT JOIN: SQLite (built with
// STAT4, as rusqlite's bundled one is) compiles such a LEFT JOIN again each
// time the bound value changes, 75,000 instructions a call
// (`hot_reads_are_compiled_once`).
const TOKEN_AND_IDENTITY: &str = "SELECT t.token_id, t.spiffe_id, t.expires_at, t.used_at, \
     (SELECT COUNT(*) FROM identities i WHERE i.spiffe_id = t.spiffe_id), \
     (SELECT i.revoked_at FROM identities i WHERE i.spiffe_id = t.spiffe_id) \
     FROM tokens t WHERE t.hash = ?1";
const SVID_AND_IDENTITY: &str = "SELECT s.spiffe_id, s.revoked, \
     (SELECT COUNT(*) FROM identities i WHERE i.spiffe_id = s.spiffe_id), \
     (SELECT i.revoked_at FROM identities i WHERE i.spiffe_id = s.spiffe_id) \
     FROM svids s WHERE s.serial = ?1";

/// Refused unless the identity `spiffe_id` is in the inventory and not
/// revoked, read from `row`: at column `at` how many identities have the
/// ID (0 or 1), at `at + 1` its `revoked_at`.
fn identity_not_revoked(spiffe_id: &str, row: &Row, at: usize) -> Result<(), StoreError> {
    let known = row.int(at)? != 0;
    let revoked_at = known.then(|| row.opt_int(at + 1)).transpose()?;
    identity_standing(spiffe_id, revoked_at)
}

fn check_not_revoked(sql: &mut dyn Sql, spiffe_id: &str) -> Result<(), StoreError> {
    identity_standing(spiffe_id, revoked_at(sql, spiffe_id)?)
}

/// Refused unless the identity `spiffe_id` is in the inventory (`Some`)
/// and not revoked (`Some(None)`), as [`revoked_at`] reads it.
fn identity_standing(spiffe_id: &str, revoked_at: Option<Option<i64>>) -> Result<(), StoreError> {
    match revoked_at {
        Some(Some(at)) => Err(StoreError::refused(
            Reason::IdentityRevoked,
            format!("{spiffe_id} was revoked at {at}"),
        )),
        Some(None) => Ok(()),
        None => Err(StoreError::refused(
            Reason::UnknownIdentity,
            format!("{spiffe_id} is not in the inventory"),
        )),
    }
}

/// An SVID and its audit record: one statement on PostgreSQL.
fn insert_svid_and_audit(
    sql: &mut dyn Sql,
    svid: &SvidRecord,
    event: &AuditEvent,
) -> Result<(), StoreError> {
    let (svid, audit) = (svid_params(svid), audit_params(event));
    sql.exec_all(&[(INSERT_SVID, &svid), (INSERT_AUDIT, &audit)])
}

/// An SVID for the inventory, with [`svid_params`].
const INSERT_SVID: &str = "INSERT INTO svids (serial, spiffe_id, key_sha256, issued_at, \
     expires_at, kind, instance, sidecar_version) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

fn svid_params(svid: &SvidRecord) -> [Val; 8] {
    [
        (&svid.serial).into(),
        (&svid.spiffe_id).into(),
        (&svid.key_sha256).into(),
        svid.issued_at.into(),
        svid.expires_at.into(),
        svid.kind.as_str().into(),
        (&svid.instance).into(),
        svid.sidecar_version.as_ref().into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hot_reads_are_compiled_once() {
        for sql in [TOKEN_AND_IDENTITY, SVID_AND_IDENTITY] {
            crate::store::assert_compiled_once(sql, |v| vec![v.to_string().into()]);
        }
    }
}
