//! Deep pages of key lists in timestamp order, found from the bucket counts
//! of migration 8 (kept by the code that writes keys, `counts.rs`), instead of walking the skipped rows.
//!
//! A list sorted by `createdAt` or `updatedAt` (or in the default order,
//! newest created first), filtered by nothing but partition and status, asks
//! for the rows at positions `skip .. skip + limit`. An OFFSET walks `skip`
//! index entries: 100,000 of them cost tens of milliseconds. Here the counts
//! of the coarsest buckets (about 19 h each) are summed in the list's order
//! until the one holding position `skip`; then its at most 256 children
//! (about 4.5 min), then theirs (about 1 s). What is left is an index seek to
//! the start of that 1-second bucket and an OFFSET of the rows before the
//! page within it. Counts and rows are read in one snapshot, so the page is
//! exactly the one an OFFSET would give.

use diesel::prelude::*;
use luna_domain::query::{Direction, KeyFilters, KeySortField, ListQuery};

use crate::counts::{CREATED, LEVEL_SHIFTS, UPDATED};
use crate::db::DbConnection;
use crate::error::Result;
use crate::schema::key_time_counts;

/// Below this `skip`, an OFFSET is cheaper than summing counts.
pub(crate) const SEEK_FROM: i64 = 1000;

/// The timestamp a list is ordered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stamp {
    Created,
    Updated,
}

impl Stamp {
    /// `key_time_counts.field`.
    fn field(self) -> i16 {
        match self {
            Stamp::Created => CREATED,
            Stamp::Updated => UPDATED,
        }
    }
}

/// A list's order when the counts can place its pages: one timestamp, either
/// way (`id` breaks ties, as in every list).
#[derive(Debug, Clone, Copy)]
pub(crate) struct TimeOrder {
    pub stamp: Stamp,
    pub direction: Direction,
}

/// True when the filters are only partition and status (or fewer): the
/// scopes the counts are kept for.
pub(crate) fn counted_scope(f: &KeyFilters) -> bool {
    KeyFilters {
        partition_id: f.partition_id,
        status: f.status,
        ..KeyFilters::default()
    } == *f
}

/// The list's order, when the counts can place a page deep in it.
pub(crate) fn time_order(query: &ListQuery<KeyFilters>) -> Option<TimeOrder> {
    if !counted_scope(&query.filters) {
        return None;
    }
    match query.sort.as_slice() {
        [] => Some(TimeOrder {
            stamp: Stamp::Created,
            direction: Direction::Descending,
        }),
        [only] => {
            let stamp = match only.field {
                KeySortField::CreatedAt => Stamp::Created,
                KeySortField::UpdatedAt => Stamp::Updated,
                KeySortField::Id
                | KeySortField::Label
                | KeySortField::Size
                | KeySortField::Status
                | KeySortField::Algorithm
                | KeySortField::Mechanism
                | KeySortField::ObjectType
                | KeySortField::PartitionId
                | KeySortField::PartitionLabel
                | KeySortField::Origin => return None,
            };
            Some(TimeOrder {
                stamp,
                direction: only.direction,
            })
        }
        _ => None,
    }
}

/// Where a page that skips `skip` rows starts, and how many keys match.
pub(crate) struct Placed {
    /// Every matching key: the sum of the coarsest buckets.
    pub total: i64,
    /// `(bound, skip_from_bound)`: every row before `bound` in the list's
    /// order (a timestamp greater than or equal to it when descending, less
    /// than it when ascending) is among the skipped, and the page is the rows
    /// from `bound` on after passing over `skip_from_bound` of them. `None`
    /// when no more than `skip` keys match.
    pub start: Option<(i64, i64)>,
}

/// Places the page that skips `skip` rows of a list in `order`.
pub(crate) fn seek(conn: &mut DbConnection, f: &KeyFilters, order: TimeOrder, skip: i64) -> Result<Placed> {
    let mut total = None;
    let mut remaining = skip;
    // The range of buckets, at the level being summed, inside the bucket
    // found at the level above; everything at the top.
    let mut range: Option<(i64, i64)> = None;
    let mut found = 0;
    for level in (0..LEVEL_SHIFTS.len()).rev() {
        let mut q = key_time_counts::table
            .select((key_time_counts::bucket, key_time_counts::n))
            .filter(key_time_counts::field.eq(order.stamp.field()))
            .filter(key_time_counts::level.eq(level as i16))
            .filter(key_time_counts::n.gt(0))
            .into_boxed();
        if let Some((low, high)) = range {
            q = q.filter(key_time_counts::bucket.between(low, high));
        }
        if let Some(v) = f.partition_id {
            q = q.filter(key_time_counts::partition_id.eq(v.to_string()));
        }
        if let Some(v) = f.status {
            q = q.filter(key_time_counts::status.eq(v.as_str()));
        }
        q = match order.direction {
            Direction::Ascending => q.order(key_time_counts::bucket.asc()),
            Direction::Descending => q.order(key_time_counts::bucket.desc()),
        };
        // Without a partition or status filter a bucket has a row per
        // (partition, status); they come together, in bucket order.
        let counts: Vec<(i64, i64)> = q.load(conn)?;
        let total = *total.get_or_insert_with(|| counts.iter().map(|&(_, n)| n).sum());
        let mut holding = None;
        for rows in counts.chunk_by(|a, b| a.0 == b.0) {
            let n: i64 = rows.iter().map(|&(_, n)| n).sum();
            if remaining < n {
                holding = Some(rows[0].0);
                break;
            }
            remaining -= n;
        }
        let Some(bucket) = holding else {
            return Ok(Placed { total, start: None });
        };
        found = bucket;
        if level > 0 {
            let bits = LEVEL_SHIFTS[level] - LEVEL_SHIFTS[level - 1];
            range = Some((bucket << bits, ((bucket + 1) << bits) - 1));
        }
    }
    let bound = match order.direction {
        Direction::Descending => (found + 1) << LEVEL_SHIFTS[0],
        Direction::Ascending => found << LEVEL_SHIFTS[0],
    };
    Ok(Placed {
        total: total.unwrap_or(0),
        start: Some((bound, remaining)),
    })
}
