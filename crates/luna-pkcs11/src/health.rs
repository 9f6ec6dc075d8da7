//! Whether a token answers, as this process last found it.

use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

/// A token's reachability: what callers (the runner, the health check, the
/// partition's page) read to tell "not reachable now" from "reachable again".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reachability {
    /// Since when calls on the token have failed in a way that means it is
    /// gone (and a fresh session could not reach it either); `None` while it answers.
    pub away_since: Option<SystemTime>,
    /// Why it was last found unreachable; kept after it comes back.
    pub last_error: Option<String>,
    /// How many times it went away.
    pub outages: u64,
    /// How many times it came back (sessions opened and logged in again).
    pub recoveries: u64,
}

impl Reachability {
    pub fn is_reachable(&self) -> bool {
        self.away_since.is_none()
    }
}

/// How often a token known to be away is looked at again (a cheap check:
/// its slot, a fresh session and a login).
pub(crate) const PROBE_AWAY_EVERY: Duration = Duration::from_millis(500);

#[derive(Debug, Default)]
pub(crate) struct Health {
    state: Mutex<HealthState>,
}

#[derive(Debug, Default)]
struct HealthState {
    now: Reachability,
    /// When a token that is away may be checked again.
    next_probe: Option<Instant>,
}

impl Health {
    pub(crate) fn snapshot(&self) -> Reachability {
        self.state.lock().now.clone()
    }

    /// True while the token is away and not due for another look.
    pub(crate) fn away_and_not_due(&self) -> bool {
        let state = self.state.lock();
        state.now.away_since.is_some() && state.next_probe.is_some_and(|at| Instant::now() < at)
    }

    /// The token did not answer a fresh session either: it is away (since
    /// now, unless it already was).
    pub(crate) fn went_away(&self, why: String) {
        let mut state = self.state.lock();
        if state.now.away_since.is_none() {
            state.now.away_since = Some(SystemTime::now());
            state.now.outages += 1;
        }
        state.now.last_error = Some(why);
        state.next_probe = Some(Instant::now() + PROBE_AWAY_EVERY);
    }

    /// The token answered; true if it had been away (a recovery).
    pub(crate) fn answered(&self) -> bool {
        let mut state = self.state.lock();
        state.next_probe = None;
        if state.now.away_since.take().is_some() {
            state.now.recoveries += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_counted_once_and_its_end_is_a_recovery() {
        let health = Health::default();
        assert!(health.snapshot().is_reachable());
        assert!(!health.answered(), "answering while reachable is no recovery");
        health.went_away("C_GetTokenInfo returned CKR_GENERAL_ERROR".into());
        let since = health.snapshot().away_since;
        health.went_away("C_OpenSession returned CKR_TOKEN_NOT_PRESENT".into());
        let away = health.snapshot();
        assert_eq!(
            (away.away_since, away.outages),
            (since, 1),
            "one outage, from its start"
        );
        assert_eq!(
            away.last_error.as_deref(),
            Some("C_OpenSession returned CKR_TOKEN_NOT_PRESENT")
        );
        assert!(health.away_and_not_due());
        assert!(health.answered());
        let back = health.snapshot();
        assert!(back.is_reachable() && back.recoveries == 1 && back.last_error.is_some());
    }
}
