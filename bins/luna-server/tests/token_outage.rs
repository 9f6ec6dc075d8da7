//! The real `luna-server` on tokens that go away and come back, as a network
//! HSM does (a reboot, a cable, a firewall, a daemon restart): a SoftHSM2
//! token whose directory is moved out of its store and back, and
//! openCryptoki's slot daemon stopped and started. The server is never
//! restarted: the work accepted meanwhile must end by itself, and the health
//! check and the partition must say what is happening while it happens.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{call, login, Server};

const USER_PIN: &str = "op-1234";
const SO_PIN: &str = "op-so-99";
const KEYS: &str = "/cckm/hsm/luna/keys";

/// A SoftHSM2 store of the operator's with one token made by `softhsm2-util`.
struct OperatorToken {
    home: PathBuf,
    conf: PathBuf,
    label: &'static str,
}

impl OperatorToken {
    fn make(root: &Path, label: &'static str) -> OperatorToken {
        let home = root.join("operator-softhsm");
        let conf = support::softhsm2_operator_tokens(&home, &[label], SO_PIN, USER_PIN);
        OperatorToken { home, conf, label }
    }

    fn env(&self) -> [(&'static str, &Path); 1] {
        [("SOFTHSM2_CONF", self.conf.as_path())]
    }

    /// The token's own directory in the store.
    fn dir(&self) -> PathBuf {
        let tokens = self.home.join("tokens");
        std::fs::read_dir(&tokens)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|d| d.join("token.object").exists())
            .expect("the token's directory")
    }

    /// Takes the token away: its directory leaves the store (out of the
    /// tokens directory, where SoftHSM2 would find it again). Returns where
    /// it went, for `put_back`.
    fn take_away(&self) -> (PathBuf, PathBuf) {
        let dir = self.dir();
        let away = self.home.join("away");
        std::fs::rename(&dir, &away).unwrap();
        (dir, away)
    }

    fn put_back(&self, (dir, away): (PathBuf, PathBuf)) {
        std::fs::rename(away, dir).unwrap();
    }

    /// The secret keys on the token, by pkcs11-tool (another program).
    fn secret_keys(&self) -> usize {
        let output = Command::new("pkcs11-tool")
            .arg("--module")
            .arg(luna_pkcs11::softhsm::find_module().unwrap())
            .args([
                "--token-label",
                self.label,
                "--login",
                "--pin",
                USER_PIN,
                "--list-objects",
                "--type",
                "secrkey",
            ])
            .env("SOFTHSM2_CONF", &self.conf)
            .output()
            .expect("pkcs11-tool (package opensc)");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .matches("Secret Key Object")
            .count()
    }
}

/// A logged-in client of one server.
struct Client {
    base: String,
    token: String,
}

impl Client {
    fn of(server: &Server, password: &str) -> Client {
        Client {
            base: server.base.clone(),
            token: login(&server.base, password),
        }
    }

    fn get(&self, path: &str) -> (u16, Value) {
        call("GET", &format!("{}{path}", self.base), Some(&self.token), None)
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        call(
            "POST",
            &format!("{}{path}", self.base),
            Some(&self.token),
            Some(body),
        )
    }

    /// Registers the token as a single partition; its id.
    fn partition(&self, label: &str) -> String {
        let (status, connection) = self.post(
            "/connectionmgmt/services/luna-network/connections",
            &json!({"name": label, "password": USER_PIN, "is_ha_enabled": false, "partitions": [{"partition_label": label}]}),
        );
        assert_eq!(status, 201, "{connection}");
        let (status, partition) = self.post("/cckm/hsm/luna/add-partition", &json!({"connection": label}));
        assert_eq!(status, 201, "{partition}");
        partition["id"].as_str().unwrap().to_owned()
    }

    /// Accepts an AES create; the key's id.
    fn create(&self, partition: &str, label: &str) -> String {
        let (status, created) = self.post(
            KEYS,
            &json!({"label": label, "size": 256, "partition_id": partition, "mechanism": "CKM_AES_KEY_GEN"}),
        );
        assert_eq!(status, 201, "{created}");
        created["id"].as_str().unwrap().to_owned()
    }

