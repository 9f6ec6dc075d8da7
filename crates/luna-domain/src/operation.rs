//! Durable operations: the queue entries that carry accepted work across crashes.
//!
//! A request that changes a key or starts a job writes its records and an
//! [`Operation`] in one transaction and answers; a worker then claims the
//! operation under a lease, does the token work and finishes it. A worker
//! that dies leaves its lease to run out, and another worker claims the
//! operation again, up to [`MAX_ATTEMPTS`] times.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::attribute::Attribute;
use crate::error::{DomainError, Result};
use crate::key::OperationKind;
use crate::wire::wire_enum;

wire_enum! {
    /// Where an operation is in the queue.
    pub enum OperationState ("operation state") {
        /// Waiting for a worker.
        Queued => "queued",
        /// Claimed by a worker whose lease runs until `lease_expires_at`;
        /// claimable again once it has run out.
        Running => "running",
        /// The work is done. Final.
        Succeeded => "succeeded",
        /// The work failed for good; `last_error` says why. Final.
        Failed => "failed",
    }
}

/// What the lease of an operation parked on an away token starts with.
const PARKED_PREFIX: &str = "parked:";

/// After this many claims an operation that never finished (say, one that
/// crashes the process each time) ends `failed` instead of running again.
pub const MAX_ATTEMPTS: u32 = 5;

/// What an operation does. Stored with the operation, so a worker that takes
/// it up after a crash needs nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OperationPayload {
    /// Generates the key on the first member and clones it to the others.
    CreateKey {
        /// The secret or private key's record.
        key_id: Uuid,
        /// The public half's record, for an RSA pair.
        public_key_id: Option<Uuid>,
    },
    /// Sets attributes on every member that holds the key.
    UpdateKey {
        /// The record PATCHed (only that half of a pair).
        key_id: Uuid,
        /// The effective changes, as [`crate::key::check_update`] returned them.
        changes: Vec<(Attribute, bool)>,
    },
    /// Copies the key (both halves of a pair) to the members that lack it.
    ReplicateKey {
        /// Either half's record; its linked half goes too.
        key_id: Uuid,
    },
    /// Destroys the key (both halves of a pair) on every member.
    // Stored as `delete_key` by earlier versions; the spelling stays.
    #[serde(rename = "delete_key")]
    DestroyKey {
        /// Either half's record; its linked half goes too.
        key_id: Uuid,
    },
    /// Runs a refresh or synchronize job.
    RunJob {
        /// The job's record.
        job_id: Uuid,
    },
}

impl OperationPayload {
    /// The name of the kind of work: a key operation's wire name, or `job`.
    pub fn kind_name(&self) -> &'static str {
        self.key_operation().map_or("job", OperationKind::as_str)
    }

    /// What a key's record says is being done to it; `None` for a job.
    pub fn key_operation(&self) -> Option<OperationKind> {
        match self {
            OperationPayload::CreateKey { .. } => Some(OperationKind::KeyCreate),
            OperationPayload::UpdateKey { .. } => Some(OperationKind::KeyUpdate),
            OperationPayload::ReplicateKey { .. } => Some(OperationKind::KeyReplicate),
            OperationPayload::DestroyKey { .. } => Some(OperationKind::KeyDestroy),
            OperationPayload::RunJob { .. } => None,
        }
    }

    /// The key records the payload names (none for a job).
    pub fn key_ids(&self) -> Vec<Uuid> {
        match self {
            OperationPayload::CreateKey {
                key_id,
                public_key_id,
            } => std::iter::once(*key_id).chain(*public_key_id).collect(),
            OperationPayload::UpdateKey { key_id, .. }
            | OperationPayload::ReplicateKey { key_id }
            | OperationPayload::DestroyKey { key_id } => vec![*key_id],
            OperationPayload::RunJob { .. } => Vec::new(),
        }
    }

    /// Whether the operation also acts on the named key's linked half:
    /// replicating or destroying one half of a pair does both, so both are
    /// busy while it runs and both end when it ends.
    pub fn includes_link(&self) -> bool {
        matches!(
            self,
            OperationPayload::ReplicateKey { .. } | OperationPayload::DestroyKey { .. }
        )
    }

    /// The key or job the operation acts on.
    pub fn target(&self) -> Uuid {
        match self {
            OperationPayload::CreateKey { key_id, .. }
            | OperationPayload::UpdateKey { key_id, .. }
            | OperationPayload::ReplicateKey { key_id }
            | OperationPayload::DestroyKey { key_id } => *key_id,
            OperationPayload::RunJob { job_id } => *job_id,
        }
    }
}

