//! Refresh and ha_synchronize jobs (`jobs`), each stored with the operation
//! that runs it; `running_jobs` allows one job of a type in progress per
//! partition, and a job's end frees its partitions.

use diesel::prelude::*;
use luna_domain::query::{Direction, JobFilters, JobSortField, ListQuery};
use luna_domain::{DomainError, Job, JobEvent, JobStatus, JobType, Operation};
use uuid::Uuid;

use crate::db::{DbConnection, MultiBackend};
use crate::error::{Result, StoreError};
use crate::models::{JobRow, OperationRow};
use crate::repo::{conflict_on_unique, order_by};
use crate::schema::{jobs, operations, running_jobs};
use crate::{AuditEntry, Durability, Listed, Store};

fn filtered(job_type: JobType, f: &JobFilters) -> jobs::BoxedQuery<'static, MultiBackend> {
    let mut q = jobs::table
        .into_boxed()
        .filter(jobs::job_type.eq(job_type.as_str()));
    if let Some(v) = f.id {
        q = q.filter(jobs::id.eq(v.to_string()));
    }
    if let Some(v) = f.overall_status {
        q = q.filter(jobs::overall_status.eq(v.as_str()));
    }
    q
}

fn load(conn: &mut DbConnection, id: Uuid) -> Result<Option<Job>> {
    jobs::table
        .find(id.to_string())
        .select(JobRow::as_select())
        .first(conn)
        .optional()?
        .map(JobRow::into_domain)
        .transpose()
}

fn save(conn: &mut DbConnection, job: &Job, expected: JobStatus) -> Result<bool> {
    let row = JobRow::from_domain(job)?;
    let updated = diesel::update(jobs::table.find(&row.id))
        .filter(jobs::overall_status.eq(expected.as_str()))
        .set((
            jobs::overall_status.eq(&row.overall_status),
            jobs::detailed_status.eq(&row.detailed_status),
            jobs::updated_at.eq(row.updated_at),
            jobs::completed_at.eq(row.completed_at),
        ))
        .execute(conn)?;
    // A cancel is only ever set, never cleared: a runner saving progress from
    // a copy read before the cancel must not undo it.
    if updated == 1 && row.abort_requested {
        diesel::update(jobs::table.find(&row.id))
            .set(jobs::abort_requested.eq(true))
            .execute(conn)?;
    }
    if job.lifecycle().status() != JobStatus::InProgress {
        diesel::delete(running_jobs::table.filter(running_jobs::job_id.eq(&row.id))).execute(conn)?;
    }
    Ok(updated == 1)
}

impl Store {
    /// Records a job and the operation that runs it, and `audit` about it. A
    /// job of the same type already running on one of its partitions makes
    /// this a conflict.
    pub fn insert_job_with_operation(
        &self,
        job: &Job,
        operation: &Operation,
        audit: &AuditEntry,
    ) -> Result<()> {
        self.insert_job_idempotently(job, operation, None, audit)
    }

    /// `insert_job_with_operation`, recording in the same transaction that
    /// `request` (a start under an `Idempotency-Key`) made the job.
    pub fn insert_job_idempotently(
        &self,
        job: &Job,
        operation: &Operation,
        request: Option<&luna_domain::idempotency::IdempotentRequest>,
        audit: &AuditEntry,
    ) -> Result<()> {
        let row = JobRow::from_domain(job)?;
        let op = OperationRow::from_domain(operation)?;
        self.write_with(Durability::Synced, |conn, pending| {
            if let Some(request) = request {
                crate::repo::idempotency::remember(conn, request, job.id)?;
            }
            diesel::insert_into(jobs::table).values(&row).execute(conn)?;
            for partition in &job.partitions {
                diesel::insert_into(running_jobs::table)
                    .values((
                        running_jobs::job_type.eq(job.job_type.as_str()),
                        running_jobs::partition_id.eq(partition.to_string()),
                        running_jobs::job_id.eq(&row.id),
                    ))
                    .execute(conn)
                    .map_err(conflict_on_unique(|| {
                        format!(
                            "a {} job is already in progress on partition {partition}",
                            job.job_type
                        )
                    }))?;
            }
            diesel::insert_into(operations::table).values(&op).execute(conn)?;
            pending.audit.push(audit.about(&row.id));
            Ok(())
        })
    }

    pub fn get_job(&self, id: Uuid) -> Result<Option<Job>> {
        self.read(|conn| load(conn, id))
    }

    pub fn list_jobs(&self, job_type: JobType, query: &ListQuery<JobFilters>) -> Result<Listed<Job>> {
        self.read(|conn| {
            let total: i64 = filtered(job_type, &query.filters).count().get_result(conn)?;
            let mut q = filtered(job_type, &query.filters);
            if query.sort.is_empty() {
                q = q.order_by((jobs::created_at.desc(), jobs::id.desc()));
            } else {
                for key in &query.sort {
                    q = match key.field {
                        JobSortField::CreatedAt => order_by!(q, key.direction, jobs::created_at),
                        JobSortField::UpdatedAt => order_by!(q, key.direction, jobs::updated_at),
                        JobSortField::OverallStatus => order_by!(q, key.direction, jobs::overall_status),
                    };
                }
                q = order_by!(q, Direction::Ascending, jobs::id);
            }
            let items = q
                .offset(query.page.skip)
                .limit(query.page.limit)
                .select(JobRow::as_select())
                .load(conn)?
                .into_iter()
                .map(JobRow::into_domain)
                .collect::<Result<_>>()?;
            Ok(Listed { total, items })
        })
    }

    /// Sets the job's abort flag, and writes `audit`. `None` if there is no
    /// such job; a conflict if it has ended.
    pub fn request_job_cancel(
        &self,
        id: Uuid,
        now: time::OffsetDateTime,
        audit: &AuditEntry,
    ) -> Result<Option<Job>> {
        self.write_with(Durability::Synced, |conn, pending| {
            let Some(mut job) = load(conn, id)? else {
                return Ok(None);
            };
            job.apply(JobEvent::RequestCancel, now).map_err(|e| match e {
                DomainError::Conflict(m) => StoreError::Conflict(m),
                other => StoreError::Domain(other),
            })?;
            if !save(conn, &job, JobStatus::InProgress)? {
                return Err(StoreError::Conflict(
                    "the job ended while the request was handled".into(),
                ));
            }
            pending.audit.push(audit.clone());
            Ok(Some(job))
        })
    }

    /// Whether a cancel was asked for (checked between batches).
    pub fn job_abort_requested(&self, id: Uuid) -> Result<bool> {
        self.read(|conn| {
            Ok(jobs::table
                .find(id.to_string())
                .select(jobs::abort_requested)
                .first::<bool>(conn)
                .optional()?
                .unwrap_or(true))
        })
    }

    /// Writes a job's progress or end (only over a job still in progress).
    /// Ending it frees its partitions for the next job of its type.
    pub fn save_job(&self, job: &Job) -> Result<bool> {
        self.write(|conn| save(conn, job, JobStatus::InProgress))
    }
}
