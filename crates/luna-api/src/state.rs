//! What every handler shares.

use std::sync::Arc;

use luna_store::Store;
use tokio::sync::Notify;

use crate::auth::Auth;
use crate::view::Tenancy;
use luna_runner::tokens::OpenTokens;

/// Marks a connection whose client certificate the TLS layer checked, with
/// the common names of its subject (what an XKS keystore's name is held to).
#[derive(Debug, Clone)]
pub struct ClientCertified {
    pub common_names: Vec<String>,
}

/// A request's path as the client sent it, before `NormalizePath`: what a
/// SigV4 signature covers.
#[derive(Debug, Clone)]
pub struct RawPath(pub String);

#[derive(Debug)]
pub struct AppState {
    pub store: Store,
    /// This instance's name, in its audit records.
    pub instance: String,
    /// The names of the sinks the audit trail is forwarded to, and the lag
    /// past which `healthz` says `degraded`.
    pub audit_sinks: Vec<String>,
    pub audit_lag_bound: i64,
    pub tokens: Arc<OpenTokens>,
    /// Registered as application data too: the auth check reads it.
    pub auth: actix_web::web::Data<Auth>,
    pub tenancy: Tenancy,
    /// Wakes an idle worker as soon as an operation is queued.
    pub work: Arc<Notify>,
    /// The instance's figures (the runner's, in whose registry the edge's are too).
    pub metrics: Arc<luna_runner::metrics::Metrics>,
    /// The requests' and audit forwarding's figures.
    pub edge_metrics: Arc<crate::metrics::EdgeMetrics>,
    /// Failed logins, per user and client address (see `throttle`).
    pub logins: crate::throttle::LoginThrottle,
    /// What this instance last read of the login sessions tokens name.
    pub sessions: actix_web::web::Data<crate::auth::LiveSessions>,
    /// Operations whose token work hangs; the health check reports them.
    pub stuck: Arc<luna_runner::StuckOperations>,
    /// The operation runner: a create claims its operation for this
    /// instance as it is accepted, when there is room (`Runner::admit`).
    pub runner: Arc<luna_runner::Runner>,
    /// The tokens as XKS calls use them (the external keys' handles kept).
    pub external_keys: Arc<luna_runner::ExternalKeys>,
    /// What XKS calls read of the database, kept for a second.
    pub xks_lookups: Arc<crate::lookups::XksLookups>,
    /// With mutual TLS for XKS calls: the name their client certificate must
    /// carry (`{region}` is the keystore's).
    pub xks_client_subject: Option<String>,
    /// XKS calls in flight on this instance.
    pub xks_calls_in_flight: std::sync::atomic::AtomicUsize,
}
