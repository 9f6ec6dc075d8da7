//! A schedule's row (`schedules`), and the columns a firing writes.

use luna_domain::schedule::{CronSchedule, LastRun, RunOutcome, Schedule, Timetable};
use luna_domain::JobScope;

use super::*;
use crate::schema::schedules;

#[derive(Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = schedules)]
pub struct ScheduleRow {
    pub id: String,
    pub name: String,
    pub description: String,
    pub run_at: String,
    pub start_date: Option<i64>,
    pub end_date: Option<i64>,
    pub disabled: bool,
    pub run_on: String,
    pub job_type: String,
    pub partitions: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub fired_through: i64,
    pub next_run_at: Option<i64>,
    pub last_run_at: Option<i64>,
    pub last_job_id: Option<String>,
    pub last_outcome: Option<String>,
}

/// What a firing writes: how far firings are handled, the next one, and
/// what this one did.
#[derive(Debug, AsChangeset)]
#[diesel(table_name = schedules, treat_none_as_null = true)]
pub struct FiringRow {
    pub fired_through: i64,
    pub next_run_at: Option<i64>,
    pub last_run_at: Option<i64>,
    pub last_job_id: Option<String>,
    pub last_outcome: Option<String>,
}

const STARTED: &str = "started";
const SKIPPED: &str = "skipped: ";
const FAILED: &str = "failed: ";

impl FiringRow {
    pub fn new(
        fired_through: time::OffsetDateTime,
        next: Option<time::OffsetDateTime>,
        run: &LastRun,
    ) -> FiringRow {
        let (job, outcome) = match &run.outcome {
            RunOutcome::Started(job) => (Some(job.to_string()), STARTED.to_owned()),
            RunOutcome::Skipped(why) => (None, format!("{SKIPPED}{why}")),
            RunOutcome::Failed(why) => (None, format!("{FAILED}{why}")),
        };
        FiringRow {
            fired_through: micros(fired_through),
            next_run_at: next.map(micros),
            last_run_at: Some(micros(run.at)),
            last_job_id: job,
            last_outcome: Some(outcome),
        }
    }
}

impl ScheduleRow {
    pub fn from_domain(schedule: &Schedule) -> Result<ScheduleRow> {
        let partitions = match &schedule.scope {
            JobScope::All => None,
            JobScope::Partitions(ids) => Some(to_json("schedule partitions", ids)?),
        };
        let last = schedule
            .last_run
            .as_ref()
            .map(|run| FiringRow::new(schedule.fired_through, None, run));
        Ok(ScheduleRow {
            id: schedule.id.to_string(),
            name: schedule.name.clone(),
            description: schedule.description.clone(),
            run_at: schedule.timetable.run_at.as_str().to_owned(),
            start_date: schedule.timetable.start.map(micros),
            end_date: schedule.timetable.end.map(micros),
            disabled: schedule.timetable.disabled,
            run_on: schedule.run_on.clone(),
            job_type: schedule.job_type.as_str().to_owned(),
            partitions,
            created_at: micros(schedule.created_at),
            updated_at: micros(schedule.updated_at),
            fired_through: micros(schedule.fired_through),
            next_run_at: schedule.next_run_at().map(micros),
            last_run_at: last.as_ref().and_then(|l| l.last_run_at),
            last_job_id: last.as_ref().and_then(|l| l.last_job_id.clone()),
            last_outcome: last.and_then(|l| l.last_outcome),
        })
    }

    pub fn into_domain(self) -> Result<Schedule> {
        let corrupt = |e| crate::StoreError::corrupt("schedule run_at", e);
        let date = |what, t: Option<i64>| t.map(|t| from_micros(what, t)).transpose();
        let last_run = match (self.last_run_at, self.last_outcome) {
            (Some(at), Some(outcome)) => Some(LastRun {
                at: from_micros("schedule last_run_at", at)?,
                outcome: if let Some(why) = outcome.strip_prefix(SKIPPED) {
                    RunOutcome::Skipped(why.to_owned())
                } else if let Some(why) = outcome.strip_prefix(FAILED) {
                    RunOutcome::Failed(why.to_owned())
                } else {
                    let job = self.last_job_id.as_deref().unwrap_or_default();
                    RunOutcome::Started(uuid("schedule last_job_id", job)?)
                },
            }),
            _ => None,
        };
        Ok(Schedule {
            id: uuid("schedule id", &self.id)?,
            name: self.name,
            description: self.description,
            timetable: Timetable {
                run_at: CronSchedule::parse(&self.run_at).map_err(corrupt)?,
                start: date("schedule start_date", self.start_date)?,
                end: date("schedule end_date", self.end_date)?,
                disabled: self.disabled,
            },
            run_on: self.run_on,
            job_type: wire("schedule job_type", &self.job_type)?,
            scope: match self.partitions {
                None => JobScope::All,
                Some(ids) => JobScope::Partitions(from_json("schedule partitions", &ids)?),
            },
            created_at: from_micros("schedule created_at", self.created_at)?,
            updated_at: from_micros("schedule updated_at", self.updated_at)?,
            fired_through: from_micros("schedule fired_through", self.fired_through)?,
            last_run,
        })
    }
}
