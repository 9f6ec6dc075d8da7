//! Connections (`connections`, `connection_members`): their members, sealed
//! PIN and last test. A change of a connection's members is refused while
//! its partition has work in flight.

use diesel::prelude::*;
use luna_domain::query::{ConnectionFilters, ConnectionSortField, Direction, ListQuery};
use luna_domain::{Connection, Member};
use secrecy::SecretString;
use uuid::Uuid;

use crate::codec::micros;
use crate::db::{per_backend, DbConnection, MultiBackend};
use crate::error::{Result, StoreError};
use crate::models::{ConnectionRow, MemberRow};
use crate::repo::{conflict_on_unique, order_by};
use crate::schema::{connection_members, connections, partitions};
use crate::{AuditEntry, Durability, Listed, Store};

use crate::repo::partitions::{require_partition_idle, with_members};

fn connections_from(conn: &mut DbConnection, rows: Vec<ConnectionRow>) -> Result<Vec<Connection>> {
    // A connection row holds its own remap policy.
    with_members(conn, rows, |r| &r.id, |row, _, members| row.into_domain(members))
}

fn connections_filtered(f: &ConnectionFilters) -> connections::BoxedQuery<'static, MultiBackend> {
    let mut q = connections::table.into_boxed();
    if let Some(v) = &f.name {
        q = q.filter(connections::name.eq(v.clone()));
    }
    if let Some(v) = f.is_ha_enabled {
        q = q.filter(connections::is_ha_enabled.eq(v));
    }
    if let Some(v) = f.last_connection_ok {
        q = q.filter(connections::last_connection_ok.eq(v));
    }
    q
}

/// What a connection's PATCH changes besides its PIN; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct ConnectionChange<'a> {
    pub description: Option<&'a str>,
    pub products: Option<&'a [String]>,
    /// JSON text.
    pub meta: Option<&'a str>,
    /// A test the change made (a new PIN logging in to every member), kept
    /// as the connection's last one in the same transaction.
    pub check: Option<&'a luna_domain::ConnectionCheck>,
}

/// A connection's row as a PATCH changes it (`None`: left as it is).
#[derive(AsChangeset)]
#[diesel(table_name = connections)]
struct ConnectionUpdate<'a> {
    description: Option<&'a str>,
    products: Option<String>,
    meta: Option<&'a str>,
    pin_ciphertext: Option<Vec<u8>>,
    updated_at: i64,
}

/// Refuses a change of a connection's members while the partition made of
/// it has key operations queued or running, or a job running: their work
/// was planned on the members as they were.
fn require_connection_idle(conn: &mut DbConnection, connection_id: &str) -> Result<()> {
    let partition: Option<String> = partitions::table
        .filter(partitions::connection_id.eq(connection_id))
        .select(partitions::id)
        .first(conn)
        .optional()?;
    match partition {
        Some(partition) => require_partition_idle(conn, &partition),
        None => Ok(()),
    }
}

/// Keeps `check` as connection `id`'s last test, unless a later test's
/// outcome is there already (tests that end out of order: the latest one's
/// stays); false if it is not kept.
fn keep_check(conn: &mut DbConnection, id: &str, check: &luna_domain::ConnectionCheck) -> Result<bool> {
    let at = micros(check.at);
    let updated = diesel::update(connections::table.find(id))
        .filter(
            connections::last_connection_at
                .is_null()
                .or(connections::last_connection_at.le(at)),
        )
        .set((
            connections::last_connection_ok.eq(Some(check.ok)),
            connections::last_connection_at.eq(Some(at)),
            connections::last_connection_error.eq(check.error.as_deref()),
        ))
        .execute(conn)?;
    Ok(updated == 1)
}

impl Store {
    /// Stores a connection and its sealed PIN, and `audit` about it; with
    /// `request` (a create under an `Idempotency-Key`), records in the same
    /// transaction that it made it. A taken name is a conflict.
    pub fn insert_connection(
        &self,
        connection: &Connection,
        pin: &SecretString,
        request: Option<&luna_domain::idempotency::IdempotentRequest>,
        audit: &AuditEntry,
    ) -> Result<()> {
        let id = connection.id.to_string();
        let row = ConnectionRow {
            id: id.clone(),
            name: connection.name.clone(),
            description: connection.description.clone(),
            is_ha_enabled: connection.ha_enabled,
            remap_rsa_mechanisms: connection.remap_rsa_mechanisms,
            pin_ciphertext: self.pins.seal(pin, &id)?,
            created_at: micros(connection.created_at),
            updated_at: micros(connection.updated_at),
            server_id: connection.server_id.map(|s| s.to_string()),
            last_connection_ok: None,
            last_connection_at: None,
            last_connection_error: None,
            products: connection.products.join(","),
            meta: connection.meta.clone(),
        };
        let members: Vec<MemberRow> = connection
            .members
            .iter()
            .enumerate()
            .map(|(position, m)| MemberRow {
                connection_id: id.clone(),
                position: position as i32,
                hostname: m.hostname.clone(),
                partition_label: m.partition_label.clone(),
                serial_number: m.serial_number.clone(),
            })
            .collect();
        self.write_with(Durability::Synced, |conn, pending| {
            if let Some(request) = request {
                crate::repo::idempotency::remember(conn, request, connection.id)?;
            }
            if let Some(server) = &row.server_id {
                crate::repo::servers::require_server(conn, server)?;
            }
            diesel::insert_into(connections::table)
                .values(&row)
                .execute(conn)
                .map_err(|error| match error {
                    diesel::result::Error::DatabaseError(
                        diesel::result::DatabaseErrorKind::ForeignKeyViolation,
                        _,
                    ) => {
                        StoreError::Conflict("the HSM server named by server_id was deleted meanwhile".into())
                    }
                    other => {
                        conflict_on_unique(|| format!("a connection named {:?} already exists", row.name))(
                            other,
                        )
                    }
                })?;
            per_backend!(conn, |c| diesel::insert_into(connection_members::table)
                .values(&members)
                .execute(c))?;
            pending.audit.push(audit.about(&id));
            Ok(())
        })
    }

