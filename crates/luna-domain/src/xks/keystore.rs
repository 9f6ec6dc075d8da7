//! An external key store as this service serves it: the URI path prefix
//! AWS KMS calls, the region its signatures name, the partition whose
//! AES-256 keys are its external keys, and the SigV4 credentials it takes
//! (two at most are valid at once, so that one is rotated without downtime).

use secrecy::SecretString;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::error::{DomainError, Result};
use crate::key::{check_label, parse_id};

/// The spec's bound on the URI path prefix.
pub const MAX_URI_PATH_PREFIX_CHARS: usize = 128;

/// How long an older credential stays valid after a new one is made, when
/// the request does not say.
pub const DEFAULT_OVERLAP: Duration = Duration::hours(24);

/// The longest overlap a rotation may ask for.
pub const MAX_OVERLAP: Duration = Duration::days(30);

/// A keystore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keystore {
    /// Its id.
    pub id: Uuid,
    /// Unique among keystores.
    pub name: String,
    /// The path before `/kms/xks/v1/`, without slashes at either end; unique.
    pub uri_path_prefix: String,
    /// The AWS region its callers sign for (`us-east-1`).
    pub region: String,
    /// The partition whose keys it serves.
    pub partition_id: Uuid,
    /// When it was made.
    pub created_at: OffsetDateTime,
    /// When it last changed.
    pub updated_at: OffsetDateTime,
}

/// A keystore as a create brings it, unchecked.
#[derive(Debug, Clone, Default)]
pub struct KeystoreRequest {
    /// A label.
    pub name: Option<String>,
    /// `[A-Za-z0-9/_-]`, at most 128 characters.
    pub uri_path_prefix: Option<String>,
    /// An AWS region name.
    pub region: Option<String>,
    /// The partition's id.
    pub partition_id: Option<String>,
}

impl KeystoreRequest {
    /// The keystore `id`, made at `now`, once every field is checked.
    pub fn create(self, id: Uuid, now: OffsetDateTime) -> Result<Keystore> {
        let name = check_label("name", self.name.as_deref().unwrap_or_default())?;
        let uri_path_prefix = check_uri_path_prefix(self.uri_path_prefix.as_deref().unwrap_or_default())?;
        let region = check_region(self.region.as_deref().unwrap_or_default())?;
        let partition_id = parse_id(
            "partition_id",
            self.partition_id
                .as_deref()
                .ok_or_else(|| DomainError::invalid("partition_id is needed"))?,
        )?;
        Ok(Keystore {
            id,
            name,
            uri_path_prefix,
            region,
            partition_id,
            created_at: now,
            updated_at: now,
        })
    }
}

/// A URI path prefix as the spec allows it (`[A-Za-z0-9/_-]`, at most 128
/// characters), kept without slashes at either end and with no empty
/// segment; empty is allowed (the API at the host's root).
pub fn check_uri_path_prefix(text: &str) -> Result<String> {
    let trimmed = text.trim_matches('/');
    let allowed = |c: char| c.is_ascii_alphanumeric() || "/_-".contains(c);
    if text.chars().count() > MAX_URI_PATH_PREFIX_CHARS
        || !trimmed.chars().all(allowed)
        || trimmed.contains("//")
    {
        return Err(DomainError::invalid(format!(
            "uri_path_prefix {text:?} must be at most {MAX_URI_PATH_PREFIX_CHARS} letters, digits, '/', '_' and '-', with no empty segment"
        )));
    }
    Ok(trimmed.to_owned())
}

/// An AWS region name: lower-case letters, digits and dashes (`us-east-1`).
fn check_region(text: &str) -> Result<String> {
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    if (1..=32).contains(&text.len()) && text.chars().all(allowed) {
        Ok(text.to_owned())
    } else {
        Err(DomainError::invalid(format!(
            "region {text:?} must be an AWS region name, such as \"us-east-1\""
        )))
    }
}

/// A SigV4 credential of a keystore; its secret travels apart (made with
/// it by [`Credential::from_random`], sealed by storage, shown once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// 24 characters of `A-Z2-7` (the spec asks 20 to 30).
    pub access_key_id: String,
    /// When it was made.
    pub created_at: OffsetDateTime,
    /// When it stops being taken; `None` while it is the newest.
    pub expires_at: Option<OffsetDateTime>,
}

/// How many random bytes a credential is made from: 15 for its id, 30 for
/// its secret.
pub const CREDENTIAL_RANDOM_BYTES: usize = 45;

impl Credential {
    /// A credential made at `now` from `random` (the caller's: this crate
    /// draws none), and its secret: 48 characters of `A-Z2-7` (the spec
    /// asks 43 to 64 of base64's alphabet).
    pub fn from_random(
        random: &[u8; CREDENTIAL_RANDOM_BYTES],
        now: OffsetDateTime,
    ) -> (Credential, SecretString) {
        let (id, secret) = random.split_at(15);
        let credential = Credential {
            access_key_id: base32(id),
            created_at: now,
            expires_at: None,
        };
        (credential, SecretString::from(base32(secret)))
    }

    /// Whether it is taken at `now`.
    pub fn valid_at(&self, now: OffsetDateTime) -> bool {
        self.expires_at.is_none_or(|end| now < end)
    }
}

/// The overlap a rotation asks for, in hours ([`DEFAULT_OVERLAP`] when
/// absent; at most [`MAX_OVERLAP`]).
pub fn overlap_of(hours: Option<u32>) -> Result<Duration> {
    let overlap = hours.map_or(DEFAULT_OVERLAP, |h| Duration::hours(i64::from(h)));
    if overlap > MAX_OVERLAP {
        return Err(DomainError::invalid(format!(
            "overlap_hours must be at most {}",
            MAX_OVERLAP.whole_hours()
        )));
    }
    Ok(overlap)
}

/// When the credentials of a keystore that are still valid stop being
/// taken, once a new one is made at `now`: after `overlap` (at most
/// [`MAX_OVERLAP`]), or sooner if they were to expire sooner. Only the
/// newest of them stays for the overlap; any older one ends now, so that
/// two at most are ever valid.
pub fn rotated(
    valid: &[Credential],
    overlap: Duration,
    now: OffsetDateTime,
) -> Result<Vec<(String, OffsetDateTime)>> {
    if overlap.is_negative() || overlap > MAX_OVERLAP {
        return Err(DomainError::invalid(format!(
            "the overlap must be between 0 and {} days",
            MAX_OVERLAP.whole_days()
        )));
    }
    let newest = valid
        .iter()
        .max_by_key(|c| c.created_at)
        .map(|c| c.access_key_id.clone());
    Ok(valid
        .iter()
        .map(|c| {
            let end = if Some(&c.access_key_id) == newest.as_ref() {
                let end = now + overlap;
                c.expires_at.map_or(end, |e| e.min(end))
            } else {
                now
            };
            (c.access_key_id.clone(), end)
        })
        .collect())
}

/// RFC 4648 base32, upper case, no padding (whole 5-byte groups here).
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(bytes.len() * 8 / 5 + 1);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for byte in bytes {
        buffer = (buffer << 8) | u32::from(*byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

#[cfg(test)]
mod tests;
