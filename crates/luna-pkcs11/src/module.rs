//! One PKCS#11 context per module, shared by every partition in the process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CryptokiError, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::error::{call, Result, TokenError};
use crate::token::TokenPartition;

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
    /// Token serial → digest of the PIN that last passed `C_Login` there.
    /// Login is per application, so once one session is logged in `C_Login`
    /// answers `CKR_USER_ALREADY_LOGGED_IN` whatever PIN it is given; this is
    /// what a later PIN is checked against then (a token has one user PIN).
    proven_pins: Mutex<HashMap<String, [u8; 32]>>,
    /// SoftHSM2's file object store races when a session writes objects while
    /// another writes or reads the same token (softhsm/SoftHSMv2#573:
    /// `CKR_GENERAL_ERROR` from `C_GenerateKey`), so on it a write excludes
    /// every other call on that token; reads still run together.
    pub(crate) serialize_object_writes: bool,
}

/// A token present in the module, as `C_GetTokenInfo` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSummary {
    pub label: String,
    pub serial_number: String,
    pub manufacturer: String,
    pub model: String,
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
        let mut modules = registry().lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(module) = modules.get(&key).and_then(Weak::upgrade) {
            return Ok(module);
        }
        let load_error = |source| TokenError::LoadModule {
            path: path.to_path_buf(),
            source,
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
        let module = Arc::new(Module {
            serialize_object_writes: manufacturer.starts_with("SoftHSM"),
            path: key.clone(),
            context,
            provisioning: Mutex::new(()),
            proven_pins: Mutex::new(HashMap::new()),
        });
        modules.insert(key, Arc::downgrade(&module));
        Ok(module)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every initialised token in the module.
    pub fn tokens(&self) -> Result<Vec<TokenSummary>> {
        let slots = self
            .context
            .get_slots_with_initialized_token()
            .map_err(call("C_GetSlotList"))?;
        slots.into_iter().map(|slot| self.summary(slot)).collect()
    }

    fn summary(&self, slot: Slot) -> Result<TokenSummary> {
        let info = self
            .context
            .get_token_info(slot)
            .map_err(call("C_GetTokenInfo"))?;
        Ok(TokenSummary {
            label: info.label().trim_end().to_owned(),
            serial_number: info.serial_number().trim_end().to_owned(),
            manufacturer: info.manufacturer_id().trim_end().to_owned(),
            model: info.model().trim_end().to_owned(),
        })
    }

    /// The slot holding the token with this label (and serial, when given).
    pub(crate) fn find_slot(&self, label: &str, serial: Option<&str>) -> Result<(Slot, TokenSummary)> {
        let slots = self
            .context
            .get_slots_with_initialized_token()
            .map_err(call("C_GetSlotList"))?;
        let mut found = Vec::new();
        for slot in slots {
            let summary = self.summary(slot)?;
            if summary.label == label && serial.is_none_or(|s| s == summary.serial_number) {
                found.push((slot, summary));
            }
        }
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

    /// Opens the token as a partition and proves the PIN by logging in.
    pub fn open_partition(
        self: &Arc<Self>,
        label: &str,
        serial: Option<&str>,
        pin: SecretString,
    ) -> Result<TokenPartition> {
        let (slot, summary) = self.find_slot(label, serial)?;
        TokenPartition::open(Arc::clone(self), slot, summary, pin)
    }

    /// Logs the user in on `session`, proving `pin` even when the application
    /// is already logged in to the token.
    pub(crate) fn login(&self, session: &Session, token: &TokenSummary, pin: &SecretString) -> Result<()> {
        let digest: [u8; 32] = Sha256::digest(pin.expose_secret().as_bytes()).into();
        let mut proven = self.proven_pins.lock().unwrap_or_else(|p| p.into_inner());
        match session.login(UserType::User, Some(pin)) {
            Ok(()) => {
                proven.insert(token.serial_number.clone(), digest);
                Ok(())
            }
            Err(CryptokiError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {
                match proven.get(&token.serial_number) {
                    Some(known) if *known == digest => Ok(()),
                    _ => Err(TokenError::PinIncorrect {
                        label: token.label.clone(),
                    }),
                }
            }
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
        let _one_at_a_time = self
            .provisioning
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut free = None;
        for slot in self.context.get_all_slots().map_err(call("C_GetSlotList"))? {
            let info = match self.context.get_token_info(slot) {
                Ok(info) => info,
                Err(CryptokiError::Pkcs11(RvError::TokenNotPresent, _)) => continue,
                Err(other) => return Err(call("C_GetTokenInfo")(other)),
            };
            if !info.token_initialized() {
                free = Some(slot);
                break;
            }
        }
        let slot = free.ok_or(TokenError::NoFreeSlot)?;
        let so_pin: AuthPin = so_pin.clone();
        self.context
            .init_token(slot, &so_pin, label)
            .map_err(call("C_InitToken"))?;
        // SoftHSM2 renumbers a slot once its token is initialised: find it again.
        let (slot, summary) = self.find_slot(label, None)?;
        let session = self
            .context
            .open_rw_session(slot)
            .map_err(call("C_OpenSession"))?;
        session
            .login(UserType::So, Some(&so_pin))
            .map_err(call("C_Login"))?;
        session.init_pin(user_pin).map_err(call("C_InitPIN"))?;
        session.logout().map_err(call("C_Logout"))?;
        Ok(summary)
    }
}
