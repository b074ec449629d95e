//! SQLite group commit: transactions that arrive while another runs share
//! its commit, and so one sync of the write-ahead log (`synchronous=FULL`).
//!
//! SQLite has one writer, and a commit waits for the disk: alone, every
//! join, renewal and audit row paid for its own sync (about 0.9 ms on the
//! development machine), which capped the control plane at about 1,100
//! writes a second however many cores it had. Here a caller that finds the
//! connection busy counts itself as waiting; whoever finishes a transaction
//! while somebody waits leaves the batch open for them and sleeps until it
//! is committed. The last one in (nobody waiting, or [`MAX_BATCH`] reached)
//! commits for all and wakes them.
//!
//! Each transaction runs in a savepoint of the batch: one that fails is
//! rolled back alone and the others go on. A caller learns `Ok` only once
//! the batch holding its work is committed; if that commit fails, every
//! member gets the error and nothing of theirs was kept. The outcome is
//! the one a sequence of separate transactions in the same order gives.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};

use super::StoreError;
use super::backend::{Sql, lock};

/// At most this many transactions share one commit, so that the first of
/// them does not wait behind an endless stream of others.
pub const MAX_BATCH: usize = 64;

pub struct GroupCommit {
    state: Mutex<State>,
    /// Signalled when a batch has been committed (or failed to be).
    finished: Condvar,
    /// Callers blocked on the connection: while there are any, a finished
    /// transaction leaves the batch open for them.
    waiting: AtomicUsize,
}

struct State {
    conn: rusqlite::Connection,
    /// The batch open now: its number and how many transactions it holds.
    open: Option<(u64, usize)>,
    next_batch: u64,
    /// How finished batches ended, until every member asleep on one has
    /// read it: `None` committed, `Some` the error.
    outcomes: HashMap<u64, (Option<String>, usize)>,
}

impl GroupCommit {
    pub fn new(conn: rusqlite::Connection) -> Self {
        GroupCommit {
            state: Mutex::new(State {
                conn,
                open: None,
                next_batch: 0,
                outcomes: HashMap::new(),
            }),
            finished: Condvar::new(),
            waiting: AtomicUsize::new(0),
        }
    }

    /// Runs `f` in a transaction of the current batch; `Ok` once that batch
    /// is committed.
    pub fn tx<T>(
        &self,
        mut f: impl FnMut(&mut dyn Sql) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let mut state = lock(&self.state);
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        let (batch, members) = match state.open {
            Some(open) => open,
            None => {
                state.conn.execute_batch("BEGIN IMMEDIATE")?;
                let batch = state.next_batch;
                state.next_batch += 1;
                (batch, 0)
            }
        };
        state.open = Some((batch, members));
        // A panic in `f` is carried to this caller once the batch is safe.
        let ran = catch_unwind(AssertUnwindSafe(|| member(&mut state.conn, &mut f)));
        let (ran, panicked) = match ran {
            Ok(ran) => (ran, None),
            Err(payload) => (
                Ok(Err(StoreError::db("the transaction panicked", false))),
                Some(payload),
            ),
        };
        let value = match ran {
            Ok(Ok(value)) => value,
            Ok(Err(refused)) => {
                // Rolled back to its savepoint: nothing of it is in the batch.
                let _ = self.finish_if_last(&mut state, false);
                drop(state);
                if let Some(payload) = panicked {
                    resume_unwind(payload);
                }
                return Err(refused);
            }
            // The savepoint could not be undone: the batch is lost.
            Err(broken) => {
                let _ = self.end_batch(&mut state, false, Some(&broken));
                return Err(broken);
            }
        };
        if let Some(open) = state.open.as_mut() {
            open.1 += 1;
        }
        if let Some(committed) = self.finish_if_last(&mut state, true) {
            return committed.map(|()| value);
        }
        // Somebody waits: they (or whoever comes after them) commit.
        loop {
            state = self
                .finished
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            if let Some((error, unread)) = state.outcomes.get_mut(&batch) {
                *unread -= 1;
                let error = error.clone();
                if *unread == 0 {
                    state.outcomes.remove(&batch);
                }
                return match error {
                    None => Ok(value),
                    Some(message) => Err(StoreError::db(message, false)),
                };
            }
        }
    }

    /// Commits the open batch when nobody waits to join it or it is full;
    /// the commit's result for a caller that is a member (`joined`).
    fn finish_if_last(&self, state: &mut State, joined: bool) -> Option<Result<(), StoreError>> {
        let full = state.open.is_some_and(|(_, n)| n >= MAX_BATCH);
        if self.waiting.load(Ordering::SeqCst) > 0 && !full {
            return None;
        }
        Some(self.end_batch(state, joined, None))
    }

