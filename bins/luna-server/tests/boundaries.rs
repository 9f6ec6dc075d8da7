//! The crate boundaries ARCHITECTURE.md writes down, held to what Cargo
//! parses (`cargo metadata`: every member's direct normal dependencies,
//! however the manifest spells them: `[dependencies.x]`,
//! `[target.'cfg(..)'.dependencies]`, renames) and, for chrono, to the
//! resolved graph: dependencies point inward to luna-domain, the libraries
//! but luna-api know no HTTP, only the binaries use anyhow, luna-domain
//! stays free of IO crates (so that other services can embed it) and of
//! random ids, and no crate anywhere in the graph is chrono. Every source
//! file is on ARCHITECTURE.md's code map.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::OnceLock;

use cargo_metadata::{DependencyKind, Metadata, MetadataCommand};

fn workspace_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn metadata() -> &'static Metadata {
    static METADATA: OnceLock<Metadata> = OnceLock::new();
    METADATA.get_or_init(|| {
        MetadataCommand::new()
            .manifest_path(workspace_root().join("Cargo.toml"))
            .exec()
            .unwrap()
    })
}

/// Every member of the workspace, by name, with the names of the packages
/// its normal (not dev, not build) dependencies resolve to.
fn members() -> BTreeMap<String, BTreeSet<String>> {
    let metadata = metadata();
    metadata
        .workspace_packages()
        .into_iter()
        .map(|package| {
            let normal = package
                .dependencies
                .iter()
                .filter(|d| d.kind == DependencyKind::Normal)
                .map(|d| d.name.clone())
                .collect();
            (package.name.to_string(), normal)
        })
        .collect()
}

