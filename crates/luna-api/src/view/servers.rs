//! Luna Network HSM servers and their certificates, as the API shows them.

use super::*;

/// What an HSM server's certificate says.
#[derive(Debug, Serialize, ToSchema)]
pub struct CertificateView {
    pub subject: String,
    pub issuer: String,
    pub not_before: String,
    pub not_after: String,
    /// SHA-256 of the DER encoding, lowercase hex.
    pub sha256_fingerprint: String,
}

/// A Luna Network HSM server, as CipherTrust Manager answers one.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServerView {
    pub id: String,
    pub uri: String,
    pub account: String,
    pub hostname: String,
    pub description: String,
    /// Always `NTLS`: STC is not offered.
    pub channel: &'static str,
    pub products: Vec<&'static str>,
    /// The client's own data, as it was given.
    #[schema(value_type = Option<Object>)]
    pub meta: Option<serde_json::Value>,
    /// The certificate as it was given (PEM).
    pub hsm_certificate: String,
    pub certificate: CertificateView,
    #[serde(rename = "createdAt")]
    pub created_at: String,
    #[serde(rename = "updatedAt")]
    pub updated_at: String,
}

impl ServerView {
    pub fn new(s: &luna_domain::HsmServer, tenancy: &Tenancy) -> ServerView {
        ServerView {
            id: s.id.to_string(),
            uri: format!("kylo:kylo:connectionmgmt:luna-network-servers:{}", s.id),
            account: tenancy.account.clone(),
            hostname: s.hostname.clone(),
            description: s.description.clone(),
            channel: "NTLS",
            products: s.products.iter().map(|p| p.as_str()).collect(),
            // Stored only after the edge parsed it as a JSON object.
            meta: s.meta.as_deref().and_then(|m| serde_json::from_str(m).ok()),
            hsm_certificate: s.certificate.pem.clone(),
            certificate: CertificateView {
                subject: s.certificate.subject.clone(),
                issuer: s.certificate.issuer.clone(),
                not_before: timestamp(s.certificate.not_before),
                not_after: timestamp(s.certificate.not_after),
                sha256_fingerprint: s.certificate.sha256_fingerprint.clone(),
            },
            created_at: timestamp(s.created_at),
            updated_at: timestamp(s.updated_at),
        }
    }
}
