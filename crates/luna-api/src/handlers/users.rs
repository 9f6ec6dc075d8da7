//! `/api/v1/usermgmt`: users and their groups (admin only). A change of a
//! user's password or groups, and the user's deletion, end every session the
//! user has: tokens carry the groups they were issued with.

use actix_web::{delete, get, patch, post, web, HttpRequest, HttpResponse};
use luna_domain::query::UserFilters;
use luna_store::{NewUser, Store, StoredUser};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use utoipa::openapi::{Array, ArrayBuilder, ObjectBuilder, Type};
use utoipa::ToSchema;

use super::{blocking, fetch, list_page, not_found, path_id, JsonObject};
use crate::audit::Audit;
use crate::auth::{hash_password, Administrator, ADMIN_GROUP, GROUPS};
use crate::error::ApiError;
use crate::openapi::ListParams;
use crate::state::AppState;
use crate::view::{ListView, UserView};

/// Passwords shorter than this are refused.
const MIN_PASSWORD: usize = 8;

pub(crate) fn password_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Password)))
        .min_length(Some(MIN_PASSWORD))
        .build()
}

/// A user's `groups`: CipherTrust's three.
fn group_names_schema() -> Array {
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(GROUPS.iter().copied())),
        )
        .build()
}

/// A new user; `groups` from admin, CCKM Admins, CCKM Users.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserBody {
    #[schema(required = true, schema_with = crate::openapi::label_schema)]
    username: Option<String>,
    #[schema(required = true, schema_with = password_schema)]
    password: Option<SecretString>,
    #[serde(default)]
    #[schema(schema_with = group_names_schema)]
    groups: Vec<String>,
}

/// Creates a user.
#[utoipa::path(operation_id = "create_user", tag = "users", security(("bearer" = [])),
    request_body = UserBody,
    responses((status = 201, description = "The user", body = UserView)))]
#[post("/api/v1/usermgmt/users")]
pub async fn create(
    state: web::Data<AppState>,
    _caller: Administrator,
    audit: Audit,
    body: JsonObject<UserBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let username = luna_domain::key::check_label("username", body.username.as_deref().unwrap_or(""))?;
    let password = checked_password("password", body.password)?;
    if let Some(unknown) = body.groups.iter().find_map(|g| unknown_group(g)) {
        return Err(ApiError::BadRequest(unknown));
    }
    // A group named twice is one membership.
    let mut groups = body.groups;
    let mut seen = std::collections::HashSet::new();
    groups.retain(|g| seen.insert(g.clone()));
    let store = state.store.clone();
    let record = audit.change(201);
    let user = blocking(move || {
        let user = NewUser {
            username,
            password_hash: hash_password(&password)?,
            groups,
        };
        Ok(store.insert_user(&user, luna_store::now(), &record)?)
    })
    .await?;
    audit.written();
    Ok(HttpResponse::Created().json(UserView::from(&user)))
}

/// What an administrator changes of a user: its password.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserPatchBody {
    #[schema(required = true, schema_with = password_schema)]
    password: Option<SecretString>,
}

/// The password as the rules take it: at least `MIN_PASSWORD` characters.
pub(crate) fn checked_password(
    field: &str,
    password: Option<SecretString>,
) -> Result<SecretString, ApiError> {
    password
        .filter(|p| p.expose_secret().chars().count() >= MIN_PASSWORD)
        .ok_or_else(|| {
            ApiError::BadRequest(format!("{field} is required, at least {MIN_PASSWORD} characters"))
        })
}

/// What is wrong with a group name that names no group.
fn unknown_group(group: &str) -> Option<String> {
    (!GROUPS.contains(&group)).then(|| {
        format!(
            "group {group:?} does not exist; the groups are {}",
            GROUPS.join(", ")
        )
    })
}

