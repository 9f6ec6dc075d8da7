//! CCKM partitions (`/api/v1/cckm/hsm/luna/add-partition`, `…/partitions`):
//! a connection's members registered as one partition, listed, shown with
//! what their tokens say, and forgotten.

use std::sync::Arc;

use actix_web::{delete, get, post, web, HttpRequest, HttpResponse};
use luna_domain::query::PartitionFilters;
use luna_store::Store;
use serde::Deserialize;
use utoipa::ToSchema;

use super::{blocking, fetch, list_page, not_found, path_id, JsonObject};
use crate::audit::Audit;
use crate::auth::{Manager, Reader};
use crate::error::{ApiError, ErrorBody};
use crate::openapi::ListParams;
use crate::state::AppState;
use crate::view::{ListView, MechanismView, MemberTokenView, PartitionView};
use luna_runner::registry;
use luna_runner::Failure;

/// The connection (id or name) whose partitions become one CCKM partition.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddPartitionBody {
    connection: String,
}

/// Adds the partition of a connection to CCKM.
#[utoipa::path(tag = "partitions", security(("bearer" = [])),
    request_body = AddPartitionBody,
    responses(
        (status = 201, description = "The partition", body = PartitionView),
        (status = 404, description = "No connection has this id or name", body = ErrorBody)))]
#[post("/api/v1/cckm/hsm/luna/add-partition")]
pub async fn add_partition(
    state: web::Data<AppState>,
    _caller: Manager,
    audit: Audit,
    body: JsonObject<AddPartitionBody>,
) -> Result<HttpResponse, ApiError> {
    let store = state.store.clone();
    let connection = body.into_inner().connection;
    let record = audit.change(201);
    let partition = blocking(move || Ok(registry::add_partition(&store, &connection, &record)?)).await?;
    audit.written();
    let queue = state.runner.backlog().state_of(partition.id);
    Ok(HttpResponse::Created().json(PartitionView::new(&partition, &state.tenancy, &queue)))
}

/// Lists partitions.
#[utoipa::path(tag = "partitions", security(("bearer" = [])),
    params(ListParams<PartitionFilters>),
    responses((status = 200, description = "A page of partitions", body = ListView<PartitionView>)))]
#[get("/api/v1/cckm/hsm/luna/partitions")]
pub async fn list_partitions(
    state: web::Data<AppState>,
    _caller: Reader,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let backlog = state.runner.backlog();
    list_page::<PartitionFilters, _, _>(
        &state.store,
        &req,
        |s, q| s.list_partitions(q),
        |p| PartitionView::new(p, &state.tenancy, &backlog.state_of(p.id)),
    )
    .await
}

/// One partition, with what its member tokens say of themselves, whether
/// they answer now, and what a create of each mechanism does on it.
#[utoipa::path(tag = "partitions", security(("bearer" = [])), params(("id" = String, Path, description = "the partition's id")),
    responses((status = 200, description = "The partition", body = PartitionView)))]
#[get("/api/v1/cckm/hsm/luna/partitions/{id}")]
pub async fn get_partition(
    state: web::Data<AppState>,
    _caller: Reader,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id("partition", &id)?;
    let partition = fetch(&state.store, "partition", id, Store::get_partition).await?;
    let tokens = Arc::clone(&state.tokens);
    let tenancy = state.tenancy.clone();
    let queue = state.runner.backlog().state_of(partition.id);
    let view = blocking(move || {
        let remap = partition.remap_rsa_mechanisms;
        let mut view = PartitionView::new(&partition, &tenancy, &queue);
        for (index, (member, member_view)) in partition.members.iter().zip(&mut view.members).enumerate() {
            let (info, reachability) = tokens.describe(partition.connection_id, member);
            let info = info.as_ref().map_err(Failure::reason);
            // Creates run on the first member.
            if index == 0 {
                view.mechanisms = info.ok().map(|info| MechanismView::plan(info, remap));
            }
            member_view.token = Some(MemberTokenView::new(info, reachability.as_ref()));
        }
        Ok(view)
    })
    .await?;
    Ok(HttpResponse::Ok().json(view))
}

/// Forgets the partition and its keys here; the tokens are not touched.
#[utoipa::path(tag = "partitions", security(("bearer" = [])), params(("id" = String, Path, description = "the partition's id")),
    responses((status = 204, description = "The partition is gone from CCKM")))]
#[delete("/api/v1/cckm/hsm/luna/partitions/{id}")]
pub async fn forget_partition(
    state: web::Data<AppState>,
    _caller: Manager,
    audit: Audit,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id("partition", &id)?;
    let store = state.store.clone();
    let record = audit.change(204);
    if !blocking(move || Ok(store.forget_partition(id, &record)?)).await? {
        return Err(not_found("partition", id));
    }
    audit.written();
    state.xks_lookups.clear();
    Ok(HttpResponse::NoContent().finish())
}
