//! A schedule: CipherTrust's scheduler job config (`/api/v1/scheduler/job-configs`),
//! which starts a refresh or an ha_synchronize job over named partitions, or
//! all of them, on a [`Timetable`]. The record, the rules for making and
//! changing one, and what a firing does.
//!
//! Firings are accounted for by one instant, `fired_through`: every firing up
//! to it has run, been skipped or failed. Storage moves it by compare-and-set,
//! so one instance alone handles each firing.

use time::OffsetDateTime;
use uuid::Uuid;

use super::Timetable;
use crate::error::{DomainError, Result};
use crate::job::{JobRequest, JobScope, JobType, ScheduledBy};
use crate::key::check_label;
use crate::partition::check_description;

/// The scheduler operation this service runs: CipherTrust's CCKM
/// synchronization, here of Luna partitions' keys.
pub const OPERATION: &str = "cckm_synchronization";

/// The only `cloud_name` of this service's synchronization parameters.
pub const CLOUD_NAME: &str = "luna";

/// Where a schedule's jobs run when `run_on` is not given: any instance.
pub const RUN_ON_ANY: &str = "any";

/// The operations CipherTrust's scheduler knows and this service does not
/// run, with the parameter object each takes.
pub const OTHER_OPERATIONS: [(&str, &str); 4] = [
    ("database_backup", "database_backup_params"),
    ("cckm_key_rotation", "cckm_key_rotation_params"),
    (
        "cckm_xks_credential_rotation",
        "cckm_xks_credential_rotation_params",
    ),
    ("cckm_key_backup", "cckm_key_backup_params"),
];

/// A schedule as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// Its id.
    pub id: Uuid,
    /// Unique among schedules.
    pub name: String,
    /// Free text.
    pub description: String,
    /// When it fires.
    pub timetable: Timetable,
    /// `any`, or the `--instance-name` of the one instance that fires it.
    pub run_on: String,
    /// The job each firing starts.
    pub job_type: JobType,
    /// The partitions the job covers; `All` is resolved at each firing.
    pub scope: JobScope,
    /// When it was made.
    pub created_at: OffsetDateTime,
    /// When it last changed (not counting firings).
    pub updated_at: OffsetDateTime,
    /// Every firing up to this instant has been handled.
    pub fired_through: OffsetDateTime,
    /// What its latest firing did.
    pub last_run: Option<LastRun>,
}

/// What one firing did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastRun {
    /// The firing's time (a minute the timetable names).
    pub at: OffsetDateTime,
    /// What came of it.
    pub outcome: RunOutcome,
}

/// How a firing ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// It started this job.
    Started(Uuid),
    /// It started nothing, for this reason (its previous job, or another
    /// job of the type on one of its partitions, still running).
    Skipped(String),
    /// It could not start a job, for this reason.
    Failed(String),
}

/// A firing that fell due: the minute it is for, and the next one after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Firing {
    /// The firing's time: the latest the timetable named by `now`.
    pub at: OffsetDateTime,
    /// The timetable's next firing after it, if any.
    pub next: Option<OffsetDateTime>,
}

impl Schedule {
    /// The next firing not yet handled, if any: in the past when firings
    /// were missed (it then runs as soon as an instance looks).
    pub fn next_run_at(&self) -> Option<OffsetDateTime> {
        self.timetable.next_after(self.fired_through)
    }

    /// The firing due at `now`, if one is: firings missed while no
    /// instance ran give one run, the latest.
    pub fn due(&self, now: OffsetDateTime) -> Option<Firing> {
        let at = self.timetable.due(self.fired_through, now)?;
        Some(Firing {
            at,
            next: self.timetable.next_after(at),
        })
    }

    /// How the jobs it starts name it.
    pub fn scheduled_by(&self) -> ScheduledBy {
        ScheduledBy {
            id: self.id,
            name: self.name.clone(),
        }
    }

    /// Whether the instance named `instance` fires this schedule.
    pub fn runs_on(&self, instance: &str) -> bool {
        self.run_on == RUN_ON_ANY || self.run_on == instance
    }
}

