//! The SQLite and PostgreSQL migration trees describe one schema: the same
//! migrations, and the same statements apart from a short list of dialect
//! differences. A change made to one tree only fails here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Migrations written per dialect as a whole (PL/pgSQL functions against
/// SQLite triggers), checked only for being present in both trees.
const WRITTEN_PER_DIALECT: &[&str] = &[
    "2026-11-28-000003_key_counts",
    "2026-12-06-000008_key_time_counts",
    "2026-12-06-000009_key_time_counts_by_key",
    // SQLite rebuilds the audit table to key it by its rowid.
    "2026-12-07-000014_lean_writes",
];

/// Type names that differ, PostgreSQL's → SQLite's.
const TYPE_NAMES: &[(&str, &str)] = &[("BYTEA", "BLOB")];

fn tree(backend: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../migrations")
        .join(backend)
}

fn migrations(backend: &str) -> BTreeSet<String> {
    std::fs::read_dir(tree(backend))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect()
}

/// The statements, without comments and with PostgreSQL's type names as SQLite's.
fn statements(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut text: String = text
        .lines()
        .map(|line| line.split("--").next().unwrap().trim())
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    for (postgres, sqlite) in TYPE_NAMES {
        text = text.replace(postgres, sqlite);
    }
    text.split(';')
        .map(|s| {
            s.split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .replace("( ", "(")
                .replace(" )", ")")
                .replace(" ,", ",")
        })
        .filter(|s| !s.is_empty())
        .collect()
}

#[test]
fn both_trees_hold_the_same_migrations_with_only_the_listed_differences() {
    let (sqlite, postgres) = (migrations("sqlite"), migrations("postgres"));
    assert_eq!(sqlite, postgres, "the same migrations in both trees");
    assert!(sqlite.len() >= 6, "{sqlite:?}");
    for name in &sqlite {
        for file in ["up.sql", "down.sql"] {
            let (lite, pg) = (
                tree("sqlite").join(name).join(file),
                tree("postgres").join(name).join(file),
            );
            assert!(lite.exists() && pg.exists(), "{name}/{file} in both trees");
            if WRITTEN_PER_DIALECT.contains(&name.as_str()) {
                continue;
            }
            assert_eq!(statements(&lite), statements(&pg), "{name}/{file}");
        }
    }
}

#[test]
fn the_comparison_sees_a_difference() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.sql"), dir.path().join("b.sql"));
    std::fs::write(&a, "-- SQLite\nCREATE TABLE t (x BLOB NOT NULL);\n").unwrap();
    std::fs::write(&b, "-- PostgreSQL\nCREATE TABLE t (\n  x BYTEA NOT NULL\n);").unwrap();
    assert_eq!(
        statements(&a),
        statements(&b),
        "comments, layout and listed types are not differences"
    );
    std::fs::write(&b, "CREATE TABLE t (x BYTEA);").unwrap();
    assert_ne!(statements(&a), statements(&b), "a dropped NOT NULL is");
}
