//! External keys on real SoftHSM2 tokens, as the XKS proxy uses them:
//! AES-GCM through a partition's key, each token refusal named as the XKS
//! proxy API names it, the key's handle found again when it fails, and a
//! key gone from the token not found.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use luna_domain::partition::MemberRequest;
use luna_domain::xks::XksErrorName;
use luna_domain::{AttributeSet, ConnectionRequest, Key, Mechanism, NewKeySpec, Partition};
use luna_pkcs11::testing::{fresh_token_label, module, USER_PIN};
use luna_pkcs11::{GenerateRequest, Token as _};
use luna_runner::registry::{add_partition, register_connection};
use luna_runner::{ExternalKeys, OpenTokens};
use luna_store::testing::{test_audit, TestDatabase};
use secrecy::SecretString;

/// A one-member partition of a fresh token, and the token opened apart
/// (to make and destroy objects behind the service's back).
fn partition(db: &TestDatabase) -> (Partition, luna_pkcs11::Pkcs11Token) {
    let label = fresh_token_label("external-keys");
    let spec = ConnectionRequest {
        name: Some(label.clone()),
        password: Some(SecretString::from(USER_PIN)),
        partitions: vec![MemberRequest {
            hostname: Some("softhsm".into()),
            partition_label: Some(label.clone()),
            serial_number: None,
        }],
        ..Default::default()
    }
    .validate()
    .unwrap();
    register_connection(&db.store, module(), spec, &test_audit()).unwrap();
    let partition = add_partition(&db.store, &label, &test_audit()).unwrap();
    let token = module()
        .open_token(&label, None, SecretString::from(USER_PIN))
        .unwrap();
    (partition, token)
}

/// An AES-256 key's record, and its object made on `token` with `attributes`.
fn key(partition: &Partition, token: &luna_pkcs11::Pkcs11Token, attributes: &[&str]) -> Key {
    let spec = NewKeySpec {
        label: "external".into(),
        size: 256,
        partition_id: partition.id,
        mechanism: Mechanism::AesKeyGen,
        attributes: AttributeSet::parse_names(attributes).unwrap(),
    };
    let key = spec
        .new_key(partition, uuid::Uuid::new_v4, luna_store::now())
        .keys
        .remove(0);
    token
        .generate(&GenerateRequest {
            cka_id: key.cka_id.clone(),
            label: key.label.clone(),
            mechanism: Mechanism::AesKeyGen,
            size: 256,
            attributes: key.attributes,
            remap: false,
            wrap_with_trusted: false,
            retry: false,
        })
        .unwrap();
    key
}

#[test]
fn aes_gcm_through_a_partitions_key_names_each_refusal_as_the_xks_api_does() {
    let db = TestDatabase::sqlite().unwrap();
    let (partition, token) = partition(&db);
    let tokens = Arc::new(OpenTokens::new(
        Arc::clone(module()),
        db.store.clone(),
        luna_runner::Metrics::new().unwrap(),
        None,
    ));
    let keys = ExternalKeys::new(tokens);
    let both = key(
        &partition,
        &token,
        &["CKA_TOKEN", "CKA_PRIVATE", "CKA_ENCRYPT", "CKA_DECRYPT"],
    );
    let (aad, plaintext) = (b"aad".as_slice(), b"a data key".as_slice());
    let sealed = keys.encrypt(&both, &partition, aad, plaintext, true).unwrap();
    assert_eq!((sealed.iv.len(), sealed.tag.len()), (12, 16));
    assert_eq!(keys.decrypt(&both, &partition, aad, &sealed).unwrap(), plaintext);
    let refused = keys
        .decrypt(&both, &partition, b"other aad", &sealed)
        .unwrap_err();
    assert_eq!(refused.name, XksErrorName::InvalidCiphertext, "{refused:?}");

    // What the token holds decides, whatever the record says.
    let decrypt_only = key(&partition, &token, &["CKA_TOKEN", "CKA_PRIVATE", "CKA_DECRYPT"]);
    let refused = keys
        .encrypt(&decrypt_only, &partition, aad, plaintext, false)
        .unwrap_err();
    assert_eq!(refused.name, XksErrorName::InvalidKeyUsage, "{refused:?}");

    // Destroyed behind the service's back: the kept handle fails, the key
    // is looked for again, and not found.
    for object in token.find_by_id(&both.cka_id).unwrap() {
        token.destroy(object.handle).unwrap();
    }
    let gone = keys
        .encrypt(&both, &partition, aad, plaintext, false)
        .unwrap_err();
    assert_eq!(gone.name, XksErrorName::KeyNotFound, "{gone:?}");
    // Made again under the same CKA_ID (a restore): found again.
    token
        .generate(&GenerateRequest {
            cka_id: both.cka_id.clone(),
            label: "restored".into(),
            mechanism: Mechanism::AesKeyGen,
            size: 256,
            attributes: both.attributes,
            remap: false,
            wrap_with_trusted: false,
            retry: false,
        })
        .unwrap();
    let resealed = keys.encrypt(&both, &partition, aad, plaintext, false).unwrap();
    assert_eq!(
        keys.decrypt(&both, &partition, aad, &resealed).unwrap(),
        plaintext
    );
}
