//! The error→HTTP mapping: `ApiError`, everything a request can end in, and
//! the status, contract error body and headers each is answered with. A 500
//! tells the client nothing of its cause; a server error's causes go to the log.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use luna_domain::DomainError;
use luna_pkcs11::TokenError;
use luna_runner::RunnerError;
use luna_store::StoreError;
use serde::Serialize;
use thiserror::Error;

/// Everything a request can end in. `status` and `error_response` match every
/// variant, so a new one cannot slip through as a 500 by accident.
#[derive(Debug, Error)]
pub enum ApiError {
    /// Input broke a rule; the sentence says which and what is allowed.
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// The path exists, not with this method; `allowed` goes in the `Allow` header.
    #[error("{method} is not allowed on {path}; allowed: {allowed}")]
    MethodNotAllowed {
        method: String,
        path: String,
        allowed: String,
    },
    #[error("{0}")]
    Conflict(String),
    /// A CipherTrust Manager route this service does not offer; the sentence
    /// says what it would need and what to use instead.
    #[error("{0}")]
    NotImplemented(String),
    /// The request (its body, say) did not arrive within the deadline, in seconds.
    #[error("the request was not answered within {0} s (its body did not arrive, say); the connection is closed; it may or may not have taken effect: send it again with the same Idempotency-Key")]
    RequestTimeout(u64),
    /// Too many failed logins from this address; `retry_after` in seconds.
    #[error("too many failed logins; try again in {retry_after} s")]
    TooManyRequests { retry_after: u64 },
    /// A create past the bound on the work waiting for tokens (a partition's
    /// or all of it); `retry_after` in seconds, from the rate it drains at.
    #[error("{message}")]
    QueueFull { message: String, retry_after: u64 },
    /// A token refused something the user asked for (wrong PIN, missing token).
    #[error("{message}")]
    TokenRefused {
        message: String,
        #[source]
        source: TokenError,
    },
    #[error("the database failed")]
    Store(#[source] StoreError),
    /// The database cannot be reached now; the client may try again.
    #[error("the database cannot be reached now; try again in a few seconds")]
    DatabaseUnavailable(#[source] StoreError),
    /// The change's audit record could not be written, so the change was not
    /// made (no change without its record).
    #[error("the change was not made: its audit record could not be written; try again in a few seconds")]
    AuditUnavailable(#[source] StoreError),
    #[error("a token failed")]
    Token(#[source] TokenError),
    /// A worker thread or task ended without an answer.
    #[error("an internal task failed: {0}")]
    Internal(String),
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
            StoreError::IdempotencyKeyTaken => ApiError::Conflict(
                "another request with this Idempotency-Key was made at the same moment; send it again for its answer"
                    .into(),
            ),
            StoreError::Domain(domain) => domain.into(),
            audit @ StoreError::AuditUnwritten { .. } => ApiError::AuditUnavailable(audit),
            other if other.is_unavailable() => ApiError::DatabaseUnavailable(other),
            other => ApiError::Store(other),
        }
    }
}

impl From<RunnerError> for ApiError {
    fn from(error: RunnerError) -> Self {
        match error {
            RunnerError::Invalid(message) => ApiError::BadRequest(message),
            RunnerError::NotFound(message) => ApiError::NotFound(message),
            RunnerError::Conflict(message) => ApiError::Conflict(message),
            RunnerError::TokenRefused { message, source } => ApiError::TokenRefused { message, source },
            RunnerError::Store(store) => store.into(),
            RunnerError::Metrics(message) => ApiError::Internal(message),
        }
    }
}

impl From<actix_web::error::BlockingError> for ApiError {
    fn from(error: actix_web::error::BlockingError) -> Self {
        ApiError::Internal(error.to_string())
    }
}

/// The contract's error body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub code: u16,
    #[serde(rename = "codeDesc")]
    pub code_desc: String,
    pub message: String,
}

/// When a client may try again after a 503 (the pool waits 2 s per request).
pub const RETRY_AFTER_SECS: &str = "5";

/// What a 5xx says: nothing about the cause, which goes to the log only.
const INTERNAL_MESSAGE: &str = "the server could not complete the request; it has been logged";

impl ApiError {
    /// (HTTP status, contract code, NCERR name).
    fn parts(&self) -> (StatusCode, u16, &'static str) {
        match self {
            ApiError::BadRequest(_) | ApiError::TokenRefused { .. } => {
                (StatusCode::BAD_REQUEST, 15, "NCERRBadRequest")
            }
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, 1, "NCERRUnauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, 2, "NCERRForbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, 16, "NCERRResourceNotFound"),
            ApiError::MethodNotAllowed { .. } => (StatusCode::METHOD_NOT_ALLOWED, 15, "NCERRBadRequest"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, 13, "NCERRConflict"),
            ApiError::NotImplemented(_) => (StatusCode::NOT_IMPLEMENTED, 15, "NCERRNotImplemented"),
            ApiError::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, 15, "NCERRRequestTimeout"),
            ApiError::TooManyRequests { .. } | ApiError::QueueFull { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, 1, "NCERRTooManyRequests")
            }
            ApiError::Store(_) | ApiError::Token(_) | ApiError::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, 14, "NCERRInternalServerError")
            }
            ApiError::DatabaseUnavailable(_) | ApiError::AuditUnavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, 14, "NCERRServiceUnavailable")
            }
        }
    }

    /// Whether the request's change committed (with its audit record)
    /// before this error: what had to follow the commit failed.
    pub fn committed(&self) -> bool {
        matches!(self, ApiError::Store(StoreError::AfterCommit { .. }))
    }

    pub fn body(&self) -> ErrorBody {
        let (status, code, name) = self.parts();
        // A 503 says only that the database is away, or that the audit
        // record could not be written: no internals.
        let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
            INTERNAL_MESSAGE.to_owned()
        } else {
            self.to_string()
        };
        ErrorBody {
            code,
            code_desc: format!("{name}: {message}"),
            message,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.parts().0
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        // A route not offered answers 501 by design: nothing failed.
        if status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED {
            // The chain of sources is for operators; the client gets a plain sentence.
            let mut chain = self.to_string();
            let mut source = std::error::Error::source(self);
            while let Some(cause) = source {
                chain.push_str(": ");
                chain.push_str(&cause.to_string());
                source = cause.source();
            }
            tracing::error!(error = %chain, "request failed");
        }
        let mut response = HttpResponse::build(status);
        if let ApiError::MethodNotAllowed { allowed, .. } = self {
            response.insert_header((actix_web::http::header::ALLOW, allowed.as_str()));
        }
        if let ApiError::DatabaseUnavailable(_) | ApiError::AuditUnavailable(_) = self {
            response.insert_header((actix_web::http::header::RETRY_AFTER, RETRY_AFTER_SECS));
        }
        if let ApiError::TooManyRequests { retry_after } | ApiError::QueueFull { retry_after, .. } = self {
            response.insert_header((actix_web::http::header::RETRY_AFTER, retry_after.to_string()));
        }
        response.json(self.body())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_failure_after_the_commit_says_the_change_was_made() {
        let after = StoreError::AfterCommit {
            reason: "its log could not be synced to disk".into(),
        };
        assert!(ApiError::from(after).committed());
        let before = StoreError::Commit {
            reason: "the database went away".into(),
            unavailable: true,
        };
        assert!(!ApiError::from(before).committed());
        let audit = StoreError::AuditUnwritten {
            reason: "refused".into(),
        };
        assert!(!ApiError::from(audit).committed());
        assert!(!ApiError::Conflict("busy".into()).committed());
    }

    #[test]
    fn error_bodies_follow_the_contract_and_5xx_say_nothing_internal() {
        let body = ApiError::BadRequest("size 1024 is not allowed".into()).body();
        assert_eq!(
            (body.code, body.code_desc.as_str()),
            (15, "NCERRBadRequest: size 1024 is not allowed")
        );
        assert_eq!(body.message, "size 1024 is not allowed");
        let cases = [
            (ApiError::Unauthorized("x".into()), 401, 1),
            (ApiError::Forbidden("x".into()), 403, 2),
            (ApiError::NotFound("x".into()), 404, 16),
            (ApiError::Conflict("x".into()), 409, 13),
            (
                ApiError::MethodNotAllowed {
                    method: "PUT".into(),
                    path: "/x".into(),
                    allowed: "GET".into(),
                },
                405,
                15,
            ),
            (ApiError::Internal("secret detail".into()), 500, 14),
        ];
        for (error, status, code) in cases {
            assert_eq!(error.status_code().as_u16(), status);
            assert_eq!(error.body().code, code);
        }
        let internal = ApiError::Internal("secret detail".into()).body();
        assert!(!internal.message.contains("secret") && !internal.code_desc.contains("secret"));
    }
}
