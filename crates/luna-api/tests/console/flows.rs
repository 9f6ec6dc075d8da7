//! The reference flow and a job cancelled, in a real browser.

use super::*;

#[test]
fn the_console_walks_the_reference_flow_in_a_real_browser() {
    let api = Api::start(TestDatabase::sqlite().unwrap());
    let root = api.base.trim_end_matches("/api/v1").to_owned();
    let partition = api.partition("console", 1);
    let pid = partition["id"].as_str().unwrap().to_owned();

    // What the server sends with the console: a policy with no inline script.
    let page = ureq::get(&format!("{root}/ui/")).call().unwrap();
    let policy = page.header("Content-Security-Policy").unwrap().to_owned();
    assert!(
        policy.contains("script-src 'self'")
            && policy.contains("frame-ancestors 'none'")
            && !policy.contains("unsafe-inline"),
        "{policy}"
    );
    assert!(
        !page.into_string().unwrap().contains("<script>"),
        "no inline script"
    );
    let health = ureq::get(&format!("{}/healthz", api.base)).call().unwrap();
    assert_eq!(
        health.header("X-Content-Type-Options"),
        Some("nosniff"),
        "on API answers too"
    );

    let browser = Browser::start();
    // `/` sends the browser to the console; a wrong password is the server's sentence.
    browser.goto(&format!("{root}/"));
    browser.type_into("#login input[name=username]", "admin");
    browser.type_into("#login input[name=password]", "not-the-password");
    browser.click("#login button[type=submit]");
    browser.wait("#login .error", |t| !t.is_empty());
    browser.screenshot("login");
    browser.log_in(&root, "admin", ADMIN_PASSWORD);

    // Create an AES key in the dialog; its page shows it turn AVAILABLE.
    browser.click("#create-key");
    browser.type_into("dialog input[name=label]", "console-aes");
    browser.click(&format!("dialog select[name=partition] option[value='{pid}']"));
    browser.click("dialog select[name=size] option[value='256']");
    for attribute in ["CKA_MODIFIABLE", "CKA_ENCRYPT"] {
        browser.click(&format!("dialog input[name={attribute}]"));
    }
    browser.click("dialog button[type=submit]");
    browser.wait("dd[data-field=status]", |t| t == "AVAILABLE");
    assert_eq!(browser.text(&browser.find("dd[data-field=size]")), "256");
    browser.screenshot("key");

    // PATCH from the page: CKA_DECRYPT on; CKA_MODIFIABLE cannot change and says why.
    let modifiable = browser.find("input[name=CKA_MODIFIABLE]");
    assert_eq!(browser.property(&modifiable, "disabled"), true);
    browser.click("input[name=CKA_DECRYPT]");
    browser.wait("dd[data-field=operation]", |t| t == "keyupdate");
    browser.wait("dd[data-field=operation_status]", |t| t == "completed");
    let aes_url = browser
        .command("GET", "/url", None)
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    let aes_id = aes_url.rsplit('/').next().unwrap().to_owned();
    let (_, aes) = api.get(&format!("/cckm/hsm/luna/keys/{aes_id}"));
    assert!(
        aes["attributes"]
            .as_array()
            .unwrap()
            .contains(&json!("CKA_DECRYPT")),
        "{aes}"
    );

    // An RSA pair: the size list follows the mechanism.
    browser.goto(&format!("{root}/ui/#/keys"));
    browser.click("#create-key");
    browser.type_into("dialog input[name=label]", "console-rsa");
    browser.click("dialog select[name=mechanism] option[value=CKM_RSA_PKCS_KEY_PAIR_GEN]");
    assert_eq!(browser.count("dialog select[name=size] option"), 3);
    browser.click("dialog select[name=size] option[value='2048']");
    browser.click("dialog button[type=submit]");
    browser.wait("dd[data-field=status]", |t| t == "AVAILABLE");

    // A label that is markup shows as those characters, and runs nothing.
    let markup = "<img src=x onerror=alert(1)>";
    let (status, made) = api.send(
        "POST",
        "/cckm/hsm/luna/keys",
        &json!({"label": markup, "size": 128, "partition_id": pid, "mechanism": "CKM_AES_KEY_GEN"}),
    );
    assert_eq!(status, 201, "{made}");
    api.settled(made["id"].as_str().unwrap());
    browser.goto(&format!(
        "{root}/ui/#/keys?label={}",
        "%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E"
    ));
    browser.wait("#keys a.key-label", |t| t == markup);
    assert_eq!(
        browser.count("#keys img"),
        0,
        "no element was made from the label"
    );
    assert_eq!(browser.alert(), None);
    // Forget it in the service, confirmed by typing that label.
    browser.goto(&format!("{root}/ui/#/key/{}", made["id"].as_str().unwrap()));
    browser.click("#forget");
    browser.type_into("dialog input[name=confirm]", markup);
    browser.click("dialog button[type=submit]");
    browser.find("#keys");
    assert_eq!(browser.count("dialog"), 0, "the dialog closed");
    assert_eq!(
        api.get(&format!("/cckm/hsm/luna/keys/{}", made["id"].as_str().unwrap()))
            .0,
        404
    );
    browser.goto(&format!("{root}/ui/#/keys"));
    browser.wait("#keys tbody", |t| t.contains("console-rsa"));
    browser.screenshot("keys");

    // Delete from HSM, confirmed by typing the label: DELETED.
    browser.goto(&aes_url);
    browser.click("#destroy");
    browser.type_into("dialog input[name=confirm]", "console-aes");
    browser.click("dialog button[type=submit]");
    browser.wait("dd[data-field=status]", |t| t == "DELETED");

    // A refresh job from the jobs page, followed to its end.
    browser.goto(&format!("{root}/ui/#/jobs"));
    browser.click("#start-refresh");
    browser.wait("#jobs tbody", |t| {
        t.contains("refresh") && t.contains("completed")
    });
    browser.screenshot("jobs");

    // Replicate on an HA partition.
    let ha = api.partition("console-ha", 2);
    let (_, pair) = api.send("POST", "/cckm/hsm/luna/keys", &json!({"label": "console-ha-key", "size": 256, "partition_id": ha["id"], "mechanism": "CKM_AES_KEY_GEN", "attributes": ["CKA_EXTRACTABLE"]}));
    let ha_key = pair["id"].as_str().unwrap().to_owned();
    api.settled(&ha_key);
    browser.goto(&format!("{root}/ui/#/key/{ha_key}"));
    browser.wait("#replication tbody", |t| t.matches("available").count() == 2);
    browser.click("#replicate");
    browser.wait("dd[data-field=operation]", |t| t == "keyreplicate");
    browser.wait("dd[data-field=operation_status]", |t| t == "completed");

    // Register a connection: its PIN is sent, never shown again; then add it as a partition.
    let label = luna_pkcs11::testing::fresh_token_label("console-new");
    browser.goto(&format!("{root}/ui/#/connections"));
    browser.type_into("#register input[name=name]", "console-connection");
    browser.type_into("#register input[name=members]", &label);
    browser.type_into("#register input[name=password]", luna_pkcs11::testing::USER_PIN);
    browser.click("#register button[type=submit]");
    browser.wait("#connections tbody", |t| t.contains("console-connection"));
    assert!(!browser.page_text().contains(luna_pkcs11::testing::USER_PIN));
    let pin_field = browser.find("#register input[name=password]");
    assert_eq!(browser.property(&pin_field, "value"), "");

    // Test it, then rotate its PIN after the token's changed: the new PIN
    // leaves the page with the request and is not shown.
    let row = "#connections tr[data-name=console-connection]";
    browser.click(&format!("{row} button.test-connection"));
    browser.wait(&format!("{row} td.last-test"), |t| t.contains("ok"));
    let raw = luna_pkcs11::testing::raw_user_session(&label);
    raw.set_pin(
        &secrecy::SecretString::from(luna_pkcs11::testing::USER_PIN),
        &secrecy::SecretString::from("console-rotated-7"),
    )
    .unwrap();
    drop(raw);
    browser.type_into(
        &format!("{row} form.rotate-pin input[name=pin]"),
        "console-rotated-7",
    );
    let (_, before) = api.get("/connectionmgmt/services/luna-network/connections?name=console-connection");
    browser.click(&format!("{row} form.rotate-pin button"));
    let rotated = || {
        api.get("/connectionmgmt/services/luna-network/connections?name=console-connection")
            .1
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while rotated()["resources"][0]["last_connection_at"] == before["resources"][0]["last_connection_at"] {
        assert!(Instant::now() < deadline, "the rotation was not kept");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(rotated()["resources"][0]["last_connection_ok"], true);
    assert!(!browser.page_text().contains("console-rotated-7"));
    browser.click(&format!("{row} button.add-partition"));
    browser.wait("#partitions tbody", |t| t.contains(&label));
    browser.screenshot("partitions");

    // An HSM server registered from its certificate, shown by what the
    // certificate says, and deleted.
    let mut params = rcgen::CertificateParams::new(vec!["hsm9.example".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "hsm9.example");
    let pem = params
        .self_signed(&rcgen::KeyPair::generate().unwrap())
        .unwrap()
        .pem();
    browser.goto(&format!("{root}/ui/#/servers"));
    browser.type_into("#new-server input[name=hostname]", "hsm9.example");
    browser.script(&format!(
        "document.querySelector('#new-server textarea[name=certificate]').value = {};",
        serde_json::to_string(&pem).unwrap()
    ));
    browser.click("#new-server button[type=submit]");
    browser.wait("#servers tbody", |t| t.contains("CN=hsm9.example"));
    browser.screenshot("servers");
    browser.click("#servers tr[data-hostname='hsm9.example'] button.delete-server");
    browser.wait("#servers tbody", |t| !t.contains("hsm9.example"));

    // A CCKM Users member sees a read-only console: no button that would earn a 403.
    // The admin adds them (and adds and deletes another) from the users page.
    browser.goto(&format!("{root}/ui/#/users"));
    for name in ["viewer", "passing"] {
        browser.type_into("#new-user input[name=username]", name);
        browser.type_into("#new-user input[name=password]", "viewer-password-1");
        browser.click("#new-user input[name='group-CCKM Users']");
        browser.click("#new-user button[type=submit]");
        browser.wait("#users tbody", |t| t.contains(name));
    }
    assert!(!browser.page_text().contains("viewer-password-1"));
    browser.click("#users tr[data-name=passing] button.delete-user");
    browser.wait("#users tbody", |t| !t.contains("passing"));
    let (_, users) = api.get("/usermgmt/users?username=viewer");
    assert_eq!(users["resources"][0]["groups"], json!(["CCKM Users"]), "{users}");
    // Logged out once the server has ended the session: going to another
    // page before that cut the logout short, and the admin stayed logged in.
    browser.click("#log-out");
    browser.find("#login");
    browser.log_in(&root, "viewer", "viewer-password-1");
    assert_eq!(browser.count("#create-key"), 0);
    browser.click("#keys a.key-label");
    browser.find("dd[data-field=status]");
    assert_eq!(browser.count("#destroy") + browser.count("#forget"), 0);
    let toggle = browser.find("input[name=CKA_SIGN]");
    assert_eq!(browser.property(&toggle, "disabled"), true);
    assert_eq!(browser.count("nav a[href='#/users']"), 0, "no admin pages");

    // An expired session sends the user back to the login page with a sentence.
    browser.script("const s = JSON.parse(sessionStorage.getItem('luna-cckm-session')); s.jwt = 'expired.token.here'; sessionStorage.setItem('luna-cckm-session', JSON.stringify(s));");
    browser.goto(&format!("{root}/ui/#/keys?again=1"));
    browser.script("location.reload();");
    browser.find("#login");
    browser.wait("#notice", |t| t.contains("expired"));
}

#[test]
fn a_job_is_cancelled_from_the_console() {
    // No workers: the job stays in progress until it is cancelled.
    let api = Api::start_with(TestDatabase::sqlite().unwrap(), 0);
    let root = api.base.trim_end_matches("/api/v1").to_owned();
    api.partition("console-cancel", 1);
    let browser = Browser::start();
    browser.log_in(&root, "admin", ADMIN_PASSWORD);
    browser.goto(&format!("{root}/ui/#/jobs"));
    browser.find("#job-partitions input[type=checkbox]");
    browser.click("#start-refresh");
    browser.click("#jobs button.cancel-job");
    browser.wait("#jobs tbody", |t| t.contains("cancel asked"));
    let (_, jobs) = api.get("/cckm/hsm/luna/refresh");
    assert_eq!(jobs["resources"][0]["abort"], true, "{jobs}");
}
