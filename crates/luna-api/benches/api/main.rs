//! The API held against its token and against its own healthz, in one run.
//! `just bench-api` (beside luna-server's `creates`, which holds real server
//! processes against the raw token and against main), or
//! `cargo bench -p luna-api --bench api`.
//!
//! 1. Creates on a latency-bound token (`LatencyToken`: 2 ms an AES key,
//!    200 ms an RSA pair, any number at once, no CPU), against the ceiling
//!    `concurrency / per call`; for each row the server's CPU per create (the
//!    process's user and system time less the clients' threads'), its serial
//!    database time per create (inside the group commit's batches) and the
//!    statements it sent per create.
//! 2. Two instances on one PostgreSQL database, creates into ONE partition
//!    through both, beside one instance taking them all, in the same run:
//!    keys/s, answers of 5xx, deadlocks PostgreSQL saw (and the writes run
//!    again for them), and how often a session waited on a lock (sampled from
//!    `pg_stat_activity` every 10 ms).
//! 3. Reads over 1,000,000 key records, on SQLite and PostgreSQL: GET by id,
//!    a filtered list sorted by `-updatedAt` skipping up to 10,000, and the
//!    same skipping up to 100,000, at concurrency 8, beside healthz; req/s and
//!    p50/p99 (targets: p99 < 10 ms for each).
//! 4. Refresh of a partition of 10,000 objects against the raw cost of
//!    enumerating and describing the same objects (target ≤ 1.3 × raw).
//! 5. Replication of 1,000 AES keys to a second member by a synchronize job,
//!    beside raw export + import (wrap + unwrap) between two other members.
//! 6. The XKS proxy's encrypts and decrypts beside the same AES-GCM calls
//!    on the same open token, at concurrency 1 and 8 (target ≥ 0.7 × raw),
//!    on SoftHSM2 as it is and slowed to a network HSM's 1 ms a call.
//!
//! Sections: LUNA_BENCH_SECTIONS, a comma list of latency, instances, reads,
//! refresh, replication, xks (all by default). LUNA_BENCH_READS_ON limits the
//! reads to `SQLite` or `PostgreSQL`.
//!
//! Sizes: LUNA_BENCH_SHARED_CREATES (10000), LUNA_BENCH_RECORDS (1000000),
//! LUNA_BENCH_REQUESTS (4000), LUNA_BENCH_REFRESH_OBJECTS (10000),
//! LUNA_BENCH_REPLICATED (1000), LUNA_BENCH_XKS_CALLS (20000).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use luna_api::testing::Api;
use luna_domain::{AttributeSet, Key, KeyEvent, Mechanism, NewKeySpec};
use luna_pkcs11::{GenerateRequest, Token as _};
use luna_runner::RunnerSettings;
use luna_store::testing::{PostgresActivity, TestDatabase};
use rand::Rng;
use serde_json::json;
use uuid::Uuid;

mod reads;
mod xks;
use reads::*;
use xks::*;

fn count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// User and system CPU time, from a `stat` file of `/proc` (this process's,
/// or one thread's).
fn cpu_in(stat: &str) -> Duration {
    let text = std::fs::read_to_string(stat).unwrap();
    let fields: Vec<&str> = text.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // Linux's USER_HZ, which `/proc` counts in.
    Duration::from_millis(ticks * 10)
}

/// What `n` creates through the API did: keys/s until every one was
/// AVAILABLE, how long each POST took to be answered, how many were 5xx,
/// and the CPU the server's threads used (the process's, less the clients').
struct CreateRun {
    keys_per_second: f64,
    post_p50: Duration,
    post_p99: Duration,
    server_errors: usize,
    server_cpu: Duration,
}

