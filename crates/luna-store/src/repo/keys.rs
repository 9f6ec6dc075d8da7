//! Key records (`keys`): stored with the operation that will make or change
//! them, listed, and written back only over the version they were read as (a
//! compare-and-set), so that no write overwrites a change it did not see.

use diesel::prelude::*;
use luna_domain::idempotency::IdempotentRequest;
use luna_domain::query::{Direction, KeyFilters, KeySortField, ListQuery};
use luna_domain::{Key, KeyEvent, KeyVersion, Operation};
use uuid::Uuid;

use crate::db::{DbConnection, MultiBackend};
use crate::error::{Result, StoreError};
use crate::group::{Durability, Pending};
use crate::models::{KeyChange, KeyRow, OperationRow};
use crate::repo::key_pages::{counted_scope, seek, time_order, Stamp, SEEK_FROM};
use crate::repo::order_by;
use crate::schema::{key_counts, keys, operations};
use crate::{AuditEntry, Listed, Store};

fn filtered(f: &KeyFilters) -> keys::BoxedQuery<'static, MultiBackend> {
    let mut q = keys::table.into_boxed();
    if let Some(v) = f.id {
        q = q.filter(keys::id.eq(v.to_string()));
    }
    if let Some(v) = &f.label {
        q = q.filter(keys::label.eq(v.clone()));
    }
    if let Some(v) = f.algorithm {
        q = q.filter(keys::algorithm.eq(v.as_str()));
    }
    if let Some(v) = f.mechanism {
        q = q.filter(keys::mechanism.eq(v.as_str()));
    }
    if let Some(v) = f.size {
        // No stored size exceeds i32::MAX, so a larger filter matches nothing.
        q = q.filter(keys::size.eq(i32::try_from(v).unwrap_or(-1)));
    }
    if let Some(v) = f.byok_key {
        q = q.filter(keys::byok_key.eq(v));
    }
    if let Some(v) = f.partition_id {
        q = q.filter(keys::partition_id.eq(v.to_string()));
    }
    if let Some(v) = &f.partition_label {
        q = q.filter(keys::partition_label.eq(v.clone()));
    }
    if let Some(v) = f.status {
        q = q.filter(keys::status.eq(v.as_str()));
    }
    if let Some(v) = f.object_type {
        q = q.filter(keys::object_type.eq(v.as_str()));
    }
    if let Some(v) = f.origin {
        q = q.filter(keys::origin.eq(v.as_str()));
    }
    if let Some(v) = &f.sha_256_fingerprint {
        q = q.filter(keys::sha_256_fingerprint.eq(v.clone()));
    }
    if let Some(v) = &f.modulus {
        q = q.filter(keys::modulus.eq(v.clone()));
    }
    if let Some(v) = f.link_id {
        q = q.filter(keys::link_id.eq(v.to_string()));
    }
    if let Some(v) = f.replicated {
        q = q.filter(keys::replicated.eq(v));
    }
    q
}

fn sorted(
    mut q: keys::BoxedQuery<'static, MultiBackend>,
    query: &ListQuery<KeyFilters>,
) -> keys::BoxedQuery<'static, MultiBackend> {
    if query.sort.is_empty() {
        return q.order_by((keys::created_at.desc(), keys::id.desc()));
    }
    for key in &query.sort {
        q = match key.field {
            KeySortField::CreatedAt => order_by!(q, key.direction, keys::created_at),
            KeySortField::UpdatedAt => order_by!(q, key.direction, keys::updated_at),
            KeySortField::Id => order_by!(q, key.direction, keys::id),
            KeySortField::Label => order_by!(q, key.direction, keys::label),
            KeySortField::Size => order_by!(q, key.direction, keys::size),
            KeySortField::Status => order_by!(q, key.direction, keys::status),
            KeySortField::Algorithm => order_by!(q, key.direction, keys::algorithm),
            KeySortField::Mechanism => order_by!(q, key.direction, keys::mechanism),
            KeySortField::ObjectType => order_by!(q, key.direction, keys::object_type),
            KeySortField::PartitionId => order_by!(q, key.direction, keys::partition_id),
            KeySortField::PartitionLabel => order_by!(q, key.direction, keys::partition_label),
            KeySortField::Origin => order_by!(q, key.direction, keys::origin),
        };
    }
    // Ties keep a stable order across pages; `id` runs the way the last key
    // does, so an index on (…, sort column, id) serves the whole ORDER BY.
    let last = query.sort.last().map_or(Direction::Ascending, |k| k.direction);
    order_by!(q, last, keys::id)
}

