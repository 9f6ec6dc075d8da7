//! What the service knows about a token object, and how it is read and made.

use cryptoki::object::{Attribute as CkAttribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use luna_domain::{Algorithm, Attribute, AttributeSet, ObjectType};
use sha2::{Digest, Sha256};

use crate::error::{call, Result, TokenError};
use crate::mechanisms::{narrow, widen, CkUlong};
use crate::templates::{boolean, boolean_type};

/// A token object's handle, and the module generation it was issued in.
/// Handles are valid for the life of the module's context, as PKCS#11
/// defines them; after the object is destroyed the token answers
/// `CKR_OBJECT_HANDLE_INVALID`, and after the module is re-initialised
/// (recovery from an outage) the module may give the number to another
/// object, so a handle from an earlier generation is refused
/// (`TokenError::StaleHandle`) before it reaches the module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    raw: u64,
    generation: u64,
}

impl ObjectRef {
    pub(crate) fn issued(handle: ObjectHandle, generation: u64) -> ObjectRef {
        ObjectRef {
            raw: widen(handle.handle()),
            generation,
        }
    }

    /// A handle no module issued (the test-only `LatencyToken`'s objects).
    #[cfg(feature = "testing")]
    pub(crate) fn made_up(raw: u64) -> ObjectRef {
        ObjectRef { raw, generation: 0 }
    }

    /// The handle's number, for error messages.
    pub(crate) fn raw(self) -> u64 {
        self.raw
    }

    /// This handle, if it was issued in the module's `current` generation.
    pub(crate) fn current(self, current: u64) -> Result<ObjectRef> {
        if self.generation == current {
            Ok(self)
        } else {
            Err(TokenError::StaleHandle { handle: self.raw })
        }
    }

    pub(crate) fn handle(self) -> ObjectHandle {
        // SAFETY: an object handle is a plain number that the module validates on
        // every call; a stale or foreign one gets CKR_OBJECT_HANDLE_INVALID, never
        // undefined behaviour. cryptoki marks the constructor unsafe only so that
        // callers think about where the number came from: ours came from this
        // module, in this generation (`current`).
        #[allow(unsafe_code)]
        unsafe {
            ObjectHandle::new_from_raw(narrow(self.raw))
        }
    }
}

/// Everything the service reads of an object. Never a secret value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectDescription {
    pub handle: ObjectRef,
    /// `None` for objects that are not keys (certificates, data, …).
    pub object_type: Option<ObjectType>,
    /// `None` for key types other than RSA and AES.
    pub algorithm: Option<Algorithm>,
    pub label: String,
    pub cka_id: Vec<u8>,
    pub size_bits: u32,
    /// Big-endian modulus of an RSA key; empty otherwise.
    pub modulus: Vec<u8>,
    pub public_exponent: u64,
    /// The boolean attributes that are true.
    pub attributes: AttributeSet,
    /// `CKA_WRAP_WITH_TRUSTED`: only a trusted (cloning domain) key may wrap it.
    pub wrap_with_trusted: bool,
    /// `CKA_TRUSTED`: set only by a security officer; a cloning domain key,
    /// which the service never lists, refreshes or clones.
    pub trusted: bool,
    pub fingerprint: [u8; 32],
}

impl ObjectDescription {
    pub fn fingerprint_hex(&self) -> String {
        hex::encode(self.fingerprint)
    }

    pub fn modulus_hex(&self) -> String {
        hex::encode(&self.modulus)
    }

    /// A stable name for the object on its token: its `CKA_ID` in hex
    /// followed by its class as two hex digits (so the halves of a pair
    /// differ); without a `CKA_ID`, `fp-` and its fingerprint.
    pub fn object_uid(&self) -> String {
        luna_domain::key::object_uid(&self.cka_id, self.object_type)
            .unwrap_or_else(|| format!("fp-{}", self.fingerprint_hex()))
    }
}

/// What `describe` reads: identity, sizes and public values, then every
/// boolean attribute (from the one table, `templates::boolean`).
static DESCRIBED: std::sync::LazyLock<Vec<AttributeType>> = std::sync::LazyLock::new(|| {
    [
        AttributeType::Class,
        AttributeType::KeyType,
        AttributeType::Label,
        AttributeType::Id,
        AttributeType::ValueLen,
        AttributeType::Modulus,
        AttributeType::PublicExponent,
        AttributeType::CheckValue,
        AttributeType::WrapWithTrusted,
        AttributeType::Trusted,
    ]
    .into_iter()
    .chain(Attribute::ALL.iter().map(|a| boolean_type(*a)))
    .collect()
});

