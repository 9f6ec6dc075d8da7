//! `luna-server serve` on a fresh data directory sets up the embedded default,
//! and a second start finds it in place.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

fn serve(data_dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_luna-server"))
        .args(["serve", "--insecure-http", "--data-dir"])
        .arg(data_dir)
        .env_remove("LUNA_DATABASE_URL")
        .env_remove("LUNA_PKCS11_MODULE")
        .output()
        .expect("run luna-server")
}

fn partition_lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.contains(" HA: ") || l.contains(" single: "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_fresh_data_dir_gets_demo_partitions_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = serve(&data);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let partitions = partition_lines(&first);
    assert_eq!(partitions.len(), 2, "{partitions:?}");
    assert!(partitions
        .iter()
        .any(|l| l.contains("HA: demo-ha-1 (serial ") && l.contains("demo-ha-2 (serial ")));
    assert!(partitions
        .iter()
        .any(|l| l.contains("single: demo-single (serial ")));
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(
        !stderr.contains("ERROR"),
        "a clean start logs no errors: {stderr}"
    );

    // The second start registers nothing new.
    let second = serve(&data);
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert_eq!(partition_lines(&second), partitions);

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&data.join("pin.key")), 0o600);
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
