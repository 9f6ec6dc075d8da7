//! A create request and its rules: mechanism, size, label, partition and
//! attributes, each refused with a sentence.

use uuid::Uuid;

use crate::attribute::AttributeSet;
use crate::error::{DomainError, Result};

use super::Mechanism;

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
    /// [`Attribute`](crate::attribute::Attribute) wire names to set true; everything else that applies is
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
}
