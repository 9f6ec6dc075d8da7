//! Why an operation's attempt failed, and whether trying again may help.

use std::time::SystemTime;

use luna_domain::{Key, KeyVersion};

/// What an operation's work left: the key records to write, or why it failed.
/// An operation's key records as it leaves them, each with the version the
/// operation read it at (the outcome is written as a compare-and-set on it).
pub(crate) type Outcome = Result<Vec<(Key, KeyVersion)>, Failure>;

/// Why an operation's attempt did not succeed. A transient failure (the
/// device failed, the token is away) is tried again later, within a bounded
/// budget (`Operation::retry_delay`); a final one ends the operation.
#[derive(Debug)]
pub enum Failure {
    Final(String),
    Transient(String),
    /// This instance's module does not list a token the work needs; another
    /// instance's may (`RunnerSettings::pass_on_for`).
    NotHere(String),
    /// A token the work needs is away (named `token`, since `since`): the
    /// work waits for it, uncounted, up to `RunnerSettings::token_outage`.
    Away {
        reason: String,
        token: String,
        since: SystemTime,
    },
    /// The module was re-initialised under the work (a handle it held was
    /// issued before): it starts again at once, uncounted.
    Interrupted(String),
}

impl Failure {
    /// A database error: transient when the database cannot be reached now
    /// (or the pool was busy), else final; `what` says what was being read.
    pub(crate) fn store(what: &'static str) -> impl Fn(luna_store::StoreError) -> Failure + Copy {
        move |error| {
            let reason = format!("{what}: {error}");
            if error.is_unavailable() {
                Failure::Transient(reason)
            } else {
                Failure::Final(reason)
            }
        }
    }

    /// A token error, by what it means for the work: a token away (wait for
    /// it), a re-initialisation under the work (start again), a failure that
    /// may pass, or one that will not.
    pub(crate) fn token(error: luna_pkcs11::TokenError) -> Failure {
        Failure::of(&error, error.to_string())
    }

    /// `token`, said as `reason`: the one reading of a token error for the
    /// work (opening a token adds one case: `tokens.rs` `open_failure`).
    pub(crate) fn of(error: &luna_pkcs11::TokenError, reason: String) -> Failure {
        if let Some((token, since)) = error.away() {
            Failure::Away { reason, token, since }
        } else if error.is_interrupted() {
            Failure::Interrupted(reason)
        } else if error.is_transient() {
            Failure::Transient(reason)
        } else {
            Failure::Final(reason)
        }
    }

    /// The same failure, naming the member it happened on.
    pub(crate) fn on(self, member: &str) -> Failure {
        match self {
            Failure::Final(reason) => Failure::Final(format!("{member}: {reason}")),
            Failure::Transient(reason) => Failure::Transient(format!("{member}: {reason}")),
            Failure::NotHere(reason) => Failure::NotHere(format!("{member}: {reason}")),
            Failure::Away { reason, token, since } => Failure::Away {
                reason: format!("{member}: {reason}"),
                token,
                since,
            },
            Failure::Interrupted(reason) => Failure::Interrupted(format!("{member}: {reason}")),
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Failure::Final(reason)
            | Failure::Transient(reason)
            | Failure::NotHere(reason)
            | Failure::Away { reason, .. }
            | Failure::Interrupted(reason) => reason,
        }
    }

    /// Several failures as one: final if any is; else waiting for a token if
    /// any token is away (the first one named); else transient.
    pub(crate) fn all(failures: Vec<Failure>) -> Failure {
        let reason = failures
            .iter()
            .map(Failure::reason)
            .collect::<Vec<_>>()
            .join("; ");
        if failures.iter().any(|f| matches!(f, Failure::Final(_))) {
            return Failure::Final(reason);
        }
        match failures.into_iter().find_map(|f| match f {
            Failure::Away { token, since, .. } => Some((token, since)),
            _ => None,
        }) {
            Some((token, since)) => Failure::Away { reason, token, since },
            None => Failure::Transient(reason),
        }
    }
}

impl From<String> for Failure {
    fn from(reason: String) -> Failure {
        Failure::Final(reason)
    }
}

impl From<&str> for Failure {
    fn from(reason: &str) -> Failure {
        Failure::Final(reason.to_owned())
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}
