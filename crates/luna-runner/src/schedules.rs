//! Firing schedules: each instance looks for firings due, and handles each
//! through luna-store's compare-and-set, so one instance alone starts its
//! job (or records it skipped or failed). The loop sleeps until the next
//! firing of the schedules this instance fires (`run_on`), 15 s at most, or
//! until a change to the schedules here wakes it.

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

/// The most schedules handled in one look; after a full one, the next look
/// is at once.
const FIRE_AT_MOST: usize = 100;

/// The name a firing's outcome is counted under in the metrics.
fn outcome_name(outcome: &RunOutcome) -> &'static str {
    match outcome {
        RunOutcome::Started(_) => "started",
        RunOutcome::Skipped(_) => "skipped",
        RunOutcome::Failed(_) => "failed",
    }
}

impl Runner {
    /// Handles the firings due at `now` that this instance runs (`run_on`),
    /// and returns what each one this instance handled did; firings another
    /// instance handled first, and those the database failed (tried again
    /// at the next look), are not among them. At most `FIRE_AT_MOST`.
    pub fn fire_due_schedules(&self, now: OffsetDateTime) -> Result<Vec<(Schedule, LastRun)>, RunnerError> {
        self.fire_page(now).map(|(handled, _)| handled)
    }

    /// `fire_due_schedules`, and whether the page of due schedules was full
    /// (more may be due: the loop looks again at once).
    fn fire_page(&self, now: OffsetDateTime) -> Result<(Vec<(Schedule, LastRun)>, bool), RunnerError> {
        let due = self
            .store
            .due_schedules(now, &self.instance, FIRE_AT_MOST as i64)
            .map_err(RunnerError::Store)?;
        let full = due.len() == FIRE_AT_MOST;
        let mut handled = Vec::new();
        for schedule in due {
            let Some(firing) = schedule.due(now) else {
                continue;
            };
            let audit = crate::audit::by_the_service(&self.instance, "schedule fired", "schedule");
            let run = match self.store.fire_schedule(
                &schedule,
                firing,
                Uuid::now_v7(),
                luna_store::now(),
                &audit,
            ) {
                Ok(Some(run)) => run,
                // Another instance handled it, or a change came first.
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
        Ok((handled, full))
    }

    /// Wakes the scheduler loop: a schedule was made or changed here.
    pub fn schedules_changed(&self) {
        self.schedules_changed.notify_one();
    }

    /// Fires schedules as they fall due, until stopped.
    pub(crate) async fn fire_schedules(self: Arc<Self>) {
        while !self.stopping.load(Ordering::SeqCst) {
            // Listening before the look: a stop asked during it ends the wait.
            let stopped = self.stop.notified();
            tokio::pin!(stopped);
            stopped.as_mut().enable();
            let me = Arc::clone(&self);
            let looked = tokio::task::spawn_blocking(move || {
                let (_, full) = me.fire_page(luna_store::now())?;
                let next = me
                    .store
                    .next_schedule_run(&me.instance)
                    .map_err(RunnerError::Store)?;
                Ok::<_, RunnerError>((full, next))
            })
            .await;
            let looked = match looked {
                Ok(result) => result.map_err(|error| error.to_string()),
                Err(error) => Err(error.to_string()),
            };
            let wait = match looked {
                Ok((true, _)) => StdDuration::ZERO,
                // Past (a firing the database failed): the next look in full.
                Ok((false, next)) => next
                    .map(|at| at - luna_store::now())
                    .and_then(|wait| StdDuration::try_from(wait).ok())
                    .map_or(LOOK_AT_LEAST_EVERY, |wait| wait.min(LOOK_AT_LEAST_EVERY)),
                Err(error) => {
                    tracing::warn!(%error, "firing schedules failed; trying again");
                    LOOK_AT_LEAST_EVERY
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.schedules_changed.notified() => {}
                _ = &mut stopped => {}
            }
        }
    }
}
