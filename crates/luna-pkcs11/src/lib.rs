//! PKCS#11 tokens on the `cryptoki` crate: the service's token boundary.
//!
//! The rest of the service sees a token only through [`Token`]. The
//! implementation, [`Pkcs11Token`], keeps one context per module
//! (initialised for OS locking), a pool of logged-in sessions per token, and
//! PINs as secrets; every token error is typed and names the PKCS#11 function
//! that failed.

mod domain;
mod error;
mod gate;
mod health;
#[cfg(feature = "testing")]
mod latency;
mod mechanisms;
mod module;
mod object;
mod observed;
mod pool;
pub mod softhsm;
mod templates;
#[cfg(feature = "testing")]
pub mod testing;
mod token;
mod token_info;

use std::ops::ControlFlow;

use luna_domain::{Attribute, AttributeSet, Mechanism};

pub use domain::{domain_key_id, DOMAIN_KEY_LABEL};
pub use error::{Pkcs11Failure, Result, TokenError};
pub use health::Reachability;
#[cfg(feature = "testing")]
pub use latency::LatencyToken;
pub use mechanisms::REPLICATION_MECHANISMS;
pub use module::{LibraryInfo, Module, TokenSummary};
pub use object::{fingerprint, ObjectDescription, ObjectRef};
pub use observed::{CallObserver, Observed};
pub use token::{GcmSealed, Pkcs11Token, GCM_IV_BYTES, GCM_TAG_BYTES};

/// What a token says of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    pub label: String,
    pub serial_number: String,
    pub manufacturer: String,
    pub model: String,
    /// Raw `CKM_*` codes of the mechanisms this service uses that the token
    /// supports (probed with `C_GetMechanismInfo`).
    pub mechanisms: Vec<u64>,
}

/// A name for a token that is the same in every process: its label and
/// serial number (openCryptoki gives every token the same serial).
pub fn token_name(label: &str, serial_number: &str) -> String {
    format!("{label}/{serial_number}")
}

impl TokenInfo {
    /// See [`token_name`].
    pub fn name(&self) -> String {
        token_name(&self.label, &self.serial_number)
    }

    pub fn supports(&self, mechanism: Mechanism) -> bool {
        self.mechanisms.contains(&mechanisms::mechanism_code(mechanism))
    }

    /// The mechanism a create of `requested` runs on this token: itself, or
    /// with `remap` the standard one a Luna-specific RSA mechanism maps to.
    pub fn generated_with(&self, requested: Mechanism, remap: bool) -> Result<Mechanism> {
        if self.supports(requested) {
            return Ok(requested);
        }
        let unsupported = |why: String| TokenError::MechanismUnsupported {
            token: self.label.clone(),
            mechanism: requested.to_string(),
            why,
        };
        match requested.remap_target() {
            Some(target) if remap && self.supports(target) => Ok(target),
            Some(target) if remap => Err(unsupported(format!(
                ", nor {target}, the mechanism it is remapped to"
            ))),
            Some(_) => Err(unsupported(", and mechanism remapping is off".into())),
            None => Err(unsupported(String::new())),
        }
    }

    /// The mechanisms replication needs (`REPLICATION_MECHANISMS`) that this
    /// token lacks, by name.
    pub fn missing_for_replication(&self) -> Vec<&'static str> {
        REPLICATION_MECHANISMS
            .iter()
            .filter(|(_, code)| !self.mechanisms.contains(&mechanisms::widen(*code)))
            .map(|(name, _)| *name)
            .collect()
    }

    /// Why keys cannot be replicated to or from this token, if they cannot.
    pub fn cannot_replicate(&self) -> Option<String> {
        let missing = self.missing_for_replication();
        (!missing.is_empty()).then(|| {
            format!(
                "token {:?} ({} {}) lacks {}, which HA members need to replicate keys (the cloning \
                 domain and the transfer of extractable keys both agree a key by ECDH and wrap with AES \
                 key wrap)",
                self.label,
                self.manufacturer,
                self.model,
                missing.join(", ")
            )
        })
    }
}

