//! `just chaos`: a bounded run of load and faults against two luna-server
//! instances on one PostgreSQL database, then a count of what went wrong.
//!
//! Two instances (A and B) share a private PostgreSQL server. A's SoftHSM2
//! holds the token; B's module lists none (SoftHSM2 keeps no consistent view
//! of one token store between processes: two processes on one store missed
//! each other's objects, measured here), so B takes requests and passes the
//! token work on to A. Clients create AES keys and RSA pairs through both, each
//! request under its own Idempotency-Key and sent again (same key) when the
//! answer is lost or a 503; refreshes start through B every few hundred ms.
//! Meanwhile: A is killed (`kill -9`) and restarted; the database is stopped
//! and started; the token's store is taken away (out of SoftHSM2's token
//! directory) and put back, and A, not restarted, must carry on by itself
//! (its health check says `degraded` meanwhile, and `ok` after).
//! A supervisor restarts an instance whose health check says `stuck`, as
//! systemd or Kubernetes would. After the load, the run waits while the
//! backlog of creates shrinks (the clients outrun SoftHSM2's RSA pairs), then
//! checks every accepted key against the token with pkcs11-tool and prints
//! `lost / duplicated / stuck / wrongly DELETED` (all must be 0; the exit
//! status says so). Stuck: still in progress after 30 s in which no key ended.
//!
//! `LUNA_CHAOS_SECS` (60) sets the length of the load.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use luna_store::testing::PrivatePostgres;
use serde_json::{json, Value};

mod instances;
#[path = "../../tests/support/mod.rs"]
mod support;
use instances::*;
use support::Server;

const ADMIN: &str = "chaos-admin-password";
const USER_PIN: &str = "chaos-1234";
const LABEL: &str = "chaos";

