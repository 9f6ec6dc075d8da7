use actix_web::{web, HttpResponse};
use serde_json::json;

use super::blocking;
use crate::state::AppState;

/// `GET /api/v1/healthz`: 200 once the database answers; no token needed.
pub async fn healthz(state: web::Data<AppState>) -> HttpResponse {
    let store = state.store.clone();
    match blocking(move || Ok(store.ping()?)).await {
        Ok(()) => HttpResponse::Ok().json(json!({"status": "ok"})),
        Err(error) => {
            tracing::warn!(%error, "health check: the database does not answer");
            HttpResponse::ServiceUnavailable().json(json!({"status": "unavailable"}))
        }
    }
}
