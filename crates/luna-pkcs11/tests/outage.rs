//! Tokens that go away and come back, under one process that keeps running.
//!
//! A test binary of its own: recovering a token may re-initialise the whole
//! module, which ends every session and object handle of the process, and
//! the other suites hold handles across calls on purpose. The tests here
//! take turns (`ONE_AT_A_TIME`) for the same reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use luna_domain::{AttributeSet, Mechanism};
use luna_pkcs11::testing::{self, SlotDaemonOutage, TakenAway, TestModule, USER_PIN};
use luna_pkcs11::{GenerateRequest, Reachability, Token};
use parking_lot::Mutex;
use secrecy::SecretString;
use uuid::Uuid;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn aes(label: &str) -> GenerateRequest {
    GenerateRequest {
        cka_id: Uuid::new_v4().as_bytes().to_vec(),
        label: label.into(),
        mechanism: Mechanism::AesKeyGen,
        size: 256,
        attributes: AttributeSet::empty(),
        remap: false,
        retry: false,
        wrap_with_trusted: false,
    }
}

/// Probes until `done` holds of the token's reachability, for `within` at most.
fn probe_until(token: &dyn Token, within: Duration, done: impl Fn(&Reachability) -> bool) -> Reachability {
    let deadline = Instant::now() + within;
    loop {
        let now = token.probe();
        if done(&now) {
            return now;
        }
        assert!(Instant::now() < deadline, "after {within:?}: {now:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_softhsm2_token_whose_store_goes_away_and_comes_back_is_recovered_in_process() {
    let _turn = ONE_AT_A_TIME.lock();
    let token = testing::fresh_token("away-and-back");
    let before = token.generate(&aes("before")).unwrap();
    let old_handle = before.objects[0].handle;

    let away = TakenAway::take(&token.info().label);
    let error = token.generate(&aes("during")).unwrap_err();
    let (name, since) = error.away().unwrap_or_else(|| panic!("not called away: {error}"));
    assert_eq!(name, token.info().name());
    let during = token.reachability();
    assert_eq!(
        (during.away_since, during.outages),
        (Some(since), 1),
        "{during:?}"
    );
    assert!(
        during.last_error.as_deref().unwrap_or_default().contains("CKR_"),
        "{during:?}"
    );
    // Known away: calls fail at once instead of reaching the module.
    let started = Instant::now();
    assert!(token.find_by_id(b"x").unwrap_err().away().is_some());
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );
    // Looks while it is away keep it away, from the same moment.
    let still = token.probe();
    assert_eq!((still.away_since, still.recoveries), (Some(since), 0));

    away.put_back();
    // SoftHSM2 keeps the token invalid until the module is initialised again.
    let reinitialised = testing::module().reinitialisations();
    let back = probe_until(&token, Duration::from_secs(10), Reachability::is_reachable);
    assert_eq!((back.outages, back.recoveries), (1, 1), "{back:?}");
    assert!(testing::module().reinitialisations() > reinitialised);

    // The key made before is there; new ones are made; a handle from before
    // the re-initialisation is refused instead of reaching another object.
    let found = token.find_by_id(&before.objects[0].cka_id).unwrap();
    assert_eq!(found.len(), 1);
    let stale = token.destroy(old_handle).unwrap_err();
    assert!(stale.is_interrupted(), "{stale}");
    token.destroy(found[0].handle).unwrap();
    assert!(token.generate(&aes("after")).unwrap().created);
}

#[test]
fn a_re_initialisation_waits_for_the_calls_in_flight_and_gives_up_on_one_that_hangs() {
    let _turn = ONE_AT_A_TIME.lock();
    let token = testing::fresh_token("drain");
    for n in 0..3 {
        token.generate(&aes(&format!("k{n}"))).unwrap();
    }
    let module = testing::module();
    let scan_with_pause = |pause: Duration| {
        let mut seen = 0;
        token
            .scan(1, &mut |batch| {
                seen += batch.len();
                std::thread::sleep(pause);
                ControlFlow::Continue(())
            })
            .map(|_| seen)
    };
    std::thread::scope(|threads| {
        // A scan of three batches, 200 ms each: the re-initialisation waits
        // for it, and the scan sees every object.
        let scan = threads.spawn(|| scan_with_pause(Duration::from_millis(200)));
        std::thread::sleep(Duration::from_millis(100));
        let started = Instant::now();
        assert!(
            module.reinitialise().unwrap(),
            "re-initialised once the scan ended"
        );
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(scan.join().unwrap().unwrap(), 3);
    });
    std::thread::scope(|threads| {
        // A scan that takes longer than a re-initialisation waits: it gives
        // up, and the scan goes on untouched.
        let scan = threads.spawn(|| scan_with_pause(Duration::from_millis(1_500)));
        std::thread::sleep(Duration::from_millis(100));
        let started = Instant::now();
        assert!(!module.reinitialise().unwrap(), "not while a call runs");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(2) && waited < Duration::from_secs(3),
            "{waited:?}"
        );
        assert_eq!(scan.join().unwrap().unwrap(), 3);
    });
    // Calls go on after both.
    assert!(token.generate(&aes("after")).unwrap().created);
}

