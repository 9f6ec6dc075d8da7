//! Real tokens for tests, on two PKCS#11 implementations from different code
//! bases, so that nothing the service does rests on one module's habits.
//!
//! - SoftHSM2 reads its configuration once per process, so a test process has
//!   one home, in which each test initialises tokens of its own with fresh
//!   labels (tests stay independent and parallel). `module`, `fresh_token`
//!   and `fresh_token_label` are its shortcuts. Set `LUNA_TEST_SOFTHSM_MODULE` to
//!   test against another SoftHSM2 build (not the server's
//!   `LUNA_PKCS11_MODULE`, which an operator may have set).
//! - openCryptoki's configuration and token store are machine-wide, and its
//!   slots are fixed when its daemon starts: `scripts/bootstrap` adds four
//!   soft-token slots described "luna-cckm test slot" (no other slot is ever
//!   touched). A test leases slots (a file lock each, held across processes),
//!   re-initialises their tokens with fresh labels, and frees them when done.
//!   In a process, one test at a time holds openCryptoki tokens (see
//!   `OPENCRYPTOKI_TURN`): tests on it take turns.
#![allow(clippy::expect_used)] // a test without its token should fail loudly, here

use std::fs::File;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::{Condvar, Mutex};
use std::time::{Duration, Instant};

use cryptoki::error::{Error as CryptokiError, RvError};
use cryptoki::session::UserType;
use cryptoki::slot::Slot;
use secrecy::SecretString;

use crate::softhsm::SoftHsmHome;
use crate::{Module, Pkcs11Token};

/// The user PIN of every test token (openCryptoki takes 4 to 8 characters).
pub const USER_PIN: &str = "user1234";
/// The security officer's PIN of every SoftHSM2 test token.
pub const SO_PIN: &str = "so-56789";

/// The description `scripts/bootstrap` gives the openCryptoki slots tests may use.
pub const OPENCRYPTOKI_TEST_SLOT: &str = "luna-cckm test slot";

/// The security officer's PIN of openCryptoki test tokens: its default (see
/// `provision_opencryptoki`).
pub const OPENCRYPTOKI_SO_PIN: &str = "87654321";

/// Where distributions put openCryptoki's module.
const OPENCRYPTOKI_CANDIDATES: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/pkcs11/libopencryptoki.so",
    "/usr/lib/aarch64-linux-gnu/pkcs11/libopencryptoki.so",
    "/usr/lib64/opencryptoki/libopencryptoki.so",
    "/usr/lib/opencryptoki/libopencryptoki.so",
];

/// A PKCS#11 implementation the suites run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestModule {
    SoftHsm2,
    OpenCryptoki,
}

impl TestModule {
    pub const ALL: [TestModule; 2] = [TestModule::SoftHsm2, TestModule::OpenCryptoki];

    pub fn name(self) -> &'static str {
        match self {
            TestModule::SoftHsm2 => "SoftHSM2",
            TestModule::OpenCryptoki => "openCryptoki",
        }
    }

    pub fn module(self) -> &'static Arc<Module> {
        match self {
            TestModule::SoftHsm2 => module(),
            TestModule::OpenCryptoki => opencryptoki(),
        }
    }

    /// The security officer's PIN of this module's test tokens.
    pub fn so_pin(self) -> &'static str {
        match self {
            TestModule::SoftHsm2 => SO_PIN,
            TestModule::OpenCryptoki => OPENCRYPTOKI_SO_PIN,
        }
    }

    /// `count` new, empty tokens labelled from `prefix`, with `so_pin()` and `USER_PIN`.
    pub fn fresh_tokens(self, prefix: &str, count: usize) -> Vec<TestToken> {
        match self {
            TestModule::SoftHsm2 => (0..count)
                .map(|_| TestToken {
                    module: self,
                    label: fresh_token_label(prefix),
                    _lease: None,
                })
                .collect(),
            TestModule::OpenCryptoki => take_opencryptoki_slots(count)
                .into_iter()
                .map(|(slot, lease)| {
                    let label = unique_label(prefix);
                    provision_opencryptoki(slot, &label);
                    TestToken {
                        module: self,
                        label,
                        _lease: Some(lease),
                    }
                })
                .collect(),
        }
    }

    /// A new, empty token, opened with `USER_PIN`.
    pub fn fresh_open_token(self, prefix: &str) -> OpenTestToken {
        let token = self
            .fresh_tokens(prefix, 1)
            .pop()
            .expect("one token was asked for");
        OpenTestToken {
            opened: token.open(),
            token,
        }
    }
}

