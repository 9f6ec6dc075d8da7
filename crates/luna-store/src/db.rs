//! One Diesel codebase for SQLite and PostgreSQL: the backend is picked from
//! the URL, each backend has its own embedded migrations.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use diesel::connection::InstrumentationEvent;
use diesel::RunQueryDsl as _;

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
/// every backend in turn, and SQLite accepts any string as a file name), and
/// counts the statements they send.
#[derive(Debug)]
pub struct ConnectionManager {
    backend: Backend,
    target: String,
    statements: Arc<StatementLog>,
}

/// The statements a store's connections sent: how many, and (for tests)
/// their text while a test records them.
#[derive(Debug, Default)]
pub struct StatementLog {
    sent: AtomicU64,
    /// Connections opened so far.
    opened: AtomicU64,
    /// Connections found closed by the database so far.
    closings: AtomicU64,
    #[cfg(feature = "testing")]
    pub(crate) recorded: parking_lot::Mutex<Option<Vec<String>>>,
}

impl StatementLog {
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Connections opened so far: a new one may reach a database that is
    /// not the one the last connections saw (restarted, failed over).
    pub fn connections_opened(&self) -> u64 {
        self.opened.load(Ordering::SeqCst)
    }

    /// Connections found closed by the database so far: when this moves,
    /// the others may be closed too (a restart closes them all).
    pub fn closings(&self) -> u64 {
        self.closings.load(Ordering::SeqCst)
    }

    fn note(&self, query: &dyn std::fmt::Display) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "testing")]
        if let Some(texts) = self.recorded.lock().as_mut() {
            let text = query.to_string();
            // A statement's text, without the binds diesel's display adds.
            texts.push(text.split(" -- binds:").next().unwrap_or_default().to_owned());
        }
        #[cfg(not(feature = "testing"))]
        let _ = query;
    }
}

impl ConnectionManager {
    pub fn new(backend: Backend, target: String, statements: Arc<StatementLog>) -> Self {
        ConnectionManager {
            backend,
            target,
            statements,
        }
    }

    pub fn connect(&self) -> Result<PooledDb> {
        self.statements.opened.fetch_add(1, Ordering::SeqCst);
        let closed = Arc::new(AtomicBool::new(false));
        let known_open_at = self.statements.closings();
        let conn = match self.backend {
            Backend::Sqlite => {
                let mut conn = SqliteConnection::establish(&self.target)?;
                // WAL lets readers run beside the writer. NORMAL does not sync
                // the log at each commit: the group commit syncs it itself
                // after each commit that must be on disk (`WalFile`), and
                // leaves the others (operations' outcomes) to the next sync or
                // checkpoint. The busy timeout covers another process (a CLI,
                // a backup) holding the write lock briefly.
                conn.batch_execute(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                     PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;",
                )?;
                conn.set_instrumentation(self.watch(&closed, false));
                DbConnection::Sqlite(conn)
            }
            Backend::Postgres => {
                let mut conn = PgConnection::establish(&self.target)?;
                conn.set_instrumentation(self.watch(&closed, true));
                DbConnection::Postgres(conn)
            }
        };
        Ok(PooledDb {
            conn,
            closed,
            known_open_at,
        })
    }

    /// What a connection reports of each statement: that it was sent (and,
    /// if `prepares_are_sent`, that it was prepared: PostgreSQL's first
    /// preparation of a statement is a round trip of its own, SQLite's is
    /// not), and that the database closed the connection under it.
    fn watch(
        &self,
        closed: &Arc<AtomicBool>,
        prepares_are_sent: bool,
    ) -> impl FnMut(InstrumentationEvent<'_>) + Send + 'static {
        let log = Arc::clone(&self.statements);
        let closed = Arc::clone(closed);
        move |event: InstrumentationEvent<'_>| match event {
            InstrumentationEvent::StartQuery { query, .. } => log.note(query),
            InstrumentationEvent::CacheQuery { sql, .. } if prepares_are_sent => log.note(&sql),
            InstrumentationEvent::FinishQuery {
                error: Some(error), ..
            } if crate::error::is_closed_connection(error) && !closed.swap(true, Ordering::SeqCst) => {
                log.closings.fetch_add(1, Ordering::SeqCst);
            }
            _ => {}
        }
    }
}

