//! The XKS proxy API's answers, in its field names (camelCase); bytes are
//! base64.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use luna_domain::xks::{ExternalKey, XksError};

use super::*;

fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// A refusal: the spec's `errorName` and a sentence.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct XksErrorView {
    pub error_name: &'static str,
    pub error_message: String,
}

impl XksErrorView {
    pub fn new(error: &XksError) -> XksErrorView {
        XksErrorView {
            error_name: error.name.as_str(),
            error_message: error.message.clone(),
        }
    }
}

/// One member of the partition behind the proxy.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EkmMemberView {
    /// The member's serial number.
    pub id: String,
    pub model: String,
    /// `ACTIVE`, or `UNAVAILABLE` while it is away.
    pub health_status: &'static str,
}

/// GetHealthStatus.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct XksHealthView {
    pub xks_proxy_fleet_size: u32,
    pub xks_proxy_vendor: &'static str,
    pub xks_proxy_model: &'static str,
    pub ekm_vendor: String,
    pub ekm_fleet_details: Vec<EkmMemberView>,
}

/// GetKeyMetadata.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct XksKeyMetadataView {
    pub key_spec: &'static str,
    pub key_usage: Vec<&'static str>,
    pub key_status: &'static str,
}

impl XksKeyMetadataView {
    pub fn new(key: &ExternalKey) -> XksKeyMetadataView {
        XksKeyMetadataView {
            key_spec: key.key_spec,
            key_usage: key.key_usage.clone(),
            key_status: key.key_status,
        }
    }
}

/// Encrypt.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct XksEncryptedView {
    pub authentication_tag: String,
    pub ciphertext: String,
    pub ciphertext_metadata: String,
    pub initialization_vector: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ciphertext_data_integrity_value: Option<String>,
}

impl XksEncryptedView {
    pub fn new(
        iv: &[u8],
        ciphertext: &[u8],
        tag: &[u8],
        metadata: &[u8],
        integrity_value: Option<&[u8]>,
    ) -> XksEncryptedView {
        XksEncryptedView {
            authentication_tag: b64(tag),
            ciphertext: b64(ciphertext),
            ciphertext_metadata: b64(metadata),
            initialization_vector: b64(iv),
            ciphertext_data_integrity_value: integrity_value.map(b64),
        }
    }
}

/// Decrypt.
#[derive(Debug, Serialize)]
pub struct XksDecryptedView {
    pub plaintext: String,
}

impl XksDecryptedView {
    pub fn new(plaintext: &[u8]) -> XksDecryptedView {
        XksDecryptedView {
            plaintext: b64(plaintext),
        }
    }
}

/// What a call answers when it succeeds.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum XksAnswer {
    Health(XksHealthView),
    KeyMetadata(XksKeyMetadataView),
    Encrypted(XksEncryptedView),
    Decrypted(XksDecryptedView),
}
