//! HTTP to luna-server: TLS as the user chose it, the bearer token refreshed
//! before it runs out, and errors as the server's own sentence.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::{json, Value};

use crate::session::{self, Session};

/// A refusal from the server: its status and its sentence.
#[derive(Debug)]
pub struct ServerAnswered {
    pub status: u16,
    pub message: String,
}

impl std::fmt::Display for ServerAnswered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the server answered {}: {}", self.status, self.message)
    }
}

impl std::error::Error for ServerAnswered {}

/// Where and how to connect, from flags or the saved login.
#[derive(Debug, Clone)]
pub struct Target {
    pub server: String,
    pub ca_file: Option<std::path::PathBuf>,
    pub insecure: bool,
}

#[derive(Debug)]
pub struct Client {
    agent: ureq::Agent,
    server: String,
    session: Option<Session>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Refresh this long before the jwt expires, so a request never carries a
/// token that dies on the way.
const REFRESH_MARGIN_SECS: u64 = 15;

impl Client {
    pub fn new(target: &Target, session: Option<Session>) -> Result<Client> {
        let mut builder = ureq::AgentBuilder::new().timeout(Duration::from_secs(60));
        if target.server.starts_with("https://") {
            builder = builder.tls_config(Arc::new(tls_config(target.ca_file.as_deref(), target.insecure)?));
        } else if !target.server.starts_with("http://") {
            bail!(
                "--server must start with https:// or http://; got {:?}",
                target.server
            );
        }
        Ok(Client {
            agent: builder.build(),
            server: target.server.trim_end_matches('/').to_owned(),
            session,
        })
    }

    /// Logs in with a password and keeps the session.
    pub fn login(&mut self, target: &Target, username: &str, password: &str) -> Result<()> {
        let answer = self.send(
            "POST",
            "/api/v1/auth/tokens",
            &[],
            Some(&json!({"grant_type": "password", "username": username, "password": password})),
            None,
        )?;
        self.keep(target.ca_file.clone(), Some(username.to_owned()), &answer)
    }

    /// The user of the saved login, if lunactl saved it.
    pub fn username(&self) -> Option<&str> {
        self.session.as_ref().and_then(|s| s.username.as_deref())
    }

    /// Ends the saved login on the server (its refresh token is revoked and
    /// its access tokens refused) and forgets it here. A session the server
    /// has already ended is forgotten all the same.
    pub fn logout(&mut self) -> Result<String> {
        let Some(session) = self.session.clone() else {
            bail!("not logged in");
        };
        let said = match &session.session_id {
            Some(id) => {
                let path = format!("/api/v1/auth/tokens/{id}");
                match self.bearer().and_then(|bearer| self.send("DELETE", &path, &[], None, Some(&bearer))) {
                    Ok(_) => format!("logged out of {}\n", session.server),
                    // Only the server saying the session is gone lets the
                    // login go here; anything else (unreachable, a 5xx)
                    // keeps it, to log out again once the server answers.
                    Err(error) => match error.downcast_ref::<ServerAnswered>() {
                        Some(refused) if [401, 404].contains(&refused.status) => format!(
                            "the server had already ended the session ({}); forgotten here\n",
                            refused.message
                        ),
                        _ => return Err(error.context("could not log out; the login is kept, try again")),
                    },
                }
            }
            None => "forgotten here; this login was saved without its session id, so the server ends it when it expires\n".to_owned(),
        };
        session::forget()?;
        self.session = None;
        Ok(said)
    }

    /// Saves the tokens of a login or refresh `answer`, with the CA file the
    /// server's certificate is checked against.
    fn keep(
        &mut self,
        ca_file: Option<std::path::PathBuf>,
        username: Option<String>,
        answer: &Value,
    ) -> Result<()> {
        let text = |name: &str| {
            answer[name]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("the server's token answer lacks {name}"))
        };
        let session = Session {
            server: self.server.clone(),
            ca_file,
            username,
            session_id: answer["refresh_token_id"].as_str().map(str::to_owned),
            jwt: text("jwt")?,
            refresh_token: text("refresh_token")?,
            expires_at: now() + answer["duration"].as_u64().unwrap_or(0),
        };
        session::save(&session)?;
        self.session = Some(session);
        Ok(())
    }

    fn bearer(&mut self) -> Result<String> {
        let Some(session) = self.session.clone() else {
            bail!("not logged in; run lunactl login first");
        };
        if session.server != self.server {
            bail!(
                "the saved login is for {}, not {}; run lunactl login --server {}",
                session.server,
                self.server,
                self.server
            );
        }
        if now() + REFRESH_MARGIN_SECS < session.expires_at {
            return Ok(session.jwt);
        }
        let answer = self
            .send(
                "POST",
                "/api/v1/auth/tokens",
                &[],
                Some(&json!({"grant_type": "refresh_token", "refresh_token": session.refresh_token})),
                None,
            )
            .context("the login has run out; run lunactl login again")?;
        self.keep(session.ca_file.clone(), session.username.clone(), &answer)?;
        Ok(text_of(&answer, "jwt"))
    }

    /// A request as the logged-in user; `Value::Null` for an empty answer.
    pub fn call(
        &mut self,
        method: &str,
        path: &str,
        query: &[(String, String)],
        body: Option<&Value>,
    ) -> Result<Value> {
        let bearer = self.bearer()?;
        self.send(method, path, query, body, Some(&bearer))
    }

    /// A request without a bearer token (health, a password change).
    pub fn call_open(&mut self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        self.send(method, path, &[], body, None)
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        query: &[(String, String)],
        body: Option<&Value>,
        bearer: Option<&str>,
    ) -> Result<Value> {
        let url = format!("{}{path}", self.server);
        let mut request = self.agent.request(method, &url);
        for (name, value) in query {
            request = request.query(name, value);
        }
        if let Some(bearer) = bearer {
            request = request.set("Authorization", &format!("Bearer {bearer}"));
        }
        let response = match body {
            Some(body) => request.send_json(body),
            None => request.call(),
        };
        let response = match response {
            Ok(response) => response,
            Err(ureq::Error::Status(status, response)) => {
                let text = response.into_string().unwrap_or_default();
                let message = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v["message"].as_str().map(str::to_owned))
                    .unwrap_or(text);
                return Err(ServerAnswered { status, message }.into());
            }
            Err(ureq::Error::Transport(transport)) => {
                bail!("cannot reach {}: {transport}", self.server)
            }
        };
        let text = response.into_string().context("reading the server's answer")?;
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).or(Ok(Value::String(text)))
    }
}

fn text_of(value: &Value, name: &str) -> String {
    value[name].as_str().unwrap_or_default().to_owned()
}

fn tls_config(ca_file: Option<&Path>, insecure: bool) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .context("TLS set-up")?;
    if insecure {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth());
    }
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            use rustls::pki_types::{pem::PemObject as _, CertificateDer};
            let mut added = 0;
            let certificates = CertificateDer::pem_file_iter(path)
                .with_context(|| format!("--ca-file {}", path.display()))?;
            for certificate in certificates {
                let certificate = certificate.with_context(|| format!("--ca-file {}", path.display()))?;
                roots
                    .add(certificate)
                    .with_context(|| format!("--ca-file {}", path.display()))?;
                added += 1;
            }
            if added == 0 {
                bail!("--ca-file {} holds no PEM certificate", path.display());
            }
        }
        // A server with a public certificate: the web's roots, as ureq ships them.
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// `--insecure`: the server's certificate is not checked (its signatures on
/// the handshake still are), as curl -k does.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
