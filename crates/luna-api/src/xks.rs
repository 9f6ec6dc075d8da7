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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{post, route, web, HttpRequest, HttpResponse};
use luna_domain::xks::keystore::Keystore;
use luna_domain::xks::{
    gcm_aad, integrity_input, ExternalKey, RequestMetadata, XksCall, XksError, XksErrorName,
    CIPHERTEXT_METADATA_V1,
};
use luna_domain::{Key, Partition};
use luna_pkcs11::GcmSealed;
use luna_runner::ExternalKeys;
use luna_store::AuditEntry;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::audit::RequestAudit;
use crate::lookups::XksLookups;
use crate::sigv4::{self, ArrivedRequest};
use crate::state::{AppState, ClientCertified};
use crate::view::{
    EkmMemberView, XksAnswer, XksDecryptedView, XksEncryptedView, XksErrorView, XksHealthView,
    XksKeyMetadataView,
};

/// The service name KMS signs its calls to a proxy with.
pub const SIGV4_SERVICE: &str = "kms-xks-proxy";

/// The largest body taken: the spec's largest plaintext and additional
/// data, base64, with room for the metadata.
const BODY_LIMIT: usize = 64 * 1024;

/// How long a token call may take before the call is answered as the
/// spec's retryable `DependencyTimeoutException` (KMS itself gives up after
/// 250 ms): a token that hangs never holds the caller.
const TOKEN_DEADLINE: Duration = Duration::from_secs(2);

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

