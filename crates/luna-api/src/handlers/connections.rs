//! Luna network connections (`/api/v1/connectionmgmt/services/luna-network/connections`):
//! their members and PINs, tests, and the STC partition routes this service
//! does not offer.

use actix_web::{delete, get, patch, post, web, HttpRequest, HttpResponse};
use luna_domain::partition::MemberRequest;
use luna_domain::query::ConnectionFilters;
use luna_domain::ConnectionRequest;
use luna_store::Store;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{blocking, fetch, idempotent_request, list_page, not_found, path_id, replayed, JsonObject};
use crate::audit::Audit;
use crate::auth::Administrator;
use crate::error::{ApiError, ErrorBody};
use crate::openapi::ListParams;
use crate::state::AppState;
use crate::view::{ConnectionTestView, ConnectionView, ListView};
use luna_runner::registry;

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberBody {
    hostname: Option<String>,
    partition_label: Option<String>,
    serial_number: Option<String>,
}

/// The route of connection creates, as idempotent requests record it.
const CONNECTIONS_ROUTE: &str = "POST /api/v1/connectionmgmt/services/luna-network/connections";

/// A Luna network connection: its partitions (HA members) and their PINs.
/// `Serialize` (for the digest of an idempotent create) leaves the PINs out.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionBody {
    name: Option<String>,
    description: Option<String>,
    /// The partitions' crypto officer PIN; kept sealed, never answered.
    #[schema(value_type = Option<String>, format = Password)]
    #[serde(skip_serializing)]
    password: Option<SecretString>,
    /// The security officer PIN, for a cloning domain between HA members.
    #[schema(value_type = Option<String>, format = Password)]
    #[serde(skip_serializing)]
    so_password: Option<SecretString>,
    #[serde(default)]
    is_ha_enabled: bool,
    remap_rsa_mechanisms: Option<bool>,
    /// A registered HSM server the partitions are on (`…/luna-network/servers`).
    server_id: Option<uuid::Uuid>,
    /// What CipherTrust uses the connection for (`cckm`, …), kept as given.
    products: Option<Vec<String>>,
    /// The client's own data, a JSON object, kept as given.
    #[schema(value_type = Option<Object>)]
    meta: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    partitions: Vec<MemberBody>,
}

/// Registers a connection after logging in to each of its partitions.
#[utoipa::path(tag = "partitions", security(("bearer" = [])),
    request_body = ConnectionBody,
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", min_length = 1, max_length = 255, description = "Sent again with the same key and body, the create answers what the first made (201, Idempotent-Replayed: true); with another body, 409")),
    responses((status = 201, description = "The connection", body = ConnectionView)))]
#[post("/api/v1/connectionmgmt/services/luna-network/connections")]
pub async fn create_connection(
    state: web::Data<AppState>,
    caller: Administrator,
    req: HttpRequest,
    audit: Audit,
    body: JsonObject<ConnectionBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let request = idempotent_request(&req, &caller.0.username, CONNECTIONS_ROUTE, &body)?;
    let tenancy = state.tenancy.clone();
    let view = move |store: &Store, id: uuid::Uuid| -> Result<Option<ConnectionView>, ApiError> {
        Ok(store
            .get_connection(id)?
            .map(|c| ConnectionView::new(&c, &tenancy)))
    };
    if let Some(first) = replayed(&state.store, request.as_ref(), view).await? {
        return Ok(first);
    }
    let spec = connection_request(body).validate()?;
    let store = state.store.clone();
    let tokens = state.tokens.clone();
    let record = audit.change(201);
    let connection = blocking(move || {
        // Before any PIN is tried: each failed try counts toward the HSM's lockout.
        if let Some(server) = spec.server_id {
            if store.get_server(server)?.is_none() {
                return Err(luna_domain::server::no_such_server(server).into());
            }
        }
        Ok(registry::register_connection_idempotently(
            &store,
            tokens.module(),
            spec,
            request.as_ref(),
            &record,
        )?)
    })
    .await?;
    audit.written();
    Ok(HttpResponse::Created().json(ConnectionView::new(&connection, &state.tenancy)))
}

/// Lists connections.
#[utoipa::path(tag = "partitions", security(("bearer" = [])),
    params(ListParams<ConnectionFilters>),
    responses((status = 200, description = "A page of connections", body = ListView<ConnectionView>)))]
#[get("/api/v1/connectionmgmt/services/luna-network/connections")]
pub async fn list_connections(
    state: web::Data<AppState>,
    _caller: Administrator,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    list_page::<ConnectionFilters, _, _>(
        &state.store,
        &req,
        |s, q| s.list_connections(q),
        |c| ConnectionView::new(c, &state.tenancy),
    )
    .await
}

