use actix_web::{web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use super::blocking;
use crate::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` or `unavailable`.
    status: &'static str,
}

/// `GET /api/v1/healthz`: 200 once the database answers; no token needed.
#[utoipa::path(get, path = "/api/v1/healthz", tag = "service",
    responses(
        (status = 200, description = "The database answers", body = Health),
        (status = 503, description = "The database does not answer", body = Health)))]
pub async fn healthz(state: web::Data<AppState>) -> HttpResponse {
    let store = state.store.clone();
    match blocking(move || Ok(store.ping()?)).await {
        Ok(()) => HttpResponse::Ok().json(Health { status: "ok" }),
        Err(error) => {
            tracing::warn!(%error, "health check: the database does not answer");
            HttpResponse::ServiceUnavailable()
                .insert_header((
                    actix_web::http::header::RETRY_AFTER,
                    crate::error::RETRY_AFTER_SECS,
                ))
                .json(Health {
                    status: "unavailable",
                })
        }
    }
}
