//! How many operations run at once: per partition (`token_concurrency`) and
//! per instance (`workers`), on latency-bound tokens (`LatencyToken`: a fixed
//! sleep per call, any number at once), so that timing shows what runs
//! together on two cores.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use luna_api::testing::{runner_settings, Api};
use luna_pkcs11::testing::module;
use luna_runner::RunnerSettings;
use luna_store::testing::TestDatabase;
use serde_json::{json, Value};

const KEYS: &str = "/cckm/hsm/luna/keys";

/// A server whose member tokens take `slow` per RSA pair on partitions
/// labelled `slow-*`, and 10 ms elsewhere.
fn server(runner: RunnerSettings, slow: Duration) -> Api {
    let opener: luna_runner::tokens::TokenOpener = Arc::new(move |module, member, _pin| {
        let info = module.describe_token(&member.partition_label, Some(&member.serial_number))?;
        let rsa = if member.partition_label.starts_with("slow") {
            slow
        } else {
            Duration::from_millis(10)
        };
        Ok(Arc::new(luna_pkcs11::LatencyToken::new(
            info,
            Duration::from_millis(1),
            rsa,
        )))
    });
    Api::start_opening(TestDatabase::sqlite().unwrap(), module(), runner, Some(opener))
}

fn create(api: &Api, partition: &Value) -> String {
    let (status, created) = api.send(
        "POST",
        KEYS,
        &json!({"label": "k", "size": 2048, "partition_id": partition["id"], "mechanism": "CKM_RSA_PKCS_KEY_PAIR_GEN"}),
    );
    assert_eq!(status, 201, "{created}");
    created["id"].as_str().unwrap().to_owned()
}

/// Before: two workers per instance whatever the token, so a token that
/// takes 300 ms a pair made at most 6.7 pairs/s; now 8 at once.
#[test]
fn a_partition_gets_token_concurrency_calls_at_once() {
    let api = server(
        RunnerSettings {
            token_concurrency: 8,
            ..runner_settings(64)
        },
        Duration::from_millis(300),
    );
    let partition = api.partition("slow-parallel", 1);
    let started = Instant::now();
    let ids: Vec<String> = (0..8).map(|_| create(&api, &partition)).collect();
    for id in &ids {
        assert_eq!(api.settled(id)["status"], "AVAILABLE");
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1200),
        "8 pairs of 300 ms each, 8 at once, took {took:?}"
    );
}

/// Before: the workers all held the slow token's operations, and a create
/// on another partition waited behind them.
#[test]
fn one_slow_token_never_holds_the_room_of_another() {
    let api = server(
        RunnerSettings {
            token_concurrency: 2,
            ..runner_settings(4)
        },
        Duration::from_millis(1500),
    );
    let slow = api.partition("slow-one", 1);
    let fast = api.partition("fast-one", 1);
    let slow_ids: Vec<String> = (0..6).map(|_| create(&api, &slow)).collect();
    let started = Instant::now();
    let quick = create(&api, &fast);
    assert_eq!(api.settled(&quick)["status"], "AVAILABLE");
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(700),
        "the other partition's create took {took:?}"
    );
    let (_, first) = api.get(&format!("{KEYS}/{}", slow_ids[5]));
    assert_eq!(
        first["status"], "in_progress",
        "the slow token's work is still queued: {first}"
    );
    for id in &slow_ids {
        assert_eq!(api.settled(id)["status"], "AVAILABLE");
    }
}

/// A partition's queue longer than its room drains as its operations end,
/// not at the slow poll: each end looks at the queue again while the
/// partition was full. (Found by the create benchmark: with the look on an
/// operation's end skipped once a look had found nothing to take, a full
/// partition's queue moved one poll at a time, 8 creates a second.)
#[test]
fn a_full_partitions_queue_drains_as_its_operations_end_not_at_the_poll() {
    let api = server(
        RunnerSettings {
            token_concurrency: 2,
            // Far longer than the whole test may take.
            poll: Duration::from_secs(60),
            ..runner_settings(64)
        },
        Duration::from_millis(50),
    );
    let partition = api.partition("slow-queue", 1);
    let started = Instant::now();
    let ids: Vec<String> = (0..20).map(|_| create(&api, &partition)).collect();
    for id in &ids {
        assert_eq!(api.settled(id)["status"], "AVAILABLE");
    }
    // 20 pairs, 2 at a time, 50 ms each: 0.5 s of token work.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
