//! Group commit: the write transactions of this process share commits.
//!
//! A commit that waits for the disk costs more than the writes it ends; one
//! per accepted request and per outcome made the database the service's
//! bottleneck on a fast token. Here the writes that arrive together run in
//! one transaction, and every caller is answered only after that transaction
//! committed. What each write leaves to its batch ([`Pending`]: the key-count
//! changes it made, the audit records it appends) is summed and written once,
//! just before the commit (`Batches::close`): the rows every write would
//! otherwise touch (a partition's counts, the audit trail's head) are written
//! once a batch, and held only through its commit.
//!
//! No thread and no timer: the first writer that finds no batch open becomes
//! its leader (takes a connection, begins the transaction, runs its own work:
//! if that fails, the whole transaction is rolled back, as nobody has joined
//! yet); writers that arrive meanwhile, and those that waited for the
//! previous batch to commit, join it and run their work on its connection,
//! one at a time; the leader commits once every writer that was waiting has
//! joined. Under load a batch holds everyone who arrived while the last
//! commit was going to disk.
//!
//! No savepoints: on PostgreSQL each is two round trips per write, more than
//! the write itself. A write that fails (which is rare: a conflict, a taken
//! name) may have written part of its work, and on PostgreSQL its error has
//! aborted the transaction; the batch is then rolled back whole and takes no
//! more writes, the failed write's caller gets its error, and every other
//! write of the batch runs again in the next one.
//!
//! A write that fails in a way that says nothing of the write itself (a
//! PostgreSQL deadlock or serialization failure, in which the database chose
//! it as the victim) is run again, here, a few times before its caller hears
//! of it: the caller would only send it again.
//!
//! A batch's commit waits for the disk if any of its writes needs it
//! ([`Durability::Synced`]); a batch of deferred writes only (operations'
//! outcomes) commits without waiting, and reaches the disk with the next
//! synced commit or checkpoint.
//!
//! One batch at a time per process: on SQLite there is one writer anyway,
//! and on PostgreSQL a batch's statements run on one connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use diesel::connection::TransactionManager;
use diesel::r2d2::PooledConnection;
use parking_lot::{Condvar, Mutex};

use crate::counts::CountDeltas;
use crate::db::{ConnectionManager, DbConnection};
use crate::error::{Result, StoreError};
use crate::repo::audit::AuditEntry;

/// At most this many writes share one commit, so that a batch's last
/// writer does not wait behind an unbounded number of others.
const MOST_PER_BATCH: usize = 256;

/// How many times a write the database chose as a deadlock's or a
/// serialization failure's victim is run again before its caller hears of it.
const RETRIES: usize = 8;

/// A write rolled back this many times for other writes' failures leads a
/// batch of its own: however often others fail, it commits.
const ALONE_AFTER: usize = 2;

/// Past this many roll-backs (its own batch's close chosen as a deadlock's
/// victim each time) a write gives up, as a database that cannot commit.
const MOST_RERUNS: usize = 32;

pub(crate) type Pooled = PooledConnection<ConnectionManager>;

/// Whether a write's commit must be on disk before the write returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Durability {
    /// Visible at once, on disk with the next synced commit or checkpoint:
    /// a power cut may lose it. Only for what the service does again after a
    /// restart: an operation's outcome (its attempt runs again, once its
    /// lease has run out, and finds its objects by `CKA_ID`), a lease's
    /// renewal, a retry's delay.
    Deferred,
    /// On disk before the write returns: what a `201` promises.
    Synced,
}

/// What a write leaves to be written once for its whole batch, just before
/// the commit: the key-count changes it made and the audit records it appends.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    pub counts: CountDeltas,
    pub audit: Vec<AuditEntry>,
    /// Partitions the write deleted (their counts went with them, by
    /// cascade): earlier writes' deltas for them are dropped.
    pub forgotten_partitions: Vec<String>,
}

impl Pending {
    /// Adds a later write's leftovers to these (a batch's, in write order).
    fn absorb(&mut self, later: Pending) {
        for partition in &later.forgotten_partitions {
            self.counts.forget_partition(partition);
        }
        self.counts.merge(later.counts);
        self.audit.extend(later.audit);
    }
}

/// The store's side of a batch: opening its transaction, and writing what
/// its writes left and committing.
pub(crate) trait Batches {
    /// What a committed batch hands to `closed`.
    type Closed;

    /// A connection with a transaction begun, for a batch.
    fn open(&self) -> Result<Pooled>;

    /// Writes `pending` and commits as `durability` (what the batch's
    /// writes want, known only once they have joined); rolls back if either
    /// fails. Runs in the batches' turn.
    fn close(
        &self,
        conn: &mut DbConnection,
        pending: Pending,
        durability: Durability,
    ) -> Result<Self::Closed>;

