//! The audit trail: append-only records chained by SHA-256.

use chrono::{DateTime, Utc};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use sha2::{Digest, Sha256};

use crate::codec::{from_micros, micros};
use crate::db::DbConnection;
use crate::error::Result;
use crate::schema::audit_records;
use crate::{Listed, Store};

/// What happened, before it is chained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub at: DateTime<Utc>,
    pub username: String,
    pub action: String,
    /// The ids the action was about (comma separated), or the path.
    pub target: String,
    pub outcome: String,
    pub request_id: String,
    pub client: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = audit_records)]
struct AuditRow {
    seq: i64,
    at: i64,
    username: String,
    action: String,
    target: String,
    outcome: String,
    request_id: String,
    client: String,
    previous_hash: String,
    hash: String,
}

/// A stored record with its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub seq: i64,
    pub entry: AuditEntry,
    pub previous_hash: String,
    pub hash: String,
}

/// The hash of the first record's predecessor.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Serialises appends on PostgreSQL, where several servers may write.
const AUDIT_LOCK: i64 = 0x6c75_6e61_6175_6469;

/// SHA-256 over the previous hash and every field, each length-prefixed.
fn chain_hash(previous: &str, seq: i64, at: i64, e: &AuditEntry) -> String {
    let mut hash = Sha256::new();
    hash.update(b"luna-cckm/audit/v1");
    for part in [
        previous,
        &seq.to_string(),
        &at.to_string(),
        &e.username,
        &e.action,
        &e.target,
        &e.outcome,
        &e.request_id,
        &e.client,
    ] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    let digest = hash.finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl AuditRow {
    fn into_record(self) -> Result<AuditRecord> {
        Ok(AuditRecord {
            seq: self.seq,
            entry: AuditEntry {
                at: from_micros("audit record at", self.at)?,
                username: self.username,
                action: self.action,
                target: self.target,
                outcome: self.outcome,
                request_id: self.request_id,
                client: self.client,
            },
            previous_hash: self.previous_hash,
            hash: self.hash,
        })
    }
}

fn last(conn: &mut DbConnection) -> Result<Option<(i64, String)>> {
    Ok(audit_records::table
        .order(audit_records::seq.desc())
        .select((audit_records::seq, audit_records::hash))
        .first(conn)
        .optional()?)
}

impl Store {
    /// Appends a record chained to the last one.
    pub fn append_audit(&self, entry: &AuditEntry) -> Result<AuditRecord> {
        self.write(|conn| {
            if let DbConnection::Postgres(pg) = conn {
                pg.batch_execute(&format!("SELECT pg_advisory_xact_lock({AUDIT_LOCK})"))?;
            }
            let (seq, previous) = match last(conn)? {
                Some((seq, hash)) => (seq + 1, hash),
                None => (1, GENESIS.to_owned()),
            };
            let at = micros(entry.at);
            let row = AuditRow {
                seq,
                at,
                username: entry.username.clone(),
                action: entry.action.clone(),
                target: entry.target.clone(),
                outcome: entry.outcome.clone(),
                request_id: entry.request_id.clone(),
                client: entry.client.clone(),
                hash: chain_hash(&previous, seq, at, entry),
                previous_hash: previous,
            };
            diesel::insert_into(audit_records::table)
                .values(&row)
                .execute(conn)?;
            row.into_record()
        })
    }

    /// Records, newest first, optionally one user's or one action's.
    pub fn list_audit(
        &self,
        username: Option<&str>,
        action: Option<&str>,
        skip: i64,
        limit: i64,
    ) -> Result<Listed<AuditRecord>> {
        let filtered = || {
            let mut q = audit_records::table.into_boxed::<crate::db::MultiBackend>();
            if let Some(u) = username {
                q = q.filter(audit_records::username.eq(u.to_owned()));
            }
            if let Some(a) = action {
                q = q.filter(audit_records::action.eq(a.to_owned()));
            }
            q
        };
        self.read(|conn| {
            let total: i64 = filtered().count().get_result(conn)?;
            let items = filtered()
                .order(audit_records::seq.desc())
                .offset(skip)
                .limit(limit)
                .select(AuditRow::as_select())
                .load(conn)?
                .into_iter()
                .map(AuditRow::into_record)
                .collect::<Result<_>>()?;
            Ok(Listed { total, items })
        })
    }

    /// Walks the whole chain. `Ok(None)` if it is intact, else the first
    /// sequence number where it breaks (an edited, inserted or deleted record).
    pub fn verify_audit(&self) -> Result<Option<i64>> {
        self.read(|conn| {
            let rows: Vec<AuditRow> = audit_records::table
                .order(audit_records::seq.asc())
                .select(AuditRow::as_select())
                .load(conn)?;
            let mut previous = GENESIS.to_owned();
            for (index, row) in rows.into_iter().enumerate() {
                let record = row.clone().into_record()?;
                let expected = chain_hash(&previous, row.seq, row.at, &record.entry);
                if row.seq != index as i64 + 1 || row.previous_hash != previous || row.hash != expected {
                    return Ok(Some(row.seq));
                }
                previous = row.hash;
            }
            Ok(None)
        })
    }
}
