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
    let made = spec.new_key(partition, Uuid::new_v4, now()).unwrap();
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

on_both_backends! {
    fn opening_again_finds_the_schema_in_place(store: &Store, db: &TestDatabase) {
        let partition = registered_partition(store, "again");
        let reopened = Store::open(&db.url, PinCipher::from_key(&[0x42; 32]), PoolOptions::default()).unwrap();
        assert_eq!(reopened.get_partition(partition.id).unwrap().unwrap(), partition);
        store.ping().unwrap();
    }

    fn connections_keep_members_in_order_and_the_pin_sealed(store: &Store, db: &TestDatabase) {
        let conn = connection("hsm-a", true, 3);
        store.insert_connection(&conn, &SecretString::from("s3cret-pin"), None, &test_audit()).unwrap();
        assert_eq!(store.get_connection(conn.id).unwrap().unwrap(), conn);
        assert_eq!(store.connection_by_name("hsm-a").unwrap().unwrap().id, conn.id);
        assert_eq!(store.connection_pin(conn.id).unwrap().unwrap().expose_secret(), "s3cret-pin");
        // A store opened with another data-dir key cannot unseal it.
        let other = Store::open(&db.url, PinCipher::from_key(&[1; 32]), PoolOptions::default()).unwrap();
        assert!(matches!(other.connection_pin(conn.id), Err(StoreError::PinDecrypt)));
        let again = store.insert_connection(&connection("hsm-a", false, 1), &SecretString::from("x"), None, &test_audit()).unwrap_err();
        assert_eq!(again.to_string(), "a connection named \"hsm-a\" already exists");
        assert!(store.get_connection(Uuid::new_v4()).unwrap().is_none());
        assert!(store.connection_pin(Uuid::new_v4()).unwrap().is_none());
    }

    fn hsm_servers_are_listed_by_host_and_stay_while_a_connection_names_them(store: &Store, _db: &TestDatabase) {
        let server = |hostname: &str| luna_domain::HsmServer {
            id: Uuid::new_v4(),
            hostname: hostname.into(),
            description: "rack 4".into(),
            certificate: luna_domain::ServerCertificate {
                pem: "-----BEGIN CERTIFICATE-----\n…".into(),
                subject: "CN=hsm".into(),
                issuer: "CN=ca".into(),
                not_before: OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
                not_after: OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap(),
                sha256_fingerprint: "ab".repeat(32),
            },
            products: vec![luna_domain::Product::Cckm, luna_domain::Product::HsmAnchoredDomain],
            meta: Some(r#"{"rack":"4"}"#.into()),
            created_at: now(),
            updated_at: now(),
        };
        let first = server("192.168.100.70");
        store.insert_server(&first, &test_audit()).unwrap();
        store.insert_server(&server("hsm-b.example"), &test_audit()).unwrap();
        assert_eq!(store.get_server(first.id).unwrap().unwrap(), first);
        let taken = store.insert_server(&server("192.168.100.70"), &test_audit()).unwrap_err();
        assert!(matches!(taken, StoreError::Conflict(_)), "{taken}");
        let listed = store.list_servers(&query("host=192.168.100.70")).unwrap();
        assert_eq!((listed.total, listed.items[0].id), (1, first.id));
        let sorted = store.list_servers(&query("sort=-hostname&limit=1")).unwrap();
        assert_eq!((sorted.total, sorted.items[0].hostname.as_str()), (2, "hsm-b.example"));
        let mut only_cckm = server("hsm-c.example");
        only_cckm.products = vec![luna_domain::Product::Cckm];
        store.insert_server(&only_cckm, &test_audit()).unwrap();
        for (q, total) in [("products=hsm_anchored_domain", 2), ("products=cckm", 3), ("channel=NTLS", 3), ("channel=STC", 0)] {
            assert_eq!(store.list_servers(&query(q)).unwrap().total, total, "{q}");
        }

        // A connection may name a registered server, not another.
        let mut named = connection("on-server", false, 1);
        named.server_id = Some(first.id);
        store.insert_connection(&named, &SecretString::from("pin"), None, &test_audit()).unwrap();
        assert_eq!(store.get_connection(named.id).unwrap().unwrap().server_id, Some(first.id));
        let mut dangling = connection("nowhere", false, 1);
        dangling.server_id = Some(Uuid::new_v4());
        let refused = store.insert_connection(&dangling, &SecretString::from("pin"), None, &test_audit()).unwrap_err();
        assert!(refused.to_string().contains("names no registered HSM server"), "{refused}");
        // The server stays while a connection names it.
        let used = store.delete_server(first.id, &test_audit()).unwrap_err();
        assert!(matches!(&used, StoreError::Conflict(m) if m.contains("on-server")), "{used}");
        assert!(store.delete_connection(named.id, &test_audit()).unwrap());
        assert!(store.delete_server(first.id, &test_audit()).unwrap());
        assert!(store.get_server(first.id).unwrap().is_none());
        assert!(!store.delete_server(first.id, &test_audit()).unwrap());
    }

    fn connection_lists_filter_sort_and_count(store: &Store, _db: &TestDatabase) {
        let mut inserted = Vec::new();
        for (name, ha, members) in [("c", true, 3), ("a", false, 1), ("b", true, 2)] {
            let conn = connection(name, ha, members);
            store.insert_connection(&conn, &SecretString::from("1"), None, &test_audit()).unwrap();
            inserted.push(conn);
        }
        let all = store.list_connections(&query::<ConnectionFilters>("sort=name")).unwrap();
        assert_eq!(all.total, 3);
        assert_eq!(all.items.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
        // Each listed connection carries its own members, read in one query for the page.
        for listed in &all.items {
            assert_eq!(Some(listed), inserted.iter().find(|c| c.id == listed.id));
        }
        let ha = store.list_connections(&query::<ConnectionFilters>("is_ha_enabled=true&sort=-name&limit=1")).unwrap();
        assert_eq!((ha.total, ha.items.len(), ha.items[0].name.as_str()), (2, 1, "c"));
        // Default order: newest first.
        let newest = store.list_connections(&query::<ConnectionFilters>("")).unwrap();
        assert_eq!(newest.items[0].name, "b");
    }

    fn partitions_are_unique_per_connection_and_guard_their_connection(store: &Store, _db: &TestDatabase) {
        let partition = registered_partition(store, "hsm-p");
        let found = store.get_partition(partition.id).unwrap().unwrap();
        assert_eq!(found.members.len(), 2);
        assert_eq!(found, partition);
        let twice = Partition { id: Uuid::new_v4(), ..partition.clone() };
        assert!(matches!(store.insert_partition(&twice, &test_audit()), Err(StoreError::Conflict(_))));
        let err = store.delete_connection(partition.connection_id, &test_audit()).unwrap_err();
        assert!(err.to_string().contains("used by a partition"), "{err}");
        let listed = store.list_partitions(&query::<PartitionFilters>("ha_enabled=true&partition_label=p0")).unwrap();
        assert_eq!(listed.total, 1);
        assert_eq!(store.list_partitions(&query::<PartitionFilters>("ha_enabled=false")).unwrap().total, 0);
        // Deleting the partition forgets its keys here, then frees the connection.
        let (private, public) = rsa_pair(&partition, "k");
        store.insert_keys_with_operation(&[private.clone(), public], &create_op(&private), &test_audit()).unwrap();
        // Not while its create is in flight: its outcome would make objects no record names.
        let busy = store.forget_partition(partition.id, &test_audit()).unwrap_err();
        assert!(matches!(&busy, StoreError::Conflict(m) if m.contains("in progress")), "{busy}");
        let claimed = store.claim_next_operation("w", now(), Duration::seconds(30)).unwrap().unwrap();
        let mut done = claimed.clone();
        done.finish(Err("the token refused".into()), now()).unwrap();
        assert!(store.finish_operation(&done, "w", &[], &outcome(&done)).unwrap());
        assert!(store.forget_partition(partition.id, &test_audit()).unwrap());
        assert!(store.get_key(private.id).unwrap().is_none());
        assert!(store.delete_connection(partition.connection_id, &test_audit()).unwrap());
        assert!(!store.forget_partition(partition.id, &test_audit()).unwrap());
    }

    fn keys_round_trip_and_a_busy_key_refuses_a_second_operation(store: &Store, _db: &TestDatabase) {
        let partition = registered_partition(store, "hsm-k");
        let (private, public) = rsa_pair(&partition, "hsm-key");
        store.insert_keys_with_operation(&[private.clone(), public.clone()], &create_op(&private), &test_audit()).unwrap();
        assert_eq!(store.get_key(private.id).unwrap().unwrap(), private);
        let same_id = store.keys_of_partition(partition.id).unwrap().into_iter().filter(|k| k.cka_id == private.cka_id);
        assert_eq!(same_id.count(), 2, "both halves carry the pair's CKA_ID");
        // The create is still running: no other operation may start.
        let update = Operation::queued(Uuid::new_v4(), OperationPayload::ReplicateKey { key_id: private.id }, now());
        let err = store.begin_key_operation(&update, &test_audit()).unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err}");
        assert!(store.get_operation(update.id).unwrap().is_none(), "a refused request queues nothing");
        assert!(store.forget_key(private.id, &test_audit()).is_err());
        // The create ends; now an update starts on both halves at once.
        for mut k in [private.clone(), public.clone()] {
            let read = KeyVersion::of(&k);
            k.apply(&KeyEvent::Succeeded, now()).unwrap();
            assert!(store.save_key(&k, &read).unwrap());
            assert!(!store.save_key(&k, &read).unwrap(), "a second write from the same read is refused");
        }
        let unknown = Operation::queued(Uuid::new_v4(), OperationPayload::ReplicateKey { key_id: Uuid::new_v4() }, now());
        assert!(store.begin_key_operation(&unknown, &test_audit()).unwrap().is_none());
        let job = Operation::queued(Uuid::new_v4(), OperationPayload::RunJob { job_id: Uuid::new_v4() }, now());
        assert!(matches!(store.begin_key_operation(&job, &test_audit()), Err(StoreError::Domain(_))));
        let changed = store.begin_key_operation(&update, &test_audit()).unwrap().unwrap();
        assert_eq!(changed.len(), 2, "replicate takes both halves");
        assert!(changed.iter().all(|k| k.lifecycle().operation() == OperationKind::KeyReplicate && k.lifecycle().is_busy()));
        assert_eq!(store.get_key(public.id).unwrap().unwrap().lifecycle().operation_status(), luna_domain::OperationStatus::InProgress);
        assert!(store.get_operation(update.id).unwrap().is_some());
        // CCKM delete forgets both records, leaving nothing behind.
        let mut done = changed;
        for k in &mut done {
            let read = KeyVersion::of(k);
            k.apply(&KeyEvent::Succeeded, now()).unwrap();
            assert!(store.save_key(k, &read).unwrap());
        }
        // An update takes only the key it names.
        let patch = Operation::queued(Uuid::new_v4(), OperationPayload::UpdateKey { key_id: public.id, changes: vec![] }, now());
        let one = store.begin_key_operation(&patch, &test_audit()).unwrap().unwrap();
        assert_eq!(one.iter().map(|k| k.id).collect::<Vec<_>>(), vec![public.id]);
        assert!(!store.get_key(private.id).unwrap().unwrap().lifecycle().is_busy());
        let mut updated = one[0].clone();
        let read = KeyVersion::of(&updated);
        updated.apply(&KeyEvent::Succeeded, now()).unwrap();
        assert!(store.save_key(&updated, &read).unwrap());
        assert_eq!(store.forget_key(private.id, &test_audit()).unwrap().unwrap().len(), 2);
        assert!(store.get_key(public.id).unwrap().is_none());
        assert!(store.forget_key(private.id, &test_audit()).unwrap().is_none());
    }

    // What a refresh records while it scans: only objects no record of the
    // partition names (a create accepted meanwhile has its record already).
    fn objects_recorded_during_a_scan_never_get_a_second_record(store: &Store, _db: &TestDatabase) {
        let partition = registered_partition(store, "hsm-early");
        let other = registered_partition(store, "hsm-other");
        let named = |p: &Partition, uid: &str| {
            let mut k = key(p, uid, ObjectType::SecretKey, 256);
            k.object_uid = uid.into();
            k
        };
        store.insert_keys(&[named(&partition, "aa04"), named(&other, "cc04")]).unwrap();
        let batch = [named(&partition, "aa04"), named(&partition, "bb04"), named(&partition, "cc04")];
        assert_eq!(store.insert_unrecorded_keys(partition.id, &batch).unwrap(), 2, "bb04 and cc04 (cc04 is another partition's)");
        assert_eq!(store.insert_unrecorded_keys(partition.id, &batch).unwrap(), 0, "all recorded now");
        let mut uids: Vec<String> = store.keys_of_partition(partition.id).unwrap().into_iter().map(|k| k.object_uid.clone()).collect();
        uids.sort();
        assert_eq!(uids, ["aa04", "bb04", "cc04"]);
    }

    fn two_requests_racing_for_one_key_get_one_operation(store: &Store, _db: &TestDatabase) {
        let partition = registered_partition(store, "hsm-race");
        let mut k = key(&partition, "race", ObjectType::SecretKey, 256);
        k.apply(&KeyEvent::Succeeded, now()).unwrap();
        store.insert_keys(&[k.clone()]).unwrap();
        let outcomes = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let op = Operation::queued(Uuid::new_v4(), OperationPayload::DestroyKey { key_id: k.id }, now());
                    let result = store.begin_key_operation(&op, &test_audit());
                    outcomes.lock().unwrap().push(result.is_ok());
                });
            }
        });
        let outcomes = outcomes.into_inner().unwrap();
        assert_eq!(outcomes.iter().filter(|ok| **ok).count(), 1, "{outcomes:?}");
    }

    fn key_lists_apply_every_filter_sort_and_page_in_sql(store: &Store, _db: &TestDatabase) {
        let a = registered_partition(store, "hsm-list-a");
        let b = registered_partition(store, "hsm-list-b");
        let mut all = Vec::new();
        // One instant for every key, so that the order of the timestamps is
        // the order of `i` however slowly the loop runs.
        let t0 = now();
        for i in 0..24u32 {
            let partition = if i % 3 == 0 { &b } else { &a };
            let mut k = if i % 4 == 0 {
                key(partition, &format!("label-{}", i % 5), ObjectType::SecretKey, [128, 192, 256][(i % 3) as usize])
            } else {
                key(partition, &format!("label-{}", i % 5), ObjectType::PrivateKey, [2048, 3072, 4096][(i % 3) as usize])
            };
            k.created_at = t0 + Duration::milliseconds(i64::from(i));
            k.updated_at = t0 - Duration::milliseconds(i64::from(i));
            if i % 5 == 0 {
                let at = k.updated_at;
                k.apply(&KeyEvent::Succeeded, at).unwrap();
                k.origin = Origin::External;
                k.replicated = true;
            }
            if i % 7 == 0 {
                k.link_id = Some(all.first().map(|f: &Key| f.id).unwrap_or_else(Uuid::new_v4));
            }
            all.push(k);
        }
        store.insert_keys(&all).unwrap();
        let target = &all[6];
        type Predicate<'a> = Box<dyn Fn(&Key) -> bool + 'a>;
        let checks: Vec<(String, Predicate)> = vec![
            (format!("id={}", target.id), Box::new(|k: &Key| k.id == all[6].id)),
            ("label=label-2".into(), Box::new(|k: &Key| k.label == "label-2")),
            ("algorithm=aes".into(), Box::new(|k: &Key| k.algorithm == Some(Algorithm::Aes))),
            ("mechanism=CKM_RSA_X9_31_KEY_PAIR_GEN".into(), Box::new(|k: &Key| k.mechanism == Some(Mechanism::RsaX931KeyPairGen))),
            ("size=3072".into(), Box::new(|k: &Key| k.size == 3072)),
            ("byok_key=true".into(), Box::new(|k: &Key| k.byok_key)),
            (format!("partition_id={}", b.id), Box::new(|k: &Key| k.partition_id == b.id)),
            ("partition_label=p0".into(), Box::new(|_: &Key| true)),
            ("status=AVAILABLE".into(), Box::new(|k: &Key| k.lifecycle().status() == KeyStatus::Available)),
            ("status=in_progress".into(), Box::new(|k: &Key| k.lifecycle().status() == KeyStatus::InProgress)),
            ("object_type=secret key".into(), Box::new(|k: &Key| k.object_type == Some(ObjectType::SecretKey))),
            ("origin=external".into(), Box::new(|k: &Key| k.origin == Origin::External)),
            (format!("sha_256_fingerprint={}", target.sha_256_fingerprint), Box::new(|k: &Key| k.id == all[6].id)),
            ("modulus=".into(), Box::new(|_: &Key| true)),
            (format!("link_id={}", all[0].id), Box::new(|k: &Key| k.link_id == Some(all[0].id))),
            ("replicated=true".into(), Box::new(|k: &Key| k.replicated)),
            ("algorithm=rsa&size=2048&status=in_progress".into(), Box::new(|k: &Key| {
                k.algorithm == Some(Algorithm::Rsa) && k.size == 2048 && k.lifecycle().status() == KeyStatus::InProgress
            })),
        ];
        for (q, predicate) in &checks {
            let expected: Vec<Uuid> = {
                let mut v: Vec<&Key> = all.iter().filter(|k| predicate(k)).collect();
                v.sort_by_key(|k| std::cmp::Reverse((k.created_at, k.id)));
                v.into_iter().map(|k| k.id).collect()
            };
            let got = store.list_keys(&query::<KeyFilters>(&format!("{q}&limit=1000"))).unwrap();
            assert_eq!(got.total as usize, expected.len(), "total for {q}");
            assert_eq!(got.items.iter().map(|k| k.id).collect::<Vec<_>>(), expected, "rows for {q}");
        }
        // Sorting by several fields, with `-` for descending, then paging.
        let mut by_label_newest: Vec<&Key> = all.iter().collect();
        by_label_newest.sort_by(|x, y| x.label.cmp(&y.label).then(y.created_at.cmp(&x.created_at)));
        let expected: Vec<Uuid> = by_label_newest.iter().map(|k| k.id).collect();
        let mut paged = Vec::new();
        for skip in (0..24).step_by(10) {
            let page = store.list_keys(&query::<KeyFilters>(&format!("sort=label,-createdAt&skip={skip}&limit=10"))).unwrap();
            assert_eq!(page.total, 24);
            paged.extend(page.items.iter().map(|k| k.id));
        }
        assert_eq!(paged, expected);
        let by_updated = store.list_keys(&query::<KeyFilters>("skip=0&limit=10&sort=updatedAt")).unwrap();
        assert!(by_updated.items.windows(2).all(|w| w[0].updated_at <= w[1].updated_at));
        assert_eq!(by_updated.items[0].id, all[23].id);
        let beyond = store.list_keys(&query::<KeyFilters>("skip=1000")).unwrap();
        assert_eq!((beyond.total, beyond.items.len()), (24, 0));
    }

    fn list_totals_stay_exact_through_every_change(store: &Store, _db: &TestDatabase) {
        let a = registered_partition(store, "hsm-count-a");
        let b = registered_partition(store, "hsm-count-b");
        let mut keys: Vec<Key> = (0..12)
            .map(|i| key(if i % 3 == 0 { &b } else { &a }, "c", ObjectType::SecretKey, 256))
            .collect();
        store.insert_keys(&keys).unwrap();
        let check = |keys: &[Key], step: &str| {
            for q in ["", "status=in_progress", "status=AVAILABLE", "status=DELETED"] {
                for partition in [None, Some(a.id), Some(b.id)] {
                    let text = match partition {
                        Some(p) => format!("{q}&partition_id={p}"),
                        None => q.to_owned(),
                    };
                    let status = q.strip_prefix("status=");
                    let expected = keys
                        .iter()
                        .filter(|k| partition.is_none_or(|p| k.partition_id == p))
                        .filter(|k| status.is_none_or(|s| k.lifecycle().status().as_str() == s))
                        .count();
                    let listed = store.list_keys(&query::<KeyFilters>(&text)).unwrap();
                    assert_eq!(listed.total as usize, expected, "{step}: total for {text:?}");
                    // A deep page's total is the sum of the time buckets'
                    // counts (both timestamps): kept as exact as key_counts.
                    for sort in ["", "&sort=-updatedAt"] {
                        let deep = format!("{text}&skip=1000{sort}");
                        let listed = store.list_keys(&query::<KeyFilters>(&deep)).unwrap();
                        assert_eq!(listed.total as usize, expected, "{step}: total for {deep:?}");
                    }
                }
            }
        };
        check(&keys, "inserted");
        for k in keys.iter_mut().take(8) {
            let read = KeyVersion::of(k);
            k.apply(&KeyEvent::Succeeded, now()).unwrap();
            assert!(store.save_key(k, &read).unwrap());
        }
        check(&keys, "created");
        let op = Operation::queued(Uuid::new_v4(), OperationPayload::DestroyKey { key_id: keys[1].id }, now());
        store.begin_key_operation(&op, &test_audit()).unwrap().unwrap();
        keys[1] = store.get_key(keys[1].id).unwrap().unwrap();
        let read = KeyVersion::of(&keys[1]);
        keys[1].apply(&KeyEvent::Succeeded, now()).unwrap();
        assert!(store.save_key(&keys[1], &read).unwrap());
        check(&keys, "one deleted from the HSM");
        store.forget_key(keys[2].id, &test_audit()).unwrap().unwrap();
        keys.remove(2);
        check(&keys, "one forgotten");
        store.forget_partition(b.id, &test_audit()).unwrap();
        keys.retain(|k| k.partition_id != b.id);
        check(&keys, "a partition deleted");
    }

    fn deep_pages_in_timestamp_order_are_the_rows_an_offset_would_give(store: &Store, _db: &TestDatabase) {
        let a = registered_partition(store, "hsm-deep-a");
        let b = registered_partition(store, "hsm-deep-b");
        let start = OffsetDateTime::from_unix_timestamp(1_780_000_000).unwrap();
        // Timestamps that share a microsecond, a second, a few minutes, and
        // that spread over days: every level of buckets and the ties in them.
        let at = |i: u64| {
            let micros = match i % 4 {
                0 => 7_000_000 + (i % 3) as i64,
                1 => 9_000_000 + (i * 997 % 1_000_000) as i64,
                2 => (i * 7_919 % 600) as i64 * 1_000_000,
                _ => (i * 104_729 % 400_000) as i64 * 1_000_000 + (i % 1000) as i64,
            };
            start + Duration::microseconds(micros)
        };
        let mut keys: Vec<Key> = (0..4000u64)
            .map(|i| {
                let mut k = key(if i % 3 == 0 { &b } else { &a }, "deep", ObjectType::SecretKey, 256);
                if i % 3 != 1 {
                    k.apply(&KeyEvent::Succeeded, start).unwrap();
                }
                k.created_at = at(i);
                k.updated_at = at(i * 31 + 5);
                k
            })
            .collect();
        for chunk in keys.chunks(500) {
            store.insert_keys(chunk).unwrap();
        }
        // Changes move keys between buckets and statuses; some are forgotten.
        for (n, k) in keys.iter_mut().enumerate().filter(|(n, _)| n % 7 == 1) {
            let read = KeyVersion::of(k);
            let when = at(n as u64 * 13 + 2);
            if k.lifecycle().status() == KeyStatus::Available {
                k.updated_at = when;
            } else {
                k.apply(&KeyEvent::Succeeded, when).unwrap();
            }
            assert!(store.save_key(k, &read).unwrap());
        }
        let idle = keys.iter().filter(|k| k.lifecycle().status() == KeyStatus::Available);
        for id in idle.step_by(11).map(|k| k.id).collect::<Vec<_>>() {
            store.forget_key(id, &test_audit()).unwrap().unwrap();
        }
        keys.retain(|k| store.get_key(k.id).unwrap().is_some());

        for (sort, stamp, descending) in [
            ("", "created", true),
            ("&sort=createdAt", "created", false),
            ("&sort=-createdAt", "created", true),
            ("&sort=-updatedAt", "updated", true),
            ("&sort=updatedAt", "updated", false),
        ] {
            for filter in [String::new(), format!("&partition_id={}", a.id), "&status=AVAILABLE".into(),
                format!("&partition_id={}&status=AVAILABLE", a.id)] {
                let mut expected: Vec<&Key> = keys
                    .iter()
                    .filter(|k| !filter.contains("partition_id") || k.partition_id == a.id)
                    .filter(|k| !filter.contains("status") || k.lifecycle().status() == KeyStatus::Available)
                    .collect();
                expected.sort_by_key(|k| (if stamp == "created" { k.created_at } else { k.updated_at }, k.id));
                if descending {
                    expected.reverse();
                }
                let n = expected.len();
                assert!(n > 1200, "{n} keys match {filter:?}: enough for deep pages");
                for skip in [1000, 1001, 1117, n / 2, n - 8, n - 1, n, n + 5] {
                    let q = format!("skip={skip}&limit=7{sort}{filter}");
                    let page = store.list_keys(&query::<KeyFilters>(&q)).unwrap();
                    let want: Vec<Uuid> = expected.iter().skip(skip).take(7).map(|k| k.id).collect();
                    let got: Vec<Uuid> = page.items.iter().map(|k| k.id).collect();
                    assert_eq!(got, want, "{q}");
                    assert_eq!(page.total as usize, n, "{q}");
                }
            }
        }
    }

    fn each_operation_is_claimed_by_exactly_one_worker(store: &Store, db: &TestDatabase) {
        let total = 60;
        for _ in 0..total {
            let op = Operation::queued(Uuid::new_v4(), OperationPayload::DestroyKey { key_id: Uuid::new_v4() }, now());
            store.enqueue(&op).unwrap();
        }
        // Two servers on one database: two stores, two pools, two workers each.
        let second = Store::open(&db.url, PinCipher::from_key(&[0x42; 32]), PoolOptions::default()).unwrap();
        let claimed = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for (worker, instance) in [(0, store), (1, store), (2, &second), (3, &second)] {
                let claimed = &claimed;
                s.spawn(move || {
                    let owner = format!("worker-{worker}");
                    while let Some(op) = instance.claim_next_operation(&owner, now(), Duration::seconds(60)).unwrap() {
                        assert_eq!((op.state(), op.attempts()), (OperationState::Running, 1));
                        let mut done = op.clone();
                        done.finish(Ok(()), now()).unwrap();
                        assert!(instance.finish_operation(&done, &owner, &[], &outcome(&done)).unwrap());
                        claimed.lock().unwrap().push(op.id);
                    }
                });
            }
        });
        let claimed = claimed.into_inner().unwrap();
        assert_eq!(claimed.len(), total);
        assert_eq!(claimed.iter().collect::<HashSet<_>>().len(), total, "no operation ran twice");
        assert_eq!(store.operation_counts().unwrap(), vec![(OperationState::Succeeded, total as i64)]);
    }

    fn a_refresh_token_works_once_even_when_two_instances_race_for_it(store: &Store, db: &TestDatabase) {
        let user = store
            .insert_user(&luna_store::NewUser { username: "racer".into(), password_hash: "h".into(), groups: vec![] }, now(), &test_audit())
            .unwrap();
        let second = Store::open(&db.url, PinCipher::from_key(&[0x42; 32]), PoolOptions::default()).unwrap();
        let t = now();
        let hour = t + Duration::hours(1);
        for round in 0..40 {
            let token = format!("race-{round}");
            let session = store.open_session(&user, &token, hour, t, &test_audit()).unwrap().unwrap();
            // Two refreshes of one token, and (every other round) a logout,
            // from two instances at once.
            let barrier = std::sync::Barrier::new(if round % 2 == 0 { 3 } else { 2 });
            let refreshed = Mutex::new(Vec::new());
            std::thread::scope(|s| {
                for (n, instance) in [(0, store), (1, &second)] {
                    let (token, barrier, refreshed) = (&token, &barrier, &refreshed);
                    s.spawn(move || {
                        let next = format!("{token}-next-{n}");
                        barrier.wait();
                        if instance.refresh_session(token, &next, hour, t, &test_audit()).unwrap().is_some() {
                            refreshed.lock().unwrap().push(next);
                        }
                    });
                }
                if round % 2 == 0 {
                    s.spawn(|| {
                        barrier.wait();
                        second.end_session(session, &test_audit()).unwrap();
                    });
                }
            });
            let refreshed = refreshed.into_inner().unwrap();
            assert!(refreshed.len() <= 1, "round {round}: one token refreshed twice: {refreshed:?}");
            if round % 2 == 0 {
                assert_eq!(store.session_user(session).unwrap(), None);
                for next in &refreshed {
                    assert!(store.refresh_session(next, "after", hour, t, &test_audit()).unwrap().is_none(), "round {round}: ended, yet {next} works");
                }
            } else {
                assert_eq!(refreshed.len(), 1, "round {round}: neither refresh won");
            }
        }
    }

    fn a_refresh_write_skips_a_record_changed_since_it_was_read(store: &Store, _db: &TestDatabase) {
        let partition = registered_partition(store, "hsm-refresh-cas");
        let k = key(&partition, "cas", ObjectType::SecretKey, 256);
        store.insert_keys(std::slice::from_ref(&k)).unwrap();
        let read = store.get_key(k.id).unwrap().unwrap();
        // Meanwhile a PATCH ran to its end: the lifecycle reads as before, the record does not.
        let mut patched = read.clone();
        patched.attributes.insert(luna_domain::Attribute::Sign);
        patched.updated_at = read.updated_at + Duration::seconds(1);
        assert!(store.save_key(&patched, &KeyVersion::of(&read)).unwrap());
        let mut refreshed = read.clone();
        refreshed.replicated = !read.replicated;
        refreshed.updated_at = read.updated_at + Duration::seconds(2);
        assert_eq!(store.apply_refresh(&[], &[(refreshed.clone(), KeyVersion::of(&read))]).unwrap(), 1, "skipped");
        assert_eq!(store.get_key(k.id).unwrap().unwrap(), patched, "the PATCH stands");
        // Read again, the refresh's write lands.
        let current = store.get_key(k.id).unwrap().unwrap();
        assert_eq!(store.apply_refresh(&[], &[(refreshed.clone(), KeyVersion::of(&current))]).unwrap(), 0);
        assert_eq!(store.get_key(k.id).unwrap().unwrap().replicated, refreshed.replicated);
    }

    fn a_renewal_that_lands_after_a_retry_was_set_does_not_undo_its_delay(store: &Store, _db: &TestDatabase) {
        let op = Operation::queued(Uuid::new_v4(), OperationPayload::DestroyKey { key_id: Uuid::new_v4() }, now());
        store.enqueue(&op).unwrap();
        let t0 = now();
        let mut claimed = store.claim_next_operation("worker", t0, Duration::seconds(30)).unwrap().unwrap();
        let held = claimed.lease_expires_at().unwrap();
        // The attempt failed in a way that may pass: tried again in 2 s.
        let retry_at = t0 + Duration::seconds(2);
        claimed.retry_later("C_GenerateKey returned CKR_DEVICE_ERROR".into(), retry_at, t0).unwrap();
        assert!(store.retry_operation_later(&claimed, "worker").unwrap());
        // The renewer's last write, sent before the retry was recorded, lands now.
        assert!(!store.renew_lease(op.id, "worker", held, t0 + Duration::seconds(30)).unwrap());
        let stored = store.get_operation(op.id).unwrap().unwrap();
        let micros = |t: OffsetDateTime| t.unix_timestamp_nanos() / 1000;
        assert_eq!(stored.lease_expires_at().map(micros), Some(micros(retry_at)));
        assert!(store.claim_next_operation("other", retry_at, Duration::seconds(30)).unwrap().is_some(), "retried on time");
    }

    // A synced write is on disk before it returns (an answered create
    // survives a power cut, not only a crash); a deferred one (an
    // operation's outcome, a lease's renewal) takes no sync of its own.
    // SQLite's connections commit with `synchronous = NORMAL` (1) and the
    // group commit syncs the log after each synced batch; PostgreSQL's keep
    // the server's `synchronous_commit` and turn it off for a deferred batch
    // only (`deferred_commits_do_not_wait_for_the_disk_on_postgresql`).
    fn synced_writes_reach_the_disk_before_they_return_and_deferred_ones_take_no_sync(store: &Store, _db: &TestDatabase) {
        let settings = store.commit_durability_of_every_connection().unwrap();
        assert_eq!(settings.len(), 4, "every connection of the pool was asked");
        let expected = match store.backend() {
            luna_store::Backend::Sqlite => "1",
            luna_store::Backend::Postgres => "on",
        };
        assert!(settings.iter().all(|s| s == expected), "{settings:?}");
        let partition = registered_partition(store, "hsm-sync");
        let k = key(&partition, "sync", ObjectType::SecretKey, 256);
        store.insert_keys_with_operation(std::slice::from_ref(&k), &create_op(&k), &test_audit()).unwrap();
        let t = now();
        let claimed = store.claim_next_operation("w", t, Duration::seconds(30)).unwrap().unwrap();
        let mut held = claimed.lease_expires_at().unwrap();
        let before = store.write_stats();
        for _ in 0..3 {
            let until = held + Duration::seconds(1);
            assert!(store.renew_lease(claimed.id, "w", held, until).unwrap());
            held = until;
        }
        let deferred = store.write_stats();
        assert_eq!(deferred.commits - before.commits, 3);
        assert_eq!(deferred.synced_commits, before.synced_commits, "deferred writes alone take no sync");
        store.append_audit(&outcome(&claimed)).unwrap();
        let synced = store.write_stats();
        assert_eq!(synced.synced_commits, deferred.synced_commits + 1);
        assert!(synced.batch_nanos > before.batch_nanos && synced.commit_nanos > before.commit_nanos);
    }

    fn writes_that_arrive_together_share_commits_and_one_that_fails_fails_alone(store: &Store, _db: &TestDatabase) {
        use luna_store::NewUser;
        let user = |name: &str| NewUser { username: name.to_owned(), password_hash: "x".into(), groups: vec![] };
        store.insert_user(&user("taken"), now(), &test_audit()).unwrap();
        let before = store.write_stats();
        let threads = 24;
        let start = std::sync::Barrier::new(threads);
        let outcomes: Vec<(usize, bool)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let start = &start;
                    s.spawn(move || {
                        start.wait();
                        (0..4)
                            .map(|n| {
                                // Thread 0's third write collides with a taken name.
                                let name = if (t, n) == (0, 2) { "taken".to_owned() } else { format!("user-{t}-{n}") };
                                (t, store.insert_user(&user(&name), now(), &test_audit()).is_ok())
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(outcomes.iter().filter(|(_, ok)| !ok).count(), 1, "only the colliding write failed");
        let listed = store.list_users(None, 0, 1000).unwrap();
        assert_eq!(listed.total as usize, 1 + threads * 4 - 1, "every other write committed");
        let after = store.write_stats();
        let (writes, commits) = (after.writes - before.writes, after.commits - before.commits);
        assert_eq!(writes as usize, threads * 4 - 1, "every write committed but the one that failed (its batch's others ran again)");
        assert!(commits < writes, "writes that arrived together shared commits: {writes} writes, {commits} commits");
    }

    // Writes that fail in nearly every batch (a taken name, sent again and
    // again) roll back the others' batches; a write rolled back twice leads
    // a batch of its own, so every other write still commits.
    fn writes_among_ones_that_keep_failing_still_commit(store: &Store, _db: &TestDatabase) {
        use luna_store::NewUser;
        let user = |name: &str| NewUser { username: name.to_owned(), password_hash: "x".into(), groups: vec![] };
        store.insert_user(&user("taken"), now(), &test_audit()).unwrap();
        let committed = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for t in 0..12 {
                let (committed, user) = (&committed, &user);
                s.spawn(move || {
                    for n in 0..10 {
                        if t % 2 == 0 {
                            assert!(store.insert_user(&user("taken"), now(), &test_audit()).is_err());
                        } else {
                            store.insert_user(&user(&format!("user-{t}-{n}")), now(), &test_audit()).unwrap();
                            committed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(committed.into_inner(), 60);
        assert_eq!(store.list_users(None, 0, 1000).unwrap().total, 61);
    }

    fn a_claim_takes_several_operations_in_one_go_but_no_more_of_a_partition_than_it_has_room_for(store: &Store, _db: &TestDatabase) {
        let (p1, p2) = (Uuid::new_v4(), Uuid::new_v4());
        let t0 = now();
        let mut queued = Vec::new();
        for (n, partition) in [Some(p1), Some(p1), Some(p1), Some(p2), Some(p2), None].into_iter().enumerate() {
            let mut op = Operation::queued(Uuid::new_v4(), OperationPayload::DestroyKey { key_id: Uuid::new_v4() }, t0 + Duration::milliseconds(n as i64));
            op.partition_id = partition;
            store.enqueue(&op).unwrap();
            queued.push(op.id);
        }
        // This runner already holds one of p1's, and may hold two of each partition.
        let room = luna_store::PartitionRoom { in_flight: [(p1, 1)].into(), per_partition: 2 };
        let leases: Vec<String> = (0..10).map(|n| format!("runner:{n}")).collect();
        let claimed = store.claim_operations(&leases, t0, Duration::seconds(30), &room).unwrap();
        let of = |p: Option<Uuid>| claimed.iter().filter(|op| op.partition_id == p).count();
        assert_eq!((of(Some(p1)), of(Some(p2)), of(None)), (1, 2, 1), "{claimed:?}");
        assert_eq!(claimed[0].id, queued[0], "the oldest first");
        let names: HashSet<&str> = claimed.iter().filter_map(|op| op.lease_owner()).collect();
        assert_eq!(names.len(), 4, "a lease name of its own each");
        let more = store.claim_operations(&leases, t0, Duration::seconds(30), &luna_store::PartitionRoom { in_flight: Default::default(), per_partition: 9 }).unwrap();
        assert_eq!(more.len(), 2, "what the first claim left");
    }

    fn operations_parked_on_a_token_wait_uncounted_until_it_is_released(store: &Store, _db: &TestDatabase) {
        let t0 = now();
        let mut parked = Vec::new();
        for token in ["hsm-a/1", "hsm-b/1"] {
            let op = Operation::queued(Uuid::new_v4(), OperationPayload::DestroyKey { key_id: Uuid::new_v4() }, t0);
            store.enqueue(&op).unwrap();
            let mut claimed = store.claim_next_operation("worker:1", t0, Duration::seconds(30)).unwrap().unwrap();
            claimed.park(token, format!("waiting for {token}"), t0 + Duration::seconds(30), t0).unwrap();
            assert!(store.retry_operation_later(&claimed, "worker:1").unwrap());
            assert!(!store.retry_operation_later(&claimed, "worker:1").unwrap(), "the token holds it now, not the worker");
            parked.push(claimed);
        }
        let soon = t0 + Duration::seconds(1);
        assert!(store.claim_next_operation("worker:2", soon, Duration::seconds(30)).unwrap().is_none(), "both wait");
        // hsm-a is back: its operation is released, hsm-b's still waits.
        assert_eq!(store.release_parked("hsm-a/1", soon).unwrap(), 1);
        assert_eq!(store.release_parked("hsm-a/1", soon).unwrap(), 0, "released once");
        let resumed = store.claim_next_operation("worker:2", soon, Duration::seconds(30)).unwrap().unwrap();
        assert_eq!((resumed.id, resumed.attempts()), (parked[0].id, 1), "parking counted no attempt");
        assert_eq!(resumed.last_error(), Some("waiting for hsm-a/1"));
        assert!(store.claim_next_operation("worker:3", soon, Duration::seconds(30)).unwrap().is_none());
        // Nobody released hsm-b's: it is claimable when its parking ends.
        let later = t0 + Duration::seconds(30);
        assert_eq!(store.claim_next_operation("worker:3", later, Duration::seconds(30)).unwrap().unwrap().id, parked[1].id);
    }

    fn an_expired_lease_is_taken_over_and_the_old_worker_cannot_finish(store: &Store, _db: &TestDatabase) {
        let op = Operation::queued(Uuid::new_v4(), OperationPayload::DestroyKey { key_id: Uuid::new_v4() }, now());
        store.enqueue(&op).unwrap();
        let t0 = now();
        let first = store.claim_next_operation("dead", t0, Duration::seconds(30)).unwrap().unwrap();
        assert!(store.claim_next_operation("other", t0, Duration::seconds(30)).unwrap().is_none(), "leased");
        let held = first.lease_expires_at().unwrap();
        assert!(store.renew_lease(op.id, "dead", held, t0 + Duration::seconds(40)).unwrap());
        assert!(!store.renew_lease(op.id, "stranger", t0 + Duration::seconds(40), t0 + Duration::seconds(50)).unwrap());
        // The worker died: after its lease, another takes the operation over.
        let later = t0 + Duration::seconds(41);
        let second = store.claim_next_operation("alive", later, Duration::seconds(30)).unwrap().unwrap();
        assert_eq!((second.id, second.attempts()), (first.id, 2));
        let mut stale = first.clone();
        stale.finish(Ok(()), later).unwrap();
        assert!(!store.finish_operation(&stale, "dead", &[], &outcome(&stale)).unwrap(), "the old worker lost its lease");
        let mut done = second.clone();
        done.finish(Err("C_DestroyObject returned CKR_DEVICE_ERROR".into()), later).unwrap();
        assert!(store.finish_operation(&done, "alive", &[], &outcome(&done)).unwrap());
        let stored = store.get_operation(op.id).unwrap().unwrap();
        assert_eq!(stored.state(), OperationState::Failed);
        assert_eq!(stored.last_error(), Some("C_DestroyObject returned CKR_DEVICE_ERROR"));
        assert!(store.claim_next_operation("any", later + Duration::hours(1), Duration::seconds(30)).unwrap().is_none());
    }

    fn an_operation_interrupted_too_often_ends_failed_with_its_keys_in_one_write(store: &Store, _db: &TestDatabase) {
        let partition = registered_partition(store, "hsm-exhausted");
        let k = key(&partition, "exhausted", ObjectType::SecretKey, 256);
        let op = create_op(&k);
        store.insert_keys_with_operation(std::slice::from_ref(&k), &op, &test_audit()).unwrap();
        let mut t = now();
        for attempt in 1..=MAX_ATTEMPTS {
            let claimed = store.claim_next_operation("crashy", t, Duration::seconds(1)).unwrap().unwrap();
            assert_eq!(claimed.attempts(), attempt);
            t += Duration::seconds(2);
        }
        assert!(store.claim_next_operation("crashy", t, Duration::seconds(1)).unwrap().is_none());
        let exhausted = store.exhausted_operations(t).unwrap();
        assert_eq!(exhausted.iter().map(|o| o.id).collect::<Vec<_>>(), [op.id]);
        let given_up = exhausted[0].given_up(t).unwrap();
        let read = store.get_key(k.id).unwrap().unwrap();
        let mut failed = read.clone();
        failed.apply(&KeyEvent::Failed(given_up.last_error().unwrap().to_owned()), t).unwrap();
        let failed = (failed, KeyVersion::of(&read));

        // The dead worker came back and renewed its lease: nothing is given up,
        // neither the operation nor its key.
        let held = store.get_operation(op.id).unwrap().unwrap().lease_expires_at().unwrap();
        assert!(store.renew_lease(op.id, "crashy", held, t + Duration::seconds(5)).unwrap());
        let records = || store.list_audit(&AuditFilters { resource_id: Some(k.id.to_string()), ..Default::default() }, 0, 10).unwrap().total;
        let before = records();
        assert!(!store.give_up_operation(&given_up, "crashy", t, std::slice::from_ref(&failed), &outcome(&given_up)).unwrap());
        assert_eq!(records(), before, "no outcome record for what was not given up");
        assert_eq!(store.get_operation(op.id).unwrap().unwrap().state(), OperationState::Running);
        assert!(store.get_key(k.id).unwrap().unwrap().lifecycle().is_busy());

        // Its lease ran out for good: the outcome and the key in one write.
        let later = t + Duration::seconds(6);
        assert!(store.give_up_operation(&given_up, "crashy", later, &[failed], &outcome(&given_up)).unwrap());
        assert_eq!(records(), before + 1, "the outcome is in the trail, written with it");
        let stored = store.get_operation(op.id).unwrap().unwrap();
        assert_eq!(stored.state(), OperationState::Failed);
        assert!(stored.last_error().unwrap().contains("given up"));
        let key = store.get_key(k.id).unwrap().unwrap();
        assert_eq!(key.lifecycle().status(), KeyStatus::Failed, "{key:?}");
        assert!(!key.lifecycle().is_busy());
        assert!(store.exhausted_operations(later).unwrap().is_empty());
    }

    fn finishing_an_operation_writes_its_keys_in_the_same_transaction(store: &Store, _db: &TestDatabase) {
        let partition = registered_partition(store, "hsm-fin");
        let k = key(&partition, "fin", ObjectType::SecretKey, 256);
        let op = create_op(&k);
        store.insert_keys_with_operation(std::slice::from_ref(&k), &op, &test_audit()).unwrap();
        let claimed = store.claim_next_operation("w", now(), Duration::seconds(30)).unwrap().unwrap();
        assert_eq!(claimed.id, op.id);
        let mut made = k.clone();
        made.apply(&KeyEvent::Succeeded, now()).unwrap();
        made.modulus = "ab".into();
        let made = (made, KeyVersion::of(&k));
        let mut done = claimed.clone();
        done.finish(Ok(()), now()).unwrap();
        // A worker that lost the lease writes neither the operation nor the key.
        let records = || store.list_audit(&AuditFilters { action: Some("operation keycreate".into()), ..Default::default() }, 0, 10).unwrap().total;
        assert!(!store.finish_operation(&done, "not-w", std::slice::from_ref(&made), &outcome(&done)).unwrap());
        assert_eq!(store.get_key(k.id).unwrap().unwrap().lifecycle().status(), KeyStatus::InProgress);
        assert_eq!(records(), 0, "nor its audit record");
        assert!(store.finish_operation(&done, "w", std::slice::from_ref(&made), &outcome(&done)).unwrap());
        assert_eq!(store.get_key(k.id).unwrap().unwrap(), made.0);
        assert_eq!(records(), 1, "the outcome and its audit record commit together");
    }

    fn an_outcome_is_written_only_over_the_key_its_operation_read(store: &Store, _db: &TestDatabase) {
        let partition = registered_partition(store, "hsm-cas");
        let k = key(&partition, "cas", ObjectType::SecretKey, 256);
        let op = create_op(&k);
        store.insert_keys_with_operation(std::slice::from_ref(&k), &op, &test_audit()).unwrap();
        let claimed = store.claim_next_operation("w", now(), Duration::seconds(30)).unwrap().unwrap();
        // Someone else wrote the record after the operation read it.
        let mut meddled = k.clone();
        meddled.label = "meddled".into();
        meddled.updated_at = now() + Duration::milliseconds(1);
        assert!(store.save_key(&meddled, &KeyVersion::of(&k)).unwrap());
        let mut made = k.clone();
        made.apply(&KeyEvent::Succeeded, now() + Duration::milliseconds(2)).unwrap();
        let mut done = claimed.clone();
        done.finish(Ok(()), now()).unwrap();
        let written = store.finish_operation(&done, "w", &[(made, KeyVersion::of(&k))], &outcome(&done));
        assert!(matches!(written, Err(StoreError::Conflict(_))), "{written:?}");
        assert_eq!(store.get_key(k.id).unwrap().unwrap(), meddled, "the later write stands");
        assert_eq!(store.get_operation(op.id).unwrap().unwrap().state(), OperationState::Running, "nothing of the outcome was written");
        assert_eq!(store.list_audit(&AuditFilters { action: Some("operation keycreate".into()), ..Default::default() }, 0, 10).unwrap().total, 0);
    }

    fn an_operation_begun_after_one_that_failed_clears_its_error(store: &Store, _db: &TestDatabase) {
        let partition = registered_partition(store, "hsm-error");
        let k = key(&partition, "error", ObjectType::SecretKey, 256);
        let op = create_op(&k);
        store.insert_keys_with_operation(std::slice::from_ref(&k), &op, &test_audit()).unwrap();
        let claimed = store.claim_next_operation("w", now(), Duration::seconds(30)).unwrap().unwrap();
        let mut made = k.clone();
        made.apply(&KeyEvent::Succeeded, now()).unwrap();
        let mut done = claimed.clone();
        done.finish(Ok(()), now()).unwrap();
        assert!(store.finish_operation(&done, "w", &[(made.clone(), KeyVersion::of(&k))], &outcome(&done)).unwrap());
        // A replicate that failed leaves its error on the record...
        let replicate = Operation::queued(Uuid::new_v4(), OperationPayload::ReplicateKey { key_id: k.id }, now());
        store.begin_key_operation(&replicate, &test_audit()).unwrap().unwrap();
        let claimed = store.claim_next_operation("w", now(), Duration::seconds(30)).unwrap().unwrap();
        let read = store.get_key(k.id).unwrap().unwrap();
        let mut failed = read.clone();
        failed.apply(&KeyEvent::Failed("the second member is away".into()), now()).unwrap();
        let mut done = claimed.clone();
        done.finish(Err("the second member is away".into()), now()).unwrap();
        assert!(store.finish_operation(&done, "w", &[(failed, KeyVersion::of(&read))], &outcome(&done)).unwrap());
        assert!(store.get_key(k.id).unwrap().unwrap().lifecycle().operation_error().is_some());
        // ...and the next operation begins with none: the record reads back.
        let update = Operation::queued(
            Uuid::new_v4(),
            OperationPayload::UpdateKey { key_id: k.id, changes: vec![(luna_domain::Attribute::Sign, true)] },
            now(),
        );
        store.begin_key_operation(&update, &test_audit()).unwrap().unwrap();
        let busy = store.get_key(k.id).unwrap().unwrap();
        assert!(busy.lifecycle().is_busy());
        assert_eq!(busy.lifecycle().operation_error(), None);
    }

    fn an_unreadable_operation_is_set_aside_and_the_queue_goes_on(store: &Store, db: &TestDatabase) {
        let first = Operation::queued(Uuid::new_v4(), OperationPayload::DestroyKey { key_id: Uuid::new_v4() }, now());
        let second = Operation::queued(Uuid::new_v4(), OperationPayload::DestroyKey { key_id: Uuid::new_v4() }, now() + Duration::seconds(1));
        store.enqueue(&first).unwrap();
        store.enqueue(&second).unwrap();
        // Edited by hand: running, yet with no lease owner. No move makes that.
        raw_sql(db, &format!("UPDATE operations SET state = 'running', lease_owner = NULL, lease_expires_at = 0 WHERE id = '{}'", first.id));
        assert!(matches!(store.get_operation(first.id), Err(StoreError::Corrupt { .. })));
        let claimed = store.claim_next_operation("w", now() + Duration::seconds(2), Duration::seconds(30)).unwrap().unwrap();
        assert_eq!(claimed.id, second.id, "the queue goes on past the unreadable row");
        let set_aside = store.get_operation(first.id).unwrap().unwrap();
        assert_eq!(set_aside.state(), OperationState::Failed);
        assert!(set_aside.last_error().unwrap().starts_with("set aside: the stored operation cannot be read"), "{set_aside:?}");
    }

    fn a_cancel_survives_progress_saved_from_a_copy_read_before_it(store: &Store, _db: &TestDatabase) {
        let partition = Uuid::new_v4();
        let (refresh, op) = job(JobType::Refresh, vec![partition]);
        store.insert_job_with_operation(&refresh, &op, &test_audit()).unwrap();
        let mut running = store.get_job(refresh.id).unwrap().unwrap();
        assert!(store.request_job_cancel(refresh.id, now(), &test_audit()).unwrap().unwrap().lifecycle().abort());
        // The runner, still on its copy, records a partition's progress.
        running.detailed_status.insert(partition, "1000 objects read".into());
        assert!(store.save_job(&running).unwrap());
        let stored = store.get_job(refresh.id).unwrap().unwrap();
        assert!(stored.lifecycle().abort(), "the cancel the user was answered stands");
        assert_eq!(stored.detailed_status[&partition], "1000 objects read");
        assert!(store.job_abort_requested(refresh.id).unwrap());
    }

    fn a_second_job_on_a_busy_partition_is_a_conflict_until_the_first_ends(store: &Store, _db: &TestDatabase) {
        let p1 = Uuid::new_v4();
        let p2 = Uuid::new_v4();
        let (refresh, op) = job(JobType::Refresh, vec![p1, p2]);
        store.insert_job_with_operation(&refresh, &op, &test_audit()).unwrap();
        let (again, op2) = job(JobType::Refresh, vec![p2]);
        let err = store.insert_job_with_operation(&again, &op2, &test_audit()).unwrap_err();
        assert_eq!(err.to_string(), format!("a refresh job is already in progress on partition {p2}"));
        assert!(store.get_job(again.id).unwrap().is_none(), "the refused job left nothing");
        let (sync, op3) = job(JobType::HaSynchronize, vec![p2]);
        store.insert_job_with_operation(&sync, &op3, &test_audit()).unwrap();
        // Cancel: the abort flag is set at once; ending frees the partitions.
        let cancelled = store.request_job_cancel(refresh.id, now(), &test_audit()).unwrap().unwrap();
        assert!(cancelled.lifecycle().abort());
        let mut ended = cancelled;
        ended.detailed_status.insert(p1, "cancelled".into());
        ended.apply(JobEvent::StopCancelled, now()).unwrap();
        assert!(store.save_job(&ended).unwrap());
        assert_eq!(store.get_job(refresh.id).unwrap().unwrap(), ended);
        let err = store.request_job_cancel(refresh.id, now(), &test_audit()).unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "cancelling an ended job: {err}");
        assert!(store.request_job_cancel(Uuid::new_v4(), now(), &test_audit()).unwrap().is_none());
        let (next, op4) = job(JobType::Refresh, vec![p2]);
        store.insert_job_with_operation(&next, &op4, &test_audit()).unwrap();
        // Lists: by type, status filter and order.
        let refreshes = store.list_jobs(JobType::Refresh, &query::<JobFilters>("")).unwrap();
        assert_eq!(refreshes.total, 2);
        assert_eq!(refreshes.items[0].id, next.id, "newest first");
        let done = store.list_jobs(JobType::Refresh, &query::<JobFilters>("overall_status=cancelled")).unwrap();
        assert_eq!(done.items.iter().map(|j| j.id).collect::<Vec<_>>(), vec![refresh.id]);
        assert_eq!(done.items[0].lifecycle().status(), JobStatus::Cancelled);
        assert!(done.items[0].completed_at.is_some());
        let syncs = store.list_jobs(JobType::HaSynchronize, &query::<JobFilters>(&format!("id={}", sync.id))).unwrap();
        assert_eq!(syncs.total, 1);
    }

    // Two instances append at once, each chaining to the head it last
    // committed without reading it: an append that finds its number taken
    // reads the head and chains again, so the trail stays one chain.
    fn two_instances_appending_at_once_keep_one_chain(store: &Store, db: &TestDatabase) {
        let other = db.second_store().unwrap();
        std::thread::scope(|s| {
            for t in 0..4 {
                let instance = if t % 2 == 0 { store } else { &other };
                s.spawn(move || {
                    for n in 0..25 {
                        let entry = luna_store::AuditEntry {
                            username: format!("user{t}"),
                            action: "keys.create".into(),
                            resource_id: n.to_string(),
                            ..test_audit()
                        };
                        instance.append_audit(&entry).unwrap();
                    }
                });
            }
        });
        assert_eq!(store.verify_audit().unwrap(), AuditCheck::Intact);
        let all = store.list_audit(&AuditFilters::default(), 0, 200).unwrap();
        assert_eq!(all.total, 100, "every record kept, none twice");
        assert_eq!(all.items.first().map(|r| r.seq), Some(100));
    }

    // Migration 14 makes `seq` SQLite's rowid (a new table), migration 15
    // adds the fields of format 3: every record written before survives
    // both, and its reversal, and its chain still verifies beside records
    // written after.
    fn the_audit_trail_keeps_every_record_and_its_chain_through_migrations_14_and_15(store: &Store, db: &TestDatabase) {
        use diesel::connection::SimpleConnection as _;
        use diesel::Connection as _;
        use diesel_migrations::{FileBasedMigrations, MigrationHarness as _};
        let tree = |backend: &str| {
            FileBasedMigrations::from_path(format!("{}/../../migrations/{backend}", env!("CARGO_MANIFEST_DIR"))).unwrap()
        };
        // Reverts the last `revert` migrations, runs `sql`, then runs every pending one.
        let migrate = |revert: usize, sql: &[String]| match db.url.strip_prefix("sqlite://") {
            Some(path) => {
                let mut conn = diesel::SqliteConnection::establish(path).unwrap();
                (0..revert).for_each(|_| drop(conn.revert_last_migration(tree("sqlite")).unwrap()));
                sql.iter().for_each(|s| conn.batch_execute(s).unwrap());
                conn.run_pending_migrations(tree("sqlite")).unwrap();
            }
            None => {
                let mut conn = diesel::PgConnection::establish(&db.url).unwrap();
                (0..revert).for_each(|_| drop(conn.revert_last_migration(tree("postgres")).unwrap()));
                sql.iter().for_each(|s| conn.batch_execute(s).unwrap());
                conn.run_pending_migrations(tree("postgres")).unwrap();
            }
        };
        // Five records as migration 14's schema held them, then 15 again.
        migrate(1, &luna_store::testing::format_2_trail(5));
        assert_eq!(store.verify_audit().unwrap(), AuditCheck::Intact, "format 2 records after migration 15");
        let kept = store.list_audit(&AuditFilters::default(), 0, 10).unwrap();
        assert_eq!(kept.total, 5);
        assert!(kept.items.iter().all(|r| r.format == 2 && r.entry.user_id.is_empty()));
        assert_eq!(kept.items[0].entry.resource_id, "key-5", "target is the resource id");
        // Back through 14 and forth again: the rowid table keeps them all.
        migrate(2, &[]);
        assert_eq!(store.verify_audit().unwrap(), AuditCheck::Intact, "after migrations 14 and 15 again");
        store.append_audit(&test_audit()).unwrap();
        assert_eq!(store.verify_audit().unwrap(), AuditCheck::Intact, "a format 3 record chained to format 2 ones");
        let newest = store.list_audit(&AuditFilters::default(), 0, 10).unwrap().items.remove(0);
        assert_eq!((newest.seq, newest.format), (6, 3));
        assert_eq!(newest.entry.instance, "test-instance");
    }

    fn the_audit_chain_holds_under_concurrent_appends_and_shows_tampering(store: &Store, db: &TestDatabase) {
        let entry = |user: &str, action: &str| luna_store::AuditEntry {
            username: user.into(),
            action: action.into(),
            ..test_audit()
        };
        // The server's store keeps the head in a file outside the database.
        let dir = tempfile::tempdir().unwrap();
        let server = db.second_store().unwrap().with_audit_checkpoint(&dir.path().join("audit.head")).unwrap();
        std::thread::scope(|s| {
            for t in 0..4 {
                let server = &server;
                s.spawn(move || {
                    for _ in 0..10 {
                        server.append_audit(&entry(&format!("user{t}"), "keys.create")).unwrap();
                    }
                });
            }
        });
        assert_eq!(server.verify_audit().unwrap(), AuditCheck::Intact, "40 concurrent appends, one unbroken chain");
        let all = store.list_audit(&AuditFilters::default(), 0, 100).unwrap();
        assert_eq!(all.total, 40);
        assert_eq!(all.items[0].seq, 40, "newest first");
        assert_eq!(all.items[0].previous_hash, all.items[1].hash);
        assert_eq!(std::fs::read_to_string(dir.path().join("audit.head")).unwrap(), format!("{:020} {}\n", 40, all.items[0].hash));
        assert_eq!(store.list_audit(&AuditFilters { username: Some("user2".into()), action: Some("keys.create".into()), ..Default::default() }, 0, 100).unwrap().total, 10);
        // Tampering, as someone with database access (not the data directory) would.
        let raw = |sql: &str| {
            use diesel::connection::SimpleConnection;
            use diesel::Connection;
            match db.url.strip_prefix("sqlite://") {
                Some(path) => diesel::SqliteConnection::establish(path).unwrap().batch_execute(sql).unwrap(),
                None => diesel::PgConnection::establish(&db.url).unwrap().batch_execute(sql).unwrap(),
            }
        };
        let broken_at = |check: AuditCheck| match check {
            AuditCheck::Broken { at, why } => (at, why),
            AuditCheck::Intact => panic!("the tampering went unseen"),
        };
        raw("UPDATE audit_records SET outcome = '403' WHERE seq = 17");
        assert_eq!(broken_at(server.verify_audit().unwrap()).0, 17);
        raw("UPDATE audit_records SET outcome = '200' WHERE seq = 17");
        assert_eq!(server.verify_audit().unwrap(), AuditCheck::Intact);
        // The newest five cut off: the chain alone still holds; the checkpoint does not.
        raw("DELETE FROM audit_records WHERE seq > 35");
        assert_eq!(store.verify_audit().unwrap(), AuditCheck::Intact, "a store without the checkpoint cannot see it");
        let (at, why) = broken_at(server.verify_audit().unwrap());
        assert_eq!(at, 36);
        assert!(why.contains("the trail ends at record 35, but this server wrote record 40"), "{why}");
        raw("DELETE FROM audit_records");
        assert!(broken_at(server.verify_audit().unwrap()).1.contains("ends at record 0"));
        // Rewritten from record 5 on by someone who can compute hashes but has
        // not the audit key (another pin.key): the MACs do not follow.
        for _ in 0..10 {
            store.append_audit(&entry("admin", "keys.create")).unwrap();
        }
        assert_eq!(store.verify_audit().unwrap(), AuditCheck::Intact);
        raw("DELETE FROM audit_records WHERE seq >= 5");
        let forger = Store::open(&db.url, PinCipher::from_key(&[0x13; 32]), PoolOptions::default()).unwrap();
        for _ in 0..6 {
            forger.append_audit(&entry("admin", "keys.create")).unwrap();
        }
        assert_eq!(broken_at(store.verify_audit().unwrap()).0, 5);
        raw("DELETE FROM audit_records WHERE seq = 3");
        assert_eq!(broken_at(store.verify_audit().unwrap()).0, 4, "a deleted record breaks the chain at the next");
    }

    fn users_and_sessions(store: &Store, _db: &TestDatabase) {
        let user = store
            .insert_user(&luna_store::NewUser { username: "admin".into(), password_hash: "$argon2id$…".into(), groups: vec!["admin".into()] }, now(), &test_audit())
            .unwrap();
        assert_eq!(store.user_by_name("admin").unwrap().unwrap(), user);
        assert!(store.user_by_name("nobody").unwrap().is_none());
        let dup = luna_store::NewUser { username: "admin".into(), password_hash: "x".into(), groups: vec![] };
        assert!(matches!(store.insert_user(&dup, now(), &test_audit()), Err(StoreError::Conflict(_))));
        let t = now();
        let hour = t + Duration::hours(1);
        let session = store.open_session(&user, "hash-1", hour, t, &test_audit()).unwrap().unwrap();
        assert_eq!(store.session_user(session).unwrap(), Some(user.id));
        let (refreshed, same) = store.refresh_session("hash-1", "hash-2", hour, t, &test_audit()).unwrap().unwrap();
        assert_eq!((refreshed.id, same), (user.id, session), "a refresh carries the session on");
        assert!(store.refresh_session("hash-1", "hash-x", hour, t, &test_audit()).unwrap().is_none(), "a refresh token works once");
        assert!(store.refresh_session("hash-2", "hash-3", hour, t + Duration::hours(2), &test_audit()).unwrap().is_none(), "expired");
        assert!(store.refresh_session("hash-3", "hash-4", hour, t, &test_audit()).unwrap().is_none(), "an expired token has no successor");

        // Logging out ends one session, and its refresh tokens with it; the
        // user's other sessions stay open.
        let console = store.open_session(&user, "console-1", hour, t, &test_audit()).unwrap().unwrap();
        let terraform = store.open_session(&user, "terraform-1", hour, t, &test_audit()).unwrap().unwrap();
        assert!(store.end_session(console, &test_audit()).unwrap());
        assert!(!store.end_session(console, &test_audit()).unwrap(), "ended once");
        assert_eq!(store.session_user(console).unwrap(), None);
        assert!(store.refresh_session("console-1", "console-2", hour, t, &test_audit()).unwrap().is_none());
        assert_eq!(store.session_user(terraform).unwrap(), Some(user.id));

        // A password or group change ends every session of that user, and
        // only of that user.
        let other = store
            .insert_user(&luna_store::NewUser { username: "bob".into(), password_hash: "h".into(), groups: vec!["CCKM Users".into()] }, now(), &test_audit())
            .unwrap();
        let bobs = store.open_session(&other, "bob-1", hour, t, &test_audit()).unwrap().unwrap();
        let own = UserChange::OwnPassword { proven: "$argon2id$old", hash: "$argon2id$mine" };
        assert!(!store.change_user(user.id, &own, t, &test_audit()).unwrap(), "the proven password is not the stored one");
        assert_eq!(store.session_user(terraform).unwrap(), Some(user.id), "a change not made ends nothing");
        assert!(store.change_user(user.id, &UserChange::Password { hash: "$argon2id$new" }, t, &test_audit()).unwrap());
        assert_eq!(store.get_user(user.id).unwrap().unwrap().password_hash, "$argon2id$new");
        assert_eq!(store.session_user(terraform).unwrap(), None, "a password change ends the user's sessions");
        assert!(store.refresh_session("terraform-1", "terraform-2", hour, t, &test_audit()).unwrap().is_none());
        assert_eq!(store.session_user(bobs).unwrap(), Some(other.id));
        let users_only = ["CCKM Users".to_owned()];
        let both = ["CCKM Admins".to_owned(), "CCKM Users".to_owned()];
        assert!(!store.change_user(other.id, &UserChange::Groups { from: &both, to: &users_only }, t, &test_audit()).unwrap(), "worked out from groups it no longer has");
        assert_eq!(store.session_user(bobs).unwrap(), Some(other.id));
        assert!(store.change_user(other.id, &UserChange::Groups { from: &users_only, to: &both }, t, &test_audit()).unwrap());
        assert_eq!(store.session_user(bobs).unwrap(), None, "a group change ends the user's sessions");
        assert!(!store.change_user(Uuid::new_v4(), &UserChange::Password { hash: "x" }, t, &test_audit()).unwrap(), "no such user");
        let own = UserChange::OwnPassword { proven: "$argon2id$new", hash: "$argon2id$mine" };
        assert!(store.change_user(user.id, &own, t, &test_audit()).unwrap(), "proven: changed");
        assert_eq!(store.get_user(user.id).unwrap().unwrap().password_hash, "$argon2id$mine");
        assert_eq!(store.get_user(other.id).unwrap().unwrap().groups, vec!["CCKM Admins".to_string(), "CCKM Users".to_string()]);
        let listed = store.list_users(None, 0, 10).unwrap();
        assert_eq!(store.list_users(Some("bob"), 0, 10).unwrap().total, 1);
        assert_eq!((listed.total, listed.items.iter().map(|u| u.username.as_str()).collect::<Vec<_>>()), (2, vec!["admin", "bob"]));

        // A login whose password check read the user before a change of it
        // opens no session (it would outlive the change).
        assert_eq!(store.open_session(&other, "bob-stale", hour, t, &test_audit()).unwrap(), None, "groups changed since");
        assert_eq!(store.open_session(&user, "admin-stale", hour, t, &test_audit()).unwrap(), None, "password changed since");
        let (user, other) = (store.get_user(user.id).unwrap().unwrap(), store.get_user(other.id).unwrap().unwrap());

        // A deleted user's sessions and refresh tokens go with it.
        let bobs = store.open_session(&other, "bob-2", hour, t, &test_audit()).unwrap().unwrap();
        assert!(store.delete_user(other.id, &test_audit()).unwrap());
        assert!(store.get_user(other.id).unwrap().is_none());
        assert_eq!(store.session_user(bobs).unwrap(), None);
        assert!(store.refresh_session("bob-2", "bob-3", hour, t, &test_audit()).unwrap().is_none());

        // Opening a session prunes those whose last refresh token expired.
        let stale = store.open_session(&user, "stale-1", t + Duration::seconds(1), t, &test_audit()).unwrap().unwrap();
        store.open_session(&user, "fresh-1", hour, t + Duration::seconds(2), &test_audit()).unwrap().unwrap();
        assert_eq!(store.session_user(stale).unwrap(), None, "pruned");
        assert!(!store.delete_user(other.id, &test_audit()).unwrap());
    }
}

#[test]
fn urls_pick_the_backend_and_bad_ones_are_refused() {
    for bad in ["mysql://x", "sqlite://", "sqlite::memory:", "", "/tmp/x.db"] {
        let err = Store::open(bad, PinCipher::from_key(&[0; 32]), PoolOptions::default()).unwrap_err();
        assert!(matches!(err, StoreError::UnsupportedUrl), "{bad}: {err}");
    }
}

/// SQLite gives its `-wal` and `-shm` files the database file's mode: all
/// three are readable by their owner only (key records, sealed PINs).
#[cfg(unix)]
#[test]
fn a_new_sqlite_database_and_its_journal_are_the_owners_only() {
    use std::os::unix::fs::PermissionsExt;
    let db = TestDatabase::sqlite().unwrap();
    db.store.append_audit(&test_audit()).unwrap();
    let file = db.url.strip_prefix("sqlite://").unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let path = format!("{file}{suffix}");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{path}");
    }
}

/// A deferred batch on PostgreSQL commits without waiting for its WAL to be
/// flushed, and a synced one waits: read from the server's own positions
/// (its flush LSN against its insert LSN) right after each write, on a
/// private server where nothing else writes.
#[test]
fn deferred_commits_do_not_wait_for_the_disk_on_postgresql() {
    use diesel::{Connection as _, RunQueryDsl as _};
    #[derive(diesel::QueryableByName)]
    struct Flushed {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        flushed: bool,
    }
    let server = luna_store::testing::PrivatePostgres::start();
    let store = Store::open(&server.url, PinCipher::from_key(&[7; 32]), PoolOptions::default()).unwrap();
    let mut watcher = diesel::PgConnection::establish(&server.url).unwrap();
    let mut flushed = || -> bool {
        diesel::sql_query("SELECT pg_current_wal_flush_lsn() >= pg_current_wal_insert_lsn() AS flushed")
            .get_result::<Flushed>(&mut watcher)
            .unwrap()
            .flushed
    };
    let partition = registered_partition(&store, "hsm-wal");
    let k = key(&partition, "wal", ObjectType::SecretKey, 256);
    store
        .insert_keys_with_operation(std::slice::from_ref(&k), &create_op(&k), &test_audit())
        .unwrap();
    let claimed = store
        .claim_next_operation("w", now(), Duration::seconds(30))
        .unwrap()
        .unwrap();
    let mut held = claimed.lease_expires_at().unwrap();
    let (mut synced_flushed, mut deferred_unflushed) = (0, 0);
    for _ in 0..10 {
        store.append_audit(&outcome(&claimed)).unwrap();
        synced_flushed += usize::from(flushed());
        let until = held + Duration::seconds(1);
        assert!(store.renew_lease(claimed.id, "w", held, until).unwrap());
        held = until;
        deferred_unflushed += usize::from(!flushed());
    }
    assert_eq!(
        synced_flushed, 10,
        "a synced write's commit is flushed when it returns"
    );
    // The WAL writer flushes on its own every 200 ms: most, not all, are seen unflushed.
    assert!(
        deferred_unflushed >= 5,
        "{deferred_unflushed} of 10 deferred commits seen unflushed"
    );
}

/// Two instances begin operations on the two halves of an RSA pair at once:
/// each takes its half, then the other (an operation on a pair takes both),
/// so their row locks cross and PostgreSQL kills one as a deadlock's victim.
/// The store runs the victim again, which then finds the pair busy: one
/// operation begins, the other is a conflict (a 409), and no deadlock
/// reaches a caller (it would be a 503).
#[test]
fn a_deadlock_between_instances_is_run_again_and_never_reaches_the_caller() {
    use diesel::{Connection as _, RunQueryDsl as _};
    #[derive(diesel::QueryableByName)]
    struct Deadlocks {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        deadlocks: i64,
    }
    let db = TestDatabase::postgres().unwrap();
    let (a, b) = (&db.store, &db.second_store().unwrap());
    let partition = registered_partition(a, "hsm-deadlock");
    let deadlocks = || {
        let mut conn = diesel::PgConnection::establish(&db.url).unwrap();
        diesel::sql_query("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
            .get_result::<Deadlocks>(&mut conn)
            .unwrap()
            .deadlocks
    };
    let before = deadlocks();
    let retried_before = a.write_stats().retried + b.write_stats().retried;
    for round in 0..12 {
        let (mut private, mut public) = rsa_pair(&partition, &format!("pair-{round}"));
        private.apply(&KeyEvent::Succeeded, now()).unwrap();
        public.apply(&KeyEvent::Succeeded, now()).unwrap();
        a.insert_keys(&[private.clone(), public.clone()]).unwrap();
        let start = std::sync::Barrier::new(2);
        let outcomes: Vec<Result<bool, String>> = std::thread::scope(|s| {
            let handles: Vec<_> = [(a, private.id), (b, public.id)]
                .into_iter()
                .map(|(store, key_id)| {
                    let start = &start;
                    s.spawn(move || {
                        let op = Operation::queued(
                            Uuid::now_v7(),
                            OperationPayload::ReplicateKey { key_id },
                            now(),
                        );
                        start.wait();
                        match store.begin_key_operation(&op, &test_audit()) {
                            Ok(began) => Ok(began.is_some()),
                            Err(StoreError::Conflict(_)) => Ok(false),
                            Err(other) => Err(other.to_string()),
                        }
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(outcomes.iter().all(Result::is_ok), "round {round}: {outcomes:?}");
        assert_eq!(
            outcomes.iter().filter(|o| **o == Ok(true)).count(),
            1,
            "round {round}: {outcomes:?}"
        );
    }
    let (seen, retried) = (
        deadlocks() - before,
        a.write_stats().retried + b.write_stats().retried - retried_before,
    );
    assert!(
        seen >= 1,
        "the race was run into a deadlock at least once ({seen} in 12 rounds)"
    );
    assert_eq!(
        retried,
        u64::try_from(seen).unwrap(),
        "every deadlock's victim was run again"
    );
    counts_are_exact(&db);
}