    /// After a commit, outside the batches' turn (the next batch may run
    /// meanwhile), before its writers are answered: what must follow it
    /// (the commit synced to disk if it must be, the audit checkpoint moved).
    fn closed(&self, closed: Self::Closed) -> Result<()>;
}

/// Counters of this process's writes, for metrics and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Writes committed.
    pub writes: u64,
    /// Commits they took (several writes share one under load).
    pub commits: u64,
    /// Commits that waited for the disk.
    pub synced_commits: u64,
    /// Time from each batch's begin to the end of its commit, summed: the
    /// time the batches held the database's turn, waits for writers to join
    /// included (a synced batch's sync to disk follows, outside it).
    pub batch_nanos: u64,
    /// Time the writes' work ran, summed (in the batches' turn, one after
    /// another): with `commit_nanos`, the serial database time of this
    /// process's writes.
    pub work_nanos: u64,
    /// Time spent writing what the writes left (counts, audit) and committing.
    pub commit_nanos: u64,
    /// Writes run again after a deadlock or serialization failure.
    pub retried: u64,
    /// Batches rolled back because one of their writes failed (the others
    /// ran again in the next).
    pub rolled_back: u64,
}

#[derive(Default)]
pub(crate) struct GroupCommit {
    state: Mutex<State>,
    /// A batch opened, or the last one ended: the writers waiting for one
    /// look again (each wakes only for what it waits for: a commit's worth
    /// of wake-ups was a good part of the context switches per create).
    opened: Condvar,
    /// A writer joined the open batch: its leader looks whether all have.
    joined: Condvar,
    /// A batch ended: its members read how.
    ended: Condvar,
    writes: AtomicU64,
    commits: AtomicU64,
    synced_commits: AtomicU64,
    batch_nanos: AtomicU64,
    work_nanos: AtomicU64,
    commit_nanos: AtomicU64,
    retried: AtomicU64,
    rolled_back: AtomicU64,
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
    /// How batches ended, until each member has read it: (members still
    /// to read it, how it ended).
    ended: HashMap<u64, (usize, Ended)>,
}

#[derive(Default)]
enum Phase {
    /// No batch: the next writer leads one.
    #[default]
    Idle,
    /// A leader is taking a connection, beginning the transaction and
    /// running its own work.
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
    /// A write that joined failed: the batch is rolled back, and takes no
    /// more writes.
    failed: bool,
    /// Its leader's write leads alone (it was rolled back for others' failures).
    alone: bool,
    pending: Pending,
    durability: Durability,
}

impl Batch {
    /// Whether a writer may join it.
    fn takes_more(&self) -> bool {
        !self.failed && !self.alone && self.members < MOST_PER_BATCH
    }
}

/// How a batch ended, for each member that did not lead it.
#[derive(Debug, Clone)]
enum Ended {
    Committed,
    /// Its commit, or what had to follow it, failed.
    Failed(BatchFailure),
    /// One of its writes failed: nothing of it was written, and the others
    /// run again.
    RolledBack,
}

/// Why a batch failed, for each member that did not lead it.
#[derive(Debug, Clone)]
enum BatchFailure {
    /// Its commit failed (the database may be away).
    Commit { reason: String, unavailable: bool },
    /// Its audit records could not be written; it was rolled back.
    Audit { reason: String },
    /// The commit happened; what had to follow it did not.
    AfterCommit { reason: String },
}

impl BatchFailure {
    fn of(error: &StoreError) -> BatchFailure {
        match error {
            StoreError::AfterCommit { reason } => BatchFailure::AfterCommit {
                reason: reason.clone(),
            },
            StoreError::AuditUnwritten { reason } => BatchFailure::Audit {
                reason: reason.clone(),
            },
            other => BatchFailure::Commit {
                reason: other.to_string(),
                unavailable: other.is_unavailable(),
            },
        }
    }

    fn into_error(self) -> StoreError {
        match self {
            BatchFailure::Commit { reason, unavailable } => StoreError::Commit { reason, unavailable },
            BatchFailure::Audit { reason } => StoreError::AuditUnwritten { reason },
            BatchFailure::AfterCommit { reason } => StoreError::AfterCommit { reason },
        }
    }
}

/// Sets the phase back to `Idle` if the leader's work unwinds (see `lead`).
struct FormingUntilOpen<'a>(&'a GroupCommit);

impl Drop for FormingUntilOpen<'_> {
    fn drop(&mut self) {
        self.0.state.lock().phase = Phase::Idle;
        self.0.opened.notify_all();
    }
}

impl GroupCommit {
    pub(crate) fn stats(&self) -> WriteStats {
        WriteStats {
            writes: self.writes.load(Relaxed),
            commits: self.commits.load(Relaxed),
            synced_commits: self.synced_commits.load(Relaxed),
            batch_nanos: self.batch_nanos.load(Relaxed),
            work_nanos: self.work_nanos.load(Relaxed),
            commit_nanos: self.commit_nanos.load(Relaxed),
            retried: self.retried.load(Relaxed),
            rolled_back: self.rolled_back.load(Relaxed),
        }
    }

