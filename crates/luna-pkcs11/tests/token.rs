//! luna-pkcs11 against real SoftHSM2 tokens, each test on a token of its own.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::ops::ControlFlow;
use std::process::Command;

use luna_domain::key::{check_update, AttributeChangeRequest};
use luna_domain::{Algorithm, Attribute, AttributeSet, Mechanism, ObjectType};
use luna_pkcs11::on_every_module;
use luna_pkcs11::testing::{unique_label, TestModule, USER_PIN};
use luna_pkcs11::{GenerateRequest, Pkcs11Token, Token, TokenError};
use secrecy::SecretString;
use uuid::Uuid;

fn attrs(names: &[&str]) -> AttributeSet {
    AttributeSet::parse_names(names).unwrap()
}

fn request(mechanism: Mechanism, size: u32, attributes: AttributeSet) -> GenerateRequest {
    GenerateRequest {
        cka_id: Uuid::new_v4().as_bytes().to_vec(),
        label: "hsm-key".into(),
        mechanism,
        size,
        attributes,
        remap: true,
        retry: false,
        wrap_with_trusted: false,
    }
}

fn retried(request: &GenerateRequest) -> GenerateRequest {
    GenerateRequest {
        retry: true,
        ..request.clone()
    }
}

fn count_objects(token: &Pkcs11Token) -> usize {
    token.scan(100, &mut |_| ControlFlow::Continue(())).unwrap().seen
}

fn collect_all(token: &Pkcs11Token) -> Vec<luna_pkcs11::ObjectRef> {
    let mut all = Vec::new();
    token
        .scan(7, &mut |batch| {
            all.extend_from_slice(batch);
            ControlFlow::Continue(())
        })
        .unwrap();
    all
}

