//! Storage for luna-cckm: Diesel on SQLite (embedded default) or PostgreSQL
//! (deployments, several instances on one database), one codebase for both.
//!
//! Invariants: the backend is chosen from the URL alone; each backend has its
//! own embedded migrations, run at open; repositories return
//! `Result<Option<T>>` for lookups and do filtering, sorting and paging in
//! SQL; every multi-row change is one transaction; a PIN is stored only
//! sealed (see [`PinCipher`]).

mod codec;
mod counts;
mod db;
mod error;
mod group;
mod models;
mod pin;
mod repo;
mod schema;
#[cfg(feature = "testing")]
pub mod testing;

use std::sync::Arc;

use diesel::r2d2::R2D2Connection;

use diesel::connection::{AnsiTransactionManager, TransactionManager};

pub use codec::now;
pub use db::{Backend, PoolOptions};
pub use error::{Result, StoreError};
pub use group::{Durability, WriteStats};
pub use pin::{load_or_create_key_file, PinCipher};
pub use repo::audit::{AuditCheck, AuditCheckpoint, AuditEntry, AuditRecord};
pub use repo::connections::ConnectionChange;
pub use repo::operations::PartitionRoom;
pub use repo::users::{NewUser, StoredUser, UserChange};

use db::{ConnectionManager, DbConnection};
use group::{Batches, Pending, Pooled};

/// A page of a list and the number of rows that match the filters.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed<T> {
    pub total: i64,
    pub items: Vec<T>,
}

/// The database: a connection pool and the PIN cipher.
#[derive(Clone)]
pub struct Store {
    pool: diesel::r2d2::Pool<ConnectionManager>,
    backend: Backend,
    /// This process's writes, committed in groups.
    writes: Arc<group::GroupCommit>,
    pins: Arc<PinCipher>,
    /// Where the audit trail's head is kept outside the database, if anywhere.
    audit_checkpoint: Option<Arc<AuditCheckpoint>>,
    /// The trail's head as this process last committed or read it.
    audit_head: Arc<repo::audit::AuditHead>,
    /// SQLite's write-ahead log, synced after each synced commit.
    wal: Option<Arc<db::WalFile>>,
    /// Statements sent to the database by this store's connections.
    statements: Arc<db::StatementLog>,
    /// Set when the last attempt to get a connection failed: the database is
    /// away, and later attempts wait briefly instead of the full timeout, so
    /// a request needing several queries still answers in about one.
    unreachable: Arc<std::sync::atomic::AtomicBool>,
}