/// A pooled connection, and whether the database closed it under a
/// statement. Diesel counts a connection broken only when it was left in a
/// transaction, so one whose server went away between transactions would
/// go back to the pool and fail every statement after the database came
/// back; this one is dropped on its return instead (`has_broken`).
pub struct PooledDb {
    conn: DbConnection,
    closed: Arc<AtomicBool>,
    /// `StatementLog::closings` when this connection was last known open.
    known_open_at: u64,
}

impl PooledDb {
    /// Whether the database closed this connection under a statement.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// `StatementLog::closings` when this connection was last known open:
    /// if connections were found closed since, this one may be too.
    pub fn known_open_at(&self) -> u64 {
        self.known_open_at
    }

    /// Records that the connection answered when `closings` connections had
    /// been found closed.
    pub fn answered_at(&mut self, closings: u64) {
        self.known_open_at = closings;
    }
}

impl std::ops::Deref for PooledDb {
    type Target = DbConnection;
    fn deref(&self) -> &DbConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for PooledDb {
    fn deref_mut(&mut self) -> &mut DbConnection {
        &mut self.conn
    }
}

/// SQLite's write-ahead log, which a commit that must be on disk syncs
/// (the connections commit with `synchronous = NORMAL`). Opened by path at
/// each sync: SQLite deletes the log when its last connection closes and
/// makes a new one, and a handle kept open would sync the old one. The
/// directory is synced too the first time a log file is seen, so that its
/// name survives a power cut (what SQLite's own first sync of a new log does).
/// One sync at a time, covering every commit made before it began: a commit
/// that one covered needs none of its own.
#[derive(Debug)]
pub struct WalFile {
    path: PathBuf,
    dir: PathBuf,
    /// Commits made so far (each numbered as it is made).
    committed: AtomicU64,
    /// What the syncs did; held while a sync runs.
    synced: parking_lot::Mutex<Synced>,
}

#[derive(Debug, Default)]
struct Synced {
    /// Commits on disk so far.
    through: u64,
    /// The log file last synced with its directory (inode and creation
    /// time: a new log may get a deleted one's inode number).
    file: Option<(u64, Option<std::time::SystemTime>)>,
    /// A sync failed: Linux may have dropped the pages it could not write,
    /// so no later sync can say what is on disk (as PostgreSQL, the store
    /// stops promising: every synced write fails until a restart).
    failed: bool,
}

impl WalFile {
    /// The log of the SQLite database `conn` is open on (none on PostgreSQL,
    /// or for a database with no file).
    pub fn of(conn: &mut DbConnection) -> Result<Option<WalFile>> {
        #[derive(diesel::QueryableByName)]
        struct File {
            #[diesel(sql_type = diesel::sql_types::Text)]
            file: String,
        }
        let DbConnection::Sqlite(lite) = conn else {
            return Ok(None);
        };
        let main: File = diesel::sql_query("SELECT file FROM pragma_database_list WHERE name = 'main'")
            .get_result(lite)?;
        if main.file.is_empty() {
            return Ok(None);
        }
        let path = PathBuf::from(format!("{}-wal", main.file));
        let dir = path
            .parent()
            .map_or_else(|| PathBuf::from("."), std::path::Path::to_path_buf);
        Ok(Some(WalFile {
            path,
            dir,
            committed: AtomicU64::new(0),
            synced: parking_lot::Mutex::default(),
        }))
    }

