//! Tokens that go away and come back under a running server (real SoftHSM2
//! tokens whose store is moved away and back): the work waits for the token,
//! uncounted, and the health check and the partition say what is happening.
//!
//! A test binary of its own: recovering a token may re-initialise the
//! process's module, which ends every session and object handle on it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use luna_api::testing::Api;
use luna_pkcs11::testing::TakenAway;
use luna_store::testing::TestDatabase;
use serde_json::{json, Value};

const KEYS: &str = "/cckm/hsm/luna/keys";

fn health(api: &Api) -> Value {
    let (status, health) = api.get("/healthz");
    assert_eq!(status, 200, "a token away is no reason to restart: {health}");
    health
}

fn health_becomes(api: &Api, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = health(api);
        if now["status"] == status {
            return now;
        }
        assert!(Instant::now() < deadline, "healthz never said {status}: {now}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The module listed the token when the partition was registered, but the
/// service had not used it yet when it went away: its first create waits for
/// it as for a token in use (before: the work was passed on, then tried five
/// times and failed).
#[test]
fn a_token_away_before_its_first_use_is_waited_for_and_named_by_the_health_check() {
    let api = Api::start(TestDatabase::sqlite().unwrap());
    let partition = api.partition("first-use", 1);
    let label = partition["partition_label"].as_str().unwrap().to_owned();
    let pid = partition["id"].as_str().unwrap().to_owned();

    let away = TakenAway::take(&label);
    let (status, created) = api.send(
        "POST",
        KEYS,
        &json!({"label": "waits", "size": 256, "partition_id": pid, "mechanism": "CKM_AES_KEY_GEN"}),
    );
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let degraded = health_becomes(&api, "degraded");
    assert_eq!(
        degraded["unreachable"][0]["partition_label"],
        label.as_str(),
        "{degraded}"
    );
    let (_, one) = api.get(&format!("/cckm/hsm/luna/partitions/{pid}"));
    let member = &one["members"][0]["token"];
    assert_eq!(member["reachable"], false, "{one}");
    assert!(member["unreachable_since"].is_string(), "{one}");
    std::thread::sleep(Duration::from_secs(2));
    let (_, key) = api.get(&format!("{KEYS}/{id}"));
    assert_eq!(key["status"], "in_progress", "waiting, not failed: {key}");

    away.put_back();
    let key = api.settled(&id);
    assert_eq!(
        (key["status"].as_str(), key["operation_status"].as_str()),
        (Some("AVAILABLE"), Some("created")),
        "{key}"
    );
    health_becomes(&api, "ok");
}

/// A token whose store is taken away still answers a scan (SoftHSM2 lists
/// fewer objects, or none): a refresh must not conclude its keys DELETED.
/// It waits for the token, then completes (before: it failed, saying the
/// module no longer listed the token).
#[test]
fn a_refresh_of_a_token_whose_store_went_away_waits_for_it_and_deletes_nothing() {
    let api = Api::start(TestDatabase::sqlite().unwrap());
    let partition = api.partition("store-away", 1);
    let pid = partition["id"].as_str().unwrap().to_owned();
    let (_, created) = api.send(
        "POST",
        KEYS,
        &json!({"label": "kept", "size": 256, "partition_id": pid, "mechanism": "CKM_AES_KEY_GEN"}),
    );
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(api.settled(&id)["status"], "AVAILABLE");

    let away = TakenAway::take(partition["partition_label"].as_str().unwrap());
    let (status, job) = api.send("POST", "/cckm/hsm/luna/refresh", &json!({"partitions": [pid]}));
    assert_eq!(status, 201, "{job}");
    let job_id = job["id"].as_str().unwrap().to_owned();
    std::thread::sleep(Duration::from_secs(2));
    let (_, waiting) = api.get(&format!("/cckm/hsm/luna/refresh/{job_id}"));
    assert_eq!(waiting["overall_status"], "in_progress", "{waiting}");
    assert_eq!(api.get(&format!("{KEYS}/{id}")).1["status"], "AVAILABLE");

    away.put_back();
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let (_, job) = api.get(&format!("/cckm/hsm/luna/refresh/{job_id}"));
        if job["overall_status"] != "in_progress" {
            break job;
        }
        assert!(Instant::now() < deadline, "{job}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(done["overall_status"], "completed", "{done}");
    assert_eq!(done["detailed_status"][pid.as_str()], "completed", "{done}");
    let key = api.get(&format!("{KEYS}/{id}")).1;
    assert_eq!(key["status"], "AVAILABLE", "{key}");
}
