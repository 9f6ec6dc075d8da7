//! PKCS#11 boolean attributes as the reference names them, and the sets a key carries.

use crate::error::{DomainError, Result};
use crate::key::ObjectType;
use crate::wire::wire_enum;

wire_enum! {
    /// A boolean PKCS#11 attribute. The ten after `Private` are the ones a
    /// user may request; `Token` and `Private` are always true on keys this
    /// service makes and are reported, as the reference does.
    pub enum Attribute ("attribute") {
        /// The object persists on the token (not just in a session).
        Token => "CKA_TOKEN",
        /// Only a logged-in user can see the object.
        Private => "CKA_PRIVATE",
        /// Attributes may change after creation; fixed when the key is made.
        Modifiable => "CKA_MODIFIABLE",
        /// Key material never leaves the token in clear; may only become true.
        Sensitive => "CKA_SENSITIVE",
        /// The key may be wrapped out of the token; may only become false.
        Extractable => "CKA_EXTRACTABLE",
        /// The key may encrypt (secret and public keys).
        Encrypt => "CKA_ENCRYPT",
        /// The key may decrypt (secret and private keys).
        Decrypt => "CKA_DECRYPT",
        /// The key may wrap other keys (secret and public keys).
        Wrap => "CKA_WRAP",
        /// The key may unwrap other keys (secret and private keys).
        Unwrap => "CKA_UNWRAP",
        /// The key may sign or MAC (secret and private keys).
        Sign => "CKA_SIGN",
        /// The key may verify signatures or MACs (secret and public keys).
        Verify => "CKA_VERIFY",
        /// The key may derive other keys (every class).
        Derive => "CKA_DERIVE",
    }
}

impl Attribute {
    /// The ten attributes of the reference's "Supported Attributes".
    pub const REQUESTABLE: &'static [Attribute] = &[
        Attribute::Modifiable,
        Attribute::Extractable,
        Attribute::Sensitive,
        Attribute::Encrypt,
        Attribute::Decrypt,
        Attribute::Wrap,
        Attribute::Unwrap,
        Attribute::Sign,
        Attribute::Verify,
        Attribute::Derive,
    ];

    /// Whether PKCS#11 defines this attribute on objects of `object_type`.
    pub fn applies_to(self, object_type: ObjectType) -> bool {
        use Attribute::*;
        match object_type {
            ObjectType::SecretKey => true,
            ObjectType::PrivateKey => !matches!(self, Encrypt | Wrap | Verify),
            ObjectType::PublicKey => !matches!(self, Sensitive | Extractable | Decrypt | Unwrap | Sign),
        }
    }

    const fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// The attributes that are true on an object (absent means false). Iterates
/// in canonical order, the order of [`Attribute::ALL`], which is how the API
/// lists them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct AttributeSet(u16);

impl AttributeSet {
    /// No attribute true.
    pub const fn empty() -> Self {
        AttributeSet(0)
    }

    /// Whether `attribute` is true on the object.
    pub fn contains(self, attribute: Attribute) -> bool {
        self.0 & attribute.bit() != 0
    }

    /// Makes `attribute` true.
    pub fn insert(&mut self, attribute: Attribute) {
        self.0 |= attribute.bit();
    }

    /// Sets `attribute` to `value`, as a PATCH change or a token's answer does.
    pub fn set(&mut self, attribute: Attribute, value: bool) {
        if value {
            self.0 |= attribute.bit();
        } else {
            self.0 &= !attribute.bit();
        }
    }

    /// The true attributes, in canonical order.
    pub fn iter(self) -> impl Iterator<Item = Attribute> {
        Attribute::ALL.iter().copied().filter(move |a| self.contains(*a))
    }

    /// Whether no attribute is true.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Only the attributes PKCS#11 defines on `object_type`, always with
    /// `CKA_TOKEN` and `CKA_PRIVATE`: what one half of an RSA pair gets.
    pub fn for_object(self, object_type: ObjectType) -> AttributeSet {
        let mut out = AttributeSet::empty();
        out.insert(Attribute::Token);
        out.insert(Attribute::Private);
        for attribute in self.iter().filter(|a| a.applies_to(object_type)) {
            out.insert(attribute);
        }
        out
    }

    /// Names in canonical order, as the API lists them.
    pub fn names(self) -> Vec<&'static str> {
        self.iter().map(Attribute::as_str).collect()
    }

    /// Parses a list of names; unknown or repeated names are refused.
    pub fn parse_names<S: AsRef<str>>(names: &[S]) -> Result<AttributeSet> {
        let mut out = AttributeSet::empty();
        for name in names {
            let attribute: Attribute = name.as_ref().parse()?;
            if out.contains(attribute) {
                return Err(DomainError::invalid(format!(
                    "attribute {attribute} is listed twice"
                )));
            }
            out.insert(attribute);
        }
        Ok(out)
    }
}

impl FromIterator<Attribute> for AttributeSet {
    fn from_iter<T: IntoIterator<Item = Attribute>>(iter: T) -> Self {
        let mut out = AttributeSet::empty();
        for attribute in iter {
            out.insert(attribute);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_iterate_in_canonical_order_and_round_trip_names() {
        let set = AttributeSet::parse_names(&["CKA_SIGN", "CKA_MODIFIABLE", "CKA_TOKEN"]).unwrap();
        assert_eq!(set.names(), vec!["CKA_TOKEN", "CKA_MODIFIABLE", "CKA_SIGN"]);
        assert_eq!(AttributeSet::parse_names(&set.names()).unwrap(), set);
    }

    #[test]
    fn unknown_and_repeated_names_are_refused_with_a_reason() {
        let err = AttributeSet::parse_names(&["CKA_FOO"]).unwrap_err().to_string();
        assert!(
            err.contains("CKA_FOO") && err.contains("allowed: CKA_TOKEN"),
            "{err}"
        );
        let err = AttributeSet::parse_names(&["CKA_SIGN", "CKA_SIGN"])
            .unwrap_err()
            .to_string();
        assert_eq!(err, "attribute CKA_SIGN is listed twice");
    }

    #[test]
    fn rsa_halves_get_only_their_attributes() {
        let all: AttributeSet = Attribute::REQUESTABLE.iter().copied().collect();
        let public = all.for_object(ObjectType::PublicKey);
        let private = all.for_object(ObjectType::PrivateKey);
        assert_eq!(
            public.names(),
            [
                "CKA_TOKEN",
                "CKA_PRIVATE",
                "CKA_MODIFIABLE",
                "CKA_ENCRYPT",
                "CKA_WRAP",
                "CKA_VERIFY",
                "CKA_DERIVE"
            ]
        );
        assert_eq!(
            private.names(),
            [
                "CKA_TOKEN",
                "CKA_PRIVATE",
                "CKA_MODIFIABLE",
                "CKA_SENSITIVE",
                "CKA_EXTRACTABLE",
                "CKA_DECRYPT",
                "CKA_UNWRAP",
                "CKA_SIGN",
                "CKA_DERIVE"
            ]
        );
        assert_eq!(all.for_object(ObjectType::SecretKey).iter().count(), 12);
    }
}
