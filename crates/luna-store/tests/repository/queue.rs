//! The operation queue and jobs: claims, parking, leases, outcomes, cancels, conflicts; and audit appends from two instances.

use super::*;

on_both_backends! {
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
        assert!(store.request_job_cancel(refresh.id, now(), &test_audit()).unwrap().unwrap().lifecycle().cancel_requested());
        // The runner, still on its copy, records a partition's progress.
        running.detailed_status.insert(partition, "1000 objects read".into());
        assert!(store.save_job(&running).unwrap());
        let stored = store.get_job(refresh.id).unwrap().unwrap();
        assert!(stored.lifecycle().cancel_requested(), "the cancel the user was answered stands");
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
        assert!(cancelled.lifecycle().cancel_requested());
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
        // How many migrations, from `first` on, to revert (later ones too).
        let from = |first: &str| {
            let dir = format!("{}/../../migrations/sqlite", env!("CARGO_MANIFEST_DIR"));
            std::fs::read_dir(dir).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().as_ref() >= first).count()
        };
        // Five records as migration 14's schema held them, then 15 again.
        migrate(from("2026-12-07-000015"), &luna_store::testing::format_2_trail(5));
        assert_eq!(store.verify_audit().unwrap(), AuditCheck::Intact, "format 2 records after migration 15");
        let kept = store.list_audit(&AuditFilters::default(), 0, 10).unwrap();
        assert_eq!(kept.total, 5);
        assert!(kept.items.iter().all(|r| r.format == 2 && r.entry.user_id.is_empty()));
        assert_eq!(kept.items[0].entry.resource_id, "key-5", "target is the resource id");
        // Back through 14 and forth again: the rowid table keeps them all.
        migrate(from("2026-12-07-000014"), &[]);
        assert_eq!(store.verify_audit().unwrap(), AuditCheck::Intact, "after migrations 14 and 15 again");
        store.append_audit(&test_audit()).unwrap();
        assert_eq!(store.verify_audit().unwrap(), AuditCheck::Intact, "a format 3 record chained to format 2 ones");
        let newest = store.list_audit(&AuditFilters::default(), 0, 10).unwrap().items.remove(0);
        assert_eq!((newest.seq, newest.format), (6, 3));
        assert_eq!(newest.entry.instance, "test-instance");
    }
}
