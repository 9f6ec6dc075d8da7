//! The durable operation queue (`operations`): workers claim entries under
//! leases, and each write that follows (renewal, retry, finish, giving up)
//! holds only while the lease is as the writer last saw it, so two workers
//! never both take or finish one. It also counts the entries, by partition
//! and by kind.

use std::collections::HashMap;

use diesel::prelude::*;
use luna_domain::operation::MAX_ATTEMPTS;
use luna_domain::{Key, KeyVersion, Operation, OperationState};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::codec::micros;
use crate::db::{per_backend, DbConnection};
use crate::error::{Result, StoreError};
use crate::group::{Durability, Pending};
use crate::models::OperationRow;
use crate::repo::keys::update_if_unchanged;
use crate::schema::operations;
use crate::Store;

/// Operations a worker may take, not out of attempts and not of a partition
/// in `full_partitions`, that are in `state`, oldest first, with their ages.
/// Claims read the queued ones and the running ones whose lease ran out
/// (their worker died, or their retry is due) apart, each in the order of an
/// index and stopped at its first row: one query with an OR read every
/// queued and every running row and sorted them, inside the write
/// transaction, so that each claim cost as much as the backlog was long.
macro_rules! claimable {
    ($state:expr, $full_partitions:expr) => {
        operations::table
            .select((operations::id, operations::created_at, operations::partition_id))
            .filter(operations::state.eq($state.as_str()))
            .filter(operations::attempts.lt(MAX_ATTEMPTS as i32))
            .filter(
                operations::partition_id
                    .is_null()
                    .or(operations::partition_id.ne_all($full_partitions.clone())),
            )
            .order((operations::created_at.asc(), operations::id.asc()))
    };
}

/// Up to `most` operations a worker may take at `now`, oldest first (see
/// `claimable!`), read outside any write transaction: most of a runner's
/// looks find nothing (a create is handed to a worker as it is accepted),
/// and a look that skips a full partition reads that partition's queued
/// operations ahead of the first it may take, which must not hold the
/// write lock. The claim then takes these by their ids.
fn claim_candidates(
    conn: &mut DbConnection,
    now_us: i64,
    full_partitions: &[String],
    most: usize,
) -> Result<Vec<(String, Option<String>)>> {
    let most = i64::try_from(most).unwrap_or(i64::MAX);
    // Two index-ordered reads (queued; running with their lease or retry
    // time passed) in one statement: one round trip on PostgreSQL.
    let mut candidates: Vec<(String, i64, Option<String>)> = per_backend!(conn, |c| {
        claimable!(OperationState::Queued, full_partitions)
            .limit(most)
            .union_all(
                claimable!(OperationState::Running, full_partitions)
                    .filter(operations::lease_expires_at.le(now_us))
                    .limit(most),
            )
            .load(c)
    })?;
    candidates.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    Ok(candidates
        .into_iter()
        .take(usize::try_from(most).unwrap_or(usize::MAX))
        .map(|(id, _, partition)| (id, partition))
        .collect())
}

/// A claim's candidate, locked on PostgreSQL and read in the same statement;
/// `None` if another instance's claim holds it (skipped, not waited for) or
/// it is gone. SQLite has no row locks: this process's one writer and the
/// claim's compare-and-set make the claim atomic.
fn lock_and_load(conn: &mut DbConnection, id: &str) -> Result<Option<Operation>> {
    let DbConnection::Postgres(pg) = conn else {
        return load(conn, id);
    };
    operations::table
        .find(id)
        .select(OperationRow::as_select())
        .for_update()
        .skip_locked()
        .first(pg)
        .optional()?
        .map(OperationRow::into_domain)
        .transpose()
}

fn load(conn: &mut DbConnection, id: &str) -> Result<Option<Operation>> {
    operations::table
        .find(id)
        .select(OperationRow::as_select())
        .first(conn)
        .optional()?
        .map(OperationRow::into_domain)
        .transpose()
}

