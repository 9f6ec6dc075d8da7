//! `RunnerError`, the crate's one error enum: what registering a connection
//! or a partition can be refused for, and the metrics' encoding failure.
//! (An operation's failure is not an error of a caller's: `Failure`.)

use luna_domain::DomainError;
use luna_pkcs11::TokenError;
use luna_store::StoreError;

/// Why a registration (or the metrics' rendering) did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The request broke a rule; the sentence says which.
    #[error("{0}")]
    Invalid(String),
    /// A record the request names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with what is registered.
    #[error("{0}")]
    Conflict(String),
    /// A token refused what the request asked (a wrong PIN, a missing token).
    #[error("{message}")]
    TokenRefused {
        message: String,
        #[source]
        source: TokenError,
    },
    /// The database failed (or refused: a duplicate the caller may retry,
    /// an audit record it could not write).
    #[error(transparent)]
    Store(StoreError),
    /// The metrics could not be encoded.
    #[error("encoding metrics: {0}")]
    Metrics(String),
}

/// A domain rule's refusal is the request's: invalid, or in conflict.
impl From<DomainError> for RunnerError {
    fn from(error: DomainError) -> Self {
        match error {
            DomainError::Invalid(message) => RunnerError::Invalid(message),
            DomainError::Conflict(message) => RunnerError::Conflict(message),
            DomainError::IllegalTransition { .. } => RunnerError::Conflict(error.to_string()),
        }
    }
}

/// A store's conflict, or a domain rule it applied, is the request's; any
/// other store error stays one (luna-api answers it as the store's).
impl From<StoreError> for RunnerError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict(message) => RunnerError::Conflict(message),
            StoreError::Domain(domain) => domain.into(),
            other => RunnerError::Store(other),
        }
    }
}
