//! Deep pages, claims, refresh tokens, compare-and-set writes and group commit.

use super::*;

on_both_backends! {
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
        let threads = 24;
        // Whether writes arrive together is the scheduler's: on a loaded
        // machine (CI, two cores, four tests at once) 24 threads can each run
        // their write alone. Up to three rounds; one must share commits.
        let mut rounds = Vec::new();
        for round in 0..3 {
            let before = store.write_stats();
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
                                    let name = if (t, n) == (0, 2) { "taken".to_owned() } else { format!("user-{round}-{t}-{n}") };
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
            assert_eq!(listed.total as usize, 1 + (round + 1) * (threads * 4 - 1), "every other write committed");
            let after = store.write_stats();
            let (writes, commits) = (after.writes - before.writes, after.commits - before.commits);
            assert_eq!(writes as usize, threads * 4 - 1, "every write committed but the one that failed (its batch's others ran again)");
            rounds.push((writes, commits));
            if commits < writes {
                return;
            }
        }
        panic!("writes that arrived together never shared a commit: (writes, commits) per round {rounds:?}");
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
}
