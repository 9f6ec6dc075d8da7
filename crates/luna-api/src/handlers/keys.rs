//! The seven key endpoints of the reference.

use std::sync::Arc;

use actix_web::{delete, get, patch, post, web, HttpRequest, HttpResponse};
use luna_domain::attribute::Attribute;
use luna_domain::key::{check_update, AttributeChangeRequest};
use luna_domain::key::{Algorithm, Mechanism};
use luna_domain::query::KeyFilters;
use luna_domain::{CreateKeyRequest, Key, Operation, OperationPayload};
use luna_store::Store;
use serde::Deserialize;
use utoipa::openapi::{Array, ArrayBuilder, Object, ObjectBuilder, Type};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{blocking, fetch, idempotent_request, list_page, not_found, path_id, replayed, JsonObject};
use crate::audit::Audit;
use crate::auth::{Manager, Reader};
use crate::error::{ApiError, ErrorBody};
use crate::openapi::ListParams;
use crate::state::AppState;
use crate::view::{KeyView, ListView};

/// The route of creates, as idempotent requests record it.
const KEYS_ROUTE: &str = "POST /api/v1/cckm/hsm/luna/keys";

/// A new key. `size` must be one the mechanism's algorithm takes (AES 128,
/// 192, 256; RSA 2048, 3072, 4096). The document's description of the body
/// the handler reads as luna-domain's `CreateKeyRequest` (a domain type
/// cannot carry the document's derive); `the_create_body_is_documented_as_read`
/// holds the two to one set of fields.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct CreateKeyBody {
    #[schema(required = true, schema_with = crate::openapi::label_schema)]
    label: Option<String>,
    #[schema(required = true, schema_with = key_size_schema)]
    size: Option<i64>,
    #[schema(required = true, format = Uuid)]
    partition_id: Option<String>,
    #[schema(required = true, schema_with = mechanism_schema)]
    mechanism: Option<String>,
    /// PKCS#11 attribute names such as CKA_ENCRYPT; each one listed is set true.
    #[serde(default)]
    #[schema(schema_with = attribute_names_schema)]
    attributes: Vec<String>,
}

/// The create body's `mechanism`: one of the mechanisms luna-domain knows.
fn mechanism_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(Mechanism::ALL.iter().map(|m| m.as_str())))
        .build()
}

/// Every size some mechanism takes (the create body's `size`); which ones a mechanism takes is in the
/// 400 that refuses the others.
fn key_size_schema() -> Object {
    let mut sizes: Vec<u32> = Algorithm::ALL
        .iter()
        .flat_map(|a| a.allowed_sizes().iter().copied())
        .collect();
    sizes.sort_unstable();
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .enum_values(Some(sizes))
        .build()
}

/// The create body's `attributes`: requestable attribute names, each once.
fn attribute_names_schema() -> Array {
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(Attribute::REQUESTABLE.iter().map(|a| a.as_str()))),
        )
        .unique_items(true)
        .build()
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttributeChange {
    #[schema(example = "CKA_SIGN")]
    #[serde(rename = "type")]
    attribute: String,
    value: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKeyBody {
    attributes: Vec<AttributeChange>,
}

/// Creates a key (or an RSA pair) on a partition; the answer comes at once with
/// status `in_progress`, and the key becomes `AVAILABLE` when the token has made it.
#[utoipa::path(operation_id = "create_key", tag = "keys", security(("bearer" = [])),
    request_body = CreateKeyBody,
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", min_length = 1, max_length = 255, description = "Sent again with the same key and body, the create answers what the first made (201, Idempotent-Replayed: true); with another body, 409")),
    responses(
        (status = 201, description = "The key's record; the token is making it", body = KeyView),
        (status = 404, description = "No partition has this partition_id", body = ErrorBody),
        (status = 429, description = "The partition's queue of work, or the service's, is full (--queue-per-partition, --queue-total); Retry-After says when to try again, from the rate it drains at", body = ErrorBody)))]
#[post("/api/v1/cckm/hsm/luna/keys")]
pub async fn create(
    state: web::Data<AppState>,
    caller: Manager,
    req: HttpRequest,
    audit: Audit,
    body: JsonObject<CreateKeyRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let request = idempotent_request(&req, &caller.0.username, KEYS_ROUTE, &body)?;
    let tenancy = state.tenancy.clone();
    let view = move |store: &Store, id: Uuid| -> Result<Option<KeyView>, ApiError> {
        let Some(key) = store.get_key(id)? else {
            return Ok(None);
        };
        let link = key.link_id.map(|l| store.get_key(l)).transpose()?.flatten();
        Ok(Some(KeyView::with_link(&key, link.as_ref(), &tenancy)))
    };
    if let Some(first) = replayed(&state.store, request.as_ref(), view).await? {
        return Ok(first);
    }
    let spec = body.validate()?;
    // Within the bound on the work waiting for this partition's tokens, and
    // run here at once if this instance has room (claimed in the accept's
    // transaction, with the request's audit record).
    let admission = state
        .runner
        .admit(spec.partition_id)
        .map_err(|full| ApiError::QueueFull {
            message: full.message,
            retry_after: full.retry_after_secs,
        })?;
    let runner = Arc::clone(&state.runner);
    let (record, requester) = (audit.change(201), audit.requester());
    let keys =
        blocking(move || Ok(runner.accept_create(admission, &spec, requester, request.as_ref(), &record)?))
            .await?;
    audit.written();
    Ok(HttpResponse::Created().json(KeyView::with_link(&keys[0], keys.get(1), &state.tenancy)))
}

