//! Connection PINs, sealed at rest with AES-256-GCM under a key kept in the data dir.

use std::fs;
use std::io::Write;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};

use crate::error::{Result, StoreError};

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;

/// Reads a secret key file of `len` bytes, or creates it with fresh random
/// bytes, readable by its owner only. A file of another length is refused.
pub fn load_or_create_key_file(path: &Path, len: usize) -> Result<Vec<u8>> {
    let file_error = |source| StoreError::KeyFile {
        path: path.to_path_buf(),
        source,
    };
    match fs::read(path) {
        Ok(bytes) if bytes.len() == len => Ok(bytes),
        Ok(bytes) => Err(file_error(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("holds {} bytes; the key is {len}", bytes.len()),
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = vec![0u8; len];
            rand::rngs::OsRng.fill_bytes(&mut key);
            let mut options = fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(path).map_err(file_error)?;
            file.write_all(&key)
                .and_then(|()| file.sync_all())
                .map_err(file_error)?;
            Ok(key)
        }
        Err(e) => Err(file_error(e)),
    }
}

/// Seals and opens PINs. Each sealed PIN is bound to its row (the connection
/// id is the associated data), so a ciphertext copied to another row fails.
pub struct PinCipher {
    cipher: Aes256Gcm,
    /// Keys the audit chain: derived from the same key file, which instances
    /// sharing a database share, and which the database never holds.
    audit_key: [u8; 32],
}

impl std::fmt::Debug for PinCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PinCipher(..)")
    }
}

impl PinCipher {
    pub fn from_key(key: &[u8; KEY_LEN]) -> Self {
        use sha2::Digest as _;
        let mut audit = sha2::Sha256::new();
        audit.update(b"luna-cckm/audit-key/v1");
        audit.update(key);
        PinCipher {
            cipher: Aes256Gcm::new(key.into()),
            audit_key: audit.finalize().into(),
        }
    }

    /// The key of the audit chain's MACs.
    pub(crate) fn audit_key(&self) -> &[u8; 32] {
        &self.audit_key
    }

    /// Reads the key file, or creates it (mode 0600) with a fresh random key.
    pub fn load_or_create(path: &Path) -> Result<Self> {
        let key: [u8; KEY_LEN] = load_or_create_key_file(path, KEY_LEN)?
            .try_into()
            .map_err(|_| StoreError::corrupt("PIN key file", "wrong length"))?;
        Ok(Self::from_key(&key))
    }

    pub fn seal(&self, pin: &SecretString, row: &str) -> Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: pin.expose_secret().as_bytes(),
                    aad: row.as_bytes(),
                },
            )
            .map_err(|_| StoreError::PinDecrypt)?;
        Ok([nonce.as_slice(), &sealed].concat())
    }

    pub fn open(&self, blob: &[u8], row: &str) -> Result<SecretString> {
        if blob.len() < NONCE_LEN {
            return Err(StoreError::PinDecrypt);
        }
        let (nonce, sealed) = blob.split_at(NONCE_LEN);
        let plain = self
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: row.as_bytes(),
                },
            )
            .map_err(|_| StoreError::PinDecrypt)?;
        String::from_utf8(plain)
            .map(SecretString::from)
            .map_err(|_| StoreError::PinDecrypt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_round_trip_and_are_bound_to_their_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pin.key");
        let cipher = PinCipher::load_or_create(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let sealed = cipher.seal(&SecretString::from("1234"), "row-a").unwrap();
        assert!(
            !sealed.windows(4).any(|w| w == b"1234"),
            "the PIN is not stored in clear"
        );
        assert_eq!(cipher.open(&sealed, "row-a").unwrap().expose_secret(), "1234");
        assert!(matches!(
            cipher.open(&sealed, "row-b"),
            Err(StoreError::PinDecrypt)
        ));
        // The same key file gives the same cipher; another key does not open it.
        let again = PinCipher::load_or_create(&path).unwrap();
        assert_eq!(again.open(&sealed, "row-a").unwrap().expose_secret(), "1234");
        let other = PinCipher::from_key(&[7; 32]);
        assert!(other.open(&sealed, "row-a").is_err());
    }
}
