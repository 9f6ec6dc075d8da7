//! The XKS proxy while an HA partition's members go away and come back
//! (real SoftHSM2 tokens whose store is moved away and back): it answers
//! from any member that is there, answers the spec's retryable error at
//! once when none is (never a hang), and answers again when they are back.
//!
//! A test binary of its own: recovering a token may re-initialise the
//! process's module, which ends every session and object handle on it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use luna_api::testing::{xks_metadata, Api, Signer, XksCaller};
use luna_pkcs11::testing::TakenAway;
use luna_store::testing::TestDatabase;
use serde_json::{json, Value};

fn encrypt() -> Value {
    json!({"requestMetadata": xks_metadata("Encrypt"), "plaintext": STANDARD.encode(b"a data key"), "encryptionAlgorithm": "AES_GCM"})
}

fn decrypt(sealed: &Value) -> Value {
    json!({"requestMetadata": xks_metadata("Decrypt"), "ciphertext": sealed["ciphertext"], "ciphertextMetadata": sealed["ciphertextMetadata"],
           "initializationVector": sealed["initializationVector"], "authenticationTag": sealed["authenticationTag"], "encryptionAlgorithm": "AES_GCM"})
}

/// The call's answer, and how long it took.
fn timed(caller: &XksCaller, call: &str, body: &Value) -> ((u16, Value), Duration) {
    let started = Instant::now();
    let answer = caller.call(Signer::Curl, call, body);
    (answer, started.elapsed())
}

fn health_of(caller: &XksCaller) -> Vec<String> {
    let body = json!({"requestMetadata": {"kmsOperation": "KmsHealthCheck", "kmsRequestId": uuid::Uuid::new_v4().to_string()}});
    let (status, health) = caller.call(Signer::Curl, "health", &body);
    assert_eq!(status, 200, "{health}");
    health["ekmFleetDetails"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["healthStatus"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn an_ha_partition_answers_from_any_member_there_and_says_retry_at_once_when_none_is() {
    let api = Api::start(TestDatabase::sqlite().unwrap());
    let partition = api.partition_with_domain("xks-ha", 2);
    let labels: Vec<String> = api
        .get(&format!(
            "/cckm/hsm/luna/partitions/{}",
            partition["id"].as_str().unwrap()
        ))
        .1["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["partition_label"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(labels.len(), 2, "{labels:?}");
    let (status, made) = api.send(
        "POST",
        "/cckm/hsm/luna/keys",
        &json!({"label": "xks-ha-key", "size": 256, "partition_id": partition["id"], "mechanism": "CKM_AES_KEY_GEN", "attributes": ["CKA_ENCRYPT", "CKA_DECRYPT"]}),
    );
    assert_eq!(status, 201, "{made}");
    let id = made["id"].as_str().unwrap().to_owned();
    let key = api.settled(&id);
    assert_eq!(
        key["replication_info"].as_object().unwrap().len(),
        2,
        "on both members: {key}"
    );
    let (_, keystore) = api.send(
        "POST",
        "/xks/keystores",
        &json!({"name": "ha", "uri_path_prefix": "ha", "region": "us-east-1", "partition_id": partition["id"]}),
    );
    let caller = XksCaller::of(api.base.trim_end_matches("/api/v1"), &keystore);
    let ((status, sealed), _) = timed(&caller, &format!("keys/{id}/encrypt"), &encrypt());
    assert_eq!(status, 200, "{sealed}");
    assert_eq!(health_of(&caller), ["ACTIVE", "ACTIVE"]);

    // The first member away: the second answers, both ways.
    let first_away = TakenAway::take(&labels[0]);
    let ((status, again), took) = timed(&caller, &format!("keys/{id}/encrypt"), &encrypt());
    assert_eq!(status, 200, "{again} after {took:?}");
    let ((status, opened), _) = timed(&caller, &format!("keys/{id}/decrypt"), &decrypt(&sealed));
    assert_eq!(status, 200, "{opened}");
    assert_eq!(
        STANDARD.decode(opened["plaintext"].as_str().unwrap()).unwrap(),
        b"a data key"
    );

    // Both away: the spec's retryable error, at once.
    let second_away = TakenAway::take(&labels[1]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ((status, answer), took) = timed(&caller, &format!("keys/{id}/encrypt"), &encrypt());
        assert!(took < Duration::from_secs(3), "{took:?}: {answer}");
        if status == 503 {
            assert_eq!(answer["errorName"], "DependencyTimeoutException", "{answer}");
            break;
        }
        // SoftHSM2 may answer from what it holds in memory for a while.
        assert_eq!(status, 200, "{answer}");
        assert!(Instant::now() < deadline, "never answered the retryable error");
        std::thread::sleep(Duration::from_millis(100));
    }
    let ((status, answer), took) = timed(&caller, &format!("keys/{id}/decrypt"), &decrypt(&sealed));
    assert_eq!(
        (status, answer["errorName"].as_str()),
        (503, Some("DependencyTimeoutException")),
        "{answer}"
    );
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(health_of(&caller).iter().any(|h| h == "UNAVAILABLE"));

    // Back: answered again, in this process.
    first_away.put_back();
    second_away.put_back();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ((status, answer), _) = timed(&caller, &format!("keys/{id}/decrypt"), &decrypt(&sealed));
        if status == 200 {
            assert_eq!(
                STANDARD.decode(answer["plaintext"].as_str().unwrap()).unwrap(),
                b"a data key"
            );
            break;
        }
        assert_eq!(answer["errorName"], "DependencyTimeoutException", "{answer}");
        assert!(
            Instant::now() < deadline,
            "the partition never answered again: {answer}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
