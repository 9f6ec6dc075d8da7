//! Each test gets a database of its own, so tests run in parallel: a SQLite
//! file in a temporary directory, or a new database on the PostgreSQL server
//! named by `LUNA_TEST_POSTGRES` (default `postgres://postgres@127.0.0.1:5432`),
//! dropped when the test ends.

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

impl TestDatabase {
    /// Another store on the same database, as a second server instance has.
    pub fn second_store(&self) -> Result<Store> {
        Store::open(&self.url, test_cipher(), small_pool())
    }

    pub fn sqlite() -> Result<TestDatabase> {
        let dir = tempfile::tempdir().map_err(|source| crate::StoreError::KeyFile {
            path: std::env::temp_dir(),
            source,
        })?;
        let url = format!("sqlite://{}", dir.path().join("luna.db").display());
        Ok(TestDatabase {
            store: Store::open(&url, test_cipher(), small_pool())?,
            url,
            cleanup: Cleanup::Sqlite(dir),
        })
    }

    pub fn postgres() -> Result<TestDatabase> {
        let server = std::env::var("LUNA_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_POSTGRES.into());
        let name = format!("luna_test_{}", Uuid::new_v4().simple());
        let mut admin = PgConnection::establish(&format!("{server}/postgres"))?;
        admin.batch_execute(&format!("CREATE DATABASE {name}"))?;
        let url = format!("{server}/{name}");
        Ok(TestDatabase {
            store: Store::open(&url, test_cipher(), small_pool())?,
            url,
            cleanup: Cleanup::Postgres { server, name },
        })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Cleanup::Postgres { server, name } = &self.cleanup {
            // FORCE ends the pool's connections; a failure only leaves a stray database.
            if let Ok(mut admin) = PgConnection::establish(&format!("{server}/postgres")) {
                let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
            }
        }
    }
}