impl TestModule {
    /// The raw rate of AES-256 creates through luna-pkcs11, `n` keys made
    /// by `threads` threads on a fresh token of this module: the figure the
    /// API benchmarks hold the service against.
    pub fn raw_aes_creates(self, n: usize, threads: usize) -> f64 {
        let token = self.fresh_open_token("bench-raw");
        let start = std::time::Instant::now();
        std::thread::scope(|s| {
            for t in 0..threads {
                let token = &token;
                s.spawn(move || {
                    for _ in 0..(n / threads + usize::from(t < n % threads)) {
                        crate::Token::generate(
                            &**token,
                            &crate::GenerateRequest {
                                cka_id: uuid::Uuid::now_v7().as_bytes().to_vec(),
                                label: "bench".into(),
                                mechanism: luna_domain::Mechanism::AesKeyGen,
                                size: 256,
                                attributes: luna_domain::AttributeSet::parse_names(&[
                                    "CKA_ENCRYPT",
                                    "CKA_DECRYPT",
                                ])
                                .expect("known attribute names"),
                                remap: true,
                                retry: false,
                                wrap_with_trusted: false,
                            },
                        )
                        .expect("the raw token makes a key");
                    }
                });
            }
        });
        n as f64 / start.elapsed().as_secs_f64()
    }
}

impl std::fmt::Display for TestModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A test's token: its label and, on openCryptoki, the lease on its slot,
/// freed when this is dropped. Close every session on it first.
#[derive(Debug)]
pub struct TestToken {
    pub module: TestModule,
    pub label: String,
    _lease: Option<SlotLease>,
}

impl TestToken {
    pub fn open(&self) -> Pkcs11Token {
        self.module
            .module()
            .open_token(&self.label, None, SecretString::from(USER_PIN))
            .expect("open the test token")
    }
}

/// A test token, opened; it closes before the token's lease is freed.
#[derive(Debug)]
pub struct OpenTestToken {
    opened: Pkcs11Token,
    pub token: TestToken,
}

impl Deref for OpenTestToken {
    type Target = Pkcs11Token;

    fn deref(&self) -> &Pkcs11Token {
        &self.opened
    }
}

static HOME: OnceLock<SoftHsmHome> = OnceLock::new();

pub fn home() -> &'static SoftHsmHome {
    HOME.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("luna-softhsm-")
            .tempdir()
            .expect("a temporary directory for SoftHSM2 tokens")
            .keep();
        let module = std::env::var_os("LUNA_TEST_SOFTHSM_MODULE").map(PathBuf::from);
        let home =
            SoftHsmHome::open(&dir, module.as_deref()).expect("SoftHSM2 (package softhsm2) is installed");
        finalize_at_exit();
        home
    })
}

/// Has the home's module finalized, and the home removed, as the test
/// process exits. SoftHSM2's
/// exit-time C++ destructors, over a library never finalized, can free
/// twice and abort a process whose tests had passed (softhsm/SoftHSMv2#635);
/// cargo-nextest, which runs each test in a process of its own, met it.
/// Registered after the library was loaded, so it runs before the library's
/// destructors (exit handlers run in the reverse of their registration).
fn finalize_at_exit() {
    extern "C" fn finalize() {
        if let Some(home) = HOME.get() {
            home.module().finalize_for_exit();
            // Each test process has a home of its own (one per test under
            // cargo-nextest): none is left behind in the temporary directory.
            let _ = std::fs::remove_dir_all(home.dir());
        }
    }
    // A plain function holding no state of its own, registered once.
    #[allow(unsafe_code)]
    let _ = unsafe { libc::atexit(finalize) };
}

/// The SoftHSM2 module of this test process.
pub fn module() -> &'static Arc<Module> {
    home().module()
}

/// openCryptoki's module, where scripts/bootstrap installed it.
pub fn opencryptoki_module_path() -> &'static Path {
    OPENCRYPTOKI_CANDIDATES
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .expect("openCryptoki is installed (run scripts/bootstrap)")
}

