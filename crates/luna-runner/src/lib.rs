//! The work of luna-cckm that needs no HTTP: the durable operation runner
//! (`runner`: settings and life; `dispatch`: claims, leases, the stuck
//! watchdog; `room`: how much an instance runs; `attempt`: one attempt and
//! its outcome; `keys`, `jobs`, `transfer`; `backlog`; `failure`), the member
//! tokens an instance holds open and their metering (`tokens`, `metrics`),
//! registering connections and partitions (`registry`), firing schedules
//! (`schedules`), and the audit
//! records the service makes of its own accord (`audit`).
//!
//! Another CCKM service embeds it with luna-domain, luna-pkcs11 and
//! luna-store and without actix: luna-api is its HTTP edge.

mod accept;
mod attempt;
pub mod audit;
mod backlog;
mod dispatch;
mod error;
pub mod external_keys;
mod failure;
mod jobs;
mod keys;
pub mod metrics;
pub mod registry;
mod room;
pub mod runner;
mod schedules;
pub mod tokens;
mod transfer;

pub use backlog::{Admitted, Backlog, QueueFull, QueueState};
pub use dispatch::StuckOperations;
pub use error::RunnerError;
pub use external_keys::ExternalKeys;
pub use failure::Failure;
pub use metrics::Metrics;
pub use room::Admission;
pub use runner::{Hook, Runner, RunnerSettings};
pub use tokens::{OpenTokens, TokenOpener, WatchedToken};
