//! Databases for tests (feature `testing`): each test's own, on SQLite or
//! PostgreSQL (or on a PostgreSQL server of its own, to stop and start), and
//! what tests do to them past the `Store` API.
//!
//! Each test gets a database of its own, so tests run in parallel: a SQLite
//! file in a temporary directory, or a new database on the PostgreSQL server
//! named by `LUNA_TEST_POSTGRES` (default `postgres://postgres@127.0.0.1:5432`),
//! dropped when the test ends.
#![allow(clippy::expect_used)] // a harness that cannot start should fail loudly

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::Connection;
use uuid::Uuid;

use crate::{PinCipher, PoolOptions, Result, Store};

pub const DEFAULT_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";

#[derive(Debug)]
pub struct TestDatabase {
    pub store: Store,
    pub url: String,
    _scratch: ScratchDatabase,
}

/// A new, empty database of a test's own (no schema yet), dropped when this
/// is: for a test that opens it itself, or runs another version's server on it.
#[derive(Debug)]
pub struct ScratchDatabase {
    pub url: String,
    cleanup: Cleanup,
}

#[derive(Debug)]
enum Cleanup {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres { server: String, name: String },
}

fn test_cipher() -> PinCipher {
    PinCipher::from_key(&[0x42; 32])
}

fn small_pool() -> PoolOptions {
    PoolOptions {
        max_connections: 4,
        ..PoolOptions::default()
    }
}

impl Store {
    /// How every connection the pool holds commits, all taken at once (so
    /// each is a pooled connection of its own): SQLite's `PRAGMA
    /// synchronous` (2 is FULL), PostgreSQL's `synchronous_commit`.
    pub fn commit_durability_of_every_connection(&self) -> Result<Vec<String>> {
        use diesel::RunQueryDsl as _;
        #[derive(diesel::QueryableByName)]
        struct Setting {
            #[diesel(sql_type = diesel::sql_types::Text)]
            value: String,
        }
        let mut held = Vec::new();
        for _ in 0..self.pool.max_size() {
            held.push(self.pool.get()?);
        }
        let mut settings = Vec::new();
        for conn in &mut held {
            let setting: Setting = match &mut ***conn {
                crate::db::DbConnection::Sqlite(lite) => {
                    diesel::sql_query("SELECT CAST(synchronous AS TEXT) AS value FROM pragma_synchronous")
                        .get_result(lite)?
                }
                crate::db::DbConnection::Postgres(pg) => {
                    diesel::sql_query("SELECT current_setting('synchronous_commit') AS value")
                        .get_result(pg)?
                }
            };
            settings.push(setting.value);
        }
        Ok(settings)
    }
}

/// One row of a count table: its key as text, and its count.
#[derive(diesel::QueryableByName, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct CountRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    what: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// The counts made again from the keys, as migration 14 makes them.
const RECOUNTED: &str = "\
    SELECT 'total ' || partition_id || ' ' || status AS what, COUNT(*) AS n FROM keys GROUP BY partition_id, status \
    UNION ALL SELECT 'bucket ' || field || ' ' || level || ' ' || bucket || ' ' || partition_id || ' ' || status, \
        SUM(n) FROM ( \
        SELECT 0 AS field, 0 AS level, created_at >> 20 AS bucket, partition_id, status, 1 AS n FROM keys \
        UNION ALL SELECT 0, 1, created_at >> 28, partition_id, status, 1 FROM keys \
        UNION ALL SELECT 0, 2, created_at >> 36, partition_id, status, 1 FROM keys \
        UNION ALL SELECT 1, 0, updated_at >> 20, partition_id, status, 1 FROM keys \
        UNION ALL SELECT 1, 1, updated_at >> 28, partition_id, status, 1 FROM keys \
        UNION ALL SELECT 1, 2, updated_at >> 36, partition_id, status, 1 FROM keys) AS each_key \
        GROUP BY field, level, bucket, partition_id, status";

