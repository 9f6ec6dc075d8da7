//! How domain values are written to columns both backends share.

use std::collections::BTreeMap;
use std::str::FromStr;

use luna_domain::DomainError;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::{Result, StoreError};

/// Timestamps are stored as microseconds since the epoch, UTC.
/// Every instant `time` can hold fits (i64 microseconds span ±292,000 years).
pub fn micros(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos().div_euclid(1000)).unwrap_or(i64::MAX)
}

pub fn from_micros(what: &'static str, value: i64) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(value) * 1000)
        .map_err(|_| StoreError::corrupt(what, format!("timestamp {value}")))
}

/// `now`, cut to the precision the database keeps, so a record reads back equal.
pub fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.nanosecond() / 1000 * 1000)
        .unwrap_or(now)
}

pub fn uuid(what: &'static str, text: &str) -> Result<Uuid> {
    Uuid::parse_str(text).map_err(|e| StoreError::corrupt(what, e))
}

pub fn wire<T: FromStr<Err = DomainError>>(what: &'static str, text: &str) -> Result<T> {
    text.parse().map_err(|e| StoreError::corrupt(what, e))
}

pub fn optional_wire<T: FromStr<Err = DomainError>>(
    what: &'static str,
    text: Option<&str>,
) -> Result<Option<T>> {
    text.map(|t| wire(what, t)).transpose()
}

pub fn json_map(map: &BTreeMap<String, String>) -> String {
    // A map of strings always serialises.
    serde_json::to_string(map).unwrap_or_else(|_| "{}".into())
}

pub fn from_json<T: serde::de::DeserializeOwned>(what: &'static str, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| StoreError::corrupt(what, e))
}

pub fn to_json<T: serde::Serialize>(what: &'static str, value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| StoreError::corrupt(what, e))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use luna_domain::OperationPayload;

    use super::*;

    /// Operations queued by earlier versions must still run: a payload's
    /// stored spelling never changes with the Rust name.
    #[test]
    fn operation_payloads_keep_their_stored_spelling() {
        let key_id = Uuid::nil();
        let stored = to_json("payload", &OperationPayload::DestroyKey { key_id }).unwrap();
        assert_eq!(
            stored,
            r#"{"kind":"delete_key","key_id":"00000000-0000-0000-0000-000000000000"}"#
        );
        let read: OperationPayload = from_json("payload", &stored).unwrap();
        assert_eq!(read, OperationPayload::DestroyKey { key_id });
    }
}