/// openCryptoki's module, opened (its daemon must be running: a test that
/// stops it, `SlotDaemonOutage`, waits until no process is opening it).
pub fn opencryptoki() -> &'static Arc<Module> {
    static MODULE: OnceLock<Arc<Module>> = OnceLock::new();
    MODULE.get_or_init(|| {
        let daemon = daemon_lock();
        daemon
            .lock_shared()
            .expect("a shared lock on openCryptoki's daemon");
        let module = Module::open(opencryptoki_module_path())
            .expect("openCryptoki's slot daemon pkcsslotd is running (run scripts/bootstrap)");
        drop(daemon);
        module
    })
}

/// The file lock that keeps openCryptoki's daemon running while a process
/// initialises the module (`C_Initialize` needs it; a process already
/// initialised goes on without it, measured here with 3.8.1).
fn daemon_lock() -> File {
    File::create(std::env::temp_dir().join("luna-cckm-opencryptoki-daemon.lock"))
        .expect("a lock file for openCryptoki's daemon")
}

/// openCryptoki's machine-wide test setup held by one test, which may stop
/// its slot daemon (`stop`) to see what a running process does without it.
/// Holds every test slot and the daemon lock, so no other test, in any
/// process, initialises the module or provisions a token meanwhile. The
/// daemon is started again by `start`, and by the drop.
#[derive(Debug)]
pub struct SlotDaemonOutage {
    slots: Vec<(Slot, SlotLease)>,
    _daemon: File,
}

impl SlotDaemonOutage {
    pub fn hold() -> SlotDaemonOutage {
        let slots = take_opencryptoki_slots(opencryptoki_test_slots().len());
        let daemon = daemon_lock();
        daemon.lock().expect("openCryptoki's daemon lock");
        SlotDaemonOutage {
            slots,
            _daemon: daemon,
        }
    }

    /// A fresh token in the first held slot; its label.
    pub fn provision(&self, prefix: &str) -> String {
        let label = unique_label(prefix);
        provision_opencryptoki(self.slots[0].0, &label);
        label
    }

    /// The held slots' ids, for tools (`pkcs11-tool --slot`).
    pub fn slot_ids(&self) -> Vec<u64> {
        self.slots.iter().map(|(slot, _)| slot.id()).collect()
    }

    /// Stops the daemon (`pkill -KILL`: it ignores SIGTERM while clients
    /// are attached) and waits until it is gone.
    pub fn stop(&self) {
        run_quietly("pkill", &["-KILL", "-x", "pkcsslotd"]);
        wait_for("pkcsslotd to stop", || !slot_daemon_running());
    }

    /// Starts the daemon again and waits until it runs.
    pub fn start(&self) {
        if !slot_daemon_running() {
            run_quietly("/usr/sbin/pkcsslotd", &[]);
            wait_for("pkcsslotd to start", slot_daemon_running);
        }
    }
}

impl Drop for SlotDaemonOutage {
    fn drop(&mut self) {
        self.start();
    }
}

/// Whether a `pkcsslotd` runs (a zombie left unreaped does not count).
fn slot_daemon_running() -> bool {
    std::process::Command::new("ps")
        .args(["-C", "pkcsslotd", "-o", "stat="])
        .output()
        .is_ok_and(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| !l.trim().starts_with('Z'))
        })
}

fn run_quietly(program: &str, args: &[&str]) {
    let status = std::process::Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    assert!(status.is_ok(), "{program} could not be run: {status:?}");
}

fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "waited 20 s for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn unique_label(prefix: &str) -> String {
    // Token labels hold 32 characters.
    let prefix: String = prefix.chars().take(22).collect();
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// The directory in which this process's SoftHSM2 keeps the token labelled
/// `label` (tests take it away to make the token fail).
pub fn softhsm_token_dir(label: &str) -> PathBuf {
    let tokens = home().dir().join("tokens");
    std::fs::read_dir(&tokens)
        .expect("the SoftHSM2 token directory")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|dir| {
            std::fs::read(dir.join("token.object"))
                .is_ok_and(|bytes| bytes.windows(label.len()).any(|w| w == label.as_bytes()))
        })
        .expect("a directory holding the token")
}

