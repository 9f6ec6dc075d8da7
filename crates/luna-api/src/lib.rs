//! The edge of luna-cckm: the service layer over the store and the tokens,
//! and (next issue) the actix-web handlers, auth, the error→HTTP mapping and
//! the durable operation runner.
//!
//! Invariant: this is the only crate that will know HTTP and JSON; it reaches
//! tokens only through `luna_pkcs11::Partition` and data only through `luna_store::Store`.

pub mod error;
pub mod registry;

pub use error::ApiError;
