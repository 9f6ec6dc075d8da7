//! A create request and its rules: mechanism, size, label, partition and
//! attributes, each refused with a sentence.

use time::OffsetDateTime;
use uuid::Uuid;

use crate::attribute::AttributeSet;
use crate::error::{DomainError, Result};
use crate::operation::{Operation, OperationPayload};
use crate::partition::Partition;

use super::{object_uid, Key, KeyData, KeyLifecycle, Mechanism, Origin};

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

/// A create request as it arrives, before any rule is checked: the API's
/// body itself (an unknown field is refused; `Serialize` gives the body's
/// digest for an idempotent create).
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
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
    /// [`Attribute`](crate::attribute::Attribute) wire names to set true; everything else that applies is
    /// set false.
    #[serde(default)]
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

/// A key about to be made: its records (the secret key, or the private
/// then the public key, which name each other) and the queued operation
/// that makes them. Written together, they are what the accept promises.
#[derive(Debug, Clone, PartialEq)]
pub struct NewKey {
    /// The records, `in_progress`/`keycreate`; the first one's id is the
    /// objects' `CKA_ID`.
    pub keys: Vec<Key>,
    /// The `CreateKey` operation, queued on the key's partition.
    pub operation: Operation,
}

impl NewKeySpec {
    /// The key this spec asks for, made on `partition` (the caller reads
    /// the one `partition_id` names, with its members) at `now`. The ids
    /// come from `new_id`, called once for each record and once for the
    /// operation: the domain draws none, so the same ids give the same key
    /// (the service passes `Uuid::now_v7`: time-ordered ids, so that new
    /// records go to the end of every index led by the id).
    pub fn new_key(
        &self,
        partition: &Partition,
        mut new_id: impl FnMut() -> Uuid,
        now: OffsetDateTime,
    ) -> NewKey {
        let types = self.mechanism.object_types();
        let ids: Vec<Uuid> = types.iter().map(|_| new_id()).collect();
        let keys = types
            .iter()
            .zip(&ids)
            .map(|(object_type, id)| {
                Key::new(
                    KeyData {
                        id: *id,
                        partition_id: partition.id,
                        partition_label: partition.partition_label.clone(),
                        label: self.label.clone(),
                        algorithm: Some(self.mechanism.algorithm()),
                        object_type: Some(*object_type),
                        mechanism: Some(self.mechanism),
                        generated_with: None,
                        size: self.size,
                        attributes: self.attributes.for_object(*object_type),
                        cka_id: ids[0].as_bytes().to_vec(),
                        object_uid: object_uid(ids[0].as_bytes(), Some(*object_type)).unwrap_or_default(),
                        sha_256_fingerprint: String::new(),
                        replication_info: Default::default(),
                        replicated: false,
                        byok_key: true,
                        origin: Origin::Cckm,
                        modulus: String::new(),
                        exponent: 0,
                        // The halves of a pair name each other.
                        link_id: ids.iter().find(|other| *other != id).copied(),
                        ha_enabled: partition.ha_enabled,
                        created_at: now,
                        updated_at: now,
                    },
                    KeyLifecycle::creating(),
                )
            })
            .collect();
        let mut operation = Operation::queued(
            new_id(),
            OperationPayload::CreateKey {
                key_id: ids[0],
                public_key_id: ids.get(1).copied(),
            },
            now,
        );
        operation.partition_id = Some(partition.id);
        NewKey { keys, operation }
    }
}

/// What a token is asked to generate for a create's records: the objects'
/// `CKA_ID`, label, mechanism and size, and the attributes of every half.
/// A worker reads it off the records the create wrote (handed over by the
/// accept, or read back from the store), so what is made is what was
/// promised, whoever runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyToMake {
    /// Shared by both halves of a pair.
    pub cka_id: Vec<u8>,
    /// `CKA_LABEL`.
    pub label: String,
    /// As asked; the token may run its remap target instead.
    pub mechanism: Mechanism,
    /// In bits.
    pub size: u32,
    /// True on one half or the other.
    pub attributes: AttributeSet,
}