/// Reads an object's description in one `C_GetAttributeValue` round (two at most).
pub(crate) fn describe(session: &Session, handle: ObjectRef) -> Result<ObjectDescription> {
    let values = session
        .get_attributes(handle.handle(), &DESCRIBED)
        .map_err(call("C_GetAttributeValue"))?;
    let mut class = None;
    let mut key_type = None;
    let mut label = Vec::new();
    let mut cka_id = Vec::new();
    let mut value_len = 0u64;
    let mut modulus = Vec::new();
    let mut exponent = Vec::new();
    let mut check_value = Vec::new();
    let mut attributes = AttributeSet::empty();
    let mut wrap_with_trusted = false;
    let mut trusted = false;
    for value in values {
        match value {
            CkAttribute::Class(c) => class = Some(c),
            CkAttribute::KeyType(k) => key_type = Some(k),
            CkAttribute::Label(l) => label = l,
            CkAttribute::Id(i) => cka_id = i,
            CkAttribute::ValueLen(n) => value_len = widen(CkUlong::from(n)),
            CkAttribute::Modulus(m) => modulus = m,
            CkAttribute::PublicExponent(e) => exponent = e,
            CkAttribute::CheckValue(v) => check_value = v,
            CkAttribute::WrapWithTrusted(v) => wrap_with_trusted = v,
            CkAttribute::Trusted(v) => trusted = v,
            other => {
                if let Some((attribute, true)) = as_boolean(&other) {
                    attributes.insert(attribute);
                }
            }
        }
    }
    let object_type = match class {
        Some(ObjectClass::SECRET_KEY) => Some(ObjectType::SecretKey),
        Some(ObjectClass::PRIVATE_KEY) => Some(ObjectType::PrivateKey),
        Some(ObjectClass::PUBLIC_KEY) => Some(ObjectType::PublicKey),
        _ => None,
    };
    let algorithm = match key_type {
        Some(KeyType::RSA) => Some(Algorithm::Rsa),
        Some(KeyType::AES) => Some(Algorithm::Aes),
        _ => None,
    };
    // Leading zero bytes carry no value; some tokens pad the modulus.
    let first = modulus.iter().position(|b| *b != 0).unwrap_or(modulus.len());
    modulus.drain(..first);
    let public_exponent = big_endian_u64(handle, &exponent)?;
    let size_bits = match algorithm {
        Some(Algorithm::Rsa) => u32::try_from(modulus.len() * 8).unwrap_or(u32::MAX),
        _ => u32::try_from(value_len.saturating_mul(8)).unwrap_or(u32::MAX),
    };
    let fingerprint = fingerprint(
        class.map(|c| widen(*c)),
        key_type.map(|k| widen(*k)),
        &cka_id,
        &modulus,
        &exponent,
        &check_value,
    );
    Ok(ObjectDescription {
        handle,
        object_type,
        algorithm,
        label: String::from_utf8_lossy(&label).into_owned(),
        cka_id,
        size_bits,
        modulus,
        public_exponent,
        attributes,
        wrap_with_trusted,
        trusted,
        fingerprint,
    })
}

fn as_boolean(value: &CkAttribute) -> Option<(Attribute, bool)> {
    Attribute::ALL.iter().find_map(|a| {
        [true, false]
            .into_iter()
            .find(|v| *value == boolean(*a, *v))
            .map(|v| (*a, v))
    })
}

fn big_endian_u64(handle: ObjectRef, bytes: &[u8]) -> Result<u64> {
    let significant: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
    if significant.len() > 8 {
        return Err(TokenError::MalformedObject {
            handle: handle.raw,
            attribute: "CKA_PUBLIC_EXPONENT",
            problem: format!("{} bytes long; at most 8 are supported", significant.len()),
        });
    }
    Ok(significant.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
}

/// The fingerprint: SHA-256 over a versioned, length-prefixed encoding of the
/// object's public identity: class, key type, `CKA_ID`, modulus, public
/// exponent and `CKA_CHECK_VALUE` (the token's public key check value of a
/// secret key). No secret value enters it; the halves of a pair differ by class.
pub fn fingerprint(
    class: Option<u64>,
    key_type: Option<u64>,
    cka_id: &[u8],
    modulus: &[u8],
    exponent: &[u8],
    check_value: &[u8],
) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(b"luna-cckm/fingerprint/v1");
    hash.update(class.unwrap_or(u64::MAX).to_be_bytes());
    hash.update(key_type.unwrap_or(u64::MAX).to_be_bytes());
    for part in [cka_id, modulus, exponent, check_value] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hash.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_boolean_attribute_reads_back_as_it_was_written() {
        for &attribute in Attribute::ALL {
            for value in [true, false] {
                assert_eq!(as_boolean(&boolean(attribute, value)), Some((attribute, value)));
            }
            assert!(
                DESCRIBED.contains(&boolean_type(attribute)),
                "{attribute:?} is read"
            );
        }
        assert_eq!(as_boolean(&CkAttribute::Label(b"x".to_vec())), None);
    }

    /// A description reads public attributes only: no attribute that holds
    /// key material (a secret key's value, a private key's parts) is asked for.
    #[test]
    fn a_description_reads_no_secret_value() {
        let secret = [
            AttributeType::Value,
            AttributeType::PrivateExponent,
            AttributeType::Prime1,
            AttributeType::Prime2,
            AttributeType::Exponent1,
            AttributeType::Exponent2,
            AttributeType::Coefficient,
            AttributeType::Prime,
            AttributeType::Base,
        ];
        for attribute in secret {
            assert!(!DESCRIBED.contains(&attribute), "{attribute:?} is read");
        }
    }

    #[test]
    fn fingerprints_separate_classes_and_field_boundaries() {
        let private = fingerprint(Some(3), Some(0), b"id", b"mod", b"\x01\x00\x01", b"");
        let public = fingerprint(Some(2), Some(0), b"id", b"mod", b"\x01\x00\x01", b"");
        assert_ne!(private, public);
        // Length prefixes: moving a byte from one field to the next changes the hash.
        assert_ne!(
            fingerprint(None, None, b"ab", b"", b"", b""),
            fingerprint(None, None, b"a", b"b", b"", b"")
        );
        assert_eq!(
            private,
            fingerprint(Some(3), Some(0), b"id", b"mod", b"\x01\x00\x01", b"")
        );
    }

    #[test]
    fn exponents_wider_than_64_bits_are_refused() {
        assert_eq!(
            big_endian_u64(
                ObjectRef {
                    raw: 1,
                    generation: 0
                },
                &[0, 0, 1, 0, 1]
            )
            .unwrap(),
            65537
        );
        let err = big_endian_u64(
            ObjectRef {
                raw: 9,
                generation: 0,
            },
            &[1; 9],
        )
        .unwrap_err();
        assert!(err.to_string().contains("CKA_PUBLIC_EXPONENT"), "{err}");
    }
}
