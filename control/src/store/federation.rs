//! Federation: the last good SPIFFE bundle of each federated trust domain,
//! as its bundle endpoint served it. Kept in the database so a restart or
//! another replica starts from it (and keeps it while the endpoint fails).

use super::backend::Sql;
use super::{AuditEvent, Store, StoreError, insert_audit};

/// A federated trust domain's bundle as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederatedRecord {
    pub trust_domain: String,
    pub endpoint_url: String,
    /// The SPIFFE bundle document.
    pub bundle: String,
    pub sequence: i64,
    /// SHA-256 of `bundle`, hex.
    pub digest: String,
    /// Unix seconds: last fetched successfully.
    pub refreshed_at: i64,
    /// Unix seconds: when the bundle last changed.
    pub changed_at: i64,
}

const COLUMNS: &str =
    "trust_domain, endpoint_url, bundle, sequence, digest, refreshed_at, changed_at";

fn record(row: &super::backend::Row) -> Result<FederatedRecord, StoreError> {
    Ok(FederatedRecord {
        trust_domain: row.text(0)?,
        endpoint_url: row.text(1)?,
        bundle: row.text(2)?,
        sequence: row.int(3)?,
        digest: row.text(4)?,
        refreshed_at: row.int(5)?,
        changed_at: row.int(6)?,
    })
}

impl Store {
    /// Every federated bundle, by trust domain.
    pub fn federated_bundles(&self) -> Result<Vec<FederatedRecord>, StoreError> {
        self.backend.tx(|sql| {
            sql.rows(
                &format!("SELECT {COLUMNS} FROM federated_bundles ORDER BY trust_domain"),
                &[],
            )?
            .iter()
            .map(record)
            .collect()
        })
    }

    /// Stores a bundle fetched from `fetched.endpoint_url`; returns whether
    /// it changed (a change is audited). Only `refreshed_at` moves when the
    /// document is the same.
    pub fn store_federated_bundle(&self, fetched: &FederatedRecord) -> Result<bool, StoreError> {
        let (changed, event) = self.backend.tx(|sql| {
            let old = sql
                .row(
                    &format!("SELECT {COLUMNS} FROM federated_bundles WHERE trust_domain = ?1"),
                    &[(&fetched.trust_domain).into()],
                )?
                .map(|r| record(&r))
                .transpose()?;
            let changed = old.as_ref().is_none_or(|o| o.digest != fetched.digest);
            let changed_at = match &old {
                Some(o) if !changed => o.changed_at,
                _ => fetched.refreshed_at,
            };
            sql.exec(
                "DELETE FROM federated_bundles WHERE trust_domain = ?1",
                &[(&fetched.trust_domain).into()],
            )?;
            sql.exec(
                &format!(
                    "INSERT INTO federated_bundles ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
                ),
                &[
                    (&fetched.trust_domain).into(),
                    (&fetched.endpoint_url).into(),
                    (&fetched.bundle).into(),
                    fetched.sequence.into(),
                    (&fetched.digest).into(),
                    fetched.refreshed_at.into(),
                    changed_at.into(),
                ],
            )?;
            let event = changed.then(|| {
                AuditEvent::ok("federation", None, None, "control-plane").with_detail(format!(
                    "bundle of {} from {} changed: sequence {} (was {})",
                    fetched.trust_domain,
                    fetched.endpoint_url,
                    fetched.sequence,
                    old.as_ref()
                        .map_or("none".to_owned(), |o| o.sequence.to_string())
                ))
            });
            if let Some(event) = &event {
                insert_audit(sql, event)?;
            }
            Ok((changed, event))
        })?;
        if let Some(event) = &event {
            self.echo(event);
        }
        Ok(changed)
    }
}

/// Moves whenever a federated bundle changes (or one is added): a digest
/// of every trust domain's bundle digest.
pub(super) fn federation_mark(sql: &mut dyn Sql) -> Result<String, StoreError> {
    let rows = sql.rows(
        "SELECT trust_domain, digest FROM federated_bundles ORDER BY trust_domain",
        &[],
    )?;
    if rows.is_empty() {
        return Ok("empty".into());
    }
    let mut all = String::new();
    for row in &rows {
        all.push_str(&row.text(0)?);
        all.push('=');
        all.push_str(&row.text(1)?);
        all.push(';');
    }
    Ok(warden_proxy::control::digest_hex(all.as_bytes())[..16].to_owned())
}