/// Sets a user's password (an administrator resets a leaked one); every
/// session the user has ends in the same transaction. Not one's own: that
/// is `PATCH /api/v1/auth/changepw`, which asks for the current password
/// (a stolen bearer token must not be enough to take the account over).
#[utoipa::path(operation_id = "update_user", tag = "users", security(("bearer" = [])),
    params(("id" = String, Path, description = "the user's id")),
    request_body = UserPatchBody,
    responses((status = 200, description = "The user", body = UserView)))]
#[patch("/api/v1/usermgmt/users/{id}")]
pub async fn update(
    state: web::Data<AppState>,
    caller: Administrator,
    audit: Audit,
    id: web::Path<String>,
    body: JsonObject<UserPatchBody>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id("user", &id)?;
    if caller.0.user_id == id.to_string() {
        return Err(ApiError::Conflict(
            "this is your own account: change your password with PATCH /api/v1/auth/changepw, which asks for the current one".into(),
        ));
    }
    let password = checked_password("password", body.into_inner().password)?;
    let store = state.store.clone();
    let record = audit.change(200);
    let user = blocking(move || {
        let change = luna_store::UserChange::Password {
            hash: &hash_password(&password)?,
        };
        if !store.change_user(id, &change, luna_store::now(), &record)? {
            return Err(not_found("user", id));
        }
        store.get_user(id)?.ok_or_else(|| not_found("user", id))
    })
    .await?;
    audit.written();
    state.sessions.ended_all_of(id);
    Ok(HttpResponse::Ok().json(UserView::from(&user)))
}

/// Lists users.
#[utoipa::path(operation_id = "list_users", tag = "users", security(("bearer" = [])),
    params(ListParams<UserFilters>),
    responses((status = 200, description = "A page of users", body = ListView<UserView>)))]
#[get("/api/v1/usermgmt/users")]
pub async fn list(
    state: web::Data<AppState>,
    _caller: Administrator,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    list_page::<UserFilters, _, _>(
        &state.store,
        &req,
        |s, q| s.list_users(q.filters.username.as_deref(), q.page.skip, q.page.limit),
        |u| UserView::from(u),
    )
    .await
}

/// One user.
#[utoipa::path(operation_id = "get_user", tag = "users", security(("bearer" = [])), params(("id" = String, Path, description = "the user's id")),
    responses((status = 200, description = "The user", body = UserView)))]
#[get("/api/v1/usermgmt/users/{id}")]
pub async fn get(
    state: web::Data<AppState>,
    _caller: Administrator,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id("user", &id)?;
    let user = fetch(&state.store, "user", id, Store::get_user).await?;
    Ok(HttpResponse::Ok().json(UserView::from(&user)))
}

/// Deletes a user. The bootstrap `admin` stays: without it nobody could manage users again.
#[utoipa::path(operation_id = "delete_user", tag = "users", security(("bearer" = [])), params(("id" = String, Path, description = "the user's id")),
    responses((status = 204, description = "The user is gone")))]
#[delete("/api/v1/usermgmt/users/{id}")]
pub async fn delete(
    state: web::Data<AppState>,
    _caller: Administrator,
    audit: Audit,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id("user", &id)?;
    let store = state.store.clone();
    let record = audit.change(204);
    blocking(move || {
        let user = store.get_user(id)?.ok_or_else(|| not_found("user", id))?;
        if user.username == "admin" {
            return Err(ApiError::Conflict(
                "the bootstrap admin user cannot be deleted".into(),
            ));
        }
        if !store.delete_user(id, &record)? {
            return Err(not_found("user", id));
        }
        Ok(())
    })
    .await?;
    audit.written();
    state.sessions.ended_all_of(id);
    Ok(HttpResponse::NoContent().finish())
}

/// How many times a membership change reads the groups again when another
/// change of them came between its read and its write.
const MEMBERSHIP_ATTEMPTS: usize = 5;

/// Whether a group membership is being given or taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Membership {
    Add,
    Remove,
}

