//! Firing schedules: each instance looks for firings due, and handles each
//! through luna-store's compare-and-set, so one instance alone starts its
//! job (or records it skipped or failed). The loop sleeps until the next
//! firing any schedule has, or until a change to the schedules wakes it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use luna_domain::schedule::{LastRun, RunOutcome, Schedule};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::RunnerError;
use crate::runner::Runner;

/// The longest the loop sleeps: schedules another instance made or changed
/// are seen within it.
const LOOK_AT_LEAST_EVERY: StdDuration = StdDuration::from_secs(15);

/// The most schedules handled in one look (more wait for the next, at once).
const FIRE_AT_MOST: i64 = 100;

/// The name a firing's outcome is counted under in the metrics.
fn outcome_name(outcome: &RunOutcome) -> &'static str {
    match outcome {
        RunOutcome::Started(_) => "started",
        RunOutcome::Skipped(_) => "skipped",
        RunOutcome::Failed(_) => "failed",
    }
}

impl Runner {
    /// Handles every firing due at `now` that this instance runs (`run_on`),
    /// and returns what each one this instance handled did; firings another
    /// instance handled first, and those the database failed (tried again
    /// at the next look), are not among them.
    pub fn fire_due_schedules(&self, now: OffsetDateTime) -> Result<Vec<(Schedule, LastRun)>, RunnerError> {
        let mut handled = Vec::new();
        for schedule in self
            .store
            .due_schedules(now, FIRE_AT_MOST)
            .map_err(RunnerError::Store)?
        {
            let Some(firing) = schedule.due(now).filter(|_| schedule.runs_on(&self.instance)) else {
                continue;
            };
            let audit = crate::audit::by_the_service(&self.instance, "schedule fired", "schedule");
            let run = match self
                .store
                .fire_schedule(&schedule, firing, Uuid::now_v7(), &audit)
            {
                Ok(Some(run)) => run,
                // Another instance handled it, or a change moved its timetable.
                Ok(None) => continue,
                // The firing stays due (its compare-and-set was rolled back
                // with the rest): the next look handles it. A job started
                // meanwhile on one of its partitions lands here, and the
                // next look records the firing skipped.
                Err(error) => {
                    tracing::warn!(schedule = %schedule.name, %error, "a schedule's firing could not be handled; it is tried again");
                    continue;
                }
            };
            self.tokens
                .metrics()
                .schedule_fired(&schedule.name, outcome_name(&run.outcome));
            match &run.outcome {
                RunOutcome::Started(job) => {
                    tracing::info!(schedule = %schedule.name, %job, at = %run.at, "schedule fired");
                    self.must_look.store(true, Ordering::SeqCst);
                    self.work.notify_one();
                }
                RunOutcome::Skipped(why) | RunOutcome::Failed(why) => {
                    tracing::info!(schedule = %schedule.name, at = %run.at, outcome = outcome_name(&run.outcome), why, "schedule fired");
                }
            }
            handled.push((schedule, run));
        }
        Ok(handled)
    }

    /// Wakes the scheduler loop: a schedule was made or changed here.
    pub fn schedules_changed(&self) {
        self.schedules_changed.notify_one();
    }

    /// Fires schedules as they fall due, until stopped.
    pub(crate) async fn fire_schedules(self: Arc<Self>) {
        while !self.stopping.load(Ordering::SeqCst) {
            let me = Arc::clone(&self);
            let next = tokio::task::spawn_blocking(move || {
                me.fire_due_schedules(luna_store::now())?;
                me.store.next_schedule_run().map_err(RunnerError::Store)
            })
            .await;
            let wait = match next {
                Ok(Ok(next)) => next
                    .map(|at| at - luna_store::now())
                    .and_then(|wait| StdDuration::try_from(wait).ok())
                    .map_or(LOOK_AT_LEAST_EVERY, |wait| wait.min(LOOK_AT_LEAST_EVERY)),
                Ok(Err(error)) => {
                    tracing::warn!(%error, "firing schedules failed; trying again");
                    LOOK_AT_LEAST_EVERY
                }
                Err(error) => {
                    tracing::warn!(%error, "firing schedules failed; trying again");
                    LOOK_AT_LEAST_EVERY
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.schedules_changed.notified() => {}
                _ = self.stop.notified() => {}
            }
        }
    }
}