    pub fn get_connection(&self, id: Uuid) -> Result<Option<Connection>> {
        self.read(|conn| {
            let row = connections::table
                .find(id.to_string())
                .select(ConnectionRow::as_select())
                .first(conn)
                .optional()?;
            Ok(connections_from(conn, row.into_iter().collect())?.pop())
        })
    }

    pub fn connection_by_name(&self, name: &str) -> Result<Option<Connection>> {
        self.read(|conn| {
            let row = connections::table
                .filter(connections::name.eq(name))
                .select(ConnectionRow::as_select())
                .first(conn)
                .optional()?;
            Ok(connections_from(conn, row.into_iter().collect())?.pop())
        })
    }

    /// The connection's crypto-officer PIN, unsealed.
    pub fn connection_pin(&self, id: Uuid) -> Result<Option<SecretString>> {
        let id = id.to_string();
        let sealed: Option<Vec<u8>> = self.read(|conn| {
            Ok(connections::table
                .find(&id)
                .select(connections::pin_ciphertext)
                .first(conn)
                .optional()?)
        })?;
        sealed.map(|blob| self.pins.open(&blob, &id)).transpose()
    }

    /// Whether this store's PIN key opens the PINs the database holds (one is
    /// tried). An instance started with another data directory's `pin.key`
    /// could claim every operation and fail each one: it is refused at start
    /// instead (`StoreError::PinDecrypt`).
    pub fn check_pin_key(&self) -> Result<()> {
        let sealed: Option<(String, Vec<u8>)> = self.read(|conn| {
            Ok(connections::table
                .select((connections::id, connections::pin_ciphertext))
                .first(conn)
                .optional()?)
        })?;
        match sealed {
            Some((id, blob)) => self.pins.open(&blob, &id).map(drop),
            None => Ok(()),
        }
    }

    pub fn list_connections(&self, query: &ListQuery<ConnectionFilters>) -> Result<Listed<Connection>> {
        self.read(|conn| {
            let total: i64 = connections_filtered(&query.filters).count().get_result(conn)?;
            let mut q = connections_filtered(&query.filters);
            if query.sort.is_empty() {
                q = q.order_by((connections::created_at.desc(), connections::id.desc()));
            } else {
                for key in &query.sort {
                    q = match key.field {
                        ConnectionSortField::CreatedAt => {
                            order_by!(q, key.direction, connections::created_at)
                        }
                        ConnectionSortField::UpdatedAt => {
                            order_by!(q, key.direction, connections::updated_at)
                        }
                        ConnectionSortField::Name => order_by!(q, key.direction, connections::name),
                    };
                }
                q = order_by!(q, Direction::Ascending, connections::id);
            }
            let rows: Vec<ConnectionRow> = q
                .offset(query.page.skip)
                .limit(query.page.limit)
                .select(ConnectionRow::as_select())
                .load(conn)?;
            let items = connections_from(conn, rows)?;
            Ok(Listed { total, items })
        })
    }

    /// Changes a connection's description and/or PIN (sealed again, bound to
    /// its id) at `now`, and writes `audit`; false if it is gone.
    pub fn update_connection(
        &self,
        id: Uuid,
        change: &ConnectionChange<'_>,
        pin: Option<&SecretString>,
        now: time::OffsetDateTime,
        audit: &AuditEntry,
    ) -> Result<bool> {
        let key = id.to_string();
        let update = ConnectionUpdate {
            description: change.description,
            products: change.products.map(|p| p.join(",")),
            meta: change.meta,
            pin_ciphertext: pin.map(|p| self.pins.seal(p, &key)).transpose()?,
            updated_at: micros(now),
        };
        // One statement: the fields left `None` are not set.
        self.write_with(Durability::Synced, |conn, pending| {
            let updated = diesel::update(connections::table.find(&key))
                .set(&update)
                .execute(conn)?
                == 1;
            if updated {
                if let Some(check) = change.check {
                    keep_check(conn, &key, check)?;
                }
                pending.audit.push(audit.clone());
            }
            Ok(updated)
        })
    }

