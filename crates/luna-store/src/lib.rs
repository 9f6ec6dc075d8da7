//! Storage for luna-cckm: Diesel on SQLite (embedded default) or PostgreSQL
//! (deployments, several instances on one database), one codebase for both.
//!
//! Invariants: the backend is chosen from the URL alone; each backend has its
//! own embedded migrations, run at open; repositories return
//! `Result<Option<T>>` for lookups and do filtering, sorting and paging in
//! SQL; every multi-row change is one transaction; a PIN is stored only
//! sealed (see [`PinCipher`]).

mod codec;
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
pub use pin::{load_or_create_key_file, PinCipher};
pub use repo::audit::{AuditCheck, AuditCheckpoint, AuditEntry, AuditRecord};
pub use repo::operations::PartitionRoom;
pub use repo::partitions::ConnectionChange;
pub use repo::users::{NewUser, StoredUser, UserChange};

use db::{ConnectionManager, DbConnection};

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
        let manager = ConnectionManager::new(backend, target);
        // Migrate on one connection before the pool opens more.
        db::run_migrations(&mut manager.connect()?)?;
        let pool = diesel::r2d2::Pool::builder()
            .max_size(options.max_connections)
            .connection_timeout(options.connect_timeout)
            .build(manager)?;
        Ok(Store {
            pool,
            backend,
            writes: Arc::default(),
            audit_checkpoint: None,
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

    /// Writes committed by this process so far, and how many commits they
    /// took (several writes share one under load: group commit).
    pub fn write_counts(&self) -> (u64, u64) {
        self.writes.counts()
    }

    /// Answers when the database does (for health checks).
    pub fn ping(&self) -> Result<()> {
        let mut conn = self.connection()?;
        conn.ping().map(drop).map_err(StoreError::Query)
    }

    /// A pooled connection: the pool's whole timeout while the database
    /// answers, a short wait once it has not (until it answers again).
    fn connection(&self) -> Result<diesel::r2d2::PooledConnection<ConnectionManager>> {
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

    fn read<T>(&self, work: impl FnOnce(&mut DbConnection) -> Result<T>) -> Result<T> {
        let mut conn = self.connection()?;
        work(&mut conn)
    }

    /// Runs `work`'s reads in one snapshot: PostgreSQL's default isolation
    /// gives each statement its own, so counts and the rows they place could
    /// disagree. A read-only transaction, begun in one round trip.
    fn read_snapshot<T>(&self, work: impl FnOnce(&mut DbConnection) -> Result<T>) -> Result<T> {
        type Transactions = <DbConnection as diesel::Connection>::TransactionManager;
        let mut pooled = self.connection()?;
        let conn: &mut DbConnection = &mut pooled;
        match conn {
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
    }

    /// Runs `work` in one transaction, shared with the writes of this
    /// process that arrive with it (`group`: each in a savepoint, answered
    /// once the shared transaction committed). On SQLite the transaction
    /// takes the write lock up front (`BEGIN IMMEDIATE`, waiting out the busy
    /// timeout): a deferred one that later writes gets SQLITE_BUSY at once
    /// when another connection, in this process or another, wrote meanwhile.
    fn write<T>(&self, work: impl FnOnce(&mut DbConnection) -> Result<T>) -> Result<T> {
        type Transactions = <DbConnection as diesel::Connection>::TransactionManager;
        self.writes.write(
            || self.connection(),
            |conn| {
                match conn {
                    DbConnection::Sqlite(lite) => {
                        AnsiTransactionManager::begin_transaction_sql(lite, "BEGIN IMMEDIATE")?
                    }
                    DbConnection::Postgres(_) => Transactions::begin_transaction(conn)?,
                }
                Ok(())
            },
            work,
        )
    }
}
