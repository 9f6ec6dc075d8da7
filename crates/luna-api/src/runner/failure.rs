//! Why an operation's attempt failed, and whether trying again may help.

use luna_domain::Key;

use crate::tokens::Unavailable;

/// What an operation's work left: the key records to write, or why it failed.
pub(super) type Outcome = Result<Vec<Key>, Failure>;

/// Why an operation's attempt did not succeed. A transient failure (the
/// device failed, the token is away) is tried again later, within a bounded
/// budget (`Operation::retry_delay`); a final one ends the operation.
#[derive(Debug)]
pub(super) enum Failure {
    Final(String),
    Transient(String),
    /// This instance's module does not list a token the work needs; another
    /// instance's may (`RunnerSettings::pass_on_for`).
    NotHere(String),
}

impl Failure {
    /// A database error: transient when the database cannot be reached now
    /// (or the pool was busy), else final; `what` says what was being read.
    pub(super) fn store(what: &'static str) -> impl Fn(luna_store::StoreError) -> Failure + Copy {
        move |error| {
            let reason = format!("{what}: {error}");
            if error.is_unavailable() {
                Failure::Transient(reason)
            } else {
                Failure::Final(reason)
            }
        }
    }

    pub(super) fn token(error: luna_pkcs11::TokenError) -> Failure {
        if error.is_transient() {
            Failure::Transient(error.to_string())
        } else {
            Failure::Final(error.to_string())
        }
    }

    /// The same failure, naming the member it happened on.
    pub(super) fn on(self, member: &str) -> Failure {
        match self {
            Failure::Final(reason) => Failure::Final(format!("{member}: {reason}")),
            Failure::Transient(reason) => Failure::Transient(format!("{member}: {reason}")),
            Failure::NotHere(reason) => Failure::NotHere(format!("{member}: {reason}")),
        }
    }

    pub(super) fn reason(&self) -> &str {
        match self {
            Failure::Final(reason) | Failure::Transient(reason) | Failure::NotHere(reason) => reason,
        }
    }

    /// Several failures as one: transient only if every one may pass.
    pub(super) fn all(failures: Vec<Failure>) -> Failure {
        let transient = failures
            .iter()
            .all(|f| matches!(f, Failure::Transient(_) | Failure::NotHere(_)));
        let reason = failures
            .iter()
            .map(Failure::reason)
            .collect::<Vec<_>>()
            .join("; ");
        if transient {
            Failure::Transient(reason)
        } else {
            Failure::Final(reason)
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

impl From<Unavailable> for Failure {
    fn from(unavailable: Unavailable) -> Failure {
        if unavailable.missing_here {
            Failure::NotHere(unavailable.reason)
        } else if unavailable.transient {
            Failure::Transient(unavailable.reason)
        } else {
            Failure::Final(unavailable.reason)
        }
    }
}
