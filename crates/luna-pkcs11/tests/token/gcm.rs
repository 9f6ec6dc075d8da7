//! AES-GCM through a key on the token: a round trip with the largest inputs
//! an external key store sends, a fresh IV each time, and every change to
//! what was sealed refused as not authentic; a key without `CKA_ENCRYPT` or
//! `CKA_DECRYPT` refused for that use.

use luna_pkcs11::{GcmSealed, GCM_IV_BYTES, GCM_TAG_BYTES};

use super::*;

/// An AES-256 key with `attributes` (and `CKA_SENSITIVE`), made on `token`.
fn aes_key(token: &dyn Token, attributes: &[&str]) -> luna_pkcs11::ObjectRef {
    let mut names = vec!["CKA_SENSITIVE"];
    names.extend_from_slice(attributes);
    let made = token
        .generate(&request(Mechanism::AesKeyGen, 256, attrs(&names)))
        .unwrap();
    made.objects[0].handle
}

on_every_module! {
fn aes_gcm_round_trips_and_refuses_what_does_not_authenticate_or_is_not_permitted(m: TestModule) {
    let token = m.fresh_open_token("gcm");
    let key = aes_key(&*token, &["CKA_ENCRYPT", "CKA_DECRYPT"]);
    if m == TestModule::OpenCryptoki {
        // openCryptoki 3.8's soft token has no CKM_AES_GCM: refused, saying so.
        let refused = token.encrypt_gcm(key, b"", b"data").unwrap_err();
        assert!(refused.to_string().contains("does not support CKM_AES_GCM"), "{refused}");
        assert!(!refused.is_transient());
        return;
    }
    // The largest inputs AWS KMS sends an external key store: 4300 bytes of
    // plaintext, 8192 of additional data.
    let plaintext: Vec<u8> = (0..4300u32).map(|i| (i * 7 % 251) as u8).collect();
    let aad: Vec<u8> = (0..8192u32).map(|i| (i % 253) as u8).collect();
    let sealed = token.encrypt_gcm(key, &aad, &plaintext).unwrap();
    assert_eq!((sealed.iv.len(), sealed.tag.len(), sealed.ciphertext.len()), (GCM_IV_BYTES, GCM_TAG_BYTES, plaintext.len()));
    assert_ne!(sealed.ciphertext, plaintext);
    assert_eq!(token.decrypt_gcm(key, &aad, &sealed).unwrap(), plaintext);
    let again = token.encrypt_gcm(key, &aad, &plaintext).unwrap();
    assert_ne!(again.iv, sealed.iv, "each encryption draws its own IV");
    assert_eq!(token.decrypt_gcm(key, b"", &token.encrypt_gcm(key, b"", b"").unwrap()).unwrap(), b"");

    let flip = |bytes: &[u8]| {
        let mut changed = bytes.to_vec();
        changed[0] ^= 1;
        changed
    };
    let tampered = [
        ("ciphertext", GcmSealed { ciphertext: flip(&sealed.ciphertext), ..sealed.clone() }, aad.clone()),
        ("tag", GcmSealed { tag: flip(&sealed.tag), ..sealed.clone() }, aad.clone()),
        ("IV", GcmSealed { iv: flip(&sealed.iv), ..sealed.clone() }, aad.clone()),
        ("additional data", sealed.clone(), flip(&aad)),
        ("no additional data", sealed.clone(), Vec::new()),
    ];
    for (what, changed, aad) in tampered {
        let refused = token.decrypt_gcm(key, &aad, &changed).unwrap_err();
        assert!(matches!(refused, TokenError::NotAuthentic), "a changed {what}: {refused:?}");
    }

    let encrypt_only = aes_key(&*token, &["CKA_ENCRYPT"]);
    let decrypt_only = aes_key(&*token, &["CKA_DECRYPT"]);
    let sealed_by_encrypt_only = token.encrypt_gcm(encrypt_only, &aad, &plaintext).unwrap();
    let refused = token.decrypt_gcm(encrypt_only, &aad, &sealed_by_encrypt_only).unwrap_err();
    assert!(matches!(refused, TokenError::KeyUseNotPermitted { function: "C_Decrypt", .. }), "{refused:?}");
    let refused = token.encrypt_gcm(decrypt_only, &aad, &plaintext).unwrap_err();
    assert!(matches!(refused, TokenError::KeyUseNotPermitted { function: "C_Encrypt", .. }), "{refused:?}");
    assert!(!refused.is_transient());
}
}