    /// A create sent now ends AVAILABLE within 3 s: the token is in use again.
    fn creates_at_once(&self, partition: &str) {
        let started = Instant::now();
        let after = self.create(partition, "after");
        assert_eq!(
            self.settled(&after, Duration::from_secs(10))["status"],
            "AVAILABLE"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }

    fn key(&self, id: &str) -> Value {
        let (status, key) = self.get(&format!("{KEYS}/{id}"));
        assert_eq!(status, 200, "{key}");
        key
    }

    /// Waits until the key's operation has ended, `within` at most.
    fn settled(&self, id: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let key = self.key(id);
            if key["status"] != "in_progress" && key["operation_status"] != "in_progress" {
                return key;
            }
            assert!(
                Instant::now() < deadline,
                "still in progress after {within:?}: {key}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn healthz(&self) -> (u16, Value) {
        call("GET", &format!("{}/healthz", self.base), None, None)
    }

    /// The partition's first member's token, as `GET /partitions/{id}` shows it.
    fn member_token(&self, partition: &str) -> Value {
        let (status, one) = self.get(&format!("/cckm/hsm/luna/partitions/{partition}"));
        assert_eq!(status, 200, "{one}");
        one["members"][0]["token"].clone()
    }

    /// `/metrics` lines that start with `name`.
    fn metric(&self, name: &str) -> Vec<String> {
        let url = format!("{}/metrics", self.base.trim_end_matches("/api/v1"));
        let text = ureq::get(&url).call().unwrap().into_string().unwrap();
        text.lines()
            .filter(|l| l.starts_with(name))
            .map(str::to_owned)
            .collect()
    }

    /// Waits until `healthz` answers `status` (200 either way: a token away
    /// is `degraded`, never a reason to restart).
    fn health_becomes(&self, status: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (code, health) = self.healthz();
            assert_eq!(code, 200, "{health}");
            if health["status"] == status {
                return health;
            }
            assert!(Instant::now() < deadline, "healthz never said {status}: {health}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn softhsm_server(data: &Path, token: &OperatorToken, extra: &[&str]) -> Server {
    let module = luna_pkcs11::softhsm::find_module().unwrap();
    let mut args = vec!["--insecure-http", "--pkcs11-module", module.to_str().unwrap()];
    args.extend_from_slice(extra);
    Server::launch(data).args(&args).env(&token.env()).start()
}

/// Before: every one of 30 creates sent during a 10 s outage ended FAILED
/// (five attempts, the last 16 s after the first), a create sent after the
/// token came back failed too, and healthz said `ok` throughout.
#[test]
fn creates_sent_while_the_token_is_away_end_available_and_health_says_so_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let token = OperatorToken::make(dir.path(), "outage-short");
    let server = softhsm_server(&dir.path().join("data"), &token, &[]);
    let client = Client::of(&server, &server.admin_password_shown().unwrap());
    let partition = client.partition(token.label);
    let first = client.create(&partition, "before");
    assert_eq!(
        client.settled(&first, Duration::from_secs(30))["status"],
        "AVAILABLE"
    );
    assert_eq!(client.health_becomes("ok")["status"], "ok");

    let away = token.take_away();
    let taken_at = Instant::now();
    let mut during = Vec::new();
    while taken_at.elapsed() < Duration::from_secs(6) {
        during.push(client.create(&partition, &format!("during-{}", during.len())));
        std::thread::sleep(Duration::from_millis(200));
    }
    // While it is away, the health check and the partition say so.
    let health = client.health_becomes("degraded");
    let unreachable = &health["unreachable"][0];
    assert_eq!(unreachable["partition_label"], token.label, "{health}");
    assert!(
        unreachable["unreachable_since"].is_string()
            && unreachable["error"].as_str().unwrap().contains(token.label),
        "{health}"
    );
    let member = client.member_token(&partition);
    assert_eq!(member["reachable"], false, "{member}");
    assert!(
        member["unreachable_since"].is_string() && member["error"].is_string(),
        "{member}"
    );
    assert_eq!(
        client.metric("luna_token_reachable{"),
        [format!(
            "luna_token_reachable{{partition_label=\"{}\",serial_number=\"{}\"}} 0",
            token.label,
            member_serial(&client, &partition)
        )]
    );
    for id in &during {
        assert_eq!(
            client.key(id)["status"],
            "in_progress",
            "the work waits, it does not fail"
        );
    }

    token.put_back(away);
    let back_at = Instant::now();
    for id in &during {
        let key = client.settled(id, Duration::from_secs(60));
        assert_eq!(
            (key["status"].as_str(), key["operation_status"].as_str()),
            (Some("AVAILABLE"), Some("created")),
            "{key}"
        );
    }
    let drained = back_at.elapsed();
    eprintln!(
        "{} creates sent during a {:?} outage: all AVAILABLE {:?} after the token came back",
        during.len(),
        back_at - taken_at,
        drained
    );
    assert!(drained < Duration::from_secs(20), "{drained:?}");
    let health = client.health_becomes("ok");
    assert!(health.get("unreachable").is_none(), "{health}");
    let member = client.member_token(&partition);
    assert_eq!(
        (member["reachable"].as_bool(), member["recoveries"].as_u64()),
        (Some(true), Some(1)),
        "{member}"
    );
    assert!(
        member["last_error"].is_string(),
        "the last outage's reason stays: {member}"
    );
    assert_eq!(client.metric("luna_token_recoveries_total{").len(), 1);
    assert!(client.metric("luna_token_recoveries_total{")[0].ends_with(" 1"));
    assert!(!client.metric("luna_pkcs11_module_reinitialisations_total ")[0].ends_with(" 0"));

    // A create sent now works at once.
    client.creates_at_once(&partition);
    assert_eq!(
        token.secret_keys(),
        during.len() + 2,
        "pkcs11-tool sees every key, once"
    );
    server.stop();
}

fn member_serial(client: &Client, partition: &str) -> String {
    let (_, one) = client.get(&format!("/cckm/hsm/luna/partitions/{partition}"));
    one["members"][0]["serial_number"].as_str().unwrap().to_owned()
}

/// Work waits for a token no longer than `--token-outage-secs`, then fails
/// saying so; once the token is back, new work runs at once.
#[test]
fn work_waits_for_a_token_no_longer_than_the_outage_flag_then_fails_saying_so() {
    let dir = tempfile::tempdir().unwrap();
    let token = OperatorToken::make(dir.path(), "outage-long");
    let server = softhsm_server(&dir.path().join("data"), &token, &["--token-outage-secs", "4"]);
    let client = Client::of(&server, &server.admin_password_shown().unwrap());
    let partition = client.partition(token.label);
    let first = client.create(&partition, "before");
    assert_eq!(
        client.settled(&first, Duration::from_secs(30))["status"],
        "AVAILABLE"
    );

    let away = token.take_away();
    let taken_at = Instant::now();
    let waiting = client.create(&partition, "waits-too-long");
    let key = client.settled(&waiting, Duration::from_secs(40));
    let failed_after = taken_at.elapsed();
    assert_eq!(
        (key["status"].as_str(), key["operation_status"].as_str()),
        (Some("FAILED"), Some("failed")),
        "{key}"
    );
    let reason = key["operation_error"].as_str().unwrap();
    assert!(
        reason.contains("has been unreachable for") && reason.contains("--token-outage-secs"),
        "{reason}"
    );
    assert!(
        failed_after >= Duration::from_secs(4) && failed_after < Duration::from_secs(15),
        "{failed_after:?}"
    );
    // Past the flag, new work fails at once, saying why.
    let late = client.create(&partition, "sent-late");
    assert_eq!(client.settled(&late, Duration::from_secs(10))["status"], "FAILED");

    token.put_back(away);
    client.health_becomes("ok");
    client.creates_at_once(&partition);
    server.stop();
}

/// A refresh started while the token is away waits for it (it concludes
/// nothing from a token it cannot read), then completes; no key is DELETED.
#[test]
fn a_refresh_across_an_outage_waits_and_marks_nothing_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let token = OperatorToken::make(dir.path(), "outage-refresh");
    let server = softhsm_server(&dir.path().join("data"), &token, &[]);
    let client = Client::of(&server, &server.admin_password_shown().unwrap());
    let partition = client.partition(token.label);
    let keys: Vec<String> = (0..5)
        .map(|n| client.create(&partition, &format!("kept-{n}")))
        .collect();
    for id in &keys {
        assert_eq!(client.settled(id, Duration::from_secs(30))["status"], "AVAILABLE");
    }

    let away = token.take_away();
    client.health_becomes("degraded");
    let (status, job) = client.post("/cckm/hsm/luna/refresh", &json!({"partitions": [partition]}));
    assert_eq!(status, 201, "{job}");
    let job_id = job["id"].as_str().unwrap().to_owned();
    std::thread::sleep(Duration::from_secs(3));
    let (_, during) = client.get(&format!("/cckm/hsm/luna/refresh/{job_id}"));
    assert_eq!(during["overall_status"], "in_progress", "{during}");

    token.put_back(away);
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let (_, job) = client.get(&format!("/cckm/hsm/luna/refresh/{job_id}"));
        if job["overall_status"] != "in_progress" {
            break job;
        }
        assert!(Instant::now() < deadline, "{job}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(done["overall_status"], "completed", "{done}");
    for id in &keys {
        assert_eq!(client.key(id)["status"], "AVAILABLE");
    }
    let (_, deleted) = client.get(&format!("{KEYS}?status=DELETED"));
    assert_eq!(deleted["total"], 0, "{deleted}");
    server.stop();
}

/// Two instances on one database: A holds the token, B's module lists none
/// (B passes token work on). The token goes away and comes back under A,
/// which recovers it without a restart; creates sent through both end AVAILABLE.
#[test]
fn of_two_instances_the_one_that_saw_the_outage_recovers_without_a_restart() {
    let db = luna_store::testing::TestDatabase::postgres().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token = OperatorToken::make(dir.path(), "outage-two");
    let blind = luna_pkcs11::softhsm::write_config(&dir.path().join("blind-softhsm")).unwrap();
    let module = luna_pkcs11::softhsm::find_module().unwrap();
    let args = [
        "--insecure-http",
        "--pkcs11-module",
        module.to_str().unwrap(),
        "--database-url",
        &db.url,
        "--admin-password",
        "admin-of-both",
    ];
    let (data_a, data_b) = (dir.path().join("a"), dir.path().join("b"));
    let a = Server::launch(&data_a).args(&args).env(&token.env()).start();
    // Instances on one database share the PIN sealing key and the JWT key.
    std::fs::create_dir_all(&data_b).unwrap();
    for key in ["pin.key", "jwt.key"] {
        std::fs::copy(data_a.join(key), data_b.join(key)).unwrap();
    }
    let b = Server::launch(&data_b)
        .args(&args)
        .env(&[("SOFTHSM2_CONF", blind.as_path())])
        .start();
    let (client_a, client_b) = (Client::of(&a, "admin-of-both"), Client::of(&b, "admin-of-both"));
    let partition = client_a.partition(token.label);
    let first = client_a.create(&partition, "before");
    assert_eq!(
        client_a.settled(&first, Duration::from_secs(30))["status"],
        "AVAILABLE"
    );

    let away = token.take_away();
    let mut during = Vec::new();
    for n in 0..10 {
        let client = if n % 2 == 0 { &client_a } else { &client_b };
        during.push(client.create(&partition, &format!("during-{n}")));
        std::thread::sleep(Duration::from_millis(300));
    }
    client_a.health_becomes("degraded");
    assert_eq!(
        client_b.healthz().1["status"],
        "ok",
        "B uses no token: nothing of its own is away"
    );
    token.put_back(away);
    for id in &during {
        let key = client_b.settled(id, Duration::from_secs(90));
        assert_eq!(key["status"], "AVAILABLE", "{key}");
    }
    client_a.health_becomes("ok");
    assert_eq!(token.secret_keys(), during.len() + 1);
    a.stop();
    b.stop();
}

/// openCryptoki's slot daemon stopped and started under a running server:
/// openCryptoki 3.8's soft token goes on in a process that initialised it,
/// so creates during and after end AVAILABLE, and health stays `ok`.
#[test]
fn opencryptoki_s_slot_daemon_stopped_and_started_under_a_running_server() {
    let daemon = luna_pkcs11::testing::SlotDaemonOutage::hold();
    let label = daemon.provision("daemon-outage");
    let dir = tempfile::tempdir().unwrap();
    let module = luna_pkcs11::testing::opencryptoki_module_path();
    let server = Server::start(
        &dir.path().join("data"),
        &["--insecure-http", "--pkcs11-module", module.to_str().unwrap()],
    );
    let client = Client::of(&server, &server.admin_password_shown().unwrap());
    let (status, connection) = client.post(
        "/connectionmgmt/services/luna-network/connections",
        &json!({"name": "ock", "password": luna_pkcs11::testing::USER_PIN, "is_ha_enabled": false, "partitions": [{"partition_label": label}]}),
    );
    assert_eq!(status, 201, "{connection}");
    let (_, partition) = client.post("/cckm/hsm/luna/add-partition", &json!({"connection": "ock"}));
    let partition = partition["id"].as_str().unwrap().to_owned();
    let first = client.create(&partition, "before");
    assert_eq!(
        client.settled(&first, Duration::from_secs(30))["status"],
        "AVAILABLE"
    );

    daemon.stop();
    let during: Vec<String> = (0..5)
        .map(|n| client.create(&partition, &format!("daemon-down-{n}")))
        .collect();
    for id in &during {
        assert_eq!(client.settled(id, Duration::from_secs(30))["status"], "AVAILABLE");
    }
    // Looked at every 5 s while it answers: still answering.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(client.healthz().1["status"], "ok");
    daemon.start();
    let after = client.create(&partition, "after");
    assert_eq!(
        client.settled(&after, Duration::from_secs(30))["status"],
        "AVAILABLE"
    );
    assert_eq!(client.member_token(&partition)["reachable"], true);
    let (_, listed) = client.get(&format!("{KEYS}?partition_id={partition}&status=AVAILABLE"));
    assert_eq!(listed["total"], 7, "{listed}");
    server.stop();
}
