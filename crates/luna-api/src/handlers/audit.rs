//! `/api/v1/audit/records` and `/api/v1/audit/verify` (admin only).

use actix_web::{web, HttpRequest, HttpResponse};
use luna_domain::query::AuditFilters;
use luna_store::{AuditEntry, AuditRecord};
use serde::Serialize;
use serde_json::json;

use super::{blocking, list_query, listing};
use crate::auth::Administrator;
use crate::error::ApiError;
use crate::state::AppState;
use crate::view::timestamp;

#[derive(Debug, Serialize)]
pub struct AuditView {
    seq: i64,
    at: String,
    username: String,
    action: String,
    target: String,
    outcome: String,
    request_id: String,
    client: String,
    previous_hash: String,
    hash: String,
}

impl From<&AuditRecord> for AuditView {
    fn from(r: &AuditRecord) -> Self {
        AuditView {
            seq: r.seq,
            at: timestamp(r.entry.at),
            username: r.entry.username.clone(),
            action: r.entry.action.clone(),
            target: r.entry.target.clone(),
            outcome: r.entry.outcome.clone(),
            request_id: r.entry.request_id.clone(),
            client: r.entry.client.clone(),
            previous_hash: r.previous_hash.clone(),
            hash: r.hash.clone(),
        }
    }
}

pub async fn list(
    state: web::Data<AppState>,
    _caller: Administrator,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let query = list_query::<AuditFilters>(req.query_string())?;
    let page = query.page;
    let store = state.store.clone();
    let listed = blocking(move || {
        Ok(store.list_audit(
            query.filters.username.as_deref(),
            query.filters.action.as_deref(),
            page.skip,
            page.limit,
        )?)
    })
    .await?;
    Ok(listing(page, listed, |r| AuditView::from(r)))
}

/// Walks the chain: `{"intact": true}`, or where it breaks.
pub async fn verify(state: web::Data<AppState>, _caller: Administrator) -> Result<HttpResponse, ApiError> {
    let store = state.store.clone();
    let broken = blocking(move || Ok(store.verify_audit()?)).await?;
    Ok(HttpResponse::Ok().json(match broken {
        None => json!({"intact": true}),
        Some(seq) => json!({"intact": false, "broken_at": seq}),
    }))
}

/// Appends a record; a failure is logged, never the request's undoing.
pub(crate) async fn record(state: &AppState, entry: AuditEntry) {
    let store = state.store.clone();
    if let Err(error) = blocking(move || Ok(store.append_audit(&entry)?)).await {
        tracing::error!(%error, "an audit record could not be written");
    }
}
