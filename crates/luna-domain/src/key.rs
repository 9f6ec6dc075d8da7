//! Keys: the record of one PKCS#11 object, its vocabulary and its life.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::attribute::{Attribute, AttributeSet};
use crate::error::{DomainError, Result};
use crate::wire::wire_enum;

wire_enum! {
    /// The five key-generation mechanisms of the reference.
    pub enum Mechanism ("mechanism") {
        RsaFips1863AuxPrimeKeyPairGen => "CKM_RSA_FIPS_186_3_AUX_PRIME_KEY_PAIR_GEN",
        RsaX931KeyPairGen => "CKM_RSA_X9_31_KEY_PAIR_GEN",
        RsaFips1863PrimeKeyPairGen => "CKM_RSA_FIPS_186_3_PRIME_KEY_PAIR_GEN",
        RsaPkcsKeyPairGen => "CKM_RSA_PKCS_KEY_PAIR_GEN",
        AesKeyGen => "CKM_AES_KEY_GEN",
    }
}

impl Mechanism {
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
        Rsa => "rsa",
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
        SecretKey => "secret key",
        PrivateKey => "private key",
        PublicKey => "public key",
    }
}

wire_enum! {
    /// The life of a key record.
    pub enum KeyStatus ("status") {
        InProgress => "in_progress",
        Available => "AVAILABLE",
        Deleted => "DELETED",
        Failed => "FAILED",
    }
}

wire_enum! {
    /// The operations that change a key.
    pub enum OperationKind ("operation") {
        KeyCreate => "keycreate",
        KeyUpdate => "keyupdate",
        KeyReplicate => "keyreplicate",
        KeyDelete => "keydelete",
    }
}

wire_enum! {
    /// The state of a key's last operation.
    pub enum OperationStatus ("operation_status") {
        InProgress => "in_progress",
        Completed => "completed",
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
        Cckm => "cckm",
        External => "external",
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

/// The size a key may have, checked against its mechanism.
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

/// The part of a key record that changes as operations run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLifecycle {
    pub status: KeyStatus,
    pub operation: OperationKind,
    pub operation_status: OperationStatus,
    pub operation_error: Option<String>,
}

/// A key record as it was read: a write made from it is a compare-and-set on
/// this, so that it cannot overwrite a change that landed meanwhile (every
/// write moves `updated_at`; the lifecycle is compared too, in case two land
/// within one microsecond).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyVersion {
    pub lifecycle: KeyLifecycle,
    pub updated_at: DateTime<Utc>,
}

impl KeyVersion {
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

    pub fn is_busy(&self) -> bool {
        self.operation_status == OperationStatus::InProgress
    }

    /// The next state, or why the event is not allowed now.
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
    pub id: Uuid,
    pub partition_id: Uuid,
    pub partition_label: String,
    pub label: String,
    pub lifecycle: KeyLifecycle,
    /// Unknown until the object exists (the reference reports `""`).
    pub algorithm: Option<Algorithm>,
    pub object_type: Option<ObjectType>,
    /// The mechanism the user asked for; `None` for keys found by refresh.
    pub mechanism: Option<Mechanism>,
    /// The mechanism the token actually ran, when a remap replaced the requested one.
    pub generated_with: Option<Mechanism>,
    pub size: u32,
    pub attributes: AttributeSet,
    /// The object's `CKA_ID`, the identity by which the service finds it on every member.
    pub cka_id: Vec<u8>,
    pub object_uid: String,
    pub sha_256_fingerprint: String,
    /// Member serial number → `"available"` or why the key is not there.
    pub replication_info: BTreeMap<String, String>,
    pub replicated: bool,
    pub byok_key: bool,
    pub origin: Origin,
    /// Lower-case hex; empty until known and for AES.
    pub modulus: String,
    pub exponent: u64,
    pub link_id: Option<Uuid>,
    pub ha_enabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Key {
    /// Moves the record's life on, stamping `updated_at`.
    pub fn apply(&mut self, event: &KeyEvent, now: DateTime<Utc>) -> Result<()> {
        self.lifecycle = self.lifecycle.next(event)?;
        self.updated_at = now;
        Ok(())
    }
}

/// A create request as it arrives, before any rule is checked.
#[derive(Debug, Clone, Default)]
pub struct CreateKeyRequest {
    pub label: Option<String>,
    pub size: Option<i64>,
    pub partition_id: Option<String>,
    pub mechanism: Option<String>,
    pub attributes: Vec<String>,
}

/// A create request that passed every rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKeySpec {
    pub label: String,
    pub size: u32,
    pub partition_id: Uuid,
    pub mechanism: Mechanism,
    /// As requested; `for_object` gives what each half of an RSA pair gets.
    pub attributes: AttributeSet,
}

/// Labels are stored in `CKA_LABEL` and shown in lists, so they are kept printable.
pub const MAX_LABEL_CHARS: usize = 128;

/// Checks a label for a key or anything else a user names.
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
    pub attribute: String,
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

    /// Every (state, event) pair: the expected next state, or `None` for illegal.
    #[test]
    fn key_lifecycle_transition_table() {
        use KeyStatus as S;
        use OperationKind as K;
        use OperationStatus as O;
        let life = |status, operation, operation_status| KeyLifecycle {
            status,
            operation,
            operation_status,
            operation_error: None,
        };
        let events = [
            KeyEvent::Begin(K::KeyCreate),
            KeyEvent::Begin(K::KeyUpdate),
            KeyEvent::Begin(K::KeyReplicate),
            KeyEvent::Begin(K::KeyDelete),
            KeyEvent::Succeeded,
            KeyEvent::Failed("CKR_DEVICE_ERROR".into()),
            KeyEvent::Vanished,
        ];
        let mut checked = 0;
        for &status in S::ALL {
            for &operation in K::ALL {
                for &operation_status in O::ALL {
                    let from = life(status, operation, operation_status);
                    for event in &events {
                        let expected: Option<KeyLifecycle> = match (event, operation_status) {
                            (KeyEvent::Begin(K::KeyCreate), _) => None,
                            (KeyEvent::Begin(_), O::InProgress) => None,
                            (KeyEvent::Begin(kind), _) if status == S::Available => {
                                Some(life(S::Available, *kind, O::InProgress))
                            }
                            (KeyEvent::Begin(_), _) => None,
                            (KeyEvent::Succeeded, O::InProgress) => Some(life(
                                match operation {
                                    K::KeyCreate => S::Available,
                                    K::KeyDelete => S::Deleted,
                                    _ => status,
                                },
                                operation,
                                O::Completed,
                            )),
                            (KeyEvent::Failed(reason), O::InProgress) => Some(KeyLifecycle {
                                operation_error: Some(reason.clone()),
                                ..life(
                                    if operation == K::KeyCreate {
                                        S::Failed
                                    } else {
                                        status
                                    },
                                    operation,
                                    O::Failed,
                                )
                            }),
                            (KeyEvent::Vanished, O::Completed | O::Failed) if status == S::Available => {
                                Some(life(S::Deleted, operation, operation_status))
                            }
                            (KeyEvent::Succeeded | KeyEvent::Failed(_) | KeyEvent::Vanished, _) => None,
                        };
                        assert_eq!(from.next(event).ok(), expected, "{from:?} on {event:?}");
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 4 * 4 * 3 * 7);
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
