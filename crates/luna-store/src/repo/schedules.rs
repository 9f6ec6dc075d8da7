//! Schedules (`schedules`), and their firings: each firing is handled by
//! one instance alone, whatever the number sharing the database, through a
//! compare-and-set of `fired_through` in the transaction that starts its job.

use diesel::prelude::*;
use luna_domain::query::{Direction, ListQuery, ScheduleFilters, ScheduleSortField};
use luna_domain::schedule::job_config::OPERATION;
use luna_domain::schedule::{Firing, LastRun, RunOutcome, Schedule};
use luna_domain::{Job, JobScope, JobStatus, Operation, OperationPayload};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::codec::micros;
use crate::db::{DbConnection, MultiBackend};
use crate::error::{Result, StoreError};
use crate::models::{FiringRow, JobRow, OperationRow, ScheduleRow};
use crate::repo::{conflict_on_unique, order_by};
use crate::schema::{jobs, operations, partitions, running_jobs, schedules};
use crate::{AuditEntry, Durability, Listed, Store};

fn filtered(f: &ScheduleFilters) -> schedules::BoxedQuery<'static, MultiBackend> {
    let mut q = schedules::table.into_boxed();
    if let Some(v) = f.id {
        q = q.filter(schedules::id.eq(v.to_string()));
    }
    if let Some(v) = &f.name {
        q = q.filter(schedules::name.eq(v.clone()));
    }
    if f.operation.as_deref().is_some_and(|o| o != OPERATION) {
        // Every schedule here runs the one operation.
        q = q.filter(schedules::id.is_null());
    }
    if let Some(v) = f.disabled {
        q = q.filter(schedules::disabled.eq(v));
    }
    q
}

fn load(conn: &mut DbConnection, id: &str) -> Result<Option<Schedule>> {
    schedules::table
        .find(id)
        .select(ScheduleRow::as_select())
        .first(conn)
        .optional()?
        .map(ScheduleRow::into_domain)
        .transpose()
}

fn name_taken(name: &str) -> impl FnOnce() -> String + '_ {
    move || format!("a schedule named {name:?} exists already")
}

/// The schedules instance `instance` fires: `run_on` any, or it.
fn fired_by(instance: &str) -> schedules::BoxedQuery<'static, MultiBackend> {
    schedules::table.into_boxed().filter(
        schedules::run_on
            .eq(luna_domain::schedule::job_config::RUN_ON_ANY)
            .or(schedules::run_on.eq(instance.to_owned())),
    )
}

/// The job a firing of `schedule` starts (made at `now`), or why it starts none.
fn firing_job(
    conn: &mut DbConnection,
    schedule: &Schedule,
    job_id: Uuid,
    now: OffsetDateTime,
) -> Result<RunOutcome> {
    if let Some(LastRun {
        outcome: RunOutcome::Started(previous),
        ..
    }) = &schedule.last_run
    {
        let status: Option<String> = jobs::table
            .find(previous.to_string())
            .select(jobs::overall_status)
            .first(conn)
            .optional()?;
        if status.as_deref() == Some(JobStatus::InProgress.as_str()) {
            return Ok(RunOutcome::Skipped(format!(
                "its previous job {previous} is still in progress"
            )));
        }
    }
    let partition_ids: Vec<String> = match &schedule.scope {
        JobScope::All => partitions::table
            .order((partitions::created_at.asc(), partitions::id.asc()))
            .select(partitions::id)
            .load(conn)?,
        JobScope::Partitions(ids) => {
            let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
            let found: Vec<String> = partitions::table
                .filter(partitions::id.eq_any(&ids))
                .select(partitions::id)
                .load(conn)?;
            if let Some(gone) = ids.iter().find(|id| !found.contains(id)) {
                return Ok(RunOutcome::Failed(format!("partition {gone} no longer exists")));
            }
            ids
        }
    };
    let busy: Option<(String, String)> = running_jobs::table
        .filter(running_jobs::job_type.eq(schedule.job_type.as_str()))
        .filter(running_jobs::partition_id.eq_any(&partition_ids))
        .select((running_jobs::partition_id, running_jobs::job_id))
        .first(conn)
        .optional()?;
    if let Some((partition, job)) = busy {
        return Ok(RunOutcome::Skipped(format!(
            "{} job {job} is in progress on partition {partition}",
            schedule.job_type
        )));
    }
    let partition_ids = partition_ids
        .iter()
        .map(|id| crate::codec::uuid("partition id", id))
        .collect::<Result<Vec<_>>>()?;
    let mut job = Job::new(job_id, schedule.job_type, partition_ids, now);
    job.scheduled_by = Some(schedule.scheduled_by());
    let row = JobRow::from_domain(&job)?;
    diesel::insert_into(jobs::table).values(&row).execute(conn)?;
    for partition in &job.partitions {
        // A job started meanwhile on the partition fails the whole
        // transaction (unique): the firing is then handled again.
        diesel::insert_into(running_jobs::table)
            .values((
                running_jobs::job_type.eq(job.job_type.as_str()),
                running_jobs::partition_id.eq(partition.to_string()),
                running_jobs::job_id.eq(&row.id),
            ))
            .execute(conn)?;
    }
    let op = Operation::queued(Uuid::now_v7(), OperationPayload::RunJob { job_id }, now);
    diesel::insert_into(operations::table)
        .values(&OperationRow::from_domain(&op)?)
        .execute(conn)?;
    Ok(RunOutcome::Started(job_id))
}