/// The number of keys that match, from the trigger-kept counts when the
/// filters are only partition and status (the lists clients page through
/// most), else by counting.
fn total(conn: &mut DbConnection, f: &KeyFilters) -> Result<i64> {
    if !counted_scope(f) {
        return Ok(filtered(f).count().get_result(conn)?);
    }
    let mut q = key_counts::table.select(key_counts::n).into_boxed();
    if let Some(v) = f.partition_id {
        q = q.filter(key_counts::partition_id.eq(v.to_string()));
    }
    if let Some(v) = f.status {
        q = q.filter(key_counts::status.eq(v.as_str()));
    }
    // At most (partitions × statuses) rows.
    Ok(q.load::<i64>(conn)?.into_iter().sum())
}

fn into_keys(rows: Vec<KeyRow>) -> Result<Vec<Key>> {
    rows.into_iter().map(KeyRow::into_domain).collect()
}

pub(crate) fn load(conn: &mut DbConnection, id: Uuid) -> Result<Option<Key>> {
    keys::table
        .find(id.to_string())
        .select(KeyRow::as_select())
        .first(conn)
        .optional()?
        .map(KeyRow::into_domain)
        .transpose()
}

/// Inserts key records and notes them in the batch's counts; returns how many.
pub(crate) fn insert_rows(conn: &mut DbConnection, rows: &[KeyRow], pending: &mut Pending) -> Result<usize> {
    let mut inserted = 0;
    match conn {
        // A row with a NULL column cannot be one VALUES list among others on
        // SQLite (diesel would insert them one by one, in a savepoint of its
        // own): one statement per row, prepared once, in the caller's
        // transaction.
        DbConnection::Sqlite(lite) => {
            for row in rows {
                inserted += diesel::insert_into(keys::table).values(row).execute(lite)?;
            }
        }
        // One statement per 500 rows (under the bound-parameter limit).
        DbConnection::Postgres(pg) => {
            for chunk in rows.chunks(500) {
                inserted += diesel::insert_into(keys::table).values(chunk).execute(pg)?;
            }
        }
    }
    for row in rows {
        pending.counts.inserted(row.into());
    }
    Ok(inserted)
}

/// Writes `after` over the key record `read` was read as, only if the record
/// still is as read (a compare-and-set on its `updated_at` and lifecycle),
/// and sets only the columns that differ. False if it changed meanwhile, or
/// is gone: no write overwrites one it did not see.
pub(crate) fn update_if_unchanged(
    conn: &mut DbConnection,
    read: &Key,
    after: &Key,
    pending: &mut Pending,
) -> Result<bool> {
    let (before, now) = (KeyRow::from_domain(read), KeyRow::from_domain(after));
    let as_read = keys::table
        .find(&before.id)
        .filter(keys::updated_at.eq(before.updated_at))
        .filter(keys::status.eq(&before.status))
        .filter(keys::operation.eq(&before.operation))
        .filter(keys::operation_status.eq(&before.operation_status));
    let written = match KeyChange::between(&before, &now) {
        Some(change) => diesel::update(as_read).set(&change).execute(conn)? == 1,
        None => as_read.count().get_result::<i64>(conn)? == 1,
    };
    if written {
        pending.counts.changed((&before).into(), (&now).into());
    }
    Ok(written)
}

