use actix_web::{get, web, HttpResponse};

use super::blocking;
use crate::state::AppState;
use crate::view::Health;

/// `GET /api/v1/healthz`: 200 while the database answers and no token call
/// hangs (`degraded` while a token is away: the instance recovers it by
/// itself); no token needed. A supervisor restarts an instance that answers
/// `stuck`: a PKCS#11 call cannot be cancelled from inside the process.
#[utoipa::path(tag = "service",
    responses(
        (status = 200, description = "The database answers and no token call hangs; `degraded` names the tokens that are away", body = Health),
        (status = 503, description = "The database does not answer, or a token call hangs", body = Health)))]
#[get("/api/v1/healthz")]
pub async fn healthz(state: web::Data<AppState>) -> HttpResponse {
    if let Some((operation, kind, function, waited)) = state.stuck.longest() {
        return unhealthy(
            "stuck",
            format!(
                "operation {operation} ({kind}) has waited {} s for the PKCS#11 module's answer \
                 to {function}; its lease is left to run out; restart this instance",
                waited.as_secs()
            ),
        );
    }
    let store = state.store.clone();
    match blocking(move || Ok(store.ping()?)).await {
        Ok(()) => HttpResponse::Ok().json(Health::of_tokens(&state.tokens.watched())),
        Err(error) => {
            tracing::warn!(%error, "health check: the database does not answer");
            unhealthy("unavailable", "the database does not answer".into())
        }
    }
}

fn unhealthy(status: &'static str, detail: String) -> HttpResponse {
    HttpResponse::ServiceUnavailable()
        .insert_header((
            actix_web::http::header::RETRY_AFTER,
            crate::error::RETRY_AFTER_SECS,
        ))
        .json(Health::unhealthy(status, detail))
}
