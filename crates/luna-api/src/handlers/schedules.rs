//! Schedules (`/api/v1/scheduler/job-configs`), in CipherTrust's scheduler's
//! shape (its Terraform provider's `ciphertrust_scheduler`): each starts a
//! Luna refresh or ha_synchronize job on a cron timetable. Those who may
//! start jobs (the admin and CCKM Admins groups) write; CCKM users read.

use actix_web::{delete, get, patch, post, web, HttpRequest, HttpResponse};
use luna_domain::query::ScheduleFilters;
use luna_domain::schedule::{RunOutcome, Schedule, ScheduleRequest, SynchronizationParams};
use luna_domain::JobStatus;
use luna_store::Store;
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{blocking, list_page, not_found, path_id, JsonObject};
use crate::audit::Audit;
use crate::auth::{Manager, Reader};
use crate::error::ApiError;
use crate::openapi::ListParams;
use crate::state::AppState;
use crate::view::{ListView, ScheduleView};

/// `cckm_synchronization_params`: which job, over which partitions.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SynchronizationParamsBody {
    /// `luna`, the only cloud served here.
    #[schema(example = "luna")]
    cloud_name: Option<String>,
    /// `refresh` (when absent) or `ha_synchronize`.
    job_type: Option<String>,
    /// Partition ids; excludes `synchronize_all`.
    partitions: Option<Vec<String>>,
    /// Every partition registered when it fires.
    synchronize_all: Option<bool>,
    /// AWS's (CipherTrust clients send it as null); refused when given.
    kms: Option<Vec<String>>,
    /// OCI's (CipherTrust clients send it as null); refused when given.
    oci_vaults: Option<Vec<String>>,
}

/// A schedule as CipherTrust's clients send a job config; on a change,
/// every field may be left out.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleBody {
    /// Unique.
    name: Option<String>,
    description: Option<String>,
    /// `cckm_synchronization`.
    #[schema(example = "cckm_synchronization")]
    operation: Option<String>,
    /// Five fields, read in UTC: minute hour day-of-month month day-of-week.
    #[schema(example = "0 2 * * sat")]
    run_at: Option<String>,
    /// `any` (when absent), or the `--instance-name` of the one instance that fires it.
    run_on: Option<String>,
    disabled: Option<bool>,
    /// RFC 3339; empty or `0001-01-01T00:00:00Z` for none.
    #[schema(example = "2027-01-01T00:00:00Z")]
    start_date: Option<String>,
    /// RFC 3339, after `start_date`; empty or `0001-01-01T00:00:00Z` for none.
    end_date: Option<String>,
    cckm_synchronization_params: Option<SynchronizationParamsBody>,
    /// Other operations' parameters: accepted as null only.
    #[schema(value_type = Option<Object>)]
    database_backup_params: Option<serde_json::Value>,
    #[schema(value_type = Option<Object>)]
    cckm_key_rotation_params: Option<serde_json::Value>,
    #[schema(value_type = Option<Object>)]
    cckm_xks_credential_rotation_params: Option<serde_json::Value>,
    #[schema(value_type = Option<Object>)]
    cckm_key_backup_params: Option<serde_json::Value>,
}

impl ScheduleBody {
    fn into_request(self) -> Result<ScheduleRequest, ApiError> {
        let params = match self.cckm_synchronization_params {
            Some(p) => {
                for (field, given) in [("kms", &p.kms), ("oci_vaults", &p.oci_vaults)] {
                    if given.as_ref().is_some_and(|v| !v.is_empty()) {
                        return Err(ApiError::BadRequest(format!(
                            "cckm_synchronization_params.{field} is for another cloud; give partitions (Luna partition ids) or synchronize_all"
                        )));
                    }
                }
                Some(SynchronizationParams {
                    cloud_name: p.cloud_name,
                    job_type: p.job_type,
                    partitions: p.partitions,
                    synchronize_all: p.synchronize_all,
                })
            }
            None => None,
        };
        let other_params = [
            ("database_backup_params", &self.database_backup_params),
            ("cckm_key_rotation_params", &self.cckm_key_rotation_params),
            (
                "cckm_xks_credential_rotation_params",
                &self.cckm_xks_credential_rotation_params,
            ),
            ("cckm_key_backup_params", &self.cckm_key_backup_params),
        ]
        .into_iter()
        .filter(|(_, given)| given.is_some())
        .map(|(name, _)| name.to_owned())
        .collect();
        Ok(ScheduleRequest {
            name: self.name,
            description: self.description,
            operation: self.operation,
            run_at: self.run_at,
            run_on: self.run_on,
            disabled: self.disabled,
            start_date: self.start_date,
            end_date: self.end_date,
            params,
            other_params,
        })
    }
}

/// The job a schedule's last run started, if it started one.
fn started_job(schedule: &Schedule) -> Option<Uuid> {
    match schedule.last_run.as_ref().map(|r| &r.outcome) {
        Some(RunOutcome::Started(job)) => Some(*job),
        _ => None,
    }
}

/// The status of the job each schedule's last run started, where it did
/// (one query for them all).
fn with_job_statuses(
    store: &Store,
    schedules: Vec<Schedule>,
) -> luna_store::Result<Vec<(Schedule, Option<JobStatus>)>> {
    let started: Vec<Uuid> = schedules.iter().filter_map(started_job).collect();
    let statuses = if started.is_empty() {
        Vec::new()
    } else {
        store.job_statuses(&started)?
    };
    Ok(schedules
        .into_iter()
        .map(|s| {
            let status =
                started_job(&s).and_then(|job| statuses.iter().find(|(id, _)| *id == job).map(|(_, st)| *st));
            (s, status)
        })
        .collect())
}

