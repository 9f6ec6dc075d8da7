//! Registering connections and partitions against real SoftHSM2 tokens, on
//! SQLite and on PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use luna_domain::partition::MemberRequest;
use luna_domain::ConnectionRequest;
use luna_pkcs11::testing::{fresh_token_label, module, unique_label, TestModule, USER_PIN};
use luna_pkcs11::Token as _;
use luna_runner::registry::{add_partition, register_connection};
use luna_runner::RunnerError;
use luna_store::testing::test_audit;
use luna_store::testing::TestDatabase;
use secrecy::SecretString;

fn request(name: &str, ha: bool, labels: &[&str], pin: &str) -> ConnectionRequest {
    ConnectionRequest {
        name: Some(name.into()),
        password: Some(SecretString::from(pin)),
        ha_enabled: ha,
        partitions: labels
            .iter()
            .map(|l| MemberRequest {
                hostname: Some("softhsm".into()),
                partition_label: Some((*l).into()),
                serial_number: None,
            })
            .collect(),
        ..Default::default()
    }
}

fn registers_an_ha_pair_and_refuses_bad_tokens(db: TestDatabase) {
    let store = &db.store;
    let (a, b) = (fresh_token_label("reg-a"), fresh_token_label("reg-b"));
    let spec = request("ha", true, &[&a, &b], USER_PIN).validate().unwrap();
    let connection = register_connection(store, module(), spec, &test_audit()).unwrap();
    let serial_a = module()
        .open_token(&a, None, SecretString::from(USER_PIN))
        .unwrap()
        .info()
        .serial_number
        .clone();
    assert_eq!(
        connection.members[0].serial_number, serial_a,
        "serials come from the tokens"
    );
    assert_eq!(store.connection_pin(connection.id).unwrap().map(|_| ()), Some(()));

    let partition = add_partition(store, "ha", &test_audit()).unwrap();
    assert!(partition.ha_enabled);
    assert_eq!(
        (partition.partition_label.as_str(), partition.members.len()),
        (a.as_str(), 2)
    );
    assert_eq!(store.get_partition(partition.id).unwrap().unwrap(), partition);
    assert!(matches!(
        add_partition(store, &connection.id.to_string(), &test_audit()),
        Err(RunnerError::Conflict(_))
    ));
    assert!(matches!(
        add_partition(store, "nope", &test_audit()),
        Err(RunnerError::NotFound(_))
    ));

    let wrong = request("wrong", false, &[&a], "not-the-pin").validate().unwrap();
    let err = register_connection(store, module(), wrong, &test_audit()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("the password does not log in to partition {a:?}")
    );
    let absent = unique_label("absent");
    let missing = request("missing", false, &[&absent], USER_PIN)
        .validate()
        .unwrap();
    let err = register_connection(store, module(), missing, &test_audit()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("no token labelled {absent:?}")),
        "{err}"
    );
    let taken = request("ha", false, &[&a], USER_PIN).validate().unwrap();
    assert!(matches!(
        register_connection(store, module(), taken, &test_audit()),
        Err(RunnerError::Conflict(_))
    ));
}

#[test]
fn sqlite_registers_an_ha_pair_and_refuses_bad_tokens() {
    registers_an_ha_pair_and_refuses_bad_tokens(TestDatabase::sqlite().unwrap());
}

#[test]
fn postgres_registers_an_ha_pair_and_refuses_bad_tokens() {
    registers_an_ha_pair_and_refuses_bad_tokens(TestDatabase::postgres().unwrap());
}

