//! List queries: filters, sort and paging, parsed from query-string pairs.
//!
//! The edge hands over the raw `(name, value)` pairs; everything about which
//! names exist and what values mean is decided here, so every list behaves the
//! same and every refusal says what is allowed.

use std::str::FromStr;

use uuid::Uuid;

use crate::error::{DomainError, Result};
use crate::job::JobStatus;
use crate::key::{parse_id, Algorithm, KeyStatus, Mechanism, ObjectType, Origin};
use crate::wire::wire_enum;

/// The page size when a query gives no `limit`, as in the reference.
pub const DEFAULT_LIMIT: i64 = 10;
/// The largest `limit`: bounds one answer's size.
pub const MAX_LIMIT: i64 = 1000;
/// `limit=-1`, CipherTrust Manager's "all" (the Terraform provider's data
/// sources send it): here the largest page, `MAX_LIMIT`; `total` says
/// whether more match.
pub const LIMIT_ALL: &str = "-1";
/// The largest `skip`, 2³¹−1, as the contract states it.
pub const MAX_SKIP: i64 = i32::MAX as i64;

/// The order of one sort field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Smallest first: the field as given.
    Ascending,
    /// Largest first: the field prefixed with `-`.
    Descending,
}

/// One term of `sort`: a field of the resource and its order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SortKey<F> {
    /// The field, one of the resource's sort fields.
    pub field: F,
    /// Its order.
    pub direction: Direction,
}

/// Which slice of the matching records to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// How many matching records to pass over, 0 to [`MAX_SKIP`].
    pub skip: i64,
    /// How many to answer at most, 1 to [`MAX_LIMIT`].
    pub limit: i64,
}

/// One resource's filters. `accept` takes one query parameter and returns
/// `Ok(false)` for a name it does not know.
pub trait Filters: Default {
    /// The fields this resource's lists can be sorted by (a wire enum).
    type SortField: FromStr<Err = DomainError> + Copy + PartialEq;
    /// The filter names, for the sentence that refuses an unknown one.
    const NAMES: &'static [&'static str];
    /// Sets the filter `name` from `value`: `Ok(true)` if taken, `Ok(false)`
    /// if `name` is no filter of this resource, an error if `value` does not
    /// parse.
    fn accept(&mut self, name: &str, value: &str) -> Result<bool>;
    /// Each filter's name and the values it takes, in declaration order.
    fn params() -> Vec<ListParam>;
    /// The names `sort` accepts.
    fn sort_fields() -> Vec<&'static str>;
}

/// What a list query parameter accepts, so that the edge can document every
/// list from the same facts that parse it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamKind {
    /// Any text, matched exactly.
    Text,
    /// A UUID, matched exactly.
    Id,
    /// A whole number within bounds.
    WholeNumber {
        /// The smallest accepted.
        min: i64,
        /// The largest accepted.
        max: i64,
    },
    /// A page size: a whole number from 1 to `max`, or -1 (`LIMIT_ALL`) for `max`.
    PageSize {
        /// The largest page.
        max: i64,
    },
    /// `true` or `false`.
    Boolean,
    /// An instant, RFC 3339 (`2026-12-07T10:00:00Z`).
    Timestamp,
    /// One of these exact strings.
    OneOf(Vec<&'static str>),
    /// A comma list of these field names, each optionally prefixed by `-`
    /// for descending order.
    SortFields(Vec<&'static str>),
}

impl ParamKind {
    /// What a user may give, in a few words (for documents and help texts).
    pub fn describe(&self) -> String {
        match self {
            ParamKind::Text => "exact match".into(),
            ParamKind::Id => "a UUID; exact match".into(),
            ParamKind::WholeNumber { min, max } => format!("a whole number from {min} to {max}"),
            ParamKind::PageSize { max } => {
                format!("a whole number from 1 to {max}, or {LIMIT_ALL} for the largest page ({max})")
            }
            ParamKind::Boolean => "true or false".into(),
            ParamKind::Timestamp => "an RFC 3339 instant, such as 2026-12-07T10:00:00Z".into(),
            ParamKind::OneOf(values) => format!("one of: {}", values.join(", ")),
            ParamKind::SortFields(fields) => format!(
                "a comma list of fields, each prefixed by - for descending order; fields: {}",
                fields.join(", ")
            ),
        }
    }
}

/// A type a filter value parses into, and so what the filter accepts.
pub trait ParamValue {
    /// What a value of this type looks like in a query string.
    fn kind() -> ParamKind;
}

impl ParamValue for String {
    fn kind() -> ParamKind {
        ParamKind::Text
    }
}

impl ParamValue for Uuid {
    fn kind() -> ParamKind {
        ParamKind::Id
    }
}

impl ParamValue for u32 {
    fn kind() -> ParamKind {
        ParamKind::WholeNumber {
            min: 0,
            max: i64::from(u32::MAX),
        }
    }
}

impl ParamValue for time::OffsetDateTime {
    fn kind() -> ParamKind {
        ParamKind::Timestamp
    }
}

impl ParamValue for bool {
    fn kind() -> ParamKind {
        ParamKind::Boolean
    }
}

/// One query parameter of a list, as documents and help texts describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListParam {
    /// The parameter's name in the query string.
    pub name: &'static str,
    /// What it accepts.
    pub kind: ParamKind,
}