/// Counts by partition id, as read.
fn by_partition(rows: Vec<(Option<String>, i64)>) -> Result<HashMap<Uuid, i64>> {
    rows.into_iter()
        .filter_map(|(partition, n)| partition.map(|p| (p, n)))
        .map(|(partition, n)| Ok((crate::codec::uuid("operation partition_id", &partition)?, n)))
        .collect()
}

/// How many unreadable rows one claim sets aside before it gives up for this poll.
const CORRUPT_ROWS_SET_ASIDE_PER_CLAIM: usize = 16;

/// Ends an operation row that does not read back as an operation (edited by
/// hand, or written by a version that knew other states): `failed`, saying
/// why, so that it is visible and never a claim candidate again.
fn set_aside_row(conn: &mut DbConnection, id: &str, corrupt: &StoreError, now_us: i64) -> Result<()> {
    diesel::update(operations::table.find(id))
        .set((
            operations::state.eq(OperationState::Failed.as_str()),
            operations::lease_owner.eq(None::<String>),
            operations::lease_expires_at.eq(None::<i64>),
            operations::last_error.eq(format!(
                "set aside: the stored operation cannot be read ({corrupt})"
            )),
            operations::updated_at.eq(now_us),
        ))
        .execute(conn)?;
    Ok(())
}

/// How many operations of each partition a runner holds now, and how many
/// it may hold (`--token-concurrency`): a claim skips a partition that is full.
#[derive(Debug, Clone, Default)]
pub struct PartitionRoom {
    pub in_flight: HashMap<Uuid, usize>,
    pub per_partition: usize,
}

/// No bound on when a lease ends (a running operation always has one).
const ANY_LEASE: i64 = i64::MAX;

/// Writes a finished operation and its key records, in the caller's
/// transaction, only while it is running under `owner`'s lease and that
/// lease ends by `lease_ends_by` (µs; `ANY_LEASE` for a worker finishing its
/// own). One compare-and-set: whatever committed meanwhile wins. Each key
/// record is written as a compare-and-set on the version the operation read
/// (`update_if_unchanged`): a record changed under the operation is a
/// conflict, and nothing is written (the operation is then attempted again,
/// and at last given up from the record as it is).
fn finish_with_keys(
    conn: &mut DbConnection,
    op: &Operation,
    owner: &str,
    lease_ends_by: i64,
    keys_after: &[(Key, KeyVersion)],
    pending: &mut Pending,
) -> Result<bool> {
    let updated = diesel::update(operations::table.find(op.id.to_string()))
        .filter(operations::state.eq(OperationState::Running.as_str()))
        .filter(operations::lease_owner.eq(owner))
        .filter(operations::lease_expires_at.le(lease_ends_by))
        .set((
            operations::state.eq(op.state().as_str()),
            operations::lease_owner.eq(None::<String>),
            operations::lease_expires_at.eq(None::<i64>),
            operations::last_error.eq(op.last_error()),
            operations::updated_at.eq(micros(op.updated_at)),
        ))
        .execute(conn)?;
    if updated != 1 {
        return Ok(false);
    }
    for (key, read) in keys_after {
        if !update_if_unchanged(conn, read.record(), key, pending)? {
            return Err(StoreError::Conflict(format!(
                "key {} changed since operation {} read it; its outcome was not written",
                key.id, op.id
            )));
        }
    }
    Ok(true)
}

impl Store {
    /// Queues an operation on its own (jobs and keys queue theirs with their records).
    pub fn enqueue(&self, operation: &Operation) -> Result<()> {
        let row = OperationRow::from_domain(operation)?;
        self.write(|conn| {
            diesel::insert_into(operations::table)
                .values(&row)
                .execute(conn)?;
            Ok(())
        })
    }

    pub fn get_operation(&self, id: Uuid) -> Result<Option<Operation>> {
        self.read(|conn| load(conn, &id.to_string()))
    }

