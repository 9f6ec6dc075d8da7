//! Refresh and ha_synchronize jobs: request rules and life.
//!
//! A job works partition by partition, member by member, in batches; a
//! cancel is a flag (`cancel_requested`) it looks at between batches, so cancelling is
//! two steps: [`JobEvent::RequestCancel`], then [`JobEvent::StopCancelled`]
//! when the job notices.

use std::collections::BTreeMap;

use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::{DomainError, Result};
use crate::key::parse_id;
use crate::wire::wire_enum;

wire_enum! {
    /// What a job does to each partition it covers.
    pub enum JobType ("job_type") {
        /// Brings the key records in line with what the members hold
        /// (see [`crate::refresh`]).
        Refresh => "refresh",
        /// Clones every key object an HA member lacks from a member that
        /// holds it, then refreshes; completes at once on a single member.
        HaSynchronize => "ha_synchronize",
    }
}

wire_enum! {
    /// A job's `overall_status`. Every state but `in_progress` is final.
    pub enum JobStatus ("overall_status") {
        /// Accepted or running; the only state a cancel is taken in.
        InProgress => "in_progress",
        /// Every partition completed.
        Completed => "completed",
        /// At least one partition failed; `detailed_status` says why.
        Failed => "failed",
        /// Stopped after a cancel; partitions not done are `cancelled`.
        Cancelled => "cancelled",
    }
}

/// Which partitions a job covers, as the request said it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobScope {
    /// `synchronize_all: true`: every registered partition, resolved by the caller.
    All,
    /// The listed partition ids, repeats dropped, in the order first given.
    /// Whether they exist is for the caller to check (a 404).
    Partitions(Vec<Uuid>),
}

/// A job request as it arrives.
#[derive(Debug, Clone, Default)]
pub struct JobRequest {
    /// Partition ids as strings, unchecked.
    pub partitions: Option<Vec<String>>,
    /// Whether to cover every partition; excludes `partitions`.
    pub synchronize_all: Option<bool>,
}

/// Bounds one job's fan-out; far above any real deployment's partition count.
pub const MAX_JOB_PARTITIONS: usize = 1000;

impl JobRequest {
    /// Which partitions the job covers. `partitions` and `synchronize_all`
    /// are mutually exclusive and one is needed; ids must be UUIDs, at most
    /// [`MAX_JOB_PARTITIONS`] of them.
    pub fn validate(&self) -> Result<JobScope> {
        let listed = self.partitions.as_ref().filter(|p| !p.is_empty());
        match (listed, self.synchronize_all.unwrap_or(false)) {
            (Some(_), true) => Err(DomainError::invalid(
                "partitions and synchronize_all are mutually exclusive; give one of them",
            )),
            (None, false) => Err(DomainError::invalid(
                "give either partitions (a list of partition ids) or synchronize_all: true",
            )),
            (None, true) => Ok(JobScope::All),
            (Some(ids), false) => {
                if ids.len() > MAX_JOB_PARTITIONS {
                    return Err(DomainError::invalid(format!(
                        "partitions lists {} ids; at most {MAX_JOB_PARTITIONS} are allowed",
                        ids.len()
                    )));
                }
                let mut parsed: Vec<Uuid> = Vec::with_capacity(ids.len());
                for id in ids {
                    let id = parse_id("partition id", id)?;
                    if !parsed.contains(&id) {
                        parsed.push(id);
                    }
                }
                Ok(JobScope::Partitions(parsed))
            }
        }
    }
}

/// What a job's life can be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobEvent {
    /// A user asked to cancel; the job sees it at its next batch.
    RequestCancel,
    /// Every partition finished.
    Complete,
    /// At least one partition failed (the reasons are in `detailed_status`).
    Fail,
    /// The job saw its cancel requested and stopped.
    StopCancelled,
}

/// The part of a job that changes as it runs; moved only by
/// [`JobLifecycle::next`] (its fields are private; storage reads one back
/// through [`JobLifecycle::restore`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobLifecycle {
    status: JobStatus,
    cancel_requested: bool,
}

impl JobLifecycle {
    /// A job just accepted: `in_progress`, not cancelled.
    pub fn started() -> Self {
        JobLifecycle {
            status: JobStatus::InProgress,
            cancel_requested: false,
        }
    }

    /// The job's `overall_status`.
    pub fn status(self) -> JobStatus {
        self.status
    }