/// Why an operation cannot begin on a key: a conflict (busy, not AVAILABLE)
/// or a move the key's machine lacks.
fn begin_refused(error: luna_domain::DomainError) -> StoreError {
    match error {
        luna_domain::DomainError::Conflict(m) => StoreError::Conflict(m),
        other => StoreError::Domain(other),
    }
}

impl Store {
    /// Records new keys and the operation that will make them, and `audit`
    /// about the first, atomically: once this returns, the request cannot be
    /// lost.
    pub fn insert_keys_with_operation(
        &self,
        new_keys: &[Key],
        operation: &Operation,
        audit: &AuditEntry,
    ) -> Result<()> {
        self.insert_keys_idempotently(new_keys, operation, None, audit)
    }

    /// `insert_keys_with_operation`, recording in the same transaction that
    /// `request` (a create under an `Idempotency-Key`) made the first key.
    pub fn insert_keys_idempotently(
        &self,
        new_keys: &[Key],
        operation: &Operation,
        request: Option<&IdempotentRequest>,
        audit: &AuditEntry,
    ) -> Result<()> {
        let rows: Vec<KeyRow> = new_keys.iter().map(KeyRow::from_domain).collect();
        let mut op = OperationRow::from_domain(operation)?;
        op.partition_id = new_keys.first().map(|k| k.partition_id.to_string());
        self.write_with(Durability::Synced, |conn, pending| {
            if let (Some(request), Some(first)) = (request, new_keys.first()) {
                crate::repo::idempotency::remember(conn, request, first.id)?;
            }
            insert_rows(conn, &rows, pending)?;
            diesel::insert_into(operations::table).values(&op).execute(conn)?;
            if let Some(first) = new_keys.first() {
                pending.audit.push(audit.about(&first.id.to_string()));
            }
            Ok(())
        })
    }

    pub fn get_key(&self, id: Uuid) -> Result<Option<Key>> {
        self.read(|conn| load(conn, id))
    }

    /// Starts `kind` on a key (and its linked half when the operation
    /// includes it) and queues `operation`, with `audit`, in one
    /// transaction. `None` if there is no such key; a key that is busy, or
    /// not AVAILABLE, is a conflict.
    pub fn begin_key_operation(&self, operation: &Operation, audit: &AuditEntry) -> Result<Option<Vec<Key>>> {
        let Some(kind) = operation.payload.key_operation() else {
            return Err(StoreError::Domain(luna_domain::DomainError::Invalid(format!(
                "operation {} runs a job; it does not begin on a key",
                operation.id
            ))));
        };
        let id = operation.payload.target();
        let op = OperationRow::from_domain(operation)?;
        let now = operation.created_at;
        // What refuses most such requests (no such key, a busy one) is found
        // by a read first: a write that fails rolls back the writes that
        // share its batch, which then run again.
        let Some(first) = self.read(|conn| load(conn, id))? else {
            return Ok(None);
        };
        let linked = match first.link_id.filter(|_| operation.payload.includes_link()) {
            Some(link) => self.read(|conn| load(conn, link))?,
            None => None,
        };
        for key in std::iter::once(&first).chain(linked.as_ref()) {
            key.clone()
                .apply(&KeyEvent::Begin(kind), now)
                .map_err(begin_refused)?;
        }
        self.write_with(Durability::Synced, |conn, pending| {
            let Some(first) = load(conn, id)? else {
                return Ok(None);
            };
            let mut ids = vec![first.id];
            if operation.payload.includes_link() {
                ids.extend(first.link_id);
            }
            let mut changed = Vec::with_capacity(ids.len());
            for key_id in ids {
                // A dangling link (its half was forgotten here) is skipped, not fatal.
                let Some(read) = (if key_id == first.id {
                    Some(first.clone())
                } else {
                    load(conn, key_id)?
                }) else {
                    continue;
                };
                let mut key = read.clone();
                key.apply(&KeyEvent::Begin(kind), now).map_err(begin_refused)?;
                if !update_if_unchanged(conn, &read, &key, pending)? {
                    return Err(StoreError::Conflict(format!(
                        "key {key_id} changed while the request was handled; try again"
                    )));
                }
                changed.push(key);
            }
            // The work touches the key's partition's tokens.
            let mut op = op.clone();
            op.partition_id = Some(first.partition_id.to_string());
            diesel::insert_into(operations::table).values(&op).execute(conn)?;
            pending.audit.push(audit.clone());
            Ok(Some(changed))
        })
    }