/// Workers that first need a token at the same moment must share one opened
/// instance: its write lock is what keeps SoftHSM2's writes apart.
fn callers_racing_to_open_a_token_share_one_instance(db: TestDatabase) {
    let label = fresh_token_label("race");
    let spec = request("race", false, &[&label], USER_PIN).validate().unwrap();
    let connection = register_connection(&db.store, module(), spec, &test_audit()).unwrap();
    let member = &connection.members[0];
    for _ in 0..5 {
        let tokens = luna_runner::OpenTokens::new(
            std::sync::Arc::clone(module()),
            db.store.clone(),
            luna_runner::Metrics::new().unwrap(),
            None,
        );
        let start = std::sync::Barrier::new(4);
        let opened: Vec<_> = std::thread::scope(|threads| {
            let racers: Vec<_> = (0..4)
                .map(|_| {
                    threads.spawn(|| {
                        start.wait();
                        tokens.member(connection.id, member).unwrap()
                    })
                })
                .collect();
            racers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        for token in &opened[1..] {
            assert!(
                std::sync::Arc::ptr_eq(token, &opened[0]),
                "two instances of one token"
            );
        }
    }
}

#[test]
fn sqlite_callers_racing_to_open_a_token_share_one_instance() {
    callers_racing_to_open_a_token_share_one_instance(TestDatabase::sqlite().unwrap());
}

#[test]
fn postgres_callers_racing_to_open_a_token_share_one_instance() {
    callers_racing_to_open_a_token_share_one_instance(TestDatabase::postgres().unwrap());
}

/// openCryptoki's soft tokens, as an operator made them: each registers on
/// its own (all report serial 123); an HA group of them is refused before any
/// PIN is tried (one serial; and even alone, no elliptic curves, so no
/// replication); a second token is refused with the reason while the first
/// is open in this process (the module shares one login among them).
fn registers_opencryptoki_tokens_alone_never_as_a_group(db: TestDatabase) {
    let store = &db.store;
    let m = TestModule::OpenCryptoki;
    let tokens = m.fresh_tokens("reg-ock", 2);
    let (a, b) = (tokens[0].label.as_str(), tokens[1].label.as_str());

    let group = request("ock-ha", true, &[a, b], USER_PIN).validate().unwrap();
    let err = register_connection(store, m.module(), group, &test_audit()).unwrap_err();
    assert!(matches!(err, RunnerError::Invalid(_)), "{err}");
    assert!(
        err.to_string().starts_with(&format!(
            "partitions {a:?} and {b:?} both report serial number \"123\""
        )),
        "{err}"
    );
    let alone = request("ock-ha", true, &[a], USER_PIN).validate().unwrap();
    let err = register_connection(store, m.module(), alone, &test_audit()).unwrap_err();
    assert!(matches!(err, RunnerError::Invalid(_)), "{err}");
    assert!(
        err.to_string().starts_with(&format!(
            "token {a:?} (IBM Corp. IBM SoftTok) lacks CKM_EC_KEY_PAIR_GEN, CKM_ECDH1_DERIVE, CKM_AES_KEY_WRAP_PAD"
        )),
        "{err}"
    );

    let single = request("ock-a", false, &[a], USER_PIN).validate().unwrap();
    let connection = register_connection(store, m.module(), single, &test_audit()).unwrap();
    assert_eq!(connection.members[0].serial_number, "123");
    let open_a = m
        .module()
        .open_token(a, Some("123"), SecretString::from(USER_PIN))
        .unwrap();
    let second = request("ock-b", false, &[b], USER_PIN).validate().unwrap();
    let err = register_connection(store, m.module(), second, &test_audit()).unwrap_err();
    assert!(matches!(err, RunnerError::TokenRefused { .. }), "{err}");
    assert!(
        err.to_string().contains("shares one login among its tokens"),
        "{err}"
    );
    drop(open_a);
    let second = request("ock-b", false, &[b], USER_PIN).validate().unwrap();
    let connection = register_connection(store, m.module(), second, &test_audit()).unwrap();
    assert_eq!(
        (
            connection.members[0].partition_label.as_str(),
            connection.members[0].serial_number.as_str()
        ),
        (b, "123")
    );
}

#[test]
fn sqlite_registers_opencryptoki_tokens_alone_never_as_a_group() {
    registers_opencryptoki_tokens_alone_never_as_a_group(TestDatabase::sqlite().unwrap());
}

#[test]
fn postgres_registers_opencryptoki_tokens_alone_never_as_a_group() {
    registers_opencryptoki_tokens_alone_never_as_a_group(TestDatabase::postgres().unwrap());
}
