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
    let certs = rustls_pemfile::certs(&mut io::BufReader::new(fs::File::open(cert)?))
        .collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut io::BufReader::new(fs::File::open(key)?))?
        .ok_or_else(|| invalid(format!("{} holds no private key", key.display())))?;
    rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| invalid(format!("the certificate and key do not fit together: {e}")))
}
