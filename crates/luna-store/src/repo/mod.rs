//! Repositories: one module per aggregate, each an `impl Store` block.

pub mod audit;
pub mod audit_sinks;
pub mod connections;
pub mod idempotency;
pub mod jobs;
mod key_pages;
pub mod keys;
pub mod operations;
pub mod partitions;
pub mod schedules;
pub mod servers;
pub mod users;
pub mod xks;

use diesel::result::{DatabaseErrorKind, Error as DieselError};

use crate::error::StoreError;

/// A unique-constraint violation becomes a conflict with the caller's sentence.
pub(crate) fn conflict_on_unique(message: impl FnOnce() -> String) -> impl FnOnce(DieselError) -> StoreError {
    move |err| match err {
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => StoreError::Conflict(message()),
        other => StoreError::Query(other),
    }
}

/// A foreign-key violation (a row named by another, or naming one that a
/// concurrent transaction removed) becomes a conflict with the caller's sentence.
pub(crate) fn conflict_on_reference(
    message: impl FnOnce() -> String,
) -> impl FnOnce(DieselError) -> StoreError {
    move |err| match err {
        DieselError::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, _) => {
            StoreError::Conflict(message())
        }
        other => StoreError::Query(other),
    }
}

/// Appends `column` in `direction` to a boxed query's ORDER BY.
macro_rules! order_by {
    ($query:expr, $direction:expr, $column:expr) => {
        match $direction {
            luna_domain::query::Direction::Ascending => $query.then_order_by($column.asc()),
            luna_domain::query::Direction::Descending => $query.then_order_by($column.desc()),
        }
    };
}

pub(crate) use order_by;
