//! The partitions registered from connections (`partitions`), and what
//! connections and partitions share: reading a record with its members, and
//! refusing a change under a partition's feet while it has work in flight.

use std::collections::HashMap;

use diesel::prelude::*;
use luna_domain::query::{Direction, ListQuery, PartitionFilters, PartitionSortField};
use luna_domain::{Member, Partition};
use uuid::Uuid;

use crate::db::{DbConnection, MultiBackend};
use crate::error::{Result, StoreError};
use crate::models::{MemberRow, PartitionRow};
use crate::repo::{conflict_on_unique, order_by};
use crate::schema::{connection_members, connections, operations, partitions, running_jobs};
use crate::{AuditEntry, Durability, Listed, Store};

/// The members of these connections, each list in position order, and
/// each connection's remap policy, read in one query: a page of connections
/// or partitions costs two queries, not one per row.
pub(super) fn members_of(
    conn: &mut DbConnection,
    connection_ids: &[&str],
) -> Result<HashMap<String, (bool, Vec<Member>)>> {
    let mut members: HashMap<String, (bool, Vec<Member>)> = HashMap::new();
    if connection_ids.is_empty() {
        return Ok(members);
    }
    let rows: Vec<(MemberRow, bool)> = connection_members::table
        .inner_join(connections::table)
        .filter(connection_members::connection_id.eq_any(connection_ids))
        .order((connection_members::connection_id, connection_members::position))
        .select((MemberRow::as_select(), connections::remap_rsa_mechanisms))
        .load(conn)?;
    for (row, remap) in rows {
        let (_, of_connection) = members
            .entry(row.connection_id.clone())
            .or_insert_with(|| (remap, Vec::new()));
        of_connection.push(row.into_domain());
    }
    Ok(members)
}

/// Domain values from rows that each name a connection, given that
/// connection's remap policy and members. Connection ids are unique among
/// connections, and a connection backs at most one partition, so each
/// member list is taken once.
pub(super) fn with_members<R, T>(
    conn: &mut DbConnection,
    rows: Vec<R>,
    connection_id: fn(&R) -> &str,
    build: fn(R, bool, Vec<Member>) -> Result<T>,
) -> Result<Vec<T>> {
    let ids: Vec<&str> = rows.iter().map(connection_id).collect();
    let mut members = members_of(conn, &ids)?;
    rows.into_iter()
        .map(|row| {
            let (remap, of_row) = members.remove(connection_id(&row)).unwrap_or_default();
            build(row, remap, of_row)
        })
        .collect()
}

fn partitions_from(conn: &mut DbConnection, rows: Vec<PartitionRow>) -> Result<Vec<Partition>> {
    with_members(conn, rows, |r| &r.connection_id, PartitionRow::into_domain)
}

fn partitions_filtered(f: &PartitionFilters) -> partitions::BoxedQuery<'static, MultiBackend> {
    let mut q = partitions::table.into_boxed();
    if let Some(v) = &f.partition_label {
        q = q.filter(partitions::partition_label.eq(v.clone()));
    }
    if let Some(v) = f.ha_enabled {
        q = q.filter(partitions::ha_enabled.eq(v));
    }
    q
}

/// Refuses a change under a partition's feet (its members, or its
/// forgetting) while it has key operations queued or running, or a job running.
pub(super) fn require_partition_idle(conn: &mut DbConnection, partition: &str) -> Result<()> {
    use luna_domain::OperationState;
    let busy: i64 = operations::table
        .filter(operations::partition_id.eq(partition))
        .filter(operations::state.eq_any([OperationState::Queued.as_str(), OperationState::Running.as_str()]))
        .count()
        .get_result(conn)?;
    if busy > 0 {
        return Err(StoreError::Conflict(format!(
            "the partition has {busy} key operation(s) in progress; try again once they have ended"
        )));
    }
    let jobs: i64 = running_jobs::table
        .filter(running_jobs::partition_id.eq(partition))
        .count()
        .get_result(conn)?;
    if jobs > 0 {
        return Err(StoreError::Conflict(
            "a refresh or synchronize job runs on the partition; try again once it has ended (or cancel it)"
                .into(),
        ));
    }
    Ok(())
}