    /// Takes the next operation for `owner` until `now + lease`. Atomic: two
    /// workers, in one process or in two servers on one PostgreSQL database,
    /// never take the same operation (PostgreSQL skips rows another
    /// transaction has locked; the compare-and-set update guards both backends).
    pub fn claim_next_operation(
        &self,
        owner: &str,
        now: OffsetDateTime,
        lease: Duration,
    ) -> Result<Option<Operation>> {
        let room = PartitionRoom {
            in_flight: HashMap::new(),
            per_partition: usize::MAX,
        };
        Ok(self
            .claim_operations(&[owner.to_owned()], now, lease, &room)?
            .pop())
    }

    /// Takes up to `leases.len()` operations in one transaction, the oldest
    /// first, each under its own lease name until `now + lease`, skipping
    /// those of a partition that has no room left (`room`). Atomic as
    /// `claim_next_operation` is.
    pub fn claim_operations(
        &self,
        leases: &[String],
        now: OffsetDateTime,
        lease: Duration,
        room: &PartitionRoom,
    ) -> Result<Vec<Operation>> {
        let now_us = micros(now);
        let full_now: Vec<String> = room
            .in_flight
            .iter()
            .filter(|(_, n)| **n >= room.per_partition)
            .map(|(p, _)| p.to_string())
            .collect();
        // More than it may take: others' claims and unreadable rows are skipped.
        let most = leases.len() + CORRUPT_ROWS_SET_ASIDE_PER_CLAIM;
        let candidates = self.read(|conn| claim_candidates(conn, now_us, &full_now, most))?;
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        self.write(|conn| {
            let mut in_flight = room.in_flight.clone();
            let mut claimed = Vec::with_capacity(leases.len());
            let mut owners = leases.iter();
            let mut set_aside = 0;
            for (id, partition) in &candidates {
                if claimed.len() == leases.len() {
                    break;
                }
                // A partition filled by this claim's earlier takes: not read.
                let partition_full = partition
                    .as_deref()
                    .and_then(|p| Uuid::parse_str(p).ok())
                    .is_some_and(|p| in_flight.get(&p).is_some_and(|n| *n >= room.per_partition));
                if partition_full {
                    continue;
                }
                // A row that does not restore is set aside, not retried: left in
                // place it would be the oldest candidate for ever and stop the queue.
                let mut op = match lock_and_load(conn, id) {
                    Ok(Some(op)) => op,
                    Ok(None) => continue,
                    Err(corrupt @ StoreError::Corrupt { .. }) => {
                        if set_aside < CORRUPT_ROWS_SET_ASIDE_PER_CLAIM {
                            set_aside += 1;
                            set_aside_row(conn, id, &corrupt, now_us)?;
                        }
                        continue;
                    }
                    Err(other) => return Err(other),
                };
                // Another claim or a finish may have come since it was read,
                // and a partition may be full now.
                let full = op
                    .partition_id
                    .is_some_and(|p| in_flight.get(&p).is_some_and(|n| *n >= room.per_partition));
                if full || op.attempts() >= MAX_ATTEMPTS || !op.is_claimable(now) {
                    continue;
                }
                let Some(owner) = owners.next() else { break };
                let before = (op.state(), op.attempts());
                op.claim(owner, now, now + lease)?;
                let updated = diesel::update(operations::table.find(op.id.to_string()))
                    .filter(operations::state.eq(before.0.as_str()))
                    .filter(operations::attempts.eq(before.1 as i32))
                    .set((
                        operations::state.eq(op.state().as_str()),
                        operations::attempts.eq(op.attempts() as i32),
                        operations::lease_owner.eq(op.lease_owner()),
                        operations::lease_expires_at.eq(op.lease_expires_at().map(micros)),
                        operations::updated_at.eq(now_us),
                    ))
                    .execute(conn)?;
                if updated != 1 {
                    continue;
                }
                if let Some(partition) = op.partition_id {
                    *in_flight.entry(partition).or_default() += 1;
                }
                claimed.push(op);
            }
            Ok(claimed)
        })
    }

