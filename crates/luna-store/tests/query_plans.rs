//! Statements that run inside write transactions find their rows through an
//! index: on SQLite one writer runs at a time, and the group commit runs a
//! batch's writes one after another, so a statement that scans a growing
//! table makes every write wait longer as the database fills. Migration 8's
//! triggers did (a row value `IN` a `UNION ALL` scanned all of
//! `key_time_counts` per key changed: 25 ms a key update at 100,000 count
//! rows); this reads SQLite's plan of every statement of every trigger.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use diesel::prelude::*;
use diesel::sql_types::Text;
use luna_store::testing::TestDatabase;

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = Text)]
    text: String,
}

/// A step of `EXPLAIN QUERY PLAN`.
#[derive(QueryableByName)]
struct Step {
    #[diesel(sql_type = Text)]
    detail: String,
}

/// Tables small and fixed by the schema, which a scan may read.
const CONSTANT_TABLES: &[&str] = &["key_time_levels"];

/// A trigger statement with its `OLD.`/`NEW.` columns made literals, so that
/// it can be planned on its own.
fn standalone(statement: &str) -> String {
    let mut out = statement.to_owned();
    for row in ["OLD", "NEW"] {
        for (column, literal) in [
            ("partition_id", "'p'"),
            ("status", "'AVAILABLE'"),
            ("created_at", "1"),
            ("updated_at", "2"),
        ] {
            out = out.replace(&format!("{row}.{column}"), literal);
        }
    }
    assert!(
        !out.contains("OLD.") && !out.contains("NEW."),
        "a column to give a literal: {out}"
    );
    out
}

#[test]
fn every_trigger_statement_finds_its_rows_through_an_index() {
    let db = TestDatabase::sqlite().unwrap();
    let path = db.url.trim_start_matches("sqlite://");
    let mut conn = SqliteConnection::establish(path).unwrap();
    let triggers: Vec<Row> =
        diesel::sql_query("SELECT name || char(10) || sql AS text FROM sqlite_master WHERE type = 'trigger'")
            .load(&mut conn)
            .unwrap();
    assert!(triggers.len() >= 6, "the key count triggers are there");
    let mut planned = 0;
    for trigger in &triggers {
        let (name, sql) = trigger.text.split_once('\n').unwrap();
        let body = sql
            .split_once("BEGIN")
            .and_then(|(_, rest)| rest.rsplit_once("END"))
            .map(|(body, _)| body)
            .unwrap_or_else(|| panic!("{name} has a body"));
        for statement in body.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            // Comments inside a trigger stay in its text.
            let statement: String = statement
                .lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n");
            let plan: Vec<Step> = diesel::sql_query(format!("EXPLAIN QUERY PLAN {}", standalone(&statement)))
                .load(&mut conn)
                .unwrap_or_else(|e| panic!("{name}: {e}: {statement}"));
            for step in &plan {
                let scanned = step
                    .detail
                    .strip_prefix("SCAN ")
                    .map(|t| t.split(' ').next().unwrap_or(""));
                if let Some(table) = scanned {
                    assert!(
                        CONSTANT_TABLES.contains(&table),
                        "{name} scans {table}: {}\n{statement}",
                        step.detail
                    );
                }
            }
            planned += 1;
        }
    }
    assert!(planned >= 12, "{planned} statements planned");
}
