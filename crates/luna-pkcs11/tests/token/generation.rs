//! What a token makes: its description, AES keys and RSA pairs with their attributes, retried creates, concurrent generation, batched scans beside writes.

use super::*;

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
        info.generated_with(Mechanism::RsaX931KeyPairGen, true).unwrap(),
        Mechanism::RsaPkcsKeyPairGen
    );
    assert!(info.generated_with(Mechanism::RsaX931KeyPairGen, false).is_err());
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
        assert_eq!(made.generated_with, Mechanism::AesKeyGen);
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
            made.generated_with,
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
}