impl Store {
    /// Records a new schedule, and writes `audit` about it; a name taken is
    /// a conflict.
    pub fn insert_schedule(&self, schedule: &Schedule, audit: &AuditEntry) -> Result<()> {
        let row = ScheduleRow::from_domain(schedule)?;
        self.write_with(Durability::Synced, |conn, pending| {
            diesel::insert_into(schedules::table)
                .values(&row)
                .execute(conn)
                .map_err(conflict_on_unique(name_taken(&row.name)))?;
            pending.audit.push(audit.about(&row.id));
            Ok(())
        })
    }

    pub fn get_schedule(&self, id: Uuid) -> Result<Option<Schedule>> {
        self.read(|conn| load(conn, &id.to_string()))
    }

    pub fn list_schedules(&self, query: &ListQuery<ScheduleFilters>) -> Result<Listed<Schedule>> {
        self.read(|conn| {
            let total: i64 = filtered(&query.filters).count().get_result(conn)?;
            let mut q = filtered(&query.filters);
            if query.sort.is_empty() {
                q = q.order_by((schedules::created_at.desc(), schedules::id.desc()));
            } else {
                for key in &query.sort {
                    q = match key.field {
                        ScheduleSortField::CreatedAt => order_by!(q, key.direction, schedules::created_at),
                        ScheduleSortField::UpdatedAt => order_by!(q, key.direction, schedules::updated_at),
                        ScheduleSortField::Name => order_by!(q, key.direction, schedules::name),
                    };
                }
                q = order_by!(q, Direction::Ascending, schedules::id);
            }
            let items = q
                .offset(query.page.skip)
                .limit(query.page.limit)
                .select(ScheduleRow::as_select())
                .load(conn)?
                .into_iter()
                .map(ScheduleRow::into_domain)
                .collect::<Result<Vec<_>>>()?;
            Ok(Listed { total, items })
        })
    }

    /// Changes a schedule by `change` (given the record as stored), and
    /// writes `audit`; `None` if there is no such schedule. Its firings'
    /// columns are left to the firings, unless the change moved
    /// `fired_through` (a new timetable). A change that lands between this
    /// read and its write is a conflict, not lost.
    pub fn update_schedule(
        &self,
        id: Uuid,
        change: impl Fn(&Schedule) -> luna_domain::Result<Schedule>,
        audit: &AuditEntry,
    ) -> Result<Option<Schedule>> {
        let id = id.to_string();
        self.write_with(Durability::Synced, |conn, pending| {
            let Some(stored) = load(conn, &id)? else {
                return Ok(None);
            };
            let changed = change(&stored)?;
            let row = ScheduleRow::from_domain(&changed)?;
            let unchanged_since_read = || {
                schedules::table
                    .find(&id)
                    .filter(schedules::updated_at.eq(micros(stored.updated_at)))
            };
            let mut updated = 1;
            if changed.fired_through != stored.fired_through {
                // A new timetable: a firing that landed meanwhile was
                // handled under the old one, and this change, read before
                // it, is refused rather than undo it.
                updated = diesel::update(
                    unchanged_since_read().filter(schedules::fired_through.eq(micros(stored.fired_through))),
                )
                .set((
                    schedules::fired_through.eq(row.fired_through),
                    schedules::next_run_at.eq(row.next_run_at),
                ))
                .execute(conn)?;
            }
            if updated == 1 {
                updated = diesel::update(unchanged_since_read())
                    .set((
                        schedules::name.eq(&row.name),
                        schedules::description.eq(&row.description),
                        schedules::run_at.eq(&row.run_at),
                        schedules::start_date.eq(row.start_date),
                        schedules::end_date.eq(row.end_date),
                        schedules::disabled.eq(row.disabled),
                        schedules::run_on.eq(&row.run_on),
                        schedules::job_type.eq(&row.job_type),
                        schedules::partitions.eq(&row.partitions),
                        schedules::updated_at.eq(row.updated_at),
                    ))
                    .execute(conn)
                    .map_err(conflict_on_unique(name_taken(&row.name)))?;
            }
            if updated == 0 {
                return Err(StoreError::Conflict(
                    "the schedule changed or fired while this change was made; read it and try again".into(),
                ));
            }
            pending.audit.push(audit.clone());
            Ok(Some(changed))
        })
    }

