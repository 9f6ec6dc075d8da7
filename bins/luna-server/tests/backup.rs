//! `luna-server backup` taken while the server creates keys, and `restore`
//! into a new data directory: every key accepted before the backup began is
//! there, the audit chain verifies, and the restored server works on its tokens.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use serde_json::{json, Value};
use support::{call, login, settled, Server};

fn luna_server(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_luna-server"))
        .args(args)
        .env_remove("LUNA_DATA_DIR")
        .env_remove("LUNA_DATABASE_URL")
        .env_remove("LUNA_BACKUP_PASSPHRASE_FILE")
        .output()
        .unwrap()
}

fn create(base: &str, token: &str, partition: &str, label: &str) -> (u16, Value) {
    let body = json!({"label": label, "size": 256, "partition_id": partition, "mechanism": "CKM_AES_KEY_GEN", "attributes": ["CKA_ENCRYPT"]});
    call(
        "POST",
        &format!("{base}/cckm/hsm/luna/keys"),
        Some(token),
        Some(&body),
    )
}

#[test]
fn a_backup_taken_under_creates_restores_every_key_accepted_before_it_began() {
    let dir = tempfile::tempdir().unwrap();
    let (data, restored_data) = (dir.path().join("data"), dir.path().join("restored"));
    let (file, passphrase) = (dir.path().join("luna.backup"), dir.path().join("passphrase"));
    std::fs::write(&passphrase, "correct horse battery staple\n").unwrap();
    std::fs::set_permissions(&passphrase, std::fs::Permissions::from_mode(0o600)).unwrap();

    let server = Server::start(&data, &["--insecure-http"]);
    let password = server.admin_password_shown().unwrap();
    let token = login(&server.base, &password);
    let partition = server.partition_id("single");
    let before: Vec<String> = (0..10)
        .map(|n| {
            let (status, key) = create(&server.base, &token, &partition, &format!("before-{n}"));
            assert_eq!(status, 201, "{key}");
            key["id"].as_str().unwrap().to_owned()
        })
        .collect();
    for id in &before {
        assert_eq!(settled(&server.base, &token, id)["status"], "AVAILABLE");
    }

    // The backup runs while creates keep coming.
    let (creating, during) = (AtomicBool::new(true), AtomicUsize::new(0));
    let output = std::thread::scope(|s| {
        s.spawn(|| {
            while creating.load(Ordering::SeqCst) {
                let (status, key) = create(&server.base, &token, &partition, "during");
                assert_eq!(status, 201, "{key}");
                during.fetch_add(1, Ordering::SeqCst);
            }
        });
        while during.load(Ordering::SeqCst) < 3 {
            std::thread::yield_now();
        }
        let output = luna_server(&[
            "backup".as_ref(),
            "--data-dir".as_ref(),
            data.as_os_str(),
            "--to".as_ref(),
            file.as_os_str(),
            "--passphrase-file".as_ref(),
            passphrase.as_os_str(),
        ]);
        creating.store(false, Ordering::SeqCst);
        output
    });
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        during.load(Ordering::SeqCst) > 3,
        "creates went on during the backup"
    );
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    server.stop();

    // A wrong passphrase opens nothing; a data directory in use is not written over.
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "not the passphrase\n").unwrap();
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    for (into, with, said) in [
        (&restored_data, &wrong, "the passphrase does not open"),
        (&data, &passphrase, "is not empty"),
    ] {
        let refused = luna_server(&[
            "restore".as_ref(),
            "--from".as_ref(),
            file.as_os_str(),
            "--data-dir".as_ref(),
            into.as_os_str(),
            "--passphrase-file".as_ref(),
            with.as_os_str(),
        ]);
        assert!(!refused.status.success());
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains(said),
            "{}",
            String::from_utf8_lossy(&refused.stderr)
        );
    }
    assert!(!restored_data.exists());

    let output = luna_server(&[
        "restore".as_ref(),
        "--from".as_ref(),
        file.as_os_str(),
        "--data-dir".as_ref(),
        restored_data.as_os_str(),
        "--passphrase-file".as_ref(),
        passphrase.as_os_str(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let restored = Server::start(&restored_data, &["--insecure-http"]);
    let token = login(&restored.base, &password);
    for id in &before {
        let (status, key) = call(
            "GET",
            &format!("{}/cckm/hsm/luna/keys/{id}", restored.base),
            Some(&token),
            None,
        );
        assert_eq!(
            (status, key["status"].as_str()),
            (200, Some("AVAILABLE")),
            "{key}"
        );
    }
    let (status, chain) = call(
        "GET",
        &format!("{}/audit/verify", restored.base),
        Some(&token),
        None,
    );
    assert_eq!((status, &chain["intact"]), (200, &json!(true)), "{chain}");
    let (status, key) = create(&restored.base, &token, &partition, "after-restore");
    assert_eq!(status, 201, "{key}");
    assert_eq!(
        settled(&restored.base, &token, key["id"].as_str().unwrap())["status"],
        "AVAILABLE"
    );
    restored.stop();
}

/// `luna-server ARGS` on a pseudo-terminal (util-linux's `script`), typing
/// each reply once its prompt is shown; whether it succeeded, and the screen.
fn typed_at_a_terminal(args: &str, replies: &[(&str, &str)]) -> (bool, String) {
    use std::io::{Read as _, Write as _};
    let mut child = Command::new("script")
        .args([
            "-qec",
            &format!("{} {args}", env!("CARGO_BIN_EXE_luna-server")),
            "/dev/null",
        ])
        .env_remove("LUNA_BACKUP_PASSPHRASE_FILE")
        .env_remove("LUNA_DATA_DIR")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (mut keys, mut screen) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
    let mut shown = String::new();
    for (prompt, reply) in replies {
        let mut byte = [0u8; 1];
        while !shown.ends_with(prompt) && screen.read(&mut byte).unwrap() == 1 {
            shown.push(char::from(byte[0]));
        }
        // The prompt is written before the terminal's echo is turned off.
        std::thread::sleep(std::time::Duration::from_millis(300));
        keys.write_all(format!("{reply}\n").as_bytes()).unwrap();
    }
    let mut rest = String::new();
    screen.read_to_string(&mut rest).unwrap();
    drop(keys);
    (child.wait().unwrap().success(), shown + &rest)
}

/// The passphrase asked on the terminal: twice for a backup (two that differ
/// are refused), once for a restore; never echoed.
#[test]
fn the_passphrase_is_asked_on_the_terminal_twice_for_a_backup_and_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--insecure-http"]);
    assert_eq!(
        call("GET", &format!("{}/healthz", server.base), None, None).0,
        200
    );
    server.stop();
    let file = dir.path().join("luna.backup");
    let backup = format!("backup --data-dir {} --to {}", data.display(), file.display());
    let (ok, screen) = typed_at_a_terminal(
        &backup,
        &[
            ("backup passphrase: ", "first-phrase-1"),
            ("again: ", "other-phrase-2"),
        ],
    );
    assert!(!ok && screen.contains("the two passphrases differ"), "{screen}");
    assert!(!file.exists());
    let (ok, screen) = typed_at_a_terminal(
        &backup,
        &[
            ("backup passphrase: ", "typed-phrase-3"),
            ("again: ", "typed-phrase-3"),
        ],
    );
    assert!(ok, "{screen}");
    assert!(!screen.contains("typed-phrase-3"), "echoed: {screen}");
    let restore = format!(
        "restore --from {} --data-dir {}",
        file.display(),
        dir.path().join("restored").display()
    );
    let (ok, screen) = typed_at_a_terminal(&restore, &[("backup passphrase: ", "typed-phrase-3")]);
    assert!(ok, "{screen}");
    assert!(dir.path().join("restored/luna.db").is_file());
}
