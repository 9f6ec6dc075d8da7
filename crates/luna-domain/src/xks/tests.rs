//! The XKS proxy's rules: errors and their statuses, required request
//! metadata, sizes, IV and tag lengths, the additional data authenticated,
//! and which keys answer as external keys, for what.

use std::collections::BTreeMap;

use time::OffsetDateTime;
use uuid::Uuid;

use super::*;
use crate::attribute::AttributeSet;
use crate::key::{KeyData, KeyEvent, KeyLifecycle, Mechanism, Origin};

fn key(algorithm: Algorithm, size: u32, attributes: &[&str], lifecycle: KeyLifecycle) -> Key {
    let now = OffsetDateTime::now_utc();
    Key::new(
        KeyData {
            id: Uuid::nil(),
            partition_id: Uuid::nil(),
            partition_label: "p".into(),
            label: "xks".into(),
            algorithm: Some(algorithm),
            object_type: Some(if algorithm == Algorithm::Aes {
                ObjectType::SecretKey
            } else {
                ObjectType::PrivateKey
            }),
            mechanism: Some(Mechanism::AesKeyGen),
            generated_with: None,
            size,
            attributes: AttributeSet::parse_names(attributes).unwrap(),
            cka_id: vec![1],
            object_uid: "00".into(),
            sha_256_fingerprint: String::new(),
            replication_info: BTreeMap::new(),
            replicated: true,
            byok_key: false,
            origin: Origin::Cckm,
            modulus: String::new(),
            exponent: 0,
            link_id: None,
            ha_enabled: false,
            created_at: now,
            updated_at: now,
        },
        lifecycle,
    )
}

#[test]
fn every_error_name_has_the_specs_status_and_messages_stay_printable() {
    let statuses: Vec<(&str, u16)> = XksErrorName::ALL
        .iter()
        .map(|n| (n.as_str(), n.status()))
        .collect();
    assert_eq!(
        statuses,
        [
            ("ValidationException", 400),
            ("InvalidStateException", 400),
            ("InvalidCiphertextException", 400),
            ("InvalidKeyUsageException", 400),
            ("AuthenticationFailedException", 401),
            ("AccessDeniedException", 403),
            ("KeyNotFoundException", 404),
            ("InvalidUriPathException", 404),
            ("ThrottlingException", 429),
            ("UnsupportedOperationException", 501),
            ("DependencyTimeoutException", 503),
            ("InternalException", 500),
        ]
    );
    let said = XksError::new(XksErrorName::Internal, format!("é\n{}", "x".repeat(600)));
    assert!(said.message.starts_with("??x"));
    assert_eq!(said.message.chars().count(), 511);
}

#[test]
fn each_call_needs_the_metadata_the_spec_requires() {
    let full = RequestMetadata {
        aws_principal_arn: Some("arn:aws:iam::123456789012:user/Alice".into()),
        kms_key_arn: Some("arn:aws:kms:us-east-1:123456789012:key/k".into()),
        kms_operation: Some("Encrypt".into()),
        kms_request_id: Some("4112f4d6-db54-4af4-ae30-c55a22a8dfae".into()),
        ..RequestMetadata::default()
    };
    for call in [
        XksCall::GetHealthStatus,
        XksCall::GetKeyMetadata,
        XksCall::Encrypt,
        XksCall::Decrypt,
    ] {
        assert_eq!(full.check(call), Ok(()), "{call:?}");
    }
    let health_only = RequestMetadata {
        kms_operation: Some("KmsHealthCheck".into()),
        kms_request_id: Some("r".into()),
        ..RequestMetadata::default()
    };
    assert_eq!(health_only.check(XksCall::GetHealthStatus), Ok(()));
    let refused = health_only.check(XksCall::GetKeyMetadata).unwrap_err();
    assert_eq!(
        (refused.name, refused.message.as_str()),
        (
            XksErrorName::Validation,
            "requestMetadata.awsPrincipalArn is required"
        )
    );
    let no_key_arn = RequestMetadata {
        kms_key_arn: None,
        ..full.clone()
    };
    assert!(no_key_arn.check(XksCall::GetKeyMetadata).is_ok());
    assert!(no_key_arn
        .check(XksCall::Encrypt)
        .unwrap_err()
        .message
        .contains("kmsKeyArn"));
    let empty = RequestMetadata::default();
    assert!(empty
        .check(XksCall::GetHealthStatus)
        .unwrap_err()
        .message
        .contains("kmsRequestId"));
    let long = RequestMetadata {
        aws_source_vpc: Some("v".repeat(2049)),
        ..full
    };
    assert!(long
        .check(XksCall::Encrypt)
        .unwrap_err()
        .message
        .contains("awsSourceVpc is longer"));
}

