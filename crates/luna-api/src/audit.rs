//! The audit trail as luna-api writes it: one place for every record it
//! makes. A mutating request's record (`RequestAudit`: made by the
//! request-id middleware, written by it after the answer, or by a handler in
//! its own transaction), a refused password check's (`refusal`: failed
//! logins and `changepw`s, with the reason) and an operation's outcome
//! (`outcome`, written with the outcome by the runner). The store chains
//! and checkpoints them (`luna_store::Store::append_audit`).

use actix_web::{HttpMessage, HttpRequest};
use luna_domain::Operation;
use luna_store::{AuditEntry, Store};
use time::OffsetDateTime;

/// A mutating request's audit record, for a handler that writes it in the
/// transaction of its own change (then the middleware does not write it
/// again): what the middleware knows of the request, the user it acts for
/// once that is known, and the mark. Clones share the user and the mark.
#[derive(Debug, Clone)]
pub struct RequestAudit {
    /// Set by the auth check that admits the caller, or by a password
    /// change for the user its body names; `-` while unknown.
    username: std::sync::Arc<std::sync::OnceLock<String>>,
    target: String,
    request_id: String,
    client: String,
    written: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl RequestAudit {
    /// The record of the request `action` (`"POST /api/v1/…"`, the route
    /// as the middleware names it) answered `status`.
    pub fn entry(&self, action: &str, status: u16) -> luna_store::AuditEntry {
        luna_store::AuditEntry {
            at: luna_store::now(),
            username: self.username.get().map_or("-", String::as_str).to_owned(),
            action: action.to_owned(),
            target: self.target.clone(),
            outcome: status.to_string(),
            request_id: self.request_id.clone(),
            client: self.client.clone(),
        }
    }

    /// The request acts for `username`: its bearer token's user, or the
    /// user a password change names.
    pub fn acted_for(&self, username: &str) {
        let _first_one_wins = self.username.set(username.to_owned());
    }

    /// The handler's transaction that held the record committed.
    pub fn written(&self) {
        self.written.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl RequestAudit {
    /// The record of a request to `target`, its user not known yet.
    pub(crate) fn new(target: &str, request_id: &str, client: &str) -> RequestAudit {
        RequestAudit {
            username: Default::default(),
            target: target.to_owned(),
            request_id: request_id.to_owned(),
            client: client.to_owned(),
            written: Default::default(),
        }
    }

    /// The request's record, for a handler that writes it itself.
    pub(crate) fn in_request(req: &HttpRequest) -> Option<RequestAudit> {
        req.extensions().get::<RequestAudit>().cloned()
    }

    /// Whether a handler wrote the record (then the middleware does not).
    pub(crate) fn is_written(&self) -> bool {
        self.written.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A refused password check (a login, a `changepw`) of request
/// `request_id`: the name it was tried for, `action`, and why.
pub(crate) fn refusal(
    req: &HttpRequest,
    request_id: &str,
    attempted: &str,
    action: &str,
    reason: &str,
) -> AuditEntry {
    AuditEntry {
        at: luna_store::now(),
        username: attempted.to_owned(),
        action: action.into(),
        target: req.path().to_owned(),
        outcome: format!("401 {reason}"),
        request_id: request_id.to_owned(),
        client: req.connection_info().peer_addr().unwrap_or("-").to_owned(),
    }
}

/// A finished operation's outcome, as the instance `owner` ran it.
pub(crate) fn outcome(finished: &Operation, owner: &str, now: OffsetDateTime) -> AuditEntry {
    AuditEntry {
        at: now,
        username: "luna-server".into(),
        action: format!("operation {}", finished.payload.kind_name()),
        target: finished.payload.target().to_string(),
        outcome: match &finished.last_error() {
            Some(reason) if finished.state() == luna_domain::OperationState::Failed => {
                format!("failed: {reason}")
            }
            _ => "succeeded".into(),
        },
        request_id: finished.id.to_string(),
        client: owner.to_owned(),
    }
}

/// Appends a record outside a handler's own transaction; a failure is
/// logged, never the request's undoing.
pub(crate) async fn record(store: &Store, entry: AuditEntry) {
    let store = store.clone();
    match actix_web::web::block(move || store.append_audit(&entry)).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => tracing::error!(%error, "an audit record could not be written"),
        Err(error) => tracing::error!(%error, "an audit record could not be written"),
    }
}
