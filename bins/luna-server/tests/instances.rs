//! Two `luna-server` processes on one PostgreSQL database, with SoftHSM2
//! tokens the operator makes while they run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use support::{call, login, Server};

const ADMIN: &str = "admin-password-of-both";
const USER_PIN: &str = "op-1234";

/// Instance B was started before the token existed, so its module does not
/// list it (SoftHSM2 reads its tokens at start). B claims a create on it,
/// cannot find the token, and puts the operation back instead of failing it;
/// instance A, which sees the token, makes the key.
#[test]
fn an_instance_blind_to_a_token_leaves_its_work_to_one_that_sees_it() {
    let db = luna_store::testing::TestDatabase::postgres().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The operator's own SoftHSM2 configuration and token directory.
    let conf = luna_pkcs11::softhsm::write_config(&dir.path().join("softhsm")).unwrap();
    let env = [("SOFTHSM2_CONF", conf.as_path())];
    let module = luna_pkcs11::softhsm::find_module().unwrap();
    let args = |workers: &str| -> Vec<String> {
        let mut args = on_one_database(&module, &db.url);
        args.extend(["--workers".to_owned(), workers.to_owned()]);
        args
    };
    let (data_a, data_b) = (dir.path().join("a"), dir.path().join("b"));
    let b_log = dir.path().join("b.log");

    let b = Server::launch(&data_b)
        .args(&argv(&args("1")))
        .env(&env)
        .log("info", std::fs::File::create(&b_log).unwrap().into())
        .start();
    share_keys(&data_b, &data_a);
    let output = Command::new("softhsm2-util")
        .args([
            "--init-token",
            "--free",
            "--label",
            "late",
            "--so-pin",
            "op-so-99",
            "--pin",
            USER_PIN,
        ])
        .envs(env)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(output.success());

    // A sees the token: it registers it, then stops, so that B alone runs work.
    let a = Server::launch(&data_a).args(&argv(&args("1"))).env(&env).start();
    let token = login(&a.base, ADMIN);
    let (status, connection) = call(
        "POST",
        &format!("{}/connectionmgmt/services/luna-network/connections", a.base),
        Some(&token),
        Some(
            &json!({"name": "late", "password": USER_PIN, "is_ha_enabled": false, "partitions": [{"partition_label": "late"}]}),
        ),
    );
    assert_eq!(status, 201, "{connection}");
    let (status, partition) = call(
        "POST",
        &format!("{}/cckm/hsm/luna/add-partition", a.base),
        Some(&token),
        Some(&json!({"connection": "late"})),
    );
    assert_eq!(status, 201, "{partition}");
    a.stop();

    let (status, created) = call(
        "POST",
        &format!("{}/cckm/hsm/luna/keys", b.base),
        Some(&token),
        Some(
            &json!({"label": "late-key", "size": 256, "partition_id": partition["id"], "mechanism": "CKM_AES_KEY_GEN"}),
        ),
    );
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    wait_for_line(&b_log, "passing the operation on");
    let (_, key) = call(
        "GET",
        &format!("{}/cckm/hsm/luna/keys/{id}", b.base),
        Some(&token),
        None,
    );
    assert_eq!(
        key["status"], "in_progress",
        "B put it back, it did not fail it: {key}"
    );
    b.stop();

    let a = Server::launch(&data_a).args(&argv(&args("1"))).env(&env).start();
    let deadline = Instant::now() + Duration::from_secs(60);
    let key = loop {
        let (_, key) = call(
            "GET",
            &format!("{}/cckm/hsm/luna/keys/{id}", a.base),
            Some(&token),
            None,
        );
        if key["status"] != "in_progress" || Instant::now() > deadline {
            break key;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        (key["status"].as_str(), key["operation_status"].as_str()),
        (Some("AVAILABLE"), Some("created")),
        "{key}"
    );
    a.stop();
}

fn wait_for_line(log: &Path, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(log).unwrap_or_default().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "{needle:?} never appeared in {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The flags of an instance on the database `url`, with the module `module`.
fn on_one_database(module: &Path, url: &str) -> Vec<String> {
    [
        "--insecure-http",
        "--pkcs11-module",
        module.to_str().unwrap(),
        "--database-url",
        url,
        "--admin-password",
        ADMIN,
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Instances on one database share the PIN sealing key and the JWT key.
fn share_keys(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for key in ["pin.key", "jwt.key"] {
        std::fs::copy(from.join(key), to.join(key)).unwrap();
    }
}

fn argv(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Two instances on one PostgreSQL database and a one-minute schedule: the
/// next minute's firing starts one job, by one of them, which names the
/// schedule; the trail and the two instances' metrics say so once.
#[test]
fn a_one_minute_schedule_fires_once_across_two_instances() {
    let db = luna_store::testing::TestDatabase::postgres().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let conf = luna_pkcs11::softhsm::write_config(&dir.path().join("softhsm")).unwrap();
    let env = [("SOFTHSM2_CONF", conf.as_path())];
    let module = luna_pkcs11::softhsm::find_module().unwrap();
    let start = |name: &str| {
        let data = dir.path().join(name);
        if name == "b" {
            share_keys(&dir.path().join("a"), &data);
        }
        let mut args = on_one_database(&module, &db.url);
        args.extend(["--instance-name".to_owned(), name.to_owned()]);
        Server::launch(&data).args(&argv(&args)).env(&env).start()
    };
    let (a, b) = (start("a"), start("b"));
    let token = login(&a.base, ADMIN);
    let (status, schedule) = call(
        "POST",
        &format!("{}/scheduler/job-configs", a.base),
        Some(&token),
        Some(
            &json!({"name": "every-minute", "operation": "cckm_synchronization", "run_at": "* * * * *",
            "cckm_synchronization_params": {"cloud_name": "luna", "synchronize_all": true}}),
        ),
    );
    assert_eq!(status, 201, "{schedule}");
    let id = schedule["id"].as_str().unwrap().to_owned();
    let first = schedule["next_run_at"].as_str().unwrap().to_owned();

    // Read on B: the firing is the database's, whichever instance handled it.
    let deadline = Instant::now() + Duration::from_secs(90);
    let fired = loop {
        let (_, shown) = call(
            "GET",
            &format!("{}/scheduler/job-configs/{id}", b.base),
            Some(&token),
            None,
        );
        if shown["last_run"].is_object() {
            break shown;
        }
        assert!(Instant::now() < deadline, "no firing within 90 s: {shown}");
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(fired["last_run"]["at"], json!(first), "{fired}");
    let job_id = fired["last_run"]["job_id"].as_str().unwrap().to_owned();
    // No partition is registered: the job has nothing to do, and completes.
    let deadline = Instant::now() + Duration::from_secs(30);
    let job = loop {
        let (_, job) = call(
            "GET",
            &format!("{}/cckm/hsm/luna/refresh/{job_id}", a.base),
            Some(&token),
            None,
        );
        if job["overall_status"] != "in_progress" || Instant::now() > deadline {
            break job;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(job["overall_status"], "completed", "{job}");
    assert_eq!(job["job_config_id"], json!(id), "{job}");
    // Stop it before the next minute, then count what this one did.
    let (status, _) = call(
        "PATCH",
        &format!("{}/scheduler/job-configs/{id}", b.base),
        Some(&token),
        Some(&json!({"disabled": true})),
    );
    assert_eq!(status, 200);
    let (_, trail) = call(
        "GET",
        &format!("{}/audit/records?action=schedule%20fired", a.base),
        Some(&token),
        None,
    );
    let firings = trail["resources"].as_array().unwrap();
    assert!(!firings.is_empty(), "{trail}");
    let at_first: Vec<_> = firings
        .iter()
        .filter(|r| r["outcome"] == json!(format!("started refresh job {job_id}")))
        .collect();
    assert_eq!(
        at_first.len(),
        1,
        "one record of the firing, by one instance: {trail}"
    );
    let started: u64 = [&a, &b]
        .iter()
        .map(|server| {
            let root = server.base.trim_end_matches("/api/v1");
            let text = ureq::get(&format!("{root}/metrics"))
                .call()
                .unwrap()
                .into_string()
                .unwrap();
            text.lines()
                .find(|l| {
                    l.starts_with(r#"luna_schedule_firings_total{outcome="started",schedule="every-minute"}"#)
                })
                .and_then(|l| l.rsplit(' ').next()?.parse().ok())
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(
        started,
        firings.len() as u64,
        "each firing counted by the instance that handled it"
    );
    a.stop();
    b.stop();
}
