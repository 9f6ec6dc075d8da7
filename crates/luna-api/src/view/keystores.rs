//! External key stores, as the admin routes answer them. A credential's
//! secret appears once, in the answer that made it.

use luna_domain::xks::keystore::{Credential, Keystore};
use secrecy::{ExposeSecret, SecretString};

use super::*;

/// One SigV4 credential of a keystore (never its secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct CredentialView {
    /// What AWS KMS is given as the proxy's access key id.
    pub access_key_id: String,
    pub created_at: String,
    /// When it stops being taken; `null` while it is the newest.
    pub expires_at: Option<String>,
    /// Whether it is taken now.
    pub valid: bool,
}

/// A credential just made: the one answer that carries its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct NewCredentialView {
    pub access_key_id: String,
    /// Shown this once; give it to AWS KMS with the access key id.
    pub secret_access_key: String,
}

impl NewCredentialView {
    pub fn new(credential: &Credential, secret: &SecretString) -> NewCredentialView {
        NewCredentialView {
            access_key_id: credential.access_key_id.clone(),
            secret_access_key: secret.expose_secret().to_owned(),
        }
    }
}

/// A keystore: where AWS KMS calls it, the region it signs for, the
/// partition whose AES-256 keys are its external keys, its credentials.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeystoreView {
    #[serde(flatten)]
    pub resource: Resource,
    pub name: String,
    /// Without slashes at either end; empty for the host's root.
    pub uri_path_prefix: String,
    /// What AWS KMS is given as the proxy's URI path: `/{uri_path_prefix}/kms/xks/v1`.
    pub uri_path: String,
    pub region: String,
    pub partition_id: String,
    pub credentials: Vec<CredentialView>,
    /// Only in the answer that made a credential (the keystore's create, a rotation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_credential: Option<NewCredentialView>,
}

impl KeystoreView {
    pub fn new(
        keystore: &Keystore,
        credentials: &[Credential],
        now: OffsetDateTime,
        tenancy: &Tenancy,
    ) -> KeystoreView {
        KeystoreView {
            resource: Resource::new(
                "xks-keystore",
                keystore.id,
                keystore.created_at,
                keystore.updated_at,
                tenancy,
            ),
            name: keystore.name.clone(),
            uri_path_prefix: keystore.uri_path_prefix.clone(),
            uri_path: uri_path(&keystore.uri_path_prefix),
            region: keystore.region.clone(),
            partition_id: keystore.partition_id.to_string(),
            credentials: credentials
                .iter()
                .map(|c| CredentialView {
                    access_key_id: c.access_key_id.clone(),
                    created_at: timestamp(c.created_at),
                    expires_at: c.expires_at.map(timestamp),
                    valid: c.valid_at(now),
                })
                .collect(),
            new_credential: None,
        }
    }
}

/// The path AWS KMS is configured with for a keystore's prefix.
pub fn uri_path(prefix: &str) -> String {
    if prefix.is_empty() {
        "/kms/xks/v1".to_owned()
    } else {
        format!("/{prefix}/kms/xks/v1")
    }
}