/// One accepted piece of work and its place in the queue; moved only by
/// `claim`, `finish`, `retry_later` and `pass_on`, which refuse an illegal
/// move. Its place in the queue is private: read through the getters, and
/// from storage through [`Operation::restore`], which refuses a combination
/// no move makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// The operation's id, the caller's.
    pub id: Uuid,
    /// What to do.
    pub payload: OperationPayload,
    state: OperationState,
    attempts: u32,
    lease_owner: Option<String>,
    lease_expires_at: Option<OffsetDateTime>,
    last_error: Option<String>,
    /// When the work was accepted.
    pub created_at: OffsetDateTime,
    /// When the operation last changed.
    pub updated_at: OffsetDateTime,
    /// The partition whose tokens a key operation works on, as storage
    /// recorded it with the key (none for a job): runners hold at most so
    /// many operations of one partition at once.
    pub partition_id: Option<Uuid>,
    /// Who asked for the work (none for work the service began itself): its
    /// outcome's audit record names them, not the instance that ran it.
    pub requested_by: Option<Requester>,
}

/// The user whose request an operation carries out, and that request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requester {
    /// The user's id (as its bearer token named it).
    pub user_id: String,
    /// The user's name.
    pub username: String,
    /// The `X-Request-Id` of the request that was accepted.
    pub request_id: String,
}

/// An operation as storage keeps it, every field open, for
/// [`Operation::restore`] to check.
#[derive(Debug, Clone)]
pub struct StoredOperation {
    /// See [`Operation::id`].
    pub id: Uuid,
    /// See [`Operation::payload`].
    pub payload: OperationPayload,
    /// See [`Operation::state`].
    pub state: OperationState,
    /// See [`Operation::attempts`].
    pub attempts: u32,
    /// See [`Operation::lease_owner`].
    pub lease_owner: Option<String>,
    /// See [`Operation::lease_expires_at`].
    pub lease_expires_at: Option<OffsetDateTime>,
    /// See [`Operation::last_error`].
    pub last_error: Option<String>,
    /// See [`Operation::created_at`].
    pub created_at: OffsetDateTime,
    /// See [`Operation::updated_at`].
    pub updated_at: OffsetDateTime,
    /// See [`Operation::partition_id`].
    pub partition_id: Option<Uuid>,
    /// See [`Operation::requested_by`].
    pub requested_by: Option<Requester>,
}

impl Operation {
    /// Where it is in the queue.
    pub fn state(&self) -> OperationState {
        self.state
    }

    /// Claims so far; past [`MAX_ATTEMPTS`] the operation is given up.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The worker (instance) holding the lease while `running`.
    pub fn lease_owner(&self) -> Option<&str> {
        self.lease_owner.as_deref()
    }

    /// When the lease runs out and another worker may claim it; a retry
    /// sets it to when the next attempt is due.
    pub fn lease_expires_at(&self) -> Option<OffsetDateTime> {
        self.lease_expires_at
    }

    /// Why the last attempt failed, if one did.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// An operation read back from storage, if its place in the queue is one
    /// the moves make: queued with no attempt and no lease; running under a
    /// lease with an owner; ended with neither, and a failure with its
    /// reason; never more than [`MAX_ATTEMPTS`] attempts.
    pub fn restore(stored: StoredOperation) -> Result<Operation> {
        let leased = (stored.lease_owner.is_some(), stored.lease_expires_at.is_some());
        let problem = match stored.state {
            _ if stored.attempts > MAX_ATTEMPTS => {
                Some(format!("{} attempts, more than {MAX_ATTEMPTS}", stored.attempts))
            }
            OperationState::Queued if stored.attempts > 0 || leased != (false, false) => {
                Some("queued, yet claimed before or leased".to_owned())
            }
            OperationState::Running if leased != (true, true) => {
                Some("running without a lease and its owner".to_owned())
            }
            OperationState::Succeeded | OperationState::Failed if leased != (false, false) => {
                Some(format!("{}, yet leased", stored.state))
            }
            OperationState::Failed if stored.last_error.is_none() => {
                Some("failed without a reason".to_owned())
            }
            _ => None,
        };
        if let Some(problem) = problem {
            return Err(DomainError::invalid(format!(
                "operation {}: {problem}",
                stored.id
            )));
        }
        Ok(Operation {
            id: stored.id,
            payload: stored.payload,
            state: stored.state,
            attempts: stored.attempts,
            lease_owner: stored.lease_owner,
            lease_expires_at: stored.lease_expires_at,
            last_error: stored.last_error,
            created_at: stored.created_at,
            updated_at: stored.updated_at,
            partition_id: stored.partition_id,
            requested_by: stored.requested_by,
        })
    }

    /// Work accepted at `now`, waiting for a worker.
    pub fn queued(id: Uuid, payload: OperationPayload, now: OffsetDateTime) -> Operation {
        Operation {
            id,
            payload,
            state: OperationState::Queued,
            attempts: 0,
            lease_owner: None,
            lease_expires_at: None,
            last_error: None,
            created_at: now,
            updated_at: now,
            partition_id: None,
            requested_by: None,
        }
    }

    /// This operation, carried out for `requester`.
    pub fn requested_by(mut self, requester: Requester) -> Operation {
        self.requested_by = Some(requester);
        self
    }

