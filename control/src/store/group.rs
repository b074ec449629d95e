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
//! rolled back alone and the others go on; one that panics takes the whole
//! batch down (every member gets an error), as nothing it wrote can be
//! vouched for. A caller learns `Ok` only once the batch holding its work
//! is committed; if that commit fails, every member gets the error and
//! nothing of theirs was kept. The outcome is the one a sequence of
//! separate transactions in the same order gives.

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
    /// The batch open now.
    open: Option<Batch>,
    next_batch: u64,
    /// How finished batches ended, until every member asleep on one has
    /// read it: `None` committed, `Some` the error.
    outcomes: HashMap<u64, (Option<String>, usize)>,
}

/// One SQLite transaction holding several callers' transactions.
struct Batch {
    id: u64,
    /// Transactions in it that succeeded: their callers wait for its commit.
    members: usize,
    /// Transactions that ran in it, refused ones included.
    ran: usize,
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
        // SQLite rolls a transaction back by itself after some errors (a
        // full disk, I/O): the batch is then lost, and a savepoint outside
        // a transaction would commit on its own.
        if state.open.is_some() && state.conn.is_autocommit() {
            let lost = StoreError::db("the database rolled the open batch back", false);
            let _ = self.end_batch(&mut state, false, Some(&lost));
        }
        let batch = match &state.open {
            Some(open) => open.id,
            None => {
                if !state.conn.is_autocommit() {
                    // Left in a transaction by a rollback that failed.
                    state.conn.execute_batch("ROLLBACK")?;
                }
                state.conn.execute_batch("BEGIN IMMEDIATE")?;
                let id = state.next_batch;
                state.next_batch += 1;
                state.open = Some(Batch {
                    id,
                    members: 0,
                    ran: 0,
                });
                id
            }
        };
        if let Some(open) = state.open.as_mut() {
            open.ran += 1;
        }
        let ran = catch_unwind(AssertUnwindSafe(|| member(&mut state.conn, &mut f)));
        let value = match ran {
            Ok(Ok(Ok(value))) => value,
            Ok(Ok(Err(refused))) => {
                // Rolled back to its savepoint: nothing of it is in the batch.
                let _ = self.finish_if_last(&mut state, false);
                return Err(refused);
            }
            // The savepoint could not be undone: the batch is lost.
            Ok(Err(broken)) => {
                let _ = self.end_batch(&mut state, false, Some(&broken));
                return Err(broken);
            }
            // A panic in `f`: what it wrote cannot be vouched for, so the
            // whole batch is rolled back (its members told), then the
            // panic goes on to this caller.
            Err(payload) => {
                let panicked = StoreError::db("a transaction in the batch panicked", false);
                let _ = self.end_batch(&mut state, false, Some(&panicked));
                drop(state);
                resume_unwind(payload);
            }
        };
        if let Some(open) = state.open.as_mut() {
            open.members += 1;
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
        // Every transaction that ran counts, refused ones too: a stream of
        // refusals must not hold a batch (and the write lock) open.
        let full = state.open.as_ref().is_some_and(|b| b.ran >= MAX_BATCH);
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
        let Some(Batch { id, members, .. }) = state.open.take() else {
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
            state.outcomes.insert(id, (error, asleep));
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
    match f(conn) {
        Ok(value) => {
            conn.execute_batch("RELEASE member")?;
            Ok(Ok(value))
        }
        Err(e) => {
            conn.execute_batch("ROLLBACK TO member; RELEASE member")?;
            Ok(Err(e))
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
    fn a_panicking_transaction_is_rolled_back_with_its_batch_and_panics_its_caller() {
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
