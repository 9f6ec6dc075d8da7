//! The key counts (`key_counts`, `key_time_counts`), kept by the code that
//! writes keys: each write notes what it changed ([`CountDeltas`]), the
//! deltas of a group commit's writes are summed, and the sum is written once,
//! just before the batch commits, in the same transaction.
//!
//! Per-row triggers wrote up to 21 count rows for every key changed, and on
//! PostgreSQL held those rows (the same few for every create of a partition)
//! from each writer's statement to its commit, so that writers on every
//! instance queued behind each other and could deadlock. Summed per batch,
//! a create costs a fraction of a count-row write; written in one fixed order
//! (`key_counts` then `key_time_counts`, each by primary key) at the very end
//! of a transaction, the rows are held only through the commit, and two
//! instances take them in the same order, so they cannot deadlock over them.

use std::collections::BTreeMap;

use diesel::prelude::*;
use diesel::upsert::excluded;

use crate::db::{per_backend, DbConnection, MultiBackend};
use crate::error::Result;
use crate::models::KeyRow;
use crate::schema::{key_counts, key_time_counts};

/// How many bits each level's buckets shift a timestamp (in microseconds)
/// right by, finest first (about 1 s, 4.5 min and 19 h). Each level's bucket
/// holds 2^8 of the next finer level's; `repo/key_pages.rs` reads them.
pub(crate) const LEVEL_SHIFTS: [u32; 3] = [20, 28, 36];

/// `key_time_counts.field` of `created_at` and of `updated_at`.
pub(crate) const CREATED: i16 = 0;
pub(crate) const UPDATED: i16 = 1;

/// What a key row is counted under: its partition, status and timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Counted<'a> {
    pub partition_id: &'a str,
    pub status: &'a str,
    pub created_at: i64,
    pub updated_at: i64,
}

