//! `/api/v1/audit/records` and `/api/v1/audit/verify` (admin only).

use actix_web::{get, web, HttpRequest, HttpResponse};
use luna_domain::query::AuditFilters;

use super::{blocking, list_page};
use crate::auth::Administrator;
use crate::error::ApiError;
use crate::openapi::ListParams;
use crate::state::AppState;
use crate::view::{AuditView, ChainCheck, ListView};

/// Lists audit records, newest first.
#[utoipa::path(operation_id = "list_audit_records", tag = "audit", security(("bearer" = [])),
    params(ListParams<AuditFilters>),
    responses((status = 200, description = "A page of audit records", body = ListView<AuditView>)))]
#[get("/api/v1/audit/records")]
pub async fn list(
    state: web::Data<AppState>,
    _caller: Administrator,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    list_page::<AuditFilters, _, _>(
        &state.store,
        &req,
        |s, q| s.list_audit(&q.filters, q.page.skip, q.page.limit),
        |r| AuditView::from(r),
    )
    .await
}

/// Walks the chain: `{"intact": true}`, or where it breaks.
#[utoipa::path(operation_id = "verify_audit_chain", tag = "audit", security(("bearer" = [])),
    responses((status = 200, description = "Whether every record follows from the one before", body = ChainCheck)))]
#[get("/api/v1/audit/verify")]
pub async fn verify(state: web::Data<AppState>, _caller: Administrator) -> Result<HttpResponse, ApiError> {
    let store = state.store.clone();
    let check = blocking(move || Ok(store.verify_audit()?)).await?;
    Ok(HttpResponse::Ok().json(ChainCheck::from(check)))
}
