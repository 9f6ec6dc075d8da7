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
//! page within it. The three levels are summed in one statement (one round
//! trip on PostgreSQL, where each was one). Counts and rows are read in one
//! snapshot, so the page is exactly the one an OFFSET would give.

use diesel::prelude::*;
use luna_domain::query::{Direction, KeyFilters, KeySortField, ListQuery};

use crate::counts::{CREATED, LEVEL_SHIFTS, UPDATED};
use crate::db::{per_backend, DbConnection};
use crate::error::Result;

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

/// Places the page that skips `skip` rows of a list in `order`: one query
/// (a round trip on PostgreSQL), summing the counts level by level in SQL.
/// Each level's counts are summed in the list's order to the bucket that
/// holds position `skip`, and the next level is read within that bucket
/// alone, so the query reads a few hundred rows however deep the page is.
pub(crate) fn seek(conn: &mut DbConnection, f: &KeyFilters, order: TimeOrder, skip: i64) -> Result<Placed> {
    #[derive(diesel::QueryableByName)]
    struct Seek {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        total: i64,
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
        bucket: Option<i64>,
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
        before: Option<i64>,
    }
    let sql = seek_sql(conn, f, order);
    let partition = f.partition_id.map(|p| p.to_string());
    let status = f.status.map(|s| s.as_str());
    let found: Seek = per_backend!(conn, |c| {
        let mut query = diesel::sql_query(&sql)
            .into_boxed()
            .bind::<diesel::sql_types::SmallInt, _>(order.stamp.field())
            .bind::<diesel::sql_types::BigInt, _>(skip);
        if let Some(p) = &partition {
            query = query.bind::<diesel::sql_types::Text, _>(p.clone());
        }
        if let Some(s) = status {
            query = query.bind::<diesel::sql_types::Text, _>(s);
        }
        query.get_result(c)?
    });
    let start = match (found.bucket, found.before) {
        (Some(bucket), Some(before)) => {
            let bound = match order.direction {
                Direction::Descending => (bucket + 1) << LEVEL_SHIFTS[0],
                Direction::Ascending => bucket << LEVEL_SHIFTS[0],
            };
            Some((bound, skip - before))
        }
        _ => None,
    };
    Ok(Placed {
        total: found.total,
        start,
    })
}

/// The one statement `seek` sends: for each level, coarsest first, the
/// counts of the buckets inside the one the level above found (all of them
/// at the top), summed in the list's order (a window), and the bucket where
/// the running sum passes `skip`. Parameters: the field, `skip`, then the
/// partition and the status when the filters name them. `SUM` is cast back
/// to BIGINT (PostgreSQL's is NUMERIC).
fn seek_sql(conn: &DbConnection, f: &KeyFilters, order: TimeOrder) -> String {
    let param = |n: usize| match conn {
        DbConnection::Sqlite(_) => format!("?{n}"),
        DbConnection::Postgres(_) => format!("${n}"),
    };
    let (field, skip) = (param(1), param(2));
    let mut next = 3;
    let mut filters = String::new();
    if f.partition_id.is_some() {
        filters.push_str(&format!(" AND k.partition_id = {}", param(next)));
        next += 1;
    }
    if f.status.is_some() {
        filters.push_str(&format!(" AND k.status = {}", param(next)));
    }
    let dir = match order.direction {
        Direction::Ascending => "ASC",
        Direction::Descending => "DESC",
    };
    let top = LEVEL_SHIFTS.len() - 1;
    let mut sql = String::from("WITH ");
    for level in (0..LEVEL_SHIFTS.len()).rev() {
        let (inside, before) = if level == top {
            (String::new(), "0".to_owned())
        } else {
            let bits = LEVEL_SHIFTS[level + 1] - LEVEL_SHIFTS[level];
            (
                format!(
                    ", f{up} WHERE k.bucket BETWEEN f{up}.bucket * {width} AND f{up}.bucket * {width} + {last} AND",
                    up = level + 1,
                    width = 1i64 << bits,
                    last = (1i64 << bits) - 1
                ),
                format!("f{}.before", level + 1),
            )
        };
        let from_above = if level == top {
            String::new()
        } else {
            format!(", f{}", level + 1)
        };
        sql.push_str(&format!(
            "l{level} AS (SELECT k.bucket, CAST(SUM(k.n) AS BIGINT) AS n FROM key_time_counts k{inside}{where_} \
             k.field = {field} AND k.level = {level} AND k.n > 0{filters} GROUP BY k.bucket), \
             r{level} AS (SELECT bucket, n, CAST(SUM(n) OVER (ORDER BY bucket {dir}) AS BIGINT) - n AS before FROM l{level}), \
             f{level} AS (SELECT r{level}.bucket, {before} + r{level}.before AS before FROM r{level}{from_above} \
             WHERE {before} + r{level}.before + r{level}.n > {skip} ORDER BY r{level}.bucket {dir} LIMIT 1), ",
            where_ = if level == top { " WHERE" } else { "" },
        ));
    }
    let top_level = top;
    sql.truncate(sql.len() - 2);
    sql.push_str(&format!(
        " SELECT (SELECT CAST(COALESCE(SUM(n), 0) AS BIGINT) FROM l{top_level}) AS total, \
         f0.bucket AS bucket, f0.before AS before FROM (SELECT 1 AS one) AS one LEFT JOIN f0 ON 1 = 1"
    ));
    sql
}
