//! Luna Network HSM servers: the HSMs an operator registers before the
//! connections that use their partitions, as CipherTrust Manager's clients
//! do first (`POST …/luna-network/servers`). A server is a hostname and the
//! HSM's server certificate; luna-cckm reaches partitions through a PKCS#11
//! module, whose client configuration names the HSM itself, so the record is
//! what the clients read back (and what a connection may name), and the
//! certificate is shown as what it says: subject, issuer, validity and
//! fingerprint. Reading the certificate is the edge's (DER is a wire format);
//! this module holds what was read.

use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::{DomainError, Result};
use crate::wire::wire_enum;

/// The longest hostname (RFC 1035's 253 characters of a name).
pub const MAX_HOSTNAME_CHARS: usize = 253;

wire_enum! {
    /// What CipherTrust Manager uses an HSM server for.
    pub enum Product ("product") {
        /// Keys managed through CCKM.
        Cckm => "cckm",
        /// CipherTrust Manager's own root of trust on the HSM.
        HsmAnchoredDomain => "hsm_anchored_domain",
    }
}

wire_enum! {
    /// How CipherTrust reaches an HSM server: luna-cckm offers `NTLS` only
    /// (an `STC` channel needs the HSM's administrator; see the contract).
    pub enum Channel ("channel") {
        /// Network Trust Link: the Luna client's ordinary TLS link.
        Ntls => "NTLS",
        /// Secure Trusted Channel: not offered.
        Stc => "STC",
    }
}

/// What the HSM's server certificate says (parsed by the edge from PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerCertificate {
    /// The certificate as it was given, PEM.
    pub pem: String,
    /// The subject's distinguished name (RFC 4514).
    pub subject: String,
    /// The issuer's distinguished name (RFC 4514).
    pub issuer: String,
    /// The start of its validity.
    pub not_before: OffsetDateTime,
    /// The end of its validity: after it, the HSM's TLS is refused.
    pub not_after: OffsetDateTime,
    /// SHA-256 of the DER encoding, lowercase hex.
    pub sha256_fingerprint: String,
}

/// A registered Luna Network HSM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HsmServer {
    /// The server's id, the caller's.
    pub id: Uuid,
    /// The HSM's IP address or host name, as given.
    pub hostname: String,
    /// Free text; may be empty.
    pub description: String,
    /// The HSM's server certificate.
    pub certificate: ServerCertificate,
    /// What it is used for; at least one.
    pub products: Vec<Product>,
    /// The client's own data, kept as given (JSON text the edge checked).
    pub meta: Option<String>,
    /// When it was registered.
    pub created_at: OffsetDateTime,
    /// When it last changed.
    pub updated_at: OffsetDateTime,
}

/// A server as a request describes it, before its checks.
#[derive(Debug, Clone, Default)]
pub struct ServerRequest {
    /// The HSM's IP address or host name.
    pub hostname: Option<String>,
    /// Free text.
    pub description: Option<String>,
    /// Product names ([`Product`]); `cckm` when absent.
    pub products: Option<Vec<String>>,
    /// The client's own data, JSON text the edge checked.
    pub meta: Option<String>,
}

impl ServerRequest {
    /// The server, once every field is checked; `certificate` is what the
    /// edge read from `hsm_certificate`. Without `products` it is used for
    /// CCKM (the only product here).
    pub fn validate(
        self,
        id: Uuid,
        certificate: ServerCertificate,
        now: OffsetDateTime,
    ) -> Result<HsmServer> {
        let hostname = check_hostname(self.hostname.as_deref().unwrap_or_default())?;
        let mut products = Vec::new();
        for name in self
            .products
            .unwrap_or_else(|| vec![Product::Cckm.as_str().to_owned()])
        {
            let product: Product = name.parse()?;
            if !products.contains(&product) {
                products.push(product);
            }
        }
        if products.is_empty() {
            return Err(DomainError::invalid(format!(
                "products must name at least one of: {}",
                Product::allowed()
            )));
        }
        let description = self.description.unwrap_or_default();
        crate::partition::check_description(&description)?;
        Ok(HsmServer {
            id,
            hostname,
            description,
            certificate,
            products,
            meta: self.meta,
            created_at: now,
            updated_at: now,
        })
    }
}

/// A connection's `server_id` that names no registered server.
pub fn no_such_server(id: impl std::fmt::Display) -> DomainError {
    DomainError::invalid(format!(
        "server_id {id} names no registered HSM server (POST …/luna-network/servers registers one)"
    ))
}

/// An IP address or a host name: 1 to 253 characters, none of them blank or
/// a control character.
pub fn check_hostname(hostname: &str) -> Result<String> {
    if hostname.is_empty() {
        return Err(DomainError::invalid(
            "hostname is required: the HSM's IP address or host name",
        ));
    }
    if hostname.chars().count() > MAX_HOSTNAME_CHARS {
        return Err(DomainError::invalid(format!(
            "hostname has more than {MAX_HOSTNAME_CHARS} characters"
        )));
    }
    if let Some(bad) = hostname.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(DomainError::invalid(format!(
            "hostname {hostname:?} holds {bad:?}; an IP address or host name has no blanks or control characters"
        )));
    }
    Ok(hostname.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate() -> ServerCertificate {
        ServerCertificate {
            pem: "-----BEGIN CERTIFICATE-----".into(),
            subject: "CN=hsm".into(),
            issuer: "CN=hsm".into(),
            not_before: OffsetDateTime::UNIX_EPOCH,
            not_after: OffsetDateTime::UNIX_EPOCH,
            sha256_fingerprint: "00".into(),
        }
    }

    #[test]
    fn a_server_needs_a_hostname_and_known_products() {
        let now = OffsetDateTime::UNIX_EPOCH;
        let id = Uuid::nil();
        let made = ServerRequest {
            hostname: Some("192.168.100.70".into()),
            products: Some(vec!["hsm_anchored_domain".into(), "cckm".into(), "cckm".into()]),
            ..ServerRequest::default()
        }
        .validate(id, certificate(), now)
        .unwrap();
        assert_eq!(made.products, vec![Product::HsmAnchoredDomain, Product::Cckm]);
        let default = ServerRequest {
            hostname: Some("hsm.example".into()),
            ..ServerRequest::default()
        }
        .validate(id, certificate(), now)
        .unwrap();
        assert_eq!(default.products, vec![Product::Cckm]);
        for (request, says) in [
            (ServerRequest::default(), "hostname is required"),
            (
                ServerRequest {
                    hostname: Some("a b".into()),
                    ..ServerRequest::default()
                },
                "no blanks",
            ),
            (
                ServerRequest {
                    hostname: Some("x".repeat(254)),
                    ..ServerRequest::default()
                },
                "more than 253",
            ),
            (
                ServerRequest {
                    hostname: Some("hsm".into()),
                    products: Some(vec!["kms".into()]),
                    ..ServerRequest::default()
                },
                "product \"kms\" is not supported; allowed: cckm, hsm_anchored_domain",
            ),
            (
                ServerRequest {
                    hostname: Some("hsm".into()),
                    products: Some(vec![]),
                    ..ServerRequest::default()
                },
                "at least one",
            ),
        ] {
            let error = request.validate(id, certificate(), now).unwrap_err().to_string();
            assert!(error.contains(says), "{error}");
        }
    }
}