impl<'a> From<&'a KeyRow> for Counted<'a> {
    fn from(row: &'a KeyRow) -> Self {
        Counted {
            partition_id: &row.partition_id,
            status: &row.status,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

/// A primary key of `key_time_counts`, in its column order (the order rows
/// are written in).
type BucketKey = (i16, i16, i64, String, String);

/// One `key_time_counts` row, matched by its primary key.
type BucketRow =
    Box<dyn BoxableExpression<key_time_counts::table, MultiBackend, SqlType = diesel::sql_types::Bool>>;

/// Changes to the count rows, not yet written.
#[derive(Debug, Default)]
pub(crate) struct CountDeltas {
    totals: BTreeMap<(String, String), i64>,
    buckets: BTreeMap<BucketKey, i64>,
}

impl CountDeltas {
    /// A key row was inserted.
    pub fn inserted(&mut self, row: Counted<'_>) {
        self.add(&row, 1);
    }

    /// A key row was deleted.
    pub fn deleted(&mut self, row: Counted<'_>) {
        self.add(&row, -1);
    }

    /// A key row changed from `before` to `after` (nothing if neither its
    /// partition, status nor timestamps did).
    pub fn changed(&mut self, before: Counted<'_>, after: Counted<'_>) {
        if before != after {
            self.add(&before, -1);
            self.add(&after, 1);
        }
    }

    fn add(&mut self, row: &Counted<'_>, by: i64) {
        *self
            .totals
            .entry((row.partition_id.to_owned(), row.status.to_owned()))
            .or_default() += by;
        for (field, at) in [(CREATED, row.created_at), (UPDATED, row.updated_at)] {
            for (level, shift) in LEVEL_SHIFTS.iter().enumerate() {
                let key = (
                    field,
                    level as i16,
                    at >> shift,
                    row.partition_id.to_owned(),
                    row.status.to_owned(),
                );
                *self.buckets.entry(key).or_default() += by;
            }
        }
    }

    /// Adds another write's deltas to these.
    pub fn merge(&mut self, other: CountDeltas) {
        for (key, by) in other.totals {
            *self.totals.entry(key).or_default() += by;
        }
        for (key, by) in other.buckets {
            *self.buckets.entry(key).or_default() += by;
        }
    }

    /// Drops the deltas of a partition whose rows were deleted in this
    /// transaction (its counts went with it, by cascade).
    pub fn forget_partition(&mut self, partition_id: &str) {
        self.totals.retain(|(p, _), _| p != partition_id);
        self.buckets.retain(|(_, _, _, p, _), _| p != partition_id);
    }

    /// Writes the sums: an upsert per table of every row that changed, in
    /// primary-key order, then the deletion of bucket rows that reached zero
    /// (a table that kept them would hold a row for every second that ever
    /// had a write). `key_counts` keeps its zero rows: one per partition and
    /// status.
    pub fn write(self, conn: &mut DbConnection) -> Result<()> {
        let totals: Vec<_> = self
            .totals
            .into_iter()
            .filter(|(_, by)| *by != 0)
            .map(|((partition, status), by)| {
                (
                    key_counts::partition_id.eq(partition),
                    key_counts::status.eq(status),
                    key_counts::n.eq(by),
                )
            })
            .collect();
        let mut emptied = Vec::new();
        let buckets: Vec<_> = self
            .buckets
            .into_iter()
            .filter(|(_, by)| *by != 0)
            .map(|((field, level, bucket, partition, status), by)| {
                if by < 0 {
                    emptied.push((field, level, bucket, partition.clone(), status.clone()));
                }
                (
                    key_time_counts::field.eq(field),
                    key_time_counts::level.eq(level),
                    key_time_counts::bucket.eq(bucket),
                    key_time_counts::partition_id.eq(partition),
                    key_time_counts::status.eq(status),
                    key_time_counts::n.eq(by),
                )
            })
            .collect();
        // Chunks keep each statement under SQLite's bound-parameter limit.
        for chunk in totals.chunks(1000) {
            per_backend!(conn, |c| diesel::insert_into(key_counts::table)
                .values(chunk)
                .on_conflict((key_counts::partition_id, key_counts::status))
                .do_update()
                .set(key_counts::n.eq(key_counts::n + excluded(key_counts::n)))
                .execute(c))?;
        }
        for chunk in buckets.chunks(1000) {
            per_backend!(conn, |c| diesel::insert_into(key_time_counts::table)
                .values(chunk)
                .on_conflict((
                    key_time_counts::field,
                    key_time_counts::level,
                    key_time_counts::bucket,
                    key_time_counts::partition_id,
                    key_time_counts::status,
                ))
                .do_update()
                .set(key_time_counts::n.eq(key_time_counts::n + excluded(key_time_counts::n)))
                .execute(c))?;
        }
        for chunk in emptied.chunks(500) {
            let mut rows = chunk
                .iter()
                .map(|(field, level, bucket, partition, status)| -> BucketRow {
                    Box::new(
                        key_time_counts::field
                            .eq(*field)
                            .and(key_time_counts::level.eq(*level))
                            .and(key_time_counts::bucket.eq(*bucket))
                            .and(key_time_counts::partition_id.eq(partition.clone()))
                            .and(key_time_counts::status.eq(status.clone())),
                    )
                });
            let Some(first) = rows.next() else { continue };
            let any = rows.fold(first, |any, row| -> BucketRow { Box::new(any.or(row)) });
            diesel::delete(
                key_time_counts::table
                    .filter(key_time_counts::n.eq(0))
                    .filter(any),
            )
            .execute(conn)?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn counted(status: &'static str, created_at: i64, updated_at: i64) -> Counted<'static> {
        Counted {
            partition_id: "p",
            status,
            created_at,
            updated_at,
        }
    }

    #[test]
    fn a_row_counts_once_per_level_and_timestamp_and_changes_cancel_out() {
        let mut deltas = CountDeltas::default();
        deltas.inserted(counted("in_progress", 5 << 20, 5 << 20));
        assert_eq!(deltas.totals.len(), 1);
        assert_eq!(deltas.buckets.len(), 6);
        // The outcome of a create: in progress to AVAILABLE, updated later.
        deltas.changed(
            counted("in_progress", 5 << 20, 5 << 20),
            counted("AVAILABLE", 5 << 20, 9 << 20),
        );
        let nonzero = |m: &BTreeMap<BucketKey, i64>| m.values().filter(|n| **n != 0).count();
        assert_eq!(nonzero(&deltas.buckets), 6, "the in-progress rows net to nothing");
        assert_eq!(deltas.totals[&("p".into(), "AVAILABLE".into())], 1);
        assert_eq!(deltas.totals[&("p".into(), "in_progress".into())], 0);
        let mut unchanged = CountDeltas::default();
        unchanged.changed(counted("AVAILABLE", 1, 2), counted("AVAILABLE", 1, 2));
        assert!(unchanged.totals.is_empty() && unchanged.buckets.is_empty());
    }
}
