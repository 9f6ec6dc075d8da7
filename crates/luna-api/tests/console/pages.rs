//! The partitions page through a token outage and a full queue, HA members, passwords and logout, and the audit page's filters.

use super::*;

#[test]
fn the_partitions_page_follows_a_token_that_goes_away_and_comes_back() {
    let api = Api::start(TestDatabase::sqlite().unwrap());
    let root = api.base.trim_end_matches("/api/v1").to_owned();
    let partition = api.partition("console-away", 1);
    let label = partition["partition_label"].as_str().unwrap().to_owned();
    let (_, created) = api.send(
        "POST",
        "/cckm/hsm/luna/keys",
        &json!({"label": "opens-the-token", "size": 256, "partition_id": partition["id"], "mechanism": "CKM_AES_KEY_GEN"}),
    );
    assert_eq!(
        api.settled(created["id"].as_str().unwrap())["status"],
        "AVAILABLE"
    );
    let browser = Browser::start();
    browser.log_in(&root, "admin", ADMIN_PASSWORD);
    browser.goto(&format!("{root}/ui/#/partitions"));
    browser.wait("#partitions tbody", |t| {
        t.contains(&label) && t.contains("reachable")
    });

    let away = luna_pkcs11::testing::TakenAway::take(&label);
    let deadline = Instant::now() + WAIT;
    while api.get("/healthz").1["status"] != "degraded" {
        assert!(Instant::now() < deadline, "the outage was never noticed");
        std::thread::sleep(Duration::from_millis(100));
    }
    browser.goto(&format!("{root}/ui/#/keys"));
    browser.find("#keys");
    browser.goto(&format!("{root}/ui/#/partitions"));
    browser.wait("#partitions tbody", |t| {
        t.contains("unreachable") && t.contains("since ")
    });
    browser.screenshot("partitions-token-away");
    // The page follows the token while it is away: back, it says so by itself.
    away.put_back();
    browser.wait("#partitions tbody", |t| {
        !t.contains("unreachable") && t.contains("back after 1 outage")
    });
}