    /// Numbers a commit just made (in the batches' turn): what `sync_through` takes.
    pub fn committed(&self) -> u64 {
        self.committed.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Returns once commit `commit` (a number from `committed`) is on disk:
    /// at once if a sync that began after it was made has ended, else after
    /// a sync of everything the log holds.
    pub fn sync_through(&self, commit: u64) -> std::io::Result<()> {
        use std::os::unix::fs::MetadataExt as _;
        let mut synced = self.synced.lock();
        if synced.failed {
            return Err(std::io::Error::other(
                "an earlier sync of the database's log failed; restart the server",
            ));
        }
        if synced.through >= commit {
            return Ok(());
        }
        let through = self.committed.load(Ordering::SeqCst);
        let log = match std::fs::File::open(&self.path) {
            Ok(log) => log,
            // SQLite removes the log once its last connection closed and a
            // checkpoint had copied it into the database, synced.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                synced.through = through;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let written = log.sync_data().and_then(|()| {
            let meta = log.metadata()?;
            let file = (meta.ino(), meta.created().ok());
            if synced.file != Some(file) {
                std::fs::File::open(&self.dir)?.sync_all()?;
                synced.file = Some(file);
            }
            Ok(())
        });
        match written {
            Ok(()) => synced.through = through,
            Err(_) => synced.failed = true,
        }
        written
    }
}

impl diesel::r2d2::ManageConnection for ConnectionManager {
    type Connection = PooledDb;
    type Error = StoreError;

    fn connect(&self) -> Result<PooledDb> {
        ConnectionManager::connect(self)
    }

    fn is_valid(&self, conn: &mut PooledDb) -> Result<()> {
        conn.ping().map_err(StoreError::Query)
    }

    fn has_broken(&self, conn: &mut PooledDb) -> bool {
        conn.is_closed() || conn.is_broken()
    }
}

/// Brings the schema up to date, then refuses a database that a newer
/// luna-server migrated: an instance on a schema it does not know would
/// fail requests on columns it lacks and skip the rules the newer one keeps
/// (an older instance kept honouring revoked sessions so).
pub fn run_migrations(conn: &mut DbConnection) -> Result<()> {
    match conn {
        DbConnection::Sqlite(lite) => {
            lite.run_pending_migrations(SQLITE_MIGRATIONS)
                .map_err(StoreError::Migration)?;
            refuse_newer_schema(lite, &SQLITE_MIGRATIONS)?;
        }
        DbConnection::Postgres(pg) => {
            pg.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))?;
            let outcome = pg
                .run_pending_migrations(POSTGRES_MIGRATIONS)
                .map(drop)
                .map_err(StoreError::Migration)
                .and_then(|()| refuse_newer_schema(pg, &POSTGRES_MIGRATIONS));
            // The migration's own error first: an unlock after a failed
            // statement may fail too (the connection, closed, drops the lock).
            let unlocked = pg.batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"));
            outcome?;
            unlocked?;
        }
    }
    Ok(())
}

/// `StoreError::NewerSchema` if the database holds a migration this build
/// does not know.
fn refuse_newer_schema<DB: diesel::backend::Backend>(
    conn: &mut impl MigrationHarness<DB>,
    known: &EmbeddedMigrations,
) -> Result<()>
where
    EmbeddedMigrations: diesel::migration::MigrationSource<DB>,
{
    let known: Vec<String> = diesel::migration::MigrationSource::<DB>::migrations(known)
        .map_err(StoreError::Migration)?
        .iter()
        .map(|migration| migration.name().version().to_string())
        .collect();
    let newest_unknown = conn
        .applied_migrations()
        .map_err(StoreError::Migration)?
        .iter()
        .map(ToString::to_string)
        .filter(|version| !known.contains(version))
        .max();
    match newest_unknown {
        Some(database) => Err(StoreError::NewerSchema {
            database,
            known: known.into_iter().max().unwrap_or_default(),
        }),
        None => Ok(()),
    }
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
