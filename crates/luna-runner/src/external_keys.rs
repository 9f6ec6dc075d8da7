//! External keys as an AWS KMS external key store's proxy uses them: AES-GCM
//! through a key's object on the first member of its partition that
//! answers (an HA group answers while any member does), each object found
//! once and its handle kept, each token refusal named as the XKS proxy API
//! names it (a token away is the retryable `DependencyTimeoutException`).

use std::collections::HashMap;
use std::sync::Arc;

use luna_domain::xks::{XksError, XksErrorName};
use luna_domain::{Key, Partition};
use luna_pkcs11::{GcmSealed, ObjectRef, Token, TokenError};
use parking_lot::Mutex;
use uuid::Uuid;

use crate::tokens::OpenTokens;
use crate::Failure;

/// The partitions' tokens, and the object handle of each external key on
/// each member (by key and member serial number). A handle that fails is
/// looked up again (the module re-initialised, the key replaced).
#[derive(Debug)]
pub struct ExternalKeys {
    tokens: Arc<OpenTokens>,
    handles: Mutex<HashMap<(Uuid, String), ObjectRef>>,
}

impl ExternalKeys {
    pub fn new(tokens: Arc<OpenTokens>) -> ExternalKeys {
        ExternalKeys {
            tokens,
            handles: Mutex::new(HashMap::new()),
        }
    }

    /// Encrypts `plaintext` under `key` with `aad` (the token draws the
    /// IV); with `round_trip`, only once the token has decrypted what it
    /// made back to the plaintext (a failed round trip, which no token
    /// should allow, is an internal error, not the caller's).
    pub fn encrypt(
        &self,
        key: &Key,
        partition: &Partition,
        aad: &[u8],
        plaintext: &[u8],
        round_trip: bool,
    ) -> Result<GcmSealed, XksError> {
        self.on_members(key, partition, &|token, handle| {
            let sealed = token.encrypt_gcm(handle, aad, plaintext)?;
            // The key's refusal to decrypt (CKA_DECRYPT taken away on the
            // token) is answered as such; the token's own failure as one.
            if round_trip && token.decrypt_gcm(handle, aad, &sealed)? != plaintext {
                return Err(TokenError::MalformedObject {
                    handle: 0,
                    attribute: "AES-GCM output",
                    problem: "the ciphertext the token made does not decrypt to the plaintext".to_owned(),
                });
            }
            Ok(sealed)
        })
    }

    /// Decrypts `sealed` under `key` with `aad`; what does not authenticate
    /// is `InvalidCiphertextException`.
    pub fn decrypt(
        &self,
        key: &Key,
        partition: &Partition,
        aad: &[u8],
        sealed: &GcmSealed,
    ) -> Result<Vec<u8>, XksError> {
        self.on_members(key, partition, &|token, handle| {
            token.decrypt_gcm(handle, aad, sealed)
        })
    }

    /// Runs `work` with the key's object on the first member of the
    /// partition that answers: a member away is passed over.
    fn on_members<T>(
        &self,
        key: &Key,
        partition: &Partition,
        work: &dyn Fn(&dyn Token, ObjectRef) -> luna_pkcs11::Result<T>,
    ) -> Result<T, XksError> {
        // Why a member could not be asked (away, failing): then a key no
        // member answered for may yet be on it, and the call is to be retried.
        let mut unasked = None;
        for member in &partition.members {
            let token = match self.tokens.member(partition.connection_id, member) {
                Ok(token) => token,
                // Retrying will not help (the connection gone, its PIN
                // refused): the operator's to mend, and logged for them.
                Err(Failure::Final(reason)) => {
                    tracing::error!(%reason, member = %member.serial_number, "an XKS call cannot use a partition member");
                    unasked = Some(XksError::new(
                        XksErrorName::Internal,
                        "a member of the HSM partition cannot be used",
                    ));
                    continue;
                }
                Err(failure) => {
                    tracing::debug!(
                        reason = failure.reason(),
                        "an XKS call passed over a partition member"
                    );
                    unasked = Some(member_away());
                    continue;
                }
            };
            let cached = (key.id, member.serial_number.clone());
            let before = self.handles.lock().get(&cached).copied();
            let mut held = before;
            let attempted = attempt(token.as_ref(), key, &mut held, work);
            // Written back only when it changed: most calls use the handle kept.
            if held != before {
                match held {
                    Some(handle) => self.handles.lock().insert(cached, handle),
                    None => self.handles.lock().remove(&cached),
                };
            }
            match attempted {
                Attempt::Done(answer) => return answer,
                // A token whose store went away can still answer a search,
                // with nothing found (SoftHSM2 does): not found counts only
                // if the token answers a look after it.
                Attempt::NotHeld if !token.probe().is_reachable() => unasked = Some(member_away()),
                Attempt::NotHeld => {}
                Attempt::Failed(error) => unasked = Some(token_refusal(&error)),
            }
        }
        Err(unasked.unwrap_or_else(|| {
            XksError::new(
                XksErrorName::KeyNotFound,
                "the key is no longer on the HSM partition",
            )
        }))
    }
}

