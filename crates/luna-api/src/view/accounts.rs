//! Users, audit records, the audit chain's check and the login answer, as the API shows them.

use super::*;

#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    user_id: String,
    username: String,
    groups: Vec<String>,
    #[serde(rename = "createdAt")]
    created_at: String,
}

impl From<&StoredUser> for UserView {
    fn from(u: &StoredUser) -> Self {
        UserView {
            user_id: u.id.to_string(),
            username: u.username.clone(),
            groups: u.groups.clone(),
            created_at: timestamp(u.created_at),
        }
    }
}

/// An audit record as the API, the console and every forwarding sink show
/// it (docs/audit.md): the same fields, the same names, versioned by `format`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditView {
    /// The record's format: 3 for every field below; 2 for records written
    /// before user ids, resource types and instances were kept (those are
    /// empty).
    format: i32,
    /// Its place in the trail: 1, 2, 3, … with no gap. A receiver drops a
    /// record whose `seq` it has had (forwarding is at least once).
    seq: i64,
    /// When it happened (RFC 3339, UTC).
    at: String,
    /// Who: the user's id (empty if nobody was admitted) and name (`-` then,
    /// or the name a failed login tried; `luna-server` for the service's own).
    user_id: String,
    username: String,
    /// What: `METHOD route` for a request, `operation <kind>` for an
    /// operation's outcome.
    action: String,
    /// What about: `key`, `user`, `session`, `connection`, `partition`, …
    resource_type: String,
    /// Its id (or the route's parameters, joined by `/`).
    resource_id: String,
    /// The status answered (with the reason of a refused login), or an
    /// operation's `succeeded` / `failed: reason`.
    outcome: String,
    /// The request's `X-Request-Id` (an outcome's: the request that asked for it).
    request_id: String,
    /// The client's address.
    source: String,
    /// The instance that wrote it.
    instance: String,
    /// The chain: the previous record's hash and this one's (HMAC-SHA256 hex).
    previous_hash: String,
    hash: String,
}

impl From<&AuditRecord> for AuditView {
    fn from(r: &AuditRecord) -> Self {
        AuditView {
            format: r.format,
            seq: r.seq,
            at: timestamp(r.entry.at),
            user_id: r.entry.user_id.clone(),
            username: r.entry.username.clone(),
            action: r.entry.action.clone(),
            resource_type: r.entry.resource_type.clone(),
            resource_id: r.entry.resource_id.clone(),
            outcome: r.entry.outcome.clone(),
            request_id: r.entry.request_id.clone(),
            source: r.entry.source.clone(),
            instance: r.entry.instance.clone(),
            previous_hash: r.previous_hash.clone(),
            hash: r.hash.clone(),
        }
    }
}

/// What a walk of the chain found.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChainCheck {
    intact: bool,
    /// The first record found wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    broken_at: Option<i64>,
    /// Why: a record that does not follow from the one before, records cut
    /// off the end, or a rewritten trail.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

impl From<luna_store::AuditCheck> for ChainCheck {
    fn from(check: luna_store::AuditCheck) -> Self {
        match check {
            luna_store::AuditCheck::Intact => ChainCheck {
                intact: true,
                broken_at: None,
                reason: None,
            },
            luna_store::AuditCheck::Broken { at, why } => ChainCheck {
                intact: false,
                broken_at: Some(at),
                reason: Some(why),
            },
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenAnswer {
    jwt: String,
    duration: i64,
    token_type: &'static str,
    /// The login session's id: the same across its refreshes, and what
    /// `DELETE /api/v1/auth/tokens/{id}` takes to log it out.
    refresh_token_id: String,
    refresh_token: String,
}

impl TokenAnswer {
    /// A login's or a refresh's answer.
    pub fn new(jwt: String, duration: i64, session: Uuid, refresh_token: String) -> TokenAnswer {
        TokenAnswer {
            jwt,
            duration,
            token_type: "Bearer",
            refresh_token_id: session.to_string(),
            refresh_token,
        }
    }
}
