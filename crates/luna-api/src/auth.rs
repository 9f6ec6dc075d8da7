//! Bearer tokens (HS256 JWTs with a pinned algorithm), password hashing,
//! refresh tokens, and the extractor every protected route takes.

use std::future::{ready, Ready};
use std::path::Path;

use actix_web::{web, FromRequest, HttpRequest};
use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

use crate::error::ApiError;
use crate::state::AppState;

const ISSUER: &str = "luna-cckm";
const SIGNING_KEY_LEN: usize = 64;
/// How long a refresh token may be used, once.
pub const REFRESH_TOKEN_TTL: Duration = Duration::hours(24);

/// Signs and checks bearer tokens. The key never leaves the data directory.
pub struct Auth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    /// Token lifetime in seconds (`duration` in the token answer).
    pub duration: i64,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("duration", &self.duration)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Custom {
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub iss: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
    pub preferred_username: String,
    pub cust: Custom,
}

impl Auth {
    pub fn new(key: &[u8], duration: i64) -> Auth {
        // One algorithm, pinned: `alg: none` and any other algorithm are refused.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "sub"]);
        validation.leeway = 5;
        Auth {
            encoding: EncodingKey::from_secret(key),
            decoding: DecodingKey::from_secret(key),
            validation,
            duration,
        }
    }

    /// Uses `<data-dir>/jwt.key`, creating it (mode 0600) on first start.
    pub fn from_key_file(path: &Path, duration: i64) -> Result<Auth, luna_store::StoreError> {
        let key = luna_store::load_or_create_key_file(path, SIGNING_KEY_LEN)?;
        Ok(Auth::new(&key, duration))
    }

    pub fn issue(
        &self,
        user_id: &str,
        username: &str,
        groups: &[String],
        now: OffsetDateTime,
    ) -> Result<String, ApiError> {
        let claims = Claims {
            sub: user_id.to_owned(),
            iss: ISSUER.into(),
            iat: now.unix_timestamp(),
            exp: now.unix_timestamp() + self.duration,
            jti: uuid::Uuid::new_v4().to_string(),
            preferred_username: username.to_owned(),
            cust: Custom {
                groups: groups.to_vec(),
            },
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| ApiError::Internal(format!("signing a token: {e}")))
    }

    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                ApiError::Unauthorized(match e.kind() {
                    ErrorKind::ExpiredSignature => "the bearer token has expired; ask for a new one".into(),
                    _ => "the bearer token is not valid".into(),
                })
            })
    }
}

/// An argon2id hash (PHC string) with a fresh salt.
pub fn hash_password(password: &SecretString) -> Result<String, ApiError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.expose_secret().as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ApiError::Internal(format!("hashing a password: {e}")))
}

/// A real hash of nothing anyone knows: checking a password against it costs
/// what a real check costs, so an unknown user name is not told apart by time.
pub fn unknown_user_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| {
        let mut random = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut random);
        hash_password(&SecretString::from(hex::encode(random))).unwrap_or_default()
    })
}

/// Checks a password against a stored hash; a malformed hash never matches.
pub fn verify_password(hash: &str, password: &SecretString) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.expose_secret().as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A new refresh token, and the hash under which it is stored.
pub fn new_refresh_token() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token = hex::encode(bytes);
    let hash = refresh_token_hash(&token);
    (token, hash)
}

pub fn refresh_token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The caller, proven by a valid bearer token. Every protected handler takes one.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user_id: String,
    pub username: String,
    pub groups: Vec<String>,
}

impl FromRequest for Principal {
    type Error = ApiError;
    type Future = Ready<Result<Principal, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        ready(principal(req))
    }
}

