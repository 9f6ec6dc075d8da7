//! Connections, passwords, groups and logout from the command line, a password at a terminal, and audit tail.

use super::*;

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