/// An HA connection's members from the console: one added with the SO PIN
/// (its cloning domain set up again), then removed.
#[test]
fn ha_members_are_added_and_removed_from_the_console() {
    let api = Api::start(TestDatabase::sqlite().unwrap());
    let root = api.base.trim_end_matches("/api/v1").to_owned();
    let partition = api.partition_with_domain("console-ha", 2);
    let connection = api.get(&format!(
        "/connectionmgmt/services/luna-network/connections/{}",
        partition["connection_id"].as_str().unwrap()
    ));
    let name = connection.1["name"].as_str().unwrap().to_owned();
    let third = luna_pkcs11::testing::fresh_token_label("console-ha-3");
    let browser = Browser::start();
    browser.log_in(&root, "admin", ADMIN_PASSWORD);
    browser.goto(&format!("{root}/ui/#/connections"));
    let row = format!("#connections tr[data-name='{name}']");
    browser.type_into(&format!("{row} form.add-member input[name=label]"), &third);
    browser.type_into(
        &format!("{row} form.add-member input[name=so_pin]"),
        luna_pkcs11::testing::SO_PIN,
    );
    browser.click(&format!("{row} form.add-member button"));
    browser.wait(&format!("{row} td.members"), |t| t.contains(&third));
    assert!(!browser.page_text().contains(luna_pkcs11::testing::SO_PIN));
    let members = || {
        api.get(&format!(
            "/cckm/hsm/luna/partitions/{}",
            partition["id"].as_str().unwrap()
        ))
        .1["members"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(members(), 3);
    browser.screenshot("connections");
    browser.click(&format!("{row} div.member:last-of-type button.remove-member"));
    browser.wait(&format!("{row} td.members"), |t| !t.contains(&third));
    assert_eq!(members(), 2);
}

/// An administrator resets a user's password from the users page; the user
/// changes their own from the Password page (their other sessions end, this
/// one carries on); Log out ends the session on the server, not only in the
/// browser.
#[test]
fn passwords_are_changed_and_log_out_ends_the_session_on_the_server() {
    let api = Api::start(TestDatabase::sqlite().unwrap());
    let root = api.base.trim_end_matches("/api/v1").to_owned();
    let (status, _) = api.send(
        "POST",
        "/usermgmt/users",
        &json!({"username": "robin", "password": "robins-first-pw", "groups": ["CCKM Users"]}),
    );
    assert_eq!(status, 201);
    let login = |password: &str| {
        api.call(
            "POST",
            "/auth/tokens",
            None,
            Some(&json!({"username": "robin", "password": password}).to_string()),
        )
    };
    let browser = Browser::start();
    browser.log_in(&root, "admin", ADMIN_PASSWORD);
    browser.goto(&format!("{root}/ui/#/users"));
    let row = "#users tr[data-name=robin]";
    browser.type_into(
        &format!("{row} form.reset-password input[name=password]"),
        "robins-reset-pw",
    );
    browser.click(&format!("{row} form.reset-password button"));
    browser.wait("#main", |t| t.contains("The password of robin is reset"));
    assert!(!browser.page_text().contains("robins-reset-pw"));
    assert_eq!(login("robins-first-pw").0, 401);
    let (status, elsewhere) = login("robins-reset-pw");
    assert_eq!(status, 200, "{elsewhere}");
    let elsewhere = elsewhere["jwt"].as_str().unwrap().to_owned();
    browser.click("#log-out");
    browser.find("#login");

    // Robin changes their own password.
    browser.log_in(&root, "robin", "robins-reset-pw");
    browser.click("#my-password");
    browser.type_into("#change-password input[name=password]", "robins-reset-pw");
    browser.type_into("#change-password input[name=new_password]", "robins-own-pw-1");
    browser.type_into("#change-password input[name=again]", "robins-own-pw-2");
    browser.click("#change-password button[type=submit]");
    browser.wait("#main", |t| t.contains("differ"));
    browser.type_into("#change-password input[name=password]", "robins-reset-pw");
    browser.type_into("#change-password input[name=new_password]", "robins-own-pw-1");
    browser.type_into("#change-password input[name=again]", "robins-own-pw-1");
    browser.click("#change-password button[type=submit]");
    browser.wait("#notice", |t| t.contains("Your password is changed"));
    browser.find("#keys");
    assert_eq!(
        api.call("GET", "/cckm/hsm/luna/keys", Some(&elsewhere), None).0,
        401,
        "robin's other session has ended"
    );
    assert_eq!(login("robins-own-pw-1").0, 200);
    browser.screenshot("password");

    // Log out: the token the browser held is refused by the server.
    let held = browser.script("return JSON.parse(sessionStorage.getItem('luna-cckm-session')).jwt;");
    let held = held.as_str().unwrap().to_owned();
    assert_eq!(api.call("GET", "/cckm/hsm/luna/keys", Some(&held), None).0, 200);
    browser.click("#log-out");
    browser.wait("#notice", |t| t.contains("logged out"));
    browser.find("#login");
    assert_eq!(api.call("GET", "/cckm/hsm/luna/keys", Some(&held), None).0, 401);
}

/// The partitions page shows the work waiting for each partition's tokens,
/// and a queue at its bound as full (its creates refused until it drains).
#[test]
fn the_partitions_page_shows_the_work_waiting_and_a_full_queue() {
    // No workers: what is accepted waits.
    let api = Api::start_with_settings(
        TestDatabase::sqlite().unwrap(),
        luna_runner::RunnerSettings {
            queue_per_partition: 2,
            ..luna_api::testing::runner_settings(0)
        },
    );
    let root = api.base.trim_end_matches("/api/v1").to_owned();
    let partition = api.partition("console-queue", 1);
    for _ in 0..2 {
        let (status, created) = api.send(
            "POST",
            "/cckm/hsm/luna/keys",
            &json!({"label": "waiting", "size": 256, "partition_id": partition["id"], "mechanism": "CKM_AES_KEY_GEN"}),
        );
        assert_eq!(status, 201, "{created}");
    }
    let browser = Browser::start();
    browser.log_in(&root, "admin", ADMIN_PASSWORD);
    browser.goto(&format!("{root}/ui/#/partitions"));
    browser.wait("#partitions tbody", |t| {
        t.contains("2 of 2 · leaving at 0/s") && t.contains("full: creates refused")
    });
}

#[test]
fn the_audit_page_filters_by_user_action_resource_and_time() {
    let api = Api::start(TestDatabase::sqlite().unwrap());
    let root = api.base.trim_end_matches("/api/v1").to_owned();
    let (status, user) = api.send(
        "POST",
        "/usermgmt/users",
        &json!({"username": "audited-user", "password": "a-long-password", "groups": ["CCKM Users"]}),
    );
    assert_eq!(status, 201, "{user}");
    let user_id = user["user_id"].as_str().unwrap().to_owned();
    let browser = Browser::start();
    browser.log_in(&root, "admin", ADMIN_PASSWORD);
    browser.goto(&format!("{root}/ui/#/audit"));
    browser.wait("#audit-state", |t| t.contains("intact"));
    // Newest first: the console's own login is the newest record.
    browser.wait("#audit tbody tr:first-child", |t| {
        t.contains("POST /api/v1/auth/tokens")
    });
    browser.type_into("#audit-filters input[name=resource_id]", &user_id);
    browser.type_into("#audit-filters input[name=username]", "admin");
    browser.click("#audit-filters button[type=submit]");
    browser.wait("#audit-count", |t| t.starts_with("1 records"));
    let row = browser.find("#audit tbody tr");
    let text = browser.text(&row);
    assert!(
        text.contains("POST /api/v1/usermgmt/users") && text.contains("201"),
        "{text}"
    );
    assert!(
        text.contains(&format!("user {user_id}")) && text.contains("test-instance"),
        "{text}"
    );
    // A window that ended before anything happened shows nothing.
    browser.goto(&format!("{root}/ui/#/audit?until=2000-01-01T00:00:00.000Z"));
    browser.wait("#audit-count", |t| t.starts_with("0 records"));
    assert_eq!(browser.count("#audit tbody tr"), 0);
}