#[test]
fn sizes_algorithms_ivs_and_tags_are_held_to_the_spec() {
    let encrypt = EncryptRequest {
        plaintext: vec![0; 4300],
        aad: vec![0; 8192],
        encryption_algorithm: Some(AES_GCM.into()),
        integrity_algorithm: None,
    };
    assert_eq!(encrypt.check(), Ok(false));
    assert_eq!(
        EncryptRequest {
            integrity_algorithm: Some(SHA_256.into()),
            ..encrypt.clone()
        }
        .check(),
        Ok(true)
    );
    let refusal = |r: EncryptRequest| r.check().unwrap_err();
    assert_eq!(
        refusal(EncryptRequest {
            encryption_algorithm: Some("AES_CBC".into()),
            ..encrypt.clone()
        })
        .name,
        XksErrorName::Validation
    );
    assert_eq!(
        refusal(EncryptRequest {
            encryption_algorithm: None,
            ..encrypt.clone()
        })
        .name,
        XksErrorName::Validation
    );
    assert_eq!(
        refusal(EncryptRequest {
            integrity_algorithm: Some("MD5".into()),
            ..encrypt.clone()
        })
        .name,
        XksErrorName::Validation
    );
    assert_eq!(
        refusal(EncryptRequest {
            plaintext: vec![0; MAX_PLAINTEXT_BYTES + 1],
            ..encrypt.clone()
        })
        .name,
        XksErrorName::UnsupportedOperation
    );
    assert_eq!(
        refusal(EncryptRequest {
            aad: vec![0; MAX_AAD_BYTES + 1],
            ..encrypt
        })
        .name,
        XksErrorName::UnsupportedOperation
    );

    let decrypt = DecryptRequest {
        ciphertext: vec![1; 32],
        metadata: CIPHERTEXT_METADATA_V1.to_vec(),
        aad: vec![],
        iv: vec![2; 12],
        tag: vec![3; 16],
        encryption_algorithm: Some(AES_GCM.into()),
    };
    assert_eq!(decrypt.check(), Ok(()));
    assert_eq!(
        DecryptRequest {
            iv: vec![2; 16],
            ..decrypt.clone()
        }
        .check(),
        Ok(())
    );
    let refusal = |r: DecryptRequest| r.check().unwrap_err();
    assert_eq!(
        refusal(DecryptRequest {
            iv: vec![2; 8],
            ..decrypt.clone()
        })
        .name,
        XksErrorName::InvalidCiphertext
    );
    assert_eq!(
        refusal(DecryptRequest {
            tag: vec![3; 12],
            ..decrypt.clone()
        })
        .name,
        XksErrorName::InvalidCiphertext
    );
    assert_eq!(
        refusal(DecryptRequest {
            metadata: vec![0; 21],
            ..decrypt.clone()
        })
        .name,
        XksErrorName::Validation
    );
    assert_eq!(
        refusal(DecryptRequest {
            encryption_algorithm: Some("RSA".into()),
            ..decrypt
        })
        .name,
        XksErrorName::Validation
    );
}

#[test]
fn the_additional_data_authenticated_carries_each_part_after_its_length() {
    assert_eq!(gcm_aad(b"", b""), [0, 0, 0]);
    assert_eq!(gcm_aad(b"ab", b"m"), [0, 2, b'a', b'b', 1, b'm']);
    let long = vec![7u8; 300];
    let built = gcm_aad(&long, CIPHERTEXT_METADATA_V1);
    assert_eq!(&built[..2], &[1, 44], "300 as two bytes, big-endian");
    assert_eq!(built[302] as usize, CIPHERTEXT_METADATA_V1.len());
    assert!(CIPHERTEXT_METADATA_V1.len() <= MAX_CIPHERTEXT_METADATA_BYTES);
    // Moving a byte from the data to the metadata changes what is authenticated.
    assert_ne!(gcm_aad(b"ab", b"c"), gcm_aad(b"a", b"bc"));
    assert_eq!(integrity_input(b"a", b"m", b"iv", b"ct", b"tag"), b"amivcttag");
}

#[test]
fn only_available_aes_256_keys_answer_and_their_attributes_say_for_what() {
    let both = key(
        Algorithm::Aes,
        256,
        &["CKA_ENCRYPT", "CKA_DECRYPT", "CKA_WRAP"],
        KeyLifecycle::discovered(),
    );
    let external = ExternalKey::of(&both).unwrap();
    assert_eq!((external.key_spec, external.key_status), ("AES_256", "ENABLED"));
    assert_eq!(external.key_usage, ["ENCRYPT", "DECRYPT", "WRAP"]);
    assert!(external.allows(XksCall::Encrypt).is_ok() && external.allows(XksCall::Decrypt).is_ok());

    let encrypt_only = ExternalKey::of(&key(
        Algorithm::Aes,
        256,
        &["CKA_ENCRYPT"],
        KeyLifecycle::discovered(),
    ))
    .unwrap();
    let refused = encrypt_only.allows(XksCall::Decrypt).unwrap_err();
    assert_eq!(refused.name, XksErrorName::InvalidKeyUsage);
    assert!(refused.message.contains("CKA_DECRYPT"));
    let impotent = ExternalKey::of(&key(Algorithm::Aes, 256, &[], KeyLifecycle::discovered())).unwrap();
    assert!(impotent.key_usage.is_empty());
    assert_eq!(
        impotent.allows(XksCall::Encrypt).unwrap_err().name,
        XksErrorName::InvalidKeyUsage
    );
    assert_eq!(impotent.allows(XksCall::GetKeyMetadata), Ok(()));

    let name_of = |k: Key| ExternalKey::of(&k).unwrap_err().name;
    assert_eq!(
        name_of(key(
            Algorithm::Aes,
            128,
            &["CKA_ENCRYPT"],
            KeyLifecycle::discovered()
        )),
        XksErrorName::KeyNotFound
    );
    assert_eq!(
        name_of(key(
            Algorithm::Rsa,
            2048,
            &["CKA_DECRYPT"],
            KeyLifecycle::discovered()
        )),
        XksErrorName::KeyNotFound
    );
    assert_eq!(
        name_of(key(
            Algorithm::Aes,
            256,
            &["CKA_ENCRYPT"],
            KeyLifecycle::creating()
        )),
        XksErrorName::InvalidState
    );
    let destroyed = KeyLifecycle::discovered().next(&KeyEvent::Vanished).unwrap();
    assert_eq!(
        name_of(key(Algorithm::Aes, 256, &["CKA_ENCRYPT"], destroyed)),
        XksErrorName::KeyNotFound
    );
}
