//! systemd's notification protocol, for a `Type=notify` unit: ready once
//! listening, the watchdog fed only while the instance is healthy (the
//! database answers, no token call hangs), stopping.

use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::time::Duration;

use luna_runner::StuckOperations;
use luna_store::Store;

/// The supervisor's socket (`NOTIFY_SOCKET`), when there is one.
#[derive(Debug)]
pub struct Supervisor {
    socket: UnixDatagram,
    to: SocketAddr,
}

impl Supervisor {
    /// systemd's socket, a path or (`@…`) an abstract name; `None` when the
    /// process was not started by a `Type=notify` unit.
    pub fn from_env() -> Option<Supervisor> {
        let name = std::env::var("NOTIFY_SOCKET").ok()?;
        let to = match name.strip_prefix('@') {
            Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name.as_bytes()).ok()?,
            None => SocketAddr::from_pathname(&name).ok()?,
        };
        Some(Supervisor {
            socket: UnixDatagram::unbound().ok()?,
            to,
        })
    }

    /// Sends one state (`READY=1`, `WATCHDOG=1`, `STOPPING=1`); a supervisor
    /// that does not listen is not an error of the service's.
    pub fn tell(&self, state: &str) {
        if let Err(error) = self.socket.send_to_addr(state.as_bytes(), &self.to) {
            tracing::warn!(%error, state, "the supervisor's notification socket refused a message");
        }
    }

    /// Feeds the watchdog (`WATCHDOG_USEC`, for this process) at half its
    /// period, from a thread of its own, while the instance is healthy: a
    /// hung token call or a database that does not answer lets it starve,
    /// and systemd restarts the service.
    pub fn watch(self: Arc<Self>, store: Store, stuck: Arc<StuckOperations>) {
        let Some(period) = watchdog_period() else {
            return;
        };
        let spawned = std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || loop {
                if stuck.longest().is_none() && store.ping().is_ok() {
                    self.tell("WATCHDOG=1");
                }
                std::thread::sleep(period / 2);
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "the watchdog thread could not start; the supervisor's watchdog will restart the service");
        }
    }
}

/// The watchdog's period, if the supervisor set one for this process.
fn watchdog_period() -> Option<Duration> {
    let for_pid = std::env::var("WATCHDOG_PID").ok();
    if for_pid.is_some_and(|pid| pid.trim() != std::process::id().to_string()) {
        return None;
    }
    let micros: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (micros > 0).then(|| Duration::from_micros(micros))
}