    /// Adds a member (an HA partition) to a connection at `now`, and writes
    /// `audit`; false if the connection is gone. A conflict while its
    /// partition has work in flight, or when a member has that serial number
    /// already.
    pub fn add_connection_member(
        &self,
        id: Uuid,
        member: &Member,
        now: time::OffsetDateTime,
        audit: &AuditEntry,
    ) -> Result<bool> {
        let key = id.to_string();
        self.write_with(Durability::Synced, |conn, pending| {
            let exists: i64 = connections::table.find(&key).count().get_result(conn)?;
            if exists == 0 {
                return Ok(false);
            }
            require_connection_idle(conn, &key)?;
            let members: Vec<MemberRow> = connection_members::table
                .filter(connection_members::connection_id.eq(&key))
                .select(MemberRow::as_select())
                .load(conn)?;
            if members.iter().any(|m| m.serial_number == member.serial_number) {
                return Err(StoreError::Conflict(format!(
                    "the connection has a partition with serial number {} already",
                    member.serial_number
                )));
            }
            let position = members.iter().map(|m| m.position).max().map_or(0, |p| p + 1);
            diesel::insert_into(connection_members::table)
                .values(&MemberRow {
                    connection_id: key.clone(),
                    position,
                    hostname: member.hostname.clone(),
                    partition_label: member.partition_label.clone(),
                    serial_number: member.serial_number.clone(),
                })
                .execute(conn)?;
            diesel::update(connections::table.find(&key))
                .set(connections::updated_at.eq(micros(now)))
                .execute(conn)?;
            pending.audit.push(audit.clone());
            Ok(true)
        })
    }

    /// Removes the member with `serial` from a connection at `now`, and
    /// writes `audit`: `None` if the connection is gone, `Some(false)` if it
    /// has no such member. A conflict while its partition has work in
    /// flight, or for its last member.
    pub fn remove_connection_member(
        &self,
        id: Uuid,
        serial: &str,
        now: time::OffsetDateTime,
        audit: &AuditEntry,
    ) -> Result<Option<bool>> {
        let key = id.to_string();
        self.write_with(Durability::Synced, |conn, pending| {
            let exists: i64 = connections::table.find(&key).count().get_result(conn)?;
            if exists == 0 {
                return Ok(None);
            }
            let members: i64 = connection_members::table
                .filter(connection_members::connection_id.eq(&key))
                .count()
                .get_result(conn)?;
            let target = connection_members::table
                .filter(connection_members::connection_id.eq(&key))
                .filter(connection_members::serial_number.eq(serial));
            let found: i64 = target.count().get_result(conn)?;
            if found == 0 {
                return Ok(Some(false));
            }
            if members <= 1 {
                return Err(StoreError::Conflict(
                    "a connection keeps at least one partition; delete the connection instead".into(),
                ));
            }
            require_connection_idle(conn, &key)?;
            diesel::delete(target).execute(conn)?;
            diesel::update(connections::table.find(&key))
                .set(connections::updated_at.eq(micros(now)))
                .execute(conn)?;
            pending.audit.push(audit.clone());
            Ok(Some(true))
        })
    }

    /// Records how a test of the connection ended, unless a later test's
    /// outcome is there already; false if it is gone (or a later one is).
    /// `audit`, for a test a user asked for, is written with it (the service's
    /// own checks are not audited: they change what is known, not what is).
    pub fn record_connection_check(
        &self,
        id: Uuid,
        check: &luna_domain::ConnectionCheck,
        audit: Option<&AuditEntry>,
    ) -> Result<bool> {
        let id = id.to_string();
        self.write_with(Durability::Synced, |conn, pending| {
            let kept = keep_check(conn, &id, check)?;
            if kept {
                pending.audit.extend(audit.cloned());
            }
            Ok(kept)
        })
    }

    /// Deletes a connection, and writes `audit`; a conflict while a
    /// partition uses it.
    pub fn delete_connection(&self, id: Uuid, audit: &AuditEntry) -> Result<bool> {
        let id = id.to_string();
        self.write_with(Durability::Synced, |conn, pending| {
            let used: i64 = partitions::table
                .filter(partitions::connection_id.eq(&id))
                .count()
                .get_result(conn)?;
            if used > 0 {
                return Err(StoreError::Conflict(
                    "the connection is used by a partition; delete the partition first".into(),
                ));
            }
            let deleted = diesel::delete(connections::table.find(&id)).execute(conn)? == 1;
            if deleted {
                pending.audit.push(audit.clone());
            }
            Ok(deleted)
        })
    }
}
