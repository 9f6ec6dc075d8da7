//! Routes, request limits and the HTTP(S) server, and the bootstrap of the
//! `admin` user.

use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, LazyLock};

use actix_web::dev::{ResourceDef, Server};
use actix_web::error::JsonPayloadError;
use actix_web::{get, middleware, web, App, HttpRequest, HttpResponse, HttpServer};
use luna_pkcs11::Module;
use luna_store::{NewUser, Store};
use rand::distributions::{Alphanumeric, DistString};
use secrecy::SecretString;
use tokio::sync::Notify;
use utoipa_actix_web::service_config::ServiceConfig;

use crate::auth::{hash_password, Auth};
use crate::error::ApiError;
use crate::handlers::{
    audit, auth, connections, health, jobs, keys, keystores, partitions, schedules, servers, users,
};
use crate::state::AppState;
use crate::view::Tenancy;
use luna_runner::tokens::OpenTokens;
use luna_runner::{Runner, RunnerSettings};

/// Request bodies larger than this are refused; the largest real one is a
/// connection with a handful of members.
pub const BODY_LIMIT: usize = 64 * 1024;

/// The OpenAPI document of `routes`, as JSON.
pub fn document_json() -> serde_json::Value {
    crate::openapi::to_json(API.clone())
}

/// The document, made once: served as text, and read for the 405s.
static API: LazyLock<utoipa::openapi::OpenApi> = LazyLock::new(|| crate::openapi::openapi(routes));
static DOCUMENT: LazyLock<String> = LazyLock::new(|| document_json().to_string());

/// This document.
#[utoipa::path(tag = "service",
    responses((status = 200, description = "The OpenAPI 3 document of this API", content_type = "application/json")))]
#[get("/api/v1/openapi.json")]
async fn document() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(DOCUMENT.as_str())
}

/// Every operation, each once: a handler's `#[get("…")]` (or post, …) routes
/// it, its `#[utoipa::path]` documents it, and registering it here does both,
/// so the router and the OpenAPI document (`document_json`, built from this
/// same function) cannot differ. Register only with `service`: utoipa's
/// `route` would serve a path the document lacks.
pub fn routes(cfg: &mut ServiceConfig) {
    // actix tries the routes in this order, a pattern match each (a regex
    // for a path with a parameter): the key routes, which carry nearly every
    // request, come first.
    cfg.service(keys::create)
        .service(keys::get)
        .service(keys::list)
        .service(keys::update)
        .service(keys::forget)
        .service(keys::replicate)
        .service(keys::destroy)
        .service(health::scrape)
        .service(document)
        .service(health::healthz)
        .service(auth::token)
        .service(auth::logout)
        .service(auth::change_password)
        .service(audit::list)
        .service(audit::verify)
        .service(users::create)
        .service(users::list)
        .service(users::get)
        .service(users::update)
        .service(users::delete)
        .service(users::add_to_group)
        .service(users::remove_from_group)
        .service(connections::create_connection)
        .service(connections::list_connections)
        .service(connections::get_connection)
        .service(connections::delete_connection)
        .service(connections::update_connection)
        .service(connections::add_connection_member)
        .service(connections::remove_connection_member)
        .service(connections::test_connection)
        .service(connections::test_unsaved_connection)
        .service(partitions::add_partition)
        .service(partitions::list_partitions)
        .service(partitions::get_partition)
        .service(partitions::forget_partition)
        .service(servers::create_server)
        .service(servers::list_servers)
        .service(servers::get_server)
        .service(servers::delete_server)
        .service(connections::list_stc_partitions)
        .service(connections::create_stc_partition)
        .service(connections::get_stc_partition)
        .service(connections::delete_stc_partition)
        .service(jobs::start_refresh)
        .service(jobs::list_refresh)
        .service(jobs::get_refresh)
        .service(jobs::cancel_refresh)
        .service(jobs::start_synchronize)
        .service(jobs::list_synchronize)
        .service(jobs::get_synchronize)
        .service(jobs::cancel_synchronize)
        .service(schedules::create_schedule)
        .service(schedules::list_schedules)
        .service(schedules::get_schedule)
        .service(schedules::update_schedule)
        .service(schedules::delete_schedule)
        .service(keystores::create_keystore)
        .service(keystores::list_keystores)
        .service(keystores::get_keystore)
        .service(keystores::rotate_credential)
        .service(keystores::delete_keystore);
}

/// Every malformed body becomes a 400 with a sentence.
fn json_config() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(BODY_LIMIT)
        .error_handler(|error, _req| {
            let message = match &error {
                JsonPayloadError::ContentType => {
                    "the request body must be JSON, sent with Content-Type: application/json".to_owned()
                }
                JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => {
                    format!("the request body is larger than {} KiB", BODY_LIMIT / 1024)
                }
                JsonPayloadError::Deserialize(e) => format!("the request body is not valid: {e}"),
                other => format!("the request body could not be read: {other}"),
            };
            ApiError::BadRequest(message).into()
        })
}

fn path_config() -> web::PathConfig {
    web::PathConfig::default()
        .error_handler(|error, _req| ApiError::NotFound(format!("no such resource: {error}")).into())
}