/// The count tables as stored: `key_counts` without its zero rows (it keeps
/// them), `key_time_counts` whole (it must keep none).
const STORED: &str = "\
    SELECT 'total ' || partition_id || ' ' || status AS what, n FROM key_counts WHERE n <> 0 \
    UNION ALL SELECT 'bucket ' || field || ' ' || level || ' ' || bucket || ' ' || partition_id || ' ' || status, n \
        FROM key_time_counts";

impl Store {
    /// Runs `work`, and the text of every statement this store's
    /// connections sent meanwhile (other threads' too).
    pub fn record_statements<T>(&self, work: impl FnOnce() -> T) -> (T, Vec<String>) {
        *self.statements.recorded.lock() = Some(Vec::new());
        let value = work();
        let texts = self.statements.recorded.lock().take().unwrap_or_default();
        (value, texts)
    }

    /// A write whose work panics midway, as a bug would make one: the
    /// panic reaches the caller; the group commit must go on for the rest.
    pub fn write_that_panics(&self) {
        let _: Result<()> = self.write(|conn| {
            use diesel::RunQueryDsl as _;
            diesel::sql_query("DELETE FROM schedules").execute(conn)?;
            panic!("a write's work panicked");
        });
    }

    /// How the stored key counts differ from the counts made again from the
    /// keys: one line per row that differs (none: they are exact).
    pub fn count_drift(&self) -> Result<Vec<String>> {
        use diesel::RunQueryDsl as _;
        let (mut recounted, mut stored) = self.read(|conn| {
            Ok(crate::db::per_backend!(conn, |c| (
                diesel::sql_query(RECOUNTED).load::<CountRow>(c)?,
                diesel::sql_query(STORED).load::<CountRow>(c)?,
            )))
        })?;
        recounted.sort();
        stored.sort();
        let recounted: std::collections::BTreeMap<_, _> =
            recounted.into_iter().map(|r| (r.what, r.n)).collect();
        let stored: std::collections::BTreeMap<_, _> = stored.into_iter().map(|r| (r.what, r.n)).collect();
        Ok(recounted
            .keys()
            .chain(stored.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .filter(|row| recounted.get(*row) != stored.get(*row))
            .map(|row| {
                format!(
                    "{row}: stored {:?}, counted {:?}",
                    stored.get(row),
                    recounted.get(row)
                )
            })
            .collect())
    }
}

/// Runs `sql` on the database at `url` over a connection of its own (a
/// trigger a test installs, say).
pub fn run_sql(url: &str, sql: &str) -> Result<()> {
    use diesel::connection::SimpleConnection as _;
    use diesel::Connection as _;
    match url.strip_prefix("sqlite://") {
        Some(path) => diesel::SqliteConnection::establish(path)?.batch_execute(sql)?,
        None => diesel::PgConnection::establish(url)?.batch_execute(sql)?,
    }
    Ok(())
}

/// The text column `value` of every row `sql` selects on the database at
/// `url` (`SELECT id AS value FROM operations`, say).
pub fn select_texts(url: &str, sql: &str) -> Result<Vec<String>> {
    use diesel::Connection as _;
    use diesel::RunQueryDsl as _;
    #[derive(diesel::QueryableByName)]
    struct Text {
        #[diesel(sql_type = diesel::sql_types::Text)]
        value: String,
    }
    let rows: Vec<Text> = match url.strip_prefix("sqlite://") {
        Some(path) => diesel::sql_query(sql).load(&mut diesel::SqliteConnection::establish(path)?)?,
        None => diesel::sql_query(sql).load(&mut diesel::PgConnection::establish(url)?)?,
    };
    Ok(rows.into_iter().map(|row| row.value).collect())
}

/// The audit record of a change a test makes (as a request's would be).
pub fn test_audit() -> crate::AuditEntry {
    crate::AuditEntry {
        at: crate::now(),
        user_id: "00000000-0000-0000-0000-000000000001".into(),
        username: "tester".into(),
        action: "POST /test".into(),
        resource_type: "test".into(),
        resource_id: String::new(),
        outcome: "200".into(),
        request_id: "test-request".into(),
        source: "127.0.0.1".into(),
        instance: "test-instance".into(),
    }
}

/// `INSERT`s of a trail of `n` records as versions before migration 15
/// wrote them (format 2, columns `target` and `client`), chained under the
/// tests' PIN key: what a database upgraded by migration 15 holds.
pub fn format_2_trail(n: i64) -> Vec<String> {
    let key = *test_cipher().audit_key();
    let mut previous = "0".repeat(64);
    (1..=n)
        .map(|seq| {
            let entry = crate::AuditEntry {
                username: "admin".into(),
                action: "POST /api/v1/cckm/hsm/luna/keys".into(),
                resource_id: format!("key-{seq}"),
                outcome: "201".into(),
                request_id: format!("request-{seq}"),
                source: "127.0.0.1".into(),
                ..test_audit()
            };
            let at = 1_765_000_000_000_000 + seq;
            let hash = crate::repo::audit::chain_hash(&key, &previous, seq, at, crate::repo::audit::Format::V2, &entry);
            let sql = format!(
                "INSERT INTO audit_records (seq, at, username, action, target, outcome, request_id, client, previous_hash, hash) \
                 VALUES ({seq}, {at}, '{}', '{}', '{}', '{}', '{}', '{}', '{previous}', '{hash}')",
                entry.username, entry.action, entry.resource_id, entry.outcome, entry.request_id, entry.source
            );
            previous = hash;
            sql
        })
        .collect()
}

/// A store on `url` with the tests' PIN key (a copy of a test's database, say).
pub fn open_store(url: &str) -> Result<Store> {
    Store::open(url, test_cipher(), small_pool())
}

impl TestDatabase {
    /// Another store on the same database, as a second server instance has.
    pub fn second_store(&self) -> Result<Store> {
        open_store(&self.url)
    }

