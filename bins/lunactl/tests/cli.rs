//! lunactl end to end: the built binary against a live in-process luna-server
//! on real SoftHSM2 tokens and a real database (SQLite), as a user runs it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use luna_api::auth::Auth;
use luna_api::server::{bootstrap_admin, start, Config};
use luna_api::testing::{Api, ADMIN_PASSWORD, SIGNING_KEY};
use luna_api::view::Tenancy;
use luna_store::testing::TestDatabase;
use secrecy::SecretString;
use serde_json::Value;

/// A user with a config dir of their own.
struct User {
    config: tempfile::TempDir,
    server: String,
}

struct Outcome {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn json(&self) -> Value {
        assert!(self.ok, "lunactl failed: {}", self.stderr);
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }
}

impl User {
    fn new(server: &str) -> User {
        User {
            config: tempfile::tempdir().unwrap(),
            server: server.to_owned(),
        }
    }

    fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> Outcome {
        let output = Command::new(env!("CARGO_BIN_EXE_lunactl"))
            .args(["--server", &self.server])
            .args(args)
            .env("XDG_CONFIG_HOME", self.config.path())
            .env_remove("LUNACTL_SERVER")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        Outcome {
            ok: output.status.success(),
            stdout: String::from_utf8(output.stdout).unwrap(),
            stderr: String::from_utf8(output.stderr).unwrap(),
        }
    }

    fn run(&self, args: &[&str]) -> Outcome {
        self.run_with(args, &[])
    }

    fn login(&self, extra: &[&str]) -> Outcome {
        let mut args = vec!["login", "--username", "admin"];
        args.extend_from_slice(extra);
        self.run_with(&args, &[("LUNACTL_PASSWORD", ADMIN_PASSWORD)])
    }

    fn session_path(&self) -> PathBuf {
        self.config.path().join("lunactl").join("session.json")
    }

    fn session(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.session_path()).unwrap()).unwrap()
    }
}

fn server_of(api: &Api) -> String {
    api.base.trim_end_matches("/api/v1").to_owned()
}