    /// A cancel was asked for; the job stops at its next batch.
    pub fn cancel_requested(self) -> bool {
        self.cancel_requested
    }

    /// A lifecycle as storage kept it, if [`next`] can reach it from
    /// [`started`]; otherwise why not.
    ///
    /// [`next`]: JobLifecycle::next
    /// [`started`]: JobLifecycle::started
    pub fn restore(status: JobStatus, cancel_requested: bool) -> Result<JobLifecycle> {
        let stored = JobLifecycle {
            status,
            cancel_requested,
        };
        // Worked out once: every job row read goes through here.
        static REACHABLE: std::sync::LazyLock<Vec<JobLifecycle>> = std::sync::LazyLock::new(|| {
            let events = [
                JobEvent::RequestCancel,
                JobEvent::Complete,
                JobEvent::Fail,
                JobEvent::StopCancelled,
            ];
            crate::machine::reachable(vec![JobLifecycle::started()], &events, |l, e| l.next(*e).ok())
        });
        if REACHABLE.contains(&stored) {
            Ok(stored)
        } else {
            Err(DomainError::invalid(format!(
                "no job can be {status} with a cancel {}",
                if cancel_requested {
                    "asked for"
                } else {
                    "not asked for"
                }
            )))
        }
    }

    /// The next state, or why the event is not allowed now: a cancel of an
    /// ended job is a [`DomainError::Conflict`]; any other move out of a
    /// final state, or `StopCancelled` without a cancel, is an
    /// [`DomainError::IllegalTransition`].
    pub fn next(self, event: JobEvent) -> Result<JobLifecycle> {
        use JobStatus::*;
        match (self.status, event) {
            (InProgress, JobEvent::RequestCancel) => Ok(JobLifecycle {
                cancel_requested: true,
                ..self
            }),
            (InProgress, JobEvent::Complete) => Ok(JobLifecycle {
                status: Completed,
                ..self
            }),
            (InProgress, JobEvent::Fail) => Ok(JobLifecycle {
                status: Failed,
                ..self
            }),
            (InProgress, JobEvent::StopCancelled) if self.cancel_requested => Ok(JobLifecycle {
                status: Cancelled,
                ..self
            }),
            (status, JobEvent::RequestCancel) => Err(DomainError::Conflict(format!(
                "the job has already ended ({status}); only a job in_progress can be cancelled"
            ))),
            (status, event) => Err(DomainError::IllegalTransition {
                machine: "job",
                from: format!("{status} (cancel_requested {})", self.cancel_requested),
                event: format!("{event:?}"),
            }),
        }
    }
}

/// A refresh or synchronize job: one request, covering one or more partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    data: JobData,
    lifecycle: JobLifecycle,
}

/// What a job record holds besides its lifecycle, which is private to
/// [`Job`]: it moves only through [`Job::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobData {
    /// The job's id, the caller's (as every id in this crate).
    pub id: Uuid,
    /// What the job does.
    pub job_type: JobType,
    /// The partitions it covers, resolved from its [`JobScope`].
    pub partitions: Vec<Uuid>,
    /// Partition id → `in_progress`, `completed`, `cancelled` or a failure sentence.
    pub detailed_status: BTreeMap<Uuid, String>,
    /// When the job was accepted.
    pub created_at: OffsetDateTime,
    /// When the job last changed.
    pub updated_at: OffsetDateTime,
    /// When the job reached a final status; `None` while `in_progress`.
    pub completed_at: Option<OffsetDateTime>,
    /// The schedule whose firing started it (`None`: a user did).
    pub scheduled_by: Option<ScheduledBy>,
}

/// The schedule that started a job: its id, and its name then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledBy {
    /// The schedule's id.
    pub id: Uuid,
    /// Its name when it fired.
    pub name: String,
}

impl std::ops::Deref for Job {
    type Target = JobData;

    fn deref(&self) -> &JobData {
        &self.data
    }
}

impl std::ops::DerefMut for Job {
    fn deref_mut(&mut self) -> &mut JobData {
        &mut self.data
    }
}

