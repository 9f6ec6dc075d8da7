//! The JSON bodies, with the reference's field names and types. Only this
//! module knows how a domain record looks on the wire.

use luna_runner::QueueState;
use std::collections::BTreeMap;

use luna_domain::{Connection, Key, Mechanism, Member, Partition};
use luna_pkcs11::{Reachability, TokenInfo};
use luna_store::{AuditRecord, StoredUser};
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

/// The CipherTrust identity fields every resource carries.
#[derive(Debug, Clone)]
pub struct Tenancy {
    pub account: String,
    pub application: String,
    pub dev_account: String,
}

impl Default for Tenancy {
    /// The reference's values.
    fn default() -> Self {
        Tenancy {
            account: "kylo:kylo:admin:accounts:kylo".into(),
            application: "ncryptify:gemalto:admin:apps:kylo".into(),
            dev_account: "ncryptify:gemalto:admin:accounts:gemalto".into(),
        }
    }
}

/// RFC 3339 in UTC with `Z`, and as many fractional digits as the instant
/// needs (trailing zeros dropped): the reference's own spelling, as in
/// `"2020-12-14T11:00:22.54049Z"`. Only a year before 0 (a corrupt record)
/// cannot be written so; it is shown as `time` writes it rather than hidden.
pub fn timestamp(at: OffsetDateTime) -> String {
    let utc = at.to_offset(time::UtcOffset::UTC);
    utc.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| utc.to_string())
}

/// An instant of this process's clock (not a stored one), as `timestamp`
/// writes stored instants: to the microsecond, as the database keeps them.
pub fn wall_clock(at: std::time::SystemTime) -> String {
    let at = OffsetDateTime::from(at);
    let micros = at.nanosecond() / 1_000 * 1_000;
    timestamp(at.replace_nanosecond(micros).unwrap_or(at))
}

/// The fields every CipherTrust resource body opens with.
#[derive(Debug, Serialize, ToSchema)]
pub struct Resource {
    pub id: String,
    pub uri: String,
    pub account: String,
    pub application: String,
    #[serde(rename = "devAccount")]
    pub dev_account: String,
    #[serde(rename = "createdAt")]
    pub created_at: String,
    #[serde(rename = "updatedAt")]
    pub updated_at: String,
}

impl Resource {
    /// `uri` is `kylo:kylo:cckm:<kind>:<id>`.
    fn new(
        kind: &str,
        id: Uuid,
        created_at: OffsetDateTime,
        updated_at: OffsetDateTime,
        tenancy: &Tenancy,
    ) -> Resource {
        Resource {
            id: id.to_string(),
            uri: format!("kylo:kylo:cckm:{kind}:{id}"),
            account: tenancy.account.clone(),
            application: tenancy.application.clone(),
            dev_account: tenancy.dev_account.clone(),
            created_at: timestamp(created_at),
            updated_at: timestamp(updated_at),
        }
    }
}

mod accounts;
mod health;
mod jobs;
mod keys;
mod keystores;
mod partitions;
mod schedules;
mod servers;
mod xks;

pub use accounts::*;
pub use health::*;
pub use jobs::*;
pub use keys::*;
pub use keystores::*;
pub use partitions::*;
pub use schedules::*;
pub use servers::*;
pub use xks::*;

/// The contract's list envelope.
#[derive(Debug, Serialize, ToSchema)]
pub struct ListView<T> {
    pub skip: i64,
    pub limit: i64,
    pub total: i64,
    pub resources: Vec<T>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod timestamp_tests {
    use time::{Date, Month, UtcOffset};

    use super::timestamp;

    #[test]
    fn timestamps_are_spelled_as_the_reference_spells_them() {
        let day = |d: u8| Date::from_calendar_date(2020, Month::December, d).unwrap();
        // Strings copied from the reference's examples.
        let cases = [
            (
                day(14).with_hms_micro(11, 0, 22, 540_490).unwrap(),
                "2020-12-14T11:00:22.54049Z",
            ),
            (
                day(14).with_hms_micro(10, 55, 12, 86_341).unwrap(),
                "2020-12-14T10:55:12.086341Z",
            ),
            (
                day(14).with_hms_nano(10, 55, 12, 86_341_444).unwrap(),
                "2020-12-14T10:55:12.086341444Z",
            ),
            (
                day(15).with_hms_micro(6, 20, 15, 158_024).unwrap(),
                "2020-12-15T06:20:15.158024Z",
            ),
        ];
        for (at, spelled) in cases {
            assert_eq!(timestamp(at.assume_utc()), spelled);
        }
        // Whole seconds carry no fraction; another offset is written in UTC.
        assert_eq!(
            timestamp(day(14).with_hms(11, 10, 7).unwrap().assume_utc()),
            "2020-12-14T11:10:07Z"
        );
        let in_paris = day(14)
            .with_hms(12, 10, 7)
            .unwrap()
            .assume_offset(UtcOffset::from_hms(1, 0, 0).unwrap());
        assert_eq!(timestamp(in_paris), "2020-12-14T11:10:07Z");
    }
}