/// One connection.
#[utoipa::path(tag = "partitions", security(("bearer" = [])), params(("id" = String, Path, description = "the connection's id")),
    responses((status = 200, description = "The connection", body = ConnectionView)))]
#[get("/api/v1/connectionmgmt/services/luna-network/connections/{id}")]
pub async fn get_connection(
    state: web::Data<AppState>,
    _caller: Administrator,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id("connection", &id)?;
    let connection = fetch(&state.store, "connection", id, Store::get_connection).await?;
    Ok(HttpResponse::Ok().json(ConnectionView::new(&connection, &state.tenancy)))
}

/// Deletes a connection no partition uses.
#[utoipa::path(tag = "partitions", security(("bearer" = [])), params(("id" = String, Path, description = "the connection's id")),
    responses((status = 204, description = "The connection is gone")))]
#[delete("/api/v1/connectionmgmt/services/luna-network/connections/{id}")]
pub async fn delete_connection(
    state: web::Data<AppState>,
    _caller: Administrator,
    audit: Audit,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id("connection", &id)?;
    let store = state.store.clone();
    let record = audit.change(204);
    if !blocking(move || Ok(store.delete_connection(id, &record)?)).await? {
        return Err(not_found("connection", id));
    }
    audit.written();
    state.tokens.forget_connection(id);
    Ok(HttpResponse::NoContent().finish())
}

/// What a connection's PATCH may change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionPatchBody {
    description: Option<String>,
    /// Replaces the products (`cckm`, …).
    products: Option<Vec<String>>,
    /// Replaces the client's own data (a JSON object).
    #[schema(value_type = Option<Object>)]
    meta: Option<serde_json::Map<String, serde_json::Value>>,
    /// The partitions' new crypto officer PIN (changed on the HSM first):
    /// it must log in to every member, then it is sealed in place of the old.
    #[schema(value_type = Option<String>, format = Password, min_length = 1)]
    password: Option<SecretString>,
}

/// Changes a connection's description, or its PIN after the HSM's was
/// rotated: the new PIN must log in to every member (each failure named),
/// and tokens open with the old one are closed so that the next use logs in
/// with the new.
#[utoipa::path(tag = "partitions", security(("bearer" = [])), params(("id" = String, Path, description = "the connection's id")),
    request_body = ConnectionPatchBody,
    responses((status = 200, description = "The connection", body = ConnectionView)))]
#[patch("/api/v1/connectionmgmt/services/luna-network/connections/{id}")]
pub async fn update_connection(
    state: web::Data<AppState>,
    _caller: Administrator,
    audit: Audit,
    id: web::Path<String>,
    body: JsonObject<ConnectionPatchBody>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id("connection", &id)?;
    let mut body = body.into_inner();
    if let Some(description) = &body.description {
        luna_domain::partition::check_description(description)?;
    }
    let products = body
        .products
        .take()
        .map(luna_domain::partition::check_products)
        .transpose()?;
    let meta = body.meta.take().map(|m| serde_json::Value::Object(m).to_string());
    if body
        .password
        .as_ref()
        .is_some_and(|p| p.expose_secret().is_empty())
    {
        return Err(ApiError::BadRequest("password must not be empty".into()));
    }
    let store = state.store.clone();
    let tokens = state.tokens.clone();
    let record = audit.change(200);
    let connection = blocking(move || {
        let connection = store
            .get_connection(id)?
            .ok_or_else(|| not_found("connection", id))?;
        let mut check = None;
        if let Some(pin) = &body.password {
            // Sessions logged in with the old PIN end first: PKCS#11 keeps
            // one login per token and process, which would hide the new one.
            tokens.forget_connection(id);
            let tests = registry::test_members(tokens.module(), &connection.members, pin);
            let tested = registry::check_of(&tests, luna_store::now());
            if let Some(failed) = tested.error {
                return Err(ApiError::BadRequest(format!(
                    "the new password was not taken: {failed}; the connection keeps the old one"
                )));
            }
            check = Some(tested);
        }
        let change = luna_store::ConnectionChange {
            description: body.description.as_deref(),
            products: products.as_deref(),
            meta: meta.as_deref(),
            // The new PIN logged in to every member: a test that worked,
            // kept with the change and its record.
            check: check.as_ref(),
        };
        if !store.update_connection(id, &change, body.password.as_ref(), luna_store::now(), &record)? {
            return Err(not_found("connection", id));
        }
        store
            .get_connection(id)?
            .ok_or_else(|| not_found("connection", id))
    })
    .await?;
    audit.written();
    Ok(HttpResponse::Ok().json(ConnectionView::new(&connection, &state.tenancy)))
}

