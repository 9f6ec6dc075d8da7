//! AWS Signature Version 4, as a server checks it: the request made
//! canonical again from what arrived, the signing key derived from the
//! secret of the access key id the `Authorization` header names, the
//! signature compared in constant time, and the request's date held within
//! five minutes of the server's clock. An AWS KMS external key store signs
//! every call so (service `kms-xks-proxy`); issue 30's routes will check
//! them here.

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime, PrimitiveDateTime};

type HmacSha256 = Hmac<Sha256>;

/// The only algorithm.
const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// How far a request's date may be from the server's clock.
pub const CLOCK_SKEW: Duration = Duration::minutes(5);

/// A request as it arrived: its method, its path and query as sent, its
/// headers (names in any case), its body.
#[derive(Debug)]
pub struct ArrivedRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

/// Why a signature was not taken; each is the spec's authentication failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the request has no {0} header")]
    Missing(&'static str),
    #[error("the Authorization header is not AWS4-HMAC-SHA256 with Credential, SignedHeaders and Signature")]
    Malformed,
    #[error("the signature's scope is {scope:?}; this server takes {expected:?}")]
    WrongScope { scope: String, expected: String },
    #[error("SignedHeaders must include host and x-amz-date")]
    UnsignedHeaders,
    #[error("x-amz-date {0:?} is not YYYYMMDDTHHMMSSZ")]
    BadDate(String),
    #[error("the request is dated {0}, more than five minutes from this server's clock")]
    Stale(String),
    #[error("no credential has the access key id the request names")]
    UnknownAccessKey,
    #[error("the signature does not match the request")]
    Mismatch,
}

/// The parts of an `Authorization: AWS4-HMAC-SHA256 …` header.
struct Authorization<'a> {
    access_key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn parse_authorization(value: &str) -> Result<Authorization<'_>, Refusal> {
    let rest = value.strip_prefix(ALGORITHM).ok_or(Refusal::Malformed)?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        match part.trim().split_once('=') {
            Some(("Credential", v)) => credential = Some(v),
            Some(("SignedHeaders", v)) => signed = Some(v),
            Some(("Signature", v)) => signature = Some(v),
            _ => return Err(Refusal::Malformed),
        }
    }
    let credential: Vec<&str> = credential.ok_or(Refusal::Malformed)?.split('/').collect();
    let [access_key_id, date, region, service, "aws4_request"] = credential.as_slice() else {
        return Err(Refusal::Malformed);
    };
    let signed_headers: Vec<&str> = signed.ok_or(Refusal::Malformed)?.split(';').collect();
    if !signed_headers.contains(&"host") || !signed_headers.contains(&"x-amz-date") {
        return Err(Refusal::UnsignedHeaders);
    }
    Ok(Authorization {
        access_key_id,
        date,
        region,
        service,
        signed_headers,
        signature: signature.ok_or(Refusal::Malformed)?,
    })
}

/// The value of every header named `name` (any case), joined by commas.
fn header(headers: &[(String, String)], name: &str) -> Option<String> {
    let values: Vec<String> = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

/// The query string as the signer made it canonical: pairs sorted, each
/// name and value as sent (this API's requests carry none).
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(&str, &str)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    pairs.sort_unstable();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// An `X-Amz-Date` (`20261207T180000Z`) as an instant.
fn amz_date_time(text: &str) -> Option<OffsetDateTime> {
    let format =
        time::format_description::parse_borrowed::<2>("[year][month][day]T[hour][minute][second]Z").ok()?;
    PrimitiveDateTime::parse(text, &format)
        .ok()
        .map(PrimitiveDateTime::assume_utc)
}

/// HMAC-SHA256 keyed with `key` over `data` (HMAC takes keys of any length:
/// the refusal cannot happen).
fn keyed(key: &[u8], data: &[u8]) -> Result<HmacSha256, Refusal> {
    let mut mac = HmacSha256::new_from_slice(key).map_err(|_| Refusal::Mismatch)?;
    mac.update(data);
    Ok(mac)
}

/// Checks `request`'s signature against the secrets `secrets_of` gives for
/// the access key id it names (several while a credential is rotated), as
/// of `now`, for `region` and `service`. The access key id it was signed
/// with, if good.
pub fn verify(
    request: &ArrivedRequest<'_>,
    region: &str,
    service: &str,
    now: OffsetDateTime,
    secrets_of: impl FnOnce(&str) -> Vec<SecretString>,
) -> Result<String, Refusal> {
    let authorization = header(request.headers, "authorization").ok_or(Refusal::Missing("Authorization"))?;
    let auth = parse_authorization(&authorization)?;
    // The first, if it came more than once (curl repeats one it was given).
    let amz_date = header(request.headers, "x-amz-date")
        .and_then(|dates| dates.split(',').next().map(str::to_owned))
        .ok_or(Refusal::Missing("X-Amz-Date"))?;
    let dated = amz_date_time(&amz_date).ok_or_else(|| Refusal::BadDate(amz_date.clone()))?;
    if (dated - now).abs() > CLOCK_SKEW {
        return Err(Refusal::Stale(amz_date));
    }
    let scope = format!("{}/{}/{}/aws4_request", auth.date, auth.region, auth.service);
    let day = format!(
        "{:04}{:02}{:02}",
        dated.year(),
        u8::from(dated.month()),
        dated.day()
    );
    let expected = format!("{day}/{region}/{service}/aws4_request");
    if scope != expected {
        return Err(Refusal::WrongScope { scope, expected });
    }
    let mut canonical_headers = String::new();
    for name in &auth.signed_headers {
        let value = header(request.headers, name).ok_or(Refusal::Missing("signed"))?;
        canonical_headers.push_str(&format!("{name}:{value}\n"));
    }
    // The path as sent: the XKS API's paths hold unreserved characters and
    // slashes only, which URI encoding leaves as they are. (A path needing
    // encoding would not match, and no keystore or key would answer it.)
    let canonical_request = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        request.method,
        request.path,
        canonical_query(request.query),
        canonical_headers,
        auth.signed_headers.join(";"),
        hex::encode(Sha256::digest(request.body)),
    );
    let string_to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let presented = hex::decode(auth.signature).map_err(|_| Refusal::Mismatch)?;
    let secrets = secrets_of(auth.access_key_id);
    if secrets.is_empty() {
        return Err(Refusal::UnknownAccessKey);
    }
    for secret in &secrets {
        let mut signing = format!("AWS4{}", secret.expose_secret()).into_bytes();
        for part in [auth.date, auth.region, auth.service, "aws4_request"] {
            signing = keyed(&signing, part.as_bytes())?.finalize().into_bytes().to_vec();
        }
        if keyed(&signing, string_to_sign.as_bytes())?
            .verify_slice(&presented)
            .is_ok()
        {
            return Ok(auth.access_key_id.to_owned());
        }
    }
    Err(Refusal::Mismatch)
}

#[cfg(test)]
mod tests;