/// Lists keys; every filter is an exact match.
#[utoipa::path(operation_id = "list_keys", tag = "keys", security(("bearer" = [])),
    params(ListParams<KeyFilters>),
    responses((status = 200, description = "A page of keys", body = ListView<KeyView>)))]
#[get("/api/v1/cckm/hsm/luna/keys")]
pub async fn list(
    state: web::Data<AppState>,
    _caller: Reader,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    list_page::<KeyFilters, _, _>(
        &state.store,
        &req,
        |s, q| s.list_keys(q),
        |k| KeyView::new(k, &state.tenancy),
    )
    .await
}

/// One key.
#[utoipa::path(operation_id = "get_key", tag = "keys", security(("bearer" = [])), params(("id" = String, Path, description = "the key's id")),
    responses((status = 200, description = "The key", body = KeyView)))]
#[get("/api/v1/cckm/hsm/luna/keys/{id}")]
pub async fn get(
    state: web::Data<AppState>,
    _caller: Reader,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let key = fetch(&state.store, "key", path_id("key", &id)?, Store::get_key).await?;
    Ok(HttpResponse::Ok().json(KeyView::new(&key, &state.tenancy)))
}

/// Starts an operation on the key the payload names, for the request
/// `audit` is of (answered 200 when it begins); 404 if it does not exist,
/// 409 if it is busy.
async fn begin(state: &AppState, audit: &Audit, payload: OperationPayload) -> Result<Vec<Key>, ApiError> {
    let store = state.store.clone();
    let id = payload.target();
    let op = Operation::queued(Uuid::now_v7(), payload, luna_store::now()).requested_by(audit.requester());
    let record = audit.change(200);
    let keys = blocking(move || {
        store
            .begin_key_operation(&op, &record)?
            .ok_or_else(|| not_found("key", id))
    })
    .await?;
    audit.written();
    state.work.notify_one();
    Ok(keys)
}

/// Changes boolean attributes of a key on its tokens; the answer comes at once
/// with the `keyupdate` operation in progress.
#[utoipa::path(operation_id = "update_key", tag = "keys", security(("bearer" = [])), params(("id" = String, Path, description = "the key's id")),
    request_body = UpdateKeyBody,
    responses((status = 200, description = "The key, its update in progress", body = KeyView)))]
#[patch("/api/v1/cckm/hsm/luna/keys/{id}")]
pub async fn update(
    state: web::Data<AppState>,
    _caller: Manager,
    audit: Audit,
    id: web::Path<String>,
    body: JsonObject<UpdateKeyBody>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id("key", &id)?;
    let key = fetch(&state.store, "key", id, Store::get_key).await?;
    let requested: Vec<AttributeChangeRequest> = body
        .into_inner()
        .attributes
        .into_iter()
        .map(|c| AttributeChangeRequest {
            attribute: c.attribute,
            value: c.value,
        })
        .collect();
    let object_type = key.object_type.ok_or_else(|| {
        ApiError::Conflict("the key's object type is not known yet; wait for its creation to end".into())
    })?;
    let changes = check_update(object_type, key.attributes, &requested)?;
    let keys = begin(
        &state,
        &audit,
        OperationPayload::UpdateKey { key_id: id, changes },
    )
    .await?;
    Ok(HttpResponse::Ok().json(KeyView::new(&keys[0], &state.tenancy)))
}

/// Copies a key to the HA members that lack it.
#[utoipa::path(operation_id = "replicate_key", tag = "keys", security(("bearer" = [])), params(("id" = String, Path, description = "the key's id")),
    responses((status = 200, description = "The key, its replication in progress", body = KeyView)))]
#[post("/api/v1/cckm/hsm/luna/keys/{id}/replicate")]
pub async fn replicate(
    state: web::Data<AppState>,
    _caller: Manager,
    audit: Audit,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id("key", &id)?;
    let keys = begin(&state, &audit, OperationPayload::ReplicateKey { key_id: id }).await?;
    Ok(HttpResponse::Ok().json(KeyView::with_link(&keys[0], keys.get(1), &state.tenancy)))
}

/// `POST /api/v1/cckm/hsm/luna/{id}/delete`: destroys the objects on the tokens.
#[utoipa::path(operation_id = "destroy_key", tag = "keys", security(("bearer" = [])), params(("id" = String, Path, description = "the key's id")),
    responses((status = 200, description = "The key, its deletion in progress", body = KeyView)))]
#[post("/api/v1/cckm/hsm/luna/{id}/delete")]
pub async fn destroy(
    state: web::Data<AppState>,
    _caller: Manager,
    audit: Audit,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id("key", &id)?;
    let keys = begin(&state, &audit, OperationPayload::DestroyKey { key_id: id }).await?;
    Ok(HttpResponse::Ok().json(KeyView::new(&keys[0], &state.tenancy)))
}

/// `DELETE /api/v1/cckm/hsm/luna/keys/{id}`: forgets the records here only.
#[utoipa::path(operation_id = "forget_key", tag = "keys", security(("bearer" = [])), params(("id" = String, Path, description = "the key's id")),
    responses((status = 204, description = "The key's records are gone; its objects stay on the tokens")))]
#[delete("/api/v1/cckm/hsm/luna/keys/{id}")]
pub async fn forget(
    state: web::Data<AppState>,
    _caller: Manager,
    audit: Audit,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id("key", &id)?;
    let store = state.store.clone();
    let record = audit.change(204);
    blocking(move || store.forget_key(id, &record)?.ok_or_else(|| not_found("key", id))).await?;
    audit.written();
    state.xks_lookups.clear();
    Ok(HttpResponse::NoContent().finish())
}