    pub fn sqlite() -> Result<TestDatabase> {
        TestDatabase::opened(ScratchDatabase::sqlite()?)
    }

    pub fn postgres() -> Result<TestDatabase> {
        TestDatabase::opened(ScratchDatabase::postgres()?)
    }

    fn opened(scratch: ScratchDatabase) -> Result<TestDatabase> {
        Ok(TestDatabase {
            store: Store::open(&scratch.url, test_cipher(), small_pool())?,
            url: scratch.url.clone(),
            _scratch: scratch,
        })
    }
}

impl ScratchDatabase {
    /// A file in a new temporary directory.
    pub fn sqlite() -> Result<ScratchDatabase> {
        let dir = tempfile::tempdir().map_err(|source| crate::StoreError::KeyFile {
            path: std::env::temp_dir(),
            source,
        })?;
        Ok(ScratchDatabase {
            url: format!("sqlite://{}", dir.path().join("luna.db").display()),
            cleanup: Cleanup::Sqlite(dir),
        })
    }

    /// A new database on the server `LUNA_TEST_POSTGRES` names.
    pub fn postgres() -> Result<ScratchDatabase> {
        let server = std::env::var("LUNA_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_POSTGRES.into());
        let name = format!("luna_test_{}", Uuid::new_v4().simple());
        let mut admin = PgConnection::establish(&format!("{server}/postgres"))?;
        admin.batch_execute(&format!("CREATE DATABASE {name}"))?;
        Ok(ScratchDatabase {
            url: format!("{server}/{name}"),
            cleanup: Cleanup::Postgres { server, name },
        })
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        if let Cleanup::Postgres { server, name } = &self.cleanup {
            // FORCE ends the pool's connections; a failure only leaves a stray database.
            if let Ok(mut admin) = PgConnection::establish(&format!("{server}/postgres")) {
                let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
            }
        }
    }
}

/// A PostgreSQL server of a test's own, in a temporary directory on a free
/// port, that the test may stop and start (the machine's shared server must
/// stay up for the other tests). Run as the `postgres` user when the tests
/// run as root, since PostgreSQL refuses root.
#[derive(Debug)]
pub struct PrivatePostgres {
    pub url: String,
    data: tempfile::TempDir,
    bin: std::path::PathBuf,
    port: u16,
}

impl PrivatePostgres {
    /// initdb, start, and a database `luna`.
    pub fn start() -> PrivatePostgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's server binaries under /usr/lib/postgresql")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|bin| bin.join("pg_ctl").is_file())
            .max()
            .expect("pg_ctl");
        let data = tempfile::Builder::new()
            .prefix("luna-private-pg-")
            .tempdir()
            .expect("a directory for the private PostgreSQL");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let server = PrivatePostgres {
            url: format!("postgres://postgres@127.0.0.1:{port}/luna"),
            data,
            bin,
            port,
        };
        let _ = std::process::Command::new("chown")
            .args(["postgres:postgres"])
            .arg(server.data.path())
            .status();
        server.run("initdb", &["-A", "trust", "-U", "postgres", "-D", &server.dir()]);
        server.start_again();
        server.run(
            "createdb",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "postgres",
                "luna",
            ],
        );
        server
    }

