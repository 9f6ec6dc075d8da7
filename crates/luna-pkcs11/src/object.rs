//! What the service knows about a token object, and how it is read and made.

use cryptoki::mechanism::vendor_defined::VendorDefinedMechanism;
use cryptoki::mechanism::{Mechanism as CkMechanism, MechanismType};
use cryptoki::object::{Attribute as CkAttribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use luna_domain::{Algorithm, Attribute, AttributeSet, Mechanism, ObjectType};
use sha2::{Digest, Sha256};

use crate::error::{call, Result, TokenError};
use crate::GenerateRequest;

/// A token object's handle. Valid for the life of the module's context, as
/// PKCS#11 defines handles; after the object is destroyed the token answers
/// `CKR_OBJECT_HANDLE_INVALID`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef(u64);

impl ObjectRef {
    pub(crate) fn handle(self) -> ObjectHandle {
        // SAFETY: an object handle is a plain number that the module validates on
        // every call; a stale or foreign one gets CKR_OBJECT_HANDLE_INVALID, never
        // undefined behaviour. cryptoki marks the constructor unsafe only so that
        // callers think about where the number came from: ours came from this module.
        #[allow(unsafe_code)]
        unsafe {
            ObjectHandle::new_from_raw(narrow(self.0))
        }
    }
}

impl From<ObjectHandle> for ObjectRef {
    fn from(handle: ObjectHandle) -> Self {
        ObjectRef(widen(handle.handle()))
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

    /// A stable name for the object on its partition: its `CKA_ID` in hex
    /// followed by its class as two hex digits (so the halves of a pair
    /// differ); without a `CKA_ID`, `fp-` and its fingerprint.
    pub fn object_uid(&self) -> String {
        luna_domain::key::object_uid(&self.cka_id, self.object_type)
            .unwrap_or_else(|| format!("fp-{}", self.fingerprint_hex()))
    }
}

/// The token mechanism for each of the reference's mechanisms. The two FIPS
/// 186-3 ones are Luna vendor mechanisms (`CKM_VENDOR_DEFINED` + 0x13C/0x13D).
pub(crate) fn mechanism_code(mechanism: Mechanism) -> u64 {
    const CKM_VENDOR_DEFINED: u64 = 0x8000_0000;
    match mechanism {
        Mechanism::RsaPkcsKeyPairGen => 0x0000,
        Mechanism::RsaX931KeyPairGen => 0x000A,
        Mechanism::AesKeyGen => 0x1080,
        Mechanism::RsaFips1863AuxPrimeKeyPairGen => CKM_VENDOR_DEFINED + 0x13C,
        Mechanism::RsaFips1863PrimeKeyPairGen => CKM_VENDOR_DEFINED + 0x13D,
    }
}

/// The mechanisms replication needs on every member of an HA group, beside
/// the generation ones: the cloning domain and the ephemeral agreement both
/// make P-256 pairs, derive AES keys by ECDH and wrap with AES key wrap.
pub const REPLICATION_MECHANISMS: &[(&str, CkUlong)] = &[
    ("CKM_EC_KEY_PAIR_GEN", cryptoki_sys::CKM_EC_KEY_PAIR_GEN),
    ("CKM_ECDH1_DERIVE", cryptoki_sys::CKM_ECDH1_DERIVE),
    ("CKM_AES_KEY_WRAP_PAD", cryptoki_sys::CKM_AES_KEY_WRAP_PAD),
];

/// The raw codes of every mechanism whose support `TokenInfo` reports: the
/// ones this service uses.
pub(crate) fn probed_codes() -> impl Iterator<Item = u64> {
    Mechanism::ALL
        .iter()
        .map(|m| mechanism_code(*m))
        .chain(REPLICATION_MECHANISMS.iter().map(|(_, code)| widen(*code)))
}

/// A mechanism type from its raw code, for `C_GetMechanismInfo` and
/// generation. cryptoki 0.12's `get_mechanism_list` drops the codes it does
/// not name, so a Luna token's mechanisms would look absent without this.
/// Vendor codes (Luna's FIPS 186-3 ones) go through cryptoki's vendor-defined
/// constructor; standard codes through the type's layout, since cryptoki
/// names no `CKM_RSA_X9_31_KEY_PAIR_GEN`.
pub(crate) fn mechanism_type(code: u64) -> MechanismType {
    if let Ok(vendor) = MechanismType::new_vendor_defined(narrow(code)) {
        return vendor;
    }
    // SAFETY: `MechanismType` is `#[repr(transparent)]` over `CK_MECHANISM_TYPE`
    // (cryptoki documents that layout), and every value is a valid
    // `CK_MECHANISM_TYPE`: the module answers CKR_MECHANISM_INVALID to unknown ones.
    #[allow(unsafe_code)]
    unsafe {
        std::mem::transmute::<CkUlong, MechanismType>(narrow(code))
    }
}

pub(crate) fn ck_mechanism(mechanism: Mechanism) -> CkMechanism<'static> {
    match mechanism {
        Mechanism::AesKeyGen => CkMechanism::AesKeyGen,
        Mechanism::RsaPkcsKeyPairGen => CkMechanism::RsaPkcsKeyPairGen,
        other => CkMechanism::VendorDefined(VendorDefinedMechanism::new::<()>(
            mechanism_type(mechanism_code(other)),
            None,
        )),
    }
}

/// PKCS#11's `CK_ULONG`: C's `unsigned long`, 32 or 64 bits by platform.
pub(crate) type CkUlong = std::os::raw::c_ulong;

/// Widens a `CK_ULONG`; a plain cast, since on 64-bit Unix the two are one type.
#[allow(clippy::unnecessary_cast)]
pub(crate) fn widen(value: CkUlong) -> u64 {
    value as u64
}

/// Narrows to a `CK_ULONG`. Every value narrowed here came from the module as a
/// `CK_ULONG`, or is a mechanism code below 2^32, so nothing is cut off.
#[allow(clippy::unnecessary_cast)]
pub(crate) fn narrow(value: u64) -> CkUlong {
    value as CkUlong
}

fn boolean(attribute: Attribute, value: bool) -> CkAttribute {
    match attribute {
        Attribute::Token => CkAttribute::Token(value),
        Attribute::Private => CkAttribute::Private(value),
        Attribute::Modifiable => CkAttribute::Modifiable(value),
        Attribute::Sensitive => CkAttribute::Sensitive(value),
        Attribute::Extractable => CkAttribute::Extractable(value),
        Attribute::Encrypt => CkAttribute::Encrypt(value),
        Attribute::Decrypt => CkAttribute::Decrypt(value),
        Attribute::Wrap => CkAttribute::Wrap(value),
        Attribute::Unwrap => CkAttribute::Unwrap(value),
        Attribute::Sign => CkAttribute::Sign(value),
        Attribute::Verify => CkAttribute::Verify(value),
        Attribute::Derive => CkAttribute::Derive(value),
    }
}

fn boolean_type(attribute: Attribute) -> AttributeType {
    match attribute {
        Attribute::Token => AttributeType::Token,
        Attribute::Private => AttributeType::Private,
        Attribute::Modifiable => AttributeType::Modifiable,
        Attribute::Sensitive => AttributeType::Sensitive,
        Attribute::Extractable => AttributeType::Extractable,
        Attribute::Encrypt => AttributeType::Encrypt,
        Attribute::Decrypt => AttributeType::Decrypt,
        Attribute::Wrap => AttributeType::Wrap,
        Attribute::Unwrap => AttributeType::Unwrap,
        Attribute::Sign => AttributeType::Sign,
        Attribute::Verify => AttributeType::Verify,
        Attribute::Derive => AttributeType::Derive,
    }
}

pub(crate) fn attribute_changes(changes: &[(Attribute, bool)]) -> Vec<CkAttribute> {
    changes.iter().map(|(a, v)| boolean(*a, *v)).collect()
}

/// The template for one object: identity, then every attribute that applies to
/// its class set explicitly, so the token's defaults never decide for the user.
pub(crate) fn template(
    object_type: ObjectType,
    cka_id: &[u8],
    label: &str,
    attributes: AttributeSet,
) -> Vec<CkAttribute> {
    let chosen = attributes.for_object(object_type);
    let mut template = vec![
        CkAttribute::Id(cka_id.to_vec()),
        CkAttribute::Label(label.as_bytes().to_vec()),
    ];
    template.extend(
        Attribute::ALL
            .iter()
            .filter(|a| a.applies_to(object_type))
            .map(|a| boolean(*a, chosen.contains(*a))),
    );
    template
}

pub(crate) fn find_template(cka_id: &[u8]) -> Vec<CkAttribute> {
    vec![CkAttribute::Token(true), CkAttribute::Id(cka_id.to_vec())]
}

/// The template an imported key is made with: its class, type, identity and
/// every attribute it had (`CKA_WRAP_WITH_TRUSTED` included).
pub(crate) fn import_template(object: &ObjectDescription) -> Result<Vec<CkAttribute>> {
    let object_type = object.object_type.ok_or(TokenError::MalformedObject {
        handle: object.handle.0,
        attribute: "CKA_CLASS",
        problem: "only keys travel between members".into(),
    })?;
    let (class, key_type) = match (object_type, object.algorithm) {
        (ObjectType::SecretKey, Some(Algorithm::Aes)) => (ObjectClass::SECRET_KEY, KeyType::AES),
        (ObjectType::PrivateKey, Some(Algorithm::Rsa)) => (ObjectClass::PRIVATE_KEY, KeyType::RSA),
        (ObjectType::PublicKey, Some(Algorithm::Rsa)) => (ObjectClass::PUBLIC_KEY, KeyType::RSA),
        _ => {
            return Err(TokenError::MalformedObject {
                handle: object.handle.0,
                attribute: "CKA_KEY_TYPE",
                problem: "only AES and RSA keys travel between members".into(),
            })
        }
    };
    let mut t = vec![CkAttribute::Class(class), CkAttribute::KeyType(key_type)];
    t.extend(template(
        object_type,
        &object.cka_id,
        &object.label,
        object.attributes,
    ));
    // CKA_MODIFIABLE goes last: SoftHSM2 refuses, as changes to an
    // unmodifiable object, the attributes an unwrap template sets after it.
    t.retain(|a| !matches!(a, CkAttribute::Modifiable(_)));
    match object_type {
        ObjectType::PublicKey => {
            let exponent = object.public_exponent.to_be_bytes();
            let first = exponent
                .iter()
                .position(|b| *b != 0)
                .unwrap_or(exponent.len() - 1);
            t.push(CkAttribute::Modulus(object.modulus.clone()));
            t.push(CkAttribute::PublicExponent(exponent[first..].to_vec()));
        }
        ObjectType::SecretKey | ObjectType::PrivateKey => {
            if object.wrap_with_trusted {
                t.push(CkAttribute::WrapWithTrusted(true));
            }
        }
    }
    t.push(CkAttribute::Modifiable(
        object.attributes.contains(Attribute::Modifiable),
    ));
    Ok(t)
}

/// A generation template's tail: `CKA_WRAP_WITH_TRUSTED` for secret and
/// private keys of HA partitions.
fn trusted_wrapping_only(template: &mut Vec<CkAttribute>, request: &GenerateRequest) {
    if request.wrap_with_trusted {
        template.push(CkAttribute::WrapWithTrusted(true));
    }
}

pub(crate) fn secret_key_template(request: &GenerateRequest) -> Vec<CkAttribute> {
    let mut t = vec![
        CkAttribute::Class(ObjectClass::SECRET_KEY),
        CkAttribute::KeyType(KeyType::AES),
        CkAttribute::ValueLen(narrow(u64::from(request.size / 8)).into()),
    ];
    t.extend(template(
        ObjectType::SecretKey,
        &request.cka_id,
        &request.label,
        request.attributes,
    ));
    trusted_wrapping_only(&mut t, request);
    t
}

/// (public, private) templates of an RSA pair.
pub(crate) fn rsa_templates(request: &GenerateRequest) -> (Vec<CkAttribute>, Vec<CkAttribute>) {
    let mut public = vec![
        CkAttribute::Class(ObjectClass::PUBLIC_KEY),
        CkAttribute::KeyType(KeyType::RSA),
        CkAttribute::ModulusBits(narrow(u64::from(request.size)).into()),
        CkAttribute::PublicExponent(vec![0x01, 0x00, 0x01]),
    ];
    public.extend(template(
        ObjectType::PublicKey,
        &request.cka_id,
        &request.label,
        request.attributes,
    ));
    let mut private = vec![
        CkAttribute::Class(ObjectClass::PRIVATE_KEY),
        CkAttribute::KeyType(KeyType::RSA),
    ];
    private.extend(template(
        ObjectType::PrivateKey,
        &request.cka_id,
        &request.label,
        request.attributes,
    ));
    trusted_wrapping_only(&mut private, request);
    (public, private)
}

const DESCRIBED: &[AttributeType] = &[
    AttributeType::Class,
    AttributeType::KeyType,
    AttributeType::Label,
    AttributeType::Id,
    AttributeType::ValueLen,
    AttributeType::Modulus,
    AttributeType::PublicExponent,
    AttributeType::CheckValue,
    AttributeType::Token,
    AttributeType::Private,
    AttributeType::Modifiable,
    AttributeType::Sensitive,
    AttributeType::Extractable,
    AttributeType::Encrypt,
    AttributeType::Decrypt,
    AttributeType::Wrap,
    AttributeType::Unwrap,
    AttributeType::Sign,
    AttributeType::Verify,
    AttributeType::Derive,
    AttributeType::WrapWithTrusted,
    AttributeType::Trusted,
];

/// Reads an object's description in one `C_GetAttributeValue` round (two at most).
pub(crate) fn describe(session: &Session, handle: ObjectRef) -> Result<ObjectDescription> {
    let values = session
        .get_attributes(handle.handle(), DESCRIBED)
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
        let expected = boolean_type(*a);
        (value.attribute_type() == expected).then_some(match value {
            CkAttribute::Token(v)
            | CkAttribute::Private(v)
            | CkAttribute::Modifiable(v)
            | CkAttribute::Sensitive(v)
            | CkAttribute::Extractable(v)
            | CkAttribute::Encrypt(v)
            | CkAttribute::Decrypt(v)
            | CkAttribute::Wrap(v)
            | CkAttribute::Unwrap(v)
            | CkAttribute::Sign(v)
            | CkAttribute::Verify(v)
            | CkAttribute::Derive(v) => (*a, *v),
            _ => (*a, false),
        })
    })
}

fn big_endian_u64(handle: ObjectRef, bytes: &[u8]) -> Result<u64> {
    let significant: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
    if significant.len() > 8 {
        return Err(TokenError::MalformedObject {
            handle: handle.0,
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
    fn every_mechanism_keeps_its_raw_code() {
        for &mechanism in Mechanism::ALL {
            let code = mechanism_code(mechanism);
            assert_eq!(widen(*mechanism_type(code)), code, "{mechanism}");
            assert_eq!(
                widen(*ck_mechanism(mechanism).mechanism_type()),
                code,
                "{mechanism}"
            );
        }
        assert_eq!(mechanism_code(Mechanism::RsaX931KeyPairGen), 0x0A);
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
        assert_eq!(big_endian_u64(ObjectRef(1), &[0, 0, 1, 0, 1]).unwrap(), 65537);
        let err = big_endian_u64(ObjectRef(9), &[1; 9]).unwrap_err();
        assert!(err.to_string().contains("CKA_PUBLIC_EXPONENT"), "{err}");
    }
}
