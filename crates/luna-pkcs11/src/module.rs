//! One PKCS#11 context per module, shared by every token in the process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CryptokiError, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::error::{call, Result, TokenError};
use crate::gate::{Entered, Gate};
use crate::pool::{LoginLock, ModuleSession, SessionPool};
use crate::token::Pkcs11Token;
use crate::token_info::TokenInfoReader;
use crate::TokenInfo;

/// A loaded and initialised PKCS#11 module (the "Luna client library").
///
/// `C_Initialize` may run once per process, so modules are shared through a
/// registry keyed by path; every `open` of the same file returns the same
/// context while any user holds it.
#[derive(Debug)]
pub struct Module {
    path: PathBuf,
    pub(crate) context: Pkcs11,
    /// `C_InitToken` takes "the" free slot; two threads must not race for it.
    provisioning: Mutex<()>,
    /// Held by every `C_Login`, `C_Logout` and `C_CloseSession` on the
    /// modules that race there (see `ModuleSession` for the crash it
    /// prevents): the same ones as `serialize_object_writes`. `None` on
    /// others (Luna): there a slow network login must not hold every other
    /// token's sessions.
    login_state: LoginLock,
    /// Token (label, serial) → digest of the PIN that last passed `C_Login`
    /// there. Login is per application, so once one session is logged in
    /// `C_Login` answers `CKR_USER_ALREADY_LOGGED_IN` whatever PIN it is
    /// given; this is what a later PIN is checked against then (a token has
    /// one user PIN). Keyed by label too: openCryptoki gives every soft token
    /// the serial number "123".
    proven_pins: Mutex<HashMap<(String, String), [u8; 32]>>,
    token_info: TokenInfoReader,
    /// SoftHSM2's file object store races when a session writes objects while
    /// another writes or reads the same token (softhsm/SoftHSMv2#573:
    /// `CKR_GENERAL_ERROR` from `C_GenerateKey`), and openCryptoki 3.8 lists
    /// one object under two handles when a scan runs beside a write (7 runs
    /// in 8, measured here), so on them a write excludes every other call on
    /// that token; reads still run together. Other modules (Luna) are not
    /// serialised.
    pub(crate) serialize_object_writes: bool,
    /// Every call on the module is inside it; a re-initialisation waits
    /// until none is.
    gate: Gate,
    /// Bumped by each re-initialisation, which ends every session and
    /// object handle: handles carry the generation they were issued in.
    generation: AtomicU64,
    /// Every token's session pool, closed before a re-initialisation.
    pools: Mutex<Vec<Weak<SessionPool>>>,
    recovery: Mutex<Recovery>,
    /// Every token the module has listed in this process (`token_name`):
    /// one missing now is away, not unknown here.
    listed: Mutex<std::collections::HashSet<String>>,
}

/// The pace of re-initialisations: one is due when a token does not answer
/// a look, `REINIT_BACKOFF[in_a_row]` after the last.
#[derive(Debug, Default)]
struct Recovery {
    last: Option<Instant>,
    /// Re-initialisations since a token last came back.
    in_a_row: usize,
    /// Re-initialisations of this module so far.
    done: u64,
    /// The last re-initialisation made to look for a token never listed.
    last_rescan: Option<Instant>,
}

/// How long after the last re-initialisation another may run while tokens
/// stay away: soon at first (a token back is seen within seconds), then
/// seldom (each one makes every other token's calls wait and open new sessions).
const REINIT_BACKOFF: [Duration; 5] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
    Duration::from_secs(15),
];

/// How long a re-initialisation waits for the calls in flight to end
/// before it gives up (to try again later) and lets the waiting calls go.
const DRAIN_WITHIN: Duration = Duration::from_secs(2);

/// How often a token the module has never listed in this process may cause
/// a re-initialisation (SoftHSM2 lists only the tokens it found when it was
/// initialised; an instance started while a token was away would never see
/// it otherwise). Seldom: each one makes every other token's calls wait.
const RESCAN_EVERY: Duration = Duration::from_secs(60);

