//! `/api/v1/auth`: logging in (`POST tokens`: the password and
//! refresh_token grants), logging out (`DELETE tokens/{id}`), and changing
//! one's own password (`PATCH changepw`).

use actix_web::{delete, patch, post, web, HttpRequest, HttpResponse};
use secrecy::SecretString;
use serde::Deserialize;
use utoipa::ToSchema;

use super::{blocking, not_found, JsonObject};
use crate::audit::Audit;
use crate::auth::{
    hash_password, new_refresh_token, refresh_token_hash, unknown_user_hash, verify_password, Principal,
    REFRESH_TOKEN_TTL,
};
use crate::error::ApiError;
use crate::state::AppState;
use crate::view::TokenAnswer;

/// The body as CipherTrust Manager's clients send it. Unknown fields are
/// ignored (the PowerShell module's `labels`, `renew_refresh_token`: every
/// refresh here renews the refresh token). The Terraform provider sends no
/// `grant_type` and an empty `domain`, and on a refresh an empty `username`
/// and `password` (`internal/provider/common/client.go` and
/// `token_refresh.go` of ThalesGroup/terraform-provider-ciphertrust).
#[derive(Debug, Deserialize, ToSchema)]
pub struct TokenBody {
    /// `password` (the default, as in CipherTrust Manager) or `refresh_token`.
    #[schema(example = "password")]
    grant_type: Option<String>,
    username: Option<String>,
    #[schema(value_type = Option<String>, format = Password)]
    password: Option<SecretString>,
    refresh_token: Option<String>,
    /// Empty or `root`: luna-cckm has one domain.
    #[schema(example = "")]
    domain: Option<String>,
    /// Empty or `root`, as `domain`.
    #[schema(example = "")]
    auth_domain: Option<String>,
    /// CipherTrust Data Security Platform as a Service's tenant path: not offered here.
    auth_domain_path: Option<String>,
}

/// What a token request asks for, once its body is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    Password,
    RefreshToken,
}

impl TokenBody {
    fn grant(&self) -> Result<Grant, ApiError> {
        for (field, value) in [("domain", &self.domain), ("auth_domain", &self.auth_domain)] {
            match value.as_deref() {
                None | Some("" | "root") => {}
                Some(other) => {
                    return Err(ApiError::BadRequest(format!(
                        "{field} {other:?} does not exist: luna-cckm has one domain, root (send \"\" or \"root\")"
                    )))
                }
            }
        }
        if self.auth_domain_path.as_deref().is_some_and(|p| !p.is_empty()) {
            return Err(ApiError::BadRequest(
                "auth_domain_path names a CipherTrust Data Security Platform tenant; luna-cckm has none (leave it out)".into(),
            ));
        }
        match self.grant_type.as_deref() {
            None | Some("" | "password") if self.username.as_deref().unwrap_or_default().is_empty() => {
                Err(ApiError::BadRequest(
                    "username is required to log in with a password (grant_type \"password\", the default)".into(),
                ))
            }
            None | Some("" | "password") => Ok(Grant::Password),
            Some("refresh_token") => Ok(Grant::RefreshToken),
            Some(_) => Err(ApiError::BadRequest(
                "grant_type must be \"password\" (the default: username and password) or \"refresh_token\" (with refresh_token)".into(),
            )),
        }
    }
}

/// Logs in: a jwt for `Authorization: Bearer`, and a refresh token.
#[utoipa::path(operation_id = "login", tag = "service",
    request_body = TokenBody,
    responses((status = 200, description = "A bearer token and a refresh token", body = TokenAnswer)))]
#[post("/api/v1/auth/tokens")]
pub async fn token(
    state: web::Data<AppState>,
    req: actix_web::HttpRequest,
    audit: Audit,
    body: JsonObject<TokenBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let grant = body.grant()?;
    match grant {
        Grant::Password => {
            let attempted = body.username.clone().unwrap_or_default();
            throttled(&state, &req, &attempted, issue(&state, &audit, grant, body)).await
        }
        Grant::RefreshToken => {
            let answer = issue(&state, &audit, grant, body).await;
            if let Err(ApiError::Unauthorized(reason)) = &answer {
                refused(&state, &req, "-", reason).await;
            }
            answer
        }
    }
}