    /// Extends a running operation's lease from `held` (the end `owner` last
    /// set) to `until`; false if the lease changed meanwhile. A compare-and-set
    /// on the lease's end, not only its owner: the worker itself may have put
    /// the operation back for a retry (`retry_operation_later`), and a renewal
    /// that lands after that must not undo the retry's delay. Not synced on
    /// its own: one lost to a power cut only lets the lease run out sooner.
    pub fn renew_lease(
        &self,
        id: Uuid,
        owner: &str,
        held: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<bool> {
        self.write_with(Durability::Deferred, |conn, _| {
            let updated = diesel::update(operations::table.find(id.to_string()))
                .filter(operations::state.eq(OperationState::Running.as_str()))
                .filter(operations::lease_owner.eq(owner))
                .filter(operations::lease_expires_at.eq(micros(held)))
                .set(operations::lease_expires_at.eq(micros(until)))
                .execute(conn)?;
            Ok(updated == 1)
        })
    }

    /// Puts back an operation whose attempt failed in a way that may pass
    /// (`Operation::retry_later`, `pass_on` or `park` applied), only if
    /// `owner` still holds it: its lease runs out at the retry time, when any
    /// worker may take it (a parked one's lease is the token's). Not synced
    /// on its own: lost to a power cut, the attempt's lease runs out and the
    /// operation is attempted again.
    pub fn retry_operation_later(&self, op: &Operation, owner: &str) -> Result<bool> {
        self.write_with(Durability::Deferred, |conn, _| {
            let updated = diesel::update(operations::table.find(op.id.to_string()))
                .filter(operations::state.eq(OperationState::Running.as_str()))
                .filter(operations::lease_owner.eq(owner))
                .set((
                    operations::lease_owner.eq(op.lease_owner()),
                    operations::attempts.eq(op.attempts() as i32),
                    operations::lease_expires_at.eq(op.lease_expires_at().map(micros)),
                    operations::last_error.eq(op.last_error()),
                    operations::updated_at.eq(micros(op.updated_at)),
                ))
                .execute(conn)?;
            Ok(updated == 1)
        })
    }

    /// Ends the parking of every operation waiting for `token` (see
    /// `Operation::park`): they become claimable at `now`. Returns how many.
    pub fn release_parked(&self, token: &str, now: OffsetDateTime) -> Result<usize> {
        let now_us = micros(now);
        self.write(|conn| {
            Ok(diesel::update(operations::table)
                .filter(operations::state.eq(OperationState::Running.as_str()))
                .filter(operations::lease_owner.eq(Operation::parked_on(token)))
                .filter(operations::lease_expires_at.gt(now_us))
                .set(operations::lease_expires_at.eq(now_us))
                .execute(conn)?)
        })
    }

    /// Ends an operation and writes the key records it produced and its
    /// audit record, in one transaction, only if `owner` still holds the
    /// lease. False means another worker took the operation over and nothing
    /// was written.
    pub fn finish_operation(
        &self,
        op: &Operation,
        owner: &str,
        changed_keys: &[(Key, KeyVersion)],
        audit: &crate::AuditEntry,
    ) -> Result<bool> {
        // Not synced on its own: after a power cut that loses it, the
        // operation is attempted again once its lease has run out, and finds
        // what the token made by `CKA_ID` (docs/reliability.md).
        self.write_with(Durability::Deferred, |conn, pending| {
            let finished = finish_with_keys(conn, op, owner, ANY_LEASE, changed_keys, pending)?;
            if finished {
                pending.audit.push(audit.clone());
            }
            Ok(finished)
        })
    }

    /// Operations whose worker died too often (every attempt spent, the
    /// last lease run out): they are to end `failed` instead of running again.
    pub fn exhausted_operations(&self, now: OffsetDateTime) -> Result<Vec<Operation>> {
        let now_us = micros(now);
        self.read(|conn| {
            operations::table
                .filter(operations::state.eq(OperationState::Running.as_str()))
                .filter(operations::attempts.ge(MAX_ATTEMPTS as i32))
                .filter(operations::lease_expires_at.le(now_us))
                .select(OperationRow::as_select())
                .load(conn)?
                .into_iter()
                .map(OperationRow::into_domain)
                .collect()
        })
    }

    /// Ends an exhausted operation (`given_up`: `Operation::given_up` of what
    /// `exhausted_operations` read, whose lease `owner` held) and writes its
    /// keys in their failed state, in one transaction, only if its lease is
    /// still run out (no worker renewed it meanwhile), with its outcome's
    /// `audit` record. Returns whether it was written. A crash can no longer
    /// fall between the two.
    pub fn give_up_operation(
        &self,
        given_up: &Operation,
        owner: &str,
        now: OffsetDateTime,
        failed_keys: &[(Key, KeyVersion)],
        audit: &crate::AuditEntry,
    ) -> Result<bool> {
        // Still the dead worker's, its lease still run out: a renewal
        // committed meanwhile wins.
        self.write_with(Durability::Deferred, |conn, pending| {
            let given = finish_with_keys(conn, given_up, owner, micros(now), failed_keys, pending)?;
            if given {
                pending.audit.push(audit.clone());
            }
            Ok(given)
        })
    }

    /// The key operations not finished (queued, running, parked), by
    /// partition: the queue each partition's tokens have before them.
    /// Read through the claim index (state, then creation), one entry per
    /// operation waiting.
    pub fn queued_key_operations(&self) -> Result<HashMap<Uuid, i64>> {
        let unfinished = [OperationState::Queued.as_str(), OperationState::Running.as_str()];
        self.read(|conn| {
            let rows: Vec<(Option<String>, i64)> = operations::table
                .filter(operations::state.eq_any(unfinished))
                .filter(operations::partition_id.is_not_null())
                .group_by(operations::partition_id)
                .select((operations::partition_id, diesel::dsl::count_star()))
                .load(conn)?;
            by_partition(rows)
        })
    }

    /// The key operations queued at `since` or later, whatever became of
    /// them since, by partition (with `queued_key_operations` read twice,
    /// how many left the queue in between).
    pub fn key_operations_queued_since(&self, since: OffsetDateTime) -> Result<HashMap<Uuid, i64>> {
        let states = [
            OperationState::Queued,
            OperationState::Running,
            OperationState::Succeeded,
            OperationState::Failed,
        ]
        .map(OperationState::as_str);
        let since = micros(since);
        self.read(|conn| {
            let rows: Vec<(Option<String>, i64)> = operations::table
                .filter(operations::state.eq_any(states))
                .filter(operations::created_at.ge(since))
                .filter(operations::partition_id.is_not_null())
                .group_by(operations::partition_id)
                .select((operations::partition_id, diesel::dsl::count_star()))
                .load(conn)?;
            by_partition(rows)
        })
    }

    /// How many operations there are, by kind and state (for metrics).
    pub fn operation_counts_by_kind(&self) -> Result<Vec<(String, OperationState, i64)>> {
        self.read(|conn| {
            let counts: Vec<(String, String, i64)> = operations::table
                .group_by((operations::kind, operations::state))
                .select((operations::kind, operations::state, diesel::dsl::count_star()))
                .load(conn)?;
            counts
                .into_iter()
                .map(|(kind, state, n)| Ok((kind, crate::codec::wire("operation state", &state)?, n)))
                .collect()
        })
    }

    /// How many operations wait or run, by state (for metrics and tests).
    pub fn operation_counts(&self) -> Result<Vec<(OperationState, i64)>> {
        self.read(|conn| {
            let counts: Vec<(String, i64)> = operations::table
                .group_by(operations::state)
                .select((operations::state, diesel::dsl::count_star()))
                .load(conn)?;
            counts
                .into_iter()
                .map(|(state, n)| Ok((crate::codec::wire("operation state", &state)?, n)))
                .collect()
        })
    }
}
