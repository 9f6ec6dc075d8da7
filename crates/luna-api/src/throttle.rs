//! Failed logins, throttled: counted per (user name, client address) and per
//! client address. Past a few failures in a row, every further attempt from
//! there must wait a delay that doubles (1 s, 2 s, … 60 s at most), and is
//! answered 429 with `Retry-After` without its password being checked. Each
//! attempt counts as a failure until it succeeds (so guesses sent in parallel
//! are all counted); a success clears the (user, address) count and gives
//! the address its attempt back.
//!
//! Nothing locks a user out for good: the delay is bounded, and each address
//! is counted apart, so an attacker elsewhere cannot lock the administrator
//! out of their own address. Counts live in this instance's memory.

use std::collections::HashMap;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

/// Failures in a row a (user, address) gets before it must wait.
const FREE_PER_USER: u32 = 5;
/// Failures in a row an address gets, whatever the user names, before it must wait.
const FREE_PER_ADDRESS: u32 = 20;
/// The longest wait.
const MAX_DELAY: Duration = Duration::from_secs(60);
/// Counts not touched for this long are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Past this many counts, forgotten ones are swept out on the next failure.
const SWEEP_ABOVE: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Counted {
    UserAt(String, String),
    Address(String),
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    in_a_row: u32,
    wait_until: Instant,
    last: Instant,
}

#[derive(Debug, Default)]
pub struct LoginThrottle {
    counts: Mutex<HashMap<Counted, Failures>>,
}

impl LoginThrottle {
    /// `Err(wait)` when a login of `user` from `address` must wait first.
    pub fn check(&self, user: &str, address: &str, now: Instant) -> Result<(), Duration> {
        let counts = self.counts.lock();
        let wait = [
            Counted::UserAt(user.to_owned(), address.to_owned()),
            Counted::Address(address.to_owned()),
        ]
        .iter()
        .filter_map(|key| counts.get(key))
        .map(|f| f.wait_until.saturating_duration_since(now))
        .max()
        .unwrap_or_default();
        if wait.is_zero() {
            Ok(())
        } else {
            Err(wait)
        }
    }

    pub fn failed(&self, user: &str, address: &str, now: Instant) {
        let mut counts = self.counts.lock();
        if counts.len() > SWEEP_ABOVE {
            counts.retain(|_, f| now.saturating_duration_since(f.last) < FORGET_AFTER);
        }
        for (key, free) in [
            (
                Counted::UserAt(user.to_owned(), address.to_owned()),
                FREE_PER_USER,
            ),
            (Counted::Address(address.to_owned()), FREE_PER_ADDRESS),
        ] {
            let failures = counts.entry(key).or_insert(Failures {
                in_a_row: 0,
                wait_until: now,
                last: now,
            });
            if now.saturating_duration_since(failures.last) >= FORGET_AFTER {
                failures.in_a_row = 0;
            }
            failures.in_a_row += 1;
            failures.last = now;
            if failures.in_a_row >= free {
                let doublings = (failures.in_a_row - free).min(6);
                failures.wait_until = now + Duration::from_secs(1 << doublings).min(MAX_DELAY);
            }
        }
    }

    /// A login of `user` from `address` succeeded: its count starts again,
    /// and the address gets back the failure its attempt was counted as.
    pub fn succeeded(&self, user: &str, address: &str) {
        let mut counts = self.counts.lock();
        counts.remove(&Counted::UserAt(user.to_owned(), address.to_owned()));
        if let Some(failures) = counts.get_mut(&Counted::Address(address.to_owned())) {
            failures.in_a_row = failures.in_a_row.saturating_sub(1);
            if failures.in_a_row < FREE_PER_ADDRESS {
                failures.wait_until = failures.last;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_five_failures_a_user_at_an_address_waits_a_doubling_bounded_delay() {
        let throttle = LoginThrottle::default();
        let t = Instant::now();
        for _ in 0..4 {
            throttle.failed("admin", "10.0.0.9", t);
            assert_eq!(throttle.check("admin", "10.0.0.9", t), Ok(()));
        }
        throttle.failed("admin", "10.0.0.9", t);
        assert_eq!(
            throttle.check("admin", "10.0.0.9", t),
            Err(Duration::from_secs(1))
        );
        // Another address is counted apart: the administrator can still log in there.
        assert_eq!(throttle.check("admin", "10.0.0.1", t), Ok(()));
        for _ in 0..20 {
            throttle.failed("admin", "10.0.0.9", t);
        }
        assert_eq!(throttle.check("admin", "10.0.0.9", t), Err(MAX_DELAY), "bounded");
        assert_eq!(
            throttle.check("admin", "10.0.0.9", t + MAX_DELAY),
            Ok(()),
            "never for good"
        );
        throttle.succeeded("admin", "10.0.0.9");
        // The address, having failed 25 times, still waits for any user.
        assert!(throttle.check("someone", "10.0.0.9", t).is_err());
    }

    #[test]
    fn an_address_trying_many_users_waits_too() {
        let throttle = LoginThrottle::default();
        let t = Instant::now();
        for n in 0..FREE_PER_ADDRESS {
            throttle.failed(&format!("user{n}"), "10.0.0.7", t);
        }
        assert_eq!(
            throttle.check("user-new", "10.0.0.7", t),
            Err(Duration::from_secs(1))
        );
        assert_eq!(throttle.check("user-new", "10.0.0.8", t), Ok(()));
    }

    #[test]
    fn logins_that_succeed_never_add_up_at_an_address() {
        let throttle = LoginThrottle::default();
        let t = Instant::now();
        for _ in 0..100 {
            assert_eq!(throttle.check("admin", "10.0.0.5", t), Ok(()));
            throttle.failed("admin", "10.0.0.5", t);
            throttle.succeeded("admin", "10.0.0.5");
        }
        assert_eq!(throttle.check("other", "10.0.0.5", t), Ok(()));
    }
}
