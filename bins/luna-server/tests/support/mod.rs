//! Runs the real `luna-server` binary and talks to it over HTTP.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT/api/v1` (or https)
    pub base: String,
    /// What the server printed before it started listening.
    pub banner: Vec<String>,
}

/// How a test (or the chaos run) starts `luna-server serve`: the one way
/// every one does. This build's binary unless told another, a data
/// directory, flags, environment variables (none of the caller's `LUNA_*`
/// settings or `SOFTHSM2_CONF` leak in), and the log's level and where it goes
/// (`warn`, to the test's stderr, unless told).
pub struct Launch {
    binary: PathBuf,
    data: PathBuf,
    args: Vec<String>,
    env: Vec<(String, PathBuf)>,
    level: String,
    log: Stdio,
}

impl Launch {
    pub fn args(mut self, args: &[&str]) -> Launch {
        self.args.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    pub fn env(mut self, env: &[(&str, &Path)]) -> Launch {
        self.env
            .extend(env.iter().map(|(k, v)| ((*k).to_owned(), v.to_path_buf())));
        self
    }

    pub fn log(mut self, level: &str, to: Stdio) -> Launch {
        self.level = level.to_owned();
        self.log = to;
        self
    }

    /// Another build's binary (a benchmark's baseline, chaos's release build).
    pub fn binary(mut self, binary: &Path) -> Launch {
        self.binary = binary.to_path_buf();
        self
    }

    /// Starts the server and waits (up to a minute) until it listens.
    pub fn start(self) -> Server {
        let mut child = Command::new(&self.binary)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&self.data)
            .args(&self.args)
            .env_remove("LUNA_DATABASE_URL")
            .env_remove("LUNA_PKCS11_MODULE")
            .env_remove("LUNA_ADMIN_PASSWORD")
            .env_remove("LUNA_ADMIN_PASSWORD_FILE")
            .env_remove("LUNA_DATABASE_PASSWORD_FILE")
            .env_remove("LUNA_CONFIG")
            .env_remove("SOFTHSM2_CONF")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_path())))
            .env("LUNA_LOG", &self.level)
            .stdout(Stdio::piped())
            .stderr(self.log)
            .spawn()
            .expect("start luna-server");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut banner = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) else {
                let _ = child.kill();
                let _ = child.wait();
                panic!("luna-server did not start: {banner:?}");
            };
            if let Some(url) = line.strip_prefix("listening on ") {
                return Server {
                    child,
                    base: format!("{url}/api/v1"),
                    banner,
                };
            }
            banner.push(line);
        }
    }
}

impl Server {
    /// A start of `luna-server serve --data-dir DATA`, to be told more.
    pub fn launch(data: &Path) -> Launch {
        Launch {
            // Set for tests and benchmarks; an example (chaos) names its binary.
            binary: PathBuf::from(option_env!("CARGO_BIN_EXE_luna-server").unwrap_or("luna-server")),
            data: data.to_path_buf(),
            args: Vec::new(),
            env: Vec::new(),
            level: "warn".to_owned(),
            log: Stdio::inherit(),
        }
    }

    /// `luna-server serve --data-dir DATA ARGS…`, listening.
    pub fn start(data: &Path, args: &[&str]) -> Server {
        Server::launch(data).args(args).start()
    }

    /// The server's process id.
    /// The port it listens on.
    pub fn port(&self) -> String {
        let after_host = self.base.rsplit(':').next().unwrap_or_default();
        after_host.split('/').next().unwrap_or_default().to_owned()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The admin password generated at this start: not shown (the output
    /// is no terminal), but the banner says which file keeps it.
    pub fn admin_password_shown(&self) -> Option<String> {
        let kept = self
            .banner
            .iter()
            .find_map(|l| l.strip_prefix("admin password: generated, kept in "))?;
        let path = kept.strip_suffix(" (0600)").unwrap_or(kept);
        Some(std::fs::read_to_string(path).unwrap().trim_end().to_owned())
    }

    pub fn partition_id(&self, kind: &str) -> String {
        self.banner
            .iter()
            .find(|l| l.contains(&format!(" {kind}: ")))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("no {kind} partition in {:?}", self.banner))
            .to_owned()
    }

    /// SIGTERM, then waits: a graceful stop must exit 0.
    pub fn stop(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "graceful stop exited with {exit}");
    }

    /// SIGKILL: the crash the operation queue must survive.
    pub fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn call(method: &str, url: &str, token: Option<&str>, body: Option<&Value>) -> (u16, Value) {
    let mut request = ureq::request(method, url);
    if let Some(t) = token {
        request = request.set("Authorization", &format!("Bearer {t}"));
    }
    let response = match body {
        Some(b) => request.send_json(b.clone()),
        None => request.call(),
    };
    let response = match response {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let status = response.status();
    let text = response.into_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

pub fn login(base: &str, password: &str) -> String {
    let (status, body) = call(
        "POST",
        &format!("{base}/auth/tokens"),
        None,
        Some(&json!({"grant_type": "password", "username": "admin", "password": password})),
    );
    assert_eq!(status, 200, "{body}");
    body["jwt"].as_str().unwrap().to_owned()
}

pub fn data_dir(root: &Path) -> PathBuf {
    root.join("data")
}

/// Runs an operator's tool and answers its output; a failure shows both streams.
pub fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .expect("the tool is installed (softhsm2, opensc)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{command:?}: {text} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    text
}

/// `pkcs11-tool --list-objects` on one token, logged in with `pin`: an
/// independent look at what the service did to it.
pub fn pkcs11_objects(module: &Path, label: &str, pin: &str, env: &[(&str, &Path)]) -> String {
    run(Command::new("pkcs11-tool")
        .arg("--module")
        .arg(module)
        .args(["--token-label", label, "--login", "--pin", pin, "--list-objects"])
        .envs(env.iter().copied()))
}

/// Polls a key until its operation is no longer in progress.
pub fn settled(base: &str, token: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, key) = call(
            "GET",
            &format!("{base}/cckm/hsm/luna/keys/{id}"),
            Some(token),
            None,
        );
        assert_eq!(status, 200, "{key}");
        if key["status"] != "in_progress" && key["operation_status"] != "in_progress" {
            return key;
        }
        assert!(Instant::now() < deadline, "key {id} still in progress: {key}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An operator's own SoftHSM2 (configuration and token directory under
/// `home`) with `labels` made by `softhsm2-util`; answers `SOFTHSM2_CONF`.
pub fn softhsm2_operator_tokens(home: &Path, labels: &[&str], so_pin: &str, pin: &str) -> PathBuf {
    let conf = luna_pkcs11::softhsm::write_config(home).unwrap();
    for label in labels {
        run(Command::new("softhsm2-util")
            .args([
                "--init-token",
                "--free",
                "--label",
                label,
                "--so-pin",
                so_pin,
                "--pin",
                pin,
            ])
            .env("SOFTHSM2_CONF", &conf));
    }
    conf
}
