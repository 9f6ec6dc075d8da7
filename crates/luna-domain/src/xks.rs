//! The rules of an AWS KMS external key store proxy (the XKS proxy API,
//! version 1, `aws/aws-kms-xksproxy-api-spec` 1.0.3) over this service's
//! keys: the spec's error names, what each call's `requestMetadata` must
//! hold, the sizes of what is encrypted and decrypted, the additional data
//! the token authenticates, and which keys answer as external keys and for
//! what. No JSON, no base64, no HTTP: the edge decodes, this decides.
//! Keystores and their credentials: `keystore`. The routes are luna-api's
//! `xks` (docs/xks.md).

pub mod keystore;

use crate::attribute::Attribute;
use crate::key::{Algorithm, Key, KeyStatus, ObjectType};
use crate::wire::wire_enum;

wire_enum! {
    /// The spec's `errorName`s; each has its HTTP status (`status`).
    pub enum XksErrorName ("errorName") {
        /// A request the spec's rules refuse (a field missing or malformed).
        Validation => "ValidationException",
        /// The key cannot be used now (not yet made, being destroyed).
        InvalidState => "InvalidStateException",
        /// What was to be decrypted does not authenticate.
        InvalidCiphertext => "InvalidCiphertextException",
        /// The key's attributes do not allow the call (`CKA_ENCRYPT`, `CKA_DECRYPT`).
        InvalidKeyUsage => "InvalidKeyUsageException",
        /// The SigV4 signature, its credential or its date is not right.
        AuthenticationFailed => "AuthenticationFailedException",
        /// Authenticated, and not allowed.
        AccessDenied => "AccessDeniedException",
        /// No external key has this id.
        KeyNotFound => "KeyNotFoundException",
        /// No keystore serves this path.
        InvalidUriPath => "InvalidUriPathException",
        /// Too many requests.
        Throttling => "ThrottlingException",
        /// A value past what this proxy supports.
        UnsupportedOperation => "UnsupportedOperationException",
        /// The token did not answer in time (it is away).
        DependencyTimeout => "DependencyTimeoutException",
        /// Anything else.
        Internal => "InternalException",
    }
}

impl XksErrorName {
    /// The HTTP status the spec gives this error.
    pub fn status(self) -> u16 {
        match self {
            XksErrorName::Validation
            | XksErrorName::InvalidState
            | XksErrorName::InvalidCiphertext
            | XksErrorName::InvalidKeyUsage => 400,
            XksErrorName::AuthenticationFailed => 401,
            XksErrorName::AccessDenied => 403,
            XksErrorName::KeyNotFound | XksErrorName::InvalidUriPath => 404,
            XksErrorName::Throttling => 429,
            XksErrorName::UnsupportedOperation => 501,
            XksErrorName::DependencyTimeout => 503,
            XksErrorName::Internal => 500,
        }
    }
}

/// A refusal: the spec's error name and a sentence (printable ASCII,
/// under 512 characters, as the spec allows; KMS logs it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XksError {
    /// The spec's name, which decides the status.
    pub name: XksErrorName,
    /// What was wrong.
    pub message: String,
}

impl XksError {
    /// `name`, saying `message` (cut to what the spec allows).
    pub fn new(name: XksErrorName, message: impl Into<String>) -> XksError {
        let message: String = message
            .into()
            .chars()
            .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
            .take(MAX_ERROR_MESSAGE_CHARS)
            .collect();
        XksError { name, message }
    }

    fn validation(message: impl Into<String>) -> XksError {
        XksError::new(XksErrorName::Validation, message)
    }
}

/// The spec's bound on `errorMessage`.
const MAX_ERROR_MESSAGE_CHARS: usize = 511;

/// The four calls of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XksCall {
    /// `POST …/kms/xks/v1/health`.
    GetHealthStatus,
    /// `POST …/keys/{externalKeyId}/metadata`.
    GetKeyMetadata,
    /// `POST …/keys/{externalKeyId}/encrypt`.
    Encrypt,
    /// `POST …/keys/{externalKeyId}/decrypt`.
    Decrypt,
}