/// POSTs `n` creates from `clients` keep-alive clients (threads of this
/// process, in Rust: the client is not the bottleneck), spread over
/// `targets` (instances, each with its partition id and the body to post),
/// then waits until none of the keys is in progress; every one must be
/// AVAILABLE. A 5xx is counted and the create sent again (with its
/// Idempotency-Key), as a client would.
fn api_creates(targets: &[(&Api, serde_json::Value)], n: usize, clients: usize) -> CreateRun {
    let server_errors = AtomicUsize::new(0);
    let cpu_before = cpu_in("/proc/self/stat");
    let start = Instant::now();
    let (mut posts, client_cpu): (Vec<Duration>, Duration) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|t| {
                let server_errors = &server_errors;
                let (api, body) = &targets[t % targets.len()];
                s.spawn(move || {
                    let url = format!("{}/cckm/hsm/luna/keys", api.base);
                    let auth = format!("Bearer {}", api.token);
                    let agent = ureq::AgentBuilder::new().build();
                    let posts: Vec<Duration> = (0..(n / clients + usize::from(t < n % clients)))
                        .map(|i| {
                            let began = Instant::now();
                            let key = format!("bench-{t}-{i}");
                            loop {
                                let answer = agent
                                    .post(&url)
                                    .set("Authorization", &auth)
                                    .set("Idempotency-Key", &key)
                                    .send_json(body.clone());
                                match answer {
                                    Ok(answer) => {
                                        assert_eq!(answer.status(), 201);
                                        let _ = answer.into_string().unwrap();
                                        break;
                                    }
                                    Err(ureq::Error::Status(status, _)) if status >= 500 => {
                                        server_errors.fetch_add(1, Ordering::Relaxed);
                                    }
                                    Err(other) => panic!("a create failed: {other}"),
                                }
                            }
                            began.elapsed()
                        })
                        .collect();
                    (posts, cpu_in("/proc/thread-self/stat"))
                })
            })
            .collect();
        let mut all = Vec::new();
        let mut cpu = Duration::ZERO;
        for handle in handles {
            let (posts, used) = handle.join().unwrap();
            all.extend(posts);
            cpu += used;
        }
        (all, cpu)
    });
    let poller_before = cpu_in("/proc/thread-self/stat");
    let pending = |api: &Api, body: &serde_json::Value| {
        let partition = body["partition_id"].as_str().unwrap();
        api.get(&format!(
            "/cckm/hsm/luna/keys?partition_id={partition}&status=in_progress&limit=1"
        ))
        .1["total"]
            != 0
    };
    while targets.iter().any(|(api, body)| pending(api, body)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = start.elapsed();
    let client_cpu = client_cpu + (cpu_in("/proc/thread-self/stat") - poller_before);
    let server_cpu = (cpu_in("/proc/self/stat") - cpu_before).saturating_sub(client_cpu);
    let (api, body) = &targets[0];
    let partition = body["partition_id"].as_str().unwrap();
    let available = format!("/cckm/hsm/luna/keys?partition_id={partition}&status=AVAILABLE&limit=1");
    // An RSA create makes two records, the private and the public key.
    let records = if body["mechanism"] == "CKM_AES_KEY_GEN" {
        n
    } else {
        2 * n
    };
    assert_eq!(
        api.get(&available).1["total"],
        records,
        "every key ended AVAILABLE"
    );
    posts.sort();
    let at = |q: f64| posts[((posts.len() as f64 * q) as usize).min(posts.len() - 1)];
    CreateRun {
        keys_per_second: n as f64 / elapsed.as_secs_f64(),
        post_p50: at(0.50),
        post_p99: at(0.99),
        server_errors: server_errors.into_inner(),
        server_cpu,
    }
}

/// The runner as the server runs it (its defaults), for the create benchmarks.
fn server_runner() -> RunnerSettings {
    RunnerSettings::default()
}

/// Opens every member as a token that only takes time (`LatencyToken`: a
/// fixed sleep per call, any number at once, as a network HSM's independent
/// sessions; no CPU).
fn latency_tokens() -> luna_runner::tokens::TokenOpener {
    Arc::new(move |module, member, _pin| {
        let info = module.describe_token(&member.partition_label, Some(&member.serial_number))?;
        Ok(Arc::new(luna_pkcs11::LatencyToken::new(
            info,
            Duration::from_millis(2),
            Duration::from_millis(200),
        )))
    })
}