/// Every query parameter a list of `F` accepts: paging, sort, then filters.
pub fn list_params<F: Filters>() -> Vec<ListParam> {
    let mut params = vec![
        ListParam {
            name: "skip",
            kind: ParamKind::WholeNumber {
                min: 0,
                max: MAX_SKIP,
            },
        },
        ListParam {
            name: "limit",
            kind: ParamKind::PageSize { max: MAX_LIMIT },
        },
        ListParam {
            name: "sort",
            kind: ParamKind::SortFields(F::sort_fields()),
        },
    ];
    params.extend(F::params());
    params
}

/// A parsed list query for the resource whose filters are `F`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery<F: Filters> {
    /// The filters given; all must match (an AND).
    pub filters: F,
    /// Empty means the default order: newest first.
    pub sort: Vec<SortKey<F::SortField>>,
    /// `skip` and `limit`, defaulted to 0 and [`DEFAULT_LIMIT`].
    pub page: Page,
}

/// Parses a list query from the query string's `(name, value)` pairs, decoded
/// by the edge. Unknown and repeated parameters are refused, so a typo never
/// silently returns everything; `sort` is a comma list of fields, each
/// optionally prefixed by `-` for descending order.
pub fn parse_list_query<F: Filters>(pairs: &[(String, String)]) -> Result<ListQuery<F>> {
    let mut filters = F::default();
    let mut sort = Vec::new();
    let mut page = Page {
        skip: 0,
        limit: DEFAULT_LIMIT,
    };
    for (index, (name, value)) in pairs.iter().enumerate() {
        if pairs[..index].iter().any(|(earlier, _)| earlier == name) {
            return Err(DomainError::invalid(format!(
                "query parameter {name} is given more than once"
            )));
        }
        match name.as_str() {
            "skip" => page.skip = parse_int("skip", value, 0, MAX_SKIP)?,
            "limit" if value == LIMIT_ALL => page.limit = MAX_LIMIT,
            "limit" => page.limit = parse_int("limit", value, 1, MAX_LIMIT)?,
            "sort" => sort = parse_sort(value)?,
            _ => {
                if !filters.accept(name, value)? {
                    return Err(DomainError::invalid(format!(
                        "unknown query parameter {name:?}; allowed: skip, limit, sort, {}",
                        F::NAMES.join(", ")
                    )));
                }
            }
        }
    }
    Ok(ListQuery { filters, sort, page })
}

fn parse_sort<S: FromStr<Err = DomainError> + PartialEq>(text: &str) -> Result<Vec<SortKey<S>>> {
    let mut keys = Vec::new();
    for part in text.split(',') {
        let (direction, name) = match part.strip_prefix('-') {
            Some(rest) => (Direction::Descending, rest),
            None => (Direction::Ascending, part),
        };
        if name.is_empty() {
            return Err(DomainError::invalid(
                "sort has an empty field name; use a comma list such as label,-createdAt",
            ));
        }
        let field: S = name.parse()?;
        // A later mention of a field cannot change the order the first one
        // set, and each repeat costs the database's sorter dearly (SQLite took
        // 23 s over 22 terms), so repeats are dropped.
        if !keys.iter().any(|k: &SortKey<S>| k.field == field) {
            keys.push(SortKey { field, direction });
        }
    }
    Ok(keys)
}

fn parse_int(name: &str, value: &str, min: i64, max: i64) -> Result<i64> {
    match value.parse::<i64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(DomainError::invalid(format!(
            "{name} must be a whole number from {min} to {max}; got {value:?}"
        ))),
    }
}

fn parse_bool(name: &str, value: &str) -> Result<bool> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(DomainError::invalid(format!(
            "{name} must be true or false; got {value:?}"
        ))),
    }
}