/// A partition added to an HA connection.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMemberBody {
    hostname: Option<String>,
    partition_label: Option<String>,
    serial_number: Option<String>,
    /// The members' security officer PIN: the cloning domain is established
    /// again across every member, the new one included.
    #[schema(value_type = Option<String>, format = Password)]
    so_password: Option<SecretString>,
}

/// Adds a partition (an HA member) to a connection. It must be present,
/// able to replicate, and take the connection's PIN; 409 while the
/// partition has key operations or a job in progress. Keys already made
/// reach it with a synchronize job.
#[utoipa::path(tag = "partitions", security(("bearer" = [])), params(("id" = String, Path, description = "the connection's id")),
    request_body = NewMemberBody,
    responses((status = 201, description = "The connection with its new member", body = ConnectionView)))]
#[post("/api/v1/connectionmgmt/services/luna-network/connections/{id}/partitions")]
pub async fn add_connection_member(
    state: web::Data<AppState>,
    _caller: Administrator,
    audit: Audit,
    id: web::Path<String>,
    body: JsonObject<NewMemberBody>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id("connection", &id)?;
    let body = body.into_inner();
    let spec = MemberRequest {
        hostname: body.hostname,
        partition_label: body.partition_label,
        serial_number: body.serial_number,
    }
    .validate("")?;
    let store = state.store.clone();
    let tokens = state.tokens.clone();
    let record = audit.change(201);
    let connection = blocking(move || {
        let connection = store
            .get_connection(id)?
            .ok_or_else(|| not_found("connection", id))?;
        registry::add_member(
            &store,
            tokens.module(),
            &connection,
            spec,
            body.so_password.as_ref(),
            &record,
        )?;
        // Tokens are opened again with the members as they are now.
        tokens.forget_connection(id);
        store
            .get_connection(id)?
            .ok_or_else(|| not_found("connection", id))
    })
    .await?;
    audit.written();
    Ok(HttpResponse::Created().json(ConnectionView::new(&connection, &state.tenancy)))
}

/// Removes a partition (by its serial number) from a connection; 409 while
/// the partition has work in progress, and for its last member. The keys'
/// objects on that token stay there.
#[utoipa::path(tag = "partitions", security(("bearer" = [])),
    params(("id" = String, Path, description = "the connection's id"), ("serial" = String, Path, description = "the member's serial number")),
    responses((status = 204, description = "The member is no longer part of the connection")))]
#[delete("/api/v1/connectionmgmt/services/luna-network/connections/{id}/partitions/{serial}")]
pub async fn remove_connection_member(
    state: web::Data<AppState>,
    _caller: Administrator,
    audit: Audit,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (id, serial) = path.into_inner();
    let id = path_id("connection", &id)?;
    let store = state.store.clone();
    let tokens = state.tokens.clone();
    let record = audit.change(204);
    blocking(
        move || match store.remove_connection_member(id, &serial, luna_store::now(), &record)? {
            None => Err(not_found("connection", id)),
            Some(false) => Err(ApiError::NotFound(format!(
                "connection {id} has no partition with serial number {serial:?}"
            ))),
            Some(true) => {
                tokens.forget_connection(id);
                Ok(())
            }
        },
    )
    .await?;
    audit.written();
    Ok(HttpResponse::NoContent().finish())
}

/// Tests a connection: logs in to each member now with its stored PIN, and
/// keeps the outcome on the connection (`last_connection_ok`, `…_at`, `…_error`).
#[utoipa::path(tag = "partitions", security(("bearer" = [])), params(("id" = String, Path, description = "the connection's id")),
    responses((status = 200, description = "What each member answered", body = ConnectionTestView)))]
#[post("/api/v1/connectionmgmt/services/luna-network/connections/{id}/test")]
pub async fn test_connection(
    state: web::Data<AppState>,
    _caller: Administrator,
    audit: Audit,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id("connection", &id)?;
    let store = state.store.clone();
    let tokens = state.tokens.clone();
    let record = audit.change(200);
    let view = blocking(move || {
        let connection = store
            .get_connection(id)?
            .ok_or_else(|| not_found("connection", id))?;
        let pin = store
            .connection_pin(id)?
            .ok_or_else(|| not_found("connection", id))?;
        let tests = registry::test_members(tokens.module(), &connection.members, &pin);
        let check = registry::check_of(&tests, luna_store::now());
        // Deleted meanwhile: the answer still says what the test found
        // (and the middleware records a request that changed nothing).
        let recorded = store.record_connection_check(id, &check, Some(&record))?;
        Ok((recorded, ConnectionTestView::new(&tests, &check)))
    })
    .await?;
    let (recorded, view) = view;
    if recorded {
        audit.written();
    }
    Ok(HttpResponse::Ok().json(view))
}

