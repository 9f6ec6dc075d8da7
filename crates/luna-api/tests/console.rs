//! The web console in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`, driven over the W3C WebDriver protocol) against an
//! in-process server on real SoftHSM2 tokens: log in, create AES and RSA keys
//! and watch them turn AVAILABLE, PATCH, a label that is markup, delete from
//! HSM, a refresh job, a read-only user, an expired session.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use luna_api::testing::{Api, ADMIN_PASSWORD};
use luna_store::testing::TestDatabase;
use serde_json::{json, Value};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
const WAIT: Duration = Duration::from_secs(20);

/// One Chromium under one chromedriver; both go when it drops.
struct Browser {
    driver: Child,
    url: String,
}

impl Browser {
    fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian package chromium-driver; scripts/bootstrap installs it)");
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + WAIT;
        while ureq::get(&format!("{base}/status")).call().is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,800"]
            }
        }}});
        let answer: Value = ureq::post(&format!("{base}/session"))
            .send_json(capabilities)
            .unwrap()
            .into_json()
            .unwrap();
        let session = answer["value"]["sessionId"]
            .as_str()
            .expect("a WebDriver session")
            .to_owned();
        Browser {
            driver,
            url: format!("{base}/session/{session}"),
        }
    }

    fn command(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Value> {
        let request = ureq::request(method, &format!("{}{path}", self.url));
        let answer = match body {
            Some(body) => request.send_json(body),
            None => request.call(),
        };
        match answer {
            Ok(r) => Ok(r.into_json::<Value>().unwrap()["value"].clone()),
            Err(ureq::Error::Status(_, r)) => Err(r.into_json::<Value>().unwrap()["value"].clone()),
            Err(e) => panic!("WebDriver: {e}"),
        }
    }

    fn goto(&self, url: &str) {
        self.command("POST", "/url", Some(json!({"url": url}))).unwrap();
    }

    fn script(&self, script: &str) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .unwrap()
    }

    /// The first element matching `css`, waiting for it to appear.
    fn find(&self, css: &str) -> String {
        self.wait(css, |_| true)
    }

    /// Waits until an element matching `css` has text that `ready` accepts.
    fn wait(&self, css: &str, ready: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(found) = self.command(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            ) {
                let id = found[ELEMENT].as_str().unwrap().to_owned();
                if let Ok(text) = self.command("GET", &format!("/element/{id}/text"), None) {
                    if ready(text.as_str().unwrap_or_default()) {
                        return id;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no {css} as expected; the page says: {}",
                self.page_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn count(&self, css: &str) -> usize {
        self.command(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        )
        .unwrap()
        .as_array()
        .unwrap()
        .len()
    }

    fn text(&self, id: &str) -> String {
        self.command("GET", &format!("/element/{id}/text"), None)
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn property(&self, id: &str, name: &str) -> Value {
        self.command("GET", &format!("/element/{id}/property/{name}"), None)
            .unwrap()
    }

    /// Clicks the element matching `css`; a page that polls may replace it
    /// between the find and the click, so a stale element is found again.
    fn click(&self, css: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let id = self.find(css);
            match self.command("POST", &format!("/element/{id}/click"), Some(json!({}))) {
                Ok(_) => return,
                Err(error) => assert!(Instant::now() < deadline, "clicking {css}: {error}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css);
        self.command("POST", &format!("/element/{id}/clear"), Some(json!({})))
            .unwrap();
        self.command(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({"text": text})),
        )
        .unwrap();
    }

    fn page_text(&self) -> String {
        self.script("return document.body.innerText;")
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    fn alert(&self) -> Option<String> {
        self.command("GET", "/alert/text", None)
            .ok()
            .map(|v| v.to_string())
    }

    fn screenshot(&self, name: &str) {
        use base64::Engine as _;
        let png = self.command("GET", "/screenshot", None).unwrap();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/console-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        std::fs::write(dir.join(format!("{name}.png")), bytes).unwrap();
    }

    fn log_in(&self, root: &str, username: &str, password: &str) {
        self.goto(&format!("{root}/"));
        self.type_into("#login input[name=username]", username);
        self.type_into("#login input[name=password]", password);
        self.click("#login button[type=submit]");
        self.find("#keys");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = ureq::delete(&self.url).call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

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
    // Remove it from the service, confirmed by typing that label.
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