/// A key to generate. `cka_id` is the key record's UUID, so that a retried
/// create finds the objects an earlier attempt made instead of making more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerateRequest {
    pub cka_id: Vec<u8>,
    pub label: String,
    pub mechanism: Mechanism,
    pub size: u32,
    pub attributes: AttributeSet,
    /// Generate with `CKM_RSA_PKCS_KEY_PAIR_GEN` when the token lacks a Luna RSA mechanism.
    pub remap: bool,
    /// Mark secret and private keys `CKA_WRAP_WITH_TRUSTED`: only a cloning
    /// domain key may wrap them (keys on HA partitions).
    pub wrap_with_trusted: bool,
    /// An earlier attempt may have made the objects (the operation is being
    /// retried): look them up by `CKA_ID` first. A first attempt skips the
    /// lookup, whose cost grows with the token's object count (30 ms on a
    /// SoftHSM2 token of 2,000 objects).
    pub retry: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    /// The mechanism that ran (after any remap).
    pub generated_with: Mechanism,
    /// The secret key, or the private key then the public key.
    pub objects: Vec<ObjectDescription>,
    /// False when a retry found the objects already there.
    pub created: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanOutcome {
    pub seen: usize,
    pub batches: usize,
    /// True when the visitor asked to stop before the end.
    pub stopped: bool,
}

/// A key on its way from one member to another: a secret or private key
/// wrapped under the two members' domain key, or a public key as its public
/// attributes (`object` carries them, and the identity and attributes of all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Portable {
    pub object: ObjectDescription,
    pub wrapped: Option<Vec<u8>>,
    /// Set when the key was wrapped without a cloning domain: the sender's
    /// ephemeral P-256 point, for the receiver's half of the agreement.
    pub sender_point: Option<Vec<u8>>,
}

/// The receiving side of a key transport without a cloning domain: an
/// ephemeral P-256 key pair on the receiving token; `point` goes to the sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportOffer {
    pub point: Vec<u8>,
    pub(crate) private: ObjectRef,
}

