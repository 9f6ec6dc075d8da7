use actix_web::{get, web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use super::blocking;
use crate::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`; `degraded` (200: a token this instance uses is away, and its
    /// work waits for it; a restart would not help); `unavailable` (503: the
    /// database does not answer); or `stuck` (503: an operation's token call
    /// has hung: restart this instance).
    status: &'static str,
    /// What is wrong, when something is.
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    /// The tokens that are away, while `degraded`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    unreachable: Vec<UnreachableToken>,
}

/// A token this instance uses that does not answer now.
#[derive(Debug, Serialize, ToSchema)]
pub struct UnreachableToken {
    partition_label: String,
    serial_number: String,
    /// Since when (RFC 3339).
    since: String,
    /// Why it was found unreachable.
    error: String,
}

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
        Ok(()) => HttpResponse::Ok().json(tokens_health(&state.tokens.watched())),
        Err(error) => {
            tracing::warn!(%error, "health check: the database does not answer");
            unhealthy("unavailable", "the database does not answer".into())
        }
    }
}

/// `ok`, or `degraded` naming every token that is away.
fn tokens_health(watched: &[crate::tokens::WatchedToken]) -> Health {
    let unreachable: Vec<UnreachableToken> = watched
        .iter()
        .filter_map(|token| {
            let since = token.reachability.away_since?;
            Some(UnreachableToken {
                partition_label: token.partition_label.clone(),
                serial_number: token.serial_number.clone(),
                since: crate::view::wall_clock(since),
                error: token.reachability.last_error.clone().unwrap_or_default(),
            })
        })
        .collect();
    if unreachable.is_empty() {
        return Health {
            status: "ok",
            detail: None,
            unreachable,
        };
    }
    let names: Vec<String> = unreachable
        .iter()
        .map(|t| {
            format!(
                "{:?} (serial {}) since {}",
                t.partition_label, t.serial_number, t.since
            )
        })
        .collect();
    Health {
        status: "degraded",
        detail: Some(format!(
            "{} unreachable: {}; their work waits for them, and they are looked at every half second",
            if names.len() == 1 {
                "a token is"
            } else {
                "tokens are"
            },
            names.join(", ")
        )),
        unreachable,
    }
}

fn unhealthy(status: &'static str, detail: String) -> HttpResponse {
    HttpResponse::ServiceUnavailable()
        .insert_header((
            actix_web::http::header::RETRY_AFTER,
            crate::error::RETRY_AFTER_SECS,
        ))
        .json(Health {
            status,
            detail: Some(detail),
            unreachable: Vec::new(),
        })
}