fn dependencies(krate: &str) -> BTreeSet<String> {
    members()
        .remove(krate)
        .unwrap_or_else(|| panic!("{krate} is no member of the workspace"))
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

/// Each rule below names the crates it holds; a new member must be placed.
#[test]
fn every_member_of_the_workspace_is_held_by_these_rules() {
    let named: BTreeSet<&str> = [
        "luna-domain",
        "luna-pkcs11",
        "luna-store",
        "luna-runner",
        "luna-api",
        "luna-server",
        "lunactl",
    ]
    .into();
    let members = members();
    let found: BTreeSet<&str> = members.keys().map(String::as_str).collect();
    assert_eq!(found, named, "a member these rules do not place");
}

#[test]
fn luna_domain_needs_no_io_and_no_other_crate_of_the_project() {
    let found: Vec<String> = dependencies("luna-domain").into_iter().collect();
    assert_eq!(
        found,
        ["hex", "secrecy", "serde", "thiserror", "time", "uuid"],
        "luna-domain is embedded by other services"
    );
}

#[test]
fn dependencies_point_inward() {
    assert_none_of(
        "luna-pkcs11",
        &["luna-store", "luna-api", "diesel", "actix", "serde_json", "tokio"],
        "the token layer knows no storage, HTTP or JSON",
    );
    assert_none_of(
        "luna-store",
        &["luna-pkcs11", "luna-api", "actix", "cryptoki", "tokio"],
        "the store knows no tokens or HTTP",
    );
    assert_none_of(
        "luna-runner",
        &["luna-api", "diesel", "cryptoki", "serde_json"],
        "the runner reaches tokens through luna-pkcs11 and data through luna-store, and speaks no JSON",
    );
    for krate in [
        "luna-domain",
        "luna-pkcs11",
        "luna-store",
        "luna-runner",
        "luna-api",
    ] {
        assert_none_of(
            krate,
            &["anyhow"],
            "library crates have one thiserror enum each; anyhow is the binaries'",
        );
    }
    assert_none_of(
        "luna-server",
        &["diesel", "cryptoki"],
        "the server binary is thin: wiring, settings and start",
    );
    // lunactl speaks to the server over HTTP only.
    assert_none_of(
        "lunactl",
        &["luna-pkcs11", "luna-store", "luna-runner", "luna-api"],
        "lunactl uses the public API",
    );
}

/// Only luna-api knows HTTP: every other library, the runner included
/// (another CCKM service embeds it without a web framework), takes none.
#[test]
fn only_luna_api_knows_http() {
    for krate in ["luna-domain", "luna-pkcs11", "luna-store", "luna-runner"] {
        assert_none_of(
            krate,
            &["actix", "utoipa", "hyper", "http", "ureq", "rustls"],
            "only luna-api knows HTTP",
        );
    }
}

/// Instants are `time`'s in every crate: chrono is nowhere in the resolved
/// graph, not even behind another crate.
#[test]
fn chrono_is_in_no_crate_of_the_graph() {
    let resolve = metadata().resolve.as_ref().unwrap();
    let packages: BTreeMap<_, _> = metadata().packages.iter().map(|p| (&p.id, p)).collect();
    let chrono: Vec<String> = resolve
        .nodes
        .iter()
        .map(|node| &packages[&node.id])
        .filter(|p| p.name.as_str() == "chrono")
        .map(|p| p.id.to_string())
        .collect();
    assert!(chrono.is_empty(), "chrono is in the graph: {chrono:?}");
}

/// luna-domain makes no random ids (the caller passes them, so a plan or a
/// record is the same for the same input): its uuid has no `v4`, and
/// luna-domain compiles alone, where the workspace's other crates cannot
/// lend it theirs by feature unification.
#[test]
fn luna_domain_compiles_alone_without_random_ids() {
    let package = metadata()
        .workspace_packages()
        .into_iter()
        .find(|p| p.name.as_str() == "luna-domain")
        .unwrap();
    let uuid = package
        .dependencies
        .iter()
        .find(|d| d.name == "uuid" && d.kind == DependencyKind::Normal)
        .unwrap();
    assert!(!uuid.features.iter().any(|f| f == "v4"), "{:?}", uuid.features);
    let target = workspace_root().join("target/luna-domain-alone");
    let output = std::process::Command::new(env!("CARGO"))
        .args(["check", "--locked", "--quiet", "-p", "luna-domain", "--lib"])
        .current_dir(workspace_root())
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "luna-domain does not compile alone: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_check_sees_a_forbidden_dependency() {
    // luna-api does depend on actix-web; the same check on it must fail.
    let caught = std::panic::catch_unwind(|| {
        assert_none_of("luna-api", &["actix"], "a check that cannot fail holds nothing")
    });
    assert!(caught.is_err());
}

/// Every source file is on the code map: named (its path under `src/`, or
/// its file name) in its crate's section of ARCHITECTURE.md, so a stranger
/// finds any file in one hop and a new file is placed when it is made.
#[test]
fn every_source_file_is_named_in_its_crates_section_of_the_architecture() {
    let map = std::fs::read_to_string(workspace_root().join("ARCHITECTURE.md")).unwrap();
    let mut unnamed = Vec::new();
    for package in metadata().workspace_packages() {
        let dir = package.manifest_path.parent().unwrap().as_std_path();
        let relative = dir
            .strip_prefix(workspace_root().canonicalize().unwrap())
            .unwrap();
        let heading = format!("### `{}`", relative.display());
        let start = map
            .find(&heading)
            .unwrap_or_else(|| panic!("ARCHITECTURE.md has no section {heading}"));
        let section = &map[start + heading.len()..];
        let section = &section[..section.find("\n### ").unwrap_or(section.len())];
        let src = dir.join("src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        // A bullet of the map: from a line starting `- ` to the next.
        let bullets: Vec<String> = section
            .split("\n- ")
            .map(|bullet| bullet.split("\n\n").next().unwrap_or_default().to_owned())
            .collect();
        for file in files {
            let path = file.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            // `handlers/keys.rs` is named by its path, or by `keys.rs` in the
            // bullet that names `handlers/`; a top-level file by its name.
            let directory = path.rsplit_once('/').map(|(dir, _)| format!("`{dir}/`"));
            let named = bullets.iter().any(|bullet| {
                bullet.contains(&format!("`{path}`"))
                    || (bullet.contains(&format!("`{name}`"))
                        && directory.as_ref().is_none_or(|dir| bullet.contains(dir.as_str())))
            });
            if !named {
                unnamed.push(format!("{}/src/{path}", relative.display()));
            }
        }
    }
    assert!(unnamed.is_empty(), "not on the code map: {unnamed:#?}");
}

fn sources(dir: &Path, found: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// Every Rust file of the workspace: each member's `src/`, `tests/`,
/// `benches/` and `examples/`.
fn every_rust_file() -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for package in metadata().workspace_packages() {
        let dir = package.manifest_path.parent().unwrap().as_std_path();
        for part in ["src", "tests", "benches", "examples"] {
            if dir.join(part).is_dir() {
                sources(&dir.join(part), &mut files);
            }
        }
    }
    assert!(files.len() > 100, "the sources were not found: {}", files.len());
    files
}

/// Every module, in `src/`, `tests/`, `benches/` and `examples/`, opens
/// with a `//!` header saying its one job, so a reader knows what a file is
/// for before reading it.
#[test]
fn every_module_says_its_one_job() {
    let silent: Vec<String> = every_rust_file()
        .into_iter()
        .filter(|file| {
            !std::fs::read_to_string(file)
                .unwrap()
                .trim_start()
                .starts_with("//!")
        })
        .map(|file| file.display().to_string())
        .collect();
    assert!(silent.is_empty(), "no `//!` header: {silent:#?}");
}

/// The lines of a Rust file that hold code: not blank, not a comment.
fn code_lines(text: &str) -> usize {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("//"))
        .count()
}

/// No file past one job: every Rust file, tests included, holds at most 500
/// lines of code.
#[test]
fn every_source_file_holds_at_most_500_lines_of_code() {
    let long: Vec<String> = every_rust_file()
        .into_iter()
        .filter_map(|file| {
            let lines = code_lines(&std::fs::read_to_string(&file).unwrap());
            (lines > 500).then(|| format!("{}: {lines}", file.display()))
        })
        .collect();
    assert!(long.is_empty(), "files past 500 lines of code: {long:#?}");
    assert_eq!(code_lines("// a comment\n\n  fn f() {}\n   //! doc\n"), 1);
}

/// Tests, benchmarks and the chaos run start `luna-server` one way
/// (`tests/support`'s `Launch`): only that file waits for the binary's
/// "listening on" line.
#[test]
fn servers_start_through_one_helper() {
    let waiting: Vec<String> = every_rust_file()
        .into_iter()
        .filter(|file| !file.components().any(|c| c.as_os_str() == "src"))
        .filter(|file| {
            std::fs::read_to_string(file)
                .unwrap()
                .contains("strip_prefix(\"listening on \")")
        })
        .map(|file| file.display().to_string())
        .collect();
    assert_eq!(waiting.len(), 1, "{waiting:#?}");
    assert!(
        waiting[0].ends_with("bins/luna-server/tests/support/mod.rs"),
        "{waiting:#?}"
    );
}