/// The database's share of `n` creates: (serial write time, statements).
fn database_share(api: &Api, before: (luna_store::WriteStats, u64), n: usize) -> (Duration, f64) {
    let (stats, statements) = (api.store().write_stats(), api.store().statements_sent());
    (
        Duration::from_nanos(
            (stats.work_nanos + stats.commit_nanos - before.0.work_nanos - before.0.commit_nanos) / n as u64,
        ),
        (statements - before.1) as f64 / n as f64,
    )
}

/// Creates on a latency-bound token, so that what the runner does with a
/// parallel token shows on two cores: throughput against what `per_call`
/// allows `concurrency` calls at once, and what a create costs the server.
fn latency_bound(mechanism: &str, per_call: Duration, concurrency: usize, n: usize) {
    let module = luna_pkcs11::testing::module();
    let db = TestDatabase::sqlite().unwrap();
    let runner = RunnerSettings {
        token_concurrency: concurrency,
        ..server_runner()
    };
    let api = Api::start_opening(db, module, runner, Some(latency_tokens()));
    let partition = api.partition("bench-latency", 1);
    let size = if mechanism == "CKM_AES_KEY_GEN" { 256 } else { 2048 };
    let body =
        json!({"label": "bench", "size": size, "partition_id": partition["id"], "mechanism": mechanism});
    let before = (api.store().write_stats(), api.store().statements_sent());
    let run = api_creates(&[(&api, body)], n, concurrency.max(2));
    let (database, statements) = database_share(&api, before, n);
    let ceiling = concurrency as f64 / per_call.as_secs_f64();
    println!(
        "  {mechanism} ({} ms a call), {concurrency:>2} at once: {:>7.1} keys/s   ceiling {ceiling:>7.1}   ratio {:.2}   \
         CPU {:.3} ms/create   database {:.3} ms/create, {statements:.1} statements/create",
        per_call.as_millis(),
        run.keys_per_second,
        run.keys_per_second / ceiling,
        run.server_cpu.as_secs_f64() * 1000.0 / n as f64,
        database.as_secs_f64() * 1000.0,
    );
}

/// `n` creates into one partition on PostgreSQL through `instances`
/// instances sharing the database (8 clients spread over them).
fn shared_partition(instances: usize, n: usize) {
    let db = TestDatabase::postgres().unwrap();
    let url = db.url.clone();
    let module = luna_pkcs11::testing::module();
    let first = Api::start_opening(db, module, server_runner(), Some(latency_tokens()));
    let partition = first.partition("bench-shared", 1);
    let others: Vec<Api> = (1..instances)
        .map(|_| first.beside_opening(server_runner(), Some(latency_tokens())))
        .collect();
    let body = json!({"label": "bench", "size": 256, "partition_id": partition["id"], "mechanism": "CKM_AES_KEY_GEN"});
    let targets: Vec<(&Api, serde_json::Value)> = std::iter::once(&first)
        .chain(&others)
        .map(|api| (api, body.clone()))
        .collect();
    let (deadlocks_before, retried_before) = (
        PostgresActivity::deadlocks(&url),
        targets
            .iter()
            .map(|(api, _)| api.store().write_stats().retried)
            .sum::<u64>(),
    );
    let running = std::sync::atomic::AtomicBool::new(true);
    let (run, (waited, samples)) = std::thread::scope(|s| {
        let sampler = s.spawn(|| PostgresActivity::sample_lock_waits(&url, &running));
        let run = api_creates(&targets, n, 8);
        running.store(false, Ordering::Relaxed);
        (run, sampler.join().unwrap())
    });
    let retried = targets
        .iter()
        .map(|(api, _)| api.store().write_stats().retried)
        .sum::<u64>()
        - retried_before;
    println!(
        "  {instances} instance(s): {:>7.1} keys/s   POST p50 {:>6.2} ms  p99 {:>6.2} ms   5xx {}   \
         deadlocks {} (writes run again: {retried})   a session waiting on a lock in {waited} of {samples} samples",
        run.keys_per_second,
        run.post_p50.as_secs_f64() * 1000.0,
        run.post_p99.as_secs_f64() * 1000.0,
        run.server_errors,
        PostgresActivity::deadlocks(&url) - deadlocks_before,
    );
}

