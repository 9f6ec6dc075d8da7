//! The edge of luna-cckm: HTTP handlers, auth, the error→HTTP mapping, the
//! views (JSON) and audit forwarding; the open tokens and the durable
//! operation runner are luna-runner's.
//!
//! Invariants: this is the only crate that knows HTTP, and with the audit
//! forwarder the only one that speaks the API's JSON; it runs token work
//! through luna-runner and reaches data only through `luna_store::Store`;
//! database and token calls run on the blocking pool, never on an async
//! worker; a mutating key request writes its records and its durable
//! operation in one transaction, with its audit record, before it answers.

pub mod audit;
pub mod auth;
pub mod certificate;
pub mod console;
pub mod error;
pub mod forward;
pub mod handlers;
pub mod lookups;
pub mod metrics;
pub mod openapi;
pub mod request_id;
pub mod server;
pub mod sigv4;
pub mod state;
#[cfg(feature = "testing")]
pub mod testing;
pub mod throttle;
pub mod tls;
pub mod view;
pub mod xks;

pub use error::ApiError;
