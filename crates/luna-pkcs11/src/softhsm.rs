//! SoftHSM2 specifics: where its module usually lives, and a private token
//! directory with its own configuration file.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The usual places Debian, Fedora, Homebrew and source builds put the module.
const MODULE_CANDIDATES: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/usr/lib/pkcs11/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
];

/// The SoftHSM2 module found in the usual library folders.
pub fn find_module() -> Option<PathBuf> {
    MODULE_CANDIDATES.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// Creates `<dir>/tokens` and `<dir>/softhsm2.conf` pointing at it, and
/// returns the configuration file's path. SoftHSM2 reads the file named by
/// `SOFTHSM2_CONF` once, at `C_Initialize`, so the caller must set that
/// variable before the module is first opened in the process.
pub fn write_config(dir: &Path) -> io::Result<PathBuf> {
    let tokens = dir.join("tokens");
    fs::create_dir_all(&tokens)?;
    let conf = dir.join("softhsm2.conf");
    let text = format!(
        "# Written by luna-cckm: SoftHSM2 tokens of this data directory.\n\
         directories.tokendir = {}\n\
         objectstore.backend = file\n\
         log.level = ERROR\n\
         slots.removable = false\n",
        tokens.display()
    );
    fs::write(&conf, text)?;
    Ok(conf)
}

/// A SoftHSM2 token directory and the module serving it, for the embedded
/// default, the tests and the benchmarks.
#[derive(Debug)]
pub struct SoftHsmHome {
    dir: PathBuf,
    module: std::sync::Arc<crate::Module>,
}

/// What went wrong setting up a SoftHSM2 home.
#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    #[error("no SoftHSM2 module found in the usual library folders; install softhsm2 or name the module")]
    NoModule,
    #[error("writing the SoftHSM2 configuration in {}", dir.display())]
    Config {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Token(#[from] crate::TokenError),
}

impl SoftHsmHome {
    /// Writes the configuration under `dir`, points `SOFTHSM2_CONF` at it and
    /// opens the module. SoftHSM2 reads that variable once per process, at
    /// `C_Initialize`, so this must run before anything else opens the module.
    pub fn open(dir: &Path, module: Option<&Path>) -> Result<SoftHsmHome, HomeError> {
        let module_path = match module {
            Some(path) => path.to_path_buf(),
            None => find_module().ok_or(HomeError::NoModule)?,
        };
        let conf = write_config(dir).map_err(|source| HomeError::Config {
            dir: dir.to_path_buf(),
            source,
        })?;
        std::env::set_var("SOFTHSM2_CONF", &conf);
        let module = crate::Module::open(&module_path)?;
        Ok(SoftHsmHome {
            dir: dir.to_path_buf(),
            module,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn module(&self) -> &std::sync::Arc<crate::Module> {
        &self.module
    }
}
