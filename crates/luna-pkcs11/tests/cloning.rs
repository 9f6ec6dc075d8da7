//! The cloning domain on real SoftHSM2 tokens: keys travel between members
//! only wrapped under the trusted domain key, and SoftHSM2 itself enforces
//! what the design relies on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cryptoki::error::{Error as CryptokiError, RvError};
use cryptoki::mechanism::Mechanism as CkMechanism;
use cryptoki::object::{Attribute as CkAttribute, KeyType, ObjectClass};
use cryptoki::session::Session;
use luna_domain::{AttributeSet, Mechanism, Member, ObjectType};
use luna_pkcs11::testing::{fresh_token_label, module, raw_user_session, SO_PIN, USER_PIN};
use luna_pkcs11::{GenerateRequest, Pkcs11Token, Token, TokenError};
use secrecy::SecretString;
use uuid::Uuid;

fn member(label: &str) -> Member {
    let token = module()
        .tokens()
        .unwrap()
        .into_iter()
        .find(|t| t.label == label)
        .unwrap();
    Member {
        hostname: "localhost".into(),
        partition_label: token.label,
        serial_number: token.serial_number,
    }
}

fn open(label: &str) -> Pkcs11Token {
    module()
        .open_token(label, None, SecretString::from(USER_PIN))
        .unwrap()
}

/// Two fresh tokens sharing a cloning domain, opened as partitions.
fn domain_pair(prefix: &str) -> (Pkcs11Token, Pkcs11Token) {
    let (a, b) = (
        fresh_token_label(&format!("{prefix}-a")),
        fresh_token_label(&format!("{prefix}-b")),
    );
    let members = [member(&a), member(&b)];
    module()
        .establish_cloning_domain(&members, &SecretString::from(SO_PIN))
        .unwrap();
    // Establishing again keeps the domain.
    module()
        .establish_cloning_domain(&members, &SecretString::from(SO_PIN))
        .unwrap();
    (open(&a), open(&b))
}

fn request(mechanism: Mechanism, size: u32, attributes: &[&str]) -> GenerateRequest {
    GenerateRequest {
        cka_id: Uuid::new_v4().as_bytes().to_vec(),
        label: "travelling".into(),
        mechanism,
        size,
        attributes: AttributeSet::parse_names(attributes).unwrap(),
        remap: true,
        wrap_with_trusted: true,
        retry: false,
    }
}

fn rv(result: Result<impl std::fmt::Debug, CryptokiError>) -> RvError {
    match result {
        Err(CryptokiError::Pkcs11(rv, _)) => rv,
        other => panic!("expected a PKCS#11 error, got {other:?}"),
    }
}

#[test]
fn an_aes_key_clones_to_the_other_member_with_the_same_value_and_attributes() {
    let (a, b) = domain_pair("clone-aes");
    let made = a
        .generate(&request(
            Mechanism::AesKeyGen,
            256,
            &["CKA_ENCRYPT", "CKA_DECRYPT", "CKA_EXTRACTABLE", "CKA_SENSITIVE"],
        ))
        .unwrap();
    let original = &made.objects[0];
    assert!(original.wrap_with_trusted);
    let portable = a.export_to(original, &b.info().serial_number).unwrap();
    let wrapped = portable.wrapped.clone().unwrap();
    assert!(
        wrapped.len() >= 40,
        "AES-256 wrapped with KWP: {} bytes",
        wrapped.len()
    );
    let copy = b.import_from(&portable, &a.info().serial_number).unwrap();
    assert_eq!(
        (copy.object_type, copy.size_bits, copy.label.as_str()),
        (original.object_type, 256, "travelling")
    );
    assert_eq!(
        (&copy.cka_id, copy.attributes, copy.wrap_with_trusted),
        (&original.cka_id, original.attributes, true)
    );
    // (The fingerprints may differ: SoftHSM2 does not compute CKA_CHECK_VALUE
    // for an unwrapped key, and the fingerprint includes it.)

    // Same value: what one member encrypts, the other decrypts.
    let (ra, rb) = (
        raw_user_session(&a.info().label),
        raw_user_session(&b.info().label),
    );
    let find = |s: &Session| {
        s.find_objects(&[
            CkAttribute::Id(original.cka_id.clone()),
            CkAttribute::Class(ObjectClass::SECRET_KEY),
        ])
        .unwrap()[0]
    };
    let plain = b"sixteen byte msg".to_vec();
    let sealed = ra.encrypt(&CkMechanism::AesEcb, find(&ra), &plain).unwrap();
    assert_ne!(sealed, plain);
    assert_eq!(
        rb.decrypt(&CkMechanism::AesEcb, find(&rb), &sealed).unwrap(),
        plain
    );
}