on_every_module! {
fn token_info_names_the_token_and_its_mechanisms(m: TestModule) {
    let token = m.fresh_open_token("info");
    let info = token.info();
    assert!(info.label.starts_with("info-"));
    assert!(!info.serial_number.is_empty());
    assert!(info.supports(Mechanism::AesKeyGen));
    assert!(info.supports(Mechanism::RsaPkcsKeyPairGen));
    // Neither software token has the Luna RSA mechanisms: these are what remap is for.
    assert!(!info.supports(Mechanism::RsaX931KeyPairGen));
    assert!(!info.supports(Mechanism::RsaFips1863PrimeKeyPairGen));
    assert_eq!(
        info.generation_mechanism(Mechanism::RsaX931KeyPairGen, true).unwrap(),
        Mechanism::RsaPkcsKeyPairGen
    );
    assert!(info.generation_mechanism(Mechanism::RsaX931KeyPairGen, false).is_err());
    // openCryptoki's soft token has no elliptic curves, so no replication.
    let missing: &[&str] = match m {
        TestModule::SoftHsm2 => &[],
        TestModule::OpenCryptoki => &["CKM_EC_KEY_PAIR_GEN", "CKM_ECDH1_DERIVE", "CKM_AES_KEY_WRAP_PAD"],
    };
    assert_eq!(info.missing_for_replication(), missing);
    // The same, read without logging in.
    assert_eq!(
        &m.module().describe_token(&info.label, Some(&info.serial_number)).unwrap(),
        info
    );
    let listed = m.module().tokens().unwrap();
    assert!(listed
        .iter()
        .any(|t| t.label == info.label && t.serial_number == info.serial_number));
}

fn aes_keys_of_every_size_carry_exactly_the_requested_attributes(m: TestModule) {
    let token = m.fresh_open_token("aes");
    for size in [128, 192, 256] {
        let wanted = attrs(&["CKA_MODIFIABLE", "CKA_SENSITIVE", "CKA_ENCRYPT", "CKA_DECRYPT"]);
        let req = request(Mechanism::AesKeyGen, size, wanted);
        let made = token.generate(&req).unwrap();
        assert!(made.created);
        assert_eq!(made.mechanism_used, Mechanism::AesKeyGen);
        let [key] = made.objects.as_slice() else {
            panic!("one object")
        };
        assert_eq!(key.object_type, Some(ObjectType::SecretKey));
        assert_eq!(key.algorithm, Some(Algorithm::Aes));
        assert_eq!(key.size_bits, size);
        assert_eq!(key.label, "hsm-key");
        assert_eq!(key.cka_id, req.cka_id);
        assert_eq!(
            key.attributes.names(),
            [
                "CKA_TOKEN",
                "CKA_PRIVATE",
                "CKA_MODIFIABLE",
                "CKA_SENSITIVE",
                "CKA_ENCRYPT",
                "CKA_DECRYPT"
            ]
        );
        assert!(key.modulus.is_empty());
        assert_eq!(key.object_uid(), format!("{}04", hex::encode(&req.cka_id)));
        // The fingerprint is stable across reads, and differs between keys.
        assert_eq!(token.describe(key.handle).unwrap().fingerprint, key.fingerprint);
    }
    let fingerprints: std::collections::HashSet<_> = token
        .describe_many(&collect_all(&token))
        .unwrap()
        .into_iter()
        .map(|d| d.fingerprint)
        .collect();
    assert_eq!(fingerprints.len(), 3);
}

fn rsa_pairs_split_attributes_and_luna_mechanisms_are_remapped(m: TestModule) {
    let token = m.fresh_open_token("rsa");
    let wanted = attrs(&[
        "CKA_MODIFIABLE",
        "CKA_SENSITIVE",
        "CKA_EXTRACTABLE",
        "CKA_SIGN",
        "CKA_VERIFY",
    ]);
    for (size, mechanism) in [
        (2048, Mechanism::RsaX931KeyPairGen),
        (3072, Mechanism::RsaFips1863AuxPrimeKeyPairGen),
        (4096, Mechanism::RsaPkcsKeyPairGen),
    ] {
        let req = request(mechanism, size, wanted);
        let made = token.generate(&req).unwrap();
        assert_eq!(
            made.mechanism_used,
            Mechanism::RsaPkcsKeyPairGen,
            "{mechanism} remapped"
        );
        let [private, public] = made.objects.as_slice() else {
            panic!("a pair")
        };
        assert_eq!(private.object_type, Some(ObjectType::PrivateKey));
        assert_eq!(public.object_type, Some(ObjectType::PublicKey));
        for half in [private, public] {
            assert_eq!(half.size_bits, size);
            assert_eq!(half.public_exponent, 65537);
            assert_eq!(half.modulus.len() * 8, size as usize);
            assert_eq!(half.cka_id, req.cka_id);
        }
        assert_eq!(private.modulus, public.modulus);
        assert_ne!(private.fingerprint, public.fingerprint);
        assert_eq!(
            private.attributes.names(),
            [
                "CKA_TOKEN",
                "CKA_PRIVATE",
                "CKA_MODIFIABLE",
                "CKA_SENSITIVE",
                "CKA_EXTRACTABLE",
                "CKA_SIGN"
            ]
        );
        assert_eq!(
            public.attributes.names(),
            ["CKA_TOKEN", "CKA_PRIVATE", "CKA_MODIFIABLE", "CKA_VERIFY"]
        );
    }
    let strict = GenerateRequest {
        remap: false,
        ..request(Mechanism::RsaX931KeyPairGen, 2048, wanted)
    };
    let err = token.generate(&strict).unwrap_err();
    assert!(matches!(err, TokenError::MechanismUnsupported { .. }), "{err}");
    assert!(err
        .to_string()
        .contains("does not support CKM_RSA_X9_31_KEY_PAIR_GEN"));
}

fn a_retried_create_finds_the_first_objects_instead_of_making_more(m: TestModule) {
    // A retry of a create that never reached the token makes the key.
    let fresh = m.fresh_open_token("retry-new");
    let first_try_lost = request(Mechanism::AesKeyGen, 128, attrs(&[]));
    assert!(fresh.generate(&retried(&first_try_lost)).unwrap().created);
    let token = m.fresh_open_token("retry");
    for req in [
        request(Mechanism::AesKeyGen, 256, attrs(&["CKA_ENCRYPT"])),
        request(Mechanism::RsaPkcsKeyPairGen, 2048, attrs(&["CKA_SIGN"])),
    ] {
        let first = token.generate(&req).unwrap();
        let again = token.generate(&retried(&req)).unwrap();
        assert!(first.created && !again.created);
        assert_eq!(first.objects, again.objects);
        assert_eq!(token.find_by_id(&req.cka_id).unwrap().len(), first.objects.len());
    }
    assert_eq!(count_objects(&token), 3);
}

/// A crash between the halves of C_GenerateKeyPair leaves one behind: the
/// retry removes it and makes the pair whole, so exactly one pair remains.
fn a_retry_that_finds_half_a_pair_makes_it_whole(m: TestModule) {
    let token = m.fresh_open_token("half");
    let req = request(Mechanism::RsaPkcsKeyPairGen, 2048, attrs(&[]));
    let made = token.generate(&req).unwrap();
    token.destroy(made.objects[0].handle).unwrap(); // the private half is lost
    let again = token.generate(&retried(&req)).unwrap();
    assert!(again.created, "made again");
    let left = token.find_by_id(&req.cka_id).unwrap();
    let mut classes: Vec<_> = left.iter().map(|d| d.object_type).collect();
    classes.sort();
    assert_eq!(
        classes,
        vec![Some(ObjectType::PrivateKey), Some(ObjectType::PublicKey)]
    );
    assert_eq!(
        again.objects[1].modulus, again.objects[0].modulus,
        "a pair, not the old public half"
    );
    assert_ne!(again.objects[1].modulus, made.objects[1].modulus);
    assert_eq!(count_objects(&token), 2);
}

fn two_threads_generate_on_one_token_at_once(m: TestModule) {
    let token = m.fresh_open_token("threads");
    let per_thread = 100;
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                for i in 0..per_thread {
                    let mechanism = if i % 25 == 0 {
                        Mechanism::RsaPkcsKeyPairGen
                    } else {
                        Mechanism::AesKeyGen
                    };
                    let size = if mechanism == Mechanism::AesKeyGen {
                        256
                    } else {
                        2048
                    };
                    token
                        .generate(&request(mechanism, size, attrs(&["CKA_ENCRYPT"])))
                        .unwrap();
                }
            });
        }
    });
    // 2 threads × (96 AES keys + 4 RSA pairs × 2 objects)
    assert_eq!(count_objects(&token), 2 * (96 + 4 * 2));
}