#[test]
fn the_reference_walk_through_with_lunactl() {
    let api = Api::start(TestDatabase::sqlite().unwrap());
    let partition = api.partition("cli", 1);
    let partition_id = partition["id"].as_str().unwrap();
    let user = User::new(&server_of(&api));

    // Login keeps the tokens, not the password, in a file only the user can read.
    let login = user.login(&[]);
    assert!(login.ok, "{}", login.stderr);
    let saved = std::fs::read_to_string(user.session_path()).unwrap();
    assert!(!saved.contains(ADMIN_PASSWORD));
    assert!(user.session()["jwt"].as_str().unwrap().len() > 20);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(user.session_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // Create and wait: progress on stderr, the final record on stdout.
    let created = user.run(&[
        "keys",
        "create",
        "--partition-id",
        partition_id,
        "--mechanism",
        "CKM_AES_KEY_GEN",
        "--size",
        "256",
        "--label",
        "cli-key",
        "--attribute",
        "CKA_MODIFIABLE",
        "--attribute",
        "CKA_ENCRYPT",
        "--attribute",
        "CKA_DECRYPT",
        "--wait",
        "-o",
        "json",
    ]);
    let key = created.json();
    assert_eq!(key["status"], "AVAILABLE", "{}", created.stderr);
    assert_eq!(key["operation_status"], "created");
    assert!(
        created.stderr.contains("keycreate"),
        "progress: {}",
        created.stderr
    );
    let id = key["id"].as_str().unwrap().to_owned();

    // List with filters, as a table.
    let listed = user.run(&[
        "keys",
        "list",
        "--sort",
        "-updatedAt",
        "--label",
        "cli-key",
        "--status",
        "AVAILABLE",
        "--partition-id",
        partition_id,
    ]);
    assert!(listed.ok, "{}", listed.stderr);
    let lines: Vec<&str> = listed.stdout.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("LABEL"),
        "{}",
        listed.stdout
    );
    assert!(
        lines[1].starts_with(&id) && lines[1].contains("cli-key"),
        "{}",
        listed.stdout
    );
    assert_eq!(lines.last().unwrap(), &"1 of 1 (skip 0)");
    let none = user
        .run(&["keys", "list", "--label", "no-such-key", "-o", "json"])
        .json();
    assert_eq!(none["total"], 0);

    // Update and wait.
    let updated = user
        .run(&[
            "keys",
            "update",
            &id,
            "--set",
            "CKA_SIGN=true",
            "--wait",
            "-o",
            "json",
        ])
        .json();
    assert_eq!(updated["operation"], "keyupdate");
    assert_eq!(updated["operation_status"], "completed");
    assert!(
        updated["attributes"]
            .as_array()
            .unwrap()
            .contains(&Value::from("CKA_SIGN")),
        "{updated}"
    );

    // Refresh every partition and wait for the job.
    let job = user.run(&["refresh", "start", "--all", "--wait", "-o", "json"]);
    assert_eq!(job.json()["overall_status"], "completed", "{}", job.stderr);
    assert!(
        job.stderr.contains(partition_id),
        "per-partition progress: {}",
        job.stderr
    );
    let jobs = user
        .run(&["refresh", "list", "--overall-status", "completed", "-o", "json"])
        .json();
    assert_eq!(jobs["total"], 1);

    // Destroy on the HSM and wait; then forget the record.
    let destroyed = user.run(&["keys", "destroy", &id, "--wait", "-o", "json"]).json();
    assert_eq!(destroyed["status"], "DELETED");
    // "delete" would mean either: lunactl says which to use, and does nothing.
    let ambiguous = user.run(&["keys", "delete", &id]);
    assert!(!ambiguous.ok);
    assert!(
        ambiguous.stderr.contains("keys forget ID") && ambiguous.stderr.contains("keys destroy ID"),
        "{}",
        ambiguous.stderr
    );
    assert_eq!(
        user.run(&["keys", "get", &id, "-o", "json"]).json()["status"],
        "DELETED"
    );
    let partitions_delete = user.run(&["partitions", "delete", "anything"]);
    assert!(
        !partitions_delete.ok && partitions_delete.stderr.contains("partitions forget ID"),
        "{}",
        partitions_delete.stderr
    );
    let forgotten = user.run(&["keys", "forget", &id]);
    assert!(forgotten.ok, "{}", forgotten.stderr);

    // Errors: the server's sentence, a non-zero exit, no backtrace.
    let missing = user.run(&["keys", "get", &id]);
    assert!(!missing.ok);
    assert!(
        missing.stderr.contains(&format!("key {id} does not exist")),
        "{}",
        missing.stderr
    );
    assert!(!missing.stderr.contains("panicked") && !missing.stderr.contains("backtrace"));
    let refused = user.run(&[
        "keys",
        "create",
        "--partition-id",
        partition_id,
        "--mechanism",
        "CKM_AES_KEY_GEN",
        "--size",
        "100",
        "--label",
        "x",
    ]);
    assert!(!refused.ok);
    assert!(
        refused.stderr.contains("400") && refused.stderr.contains("size 100 is not allowed"),
        "{}",
        refused.stderr
    );
    let bad_flag = user.run(&["keys", "update", &id, "--set", "CKA_SIGN=yes"]);
    assert!(
        !bad_flag.ok && bad_flag.stderr.contains("must be true or false"),
        "{}",
        bad_flag.stderr
    );
}

