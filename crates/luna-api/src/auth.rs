//! Bearer tokens (HS256 JWTs with a pinned algorithm), password hashing,
//! refresh tokens, login sessions, and the extractor every protected route
//! takes.
//!
//! Every access token names its login session (`sid`). A token is accepted
//! while its signature, issuer and `exp` hold (no leeway) and its session is
//! open in the database: logging out, a change of the user's password or
//! groups and the user's deletion end sessions, so their tokens are refused
//! at once on this instance and within `SESSION_RECHECK` on every other
//! instance sharing the database.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::time::Instant;

use actix_web::{web, FromRequest, HttpRequest};
use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use parking_lot::Mutex;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::error::ApiError;
use luna_store::Store;

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
    /// The login session the token belongs to.
    pub sid: String,
    pub preferred_username: String,
    pub cust: Custom,
}

impl Auth {
    pub fn new(key: &[u8], duration: i64) -> Auth {
        // One algorithm, pinned: `alg: none` and any other algorithm are refused.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "sub"]);
        // No slack past `exp`: the instances share the database, and their
        // clocks are expected to agree as well as NTP keeps them.
        validation.leeway = 0;
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

    /// An access token for `user` in its login `session`.
    pub fn issue(
        &self,
        user: &luna_store::StoredUser,
        session: Uuid,
        now: OffsetDateTime,
    ) -> Result<String, ApiError> {
        let claims = Claims {
            sub: user.id.to_string(),
            iss: ISSUER.into(),
            iat: now.unix_timestamp(),
            exp: now.unix_timestamp() + self.duration,
            jti: Uuid::new_v4().to_string(),
            sid: session.to_string(),
            preferred_username: user.username.clone(),
            cust: Custom {
                groups: user.groups.clone(),
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

/// How long an instance trusts what it last read of a session: a session
/// ended through another instance is refused here at most this long after.
pub const SESSION_RECHECK: std::time::Duration = std::time::Duration::from_millis(500);
/// Past this many remembered sessions, stale ones are swept out.
const SWEEP_ABOVE: usize = 10_000;

/// How long this instance remembers that it ended every session of a user,
/// for readings of them begun before (a reading slower than this is taken
/// as it is).
const USER_CHANGE_MEMORY: std::time::Duration = std::time::Duration::from_secs(60);

/// What this instance last read of each session an access token named (its
/// user if it was open, when the reading began), and when it ended every
/// session of a user. Ended sessions never reopen, so a session read as
/// ended stays ended.
#[derive(Debug, Default)]
pub struct LiveSessions {
    seen: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    sessions: HashMap<Uuid, (Option<Uuid>, Instant)>,
    users_changed: HashMap<Uuid, Instant>,
}

impl Seen {
    /// Whether a reading begun at `read` that found `user`'s session open
    /// may predate a change that ended every session of the user here.
    fn predates_a_change(&self, user: Uuid, read: Instant) -> bool {
        self.users_changed
            .get(&user)
            .is_some_and(|changed| *changed >= read)
    }
}

impl LiveSessions {
    /// The session's user as last read, if that was less than
    /// `SESSION_RECHECK` ago and before no change of the user made here
    /// (`Some(None)`: ended).
    fn recent(&self, session: Uuid, now: Instant) -> Option<Option<Uuid>> {
        let seen = self.seen.lock();
        match seen.sessions.get(&session) {
            Some((None, _)) => Some(None),
            Some((Some(user), read))
                if now.duration_since(*read) < SESSION_RECHECK && !seen.predates_a_change(*user, *read) =>
            {
                Some(Some(*user))
            }
            _ => None,
        }
    }

    /// Keeps a reading begun at `read`, and answers what now holds of the
    /// session (`Some(None)`: ended). `None`, keeping nothing, if the reading
    /// found the session open but began before this instance ended every
    /// session of its user: it may have been made before that change
    /// committed, so it must be made again.
    fn remember(&self, session: Uuid, user: Option<Uuid>, read: Instant) -> Option<Option<Uuid>> {
        let mut seen = self.seen.lock();
        if user.is_some_and(|user| seen.predates_a_change(user, read)) {
            return None;
        }
        if seen.sessions.len() >= SWEEP_ABOVE {
            seen.sessions
                .retain(|_, (_, at)| read.duration_since(*at) < SESSION_RECHECK);
        }
        if seen.users_changed.len() >= SWEEP_ABOVE {
            seen.users_changed
                .retain(|_, at| read.duration_since(*at) < USER_CHANGE_MEMORY);
        }
        // Ended here while this reading was on its way: the reading is
        // older than the end, and an ended session never reopens.
        if matches!(seen.sessions.get(&session), Some((None, _))) {
            return Some(None);
        }
        seen.sessions.insert(session, (user, read));
        Some(user)
    }

    /// A session this instance ended (after its end committed): refused
    /// here from now on.
    pub fn ended(&self, session: Uuid) {
        self.seen.lock().sessions.insert(session, (None, Instant::now()));
    }

    /// Every session of `user` ended here (a password or group change, the
    /// user deleted; called after the change committed): any reading of one
    /// begun before now is made again.
    pub fn ended_all_of(&self, user: Uuid) {
        self.seen.lock().users_changed.insert(user, Instant::now());
    }
}

/// The caller, proven by a valid bearer token of an open session. Every
/// protected handler takes one.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user_id: String,
    pub username: String,
    pub groups: Vec<String>,
    /// The login session its token belongs to.
    pub session: Uuid,
}

type Extracted<T> = Pin<Box<dyn Future<Output = Result<T, ApiError>>>>;

impl FromRequest for Principal {
    type Error = ApiError;
    type Future = Extracted<Principal>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        Box::pin(principal(req))
    }
}

/// The bearer token's claims, checked; then its session, in the database
/// unless read less than `SESSION_RECHECK` ago.
fn principal(req: &HttpRequest) -> impl Future<Output = Result<Principal, ApiError>> {
    let checked = bearer_claims(req);
    let audit = crate::audit::RequestAudit::of(req);
    async move {
        let (gate, claims) = checked?;
        let ended =
            || ApiError::Unauthorized("the session of the bearer token has ended; log in again".into());
        let not_valid = || ApiError::Unauthorized("the bearer token is not valid".into());
        let session = Uuid::parse_str(&claims.sid).map_err(|_| not_valid())?;
        let user = Uuid::parse_str(&claims.sub).map_err(|_| not_valid())?;
        let mut owner = gate.sessions.recent(session, Instant::now());
        // A reading that raced a change of the user made here is made again
        // (three readings at most; a user changed that often is refused).
        for _ in 0..3 {
            if owner.is_some() {
                break;
            }
            let read = Instant::now();
            let store = Store::clone(&gate.store);
            let found = web::block(move || store.session_user(session)).await??;
            owner = gate.sessions.remember(session, found, read);
        }
        let owner = owner.flatten();
        if owner != Some(user) {
            return Err(ended());
        }
        audit.acted_for(&claims.sub, &claims.preferred_username);
        Ok(Principal {
            user_id: claims.sub,
            username: claims.preferred_username,
            groups: claims.cust.groups,
            session,
        })
    }
}

/// What checking a bearer token takes, from the application's data (the
/// server registers each): the signing key, the session cache and the store
/// sessions are read from.
struct TokenCheck {
    auth: web::Data<Auth>,
    sessions: web::Data<LiveSessions>,
    store: web::Data<Store>,
}

impl TokenCheck {
    fn of(req: &HttpRequest) -> Result<TokenCheck, ApiError> {
        let missing = || ApiError::Internal("the auth check's application data is missing".into());
        Ok(TokenCheck {
            auth: req.app_data::<web::Data<Auth>>().cloned().ok_or_else(missing)?,
            sessions: req
                .app_data::<web::Data<LiveSessions>>()
                .cloned()
                .ok_or_else(missing)?,
            store: req.app_data::<web::Data<Store>>().cloned().ok_or_else(missing)?,
        })
    }
}

fn bearer_claims(req: &HttpRequest) -> Result<(TokenCheck, Claims), ApiError> {
    let gate = TokenCheck::of(req)?;
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
    let claims = gate.auth.verify(token)?;
    Ok((gate, claims))
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

    fn admin() -> luna_store::StoredUser {
        luna_store::StoredUser {
            id: Uuid::from_u128(1),
            username: "admin".into(),
            password_hash: String::new(),
            groups: vec!["admin".into()],
            created_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn tokens_verify_only_with_the_key_that_signed_them() {
        let auth = Auth::new(&[7; 64], 300);
        let session = Uuid::from_u128(2);
        let token = auth.issue(&admin(), session, OffsetDateTime::now_utc()).unwrap();
        let claims = auth.verify(&token).unwrap();
        assert_eq!(
            (
                claims.preferred_username.as_str(),
                claims.cust.groups.as_slice(),
                claims.sid
            ),
            ("admin", &["admin".to_string()][..], session.to_string())
        );
        assert!(Auth::new(&[8; 64], 300).verify(&token).is_err());
        // One second past `exp` is past it: no leeway.
        let old = auth
            .issue(
                &admin(),
                session,
                OffsetDateTime::now_utc() - Duration::seconds(301),
            )
            .unwrap();
        assert_eq!(
            auth.verify(&old).unwrap_err().to_string(),
            "the bearer token has expired; ask for a new one"
        );
    }

    #[test]
    fn sessions_are_reread_after_the_recheck_and_ended_ones_stay_ended() {
        let sessions = LiveSessions::default();
        let (one, two, user, other) = (
            Uuid::from_u128(1),
            Uuid::from_u128(2),
            Uuid::from_u128(3),
            Uuid::from_u128(4),
        );
        let t = Instant::now();
        assert_eq!(sessions.recent(one, t), None, "never read");
        assert_eq!(sessions.remember(one, Some(user), t), Some(Some(user)));
        assert_eq!(sessions.remember(two, Some(other), t), Some(Some(other)));
        assert_eq!(sessions.recent(one, t + SESSION_RECHECK / 2), Some(Some(user)));
        assert_eq!(sessions.recent(one, t + SESSION_RECHECK), None, "read again");

        // Every session of `user` ended here: what was read before is read
        // again, and a reading begun before the change is not kept.
        sessions.ended_all_of(user);
        assert_eq!(sessions.recent(one, t), None);
        assert_eq!(
            sessions.remember(one, Some(user), t),
            None,
            "began before the change: read again"
        );
        let after = Instant::now();
        assert_eq!(sessions.remember(one, None, after), Some(None));
        assert_eq!(
            sessions.recent(one, after + SESSION_RECHECK * 100),
            Some(None),
            "ended for good"
        );
        assert_eq!(
            sessions.remember(two, Some(other), t),
            Some(Some(other)),
            "another user's reading is kept"
        );
        assert_eq!(sessions.recent(two, t), Some(Some(other)));

        // A session ended here stays ended, even against a reading that
        // was on its way and found it open.
        sessions.ended(two);
        assert_eq!(sessions.remember(two, Some(other), t), Some(None));
        assert_eq!(sessions.recent(two, t + SESSION_RECHECK * 100), Some(None));
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
            type Future = Extracted<$name>;

            fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
                let caller = principal(req);
                Box::pin(async move { caller.await.and_then(|caller| {
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
                }) })
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
