//! The AWS KMS external key store proxy API, version 1
//! (`aws/aws-kms-xksproxy-api-spec`): `POST /{uri_path_prefix}/kms/xks/v1/`
//! `health` and `keys/{externalKeyId}/{metadata,encrypt,decrypt}`, each signed
//! with SigV4 by a keystore's credential, answered in the spec's JSON and
//! error names (not the CCKM API's: these routes are outside its document).
//! The rules are luna-domain `xks`'s; the cipher is the token's AES-GCM
//! through the keystore's partition (luna-runner `ExternalKeys`: any
//! reachable member of an HA group).
//! Every call is audited (who from the spec's `requestMetadata`, never
//! plaintext) and timed in `/metrics`.

mod wire;
mod work;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{post, route, web, HttpMessage, HttpRequest, HttpResponse};
use luna_domain::xks::keystore::Keystore;
use luna_domain::xks::{RequestMetadata, XksCall, XksError, XksErrorName};
use luna_store::AuditEntry;
use parking_lot::Mutex;

use crate::audit::RequestAudit;
use crate::request_id::acceptable;
use crate::state::{AppState, ClientCertified, RawPath};
use crate::view::{XksAnswer, XksErrorView};
use work::Work;

/// The service name KMS signs its calls to a proxy with.
pub const SIGV4_SERVICE: &str = "kms-xks-proxy";

/// The largest body taken: the spec's largest plaintext and additional
/// data, base64, with room for the metadata.
const BODY_LIMIT: usize = 64 * 1024;

/// How long a token call may take before the call is answered as the
/// spec's retryable `DependencyTimeoutException` (KMS itself gives up after
/// 250 ms): a token that hangs never holds the caller.
const TOKEN_DEADLINE: Duration = Duration::from_secs(2);

/// XKS calls in flight at once on an instance; past them a call is the
/// spec's `ThrottlingException` (429, which KMS retries): calls held up by
/// a token that hangs cannot take the whole blocking pool, which the CCKM
/// API's requests share.
const MOST_IN_FLIGHT: usize = 64;

/// Counts a call in flight while it lives.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(count: &'a AtomicUsize) -> Option<InFlight<'a>> {
        if count.fetch_add(1, Ordering::SeqCst) >= MOST_IN_FLIGHT {
            count.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(InFlight(count))
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

// The routes' prefix is `{prefix}`: empty, or segments of the spec's
// characters, each followed by `/`.

/// GetHealthStatus.
#[post("/{prefix:(?:[A-Za-z0-9_/-]+/)?}kms/xks/v1/health")]
pub async fn health(state: web::Data<AppState>, req: HttpRequest, payload: web::Payload) -> HttpResponse {
    serve(state, req, payload, XksCall::GetHealthStatus).await
}

/// GetKeyMetadata, Encrypt and Decrypt.
#[post("/{prefix:(?:[A-Za-z0-9_/-]+/)?}kms/xks/v1/keys/{key_id}/{call:metadata|encrypt|decrypt}")]
pub async fn key_call(state: web::Data<AppState>, req: HttpRequest, payload: web::Payload) -> HttpResponse {
    let call = match req.match_info().get("call") {
        Some("metadata") => XksCall::GetKeyMetadata,
        Some("encrypt") => XksCall::Encrypt,
        _ => XksCall::Decrypt,
    };
    serve(state, req, payload, call).await
}

/// The API is POST only.
#[route(
    "/{prefix:(?:[A-Za-z0-9_/-]+/)?}kms/xks/v1/{call:health|keys/[^/]+/(?:metadata|encrypt|decrypt)}",
    method = "GET",
    method = "HEAD",
    method = "PUT",
    method = "PATCH",
    method = "DELETE",
    method = "OPTIONS"
)]
pub async fn not_post(req: HttpRequest) -> HttpResponse {
    let error = XksError::new(
        XksErrorName::Validation,
        format!(
            "{} is not taken here; the XKS proxy API is POST only",
            req.method()
        ),
    );
    HttpResponse::MethodNotAllowed()
        .insert_header(("Allow", "POST"))
        .json(XksErrorView::new(&error))
}

