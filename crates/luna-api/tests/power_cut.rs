//! What a `201` and an `AVAILABLE` promise across a power cut
//! (docs/reliability.md). An accept is on disk before its `201`; an
//! operation's outcome is committed without waiting for the disk, so a
//! power cut may lose it. The database a power cut leaves is then the one
//! before the outcome's commit: here a copy of SQLite's files taken at that
//! moment (between the token work and the outcome's write). A server started
//! on that copy finds the operation running under a lease no one renews;
//! once it has run out the operation is attempted again, finds the object
//! the token made by its CKA_ID, and the key ends AVAILABLE with that one
//! object: nothing made twice, nothing lost.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use luna_api::testing::{runner_settings, Api};
use luna_pkcs11::Token as _;
use luna_runner::{Hook, RunnerSettings};
use luna_store::testing::TestDatabase;
use serde_json::json;

/// Copies the SQLite database at `url` (its file and its log) into `to`.
fn copy_database(url: &str, to: &Path) -> PathBuf {
    let file = PathBuf::from(url.trim_start_matches("sqlite://"));
    let copy = to.join("luna.db");
    for suffix in ["", "-wal"] {
        let from = PathBuf::from(format!("{}{suffix}", file.display()));
        if from.exists() {
            std::fs::copy(&from, format!("{}{suffix}", copy.display())).unwrap();
        }
    }
    copy
}

#[test]
fn an_outcome_lost_to_a_power_cut_is_made_again_from_the_object_the_token_holds() {
    let db = TestDatabase::sqlite().unwrap();
    let url = db.url.clone();
    let snapshot = tempfile::tempdir().unwrap();
    let copied = Arc::new(std::sync::Mutex::new(None));
    let hook = {
        let (url, dir, copied) = (url.clone(), snapshot.path().to_path_buf(), Arc::clone(&copied));
        move || {
            let mut copied = copied.lock().unwrap();
            if copied.is_none() {
                *copied = Some(copy_database(&url, &dir));
            }
        }
    };
    let first = Api::start_with_settings(
        db,
        RunnerSettings {
            before_outcome: Some(Hook(Arc::new(hook))),
            lease: time::Duration::seconds(2),
            ..runner_settings(2)
        },
    );
    let partition = first.partition("power-cut", 1);
    let (status, created) = first.send(
        "POST",
        "/cckm/hsm/luna/keys",
        &json!({"label": "survivor", "size": 256, "partition_id": partition["id"], "mechanism": "CKM_AES_KEY_GEN"}),
    );
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(first.settled(&id)["status"], "AVAILABLE");
    drop(first);

    // The machine comes back with the database as it was on disk.
    let copy = copied
        .lock()
        .unwrap()
        .take()
        .expect("the outcome's write was reached");
    let store = luna_store::testing::open_store(&format!("sqlite://{}", copy.display())).unwrap();
    let lost = store
        .get_key(uuid::Uuid::parse_str(&id).unwrap())
        .unwrap()
        .unwrap();
    assert!(
        lost.lifecycle().is_busy(),
        "the copy has the accept, not the outcome: {lost:?}"
    );
    let again = Api::start_on_store(
        store,
        RunnerSettings {
            lease: time::Duration::seconds(2),
            ..runner_settings(2)
        },
    );
    let key = again.settled(&id);
    assert_eq!(key["status"], "AVAILABLE", "{key}");
    let token = luna_pkcs11::testing::module()
        .open_token(
            partition["partition_label"].as_str().unwrap(),
            None,
            secrecy::SecretString::from(luna_pkcs11::testing::USER_PIN),
        )
        .unwrap();
    let objects = token
        .find_by_id(uuid::Uuid::parse_str(&id).unwrap().as_bytes())
        .unwrap();
    assert_eq!(
        objects.len(),
        1,
        "the object the first attempt made, and no second one"
    );
    assert_eq!(
        key["sha_256_fingerprint"],
        objects[0].fingerprint_hex(),
        "the record describes that object"
    );
}