/// A token's refusal as the spec names it; a token away, or not answering
/// in time, is the retryable `DependencyTimeoutException`.
fn token_refusal(error: &TokenError) -> XksError {
    match error {
        TokenError::KeyUseNotPermitted { function, .. } => XksError::new(
            XksErrorName::InvalidKeyUsage,
            format!("the HSM does not allow the key to be used for {function}"),
        ),
        TokenError::NotAuthentic => XksError::new(
            XksErrorName::InvalidCiphertext,
            "the ciphertext, its IV, tag, metadata or additional data is not what was encrypted",
        ),
        TokenError::MechanismUnsupported { .. } => XksError::new(
            XksErrorName::UnsupportedOperation,
            "the HSM partition has no AES-GCM (CKM_AES_GCM)",
        ),
        other if other.is_transient() => XksError::new(
            XksErrorName::DependencyTimeout,
            "the HSM partition did not answer; try again",
        ),
        // What the token said is logged, not answered.
        other => {
            tracing::error!(error = %other, "an XKS call's token call failed");
            XksError::new(XksErrorName::Internal, "the HSM refused the call")
        }
    }
}

fn member_away() -> XksError {
    XksError::new(
        XksErrorName::DependencyTimeout,
        "a member of the HSM partition is unreachable; try again",
    )
}

/// What one member did with the call.
enum Attempt<T> {
    /// The answer, or a refusal the key or the data decide (the same on
    /// any member).
    Done(Result<T, XksError>),
    /// The member does not hold the key.
    NotHeld,
    /// The member failed; another may answer.
    Failed(TokenError),
}

/// Whether a token's refusal is the key's or the data's, not the token's.
fn decisive(error: &TokenError) -> bool {
    matches!(
        error,
        TokenError::KeyUseNotPermitted { .. }
            | TokenError::NotAuthentic
            | TokenError::MechanismUnsupported { .. }
    )
}

/// The call on one member: with the handle `held` from before, and, if that
/// fails for any reason but the key's or the data's, with the key found
/// again. `held` is left as the handle to keep.
fn attempt<T>(
    token: &dyn Token,
    key: &Key,
    held: &mut Option<ObjectRef>,
    work: &dyn Fn(&dyn Token, ObjectRef) -> luna_pkcs11::Result<T>,
) -> Attempt<T> {
    if let Some(handle) = *held {
        match work(token, handle) {
            Ok(done) => return Attempt::Done(Ok(done)),
            Err(error) if decisive(&error) => return Attempt::Done(Err(token_refusal(&error))),
            Err(_) => *held = None,
        }
    }
    let found = match token.find_by_id(&key.cka_id) {
        Ok(found) => found.into_iter().find(|d| d.object_type == key.object_type),
        Err(error) => return Attempt::Failed(error),
    };
    let Some(found) = found else {
        return Attempt::NotHeld;
    };
    *held = Some(found.handle);
    match work(token, found.handle) {
        Ok(done) => Attempt::Done(Ok(done)),
        Err(error) if decisive(&error) => Attempt::Done(Err(token_refusal(&error))),
        Err(error) => {
            *held = None;
            Attempt::Failed(error)
        }
    }
}
