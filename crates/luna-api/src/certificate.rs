//! An HSM server's certificate, read from the PEM a client sends
//! (`hsm_certificate`): what it says, for the record and the answer.

use luna_domain::ServerCertificate;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use x509_cert::der::{DecodePem, Encode};

use crate::error::ApiError;

/// The largest certificate taken, in bytes of PEM (a server certificate is
/// a few kilobytes; a chain of them a few more).
pub const MAX_PEM_BYTES: usize = 32 * 1024;

/// Reads one X.509 certificate in PEM; anything else is a 400 saying what
/// was wrong.
pub fn read_server_certificate(pem: &str) -> Result<ServerCertificate, ApiError> {
    let refuse = |why: String| ApiError::BadRequest(format!("hsm_certificate {why}"));
    if pem.trim().is_empty() {
        return Err(refuse(
            "is required: the HSM's server certificate, PEM (-----BEGIN CERTIFICATE-----…)".into(),
        ));
    }
    if pem.len() > MAX_PEM_BYTES {
        return Err(refuse(format!("is longer than {MAX_PEM_BYTES} bytes")));
    }
    let certificate = x509_cert::Certificate::from_pem(pem.trim().as_bytes())
        .map_err(|e| refuse(format!("is not one X.509 certificate in PEM ({e})")))?;
    let der = certificate
        .to_der()
        .map_err(|e| refuse(format!("could not be encoded again ({e})")))?;
    let validity = &certificate.tbs_certificate.validity;
    let time = |t: x509_cert::time::Time| {
        OffsetDateTime::from_unix_timestamp(t.to_unix_duration().as_secs() as i64)
            .map_err(|e| refuse(format!("has a validity time out of range ({e})")))
    };
    Ok(ServerCertificate {
        pem: pem.trim().to_owned(),
        subject: certificate.tbs_certificate.subject.to_string(),
        issuer: certificate.tbs_certificate.issuer.to_string(),
        not_before: time(validity.not_before)?,
        not_after: time(validity.not_after)?,
        sha256_fingerprint: hex::encode(Sha256::digest(&der)),
    })
}

/// The common names (`CN=`) of a certificate's subject, from its DER; none
/// if it does not parse (the TLS layer has checked it already).
pub fn common_names(der: &[u8]) -> Vec<String> {
    use x509_cert::der::Decode;
    let Ok(certificate) = x509_cert::Certificate::from_der(der) else {
        return Vec::new();
    };
    certificate
        .tbs_certificate
        .subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .filter(|attribute| attribute.oid == x509_cert::der::oid::db::rfc4519::CN)
        .filter_map(|attribute| {
            x509_cert::der::asn1::Utf8StringRef::try_from(&attribute.value)
                .map(|s| s.as_str().to_owned())
                .or_else(|_| {
                    x509_cert::der::asn1::PrintableStringRef::try_from(&attribute.value)
                        .map(|s| s.as_str().to_owned())
                })
                .ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_is_read_and_anything_else_is_a_400_that_says_why() {
        let mut params = rcgen::CertificateParams::new(vec!["hsm1.example".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "hsm1.example");
        let key = rcgen::KeyPair::generate().unwrap();
        let made = params.self_signed(&key).unwrap();
        let read = read_server_certificate(&made.pem()).unwrap();
        assert_eq!(read.subject, "CN=hsm1.example");
        assert_eq!(common_names(made.der()), ["hsm1.example"]);
        assert!(common_names(b"not a certificate").is_empty());
        assert_eq!(read.issuer, "CN=hsm1.example");
        assert_eq!(read.sha256_fingerprint, hex::encode(Sha256::digest(made.der())));
        assert!(read.not_after > read.not_before);
        for (pem, says) in [
            ("", "is required"),
            ("hello", "is not one X.509 certificate in PEM"),
            (
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----",
                "is not one X.509 certificate",
            ),
        ] {
            let error = read_server_certificate(pem).unwrap_err().to_string();
            assert!(error.contains(says), "{error}");
        }
        let huge = format!("{}{}", made.pem(), " ".repeat(MAX_PEM_BYTES));
        let error = read_server_certificate(&huge).unwrap_err().to_string();
        assert!(error.contains("longer than 32768 bytes"), "{error}");
    }
}
