//! The audit trail as luna-api writes it: one place for every record it
//! makes (record format 3, docs/audit.md).
//!
//! A change writes its record in its own transaction: the handler takes the
//! request's [`Audit`], hands `audit.change(status)` to the store method that
//! makes the change (which writes it only if the change happens), and says
//! `written()` once that committed. If the record cannot be written, the
//! change is not made and the client is answered 503. What is not a change
//! (a refusal: 400, 401, 403, 404, 409, 429; a request that changed
//! nothing) is recorded by the request-id middleware after the answer, as
//! is a 401 or 403 to any request, reads included. An operation's outcome
//! is recorded by the runner with the outcome, under the user who asked for
//! it (`luna_runner::audit::outcome`). The store chains and checkpoints them
//! (`luna_store::Store::append_audit`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use actix_web::{FromRequest, HttpMessage, HttpRequest};
use luna_domain::Requester;
use luna_store::{AuditEntry, Store};

/// What the request-id middleware knows of a request for its audit record,
/// and the user it acts for once the auth check knows. Clones share the user
/// and whether the record was written.
#[derive(Debug, Clone)]
pub(crate) struct RequestAudit {
    /// (id, name), set by the auth check that admits the caller, or by a
    /// password check for the name it was tried with.
    user: Arc<OnceLock<(String, String)>>,
    request_id: String,
    source: String,
    instance: String,
    written: Arc<AtomicBool>,
}

impl RequestAudit {
    pub(crate) fn new(request_id: &str, source: &str, instance: &str) -> RequestAudit {
        RequestAudit {
            user: Arc::default(),
            request_id: request_id.to_owned(),
            source: source.to_owned(),
            instance: instance.to_owned(),
            written: Arc::default(),
        }
    }

    /// The request's, as the middleware made it (one made here for a
    /// request that did not pass it: a unit test's).
    pub(crate) fn of(req: &HttpRequest) -> RequestAudit {
        if let Some(audit) = req.extensions().get::<RequestAudit>() {
            return audit.clone();
        }
        let source = req.connection_info().peer_addr().unwrap_or("-").to_owned();
        let audit = RequestAudit::new("-", &source, "-");
        req.extensions_mut().insert(audit.clone());
        audit
    }

    /// The request acts for this user: its bearer token's, or the one a
    /// password was checked for. The first one set stays.
    pub(crate) fn acted_for(&self, user_id: &str, username: &str) {
        let _first_one_wins = self.user.set((user_id.to_owned(), username.to_owned()));
    }

    /// The record of `req` answered `outcome`.
    pub(crate) fn entry(&self, req: &HttpRequest, outcome: String) -> AuditEntry {
        let (action, resource_type, resource_id) = described(req);
        let (user_id, username) = self
            .user
            .get()
            .map_or(("", "-"), |(id, name)| (id.as_str(), name.as_str()));
        AuditEntry {
            at: luna_store::now(),
            user_id: user_id.to_owned(),
            username: username.to_owned(),
            action,
            resource_type: resource_type.to_owned(),
            resource_id,
            outcome,
            request_id: self.request_id.clone(),
            source: self.source.clone(),
            instance: self.instance.clone(),
        }
    }

    /// Who asked, for an operation the request queues.
    pub(crate) fn requester(&self) -> Requester {
        let (user_id, username) = self.user.get().cloned().unwrap_or_default();
        Requester {
            user_id,
            username,
            request_id: self.request_id.clone(),
        }
    }

    pub(crate) fn mark_written(&self) {
        self.written.store(true, Ordering::SeqCst);
    }

    /// Whether the request's record was written (then the middleware does not).
    pub(crate) fn is_written(&self) -> bool {
        self.written.load(Ordering::SeqCst)
    }
}

/// A handler's hold on its request's audit record, for the change it makes.
#[derive(Debug, Clone)]
pub struct Audit {
    request: RequestAudit,
    req: HttpRequest,
}