impl Store {
    /// Registers a connection's tokens as a partition, and writes `audit`
    /// about it; one partition per connection.
    pub fn insert_partition(&self, partition: &Partition, audit: &AuditEntry) -> Result<()> {
        let row = PartitionRow::from_domain(partition);
        self.write_with(Durability::Synced, |conn, pending| {
            diesel::insert_into(partitions::table)
                .values(&row)
                .execute(conn)
                .map_err(conflict_on_unique(|| {
                    "the connection is already registered as a partition".into()
                }))?;
            pending.audit.push(audit.about(&row.id));
            Ok(())
        })
    }

    /// One partition, with its connection's remap policy and members, in
    /// one query (every create reads its partition).
    pub fn get_partition(&self, id: Uuid) -> Result<Option<Partition>> {
        self.read(|conn| {
            let rows: Vec<(PartitionRow, bool, MemberRow)> = partitions::table
                .inner_join(connections::table.inner_join(connection_members::table))
                .filter(partitions::id.eq(id.to_string()))
                .order(connection_members::position)
                .select((
                    PartitionRow::as_select(),
                    connections::remap_rsa_mechanisms,
                    MemberRow::as_select(),
                ))
                .load(conn)?;
            let mut rows = rows.into_iter();
            let Some((row, remap, first)) = rows.next() else {
                return Ok(None);
            };
            let members = std::iter::once(first)
                .chain(rows.map(|(_, _, member)| member))
                .map(MemberRow::into_domain)
                .collect();
            row.into_domain(remap, members).map(Some)
        })
    }

    /// Every partition (for jobs with `synchronize_all`), oldest first.
    pub fn all_partitions(&self) -> Result<Vec<Partition>> {
        self.read(|conn| {
            let rows: Vec<PartitionRow> = partitions::table
                .order((partitions::created_at.asc(), partitions::id.asc()))
                .select(PartitionRow::as_select())
                .load(conn)?;
            partitions_from(conn, rows)
        })
    }

    pub fn list_partitions(&self, query: &ListQuery<PartitionFilters>) -> Result<Listed<Partition>> {
        self.read(|conn| {
            let total: i64 = partitions_filtered(&query.filters).count().get_result(conn)?;
            let mut q = partitions_filtered(&query.filters);
            if query.sort.is_empty() {
                q = q.order_by((partitions::created_at.desc(), partitions::id.desc()));
            } else {
                for key in &query.sort {
                    q = match key.field {
                        PartitionSortField::CreatedAt => order_by!(q, key.direction, partitions::created_at),
                        PartitionSortField::UpdatedAt => order_by!(q, key.direction, partitions::updated_at),
                        PartitionSortField::PartitionLabel => {
                            order_by!(q, key.direction, partitions::partition_label)
                        }
                    };
                }
                q = order_by!(q, Direction::Ascending, partitions::id);
            }
            let rows: Vec<PartitionRow> = q
                .offset(query.page.skip)
                .limit(query.page.limit)
                .select(PartitionRow::as_select())
                .load(conn)?;
            let items = partitions_from(conn, rows)?;
            Ok(Listed { total, items })
        })
    }

    /// Forgets a partition and its key records (the tokens keep their
    /// objects), and writes `audit`; a conflict while it has work in flight,
    /// whose outcome would otherwise make objects on a token that no record
    /// names.
    pub fn forget_partition(&self, id: Uuid, audit: &AuditEntry) -> Result<bool> {
        let key = id.to_string();
        self.write_with(Durability::Synced, |conn, pending| {
            require_partition_idle(conn, &key)?;
            // Its keys and their counts go by cascade; the counts this
            // transaction's earlier writes changed are not written back.
            pending.forgotten_partitions.push(key.clone());
            let forgotten = diesel::delete(partitions::table.find(&key)).execute(conn)? == 1;
            if forgotten {
                pending.audit.push(audit.clone());
            }
            Ok(forgotten)
        })
    }
}
