//! Online backup and restore of the embedded SQLite database, through
//! SQLite's online backup API: the copy is one consistent snapshot taken
//! while the control plane keeps serving (WAL: its writers are not
//! blocked), checked with `PRAGMA integrity_check` before it is kept.
//!
//! PostgreSQL is backed up with its own tools (`pg_dump`); see the README.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::StoreError;
use super::migrate::{self, Dialect, MigrationSet};
use crate::reason::Reason;

/// What a backup or a restore copied.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BackupReport {
    pub path: PathBuf,
    pub bytes: u64,
    /// The copy's schema version.
    pub schema_version: i32,
    pub identities: i64,
    pub svids: i64,
    pub revocations: i64,
    pub policies: i64,
    pub audit: i64,
}

fn io(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let message = format!("{what} {}", path.display());
    move |e| StoreError::db(format!("{message}: {e}"), false)
}

/// Copies `from` into a new file `to` (which must not exist) with the
/// backup API in one step, so that the copy is a single snapshot; the copy
/// is checked, made a self-contained rollback-journal file, written 0600
/// and renamed into place.
fn copy(from: &rusqlite::Connection, to: &Path) -> Result<(), StoreError> {
    if to.exists() {
        return Err(StoreError::refused(
            Reason::FileExists,
            format!("{} already exists; refusing to overwrite it", to.display()),
        ));
    }
    let file_name = to
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = to.with_file_name(format!(".{file_name}.partial{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    // Made here, new and 0600, before SQLite opens it (an empty file is an
    // empty database): never someone else's file, never readable by others.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("cannot create", &tmp))?;
    let result = (|| {
        {
            let mut dst = rusqlite::Connection::open(&tmp)?;
            {
                use rusqlite::backup::{Backup, StepResult};
                let backup = Backup::new(from, &mut dst)?;
                // -1: every page in one step, under one read transaction, so
                // the copy is one snapshot. Busy or locked (a checkpoint, a
                // writer's lock): try again, a bounded number of times.
                let mut attempts = 0;
                loop {
                    match backup.step(-1)? {
                        StepResult::Done => break,
                        StepResult::More | StepResult::Busy | StepResult::Locked
                            if attempts < 200 =>
                        {
                            attempts += 1;
                            std::thread::sleep(Duration::from_millis(25));
                        }
                        other => {
                            return Err(StoreError::db(
                                format!("the backup did not finish: {other:?}"),
                                true,
                            ));
                        }
                    }
                }
            }
            check_integrity(&dst)?;
            dst.pragma_update(None, "journal_mode", "DELETE")?;
        }
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io("cannot sync", &tmp))?;
        // A link, not a rename: it fails if `to` appeared meanwhile (a
        // control plane starting on the directory) instead of replacing it.
        std::fs::hard_link(&tmp, to).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                StoreError::refused(
                    Reason::FileExists,
                    format!("{} already exists; refusing to overwrite it", to.display()),
                )
            } else {
                io("cannot create", to)(e)
            }
        })?;
        let _ = std::fs::remove_file(&tmp);
        if let Some(dir) = to.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn check_integrity(conn: &rusqlite::Connection) -> Result<(), StoreError> {
    let verdict: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    if verdict == "ok" {
        Ok(())
    } else {
        Err(StoreError::db(format!("integrity_check: {verdict}"), false))
    }
}

fn report(conn: &mut rusqlite::Connection, path: &Path) -> Result<BackupReport, StoreError> {
    let status = migrate::upgrade(conn, &MigrationSet::builtin(Dialect::Sqlite), false);
    let schema_version = match status {
        Ok(s) => s.current,
        // Newer than this build: still a backup; say its version.
        Err(_) => conn
            .query_row(
                &format!("SELECT MAX(version) FROM {}", migrate::HISTORY_TABLE),
                [],
                |r| r.get::<_, Option<i32>>(0),
            )?
            .unwrap_or(0),
    };
    let count = |table: &str| -> Result<i64, StoreError> {
        Ok(conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))?)
    };
    Ok(BackupReport {
        path: path.to_owned(),
        bytes: std::fs::metadata(path)
            .map_err(io("cannot stat", path))?
            .len(),
        schema_version,
        identities: count("identities")?,
        svids: count("svids")?,
        revocations: count("revocations")?,
        policies: count("policies")?,
        audit: count("audit")?,
    })
}

/// Takes a consistent copy of the live database `db` into `out`, which
/// must not exist. Safe while a control plane serves from `db`.
pub fn backup_sqlite(db: &Path, out: &Path) -> Result<BackupReport, StoreError> {
    if !db.exists() {
        return Err(StoreError::refused(
            Reason::FileNotFound,
            format!("{} does not exist", db.display()),
        ));
    }
    let source = rusqlite::Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    source.busy_timeout(Duration::from_secs(10))?;
    copy(&source, out)?;
    let mut copied = rusqlite::Connection::open(out)?;
    report(&mut copied, out)
}

/// Puts the backup `from` in place as `db`, which must not exist (restore
/// into an empty data directory). The backup is checked first: its
/// integrity, and a schema this build can run on (`serve` migrates it).
pub fn restore_sqlite(from: &Path, db: &Path) -> Result<BackupReport, StoreError> {
    let beside = |suffix: &str| {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    // A leftover journal would be replayed into the restored file.
    if db.exists()
        || ["-wal", "-shm", "-journal"]
            .iter()
            .any(|s| beside(s).exists())
    {
        return Err(StoreError::refused(
            Reason::FileExists,
            format!(
                "{} already exists: restore into an empty data directory",
                db.display()
            ),
        ));
    }
    if !from.exists() {
        return Err(StoreError::refused(
            Reason::FileNotFound,
            format!("{} does not exist", from.display()),
        ));
    }
    let mut source =
        rusqlite::Connection::open_with_flags(from, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    check_integrity(&source).map_err(|e| {
        StoreError::refused(
            Reason::Corrupt,
            format!("{} is not a sound backup: {e}", from.display()),
        )
    })?;
    let status = migrate::upgrade(&mut source, &MigrationSet::builtin(Dialect::Sqlite), false)?;
    if status.found == 0 {
        let known: i64 = source.query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'identities'",
            [],
            |r| r.get(0),
        )?;
        if known == 0 {
            return Err(StoreError::refused(
                Reason::NotABackup,
                format!("{} is not a Warden control-plane database", from.display()),
            ));
        }
    }
    copy(&source, db)?;
    let mut restored = rusqlite::Connection::open(db)?;
    report(&mut restored, db)
}
