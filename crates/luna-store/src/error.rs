//! `StoreError`, the crate's one error enum, and what callers may ask of a
//! failure: whether the database could not be reached (`is_unavailable`),
//! and, inside the crate, whether a write may simply run again (`is_retryable`).

use std::path::PathBuf;

use luna_domain::DomainError;
use thiserror::Error;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("the database URL names no supported backend; use sqlite://PATH or postgres://…")]
    UnsupportedUrl,
    #[error("no database connection could be had from the pool")]
    Pool(#[from] diesel::r2d2::PoolError),
    #[error("connecting to the database")]
    Connect(#[from] diesel::ConnectionError),
    #[error("running the database migrations")]
    Migration(#[source] BoxError),
    #[error("a database query failed")]
    Query(#[from] diesel::result::Error),
    /// A newer luna-server migrated the database past what this one knows.
    #[error("the database's schema is at version {database}, newer than this luna-server knows (up to {known}): a newer release migrated it; run that release (or a later one) on every instance sharing the database")]
    NewerSchema { database: String, known: String },
    /// The caller's `Idempotency-Key` was taken by a create that committed
    /// meanwhile: look it up and answer with what it made.
    #[error("the Idempotency-Key was used by another request at the same moment")]
    IdempotencyKeyTaken,
    /// A uniqueness or state rule held by the database: a taken name, a busy key, a running job.
    #[error("{0}")]
    Conflict(String),
    /// A domain rule refused the change (an illegal transition, say).
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error("the stored {what} is corrupt: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("the PIN encryption key file {}", path.display())]
    KeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the database file {} could not be created readable by its owner only", path.display())]
    DatabaseFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The transaction this write shared with others (group commit) did not
    /// commit; the write did not happen.
    #[error("the write's transaction did not commit: {reason}")]
    Commit { reason: String, unavailable: bool },
    /// The audit records of the write's transaction could not be written:
    /// nothing of it was (no change without its record).
    #[error("the change's audit record could not be written, so the change was not made: {reason}")]
    AuditUnwritten { reason: String },
    /// The write committed, but what had to follow its commit did not
    /// (moving the audit checkpoint, syncing the log to disk).
    #[error("the write committed, but {reason}")]
    AfterCommit { reason: String },
    #[error("a stored PIN could not be decrypted: the data directory's key is not the one it was sealed with, or the row was altered")]
    PinDecrypt,
}

impl StoreError {
    /// Whether the database could not be reached (no connection to be had,
    /// or the connection closed under the query): it may answer again soon,
    /// unlike a query or a rule that failed.
    pub fn is_unavailable(&self) -> bool {
        use diesel::result::Error as Query;
        match self {
            StoreError::Pool(_) | StoreError::Connect(_) => true,
            StoreError::Commit { unavailable, .. } => *unavailable,
            StoreError::Query(error) => {
                is_closed_connection(error) || matches!(error, Query::BrokenTransactionManager)
            }
            StoreError::UnsupportedUrl
            | StoreError::AfterCommit { .. }
            | StoreError::AuditUnwritten { .. }
            | StoreError::Migration(_)
            | StoreError::NewerSchema { .. }
            | StoreError::Conflict(_)
            | StoreError::IdempotencyKeyTaken
            | StoreError::Domain(_)
            | StoreError::Corrupt { .. }
            | StoreError::KeyFile { .. }
            | StoreError::DatabaseFile { .. }
            | StoreError::PinDecrypt => false,
        }
    }

    /// Whether the database chose this write as the victim of a deadlock or
    /// a serialization failure: it says nothing of the write, which may
    /// simply run again. (diesel names PostgreSQL's 40001 but not 40P01,
    /// whose primary message is read instead: the server's messages are
    /// English unless it was configured otherwise.)
    pub(crate) fn is_retryable(&self) -> bool {
        use diesel::result::{DatabaseErrorKind, Error as Query};
        match self {
            StoreError::Query(Query::DatabaseError(DatabaseErrorKind::SerializationFailure, _)) => true,
            StoreError::Query(Query::DatabaseError(DatabaseErrorKind::Unknown, info)) => {
                info.message() == "deadlock detected"
            }
            _ => false,
        }
    }

    /// Whether the database closed the connection under the statement that
    /// failed (it was not run, or its transaction ended uncommitted).
    pub(crate) fn is_closed_connection(&self) -> bool {
        matches!(self, StoreError::Query(error) if is_closed_connection(error))
    }

    pub(crate) fn corrupt(what: &'static str, detail: impl std::fmt::Display) -> Self {
        StoreError::Corrupt {
            what,
            detail: detail.to_string(),
        }
    }
}

/// The socket was closed under the statement, or found closed before it.
pub(crate) fn is_closed_connection(error: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error as Query};
    matches!(
        error,
        Query::DatabaseError(DatabaseErrorKind::ClosedConnection, _)
            | Query::DatabaseError(DatabaseErrorKind::UnableToSendCommand, _)
    )
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
