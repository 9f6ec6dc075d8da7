//! External key stores (`/api/v1/xks/keystores`): where AWS KMS calls this
//! service as an XKS proxy, and the SigV4 credentials it signs with. The
//! admin group's alone, as connections are: a credential opens every
//! external key of its partition. A credential's secret is sealed at rest
//! and shown once, in the answer that made it.

use actix_web::{delete, get, post, web, HttpResponse};
use luna_domain::xks::keystore::{overlap_of, Credential, KeystoreRequest, CREDENTIAL_RANDOM_BYTES};
use rand::RngCore;
use secrecy::SecretString;
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{blocking, not_found, path_id, JsonObject};
use crate::audit::Audit;
use crate::auth::Administrator;
use crate::error::ApiError;
use crate::state::AppState;
use crate::view::{KeystoreView, ListView, NewCredentialView};

/// A keystore to make.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeystoreBody {
    /// Unique among keystores.
    #[schema(example = "payments")]
    name: Option<String>,
    /// The path before `/kms/xks/v1/`: at most 128 letters, digits, `/`, `_`
    /// and `-`; unique; empty for the host's root.
    #[schema(example = "example/prefix")]
    uri_path_prefix: Option<String>,
    /// The AWS region of the KMS that calls it.
    #[schema(example = "us-east-1")]
    region: Option<String>,
    /// The partition whose AES-256 keys are its external keys.
    partition_id: Option<String>,
}

/// A rotation.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotationBody {
    /// How long the credential that was newest stays valid beside the new
    /// one (24 when absent, at most 720); any older one ends now.
    #[schema(minimum = 0, maximum = 720)]
    overlap_hours: Option<u32>,
}

/// An answer carrying a credential's secret: no cache keeps it.
fn with_secret(mut answer: actix_web::HttpResponseBuilder, view: KeystoreView) -> HttpResponse {
    answer
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .json(view)
}

/// A fresh credential and its secret, from the system's random source.
fn new_credential() -> (Credential, SecretString) {
    let mut random = [0u8; CREDENTIAL_RANDOM_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut random);
    Credential::from_random(&random, luna_store::now())
}

/// Makes a keystore and its first credential, whose secret the answer
/// carries this once. A name or prefix taken is a 409; an unknown
/// partition a 404.
#[utoipa::path(tag = "xks", security(("bearer" = [])),
    request_body = KeystoreBody,
    responses((status = 201, description = "The keystore, with its first credential's secret", body = KeystoreView)))]
#[post("/api/v1/xks/keystores")]
pub async fn create_keystore(
    state: web::Data<AppState>,
    _caller: Administrator,
    audit: Audit,
    body: JsonObject<KeystoreBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let request = KeystoreRequest {
        name: body.name,
        uri_path_prefix: body.uri_path_prefix,
        region: body.region,
        partition_id: body.partition_id,
    };
    let now = luna_store::now();
    let keystore = request.create(Uuid::now_v7(), now)?;
    let (credential, secret) = new_credential();
    let store = state.store.clone();
    let record = audit.change(201);
    let (stored, sealed) = (keystore.clone(), secret.clone());
    let first = credential.clone();
    blocking(move || {
        store
            .get_partition(stored.partition_id)?
            .ok_or_else(|| not_found("partition", stored.partition_id))?;
        Ok(store.insert_keystore(&stored, &first, &sealed, &record)?)
    })
    .await?;
    audit.written();
    // A call that found no keystore at this path must not be kept.
    state.xks_lookups.clear();
    let mut view = KeystoreView::new(&keystore, std::slice::from_ref(&credential), now, &state.tenancy);
    view.new_credential = Some(NewCredentialView::new(&credential, &secret));
    Ok(with_secret(HttpResponse::Created(), view))
}

/// Every keystore (a deployment has a few), with its credentials.
#[utoipa::path(tag = "xks", security(("bearer" = [])),
    responses((status = 200, description = "Every keystore", body = ListView<KeystoreView>)))]
#[get("/api/v1/xks/keystores")]
pub async fn list_keystores(
    state: web::Data<AppState>,
    _caller: Administrator,
) -> Result<HttpResponse, ApiError> {
    let store = state.store.clone();
    let all = blocking(move || Ok(store.all_keystores()?)).await?;
    let now = luna_store::now();
    let total = i64::try_from(all.len()).unwrap_or(i64::MAX);
    Ok(HttpResponse::Ok().json(ListView {
        skip: 0,
        limit: total,
        total,
        resources: all
            .iter()
            .map(|(keystore, credentials)| KeystoreView::new(keystore, credentials, now, &state.tenancy))
            .collect(),
    }))
}

/// One keystore and its credentials (never their secrets).
#[utoipa::path(tag = "xks", security(("bearer" = [])), params(("id" = String, Path, description = "the keystore's id")),
    responses((status = 200, description = "The keystore", body = KeystoreView)))]
#[get("/api/v1/xks/keystores/{id}")]
pub async fn get_keystore(
    state: web::Data<AppState>,
    _caller: Administrator,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id("keystore", &id)?;
    let (keystore, credentials) =
        super::fetch(&state.store, "keystore", id, luna_store::Store::get_keystore).await?;
    Ok(HttpResponse::Ok().json(KeystoreView::new(
        &keystore,
        &credentials,
        luna_store::now(),
        &state.tenancy,
    )))
}

/// Makes a new credential, whose secret the answer carries this once. The
/// newest before it stays valid for the overlap, so that AWS KMS is given
/// the new one without a call refused; two at most are valid at once.
#[utoipa::path(tag = "xks", security(("bearer" = [])), params(("id" = String, Path, description = "the keystore's id")),
    request_body = RotationBody,
    responses((status = 201, description = "The keystore, with the new credential's secret", body = KeystoreView)))]
#[post("/api/v1/xks/keystores/{id}/credentials")]
pub async fn rotate_credential(
    state: web::Data<AppState>,
    _caller: Administrator,
    audit: Audit,
    id: web::Path<String>,
    body: JsonObject<RotationBody>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id("keystore", &id)?;
    let overlap = overlap_of(body.overlap_hours)?;
    let (credential, secret) = new_credential();
    let store = state.store.clone();
    let record = audit.change(201);
    let (new, sealed) = (credential.clone(), secret.clone());
    let (keystore, credentials) = blocking(move || {
        if !store.rotate_credential(id, &new, &sealed, overlap, &record)? {
            return Err(not_found("keystore", id));
        }
        store.get_keystore(id)?.ok_or_else(|| not_found("keystore", id))
    })
    .await?;
    audit.written();
    state.xks_lookups.clear();
    let mut view = KeystoreView::new(&keystore, &credentials, luna_store::now(), &state.tenancy);
    view.new_credential = Some(NewCredentialView::new(&credential, &secret));
    Ok(with_secret(HttpResponse::Created(), view))
}

/// Deletes a keystore and its credentials: AWS KMS's calls to its path are
/// refused from now on. The partition's keys stay.
#[utoipa::path(tag = "xks", security(("bearer" = [])), params(("id" = String, Path, description = "the keystore's id")),
    responses((status = 204, description = "The keystore is gone")))]
#[delete("/api/v1/xks/keystores/{id}")]
pub async fn delete_keystore(
    state: web::Data<AppState>,
    _caller: Administrator,
    audit: Audit,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id("keystore", &id)?;
    let store = state.store.clone();
    let record = audit.change(204);
    if !blocking(move || Ok(store.delete_keystore(id, &record)?)).await? {
        return Err(not_found("keystore", id));
    }
    audit.written();
    state.xks_lookups.clear();
    Ok(HttpResponse::NoContent().finish())
}