/// How long a connection is waited for while the database is known away.
const WAIT_WHILE_UNREACHABLE: std::time::Duration = std::time::Duration::from_millis(250);

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Connects to the URL's backend and brings its schema up to date.
    pub fn open(url: &str, pins: PinCipher, options: PoolOptions) -> Result<Store> {
        let (backend, target) = db::parse_url(url)?;
        if backend == Backend::Sqlite {
            db::create_private_file(&target)?;
        }
        let statements = Arc::new(db::StatementLog::default());
        let manager = ConnectionManager::new(backend, target, Arc::clone(&statements));
        // Migrate on one connection before the pool opens more.
        let mut first = manager.connect()?;
        db::run_migrations(&mut first)?;
        let wal = db::WalFile::of(&mut first)?.map(Arc::new);
        let pool = diesel::r2d2::Pool::builder()
            .max_size(options.max_connections)
            .connection_timeout(options.connect_timeout)
            // A connection is checked by the query it is taken for: a ping
            // on every checkout was a round trip per use. One that broke is
            // dropped on its return (`has_broken`) and its query's error
            // says the database is away.
            .test_on_check_out(false)
            .build(manager)?;
        Ok(Store {
            pool,
            backend,
            writes: Arc::default(),
            audit_checkpoint: None,
            audit_head: Arc::default(),
            wal,
            statements,
            pins: Arc::new(pins),
            unreachable: Arc::default(),
        })
    }

    /// This store, keeping the audit trail's head in `path` (created on the
    /// first append) and holding the trail to it when verified.
    pub fn with_audit_checkpoint(mut self, path: &std::path::Path) -> Result<Store> {
        self.audit_checkpoint = Some(Arc::new(AuditCheckpoint::open(path)?));
        Ok(self)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// This process's writes so far: how many, the commits they took
    /// (several writes share one under load: group commit), and the time
    /// spent in them.
    pub fn write_stats(&self) -> WriteStats {
        self.writes.stats()
    }

    /// Statements this store's connections sent to the database so far
    /// (each a round trip; on PostgreSQL a statement prepared for the first
    /// time on a connection counts twice).
    pub fn statements_sent(&self) -> u64 {
        self.statements.sent()
    }

    /// A consistent copy of a SQLite database into the new file `to`, taken
    /// in one read transaction while writes go on (`VACUUM INTO`). A
    /// PostgreSQL database is copied by its own tools (`pg_dump`): `None`.
    pub fn copy_sqlite_into(&self, to: &std::path::Path) -> Result<Option<()>> {
        use diesel::RunQueryDsl as _;
        if self.backend != Backend::Sqlite {
            return Ok(None);
        }
        let target = to.to_str().ok_or_else(|| StoreError::DatabaseFile {
            path: to.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path is not UTF-8"),
        })?;
        let mut conn = self.checkout()?;
        match &mut **conn {
            DbConnection::Sqlite(lite) => diesel::sql_query("VACUUM INTO ?")
                .bind::<diesel::sql_types::Text, _>(target)
                .execute(lite)?,
            DbConnection::Postgres(_) => return Ok(None),
        };
        Ok(Some(()))
    }

    /// Answers when the database does (for health checks).
    pub fn ping(&self) -> Result<()> {
        let mut conn = self.connection()?;
        conn.ping().map(drop).map_err(StoreError::Query)
    }

    /// A pooled connection known to be open. One that has not answered
    /// since another was found closed may be closed too (a restarted
    /// database closes them all): it is pinged first, and dropped if it was.
    fn connection(&self) -> Result<group::Pooled> {
        let mut dropped = 0;
        loop {
            let mut conn = self.checkout()?;
            let closings = self.statements.closings();
            if conn.known_open_at() == closings {
                return Ok(conn);
            }
            match conn.ping() {
                Ok(_) => {
                    conn.answered_at(closings);
                    return Ok(conn);
                }
                // Dropped on its return; the pool holds at most max_size.
                Err(_) if conn.is_closed() && dropped < self.pool.max_size() => dropped += 1,
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// A pooled connection: the pool's whole timeout while the database
    /// answers, a short wait once it has not (until it answers again).
    fn checkout(&self) -> Result<group::Pooled> {
        use std::sync::atomic::Ordering;
        let got = if self.unreachable.load(Ordering::Relaxed) {
            self.pool.get_timeout(WAIT_WHILE_UNREACHABLE)
        } else {
            self.pool.get()
        };
        // A pool whose every connection is busy timed out under load, not
        // because the database is away: only a pool that could not open
        // connections it was allowed marks the database unreachable.
        let state = self.pool.state();
        let away = got.is_err() && state.connections < self.pool.max_size();
        self.unreachable.store(away, Ordering::Relaxed);
        Ok(got?)
    }

    /// Runs `work` on a connection; once more on another if the database had
    /// closed the first under it (reads change nothing, so may run again).
    fn read<T>(&self, mut work: impl FnMut(&mut DbConnection) -> Result<T>) -> Result<T> {
        let mut conn = self.connection()?;
        match work(&mut conn) {
            Err(error) if error.is_closed_connection() => {
                drop(conn);
                let mut another = self.connection()?;
                work(&mut another)
            }
            done => done,
        }
    }

    /// Runs `work`'s reads in one snapshot: PostgreSQL's default isolation
    /// gives each statement its own, so counts and the rows they place could
    /// disagree. A read-only transaction, begun in one round trip.
    fn read_snapshot<T>(&self, mut work: impl FnMut(&mut DbConnection) -> Result<T>) -> Result<T> {
        self.read(|conn| {
            type Transactions = <DbConnection as diesel::Connection>::TransactionManager;
            match &mut *conn {
                DbConnection::Sqlite(lite) => AnsiTransactionManager::begin_transaction_sql(lite, "BEGIN")?,
                DbConnection::Postgres(pg) => AnsiTransactionManager::begin_transaction_sql(
                    pg,
                    "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
                )?,
            }
            let read = work(conn);
            // Nothing was written: a rollback ends it as well as a commit would.
            let ended = Transactions::rollback_transaction(conn);
            let value = read?;
            ended?;
            Ok(value)
        })
    }

    /// Runs `work` in one transaction, shared with the writes of this
    /// process that arrive with it, and returns once it committed to disk
    /// (see `write_with`).
    fn write<T>(&self, mut work: impl FnMut(&mut DbConnection) -> Result<T>) -> Result<T> {
        self.write_with(Durability::Synced, |conn, _| work(conn))
    }

    /// Runs `work` in one transaction, shared with the writes of this
    /// process that arrive with it (`group`: answered once the shared
    /// transaction committed, on disk if `durability` asks), with what it
    /// leaves to its batch (`Pending`: key-count changes, audit records).
    /// `work` may run again if the database chose it as a deadlock's victim.
    fn write_with<T>(
        &self,
        durability: Durability,
        work: impl FnMut(&mut DbConnection, &mut Pending) -> Result<T>,
    ) -> Result<T> {
        self.writes.write(self, durability, work)
    }
}

/// What follows a batch's commit: whether it must be synced, and the audit
/// trail's head as of the commit (for the checkpoint, once on disk).
pub(crate) struct Committed {
    synced: bool,
    /// Its number among SQLite's commits, which the log's syncs count.
    commit: Option<u64>,
    on_disk_head: Option<(i64, String)>,
}

impl Batches for Store {
    type Closed = Committed;

    /// On SQLite the transaction takes the write lock up front (`BEGIN
    /// IMMEDIATE`, waiting out the busy timeout): a deferred one that later
    /// writes gets SQLITE_BUSY at once when another connection, in this
    /// process or another, wrote meanwhile.
    fn open(&self) -> Result<Pooled> {
        let mut conn = self.connection()?;
        match &mut **conn {
            DbConnection::Sqlite(lite) => {
                AnsiTransactionManager::begin_transaction_sql(lite, "BEGIN IMMEDIATE")?
            }
            DbConnection::Postgres(pg) => AnsiTransactionManager::begin_transaction_sql(pg, "BEGIN")?,
        }
        Ok(conn)
    }

    /// Writes the batch's count changes, then its audit records (always in
    /// this order, so that instances take the rows in one order), and
    /// commits. SQLite's connections commit without syncing (`synchronous =
    /// NORMAL`): a synced batch then syncs the log itself, so that a batch of
    /// outcomes costs no wait for the disk.
    fn close(&self, conn: &mut DbConnection, pending: Pending, durability: Durability) -> Result<Committed> {
        // Read before any statement of the batch's close: a connection
        // opened after this is not one the head was checked on.
        let connections_opened = self.statements.connections_opened();
        let written = (|| {
            pending.counts.write(conn)?;
            let audit_head = if pending.audit.is_empty() {
                None
            } else {
                let key = self.pins.audit_key();
                let appended =
                    repo::audit::append_in(conn, key, &self.audit_head, connections_opened, &pending.audit);
                // A deadlock's victim runs again; any other failure ends the
                // batch, whose changes must not commit without their records.
                Some(appended.map_err(|error| match error {
                    retryable if retryable.is_retryable() => retryable,
                    other => StoreError::AuditUnwritten {
                        reason: error_chain(&other),
                    },
                })?)
            };
            // On PostgreSQL a batch of deferred writes only commits without
            // waiting for the disk. Said at the end, once the batch's writes
            // are known: said at its BEGIN, it had to be taken back by a
            // statement more whenever a synced write joined (nine batches
            // of ten begun deferred, at 8 clients).
            if let DbConnection::Postgres(pg) = &mut *conn {
                if durability == Durability::Deferred {
                    diesel::connection::SimpleConnection::batch_execute(
                        pg,
                        "SET LOCAL synchronous_commit TO off",
                    )?;
                }
            }
            Ok(audit_head)
        })();
        let audit_head = match written {
            Ok(head) => head,
            Err(error) => {
                group::rollback(conn);
                return Err(error);
            }
        };
        group::commit(conn)?;
        let commit = self.wal.as_ref().map(|wal| wal.committed());
        // The next batch chains to this head (it may begin before `closed`).
        let mut head = self.audit_head.lock();
        if let Some((seq, hash)) = &audit_head {
            *head = Some(repo::audit::KnownHead {
                seq: *seq,
                hash: hash.clone(),
                connections_opened,
            });
        }
        // A synced batch that appended records is on disk with everything
        // committed before it (on PostgreSQL a transaction that wrote nothing
        // flushes nothing): the checkpoint may move to them.
        let synced = durability == Durability::Synced;
        Ok(Committed {
            synced,
            commit,
            on_disk_head: audit_head.filter(|_| synced),
        })
    }

    /// Syncs a synced batch's commit (SQLite), then moves the audit
    /// checkpoint to the records it appended: only to records on disk (a
    /// deferred batch's are behind them), so that a power cut never leaves
    /// the checkpoint naming a record the database lost (which `verify`
    /// would call a truncation).
    fn closed(&self, committed: Committed) -> Result<()> {
        if !committed.synced {
            return Ok(());
        }
        if let (Some(wal), Some(commit)) = (&self.wal, committed.commit) {
            wal.sync_through(commit).map_err(|e| StoreError::AfterCommit {
                reason: format!("its log could not be synced to disk: {e}"),
            })?;
        }
        let Some((seq, hash)) = committed.on_disk_head else {
            return Ok(());
        };
        self.checkpoint_audit(seq, &hash)
            .map_err(|e| StoreError::AfterCommit {
                reason: format!("the audit checkpoint could not be moved: {e}"),
            })
    }
}

/// An error and its sources, for a reason kept as text (logged, never answered).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
