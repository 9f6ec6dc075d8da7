//! One XKS call off the async workers: the keystore at the path, the
//! client certificate's name (mutual TLS), the signature, the metadata, the
//! key, the token call, and the call's audit record.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix_web::HttpRequest;
use luna_domain::xks::keystore::Keystore;
use luna_domain::xks::{
    gcm_aad, integrity_input, ExternalKey, XksCall, XksError, XksErrorName, CIPHERTEXT_METADATA_V1,
};
use luna_domain::{Key, Partition};
use luna_pkcs11::GcmSealed;
use luna_runner::ExternalKeys;
use luna_store::AuditEntry;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{audited, wire, Arrived, Identified, SIGV4_SERVICE};
use crate::lookups::XksLookups;
use crate::request_id::acceptable;
use crate::sigv4::{self, ArrivedRequest};
use crate::state::{AppState, ClientCertified};
use crate::view::{
    EkmMemberView, XksAnswer, XksDecryptedView, XksEncryptedView, XksHealthView, XksKeyMetadataView,
};

/// What a call needs off the async workers, shared with the handler.
pub(super) struct Work {
    store: luna_store::Store,
    tokens: Arc<luna_runner::OpenTokens>,
    external_keys: Arc<ExternalKeys>,
    lookups: Arc<XksLookups>,
    call: XksCall,
    prefix: String,
    key_id: Option<String>,
    arrived: Arrived,
    /// With mutual TLS: the name a client certificate must carry
    /// (`{region}` is the keystore's), and the names the connection's carries.
    client_subject: Option<(String, Vec<String>)>,
    /// Filled in as the call learns who made it.
    identified: Arc<Mutex<Identified>>,
    /// The call's audit record, but for who and how it ended.
    record: AuditEntry,
    /// Set by whichever writes the record (see `super::serve`).
    recorded: Arc<AtomicBool>,
}

/// The database did not answer (an outage: retryable); anything else it
/// said is logged and is this service's own error.
fn unavailable(error: &luna_store::StoreError) -> XksError {
    tracing::error!(%error, "an XKS call could not read what it needs of the database");
    if error.is_unavailable() {
        XksError::new(
            XksErrorName::DependencyTimeout,
            "the service's database did not answer; try again",
        )
    } else {
        XksError::new(XksErrorName::Internal, "the call could not be answered")
    }
}

/// Access key ids as this service makes them and as the spec allows them
/// (20 to 30 of `A-Z2-7`): anything else is refused before any lookup, so
/// that a caller cannot fill the lookups with names of its own.
fn plausible_access_key_id(id: &str) -> bool {
    (20..=30).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
}

impl Work {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        state: &AppState,
        req: &HttpRequest,
        call: XksCall,
        arrived: Arrived,
        identified: &Arc<Mutex<Identified>>,
        record: AuditEntry,
        recorded: &Arc<AtomicBool>,
    ) -> Work {
        let client_subject = state.xks_client_subject.clone().map(|subject| {
            let names = req
                .conn_data::<ClientCertified>()
                .map(|c| c.common_names.clone())
                .unwrap_or_default();
            (subject, names)
        });
        Work {
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
            client_subject,
            identified: Arc::clone(identified),
            record,
            recorded: Arc::clone(recorded),
        }
    }

    /// The call, then its audit record; nothing if the handler stopped
    /// waiting before the work began (it has answered and recorded).
    pub(super) fn run(self) -> Result<XksAnswer, XksError> {
        if self.recorded.load(Ordering::SeqCst) {
            return Err(XksError::new(XksErrorName::DependencyTimeout, "answered already"));
        }
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
        if let Some((subject, names)) = &self.client_subject {
            let expected = subject.replace("{region}", &keystore.region);
            if !names.contains(&expected) {
                return Err(XksError::new(
                    XksErrorName::AuthenticationFailed,
                    format!("the client certificate is not issued to {expected}, which this key store takes"),
                ));
            }
        }
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
            if !plausible_access_key_id(access_key_id) {
                return Vec::new();
            }
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
            identified.key_id = self.key_id.clone().filter(|id| acceptable(id));
        }
        let Some(key_id) = &self.key_id else {
            return Ok(XksAnswer::Health(self.health(&keystore)?));
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
        let partition = self.partition(keystore)?.ok_or_else(|| {
            XksError::new(
                XksErrorName::KeyNotFound,
                "the key store's partition is no longer registered with the service",
            )
        })?;
        Ok((key, external, partition))
    }

    /// The keystore's partition, if it is still registered.
    fn partition(&self, keystore: &Keystore) -> Result<Option<Partition>, XksError> {
        self.lookups
            .partition(keystore.partition_id, || {
                self.store.get_partition(keystore.partition_id)
            })
            .map_err(|e| unavailable(&e))
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
    fn health(&self, keystore: &Keystore) -> Result<XksHealthView, XksError> {
        let partition = self.partition(keystore)?.ok_or_else(|| {
            tracing::error!(keystore = %keystore.id, "a keystore's partition is no longer registered");
            XksError::new(
                XksErrorName::Internal,
                "the key store has no partition to answer for",
            )
        })?;
        let described: Vec<(String, Option<luna_pkcs11::TokenInfo>, bool)> = partition
            .members
            .iter()
            .map(|member| {
                let (info, away) = self.tokens.describe(partition.connection_id, member);
                let active = info.is_ok() && away.is_none_or(|r| r.away_since.is_none());
                (member.serial_number.clone(), info.ok(), active)
            })
            .collect();
        let ekm_vendor = described
            .iter()
            .find_map(|(_, info, _)| info.as_ref().map(|i| i.manufacturer.clone()))
            .unwrap_or_default();
        Ok(XksHealthView {
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
        })
    }
}
