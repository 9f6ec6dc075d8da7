//! The audit chain under concurrent appends, users and sessions, and what differs by backend: URLs, file modes, deferred commits, deadlocks, connections the server closed, a schema newer than the build.

use super::*;

on_both_backends! {
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

    // An instance refuses, in one sentence naming both versions, a database
    // a newer release migrated past what it knows (a rolling upgrade's older
    // instance would otherwise come up healthy and fail requests).
    fn a_database_migrated_by_a_newer_release_is_refused_naming_both_versions(_store: &Store, db: &TestDatabase) {
        raw_sql(db, "INSERT INTO __diesel_schema_migrations (version) VALUES ('20990101000099')");
        let refused = db.second_store().unwrap_err();
        assert!(matches!(refused, luna_store::StoreError::NewerSchema { .. }), "{refused:?}");
        let sentence = refused.to_string();
        assert!(sentence.contains("version 20990101000099"), "{sentence}");
        let known = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../../migrations/sqlite"))
            .unwrap()
            .filter_map(|entry| entry.unwrap().file_name().to_str().and_then(|n| n.get(..17)).map(|v| v.replace('-', "")))
            .max()
            .unwrap();
        assert!(sentence.contains(&format!("up to {known}")), "{sentence}");
        raw_sql(db, "DELETE FROM __diesel_schema_migrations WHERE version = '20990101000099'");
        db.second_store().expect("the same database, at a version it knows");
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

/// PostgreSQL closes every connection when it restarts (or an administrator
/// ends them). Diesel keeps such a connection in the pool unless it was left
/// in a transaction, so each would fail the next statement sent on it; the
/// store drops them, and a read or a write that meets one runs again on
/// another: no caller hears of connections closed while they sat idle.
#[test]
fn connections_closed_while_idle_are_dropped_and_no_caller_hears_of_them() {
    use diesel::{Connection as _, RunQueryDsl as _};
    #[derive(diesel::QueryableByName)]
    struct Others {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        others: i64,
    }
    let db = TestDatabase::postgres().unwrap();
    let store = &db.store;
    let partition = registered_partition(store, "hsm-closed");
    let close_every_idle_connection = || {
        // Every pooled connection opened and idle, then ended by the server.
        store.commit_durability_of_every_connection().unwrap();
        let mut admin = diesel::PgConnection::establish(&db.url).unwrap();
        let others = "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()";
        diesel::sql_query(format!("SELECT pg_terminate_backend(pid) {others}"))
            .execute(&mut admin)
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while diesel::sql_query(format!("SELECT COUNT(*) AS others {others}"))
            .get_result::<Others>(&mut admin)
            .unwrap()
            .others
            > 0
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the server did not end the connections"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };

    close_every_idle_connection();
    let first = key(&partition, "after-read", ObjectType::SecretKey, 256);
    assert_eq!(
        store.get_key(first.id).unwrap(),
        None,
        "a read on a closed connection runs again"
    );
    for n in 0..8 {
        store
            .get_partition(partition.id)
            .unwrap()
            .unwrap_or_else(|| panic!("read {n}"));
    }
    store
        .insert_keys_with_operation(std::slice::from_ref(&first), &create_op(&first), &test_audit())
        .unwrap();

    close_every_idle_connection();
    let second = key(&partition, "after-write", ObjectType::SecretKey, 256);
    store
        .insert_keys_with_operation(std::slice::from_ref(&second), &create_op(&second), &test_audit())
        .expect("a write on a closed connection runs again");
    let listed = store.list_keys(&query("sort=createdAt")).unwrap();
    assert_eq!(listed.total, 2, "each key once");
    counts_are_exact(&db);
}