/// What a call needs off the async workers, shared with the handler.
struct Work {
    store: luna_store::Store,
    tokens: Arc<luna_runner::OpenTokens>,
    external_keys: Arc<ExternalKeys>,
    lookups: Arc<XksLookups>,
    call: XksCall,
    prefix: String,
    key_id: Option<String>,
    arrived: Arrived,
    /// Filled in as the call learns who made it.
    identified: Arc<Mutex<Identified>>,
    /// The call's audit record, but for who and how it ended.
    record: AuditEntry,
    /// Set by whichever writes the record: the work, or the handler that
    /// stopped waiting for it.
    recorded: Arc<AtomicBool>,
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
    let recorded = Arc::new(AtomicBool::new(false));
    let request = RequestAudit::of(&req);
    request.mark_written();
    let record = request.entry(&req, String::new());
    let answered = match arrived(&state, &req, payload).await {
        Err(error) => Err(error),
        Ok(arrived) => {
            let work = Work {
                store: state.store.clone(),
                tokens: Arc::clone(&state.tokens),
                external_keys: Arc::clone(&state.external_keys),
                lookups: Arc::clone(&state.xks_lookups),
                call,
                prefix: req
                    .match_info()
                    .get("prefix")
                    .unwrap_or_default()
                    .trim_end_matches('/')
                    .to_owned(),
                key_id: req.match_info().get("key_id").map(str::to_owned),
                arrived,
                identified: Arc::clone(&identified),
                record: record.clone(),
                recorded: Arc::clone(&recorded),
            };
            match tokio::time::timeout(TOKEN_DEADLINE, web::block(move || work.run())).await {
                Ok(Ok(answered)) => answered,
                Ok(Err(_)) => Err(XksError::new(XksErrorName::Internal, "the call could not be run")),
                Err(_) => Err(XksError::new(
                    XksErrorName::DependencyTimeout,
                    format!(
                        "the HSM partition did not answer within {} s; try again",
                        TOKEN_DEADLINE.as_secs()
                    ),
                )),
            }
        }
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
    // What the work did not record (it never ran, or it is still waiting
    // on the token) is recorded here, as answered.
    if !recorded.swap(true, Ordering::SeqCst) {
        let entry = audited(record, call, &identified.lock(), &answered);
        crate::audit::record(&state.store, entry).await;
    }
    match answered {
        Ok(body) => HttpResponse::Ok().json(body),
        Err(error) => {
            if error.name == XksErrorName::Internal {
                tracing::error!(message = %error.message, call = call_name(call), "an XKS call failed");
            }
            refusal(&error)
        }
    }
}

/// The body and what SigV4 signs of the request, once mutual TLS (when on)
/// is known to be there.
async fn arrived(state: &AppState, req: &HttpRequest, payload: web::Payload) -> Result<Arrived, XksError> {
    if state.xks_mutual_tls && req.conn_data::<ClientCertified>().is_none() {
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
    Ok(Arrived::of(req, body.to_vec()))
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
    entry.username = called_by
        .metadata
        .aws_principal_arn
        .clone()
        .unwrap_or_else(|| "-".to_owned());
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
    if let Some(id) = called_by
        .metadata
        .kms_request_id
        .as_deref()
        .filter(|id| plain_id(id))
    {
        entry.request_id = id.to_owned();
    }
    entry
}

/// KMS's request ids and external key ids are plain (UUIDs, the spec's
/// characters): what a client put in a body or path enters the trail only
/// if it is (a request id that is not keeps the request's own).
fn plain_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// The parts of a request SigV4 signs, copied for the blocking pool.
struct Arrived {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Arrived {
    fn of(req: &HttpRequest, body: Vec<u8>) -> Arrived {
        Arrived {
            method: req.method().to_string(),
            // As the client sent it: NormalizePath may have merged slashes
            // the client signed.
            path: req.uri().path().to_owned(),
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

fn unavailable(error: &luna_store::StoreError) -> XksError {
    tracing::error!(%error, "an XKS call could not read the database");
    XksError::new(
        XksErrorName::DependencyTimeout,
        "the service's database did not answer; try again",
    )
}

impl Work {
    /// The call, then its audit record (unless the handler stopped waiting
    /// and wrote it).
    fn run(self) -> Result<XksAnswer, XksError> {
        let answered = self.answer();
        if !self.recorded.swap(true, Ordering::SeqCst) {
            let entry = audited(self.record.clone(), self.call, &self.identified.lock(), &answered);
            if let Err(error) = self.store.append_audit_deferred(&entry) {
                tracing::error!(%error, "an audit record could not be written");
            }
        }
        answered
    }

    /// The keystore at the path, the signature checked against its valid
    /// credentials, the metadata the call needs, and the key it names in
    /// the keystore's partition (each refusal the spec's, in the spec's
    /// order); then the call.
    fn answer(&self) -> Result<XksAnswer, XksError> {
        let keystore = self
            .lookups
            .keystore(&self.prefix, || self.store.keystore_at(&self.prefix))
            .map_err(|e| unavailable(&e))?
            .ok_or_else(|| {
                XksError::new(
                    XksErrorName::InvalidUriPath,
                    format!("no external key store is served at /{}", self.prefix),
                )
            })?;
        self.identified.lock().keystore = Some(keystore.clone());
        let now = luna_store::now();
        let request = ArrivedRequest {
            method: &self.arrived.method,
            path: &self.arrived.path,
            query: &self.arrived.query,
            headers: &self.arrived.headers,
            body: &self.arrived.body,
        };
        let mut read_failed = None;
        let verified = sigv4::verify(&request, &keystore.region, SIGV4_SERVICE, now, |access_key_id| {
            let read = || self.store.credential_secret(keystore.id, access_key_id, now);
            match self.lookups.secret(keystore.id, access_key_id, read) {
                Ok(secret) => secret.into_iter().collect(),
                Err(error) => {
                    read_failed = Some(error);
                    Vec::new()
                }
            }
        });
        if let Some(error) = read_failed {
            return Err(unavailable(&error));
        }
        let access_key_id = verified
            .map_err(|refused| XksError::new(XksErrorName::AuthenticationFailed, refused.to_string()))?;
        self.identified.lock().access_key_id = access_key_id;
        let body = &self.arrived.body;
        let metadata = wire::metadata(body)?;
        metadata.check(self.call)?;
        {
            let mut identified = self.identified.lock();
            identified.metadata = metadata;
            identified.key_id = self.key_id.clone().filter(|id| plain_id(id));
        }
        let Some(key_id) = &self.key_id else {
            return Ok(XksAnswer::Health(self.health(&keystore)));
        };
        let (key, external, partition) = self.external_key(&keystore, key_id)?;
        external.allows(self.call)?;
        match self.call {
            XksCall::GetKeyMetadata | XksCall::GetHealthStatus => {
                Ok(XksAnswer::KeyMetadata(XksKeyMetadataView::new(&external)))
            }
            XksCall::Encrypt => self.encrypt(&key, &external, &partition, body),
            XksCall::Decrypt => self.decrypt(&key, &partition, body),
        }
    }

    /// The key `key_id` names, if it is an external key of the keystore's
    /// partition: a key of another partition, forgotten by the service or
    /// destroyed, is not found.
    fn external_key(
        &self,
        keystore: &Keystore,
        key_id: &str,
    ) -> Result<(Key, ExternalKey, Partition), XksError> {
        let not_found = || {
            XksError::new(
                XksErrorName::KeyNotFound,
                format!("no external key {key_id:?} is in this key store's partition"),
            )
        };
        let id = Uuid::parse_str(key_id).map_err(|_| not_found())?;
        let key = self
            .lookups
            .key(id, || self.store.get_key(id))
            .map_err(|e| unavailable(&e))?
            .filter(|key| key.partition_id == keystore.partition_id)
            .ok_or_else(not_found)?;
        let external = ExternalKey::of(&key)?;
        let partition = self
            .lookups
            .partition(keystore.partition_id, || {
                self.store.get_partition(keystore.partition_id)
            })
            .map_err(|e| unavailable(&e))?
            .ok_or_else(|| {
                XksError::new(
                    XksErrorName::KeyNotFound,
                    "the key store's partition is no longer registered with the service",
                )
            })?;
        Ok((key, external, partition))
    }

    /// Encrypts under the key: the token draws the IV; the tag
    /// authenticates the request's additional data and this proxy's
    /// ciphertext metadata. An integrity value is given for what decrypts
    /// again.
    fn encrypt(
        &self,
        key: &Key,
        external: &ExternalKey,
        partition: &Partition,
        body: &[u8],
    ) -> Result<XksAnswer, XksError> {
        let request = wire::encrypt_request(body)?;
        let with_integrity = request.check()?;
        if with_integrity {
            external.allows_integrity_value()?;
        }
        let aad = gcm_aad(&request.aad, CIPHERTEXT_METADATA_V1);
        let sealed = self
            .external_keys
            .encrypt(key, partition, &aad, &request.plaintext, with_integrity)?;
        let integrity_value = with_integrity.then(|| {
            Sha256::digest(integrity_input(
                &request.aad,
                CIPHERTEXT_METADATA_V1,
                &sealed.iv,
                &sealed.ciphertext,
                &sealed.tag,
            ))
        });
        Ok(XksAnswer::Encrypted(XksEncryptedView::new(
            &sealed.iv,
            &sealed.ciphertext,
            &sealed.tag,
            CIPHERTEXT_METADATA_V1,
            integrity_value.as_deref(),
        )))
    }

    /// Decrypts under the key; what does not authenticate is the spec's
    /// `InvalidCiphertextException`.
    fn decrypt(&self, key: &Key, partition: &Partition, body: &[u8]) -> Result<XksAnswer, XksError> {
        let request = wire::decrypt_request(body)?;
        request.check()?;
        let aad = gcm_aad(&request.aad, &request.metadata);
        let sealed = GcmSealed {
            iv: request.iv,
            ciphertext: request.ciphertext,
            tag: request.tag,
        };
        let plaintext = self.external_keys.decrypt(key, partition, &aad, &sealed)?;
        Ok(XksAnswer::Decrypted(XksDecryptedView::new(&plaintext)))
    }

    /// The proxy and the partition's members as the spec's health answer:
    /// each member `ACTIVE`, or `UNAVAILABLE` while it is away.
    fn health(&self, keystore: &Keystore) -> XksHealthView {
        let partition = self.lookups.partition(keystore.partition_id, || {
            self.store.get_partition(keystore.partition_id)
        });
        let described: Vec<(String, Option<luna_pkcs11::TokenInfo>, bool)> = match partition {
            Ok(Some(partition)) => partition
                .members
                .iter()
                .map(|member| {
                    let (info, away) = self.tokens.describe(partition.connection_id, member);
                    let active = info.is_ok() && away.is_none_or(|r| r.away_since.is_none());
                    (member.serial_number.clone(), info.ok(), active)
                })
                .collect(),
            _ => Vec::new(),
        };
        let ekm_vendor = described
            .iter()
            .find_map(|(_, info, _)| info.as_ref().map(|i| i.manufacturer.clone()))
            .unwrap_or_default();
        XksHealthView {
            xks_proxy_fleet_size: 1,
            xks_proxy_vendor: "luna-cckm",
            xks_proxy_model: concat!("luna-cckm ", env!("CARGO_PKG_VERSION")),
            ekm_vendor,
            ekm_fleet_details: described
                .into_iter()
                .map(|(id, info, active)| EkmMemberView {
                    id,
                    model: info.map(|i| i.model).unwrap_or_default(),
                    health_status: if active { "ACTIVE" } else { "UNAVAILABLE" },
                })
                .collect(),
        }
    }
}
