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

mod flows;
mod keystores;
mod pages;
mod schedules;
