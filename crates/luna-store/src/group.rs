//! Group commit: the write transactions of this process share commits.
//!
//! With `synchronous = FULL` (SQLite) or the default `synchronous_commit`
//! (PostgreSQL), a commit waits for the disk; one per accepted request, per
//! claim and per outcome made the database the service's bottleneck on a
//! fast token. Here the writes that arrive together run in one transaction,
//! each in a savepoint of its own (one that fails is rolled back alone, and
//! only its caller sees the error), and every caller is answered only after
//! that transaction committed: what a `201` promises is on disk.
//!
//! No thread and no timer: the first writer that finds no batch open becomes
//! its leader (takes a connection, begins the transaction); writers that
//! arrive meanwhile, and those that waited for the previous batch to commit,
//! join it and run their work on its connection, one at a time; the leader
//! commits once every writer that was waiting has joined. Under no load a
//! write is one transaction, as before; under load a batch holds everyone
//! who arrived while the last commit was going to disk.
//!
//! One batch at a time per process: on SQLite there is one writer anyway,
//! and on PostgreSQL a batch's statements run on one connection.

use std::collections::HashMap;

use diesel::connection::TransactionManager;
use diesel::r2d2::PooledConnection;
use diesel::Connection as _;
use parking_lot::{Condvar, Mutex};

use crate::db::{ConnectionManager, DbConnection};
use crate::error::{Result, StoreError};

/// At most this many writes share one commit, so that a batch's last
/// writer does not wait behind an unbounded number of others.
const MOST_PER_BATCH: usize = 256;

type Pooled = PooledConnection<ConnectionManager>;

#[derive(Default)]
pub(crate) struct GroupCommit {
    state: Mutex<State>,
    changed: Condvar,
    /// Writes done, and the commits they took (for metrics and tests).
    writes: std::sync::atomic::AtomicU64,
    commits: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GroupCommit")
    }
}

#[derive(Default)]
struct State {
    phase: Phase,
    /// Writers waiting for a batch to open (one is forming, or the last is
    /// committing): the leader commits only once they have all joined.
    waiting: usize,
    next_batch: u64,
    /// How committed batches ended, until each member has read it:
    /// (members still to read it, the failure if the commit failed).
    ended: HashMap<u64, (usize, Option<CommitFailure>)>,
}

#[derive(Default)]
enum Phase {
    /// No batch: the next writer leads one.
    #[default]
    Idle,
    /// A leader is taking a connection and beginning the transaction.
    Forming,
    /// The batch's transaction is open; writers join it.
    Open(Box<Batch>),
    /// The leader is committing; writers wait for the next batch.
    Committing,
}

struct Batch {
    id: u64,
    conn: Pooled,
    members: usize,
}

/// Why a batch's commit failed, for each member that did not lead it.
#[derive(Debug, Clone)]
struct CommitFailure {
    reason: String,
    unavailable: bool,
}

impl GroupCommit {
    /// Writes so far, and the commits they shared.
    pub(crate) fn counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.writes.load(Relaxed), self.commits.load(Relaxed))
    }

    /// Runs `work` in a transaction shared with the writes that arrive with
    /// it, and returns once that transaction committed. `connect` gives a
    /// connection and `begin` begins its transaction (the leader's part).
    pub(crate) fn write<T>(
        &self,
        connect: impl FnOnce() -> Result<Pooled>,
        begin: impl FnOnce(&mut DbConnection) -> Result<()>,
        work: impl FnOnce(&mut DbConnection) -> Result<T>,
    ) -> Result<T> {
        let mut state = self.state.lock();
        loop {
            match &mut state.phase {
                Phase::Idle => {
                    state.phase = Phase::Forming;
                    drop(state);
                    return self.lead(connect, begin, work);
                }
                Phase::Open(batch) if batch.members < MOST_PER_BATCH => {
                    batch.members += 1;
                    let id = batch.id;
                    let done = in_savepoint(&mut batch.conn, work);
                    self.changed.notify_all();
                    return self.await_commit(state, id, done);
                }
                Phase::Forming | Phase::Open(_) | Phase::Committing => {
                    state.waiting += 1;
                    self.changed.wait(&mut state);
                    state.waiting -= 1;
                }
            }
        }
    }

    fn lead<T>(
        &self,
        connect: impl FnOnce() -> Result<Pooled>,
        begin: impl FnOnce(&mut DbConnection) -> Result<()>,
        work: impl FnOnce(&mut DbConnection) -> Result<T>,
    ) -> Result<T> {
        let opened = connect().and_then(|mut conn| begin(&mut conn).map(|()| conn));
        let (conn, done) = match opened {
            Ok(mut conn) => {
                let done = in_savepoint(&mut conn, work);
                (conn, done)
            }
            Err(error) => {
                // The waiting writers try for themselves (one leads next).
                self.state.lock().phase = Phase::Idle;
                self.changed.notify_all();
                return Err(error);
            }
        };
        let mut state = self.state.lock();
        let id = state.next_batch;
        state.next_batch += 1;
        state.phase = Phase::Open(Box::new(Batch { id, conn, members: 1 }));
        self.changed.notify_all();
        // Every writer that was waiting joins before the commit.
        while state.waiting > 0 && matches!(&state.phase, Phase::Open(b) if b.members < MOST_PER_BATCH) {
            self.changed.wait(&mut state);
        }
        let Phase::Open(batch) = std::mem::replace(&mut state.phase, Phase::Committing) else {
            unreachable!("only the leader ends its batch");
        };
        drop(state);
        let Batch {
            mut conn, members, ..
        } = *batch;
        let committed = commit(&mut conn);
        drop(conn);
        if committed.is_ok() {
            use std::sync::atomic::Ordering::Relaxed;
            self.writes.fetch_add(members as u64, Relaxed);
            self.commits.fetch_add(1, Relaxed);
        }
        let mut state = self.state.lock();
        let failure = committed.as_ref().err().map(|error| CommitFailure {
            reason: error.to_string(),
            unavailable: error.is_unavailable(),
        });
        if members > 1 {
            state.ended.insert(id, (members - 1, failure));
        }
        state.phase = Phase::Idle;
        self.changed.notify_all();
        drop(state);
        committed.and(done)
    }

    /// A member's wait for its batch's commit; its work's outcome if the commit held.
    fn await_commit<T>(
        &self,
        mut state: parking_lot::MutexGuard<'_, State>,
        id: u64,
        done: Result<T>,
    ) -> Result<T> {
        loop {
            if let Some((left, failure)) = state.ended.get_mut(&id) {
                *left -= 1;
                let failure = failure.clone();
                if *left == 0 {
                    state.ended.remove(&id);
                }
                return match failure {
                    None => done,
                    Some(CommitFailure { reason, unavailable }) => {
                        Err(StoreError::Commit { reason, unavailable })
                    }
                };
            }
            self.changed.wait(&mut state);
        }
    }
}

/// Runs `work` in a savepoint: rolled back alone if it fails.
fn in_savepoint<T>(conn: &mut DbConnection, work: impl FnOnce(&mut DbConnection) -> Result<T>) -> Result<T> {
    conn.transaction(work)
}

/// Commits the batch's transaction; rolls it back if that fails (a failed
/// rollback breaks the connection, which the pool then discards).
fn commit(conn: &mut DbConnection) -> Result<()> {
    type Transactions = <DbConnection as diesel::Connection>::TransactionManager;
    match Transactions::commit_transaction(conn) {
        Ok(()) => Ok(()),
        Err(error) => {
            let _ = Transactions::rollback_transaction(conn);
            Err(error.into())
        }
    }
}