    /// Deletes a schedule, and writes `audit`; the jobs it started stay.
    pub fn delete_schedule(&self, id: Uuid, audit: &AuditEntry) -> Result<bool> {
        let id = id.to_string();
        self.write_with(Durability::Synced, |conn, pending| {
            let deleted = diesel::delete(schedules::table.find(&id)).execute(conn)?;
            if deleted == 1 {
                pending.audit.push(audit.clone());
            }
            Ok(deleted == 1)
        })
    }

    /// Up to `limit` of the schedules instance `instance` fires with a
    /// firing not yet handled by `now`, the most overdue first.
    pub fn due_schedules(&self, now: OffsetDateTime, instance: &str, limit: i64) -> Result<Vec<Schedule>> {
        self.read(|conn| {
            fired_by(instance)
                .filter(schedules::next_run_at.le(micros(now)))
                .order((schedules::next_run_at.asc(), schedules::id.asc()))
                .limit(limit)
                .select(ScheduleRow::as_select())
                .load(conn)?
                .into_iter()
                .map(ScheduleRow::into_domain)
                .collect()
        })
    }

    /// When the next firing not yet handled falls, across the schedules
    /// instance `instance` fires.
    pub fn next_schedule_run(&self, instance: &str) -> Result<Option<OffsetDateTime>> {
        self.read(|conn| {
            let next: Option<i64> = fired_by(instance)
                .select(diesel::dsl::min(schedules::next_run_at))
                .first(conn)?;
            next.map(|t| crate::codec::from_micros("schedule next_run_at", t))
                .transpose()
        })
    }

    /// Handles `firing` of `schedule` (as read): starts its job `job_id`
    /// (with the operation that runs it), or records why none was started,
    /// and writes `audit` with the outcome; the job is made at `now`. `None`
    /// if the schedule is gone or changed, or another instance handled the
    /// firing meanwhile: the compare-and-set of `fired_through` (and of
    /// `updated_at`: no job from settings since changed) makes one alone
    /// succeed.
    pub fn fire_schedule(
        &self,
        schedule: &Schedule,
        firing: Firing,
        job_id: Uuid,
        now: OffsetDateTime,
        audit: &AuditEntry,
    ) -> Result<Option<LastRun>> {
        let id = schedule.id.to_string();
        self.write_with(Durability::Synced, |conn, pending| {
            // First the claim: on PostgreSQL its row lock holds a second
            // instance here until this one commits, and it then finds
            // `fired_through` moved.
            let claimed = diesel::update(schedules::table.find(&id))
                .filter(schedules::fired_through.eq(micros(schedule.fired_through)))
                .filter(schedules::updated_at.eq(micros(schedule.updated_at)))
                .set(schedules::fired_through.eq(micros(firing.at)))
                .execute(conn)?;
            if claimed == 0 {
                return Ok(None);
            }
            let run = LastRun {
                at: firing.at,
                outcome: firing_job(conn, schedule, job_id, now)?,
            };
            diesel::update(schedules::table.find(&id))
                .set(FiringRow::new(firing.at, firing.next, &run))
                .execute(conn)?;
            let mut record = audit.about(&id);
            record.outcome = match &run.outcome {
                RunOutcome::Started(job) => format!("started {} job {job}", schedule.job_type),
                RunOutcome::Skipped(why) => format!("skipped: {why}"),
                RunOutcome::Failed(why) => format!("failed: {why}"),
            };
            pending.audit.push(record);
            Ok(Some(run.clone()))
        })
    }

    /// The status of each of these jobs that exists (a schedule's last run).
    pub fn job_statuses(&self, ids: &[Uuid]) -> Result<Vec<(Uuid, JobStatus)>> {
        let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        self.read(|conn| {
            let rows: Vec<(String, String)> = jobs::table
                .filter(jobs::id.eq_any(&ids))
                .select((jobs::id, jobs::overall_status))
                .load(conn)?;
            rows.into_iter()
                .map(|(id, status)| {
                    Ok((
                        crate::codec::uuid("job id", &id)?,
                        crate::codec::wire("job overall_status", &status)?,
                    ))
                })
                .collect()
        })
    }
}