/// A SoftHSM2 token of this process taken away: its directory moved out of
/// the store (out of the tokens directory, where SoftHSM2 initialised again
/// would find it under any name), as a network HSM drops off. `put_back`
/// brings it back; so does the drop.
#[derive(Debug)]
pub struct TakenAway {
    dir: PathBuf,
    away: PathBuf,
    back: bool,
}

impl TakenAway {
    pub fn take(label: &str) -> TakenAway {
        let dir = softhsm_token_dir(label);
        let away = home().dir().join(format!("away-{label}"));
        std::fs::rename(&dir, &away).expect("move the token's directory out of the store");
        TakenAway {
            dir,
            away,
            back: false,
        }
    }

    pub fn put_back(mut self) {
        self.restore();
    }

    fn restore(&mut self) {
        if !self.back {
            std::fs::rename(&self.away, &self.dir).expect("put the token's directory back");
            self.back = true;
        }
    }
}

impl Drop for TakenAway {
    fn drop(&mut self) {
        self.restore();
    }
}

/// A new, empty SoftHSM2 token; returns its label.
pub fn fresh_token_label(prefix: &str) -> String {
    let label = unique_label(prefix);
    module()
        .init_token(&label, &SecretString::from(SO_PIN), &SecretString::from(USER_PIN))
        .expect("initialise a SoftHSM2 token");
    label
}

/// A new, empty SoftHSM2 token, opened.
pub fn fresh_token(prefix: &str) -> Pkcs11Token {
    let label = fresh_token_label(prefix);
    module()
        .open_token(&label, None, SecretString::from(USER_PIN))
        .expect("open the new token")
}

/// The openCryptoki slots tests may use.
fn opencryptoki_test_slots() -> Vec<Slot> {
    let context = &opencryptoki().context;
    let slots: Vec<Slot> = context
        .get_slots_with_token()
        .expect("openCryptoki lists its slots")
        .into_iter()
        .filter(|slot| {
            context
                .get_slot_info(*slot)
                // openCryptoki pads with NULs where PKCS#11 says blanks.
                .is_ok_and(|info| {
                    info.slot_description().trim_end_matches(['\0', ' ']) == OPENCRYPTOKI_TEST_SLOT
                })
        })
        .collect();
    assert!(
        !slots.is_empty(),
        "openCryptoki has no slot described {OPENCRYPTOKI_TEST_SLOT:?} (run scripts/bootstrap)"
    );
    slots
}

/// Whether a test of this process holds openCryptoki test tokens. openCryptoki
/// 3.8 shares one login among all its soft-token slots in a process (logging
/// in to one logs the others in, logging out of one logs all out), and
/// crashed (double free, SIGSEGV) when two threads worked on two of its
/// tokens: in a process, one test at a time uses it.
static OPENCRYPTOKI_TURN: (Mutex<Weak<ProcessTurn>>, Condvar) = (Mutex::new(Weak::new()), Condvar::new());

/// A test thread's turn on openCryptoki in this process, given back when the
/// last of its tokens goes. The thread that holds it may take more tokens.
#[derive(Debug)]
struct ProcessTurn {
    thread: std::thread::ThreadId,
}

impl ProcessTurn {
    fn take() -> Arc<ProcessTurn> {
        let (holder, freed) = &OPENCRYPTOKI_TURN;
        let mut holder = holder.lock();
        let me = std::thread::current().id();
        loop {
            match holder.upgrade() {
                Some(turn) if turn.thread == me => return turn,
                Some(turn) => {
                    // Not held while waiting, or the turn could never end. A
                    // wake-up missed between the check and the wait costs 50 ms.
                    drop(turn);
                    freed.wait_for(&mut holder, Duration::from_millis(50));
                }
                None => {
                    let turn = Arc::new(ProcessTurn { thread: me });
                    *holder = Arc::downgrade(&turn);
                    return turn;
                }
            }
        }
    }
}

impl Drop for ProcessTurn {
    fn drop(&mut self) {
        OPENCRYPTOKI_TURN.1.notify_all();
    }
}

/// A leased openCryptoki test slot: its file lock (other processes) and this
/// process's turn (other threads), both given back when the last token goes.
#[derive(Debug)]
struct SlotLease {
    _file: File,
    _turn: Arc<ProcessTurn>,
}