/// Adds a user to a group or takes them out of it; a change ends every
/// session the user has (their tokens name the groups they were issued with).
async fn change_membership(
    state: &AppState,
    caller: &Administrator,
    audit: &Audit,
    group: &str,
    id: &str,
    change: Membership,
) -> Result<StoredUser, ApiError> {
    if let Some(unknown) = unknown_group(group) {
        return Err(ApiError::NotFound(unknown));
    }
    let id = path_id("user", id)?;
    if caller.0.user_id == id.to_string() {
        // Taking oneself out of admin would lock one out; another
        // administrator changes one's groups.
        return Err(ApiError::Conflict(
            "an administrator does not change their own groups; another administrator can".into(),
        ));
    }
    let group = group.to_owned();
    let store = state.store.clone();
    let record = audit.change(match change {
        Membership::Add => 200,
        Membership::Remove => 204,
    });
    let (user, changed) = blocking(move || {
        // Worked out from the groups as read, and applied only while they
        // still are (`UserChange::Groups`): a concurrent change of them is
        // read again rather than overwritten.
        for _ in 0..MEMBERSHIP_ATTEMPTS {
            let user = store.get_user(id)?.ok_or_else(|| not_found("user", id))?;
            let member = user.groups.contains(&group);
            let groups: Vec<String> = match change {
                Membership::Add if member => return Ok((user, false)),
                Membership::Add => user.groups.iter().cloned().chain([group.clone()]).collect(),
                Membership::Remove if !member => {
                    return Err(ApiError::BadRequest(format!(
                        "user {:?} is not in group {group:?}",
                        user.username
                    )))
                }
                Membership::Remove if user.username == "admin" && group == ADMIN_GROUP => {
                    return Err(ApiError::Conflict(
                        "the bootstrap admin user stays in the admin group: without it nobody could manage users again".into(),
                    ))
                }
                Membership::Remove => user.groups.iter().filter(|g| **g != group).cloned().collect(),
            };
            let groups_change = luna_store::UserChange::Groups {
                from: &user.groups,
                to: &groups,
            };
            if store.change_user(id, &groups_change, luna_store::now(), &record)? {
                return Ok((StoredUser { groups, ..user }, true));
            }
        }
        Err(ApiError::Conflict(format!(
            "the groups of user {id} kept changing under this request; send it again"
        )))
    })
    .await?;
    if changed {
        audit.written();
        state.sessions.ended_all_of(user.id);
    }
    Ok(user)
}

/// Adds a user to a group (CipherTrust Manager's route). Adding a member
/// again changes nothing.
#[utoipa::path(operation_id = "add_user_to_group", tag = "users", security(("bearer" = [])),
    params(("group" = String, Path, description = "admin, CCKM Admins or CCKM Users"),
           ("id" = String, Path, description = "the user's id")),
    responses((status = 200, description = "The user, with its groups", body = UserView)))]
#[post("/api/v1/usermgmt/groups/{group}/users/{id}")]
pub async fn add_to_group(
    state: web::Data<AppState>,
    caller: Administrator,
    audit: Audit,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (group, id) = path.into_inner();
    let user = change_membership(&state, &caller, &audit, &group, &id, Membership::Add).await?;
    Ok(HttpResponse::Ok().json(UserView::from(&user)))
}

/// Takes a user out of a group (CipherTrust Manager's route): 400 if the
/// user is not in it.
#[utoipa::path(operation_id = "remove_user_from_group", tag = "users", security(("bearer" = [])),
    params(("group" = String, Path, description = "admin, CCKM Admins or CCKM Users"),
           ("id" = String, Path, description = "the user's id")),
    responses((status = 204, description = "The user is no longer in the group"),
              (status = 400, description = "The user is not in the group", body = crate::error::ErrorBody)))]
#[delete("/api/v1/usermgmt/groups/{group}/users/{id}")]
pub async fn remove_from_group(
    state: web::Data<AppState>,
    caller: Administrator,
    audit: Audit,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (group, id) = path.into_inner();
    change_membership(&state, &caller, &audit, &group, &id, Membership::Remove).await?;
    Ok(HttpResponse::NoContent().finish())
}
