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
        tls: Some(
            luna_api::tls::ServerCert::load(&cert, &key)
                .unwrap()
                .server_config(None)
                .unwrap(),
        ),
        xks_client_subject: None,
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
        // rpassword writes the prompt, then turns the terminal's echo off: a
        // reply typed within that instant is echoed by the terminal itself.
        // A person answers a prompt after reading it; so does the test (a
        // loaded machine once showed the reply of one typed at once).
        std::thread::sleep(std::time::Duration::from_millis(300));
        stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
    }
    stdout.read_to_end(&mut shown).unwrap();
    drop(stdin);
    let ok = child.wait().unwrap().success();
    (ok, String::from_utf8_lossy(&shown).into_owned())
}

mod accounts_and_connections;
mod keys_and_logins;
mod keystores;
mod schedules;