#[test]
fn an_rsa_pair_clones_the_private_key_wrapped_and_the_public_key_by_its_attributes() {
    let (a, b) = domain_pair("clone-rsa");
    let made = a
        .generate(&request(
            Mechanism::RsaPkcsKeyPairGen,
            2048,
            &["CKA_SIGN", "CKA_VERIFY", "CKA_EXTRACTABLE"],
        ))
        .unwrap();
    for object in &made.objects {
        let portable = a.export_to(object, &b.info().serial_number).unwrap();
        assert_eq!(
            portable.wrapped.is_some(),
            object.object_type == Some(ObjectType::PrivateKey)
        );
        let copy = b.import_from(&portable, &a.info().serial_number).unwrap();
        assert_eq!(
            (copy.object_type, &copy.modulus, copy.public_exponent),
            (object.object_type, &object.modulus, 65537)
        );
        assert_eq!(
            (copy.attributes, &copy.cka_id),
            (object.attributes, &object.cka_id)
        );
    }
    assert_eq!(b.find_by_id(&made.objects[0].cka_id).unwrap().len(), 2);
}

#[test]
fn softhsm_enforces_the_domain_rules() {
    let (a, _b) = domain_pair("enforce");
    let made = a
        .generate(&request(
            Mechanism::AesKeyGen,
            256,
            &["CKA_EXTRACTABLE", "CKA_MODIFIABLE"],
        ))
        .unwrap();
    let session = raw_user_session(&a.info().label);
    let key = session
        .find_objects(&[CkAttribute::Id(made.objects[0].cka_id.clone())])
        .unwrap()[0];
    // A wrapping key the user makes is not trusted, and cannot wrap the key.
    let untrusted = session
        .generate_key(
            &CkMechanism::AesKeyGen,
            &[
                CkAttribute::Token(false),
                CkAttribute::ValueLen(32.into()),
                CkAttribute::Wrap(true),
            ],
        )
        .unwrap();
    assert_eq!(
        rv(session.wrap_key(&CkMechanism::AesKeyWrapPad, untrusted, key)),
        RvError::KeyNotWrappable
    );
    // The user can neither make a trusted key nor clear CKA_WRAP_WITH_TRUSTED.
    let trusted_attempt = session.generate_key(
        &CkMechanism::AesKeyGen,
        &[
            CkAttribute::Token(false),
            CkAttribute::ValueLen(32.into()),
            CkAttribute::Wrap(true),
            CkAttribute::Trusted(true),
        ],
    );
    assert!(trusted_attempt.is_err(), "a user made a trusted key");
    assert!(
        session
            .update_attributes(untrusted, &[CkAttribute::Trusted(true)])
            .is_err(),
        "a user marked a key trusted"
    );
    assert!(
        session
            .update_attributes(key, &[CkAttribute::WrapWithTrusted(false)])
            .is_err(),
        "CKA_WRAP_WITH_TRUSTED was cleared"
    );
    // A key that is not extractable cannot be wrapped by anyone, domain or not.
    let locked = a
        .generate(&GenerateRequest {
            ..request(Mechanism::AesKeyGen, 256, &["CKA_SENSITIVE"])
        })
        .unwrap();
    let err = a
        .export_to(&locked.objects[0], &_b.info().serial_number)
        .unwrap_err();
    assert_eq!(err.code(), "CKR_KEY_UNEXTRACTABLE", "{err}");
    let _ = KeyType::AES;
}

