//! Nothing accepted is lost: creates queued, the server killed with SIGKILL
//! mid-batch, restarted; every accepted key ends AVAILABLE with exactly one
//! object per half on the token, on SQLite and on PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use luna_store::{PinCipher, PoolOptions, Store};
use secrecy::ExposeSecret;
use serde_json::json;
use support::{call, login, Server};

const AES_KEYS: usize = 30;
const RSA_PAIRS: usize = 3;

/// (class, CKA_ID hex) of every key object on the token, read by pkcs11-tool,
/// but for the cloning domain key the HA members share (not a user's key).
fn objects_on_token(data: &Path, label: &str, pin: &str) -> Vec<(String, String)> {
    let output = Command::new("pkcs11-tool")
        .args([
            "--module",
            &luna_pkcs11::softhsm::find_module().unwrap().display().to_string(),
        ])
        .args(["--token-label", label, "--login", "--pin", pin, "--list-objects"])
        .env("SOFTHSM2_CONF", data.join("softhsm").join("softhsm2.conf"))
        .output()
        .expect("pkcs11-tool (package opensc)");
    let listing = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{listing}");
    let mut class = String::new();
    let mut label = String::new();
    let mut found = Vec::new();
    for line in listing.lines() {
        if let Some((kind, _)) = line.split_once(" Object") {
            if !line.starts_with(' ') {
                class = kind.to_owned();
                label.clear();
            }
        } else if let Some(text) = line.trim().strip_prefix("label:") {
            label = text.trim().to_owned();
        } else if let Some(id) = line.trim().strip_prefix("ID:") {
            if label != luna_pkcs11::DOMAIN_KEY_LABEL {
                found.push((class.clone(), id.trim().to_owned()));
            }
        }
    }
    found
}

fn survives_kill_9(database_url: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut args = vec!["--insecure-http", "--operation-lease-secs", "3", "--workers", "2"];
    if let Some(url) = database_url {
        args.extend(["--database-url", url]);
    }
    let server = Server::start(&data, &args);
    let password = server.admin_password_shown().unwrap();
    let partition = server.partition_id("HA");
    let token = login(&server.base, &password);

    // RSA first, so the workers are busy while the AES creates queue up behind them.
    let mut accepted: Vec<(String, Option<String>)> = Vec::new();
    let mut bodies = vec![
        json!({"label": "crash-rsa", "size": 2048, "partition_id": partition, "mechanism": "CKM_RSA_PKCS_KEY_PAIR_GEN", "attributes": ["CKA_SIGN"]});
        RSA_PAIRS
    ];
    bodies.extend(vec![json!({"label": "crash-aes", "size": 256, "partition_id": partition, "mechanism": "CKM_AES_KEY_GEN", "attributes": ["CKA_ENCRYPT"]}); AES_KEYS]);
    for body in &bodies {
        let (status, created) = call(
            "POST",
            &format!("{}/cckm/hsm/luna/keys", server.base),
            Some(&token),
            Some(body),
        );
        assert_eq!(status, 201, "{created}");
        accepted.push((
            created["id"].as_str().unwrap().to_owned(),
            created["links"]["id"].as_str().map(str::to_owned),
        ));
    }
    // A refresh job queued behind the creates: certainly not finished at the kill.
    let (status, job) = call(
        "POST",
        &format!("{}/cckm/hsm/luna/refresh", server.base),
        Some(&token),
        Some(&json!({"synchronize_all": true})),
    );
    assert_eq!(status, 201, "{job}");
    let job_id = job["id"].as_str().unwrap().to_owned();
    let (_, pending) = call(
        "GET",
        &format!("{}/cckm/hsm/luna/keys?status=in_progress&limit=1", server.base),
        Some(&token),
        None,
    );
    let pending = pending["total"].as_u64().unwrap();
    server.kill_9();
    assert!(pending > 0, "the kill must interrupt work: nothing was pending");
    assert_eq!(job["overall_status"], "in_progress");

    // Restarted, the server takes the operations up again once their leases run out.
    let server = Server::start(&data, &args);
    let token = login(&server.base, &password);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, left) = call(
            "GET",
            &format!("{}/cckm/hsm/luna/keys?status=in_progress&limit=1", server.base),
            Some(&token),
            None,
        );
        if left["total"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "keys still in progress: {left}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The job resumed and ended; it never stays in progress.
    let deadline = Instant::now() + Duration::from_secs(60);
    let job = loop {
        let (_, job) = call(
            "GET",
            &format!("{}/cckm/hsm/luna/refresh/{job_id}", server.base),
            Some(&token),
            None,
        );
        if job["overall_status"] != "in_progress" {
            break job;
        }
        assert!(Instant::now() < deadline, "job still in progress: {job}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(job["overall_status"], "completed", "{job}");
    assert!(job["completed_at"].is_string());
    let mut expected: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (id, public) in &accepted {
        let (_, key) = call(
            "GET",
            &format!("{}/cckm/hsm/luna/keys/{id}", server.base),
            Some(&token),
            None,
        );
        assert_eq!(
            (key["status"].as_str(), key["operation_status"].as_str()),
            (Some("AVAILABLE"), Some("created")),
            "{key}"
        );
        let classes = match public {
            Some(public_id) => {
                let (_, half) = call(
                    "GET",
                    &format!("{}/cckm/hsm/luna/keys/{public_id}", server.base),
                    Some(&token),
                    None,
                );
                assert_eq!(half["status"], "AVAILABLE", "{half}");
                vec!["Private Key", "Public Key"]
            }
            None => vec!["Secret Key"],
        };
        expected.insert(id.replace('-', ""), classes);
    }
    server.stop();

    // On the token: exactly one object per half, and nothing else.
    let url = database_url
        .map(str::to_owned)
        .unwrap_or_else(|| format!("sqlite://{}", data.join("luna.db").display()));
    let store = Store::open(
        &url,
        PinCipher::load_or_create(&data.join("pin.key")).unwrap(),
        PoolOptions::default(),
    )
    .unwrap();
    let connection = store.connection_by_name("demo-ha").unwrap().unwrap();
    let pin = store.connection_pin(connection.id).unwrap().unwrap();
    let mut on_token: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (class, id) in objects_on_token(&data, "demo-ha-1", pin.expose_secret()) {
        on_token.entry(id).or_default().push(class);
    }
    for classes in on_token.values_mut() {
        classes.sort();
    }
    let expected: BTreeMap<String, Vec<String>> = expected
        .into_iter()
        .map(|(id, c)| (id, c.into_iter().map(String::from).collect()))
        .collect();
    assert_eq!(
        on_token, expected,
        "one object per half of every accepted key, no more"
    );
    assert_eq!(
        on_token.values().map(Vec::len).sum::<usize>(),
        AES_KEYS + 2 * RSA_PAIRS
    );
}

#[test]
fn sqlite_accepted_creates_survive_kill_9() {
    survives_kill_9(None);
}

#[test]
fn postgres_accepted_creates_survive_kill_9() {
    let db = luna_store::testing::TestDatabase::postgres().unwrap();
    survives_kill_9(Some(&db.url));
}
