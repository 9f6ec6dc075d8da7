//! Keys: the record of one PKCS#11 object, its vocabulary and its life.
//!
//! A create is accepted as a record `in_progress` (its operation
//! `keycreate`); the runner makes the object and the record becomes
//! `AVAILABLE`, or `FAILED` with the reason. An `AVAILABLE` key may then be
//! updated, replicated or deleted from the HSM, one operation at a time; a
//! delete that succeeds, or a refresh that finds the object on no member,
//! ends it `DELETED`. Every move goes through [`KeyLifecycle::next`].

use std::collections::BTreeMap;

use time::OffsetDateTime;
use uuid::Uuid;

use crate::attribute::{Attribute, AttributeSet};
use crate::error::{DomainError, Result};
use crate::wire::wire_enum;

wire_enum! {
    /// The five key-generation mechanisms of the reference.
    pub enum Mechanism ("mechanism") {
        /// Luna's FIPS 186-3 RSA pair with auxiliary primes (a vendor mechanism).
        RsaFips1863AuxPrimeKeyPairGen => "CKM_RSA_FIPS_186_3_AUX_PRIME_KEY_PAIR_GEN",
        /// RSA pair per ANSI X9.31.
        RsaX931KeyPairGen => "CKM_RSA_X9_31_KEY_PAIR_GEN",
        /// Luna's FIPS 186-3 RSA pair with probable primes (a vendor mechanism).
        RsaFips1863PrimeKeyPairGen => "CKM_RSA_FIPS_186_3_PRIME_KEY_PAIR_GEN",
        /// The standard PKCS#1 RSA pair; every token has it, so remaps go here.
        RsaPkcsKeyPairGen => "CKM_RSA_PKCS_KEY_PAIR_GEN",
        /// An AES secret key.
        AesKeyGen => "CKM_AES_KEY_GEN",
    }
}

impl Mechanism {
    /// The algorithm of the key this mechanism makes, which fixes its sizes.
    pub fn algorithm(self) -> Algorithm {
        match self {
            Mechanism::AesKeyGen => Algorithm::Aes,
            Mechanism::RsaFips1863AuxPrimeKeyPairGen
            | Mechanism::RsaX931KeyPairGen
            | Mechanism::RsaFips1863PrimeKeyPairGen
            | Mechanism::RsaPkcsKeyPairGen => Algorithm::Rsa,
        }
    }

    /// The objects this mechanism makes: a secret key, or a private then a public key.
    pub fn object_types(self) -> &'static [ObjectType] {
        match self.algorithm() {
            Algorithm::Aes => &[ObjectType::SecretKey],
            Algorithm::Rsa => &[ObjectType::PrivateKey, ObjectType::PublicKey],
        }
    }

    /// The mechanism a token without this one generates with instead, when the
    /// connection's remap policy is on (Luna's `RSAKeyGenMechRemap`).
    pub fn remap_target(self) -> Option<Mechanism> {
        match self {
            Mechanism::RsaFips1863AuxPrimeKeyPairGen
            | Mechanism::RsaX931KeyPairGen
            | Mechanism::RsaFips1863PrimeKeyPairGen => Some(Mechanism::RsaPkcsKeyPairGen),
            Mechanism::RsaPkcsKeyPairGen | Mechanism::AesKeyGen => None,
        }
    }
}

wire_enum! {
    /// Key algorithm as the reference spells it in `algorithm`.
    pub enum Algorithm ("algorithm") {
        /// An RSA key pair, recorded as two linked keys.
        Rsa => "rsa",
        /// An AES secret key.
        Aes => "aes",
    }
}

impl Algorithm {
    /// Sizes in bits that the reference allows for this algorithm.
    pub fn allowed_sizes(self) -> &'static [u32] {
        match self {
            Algorithm::Rsa => &[2048, 3072, 4096],
            Algorithm::Aes => &[128, 192, 256],
        }
    }
}

wire_enum! {
    /// The PKCS#11 class of a key object, as `object_type` spells it.
    pub enum ObjectType ("object_type") {
        /// `CKO_SECRET_KEY`: an AES key.
        SecretKey => "secret key",
        /// `CKO_PRIVATE_KEY`: the private half of an RSA pair.
        PrivateKey => "private key",
        /// `CKO_PUBLIC_KEY`: the public half of an RSA pair.
        PublicKey => "public key",
    }
}

wire_enum! {
    /// The life of a key record: `in_progress` → `AVAILABLE` → `DELETED`,
    /// or `in_progress` → `FAILED` when its create fails.
    pub enum KeyStatus ("status") {
        /// Accepted; the create has not made the object yet.
        InProgress => "in_progress",
        /// The object exists; the only status that takes new operations.
        Available => "AVAILABLE",
        /// Deleted from the HSM, or found on no member by a refresh. Final.
        Deleted => "DELETED",
        /// The create failed; `operation_error` says why. Final.
        Failed => "FAILED",
    }
}