/// A known path with another method is a 405 naming the methods it takes;
/// anything else a 404. What is known is what the document lists.
async fn no_route(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    static PATHS: LazyLock<Vec<(ResourceDef, Vec<String>)>> = LazyLock::new(|| {
        crate::openapi::operations(API.clone())
            .into_iter()
            .map(|(path, methods)| (ResourceDef::new(path), methods))
            .collect()
    });
    let allowed: Vec<&str> = PATHS
        .iter()
        .filter(|(path, _)| path.is_match(req.path()))
        .flat_map(|(_, methods)| methods.iter().map(String::as_str))
        .collect();
    if allowed.is_empty() {
        return Err(ApiError::NotFound(format!(
            "there is no {} {} in this API",
            req.method(),
            req.path()
        )));
    }
    Err(ApiError::MethodNotAllowed {
        method: req.method().to_string(),
        path: req.path().to_owned(),
        allowed: allowed.join(", "),
    })
}

/// What the server needs; built by `luna-server` or by a test.
pub struct Config {
    pub store: Store,
    /// This instance's name, in its audit records and forwarding leases.
    pub instance: String,
    pub module: Arc<Module>,
    pub auth: Auth,
    pub tenancy: Tenancy,
    pub runner: RunnerSettings,
    pub tls: Option<rustls::ServerConfig>,
    /// `tls` asks clients for certificates (`--xks-client-ca`): XKS calls
    /// are taken only with one issued to this name (`{region}` is the
    /// keystore's; `--xks-client-subject`).
    pub xks_client_subject: Option<String>,
    pub http_workers: usize,
    /// A request not answered within this (its body trickled in, say) ends
    /// 408 and its connection closes: no client holds a socket for ever.
    pub request_deadline: std::time::Duration,
    /// Where the audit trail is forwarded (none: it stays in the database),
    /// and how.
    pub audit_sinks: Vec<crate::forward::Sink>,
    pub forward: crate::forward::ForwardSettings,
    /// `healthz` says `degraded` while a sink is more records behind than this.
    pub audit_lag_bound: i64,
    /// Tests and benchmarks only: opens member tokens in place of the module.
    pub token_opener: Option<luna_runner::tokens::TokenOpener>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("store", &self.store)
            .field("module", &self.module.path())
            .field("runner", &self.runner)
            .field("http_workers", &self.http_workers)
            .field("token_opener", &self.token_opener.is_some())
            .finish_non_exhaustive()
    }
}

/// A started server and its operation runner.
pub struct Running {
    pub server: Server,
    pub runner: Arc<Runner>,
    forwarders: crate::forward::Forwarders,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running").finish_non_exhaustive()
    }
}

impl Running {
    /// Serves until the server stops (a signal, or its handle), then lets the
    /// workers finish the token calls they are in, for `WORKERS_STOP_WITHIN`
    /// at most: a call that hangs must not hang the stop (its operation's
    /// lease runs out and another instance, or this one restarted, takes it).
    pub async fn run(self) -> std::io::Result<()> {
        let served = self.server.await;
        self.runner.stop();
        let forwarders = self.forwarders;
        let _ = actix_web::web::block(move || forwarders.stop()).await;
        let deadline = tokio::time::Instant::now() + WORKERS_STOP_WITHIN;
        for worker in self.workers {
            if tokio::time::timeout_at(deadline, worker).await.is_err() {
                tracing::error!(
                    within_secs = WORKERS_STOP_WITHIN.as_secs(),
                    "a worker did not finish its token call; stopping without it"
                );
                break;
            }
        }
        served
    }
}

/// How often the tokens in use are looked at: a token that is away at
/// every tick, the others less often (every 5 s: luna-runner `tokens.rs`).
const TOKEN_WATCH_TICK: std::time::Duration = std::time::Duration::from_millis(500);

/// How long a stop waits for the workers' token calls.
const WORKERS_STOP_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

