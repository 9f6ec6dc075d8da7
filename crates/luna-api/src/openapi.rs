//! The OpenAPI 3 document, generated from the handlers' annotations and the
//! domain's description of every list query, served at
//! `GET /api/v1/openapi.json`.
//!
//! Error answers are added here by one rule per status rather than on each
//! handler, so that no handler can forget one: what can answer 400, 401, 403,
//! 404, 408, 409, 429, 500 and 503 follows from the operation's shape (see `Conventions`).

use actix_web::App;
use luna_domain::query::{list_params, Filters, ParamKind};
use serde_json::{json, Value};
use utoipa::openapi::path::{HttpMethod, Operation, Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Object, ObjectBuilder, Ref, ResponseBuilder, Type};
use utoipa::{IntoParams, Modify, OpenApi};
use utoipa_actix_web::service_config::ServiceConfig;
use utoipa_actix_web::AppExt;

use crate::error::ErrorBody;
use crate::view;

/// The security scheme every protected operation names.
pub const BEARER: &str = "bearer";

/// What the document says besides its operations, which come from the
/// routes it is made of (see `openapi`).
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "luna-cckm",
        description = "The CipherTrust Cloud Key Manager \"Luna HSM keys\" API over PKCS#11 tokens.",
        license(name = "Apache-2.0")
    ),
    components(schemas(ErrorBody, view::KeyView, view::JobView, view::PartitionView, view::ConnectionView)),
    tags(
        (name = "keys", description = "Luna HSM keys"),
        (name = "jobs", description = "Refresh and synchronize jobs"),
        (name = "schedules", description = "Refresh and synchronize on a timetable: CipherTrust's scheduler job configs"),
        (name = "partitions", description = "Luna partitions and network connections"),
        (name = "xks", description = "AWS KMS external key stores served by this proxy, and their SigV4 credentials"),
        (name = "users", description = "Users and their groups"),
        (name = "audit", description = "The hash-chained audit trail"),
        (name = "service", description = "Login, health, metrics and this document"),
    )
)]
pub struct ApiDoc;

/// The query parameters of a list of `F`, from the same facts that parse them.
#[derive(Debug)]
pub struct ListParams<F>(std::marker::PhantomData<F>);

impl<F: Filters> IntoParams for ListParams<F> {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        list_params::<F>()
            .into_iter()
            .map(|param| {
                ParameterBuilder::new()
                    .name(param.name)
                    .parameter_in(ParameterIn::Query)
                    .description(Some(param.kind.describe()))
                    .schema(Some(param_schema(&param.kind)))
                    .build()
            })
            .collect()
    }
}

/// RFC 3339 instants with a day of month every month has.
const TIMESTAMP_PATTERN: &str = r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?(Z|[+-](0[0-9]|1[0-9]|2[0-3]):[0-5][0-9])$";

fn param_schema(kind: &ParamKind) -> utoipa::openapi::Schema {
    let object = ObjectBuilder::new();
    let object = match kind {
        ParamKind::Text => object.schema_type(Type::String),
        ParamKind::Id => {
            object
                .schema_type(Type::String)
                .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                    utoipa::openapi::KnownFormat::Uuid,
                )))
        }
        ParamKind::WholeNumber { min, max } => object
            .schema_type(Type::Integer)
            .minimum(Some(*min as f64))
            .maximum(Some(*max as f64)),
        ParamKind::PageSize { max } => {
            let pages = ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(1.0))
                .maximum(Some(*max as f64));
            let all = ObjectBuilder::new()
                .schema_type(Type::Integer)
                .enum_values(Some([-1]));
            return utoipa::openapi::OneOfBuilder::new()
                .item(pages)
                .item(all)
                .build()
                .into();
        }
        ParamKind::Boolean => object.schema_type(Type::Boolean),
        // RFC 3339 as `time` parses it, which a pattern says more exactly
        // than the `date-time` format (whose leap seconds and lower-case
        // separators it does not take).
        ParamKind::Timestamp => object.schema_type(Type::String).pattern(Some(TIMESTAMP_PATTERN)),
        ParamKind::OneOf(values) => object
            .schema_type(Type::String)
            .enum_values(Some(values.iter().copied())),
        ParamKind::SortFields(fields) => object
            .schema_type(Type::String)
            .pattern(Some(sort_pattern(fields))),
    };
    object.build().into()
}

/// A label or name as `luna_domain::key::check_label` takes it: not blank, at
/// most `MAX_LABEL_CHARS` characters, no control characters.
pub fn label_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(luna_domain::key::MAX_LABEL_CHARS))
        .pattern(Some(
            r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$",
        ))
        .build()
}

/// `-?field(,-?field)*` over exactly these field names.
fn sort_pattern(fields: &[&str]) -> String {
    let field = format!("-?({})", fields.join("|"));
    format!("^{field}(,{field})*$")
}

/// Which operations act on what another one made: (the maker, the field of
/// its answer that is the new id, the operations that take that id). They
/// become OpenAPI links, which tell clients (and schemathesis's stateful
/// phase) how a created resource is reached.
const LINKS: &[(&str, &str, &[&str])] = &[
    (
        "create_key",
        "id",
        &[
            "get_key",
            "update_key",
            "forget_key",
            "replicate_key",
            "destroy_key",
        ],
    ),
    (
        "create_user",
        "user_id",
        &[
            "get_user",
            "update_user",
            "add_user_to_group",
            "remove_user_from_group",
            "delete_user",
        ],
    ),
    (
        "create_connection",
        "id",
        &[
            "get_connection",
            "update_connection",
            "test_connection",
            "delete_connection",
        ],
    ),
    ("create_server", "id", &["get_server", "delete_server"]),
    (
        "create_schedule",
        "id",
        &["get_schedule", "update_schedule", "delete_schedule"],
    ),
    (
        "create_keystore",
        "id",
        &["get_keystore", "rotate_credential", "delete_keystore"],
    ),
    ("add_partition", "id", &["get_partition", "forget_partition"]),
    ("start_refresh", "id", &["get_refresh", "cancel_refresh"]),
    (
        "start_synchronize",
        "id",
        &["get_synchronize", "cancel_synchronize"],
    ),
];

