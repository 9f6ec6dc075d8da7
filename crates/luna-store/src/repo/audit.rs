//! The audit trail: append-only records, each carrying an HMAC-SHA256 of the
//! one before and of itself, under a key the database does not hold (derived
//! from `pin.key`), and a checkpoint of the head kept outside the table
//! (`AuditCheckpoint`). Editing a record, inserting or deleting one, or
//! rewriting the chain from some record on is seen without the key; cutting
//! records off the end is seen against the checkpoint.

use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use diesel::prelude::*;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use time::OffsetDateTime;

use crate::codec::{from_micros, micros};
use crate::db::{per_backend, DbConnection};
use crate::error::{Result, StoreError};
use crate::group::Durability;
use crate::schema::audit_records;
use crate::{Listed, Store};
use luna_domain::query::AuditFilters;

/// What happened, before it is chained (record format 3, docs/audit.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub at: OffsetDateTime,
    /// Who: the user's id (empty when nobody was admitted: a failed login,
    /// a request without a valid token) and name (`-` then, or the name a
    /// failed login tried).
    pub user_id: String,
    pub username: String,
    /// What: the request's method and route (`POST /api/v1/usermgmt/users`),
    /// or `operation <kind>` for an operation's outcome.
    pub action: String,
    /// What it was about: `key`, `user`, `connection`, …, and its id (or
    /// name, for what is named rather than numbered).
    pub resource_type: String,
    pub resource_id: String,
    /// The HTTP status answered, or an operation's `succeeded` / `failed: …`.
    pub outcome: String,
    /// The request's `X-Request-Id` (for an outcome: the request that asked for it).
    pub request_id: String,
    /// The client's address.
    pub source: String,
    /// The instance that wrote the record.
    pub instance: String,
}

impl AuditEntry {
    /// This record, about resource `id` (what the change it records made).
    pub fn about(&self, id: &str) -> AuditEntry {
        AuditEntry {
            resource_id: id.to_owned(),
            ..self.clone()
        }
    }

    /// This record, by the user `user_id` named `username` (one the change
    /// itself found: the owner of a refreshed session).
    pub fn by(&self, user_id: &str, username: &str) -> AuditEntry {
        AuditEntry {
            user_id: user_id.to_owned(),
            username: username.to_owned(),
            ..self.clone()
        }
    }
}

/// The format of the records this version writes: the fields above, each in
/// the chain's hash. Format 2 (before migration 15) had no user id, resource
/// type or instance.
pub const AUDIT_FORMAT: i32 = 3;

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = audit_records)]
pub(super) struct AuditRow {
    seq: i64,
    at: i64,
    username: String,
    action: String,
    resource_id: String,
    outcome: String,
    request_id: String,
    source: String,
    previous_hash: String,
    hash: String,
    format: i32,
    user_id: String,
    resource_type: String,
    instance: String,
}

/// A stored record with its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub seq: i64,
    /// The record's format (2 or 3): which fields its hash covers.
    pub format: i32,
    pub entry: AuditEntry,
    pub previous_hash: String,
    pub hash: String,
}

/// The hash of the first record's predecessor.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The record formats this version reads: which fields a record's hash covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// Before migration 15: no user id, resource type or instance.
    V2,
    /// Every field of [`AuditEntry`].
    V3,
}

impl Format {
    fn of(stored: i32) -> Option<Format> {
        match stored {
            2 => Some(Format::V2),
            AUDIT_FORMAT => Some(Format::V3),
            _ => None,
        }
    }
}

