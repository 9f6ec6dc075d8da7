//! The module re-initialised under key work (it is, when a token appears
//! that the module did not list: a connection test, an HA member added):
//! every handle issued before is stale. An HA create whose clone to the
//! second member is cut so starts again and ends with the key on both
//! members, never AVAILABLE with a member's state saying its handle was
//! stale (seen once in five runs of `ciphertrust_clients.rs`).
//!
//! A test binary of its own: it re-initialises the process's module over
//! and over.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use luna_api::testing::Api;
use luna_store::testing::TestDatabase;
use serde_json::json;

#[test]
fn ha_creates_cut_by_re_initialisations_start_again_and_reach_every_member() {
    let api = Api::start(TestDatabase::sqlite().unwrap());
    let partition = api.partition_with_domain("reinit", 2);
    let module = Arc::clone(luna_pkcs11::testing::module());
    let done = Arc::new(AtomicBool::new(false));
    let cutter = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut cuts = 0;
            while !done.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(40));
                if module.reinitialise().unwrap() {
                    cuts += 1;
                }
            }
            cuts
        })
    };
    let ids: Vec<String> = (0..40)
        .map(|n| {
            let (status, key) = api.send(
                "POST",
                "/cckm/hsm/luna/keys",
                &json!({"label": format!("cut-{n}"), "size": 256, "partition_id": partition["id"],
                        "mechanism": "CKM_AES_KEY_GEN", "attributes": ["CKA_MODIFIABLE"]}),
            );
            assert_eq!(status, 201, "{key}");
            std::thread::sleep(Duration::from_millis(15));
            key["id"].as_str().unwrap().to_owned()
        })
        .collect();
    let settled: Vec<serde_json::Value> = ids.iter().map(|id| api.settled(id)).collect();
    done.store(true, Ordering::SeqCst);
    let cuts = cutter.join().unwrap();
    let mut everywhere = 0;
    for key in &settled {
        match key["status"].as_str() {
            // Ended: on every member, or given up after five interruptions
            // (the key FAILED, saying so), never half replicated for a
            // reason that was no member's.
            Some("AVAILABLE") => {
                let info = key["replication_info"].as_object().unwrap();
                assert_eq!(info.len(), 2, "{key}");
                assert!(info.values().all(|state| state == "available"), "{key}");
                assert_eq!(key["replicated"], true, "{key}");
                everywhere += 1;
            }
            Some("FAILED") => assert!(
                key["operation_error"].as_str().unwrap().contains("interrupted"),
                "{key}"
            ),
            _ => panic!("{key}"),
        }
    }
    eprintln!(
        "{cuts} re-initialisations; {everywhere} of {} keys on both members",
        settled.len()
    );
    assert!(cuts >= 10, "the module was re-initialised {cuts} times");
    assert!(
        everywhere >= settled.len() / 2,
        "{everywhere} of {}",
        settled.len()
    );
}