fn principal(req: &HttpRequest) -> Result<Principal, ApiError> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or_else(|| ApiError::Internal("application state is missing".into()))?;
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .ok_or_else(|| {
            ApiError::Unauthorized("an Authorization: Bearer <token> header is required".into())
        })?;
    let token = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::Unauthorized("the Authorization header must be Bearer <token>".into()))?;
    let claims = state.auth.verify(token)?;
    Ok(Principal {
        user_id: claims.sub,
        username: claims.preferred_username,
        groups: claims.cust.groups,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_with_fresh_salts_and_verify() {
        let password = SecretString::from("correct horse");
        let a = hash_password(&password).unwrap();
        let b = hash_password(&password).unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("$argon2id$"));
        assert!(verify_password(&a, &password));
        assert!(!verify_password(&a, &SecretString::from("wrong")));
        assert!(!verify_password("not a hash", &password));
    }

    #[test]
    fn tokens_verify_only_with_the_key_that_signed_them() {
        let auth = Auth::new(&[7; 64], 300);
        let token = auth
            .issue("u1", "admin", &["admin".into()], OffsetDateTime::now_utc())
            .unwrap();
        let claims = auth.verify(&token).unwrap();
        assert_eq!(
            (claims.preferred_username.as_str(), claims.cust.groups.as_slice()),
            ("admin", &["admin".to_string()][..])
        );
        assert!(Auth::new(&[8; 64], 300).verify(&token).is_err());
        let old = auth
            .issue(
                "u1",
                "admin",
                &[],
                OffsetDateTime::now_utc() - Duration::seconds(400),
            )
            .unwrap();
        assert_eq!(
            auth.verify(&old).unwrap_err().to_string(),
            "the bearer token has expired; ask for a new one"
        );
    }
}

/// CipherTrust's groups, as they appear in a user's `groups`.
pub const ADMIN_GROUP: &str = "admin";
pub const CCKM_ADMINS: &str = "CCKM Admins";
pub const CCKM_USERS: &str = "CCKM Users";
pub const GROUPS: &[&str] = &[ADMIN_GROUP, CCKM_ADMINS, CCKM_USERS];

/// What a route needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Read keys, partitions and jobs: every CCKM group.
    Read,
    /// Change keys, partitions and jobs: `admin` and `CCKM Admins`.
    Manage,
    /// Users and connections: `admin` only.
    Administer,
}

impl Principal {
    pub fn may(&self, role: Role) -> bool {
        let member = |group: &str| self.groups.iter().any(|g| g == group);
        match role {
            Role::Read => member(ADMIN_GROUP) || member(CCKM_ADMINS) || member(CCKM_USERS),
            Role::Manage => member(ADMIN_GROUP) || member(CCKM_ADMINS),
            Role::Administer => member(ADMIN_GROUP),
        }
    }
}

/// Extractors that admit a caller only in a role: a handler's signature says
/// what it needs. Groups come from the bearer token (fixed when it was issued).
macro_rules! role_extractor {
    ($(#[$meta:meta])* $name:ident, $role:expr, $what:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone)]
        pub struct $name(pub Principal);

        impl FromRequest for $name {
            type Error = ApiError;
            type Future = Ready<Result<$name, ApiError>>;

            fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
                ready(principal(req).and_then(|caller| {
                    if caller.may($role) {
                        Ok($name(caller))
                    } else {
                        Err(ApiError::Forbidden(format!(
                            "user {:?} may not {}; that needs {}",
                            caller.username,
                            $what,
                            match $role {
                                Role::Read => "a CCKM group (admin, CCKM Admins or CCKM Users)",
                                Role::Manage => "the admin or CCKM Admins group",
                                Role::Administer => "the admin group",
                            }
                        )))
                    }
                }))
            }
        }
    };
}

role_extractor!(
    /// Reads keys, partitions and jobs.
    Reader, Role::Read, "read Luna keys, partitions or jobs"
);
role_extractor!(
    /// Changes keys, partitions and jobs.
    Manager, Role::Manage, "change Luna keys, partitions or jobs"
);
role_extractor!(
    /// Manages users and connections.
    Administrator, Role::Administer, "manage users or connections"
);
