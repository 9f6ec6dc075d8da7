//! HTTP handlers: parse and check the request, do the work (on the blocking
//! pool when it touches the database or a token), answer with a view.

pub mod audit;
pub mod auth;
pub mod health;
pub mod jobs;
pub mod keys;
pub mod partitions;
pub mod users;

use luna_domain::query::{parse_list_query, Filters, ListQuery};
use uuid::Uuid;

use crate::error::ApiError;

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

/// The contract's list answer: a page of views and the total.
pub(crate) fn listing<T, V: serde::Serialize>(
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
