//! Policy bundles: pushed versions, the current one, rollbacks.

use std::collections::BTreeMap;

use super::backend::Sql;
use super::{AuditEvent, PolicyBundle, Reason, Store, StoreError, insert_audit};

impl Store {
    /// Stores a validated policy bundle and makes it current. Pushing the
    /// files of the current bundle again is a no-op that returns its version.
    pub fn push_policy(
        &self,
        digest: &str,
        files: &BTreeMap<String, String>,
        now: i64,
    ) -> Result<(i64, bool), StoreError> {
        let files_text = serde_json::to_string(files).unwrap_or_default();
        let (result, event) = self.backend.tx(|sql| {
            if let Some(current) = current_policy(sql)?
                && current.digest == digest
            {
                return Ok(((current.version, false), None));
            }
            let version = sql
                .row(
                    "INSERT INTO policies (created_at, digest, files) VALUES (?1, ?2, ?3) RETURNING version",
                    &[now.into(), digest.into(), files_text.as_str().into()],
                )?
                .ok_or_else(|| StoreError::db("INSERT returned no version", false))?
                .int(0)?;
            set_policy_head(sql, version)?;
            let event = AuditEvent::ok("policy_push", None, None, "admin")
                .with_detail(format!("version {version}, digest {digest}"));
            insert_audit(sql, &event)?;
            Ok(((version, true), Some(event)))
        })?;
        if let Some(event) = event {
            self.echo(&event);
        }
        Ok(result)
    }

    /// Makes an earlier bundle current again.
    pub fn rollback_policy(&self, version: i64) -> Result<PolicyBundle, StoreError> {
        let (bundle, event) = self.backend.tx(|sql| {
            let Some(bundle) = policy_version(sql, version)? else {
                return Err(StoreError::refused(
                    Reason::UnknownVersion,
                    format!("there is no policy version {version}"),
                ));
            };
            set_policy_head(sql, version)?;
            let event = AuditEvent::ok("policy_rollback", None, None, "admin")
                .with_detail(format!("version {version}, digest {}", bundle.digest));
            insert_audit(sql, &event)?;
            Ok((bundle, event))
        })?;
        self.echo(&event);
        Ok(bundle)
    }

    /// The current policy bundle, if one was ever pushed.
    pub fn current_policy(&self) -> Result<Option<PolicyBundle>, StoreError> {
        self.backend.tx(current_policy)
    }

    /// The current policy version.
    pub fn policy_head(&self) -> Result<Option<i64>, StoreError> {
        self.backend.tx(policy_head)
    }

    /// Every stored policy version, without the files.
    pub fn policy_versions(&self) -> Result<Vec<(i64, i64, String)>, StoreError> {
        self.backend.tx(|sql| {
            sql.rows(
                "SELECT version, created_at, digest FROM policies ORDER BY version",
                &[],
            )?
            .iter()
            .map(|r| Ok((r.int(0)?, r.int(1)?, r.text(2)?)))
            .collect()
        })
    }
}

pub(super) fn policy_head(sql: &mut dyn Sql) -> Result<Option<i64>, StoreError> {
    sql.row("SELECT version FROM policy_head WHERE id = 1", &[])?
        .map(|r| r.int(0))
        .transpose()
}

fn set_policy_head(sql: &mut dyn Sql, version: i64) -> Result<(), StoreError> {
    sql.exec(
        "INSERT INTO policy_head (id, version) VALUES (1, ?1) ON CONFLICT (id) DO UPDATE SET version = ?1",
        &[version.into()],
    )?;
    Ok(())
}

fn policy_version(sql: &mut dyn Sql, version: i64) -> Result<Option<PolicyBundle>, StoreError> {
    sql.row(
        "SELECT version, created_at, digest, files FROM policies WHERE version = ?1",
        &[version.into()],
    )?
    .map(|r| {
        Ok(PolicyBundle {
            version: r.int(0)?,
            created_at: r.int(1)?,
            digest: r.text(2)?,
            files: serde_json::from_str(&r.text(3)?).unwrap_or_default(),
        })
    })
    .transpose()
}

fn current_policy(sql: &mut dyn Sql) -> Result<Option<PolicyBundle>, StoreError> {
    match policy_head(sql)? {
        Some(v) => policy_version(sql, v),
        None => Ok(None),
    }
}
