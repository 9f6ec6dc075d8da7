//! `X-Request-Id`: every answer carries one (the client's own, if it sent a
//! sane one), and every log line of the request carries it too.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use tracing::Instrument;

pub const HEADER: &str = "x-request-id";

/// The request's id, for handlers that record it (in the request's extensions).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// A mutating request's audit record, for a handler that writes it in the
/// transaction of its own change (then the middleware does not write it
/// again): what the middleware knows of the request, and the mark.
#[derive(Debug, Clone)]
pub struct RequestAudit {
    username: String,
    target: String,
    request_id: String,
    client: String,
    written: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// The user a request without a bearer token says it acts for (a
    /// password change names its user in the body).
    claimed: std::sync::Arc<std::sync::OnceLock<String>>,
}

impl RequestAudit {
    /// The record of the request `action` (`"POST /api/v1/…"`, the route
    /// as the middleware names it) answered `status`.
    pub fn entry(&self, action: &str, status: u16) -> luna_store::AuditEntry {
        luna_store::AuditEntry {
            at: luna_store::now(),
            username: match self.claimed.get() {
                Some(claimed) if self.username == "-" => claimed.clone(),
                _ => self.username.clone(),
            },
            action: action.to_owned(),
            target: self.target.clone(),
            outcome: status.to_string(),
            request_id: self.request_id.clone(),
            client: self.client.clone(),
        }
    }

    /// The request, sent without a bearer token, names the user it acts for.
    pub fn claimed_by(&self, username: &str) {
        let _first_claim_wins = self.claimed.set(username.to_owned());
    }

    /// The handler's transaction that held the record committed.
    pub fn written(&self) {
        self.written.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A client's id is kept if it is 1 to 128 characters of letters, digits,
/// `-`, `_` and `.`; anything else (it would land in logs) is replaced.
fn acceptable(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = req
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let client = req.connection_info().peer_addr().unwrap_or("-").to_owned();
    actix_web::HttpMessage::extensions_mut(&req).insert(RequestId(id.clone()));
    // Every mutating request is audited (logins: only failures, by their handler).
    let reads = [actix_web::http::Method::GET, actix_web::http::Method::HEAD];
    let login = req.method() == actix_web::http::Method::POST && req.path() == "/api/v1/auth/tokens";
    let audited = (!reads.contains(req.method()) && !login).then(|| {
        let username = req
            .app_data::<actix_web::web::Data<crate::state::AppState>>()
            .and_then(|state| {
                let bearer = req
                    .headers()
                    .get(actix_web::http::header::AUTHORIZATION)
                    .and_then(|h| h.to_str().ok())
                    .and_then(|h| h.strip_prefix("Bearer "))?;
                state.auth.verify(bearer).ok()
            })
            .map_or_else(|| "-".to_owned(), |c| c.preferred_username);
        RequestAudit {
            username,
            target: req.path().to_owned(),
            request_id: id.clone(),
            client: client.clone(),
            written: Default::default(),
            claimed: Default::default(),
        }
    });
    if let Some(audit) = &audited {
        actix_web::HttpMessage::extensions_mut(&req).insert(audit.clone());
    }
    let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.path());
    let started = std::time::Instant::now();
    let mut response = next.call(req).instrument(span.clone()).await?;
    let request = response.request().clone();
    if let Some(state) = request.app_data::<actix_web::web::Data<crate::state::AppState>>() {
        let route = request.match_pattern().unwrap_or_else(|| "unmatched".to_owned());
        let status = response.status().as_u16();
        state.metrics.observe_request(
            &route,
            request.method().as_str(),
            status,
            started.elapsed().as_secs_f64(),
        );
        let unwritten = audited.filter(|a| !a.written.load(std::sync::atomic::Ordering::SeqCst));
        if let Some(audit) = unwritten {
            let entry = audit.entry(&format!("{} {route}", request.method()), status);
            crate::handlers::audit::record(state, entry)
                .instrument(span.clone())
                .await;
        }
    }
    span.in_scope(|| {
        tracing::info!(
            status = response.status().as_u16(),
            %client,
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "answered"
        )
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(HEADER), value);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::acceptable;

    #[test]
    fn only_plain_ids_are_kept() {
        assert!(acceptable("3f2a-77_b.c"));
        assert!(!acceptable(""));
        assert!(!acceptable("a b"));
        assert!(!acceptable("line\nbreak"));
        assert!(!acceptable(&"x".repeat(129)));
    }
}
