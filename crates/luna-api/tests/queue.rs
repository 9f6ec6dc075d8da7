//! The bound on the work waiting for tokens: past a partition's bound, or
//! the service's, a create is a 429 with `Retry-After`; nothing accepted is
//! lost, and the bound lifts as the queue drains. The queue's depth and drain
//! rate show in the partition's view and in `/metrics`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use luna_api::on_both_backends;
use luna_api::testing::{assert_error, runner_settings, Api};
use luna_runner::RunnerSettings;
use serde_json::{json, Value};

const KEYS: &str = "/cckm/hsm/luna/keys";

/// A create on `partition`: its status, body and `Retry-After`.
fn create(api: &Api, partition: &Value) -> (u16, Value, Option<u64>) {
    let body = json!({"label": "queued", "size": 256, "partition_id": partition["id"], "mechanism": "CKM_AES_KEY_GEN"});
    let answer = ureq::post(&format!("{}{KEYS}", api.base))
        .set("Authorization", &format!("Bearer {}", api.token))
        .send_json(body);
    let response = match answer {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("POST {KEYS}: {e}"),
    };
    let status = response.status();
    let retry_after = response.header("Retry-After").map(|v| v.parse().unwrap());
    (status, response.into_json().unwrap(), retry_after)
}

fn until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

on_both_backends! {
    fn creates_past_the_queue_bound_wait_and_none_accepted_is_lost(db: TestDatabase) {
        // An instance that runs nothing: its queue only grows.
        let accepting = Api::start_with_settings(db, RunnerSettings { queue_per_partition: 3, queue_total: 5, ..runner_settings(0) });
        let (a, b) = (accepting.partition("queue-a", 1), accepting.partition("queue-b", 1));
        let mut accepted = Vec::new();
        for _ in 0..3 {
            let (status, key, _) = create(&accepting, &a);
            assert_eq!(status, 201, "{key}");
            accepted.push(key["id"].as_str().unwrap().to_owned());
        }
        let (status, refused, retry_after) = create(&accepting, &a);
        assert_error(status, &refused, 429, 1);
        assert!(refused["message"].as_str().unwrap().contains("--queue-per-partition"), "{refused}");
        assert_eq!(retry_after, Some(60), "nothing drains: the longest wait");
        // Another partition has room, until the service's bound.
        for _ in 0..2 {
            let (status, key, _) = create(&accepting, &b);
            assert_eq!(status, 201, "{key}");
            accepted.push(key["id"].as_str().unwrap().to_owned());
        }
        let (status, refused, retry_after) = create(&accepting, &b);
        assert_error(status, &refused, 429, 1);
        assert!(refused["message"].as_str().unwrap().contains("--queue-total"), "{refused}");
        assert!(retry_after.is_some_and(|s| s >= 1));
        let path = format!("/cckm/hsm/luna/partitions/{}", a["id"].as_str().unwrap());
        let queue = accepting.get(&path).1["queue"].clone();
        assert_eq!((queue["depth"].as_i64(), queue["limit"].as_i64()), (Some(3), Some(3)), "{queue}");
        let metric = format!("luna_queue_depth{{partition_id=\"{}\"}} 3", a["id"].as_str().unwrap());
        until("the queue's depth in /metrics", Duration::from_secs(5), || {
            let text = ureq::get(&format!("{}/metrics", accepting.base.trim_end_matches("/api/v1"))).call().unwrap().into_string().unwrap();
            text.contains(&metric)
        });

        // An instance that runs operations drains it: every accepted key is made.
        let working = accepting.beside(runner_settings(2));
        for id in &accepted {
            assert_eq!(working.settled(id)["status"], "AVAILABLE", "{id}");
        }
        // The bound lifts once the accepting instance reads the queue again,
        // and the drain it measured shows.
        until("a create accepted again", Duration::from_secs(10), || create(&accepting, &a).0 == 201);
        let queue = accepting.get(&path).1["queue"].clone();
        assert!(queue["drain_per_second"].as_f64().unwrap() > 0.0, "{queue}");
    }
}
