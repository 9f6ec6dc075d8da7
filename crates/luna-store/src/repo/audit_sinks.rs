//! Where each audit forwarding sink has got to (`audit_sinks`): the trail
//! read in order after a cursor, the cursor moved only for what was
//! delivered, and the lease that makes one forwarder a sink across instances.

use diesel::prelude::*;
use time::OffsetDateTime;

use crate::codec::micros;
use crate::db::per_backend;
use crate::error::Result;
use crate::group::Durability;
use crate::schema::audit_records;
use crate::Store;

use super::audit::{last, AuditRecord, AuditRow};

impl Store {
    /// The records after `after` in the order they were written, at most
    /// `limit` (what a forwarder sends next).
    pub fn audit_records_after(&self, after: i64, limit: i64) -> Result<Vec<AuditRecord>> {
        self.read(|conn| {
            audit_records::table
                .filter(audit_records::seq.gt(after))
                .order(audit_records::seq.asc())
                .limit(limit)
                .select(AuditRow::as_select())
                .load(conn)?
                .into_iter()
                .map(AuditRow::into_record)
                .collect()
        })
    }

    /// The trail's last sequence number (0 while it is empty).
    pub fn last_audit_seq(&self) -> Result<i64> {
        self.read(|conn| Ok(last(conn)?.map_or(0, |(seq, _)| seq)))
    }

    /// Takes, or keeps, forwarding sink `sink` for `owner` until `until`:
    /// the sequence number of the last record delivered to it, or `None`
    /// while another forwarder's lease on it runs (one forwarder a sink,
    /// whatever the number of instances on the database).
    pub fn hold_audit_sink(
        &self,
        sink: &str,
        owner: &str,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<Option<i64>> {
        use crate::schema::audit_sinks;
        self.write_with(Durability::Deferred, |conn, _| {
            per_backend!(conn, |c| diesel::insert_into(audit_sinks::table)
                .values(audit_sinks::name.eq(sink))
                .on_conflict(audit_sinks::name)
                .do_nothing()
                .execute(c))?;
            // Free, ours, or run out: a compare-and-set, so two forwarders
            // racing for it cannot both win.
            let held = diesel::update(
                audit_sinks::table.find(sink).filter(
                    audit_sinks::lease_owner
                        .is_null()
                        .or(audit_sinks::lease_owner.eq(owner))
                        .or(audit_sinks::lease_expires_at.le(micros(now))),
                ),
            )
            .set((
                audit_sinks::lease_owner.eq(owner),
                audit_sinks::lease_expires_at.eq(micros(until)),
            ))
            .execute(conn)?;
            if held == 0 {
                return Ok(None);
            }
            Ok(Some(
                audit_sinks::table
                    .find(sink)
                    .select(audit_sinks::delivered_seq)
                    .first(conn)?,
            ))
        })
    }

    /// Moves sink `sink`'s cursor on to `seq` while `owner` holds it (never
    /// back); false if it does not hold it any more. Deferred: a cursor lost
    /// to a power cut only sends records again, which a receiver drops by
    /// their `seq`.
    pub fn advance_audit_sink(&self, sink: &str, owner: &str, seq: i64) -> Result<bool> {
        use crate::schema::audit_sinks;
        self.write_with(Durability::Deferred, |conn, _| {
            let ours = audit_sinks::table
                .find(sink)
                .filter(audit_sinks::lease_owner.eq(owner));
            let moved = diesel::update(ours.filter(audit_sinks::delivered_seq.lt(seq)))
                .set(audit_sinks::delivered_seq.eq(seq))
                .execute(conn)?;
            // Not moved: already there (still ours), or no longer ours.
            Ok(moved == 1 || ours.count().get_result::<i64>(conn)? == 1)
        })
    }

    /// Every forwarding sink's cursor: (sink, last record delivered).
    pub fn audit_sink_cursors(&self) -> Result<Vec<(String, i64)>> {
        use crate::schema::audit_sinks;
        self.read(|conn| {
            Ok(audit_sinks::table
                .select((audit_sinks::name, audit_sinks::delivered_seq))
                .order(audit_sinks::name)
                .load(conn)?)
        })
    }
}
