//! Revoking identities and SVIDs, and the list sidecars must refuse.

use super::backend::Sql;
use super::issuance::revoked_at;
use super::{AuditEvent, Reason, Revocations, Store, StoreError, insert_audit};

impl Store {
    /// Revokes an identity (`spiffe://...`) or one SVID (its serial).
    /// Returns the SPIFFE ID affected and how many SVIDs were revoked.
    pub fn revoke(
        &self,
        target: &str,
        reason: &str,
        now: i64,
    ) -> Result<(String, usize), StoreError> {
        let (result, event) = self.backend.tx(|sql| {
            let result = if target.starts_with("spiffe://") {
                match revoked_at(sql, target)? {
                    None => {
                        return Err(StoreError::refused(
                            Reason::UnknownIdentity,
                            format!("{target} is not in the inventory"),
                        ));
                    }
                    Some(Some(at)) => {
                        return Err(StoreError::refused(
                            Reason::AlreadyRevoked,
                            format!("{target} was already revoked at {at}"),
                        ));
                    }
                    Some(None) => {}
                }
                sql.exec(
                    "UPDATE identities SET revoked_at = ?2, revoke_reason = ?3 WHERE spiffe_id = ?1",
                    &[target.into(), now.into(), reason.into()],
                )?;
                let n = sql.exec(
                    "UPDATE svids SET revoked = 1 WHERE spiffe_id = ?1 AND revoked = 0",
                    &[target.into()],
                )?;
                // Unused tokens for it die with it.
                sql.exec(
                    "UPDATE tokens SET used_at = ?2 WHERE spiffe_id = ?1 AND used_at IS NULL",
                    &[target.into(), now.into()],
                )?;
                sql.exec(
                    "INSERT INTO revocations (at, spiffe_id, reason) VALUES (?1, ?2, ?3)",
                    &[now.into(), target.into(), reason.into()],
                )?;
                (target.to_owned(), usize::try_from(n).unwrap_or(usize::MAX))
            } else {
                let serial = target.to_ascii_lowercase().replace(':', "");
                let row = sql.row(
                    "SELECT spiffe_id, expires_at, revoked FROM svids WHERE serial = ?1",
                    &[serial.as_str().into()],
                )?;
                let Some(row) = row else {
                    return Err(StoreError::refused(
                        Reason::UnknownSerial,
                        format!("no SVID with serial {serial} was issued here"),
                    ));
                };
                if row.int(2)? != 0 {
                    return Err(StoreError::refused(
                        Reason::AlreadyRevoked,
                        format!("SVID {serial} was already revoked"),
                    ));
                }
                sql.exec("UPDATE svids SET revoked = 1 WHERE serial = ?1", &[serial.as_str().into()])?;
                sql.exec(
                    "INSERT INTO revocations (at, serial, expires_at, reason) VALUES (?1, ?2, ?3, ?4)",
                    &[now.into(), serial.as_str().into(), row.int(1)?.into(), reason.into()],
                )?;
                (row.text(0)?, 1)
            };
            let event = AuditEvent::ok("revoke", Some(&result.0), None, "admin")
                .with_detail(format!("{target}: {reason}"));
            insert_audit(sql, &event)?;
            Ok((result, event))
        })?;
        self.echo(&event);
        Ok(result)
    }

    /// Everything sidecars must refuse now.
    pub fn revocations(&self, now: i64) -> Result<Revocations, StoreError> {
        self.backend.tx(|sql| {
            let seq = revocation_seq(sql)?;
            let spiffe_ids = sql
                .rows(
                    "SELECT spiffe_id FROM revocations WHERE spiffe_id IS NOT NULL ORDER BY spiffe_id",
                    &[],
                )?
                .iter()
                .map(|r| r.text(0))
                .collect::<Result<_, _>>()?;
            let serials = sql
                .rows(
                    "SELECT serial FROM revocations WHERE serial IS NOT NULL AND expires_at > ?1 ORDER BY serial",
                    &[now.into()],
                )?
                .iter()
                .map(|r| r.text(0))
                .collect::<Result<_, _>>()?;
            Ok(Revocations { seq, spiffe_ids, serials })
        })
    }

    /// Highest revocation sequence number.
    pub fn revocation_seq(&self) -> Result<i64, StoreError> {
        self.backend.tx(revocation_seq)
    }
}

/// How many revocations are committed. A count, not `MAX(seq)`: on
/// PostgreSQL sequence values can commit out of order, and a revocation
/// committed after a higher one must still change the mark watchers compare.
pub(super) fn revocation_seq(sql: &mut dyn Sql) -> Result<i64, StoreError> {
    sql.row("SELECT COUNT(*) FROM revocations", &[])?
        .map_or(Ok(0), |r| r.int(0))
}