    /// Runs `work` in a transaction shared with the writes that arrive with
    /// it, and returns once that transaction committed (on disk, if
    /// `durability` asks). `work` may run more than once (another write of
    /// its batch failed, or the database chose it as a deadlock's victim);
    /// only the run that committed counts.
    pub(crate) fn write<B: Batches, T>(
        &self,
        batches: &B,
        durability: Durability,
        mut work: impl FnMut(&mut DbConnection, &mut Pending) -> Result<T>,
    ) -> Result<T> {
        let mut victim = 0;
        // Rolled back because another write failed: past `ALONE_AFTER`, this
        // write leads a batch of its own, which no failure but its own can end.
        let mut rolled_back = 0;
        let mut state = self.state.lock();
        loop {
            if rolled_back > MOST_RERUNS {
                return Err(StoreError::Commit {
                    reason: format!("its batch was rolled back {rolled_back} times"),
                    unavailable: true,
                });
            }
            let alone = rolled_back >= ALONE_AFTER;
            match &mut state.phase {
                Phase::Idle => {
                    state.phase = Phase::Forming;
                    drop(state);
                    match self.lead(batches, durability, alone, &mut work) {
                        Led::Ended(result) => return result,
                        Led::RolledBack => rolled_back += 1,
                    }
                    state = self.state.lock();
                }
                Phase::Open(batch) if batch.takes_more() && !alone => {
                    batch.members += 1;
                    let id = batch.id;
                    let mut pending = Pending::default();
                    let working = Instant::now();
                    let done = work(&mut batch.conn, &mut pending);
                    self.work_nanos.fetch_add(nanos(working), Relaxed);
                    match &done {
                        Ok(_) => {
                            batch.pending.absorb(pending);
                            batch.durability = batch.durability.max(durability);
                        }
                        // What it wrote cannot be undone alone: the batch is
                        // rolled back, and its other writes run again.
                        Err(_) => batch.failed = true,
                    }
                    self.joined.notify_one();
                    let ended;
                    (state, ended) = self.await_end(state, id);
                    match (ended, done) {
                        (Ended::Committed, done) => return done,
                        (Ended::Failed(_), Err(own)) => return Err(own),
                        (Ended::Failed(failure), Ok(_)) => return Err(failure.into_error()),
                        (Ended::RolledBack, Ok(_)) => rolled_back += 1,
                        (Ended::RolledBack, Err(own)) if own.is_retryable() && victim < RETRIES => {
                            victim += 1;
                            self.retried.fetch_add(1, Relaxed);
                        }
                        (Ended::RolledBack, Err(own)) => return Err(own),
                    }
                }
                // A write that leads alone joins no batch: the leader does
                // not wait for it.
                Phase::Forming | Phase::Open(_) | Phase::Committing if alone => {
                    self.opened.wait(&mut state);
                }
                Phase::Forming | Phase::Open(_) | Phase::Committing => {
                    state.waiting += 1;
                    self.opened.wait(&mut state);
                    state.waiting -= 1;
                }
            }
        }
    }