#[test]
fn a_failed_operation_ends_wait_non_zero_with_its_reason() {
    let api = Api::start(TestDatabase::sqlite().unwrap());
    let partition = api.partition("cli-fail", 1);
    let user = User::new(&server_of(&api));
    assert!(user.login(&[]).ok);
    let key = user
        .run(&[
            "keys",
            "create",
            "--partition-id",
            partition["id"].as_str().unwrap(),
            "--mechanism",
            "CKM_AES_KEY_GEN",
            "--size",
            "128",
            "--label",
            "doomed",
            "--attribute",
            "CKA_MODIFIABLE",
            "--wait",
            "-o",
            "json",
        ])
        .json();
    let id = key["id"].as_str().unwrap();
    api.destroy_behind_the_back(&partition, id);

    let update = user.run(&["keys", "update", id, "--set", "CKA_ENCRYPT=true", "--wait"]);
    assert!(!update.ok, "{}", update.stdout);
    assert!(
        update.stderr.contains(&format!("keyupdate of key {id} failed: ")),
        "{}",
        update.stderr
    );
    assert!(
        update.stderr.contains("on no partition member"),
        "{}",
        update.stderr
    );
}

#[test]
fn an_expired_login_is_refreshed_and_a_revoked_one_says_to_log_in() {
    let api = Api::start(TestDatabase::sqlite().unwrap());
    let user = User::new(&server_of(&api));
    assert!(user.run(&["keys", "list"]).stderr.contains("not logged in"));
    assert!(user.login(&[]).ok);
    let first = user.session();

    // The jwt "ran out": the next command refreshes it with the refresh token.
    let mut expired = first.clone();
    expired["expires_at"] = Value::from(0);
    std::fs::write(user.session_path(), expired.to_string()).unwrap();
    let listed = user.run(&["partitions", "list", "-o", "json"]);
    assert!(listed.ok, "{}", listed.stderr);
    let refreshed = user.session();
    assert_ne!(refreshed["jwt"], first["jwt"]);
    assert_ne!(refreshed["refresh_token"], first["refresh_token"]);
    assert!(refreshed["expires_at"].as_u64().unwrap() > 0);

    // A refresh token the server does not know: the user is told to log in.
    let mut revoked = refreshed.clone();
    revoked["expires_at"] = Value::from(0);
    revoked["refresh_token"] = Value::from("not-a-refresh-token");
    std::fs::write(user.session_path(), revoked.to_string()).unwrap();
    let refused = user.run(&["partitions", "list"]);
    assert!(!refused.ok);
    assert!(
        refused.stderr.contains("run lunactl login again"),
        "{}",
        refused.stderr
    );
}

/// A luna-server on HTTPS with a self-signed certificate.
fn start_https(db: &TestDatabase, dir: &Path) -> String {
    bootstrap_admin(
        &db.store,
        luna_api::testing::TEST_INSTANCE,
        Some(&SecretString::from(ADMIN_PASSWORD)),
        &dir.join("pw"),
    )
    .unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    luna_api::tls::ensure_self_signed(&cert, &key).unwrap();
    let config = Config {
        instance: luna_api::testing::TEST_INSTANCE.into(),
        store: db.store.clone(),
        module: luna_pkcs11::testing::module().clone(),
        auth: Auth::new(&SIGNING_KEY, 300),
        tenancy: Tenancy::default(),
        runner: luna_api::testing::runner_settings(1),
        tls: Some(luna_api::tls::server_config(&cert, &key).unwrap()),
        http_workers: 1,
        request_deadline: luna_api::testing::REQUEST_DEADLINE,
        audit_sinks: Vec::new(),
        forward: Default::default(),
        audit_lag_bound: 10_000,
        token_opener: None,
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = format!("https://127.0.0.1:{}", listener.local_addr().unwrap().port());
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            start(config, listener).unwrap().run().await.unwrap();
        })
    });
    server
}

#[test]
fn https_with_ca_file_or_insecure_and_never_unchecked() {
    let db = TestDatabase::sqlite().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = start_https(&db, dir.path());
    let user = User::new(&server);
    let cert = dir.path().join("cert.pem");

    let unchecked = user.login(&[]);
    assert!(!unchecked.ok);
    assert!(unchecked.stderr.contains("cannot reach"), "{}", unchecked.stderr);

    let with_ca = user.login(&["--ca-file", cert.to_str().unwrap()]);
    assert!(with_ca.ok, "{}", with_ca.stderr);
    // The CA file is remembered with the login.
    assert_eq!(user.run(&["health", "-o", "json"]).json()["status"], "ok");
    assert_eq!(user.run(&["users", "list", "-o", "json"]).json()["total"], 1);

    let other = User::new(&server);
    assert!(other.login(&["--insecure"]).ok);
    assert_eq!(
        other.run(&["audit", "verify", "--insecure", "-o", "json"]).json()["intact"],
        true
    );
    // `--insecure` is not remembered: a command without it checks the certificate.
    assert!(
        !other.session().as_object().unwrap().contains_key("insecure"),
        "{}",
        other.session()
    );
    let checked = other.run(&["audit", "verify"]);
    assert!(
        !checked.ok && checked.stderr.contains("cannot reach"),
        "{}",
        checked.stderr
    );
}