    /// Writes a key record changed from `read`, the version it was read in:
    /// a compare-and-set, false if the record changed meanwhile (or is gone),
    /// so no write overwrites one it did not see.
    pub fn save_key(&self, key: &Key, read: &KeyVersion) -> Result<bool> {
        self.write_with(Durability::Synced, |conn, pending| {
            update_if_unchanged(conn, read.record(), key, pending)
        })
    }

    /// Forgets a key record and its linked record here (the objects stay on the
    /// token), and writes `audit`. Refused while an operation runs on it.
    pub fn forget_key(&self, id: Uuid, audit: &AuditEntry) -> Result<Option<Vec<Uuid>>> {
        // A busy key, or none, is found by a read first (see `begin_key_operation`).
        match self.read(|conn| load(conn, id))? {
            None => return Ok(None),
            Some(key) if key.lifecycle().is_busy() => {
                return Err(StoreError::Conflict(format!(
                    "the key has a {} operation in progress; wait for it to end",
                    key.lifecycle().operation()
                )))
            }
            Some(_) => {}
        }
        self.write_with(Durability::Synced, |conn, pending| {
            let Some(key) = load(conn, id)? else {
                return Ok(None);
            };
            if key.lifecycle().is_busy() {
                return Err(StoreError::Conflict(format!(
                    "the key has a {} operation in progress; wait for it to end",
                    key.lifecycle().operation()
                )));
            }
            let link = key.link_id.map(|l| load(conn, l)).transpose()?.flatten();
            for row in std::iter::once(&key)
                .chain(link.as_ref())
                .map(KeyRow::from_domain)
            {
                // Deleted only as read (on PostgreSQL another instance may
                // change it between the read and the delete): the counts
                // take off what was deleted.
                let deleted = diesel::delete(
                    keys::table
                        .find(&row.id)
                        .filter(keys::updated_at.eq(row.updated_at))
                        .filter(keys::status.eq(&row.status))
                        .filter(keys::operation_status.eq(&row.operation_status)),
                )
                .execute(conn)?;
                if deleted != 1 {
                    return Err(StoreError::Conflict(format!(
                        "key {} changed while the request was handled; try again",
                        row.id
                    )));
                }
                pending.counts.deleted((&row).into());
            }
            pending.audit.push(audit.clone());
            // A dangling link (its half was forgotten before) is answered as asked.
            Ok(Some(std::iter::once(key.id).chain(key.link_id).collect()))
        })
    }