/// Tests a connection that is not saved: the body of a create (its `name`
/// may be left out), each member logged in to now; nothing is kept.
#[utoipa::path(tag = "partitions", security(("bearer" = [])),
    request_body = ConnectionBody,
    responses((status = 200, description = "What each member answered", body = ConnectionTestView)))]
#[post("/api/v1/connectionmgmt/services/luna-network/connection-test")]
pub async fn test_unsaved_connection(
    state: web::Data<AppState>,
    _caller: Administrator,
    body: JsonObject<ConnectionBody>,
) -> Result<HttpResponse, ApiError> {
    let mut body = body.into_inner();
    body.name.get_or_insert_with(|| "connection-test".to_owned());
    let spec = connection_request(body).validate()?;
    let tokens = state.tokens.clone();
    let view = blocking(move || {
        let members: Vec<luna_domain::Member> = spec
            .members
            .into_iter()
            .map(|m| luna_domain::Member {
                hostname: m.hostname,
                partition_label: m.partition_label,
                serial_number: m.serial_number.unwrap_or_default(),
            })
            .collect();
        let tests = registry::test_members(tokens.module(), &members, &spec.password);
        Ok(ConnectionTestView::new(
            &tests,
            &registry::check_of(&tests, luna_store::now()),
        ))
    })
    .await?;
    Ok(HttpResponse::Ok().json(view))
}

/// The domain's request from a connection body (PINs moved, not copied).
fn connection_request(body: ConnectionBody) -> ConnectionRequest {
    ConnectionRequest {
        name: body.name,
        description: body.description,
        password: body.password,
        so_password: body.so_password,
        ha_enabled: body.is_ha_enabled,
        remap_rsa_mechanisms: body.remap_rsa_mechanisms,
        server_id: body.server_id,
        products: body.products,
        meta: body.meta.map(|m| serde_json::Value::Object(m).to_string()),
        partitions: body
            .partitions
            .into_iter()
            .map(|m| MemberRequest {
                hostname: m.hostname,
                partition_label: m.partition_label,
                serial_number: m.serial_number,
            })
            .collect(),
    }
}

/// Why Luna STC partitions are not offered (each `…/stc-partitions` route).
fn stc_not_offered() -> ApiError {
    ApiError::NotImplemented(
        "Luna STC partitions are not offered: a secure trusted channel needs a Luna HSM's STC \
         identities exchanged with this host by the HSM's administrator, and luna-cckm reaches \
         partitions only through a PKCS#11 module. Register the partition as a connection instead \
         (POST /api/v1/connectionmgmt/services/luna-network/connections, then \
         /api/v1/cckm/hsm/luna/add-partition)"
            .into(),
    )
}

/// Luna STC partitions: not offered (501, saying why and what to use).
#[utoipa::path(tag = "partitions", security(("bearer" = [])),
    responses((status = 501, description = "Not offered: the body says why", body = ErrorBody)))]
#[get("/api/v1/connectionmgmt/services/luna-network/stc-partitions")]
pub async fn list_stc_partitions(_caller: Administrator) -> Result<HttpResponse, ApiError> {
    Err(stc_not_offered())
}

/// Luna STC partitions: not offered (501, saying why and what to use).
#[utoipa::path(tag = "partitions", security(("bearer" = [])),
    responses((status = 501, description = "Not offered: the body says why", body = ErrorBody)))]
#[post("/api/v1/connectionmgmt/services/luna-network/stc-partitions")]
pub async fn create_stc_partition(_caller: Administrator) -> Result<HttpResponse, ApiError> {
    Err(stc_not_offered())
}

/// Luna STC partitions: not offered (501, saying why and what to use).
#[utoipa::path(tag = "partitions", security(("bearer" = [])), params(("id" = String, Path, description = "the STC partition's id")),
    responses((status = 501, description = "Not offered: the body says why", body = ErrorBody)))]
#[get("/api/v1/connectionmgmt/services/luna-network/stc-partitions/{id}")]
pub async fn get_stc_partition(_caller: Administrator) -> Result<HttpResponse, ApiError> {
    Err(stc_not_offered())
}

/// Luna STC partitions: not offered (501, saying why and what to use).
#[utoipa::path(tag = "partitions", security(("bearer" = [])), params(("id" = String, Path, description = "the STC partition's id")),
    responses((status = 501, description = "Not offered: the body says why", body = ErrorBody)))]
#[delete("/api/v1/connectionmgmt/services/luna-network/stc-partitions/{id}")]
pub async fn delete_stc_partition(_caller: Administrator) -> Result<HttpResponse, ApiError> {
    Err(stc_not_offered())
}