#[test]
fn the_session_file_is_0600_even_over_a_leftover_temporary_file() {
    use std::os::unix::fs::PermissionsExt as _;
    let db = TestDatabase::sqlite().unwrap();
    let api = Api::start(db);
    let user = User::new(&server_of(&api));
    // An interrupted write left a temporary file anyone can read.
    let leftover = user.session_path().with_extension("json.tmp");
    std::fs::create_dir_all(leftover.parent().unwrap()).unwrap();
    std::fs::write(&leftover, "{}").unwrap();
    std::fs::set_permissions(&leftover, std::fs::Permissions::from_mode(0o644)).unwrap();
    let login = user.login(&[]);
    assert!(login.ok, "{}", login.stderr);
    let mode = std::fs::metadata(user.session_path())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    assert!(!leftover.exists());
}

/// `lunactl servers`: an HSM registered from its certificate file, listed,
/// found by host, read and deleted, as an operator does before connections.
#[test]
fn servers_are_added_from_a_certificate_file_listed_and_deleted() {
    let api = Api::start(TestDatabase::sqlite().unwrap());
    let user = User::new(&server_of(&api));
    assert!(user.login(&[]).ok);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    luna_api::tls::ensure_self_signed(&cert, &key).unwrap();
    let added = user.run(&[
        "servers",
        "add",
        "--hostname",
        "hsm1.example",
        "--certificate",
        cert.to_str().unwrap(),
        "--description",
        "rack 4",
        "-o",
        "json",
    ]);
    assert!(added.ok, "{}", added.stderr);
    let server = added.json();
    let id = server["id"].as_str().unwrap().to_owned();
    assert_eq!(
        server["certificate"]["sha256_fingerprint"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
    let listed = user.run(&["servers", "list", "--host", "hsm1.example"]);
    assert!(
        listed.ok && listed.stdout.contains(&id) && listed.stdout.contains("NTLS"),
        "{}",
        listed.stdout
    );
    assert!(user.run(&["servers", "get", &id]).stdout.contains("hsm1.example"));
    let not_pem = user.run(&[
        "servers",
        "add",
        "--hostname",
        "hsm2",
        "--certificate",
        key.to_str().unwrap(),
    ]);
    assert!(
        !not_pem.ok
            && not_pem
                .stderr
                .contains("hsm_certificate is not one X.509 certificate"),
        "{}",
        not_pem.stderr
    );
    let missing = user.run(&[
        "servers",
        "add",
        "--hostname",
        "hsm2",
        "--certificate",
        "/no/such.pem",
    ]);
    assert!(
        !missing.ok && missing.stderr.contains("reading the certificate /no/such.pem"),
        "{}",
        missing.stderr
    );
    let deleted = user.run(&["servers", "delete", &id]);
    assert!(
        deleted.ok && deleted.stdout.contains("deleted"),
        "{}",
        deleted.stderr
    );
    assert!(!user.run(&["servers", "get", &id]).ok);
}

/// `lunactl connections test | update | add-member | remove-member`: a
/// connection tested, its description changed, its PIN rotated after the
/// token's, and an HA member added and removed.
#[test]
fn connections_are_tested_updated_rotated_and_grown_from_the_command_line() {
    use luna_pkcs11::testing::{fresh_token_label, raw_user_session, SO_PIN, USER_PIN};
    let api = Api::start(TestDatabase::sqlite().unwrap());
    let partition = api.partition_with_domain("cli-ha", 2);
    let connection = partition["connection_id"].as_str().unwrap();
    let user = User::new(&server_of(&api));
    assert!(user.login(&[]).ok);

    let tested = user.run(&["connections", "test", connection, "-o", "json"]);
    assert!(
        tested.ok && tested.json()["connection_ok"] == true,
        "{}",
        tested.stderr
    );
    let updated = user.run(&[
        "connections",
        "update",
        connection,
        "--description",
        "rack 4",
        "-o",
        "json",
    ]);
    assert_eq!(updated.json()["description"], "rack 4", "{}", updated.stderr);

    // The PIN changes on both members' tokens, then on the connection.
    for member in partition["members"].as_array().unwrap() {
        let raw = raw_user_session(member["partition_label"].as_str().unwrap());
        raw.set_pin(
            &SecretString::from(USER_PIN),
            &SecretString::from("cli-rotated-1"),
        )
        .unwrap();
    }
    let wrong = user.run_with(
        &["connections", "update", connection, "--rotate-pin"],
        &[("LUNACTL_PIN", "nope-nope")],
    );
    assert!(
        !wrong.ok && wrong.stderr.contains("the new password was not taken"),
        "{}",
        wrong.stderr
    );
    let rotated = user.run_with(
        &["connections", "update", connection, "--rotate-pin", "-o", "json"],
        &[("LUNACTL_PIN", "cli-rotated-1")],
    );
    assert!(rotated.ok, "{}", rotated.stderr);
    assert!(user.run(&["connections", "test", connection]).ok);

    // A third member, with the new PIN, joins the cloning domain and leaves.
    let third = fresh_token_label("cli-ha-3");
    let raw = raw_user_session(&third);
    raw.set_pin(
        &SecretString::from(USER_PIN),
        &SecretString::from("cli-rotated-1"),
    )
    .unwrap();
    drop(raw);
    let serial = luna_pkcs11::testing::module()
        .describe_token(&third, None)
        .unwrap()
        .serial_number;
    let added = user.run_with(
        &[
            "connections",
            "add-member",
            connection,
            &format!("{third}:{serial}@hsm3"),
            "-o",
            "json",
        ],
        &[("LUNACTL_SO_PIN", SO_PIN)],
    );
    assert!(added.ok, "{}", added.stderr);
    assert_eq!(added.json()["partitions"].as_array().unwrap().len(), 3);
    let removed = user.run(&["connections", "remove-member", connection, &serial]);
    assert!(
        removed.ok && removed.stdout.contains("removed"),
        "{}",
        removed.stderr
    );
    let gone = user.run(&["connections", "remove-member", connection, &serial]);
    assert!(
        !gone.ok && gone.stderr.contains("no partition with serial number"),
        "{}",
        gone.stderr
    );
}

/// `lunactl users passwd` (one's own, and an administrator's reset),
/// `users add-group`/`remove-group` and `logout`: each ends the sessions it
/// should, which the next command of the user shows.
#[test]
fn passwords_groups_and_logout_from_the_command_line() {
    let api = Api::start(TestDatabase::sqlite().unwrap());
    let admin = User::new(&server_of(&api));
    assert!(admin.login(&[]).ok);
    let created = admin.run_with(
        &[
            "users",
            "create",
            "--username",
            "lee",
            "--group",
            "CCKM Users",
            "-o",
            "json",
        ],
        &[("LUNACTL_NEW_PASSWORD", "lees-first-pw")],
    );
    let id = created.json()["user_id"].as_str().unwrap().to_owned();
    let lee = User::new(&server_of(&api));
    let log_in = |password: &str| {
        let login = lee.run_with(&["login", "--username", "lee"], &[("LUNACTL_PASSWORD", password)]);
        assert!(login.ok, "{}", login.stderr);
    };
    let ended = |what: &str| {
        let refused = lee.run(&["keys", "list"]);
        assert!(!refused.ok, "{what}: lee's session still works");
        assert!(
            refused.stderr.contains("session of the bearer token has ended"),
            "{what}: {}",
            refused.stderr
        );
    };
    log_in("lees-first-pw");
    assert!(lee.run(&["keys", "list"]).ok);

    // One's own password: the current one is checked.
    let passwd = |current: &str, new: &str| {
        lee.run_with(
            &["users", "passwd"],
            &[("LUNACTL_PASSWORD", current), ("LUNACTL_NEW_PASSWORD", new)],
        )
    };
    let wrong = passwd("not-lees-pw", "lees-second-pw");
    assert!(!wrong.ok && wrong.stderr.contains("401"), "{}", wrong.stderr);
    let changed = passwd("lees-first-pw", "lees-second-pw");
    assert!(changed.ok, "{}", changed.stderr);
    assert!(
        changed.stdout.contains("run lunactl login again"),
        "{}",
        changed.stdout
    );
    ended("own password change");
    log_in("lees-second-pw");

    // An administrator's reset.
    let reset = admin.run_with(
        &["users", "passwd", "--id", &id, "-o", "json"],
        &[("LUNACTL_NEW_PASSWORD", "lees-third-pw")],
    );
    assert_eq!(reset.json()["username"], "lee");
    ended("reset");
    log_in("lees-third-pw");

    // Groups.
    let added = admin.run(&["users", "add-group", &id, "CCKM Admins", "-o", "json"]);
    assert_eq!(
        added.json()["groups"],
        serde_json::json!(["CCKM Users", "CCKM Admins"])
    );
    ended("group added");
    log_in("lees-third-pw");
    let removed = admin.run(&["users", "remove-group", &id, "CCKM Users"]);
    assert!(removed.ok, "{}", removed.stderr);
    ended("group removed");
    log_in("lees-third-pw");

    // Logging out ends the session on the server, not only here.
    let jwt = lee.session()["jwt"].as_str().unwrap().to_owned();
    let out = lee.run(&["logout"]);
    assert!(
        out.ok && out.stdout.contains("logged out"),
        "{} {}",
        out.stdout,
        out.stderr
    );
    assert!(!lee.session_path().exists());
    assert_eq!(api.call("GET", "/cckm/hsm/luna/keys", Some(&jwt), None).0, 401);
    let again = lee.run(&["logout"]);
    assert!(
        !again.ok && again.stderr.contains("not logged in"),
        "{}",
        again.stderr
    );
    assert!(
        admin.run(&["keys", "list"]).ok,
        "the administrator's session is untouched"
    );
}

/// A logout the server could not hear keeps the login, to log out again
/// (forgetting it here would leave the session open on the server for a day).
#[test]
fn a_logout_the_server_cannot_hear_keeps_the_login() {
    let api = Api::start(TestDatabase::sqlite().unwrap());
    let user = User::new(&server_of(&api));
    assert!(user.login(&[]).ok);
    let _db = api.stop();
    let refused = user.run(&["logout"]);
    assert!(!refused.ok, "{}", refused.stdout);
    assert!(refused.stderr.contains("the login is kept"), "{}", refused.stderr);
    assert!(refused.stderr.contains("cannot reach"), "{}", refused.stderr);
    assert!(user.session_path().exists());
}

/// lunactl run on a real pseudo-terminal (`script`, util-linux, gives it
/// one): each line of `typed` is typed once `script` has shown the prompt
/// before it; returns whether it succeeded and everything the terminal
/// showed.
fn at_a_terminal(user: &User, args: &str, typed: &[(&str, &str)]) -> (bool, String) {
    use std::io::{Read as _, Write as _};
    let lunactl = env!("CARGO_BIN_EXE_lunactl");
    let command = format!("{lunactl} --server {} {args}", user.server);
    let mut child = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("XDG_CONFIG_HOME", user.config.path())
        .env_remove("LUNACTL_PASSWORD")
        .env_remove("LUNACTL_NEW_PASSWORD")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("script (util-linux) is installed");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut shown = Vec::new();
    let mut byte = [0u8; 1];
    for (prompt, line) in typed {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !String::from_utf8_lossy(&shown).ends_with(prompt) {
            assert!(
                std::time::Instant::now() < deadline,
                "no prompt {prompt:?}: {:?}",
                String::from_utf8_lossy(&shown)
            );
            if stdout.read(&mut byte).unwrap() == 0 {
                break;
            }
            shown.push(byte[0]);
        }
        stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
    }
    stdout.read_to_end(&mut shown).unwrap();
    drop(stdin);
    let ok = child.wait().unwrap().success();
    (ok, String::from_utf8_lossy(&shown).into_owned())
}

/// At a terminal, a password is read without echo (on a pipe, from stdin's
/// next line, as the other tests do), and a new one is asked twice.
#[test]
fn a_password_typed_at_a_terminal_is_not_echoed() {
    let api = Api::start(TestDatabase::sqlite().unwrap());
    let user = User::new(&server_of(&api));
    let (ok, shown) = at_a_terminal(&user, "login --username admin", &[("password: ", ADMIN_PASSWORD)]);
    assert!(ok, "{shown}");
    assert!(shown.contains("logged in"), "{shown:?}");
    assert!(
        !shown.contains(ADMIN_PASSWORD),
        "the password was echoed: {shown:?}"
    );

    // A new user's password, twice; a mismatch changes nothing.
    let create = "users create --username typist --group CCKM\\ Users";
    let (ok, shown) = at_a_terminal(
        &user,
        create,
        &[
            ("the new user's password: ", "typed-password-1"),
            ("the new user's password, again: ", "typed-password-2"),
        ],
    );
    assert!(!ok && shown.contains("differ"), "{shown}");
    assert_eq!(api.get("/usermgmt/users?username=typist").1["total"], 0);
    let (ok, shown) = at_a_terminal(
        &user,
        create,
        &[
            ("the new user's password: ", "typed-password-1"),
            ("the new user's password, again: ", "typed-password-1"),
        ],
    );
    assert!(ok, "{shown}");
    assert!(!shown.contains("typed-password-1"), "echoed: {shown:?}");
    assert_eq!(api.get("/usermgmt/users?username=typist").1["total"], 1);
}

#[test]
fn audit_tail_prints_the_last_records_then_follows_new_ones_as_json_lines() {
    use std::io::BufRead as _;
    let api = Api::start(TestDatabase::sqlite().unwrap());
    let admin = User::new(&server_of(&api));
    assert!(admin.login(&[]).ok);
    let mut tail = Command::new(env!("CARGO_BIN_EXE_lunactl"))
        .args([
            "--server",
            &admin.server,
            "audit",
            "tail",
            "-n",
            "1",
            "--interval-ms",
            "100",
            "-o",
            "json",
        ])
        .env("XDG_CONFIG_HOME", admin.config.path())
        .env_remove("LUNACTL_SERVER")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(tail.stdout.take().unwrap()).lines();
    let mut next = || -> Value { serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap() };
    let last = next();
    assert_eq!(
        last["action"], "POST /api/v1/auth/tokens",
        "the newest existing record: {last}"
    );
    // More records than one page holds arrive between two looks: every one
    // is printed, once, in order.
    for n in 0..600 {
        let (status, _) = api.call("GET", "/audit/records", Some("not-a-token"), None);
        assert_eq!(status, 401, "record {n}");
    }
    let (status, user) = api.send(
        "POST",
        "/usermgmt/users",
        &serde_json::json!({"username": "tailed", "password": "a-long-password"}),
    );
    assert_eq!(status, 201, "{user}");
    let mut seq = last["seq"].as_i64().unwrap();
    loop {
        let record = next();
        assert_eq!(
            record["seq"].as_i64().unwrap(),
            seq + 1,
            "no gap, no repeat: {record}"
        );
        seq += 1;
        if record["resource_id"] == user["user_id"] {
            assert_eq!(record["action"], "POST /api/v1/usermgmt/users");
            break;
        }
    }
    tail.kill().unwrap();
    tail.wait().unwrap();
}
