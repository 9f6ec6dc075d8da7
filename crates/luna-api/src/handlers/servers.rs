//! Luna Network HSM servers (`/api/v1/connectionmgmt/services/luna-network/servers`),
//! registered as CipherTrust Manager's clients register them before their
//! connections (the PowerShell module's `New-CMLunaHSMServer`, the Ansible
//! collection's `addHSMServer`): a hostname and the HSM's certificate.

use actix_web::{delete, get, post, web, HttpRequest, HttpResponse};
use luna_domain::query::ServerFilters;
use luna_domain::ServerRequest;
use luna_store::Store;
use serde::Deserialize;
use utoipa::ToSchema;

use super::{blocking, fetch, list_page, not_found, path_id, JsonObject};
use crate::audit::Audit;
use crate::auth::Administrator;
use crate::certificate::read_server_certificate;
use crate::error::ApiError;
use crate::openapi::ListParams;
use crate::state::AppState;
use crate::view::{ListView, ServerView};

/// A server as the clients send it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerBody {
    /// The HSM's IP address or host name.
    #[schema(example = "192.168.100.70")]
    hostname: Option<String>,
    /// The HSM's server certificate, PEM.
    hsm_certificate: Option<String>,
    description: Option<String>,
    /// `cckm` and/or `hsm_anchored_domain`; `cckm` when absent.
    products: Option<Vec<String>>,
    /// The client's own data, a JSON object, kept as given.
    #[schema(value_type = Option<Object>)]
    meta: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Registers an HSM server; a hostname registered already is a 409.
#[utoipa::path(tag = "partitions", security(("bearer" = [])),
    request_body = ServerBody,
    responses((status = 201, description = "The server", body = ServerView)))]
#[post("/api/v1/connectionmgmt/services/luna-network/servers")]
pub async fn create_server(
    state: web::Data<AppState>,
    _caller: Administrator,
    audit: Audit,
    body: JsonObject<ServerBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let certificate = read_server_certificate(body.hsm_certificate.as_deref().unwrap_or_default())?;
    let meta = body
        .meta
        .map(|m| serde_json::to_string(&m))
        .transpose()
        .map_err(|e| ApiError::BadRequest(format!("meta could not be kept: {e}")))?;
    let server = ServerRequest {
        hostname: body.hostname,
        description: body.description,
        products: body.products,
        meta,
    }
    .validate(uuid::Uuid::new_v4(), certificate, luna_store::now())?;
    let store = state.store.clone();
    let stored = server.clone();
    let record = audit.change(201);
    blocking(move || Ok(store.insert_server(&stored, &record)?)).await?;
    audit.written();
    Ok(HttpResponse::Created().json(ServerView::new(&server, &state.tenancy)))
}

/// Lists HSM servers (`host`: by hostname).
#[utoipa::path(tag = "partitions", security(("bearer" = [])),
    params(ListParams<ServerFilters>),
    responses((status = 200, description = "A page of servers", body = ListView<ServerView>)))]
#[get("/api/v1/connectionmgmt/services/luna-network/servers")]
pub async fn list_servers(
    state: web::Data<AppState>,
    _caller: Administrator,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    list_page::<ServerFilters, _, _>(
        &state.store,
        &req,
        |s, q| s.list_servers(q),
        |s| ServerView::new(s, &state.tenancy),
    )
    .await
}

/// One HSM server.
#[utoipa::path(tag = "partitions", security(("bearer" = [])), params(("id" = String, Path, description = "the server's id")),
    responses((status = 200, description = "The server", body = ServerView)))]
#[get("/api/v1/connectionmgmt/services/luna-network/servers/{id}")]
pub async fn get_server(
    state: web::Data<AppState>,
    _caller: Administrator,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id("server", &id)?;
    let server = fetch(&state.store, "server", id, Store::get_server).await?;
    Ok(HttpResponse::Ok().json(ServerView::new(&server, &state.tenancy)))
}

/// Deletes an HSM server no connection names (409 while one does).
#[utoipa::path(tag = "partitions", security(("bearer" = [])), params(("id" = String, Path, description = "the server's id")),
    responses((status = 204, description = "The server is gone")))]
#[delete("/api/v1/connectionmgmt/services/luna-network/servers/{id}")]
pub async fn delete_server(
    state: web::Data<AppState>,
    _caller: Administrator,
    audit: Audit,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id("server", &id)?;
    let store = state.store.clone();
    let record = audit.change(204);
    if !blocking(move || Ok(store.delete_server(id, &record)?)).await? {
        return Err(not_found("server", id));
    }
    audit.written();
    Ok(HttpResponse::NoContent().finish())
}
