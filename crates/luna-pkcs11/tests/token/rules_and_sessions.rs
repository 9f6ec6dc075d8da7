//! The attribute rules the token enforces, wrong PINs and labels, destroy, pkcs11-tool's view, sessions on many threads, openCryptoki's shared login.

use super::*;

on_every_module! {
/// Every PATCH rule of the domain, tried on the token: what the domain refuses,
/// the token refuses too, and what it allows, the token does.
fn the_token_enforces_the_attribute_rules_the_domain_predicts(m: TestModule) {
    let token = m.fresh_open_token("rules");
    let cases: &[(ObjectType, &[&str], &str, bool, bool)] = &[
        // (object, attributes at creation, attribute, new value, allowed)
        (
            ObjectType::SecretKey,
            &["CKA_MODIFIABLE", "CKA_SENSITIVE"],
            "CKA_SENSITIVE",
            false,
            false,
        ),
        (
            ObjectType::SecretKey,
            &["CKA_MODIFIABLE"],
            "CKA_SENSITIVE",
            true,
            true,
        ),
        (
            ObjectType::SecretKey,
            &["CKA_MODIFIABLE"],
            "CKA_EXTRACTABLE",
            true,
            false,
        ),
        (
            ObjectType::SecretKey,
            &["CKA_MODIFIABLE", "CKA_EXTRACTABLE"],
            "CKA_EXTRACTABLE",
            false,
            true,
        ),
        (
            ObjectType::SecretKey,
            &["CKA_ENCRYPT"],
            "CKA_ENCRYPT",
            false,
            false,
        ),
        (ObjectType::SecretKey, &["CKA_ENCRYPT"], "CKA_SIGN", true, false),
        (
            ObjectType::SecretKey,
            &["CKA_MODIFIABLE"],
            "CKA_MODIFIABLE",
            false,
            false,
        ),
        (
            ObjectType::SecretKey,
            &["CKA_MODIFIABLE"],
            "CKA_TOKEN",
            false,
            false,
        ),
        (ObjectType::SecretKey, &["CKA_MODIFIABLE"], "CKA_SIGN", true, true),
        (
            ObjectType::PrivateKey,
            &["CKA_MODIFIABLE", "CKA_SENSITIVE"],
            "CKA_SENSITIVE",
            false,
            false,
        ),
        (
            ObjectType::PrivateKey,
            &["CKA_MODIFIABLE"],
            "CKA_SIGN",
            true,
            true,
        ),
        (
            ObjectType::PublicKey,
            &["CKA_MODIFIABLE"],
            "CKA_VERIFY",
            true,
            true,
        ),
    ];
    for &(object_type, created_with, attribute, value, allowed) in cases {
        let (mechanism, size) = match object_type {
            ObjectType::SecretKey => (Mechanism::AesKeyGen, 256),
            _ => (Mechanism::RsaPkcsKeyPairGen, 2048),
        };
        let made = token
            .generate(&request(mechanism, size, attrs(created_with)))
            .unwrap();
        let object = made
            .objects
            .iter()
            .find(|d| d.object_type == Some(object_type))
            .unwrap();
        let change = [AttributeChangeRequest {
            attribute: attribute.into(),
            value,
        }];
        let domain = check_update(object_type, object.attributes, &change);
        assert_eq!(
            domain.is_ok(),
            allowed,
            "domain on {object_type} {created_with:?}: {attribute}={value}"
        );
        let attribute: Attribute = attribute.parse().unwrap();
        let on_token = token.set_attributes(object.handle, &[(attribute, value)]);
        assert_eq!(
            on_token.is_ok(),
            allowed,
            "token on {object_type} {created_with:?}: {attribute}={value}: {on_token:?}"
        );
        if let Err(err) = on_token {
            assert!(
                err.to_string().starts_with("C_SetAttributeValue returned CKR_"),
                "{err}"
            );
        } else {
            assert_eq!(
                token
                    .describe(object.handle)
                    .unwrap()
                    .attributes
                    .contains(attribute),
                value
            );
        }
    }
}

/// On a token no session of this process is logged in to, `C_Login` itself judges.
fn a_wrong_pin_on_a_token_nobody_is_logged_in_to_fails_in_c_login(m: TestModule) {
    let token = m.fresh_tokens("firstpin", 1).pop().unwrap();
    let label = &token.label;
    let err = m.module()
        .open_token(label, None, SecretString::from("wrong"))
        .unwrap_err();
    assert_eq!(err.to_string(), "C_Login returned CKR_PIN_INCORRECT");
    assert!(m.module()
        .open_token(label, None, SecretString::from(USER_PIN))
        .is_ok());
}

fn destroy_removes_the_object(m: TestModule) {
    let token = m.fresh_open_token("destroy");
    let req = request(Mechanism::AesKeyGen, 256, attrs(&[]));
    let made = token.generate(&req).unwrap();
    token.destroy(made.objects[0].handle).unwrap();
    assert!(token.find_by_id(&req.cka_id).unwrap().is_empty());
    let err = token.describe(made.objects[0].handle).unwrap_err();
    assert_eq!(err.code(), "CKR_OBJECT_HANDLE_INVALID", "{err}");
}

fn a_wrong_pin_or_label_is_a_typed_error(m: TestModule) {
    let token = m.fresh_open_token("pin");
    let label = token.info().label.clone();
    let err = m.module()
        .open_token(&label, None, SecretString::from("wrong-pin"))
        .unwrap_err();
    assert!(err.is_pin_incorrect(), "{err}");
    // Logged in, SoftHSM2 answers any PIN CKR_USER_ALREADY_LOGGED_IN and the
    // service compares it with the one proven; openCryptoki judges it itself.
    let expected = match m {
        TestModule::SoftHsm2 => format!("the PIN for token {label:?} is incorrect"),
        TestModule::OpenCryptoki => "C_Login returned CKR_PIN_INCORRECT".to_owned(),
    };
    assert_eq!(err.to_string(), expected);
    // The right PIN still opens it while the application is logged in.
    m.module()
        .open_token(&label, None, SecretString::from(USER_PIN))
        .unwrap();
    let missing = unique_label("absent");
    let err = m.module()
        .open_token(&missing, None, SecretString::from(USER_PIN))
        .unwrap_err();
    assert!(matches!(err, TokenError::TokenNotFound { .. }), "{err}");
    let err = m.module()
        .open_token(&label, Some("0000"), SecretString::from(USER_PIN))
        .unwrap_err();
    assert!(err.to_string().contains("with serial number 0000"), "{err}");
}

/// pkcs11-tool, an independent PKCS#11 client, sees what the service made.
fn pkcs11_tool_sees_the_generated_keys(m: TestModule) {
    let token = m.fresh_open_token("tool");
    let req = GenerateRequest {
        label: "seen-by-pkcs11-tool".into(),
        ..request(Mechanism::AesKeyGen, 256, attrs(&["CKA_ENCRYPT"]))
    };
    token.generate(&req).unwrap();
    let output = Command::new("pkcs11-tool")
        .arg("--module")
        .arg(m.module().path())
        .args([
            "--token-label",
            &token.info().label,
            "--login",
            "--pin",
            USER_PIN,
            "--list-objects",
        ])
        .output()
        .expect("pkcs11-tool is installed (package opensc)");
    let listing = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{listing} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(listing.contains("seen-by-pkcs11-tool"), "{listing}");
    assert!(listing.contains(&hex::encode(&req.cka_id)), "{listing}");
    assert!(listing.contains("AES length 32"), "{listing}");
}
}