    /// Leads a batch: begins it with `work`, lets the waiting writers join,
    /// and commits (or rolls back, if one of them failed).
    fn lead<B: Batches, T>(
        &self,
        batches: &B,
        durability: Durability,
        alone: bool,
        work: &mut impl FnMut(&mut DbConnection, &mut Pending) -> Result<T>,
    ) -> Led<T> {
        let began = Instant::now();
        let mut victim = 0;
        // Nobody joins before the leader's work is done: if it fails, the
        // transaction holds nothing else and is rolled back whole.
        // A connection the database had closed (a restart between two
        // writes) is met once at most: nothing was committed on it, and the
        // next is checked first (`Store::connection`).
        let mut met_closed = false;
        // A leader whose work panics (a bug: work refuses bad input with an
        // error) must not leave the phase `Forming`, where every later write
        // of the process would wait for it. Its connection, dropped while
        // panicking, is not given back to the pool (diesel's r2d2 manager).
        let forming = FormingUntilOpen(self);
        let led = loop {
            let opened = batches.open();
            let mut conn = match opened {
                Ok(conn) => conn,
                Err(error) if error.is_closed_connection() && !met_closed => {
                    met_closed = true;
                    continue;
                }
                Err(error) => break Err(error),
            };
            let mut pending = Pending::default();
            let working = Instant::now();
            let done = work(&mut conn, &mut pending);
            self.work_nanos.fetch_add(nanos(working), Relaxed);
            match done {
                Ok(value) => break Ok((conn, value, pending)),
                Err(error) => {
                    rollback(&mut conn);
                    if error.is_closed_connection() && !met_closed {
                        met_closed = true;
                        continue;
                    }
                    if error.is_retryable() && victim < RETRIES {
                        victim += 1;
                        self.retried.fetch_add(1, Relaxed);
                        continue;
                    }
                    break Err(error);
                }
            }
        };
        std::mem::forget(forming);
        let (conn, value, pending) = match led {
            Ok(led) => led,
            Err(error) => {
                // The waiting writers try for themselves (one leads next).
                self.state.lock().phase = Phase::Idle;
                self.opened.notify_all();
                return Led::Ended(Err(error));
            }
        };
        let mut state = self.state.lock();
        let id = state.next_batch;
        state.next_batch += 1;
        state.phase = Phase::Open(Box::new(Batch {
            id,
            conn,
            members: 1,
            failed: false,
            alone,
            pending,
            durability,
        }));
        self.opened.notify_all();
        // Every writer that was waiting joins before the commit.
        while state.waiting > 0 && matches!(&state.phase, Phase::Open(b) if b.takes_more()) {
            self.joined.wait(&mut state);
        }
        let Phase::Open(batch) = std::mem::replace(&mut state.phase, Phase::Committing) else {
            unreachable!("only the leader ends its batch");
        };
        drop(state);
        let Batch {
            mut conn,
            members,
            failed,
            pending,
            durability,
            ..
        } = *batch;
        let closed = if failed {
            rollback(&mut conn);
            self.rolled_back.fetch_add(1, Relaxed);
            None
        } else {
            let closing = Instant::now();
            let closed = batches.close(&mut conn, pending, durability);
            if closed.is_ok() {
                self.writes.fetch_add(members as u64, Relaxed);
                self.commits.fetch_add(1, Relaxed);
                if durability == Durability::Synced {
                    self.synced_commits.fetch_add(1, Relaxed);
                }
                self.commit_nanos.fetch_add(nanos(closing), Relaxed);
                self.batch_nanos.fetch_add(nanos(began), Relaxed);
            }
            Some(closed)
        };
        drop(conn);
        // The next batch may begin: what follows a commit (its sync to disk,
        // the audit checkpoint) takes no turn of the database's.
        {
            let mut state = self.state.lock();
            state.phase = Phase::Idle;
            self.opened.notify_all();
        }
        let ended = match closed {
            None => Ended::RolledBack,
            // The database chose the batch's close (its counts, its audit
            // records) as a deadlock's victim: every write runs again.
            Some(Err(error)) if error.is_retryable() => {
                self.retried.fetch_add(1, Relaxed);
                Ended::RolledBack
            }
            Some(closed) => match closed.and_then(|closed| batches.closed(closed)) {
                Ok(()) => Ended::Committed,
                Err(error) => Ended::Failed(BatchFailure::of(&error)),
            },
        };
        let mut state = self.state.lock();
        if members > 1 {
            state.ended.insert(id, (members - 1, ended.clone()));
        }
        self.ended.notify_all();
        drop(state);
        match ended {
            Ended::Committed => Led::Ended(Ok(value)),
            Ended::Failed(failure) => Led::Ended(Err(failure.into_error())),
            Ended::RolledBack => Led::RolledBack,
        }
    }

    /// A member's wait for its batch to end, and how it ended.
    fn await_end<'a>(
        &self,
        mut state: parking_lot::MutexGuard<'a, State>,
        id: u64,
    ) -> (parking_lot::MutexGuard<'a, State>, Ended) {
        loop {
            if let Some((left, ended)) = state.ended.get_mut(&id) {
                *left -= 1;
                let ended = ended.clone();
                if *left == 0 {
                    state.ended.remove(&id);
                }
                return (state, ended);
            }
            self.ended.wait(&mut state);
        }
    }
}

/// What became of a batch its leader led.
enum Led<T> {
    /// It committed (the leader's outcome), or its commit failed.
    Ended(Result<T>),
    /// A write that joined it failed: rolled back, the leader's work to run again.
    RolledBack,
}

fn nanos(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Rolls back the connection's transaction (a failed rollback breaks the
/// connection, which the pool then discards).
pub(crate) fn rollback(conn: &mut DbConnection) {
    type Transactions = <DbConnection as diesel::Connection>::TransactionManager;
    let _ = Transactions::rollback_transaction(conn);
}

/// Commits the connection's transaction; rolls it back if that fails.
pub(crate) fn commit(conn: &mut DbConnection) -> Result<()> {
    type Transactions = <DbConnection as diesel::Connection>::TransactionManager;
    match Transactions::commit_transaction(conn) {
        Ok(()) => Ok(()),
        Err(error) => {
            rollback(conn);
            Err(error.into())
        }
    }
}
