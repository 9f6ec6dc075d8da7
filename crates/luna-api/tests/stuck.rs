//! A PKCS#11 module that hangs: another process holds a SoftHSM2 token's
//! generation file locked, so every object call on that token waits, as a
//! call to a network HSM that stopped answering would. In its own test binary:
//! the hung calls hold SoftHSM2's locks, which no other test should share.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use luna_api::testing::{runner_settings, Api};
use luna_store::testing::TestDatabase;
use serde_json::{json, Value};
use uuid::Uuid;

const KEYS: &str = "/cckm/hsm/luna/keys";

/// Holds an fcntl write lock on the file it is given (the kind SoftHSM2
/// takes) until its standard input closes.
const HOLD_LOCK: &str = "import fcntl, sys\n\
f = open(sys.argv[1], 'r+b')\n\
fcntl.lockf(f, fcntl.LOCK_EX)\n\
print('locked', flush=True)\n\
sys.stdin.read()\n";

#[test]
fn a_token_call_that_hangs_is_called_stuck_its_lease_runs_out_and_it_ends_when_the_token_answers() {
    // Two workers: once the hung attempt's lease runs out, the other takes
    // the operation over, and the hung one must not write over it.
    let mut settings = runner_settings(2);
    settings.lease = time::Duration::seconds(3);
    settings.stuck_after = Duration::from_secs(2);
    let api = Api::start_with_settings(TestDatabase::sqlite().unwrap(), settings);
    let partition = api.partition("hung", 1);
    let aes = |label: &str| json!({"label": label, "size": 256, "partition_id": partition["id"], "mechanism": "CKM_AES_KEY_GEN"});
    // A first key, so that the token has its generation file.
    let (_, first) = api.send("POST", KEYS, &aes("before"));
    assert_eq!(api.settled(first["id"].as_str().unwrap())["status"], "AVAILABLE");
    assert_eq!(api.call("GET", "/healthz", None, None).0, 200);

    let generation = luna_pkcs11::testing::softhsm_token_dir(partition["partition_label"].as_str().unwrap())
        .join("generation");
    let mut holder = Command::new("python3")
        .args(["-c", HOLD_LOCK])
        .arg(&generation)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut said = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut said)
        .unwrap();
    assert_eq!(said.trim(), "locked");

    let started = Instant::now();
    let (status, created) = api.send("POST", KEYS, &aes("hung"));
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();

    // Past `stuck_after` (and a renewal period), the health check says so.
    let health = loop {
        let (status, health) = api.call("GET", "/healthz", None, None);
        if status == 503 {
            break health;
        }
        assert_eq!(status, 200, "{health}");
        assert!(started.elapsed() < Duration::from_secs(20), "never called stuck");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(health["status"], "stuck", "{health}");
    let detail = health["detail"].as_str().unwrap();
    assert!(
        detail.contains("(keycreate)") && detail.contains("restart this instance"),
        "{detail}"
    );
    let operation: Uuid = detail.split_whitespace().nth(1).unwrap().parse().unwrap();

    assert!(detail.contains("answer to generate"), "{detail}");

    // Its lease is no longer renewed: it runs out, and the other worker takes
    // the operation over under a lease of its own (and hangs too).
    let first = api.store().get_operation(operation).unwrap().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let second = loop {
        let now = api.store().get_operation(operation).unwrap().unwrap();
        if now.attempts() == 2 {
            break now;
        }
        assert!(Instant::now() < deadline, "never taken over: {now:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(first.attempts(), 1);
    assert_ne!(
        second.lease_owner(),
        first.lease_owner(),
        "a lease name per claim"
    );
    let (_, key) = api.get(&format!("{KEYS}/{id}"));
    assert_eq!(key["status"], "in_progress", "{key}");

    // The token answers again: the call returns, the key ends, health is back.
    drop(holder.stdin.take());
    holder.wait().unwrap();
    let key: Value = api.settled(&id);
    assert_eq!(
        (key["status"].as_str(), key["operation_status"].as_str()),
        (Some("AVAILABLE"), Some("created")),
        "{key}"
    );
    assert_eq!(api.call("GET", "/healthz", None, None).0, 200);
    assert_eq!(api.get(&format!("{KEYS}?label=hung")).1["total"], 1);
    // The hung attempt's late answer lost to the attempt that took over.
    let ended = api.store().get_operation(operation).unwrap().unwrap();
    assert_eq!(
        (ended.state(), ended.attempts()),
        (luna_domain::OperationState::Succeeded, 2)
    );
}
