//! `luna-server serve` on a fresh data directory sets up the embedded default
//! and serves it; a second start finds it in place.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Command;

use support::{call, login, Server};

#[test]
fn a_fresh_data_dir_gets_demo_partitions_once_and_serves_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = Server::start(&data, &["--insecure-http"]);
    let password = first
        .admin_password_shown()
        .expect("a generated admin password is kept");
    assert!(
        !first.banner.iter().any(|line| line.contains(&password)),
        "a secret in output that is no terminal (a journal keeps it): {:?}",
        first.banner
    );
    assert_eq!(
        std::fs::read_to_string(data.join("admin-password"))
            .unwrap()
            .trim(),
        password
    );
    let ha = first.partition_id("HA");
    let single = first.partition_id("single");
    assert!(first
        .banner
        .iter()
        .any(|l| l.contains("HA: demo-ha-1 (serial ") && l.contains("demo-ha-2 (serial ")));
    assert_eq!(call("GET", &format!("{}/healthz", first.base), None, None).0, 200);
    let token = login(&first.base, &password);
    let (status, partitions) = call(
        "GET",
        &format!("{}/cckm/hsm/luna/partitions", first.base),
        Some(&token),
        None,
    );
    assert_eq!((status, partitions["total"].as_u64()), (200, Some(2)));

    // The HA members share a cloning domain: a non-extractable key reaches both.
    let (status, created) = call(
        "POST",
        &format!("{}/cckm/hsm/luna/keys", first.base),
        Some(&token),
        Some(
            &serde_json::json!({"label": "ha-key", "size": 256, "partition_id": ha,
            "mechanism": "CKM_AES_KEY_GEN", "attributes": ["CKA_SENSITIVE", "CKA_ENCRYPT"]}),
        ),
    );
    assert_eq!(status, 201, "{created}");
    let key_url = format!(
        "{}/cckm/hsm/luna/keys/{}",
        first.base,
        created["id"].as_str().unwrap()
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let key = loop {
        let (_, key) = call("GET", &key_url, Some(&token), None);
        if key["status"] != "in_progress" || std::time::Instant::now() > deadline {
            break key;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(key["status"], "AVAILABLE", "{key}");
    assert_eq!(key["replicated"], true, "{key}");
    let copies = key["replication_info"].as_object().unwrap();
    assert_eq!(copies.len(), 2, "{key}");
    assert!(copies.values().all(|state| state == "available"), "{key}");
    first.stop();

    // The second start registers nothing new and shows no password.
    let second = Server::start(&data, &["--insecure-http"]);
    assert_eq!(
        (second.partition_id("HA"), second.partition_id("single")),
        (ha, single)
    );
    assert!(second.admin_password_shown().is_none());
    login(&second.base, &password);
    second.stop();

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700);
        for secret in ["pin.key", "jwt.key", "admin-password"] {
            assert_eq!(mode(&data.join(secret)), 0o600, "{secret}");
        }
    }

    // An independent PKCS#11 client sees the three tokens in the data directory.
    let listing = Command::new("pkcs11-tool")
        .args([
            "--module",
            &luna_pkcs11::softhsm::find_module().unwrap().display().to_string(),
            "--list-token-slots",
        ])
        .env("SOFTHSM2_CONF", data.join("softhsm").join("softhsm2.conf"))
        .output()
        .expect("pkcs11-tool (package opensc)");
    let listing = String::from_utf8_lossy(&listing.stdout);
    for label in ["demo-ha-1", "demo-ha-2", "demo-single"] {
        assert!(listing.contains(label), "{label} in {listing}");
    }
}

#[test]
fn https_is_the_default_with_a_generated_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    assert!(server.base.starts_with("https://"), "{}", server.base);
    let port = server.port();
    let output = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(data.join("tls-cert.pem"))
        .arg(format!("https://localhost:{port}/api/v1/healthz"))
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        r#"{"status":"ok"}"#,
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    server.stop();
}

/// An instance whose pin.key did not seal the database's PINs would claim
/// operations and fail every one: it refuses to start, and says why.
#[test]
fn a_pin_key_that_did_not_seal_the_database_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = Server::start(&data, &["--insecure-http"]);
    assert_eq!(call("GET", &format!("{}/healthz", first.base), None, None).0, 200);
    first.stop();
    std::fs::write(data.join("pin.key"), [7u8; 32]).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_luna-server"))
        .args([
            "serve",
            "--insecure-http",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&data)
        .env_remove("LUNA_DATABASE_URL")
        .env_remove("LUNA_PKCS11_MODULE")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("pin.key is not the key that sealed this database's connection PINs"),
        "{stderr}"
    );
    assert!(!String::from_utf8_lossy(&output.stdout).contains("listening on"));
}

#[test]
fn a_bad_database_url_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_luna-server"))
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .args(["--database-url", "mysql://nowhere"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("names no supported backend"), "{stderr}");
}