/// Starts the runner and the server on `listener`. Call inside an actix system.
pub fn start(config: Config, listener: TcpListener) -> std::io::Result<Running> {
    let work = Arc::new(Notify::new());
    let metrics = luna_runner::metrics::Metrics::new().map_err(std::io::Error::other)?;
    let edge_metrics = crate::metrics::EdgeMetrics::new(&metrics).map_err(std::io::Error::other)?;
    let tokens = Arc::new(OpenTokens::new(
        config.module,
        config.store.clone(),
        Arc::clone(&metrics),
        config.token_opener,
    ));
    let runner = Runner::new(
        config.store.clone(),
        Arc::clone(&tokens),
        Arc::clone(&work),
        config.runner,
        &config.instance,
    );
    // Looks at the tokens in use for as long as the runtime runs.
    tokio::spawn(Arc::clone(&tokens).watch(Arc::clone(&work), TOKEN_WATCH_TICK));
    let forwarders = crate::forward::Forwarders::start(
        &config.store,
        &config.audit_sinks,
        &config.instance,
        &config.forward,
        &edge_metrics,
    )?;
    let state = web::Data::new(AppState {
        store: config.store,
        instance: config.instance,
        audit_sinks: config.audit_sinks.iter().map(|s| s.name.clone()).collect(),
        audit_lag_bound: config.audit_lag_bound,
        auth: web::Data::new(config.auth),
        tenancy: config.tenancy,
        work,
        metrics,
        edge_metrics,
        logins: crate::throttle::LoginThrottle::default(),
        sessions: web::Data::new(crate::auth::LiveSessions::default()),
        stuck: runner.stuck_operations(),
        runner: Arc::clone(&runner),
        external_keys: Arc::new(luna_runner::ExternalKeys::new(Arc::clone(&tokens))),
        tokens,
        xks_lookups: Arc::default(),
        xks_client_subject: config.xks_client_subject,
        xks_calls_in_flight: Default::default(),
    });
    let request_deadline = config.request_deadline;
    // What the auth check reads, apart from the rest of the state.
    let store_data = web::Data::new(state.store.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(state.auth.clone())
            .app_data(state.sessions.clone())
            .app_data(store_data.clone())
            .app_data(json_config())
            .app_data(path_config())
            .wrap(middleware::Compress::default())
            // No answer is to be taken for another content type than it says.
            .wrap(
                middleware::DefaultHeaders::new()
                    .add((actix_web::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff")),
            )
            // Inside the request id: a request cut off is logged, counted and
            // audited like any other answer.
            .wrap_fn(move |req, service| {
                let answer = actix_web::dev::Service::call(service, req);
                async move {
                    tokio::time::timeout(request_deadline, answer)
                        .await
                        .unwrap_or_else(|_| Err(ApiError::RequestTimeout(request_deadline.as_secs()).into()))
                }
            })
            .wrap(middleware::from_fn(crate::request_id::middleware))
            // `/auth/tokens/` (as CipherTrust clients send it) is `/auth/tokens`.
            .wrap(middleware::NormalizePath::trim())
            // Outside NormalizePath: the path as sent, which SigV4 signed.
            .wrap_fn(|req, service| {
                let raw = crate::state::RawPath(req.path().to_owned());
                actix_web::HttpMessage::extensions_mut(&req).insert(raw);
                actix_web::dev::Service::call(service, req)
            })
            // The XKS proxy API: its own routes, errors and authentication,
            // outside the document. First: where a keystore is served, KMS
            // calls it for every encrypt and decrypt, far more often than
            // anything else is called (and a CCKM request pays three regex
            // misses for it).
            .service(crate::xks::key_call)
            .service(crate::xks::health)
            .service(crate::xks::not_post)
            .service(crate::xks::no_such_call)
            .configure(|cfg| routes(&mut ServiceConfig::new(cfg)))
            .configure(crate::console::routes)
            .default_service(web::to(no_route))
    })
    // A connection whose client certificate the TLS layer checked is marked
    // so (its XKS calls are let through when mutual TLS is on).
    .on_connect(|connection, data| {
        type Tls = actix_tls::accept::rustls_0_23::TlsStream<actix_web::rt::net::TcpStream>;
        if let Some(tls) = connection.downcast_ref::<Tls>() {
            if let Some(certificate) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                data.insert(crate::state::ClientCertified {
                    common_names: crate::certificate::common_names(certificate),
                });
            }
        }
    })
    .workers(config.http_workers.max(1))
    // Lets requests in flight finish on shutdown.
    .shutdown_timeout(30);
    let server = match config.tls {
        Some(tls) => server.listen_rustls_0_23(listener, tls)?,
        None => server.listen(listener)?,
    }
    .run();
    let workers = runner.start();
    Ok(Running {
        server,
        runner,
        forwarders,
        workers,
    })
}

/// Creates the `admin` user on first start: with the given password, or a
/// generated one that is written once to `password_file` (mode 0600) and
/// returned for the caller to show once. Audited as instance `instance`'s.
pub fn bootstrap_admin(
    store: &Store,
    instance: &str,
    password: Option<&SecretString>,
    password_file: &Path,
) -> Result<Option<SecretString>, ApiError> {
    if store.user_by_name("admin")?.is_some() {
        return Ok(None);
    }
    let (password, generated) = match password {
        Some(p) => (p.clone(), false),
        None => (
            SecretString::from(Alphanumeric.sample_string(&mut rand::rngs::OsRng, 24)),
            true,
        ),
    };
    let user = NewUser {
        username: "admin".into(),
        password_hash: hash_password(&password)?,
        groups: vec!["admin".into()],
    };
    let audit = luna_runner::audit::by_the_service(instance, "bootstrap admin", "user");
    store.insert_user(&user, luna_store::now(), &audit)?;
    if !generated {
        return Ok(None);
    }
    write_secret_file(password_file, &password)
        .map_err(|e| ApiError::Internal(format!("writing {}: {e}", password_file.display())))?;
    Ok(Some(password))
}

fn write_secret_file(path: &Path, secret: &SecretString) -> std::io::Result<()> {
    use secrecy::ExposeSecret;
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    writeln!(file, "{}", secret.expose_secret())?;
    file.sync_all()
}