/// The bearer scheme, and every error answer an operation can give, by rule.
#[derive(Debug)]
struct Conventions;

impl Modify for Conventions {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("the jwt of POST /api/v1/auth/tokens"))
                    .build(),
            ),
        );
        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations = [
                (HttpMethod::Get, &mut item.get),
                (HttpMethod::Post, &mut item.post),
                (HttpMethod::Patch, &mut item.patch),
                (HttpMethod::Delete, &mut item.delete),
            ];
            for (method, operation) in operations {
                if let Some(operation) = operation {
                    add_error_answers(path, method, operation);
                }
            }
        }
    }
}

/// The document of `routes` (the server's: `server::routes`): `ApiDoc`,
/// every operation they register (the router's own list, collected as it
/// registers them) and the error answers by rule.
pub fn openapi(routes: fn(&mut ServiceConfig)) -> utoipa::openapi::OpenApi {
    let (_, mut openapi) = App::new()
        .into_utoipa_app()
        .openapi(ApiDoc::openapi())
        .configure(routes)
        .split_for_parts();
    Conventions.modify(&mut openapi);
    openapi
}

/// Each documented path with its methods, upper case (`GET`).
pub(crate) fn operations(document: utoipa::openapi::OpenApi) -> Vec<(String, Vec<String>)> {
    document
        .paths
        .paths
        .into_iter()
        .map(|(path, item)| {
            let methods = [
                ("GET", item.get),
                ("POST", item.post),
                ("PUT", item.put),
                ("PATCH", item.patch),
                ("DELETE", item.delete),
            ]
            .into_iter()
            .filter(|(_, operation)| operation.is_some())
            .map(|(method, _)| method.to_owned())
            .collect();
            (path, methods)
        })
        .collect()
}

/// The document as JSON, with `LINKS` added to each maker's 201 answer.
/// (Added to the JSON because utoipa 5.5 writes a link's `operationId` as
/// `operation_id`, which no OpenAPI tool reads.)
pub fn to_json(document: utoipa::openapi::OpenApi) -> Value {
    let mut doc = serde_json::to_value(document).unwrap_or(Value::Null);
    let Some(paths) = doc["paths"].as_object_mut() else {
        return doc;
    };
    for operation in paths
        .values_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut())
    {
        let Some((_, id_field, targets)) = LINKS
            .iter()
            .find(|(maker, _, _)| operation["operationId"] == *maker)
        else {
            continue;
        };
        let links: serde_json::Map<String, Value> = targets
            .iter()
            .map(|target| {
                let link = json!({"operationId": target, "parameters": {"id": format!("$response.body#/{id_field}")}});
                ((*target).to_owned(), link)
            })
            .collect();
        operation["responses"]["201"]["links"] = Value::Object(links);
    }
    doc
}

/// Which errors an operation can answer, from its shape; only operations that
/// answer in JSON errors (everything but this document and health) get them.
fn add_error_answers(path: &str, method: HttpMethod, operation: &mut Operation) {
    if path == "/api/v1/openapi.json" || path == "/api/v1/healthz" {
        return;
    }
    let protected = operation.security.is_some();
    let takes_input = operation.request_body.is_some()
        || operation
            .parameters
            .as_ref()
            .is_some_and(|p| p.iter().any(|p| p.parameter_in == ParameterIn::Query));
    let mutates = !matches!(method, HttpMethod::Get);
    // Logging in and changing one's password check a password (and are
    // throttled); logging out is any logged-in user's, on their own session.
    let checks_a_password = ["/api/v1/auth/tokens", "/api/v1/auth/changepw"].contains(&path);
    let own_session = path.starts_with("/api/v1/auth/");
    let answers = [
        (
            takes_input,
            "400",
            "The request is not valid; the message says why",
        ),
        (
            protected || checks_a_password,
            "401",
            "No valid bearer token, or the credentials were refused",
        ),
        (
            protected && !own_session,
            "403",
            "The caller's groups do not allow this",
        ),
        (path.contains('{'), "404", "No resource has this id"),
        (
            protected && mutates && !own_session,
            "409",
            "The resource is busy or in a state that forbids this",
        ),
        (
            operation.request_body.is_some(),
            "408",
            "The request body did not arrive in time; the connection is closed",
        ),
        (
            checks_a_password,
            "429",
            "Too many failed password checks from this address; Retry-After says when to try again",
        ),
        (true, "500", "The server failed; the message carries no internals"),
        (
            true,
            "503",
            "The database cannot be reached now; Retry-After says when to try again",
        ),
    ];
    for (applies, status, description) in answers {
        if applies {
            operation
                .responses
                .responses
                .entry(status.to_owned())
                .or_insert_with(|| {
                    ResponseBuilder::new()
                        .description(description)
                        .content(
                            "application/json",
                            ContentBuilder::new()
                                .schema(Some(Ref::from_schema_name("ErrorBody")))
                                .build(),
                        )
                        .into()
                });
        }
    }
}