fn main() {
    let secs: u64 = std::env::var("LUNA_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let dir = tempfile::Builder::new().prefix("luna-chaos-").tempdir().unwrap();
    println!(
        "luna-cckm chaos: {secs} s of load and faults, two instances, one database ({})",
        dir.path().display()
    );
    let pg = PrivatePostgres::start();

    // The operator's SoftHSM2 token, A's.
    let home = dir.path().join("softhsm");
    let conf = luna_pkcs11::softhsm::write_config(&home).unwrap();
    let module = luna_pkcs11::softhsm::find_module().expect("SoftHSM2 is installed");
    let status = Command::new("softhsm2-util")
        .args([
            "--init-token",
            "--free",
            "--label",
            LABEL,
            "--so-pin",
            "chaos-so-99",
            "--pin",
            USER_PIN,
        ])
        .env("SOFTHSM2_CONF", &conf)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let token_dir = std::fs::read_dir(home.join("tokens"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();

    let args = vec![
        "--insecure-http".to_owned(),
        "--pkcs11-module".to_owned(),
        module.display().to_string(),
        "--database-url".to_owned(),
        pg.url.clone(),
        "--admin-password".to_owned(),
        ADMIN.to_owned(),
        "--operation-lease-secs".to_owned(),
        "5".to_owned(),
        // SoftHSM2 makes a key in milliseconds: a call this long has hung.
        "--stuck-after-secs".to_owned(),
        "20".to_owned(),
    ];
    // B's SoftHSM2 has a token directory of its own, empty.
    let blind = luna_pkcs11::softhsm::write_config(&dir.path().join("softhsm-b")).unwrap();
    let mut instances: Vec<Instance> = [("a", conf.clone()), ("b", blind)]
        .into_iter()
        .map(|(name, softhsm)| Instance {
            data: dir.path().join(name),
            args: args.clone(),
            env: vec![("SOFTHSM2_CONF".to_owned(), softhsm)],
            server: None,
            base: Arc::new(Mutex::new(String::new())),
        })
        .collect();
    instances[0].start();
    // Instances on one database share pin.key and jwt.key.
    std::fs::create_dir_all(&instances[1].data).unwrap();
    for key in ["pin.key", "jwt.key"] {
        std::fs::copy(instances[0].data.join(key), instances[1].data.join(key)).unwrap();
    }
    instances[1].start();
    let base_a = instances[0].base.lock().unwrap().clone();
    let bases = [Arc::clone(&instances[0].base), Arc::clone(&instances[1].base)];
    let instances = Arc::new(Mutex::new(instances));
    let supervising = Arc::new(AtomicBool::new(true));
    let supervisor = supervise(&instances, &supervising);
    let token = login(&base_a).expect("log in");
    let (status, _) = call(&base_a, &token, "POST", "/connectionmgmt/services/luna-network/connections",
        Some(&json!({"name": "chaos", "password": USER_PIN, "is_ha_enabled": false, "partitions": [{"partition_label": LABEL}]})), None).unwrap();
    assert_eq!(status, 201);
    let (status, partition) = call(
        &base_a,
        &token,
        "POST",
        "/cckm/hsm/luna/add-partition",
        Some(&json!({"connection": "chaos"})),
        None,
    )
    .unwrap();
    assert_eq!(status, 201);
    let pid = partition["id"].as_str().unwrap().to_owned();

    // Load: clients alternate between the instances; each create has its own
    // Idempotency-Key and is sent again until it is answered.
    let running = Arc::new(AtomicBool::new(true));
    let server_errors = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let accepted: Arc<Mutex<BTreeMap<String, Option<String>>>> = Arc::default();
    let mut clients = Vec::new();
    for client in 0..3 {
        let (running, accepted, bases, token, pid, server_errors) = (
            Arc::clone(&running),
            Arc::clone(&accepted),
            bases.clone(),
            token.clone(),
            pid.clone(),
            Arc::clone(&server_errors),
        );
        clients.push(std::thread::spawn(move || {
            let mut n = 0u64;
            while running.load(Ordering::Relaxed) {
                n += 1;
                // A pace the token keeps up with (SoftHSM2 makes ~150 keys/s):
                // the run measures faults, not a backlog.
                std::thread::sleep(Duration::from_millis(40));
                let body = if n.is_multiple_of(5) {
                    json!({"label": "chaos-rsa", "size": 2048, "partition_id": pid, "mechanism": "CKM_RSA_PKCS_KEY_PAIR_GEN"})
                } else {
                    json!({"label": "chaos-aes", "size": 256, "partition_id": pid, "mechanism": "CKM_AES_KEY_GEN"})
                };
                let key = format!("client-{client}-create-{n}");
                let deadline = Instant::now() + Duration::from_secs(120);
                let mut attempt = 0usize;
                while Instant::now() < deadline {
                    let base = bases[(n as usize + attempt) % 2].lock().unwrap().clone();
                    attempt += 1;
                    match call(&base, &token, "POST", "/cckm/hsm/luna/keys", Some(&body), Some(&key)) {
                        Some((201, created)) => {
                            let id = created["id"].as_str().unwrap().to_owned();
                            let public = created["links"]["id"].as_str().map(str::to_owned);
                            accepted.lock().unwrap().insert(id, public);
                            break;
                        }
                        // Lost, the database away, or asked to send again: the same key.
                        None | Some((503 | 409, _)) => std::thread::sleep(Duration::from_millis(200)),
                        // Never expected: counted, and sent again.
                        Some((500, _)) => {
                            server_errors.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(Duration::from_millis(200));
                        }
                        Some((status, answer)) => panic!("create answered {status}: {answer}"),
                    }
                }
            }
        }));
    }
    let refresher = {
        let (running, base_b, token, pid) = (
            Arc::clone(&running),
            Arc::clone(&bases[1]),
            token.clone(),
            pid.clone(),
        );
        std::thread::spawn(move || {
            let mut started = 0;
            while running.load(Ordering::Relaxed) {
                let base = base_b.lock().unwrap().clone();
                if let Some((201, _)) = call(
                    &base,
                    &token,
                    "POST",
                    "/cckm/hsm/luna/refresh",
                    Some(&json!({"partitions": [pid]})),
                    None,
                ) {
                    started += 1;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            started
        })
    };

    // Faults, spread over the run.
    let started = Instant::now();
    let at = |fraction: f64| Duration::from_secs_f64(secs as f64 * fraction);
    let wait_until = |t: Duration| std::thread::sleep(t.saturating_sub(started.elapsed()));
    wait_until(at(0.15));
    println!("  {:>5.1} s  kill -9 instance A", started.elapsed().as_secs_f64());
    instances.lock().unwrap()[0].kill_9();
    wait_until(at(0.25));
    instances.lock().unwrap()[0].start();
    println!(
        "  {:>5.1} s  instance A started again",
        started.elapsed().as_secs_f64()
    );
    wait_until(at(0.4));
    println!("  {:>5.1} s  the database stops", started.elapsed().as_secs_f64());
    pg.stop();
    wait_until(at(0.5));
    pg.start_again();
    println!(
        "  {:>5.1} s  the database is back",
        started.elapsed().as_secs_f64()
    );
    wait_until(at(0.65));
    println!(
        "  {:>5.1} s  the token's store is taken away",
        started.elapsed().as_secs_f64()
    );
    // Out of the tokens directory: SoftHSM2 would find it under any name there.
    let away = home.join("away");
    std::fs::rename(&token_dir, &away).unwrap();
    wait_until(at(0.68));
    let base_a = bases[0].lock().unwrap().clone();
    println!(
        "  {:>5.1} s  A's health check says {}",
        started.elapsed().as_secs_f64(),
        health_of(&base_a)
    );
    wait_until(at(0.72));
    std::fs::rename(&away, &token_dir).unwrap();
    println!(
        "  {:>5.1} s  the token is back; instance A is not restarted",
        started.elapsed().as_secs_f64()
    );
    wait_until(at(0.76));
    println!(
        "  {:>5.1} s  A's health check says {}",
        started.elapsed().as_secs_f64(),
        health_of(&base_a)
    );
    wait_until(at(1.0));
    running.store(false, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    let refreshes = refresher.join().unwrap();

    // Let the work settle, then count. The token makes keys at its own pace
    // (an RSA pair takes SoftHSM2 tens of milliseconds, one write at a time),
    // so the load leaves a backlog: wait while it shrinks. A key still in
    // progress after `NO_PROGRESS` without any key ending is stuck.
    const NO_PROGRESS: Duration = Duration::from_secs(30);
    let token = login(&bases[0].lock().unwrap().clone()).expect("log in");
    let settle = Instant::now();
    let (mut fewest, mut progressed, mut backlog) = (u64::MAX, Instant::now(), None);
    while progressed.elapsed() < NO_PROGRESS && settle.elapsed() < Duration::from_secs(900) {
        let base = bases[0].lock().unwrap().clone();
        let left = call(
            &base,
            &token,
            "GET",
            "/cckm/hsm/luna/keys?status=in_progress&limit=1",
            None,
            None,
        )
        .and_then(|(status, page)| (status == 200).then(|| page["total"].as_u64()).flatten());
        match left {
            Some(0) => break,
            Some(n) if n < fewest => {
                backlog.get_or_insert(n);
                (fewest, progressed) = (n, Instant::now());
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    println!(
        "  {:>5.1} s  settled: {} keys were in progress when the load stopped; waited {:.0} s",
        started.elapsed().as_secs_f64(),
        backlog.unwrap_or(0),
        settle.elapsed().as_secs_f64()
    );
    supervising.store(false, Ordering::Relaxed);
    let restarts = supervisor.join().unwrap();
    let base = bases[0].lock().unwrap().clone();
    let report = count(&base, &token, &accepted.lock().unwrap(), &module, &conf);
    if report.stuck > 0 {
        // Why: the operations left, as the database has them.
        let _ = Command::new("psql")
            .arg(&pg.url)
            .args(["-c", "SELECT state, attempts, lease_owner IS NOT NULL AS leased, left(coalesce(last_error, ''), 100) AS last_error, count(*) FROM operations WHERE state IN ('queued', 'running') GROUP BY 1, 2, 3, 4 ORDER BY 5 DESC LIMIT 10"])
            .status();
    }
    for instance in instances.lock().unwrap().iter_mut() {
        instance.stop();
    }
    println!(
        "accepted {} creates ({} keys), {refreshes} refreshes started; ended {}",
        report.accepted, report.records, report.states
    );
    println!(
        "lost {} / duplicated {} / stuck {} / wrongly DELETED {}",
        report.lost, report.duplicated, report.stuck, report.wrongly_deleted
    );
    let server_errors = server_errors.load(Ordering::Relaxed);
    println!("500 answers to creates: {server_errors}");
    println!("instances restarted because their health check said stuck: {restarts}");
    // `exit` runs no destructors: stop the database server first.
    drop(pg);
    if report.lost + report.duplicated + report.stuck + report.wrongly_deleted + server_errors > 0 {
        std::process::exit(1);
    }
}

struct Report {
    accepted: usize,
    records: usize,
    states: String,
    lost: usize,
    duplicated: usize,
    stuck: usize,
    wrongly_deleted: usize,
}

/// Every accepted key against the records and the token.
fn count(
    base: &str,
    token: &str,
    accepted: &BTreeMap<String, Option<String>>,
    module: &Path,
    conf: &Path,
) -> Report {
    let mut records: BTreeMap<String, Value> = BTreeMap::new();
    let mut skip = 0;
    loop {
        let (status, page) = call(
            base,
            token,
            "GET",
            &format!("/cckm/hsm/luna/keys?skip={skip}&limit=1000"),
            None,
            None,
        )
        .unwrap();
        assert_eq!(status, 200, "{page}");
        let items = page["resources"].as_array().unwrap();
        for key in items {
            records.insert(key["id"].as_str().unwrap().to_owned(), key.clone());
        }
        if items.len() < 1000 {
            break;
        }
        skip += 1000;
    }
    // (class, CKA_ID) of every key object on the token, by pkcs11-tool.
    let listing = Command::new("pkcs11-tool")
        .arg("--module")
        .arg(module)
        .args([
            "--token-label",
            LABEL,
            "--login",
            "--pin",
            USER_PIN,
            "--list-objects",
        ])
        .env("SOFTHSM2_CONF", conf)
        .output()
        .expect("pkcs11-tool (package opensc)");
    let listing = String::from_utf8_lossy(&listing.stdout);
    let mut objects: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut class = String::new();
    for line in listing.lines() {
        if let Some((kind, _)) = line.split_once(" Object;") {
            class = kind.to_owned();
        } else if let Some(id) = line.trim().strip_prefix("ID:") {
            *objects.entry((class.clone(), id.trim().to_owned())).or_default() += 1;
        }
    }
    let wanted: BTreeSet<&String> = accepted
        .iter()
        .flat_map(|(id, public)| std::iter::once(id).chain(public))
        .collect();
    let stuck = records
        .values()
        .filter(|k| k["status"] == "in_progress" || k["operation_status"] == "in_progress")
        .count();
    let class_of = |k: &Value| match k["object_type"].as_str() {
        Some("secret key") => "Secret Key",
        Some("private key") => "Private Key",
        _ => "Public Key",
    };
    let cka_id = |k: &Value| k["id"].as_str().unwrap_or_default().replace('-', "");
    let on_token = |k: &Value| {
        let id = if k["object_type"] == "public key" {
            k["link_id"].as_str().unwrap_or_default().replace('-', "")
        } else {
            cka_id(k)
        };
        objects.get(&(class_of(k).to_owned(), id)).copied().unwrap_or(0)
    };
    let wrongly_deleted = records.values().filter(|k| k["status"] == "DELETED").count();
    // A create in progress shows no object_uid yet.
    let mut uids: BTreeMap<String, usize> = BTreeMap::new();
    for uid in records
        .values()
        .filter_map(|k| k["object_uid"].as_str())
        .filter(|u| !u.is_empty())
    {
        *uids.entry(uid.to_owned()).or_default() += 1;
    }
    // Lost: an accepted key without a record, or AVAILABLE without its object.
    let lost = wanted.iter().filter(|id| !records.contains_key(**id)).count()
        + records
            .values()
            .filter(|k| k["status"] == "AVAILABLE" && on_token(k) == 0)
            .count();
    // Duplicated: an object twice, two records of one object, or an object
    // no record names.
    // Every object's CKA_ID is its key's record id (a pair's private record's).
    let named: BTreeSet<String> = records.values().map(cka_id).collect();
    let duplicated = objects.values().filter(|n| **n > 1).count()
        + uids.values().filter(|n| **n > 1).count()
        + objects.keys().filter(|(_, id)| !named.contains(id)).count();
    let mut states: BTreeMap<String, usize> = BTreeMap::new();
    for k in records.values() {
        *states
            .entry(k["status"].as_str().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    // What went wrong, to look into.
    for k in records.values().filter(|k| k["status"] == "DELETED").take(5) {
        println!(
            "  DELETED: {} {} updated {} ({} {}): {}",
            k["label"], k["id"], k["updatedAt"], k["operation"], k["operation_status"], k["replication_info"]
        );
    }
    for ((class, id), n) in objects
        .iter()
        .filter(|((_, id), n)| **n > 1 || !named.contains(id))
        .take(5)
    {
        println!(
            "  on the token: {class} {id} x{n}{}",
            if named.contains(id) {
                ""
            } else {
                ", no record names it"
            }
        );
    }
    for (uid, n) in uids.iter().filter(|(_, n)| **n > 1).take(5) {
        println!("  {n} records of {uid}");
    }
    Report {
        accepted: accepted.len(),
        records: records.len(),
        states: format!("{states:?}"),
        lost,
        duplicated,
        stuck,
        wrongly_deleted,
    }
}