    /// Whether a worker may take this operation at `now`: it is queued, or its
    /// worker's lease ran out (the worker died).
    pub fn is_claimable(&self, now: OffsetDateTime) -> bool {
        match self.state {
            OperationState::Queued => true,
            OperationState::Running => self.lease_expires_at.is_none_or(|t| t <= now),
            OperationState::Succeeded | OperationState::Failed => false,
        }
    }

    /// Worker `owner` takes the operation at `now` until `lease_until`,
    /// counting an attempt; refused unless [`Operation::is_claimable`].
    pub fn claim(&mut self, owner: &str, now: OffsetDateTime, lease_until: OffsetDateTime) -> Result<()> {
        if !self.is_claimable(now) {
            return Err(self.illegal("claim"));
        }
        self.state = OperationState::Running;
        self.attempts += 1;
        self.lease_owner = Some(owner.to_owned());
        self.lease_expires_at = Some(lease_until);
        self.updated_at = now;
        Ok(())
    }

    /// Ends a running operation with its outcome (the failure's reason is
    /// kept) and releases the lease; refused unless it is running.
    pub fn finish(&mut self, outcome: std::result::Result<(), String>, now: OffsetDateTime) -> Result<()> {
        if self.state != OperationState::Running {
            return Err(self.illegal("finish"));
        }
        match outcome {
            Ok(()) => self.state = OperationState::Succeeded,
            Err(reason) => {
                self.state = OperationState::Failed;
                self.last_error = Some(reason);
            }
        }
        self.lease_owner = None;
        self.lease_expires_at = None;
        self.updated_at = now;
        Ok(())
    }

    /// How long to wait before attempt `attempts + 1` of an operation whose
    /// attempt `attempts` failed in a way that may pass (a device error, a
    /// token taken away): `base` doubled each time (with the server's 2 s: 2,
    /// 4, 8, 16 s, 30 s in all). `None` once every attempt is spent: then the
    /// failure is final.
    pub fn retry_delay(attempts: u32, base: time::Duration) -> Option<time::Duration> {
        (1..MAX_ATTEMPTS)
            .contains(&attempts)
            .then(|| base * (1 << (attempts - 1)))
    }

    /// Puts this running operation back to be tried again at `at` by any
    /// worker (the lease runs out then), saying why the attempt failed.
    pub fn retry_later(&mut self, reason: String, at: OffsetDateTime, now: OffsetDateTime) -> Result<()> {
        if self.state != OperationState::Running {
            return Err(self.illegal("retry"));
        }
        self.lease_expires_at = Some(at);
        self.last_error = Some(reason);
        self.updated_at = now;
        Ok(())
    }

    /// Hands this running operation back for another worker at `at`, without
    /// counting the attempt: this worker could not even begin it (its
    /// instance does not see the token), which says nothing of the work.
    pub fn pass_on(&mut self, reason: String, at: OffsetDateTime, now: OffsetDateTime) -> Result<()> {
        self.retry_later(reason, at, now)?;
        self.attempts = self.attempts.saturating_sub(1);
        Ok(())
    }

    /// Parks this running operation until its token is back, or until `at`
    /// at the latest, without counting the attempt: the token is away, which
    /// says nothing of the work. It stays `running` under the lease
    /// [`Operation::parked_on`]`(token)`, which whoever sees the token back
    /// ends early.
    pub fn park(
        &mut self,
        token: &str,
        reason: String,
        at: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<()> {
        self.pass_on(reason, at, now)?;
        self.lease_owner = Some(Operation::parked_on(token));
        Ok(())
    }

    /// The lease an operation waiting for `token` is held under (the
    /// token's name as the runner gives it: the same in every instance).
    pub fn parked_on(token: &str) -> String {
        format!("{PARKED_PREFIX}{token}")
    }

    /// Whether an earlier claim may have begun the work: an attempt failed,
    /// was passed on or parked (each leaves its reason), or was interrupted.
    /// A create looks up what such an attempt may have made before making it.
    pub fn tried_before(&self) -> bool {
        self.attempts > 1 || self.last_error.is_some()
    }

    /// This running operation, ended `failed` because every attempt it had
    /// was interrupted; the reason says so, and what the last attempt said.
    pub fn given_up(&self, now: OffsetDateTime) -> Result<Operation> {
        let mut op = self.clone();
        let reason = match &self.last_error {
            Some(last) => format!(
                "the operation was interrupted {MAX_ATTEMPTS} times and was given up; the last attempt said: {last}"
            ),
            None => format!("the operation was interrupted {MAX_ATTEMPTS} times and was given up"),
        };
        op.finish(Err(reason), now)?;
        Ok(op)
    }

    fn illegal(&self, event: &str) -> DomainError {
        DomainError::IllegalTransition {
            machine: "operation",
            from: self.state.to_string(),
            event: event.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests;
