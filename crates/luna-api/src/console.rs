//! The operators' web console, served by the server itself at `/ui/` (and
//! `/` sends a browser there). Its three files are compiled into the binary:
//! nothing to install, no JavaScript toolchain. The console speaks only the
//! public API with a bearer token, like any other client; what it may show
//! or do is decided by the API, not here.

use actix_web::http::header;
use actix_web::{get, web, HttpResponse};

const INDEX: &str = include_str!("../console/index.html");
const APP_JS: &str = include_str!("../console/app.js");
const APP_CSS: &str = include_str!("../console/app.css");

/// Only this origin's script, style and API; no inline script or style, no
/// plugin, never framed, no form posted anywhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The console's routes (`NormalizePath` has already made `/ui/` into
/// `/ui`). Not API operations, so not in `server::routes` nor the OpenAPI
/// document; registered with `service` all the same.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(to_console)
        .service(index)
        .service(app_js)
        .service(app_css);
}

#[get("/")]
async fn to_console() -> HttpResponse {
    HttpResponse::Found()
        .insert_header((header::LOCATION, "/ui/"))
        .finish()
}

#[get("/ui")]
async fn index() -> HttpResponse {
    asset("text/html; charset=utf-8", INDEX)
}

#[get("/ui/app.js")]
async fn app_js() -> HttpResponse {
    asset("text/javascript; charset=utf-8", APP_JS)
}

#[get("/ui/app.css")]
async fn app_css() -> HttpResponse {
    asset("text/css; charset=utf-8", APP_CSS)
}

fn asset(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, content_type))
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        // Always asked again: an upgraded server serves its own console.
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}
