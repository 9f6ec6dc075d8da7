//! One Diesel codebase for SQLite and PostgreSQL: the backend is picked from
//! the URL, each backend has its own embedded migrations.

use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::r2d2::R2D2Connection;
use diesel::sqlite::SqliteConnection;
use diesel::Connection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use crate::error::{Result, StoreError};

/// A connection to whichever backend the URL named.
#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    Sqlite(SqliteConnection),
    Postgres(PgConnection),
}

/// Runs the same Diesel statement on the concrete connection, for the few
/// statements `MultiBackend` cannot express (multi-row INSERT, row locks).
macro_rules! per_backend {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            $crate::db::DbConnection::Sqlite($c) => $body,
            $crate::db::DbConnection::Postgres($c) => $body,
        }
    };
}

pub(crate) use per_backend;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/postgres");

/// A random constant naming the advisory lock that serialises migrations when
/// several server instances start against one PostgreSQL database at once.
const MIGRATION_LOCK: i64 = 0x6c75_6e61_6d69_6772;

/// `sqlite://PATH` (or `sqlite:PATH`) and `postgres://…`/`postgresql://…`.
pub fn parse_url(url: &str) -> Result<(Backend, String)> {
    if let Some(path) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        if path.is_empty() || path.contains(":memory:") {
            // Each pooled connection would get its own empty in-memory database.
            return Err(StoreError::UnsupportedUrl);
        }
        return Ok((Backend::Sqlite, path.to_owned()));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok((Backend::Postgres, url.to_owned()));
    }
    Err(StoreError::UnsupportedUrl)
}

/// Creates a new SQLite database file readable and writable by its owner
/// only, before SQLite opens it: SQLite gives its `-wal` and `-shm` files the
/// database file's mode, and would otherwise make all three world-readable
/// (0644 under the usual umask). An existing file is left as it is.
pub fn create_private_file(target: &str) -> Result<()> {
    if target == ":memory:" || target.starts_with("file:") {
        return Ok(());
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(target) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(StoreError::DatabaseFile {
            path: target.into(),
            source,
        }),
    }
}

/// Opens connections of the URL's backend (the derived `establish` would try
/// every backend in turn, and SQLite accepts any string as a file name).
#[derive(Debug)]
pub struct ConnectionManager {
    backend: Backend,
    target: String,
}

impl ConnectionManager {
    pub fn new(backend: Backend, target: String) -> Self {
        ConnectionManager { backend, target }
    }

    pub fn connect(&self) -> Result<DbConnection> {
        Ok(match self.backend {
            Backend::Sqlite => {
                let mut conn = SqliteConnection::establish(&self.target)?;
                // WAL lets readers run beside the writer; FULL syncs the log at
                // every commit, so an answered write survives a power cut (NORMAL
                // survives a crash only; group commit makes the sync cheap); the
                // busy timeout covers another process (a CLI, a backup) holding
                // the write lock briefly.
                conn.batch_execute(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                     PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;",
                )?;
                DbConnection::Sqlite(conn)
            }
            Backend::Postgres => DbConnection::Postgres(PgConnection::establish(&self.target)?),
        })
    }
}

impl diesel::r2d2::ManageConnection for ConnectionManager {
    type Connection = DbConnection;
    type Error = StoreError;

    fn connect(&self) -> Result<DbConnection> {
        ConnectionManager::connect(self)
    }

    fn is_valid(&self, conn: &mut DbConnection) -> Result<()> {
        conn.ping().map_err(StoreError::Query)
    }

    fn has_broken(&self, conn: &mut DbConnection) -> bool {
        conn.is_broken()
    }
}

pub fn run_migrations(conn: &mut DbConnection) -> Result<()> {
    match conn {
        DbConnection::Sqlite(lite) => {
            lite.run_pending_migrations(SQLITE_MIGRATIONS)
                .map_err(StoreError::Migration)?;
        }
        DbConnection::Postgres(pg) => {
            pg.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))?;
            let outcome = pg.run_pending_migrations(POSTGRES_MIGRATIONS).map(drop);
            pg.batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"))?;
            outcome.map_err(StoreError::Migration)?;
        }
    }
    Ok(())
}

/// Pool settings. SQLite has one writer at a time whatever the pool size.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    pub max_connections: u32,
    pub connect_timeout: Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            max_connections: 8,
            // While the database is away a request waits this long for a
            // connection, then answers 503: a few seconds, not ten.
            connect_timeout: Duration::from_secs(2),
        }
    }
}
