//! The server's certificate: the configured one, or a self-signed pair
//! generated into the data directory on first start.

use std::fs;
use std::io;
use std::path::Path;

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Generates a self-signed certificate for localhost into `cert` and `key`
/// (the key with mode 0600) unless both exist.
pub fn ensure_self_signed(cert: &Path, key: &Path) -> io::Result<()> {
    if cert.exists() && key.exists() {
        return Ok(());
    }
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    let generated = rcgen::generate_simple_self_signed(names)
        .map_err(|e| invalid(format!("generating a certificate: {e}")))?;
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    io::Write::write_all(
        &mut options.open(key)?,
        generated.key_pair.serialize_pem().as_bytes(),
    )?;
    fs::write(cert, generated.cert.pem())
}

/// A rustls server configuration from PEM files.
pub fn server_config(cert: &Path, key: &Path) -> io::Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::{self, PemObject as _};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    fn unreadable(path: &Path, error: pem::Error) -> io::Error {
        match error {
            pem::Error::Io(e) => e,
            pem::Error::NoItemsFound => {
                invalid(format!("{} holds no PEM item of the kind needed", path.display()))
            }
            other => invalid(format!("{}: {other}", path.display())),
        }
    }
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| unreadable(cert, e))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| unreadable(key, e))?;
    rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| invalid(format!("the certificate and key do not fit together: {e}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_pair_loads_and_a_file_without_a_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        ensure_self_signed(&cert, &key).unwrap();
        assert!(server_config(&cert, &key).is_ok());
        // The certificate given as the key: a sentence naming the file.
        let error = server_config(&cert, &cert).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(
            error.to_string().contains("cert.pem holds no PEM item"),
            "{error}"
        );
        let missing = server_config(&dir.path().join("absent.pem"), &key).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }
}