/// `cckm_synchronization_params`, as it arrives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SynchronizationParams {
    /// Must be `luna`.
    pub cloud_name: Option<String>,
    /// `refresh` (when absent) or `ha_synchronize`.
    pub job_type: Option<String>,
    /// Partition ids; excludes `synchronize_all`.
    pub partitions: Option<Vec<String>>,
    /// Every partition registered when the schedule fires.
    pub synchronize_all: Option<bool>,
}

/// A schedule's fields as a create or a change brings them, unchecked.
/// Text fields that are empty are taken as not given, and so are dates
/// that are empty or Go's zero time (`0001-01-01T00:00:00Z`), as
/// CipherTrust's Terraform provider sends every field.
#[derive(Debug, Clone, Default)]
pub struct ScheduleRequest {
    /// Unique; needed on a create.
    pub name: Option<String>,
    /// Free text.
    pub description: Option<String>,
    /// [`OPERATION`]; needed on a create.
    pub operation: Option<String>,
    /// Five-field cron, UTC; needed on a create.
    pub run_at: Option<String>,
    /// `any` or an instance's name.
    pub run_on: Option<String>,
    /// A disabled schedule does not fire.
    pub disabled: Option<bool>,
    /// RFC 3339; no firing before it.
    pub start_date: Option<String>,
    /// RFC 3339; no firing after it.
    pub end_date: Option<String>,
    /// The operation's parameters; needed on a create.
    pub params: Option<SynchronizationParams>,
    /// Parameter objects of other operations that were given (not null).
    pub other_params: Vec<String>,
}

/// A date field: `None` when absent; `Some(None)` when it clears the date.
fn date_field(text: &Option<String>) -> Option<Option<&str>> {
    text.as_deref()
        .map(|t| Some(t).filter(|t| !t.is_empty() && !t.starts_with("0001-01-01T00:00:00")))
}

fn given(text: &Option<String>) -> Option<&str> {
    text.as_deref().filter(|t| !t.is_empty())
}

impl ScheduleRequest {
    fn refuse_other_operations(&self) -> Result<()> {
        if let Some(params) = self.other_params.first() {
            let operation = OTHER_OPERATIONS
                .iter()
                .find(|(_, p)| p == params)
                .map_or("another operation", |(o, _)| o);
            return Err(DomainError::invalid(format!(
                "{params} is for {operation}, which this service does not run; it runs {OPERATION} with cckm_synchronization_params"
            )));
        }
        if let Some(operation) = given(&self.operation).filter(|o| *o != OPERATION) {
            let known = OTHER_OPERATIONS.iter().any(|(o, _)| *o == operation);
            return Err(DomainError::invalid(format!(
                "operation {operation:?} {}; this service runs {OPERATION} (a Luna refresh or ha_synchronize)",
                if known {
                    "is not run by this service"
                } else {
                    "is not a scheduler operation"
                }
            )));
        }
        Ok(())
    }

    /// `any`, or a name an instance can have (`--instance-name`: 1 to 64
    /// letters, digits, `.`, `-`, `_` and `:`).
    fn run_on(&self) -> Result<Option<String>> {
        given(&self.run_on)
            .map(|name| {
                // `ANY` is `any`, not an instance that would never come.
                if name.eq_ignore_ascii_case(RUN_ON_ANY) {
                    return Ok(RUN_ON_ANY.to_owned());
                }
                let allowed = |c: char| c.is_ascii_alphanumeric() || ".-_:".contains(c);
                if (1..=64).contains(&name.len()) && name.chars().all(allowed) {
                    Ok(name.to_owned())
                } else {
                    Err(DomainError::invalid(format!(
                        "run_on {name:?} is neither \"{RUN_ON_ANY}\" nor an instance's name (1 to 64 letters, digits, '.', '-', '_' and ':')"
                    )))
                }
            })
            .transpose()
    }

