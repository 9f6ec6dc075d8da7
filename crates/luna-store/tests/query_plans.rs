//! Statements that run inside write transactions find their rows through an
//! index: on SQLite one writer runs at a time, and the group commit runs a
//! batch's writes one after another, so a statement that scans a growing
//! table makes every write wait longer as the database fills. Migration 8's
//! triggers did (a row value `IN` a `UNION ALL` scanned all of
//! `key_time_counts` per key changed: 25 ms a key update at 100,000 count
//! rows). This records every statement the key write paths send (accept,
//! claim, outcome, an operation begun, refresh, forget, audit) and reads
//! SQLite's plan of each.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use diesel::prelude::*;
use diesel::sql_types::Text;
use diesel::Connection as _;
use luna_domain::{
    AttributeSet, Connection, Key, KeyEvent, KeyVersion, Mechanism, Member, NewKeySpec, Operation,
    OperationPayload,
};
use luna_store::testing::{test_audit, TestDatabase};
use luna_store::{now, AuditEntry};
use secrecy::SecretString;
use time::Duration;
use uuid::Uuid;

/// A step of `EXPLAIN QUERY PLAN`.
#[derive(QueryableByName)]
struct Step {
    #[diesel(sql_type = Text)]
    detail: String,
}

fn audit(action: &str) -> AuditEntry {
    AuditEntry {
        action: action.into(),
        ..test_audit()
    }
}

/// Scans that stop at their first row: the trail's head, read backwards
/// along the rowid (`seq` is it), which SQLite's plan calls a SCAN.
const FIRST_ROW_SCANS: &[(&str, &str)] = &[(
    "SCAN audit_records",
    "ORDER BY `audit_records`.`seq` DESC LIMIT ?",
)];

/// Every statement of the write paths a create, an update, a refresh and
/// a forget take, on a store already holding `existing` keys.
fn write_path_statements(db: &TestDatabase, existing: usize) -> Vec<String> {
    let store = &db.store;
    let t = now();
    let connection = Connection {
        id: Uuid::now_v7(),
        name: "plans".into(),
        description: String::new(),
        ha_enabled: false,
        remap_rsa_mechanisms: true,
        server_id: None,
        last_check: None,
        products: vec![],
        meta: None,
        members: vec![Member {
            hostname: "localhost".into(),
            partition_label: "plans".into(),
            serial_number: "1".into(),
        }],
        created_at: t,
        updated_at: t,
    };
    store
        .insert_connection(&connection, &SecretString::from("1234"), None, &test_audit())
        .unwrap();
    let partition = luna_domain::Partition {
        id: Uuid::now_v7(),
        connection_id: connection.id,
        partition_label: "plans".into(),
        serial_number: "1".into(),
        ha_enabled: false,
        remap_rsa_mechanisms: true,
        members: connection.members.clone(),
        created_at: t,
        updated_at: t,
    };
    store.insert_partition(&partition, &test_audit()).unwrap();
    let new_key = |i: usize| {
        let spec = NewKeySpec {
            label: format!("key-{i}"),
            size: 256,
            partition_id: partition.id,
            mechanism: Mechanism::AesKeyGen,
            attributes: AttributeSet::parse_names(&["CKA_ENCRYPT"]).unwrap(),
        };
        spec.new_key(&partition, Uuid::now_v7, t - Duration::seconds(i as i64))
    };
    let filler: Vec<Key> = (0..existing)
        .map(|i| {
            let mut key = new_key(i).keys.remove(0);
            key.apply(&KeyEvent::Succeeded, t).unwrap();
            key
        })
        .collect();
    store.insert_keys(&filler).unwrap();
    let ((), statements) = store.record_statements(|| {
        // A create: accepted, claimed, its outcome written.
        let made = new_key(existing);
        let key = made.keys[0].clone();
        store
            .insert_keys_idempotently(&made.keys, &made.operation, None, &audit("create"))
            .unwrap();
        let claimed = store
            .claim_next_operation("w", now(), Duration::seconds(30))
            .unwrap()
            .unwrap();
        let held = claimed.lease_expires_at().unwrap();
        assert!(store
            .renew_lease(claimed.id, "w", held, held + Duration::seconds(1))
            .unwrap());
        let mut done = claimed.clone();
        done.finish(Ok(()), now()).unwrap();
        let mut available = key.clone();
        available.apply(&KeyEvent::Succeeded, now()).unwrap();
        assert!(store
            .finish_operation(
                &done,
                "w",
                &[(available.clone(), KeyVersion::of(&key))],
                &audit("outcome")
            )
            .unwrap());
        // An update begun, put back for a retry, released.
        let update = Operation::queued(
            Uuid::now_v7(),
            OperationPayload::UpdateKey {
                key_id: key.id,
                changes: vec![(luna_domain::Attribute::Sign, true)],
            },
            now(),
        );
        store
            .begin_key_operation(&update, &test_audit())
            .unwrap()
            .unwrap();
        let mut claimed = store
            .claim_next_operation("w", now(), Duration::seconds(30))
            .unwrap()
            .unwrap();
        claimed
            .retry_later("busy".into(), now() + Duration::seconds(1), now())
            .unwrap();
        assert!(store.retry_operation_later(&claimed, "w").unwrap());
        store.release_parked("plans", now()).unwrap();
        // A refresh's writes, and a forget.
        let busy = store.get_key(key.id).unwrap().unwrap();
        let mut refreshed = filler[0].clone();
        refreshed.label = "renamed".into();
        refreshed.updated_at = now();
        store
            .apply_refresh(
                &[new_key(existing + 1).keys.remove(0)],
                &[(refreshed, KeyVersion::of(&filler[0]))],
            )
            .unwrap();
        store
            .insert_unrecorded_keys(partition.id, &[new_key(existing + 2).keys.remove(0)])
            .unwrap();
        store.forget_key(filler[1].id, &test_audit()).unwrap().unwrap();
        store.append_audit(&audit("request")).unwrap();
        assert!(busy.lifecycle().is_busy());
    });
    statements
}

