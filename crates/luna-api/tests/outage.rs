//! The database goes away and comes back while the server runs: requests
//! answer 503 quickly, with Retry-After, and nothing accepted is lost. On a
//! PostgreSQL server of the test's own (the machine's must stay up).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use luna_api::testing::Api;
use luna_store::testing::PrivatePostgres;
use luna_store::{PinCipher, PoolOptions, Store};
use serde_json::{json, Value};

const KEYS: &str = "/cckm/hsm/luna/keys";

/// Status, Retry-After and body of a request, read by hand for the header.
fn request(api: &Api, method: &str, path: &str, body: Option<&Value>) -> (u16, Option<String>, Value) {
    let request = ureq::request(method, &format!("{}{path}", api.base))
        .set("Authorization", &format!("Bearer {}", api.token));
    let response = match body {
        Some(b) => request.send_json(b.clone()),
        None => request.call(),
    };
    let response = match response {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {path}: {e}"),
    };
    let retry_after = response.header("Retry-After").map(str::to_owned);
    (
        response.status(),
        retry_after,
        response.into_json().unwrap_or(Value::Null),
    )
}

#[test]
fn while_the_database_is_away_requests_answer_503_at_once_and_nothing_accepted_is_lost() {
    let pg = PrivatePostgres::start();
    let store = Store::open(&pg.url, PinCipher::from_key(&[0x42; 32]), PoolOptions::default()).unwrap();
    let api = Api::start_on_store(store, luna_api::testing::runner_settings(2));
    let partition = api.partition("outage", 1);
    let create = json!({"label": "before", "size": 2048, "partition_id": partition["id"], "mechanism": "CKM_RSA_PKCS_KEY_PAIR_GEN"});
    let (status, _, created) = request(&api, "POST", KEYS, Some(&create));
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();

    pg.stop();
    for (method, path, body) in [
        ("GET", KEYS.to_owned(), None),
        ("GET", format!("{KEYS}/{id}"), None),
        ("POST", KEYS.to_owned(), Some(&create)),
    ] {
        let started = Instant::now();
        let (status, retry_after, answer) = request(&api, method, &path, body);
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{method} {path} took {:?}",
            started.elapsed()
        );
        assert_eq!(
            (status, retry_after.as_deref()),
            (503, Some("5")),
            "{method} {path}: {answer}"
        );
        assert_eq!(answer["code"], 14, "{answer}");
        assert!(
            answer["codeDesc"]
                .as_str()
                .unwrap()
                .starts_with("NCERRServiceUnavailable"),
            "{answer}"
        );
        assert_eq!(
            answer["message"],
            "the database cannot be reached now; try again in a few seconds"
        );
    }
    let (status, retry_after, health) = request(&api, "GET", "/healthz", None);
    assert_eq!((status, retry_after.as_deref()), (503, Some("5")), "{health}");

    pg.start_again();
    let deadline = Instant::now() + Duration::from_secs(30);
    while request(&api, "GET", "/healthz", None).0 != 200 {
        assert!(
            Instant::now() < deadline,
            "the server did not find the database again"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // What was accepted before the outage ends, and ends well.
    let key = api.settled(&id);
    assert_eq!(
        (key["status"].as_str(), key["operation_status"].as_str()),
        (Some("AVAILABLE"), Some("created")),
        "{key}"
    );
    let (status, _, listed) = request(&api, "GET", &format!("{KEYS}?label=before"), None);
    assert_eq!(
        (status, listed["total"].as_u64()),
        (200, Some(2)),
        "the pair, once: {listed}"
    );
    drop(api);
}
