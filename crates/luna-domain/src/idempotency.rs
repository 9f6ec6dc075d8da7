//! Idempotent creates: a client that lost the answer to a create sends the
//! same request again with the same `Idempotency-Key` and gets the first
//! answer, not a second resource. The key is the caller's: two callers may
//! use the same one.

use uuid::Uuid;

use crate::error::{DomainError, Result};

/// The longest `Idempotency-Key` taken.
pub const MAX_KEY_CHARS: usize = 255;

/// A create made under an `Idempotency-Key`: who asked, their key, the
/// route, and a digest of what they asked (the body, PINs left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotentRequest {
    /// The authenticated user: keys are scoped per caller, so two users'
    /// equal keys never meet.
    pub caller: String,
    /// The `Idempotency-Key` header's value, as checked by [`IdempotentRequest::new`].
    pub key: String,
    /// Method and path (e.g. `POST /api/v1/cckm/hsm/luna/keys`): the same
    /// key on another route is another request.
    pub route: String,
    /// A digest of the body with its PINs left out (a digest of a short PIN
    /// could be reversed): equal digests mean the same request.
    pub body_digest: String,
}

/// What an earlier create under the same caller and key means for this one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replay {
    /// The same request: answer with the resource it made.
    Same(Uuid),
    /// Another request under a key already used: refused.
    Other,
}

impl IdempotentRequest {
    /// Checks the header's value, `key`: 1 to 255 visible ASCII characters.
    /// `caller`, `route` and `body_digest` are the edge's and taken as given.
    pub fn new(caller: &str, key: &str, route: &str, body_digest: String) -> Result<IdempotentRequest> {
        if key.is_empty() || key.len() > MAX_KEY_CHARS || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(DomainError::Invalid(format!(
                "the Idempotency-Key header must be 1 to {MAX_KEY_CHARS} visible ASCII characters"
            )));
        }
        Ok(IdempotentRequest {
            caller: caller.to_owned(),
            key: key.to_owned(),
            route: route.to_owned(),
            body_digest,
        })
    }

    /// This request against the one `first` made under its caller and key,
    /// which created `made`: the same route and body replay `made`; anything
    /// else under that key is refused.
    pub fn replay_of(&self, first: &IdempotentRequest, made: Uuid) -> Replay {
        if first.route == self.route && first.body_digest == self.body_digest {
            Replay::Same(made)
        } else {
            Replay::Other
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_answers_the_same_request_and_refuses_another() {
        let first = IdempotentRequest::new("admin", "create-1", "POST /keys", "d1".into()).unwrap();
        let made = Uuid::new_v4();
        assert_eq!(first.replay_of(&first, made), Replay::Same(made));
        let other_body = IdempotentRequest::new("admin", "create-1", "POST /keys", "d2".into()).unwrap();
        assert_eq!(other_body.replay_of(&first, made), Replay::Other);
        let other_route = IdempotentRequest::new("admin", "create-1", "POST /refresh", "d1".into()).unwrap();
        assert_eq!(other_route.replay_of(&first, made), Replay::Other);
        for bad in ["", "with space", "tab\t", &"x".repeat(256), "é"] {
            assert!(
                IdempotentRequest::new("admin", bad, "r", "d".into()).is_err(),
                "{bad:?}"
            );
        }
        assert!(IdempotentRequest::new("admin", &"x".repeat(255), "r", "d".into()).is_ok());
    }
}
