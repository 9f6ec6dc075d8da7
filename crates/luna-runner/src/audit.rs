//! The audit records the service makes of its own accord: an operation's
//! outcome, under the user who asked for it, and a change the service makes
//! of itself (record format 3, docs/audit.md). luna-api makes the records of
//! requests.

use luna_domain::{Operation, Requester};
use luna_store::AuditEntry;
use time::OffsetDateTime;

/// A finished operation's outcome, as instance `instance` ran it, under the
/// user who asked for it (the service itself, `luna-server`, for work
/// nobody asked for).
pub fn outcome(finished: &Operation, instance: &str, now: OffsetDateTime) -> AuditEntry {
    let requester = finished.requested_by.clone().unwrap_or_else(|| Requester {
        user_id: String::new(),
        username: "luna-server".into(),
        request_id: String::new(),
    });
    AuditEntry {
        at: now,
        user_id: requester.user_id,
        username: requester.username,
        action: format!("operation {}", finished.payload.kind_name()),
        resource_type: if finished.payload.key_operation().is_some() {
            "key"
        } else {
            "job"
        }
        .into(),
        resource_id: finished.payload.target().to_string(),
        outcome: match &finished.last_error() {
            Some(reason) if finished.state() == luna_domain::OperationState::Failed => {
                format!("failed: {reason}")
            }
            _ => "succeeded".into(),
        },
        request_id: requester.request_id,
        source: String::new(),
        instance: instance.to_owned(),
    }
}

/// The record of a change the service makes of itself at `instance` (the
/// bootstrap admin, the embedded default's demo partition): user
/// `luna-server`, no request.
pub fn by_the_service(instance: &str, action: &str, resource_type: &str) -> AuditEntry {
    AuditEntry {
        at: luna_store::now(),
        user_id: String::new(),
        username: "luna-server".into(),
        action: action.to_owned(),
        resource_type: resource_type.to_owned(),
        resource_id: String::new(),
        outcome: "succeeded".into(),
        request_id: String::new(),
        source: String::new(),
        instance: instance.to_owned(),
    }
}
