//! Schedules, as CipherTrust's scheduler answers its job configs.

use luna_domain::schedule::job_config::{CLOUD_NAME, OPERATION};
use luna_domain::schedule::{RunOutcome, Schedule};
use luna_domain::{JobScope, JobStatus};

use super::*;

/// The operation's parameters, under CipherTrust's `job_config_params`.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobConfigParamsView {
    /// Always `luna`.
    pub cloud_name: &'static str,
    /// `refresh` or `ha_synchronize`.
    pub job_type: &'static str,
    /// The partitions each firing covers; `null` with `synchronize_all`.
    pub partitions: Option<Vec<String>>,
    /// Every partition registered when it fires.
    pub synchronize_all: bool,
}

/// What the latest firing did.
#[derive(Debug, Serialize, ToSchema)]
pub struct LastRunView {
    /// The firing's time (a minute of `run_at`), UTC.
    pub at: String,
    /// The job it started, if it started one.
    pub job_id: Option<String>,
    /// The job's `overall_status` now (`in_progress`, `completed`, `failed`,
    /// `cancelled`), or `skipped` or `failed` when it started none.
    pub outcome: String,
    /// Why it started no job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A schedule: CipherTrust's job config fields, and its next firing and
/// latest run.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleView {
    #[serde(flatten)]
    pub resource: Resource,
    pub name: String,
    pub description: String,
    /// Always `cckm_synchronization`.
    pub operation: &'static str,
    /// Five-field cron, UTC.
    pub run_at: String,
    pub run_on: String,
    pub disabled: bool,
    pub start_date: Option<String>,
    pub end_date: Option<String>,
    pub job_config_params: JobConfigParamsView,
    /// The next firing not handled yet: `null` when disabled or past
    /// `end_date`; in the past only while no instance has run to handle it.
    pub next_run_at: Option<String>,
    pub last_run: Option<LastRunView>,
}

impl ScheduleView {
    /// `job_status` is the status of its last run's job, if it started one
    /// that still exists.
    pub fn new(s: &Schedule, job_status: Option<JobStatus>, tenancy: &Tenancy) -> ScheduleView {
        ScheduleView {
            resource: Resource::new("scheduler-job-configs", s.id, s.created_at, s.updated_at, tenancy),
            name: s.name.clone(),
            description: s.description.clone(),
            operation: OPERATION,
            run_at: s.timetable.run_at.as_str().to_owned(),
            run_on: s.run_on.clone(),
            disabled: s.timetable.disabled,
            start_date: s.timetable.start.map(timestamp),
            end_date: s.timetable.end.map(timestamp),
            job_config_params: JobConfigParamsView {
                cloud_name: CLOUD_NAME,
                job_type: s.job_type.as_str(),
                partitions: match &s.scope {
                    JobScope::All => None,
                    JobScope::Partitions(ids) => Some(ids.iter().map(Uuid::to_string).collect()),
                },
                synchronize_all: s.scope == JobScope::All,
            },
            next_run_at: s.next_run_at().map(timestamp),
            last_run: s.last_run.as_ref().map(|run| {
                let (job_id, outcome, reason) = match &run.outcome {
                    RunOutcome::Started(job) => (
                        Some(job.to_string()),
                        job_status.map_or("forgotten", JobStatus::as_str).to_owned(),
                        None,
                    ),
                    RunOutcome::Skipped(why) => (None, "skipped".to_owned(), Some(why.clone())),
                    RunOutcome::Failed(why) => (None, "failed".to_owned(), Some(why.clone())),
                };
                LastRunView {
                    at: timestamp(run.at),
                    job_id,
                    outcome,
                    reason,
                }
            }),
        }
    }
}