#[test]
fn no_password_pin_or_token_reaches_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let server = Server::launch(&data)
        .args(&["--insecure-http"])
        .log("trace", log.into())
        .start();
    let password = server.admin_password_shown().unwrap();
    let (_, tokens) = call(
        "POST",
        &format!("{}/auth/tokens", server.base),
        None,
        Some(&serde_json::json!({"grant_type": "password", "username": "admin", "password": password})),
    );
    let jwt = tokens["jwt"].as_str().unwrap().to_owned();
    let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
    let (status, _) = call(
        "POST",
        &format!("{}/auth/tokens", server.base),
        None,
        Some(
            &serde_json::json!({"grant_type": "password", "username": "admin", "password": "wrong-password-not-to-log"}),
        ),
    );
    assert_eq!(status, 401);
    let pin = "pin-that-must-not-leak";
    let (status, _) = call(
        "POST",
        &format!("{}/connectionmgmt/services/luna-network/connections", server.base),
        Some(&jwt),
        Some(
            &serde_json::json!({"name": "leak", "password": pin, "partitions": [{"partition_label": "demo-single"}]}),
        ),
    );
    assert_eq!(status, 400, "the wrong PIN is refused");
    let so_pin = "so-pin-that-must-not-leak";
    let (status, _) = call(
        "POST",
        &format!("{}/connectionmgmt/services/luna-network/connections", server.base),
        Some(&jwt),
        Some(&serde_json::json!({
            "name": "leak-ha", "password": pin, "so_password": so_pin, "is_ha_enabled": true,
            "partitions": [{"partition_label": "demo-ha-1"}, {"partition_label": "demo-ha-2"}]
        })),
    );
    assert_eq!(status, 400);
    let (status, created) = call(
        "POST",
        &format!("{}/cckm/hsm/luna/keys", server.base),
        Some(&jwt),
        Some(
            &serde_json::json!({"label": "k", "size": 256, "partition_id": server.partition_id("single"), "mechanism": "CKM_AES_KEY_GEN"}),
        ),
    );
    assert_eq!(status, 201, "{created}");
    // The log lines of a request carry its id.
    let marked = ureq::get(&format!("{}/cckm/hsm/luna/keys?limit=1", server.base))
        .set("Authorization", &format!("Bearer {jwt}"))
        .set("X-Request-Id", "marker-request-7")
        .call()
        .unwrap();
    assert_eq!(marked.header("X-Request-Id"), Some("marker-request-7"));
    server.stop();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.len() > 1000, "the trace log has content: {} bytes", log.len());
    let request_lines: Vec<&str> = log.lines().filter(|l| l.contains("marker-request-7")).collect();
    assert!(
        request_lines
            .iter()
            .any(|l| l.contains("answered") && l.contains("status=200")),
        "{request_lines:?}"
    );
    for secret in [
        password.as_str(),
        "wrong-password-not-to-log",
        pin,
        so_pin,
        jwt.as_str(),
        refresh.as_str(),
    ] {
        assert!(!log.contains(secret), "a secret reached the log");
    }
    // The JWT's signature alone must not appear either.
    assert!(!log.contains(jwt.rsplit('.').next().unwrap()));
}

/// Values from clients cannot start a log line or fake a field: a login
/// whose user name holds CR LF and a forged record, NUL and ANSI escapes,
/// and a path holding the same, in the text log and in the JSON one
/// (`LUNA_LOG_FORMAT=json`, every line a JSON object).
#[test]
fn client_values_cannot_forge_log_lines_in_text_or_json() {
    let hostile = [
        "p3\r\nFORGED-LOG-LINE user=admin status=200 fake",
        "p4\nFORGED-LOG-LINE again",
        "nul\0FORGED",
        "\u{1b}[2J\u{1b}[31mFORGED",
    ];
    for format in ["text", "json"] {
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("server.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let server = Server::launch(&dir.path().join("data"))
            .args(&["--insecure-http"])
            .env(&[("LUNA_LOG_FORMAT", Path::new(format))])
            .log("info", log.into())
            .start();
        for username in hostile {
            let (status, _) = call(
                "POST",
                &format!("{}/auth/tokens", server.base),
                None,
                Some(
                    &serde_json::json!({"grant_type": "password", "username": username, "password": "wrong-one"}),
                ),
            );
            assert_eq!(status, 401, "{format}");
            // A password change names its user too.
            let (status, _) = call(
                "PATCH",
                &format!("{}/auth/changepw", server.base),
                None,
                Some(
                    &serde_json::json!({"username": username, "password": "wrong-one", "new_password": "long-enough"}),
                ),
            );
            assert_eq!(status, 401, "{format}");
        }
        let (status, _) = call(
            "GET",
            &format!(
                "{}/cckm/hsm/luna/keys/%0D%0AFORGED-LOG-LINE%20user=admin%1B[31m%00",
                server.base
            ),
            None,
            None,
        );
        assert_eq!(status, 401, "{format}");
        server.stop();
        let written = std::fs::read(&log_path).unwrap();
        let text = String::from_utf8_lossy(&written);
        assert!(
            text.matches("a password check failed").count() >= 2 * hostile.len(),
            "{format}: the failures are logged: {text}"
        );
        for line in text.lines() {
            assert!(!line.starts_with("FORGED"), "{format}: {line}");
            assert!(
                !line.chars().any(|c| c.is_control() && c != '\t'),
                "{format}: {line:?}"
            );
            if format == "json" && !line.is_empty() {
                serde_json::from_str::<serde_json::Value>(line)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            }
        }
    }
}