/// Tokens opened and closed on several threads at once (a server dropping a
/// partition's sessions while another partition logs in, or a token is
/// provisioned beside it). openCryptoki 3.8 purges its shared login's
/// objects, unlocked, whenever a token's last session closes or a session
/// logs out: unserialised, two at once corrupted its heap and killed the
/// process (`dlist_remove_node`, seen in the API benchmark).
#[test]
fn sessions_of_two_tokens_can_open_and_close_on_many_threads_at_once() {
    let m = TestModule::OpenCryptoki;
    let tokens = m.fresh_tokens("session-churn", 2);
    // Each PIN proven alone first: with the shared login, a token's first
    // login beside another's cannot prove its PIN (the test above).
    for token in &tokens {
        drop(token.open());
    }
    let stop_at = std::time::Instant::now() + std::time::Duration::from_secs(3);
    std::thread::scope(|scope| {
        for token in &tokens {
            for _ in 0..2 {
                scope.spawn(move || {
                    let mut rounds = 0;
                    while std::time::Instant::now() < stop_at {
                        let opened = token.open();
                        assert!(opened.find_by_id(b"none").unwrap().is_empty());
                        drop(opened);
                        rounds += 1;
                    }
                    assert!(rounds > 0);
                });
            }
        }
    });
}

/// openCryptoki 3.8 keeps one login for all its soft-token slots in a
/// process: once one token is open, a second answers C_Login with
/// CKR_USER_ALREADY_LOGGED_IN whatever the PIN. The service cannot prove the
/// PIN then, and says why instead of taking the token.
#[test]
fn opencryptoki_shares_one_login_among_its_tokens_and_the_second_is_refused() {
    let m = TestModule::OpenCryptoki;
    let mut tokens = m.fresh_tokens("shared-login", 2);
    let second = tokens.pop().unwrap();
    let first = tokens.pop().unwrap().open();
    let err = m
        .module()
        .open_token(&second.label, None, SecretString::from("9999"))
        .unwrap_err();
    assert!(matches!(err, TokenError::LoginShared { .. }), "{err}");
    assert!(
        err.to_string().contains("shares one login among its tokens"),
        "{err}"
    );
    drop(first);
}