/// A token the service keeps keys in (one member of a CCKM partition).
pub trait Token: Send + Sync + std::fmt::Debug {
    fn info(&self) -> &TokenInfo;
    /// Whether the token answers, as this process last found it (no call is made).
    fn reachability(&self) -> Reachability;
    /// Looks at the token now (its slot, a fresh session and login), and
    /// when it does not answer and the module is due, re-initialises the
    /// module and looks again; returns what it found. A token found back
    /// counts a recovery and its calls go through again.
    fn probe(&self) -> Reachability;
    /// Generates the key; on a retry, first finds it by `CKA_ID` in case an earlier attempt made it.
    fn generate(&self, request: &GenerateRequest) -> Result<Generated>;
    /// Every token object whose `CKA_ID` is `cka_id`, described.
    fn find_by_id(&self, cka_id: &[u8]) -> Result<Vec<ObjectDescription>>;
    fn describe(&self, object: ObjectRef) -> Result<ObjectDescription>;
    /// Describes several objects on one session.
    fn describe_many(&self, objects: &[ObjectRef]) -> Result<Vec<ObjectDescription>>;
    fn set_attributes(&self, object: ObjectRef, changes: &[(Attribute, bool)]) -> Result<()>;
    fn destroy(&self, object: ObjectRef) -> Result<()>;
    /// Encrypts `plaintext` with AES-GCM under the secret key `key`: a
    /// 12-byte IV the token draws, a 16-byte tag over `aad` and the
    /// ciphertext. A key without `CKA_ENCRYPT` is `KeyUseNotPermitted`.
    fn encrypt_gcm(&self, key: ObjectRef, aad: &[u8], plaintext: &[u8]) -> Result<GcmSealed>;
    /// Decrypts what `encrypt_gcm` made. What does not authenticate (the
    /// ciphertext, IV, tag or `aad` changed) is `NotAuthentic`; a key
    /// without `CKA_DECRYPT` is `KeyUseNotPermitted`.
    fn decrypt_gcm(&self, key: ObjectRef, aad: &[u8], sealed: &GcmSealed) -> Result<Vec<u8>>;
    /// Enumerates every token object in batches of `batch_size`; `visit`
    /// returns `Break` to stop between batches (refresh and cancel use this).
    fn scan(
        &self,
        batch_size: usize,
        visit: &mut dyn FnMut(&[ObjectRef]) -> ControlFlow<()>,
    ) -> Result<ScanOutcome>;
    /// `scan`, with each batch described on the scan's own session. The
    /// visitor must not call back into this token (use this instead of
    /// `describe_many` inside a `scan` visitor).
    fn scan_described(
        &self,
        batch_size: usize,
        visit: &mut dyn FnMut(Vec<ObjectDescription>) -> ControlFlow<()>,
    ) -> Result<ScanOutcome>;
    /// Prepares `object` to travel to the member with serial `target_serial`.
    fn export_to(&self, object: &ObjectDescription, target_serial: &str) -> Result<Portable>;
    /// Makes the travelling key here, with its `CKA_ID`, label and attributes.
    /// A key sent against an offer needs that offer (`import_offered`).
    fn import_from(&self, portable: &Portable, source_serial: &str) -> Result<ObjectDescription>;
    /// Whether this token shares a cloning domain key with the member `peer_serial`.
    fn shares_domain_with(&self, peer_serial: &str) -> Result<bool>;
    /// Without a cloning domain: the receiver's ephemeral half of an agreement.
    fn offer_transport(&self) -> Result<TransportOffer>;
    /// Without a cloning domain: wraps an extractable key (not
    /// `CKA_WRAP_WITH_TRUSTED`) under a key agreed with the offer's point.
    fn export_for_offer(&self, object: &ObjectDescription, offer: &TransportOffer) -> Result<Portable>;
    /// Without a cloning domain: unwraps with the key agreed from `offer`.
    fn import_offered(&self, portable: &Portable, offer: &TransportOffer) -> Result<ObjectDescription>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unsupported_mechanism_says_whether_remapping_could_help() {
        let token = |mechanisms: Vec<u64>| TokenInfo {
            label: "t".into(),
            serial_number: "1".into(),
            manufacturer: String::new(),
            model: String::new(),
            mechanisms,
        };
        let none = token(Vec::new());
        let sentence = |m: Mechanism, remap: bool| none.generated_with(m, remap).unwrap_err().to_string();
        assert_eq!(
            sentence(Mechanism::RsaX931KeyPairGen, false),
            r#"token "t" does not support CKM_RSA_X9_31_KEY_PAIR_GEN, and mechanism remapping is off"#
        );
        assert_eq!(
            sentence(Mechanism::RsaX931KeyPairGen, true),
            r#"token "t" does not support CKM_RSA_X9_31_KEY_PAIR_GEN, nor CKM_RSA_PKCS_KEY_PAIR_GEN, the mechanism it is remapped to"#
        );
        assert_eq!(
            sentence(Mechanism::AesKeyGen, true),
            r#"token "t" does not support CKM_AES_KEY_GEN"#
        );
        let rsa = token(vec![mechanisms::mechanism_code(Mechanism::RsaPkcsKeyPairGen)]);
        assert_eq!(
            rsa.generated_with(Mechanism::RsaFips1863PrimeKeyPairGen, true)
                .unwrap(),
            Mechanism::RsaPkcsKeyPairGen
        );
        assert_eq!(none.missing_for_replication().len(), 3);
        assert!(none
            .cannot_replicate()
            .unwrap()
            .contains("lacks CKM_EC_KEY_PAIR_GEN, CKM_ECDH1_DERIVE, CKM_AES_KEY_WRAP_PAD"));
    }
}
