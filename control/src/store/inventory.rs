//! Reading the inventory: identities with their status, the SVIDs of
//! one, and the audit trail.

use super::backend::{Row, Sql};
use super::{
    AuditEvent, IdentityRecord, IdentityStatus, Store, StoreError, SvidRecord, labels_map,
};

impl Store {
    /// The latest expiry of the SVIDs issued at or before `at`: once past,
    /// a CA that stopped signing at `at` has no live SVID left.
    pub fn last_expiry_issued_by(&self, at: i64) -> Result<i64, StoreError> {
        self.backend.tx(|sql| {
            sql.row(
                "SELECT COALESCE(MAX(expires_at), 0) FROM svids WHERE issued_at <= ?1",
                &[at.into()],
            )?
            .map_or(Ok(0), |r| r.int(0))
        })
    }

    /// Every identity, with its status at `now`.
    pub fn identities(&self, now: i64) -> Result<Vec<IdentityRecord>, StoreError> {
        self.backend.tx(|sql| query_identities(sql, now, None))
    }

    /// The SPIFFE ID an SVID serial was issued to.
    pub fn owner_of_serial(&self, serial: &str) -> Result<Option<String>, StoreError> {
        self.backend.tx(|sql| {
            sql.row(
                "SELECT spiffe_id FROM svids WHERE serial = ?1",
                &[serial.into()],
            )?
            .map(|r| r.text(0))
            .transpose()
        })
    }

    /// One identity and every SVID issued to it, newest first.
    pub fn identity(
        &self,
        spiffe_id: &str,
        now: i64,
    ) -> Result<Option<(IdentityRecord, Vec<SvidRecord>)>, StoreError> {
        self.backend.tx(|sql| {
            let Some(identity) = query_identities(sql, now, Some(spiffe_id))?.pop() else {
                return Ok(None);
            };
            let svids = sql
                .rows(
                    "SELECT serial, spiffe_id, key_sha256, issued_at, expires_at, kind, instance, revoked, \
                     sidecar_version FROM svids WHERE spiffe_id = ?1 ORDER BY issued_at DESC, expires_at DESC, serial DESC",
                    &[spiffe_id.into()],
                )?
                .iter()
                .map(svid_row)
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Some((identity, svids)))
        })
    }

    /// The newest audit records, oldest first.
    pub fn audit_tail(&self, limit: u32) -> Result<Vec<AuditEvent>, StoreError> {
        let mut rows = self.backend.tx(|sql| {
            sql.rows(
                "SELECT at, event, outcome, spiffe_id, serial, reason, detail, actor FROM audit \
                 ORDER BY seq DESC LIMIT ?1",
                &[i64::from(limit).into()],
            )?
            .iter()
            .map(|r| {
                Ok(AuditEvent {
                    at: r.int(0)?,
                    event: r.text(1)?,
                    outcome: r.text(2)?,
                    spiffe_id: r.opt_text(3)?,
                    serial: r.opt_text(4)?,
                    reason: r.opt_text(5)?,
                    detail: r.text(6)?,
                    actor: r.text(7)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()
        })?;
        rows.reverse();
        Ok(rows)
    }
}

fn query_identities(
    sql: &mut dyn Sql,
    now: i64,
    only: Option<&str>,
) -> Result<Vec<IdentityRecord>, StoreError> {
    let rows = sql.rows(
        "SELECT i.spiffe_id, i.labels, i.created_at, i.revoked_at, i.revoke_reason, \
                s.issued_at, s.expires_at, s.serial, s.instance, \
                (SELECT COUNT(*) FROM svids c WHERE c.spiffe_id = i.spiffe_id), s.sidecar_version, \
                (SELECT MAX(u.last_seen) FROM usage_daily u WHERE u.caller = i.spiffe_id), \
                (SELECT MAX(u.last_seen) FROM usage_daily u WHERE u.callee = i.spiffe_id) \
         FROM identities i \
         LEFT JOIN svids s ON s.serial = ( \
             SELECT l.serial FROM svids l WHERE l.spiffe_id = i.spiffe_id \
             ORDER BY l.issued_at DESC, l.expires_at DESC, l.serial DESC LIMIT 1) \
         WHERE (CAST(?1 AS TEXT) IS NULL OR i.spiffe_id = CAST(?1 AS TEXT)) \
         ORDER BY i.spiffe_id",
        &[only.into()],
    )?;
    rows.iter()
        .map(|r| {
            let issued = r.opt_int(5)?;
            let expires = r.opt_int(6)?;
            let ttl = issued.zip(expires).map(|(i, e)| e - i);
            let revoked_at = r.opt_int(3)?;
            Ok(IdentityRecord {
                spiffe_id: r.text(0)?,
                status: IdentityStatus::at(now, revoked_at.is_some(), expires, ttl),
                labels: labels_map(&r.text(1)?),
                created_at: r.int(2)?,
                revoked_at,
                revoke_reason: r.opt_text(4)?,
                last_issued_at: issued,
                expires_at: expires,
                last_serial: r.opt_text(7)?,
                instance: r.opt_text(8)?,
                svids_issued: r.int(9)?,
                sidecar_version: r.opt_text(10)?,
                last_seen_as_caller: r.opt_int(11)?,
                last_seen_as_callee: r.opt_int(12)?,
            })
        })
        .collect()
}

fn svid_row(r: &Row) -> Result<SvidRecord, StoreError> {
    Ok(SvidRecord {
        serial: r.text(0)?,
        spiffe_id: r.text(1)?,
        key_sha256: r.text(2)?,
        issued_at: r.int(3)?,
        expires_at: r.int(4)?,
        kind: r
            .text(5)?
            .parse()
            .map_err(|e| StoreError::db(format!("column 5: {e}"), false))?,
        instance: r.text(6)?,
        revoked: r.int(7)? != 0,
        sidecar_version: r.opt_text(8)?,
    })
}