/// Records a refused password or refresh token (tried for `attempted`),
/// with the reason, as the request's record.
async fn refused(state: &AppState, req: &HttpRequest, attempted: &str, reason: &str) {
    let entry = crate::audit::refusal(req, attempted, reason);
    crate::audit::record(&state.store, entry).await;
    crate::audit::RequestAudit::of(req).mark_written();
}

/// Runs a password check (`attempt`) under the login throttle: refused 429
/// without being tried while the (user, client address) must wait; counted
/// as a failure until it succeeds, so guesses sent in parallel are counted
/// before any is answered. A wrong password is audited, with the reason, as
/// the request's record.
async fn throttled<T>(
    state: &AppState,
    req: &HttpRequest,
    attempted: &str,
    attempt: impl std::future::Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    let client = req
        .peer_addr()
        .map_or_else(|| "-".to_owned(), |a| a.ip().to_string());
    let now = std::time::Instant::now();
    if let Err(wait) = state.logins.check(attempted, &client, now) {
        return Err(ApiError::TooManyRequests {
            retry_after: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
        });
    }
    state.logins.failed(attempted, &client, now);
    let answer = attempt.await;
    match &answer {
        Ok(_) => state.logins.succeeded(attempted, &client),
        Err(ApiError::Unauthorized(reason)) => refused(state, req, attempted, reason).await,
        Err(_) => {}
    }
    answer
}

/// The user whose name and password these are; a 401 (logged) otherwise,
/// in the time a real check takes whether or not the user exists.
fn checked_user(
    store: &luna_store::Store,
    username: &str,
    password: &SecretString,
) -> Result<luna_store::StoredUser, ApiError> {
    let user = store.user_by_name(username)?;
    let hash = user
        .as_ref()
        .map_or(unknown_user_hash(), |u| u.password_hash.as_str());
    let matches = verify_password(hash, password);
    match user.filter(|_| matches) {
        Some(user) => Ok(user),
        None => {
            tracing::warn!(user = %username, "a password check failed");
            Err(ApiError::Unauthorized(
                "the user name or password is wrong".into(),
            ))
        }
    }
}

/// A login's or a refresh's new tokens; the session opened or moved on is
/// audited with it.
async fn issue(
    state: &AppState,
    audit: &Audit,
    grant: Grant,
    body: TokenBody,
) -> Result<HttpResponse, ApiError> {
    let store = state.store.clone();
    let record = audit.change(200);
    let (refresh_token, next_hash) = new_refresh_token();
    let (user, session, now) = blocking(move || {
        let now = luna_store::now();
        let expires = now + REFRESH_TOKEN_TTL;
        match grant {
            Grant::Password => {
                let username = body.username.unwrap_or_default();
                let password = body.password.unwrap_or_else(|| SecretString::from(""));
                let user = checked_user(&store, &username, &password)?;
                let record = record.by(&user.id.to_string(), &user.username);
                let session = store
                    .open_session(&user, &next_hash, expires, now, &record)?
                    .ok_or_else(|| {
                        ApiError::Unauthorized(
                            "the user's password or groups changed while logging in; log in again".into(),
                        )
                    })?;
                Ok((user, session, now))
            }
            Grant::RefreshToken => {
                let presented = refresh_token_hash(&body.refresh_token.unwrap_or_default());
                let (user, session) = store
                    .refresh_session(&presented, &next_hash, expires, now, &record)?
                    .ok_or_else(|| ApiError::Unauthorized("the refresh token is not valid".into()))?;
                Ok((user, session, now))
            }
        }
    })
    .await?;
    audit.written();
    Ok(HttpResponse::Ok().json(TokenAnswer::new(
        state.auth.issue(&user, session, now)?,
        state.auth.duration,
        session,
        refresh_token,
    )))
}

