//! The saved login: server, CA file and tokens, in the user's config dir
//! (`$XDG_CONFIG_HOME/lunactl/session.json` or `~/.config/lunactl/…`), mode
//! 0600. It holds the bearer and refresh tokens, never the password, and not
//! `--insecure`: skipping the certificate check applies to the command that
//! asks for it, never to later ones.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize)]
pub struct Session {
    pub server: String,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The user logged in (absent in sessions saved by older lunactl).
    #[serde(default)]
    pub username: Option<String>,
    /// The server's id of the login session (`refresh_token_id`), which
    /// `lunactl logout` ends.
    #[serde(default)]
    pub session_id: Option<String>,
    pub jwt: String,
    pub refresh_token: String,
    /// Seconds since the Unix epoch after which the jwt is refreshed first.
    pub expires_at: u64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("server", &self.server)
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

pub fn path() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => std::env::var_os("HOME")
            .map(|home| PathBuf::from(home).join(".config"))
            .ok_or_else(|| anyhow!("neither XDG_CONFIG_HOME nor HOME is set; cannot keep the login"))?,
    };
    Ok(base.join("lunactl").join("session.json"))
}

pub fn load() -> Result<Option<Session>> {
    let path = path()?;
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).with_context(|| {
            format!(
                "{} is not a lunactl session; run lunactl login again",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes the session through a 0600 temporary file renamed into place, so a
/// reader never sees half of it and nobody else can read the tokens. The
/// temporary file is made new (one left by an interrupted write is removed
/// first): opening an existing file would keep whatever mode it has.
pub fn save(session: &Session) -> Result<()> {
    let path = path()?;
    let dir = path
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent", path.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let temporary = path.with_extension("json.tmp");
    match std::fs::remove_file(&temporary) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", temporary.display()))
        }
        _ => {}
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&temporary)
        .with_context(|| format!("writing {}", temporary.display()))?;
    file.write_all(&serde_json::to_vec_pretty(session)?)?;
    file.sync_all()?;
    std::fs::rename(&temporary, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Removes the saved login; no login saved is not an error.
pub fn forget() -> Result<()> {
    let path = path()?;
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}
