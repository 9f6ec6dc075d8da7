//! External key stores: kept with their first credential, found by path,
//! secrets unsealed only while valid, rotations that leave two valid at
//! most (two racing on two instances too), deleted with their credentials.

use luna_domain::xks::keystore::{Credential, KeystoreRequest, CREDENTIAL_RANDOM_BYTES};

use super::*;

fn new_credential(now: OffsetDateTime) -> (Credential, SecretString) {
    let random: [u8; CREDENTIAL_RANDOM_BYTES] = std::array::from_fn(|_| (rand_u64() & 0xff) as u8);
    Credential::from_random(&random, now)
}

fn valid_at(store: &Store, id: Uuid, at: OffsetDateTime) -> usize {
    let (_, credentials) = store.get_keystore(id).unwrap().unwrap();
    credentials.iter().filter(|c| c.valid_at(at)).count()
}

on_both_backends! {
    fn a_keystore_keeps_its_credentials_sealed_and_rotates_them_with_an_overlap(store: &Store, db: &TestDatabase) {
        let partition = registered_partition(store, "hsm-xks");
        let t0 = now();
        let request = KeystoreRequest {
            name: Some("aws-prod".into()),
            uri_path_prefix: Some("example/uri/path/prefix".into()),
            region: Some("us-east-1".into()),
            partition_id: Some(partition.id.to_string()),
        };
        let keystore = request.clone().create(Uuid::new_v4(), t0).unwrap();
        let (first, first_secret) = new_credential(t0);
        store.insert_keystore(&keystore, &first, &first_secret, &test_audit()).unwrap();
        let again = KeystoreRequest { name: Some("other".into()), ..request }.create(Uuid::new_v4(), t0).unwrap();
        let (other, other_secret) = new_credential(t0);
        assert!(matches!(store.insert_keystore(&again, &other, &other_secret, &test_audit()), Err(StoreError::Conflict(m)) if m.contains("example/uri/path/prefix")));

        assert_eq!(store.keystore_at("example/uri/path/prefix").unwrap(), Some(keystore.clone()));
        assert_eq!(store.keystore_at("example/uri").unwrap(), None);
        let secret = store.credential_secret(keystore.id, &first.access_key_id, t0).unwrap().unwrap();
        assert_eq!(secret.expose_secret(), first_secret.expose_secret());
        assert!(store.credential_secret(Uuid::new_v4(), &first.access_key_id, t0).unwrap().is_none(), "another keystore's");
        // Sealed to its access key id: a ciphertext moved to another row does not open.
        raw_sql(db, &format!("UPDATE xks_credentials SET access_key_id = 'MOVED' WHERE access_key_id = '{}'", first.access_key_id));
        assert!(store.credential_secret(keystore.id, "MOVED", t0).is_err());
        raw_sql(db, &format!("UPDATE xks_credentials SET access_key_id = '{}' WHERE access_key_id = 'MOVED'", first.access_key_id));

        let t1 = t0 + Duration::minutes(10);
        let (second, second_secret) = new_credential(t1);
        assert!(store.rotate_credential(keystore.id, &second, &second_secret, Duration::hours(1), &test_audit()).unwrap());
        assert!(store.credential_secret(keystore.id, &first.access_key_id, t1 + Duration::minutes(59)).unwrap().is_some(), "the old one within the overlap");
        assert!(store.credential_secret(keystore.id, &first.access_key_id, t1 + Duration::minutes(61)).unwrap().is_none(), "not after it");
        assert!(store.credential_secret(keystore.id, &second.access_key_id, t1 + Duration::days(400)).unwrap().is_some());
        let t2 = t1 + Duration::minutes(1);
        let (third, third_secret) = new_credential(t2);
        store.rotate_credential(keystore.id, &third, &third_secret, Duration::hours(1), &test_audit()).unwrap();
        assert_eq!(valid_at(store, keystore.id, t2), 2, "the newest older one and the new one");
        assert!(store.credential_secret(keystore.id, &first.access_key_id, t2).unwrap().is_none(), "the oldest ended at once");
        assert!(!store.rotate_credential(Uuid::new_v4(), &third, &third_secret, Duration::hours(1), &test_audit()).unwrap());

        // Listed with their own credentials each, as read one by one.
        let second_store = KeystoreRequest {
            name: Some("aws-dev".into()),
            uri_path_prefix: Some("dev".into()),
            region: Some("us-east-1".into()),
            partition_id: Some(partition.id.to_string()),
        }
        .create(Uuid::new_v4(), t2)
        .unwrap();
        let (dev, dev_secret) = new_credential(t2);
        store.insert_keystore(&second_store, &dev, &dev_secret, &test_audit()).unwrap();
        let listed = store.all_keystores().unwrap();
        assert_eq!(listed, vec![store.get_keystore(keystore.id).unwrap().unwrap(), store.get_keystore(second_store.id).unwrap().unwrap()]);
        assert_eq!((listed[0].1.len(), listed[1].1.len()), (3, 1));
        assert!(store.delete_keystore(second_store.id, &test_audit()).unwrap());

        assert!(store.delete_keystore(keystore.id, &test_audit()).unwrap());
        assert_eq!(store.get_keystore(keystore.id).unwrap(), None);
        assert!(store.credential_secret(keystore.id, &third.access_key_id, t2).unwrap().is_none());
        assert!(store.all_keystores().unwrap().is_empty());
    }

    fn two_rotations_racing_on_two_instances_leave_two_credentials_valid_at_most(store: &Store, db: &TestDatabase) {
        let other = db.second_store().unwrap();
        let partition = registered_partition(store, "hsm-xks-race");
        let t0 = now();
        let keystore = KeystoreRequest {
            name: Some("race".into()),
            uri_path_prefix: Some("race".into()),
            region: Some("eu-west-1".into()),
            partition_id: Some(partition.id.to_string()),
        }
        .create(Uuid::new_v4(), t0)
        .unwrap();
        let (first, secret) = new_credential(t0);
        store.insert_keystore(&keystore, &first, &secret, &test_audit()).unwrap();
        let at = t0 + Duration::seconds(1);
        let both = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            for instance in [store, &other] {
                let both = &both;
                s.spawn(move || {
                    let (new, secret) = new_credential(at);
                    both.wait();
                    instance.rotate_credential(keystore.id, &new, &secret, Duration::hours(1), &test_audit()).unwrap();
                });
            }
        });
        assert_eq!(valid_at(store, keystore.id, at), 2, "one of the racing rotations ended the other's overlap");
    }
}
