//! Connections (`/api/v1/connectionmgmt/services/luna-network/connections`) and
//! partitions (`/api/v1/cckm/hsm/luna/add-partition`, `…/partitions`).

use actix_web::{web, HttpRequest, HttpResponse};
use luna_domain::partition::MemberRequest;
use luna_domain::query::{ConnectionFilters, PartitionFilters};
use luna_domain::ConnectionRequest;
use luna_store::Store;
use secrecy::SecretString;
use serde::Deserialize;

use super::{blocking, fetch, list_query, listing, not_found, path_id};
use crate::auth::{Administrator, Manager, Reader};
use crate::error::ApiError;
use crate::registry;
use crate::state::AppState;
use crate::view::{ConnectionView, PartitionView};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberBody {
    hostname: Option<String>,
    partition_label: Option<String>,
    serial_number: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionBody {
    name: Option<String>,
    description: Option<String>,
    password: Option<SecretString>,
    so_password: Option<SecretString>,
    #[serde(default)]
    is_ha_enabled: bool,
    remap_rsa_mechanisms: Option<bool>,
    #[serde(default)]
    partitions: Vec<MemberBody>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddPartitionBody {
    connection: String,
}

pub async fn create_connection(
    state: web::Data<AppState>,
    _caller: Administrator,
    body: web::Json<ConnectionBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let spec = ConnectionRequest {
        name: body.name,
        description: body.description,
        password: body.password,
        so_password: body.so_password,
        is_ha_enabled: body.is_ha_enabled,
        remap_rsa_mechanisms: body.remap_rsa_mechanisms,
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
    .validate()?;
    let store = state.store.clone();
    let tokens = state.tokens.clone();
    let connection = blocking(move || registry::register_connection(&store, tokens.module(), spec)).await?;
    Ok(HttpResponse::Created().json(ConnectionView::new(&connection, &state.tenancy)))
}

pub async fn list_connections(
    state: web::Data<AppState>,
    _caller: Administrator,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let query = list_query::<ConnectionFilters>(req.query_string())?;
    let page = query.page;
    let store = state.store.clone();
    let listed = blocking(move || Ok(store.list_connections(&query)?)).await?;
    Ok(listing(page, listed, |c| ConnectionView::new(c, &state.tenancy)))
}

pub async fn get_connection(
    state: web::Data<AppState>,
    _caller: Administrator,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id("connection", &id)?;
    let connection = fetch(&state.store, "connection", id, Store::get_connection).await?;
    Ok(HttpResponse::Ok().json(ConnectionView::new(&connection, &state.tenancy)))
}

pub async fn delete_connection(
    state: web::Data<AppState>,
    _caller: Administrator,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id("connection", &id)?;
    let store = state.store.clone();
    if !blocking(move || Ok(store.delete_connection(id)?)).await? {
        return Err(not_found("connection", id));
    }
    state.tokens.forget_connection(id);
    Ok(HttpResponse::NoContent().finish())
}

pub async fn add_partition(
    state: web::Data<AppState>,
    _caller: Manager,
    body: web::Json<AddPartitionBody>,
) -> Result<HttpResponse, ApiError> {
    let store = state.store.clone();
    let connection = body.into_inner().connection;
    let partition = blocking(move || registry::add_partition(&store, &connection)).await?;
    Ok(HttpResponse::Created().json(PartitionView::new(&partition, &state.tenancy)))
}

pub async fn list_partitions(
    state: web::Data<AppState>,
    _caller: Reader,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let query = list_query::<PartitionFilters>(req.query_string())?;
    let page = query.page;
    let store = state.store.clone();
    let listed = blocking(move || Ok(store.list_partitions(&query)?)).await?;
    Ok(listing(page, listed, |p| PartitionView::new(p, &state.tenancy)))
}

pub async fn get_partition(
    state: web::Data<AppState>,
    _caller: Reader,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id("partition", &id)?;
    let partition = fetch(&state.store, "partition", id, Store::get_partition).await?;
    Ok(HttpResponse::Ok().json(PartitionView::new(&partition, &state.tenancy)))
}

/// Forgets the partition and its keys here; the tokens are not touched.
pub async fn delete_partition(
    state: web::Data<AppState>,
    _caller: Manager,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id("partition", &id)?;
    let store = state.store.clone();
    if !blocking(move || Ok(store.delete_partition(id)?)).await? {
        return Err(not_found("partition", id));
    }
    Ok(HttpResponse::NoContent().finish())
}
