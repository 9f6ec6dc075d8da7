use luna_domain::DomainError;
use luna_pkcs11::TokenError;
use luna_store::StoreError;
use thiserror::Error;

/// Everything a request can end in. The HTTP mapping (next issue) matches
/// every variant, without a catch-all arm.
#[derive(Debug, Error)]
pub enum ApiError {
    /// Input broke a rule; the sentence says which and what is allowed.
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// A token refused something the user asked for (wrong PIN, missing token).
    #[error("{message}")]
    TokenRefused {
        message: String,
        #[source]
        source: TokenError,
    },
    #[error("the database failed")]
    Store(#[source] StoreError),
    #[error("a token failed")]
    Token(#[source] TokenError),
}

impl From<DomainError> for ApiError {
    fn from(error: DomainError) -> Self {
        match error {
            DomainError::Invalid(message) => ApiError::BadRequest(message),
            DomainError::Conflict(message) => ApiError::Conflict(message),
            DomainError::IllegalTransition { .. } => ApiError::Conflict(error.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict(message) => ApiError::Conflict(message),
            StoreError::Domain(domain) => domain.into(),
            other => ApiError::Store(other),
        }
    }
}