/// HMAC-SHA256, under the audit key, of the previous hash and every field
/// of a record of `format`, each length-prefixed.
pub(crate) fn chain_hash(
    key: &[u8; 32],
    previous: &str,
    seq: i64,
    at: i64,
    format: Format,
    e: &AuditEntry,
) -> String {
    let Ok(mut hash) = Hmac::<Sha256>::new_from_slice(key) else {
        unreachable!("HMAC takes a key of any length")
    };
    let (seq, at) = (seq.to_string(), at.to_string());
    let mut parts = vec![
        previous,
        &seq,
        &at,
        &e.username,
        &e.action,
        &e.resource_id,
        &e.outcome,
        &e.request_id,
        &e.source,
    ];
    match format {
        Format::V2 => hash.update(b"luna-cckm/audit/v2"),
        Format::V3 => {
            hash.update(b"luna-cckm/audit/v3");
            parts.extend([e.user_id.as_str(), &e.resource_type, &e.instance]);
        }
    }
    for part in parts {
        hash.update(&(part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    hex::encode(hash.finalize().into_bytes())
}

/// What a walk of the chain found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditCheck {
    Intact,
    /// The first record found wrong, and why.
    Broken {
        at: i64,
        why: String,
    },
}

/// The head of the trail as this server last wrote it (sequence number and
/// hash), kept in a file outside the database: records cut off the end of
/// the table are missed by the chain alone, not by this. Written after each
/// append (never backwards), in place: one fixed-width line written at the
/// start of a file kept open (a write of under a page, which is not torn),
/// not a new file renamed over it per append, which cost a file creation for
/// every request and every operation.
/// The checkpoint's line: a sequence number in 20 digits, a space, the
/// 64 hex digits of the hash, a newline.
const CHECKPOINT_LINE: usize = 20 + 1 + 64 + 1;

#[derive(Debug)]
pub struct AuditCheckpoint {
    path: PathBuf,
    written: Mutex<Option<(i64, String)>>,
    file: Mutex<Option<std::fs::File>>,
}

impl AuditCheckpoint {
    /// The checkpoint in `path`, read if it exists.
    pub fn open(path: &Path) -> Result<AuditCheckpoint> {
        let file_error = |source| StoreError::KeyFile {
            path: path.to_path_buf(),
            source,
        };
        let written = match std::fs::read_to_string(path) {
            Ok(text) => {
                let (seq, hash) = text
                    .trim()
                    .split_once(' ')
                    .ok_or_else(|| StoreError::corrupt("audit checkpoint", "no sequence and hash"))?;
                let seq = seq
                    .parse()
                    .map_err(|e| StoreError::corrupt("audit checkpoint", e))?;
                Some((seq, hash.to_owned()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(file_error(e)),
        };
        Ok(AuditCheckpoint {
            path: path.to_path_buf(),
            written: Mutex::new(written),
            file: Mutex::new(None),
        })
    }

    fn head(&self) -> Option<(i64, String)> {
        self.written.lock().clone()
    }

    fn record(&self, seq: i64, hash: &str) -> Result<()> {
        use std::os::unix::fs::FileExt as _;
        let mut written = self.written.lock();
        if written.as_ref().is_some_and(|(at, _)| *at >= seq) {
            return Ok(());
        }
        let file_error = |source| StoreError::KeyFile {
            path: self.path.clone(),
            source,
        };
        let mut file = self.file.lock();
        if file.is_none() {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true);
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let opened = options.open(&self.path).map_err(file_error)?;
            // Every line has the same length: the file is cut to it once.
            opened.set_len(CHECKPOINT_LINE as u64).map_err(file_error)?;
            *file = Some(opened);
        }
        if let Some(file) = file.as_ref() {
            let line = format!("{seq:020} {hash}\n");
            file.write_all_at(line.as_bytes(), 0).map_err(file_error)?;
        }
        *written = Some((seq, hash.to_owned()));
        Ok(())
    }
}

impl AuditRow {
    /// The row as column values (what a multi-row upsert takes on SQLite).
    #[allow(clippy::type_complexity)]
    fn columns(
        &self,
    ) -> (
        diesel::dsl::Eq<audit_records::seq, i64>,
        diesel::dsl::Eq<audit_records::at, i64>,
        diesel::dsl::Eq<audit_records::username, &str>,
        diesel::dsl::Eq<audit_records::action, &str>,
        diesel::dsl::Eq<audit_records::resource_id, &str>,
        diesel::dsl::Eq<audit_records::outcome, &str>,
        diesel::dsl::Eq<audit_records::request_id, &str>,
        diesel::dsl::Eq<audit_records::source, &str>,
        diesel::dsl::Eq<audit_records::previous_hash, &str>,
        diesel::dsl::Eq<audit_records::hash, &str>,
        diesel::dsl::Eq<audit_records::format, i32>,
        diesel::dsl::Eq<audit_records::user_id, &str>,
        diesel::dsl::Eq<audit_records::resource_type, &str>,
        diesel::dsl::Eq<audit_records::instance, &str>,
    ) {
        (
            audit_records::seq.eq(self.seq),
            audit_records::at.eq(self.at),
            audit_records::username.eq(self.username.as_str()),
            audit_records::action.eq(self.action.as_str()),
            audit_records::resource_id.eq(self.resource_id.as_str()),
            audit_records::outcome.eq(self.outcome.as_str()),
            audit_records::request_id.eq(self.request_id.as_str()),
            audit_records::source.eq(self.source.as_str()),
            audit_records::previous_hash.eq(self.previous_hash.as_str()),
            audit_records::hash.eq(self.hash.as_str()),
            audit_records::format.eq(self.format),
            audit_records::user_id.eq(self.user_id.as_str()),
            audit_records::resource_type.eq(self.resource_type.as_str()),
            audit_records::instance.eq(self.instance.as_str()),
        )
    }

    pub(super) fn into_record(self) -> Result<AuditRecord> {
        Ok(AuditRecord {
            seq: self.seq,
            format: self.format,
            entry: AuditEntry {
                at: from_micros("audit record at", self.at)?,
                user_id: self.user_id,
                username: self.username,
                action: self.action,
                resource_type: self.resource_type,
                resource_id: self.resource_id,
                outcome: self.outcome,
                request_id: self.request_id,
                source: self.source,
                instance: self.instance,
            },
            previous_hash: self.previous_hash,
            hash: self.hash,
        })
    }
}

/// The last record of the trail as this process last committed or read it
/// (sequence number and hash), and how many connections the store had
/// opened then: the next append chains to it without reading it, and finds
/// out when another instance appended meanwhile. It is trusted only while
/// no connection has been opened since: a database that lost commits (a
/// PostgreSQL server that crashed with deferred commits in flight, a
/// failover) is reached through new connections, and a head it no longer
/// holds would leave a gap in the chain.
pub(crate) type AuditHead = Mutex<Option<KnownHead>>;

#[derive(Debug, Clone)]
pub(crate) struct KnownHead {
    pub seq: i64,
    pub hash: String,
    pub connections_opened: u64,
}

/// A batch's records, chained and ready to insert.
fn chained(key: &[u8; 32], head: &(i64, String), entries: &[AuditEntry]) -> Vec<AuditRow> {
    let (mut seq, mut previous) = head.clone();
    entries
        .iter()
        .map(|entry| {
            seq += 1;
            let at = micros(entry.at);
            let hash = chain_hash(key, &previous, seq, at, Format::V3, entry);
            AuditRow {
                seq,
                at,
                username: entry.username.clone(),
                action: entry.action.clone(),
                resource_id: entry.resource_id.clone(),
                outcome: entry.outcome.clone(),
                request_id: entry.request_id.clone(),
                source: entry.source.clone(),
                previous_hash: std::mem::replace(&mut previous, hash.clone()),
                hash,
                format: AUDIT_FORMAT,
                user_id: entry.user_id.clone(),
                resource_type: entry.resource_type.clone(),
                instance: entry.instance.clone(),
            }
        })
        .collect()
}

/// Appends a batch's `entries`, chained to the trail's last record, in the
/// caller's transaction (so each record commits with the change it tells
/// of); returns the new head, for the caller to keep (`head`) and move the
/// checkpoint to once the transaction committed.
///
/// No lock and, usually, no read: one insert chains the records to the head
/// this process knows. A record already holding one of their numbers
/// (another instance appended since; PostgreSQL makes the insert wait for
/// that instance's transaction to end) is left as it is by the insert; the
/// records of this batch that were written are then taken back, the head is
/// read, and the records chained again. Whoever inserted the record after
/// the head holds the trail until it commits: every other appender's insert
/// waits for it.
pub(crate) fn append_in(
    conn: &mut DbConnection,
    key: &[u8; 32],
    head: &AuditHead,
    connections_opened: u64,
    entries: &[AuditEntry],
) -> Result<(i64, String)> {
    let mut known = head
        .lock()
        .clone()
        .filter(|h| h.connections_opened == connections_opened)
        .map(|h| (h.seq, h.hash));
    // Each turn another appender committed records: bounded for safety only.
    for _ in 0..1000 {
        let from = match known.take() {
            Some(head) => head,
            None => last(conn)?.unwrap_or_else(|| (0, GENESIS.to_owned())),
        };
        let rows = chained(key, &from, entries);
        let Some(newest) = rows.last().map(|row| (row.seq, row.hash.clone())) else {
            return Ok(from);
        };
        // Chunks keep each statement under SQLite's bound-parameter limit.
        let mut inserted = 0;
        for chunk in rows.chunks(1000) {
            let values: Vec<_> = chunk.iter().map(AuditRow::columns).collect();
            inserted += per_backend!(conn, |c| diesel::insert_into(audit_records::table)
                .values(&values)
                .on_conflict(audit_records::seq)
                .do_nothing()
                .execute(c))?;
        }
        if inserted == rows.len() {
            return Ok(newest);
        }
        if inserted > 0 {
            // Found by number (the primary key), told from the other
            // instance's records by their hashes.
            let ours: Vec<&str> = rows.iter().map(|row| row.hash.as_str()).collect();
            diesel::delete(
                audit_records::table
                    .filter(audit_records::seq.between(from.0 + 1, newest.0))
                    .filter(audit_records::hash.eq_any(ours)),
            )
            .execute(conn)?;
        }
    }
    Err(StoreError::Conflict(
        "the audit trail kept moving under this append; try again".into(),
    ))
}

pub(super) fn last(conn: &mut DbConnection) -> Result<Option<(i64, String)>> {
    Ok(audit_records::table
        .order(audit_records::seq.desc())
        .select((audit_records::seq, audit_records::hash))
        .first(conn)
        .optional()?)
}

impl Store {
    /// Appends a record chained to the last one (committed, on disk, before
    /// this returns), then moves the checkpoint to it.
    pub fn append_audit(&self, entry: &AuditEntry) -> Result<()> {
        self.append_audit_as(entry, Durability::Synced)
    }

    /// Appends a record that belongs to no change, already answered (a
    /// refusal): on disk with the next synced commit, so that a client
    /// sending refused requests cannot make the server sync for each.
    pub fn append_audit_deferred(&self, entry: &AuditEntry) -> Result<()> {
        self.append_audit_as(entry, Durability::Deferred)
    }

    fn append_audit_as(&self, entry: &AuditEntry, durability: Durability) -> Result<()> {
        self.write_with(durability, |_, pending| {
            pending.audit.push(entry.clone());
            Ok(())
        })
    }

    /// Moves the checkpoint to the head a batch left, once it committed.
    pub(crate) fn checkpoint_audit(&self, seq: i64, hash: &str) -> Result<()> {
        match &self.audit_checkpoint {
            Some(checkpoint) => checkpoint.record(seq, hash),
            None => Ok(()),
        }
    }

    /// Records, newest first, that match every filter given.
    pub fn list_audit(&self, filters: &AuditFilters, skip: i64, limit: i64) -> Result<Listed<AuditRecord>> {
        let filtered = || {
            let mut q = audit_records::table.into_boxed::<crate::db::MultiBackend>();
            if let Some(u) = &filters.username {
                q = q.filter(audit_records::username.eq(u.clone()));
            }
            if let Some(a) = &filters.action {
                q = q.filter(audit_records::action.eq(a.clone()));
            }
            if let Some(t) = &filters.resource_type {
                q = q.filter(audit_records::resource_type.eq(t.clone()));
            }
            if let Some(id) = &filters.resource_id {
                q = q.filter(audit_records::resource_id.eq(id.clone()));
            }
            if let Some(since) = filters.since {
                q = q.filter(audit_records::at.ge(micros(since)));
            }
            if let Some(until) = filters.until {
                q = q.filter(audit_records::at.lt(micros(until)));
            }
            q
        };
        self.read_snapshot(|conn| {
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

    /// Walks the whole chain, then holds its end to the checkpoint.
    pub fn verify_audit(&self) -> Result<AuditCheck> {
        let key = *self.pins.audit_key();
        let rows: Vec<AuditRow> = self.read(|conn| {
            Ok(audit_records::table
                .order(audit_records::seq.asc())
                .select(AuditRow::as_select())
                .load(conn)?)
        })?;
        let mut previous = GENESIS.to_owned();
        for (index, row) in rows.iter().enumerate() {
            let record = row.clone().into_record()?;
            let expected = Format::of(row.format)
                .map(|format| chain_hash(&key, &previous, row.seq, row.at, format, &record.entry));
            if row.seq != index as i64 + 1
                || row.previous_hash != previous
                || expected.as_deref() != Some(row.hash.as_str())
            {
                return Ok(AuditCheck::Broken {
                    at: row.seq,
                    why: format!(
                        "record {} does not follow from the one before under the audit key: a record was edited, \
                         inserted or deleted, or the chain was rewritten",
                        row.seq
                    ),
                });
            }
            previous = row.hash.clone();
        }
        let Some((seq, hash)) = self.audit_checkpoint.as_ref().and_then(|c| c.head()) else {
            return Ok(AuditCheck::Intact);
        };
        let last = rows.last().map_or(0, |r| r.seq);
        match usize::try_from(seq - 1).ok().and_then(|i| rows.get(i)) {
            None => Ok(AuditCheck::Broken {
                at: last + 1,
                why: format!(
                    "the trail ends at record {last}, but this server wrote record {seq}: records were cut off its end"
                ),
            }),
            Some(row) if row.hash != hash => Ok(AuditCheck::Broken {
                at: seq,
                why: format!("record {seq} is not the one this server wrote: the trail was rewritten"),
            }),
            Some(_) => Ok(AuditCheck::Intact),
        }
    }
}