/// Logs a session out: its refresh tokens are revoked at once, and access
/// tokens of it are refused (on every instance within a second). A user
/// ends their own sessions; an administrator anyone's.
#[utoipa::path(operation_id = "logout", tag = "service", security(("bearer" = [])),
    params(("id" = String, Path, description = "the session's id: `refresh_token_id` of the login's answer")),
    responses((status = 204, description = "The session has ended")))]
#[delete("/api/v1/auth/tokens/{id}")]
pub async fn logout(
    state: web::Data<AppState>,
    caller: Principal,
    audit: Audit,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    // Not echoed when it is no id: a refresh token sent here by mistake
    // would come back in the answer.
    let session = uuid::Uuid::parse_str(&id).map_err(|_| {
        ApiError::NotFound("no such session: a session id is the refresh_token_id of a login's answer".into())
    })?;
    let store = state.store.clone();
    let administrator = caller.may(crate::auth::Role::Administer);
    let record = audit.change(204);
    let ended = blocking(move || {
        // Another user's session is "not found" to a non-administrator:
        // session ids are not to be probed.
        match store.session_user(session)? {
            Some(owner) if administrator || owner.to_string() == caller.user_id => {
                Ok(store.end_session(session, &record)?)
            }
            _ => Err(not_found("session", session)),
        }
    })
    .await?;
    if ended {
        audit.written();
    }
    state.sessions.ended(session);
    Ok(HttpResponse::NoContent().finish())
}

/// A user changing their own password: the current one proves who they are.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ChangePasswordBody {
    username: Option<String>,
    /// The current password.
    #[schema(value_type = Option<String>, format = Password)]
    password: Option<SecretString>,
    #[schema(required = true, schema_with = crate::handlers::users::password_schema)]
    new_password: Option<SecretString>,
    /// Empty or `root`: luna-cckm has one domain.
    #[schema(example = "")]
    auth_domain: Option<String>,
}

/// Changes the caller's own password, CipherTrust Manager's way: the user
/// name, the current password and the new one, no bearer token needed. The
/// current password is checked under the login throttle. Every session the
/// user has ends (log in again with the new password).
#[utoipa::path(operation_id = "change_password", tag = "service",
    request_body = ChangePasswordBody,
    responses((status = 204, description = "The password is changed; the user's sessions have ended")))]
#[patch("/api/v1/auth/changepw")]
pub async fn change_password(
    state: web::Data<AppState>,
    req: HttpRequest,
    audit: Audit,
    body: JsonObject<ChangePasswordBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    match body.auth_domain.as_deref() {
        None | Some("" | "root") => {}
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "auth_domain {other:?} does not exist: luna-cckm has one domain, root (send \"\" or \"root\")"
            )))
        }
    }
    let username = body.username.filter(|u| !u.is_empty()).ok_or_else(|| {
        ApiError::BadRequest("username is required: the user whose password changes".into())
    })?;
    let new_password = crate::handlers::users::checked_password("new_password", body.new_password)?;
    let password = body.password.unwrap_or_else(|| SecretString::from(""));
    let store = state.store.clone();
    let attempted = username.clone();
    let record = audit.change(204);
    let attempt = blocking(move || {
        let user = checked_user(&store, &username, &password)?;
        let change = luna_store::UserChange::OwnPassword {
            proven: &user.password_hash,
            hash: &hash_password(&new_password)?,
        };
        let record = record.by(&user.id.to_string(), &user.username);
        if !store.change_user(user.id, &change, luna_store::now(), &record)? {
            // An administrator's reset (or the user's deletion) came between
            // the check and the change: it wins.
            return Err(ApiError::Unauthorized(
                "the password changed (or the user went) while this change was checked; nothing was changed"
                    .into(),
            ));
        }
        Ok(user.id)
    });
    let user = throttled(&state, &req, &attempted, attempt).await?;
    audit.written();
    state.sessions.ended_all_of(user);
    Ok(HttpResponse::NoContent().finish())
}