fn parse_wire<T: FromStr<Err = DomainError>>(value: &str) -> Result<T> {
    value.parse()
}

/// Declares a filter struct whose fields are parsed by the given functions.
macro_rules! filters {
    (
        $(#[$meta:meta])*
        pub struct $name:ident sorted by $sort:ty {
            $( $(#[$fmeta:meta])* $field:ident : $ty:ty = $parse:expr ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: Option<$ty> ),+
        }

        impl Filters for $name {
            type SortField = $sort;
            const NAMES: &'static [&'static str] = &[$(stringify!($field)),+];

            fn sort_fields() -> Vec<&'static str> {
                <$sort>::ALL.iter().map(|f| f.as_str()).collect()
            }

            fn params() -> Vec<ListParam> {
                vec![$( ListParam { name: stringify!($field), kind: <$ty as ParamValue>::kind() } ),+]
            }

            fn accept(&mut self, name: &str, value: &str) -> Result<bool> {
                match name {
                    $( stringify!($field) => {
                        let parse: fn(&str, &str) -> Result<$ty> = $parse;
                        self.$field = Some(parse(name, value)?);
                    } )+
                    _ => return Ok(false),
                }
                Ok(true)
            }
        }
    };
}

fn text(_: &str, value: &str) -> Result<String> {
    Ok(value.to_owned())
}

fn instant(name: &str, value: &str) -> Result<time::OffsetDateTime> {
    time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339).map_err(|_| {
        DomainError::invalid(format!(
            "{name} must be an RFC 3339 instant, such as 2026-12-07T10:00:00Z; {value:?} is not one"
        ))
    })
}

fn id(name: &str, value: &str) -> Result<Uuid> {
    parse_id(name, value)
}

fn size(name: &str, value: &str) -> Result<u32> {
    Ok(parse_int(name, value, 0, i64::from(u32::MAX))? as u32)
}

fn wire<T: FromStr<Err = DomainError>>(_: &str, value: &str) -> Result<T> {
    parse_wire(value)
}

wire_enum! {
    /// Fields a key list can be sorted by (JSON names).
    pub enum KeySortField ("sort field") {
        /// When the record was made.
        CreatedAt => "createdAt",
        /// When the record last changed.
        UpdatedAt => "updatedAt",
        /// The record's id.
        Id => "id",
        /// The key's label.
        Label => "label",
        /// Key length in bits.
        Size => "size",
        /// The key's status (by its wire name).
        Status => "status",
        /// `rsa` or `aes`.
        Algorithm => "algorithm",
        /// The requested mechanism.
        Mechanism => "mechanism",
        /// The object's class.
        ObjectType => "object_type",
        /// The partition's id.
        PartitionId => "partition_id",
        /// The partition's label.
        PartitionLabel => "partition_label",
        /// Where the key came from.
        Origin => "origin",
    }
}

filters! {
    /// Every filter of the reference's key list; each is an exact match,
    /// `None` matches every key.
    pub struct KeyFilters sorted by KeySortField {
        /// Only the key with this id.
        id: Uuid = id,
        /// Only keys with this label.
        label: String = text,
        /// Only RSA or only AES keys.
        algorithm: Algorithm = wire,
        /// Only keys requested with this mechanism.
        mechanism: Mechanism = wire,
        /// Only keys of this many bits.
        size: u32 = size,
        /// Only keys made through this service (`true`) or found (`false`).
        byok_key: bool = parse_bool,
        /// Only keys on this partition.
        partition_id: Uuid = id,
        /// Only keys on the partition with this label.
        partition_label: String = text,
        /// Only keys in this status (e.g. `AVAILABLE`).
        status: KeyStatus = wire,
        /// Only secret, private or public keys.
        object_type: ObjectType = wire,
        /// Only keys from this origin.
        origin: Origin = wire,
        /// Only the key with this fingerprint.
        sha_256_fingerprint: String = text,
        /// Only keys with this RSA modulus (lower-case hex): a pair's halves.
        modulus: String = text,
        /// Only the half of a pair linked to this record.
        link_id: Uuid = id,
        /// Only keys every member holds (`true`), or some lacks (`false`).
        replicated: bool = parse_bool,
    }
}

wire_enum! {
    /// Fields a job list (refresh or synchronize) can be sorted by.
    pub enum JobSortField ("sort field") {
        /// When the job was accepted.
        CreatedAt => "createdAt",
        /// When the job last changed.
        UpdatedAt => "updatedAt",
        /// The job's overall status.
        OverallStatus => "overall_status",
    }
}

