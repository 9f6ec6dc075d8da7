//! One SoftHSM2 home per test process (SoftHSM2 reads its configuration once
//! per process), in which each test initialises tokens of its own.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use luna_pkcs11::softhsm::SoftHsmHome;
use luna_pkcs11::{Module, TokenPartition};
use secrecy::SecretString;

pub const USER_PIN: &str = "user-pin-1234";
pub const SO_PIN: &str = "so-pin-5678";

pub fn home() -> &'static SoftHsmHome {
    static HOME: OnceLock<SoftHsmHome> = OnceLock::new();
    HOME.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("softhsm-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("temp dir")
            .keep();
        let module = std::env::var_os("LUNA_PKCS11_MODULE").map(PathBuf::from);
        SoftHsmHome::open(&dir, module.as_deref()).expect("SoftHSM2 home")
    })
}

pub fn module() -> &'static Arc<Module> {
    home().module()
}

pub fn unique_label(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// A new, empty token opened as a partition.
pub fn fresh_token(prefix: &str) -> TokenPartition {
    let label = unique_label(prefix);
    module()
        .init_token(&label, &SecretString::from(SO_PIN), &SecretString::from(USER_PIN))
        .expect("init token");
    module()
        .open_partition(&label, None, SecretString::from(USER_PIN))
        .expect("open partition")
}
