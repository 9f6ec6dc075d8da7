//! A PATCH and PKCS#11's one-way attribute rules.

use crate::attribute::{Attribute, AttributeSet};
use crate::error::{DomainError, Result};

use super::ObjectType;

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
}
