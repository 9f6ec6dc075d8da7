//! AWS Signature Version 4, as a server checks it: the request made
//! canonical again from what arrived, the signing key derived from the
//! secret of the access key id the `Authorization` header names, the
//! signature compared in constant time, and the request's date held within
//! five minutes of the server's clock. An AWS KMS external key store signs
//! every call so (service `kms-xks-proxy`); the XKS routes (luna-api `xks`) check
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
            // Each once: a second would leave which one was checked to chance.
            Some(("Credential", v)) if credential.is_none() => credential = Some(v),
            Some(("SignedHeaders", v)) if signed.is_none() => signed = Some(v),
            Some(("Signature", v)) if signature.is_none() => signature = Some(v),
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

/// What is signed: the request made canonical (its signed headers, already
/// lower-cased and trimmed, in the order signed), hashed, under the date and
/// scope. The path as sent: the XKS API's paths hold unreserved characters
/// and slashes only, which URI encoding leaves as they are. (A path needing
/// encoding would not match, and no keystore or key would answer it.)
fn string_to_sign(
    request: &ArrivedRequest<'_>,
    signed_headers: &[(String, String)],
    amz_date: &str,
    scope: &str,
) -> String {
    let canonical_headers: String = signed_headers
        .iter()
        .map(|(name, value)| format!("{name}:{value}\n"))
        .collect();
    let names: Vec<&str> = signed_headers.iter().map(|(name, _)| name.as_str()).collect();
    let canonical_request = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        request.method,
        request.path,
        canonical_query(request.query),
        canonical_headers,
        names.join(";"),
        hex::encode(Sha256::digest(request.body)),
    );
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    )
}

/// The HMAC of `string_to_sign` under the key derived from `secret` for
/// the day, region and service.
fn signed(
    secret: &SecretString,
    day: &str,
    region: &str,
    service: &str,
    string_to_sign: &str,
) -> Result<HmacSha256, Refusal> {
    let mut signing = format!("AWS4{}", secret.expose_secret()).into_bytes();
    for part in [day, region, service, "aws4_request"] {
        signing = keyed(&signing, part.as_bytes())?.finalize().into_bytes().to_vec();
    }
    keyed(&signing, string_to_sign.as_bytes())
}

/// The `X-Amz-Date` and `Authorization` headers that sign a POST of `body`
/// to `path` on `host` (with `Content-Type: application/json`) at `now`:
/// a caller's side, for the benchmark's client (tests sign with curl and
/// botocore, which are not this code).
pub fn sign(
    path: &str,
    host: &str,
    body: &[u8],
    (access_key_id, secret): (&str, &SecretString),
    (region, service): (&str, &str),
    now: OffsetDateTime,
) -> [(String, String); 2] {
    let amz_date = format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    );
    let day = &amz_date[..8];
    let scope = format!("{day}/{region}/{service}/aws4_request");
    let signed_headers = [
        ("content-type".to_owned(), "application/json".to_owned()),
        ("host".to_owned(), host.to_owned()),
        ("x-amz-date".to_owned(), amz_date.clone()),
    ];
    let request = ArrivedRequest {
        method: "POST",
        path,
        query: "",
        headers: &[],
        body,
    };
    let to_sign = string_to_sign(&request, &signed_headers, &amz_date, &scope);
    let signature = signed(secret, day, region, service, &to_sign)
        .map(|mac| hex::encode(mac.finalize().into_bytes()))
        .unwrap_or_default();
    [
        ("X-Amz-Date".to_owned(), amz_date),
        (
            "Authorization".to_owned(),
            format!(
                "{ALGORITHM} Credential={access_key_id}/{scope}, SignedHeaders=content-type;host;x-amz-date, Signature={signature}"
            ),
        ),
    ]
}

/// Checks `request`'s signature against the secrets `secrets_of` gives for
/// the access key id it names (one per access key id: a rotation makes a new id), as
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
    // Echoed in the refusal: a sane date's length at most.
    let shown = || amz_date.chars().take(32).collect::<String>();
    let dated = amz_date_time(&amz_date).ok_or_else(|| Refusal::BadDate(shown()))?;
    if (dated - now).abs() > CLOCK_SKEW {
        return Err(Refusal::Stale(shown()));
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
    let mut canonical_headers = Vec::new();
    for name in &auth.signed_headers {
        let value = header(request.headers, name).ok_or(Refusal::Missing("signed"))?;
        canonical_headers.push(((*name).to_owned(), value));
    }
    let string_to_sign = string_to_sign(request, &canonical_headers, &amz_date, &scope);
    let presented = hex::decode(auth.signature).map_err(|_| Refusal::Mismatch)?;
    let secrets = secrets_of(auth.access_key_id);
    if secrets.is_empty() {
        return Err(Refusal::UnknownAccessKey);
    }
    for secret in &secrets {
        if signed(secret, auth.date, auth.region, auth.service, &string_to_sign)?
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