/// Any other path under the API's root: no such call here, in the spec's
/// error shape (a CCKM 404 would not be read by KMS).
#[route(
    "/{prefix:(?:[A-Za-z0-9_/-]+/)?}kms/xks/{rest:.*}",
    method = "POST",
    method = "GET",
    method = "HEAD",
    method = "PUT",
    method = "PATCH",
    method = "DELETE",
    method = "OPTIONS"
)]
pub async fn no_such_call() -> HttpResponse {
    let error = XksError::new(
        XksErrorName::InvalidUriPath,
        "no XKS proxy call is served at this path: the calls are POST .../kms/xks/v1/health and .../kms/xks/v1/keys/{externalKeyId}/metadata, encrypt or decrypt",
    );
    refusal(&error)
}

/// A refusal in the spec's shape, with its status.
fn refusal(error: &XksError) -> HttpResponse {
    HttpResponse::build(
        StatusCode::from_u16(error.name.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
    )
    .json(XksErrorView::new(error))
}

/// Who called, as far as the call got to know: for its audit record and
/// its figures.
#[derive(Debug, Default)]
struct Identified {
    keystore: Option<Keystore>,
    /// The credential the signature was checked with.
    access_key_id: String,
    metadata: RequestMetadata,
    /// The key the path names, once the caller is known.
    key_id: Option<String>,
}

fn call_name(call: XksCall) -> &'static str {
    match call {
        XksCall::GetHealthStatus => "GetHealthStatus",
        XksCall::GetKeyMetadata => "GetKeyMetadata",
        XksCall::Encrypt => "Encrypt",
        XksCall::Decrypt => "Decrypt",
    }
}

/// One call: answered, audited and counted, whatever its outcome. The
/// lookups, the signature, the token call and the audit record run in one
/// stay on the blocking pool (each hop between threads costs more than a
/// token's AES-GCM), bounded by `TOKEN_DEADLINE`.
async fn serve(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
    call: XksCall,
) -> HttpResponse {
    let started = Instant::now();
    let identified = Arc::new(Mutex::new(Identified::default()));
    // Set by whichever is to write the call's record: the work, or this
    // handler once it stops waiting (then the work, if it has not begun,
    // does nothing).
    let recorded = Arc::new(AtomicBool::new(false));
    let request = RequestAudit::of(&req);
    request.mark_written();
    let record = request.entry(&req, String::new());
    // A slot is taken once the body is in: a client that trickles its body
    // (or sends none) holds no slot meanwhile.
    let (answered, record_here) = match arrived(&state, &req, payload).await {
        Err(error) => (Err(error), true),
        Ok(arrived) => match InFlight::enter(&state.xks_calls_in_flight) {
            None => (
                Err(XksError::new(
                    XksErrorName::Throttling,
                    format!("{MOST_IN_FLIGHT} XKS calls are in flight on this instance; try again"),
                )),
                true,
            ),
            Some(_in_flight) => {
                let work = Work::new(
                    &state,
                    &req,
                    call,
                    arrived,
                    &identified,
                    record.clone(),
                    &recorded,
                );
                run_bounded(work, &recorded).await
            }
        },
    };
    let outcome = match &answered {
        Ok(_) => "ok",
        Err(error) => error.name.as_str(),
    };
    let keystore = identified.lock().keystore.as_ref().map(|k| k.name.clone());
    state.edge_metrics.observe_xks(
        keystore.as_deref().unwrap_or("-"),
        call_name(call),
        outcome,
        started.elapsed().as_secs_f64(),
    );
    // What the work did not record (it never ran, or it had not begun when
    // this handler stopped waiting) is recorded here, as answered.
    if record_here {
        let entry = audited(record, call, &identified.lock(), &answered);
        crate::audit::record(&state.store, entry).await;
    }
    let mut answer = match answered {
        Ok(body) => HttpResponse::Ok().json(body),
        Err(error) => {
            if error.name == XksErrorName::Internal {
                tracing::error!(message = %error.message, call = call_name(call), "an XKS call failed");
            }
            refusal(&error)
        }
    };
    // A plaintext or a key's answer is no cache's to keep.
    answer.headers_mut().insert(
        actix_web::http::header::CACHE_CONTROL,
        actix_web::http::header::HeaderValue::from_static("no-store"),
    );
    answer
}

