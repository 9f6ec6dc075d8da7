//! `POST /api/v1/auth/tokens`: the password and refresh_token grants.

use actix_web::{post, web, HttpResponse};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::blocking;
use crate::auth::{
    new_refresh_token, refresh_token_hash, unknown_user_hash, verify_password, REFRESH_TOKEN_TTL,
};
use crate::error::ApiError;
use crate::state::AppState;

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

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenAnswer {
    jwt: String,
    duration: i64,
    token_type: &'static str,
    refresh_token: String,
}

/// Logs in: a jwt for `Authorization: Bearer`, and a refresh token.
#[utoipa::path(operation_id = "login", tag = "service",
    request_body = TokenBody,
    responses((status = 200, description = "A bearer token and a refresh token", body = TokenAnswer)))]
#[post("/api/v1/auth/tokens")]
pub async fn token(
    state: web::Data<AppState>,
    req: actix_web::HttpRequest,
    body: web::Json<TokenBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let attempted = body.username.clone().unwrap_or_else(|| "-".to_owned());
    let client = req
        .peer_addr()
        .map_or_else(|| "-".to_owned(), |a| a.ip().to_string());
    let grant = body.grant()?;
    let password_grant = grant == Grant::Password;
    let now = std::time::Instant::now();
    if password_grant {
        // Checked before the password, so a throttled guess learns nothing;
        // and counted as a failure until it succeeds, so guesses sent in
        // parallel are counted before any is answered.
        if let Err(wait) = state.logins.check(&attempted, &client, now) {
            return Err(ApiError::TooManyRequests {
                retry_after: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
            });
        }
        state.logins.failed(&attempted, &client, now);
    }
    let answer = issue(&state, grant, body).await;
    if password_grant && answer.is_ok() {
        state.logins.succeeded(&attempted, &client);
    }
    if let Err(ApiError::Unauthorized(reason)) = &answer {
        let entry = luna_store::AuditEntry {
            at: luna_store::now(),
            username: attempted,
            action: "login".into(),
            target: req.path().to_owned(),
            outcome: format!("401 {reason}"),
            request_id: actix_web::HttpMessage::extensions(&req)
                .get::<crate::request_id::RequestId>()
                .map_or_else(|| "-".to_owned(), |r| r.0.clone()),
            client: req.connection_info().peer_addr().unwrap_or("-").to_owned(),
        };
        crate::handlers::audit::record(&state, entry).await;
    }
    answer
}

async fn issue(state: &AppState, grant: Grant, body: TokenBody) -> Result<HttpResponse, ApiError> {
    let store = state.store.clone();
    let user = match grant {
        Grant::Password => {
            let username = body.username.unwrap_or_default();
            let password = body.password.unwrap_or_else(|| SecretString::from(""));
            blocking(move || {
                let user = store.user_by_name(&username)?;
                let hash = user
                    .as_ref()
                    .map_or(unknown_user_hash(), |u| u.password_hash.as_str());
                let matches = verify_password(hash, &password);
                match user.filter(|_| matches) {
                    Some(user) => Ok(user),
                    None => {
                        tracing::warn!(user = %username, "a login failed");
                        Err(ApiError::Unauthorized(
                            "the user name or password is wrong".into(),
                        ))
                    }
                }
            })
            .await?
        }
        Grant::RefreshToken => {
            let presented = body.refresh_token.unwrap_or_default();
            blocking(move || {
                store
                    .take_refresh_token(&refresh_token_hash(&presented), luna_store::now())?
                    .ok_or_else(|| ApiError::Unauthorized("the refresh token is not valid".into()))
            })
            .await?
        }
    };
    let now = luna_store::now();
    let jwt = state
        .auth
        .issue(&user.id.to_string(), &user.username, &user.groups, now)?;
    let (refresh_token, hash) = new_refresh_token();
    let store = state.store.clone();
    blocking(move || Ok(store.insert_refresh_token(&hash, user.id, now + REFRESH_TOKEN_TTL, now)?)).await?;
    Ok(HttpResponse::Ok().json(TokenAnswer {
        jwt,
        duration: state.auth.duration,
        token_type: "Bearer",
        refresh_token,
    }))
}