/// Takes `count` test slots at once (all or none, so that two processes each
/// wanting two cannot hold one apiece and wait forever), waiting for them.
fn take_opencryptoki_slots(count: usize) -> Vec<(Slot, SlotLease)> {
    let slots = opencryptoki_test_slots();
    assert!(
        count <= slots.len(),
        "{count} openCryptoki tokens wanted, {} test slots configured",
        slots.len()
    );
    let turn = ProcessTurn::take();
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let mut leased = Vec::with_capacity(count);
        for slot in &slots {
            let path = std::env::temp_dir().join(format!("luna-cckm-opencryptoki-slot-{}.lock", slot.id()));
            let file = File::create(&path).expect("a lock file for an openCryptoki test slot");
            if file.try_lock().is_ok() {
                leased.push((
                    *slot,
                    SlotLease {
                        _file: file,
                        _turn: Arc::clone(&turn),
                    },
                ));
                if leased.len() == count {
                    return leased;
                }
            }
        }
        drop(leased);
        assert!(
            Instant::now() < deadline,
            "no {count} openCryptoki test slots came free in 15 minutes"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A leased openCryptoki test slot, for a test that initialises its token
/// with other tools (`pkcs11-tool`), as an operator would; freed on drop.
#[derive(Debug)]
pub struct OpenCryptokiSlot {
    pub id: u64,
    _lease: SlotLease,
}

/// `count` openCryptoki test slots, their tokens left as they are.
pub fn opencryptoki_slots_for_tools(count: usize) -> Vec<OpenCryptokiSlot> {
    take_opencryptoki_slots(count)
        .into_iter()
        .map(|(slot, lease)| OpenCryptokiSlot {
            id: slot.id(),
            _lease: lease,
        })
        .collect()
}

/// Re-initialises the token in a leased slot under `label`. The SO PIN stays
/// openCryptoki's default: 3.8 bricks a token re-initialised after its SO PIN
/// was changed (`C_InitToken` takes the new PIN but leaves the SO master key
/// under the old one, and every later SO login fails `CKR_FUNCTION_FAILED`
/// until the token directory is removed; measured here).
fn provision_opencryptoki(slot: Slot, label: &str) {
    // A login left by an earlier test (openCryptoki 3.8 shares one among its
    // slots) would keep the SO out.
    let session = opencryptoki()
        .open_session(slot)
        .expect("a session on an openCryptoki test token");
    match session.logout() {
        Ok(()) | Err(CryptokiError::Pkcs11(RvError::UserNotLoggedIn, _)) => {}
        Err(e) => panic!("log out of openCryptoki test slot {}: {e}", slot.id()),
    }
    drop(session);
    opencryptoki()
        .initialize_in(
            slot,
            label,
            &SecretString::from(OPENCRYPTOKI_SO_PIN),
            &SecretString::from(USER_PIN),
        )
        .unwrap_or_else(|e| panic!("initialise an openCryptoki test token in slot {}: {e}", slot.id()));
}

/// A session on a SoftHSM2 token through a second cryptoki context, as
/// another program would open one, for what the service itself never does
/// (changing a PIN, wrapping with an untrusted key). Logged in as the user.
pub fn raw_user_session(label: &str) -> cryptoki::session::Session {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    let context = Pkcs11::new(module().path()).expect("load the module again");
    match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CryptokiError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => panic!("initialise: {e}"),
    }
    let (slot, _) = module().find_slot(label, None).expect("the token is present");
    let session = context.open_rw_session(slot).expect("a session");
    match session.login(UserType::User, Some(&SecretString::from(USER_PIN))) {
        Ok(()) | Err(CryptokiError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => panic!("login: {e}"),
    }
    session
}

/// Declares each test once and runs it on every module of `TestModule::ALL`
/// (`mod softhsm2`, `mod opencryptoki`), so one body holds both to the same
/// assertions.
#[macro_export]
macro_rules! on_every_module {
    ($($(#[$meta:meta])* fn $name:ident($module:ident: TestModule) $body:block)+) => {
        $($(#[$meta])* fn $name($module: $crate::testing::TestModule) $body)+
        mod softhsm2 {
            $(#[test] fn $name() { super::$name($crate::testing::TestModule::SoftHsm2) })+
        }
        mod opencryptoki {
            $(#[test] fn $name() { super::$name($crate::testing::TestModule::OpenCryptoki) })+
        }
    };
}