/// A token present in the module, as `C_GetTokenInfo` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSummary {
    pub label: String,
    pub serial_number: String,
    pub manufacturer: String,
    pub model: String,
    /// `CKF_TOKEN_INITIALIZED`.
    pub initialized: bool,
    /// Fields of the token's information that could not be read, as
    /// sentences; the service does not need them and goes on.
    pub unreadable: Vec<String>,
}

/// What the module says of itself (`C_GetInfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibraryInfo {
    pub manufacturer: String,
    pub description: String,
    pub version: String,
}

fn registry() -> &'static Mutex<HashMap<PathBuf, Weak<Module>>> {
    static REGISTRY: OnceLock<Mutex<HashMap<PathBuf, Weak<Module>>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

impl Module {
    /// Loads the module and initialises it for OS locking, so that many threads
    /// may call it at once (SoftHSM2 crashes under concurrency otherwise).
    pub fn open(path: &Path) -> Result<Arc<Module>> {
        let key = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        let mut modules = registry().lock();
        if let Some(module) = modules.get(&key).and_then(Weak::upgrade) {
            return Ok(module);
        }
        let load_error = |source| TokenError::LoadModule {
            path: path.to_path_buf(),
            source: crate::error::Pkcs11Failure(source),
        };
        let context = Pkcs11::new(&key).map_err(load_error)?;
        match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CryptokiError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(source) => return Err(load_error(source)),
        }
        let manufacturer = context
            .get_library_info()
            .map(|info| info.manufacturer_id().to_owned())
            .map_err(load_error)?;
        let token_info = TokenInfoReader::load(&key).map_err(load_error)?;
        // openCryptoki's library names IBM as its manufacturer.
        let races = manufacturer.starts_with("SoftHSM") || manufacturer.starts_with("IBM");
        let module = Arc::new(Module {
            serialize_object_writes: races,
            path: key.clone(),
            context,
            provisioning: Mutex::new(()),
            login_state: LoginLock::when(races),
            proven_pins: Mutex::new(HashMap::new()),
            token_info,
            gate: Gate::default(),
            generation: AtomicU64::new(0),
            pools: Mutex::new(Vec::new()),
            // The first look for a token never listed comes a while after
            // the start, when the module was just initialised.
            recovery: Mutex::new(Recovery {
                last_rescan: Some(Instant::now()),
                ..Recovery::default()
            }),
            listed: Mutex::new(std::collections::HashSet::new()),
        });
        modules.insert(key, Arc::downgrade(&module));
        Ok(module)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Enters the module's gate for one call (see `gate`).
    pub(crate) fn enter(&self) -> Entered<'_> {
        self.gate.enter()
    }

    /// The module's generation: how many times it was re-initialised.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// How many times the module was re-initialised to recover a token.
    pub fn reinitialisations(&self) -> u64 {
        self.recovery.lock().done
    }

    /// Keeps `pool` to be closed before a re-initialisation.
    pub(crate) fn track(&self, pool: &Arc<SessionPool>) {
        let mut pools = self.pools.lock();
        pools.retain(|p| p.strong_count() > 0);
        pools.push(Arc::downgrade(pool));
    }

    /// `C_Finalize` then `C_Initialize`, once no call is in flight (waiting
    /// at most `DRAIN_WITHIN`; `Ok(false)` if calls did not end by then).
    /// Every session and object handle of the process on this module ends:
    /// sessions are closed first, tokens open and log in new ones as they
    /// need them, and handles from before are refused as stale. The library
    /// stays loaded (openCryptoki crashes a process that unloads it). If
    /// `C_Initialize` fails (openCryptoki's slot daemon is down, say), every
    /// call fails `CKR_CRYPTOKI_NOT_INITIALIZED` until a later
    /// re-initialisation succeeds.
    pub fn reinitialise(&self) -> Result<bool> {
        let Some(_closed) = self.gate.close(DRAIN_WITHIN) else {
            return Ok(false);
        };
        for pool in self.pools.lock().iter().filter_map(Weak::upgrade) {
            pool.close_all();
        }
        match self.context.clone().finalize() {
            Ok(()) | Err(CryptokiError::Pkcs11(RvError::CryptokiNotInitialized, _)) => {}
            Err(error) => {
                tracing::warn!(%error, "C_Finalize failed; initialising the module again all the same")
            }
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.recovery.lock().done += 1;
        match self
            .context
            .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        {
            Ok(()) | Err(CryptokiError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(true),
            Err(source) => Err(call("C_Initialize")(source)),
        }
    }

    /// Ends this process's use of the module before it exits: once no call
    /// is in flight (waiting at most `DRAIN_WITHIN`), every session is
    /// closed and `C_Finalize` runs; the gate stays closed, so a later call
    /// waits instead of reaching a finalized library. SoftHSM2 frees its
    /// state in C++ destructors as the process exits, and over a library
    /// never finalized they can free twice and abort the exiting process
    /// (softhsm/SoftHSMv2#635). Nothing is done if calls did not end in time:
    /// finalizing under a call would be worse.
    pub fn finalize_for_exit(&self) {
        let Some(closed) = self.gate.close(DRAIN_WITHIN) else {
            return;
        };
        for pool in self.pools.lock().iter().filter_map(Weak::upgrade) {
            pool.close_all();
        }
        let _ = self.context.clone().finalize();
        std::mem::forget(closed);
    }

    /// Re-initialises the module if one is due (see `REINIT_BACKOFF`);
    /// true if it ran and the module is initialised again.
    pub(crate) fn reinitialise_if_due(&self) -> bool {
        {
            let mut recovery = self.recovery.lock();
            let wait = REINIT_BACKOFF[recovery.in_a_row.min(REINIT_BACKOFF.len() - 1)];
            if recovery.last.is_some_and(|last| last.elapsed() < wait) {
                return false;
            }
            recovery.last = Some(Instant::now());
            recovery.in_a_row += 1;
        }
        self.reinitialise_logged()
    }

    /// A token came back: the next outage starts the backoff again.
    pub(crate) fn recovered(&self) {
        self.recovery.lock().in_a_row = 0;
    }

    /// Whether the module has listed this token since the process started.
    pub fn has_listed(&self, label: &str, serial: &str) -> bool {
        self.listed.lock().contains(&crate::token_name(label, serial))
    }

    /// Whether the module lists the token now. If it does not, the module
    /// is re-initialised when one is due, and asked again: for a token it
    /// listed before, at the pace of `REINIT_BACKOFF` (as for an open token
    /// that went away), for one it never listed, every `RESCAN_EVERY`.
    pub fn look_for(&self, label: &str, serial: &str) -> bool {
        if self.find_slot(label, Some(serial)).is_ok() {
            return true;
        }
        let due = if self.has_listed(label, serial) {
            self.reinitialise_if_due()
        } else {
            let mut recovery = self.recovery.lock();
            let due = recovery
                .last_rescan
                .is_none_or(|last| last.elapsed() >= RESCAN_EVERY);
            if due {
                recovery.last_rescan = Some(Instant::now());
            }
            drop(recovery);
            due && self.reinitialise_logged()
        };
        let found = due && self.find_slot(label, Some(serial)).is_ok();
        if found {
            self.recovered();
        }
        found
    }

    fn reinitialise_logged(&self) -> bool {
        match self.reinitialise() {
            Ok(true) => {
                tracing::info!(module = %self.path.display(), generation = self.generation(), "the PKCS#11 module was re-initialised");
                true
            }
            Ok(false) => {
                tracing::info!(module = %self.path.display(), "the PKCS#11 module could not be re-initialised now: calls did not end in time");
                false
            }
            Err(error) => {
                tracing::warn!(module = %self.path.display(), %error, "the PKCS#11 module could not be initialised again; it will be tried again");
                false
            }
        }
    }

    /// What the module says of itself.
    pub fn library_info(&self) -> Result<LibraryInfo> {
        let _call = self.enter();
        let info = self.context.get_library_info().map_err(call("C_GetInfo"))?;
        let version = info.library_version();
        Ok(LibraryInfo {
            manufacturer: info.manufacturer_id().trim_end().to_owned(),
            description: info.library_description().trim_end().to_owned(),
            version: format!("{}.{}", version.major(), version.minor()),
        })
    }

    /// Every initialised token in the module.
    pub fn tokens(&self) -> Result<Vec<TokenSummary>> {
        let _call = self.enter();
        Ok(self
            .slots_with_tokens()?
            .into_iter()
            .map(|(_, summary)| summary)
            .filter(|summary| summary.initialized)
            .collect())
    }

    /// Every slot with a token in it, and what the token says of itself. A
    /// token taken out between the two calls is left out, and so is one whose
    /// information cannot be read at all (with a warning naming the slot):
    /// one bad slot does not hide the others.
    fn slots_with_tokens(&self) -> Result<Vec<(Slot, TokenSummary)>> {
        let _call = self.enter();
        let slots = self
            .context
            .get_slots_with_token()
            .map_err(call("C_GetSlotList"))?;
        let mut found = Vec::with_capacity(slots.len());
        for slot in slots {
            match self.token_info.read(slot) {
                Ok(summary) => {
                    self.listed
                        .lock()
                        .insert(crate::token_name(&summary.label, &summary.serial_number));
                    found.push((slot, summary));
                }
                Err(e)
                    if matches!(
                        e.rv(),
                        Some(RvError::TokenNotPresent | RvError::TokenNotRecognized)
                    ) => {}
                // Not a warning: a token whose store is away answers so
                // (SoftHSM2), and looks for it come every half second.
                Err(e) => {
                    tracing::debug!(slot = slot.id(), error = %e, "a slot's token information cannot be read; the slot is left out");
                }
            }
        }
        Ok(found)
    }

    /// The slot holding the token with this label (and serial, when given).
    pub(crate) fn find_slot(&self, label: &str, serial: Option<&str>) -> Result<(Slot, TokenSummary)> {
        let mut found: Vec<(Slot, TokenSummary)> = self
            .slots_with_tokens()?
            .into_iter()
            .filter(|(_, summary)| {
                summary.initialized
                    && summary.label == label
                    && serial.is_none_or(|s| s == summary.serial_number)
            })
            .collect();
        match found.len() {
            0 => Err(TokenError::TokenNotFound {
                label: label.to_owned(),
                serial: serial.map(str::to_owned),
            }),
            1 => Ok(found.remove(0)),
            count => Err(TokenError::AmbiguousToken {
                label: label.to_owned(),
                count,
            }),
        }
    }

    /// What the token with this label (and serial, when given) says of
    /// itself, and which of the service's mechanisms it supports. Needs no
    /// login.
    pub fn describe_token(&self, label: &str, serial: Option<&str>) -> Result<TokenInfo> {
        let (slot, summary) = self.find_slot(label, serial)?;
        let _call = self.enter();
        self.probe(slot, summary)
    }

    /// What the token in `slot` says of itself now.
    pub(crate) fn read_token_info(&self, slot: Slot) -> Result<TokenSummary> {
        let _call = self.enter();
        self.token_info.read(slot)
    }

    /// Asks the token which of the service's mechanisms it supports, each with
    /// `C_GetMechanismInfo` (see `mechanisms::mechanism_type`).
    fn probe(&self, slot: Slot, summary: TokenSummary) -> Result<TokenInfo> {
        let mut mechanisms = Vec::new();
        for code in crate::mechanisms::probed_codes() {
            match self
                .context
                .get_mechanism_info(slot, crate::mechanisms::mechanism_type(code))
            {
                Ok(_) => mechanisms.push(code),
                Err(CryptokiError::Pkcs11(RvError::MechanismInvalid, _)) => {}
                Err(other) => return Err(call("C_GetMechanismInfo")(other)),
            }
        }
        Ok(TokenInfo {
            label: summary.label,
            serial_number: summary.serial_number,
            manufacturer: summary.manufacturer,
            model: summary.model,
            mechanisms,
        })
    }

    /// Opens the token and proves the PIN by logging in.
    pub fn open_token(
        self: &Arc<Self>,
        label: &str,
        serial: Option<&str>,
        pin: SecretString,
    ) -> Result<Pkcs11Token> {
        let (slot, summary) = self.find_slot(label, serial)?;
        let info = {
            let _call = self.enter();
            self.probe(slot, summary)?
        };
        Pkcs11Token::open(Arc::clone(self), slot, info, pin)
    }

    /// A read-write session on the token in `slot`, whose close takes the
    /// module's login lock.
    pub(crate) fn open_session(&self, slot: Slot) -> Result<ModuleSession> {
        let session = self
            .context
            .open_rw_session(slot)
            .map_err(call("C_OpenSession"))?;
        Ok(ModuleSession::new(session, self.login_state.clone()))
    }

    /// `C_Login` as `user_type`, under the module's login lock.
    pub(crate) fn login_as(
        &self,
        session: &Session,
        user_type: UserType,
        pin: &SecretString,
    ) -> cryptoki::error::Result<()> {
        let _one_at_a_time = self.login_state.hold();
        session.login(user_type, Some(pin))
    }

    /// Logs the user in on `session`, proving `pin` even when the application
    /// is already logged in to the token.
    pub(crate) fn login(
        &self,
        session: &Session,
        label: &str,
        serial: &str,
        pin: &SecretString,
    ) -> Result<()> {
        let digest: [u8; 32] = Sha256::digest(pin.expose_secret().as_bytes()).into();
        let token_key = (label.to_owned(), serial.to_owned());
        let _one_at_a_time = self.login_state.hold();
        let mut proven = self.proven_pins.lock();
        match session.login(UserType::User, Some(pin)) {
            Ok(()) => {
                proven.insert(token_key, digest);
                Ok(())
            }
            Err(CryptokiError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => match proven.get(&token_key) {
                Some(known) if *known == digest => Ok(()),
                Some(_) => Err(TokenError::PinIncorrect {
                    label: label.to_owned(),
                }),
                None => Err(TokenError::LoginShared {
                    label: label.to_owned(),
                }),
            },
            Err(other) => Err(call("C_Login")(other)),
        }
    }

    /// Initialises a new token in the module's free slot with a security-officer
    /// PIN and a user PIN, and returns its summary. Used to provision SoftHSM2
    /// tokens for the embedded default and for tests; a Luna partition is
    /// provisioned with Luna's own tools.
    pub fn init_token(
        &self,
        label: &str,
        so_pin: &SecretString,
        user_pin: &SecretString,
    ) -> Result<TokenSummary> {
        let _call = self.enter();
        let _one_at_a_time = self.provisioning.lock();
        let slot = self
            .slots_with_tokens()?
            .into_iter()
            .find(|(_, summary)| !summary.initialized)
            .map(|(slot, _)| slot)
            .ok_or(TokenError::NoFreeSlot)?;
        self.initialize_in(slot, label, so_pin, user_pin)
    }

    /// Initialises (or re-initialises, erasing its objects) the token in
    /// `slot`: `so_pin` must be its security officer's PIN, or any for a new
    /// token; the user PIN is set to `user_pin`.
    pub(crate) fn initialize_in(
        &self,
        slot: Slot,
        label: &str,
        so_pin: &SecretString,
        user_pin: &SecretString,
    ) -> Result<TokenSummary> {
        let _call = self.enter();
        let so_pin: AuthPin = so_pin.clone();
        self.context
            .init_token(slot, &so_pin, label)
            .map_err(call("C_InitToken"))?;
        // SoftHSM2 renumbers a slot once its token is initialised: find it again.
        let (slot, summary) = self.find_slot(label, None)?;
        let session = self.open_session(slot)?;
        self.login_as(&session, UserType::So, &so_pin)
            .map_err(call("C_Login"))?;
        session.init_pin(user_pin).map_err(call("C_InitPIN"))?;
        session.logout().map_err(call("C_Logout"))?;
        Ok(summary)
    }
}