fn more_than_a_thousand_objects_enumerate_in_batches_that_can_stop(m: TestModule) {
    let token = m.fresh_open_token("many");
    let total = 1_050;
    for _ in 0..total {
        token
            .generate(&request(Mechanism::AesKeyGen, 128, attrs(&[])))
            .unwrap();
    }
    let mut seen = std::collections::HashSet::new();
    let outcome = token
        .scan(100, &mut |batch| {
            assert!(batch.len() <= 100);
            seen.extend(batch.iter().copied());
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(
        (outcome.seen, outcome.batches, outcome.stopped),
        (total, 11, false)
    );
    assert_eq!(seen.len(), total);
    let described = token
        .describe_many(&seen.iter().copied().collect::<Vec<_>>())
        .unwrap();
    assert!(described.iter().all(|d| d.size_bits == 128));
    let mut batches = 0;
    let stopped = token
        .scan(100, &mut |_| {
            batches += 1;
            if batches == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert_eq!((stopped.seen, stopped.batches, stopped.stopped), (300, 3, true));
}

/// A described scan (what refresh does) beside writes on the same token:
/// no deadlock between the scan's shared lock and a writer, and no
/// CKR_GENERAL_ERROR from SoftHSM2's store.
fn describing_scans_and_writes_on_one_token_run_side_by_side(m: TestModule) {
    let token = m.fresh_open_token("scan-write");
    for _ in 0..300 {
        token
            .generate(&request(Mechanism::AesKeyGen, 128, attrs(&[])))
            .unwrap();
    }
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        let token = &token;
        let scanner = done_tx.clone();
        scope.spawn(move || {
            for _ in 0..5 {
                let mut described = 0;
                let mut handles = std::collections::HashSet::new();
                token
                    .scan_described(64, &mut |batch| {
                        described += batch.len();
                        handles.extend(batch.iter().map(|d| d.handle));
                        ControlFlow::Continue(())
                    })
                    .unwrap();
                assert!((300..=400).contains(&described), "{described}");
                // openCryptoki lists an object twice when writes are not
                // serialised beside the scan.
                assert_eq!(handles.len(), described, "every object listed once");
            }
            scanner.send("scans").unwrap();
        });
        scope.spawn(move || {
            for _ in 0..100 {
                token
                    .generate(&request(Mechanism::AesKeyGen, 256, attrs(&["CKA_ENCRYPT"])))
                    .unwrap();
            }
            done_tx.send("writes").unwrap();
        });
        for _ in 0..2 {
            done_rx
                .recv_timeout(std::time::Duration::from_secs(120))
                .expect("a scan and writes on one token finish (no deadlock)");
        }
    });
    assert_eq!(count_objects(&token), 400);
}

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