/// A refresh job of a partition of `n` objects, against scanning and
/// describing the same objects straight through luna-pkcs11.
fn refresh(n: usize) {
    let api = Api::start(TestDatabase::sqlite().unwrap());
    let partition = api.partition("bench-refresh", 1);
    let label = partition["partition_label"].as_str().unwrap();
    let token = luna_pkcs11::testing::module()
        .open_token(
            label,
            None,
            secrecy::SecretString::from(luna_pkcs11::testing::USER_PIN),
        )
        .unwrap();
    let start = Instant::now();
    for _ in 0..n {
        token
            .generate(&GenerateRequest {
                cka_id: Uuid::new_v4().as_bytes().to_vec(),
                label: "outside".into(),
                mechanism: Mechanism::AesKeyGen,
                size: 128,
                attributes: AttributeSet::empty(),
                remap: true,
                retry: false,
                wrap_with_trusted: false,
            })
            .unwrap();
    }
    println!(
        "refresh: {n} objects made on the token in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let start = Instant::now();
    let mut described = 0;
    token
        .scan_described(256, &mut |batch| {
            described += batch.len();
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    let raw = start.elapsed();
    assert_eq!(described, n);
    let start = Instant::now();
    let (status, job) = api.send(
        "POST",
        "/cckm/hsm/luna/refresh",
        &json!({"partitions": [partition["id"]]}),
    );
    assert_eq!(status, 201, "{job}");
    let path = format!("/cckm/hsm/luna/refresh/{}", job["id"].as_str().unwrap());
    while api.get(&path).1["overall_status"] == "in_progress" {
        std::thread::sleep(Duration::from_millis(10));
    }
    let through_api = start.elapsed();
    assert_eq!(api.get(&path).1["overall_status"], "completed");
    assert_eq!(
        api.get("/cckm/hsm/luna/keys?origin=external&limit=1").1["total"],
        n
    );
    println!(
        "  refresh job {:.2} s   raw enumerate + describe {:.2} s   ratio {:.2} (target <= 1.30)",
        through_api.as_secs_f64(),
        raw.as_secs_f64(),
        through_api.as_secs_f64() / raw.as_secs_f64()
    );
}

/// Makes `n` AES-256 keys on `token` (not timed); returns their descriptions.
fn fill(token: &luna_pkcs11::Pkcs11Token, n: usize) -> Vec<luna_pkcs11::ObjectDescription> {
    (0..n)
        .map(|_| {
            token
                .generate(&GenerateRequest {
                    cka_id: Uuid::new_v4().as_bytes().to_vec(),
                    label: "replicated".into(),
                    mechanism: Mechanism::AesKeyGen,
                    size: 256,
                    attributes: AttributeSet::parse_names(&["CKA_EXTRACTABLE", "CKA_ENCRYPT"]).unwrap(),
                    remap: true,
                    retry: false,
                    wrap_with_trusted: true,
                })
                .unwrap()
                .objects
                .remove(0)
        })
        .collect()
}

fn replication(n: usize) {
    let pin = || secrecy::SecretString::from(luna_pkcs11::testing::USER_PIN);
    let module = luna_pkcs11::testing::module();
    // Raw: two members sharing a domain, keys moved one by one.
    let labels = [
        luna_pkcs11::testing::fresh_token_label("bench-raw-a"),
        luna_pkcs11::testing::fresh_token_label("bench-raw-b"),
    ];
    let members: Vec<luna_domain::Member> = module
        .tokens()
        .unwrap()
        .into_iter()
        .filter(|t| labels.contains(&t.label))
        .map(|t| luna_domain::Member {
            hostname: "localhost".into(),
            partition_label: t.label,
            serial_number: t.serial_number,
        })
        .collect();
    module
        .establish_cloning_domain(
            &members,
            &secrecy::SecretString::from(luna_pkcs11::testing::SO_PIN),
        )
        .unwrap();
    let a = module.open_token(&labels[0], None, pin()).unwrap();
    let b = module.open_token(&labels[1], None, pin()).unwrap();
    let keys = fill(&a, n);
    let start = Instant::now();
    for key in &keys {
        let portable = a.export_to(key, &b.info().serial_number).unwrap();
        b.import_from(&portable, &a.info().serial_number).unwrap();
    }
    let raw = n as f64 / start.elapsed().as_secs_f64();

    // API: the same number of keys on the first member only, cloned by synchronize.
    let api = Api::start(TestDatabase::sqlite().unwrap());
    let partition = api.partition_with_domain("bench-sync", 2);
    let first = module
        .open_token(
            partition["members"][0]["partition_label"].as_str().unwrap(),
            None,
            pin(),
        )
        .unwrap();
    fill(&first, n);
    let start = Instant::now();
    let (status, job) = api.send(
        "POST",
        "/cckm/hsm/luna/synchronize",
        &json!({"partitions": [partition["id"]]}),
    );
    assert_eq!(status, 201, "{job}");
    let path = format!("/cckm/hsm/luna/synchronize/{}", job["id"].as_str().unwrap());
    while api.get(&path).1["overall_status"] == "in_progress" {
        std::thread::sleep(Duration::from_millis(10));
    }
    let through_api = n as f64 / start.elapsed().as_secs_f64();
    assert_eq!(api.get(&path).1["overall_status"], "completed");
    println!("replication of {n} AES-256 keys to a second member:");
    println!(
        "  synchronize job {through_api:>7.1} keys/s   raw wrap + unwrap {raw:>7.1} keys/s   job/raw {:.2}",
        through_api / raw
    );
}

fn main() {
    let n_records = count("LUNA_BENCH_RECORDS", 1_000_000);
    let requests = count("LUNA_BENCH_REQUESTS", 4000);
    println!(
        "luna-api benchmark ({} cores)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    let sections = std::env::var("LUNA_BENCH_SECTIONS").unwrap_or_default();
    let run = |section: &str| sections.is_empty() || sections.split(',').any(|s| s == section);
    if run("latency") {
        println!("a latency-bound token (2 ms an AES key, 200 ms an RSA pair, any number at once), SQLite:");
        for concurrency in [1, 2, 4, 8, 16] {
            latency_bound(
                "CKM_RSA_PKCS_KEY_PAIR_GEN",
                Duration::from_millis(200),
                concurrency,
                (4 * concurrency).max(8),
            );
        }
        for concurrency in [1, 8] {
            latency_bound("CKM_AES_KEY_GEN", Duration::from_millis(2), concurrency, 2000);
        }
    }
    if run("instances") {
        let n = count("LUNA_BENCH_SHARED_CREATES", 10_000);
        println!("{n} AES creates into one partition on PostgreSQL, latency-bound token (2 ms), 8 clients:");
        shared_partition(1, n);
        shared_partition(2, n);
    }

    // LUNA_BENCH_READS_ON: SQLite or PostgreSQL alone.
    let reads_on = std::env::var("LUNA_BENCH_READS_ON").unwrap_or_default();
    if run("reads") && reads_on != "PostgreSQL" {
        reads("SQLite", TestDatabase::sqlite().unwrap(), n_records, requests);
    }
    if run("reads") && reads_on != "SQLite" {
        reads(
            "PostgreSQL",
            TestDatabase::postgres().unwrap(),
            n_records,
            requests,
        );
    }
    if run("refresh") {
        refresh(count("LUNA_BENCH_REFRESH_OBJECTS", 10_000));
    }
    if run("replication") {
        replication(count("LUNA_BENCH_REPLICATED", 1000));
    }
    if run("xks") {
        let n = count("LUNA_BENCH_XKS_CALLS", 20_000);
        xks(n, None);
        xks(n / 4, Some(Duration::from_millis(1)));
    }
}
