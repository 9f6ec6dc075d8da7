//! HTTP handlers: parse and check the request, do the work (on the blocking
//! pool when it touches the database or a token), answer with a view.

pub mod audit;
pub mod auth;
pub mod connections;
pub mod health;
pub mod jobs;
pub mod keys;
pub mod keystores;
pub mod partitions;
pub mod schedules;
pub mod servers;
pub mod users;

use luna_domain::idempotency::{IdempotentRequest, Replay};
use luna_domain::query::{parse_list_query, Filters, ListQuery};
use uuid::Uuid;

use crate::error::ApiError;

/// The `Idempotency-Key` a create was sent with, as the request to record:
/// the caller's key, on `route`, with a digest of `body` (whose `Serialize`
/// leaves PINs out: a digest of a short PIN could be reversed).
pub(crate) fn idempotent_request(
    req: &actix_web::HttpRequest,
    caller: &str,
    route: &str,
    body: &impl serde::Serialize,
) -> Result<Option<IdempotentRequest>, ApiError> {
    use sha2::Digest as _;
    let Some(value) = req.headers().get("Idempotency-Key") else {
        return Ok(None);
    };
    let key = value.to_str().unwrap_or("\u{fffd}");
    let canonical = serde_json::to_vec(body).map_err(|e| ApiError::Internal(e.to_string()))?;
    let digest = hex::encode(sha2::Sha256::digest(canonical));
    Ok(Some(IdempotentRequest::new(caller, key, route, digest)?))
}

/// For a create sent again under its caller's `Idempotency-Key`: the first
/// answer, 201 with what the first request made as it is now (`view` reads
/// it by id), marked `Idempotent-Replayed: true`; or a 409 when the key came
/// with another request. `None`: the key is new, do the work.
pub(crate) async fn replayed<V: serde::Serialize + Send + 'static>(
    store: &luna_store::Store,
    request: Option<&IdempotentRequest>,
    view: impl FnOnce(&luna_store::Store, Uuid) -> Result<Option<V>, ApiError> + Send + 'static,
) -> Result<Option<actix_web::HttpResponse>, ApiError> {
    let Some(request) = request.cloned() else {
        return Ok(None);
    };
    let store = store.clone();
    let first = blocking(move || {
        let Some((first, made)) = store.idempotent_request(&request.caller, &request.key)? else {
            return Ok(None);
        };
        match request.replay_of(&first, made) {
            Replay::Other => Err(ApiError::Conflict(format!(
                "Idempotency-Key {:?} was sent before with another request; use a new key for a new request",
                request.key
            ))),
            Replay::Same(made) => match view(&store, made)? {
                Some(view) => Ok(Some(view)),
                None => Err(ApiError::Conflict(format!(
                    "what the request sent with Idempotency-Key {:?} made no longer exists here",
                    request.key
                ))),
            },
        }
    })
    .await?;
    Ok(first.map(|view| {
        actix_web::HttpResponse::Created()
            .insert_header(("Idempotent-Replayed", "true"))
            .json(view)
    }))
}

/// The query string as name/value pairs, percent-decoded.
pub(crate) fn list_query<F: Filters>(query_string: &str) -> Result<ListQuery<F>, ApiError> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query_string.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    Ok(parse_list_query(&pairs)?)
}

/// An id from the path; a malformed one names nothing, so it is a 404.
pub(crate) fn path_id(what: &str, text: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(text).map_err(|_| not_found(what, text))
}

pub(crate) fn not_found(what: &str, id: impl std::fmt::Display) -> ApiError {
    ApiError::NotFound(format!("{what} {id} does not exist"))
}

/// Every list endpoint's one shape: the query string read as a list query
/// of `F`'s filters, one page read from the store off the async workers,
/// and each record shown as its view, with the page and the total.
pub(crate) async fn list_page<F, T, V>(
    store: &luna_store::Store,
    req: &actix_web::HttpRequest,
    read: impl FnOnce(&luna_store::Store, &ListQuery<F>) -> luna_store::Result<luna_store::Listed<T>>
        + Send
        + 'static,
    view: impl Fn(&T) -> V,
) -> Result<actix_web::HttpResponse, ApiError>
where
    F: Filters + Send + 'static,
    ListQuery<F>: Send,
    T: Send + 'static,
    V: serde::Serialize,
{
    let query = list_query::<F>(req.query_string())?;
    let page = query.page;
    let store = store.clone();
    let listed = blocking(move || Ok(read(&store, &query)?)).await?;
    Ok(listing(page, listed, view))
}

/// The contract's list answer: a page of views and the total.
fn listing<T, V: serde::Serialize>(
    page: luna_domain::query::Page,
    listed: luna_store::Listed<T>,
    view: impl Fn(&T) -> V,
) -> actix_web::HttpResponse {
    actix_web::HttpResponse::Ok().json(crate::view::ListView {
        skip: page.skip,
        limit: page.limit,
        total: listed.total,
        resources: listed.items.iter().map(view).collect::<Vec<_>>(),
    })
}

/// One record by id, read off the async workers; a missing one is a 404
/// naming its kind.
pub(crate) async fn fetch<T: Send + 'static>(
    store: &luna_store::Store,
    what: &'static str,
    id: Uuid,
    get: fn(&luna_store::Store, Uuid) -> luna_store::Result<Option<T>>,
) -> Result<T, ApiError> {
    let store = store.clone();
    blocking(move || get(&store, id)?.ok_or_else(|| not_found(what, id))).await
}

/// Runs blocking work (database, token) off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    actix_web::web::block(work).await?
}

/// A JSON request body, which must be an object. Read as `web::Json` would
/// (its limit and error sentences), but through a JSON object first: serde
/// also reads a struct from an array of its fields in order, and a job body
/// sent as `[[], true]` was accepted so.
#[derive(Debug)]
pub(crate) struct JsonObject<T>(T);

impl<T> JsonObject<T> {
    pub(crate) fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for JsonObject<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: serde::de::DeserializeOwned + 'static> actix_web::FromRequest for JsonObject<T> {
    type Error = actix_web::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &actix_web::HttpRequest, payload: &mut actix_web::dev::Payload) -> Self::Future {
        let object =
            actix_web::web::Json::<serde_json::Map<String, serde_json::Value>>::from_request(req, payload);
        Box::pin(async move {
            let object = object.await?.into_inner();
            serde_json::from_value(serde_json::Value::Object(object))
                .map(JsonObject)
                .map_err(|e| ApiError::BadRequest(format!("the request body is not valid: {e}")).into())
        })
    }
}
