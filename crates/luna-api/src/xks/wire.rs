//! The XKS proxy API's request bodies: its field names, base64 for bytes,
//! and what is wrong with a body as the spec's `ValidationException`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use luna_domain::xks::{DecryptRequest, EncryptRequest, RequestMetadata, XksError, XksErrorName};
use serde::Deserialize;

fn invalid(message: String) -> XksError {
    XksError::new(XksErrorName::Validation, message)
}

/// A base64 field; `None` when absent.
fn decode(field: &str, value: Option<&str>) -> Result<Option<Vec<u8>>, XksError> {
    value
        .map(|text| {
            STANDARD
                .decode(text)
                .map_err(|_| invalid(format!("{field} is not base64")))
        })
        .transpose()
}

/// A base64 field the call cannot go without.
fn required(field: &str, value: Option<&str>) -> Result<Vec<u8>, XksError> {
    decode(field, value)?.ok_or_else(|| invalid(format!("{field} is required")))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetadataBody {
    aws_principal_arn: Option<String>,
    kms_key_arn: Option<String>,
    kms_operation: Option<String>,
    kms_request_id: Option<String>,
    aws_source_vpc: Option<String>,
    aws_source_vpce: Option<String>,
    kms_via_service: Option<String>,
}

/// Only the metadata of a body, which every call carries.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetadataOnly {
    request_metadata: Option<MetadataBody>,
}

/// A body's fields the spec may add to are not refused: only those this
/// proxy reads are, when they are of the wrong type.
fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, XksError> {
    serde_json::from_slice(body).map_err(|e| invalid(format!("the request body is not the call's JSON: {e}")))
}

/// The body's `requestMetadata`; a body without one is refused.
pub(super) fn metadata(body: &[u8]) -> Result<RequestMetadata, XksError> {
    let only: MetadataOnly = parse(body)?;
    let m = only
        .request_metadata
        .ok_or_else(|| invalid("requestMetadata is required".to_owned()))?;
    Ok(RequestMetadata {
        aws_principal_arn: m.aws_principal_arn,
        kms_key_arn: m.kms_key_arn,
        kms_operation: m.kms_operation,
        kms_request_id: m.kms_request_id,
        aws_source_vpc: m.aws_source_vpc,
        aws_source_vpce: m.aws_source_vpce,
        kms_via_service: m.kms_via_service,
    })
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EncryptBody {
    plaintext: Option<String>,
    additional_authenticated_data: Option<String>,
    encryption_algorithm: Option<String>,
    ciphertext_data_integrity_value_algorithm: Option<String>,
}

/// An Encrypt body, decoded.
pub(super) fn encrypt_request(body: &[u8]) -> Result<EncryptRequest, XksError> {
    let b: EncryptBody = parse(body)?;
    Ok(EncryptRequest {
        plaintext: required("plaintext", b.plaintext.as_deref())?,
        aad: decode(
            "additionalAuthenticatedData",
            b.additional_authenticated_data.as_deref(),
        )?
        .unwrap_or_default(),
        encryption_algorithm: b.encryption_algorithm,
        integrity_algorithm: b.ciphertext_data_integrity_value_algorithm,
    })
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DecryptBody {
    ciphertext: Option<String>,
    ciphertext_metadata: Option<String>,
    additional_authenticated_data: Option<String>,
    initialization_vector: Option<String>,
    authentication_tag: Option<String>,
    encryption_algorithm: Option<String>,
}

/// A Decrypt body, decoded.
pub(super) fn decrypt_request(body: &[u8]) -> Result<DecryptRequest, XksError> {
    let b: DecryptBody = parse(body)?;
    Ok(DecryptRequest {
        ciphertext: required("ciphertext", b.ciphertext.as_deref())?,
        metadata: decode("ciphertextMetadata", b.ciphertext_metadata.as_deref())?.unwrap_or_default(),
        aad: decode(
            "additionalAuthenticatedData",
            b.additional_authenticated_data.as_deref(),
        )?
        .unwrap_or_default(),
        iv: required("initializationVector", b.initialization_vector.as_deref())?,
        tag: required("authenticationTag", b.authentication_tag.as_deref())?,
        encryption_algorithm: b.encryption_algorithm,
    })
}