    /// A new schedule `id`, made at `now`, once every field is checked.
    pub fn create(self, id: Uuid, now: OffsetDateTime) -> Result<Schedule> {
        self.refuse_other_operations()?;
        let name = given(&self.name).ok_or_else(|| DomainError::invalid("name is needed"))?;
        let name = check_label("name", name)?;
        if given(&self.operation).is_none() {
            return Err(DomainError::invalid(format!("operation is needed: {OPERATION}")));
        }
        let run_at = given(&self.run_at).ok_or_else(|| {
            DomainError::invalid("run_at is needed: a five-field cron expression such as \"0 2 * * sat\"")
        })?;
        let description = self.description.clone().unwrap_or_default();
        check_description(&description)?;
        let params = self.params.clone().ok_or_else(|| {
            DomainError::invalid(format!(
                "cckm_synchronization_params is needed: {{\"cloud_name\": \"{CLOUD_NAME}\", \"synchronize_all\": true}} or a list of partitions"
            ))
        })?;
        let (job_type, scope) = check_params(&params)?;
        let timetable = Timetable::parse(
            run_at,
            date_field(&self.start_date).flatten(),
            date_field(&self.end_date).flatten(),
            self.disabled.unwrap_or(false),
        )?;
        Ok(Schedule {
            id,
            name,
            description,
            timetable,
            run_on: self.run_on()?.unwrap_or_else(|| RUN_ON_ANY.to_owned()),
            job_type,
            scope,
            created_at: now,
            updated_at: now,
            fired_through: now,
            last_run: None,
        })
    }

    /// `schedule` with the fields given changed at `now`. `name` may be
    /// changed; `operation` and `cloud_name` may only be repeated. A change
    /// to when it fires counts firings from `now`: none missed before is
    /// caught up.
    pub fn change(self, schedule: &Schedule, now: OffsetDateTime) -> Result<Schedule> {
        self.refuse_other_operations()?;
        let mut changed = schedule.clone();
        if let Some(name) = given(&self.name) {
            changed.name = check_label("name", name)?;
        }
        if let Some(description) = &self.description {
            check_description(description)?;
            changed.description = description.clone();
        }
        if let Some(run_on) = self.run_on()? {
            changed.run_on = run_on;
        }
        if let Some(params) = &self.params {
            check_cloud(params)?;
            if let Some(job_type) = given(&params.job_type) {
                changed.job_type = job_type.parse()?;
            }
            let listed = params.partitions.as_ref().is_some_and(|p| !p.is_empty());
            if listed || params.synchronize_all == Some(true) {
                changed.scope = check_scope(params)?;
            }
        }
        let timetable = &schedule.timetable;
        let rfc3339 = |t: OffsetDateTime| t.format(&time::format_description::well_known::Rfc3339).ok();
        // A date given replaces (or clears) the one kept.
        let date = |field: &Option<String>, kept: Option<OffsetDateTime>| match date_field(field) {
            Some(given) => given.map(str::to_owned),
            None => kept.and_then(rfc3339),
        };
        changed.timetable = Timetable::parse(
            given(&self.run_at).unwrap_or(timetable.run_at.as_str()),
            date(&self.start_date, timetable.start).as_deref(),
            date(&self.end_date, timetable.end).as_deref(),
            self.disabled.unwrap_or(timetable.disabled),
        )?;
        if changed.timetable != *timetable {
            // Never back: an instance whose clock is behind must not open
            // firings another already handled.
            changed.fired_through = now.max(schedule.fired_through);
        }
        if changed != *schedule {
            changed.updated_at = now;
        }
        Ok(changed)
    }
}

fn check_cloud(params: &SynchronizationParams) -> Result<()> {
    match given(&params.cloud_name) {
        None | Some(CLOUD_NAME) => Ok(()),
        Some(other) => Err(DomainError::invalid(format!(
            "cckm_synchronization_params.cloud_name {other:?} is not served here; it must be {CLOUD_NAME:?}"
        ))),
    }
}

/// The job a schedule starts, and over which partitions.
fn check_params(params: &SynchronizationParams) -> Result<(JobType, JobScope)> {
    check_cloud(params)?;
    let job_type = match given(&params.job_type) {
        Some(text) => text.parse()?,
        None => JobType::Refresh,
    };
    Ok((job_type, check_scope(params)?))
}

fn check_scope(params: &SynchronizationParams) -> Result<JobScope> {
    JobRequest {
        partitions: params.partitions.clone(),
        synchronize_all: params.synchronize_all,
    }
    .validate()
    .map_err(|e| DomainError::invalid(format!("cckm_synchronization_params: {e}")))
}

#[cfg(test)]
mod tests;