/// `requestMetadata`, as decoded; the fields the spec names (it may add
/// more, which are ignored).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestMetadata {
    /// The AWS principal that called KMS.
    pub aws_principal_arn: Option<String>,
    /// The KMS key backed by the external key.
    pub kms_key_arn: Option<String>,
    /// The KMS operation (never refused for being unfamiliar).
    pub kms_operation: Option<String>,
    /// KMS's id of the request (never checked for its shape).
    pub kms_request_id: Option<String>,
    /// The caller's VPC, when it came through one.
    pub aws_source_vpc: Option<String>,
    /// The caller's VPC endpoint.
    pub aws_source_vpce: Option<String>,
    /// The AWS service that called KMS on the principal's behalf.
    pub kms_via_service: Option<String>,
}

/// ARNs run to 2048 characters; the other fields are shorter.
const MAX_METADATA_CHARS: usize = 2048;

impl RequestMetadata {
    /// Whether the fields the spec requires of `call` are present (the
    /// test client sends `kmsKeyArn` to GetKeyMetadata too: accepted).
    pub fn check(&self, call: XksCall) -> Result<(), XksError> {
        let required: &[(&str, &Option<String>)] = match call {
            XksCall::GetHealthStatus => &[
                ("kmsRequestId", &self.kms_request_id),
                ("kmsOperation", &self.kms_operation),
            ],
            XksCall::GetKeyMetadata => &[
                ("awsPrincipalArn", &self.aws_principal_arn),
                ("kmsOperation", &self.kms_operation),
                ("kmsRequestId", &self.kms_request_id),
            ],
            XksCall::Encrypt | XksCall::Decrypt => &[
                ("awsPrincipalArn", &self.aws_principal_arn),
                ("kmsKeyArn", &self.kms_key_arn),
                ("kmsOperation", &self.kms_operation),
                ("kmsRequestId", &self.kms_request_id),
            ],
        };
        for (name, value) in required {
            if value.as_deref().is_none_or(str::is_empty) {
                return Err(XksError::validation(format!(
                    "requestMetadata.{name} is required"
                )));
            }
        }
        let all = [
            ("awsPrincipalArn", &self.aws_principal_arn),
            ("kmsKeyArn", &self.kms_key_arn),
            ("kmsOperation", &self.kms_operation),
            ("kmsRequestId", &self.kms_request_id),
            ("awsSourceVpc", &self.aws_source_vpc),
            ("awsSourceVpce", &self.aws_source_vpce),
            ("kmsViaService", &self.kms_via_service),
        ];
        for (name, value) in all {
            if value
                .as_ref()
                .is_some_and(|v| v.chars().count() > MAX_METADATA_CHARS)
            {
                return Err(XksError::validation(format!(
                    "requestMetadata.{name} is longer than {MAX_METADATA_CHARS} characters"
                )));
            }
        }
        Ok(())
    }
}

/// The only `encryptionAlgorithm`.
pub const AES_GCM: &str = "AES_GCM";
/// The only `ciphertextDataIntegrityValueAlgorithm`.
pub const SHA_256: &str = "SHA_256";
/// The most plaintext encrypted in one call: the spec asks for 4300 bytes;
/// past this, `UnsupportedOperationException`.
pub const MAX_PLAINTEXT_BYTES: usize = 8192;
/// The most additional data: the spec asks for 8192 bytes.
pub const MAX_AAD_BYTES: usize = 16384;
/// The spec's bound on `ciphertextMetadata`.
pub const MAX_CIPHERTEXT_METADATA_BYTES: usize = 20;
/// The IV lengths the spec allows.
pub const IV_BYTES: [usize; 2] = [12, 16];
/// The tag length the spec requires.
pub const TAG_BYTES: usize = 16;

/// What this proxy puts in `ciphertextMetadata`: the version of how it
/// builds the additional data it authenticates, as the spec recommends, so
/// that a later way can still decrypt what this one encrypted.
pub const CIPHERTEXT_METADATA_V1: &[u8] = b"luna-cckm/1";

/// An Encrypt request's fields, decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncryptRequest {
    /// `plaintext`.
    pub plaintext: Vec<u8>,
    /// `additionalAuthenticatedData` (empty when absent).
    pub aad: Vec<u8>,
    /// `encryptionAlgorithm`.
    pub encryption_algorithm: Option<String>,
    /// `ciphertextDataIntegrityValueAlgorithm`.
    pub integrity_algorithm: Option<String>,
}

