//! `luna-server backup` and `restore`: the data directory's database (a
//! consistent copy, taken while the server runs and writes), its keys
//! (`pin.key`, `jwt.key`), the audit trail's checkpoint, the TLS pair, the
//! admin password and the embedded SoftHSM2 tokens, in one file encrypted
//! under a passphrase; and the same, written into an empty data directory.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use anyhow::{anyhow, bail, Context, Result};
use rand::RngCore as _;
use secrecy::{ExposeSecret, SecretString};

/// The file's first bytes: what it is, and the layout's version.
const MAGIC: &[u8; 8] = b"LUNABAK1";
const SALT: usize = 16;
const NONCE: usize = 12;

/// The files of a data directory a backup holds (the database apart),
/// `audit.head` first: read before the database is copied, the checkpoint
/// is never ahead of the copied trail (which would read as truncation).
const KEPT_FILES: [&str; 6] = [
    "audit.head",
    "pin.key",
    "jwt.key",
    "tls-cert.pem",
    "tls-key.pem",
    "admin-password",
];

/// The embedded default's SoftHSM2 home, under the data directory.
const TOKENS: &str = "softhsm";

/// What a backup holds: each file by its path under the data directory.
type Entries = Vec<(String, Vec<u8>)>;

/// Writes the backup of `data` (whose database `store` opened) to `to`.
/// Says what it holds; on PostgreSQL, that the database is pg_dump's.
#[allow(clippy::print_stdout)] // what the backup holds is this command's output
pub fn backup(store: &luna_store::Store, data: &Path, to: &Path, passphrase: &SecretString) -> Result<()> {
    let mut entries: Entries = Vec::new();
    for name in KEPT_FILES {
        match std::fs::read(data.join(name)) {
            Ok(bytes) => entries.push((name.to_owned(), bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", data.join(name).display())),
        }
    }
    let copy = data.join(format!(".backup-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&copy);
    let copied = store.copy_sqlite_into(&copy).context("copying the database");
    let database = match copied {
        Ok(Some(())) => {
            let bytes = std::fs::read(&copy).context("reading the database's copy");
            let _ = std::fs::remove_file(&copy);
            Some(bytes?)
        }
        Ok(None) => None,
        Err(error) => {
            let _ = std::fs::remove_file(&copy);
            return Err(error);
        }
    };
    if let Some(bytes) = database {
        entries.push(("luna.db".to_owned(), bytes));
    }
    add_tree(&data.join(TOKENS), TOKENS, &mut entries)?;
    write_sealed(to, &entries, passphrase)?;
    println!("backup written to {} ({} files)", to.display(), entries.len());
    if !entries.iter().any(|(name, _)| name == "luna.db") {
        println!("the database is PostgreSQL: back it up with pg_dump (README, Install); this file holds the keys it needs");
    }
    Ok(())
}

/// Writes the backup at `from` into `data`, which must not exist or be empty.
#[allow(clippy::print_stdout)] // what was restored is this command's output
pub fn restore(from: &Path, data: &Path, passphrase: &SecretString) -> Result<()> {
    if data.exists()
        && std::fs::read_dir(data)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!(
            "{} is not empty: restore into a new data directory",
            data.display()
        );
    }
    let entries = read_sealed(from, passphrase)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data)
        .with_context(|| format!("creating {}", data.display()))?;
    for (name, bytes) in &entries {
        let relative = Path::new(name);
        if relative.is_absolute()
            || relative
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            bail!("the backup names a file outside the data directory ({name:?}): it was not made by luna-server");
        }
        let path = data.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)?;
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut file| file.write_all(bytes).and_then(|()| file.sync_all()))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    println!("restored {} files into {}", entries.len(), data.display());
    Ok(())
}

/// Every file under `dir`, named under `prefix`.
fn add_tree(dir: &Path, prefix: &str, entries: &mut Entries) -> Result<()> {
    let listing = match std::fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut paths: Vec<PathBuf> = listing.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    paths.sort();
    for path in paths {
        let name = format!(
            "{prefix}/{}",
            path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
        );
        if path.is_dir() {
            add_tree(&path, &name, entries)?;
        } else {
            entries.push((
                name,
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
            ));
        }
    }
    Ok(())
}

/// The key a passphrase and a salt give (Argon2id, its default cost).
fn key_of(passphrase: &SecretString, salt: &[u8]) -> Result<Aes256Gcm> {
    let mut key = [0u8; 32];
    argon2::Argon2::default()
        .hash_password_into(passphrase.expose_secret().as_bytes(), salt, &mut key)
        .map_err(|e| anyhow!("deriving the backup's key: {e}"))?;
    Ok(Aes256Gcm::new(&key.into()))
}

fn write_sealed(to: &Path, entries: &Entries, passphrase: &SecretString) -> Result<()> {
    let mut plain = Vec::new();
    for (name, bytes) in entries {
        plain.extend_from_slice(&u32::try_from(name.len())?.to_be_bytes());
        plain.extend_from_slice(name.as_bytes());
        plain.extend_from_slice(&u64::try_from(bytes.len())?.to_be_bytes());
        plain.extend_from_slice(bytes);
    }
    let mut salt = [0u8; SALT];
    let mut nonce = [0u8; NONCE];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let sealed = key_of(passphrase, &salt)?
        .encrypt(Nonce::from_slice(&nonce), plain.as_slice())
        .map_err(|_| anyhow!("encrypting the backup"))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .with_context(|| format!("creating {} (an existing file is not replaced)", to.display()))?;
    for part in [MAGIC.as_slice(), &salt, &nonce, &sealed] {
        file.write_all(part)?;
    }
    file.sync_all()?;
    Ok(())
}

fn read_sealed(from: &Path, passphrase: &SecretString) -> Result<Entries> {
    let bytes = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    let header = MAGIC.len() + SALT + NONCE;
    if bytes.len() < header || &bytes[..MAGIC.len()] != MAGIC {
        bail!("{} is not a luna-server backup", from.display());
    }
    let (salt, rest) = bytes[MAGIC.len()..].split_at(SALT);
    let (nonce, sealed) = rest.split_at(NONCE);
    let plain = key_of(passphrase, salt)?
        .decrypt(Nonce::from_slice(nonce), sealed)
        .map_err(|_| {
            anyhow!(
                "the passphrase does not open {} (or the file was altered)",
                from.display()
            )
        })?;
    let mut entries = Vec::new();
    let mut at = plain.as_slice();
    let mut take = |n: usize| -> Result<&[u8]> {
        if at.len() < n {
            bail!("{} is cut short", from.display());
        }
        let (head, tail) = at.split_at(n);
        at = tail;
        Ok(head)
    };
    loop {
        let Ok(len) = take(4) else { break };
        let name_len = u32::from_be_bytes(len.try_into()?) as usize;
        let name = String::from_utf8(take(name_len)?.to_vec())?;
        let size = usize::try_from(u64::from_be_bytes(take(8)?.try_into()?))?;
        entries.push((name, take(size)?.to_vec()));
    }
    Ok(entries)
}
