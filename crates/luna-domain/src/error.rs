//! What the domain refuses, and why.
//!
//! The edge maps each variant to one status: `Invalid` to a 400,
//! `IllegalTransition` and `Conflict` to a 409 (in luna-api's `ApiError`).

use thiserror::Error;

/// Everything the domain can refuse. Each message is a sentence a user can act
/// on: it says what was wrong and, where it can, what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DomainError {
    /// Input that breaks a rule known without asking a token or a database.
    #[error("{0}")]
    Invalid(String),
    /// A state machine was asked for a move it does not allow.
    #[error("{machine} cannot go from {from} on {event}")]
    IllegalTransition {
        /// Which machine refused: `key`, `job` or `operation`.
        machine: &'static str,
        /// The state it was in, as its wire names (a key's is
        /// `status/operation/operation_status`).
        from: String,
        /// The event it was told, e.g. `begin keydelete` or `success`.
        event: String,
    },
    /// The target is busy with an operation or job that has not ended.
    #[error("{0}")]
    Conflict(String),
}

impl DomainError {
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        DomainError::Invalid(message.into())
    }
}

/// The crate's result: every fallible call refuses with a [`DomainError`].
pub type Result<T, E = DomainError> = std::result::Result<T, E>;
