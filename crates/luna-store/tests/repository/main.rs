//! The repository suite, run on SQLite and on the local PostgreSQL server;
//! each test has a database of its own, so the tests run in parallel.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use luna_domain::operation::MAX_ATTEMPTS;
use luna_domain::query::{
    parse_list_query, AuditFilters, ConnectionFilters, JobFilters, KeyFilters, ListQuery, PartitionFilters,
};
use luna_domain::{
    Algorithm, AttributeSet, Connection, Job, JobEvent, JobStatus, JobType, Key, KeyEvent, KeyStatus,
    KeyVersion, Mechanism, Member, ObjectType, Operation, OperationKind, OperationPayload, OperationState,
    Origin, Partition,
};
use luna_store::testing::{test_audit, TestDatabase};
use luna_store::{now, AuditCheck, PinCipher, PoolOptions, Store, StoreError, UserChange};
use secrecy::{ExposeSecret, SecretString};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

/// Declares each test once and runs it on both backends.
macro_rules! on_both_backends {
    ($(fn $name:ident($store:ident: &Store, $db:ident: &TestDatabase) $body:block)+) => {
        $(fn $name($store: &Store, $db: &TestDatabase) $body)+
        mod sqlite {
            $(#[test] fn $name() { let db = luna_store::testing::TestDatabase::sqlite().unwrap(); super::$name(&db.store, &db); super::counts_are_exact(&db); })+
        }
        mod postgres {
            $(#[test] fn $name() { let db = luna_store::testing::TestDatabase::postgres().unwrap(); super::$name(&db.store, &db); super::counts_are_exact(&db); })+
        }
    };
}

/// After every test: the key counts the writes kept are the counts made again
/// from the keys, row for row.
fn counts_are_exact(db: &TestDatabase) {
    let drift = db.store.count_drift().unwrap();
    assert!(
        drift.is_empty(),
        "the stored key counts differ from the keys:\n{}",
        drift.join("\n")
    );
}

/// Runs SQL on the test's database behind the store's back (to corrupt a row).
fn raw_sql(db: &TestDatabase, sql: &str) {
    use diesel::{Connection as _, RunQueryDsl as _};
    match db.url.strip_prefix("sqlite://") {
        Some(path) => {
            let mut conn = diesel::SqliteConnection::establish(path).unwrap();
            diesel::sql_query(sql).execute(&mut conn).unwrap();
        }
        None => {
            let mut conn = diesel::PgConnection::establish(&db.url).unwrap();
            diesel::sql_query(sql).execute(&mut conn).unwrap();
        }
    }
}

/// The audit record of an operation's outcome, as the runner writes it.
fn outcome(op: &Operation) -> luna_store::AuditEntry {
    luna_store::AuditEntry {
        username: "luna-server".into(),
        action: format!("operation {}", op.payload.kind_name()),
        resource_id: op.payload.target().to_string(),
        outcome: "succeeded".into(),
        ..test_audit()
    }
}

fn pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn query<F: luna_domain::query::Filters>(q: &str) -> ListQuery<F> {
    parse_list_query(&pairs(q)).unwrap()
}

fn connection(name: &str, ha: bool, members: usize) -> Connection {
    let t = now();
    Connection {
        id: Uuid::new_v4(),
        name: name.into(),
        description: "test".into(),
        ha_enabled: ha,
        remap_rsa_mechanisms: true,
        server_id: None,
        last_check: None,
        products: vec!["cckm".into()],
        meta: None,
        members: (0..members)
            .map(|i| Member {
                hostname: format!("hsm{i}"),
                partition_label: format!("p{i}"),
                serial_number: format!("14299640545{i:02}"),
            })
            .collect(),
        created_at: t,
        updated_at: t,
    }
}

fn registered_partition(store: &Store, name: &str) -> Partition {
    let conn = connection(name, true, 2);
    store
        .insert_connection(&conn, &SecretString::from("1234"), None, &test_audit())
        .unwrap();
    let t = now();
    let partition = Partition {
        id: Uuid::new_v4(),
        connection_id: conn.id,
        partition_label: conn.members[0].partition_label.clone(),
        serial_number: conn.members[0].serial_number.clone(),
        ha_enabled: true,
        remap_rsa_mechanisms: true,
        members: conn.members.clone(),
        created_at: t,
        updated_at: t,
    };
    store.insert_partition(&partition, &test_audit()).unwrap();
    partition
}

/// One record made as a create makes it (`NewKeySpec::new_key`), then given
/// the values the list tests filter and sort on; a pair's half stands alone
/// (no `link_id`) until `rsa_pair` links two.
fn key(partition: &Partition, label: &str, object_type: ObjectType, size: u32) -> Key {
    let mechanism = if object_type == ObjectType::SecretKey {
        Mechanism::AesKeyGen
    } else {
        Mechanism::RsaX931KeyPairGen
    };
    let spec = luna_domain::NewKeySpec {
        label: label.into(),
        size,
        partition_id: partition.id,
        mechanism,
        attributes: AttributeSet::parse_names(&["CKA_TOKEN", "CKA_SIGN"]).unwrap(),
    };
    let made = spec.new_key(partition, Uuid::new_v4, now());
    let mut key = made
        .keys
        .into_iter()
        .find(|k| k.object_type == Some(object_type))
        .unwrap();
    key.generated_with = (mechanism != Mechanism::AesKeyGen).then_some(Mechanism::RsaPkcsKeyPairGen);
    key.attributes = AttributeSet::parse_names(&["CKA_TOKEN", "CKA_SIGN"]).unwrap();
    key.cka_id = Uuid::new_v4().as_bytes().to_vec();
    key.object_uid = "00".into();
    key.sha_256_fingerprint = format!("{:064x}", rand_u64());
    key.replication_info = BTreeMap::from([("1429964054500".to_string(), "available".to_string())]);
    key.byok_key = size.is_multiple_of(3); // a mix: 192 and 3072 only
    key.exponent = if mechanism == Mechanism::AesKeyGen {
        0
    } else {
        65537
    };
    key.link_id = None;
    key.ha_enabled = true;
    key
}

fn rand_u64() -> u64 {
    u64::from_le_bytes(Uuid::new_v4().as_bytes()[..8].try_into().unwrap())
}

fn rsa_pair(partition: &Partition, label: &str) -> (Key, Key) {
    let mut private = key(partition, label, ObjectType::PrivateKey, 2048);
    let mut public = key(partition, label, ObjectType::PublicKey, 2048);
    public.cka_id = private.cka_id.clone();
    private.link_id = Some(public.id);
    public.link_id = Some(private.id);
    (private, public)
}

fn create_op(key: &Key) -> Operation {
    Operation::queued(
        Uuid::new_v4(),
        OperationPayload::CreateKey {
            key_id: key.id,
            public_key_id: key.link_id,
        },
        now(),
    )
}

fn job(job_type: JobType, partitions: Vec<Uuid>) -> (Job, Operation) {
    let id = Uuid::new_v4();
    (
        Job::new(id, job_type, partitions, now()),
        Operation::queued(Uuid::new_v4(), OperationPayload::RunJob { job_id: id }, now()),
    )
}

mod queue;
mod records;
mod schedules;
mod trail_and_backends;
mod writes;
mod xks;
