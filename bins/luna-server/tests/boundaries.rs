//! The crate boundaries ARCHITECTURE.md writes down, held to each crate's
//! `[dependencies]`: dependencies point inward to luna-domain, only luna-api
//! knows HTTP, only the binaries use anyhow, and luna-domain stays free of IO
//! crates so that other services can embed it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

/// The names in a manifest's `[dependencies]` table (not dev or build ones).
fn dependencies(krate: &str) -> Vec<String> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(krate)
        .join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let mut in_table = false;
    let mut names = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_table = line == "[dependencies]";
            continue;
        }
        if in_table && !line.is_empty() && !line.starts_with('#') {
            let name = line.split(['=', '.', ' ']).next().unwrap();
            names.push(name.to_owned());
        }
    }
    assert!(!names.is_empty(), "{} lists no dependencies", manifest.display());
    names
}

fn assert_none_of(krate: &str, forbidden: &[&str], why: &str) {
    let found: Vec<String> = dependencies(krate)
        .into_iter()
        .filter(|d| {
            forbidden
                .iter()
                .any(|f| d == f || d.starts_with(&format!("{f}-")) || d.starts_with(&format!("{f}_")))
        })
        .collect();
    assert!(found.is_empty(), "{krate} depends on {found:?}: {why}");
}

#[test]
fn luna_domain_needs_no_io_and_no_other_crate_of_the_project() {
    let mut found = dependencies("crates/luna-domain");
    found.sort();
    assert_eq!(
        found,
        ["hex", "secrecy", "serde", "thiserror", "time", "uuid"],
        "luna-domain is embedded by other services"
    );
}

#[test]
fn dependencies_point_inward() {
    assert_none_of(
        "crates/luna-pkcs11",
        &["luna-store", "luna-api", "diesel", "actix", "serde_json", "tokio"],
        "the token layer knows no storage, HTTP or JSON",
    );
    assert_none_of(
        "crates/luna-store",
        &["luna-pkcs11", "luna-api", "actix", "cryptoki", "tokio"],
        "the store knows no tokens or HTTP",
    );
    for krate in [
        "crates/luna-domain",
        "crates/luna-pkcs11",
        "crates/luna-store",
        "crates/luna-api",
    ] {
        assert_none_of(
            krate,
            &["anyhow"],
            "library crates have one thiserror enum each; anyhow is the binaries'",
        );
    }
    // lunactl speaks to the server over HTTP only.
    assert_none_of(
        "bins/lunactl",
        &["luna-pkcs11", "luna-store", "luna-api"],
        "lunactl uses the public API",
    );
}

#[test]
fn the_check_sees_a_forbidden_dependency() {
    // luna-api does depend on actix-web; the same check on it must fail.
    let caught = std::panic::catch_unwind(|| {
        assert_none_of(
            "crates/luna-api",
            &["actix"],
            "a check that cannot fail holds nothing",
        )
    });
    assert!(caught.is_err());
}