/// The work, waited for `TOKEN_DEADLINE` at most: past it the call is
/// `DependencyTimeoutException`, unless the work is already writing its
/// record, whose answer is then the one given (the trail and the answer
/// never differ). Whether the handler is to write the call's record.
async fn run_bounded(work: Work, recorded: &AtomicBool) -> (Result<XksAnswer, XksError>, bool) {
    let mut running = actix_web::rt::task::spawn_blocking(move || work.run());
    let not_run = || XksError::new(XksErrorName::Internal, "the call could not be run");
    match tokio::time::timeout(TOKEN_DEADLINE, &mut running).await {
        Ok(Ok(answered)) => (answered, false),
        // It panicked: recorded only if it got that far.
        Ok(Err(_)) => (Err(not_run()), !recorded.swap(true, Ordering::SeqCst)),
        Err(_) if recorded.swap(true, Ordering::SeqCst) => {
            (running.await.unwrap_or_else(|_| Err(not_run())), false)
        }
        // Claimed: the work, when it gets to run, answers nobody and records nothing.
        Err(_) => (
            Err(XksError::new(
                XksErrorName::DependencyTimeout,
                format!(
                    "the HSM partition did not answer within {} s; try again",
                    TOKEN_DEADLINE.as_secs()
                ),
            )),
            true,
        ),
    }
}

/// The body and what SigV4 signs of the request, once mutual TLS (when on)
/// is known to be there.
async fn arrived(state: &AppState, req: &HttpRequest, payload: web::Payload) -> Result<Arrived, XksError> {
    if state.xks_client_subject.is_some() && req.conn_data::<ClientCertified>().is_none() {
        return Err(XksError::new(
            XksErrorName::AuthenticationFailed,
            "this proxy takes XKS calls only over mutual TLS: the connection must present a client certificate",
        ));
    }
    let body = match payload.to_bytes_limited(BODY_LIMIT).await {
        Ok(Ok(body)) => body,
        Ok(Err(_)) => {
            return Err(XksError::new(
                XksErrorName::Validation,
                format!("the request body is larger than {} KiB", BODY_LIMIT / 1024),
            ))
        }
        Err(error) => {
            return Err(XksError::new(
                XksErrorName::Validation,
                format!("the request body could not be read: {error}"),
            ))
        }
    };
    Ok(Arrived::of(req, body))
}

/// The call's audit record: the keystore's credential as the user id, the
/// AWS principal as the name, KMS's request id as the request's (so that
/// the trail meets CloudTrail's), the key, and the outcome with its error
/// name. Never the call's data.
fn audited(
    mut entry: AuditEntry,
    call: XksCall,
    called_by: &Identified,
    answered: &Result<XksAnswer, XksError>,
) -> AuditEntry {
    entry.user_id = called_by.access_key_id.clone();
    // The caller's text: its control characters do not reach the trail.
    entry.username = called_by.metadata.aws_principal_arn.as_deref().map_or_else(
        || "-".to_owned(),
        |arn| {
            arn.chars()
                .map(|c| if c.is_control() { '?' } else { c })
                .collect()
        },
    );
    entry.action = format!("xks {}", call_name(call));
    (entry.resource_type, entry.resource_id) = match (&called_by.key_id, &called_by.keystore) {
        (Some(key), _) => ("key".to_owned(), key.clone()),
        (None, Some(keystore)) => ("xks_keystore".to_owned(), keystore.id.to_string()),
        (None, None) => ("xks_keystore".to_owned(), "-".to_owned()),
    };
    entry.outcome = match answered {
        Ok(_) => "200".to_owned(),
        Err(error) => format!("{} {}", error.name.status(), error.name.as_str()),
    };
    // Kept only if it is as plain as an `X-Request-Id` must be: what a client
    // put in a body enters the trail only so.
    if let Some(id) = called_by
        .metadata
        .kms_request_id
        .as_deref()
        .filter(|id| acceptable(id))
    {
        entry.request_id = id.to_owned();
    }
    entry
}

/// The parts of a request SigV4 signs, copied for the blocking pool.
struct Arrived {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    body: web::Bytes,
}

impl Arrived {
    fn of(req: &HttpRequest, body: web::Bytes) -> Arrived {
        Arrived {
            method: req.method().to_string(),
            // As the client sent it, which is what it signed: NormalizePath
            // merges slashes (an empty prefix makes `//kms/…` of AWS's test
            // client's paths) and drops a trailing one.
            path: req
                .extensions()
                .get::<RawPath>()
                .map_or_else(|| req.uri().path().to_owned(), |raw| raw.0.clone()),
            query: req.query_string().to_owned(),
            headers: req
                .headers()
                .iter()
                .map(|(name, value)| {
                    (
                        name.as_str().to_owned(),
                        String::from_utf8_lossy(value.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body,
        }
    }
}
