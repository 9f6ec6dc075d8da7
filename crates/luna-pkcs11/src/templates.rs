//! Templates: how an object is made (generated, imported, found) and
//! changed, attribute by attribute, so the token's defaults never decide.

use cryptoki::object::{Attribute as CkAttribute, AttributeType, KeyType, ObjectClass};
use luna_domain::{Algorithm, Attribute, AttributeSet, ObjectType};

use crate::error::{Result, TokenError};
use crate::mechanisms::narrow;
use crate::object::ObjectDescription;
use crate::GenerateRequest;

/// The one table between the domain's attributes and cryptoki's: a
/// boolean attribute with its value. Its type and the reading back of a value
/// (`object::as_boolean`) are derived from it.
pub(crate) fn boolean(attribute: Attribute, value: bool) -> CkAttribute {
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

/// The PKCS#11 type of a boolean attribute.
pub(crate) fn boolean_type(attribute: Attribute) -> AttributeType {
    boolean(attribute, false).attribute_type()
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
        handle: object.handle.raw(),
        attribute: "CKA_CLASS",
        problem: "only keys travel between members".into(),
    })?;
    let (class, key_type) = match (object_type, object.algorithm) {
        (ObjectType::SecretKey, Some(Algorithm::Aes)) => (ObjectClass::SECRET_KEY, KeyType::AES),
        (ObjectType::PrivateKey, Some(Algorithm::Rsa)) => (ObjectClass::PRIVATE_KEY, KeyType::RSA),
        (ObjectType::PublicKey, Some(Algorithm::Rsa)) => (ObjectClass::PUBLIC_KEY, KeyType::RSA),
        _ => {
            return Err(TokenError::MalformedObject {
                handle: object.handle.raw(),
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
