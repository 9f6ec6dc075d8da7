//! `GET /api/v1/healthz` and `GET /metrics`: what supervisors and scrapers
//! read, without a token.

use actix_web::{get, web, HttpResponse};
use luna_domain::query::{parse_list_query, JobFilters};
use luna_domain::{JobStatus, JobType};

use super::blocking;
use crate::error::ApiError;
use crate::state::AppState;
use crate::view::Health;

/// `GET /api/v1/healthz`: 200 while the database answers and no token call
/// hangs (`degraded` while a token is away: the instance recovers it by
/// itself; or while an audit sink is further behind than the bound); no
/// token needed. A supervisor restarts an instance that answers
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
    let sinks = state.audit_sinks.clone();
    match blocking(move || {
        store.ping()?;
        Ok(crate::forward::lags(&store, &sinks)?)
    })
    .await
    {
        Ok(lags) => HttpResponse::Ok()
            .json(Health::of_tokens(&state.tokens.watched()).with_audit_lags(&lags, state.audit_lag_bound)),
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

/// `GET /metrics`: no token (scrapers keep none); operational figures only,
/// never a key id, label or value.
#[utoipa::path(tag = "service",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
#[get("/metrics")]
pub async fn scrape(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let store = state.store.clone();
    let sinks = state.audit_sinks.clone();
    let (operations, running, lags) = blocking(move || {
        let operations = store.operation_counts_by_kind()?;
        let query = parse_list_query::<JobFilters>(&[
            ("overall_status".into(), JobStatus::InProgress.as_str().into()),
            ("limit".into(), "1000".into()),
        ])?;
        let mut running = Vec::new();
        for job_type in JobType::ALL {
            running.push((*job_type, store.list_jobs(*job_type, &query)?.items));
        }
        Ok((operations, running, crate::forward::lags(&store, &sinks)?))
    })
    .await?;
    let metrics = &state.metrics;
    let watched = state.tokens.watched();
    metrics.observe_tokens(
        watched.iter().map(|t| {
            (
                t.partition_label.as_str(),
                t.serial_number.as_str(),
                &t.reachability,
            )
        }),
        state.tokens.module().reinitialisations(),
    );
    metrics.observe_work(&operations, &running);
    state.edge_metrics.observe_audit_lag(&lags);
    metrics.observe_database(&state.store.write_stats(), state.store.statements_sent());
    let backlog = state.runner.backlog();
    metrics.observe_queues(
        backlog
            .states()
            .into_iter()
            .map(|(p, q)| (p, q.depth, q.drain_per_second)),
        backlog.partition_limit(),
        backlog.total_limit(),
    );
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(metrics.render()?))
}
