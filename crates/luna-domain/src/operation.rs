//! Durable operations: the queue entries that carry accepted work across crashes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::attribute::Attribute;
use crate::error::{DomainError, Result};
use crate::key::OperationKind;
use crate::wire::wire_enum;

wire_enum! {
    pub enum OperationState ("operation state") {
        Queued => "queued",
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
    }
}

/// After this many claims an operation that never finished (say, one that
/// crashes the process each time) ends `failed` instead of running again.
pub const MAX_ATTEMPTS: u32 = 5;

/// What an operation does. Stored with the operation, so a worker that takes
/// it up after a crash needs nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OperationPayload {
    /// `key_id` is the secret or private record; `public_key_id` the public half of a pair.
    CreateKey {
        key_id: Uuid,
        public_key_id: Option<Uuid>,
    },
    UpdateKey {
        key_id: Uuid,
        changes: Vec<(Attribute, bool)>,
    },
    ReplicateKey {
        key_id: Uuid,
    },
    DeleteKey {
        key_id: Uuid,
    },
    RunJob {
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
            OperationPayload::DeleteKey { .. } => Some(OperationKind::KeyDelete),
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
            | OperationPayload::DeleteKey { key_id } => vec![*key_id],
            OperationPayload::RunJob { .. } => Vec::new(),
        }
    }

    /// Whether the operation also acts on the named key's linked half:
    /// replicating or destroying one half of a pair does both, so both are
    /// busy while it runs and both end when it ends.
    pub fn includes_link(&self) -> bool {
        matches!(
            self,
            OperationPayload::ReplicateKey { .. } | OperationPayload::DeleteKey { .. }
        )
    }

    /// The key or job the operation acts on.
    pub fn target(&self) -> Uuid {
        match self {
            OperationPayload::CreateKey { key_id, .. }
            | OperationPayload::UpdateKey { key_id, .. }
            | OperationPayload::ReplicateKey { key_id }
            | OperationPayload::DeleteKey { key_id } => *key_id,
            OperationPayload::RunJob { job_id } => *job_id,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub id: Uuid,
    pub payload: OperationPayload,
    pub state: OperationState,
    pub attempts: u32,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Operation {
    pub fn queued(id: Uuid, payload: OperationPayload, now: DateTime<Utc>) -> Operation {
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
        }
    }

    /// Whether a worker may take this operation at `now`: it is queued, or its
    /// worker's lease ran out (the worker died).
    pub fn is_claimable(&self, now: DateTime<Utc>) -> bool {
        match self.state {
            OperationState::Queued => true,
            OperationState::Running => self.lease_expires_at.is_none_or(|t| t <= now),
            OperationState::Succeeded | OperationState::Failed => false,
        }
    }

    pub fn claim(&mut self, owner: &str, now: DateTime<Utc>, lease_until: DateTime<Utc>) -> Result<()> {
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

    pub fn finish(&mut self, outcome: std::result::Result<(), String>, now: DateTime<Utc>) -> Result<()> {
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
    pub fn retry_delay(attempts: u32, base: chrono::Duration) -> Option<chrono::Duration> {
        (1..MAX_ATTEMPTS)
            .contains(&attempts)
            .then(|| base * (1 << (attempts - 1)))
    }

    /// Puts this running operation back to be tried again at `at` by any
    /// worker (the lease runs out then), saying why the attempt failed.
    pub fn retry_later(&mut self, reason: String, at: DateTime<Utc>, now: DateTime<Utc>) -> Result<()> {
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
    pub fn pass_on(&mut self, reason: String, at: DateTime<Utc>, now: DateTime<Utc>) -> Result<()> {
        self.retry_later(reason, at, now)?;
        self.attempts = self.attempts.saturating_sub(1);
        Ok(())
    }

    /// This running operation, ended `failed` because every attempt it had
    /// was interrupted; the reason says so, and what the last attempt said.
    pub fn given_up(&self, now: DateTime<Utc>) -> Result<Operation> {
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
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn operation_transition_table() {
        let now = Utc::now();
        let expired = Some(now - Duration::seconds(1));
        let live = Some(now + Duration::seconds(30));
        // (state, lease, claim allowed, finish allowed)
        let table = [
            (OperationState::Queued, None, true, false),
            (OperationState::Running, live, false, true),
            (OperationState::Running, expired, true, true),
            (OperationState::Succeeded, None, false, false),
            (OperationState::Failed, None, false, false),
        ];
        for (state, lease, can_claim, can_finish) in table {
            let mut op = Operation::queued(
                Uuid::new_v4(),
                OperationPayload::DeleteKey {
                    key_id: Uuid::new_v4(),
                },
                now,
            );
            op.state = state;
            op.lease_expires_at = lease;
            let mut claimed = op.clone();
            assert_eq!(
                claimed.claim("w1", now, now + Duration::seconds(30)).is_ok(),
                can_claim,
                "{state} claim"
            );
            if can_claim {
                assert_eq!((claimed.state, claimed.attempts), (OperationState::Running, 1));
            }
            assert_eq!(
                op.clone().finish(Ok(()), now).is_ok(),
                can_finish,
                "{state} finish"
            );
        }
    }

    #[test]
    fn failures_keep_their_reason() {
        let now = Utc::now();
        let payload = OperationPayload::UpdateKey {
            key_id: Uuid::new_v4(),
            changes: vec![(Attribute::Sign, true)],
        };
        let mut op = Operation::queued(Uuid::new_v4(), payload.clone(), now);
        op.claim("w1", now, now).unwrap();
        op.finish(Err("C_SetAttributeValue: CKR_ATTRIBUTE_READ_ONLY".into()), now)
            .unwrap();
        assert_eq!(op.state, OperationState::Failed);
        assert_eq!(
            op.last_error.as_deref(),
            Some("C_SetAttributeValue: CKR_ATTRIBUTE_READ_ONLY")
        );
    }

    #[test]
    fn kind_names_are_the_key_operations_wire_names_or_job() {
        let id = Uuid::new_v4();
        let named = [
            (
                OperationPayload::CreateKey {
                    key_id: id,
                    public_key_id: None,
                },
                "keycreate",
            ),
            (
                OperationPayload::UpdateKey {
                    key_id: id,
                    changes: vec![],
                },
                "keyupdate",
            ),
            (OperationPayload::ReplicateKey { key_id: id }, "keyreplicate"),
            (OperationPayload::DeleteKey { key_id: id }, "keydelete"),
            (OperationPayload::RunJob { job_id: id }, "job"),
        ];
        for (payload, name) in named {
            assert_eq!(payload.kind_name(), name, "{payload:?}");
        }
    }

    #[test]
    fn only_replicate_and_delete_take_the_linked_half() {
        let (key, public, job) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let cases = [
            (
                OperationPayload::CreateKey {
                    key_id: key,
                    public_key_id: Some(public),
                },
                vec![key, public],
                false,
            ),
            (
                OperationPayload::UpdateKey {
                    key_id: key,
                    changes: vec![],
                },
                vec![key],
                false,
            ),
            (OperationPayload::ReplicateKey { key_id: key }, vec![key], true),
            (OperationPayload::DeleteKey { key_id: key }, vec![key], true),
            (OperationPayload::RunJob { job_id: job }, vec![], false),
        ];
        for (payload, key_ids, includes_link) in cases {
            assert_eq!(payload.key_ids(), key_ids, "{payload:?}");
            assert_eq!(payload.includes_link(), includes_link, "{payload:?}");
        }
    }

    #[test]
    fn a_transient_failure_is_retried_four_times_within_about_thirty_seconds() {
        let delays: Vec<Option<i64>> = (1..=MAX_ATTEMPTS)
            .map(|attempt| {
                Operation::retry_delay(attempt, chrono::Duration::seconds(2)).map(|d| d.num_seconds())
            })
            .collect();
        assert_eq!(delays, [Some(2), Some(4), Some(8), Some(16), None]);
        let now = Utc::now();
        let mut op = Operation::queued(
            Uuid::new_v4(),
            OperationPayload::DeleteKey {
                key_id: Uuid::new_v4(),
            },
            now,
        );
        assert!(
            op.retry_later("x".into(), now, now).is_err(),
            "only a running operation"
        );
        op.claim("w", now, now + chrono::Duration::seconds(30)).unwrap();
        let at = now + chrono::Duration::seconds(2);
        op.retry_later("C_GenerateKey returned CKR_DEVICE_ERROR".into(), at, now)
            .unwrap();
        assert!(
            !op.is_claimable(now) && op.is_claimable(at),
            "claimable once the delay is over"
        );
        op.claim("other", at, at + chrono::Duration::seconds(30)).unwrap();
        assert_eq!(op.attempts, 2);
    }
}