#[test]
fn without_a_domain_nothing_travels_and_a_logged_in_user_blocks_the_so() {
    let a = open(&fresh_token_label("nodomain-a"));
    let b = open(&fresh_token_label("nodomain-b"));
    let made = a
        .generate(&request(Mechanism::AesKeyGen, 128, &["CKA_EXTRACTABLE"]))
        .unwrap();
    let err = a
        .export_to(&made.objects[0], &b.info().serial_number)
        .unwrap_err();
    assert!(matches!(err, TokenError::NoCloningDomain { .. }), "{err}");
    // The user is logged in to both: the SO cannot work on them now.
    let members = [member(&a.info().label), member(&b.info().label)];
    let err = module()
        .establish_cloning_domain(&members, &SecretString::from(SO_PIN))
        .unwrap_err();
    assert!(matches!(err, TokenError::UserSessionOpen { .. }), "{err}");
    let err = module()
        .establish_cloning_domain(
            &[
                member(&fresh_token_label("nodomain-c")),
                member(&fresh_token_label("nodomain-d")),
            ],
            &SecretString::from("wrong-so-pin"),
        )
        .unwrap_err();
    assert!(err.is_pin_incorrect(), "{err}");
}

#[test]
fn without_a_domain_only_extractable_keys_travel_under_an_ephemeral_agreement() {
    let a = open(&fresh_token_label("ephemeral-a"));
    let b = open(&fresh_token_label("ephemeral-b"));
    let plain_request = |attributes: &[&str]| GenerateRequest {
        wrap_with_trusted: false,
        ..request(Mechanism::AesKeyGen, 256, attributes)
    };
    assert!(!a.shares_domain_with(&b.info().serial_number).unwrap());

    // An extractable key travels; its value arrives intact.
    let made = a
        .generate(&plain_request(&["CKA_EXTRACTABLE", "CKA_ENCRYPT", "CKA_DECRYPT"]))
        .unwrap();
    let offer = b.offer_transport().unwrap();
    let portable = a.export_for_offer(&made.objects[0], &offer).unwrap();
    assert!(portable.sender_point.is_some());
    let copy = b.import_offered(&portable, &offer).unwrap();
    assert_eq!(
        (&copy.cka_id, copy.attributes, copy.size_bits),
        (&made.objects[0].cka_id, made.objects[0].attributes, 256)
    );
    let (ra, rb) = (
        raw_user_session(&a.info().label),
        raw_user_session(&b.info().label),
    );
    let find = |s: &Session| {
        s.find_objects(&[
            CkAttribute::Id(made.objects[0].cka_id.clone()),
            CkAttribute::Class(ObjectClass::SECRET_KEY),
        ])
        .unwrap()[0]
    };
    let plain = b"sixteen byte msg".to_vec();
    let sealed = ra.encrypt(&CkMechanism::AesEcb, find(&ra), &plain).unwrap();
    assert_eq!(
        rb.decrypt(&CkMechanism::AesEcb, find(&rb), &sealed).unwrap(),
        plain
    );

    // A key that is not extractable, or that only a trusted key may wrap, does not.
    let locked = a.generate(&plain_request(&["CKA_SENSITIVE"])).unwrap();
    let err = a
        .export_for_offer(&locked.objects[0], &b.offer_transport().unwrap())
        .unwrap_err();
    assert_eq!(err.code(), "CKR_KEY_UNEXTRACTABLE", "{err}");
    let guarded = a
        .generate(&request(Mechanism::AesKeyGen, 256, &["CKA_EXTRACTABLE"]))
        .unwrap();
    let err = a
        .export_for_offer(&guarded.objects[0], &b.offer_transport().unwrap())
        .unwrap_err();
    assert_eq!(
        err.code(),
        "CKR_KEY_NOT_WRAPPABLE",
        "an untrusted transport key cannot wrap it: {err}"
    );

    // An RSA pair: the private key under the agreement, the public key by its attributes.
    let pair = a
        .generate(&GenerateRequest {
            wrap_with_trusted: false,
            ..request(
                Mechanism::RsaPkcsKeyPairGen,
                2048,
                &["CKA_EXTRACTABLE", "CKA_SIGN"],
            )
        })
        .unwrap();
    for object in &pair.objects {
        let offer = b.offer_transport().unwrap();
        let copy = b
            .import_offered(&a.export_for_offer(object, &offer).unwrap(), &offer)
            .unwrap();
        assert_eq!(
            (copy.object_type, &copy.modulus),
            (object.object_type, &object.modulus)
        );
    }
}