    /// Ends the open batch: committed, or rolled back when `broken`, and
    /// the members asleep on it told.
    fn end_batch(
        &self,
        state: &mut State,
        joined: bool,
        broken: Option<&StoreError>,
    ) -> Result<(), StoreError> {
        let Some((batch, members)) = state.open.take() else {
            return Ok(());
        };
        let result = match broken {
            Some(e) => {
                let _ = state.conn.execute_batch("ROLLBACK");
                Err(StoreError::db(format!("the batch was lost: {e}"), false))
            }
            None => state.conn.execute_batch("COMMIT").map_err(|e| {
                // A failed COMMIT may leave the transaction open.
                if !state.conn.is_autocommit() {
                    let _ = state.conn.execute_batch("ROLLBACK");
                }
                StoreError::from(e)
            }),
        };
        let asleep = members - usize::from(joined);
        if asleep > 0 {
            let error = result.as_ref().err().map(ToString::to_string);
            state.outcomes.insert(batch, (error, asleep));
            self.finished.notify_all();
        }
        result
    }
}

/// `f` in a savepoint: released when it succeeds, rolled back when it
/// fails. The outer error: the savepoint itself failed.
fn member<T>(
    conn: &mut rusqlite::Connection,
    f: &mut impl FnMut(&mut dyn Sql) -> Result<T, StoreError>,
) -> Result<Result<T, StoreError>, StoreError> {
    conn.execute_batch("SAVEPOINT member")?;
    let mut undo = Undo { conn, armed: true };
    let result = f(&mut *undo.conn);
    undo.armed = false;
    match result {
        Ok(value) => {
            undo.conn.execute_batch("RELEASE member")?;
            Ok(Ok(value))
        }
        Err(e) => {
            undo.conn
                .execute_batch("ROLLBACK TO member; RELEASE member")?;
            Ok(Err(e))
        }
    }
}

/// Rolls the savepoint back if `f` unwinds.
struct Undo<'a> {
    conn: &'a mut rusqlite::Connection,
    armed: bool,
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = self
                .conn
                .execute_batch("ROLLBACK TO member; RELEASE member");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::reason::Reason;

    fn open(dir: &tempfile::TempDir) -> (GroupCommit, std::path::PathBuf) {
        let path = dir.path().join("group.db");
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.pragma_update(None, "journal_mode", "WAL")
            .expect("wal");
        conn.pragma_update(None, "synchronous", "FULL")
            .expect("full");
        conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, who TEXT NOT NULL)")
            .expect("table");
        (GroupCommit::new(conn), path)
    }

    fn batches(group: &GroupCommit) -> u64 {
        lock(&group.state).next_batch
    }

    #[test]
    fn concurrent_transactions_share_commits_and_a_refused_one_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (group, path) = open(&dir);
        let group = Arc::new(group);
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let group = group.clone();
                std::thread::spawn(move || {
                    let mut kept = Vec::new();
                    for i in 0..40 {
                        let id = t * 1000 + i;
                        let result = group.tx(|sql| {
                            sql.exec(
                                "INSERT INTO t (id, who) VALUES (?1, ?2)",
                                &[id.into(), format!("thread {t}").into()],
                            )?;
                            // Held a while, so that others queue behind it.
                            std::thread::sleep(Duration::from_micros(300));
                            if i % 5 == 0 {
                                return Err(StoreError::refused(Reason::Internal, "no"));
                            }
                            Ok(id)
                        });
                        match result {
                            Ok(id) => kept.push(id),
                            Err(StoreError::Refused { .. }) => {}
                            Err(e) => panic!("transaction failed: {e}"),
                        }
                    }
                    kept
                })
            })
            .collect();
        let mut kept: Vec<i64> = threads
            .into_iter()
            .flat_map(|t| t.join().expect("thread"))
            .collect();
        kept.sort_unstable();
        assert_eq!(kept.len(), 8 * 32);
        assert!(
            batches(&group) < 8 * 40 / 2,
            "{} batches for {} transactions: they did not share commits",
            batches(&group),
            8 * 40
        );
        // What was acknowledged is on disk, and only that, as another
        // connection sees it.
        let other = rusqlite::Connection::open(&path).expect("reopen");
        let mut stmt = other
            .prepare("SELECT id FROM t ORDER BY id")
            .expect("select");
        let stored: Vec<i64> = stmt
            .query_map([], |row| row.get(0))
            .expect("query")
            .map(|r| r.expect("row"))
            .collect();
        assert_eq!(stored, kept);
    }

    #[test]
    fn a_panicking_transaction_is_rolled_back_and_panics_its_caller_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (group, _path) = open(&dir);
        let group = Arc::new(group);
        let panicking = {
            let group = group.clone();
            std::thread::spawn(move || {
                group.tx(|sql| {
                    sql.exec("INSERT INTO t (id, who) VALUES (1, 'doomed')", &[])?;
                    panic!("boom");
                    #[allow(unreachable_code)]
                    Ok(())
                })
            })
        };
        assert!(panicking.join().is_err(), "the panic reaches its caller");
        group
            .tx(|sql| sql.exec("INSERT INTO t (id, who) VALUES (2, 'fine')", &[]))
            .expect("the next transaction");
        let rows = group
            .tx(|sql| sql.rows("SELECT id FROM t ORDER BY id", &[]))
            .expect("read");
        let ids: Vec<i64> = rows.iter().map(|r| r.int(0).expect("id")).collect();
        assert_eq!(ids, vec![2]);
    }
}