    /// A filtered, sorted page of keys and the total that match. A page
    /// deep in a list in timestamp order is placed from the bucket counts
    /// instead of walking the skipped rows (`repo/key_pages.rs`),
    /// the counts and the rows read in one snapshot.
    pub fn list_keys(&self, query: &ListQuery<KeyFilters>) -> Result<Listed<Key>> {
        // Built inside each read: a read may run again on another connection.
        let page = || sorted(filtered(&query.filters), query).limit(query.page.limit);
        let Some(order) = time_order(query).filter(|_| query.page.skip >= SEEK_FROM) else {
            return self.read(|conn| {
                let total = total(conn, &query.filters)?;
                let items = page()
                    .offset(query.page.skip)
                    .select(KeyRow::as_select())
                    .load(conn)?;
                Ok(Listed {
                    total,
                    items: into_keys(items)?,
                })
            });
        };
        self.read_snapshot(|conn| {
            let placed = seek(conn, &query.filters, order, query.page.skip)?;
            let Some((bound, skip_from_bound)) = placed.start else {
                return Ok(Listed {
                    total: placed.total,
                    items: Vec::new(),
                });
            };
            let page = match (order.stamp, order.direction) {
                (Stamp::Created, Direction::Descending) => page().filter(keys::created_at.lt(bound)),
                (Stamp::Created, Direction::Ascending) => page().filter(keys::created_at.ge(bound)),
                (Stamp::Updated, Direction::Descending) => page().filter(keys::updated_at.lt(bound)),
                (Stamp::Updated, Direction::Ascending) => page().filter(keys::updated_at.ge(bound)),
            };
            let items = page
                .offset(skip_from_bound)
                .select(KeyRow::as_select())
                .load(conn)?;
            Ok(Listed {
                total: placed.total,
                items: into_keys(items)?,
            })
        })
    }

    /// Every record of a partition (refresh compares them with the tokens).
    pub fn keys_of_partition(&self, partition_id: Uuid) -> Result<Vec<Key>> {
        self.read(|conn| {
            let rows = keys::table
                .filter(keys::partition_id.eq(partition_id.to_string()))
                .select(KeyRow::as_select())
                .load(conn)?;
            into_keys(rows)
        })
    }

    /// Writes a refresh's result in one transaction: new records, and updates
    /// of records whose lifecycle is still the one they were read with (an
    /// operation that started meanwhile wins). Returns how many were skipped.
    pub fn apply_refresh(&self, inserted: &[Key], updated: &[(Key, KeyVersion)]) -> Result<usize> {
        let rows: Vec<KeyRow> = inserted.iter().map(KeyRow::from_domain).collect();
        self.write_with(Durability::Synced, |conn, pending| {
            insert_rows(conn, &rows, pending)?;
            let mut skipped = 0;
            for (key, read) in updated {
                if !update_if_unchanged(conn, read.record(), key, pending)? {
                    skipped += 1;
                }
            }
            Ok(skipped)
        })
    }

    /// Inserts, in one transaction, the records of objects no record of the
    /// partition names yet (by `object_uid`); returns how many. A refresh
    /// records objects while its scan goes on; a create accepted since it
    /// read the records has its own record, and gets no second one.
    pub fn insert_unrecorded_keys(&self, partition_id: Uuid, new_keys: &[Key]) -> Result<usize> {
        self.write_with(Durability::Synced, |conn, pending| {
            let mut inserted = 0;
            // Chunks keep each statement under SQLite's bound-parameter limit.
            for chunk in new_keys.chunks(500) {
                let recorded: std::collections::HashSet<String> = keys::table
                    .filter(keys::partition_id.eq(partition_id.to_string()))
                    .filter(keys::object_uid.eq_any(chunk.iter().map(|k| k.object_uid.as_str())))
                    .select(keys::object_uid)
                    .load::<String>(conn)?
                    .into_iter()
                    .collect();
                let rows: Vec<KeyRow> = chunk
                    .iter()
                    .filter(|k| k.partition_id == partition_id && !recorded.contains(&k.object_uid))
                    .map(KeyRow::from_domain)
                    .collect();
                inserted += insert_rows(conn, &rows, pending)?;
            }
            Ok(inserted)
        })
    }

    /// Inserts many key records in one transaction (benchmarks and refresh).
    pub fn insert_keys(&self, new_keys: &[Key]) -> Result<()> {
        let rows: Vec<KeyRow> = new_keys.iter().map(KeyRow::from_domain).collect();
        self.write_with(Durability::Synced, |conn, pending| {
            insert_rows(conn, &rows, pending).map(drop)
        })
    }
}