wire_enum! {
    /// The operations that change a key; a record shows its last one in `operation`.
    pub enum OperationKind ("operation") {
        /// Generate the object (and clone it to the other HA members).
        KeyCreate => "keycreate",
        /// Change attributes (PATCH), on every member.
        KeyUpdate => "keyupdate",
        /// Copy the key to the HA members that lack it.
        KeyReplicate => "keyreplicate",
        /// Destroy the object on every member (delete-from-HSM).
        KeyDelete => "keydelete",
    }
}

wire_enum! {
    /// The state of a key's last operation (see [`OperationStatus::wire`]
    /// for how a key body spells it).
    pub enum OperationStatus ("operation_status") {
        /// Running; the key takes no other operation until it ends.
        InProgress => "in_progress",
        /// Done on the token(s).
        Completed => "completed",
        /// Ended in failure; the reason is in `operation_error`.
        Failed => "failed",
    }
}

impl OperationStatus {
    /// The reference's spelling in a key body: a create reports `""` while it
    /// runs and `"created"` when done; every other operation uses the plain words.
    pub fn wire(self, operation: OperationKind) -> &'static str {
        match (operation, self) {
            (OperationKind::KeyCreate, OperationStatus::InProgress) => "",
            (OperationKind::KeyCreate, OperationStatus::Completed) => "created",
            (_, status) => status.as_str(),
        }
    }
}

wire_enum! {
    /// Where a key came from.
    pub enum Origin ("origin") {
        /// Made through this service (a create).
        Cckm => "cckm",
        /// Made outside the service and found by a refresh.
        External => "external",
        /// The reference's third value; this service never records it.
        Unknown => "unknown",
    }
}

/// An object's name on its partition when it has a `CKA_ID`: the id in hex
/// and the class as two hex digits (so the halves of a pair differ). Known
/// before the object exists, so a record made by a create carries it from the
/// start and a refresh running meanwhile does not take the object for new.
pub fn object_uid(cka_id: &[u8], object_type: Option<ObjectType>) -> Option<String> {
    if cka_id.is_empty() {
        return None;
    }
    let class: u8 = match object_type {
        Some(ObjectType::PublicKey) => 0x02,
        Some(ObjectType::PrivateKey) => 0x03,
        Some(ObjectType::SecretKey) => 0x04,
        None => 0xff,
    };
    let mut uid = hex::encode(cka_id);
    uid.push_str(&format!("{class:02x}"));
    Some(uid)
}