impl KeyToMake {
    /// From a create's records (the secret key, or the private then the
    /// public key); an error if they are not a create's.
    pub fn of(keys: &[Key]) -> Result<KeyToMake> {
        let first = keys
            .first()
            .ok_or_else(|| DomainError::invalid("a create has at least one key record"))?;
        let mechanism = first.mechanism.ok_or_else(|| {
            DomainError::invalid(format!(
                "key {} names no mechanism: it was not made by a create",
                first.id
            ))
        })?;
        if keys.iter().any(|k| k.cka_id != first.cka_id) {
            return Err(DomainError::invalid("the records of one create share one CKA_ID"));
        }
        Ok(KeyToMake {
            cka_id: first.cka_id.clone(),
            label: first.label.clone(),
            mechanism,
            size: first.size,
            attributes: keys.iter().flat_map(|k| k.attributes.iter()).collect(),
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{Algorithm, ObjectType};

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

    fn partition(ha: bool) -> Partition {
        Partition {
            id: Uuid::parse_str("fe192148-82eb-403f-96b2-125bf28d3824").unwrap(),
            connection_id: Uuid::from_u128(8),
            partition_label: "p1".into(),
            serial_number: "1234".into(),
            ha_enabled: ha,
            remap_rsa_mechanisms: true,
            members: Vec::new(),
            created_at: OffsetDateTime::UNIX_EPOCH,
            updated_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn a_pair_is_two_records_naming_each_other_and_one_queued_create() {
        let spec = request(
            "CKM_RSA_PKCS_KEY_PAIR_GEN",
            2048,
            &["CKA_SIGN", "CKA_VERIFY", "CKA_EXTRACTABLE"],
        )
        .validate()
        .unwrap();
        let mut next = 0u128;
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(1);
        let made = spec.new_key(
            &partition(true),
            || {
                next += 1;
                Uuid::from_u128(next)
            },
            now,
        );
        let [private, public] = &made.keys[..] else {
            panic!("{made:?}")
        };
        assert_eq!(
            (private.id, public.id, made.operation.id),
            (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3))
        );
        assert_eq!(
            (private.link_id, public.link_id),
            (Some(public.id), Some(private.id))
        );
        assert_eq!(
            (private.object_type, public.object_type),
            (Some(ObjectType::PrivateKey), Some(ObjectType::PublicKey))
        );
        assert_eq!(private.cka_id, public.cka_id);
        assert_eq!(private.cka_id, private.id.as_bytes().to_vec());
        assert!(
            private.attributes.contains(crate::Attribute::Sign)
                && !private.attributes.contains(crate::Attribute::Verify)
        );
        assert!(
            public.attributes.contains(crate::Attribute::Verify)
                && !public.attributes.contains(crate::Attribute::Sign)
        );
        assert!(made
            .keys
            .iter()
            .all(|k| k.ha_enabled && k.created_at == now && k.partition_label == "p1"));
        assert_eq!(made.operation.partition_id, Some(spec.partition_id));
        assert_eq!(
            made.operation.payload,
            OperationPayload::CreateKey {
                key_id: private.id,
                public_key_id: Some(public.id)
            }
        );
        // What the token is asked to make: one CKA_ID, every half's attributes.
        let to_make = KeyToMake::of(&made.keys).unwrap();
        assert_eq!(
            (to_make.mechanism, to_make.size, to_make.label.as_str()),
            (spec.mechanism, 2048, "hsm-key")
        );
        assert_eq!(to_make.cka_id, private.cka_id);
        assert_eq!(
            to_make.attributes,
            private
                .attributes
                .iter()
                .chain(public.attributes.iter())
                .collect()
        );
    }

    #[test]
    fn an_aes_key_is_one_record_and_records_of_no_create_are_refused() {
        let spec = request("CKM_AES_KEY_GEN", 256, &["CKA_ENCRYPT"])
            .validate()
            .unwrap();
        let made = spec.new_key(&partition(false), Uuid::new_v4, OffsetDateTime::UNIX_EPOCH);
        assert_eq!(made.keys.len(), 1);
        assert_eq!(
            (made.keys[0].link_id, made.keys[0].algorithm),
            (None, Some(Algorithm::Aes))
        );
        assert!(KeyToMake::of(&[]).is_err());
        let mut found = made.keys[0].clone();
        found.mechanism = None;
        assert!(KeyToMake::of(&[found])
            .unwrap_err()
            .to_string()
            .contains("names no mechanism"));
        let mut other = made.keys.clone();
        other.push(
            spec.new_key(&partition(false), Uuid::new_v4, OffsetDateTime::UNIX_EPOCH)
                .keys
                .remove(0),
        );
        assert!(KeyToMake::of(&other).is_err(), "two creates' records");
    }
}