#[test]
fn opencryptoki_goes_on_without_its_slot_daemon_and_recovers_a_re_initialisation_made_without_it() {
    let _turn = ONE_AT_A_TIME.lock();
    let daemon = SlotDaemonOutage::hold();
    let label = daemon.provision("daemon");
    let module = TestModule::OpenCryptoki.module();
    let token = module
        .open_token(&label, None, SecretString::from(USER_PIN))
        .unwrap();
    token.generate(&aes("before")).unwrap();

    daemon.stop();
    // A process that initialised the module goes on without the daemon
    // (openCryptoki 3.8's soft token works in the process).
    let during = token.generate(&aes("daemon-down")).unwrap();
    assert!(token.probe().is_reachable());
    // But a re-initialisation now fails, and leaves every call failing…
    assert!(module.reinitialise().is_err(), "C_Initialize needs the daemon");
    let error = token.generate(&aes("uninitialised")).unwrap_err();
    assert!(error.away().is_some(), "{error}");
    assert!(token
        .reachability()
        .last_error
        .unwrap_or_default()
        .contains("CKR_CRYPTOKI_NOT_INITIALIZED"));

    // …until the daemon is back and a look initialises the module again.
    daemon.start();
    let back = probe_until(&token, Duration::from_secs(20), Reachability::is_reachable);
    assert_eq!(back.recoveries, 1, "{back:?}");
    assert_eq!(
        token.find_by_id(&during.objects[0].cka_id).unwrap().len(),
        1,
        "the key made without the daemon is there"
    );
    assert!(token.generate(&aes("after")).unwrap().created);
}

/// A login lost behind the service's back (a partition restarted, another
/// program logging the application out) is made again: a write refused for
/// it runs again on a fresh session, and a read never answers from a
/// logged-out session, which would list the public objects only.
#[test]
fn a_login_lost_behind_the_services_back_is_made_again_and_no_read_answers_without_it() {
    let _turn = ONE_AT_A_TIME.lock();
    let token = testing::fresh_token("lost-login");
    let private = |label: &str| GenerateRequest {
        attributes: AttributeSet::parse_names(&["CKA_PRIVATE", "CKA_SENSITIVE"]).unwrap(),
        ..aes(label)
    };
    let made = token.generate(&private("before")).unwrap();
    let other = testing::raw_user_session(&token.info().label);
    other.logout().unwrap();
    assert_eq!(
        token.find_by_id(&made.objects[0].cka_id).unwrap().len(),
        1,
        "found, as the user sees it"
    );
    other.logout().unwrap();
    assert!(token.generate(&private("after")).unwrap().created);
    let now = token.reachability();
    assert_eq!((now.outages, now.recoveries), (0, 0), "no outage: {now:?}");
}