/// The size a key may have, checked against its mechanism: the size in bits
/// if its algorithm allows it, else a sentence listing the allowed sizes.
pub fn check_size(mechanism: Mechanism, size: i64) -> Result<u32> {
    let allowed = mechanism.algorithm().allowed_sizes();
    match u32::try_from(size) {
        Ok(bits) if allowed.contains(&bits) => Ok(bits),
        _ => Err(DomainError::invalid(format!(
            "size {size} is not allowed for {mechanism}; allowed: {}",
            allowed.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// What a key's life can be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyEvent {
    /// A user asks for an update, replicate or delete-from-HSM.
    Begin(OperationKind),
    /// The running operation finished on the token(s).
    Succeeded,
    /// The running operation failed; the reason is kept for the user.
    Failed(String),
    /// A refresh found the object on no member any more.
    Vanished,
}

/// The part of a key record that changes as operations run. Its fields are
/// private: a lifecycle is one of the two beginnings ([`creating`],
/// [`discovered`]), a state [`next`] moved to, or one read back from storage
/// that the machine can reach ([`restore`]); never a state set by hand.
///
/// [`creating`]: KeyLifecycle::creating
/// [`discovered`]: KeyLifecycle::discovered
/// [`next`]: KeyLifecycle::next
/// [`restore`]: KeyLifecycle::restore
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLifecycle {
    status: KeyStatus,
    operation: OperationKind,
    operation_status: OperationStatus,
    operation_error: Option<String>,
}

/// A key record as it was read: a write made from it is a compare-and-set on
/// this, so that it cannot overwrite a change that landed meanwhile (every
/// write moves `updated_at`; the lifecycle is compared too, in case two land
/// within one microsecond).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyVersion {
    /// The lifecycle as read.
    pub lifecycle: KeyLifecycle,
    /// `updated_at` as read.
    pub updated_at: OffsetDateTime,
}

impl KeyVersion {
    /// The version `key` is at, to write it back only if it still is.
    pub fn of(key: &Key) -> KeyVersion {
        KeyVersion {
            lifecycle: key.lifecycle.clone(),
            updated_at: key.updated_at,
        }
    }
}

impl KeyLifecycle {
    /// A key whose creation was accepted and has not run yet.
    pub fn creating() -> Self {
        KeyLifecycle {
            status: KeyStatus::InProgress,
            operation: OperationKind::KeyCreate,
            operation_status: OperationStatus::InProgress,
            operation_error: None,
        }
    }

    /// A key found on a token by refresh rather than made here.
    pub fn discovered() -> Self {
        KeyLifecycle {
            status: KeyStatus::Available,
            operation: OperationKind::KeyCreate,
            operation_status: OperationStatus::Completed,
            operation_error: None,
        }
    }

    /// Where the key is in its life.
    pub fn status(&self) -> KeyStatus {
        self.status
    }

    /// The last operation begun on the key.
    pub fn operation(&self) -> OperationKind {
        self.operation
    }

    /// How that operation stands; `in_progress` makes the key busy.
    pub fn operation_status(&self) -> OperationStatus {
        self.operation_status
    }

    /// Why that operation failed; `None` unless it did.
    pub fn operation_error(&self) -> Option<&str> {
        self.operation_error.as_deref()
    }

    /// A lifecycle as storage kept it, if the machine can reach it from one
    /// of its beginnings; otherwise why not (the record is corrupt, or was
    /// written by hand). Reachability is worked out from [`next`] itself,
    /// so there is one table of legal moves, not two.
    ///
    /// [`next`]: KeyLifecycle::next
    pub fn restore(
        status: KeyStatus,
        operation: OperationKind,
        operation_status: OperationStatus,
        operation_error: Option<String>,
    ) -> Result<KeyLifecycle> {
        let stored = KeyLifecycle {
            status,
            operation,
            operation_status,
            operation_error,
        };
        // An error text is whatever the token said: compare the shape only.
        let shape = |l: &KeyLifecycle| {
            (
                l.status,
                l.operation,
                l.operation_status,
                l.operation_error.is_some(),
            )
        };
        if Self::reachable().iter().any(|l| shape(l) == shape(&stored)) {
            Ok(stored)
        } else {
            Err(DomainError::invalid(format!(
                "no key can be {status} after {operation} {operation_status}{}",
                if stored.operation_error.is_some() {
                    " with an error"
                } else {
                    ""
                }
            )))
        }
    }

    /// Every lifecycle the machine reaches from its beginnings.
    fn reachable() -> Vec<KeyLifecycle> {
        let events: Vec<KeyEvent> = OperationKind::ALL
            .iter()
            .map(|kind| KeyEvent::Begin(*kind))
            .chain([
                KeyEvent::Succeeded,
                KeyEvent::Failed(String::new()),
                KeyEvent::Vanished,
            ])
            .collect();
        let mut seen = vec![KeyLifecycle::creating(), KeyLifecycle::discovered()];
        let mut next = 0;
        while next < seen.len() {
            for event in &events {
                if let Ok(after) = seen[next].next(event) {
                    if !seen.contains(&after) {
                        seen.push(after);
                    }
                }
            }
            next += 1;
        }
        seen
    }

    /// Whether an operation is running on the key: then it takes no other
    /// (a 409) and a refresh leaves it to that operation.
    pub fn is_busy(&self) -> bool {
        self.operation_status == OperationStatus::InProgress
    }

    /// The next state, or why the event is not allowed now: beginning an
    /// operation on a busy or not-`AVAILABLE` key is a
    /// [`DomainError::Conflict`] (the user may retry later); any other move
    /// the machine lacks (`Begin(KeyCreate)`, an outcome with nothing
    /// running, `Vanished` on a busy or not-`AVAILABLE` key) is a
    /// [`DomainError::IllegalTransition`].
    pub fn next(&self, event: &KeyEvent) -> Result<KeyLifecycle> {
        let illegal = || DomainError::IllegalTransition {
            machine: "key",
            from: format!("{}/{}/{}", self.status, self.operation, self.operation_status),
            event: match event {
                KeyEvent::Begin(kind) => format!("begin {kind}"),
                KeyEvent::Succeeded => "success".into(),
                KeyEvent::Failed(_) => "failure".into(),
                KeyEvent::Vanished => "vanished".into(),
            },
        };
        match event {
            KeyEvent::Begin(OperationKind::KeyCreate) => Err(illegal()),
            KeyEvent::Begin(kind) => {
                if self.is_busy() {
                    return Err(DomainError::Conflict(format!(
                        "the key has a {} operation in progress; wait for it to end",
                        self.operation
                    )));
                }
                if self.status != KeyStatus::Available {
                    return Err(DomainError::Conflict(format!(
                        "{kind} needs an AVAILABLE key; this key is {}",
                        self.status
                    )));
                }
                Ok(KeyLifecycle {
                    status: KeyStatus::Available,
                    operation: *kind,
                    operation_status: OperationStatus::InProgress,
                    operation_error: None,
                })
            }
            KeyEvent::Succeeded if self.is_busy() => Ok(KeyLifecycle {
                status: match self.operation {
                    OperationKind::KeyCreate => KeyStatus::Available,
                    OperationKind::KeyDelete => KeyStatus::Deleted,
                    OperationKind::KeyUpdate | OperationKind::KeyReplicate => self.status,
                },
                operation: self.operation,
                operation_status: OperationStatus::Completed,
                operation_error: None,
            }),
            KeyEvent::Failed(reason) if self.is_busy() => Ok(KeyLifecycle {
                status: match self.operation {
                    OperationKind::KeyCreate => KeyStatus::Failed,
                    _ => self.status,
                },
                operation: self.operation,
                operation_status: OperationStatus::Failed,
                operation_error: Some(reason.clone()),
            }),
            KeyEvent::Vanished if !self.is_busy() && self.status == KeyStatus::Available => {
                Ok(KeyLifecycle {
                    status: KeyStatus::Deleted,
                    ..self.clone()
                })
            }
            KeyEvent::Succeeded | KeyEvent::Failed(_) | KeyEvent::Vanished => Err(illegal()),
        }
    }
}

/// The record of one PKCS#11 key object (one half of an RSA pair, or an AES key).
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    /// The record's id. A key made here has the secret or private record's
    /// id as its objects' `CKA_ID`, on both halves of a pair.
    pub id: Uuid,
    /// The CCKM partition (HA group) the key lives on.
    pub partition_id: Uuid,
    /// That partition's label, as key lists report it.
    pub partition_label: String,
    /// The object's `CKA_LABEL`.
    pub label: String,
    /// Status and last operation; changed only through [`Key::apply`].
    pub lifecycle: KeyLifecycle,
    /// Unknown until the object exists (the reference reports `""`).
    pub algorithm: Option<Algorithm>,
    /// The object's class; unknown, like `algorithm`, until it exists.
    pub object_type: Option<ObjectType>,
    /// The mechanism the user asked for; `None` for keys found by refresh.
    pub mechanism: Option<Mechanism>,
    /// The mechanism the token actually ran, when a remap replaced the requested one.
    pub generated_with: Option<Mechanism>,
    /// Key length in bits (RSA modulus or AES key).
    pub size: u32,
    /// The boolean attributes true on the object (for a wrap-with-trusted
    /// key, `CKA_EXTRACTABLE` as the user set it, not as the token has it).
    pub attributes: AttributeSet,
    /// The object's `CKA_ID`, the identity by which the service finds it on every member.
    pub cka_id: Vec<u8>,
    /// The object's name on its partition: see [`object_uid`], or `fp-` and
    /// the fingerprint for an object without `CKA_ID`.
    pub object_uid: String,
    /// SHA-256 over the object's public identity (never a secret); stays
    /// the same when attributes change.
    pub sha_256_fingerprint: String,
    /// Member serial number → `"available"` or why the key is not there.
    pub replication_info: BTreeMap<String, String>,
    /// Every member holds the key.
    pub replicated: bool,
    /// Made through this service (false for keys a refresh found).
    pub byok_key: bool,
    /// Where the key came from.
    pub origin: Origin,
    /// Lower-case hex; empty until known and for AES.
    pub modulus: String,
    /// The RSA public exponent; 0 for AES.
    pub exponent: u64,
    /// The record of the other half of an RSA pair; `None` for AES, and for
    /// a half found by refresh until its partner has a record.
    pub link_id: Option<Uuid>,
    /// The key's partition is an HA group (several members).
    pub ha_enabled: bool,
    /// When the record was made (accepted, or found by a refresh).
    pub created_at: OffsetDateTime,
    /// When the record last changed; every write moves it, which is what
    /// [`KeyVersion`] compares.
    pub updated_at: OffsetDateTime,
}

impl Key {
    /// Moves the record's life on, stamping `updated_at` with `now`. A
    /// refused event leaves the record as it was.
    pub fn apply(&mut self, event: &KeyEvent, now: OffsetDateTime) -> Result<()> {
        self.lifecycle = self.lifecycle.next(event)?;
        self.updated_at = now;
        Ok(())
    }
}

/// A create request as it arrives, before any rule is checked.
#[derive(Debug, Clone, Default)]
pub struct CreateKeyRequest {
    /// Required: the key's `CKA_LABEL` (see [`check_label`]).
    pub label: Option<String>,
    /// Required: bits, one of the mechanism's algorithm's sizes. Signed, so
    /// that a negative number is refused with a sentence, not by the parser.
    pub size: Option<i64>,
    /// Required: the partition's UUID, as text.
    pub partition_id: Option<String>,
    /// Required: a [`Mechanism`] wire name.
    pub mechanism: Option<String>,
    /// [`Attribute`] wire names to set true; everything else that applies is
    /// set false.
    pub attributes: Vec<String>,
}

/// A create request that passed every rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKeySpec {
    /// The checked label.
    pub label: String,
    /// A size the mechanism allows, in bits.
    pub size: u32,
    /// The partition to make the key on (whether it exists is the caller's to check).
    pub partition_id: Uuid,
    /// The mechanism asked for; the token may run its remap target instead.
    pub mechanism: Mechanism,
    /// As requested; `for_object` gives what each half of an RSA pair gets.
    pub attributes: AttributeSet,
}

/// Labels are stored in `CKA_LABEL` and shown in lists, so they are kept printable.
pub const MAX_LABEL_CHARS: usize = 128;

/// Checks a label for a key or anything else a user names: not blank, at
/// most [`MAX_LABEL_CHARS`] characters, no control characters. `field` names
/// it in the sentence.
pub fn check_label(field: &str, label: &str) -> Result<String> {
    if label.trim().is_empty() {
        return Err(DomainError::invalid(format!("{field} must not be empty")));
    }
    if label.chars().count() > MAX_LABEL_CHARS {
        return Err(DomainError::invalid(format!(
            "{field} is longer than {MAX_LABEL_CHARS} characters"
        )));
    }
    if label.chars().any(char::is_control) {
        return Err(DomainError::invalid(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(label.to_owned())
}

/// Parses an id that names a resource; `field` is used in the sentence.
pub fn parse_id(field: &str, text: &str) -> Result<Uuid> {
    Uuid::parse_str(text).map_err(|_| DomainError::invalid(format!("{field} {text:?} is not a UUID")))
}

impl CreateKeyRequest {
    /// Every rule a create must pass before a record is made: the fields
    /// are present, the label is printable, the partition id is a UUID, the
    /// mechanism and attributes are known names, and the size fits the
    /// mechanism. The first broken rule is refused with a sentence.
    pub fn validate(&self) -> Result<NewKeySpec> {
        let missing = |field: &str| DomainError::invalid(format!("{field} is required"));
        let label = check_label("label", self.label.as_deref().ok_or_else(|| missing("label"))?)?;
        let partition_id = parse_id(
            "partition_id",
            self.partition_id
                .as_deref()
                .ok_or_else(|| missing("partition_id"))?,
        )?;
        let mechanism: Mechanism = self
            .mechanism
            .as_deref()
            .ok_or_else(|| missing("mechanism"))?
            .parse()?;
        let size = check_size(mechanism, self.size.ok_or_else(|| missing("size"))?)?;
        let attributes = AttributeSet::parse_names(&self.attributes)?;
        Ok(NewKeySpec {
            label,
            size,
            partition_id,
            mechanism,
            attributes,
        })
    }
}

/// One `{"type","value"}` of a PATCH body, before checking.
#[derive(Debug, Clone)]
pub struct AttributeChangeRequest {
    /// An [`Attribute`] wire name (the body's `type`).
    pub attribute: String,
    /// The value asked for.
    pub value: bool,
}

/// Checks a PATCH against the key's current attributes with PKCS#11's
/// one-way rules, and returns the changes that actually change something.
///
/// - nothing may change on a key whose `CKA_MODIFIABLE` is false;
/// - `CKA_MODIFIABLE`, `CKA_TOKEN` and `CKA_PRIVATE` are fixed at creation;
/// - `CKA_SENSITIVE` may only go false→true, `CKA_EXTRACTABLE` only true→false;
/// - an attribute must apply to the object's class.
pub fn check_update(
    object_type: ObjectType,
    current: AttributeSet,
    changes: &[AttributeChangeRequest],
) -> Result<Vec<(Attribute, bool)>> {
    if changes.is_empty() {
        return Err(DomainError::invalid("attributes must list at least one change"));
    }
    if !current.contains(Attribute::Modifiable) {
        return Err(DomainError::invalid(
            "the key is not modifiable (CKA_MODIFIABLE is false); no attribute can change",
        ));
    }
    let mut seen = AttributeSet::empty();
    let mut effective = Vec::new();
    for change in changes {
        let attribute: Attribute = change.attribute.parse()?;
        if seen.contains(attribute) {
            return Err(DomainError::invalid(format!(
                "attribute {attribute} is listed twice"
            )));
        }
        seen.insert(attribute);
        let was = current.contains(attribute);
        let value = change.value;
        match attribute {
            Attribute::Token | Attribute::Private | Attribute::Modifiable => {
                return Err(DomainError::invalid(format!(
                    "{attribute} is fixed when the key is created and cannot be updated"
                )));
            }
            _ if !attribute.applies_to(object_type) => {
                return Err(DomainError::invalid(format!(
                    "{attribute} does not apply to a {object_type}"
                )));
            }
            Attribute::Sensitive if was && !value => {
                return Err(DomainError::invalid(
                    "CKA_SENSITIVE can only change from false to true; the key is already sensitive",
                ));
            }
            Attribute::Extractable if !was && value => {
                return Err(DomainError::invalid(
                    "CKA_EXTRACTABLE can only change from true to false; the key is already not extractable",
                ));
            }
            _ => {}
        }
        if was != value {
            effective.push((attribute, value));
        }
    }
    Ok(effective)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(mechanism: &str, size: i64, attributes: &[&str]) -> CreateKeyRequest {
        CreateKeyRequest {
            label: Some("hsm-key".into()),
            size: Some(size),
            partition_id: Some("fe192148-82eb-403f-96b2-125bf28d3824".into()),
            mechanism: Some(mechanism.into()),
            attributes: attributes.iter().map(|a| a.to_string()).collect(),
        }
    }

    #[test]
    fn every_mechanism_accepts_exactly_its_sizes() {
        for &mechanism in Mechanism::ALL {
            for size in [0, 128, 192, 256, 512, 1024, 2048, 3072, 4096, 8192, -1] {
                let result = request(mechanism.as_str(), size, &[]).validate();
                let allowed = mechanism.algorithm().allowed_sizes().contains(&(size as u32));
                assert_eq!(result.is_ok(), allowed, "{mechanism} {size}");
            }
        }
        let err = request("CKM_RSA_PKCS_KEY_PAIR_GEN", 1024, &[])
            .validate()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "size 1024 is not allowed for CKM_RSA_PKCS_KEY_PAIR_GEN; allowed: 2048, 3072, 4096"
        );
    }

    #[test]
    fn the_reference_example_request_is_valid() {
        let spec = request(
            "CKM_RSA_X9_31_KEY_PAIR_GEN",
            2048,
            &["CKA_MODIFIABLE", "CKA_SENSITIVE", "CKA_EXTRACTABLE"],
        )
        .validate()
        .unwrap();
        assert_eq!(spec.mechanism.algorithm(), Algorithm::Rsa);
        assert_eq!(
            spec.mechanism.object_types(),
            [ObjectType::PrivateKey, ObjectType::PublicKey]
        );
        assert_eq!(Mechanism::AesKeyGen.object_types(), [ObjectType::SecretKey]);
        assert_eq!(
            spec.attributes.names(),
            ["CKA_MODIFIABLE", "CKA_SENSITIVE", "CKA_EXTRACTABLE"]
        );
    }

    #[test]
    fn bad_create_fields_are_named() {
        let cases: Vec<(CreateKeyRequest, &str)> = vec![
            (
                CreateKeyRequest {
                    label: None,
                    ..request("CKM_AES_KEY_GEN", 256, &[])
                },
                "label is required",
            ),
            (
                CreateKeyRequest {
                    label: Some(" ".into()),
                    ..request("CKM_AES_KEY_GEN", 256, &[])
                },
                "label must not be empty",
            ),
            (
                CreateKeyRequest {
                    label: Some("a\nb".into()),
                    ..request("CKM_AES_KEY_GEN", 256, &[])
                },
                "control characters",
            ),
            (
                CreateKeyRequest {
                    label: Some("x".repeat(129)),
                    ..request("CKM_AES_KEY_GEN", 256, &[])
                },
                "longer than 128",
            ),
            (
                CreateKeyRequest {
                    partition_id: Some("p1".into()),
                    ..request("CKM_AES_KEY_GEN", 256, &[])
                },
                "partition_id \"p1\" is not a UUID",
            ),
            (
                CreateKeyRequest {
                    size: None,
                    ..request("CKM_AES_KEY_GEN", 256, &[])
                },
                "size is required",
            ),
            (
                request("CKM_DES_KEY_GEN", 256, &[]),
                "mechanism \"CKM_DES_KEY_GEN\" is not supported; allowed: CKM_RSA_FIPS",
            ),
            (
                request("CKM_AES_KEY_GEN", 256, &["CKA_BOGUS"]),
                "attribute \"CKA_BOGUS\" is not supported",
            ),
        ];
        for (req, expected) in cases {
            let err = req.validate().unwrap_err().to_string();
            assert!(err.contains(expected), "{err:?} should contain {expected:?}");
        }
    }

    fn set(names: &[&str]) -> AttributeSet {
        AttributeSet::parse_names(names).unwrap()
    }

    fn change(attribute: &str, value: bool) -> Vec<AttributeChangeRequest> {
        vec![AttributeChangeRequest {
            attribute: attribute.into(),
            value,
        }]
    }

    #[test]
    fn update_rules_follow_pkcs11_one_way_attributes() {
        let modifiable = set(&["CKA_MODIFIABLE"]);
        let sensitive = set(&["CKA_MODIFIABLE", "CKA_SENSITIVE"]);
        let extractable = set(&["CKA_MODIFIABLE", "CKA_EXTRACTABLE"]);
        let secret = ObjectType::SecretKey;
        // allowed directions
        assert_eq!(
            check_update(secret, modifiable, &change("CKA_SENSITIVE", true)).unwrap(),
            [(Attribute::Sensitive, true)]
        );
        assert_eq!(
            check_update(secret, extractable, &change("CKA_EXTRACTABLE", false)).unwrap(),
            [(Attribute::Extractable, false)]
        );
        assert_eq!(
            check_update(secret, modifiable, &change("CKA_SIGN", true)).unwrap(),
            [(Attribute::Sign, true)]
        );
        // no-ops are accepted and dropped
        assert!(check_update(secret, sensitive, &change("CKA_SENSITIVE", true))
            .unwrap()
            .is_empty());
        // refused directions
        for (current, attr, value, needle) in [
            (
                sensitive,
                "CKA_SENSITIVE",
                false,
                "only change from false to true",
            ),
            (
                modifiable,
                "CKA_EXTRACTABLE",
                true,
                "only change from true to false",
            ),
            (set(&["CKA_SIGN"]), "CKA_SIGN", false, "not modifiable"),
            (
                modifiable,
                "CKA_MODIFIABLE",
                false,
                "fixed when the key is created",
            ),
            (modifiable, "CKA_TOKEN", false, "fixed when the key is created"),
        ] {
            let err = check_update(secret, current, &change(attr, value))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{attr}={value}: {err}");
        }
        let err = check_update(ObjectType::PublicKey, modifiable, &change("CKA_SIGN", true)).unwrap_err();
        assert_eq!(err.to_string(), "CKA_SIGN does not apply to a public key");
        assert!(check_update(secret, modifiable, &[]).is_err());
        let twice = [change("CKA_SIGN", true), change("CKA_SIGN", false)].concat();
        assert!(check_update(secret, modifiable, &twice)
            .unwrap_err()
            .to_string()
            .contains("twice"));
    }

    #[test]
    fn create_operation_status_uses_the_reference_spelling() {
        assert_eq!(OperationStatus::InProgress.wire(OperationKind::KeyCreate), "");
        assert_eq!(
            OperationStatus::Completed.wire(OperationKind::KeyCreate),
            "created"
        );
        assert_eq!(
            OperationStatus::Completed.wire(OperationKind::KeyUpdate),
            "completed"
        );
        assert_eq!(
            OperationStatus::InProgress.wire(OperationKind::KeyDelete),
            "in_progress"
        );
    }

    /// The reference's walk-through as hand-written rows (from, event, what
    /// follows), not derived from `next`: create, PATCH, replicate, delete
    /// from HSM, a refresh that finds the object gone, and failures. Every
    /// reachable (state, event) pair not listed here must be refused.
    #[test]
    fn the_key_machine_moves_as_the_reference_describes_and_no_other_way() {
        use KeyStatus::{Available, Deleted, Failed, InProgress as Busy};
        use OperationKind::{
            KeyCreate as Create, KeyDelete as Delete, KeyReplicate as Replicate, KeyUpdate as Update,
        };
        use OperationStatus::{Completed as Done, Failed as Broke, InProgress as Running};
        let life = |status, operation, operation_status, error: Option<&str>| KeyLifecycle {
            status,
            operation,
            operation_status,
            operation_error: error.map(str::to_owned),
        };
        let failed = || KeyEvent::Failed("CKR_DEVICE_ERROR".into());
        let legal = [
            // POST /keys: accepted, then made, or not.
            (
                life(Busy, Create, Running, None),
                KeyEvent::Succeeded,
                life(Available, Create, Done, None),
            ),
            (
                life(Busy, Create, Running, None),
                failed(),
                life(Failed, Create, Broke, Some("CKR_DEVICE_ERROR")),
            ),
            // PATCH on an AVAILABLE key, then its outcome.
            (
                life(Available, Create, Done, None),
                KeyEvent::Begin(Update),
                life(Available, Update, Running, None),
            ),
            (
                life(Available, Update, Running, None),
                KeyEvent::Succeeded,
                life(Available, Update, Done, None),
            ),
            (
                life(Available, Update, Running, None),
                failed(),
                life(Available, Update, Broke, Some("CKR_DEVICE_ERROR")),
            ),
            // Replicate after a PATCH.
            (
                life(Available, Update, Done, None),
                KeyEvent::Begin(Replicate),
                life(Available, Replicate, Running, None),
            ),
            (
                life(Available, Replicate, Running, None),
                KeyEvent::Succeeded,
                life(Available, Replicate, Done, None),
            ),
            // Delete from HSM, even after a failed PATCH: DELETED, or still AVAILABLE with the reason.
            (
                life(Available, Update, Broke, Some("x")),
                KeyEvent::Begin(Delete),
                life(Available, Delete, Running, None),
            ),
            (
                life(Available, Delete, Running, None),
                KeyEvent::Succeeded,
                life(Deleted, Delete, Done, None),
            ),
            (
                life(Available, Delete, Running, None),
                failed(),
                life(Available, Delete, Broke, Some("CKR_DEVICE_ERROR")),
            ),
            // A refresh finds an idle AVAILABLE key on no member.
            (
                life(Available, Create, Done, None),
                KeyEvent::Vanished,
                life(Deleted, Create, Done, None),
            ),
            (
                life(Available, Delete, Broke, Some("x")),
                KeyEvent::Vanished,
                life(Deleted, Delete, Broke, Some("x")),
            ),
        ];
        for (from, event, to) in &legal {
            assert_eq!(from.next(event).as_ref(), Ok(to), "{from:?} on {event:?}");
        }
        let refused = [
            (life(Busy, Create, Running, None), KeyEvent::Begin(Update)),
            (life(Busy, Create, Running, None), KeyEvent::Vanished),
            (life(Deleted, Delete, Done, None), KeyEvent::Begin(Update)),
            (life(Failed, Create, Broke, Some("x")), KeyEvent::Begin(Delete)),
            (life(Available, Create, Done, None), KeyEvent::Begin(Create)),
            (life(Available, Create, Done, None), KeyEvent::Succeeded),
            (life(Deleted, Create, Done, None), KeyEvent::Vanished),
        ];
        for (from, event) in &refused {
            assert!(from.next(event).is_err(), "{from:?} on {event:?}");
        }
        // Everything else the machine can be in, on every event: only what the rows list.
        let events = [
            KeyEvent::Begin(Create),
            KeyEvent::Begin(Update),
            KeyEvent::Begin(Replicate),
            KeyEvent::Begin(Delete),
            KeyEvent::Succeeded,
            failed(),
            KeyEvent::Vanished,
        ];
        let reachable = KeyLifecycle::reachable();
        assert_eq!(reachable.len(), 18, "{reachable:#?}");
        let shape = |l: &KeyLifecycle| {
            (
                l.status,
                l.operation,
                l.operation_status,
                l.operation_error.is_some(),
            )
        };
        for from in &reachable {
            for event in &events {
                let listed = legal.iter().find(|(f, e, _)| {
                    shape(f) == shape(from)
                        && std::mem::discriminant(e) == std::mem::discriminant(event)
                        && (!matches!(e, KeyEvent::Begin(_)) || e == event)
                });
                match (from.next(event), listed) {
                    (Ok(to), Some((_, _, expected))) => {
                        assert_eq!(shape(&to), shape(expected), "{from:?} on {event:?}")
                    }
                    (Err(_), None) => {}
                    (got, listed) => {
                        // Moves the rows do not show from this exact state
                        // are the same rule from a sibling state; they must
                        // keep the status and shape the rules of the rows give.
                        assert!(
                            got.is_ok() && listed.is_none() && sibling_move(from, event),
                            "{from:?} on {event:?}: {got:?}, rows say {listed:?}"
                        );
                    }
                }
            }
        }
    }

    /// A move the rows show from a sibling state (same status and event,
    /// another last operation): beginning an operation on an idle AVAILABLE
    /// key, an outcome of a running one, a refresh finding an idle one gone.
    fn sibling_move(from: &KeyLifecycle, event: &KeyEvent) -> bool {
        match event {
            KeyEvent::Begin(kind) => {
                *kind != OperationKind::KeyCreate && from.status == KeyStatus::Available && !from.is_busy()
            }
            KeyEvent::Succeeded | KeyEvent::Failed(_) => from.is_busy(),
            KeyEvent::Vanished => from.status == KeyStatus::Available && !from.is_busy(),
        }
    }

    #[test]
    fn only_states_the_machine_reaches_are_restored_from_storage() {
        use KeyStatus as S;
        use OperationKind as K;
        use OperationStatus as O;
        assert!(KeyLifecycle::restore(
            S::Available,
            K::KeyUpdate,
            O::Failed,
            Some("CKR_DEVICE_ERROR".into())
        )
        .is_ok());
        assert_eq!(
            KeyLifecycle::restore(S::InProgress, K::KeyCreate, O::InProgress, None).unwrap(),
            KeyLifecycle::creating()
        );
        for (status, operation, operation_status, error) in [
            (S::Deleted, K::KeyUpdate, O::InProgress, None),
            (S::Available, K::KeyCreate, O::Completed, Some("x".to_owned())),
            (S::Failed, K::KeyUpdate, O::Failed, Some("x".to_owned())),
            (S::InProgress, K::KeyDelete, O::InProgress, None),
        ] {
            let err = KeyLifecycle::restore(status, operation, operation_status, error).unwrap_err();
            assert!(err.to_string().starts_with("no key can be"), "{err}");
        }
    }

    #[test]
    fn a_second_mutation_while_busy_is_a_conflict_with_a_reason() {
        let err = KeyLifecycle::creating()
            .next(&KeyEvent::Begin(OperationKind::KeyUpdate))
            .unwrap_err();
        assert!(matches!(err, DomainError::Conflict(_)));
        assert_eq!(
            err.to_string(),
            "the key has a keycreate operation in progress; wait for it to end"
        );
    }
}
