//! The reference walk-through with lunactl, --wait, logins that expire or are revoked, HTTPS trust, the session file, HSM servers.

use super::*;

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
