//! The server's certificate: the configured one, or a self-signed pair
//! generated into the data directory on first start; read again on demand.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

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

/// The server's certificate and key, from PEM files, read again on demand
/// (luna-server does so on SIGHUP): new handshakes take the new pair, and
/// connections already up keep theirs, so nothing is dropped. A pair that
/// does not load leaves the one in use.
#[derive(Debug)]
pub struct ServerCert {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ServerCert {
    /// Reads the pair; an error names the file and what is wrong with it.
    pub fn load(cert: &Path, key: &Path) -> io::Result<Arc<ServerCert>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let current = RwLock::new(Arc::new(read_pair(cert, key, &provider)?));
        Ok(Arc::new(ServerCert {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            provider,
            current,
        }))
    }

    /// Reads the files again and, if they load and fit together, serves
    /// them from the next handshake on.
    pub fn reload(&self) -> io::Result<()> {
        let pair = read_pair(&self.cert, &self.key, &self.provider)?;
        *self.current.write() = Arc::new(pair);
        Ok(())
    }

    /// A rustls configuration that serves this certificate as it is at each
    /// handshake. With `client_ca` (PEM), a client certificate is asked for:
    /// one that does not chain to those CAs ends the handshake; a client
    /// that sends none is let in (the CCKM API's clients), and XKS calls
    /// refuse it (luna-api `xks`).
    pub fn server_config(self: &Arc<Self>, client_ca: Option<&Path>) -> io::Result<rustls::ServerConfig> {
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(e.to_string()))?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => builder.with_client_cert_verifier(client_verifier(path, &self.provider)?),
        };
        Ok(builder.with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>))
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.read()))
    }
}

/// Checks client certificates against the CAs in `path`, letting in a
/// client that sends none.
fn client_verifier(path: &Path, provider: &Arc<CryptoProvider>) -> io::Result<Arc<dyn ClientCertVerifier>> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(invalid(format!("{} holds no CA certificate", path.display())));
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
        .allow_unauthenticated()
        .build()
        .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
    Ok(Arc::new(HandshakeFailure(verifier)))
}

/// A client certificate refused ends the handshake with a
/// `handshake_failure` alert, whatever was wrong with it (unknown issuer,
/// expired): the alert AWS's XKS test client expects, and one that tells a
/// prober nothing.
#[derive(Debug)]
struct HandshakeFailure(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for HandshakeFailure {
    fn offer_client_auth(&self) -> bool {
        self.0.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.0.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        self.0
            .verify_client_cert(end_entity, intermediates, now)
            .map_err(|e| rustls::Error::General(format!("client certificate refused: {e}")))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The chain and key from PEM files, checked to fit together.
fn read_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> io::Result<CertifiedKey> {
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
    if certs.is_empty() {
        return Err(invalid(format!("{} holds no certificate", cert.display())));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| unreadable(key, e))?;
    CertifiedKey::from_der(certs, key, provider)
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
        assert!(ServerCert::load(&cert, &key).unwrap().server_config(None).is_ok());
        // The certificate given as the key: a sentence naming the file.
        let error = ServerCert::load(&cert, &cert).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(
            error.to_string().contains("cert.pem holds no PEM item"),
            "{error}"
        );
        let missing = ServerCert::load(&dir.path().join("absent.pem"), &key).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn a_reload_serves_the_new_pair_and_a_pair_that_does_not_fit_leaves_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        ensure_self_signed(&cert, &key).unwrap();
        let served = ServerCert::load(&cert, &key).unwrap();
        let before = served.current.read().cert.clone();
        let other = tempfile::tempdir().unwrap();
        let (new_cert, new_key) = (other.path().join("cert.pem"), other.path().join("key.pem"));
        ensure_self_signed(&new_cert, &new_key).unwrap();
        // The new certificate with the old key: refused, the old pair stays.
        fs::copy(&new_cert, &cert).unwrap();
        let refused = served.reload().unwrap_err();
        assert!(refused.to_string().contains("do not fit together"), "{refused}");
        assert_eq!(served.current.read().cert, before);
        fs::copy(&new_key, &key).unwrap();
        served.reload().unwrap();
        assert_ne!(served.current.read().cert, before);
    }
}