filters! {
    /// The filters of a job list (jobs of one type); exact matches.
    pub struct JobFilters sorted by JobSortField {
        /// Only the job with this id.
        id: Uuid = id,
        /// Only jobs in this status (e.g. `cancelled`).
        overall_status: JobStatus = wire,
    }
}

wire_enum! {
    /// Fields a partition list can be sorted by.
    pub enum PartitionSortField ("sort field") {
        /// When the partition was registered.
        CreatedAt => "createdAt",
        /// When it last changed.
        UpdatedAt => "updatedAt",
        /// Its (first member's) label.
        PartitionLabel => "partition_label",
    }
}

filters! {
    /// The filters of the partition list; exact matches.
    pub struct PartitionFilters sorted by PartitionSortField {
        /// Only the partition with this label.
        partition_label: String = text,
        /// Only HA groups (`true`) or single tokens (`false`).
        ha_enabled: bool = parse_bool,
    }
}

wire_enum! {
    /// Fields the user list can be sorted by.
    pub enum UserSortField ("sort field") {
        /// The user's login name.
        Username => "username",
    }
}

filters! {
    /// The filters of the user list (the service's own users).
    pub struct UserFilters sorted by UserSortField {
        /// Only the user with this name.
        username: String = text,
    }
}

wire_enum! {
    /// Fields the audit list can be sorted by.
    pub enum AuditSortField ("sort field") {
        /// The record's sequence number in the audit trail: the order things happened.
        Seq => "seq",
    }
}

filters! {
    /// The filters of the audit list; exact matches but for the times.
    pub struct AuditFilters sorted by AuditSortField {
        /// Only what this user did (or a failed login tried).
        username: String = text,
        /// Only records of this action (`POST /api/v1/usermgmt/users`).
        action: String = text,
        /// Only records about this kind of resource (`key`, `user`, …).
        resource_type: String = text,
        /// Only records about this resource (its id, or name).
        resource_id: String = text,
        /// Only records written at or after this instant.
        since: time::OffsetDateTime = instant,
        /// Only records written before this instant.
        until: time::OffsetDateTime = instant,
    }
}

wire_enum! {
    /// Fields a connection list can be sorted by.
    pub enum ConnectionSortField ("sort field") {
        /// When the connection was registered.
        CreatedAt => "createdAt",
        /// When it last changed.
        UpdatedAt => "updatedAt",
        /// Its name.
        Name => "name",
    }
}

filters! {
    /// The filters of the connection list; exact matches.
    pub struct ConnectionFilters sorted by ConnectionSortField {
        /// Only the connection with this name.
        name: String = text,
        /// Only HA connections (`true`) or single-token ones (`false`).
        is_ha_enabled: bool = parse_bool,
        /// Only connections whose last test worked (`true`) or failed (`false`).
        last_connection_ok: bool = parse_bool,
    }
}

wire_enum! {
    /// Fields an HSM server list can be sorted by.
    pub enum ServerSortField ("sort field") {
        /// When the server was registered.
        CreatedAt => "createdAt",
        /// When it last changed.
        UpdatedAt => "updatedAt",
        /// Its hostname.
        Hostname => "hostname",
    }
}

filters! {
    /// The filters of the HSM server list; exact matches (`host` as the
    /// PowerShell module sends it).
    pub struct ServerFilters sorted by ServerSortField {
        /// Only the server with this hostname.
        host: String = text,
        /// Only the server with this id.
        id: Uuid = id,
        /// Only servers used for this product.
        products: crate::server::Product = wire,
        /// Only servers reached over this channel (every one here is `NTLS`).
        channel: crate::server::Channel = wire,
    }
}

wire_enum! {
    /// Fields a schedule list can be sorted by.
    pub enum ScheduleSortField ("sort field") {
        /// When the schedule was made.
        CreatedAt => "createdAt",
        /// When it last changed.
        UpdatedAt => "updatedAt",
        /// Its name.
        Name => "name",
    }
}

filters! {
    /// The filters of the schedule list (CipherTrust's job-config filters
    /// this service's schedules have); exact matches.
    pub struct ScheduleFilters sorted by ScheduleSortField {
        /// Only the schedule with this id.
        id: Uuid = id,
        /// Only the schedule with this name.
        name: String = text,
        /// Only schedules of this operation (every one here is `cckm_synchronization`).
        operation: String = text,
        /// Only disabled (`true`) or enabled (`false`) schedules.
        disabled: bool = parse_bool,
    }
}

#[cfg(test)]
mod tests;