/// A partition a request names that does not exist is a 404, as for a job
/// started at once (ids that are no UUIDs are the create's or change's 400).
fn named_partitions_exist(store: &Store, request: &ScheduleRequest) -> Result<(), ApiError> {
    let named = request.params.as_ref().and_then(|p| p.partitions.as_ref());
    for id in named
        .into_iter()
        .flatten()
        .filter_map(|id| id.parse::<Uuid>().ok())
    {
        store
            .get_partition(id)?
            .ok_or_else(|| not_found("partition", id))?;
    }
    Ok(())
}

fn answer(state: &AppState, shown: &(Schedule, Option<JobStatus>)) -> ScheduleView {
    ScheduleView::new(&shown.0, shown.1, &state.tenancy)
}

/// Makes a schedule; a name taken is a 409.
#[utoipa::path(tag = "schedules", security(("bearer" = [])),
    request_body = ScheduleBody,
    responses((status = 201, description = "The schedule", body = ScheduleView)))]
#[post("/api/v1/scheduler/job-configs")]
pub async fn create_schedule(
    state: web::Data<AppState>,
    _caller: Manager,
    audit: Audit,
    body: JsonObject<ScheduleBody>,
) -> Result<HttpResponse, ApiError> {
    let request = body.into_inner().into_request()?;
    let schedule = request.clone().create(Uuid::now_v7(), luna_store::now())?;
    let store = state.store.clone();
    let stored = schedule.clone();
    let record = audit.change(201);
    blocking(move || {
        named_partitions_exist(&store, &request)?;
        Ok(store.insert_schedule(&stored, &record)?)
    })
    .await?;
    audit.written();
    state.runner.schedules_changed();
    Ok(HttpResponse::Created().json(ScheduleView::new(&schedule, None, &state.tenancy)))
}

/// Lists schedules (`name`, `id`, `operation`, `disabled`; sorted by
/// `createdAt`, `updatedAt` or `name`).
#[utoipa::path(tag = "schedules", security(("bearer" = [])),
    params(ListParams<ScheduleFilters>),
    responses((status = 200, description = "A page of schedules", body = ListView<ScheduleView>)))]
#[get("/api/v1/scheduler/job-configs")]
pub async fn list_schedules(
    state: web::Data<AppState>,
    _caller: Reader,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    list_page::<ScheduleFilters, _, _>(
        &state.store,
        &req,
        |store, query| {
            let listed = store.list_schedules(query)?;
            Ok(luna_store::Listed {
                total: listed.total,
                items: with_job_statuses(store, listed.items)?,
            })
        },
        |shown| answer(&state, shown),
    )
    .await
}

/// Reads one schedule with its latest run's job status.
/// One schedule with its last run's job status.
fn with_job_status(store: &Store, schedule: Schedule) -> luna_store::Result<(Schedule, Option<JobStatus>)> {
    let status = match started_job(&schedule) {
        Some(job) => store.job_statuses(&[job])?.first().map(|(_, status)| *status),
        None => None,
    };
    Ok((schedule, status))
}

/// One schedule, with its next firing and its latest run.
#[utoipa::path(tag = "schedules", security(("bearer" = [])), params(("id" = String, Path, description = "the schedule's id")),
    responses((status = 200, description = "The schedule", body = ScheduleView)))]
#[get("/api/v1/scheduler/job-configs/{id}")]
pub async fn get_schedule(
    state: web::Data<AppState>,
    _caller: Reader,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id("schedule", &id)?;
    let store = state.store.clone();
    let shown = blocking(move || {
        let schedule = store.get_schedule(id)?.ok_or_else(|| not_found("schedule", id))?;
        Ok(with_job_status(&store, schedule)?)
    })
    .await?;
    Ok(HttpResponse::Ok().json(answer(&state, &shown)))
}

/// Changes the fields given. `operation` and `cloud_name` may only be
/// repeated; a new timetable counts firings from now.
#[utoipa::path(tag = "schedules", security(("bearer" = [])), params(("id" = String, Path, description = "the schedule's id")),
    request_body = ScheduleBody,
    responses((status = 200, description = "The schedule, changed", body = ScheduleView)))]
#[patch("/api/v1/scheduler/job-configs/{id}")]
pub async fn update_schedule(
    state: web::Data<AppState>,
    _caller: Manager,
    audit: Audit,
    id: web::Path<String>,
    body: JsonObject<ScheduleBody>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id("schedule", &id)?;
    let request = body.into_inner().into_request()?;
    let store = state.store.clone();
    let record = audit.change(200);
    // The schedule as changed (the store's own read), not read again.
    let shown = blocking(move || {
        named_partitions_exist(&store, &request)?;
        let change = |stored: &Schedule| request.clone().change(stored, luna_store::now());
        let changed = store
            .update_schedule(id, change, &record)?
            .ok_or_else(|| not_found("schedule", id))?;
        Ok(with_job_status(&store, changed)?)
    })
    .await?;
    audit.written();
    state.runner.schedules_changed();
    Ok(HttpResponse::Ok().json(answer(&state, &shown)))
}

/// Deletes a schedule; the jobs it started stay.
#[utoipa::path(tag = "schedules", security(("bearer" = [])), params(("id" = String, Path, description = "the schedule's id")),
    responses((status = 204, description = "The schedule is gone")))]
#[delete("/api/v1/scheduler/job-configs/{id}")]
pub async fn delete_schedule(
    state: web::Data<AppState>,
    _caller: Manager,
    audit: Audit,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id("schedule", &id)?;
    let store = state.store.clone();
    let record = audit.change(204);
    if !blocking(move || Ok(store.delete_schedule(id, &record)?)).await? {
        return Err(not_found("schedule", id));
    }
    audit.written();
    Ok(HttpResponse::NoContent().finish())
}