impl Job {
    /// A job accepted at `now`, with every partition `in_progress`.
    pub fn new(id: Uuid, job_type: JobType, partitions: Vec<Uuid>, now: OffsetDateTime) -> Job {
        let detailed_status = partitions
            .iter()
            .map(|p| (*p, JobStatus::InProgress.as_str().to_owned()))
            .collect();
        Job {
            data: JobData {
                id,
                job_type,
                partitions,
                detailed_status,
                created_at: now,
                updated_at: now,
                completed_at: None,
                scheduled_by: None,
            },
            lifecycle: JobLifecycle::started(),
        }
    }

    /// A job read back from storage, its lifecycle restored
    /// ([`JobLifecycle::restore`]). Afterwards the lifecycle moves only
    /// through [`Job::apply`].
    pub fn restored(data: JobData, lifecycle: JobLifecycle) -> Job {
        Job { data, lifecycle }
    }

    /// Its status and cancel flag.
    pub fn lifecycle(&self) -> &JobLifecycle {
        &self.lifecycle
    }

    /// Moves the job's life on at `now`, stamping `updated_at`, and
    /// `completed_at` when it reaches a final status. A refused event leaves
    /// the job as it was.
    pub fn apply(&mut self, event: JobEvent, now: OffsetDateTime) -> Result<()> {
        self.lifecycle = self.lifecycle.next(event)?;
        self.updated_at = now;
        if self.lifecycle.status() != JobStatus::InProgress {
            self.completed_at = Some(now);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_requests_need_exactly_one_scope() {
        let id = "fe192148-82eb-403f-96b2-125bf28d3824";
        let req = |p: Option<Vec<&str>>, all: Option<bool>| JobRequest {
            partitions: p.map(|v| v.into_iter().map(String::from).collect()),
            synchronize_all: all,
        };
        assert_eq!(req(None, Some(true)).validate().unwrap(), JobScope::All);
        let one = JobScope::Partitions(vec![Uuid::parse_str(id).unwrap()]);
        assert_eq!(req(Some(vec![id, id]), Some(false)).validate().unwrap(), one);
        assert_eq!(req(Some(vec![id]), None).validate().unwrap(), one);
        for (bad, needle) in [
            (req(Some(vec![id]), Some(true)), "mutually exclusive"),
            (req(None, None), "give either"),
            (req(Some(vec![]), Some(false)), "give either"),
            (
                req(Some(vec!["nope"]), None),
                "partition id \"nope\" is not a UUID",
            ),
        ] {
            let err = bad.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn job_lifecycle_transition_table() {
        use JobEvent as E;
        use JobStatus as S;
        let l = |status, cancel_requested| JobLifecycle {
            status,
            cancel_requested,
        };
        // (from, event, expected next or None)
        let table: Vec<(JobLifecycle, E, Option<JobLifecycle>)> = S::ALL
            .iter()
            .flat_map(|&s| [false, true].map(|cancel_requested| l(s, cancel_requested)))
            .flat_map(|from| {
                [E::RequestCancel, E::Complete, E::Fail, E::StopCancelled].map(|event| {
                    let expected = match (from.status, event, from.cancel_requested) {
                        (S::InProgress, E::RequestCancel, _) => Some(l(S::InProgress, true)),
                        (S::InProgress, E::Complete, a) => Some(l(S::Completed, a)),
                        (S::InProgress, E::Fail, a) => Some(l(S::Failed, a)),
                        (S::InProgress, E::StopCancelled, true) => Some(l(S::Cancelled, true)),
                        _ => None,
                    };
                    (from, event, expected)
                })
            })
            .collect();
        assert_eq!(table.len(), 4 * 2 * 4);
        for (from, event, expected) in table {
            assert_eq!(from.next(event).ok(), expected, "{from:?} on {event:?}");
        }
        let err = l(S::Completed, false).next(E::RequestCancel).unwrap_err();
        assert!(
            matches!(err, DomainError::Conflict(_)),
            "cancelling an ended job is a conflict"
        );
    }

    #[test]
    fn ending_a_job_stamps_completed_at() {
        let t0 = OffsetDateTime::now_utc();
        let mut job = Job::new(Uuid::new_v4(), JobType::Refresh, vec![Uuid::new_v4()], t0);
        assert!(job.completed_at.is_none());
        job.apply(JobEvent::RequestCancel, t0).unwrap();
        assert!(job.completed_at.is_none());
        job.apply(JobEvent::StopCancelled, t0).unwrap();
        assert_eq!(job.completed_at, Some(t0));
        assert_eq!(job.lifecycle.status(), JobStatus::Cancelled);
    }
}
