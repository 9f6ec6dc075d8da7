//! Connections, HSM servers, partitions and keys: stored, read back, listed, filtered and counted.

use super::*;

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
}