/// A Decrypt request's fields, decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecryptRequest {
    /// `ciphertext`.
    pub ciphertext: Vec<u8>,
    /// `ciphertextMetadata` (empty when absent).
    pub metadata: Vec<u8>,
    /// `additionalAuthenticatedData` (empty when absent).
    pub aad: Vec<u8>,
    /// `initializationVector`.
    pub iv: Vec<u8>,
    /// `authenticationTag`.
    pub tag: Vec<u8>,
    /// `encryptionAlgorithm`.
    pub encryption_algorithm: Option<String>,
}

fn check_algorithm(given: Option<&str>) -> Result<(), XksError> {
    match given {
        Some(AES_GCM) => Ok(()),
        Some(other) => Err(XksError::validation(format!(
            "encryptionAlgorithm {other:?} is not supported; it must be {AES_GCM}"
        ))),
        None => Err(XksError::validation("encryptionAlgorithm is required")),
    }
}

fn check_aad(aad: &[u8]) -> Result<(), XksError> {
    if aad.len() > MAX_AAD_BYTES {
        return Err(XksError::new(
            XksErrorName::UnsupportedOperation,
            format!("additionalAuthenticatedData holds more than {MAX_AAD_BYTES} bytes"),
        ));
    }
    Ok(())
}

impl EncryptRequest {
    /// Whether the request may be encrypted; whether it asked for the
    /// ciphertext's integrity value.
    pub fn check(&self) -> Result<bool, XksError> {
        check_algorithm(self.encryption_algorithm.as_deref())?;
        if self.plaintext.len() > MAX_PLAINTEXT_BYTES {
            return Err(XksError::new(
                XksErrorName::UnsupportedOperation,
                format!("plaintext holds more than {MAX_PLAINTEXT_BYTES} bytes"),
            ));
        }
        check_aad(&self.aad)?;
        match self.integrity_algorithm.as_deref() {
            None => Ok(false),
            Some(SHA_256) => Ok(true),
            Some(other) => Err(XksError::validation(format!(
                "ciphertextDataIntegrityValueAlgorithm {other:?} is not supported; it must be {SHA_256}"
            ))),
        }
    }
}

impl DecryptRequest {
    /// Whether the request may be decrypted: an IV and a tag of the
    /// lengths the spec allows (else the ciphertext cannot be this proxy's).
    pub fn check(&self) -> Result<(), XksError> {
        check_algorithm(self.encryption_algorithm.as_deref())?;
        if self.metadata.len() > MAX_CIPHERTEXT_METADATA_BYTES {
            return Err(XksError::validation(format!(
                "ciphertextMetadata holds more than {MAX_CIPHERTEXT_METADATA_BYTES} bytes"
            )));
        }
        if self.ciphertext.len() > MAX_PLAINTEXT_BYTES {
            return Err(XksError::new(
                XksErrorName::UnsupportedOperation,
                format!("ciphertext holds more than {MAX_PLAINTEXT_BYTES} bytes"),
            ));
        }
        check_aad(&self.aad)?;
        if !IV_BYTES.contains(&self.iv.len()) {
            return Err(XksError::new(
                XksErrorName::InvalidCiphertext,
                format!(
                    "initializationVector holds {} bytes; it must hold 12 or 16",
                    self.iv.len()
                ),
            ));
        }
        if self.tag.len() != TAG_BYTES {
            return Err(XksError::new(
                XksErrorName::InvalidCiphertext,
                format!(
                    "authenticationTag holds {} bytes; it must hold {TAG_BYTES}",
                    self.tag.len()
                ),
            ));
        }
        Ok(())
    }
}

/// The additional data the token authenticates, as the spec builds it:
/// the request's data, then the ciphertext metadata, each after its length
/// (two bytes, big-endian; one byte). Checked lengths make it unambiguous.
pub fn gcm_aad(aad: &[u8], metadata: &[u8]) -> Vec<u8> {
    let aad_len = u16::try_from(aad.len()).unwrap_or(u16::MAX);
    let metadata_len = u8::try_from(metadata.len()).unwrap_or(u8::MAX);
    let mut out = Vec::with_capacity(3 + aad.len() + metadata.len());
    out.extend_from_slice(&aad_len.to_be_bytes());
    out.extend_from_slice(aad);
    out.push(metadata_len);
    out.extend_from_slice(metadata);
    out
}

