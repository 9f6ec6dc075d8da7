//! Real SoftHSM2 tokens for tests. SoftHSM2 reads its configuration once per
//! process, so a test process has one home, in which each test initialises
//! tokens of its own with fresh labels (tests stay independent and parallel).
//!
//! Set `LUNA_PKCS11_MODULE` to test against another SoftHSM2 build.
#![allow(clippy::expect_used)] // a test without its token should fail loudly, here

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use secrecy::SecretString;

use crate::softhsm::SoftHsmHome;
use crate::{Module, TokenPartition};

pub const USER_PIN: &str = "user-pin-1234";
pub const SO_PIN: &str = "so-pin-5678";

pub fn home() -> &'static SoftHsmHome {
    static HOME: OnceLock<SoftHsmHome> = OnceLock::new();
    HOME.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("luna-softhsm-")
            .tempdir()
            .expect("a temporary directory for SoftHSM2 tokens")
            .keep();
        let module = std::env::var_os("LUNA_PKCS11_MODULE").map(PathBuf::from);
        SoftHsmHome::open(&dir, module.as_deref()).expect("SoftHSM2 (package softhsm2) is installed")
    })
}

pub fn module() -> &'static Arc<Module> {
    home().module()
}

pub fn unique_label(prefix: &str) -> String {
    // Token labels hold 32 characters.
    let prefix: String = prefix.chars().take(22).collect();
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// A new, empty token; returns its label.
pub fn fresh_token_label(prefix: &str) -> String {
    let label = unique_label(prefix);
    module()
        .init_token(&label, &SecretString::from(SO_PIN), &SecretString::from(USER_PIN))
        .expect("initialise a SoftHSM2 token");
    label
}

/// A new, empty token opened as a partition.
pub fn fresh_token(prefix: &str) -> TokenPartition {
    let label = fresh_token_label(prefix);
    module()
        .open_partition(&label, None, SecretString::from(USER_PIN))
        .expect("open the new token")
}

/// A session on a token through a second cryptoki context, as another
/// program would open one, for what the service itself never does (changing a
/// PIN, wrapping with an untrusted key). Logged in as the user.
pub fn raw_user_session(label: &str) -> cryptoki::session::Session {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::error::{Error, RvError};
    let context = Pkcs11::new(module().path()).expect("load the module again");
    match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => panic!("initialise: {e}"),
    }
    let slot = context
        .get_slots_with_token()
        .expect("slots")
        .into_iter()
        .find(|s| {
            context
                .get_token_info(*s)
                .map(|t| t.label().trim_end() == label)
                .unwrap_or(false)
        })
        .expect("the token is present");
    let session = context.open_rw_session(slot).expect("a session");
    match session.login(
        cryptoki::session::UserType::User,
        Some(&SecretString::from(USER_PIN)),
    ) {
        Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => panic!("login: {e}"),
    }
    session
}
