//! A database as the release at 5037f1d left it (its schema: the first six
//! migrations), opened by this build: migrated, every record it held still
//! there, its connection PINs still opened by its `pin.key`, and its audit
//! chain intact, on SQLite and on PostgreSQL. The fixture is
//! testdata/upgrade/5037f1d, made by its make.sh with that release's binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::PathBuf;

use diesel::connection::SimpleConnection as _;
use diesel::Connection as _;
use luna_domain::{JobStatus, KeyStatus};
use luna_store::testing::ScratchDatabase;
use luna_store::{AuditCheck, PinCipher, PoolOptions, Store};
use uuid::Uuid;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/upgrade/5037f1d")
}

/// What the old release made, by name (make.sh wrote them).
fn made(backend: &str) -> HashMap<String, Uuid> {
    std::fs::read_to_string(fixture().join(format!("{backend}.ids")))
        .unwrap()
        .lines()
        .map(|line| {
            let (name, id) = line.split_once(' ').unwrap();
            (name.to_owned(), Uuid::parse_str(id).unwrap())
        })
        .collect()
}

fn pins(backend: &str) -> PinCipher {
    let key = std::fs::read(fixture().join(backend).join("pin.key")).unwrap();
    PinCipher::from_key(&key.try_into().expect("a 32-byte pin.key"))
}

fn everything_came_through(store: &Store, made: &HashMap<String, Uuid>) {
    store.check_pin_key().expect("the old pin.key opens the old PINs");
    let partition = store
        .get_partition(made["partition"])
        .unwrap()
        .expect("the partition");
    assert!(!partition.members.is_empty());
    let aes = store.get_key(made["aes"]).unwrap().expect("the AES key");
    assert_eq!(aes.lifecycle().status(), KeyStatus::Available, "{aes:?}");
    let private = store.get_key(made["rsa"]).unwrap().expect("the RSA private key");
    let public = store
        .get_key(private.link_id.expect("a pair"))
        .unwrap()
        .expect("its public half");
    assert_eq!(public.link_id, Some(private.id));
    for half in [&private, &public] {
        assert_eq!(half.lifecycle().status(), KeyStatus::Available, "{half:?}");
    }
    for user in ["admin", "operator"] {
        assert!(store.user_by_name(user).unwrap().is_some(), "user {user}");
    }
    let job = store.get_job(made["job"]).unwrap().expect("the refresh job");
    assert_eq!(job.lifecycle().status(), JobStatus::Completed, "{job:?}");
    let (_, replayed) = store
        .idempotent_request("admin", "upgrade-aes-1")
        .unwrap()
        .expect("the Idempotency-Key");
    assert_eq!(replayed, made["aes"]);
    assert_eq!(store.verify_audit().unwrap(), AuditCheck::Intact);
}

#[test]
fn a_sqlite_database_of_the_release_before_comes_through_whole() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("luna.db");
    std::fs::copy(fixture().join("sqlite/luna.db"), &db).unwrap();
    let store = Store::open(
        &format!("sqlite://{}", db.display()),
        pins("sqlite"),
        PoolOptions::default(),
    )
    .unwrap();
    everything_came_through(&store, &made("sqlite"));
}

#[test]
fn a_postgresql_database_of_the_release_before_comes_through_whole() {
    let scratch = ScratchDatabase::postgres().unwrap();
    let dump = std::fs::read_to_string(fixture().join("postgres/dump.sql")).unwrap();
    diesel::PgConnection::establish(&scratch.url)
        .unwrap()
        .batch_execute(&dump)
        .unwrap();
    let store = Store::open(&scratch.url, pins("postgres"), PoolOptions::default()).unwrap();
    everything_came_through(&store, &made("postgres"));
}
