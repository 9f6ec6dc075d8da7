//! The edge of luna-cckm: HTTP handlers, auth, the error→HTTP mapping, the
//! views (JSON), the open tokens and the durable operation runner.
//!
//! Invariants: this is the only crate that knows HTTP and JSON; it reaches
//! tokens only through `luna_pkcs11::Token` and data only through
//! `luna_store::Store`; database and token calls run on the blocking pool,
//! never on an async worker; every mutating request records its work as a
//! durable operation in the same transaction as its records, before it answers.

pub mod audit;
pub mod auth;
pub mod certificate;
pub mod console;
pub mod error;
pub mod forward;
pub mod handlers;
pub mod metrics;
pub mod openapi;
pub mod registry;
pub mod request_id;
pub mod runner;
pub mod server;
pub mod state;
#[cfg(feature = "testing")]
pub mod testing;
pub mod throttle;
pub mod tls;
pub mod tokens;
pub mod view;

pub use error::ApiError;
