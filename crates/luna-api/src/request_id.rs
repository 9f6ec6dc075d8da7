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

impl RequestId {
    /// The id of `req` (`-` outside the middleware, as in a unit test).
    pub fn of(req: &actix_web::HttpRequest) -> String {
        actix_web::HttpMessage::extensions(req)
            .get::<RequestId>()
            .map_or_else(|| "-".to_owned(), |r| r.0.clone())
    }
}

/// A client's id is kept if it is 1 to 128 characters of letters, digits,
/// `-`, `_` and `.`; anything else (it would land in logs) is replaced.
/// The same rule keeps a client's ids out of the audit trail (the XKS
/// proxy's `kmsRequestId` and external key ids).
pub(crate) fn acceptable(id: &str) -> bool {
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
    // Every request that would change something is audited, and every one
    // refused for who sent it (401, 403), under the user the auth check
    // admits (`-` if none does). A change writes its record itself, in its
    // own transaction; what is left for here changed nothing.
    let reads = [
        actix_web::http::Method::GET,
        actix_web::http::Method::HEAD,
        actix_web::http::Method::OPTIONS,
    ];
    let mutating = !reads.contains(req.method());
    let instance = req
        .app_data::<actix_web::web::Data<crate::state::AppState>>()
        .map_or("-", |state| state.instance.as_str());
    let audit = crate::audit::RequestAudit::new(&id, &client, instance);
    actix_web::HttpMessage::extensions_mut(&req).insert(audit.clone());
    let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.path());
    let started = std::time::Instant::now();
    let mut response = next.call(req).instrument(span.clone()).await?;
    let request = response.request().clone();
    if let Some(state) = request.app_data::<actix_web::web::Data<crate::state::AppState>>() {
        let route = request.match_pattern().unwrap_or_else(|| "unmatched".to_owned());
        let status = response.status().as_u16();
        state.edge_metrics.observe_request(
            &route,
            request.method().as_str(),
            status,
            started.elapsed().as_secs_f64(),
        );
        let refused_access = status == 401 || status == 403;
        // A change that committed with its record and then failed (its log
        // not synced, say) is in the trail already, as the change it was.
        let committed = response
            .response()
            .error()
            .and_then(|e| e.as_error::<crate::error::ApiError>())
            .is_some_and(crate::error::ApiError::committed);
        if (mutating || refused_access) && !audit.is_written() && !committed {
            let entry = audit.entry(&request, status.to_string());
            crate::audit::record(&state.store, entry)
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