impl Audit {
    /// The record of this request's change, to be answered `status`: for the
    /// store to write in the change's own transaction.
    pub fn change(&self, status: u16) -> AuditEntry {
        self.request.entry(&self.req, status.to_string())
    }

    /// Who asked, for an operation the change queues.
    pub fn requester(&self) -> Requester {
        self.request.requester()
    }

    /// The change committed with its record: the middleware writes none.
    pub fn written(&self) {
        self.request.mark_written();
    }
}

impl FromRequest for Audit {
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Audit, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        std::future::ready(Ok(Audit {
            request: RequestAudit::of(req),
            req: req.clone(),
        }))
    }
}

/// What a request is, for its record: the action (method and route), and
/// the type and id of the resource it is about (the route's parameters,
/// joined by `/`, in the order the route names them). Nothing a client put
/// in a path enters the trail unchecked: a path no route matches is
/// `(no route)`, and an `{id}` that is not a UUID is `-` (a refresh token
/// sent to the logout route by mistake, say).
fn described(req: &HttpRequest) -> (String, &'static str, String) {
    let route = req.match_pattern().unwrap_or_else(|| "(no route)".to_owned());
    let action = format!("{} {route}", req.method());
    let id = req
        .match_info()
        .iter()
        .map(|(name, value)| match name {
            "id" if uuid::Uuid::parse_str(value).is_err() => "-",
            _ => value,
        })
        .collect::<Vec<_>>()
        .join("/");
    (action, resource_type(&route), id)
}

/// The kind of resource a route is about, by its path (most specific first).
fn resource_type(route: &str) -> &'static str {
    const KINDS: &[(&str, &str)] = &[
        ("/api/v1/auth/tokens", "session"),
        ("/api/v1/auth/changepw", "user"),
        ("/api/v1/usermgmt/users", "user"),
        ("/api/v1/usermgmt/groups/", "group_membership"),
        (
            "/api/v1/connectionmgmt/services/luna-network/connections/{id}/partitions",
            "connection_member",
        ),
        (
            "/api/v1/connectionmgmt/services/luna-network/connection",
            "connection",
        ),
        (
            "/api/v1/connectionmgmt/services/luna-network/stc-partitions",
            "stc_partition",
        ),
        (
            "/api/v1/connectionmgmt/services/luna-network/servers",
            "hsm_server",
        ),
        ("/api/v1/cckm/hsm/luna/keys", "key"),
        ("/api/v1/cckm/hsm/luna/add-partition", "partition"),
        ("/api/v1/cckm/hsm/luna/partitions", "partition"),
        ("/api/v1/cckm/hsm/luna/refresh", "refresh_job"),
        ("/api/v1/cckm/hsm/luna/synchronize", "synchronize_job"),
        ("/api/v1/cckm/hsm/luna/{id}/delete", "key"),
        ("/api/v1/audit/", "audit_trail"),
        ("/api/v1/xks/keystores", "xks_keystore"),
    ];
    KINDS
        .iter()
        .find(|(prefix, _)| route.starts_with(prefix))
        .map_or("", |(_, kind)| kind)
}

/// A refused password check (a login, a `changepw`): the name it was tried
/// for, and why.
pub(crate) fn refusal(req: &HttpRequest, attempted: &str, reason: &str) -> AuditEntry {
    let audit = RequestAudit::of(req);
    audit.acted_for("", attempted);
    audit.entry(req, format!("401 {reason}"))
}

/// Appends a record that belongs to no change (a refusal, an answer that
/// changed nothing), not synced on its own (docs/reliability.md); a failure
/// is logged, as the answer has gone.
pub(crate) async fn record(store: &Store, entry: AuditEntry) {
    let store = store.clone();
    match actix_web::web::block(move || store.append_audit_deferred(&entry)).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => tracing::error!(%error, "an audit record could not be written"),
        Err(error) => tracing::error!(%error, "an audit record could not be written"),
    }
}