    fn dir(&self) -> String {
        self.data.path().join("cluster").display().to_string()
    }

    /// Starts it (again), waiting until it accepts connections.
    pub fn start_again(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.data.path().display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.dir(),
                "-o",
                &options,
                "-w",
                "-l",
                "/dev/null",
                "start",
            ],
        );
    }

    /// Stops it at once (`-m immediate`, as a crash or a pulled cable would).
    pub fn stop(&self) {
        self.run("pg_ctl", &["-D", &self.dir(), "-m", "immediate", "-w", "stop"]);
    }

    /// One of PostgreSQL's tools, as the `postgres` user when this is root.
    fn command(&self, tool: &str, args: &[&str]) -> std::process::Command {
        let program = self.bin.join(tool);
        let as_root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        let mut command = if as_root {
            let mut runuser = std::process::Command::new("runuser");
            runuser.args(["-u", "postgres", "--"]).arg(program);
            runuser
        } else {
            std::process::Command::new(program)
        };
        command.args(args).stdout(std::process::Stdio::null());
        command
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let status = self.command(tool, args).status();
        assert!(status.is_ok_and(|s| s.success()), "{tool} {args:?} failed");
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl", &["-D", &self.dir(), "-m", "immediate", "stop"])
            .output();
    }
}

/// What PostgreSQL's statistics say of a database's contention, for benchmarks.
#[derive(Debug)]
pub struct PostgresActivity;

impl PostgresActivity {
    /// Deadlocks the server detected in the database at `url` so far.
    pub fn deadlocks(url: &str) -> i64 {
        use diesel::RunQueryDsl as _;
        #[derive(diesel::QueryableByName)]
        struct Deadlocks {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            deadlocks: i64,
        }
        let mut conn = PgConnection::establish(url).expect("connect to the benchmark's database");
        diesel::sql_query("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
            .get_result::<Deadlocks>(&mut conn)
            .expect("pg_stat_database")
            .deadlocks
    }

    /// Samples `pg_stat_activity` every 10 ms while `running`: (samples in
    /// which a session of the database waited on a lock, samples).
    pub fn sample_lock_waits(url: &str, running: &std::sync::atomic::AtomicBool) -> (usize, usize) {
        use diesel::RunQueryDsl as _;
        #[derive(diesel::QueryableByName)]
        struct Waiting {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            waiting: i64,
        }
        let mut conn = PgConnection::establish(url).expect("connect to the benchmark's database");
        let (mut waited, mut samples) = (0, 0);
        while running.load(std::sync::atomic::Ordering::Relaxed) {
            let now: Waiting = diesel::sql_query(
                "SELECT count(*) AS waiting FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .get_result(&mut conn)
            .expect("pg_stat_activity");
            samples += 1;
            waited += usize::from(now.waiting > 0);
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        (waited, samples)
    }
}
