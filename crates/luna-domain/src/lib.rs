//! The Luna HSM key domain: keys, partitions, jobs and durable operations, their
//! validation and their state machines.
//!
//! Invariant: this crate does no IO and knows no diesel, actix or PKCS#11
//! types, so that any CCKM service can embed it. Only serde's traits appear,
//! to give enums their one spelling; JSON itself belongs to the edge.

mod wire;

pub mod attribute;
pub mod error;
pub mod idempotency;
pub mod job;
pub mod key;
pub mod operation;
pub mod partition;
pub mod query;
pub mod refresh;

pub use attribute::{Attribute, AttributeSet};
pub use error::{DomainError, Result};
pub use job::{Job, JobEvent, JobLifecycle, JobRequest, JobScope, JobStatus, JobType};
pub use key::{
    Algorithm, CreateKeyRequest, Key, KeyEvent, KeyLifecycle, KeyStatus, KeyVersion, Mechanism, NewKeySpec,
    ObjectType, OperationKind, OperationStatus, Origin,
};
pub use operation::{Operation, OperationPayload, OperationState};
pub use partition::{Connection, ConnectionRequest, ConnectionSpec, Member, MemberSpec, Partition};
