//! One attempt of an operation: its token work on the blocking pool, then
//! its outcome, key records and audit record written in one transaction
//! under its lease; and the end of operations that ran out of attempts.

use std::sync::Arc;

use luna_domain::{Key, KeyEvent, KeyVersion, Operation, OperationPayload};
use time::{Duration, OffsetDateTime};

use crate::dispatch::Done;
use crate::failure::Failure;
use crate::runner::{Accepted, Hook, Runner, PARKED_AT_MOST, PASS_ON_DELAY};

impl Runner {
    /// Ends operations that were interrupted too often, and their keys.
    pub(crate) async fn settle_exhausted(self: &Arc<Self>) {
        let me = Arc::clone(self);
        let settled = tokio::task::spawn_blocking(move || -> luna_store::Result<()> {
            let now = luna_store::now();
            for op in me.store.exhausted_operations(now)? {
                let given_up = op.given_up(now)?;
                let reason = given_up.last_error().unwrap_or_default().to_owned();
                let keys = me.end_failed(&given_up.payload, &reason, now)?;
                let owner = op.lease_owner().unwrap_or_default();
                let outcome = crate::audit::outcome(&given_up, &me.instance, now);
                if me
                    .store
                    .give_up_operation(&given_up, owner, now, &keys, &outcome)?
                {
                    tracing::warn!(operation = %op.id, %reason, "operation given up");
                }
            }
            Ok(())
        })
        .await;
        if !matches!(settled, Ok(Ok(()))) {
            tracing::error!("settling exhausted operations failed");
        }
    }

    /// Runs one operation on the blocking pool and records its outcome.
    /// `token_work_ended` is called once the token calls are over, before
    /// the outcome is written.
    pub(crate) fn execute(
        &self,
        op: Operation,
        accepted: Option<Accepted>,
        token_work_ended: &dyn Fn(),
    ) -> luna_store::Result<Done> {
        let span = tracing::info_span!("operation", id = %op.id, kind = op.payload.kind_name(), attempt = op.attempts());
        let _entered = span.enter();
        // Every write of this attempt's outcome is conditional on the lease it claimed.
        let lease = op.lease_owner().unwrap_or_default().to_owned();
        let outcome = match &op.payload {
            OperationPayload::CreateKey {
                key_id,
                public_key_id,
            } => self.create(&op, *key_id, *public_key_id, accepted),
            OperationPayload::UpdateKey { key_id, changes } => self.update(*key_id, changes),
            OperationPayload::ReplicateKey { key_id } => self.replicate(*key_id),
            OperationPayload::DestroyKey { key_id } => self.destroy(*key_id),
            OperationPayload::RunJob { job_id } => self.run_job(*job_id).map(|()| Vec::new()),
        };
        token_work_ended();
        let now = luna_store::now();
        let outcome = match outcome {
            Err(Failure::Interrupted(reason)) => {
                tracing::info!(%reason, "the module was re-initialised under the operation; starting it again");
                let mut again = op;
                again.pass_on(reason, now, now)?;
                return Ok(Done::held(
                    self.store.retry_operation_later(&again, &lease)?,
                    Done::Recorded,
                ));
            }
            Err(Failure::Away { reason, token, since }) => {
                let away_for = since.elapsed().unwrap_or_default();
                match self.settings.token_outage.checked_sub(away_for) {
                    Some(left) if !left.is_zero() => {
                        let wait = Duration::try_from(left.min(PARKED_AT_MOST)).unwrap_or(Duration::SECOND);
                        tracing::info!(%reason, "the token is away; the operation waits for it");
                        let mut parked = op;
                        parked.park(
                            &token,
                            format!("waiting for the token: {reason}"),
                            now + wait,
                            now,
                        )?;
                        return Ok(Done::held(
                            self.store.retry_operation_later(&parked, &lease)?,
                            Done::Recorded,
                        ));
                    }
                    _ => Err(Failure::Final(format!(
                        "{reason}; work waits at most {} s for a token that is away (--token-outage-secs)",
                        self.settings.token_outage.as_secs()
                    ))),
                }
            }
            Err(Failure::NotHere(reason)) if now - op.created_at < self.settings.pass_on_for => {
                tracing::info!(%reason, "this instance does not see the token; passing the operation on");
                let mut passed = op;
                passed.pass_on(reason, now + PASS_ON_DELAY, now)?;
                return Ok(Done::held(
                    self.store.retry_operation_later(&passed, &lease)?,
                    Done::PassedOn,
                ));
            }
            Err(Failure::NotHere(reason)) => Err(Failure::Transient(reason)),
            other => other,
        };
        let outcome = match outcome {
            Err(Failure::Transient(reason)) => {
                match Operation::retry_delay(op.attempts(), self.settings.retry_base) {
                    Some(delay) => {
                        tracing::warn!(%reason, retry_in_ms = delay.whole_milliseconds(), "operation failed; trying again later");
                        let mut later = op;
                        later.retry_later(reason, now + delay, now)?;
                        return Ok(Done::held(
                            self.store.retry_operation_later(&later, &lease)?,
                            Done::Recorded,
                        ));
                    }
                    None => Err(Failure::Final(format!(
                        "{reason} (attempt {} of {}; the earlier ones failed too)",
                        op.attempts(),
                        luna_domain::operation::MAX_ATTEMPTS
                    ))),
                }
            }
            other => other,
        };
        let (result, keys) = match outcome {
            Ok(mut keys) => {
                for (key, _) in &mut keys {
                    key.apply(&KeyEvent::Succeeded, now)?;
                }
                (Ok(()), keys)
            }
            Err(failure) => {
                let reason = failure.reason().to_owned();
                tracing::warn!(%reason, "operation failed");
                let keys = self.end_failed(&op.payload, &reason, now)?;
                (Err(reason), keys)
            }
        };
        if let Some(Hook(hook)) = &self.settings.before_outcome {
            hook();
        }
        let mut finished = op;
        finished.finish(result, now)?;
        // Every operation's outcome enters the audit trail, in the same transaction.
        let entry = crate::audit::outcome(&finished, &self.instance, now);
        let recorded = self.store.finish_operation(&finished, &lease, &keys, &entry)?;
        if recorded {
            if let Some(partition) = finished.partition_id {
                self.backlog.finished(partition);
            }
        }
        Ok(Done::held(recorded, Done::Recorded))
    }

    /// Ends what a failed operation began: fails its job, and returns its
    /// keys (with a pair's linked half when the operation took it too) in
    /// their failed state, each with the version it was read at, for the
    /// caller to write.
    pub(crate) fn end_failed(
        &self,
        payload: &OperationPayload,
        reason: &str,
        now: OffsetDateTime,
    ) -> luna_store::Result<Vec<(Key, KeyVersion)>> {
        if let OperationPayload::RunJob { job_id } = payload {
            self.fail_job(*job_id, reason)?;
        }
        let mut keys = Vec::new();
        for key_id in payload.key_ids() {
            let Some(key) = self.store.get_key(key_id)? else {
                continue;
            };
            let link = key.link_id.filter(|_| payload.includes_link());
            keys.push(key);
            if let Some(half) = link.map(|id| self.store.get_key(id)).transpose()?.flatten() {
                keys.push(half);
            }
        }
        // A key no longer busy (forgotten and re-found, say) is left as it is.
        Ok(keys
            .into_iter()
            .filter_map(|mut key| {
                let read = KeyVersion::of(&key);
                key.apply(&KeyEvent::Failed(reason.to_owned()), now).ok()?;
                Some((key, read))
            })
            .collect())
    }
}
