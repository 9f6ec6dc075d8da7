//! The server's settings from outside: the config file beneath the
//! environment and the flags, `check-config`, and secrets read from files
//! their owner alone may read.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output};

use support::{login, Server};

fn luna_server(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_luna-server"))
        .args(args)
        .env_remove("LUNA_TOKEN_CONCURRENCY")
        .env_remove("LUNA_WORKERS")
        .env_remove("LUNA_ADMIN_PASSWORD")
        .env_remove("LUNA_CONFIG")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn private_file(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn a_config_file_sits_beneath_the_environment_and_the_flags_and_check_config_says_where_each_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("server.toml");
    let sink = dir.path().join("audit.jsonl");
    std::fs::write(
        &config,
        format!(
            "# luna-server\nworkers = 12\ntoken_concurrency = 3\n\nlisten = \"127.0.0.1:9443\"\ninsecure_http = true\naudit_forward = [\"file://{}\"]\n",
            sink.display()
        ),
    )
    .unwrap();
    let output = luna_server(
        &[
            "check-config",
            "--config",
            config.to_str().unwrap(),
            "--workers",
            "20",
        ],
        &[
            ("LUNA_TOKEN_CONCURRENCY", "5"),
            ("LUNA_ADMIN_PASSWORD", "never-shown-4242"),
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for line in [
        "workers = \"20\"  # flag",
        "token_concurrency = \"5\"  # environment (LUNA_TOKEN_CONCURRENCY)",
        "listen = \"127.0.0.1:9443\"  # config file, line 5",
        "insecure_http = \"true\"  # config file, line 6",
        "queue_total = \"100000\"  # default",
        "admin_password = \"(redacted)\"  # environment (LUNA_ADMIN_PASSWORD)",
        "tls_key = (unset)  # not set",
    ] {
        assert!(stdout.lines().any(|l| l == line), "{line:?} in:\n{stdout}");
    }
    assert!(
        stdout.contains(&format!(
            "audit_forward = \"file://{}\"  # config file, line 7",
            sink.display()
        )),
        "{stdout}"
    );
    assert!(!stdout.contains("never-shown-4242"), "{stdout}");
}

#[test]
fn a_config_file_with_an_unknown_key_or_a_wrong_type_is_refused_naming_the_key_and_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("server.toml");
    for (text, said) in [
        (
            "workers = 4\nwrkers = 3\n",
            "line 2: `wrkers` is not a setting of luna-server check-config",
        ),
        ("workers = \"many\"\n", "line 1: `workers` must be a whole number"),
        ("\nworkers = 5000\n", "line 2: `workers`:"),
        (
            "insecure_http = \"yes\"\n",
            "line 1: `insecure_http` must be true or false",
        ),
        ("listen = 8443\n", "line 1: `listen` must be a string"),
        ("workers = [\n", "is not TOML"),
    ] {
        std::fs::write(&config, text).unwrap();
        let output = luna_server(&["check-config", "--config", config.to_str().unwrap()], &[]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{text:?} was taken");
        assert!(stderr.contains(said), "{text:?}: {stderr}");
    }
}

/// A flag or variable wins over the file also where it gives a setting's
/// partner (the file's `tls_key` completes `LUNA_TLS_CERT`; `LUNA_ADMIN_PASSWORD`
/// outranks the file's `admin_password_file`); a file that holds a secret must
/// be its owner's alone, and a file that is no TOML is refused without
/// quoting its lines (one may hold a secret).
#[test]
fn the_file_completes_and_yields_to_the_environment_and_keeps_its_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        "tls_key = \"/nowhere/key.pem\"\nadmin_password_file = \"/nowhere/password\"\n",
    )
    .unwrap();
    let output = luna_server(
        &["check-config", "--config", config.to_str().unwrap()],
        &[
            ("LUNA_TLS_CERT", "/nowhere/cert.pem"),
            ("LUNA_ADMIN_PASSWORD", "from-the-environment-1"),
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The key file is checked as serve checks it: it does not exist here.
    assert!(
        stderr.contains("reading the TLS key /nowhere/key.pem"),
        "{stdout}{stderr}"
    );
    assert!(
        !stderr.contains("required") && !stderr.contains("cannot be used with"),
        "{stderr}"
    );

    private_file(&config, "admin_password = \"in-the-file-12345\"\n");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = luna_server(&["check-config", "--config", config.to_str().unwrap()], &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("the config file (it holds a secret)") && stderr.contains("mode 0644"),
        "{stderr}"
    );
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    let output = luna_server(&["check-config", "--config", config.to_str().unwrap()], &[]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!String::from_utf8_lossy(&output.stdout).contains("in-the-file-12345"));

    private_file(&config, "workers = 4\nadmin_password = \"broken-secret-9876\n");
    let output = luna_server(&["check-config", "--config", config.to_str().unwrap()], &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is not TOML: line 2"), "{stderr}");
    assert!(!stderr.contains("broken-secret-9876"), "{stderr}");
}

/// The admin password read from a file only its owner may read (no secret
/// on a command line or in an environment), named in the config file; one
/// open to others is refused, saying so, before anything is set up.
#[test]
fn the_admin_password_comes_from_a_private_file_and_an_open_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("admin-password.secret");
    std::fs::write(&secret, "from-a-file-0123\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o640)).unwrap();
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "insecure_http = true\nadmin_password_file = \"{}\"\n",
            secret.display()
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let output = luna_server(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("is open to its group or others (mode 0640)") && stderr.contains("chmod 600"),
        "{stderr}"
    );
    assert!(!data.exists(), "refused before the data directory was made");
    private_file(&secret, "from-a-file-0123\n");
    let server = Server::start(&data, &["--config", config.to_str().unwrap()]);
    assert!(
        server.base.starts_with("http://"),
        "insecure_http from the file: {}",
        server.base
    );
    assert_eq!(
        server.admin_password_shown(),
        None,
        "nothing generated, nothing shown"
    );
    login(&server.base, "from-a-file-0123");
    server.stop();
}