#[test]
fn every_statement_of_the_write_paths_finds_its_rows_through_an_index() {
    let db = TestDatabase::sqlite().unwrap();
    let statements = write_path_statements(&db, 2000);
    let path = db.url.trim_start_matches("sqlite://");
    let mut conn = SqliteConnection::establish(path).unwrap();
    let mut planned = std::collections::BTreeSet::new();
    for statement in &statements {
        let verb = statement
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_uppercase();
        if !["SELECT", "INSERT", "UPDATE", "DELETE"].contains(&verb.as_str()) || !planned.insert(statement) {
            continue;
        }
        // Unbound parameters plan as NULLs: the plan is the index choice.
        let plan: Vec<Step> = diesel::sql_query(format!("EXPLAIN QUERY PLAN {statement}"))
            .load(&mut conn)
            .unwrap_or_else(|e| panic!("{e}: {statement}"));
        for step in &plan {
            // A multi-row VALUES list is read as "SCAN n CONSTANT ROWS".
            let stops_at_first_row = FIRST_ROW_SCANS
                .iter()
                .any(|(scan, order)| step.detail == *scan && statement.ends_with(order));
            // A compound's member reads its subquery's rows ("SCAN
            // (subquery-n)"), which the subquery's own step, planned here
            // too, finds.
            let reads_a_subquery = step.detail.starts_with("SCAN (subquery-");
            assert!(
                !step.detail.starts_with("SCAN ")
                    || step.detail.ends_with("CONSTANT ROWS")
                    || stops_at_first_row
                    || reads_a_subquery,
                "a write path scans a table: {}\n{statement}",
                step.detail
            );
        }
    }
    assert!(
        planned.len() >= 15,
        "{} statements planned: {planned:#?}",
        planned.len()
    );
}