/// The input of `ciphertextDataIntegrityValue` (its SHA-256, base64, is the
/// edge's): the request's data, metadata, IV, ciphertext and tag, with no
/// lengths (the spec's Appendix C).
pub fn integrity_input(aad: &[u8], metadata: &[u8], iv: &[u8], ciphertext: &[u8], tag: &[u8]) -> Vec<u8> {
    [aad, metadata, iv, ciphertext, tag].concat()
}

/// What an external key answers to GetKeyMetadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalKey {
    /// Always `AES_256`: KMS takes no other.
    pub key_spec: &'static str,
    /// `ENCRYPT`, `DECRYPT`, and the other uses its attributes allow.
    pub key_usage: Vec<&'static str>,
    /// Always `ENABLED`: a key that cannot be used is refused instead.
    pub key_status: &'static str,
}

impl ExternalKey {
    /// `key` as an external key: an AES-256 secret key that is AVAILABLE.
    /// A key destroyed, or whose create failed, is not found; one being
    /// made or changed is in no state to be used; any other is not an
    /// external key.
    pub fn of(key: &Key) -> Result<ExternalKey, XksError> {
        match key.lifecycle().status() {
            KeyStatus::Available => {}
            KeyStatus::Deleted => {
                return Err(XksError::new(
                    XksErrorName::KeyNotFound,
                    "the key was destroyed on the HSM",
                ))
            }
            KeyStatus::Failed => {
                return Err(XksError::new(
                    XksErrorName::KeyNotFound,
                    "the key's create failed: no such key was made",
                ))
            }
            KeyStatus::InProgress => {
                return Err(XksError::new(
                    XksErrorName::InvalidState,
                    "the key is being made or changed; try again when it is AVAILABLE",
                ))
            }
        }
        let aes_256 = key.algorithm == Some(Algorithm::Aes)
            && key.object_type == Some(ObjectType::SecretKey)
            && key.size == 256;
        if !aes_256 {
            return Err(XksError::new(
                XksErrorName::KeyNotFound,
                "the key is no AES-256 secret key, which an external key must be",
            ));
        }
        let usage = [
            (Attribute::Encrypt, "ENCRYPT"),
            (Attribute::Decrypt, "DECRYPT"),
            (Attribute::Wrap, "WRAP"),
            (Attribute::Unwrap, "UNWRAP"),
            (Attribute::Derive, "DERIVE"),
        ];
        Ok(ExternalKey {
            key_spec: "AES_256",
            key_usage: usage
                .iter()
                .filter(|(attribute, _)| key.attributes.contains(*attribute))
                .map(|(_, name)| *name)
                .collect(),
            key_status: "ENABLED",
        })
    }

    /// Whether an Encrypt may answer `ciphertextDataIntegrityValue`: the
    /// proxy vouches for the ciphertext only once it has decrypted it
    /// (the spec's advice), so the key must allow DECRYPT too.
    pub fn allows_integrity_value(&self) -> Result<(), XksError> {
        if self.key_usage.contains(&"DECRYPT") {
            Ok(())
        } else {
            Err(XksError::new(
                XksErrorName::InvalidKeyUsage,
                "ciphertextDataIntegrityValue is given only for what the proxy has decrypted again, and the key does not allow DECRYPT (CKA_DECRYPT is false)",
            ))
        }
    }

    /// Whether the key may be used for `call`: encrypt needs `CKA_ENCRYPT`,
    /// decrypt `CKA_DECRYPT` (the token holds the key to the same).
    pub fn allows(&self, call: XksCall) -> Result<(), XksError> {
        let (needed, attribute) = match call {
            XksCall::Encrypt => ("ENCRYPT", "CKA_ENCRYPT"),
            XksCall::Decrypt => ("DECRYPT", "CKA_DECRYPT"),
            XksCall::GetHealthStatus | XksCall::GetKeyMetadata => return Ok(()),
        };
        if self.key_usage.contains(&needed) {
            Ok(())
        } else {
            Err(XksError::new(
                XksErrorName::InvalidKeyUsage,
                format!("the key does not allow {needed} ({attribute} is false)"),
            ))
        }
    }
}

#[cfg(test)]
mod tests;
