//! Refresh (`/api/v1/cckm/hsm/luna/refresh`) and synchronize
//! (`…/synchronize`) jobs: start, list, get, cancel.
#![allow(
    missing_debug_implementations,
    reason = "actix's route macros make each handler a unit struct; written by `job_endpoints!`, the lint sees them as ours"
)]

use actix_web::{get, post, web, HttpRequest, HttpResponse};
use luna_domain::query::JobFilters;
use luna_domain::{Job, JobRequest, JobScope, JobType, Operation, OperationPayload};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{blocking, idempotent_request, list_page, not_found, path_id, replayed, JsonObject};
use crate::audit::Audit;
use crate::auth::{Manager, Reader};
use crate::error::{ApiError, ErrorBody};
use crate::openapi::ListParams;
use crate::state::AppState;
use crate::view::{JobView, ListView};

/// Which partitions: a list of ids, or `synchronize_all: true` for every one.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobBody {
    partitions: Option<Vec<String>>,
    synchronize_all: Option<bool>,
}

async fn start_job(
    state: web::Data<AppState>,
    job_type: JobType,
    caller: Manager,
    req: HttpRequest,
    audit: Audit,
    body: JsonObject<JobBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let route = format!("POST {}", req.path());
    let request = idempotent_request(&req, &caller.0.username, &route, &body)?;
    let tenancy = state.tenancy.clone();
    let view = move |store: &luna_store::Store, id: Uuid| -> Result<Option<JobView>, ApiError> {
        Ok(store.get_job(id)?.map(|job| JobView::new(&job, &tenancy)))
    };
    if let Some(first) = replayed(&state.store, request.as_ref(), view).await? {
        return Ok(first);
    }
    let scope = JobRequest {
        partitions: body.partitions,
        synchronize_all: body.synchronize_all,
    }
    .validate()?;
    let store = state.store.clone();
    let (record, requester) = (audit.change(201), audit.requester());
    let job = blocking(move || {
        let partitions: Vec<Uuid> = match scope {
            JobScope::All => store.all_partitions()?.into_iter().map(|p| p.id).collect(),
            JobScope::Partitions(ids) => {
                for id in &ids {
                    store
                        .get_partition(*id)?
                        .ok_or_else(|| not_found("partition", id))?;
                }
                ids
            }
        };
        let now = luna_store::now();
        let job = Job::new(Uuid::now_v7(), job_type, partitions, now);
        let op = Operation::queued(Uuid::now_v7(), OperationPayload::RunJob { job_id: job.id }, now)
            .requested_by(requester);
        store.insert_job_idempotently(&job, &op, request.as_ref(), &record)?;
        Ok(job)
    })
    .await?;
    audit.written();
    state.work.notify_one();
    Ok(HttpResponse::Created().json(JobView::new(&job, &state.tenancy)))
}

async fn list_jobs(
    state: web::Data<AppState>,
    job_type: JobType,
    _caller: Reader,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    list_page::<JobFilters, _, _>(
        &state.store,
        &req,
        move |s, q| s.list_jobs(job_type, q),
        |j| JobView::new(j, &state.tenancy),
    )
    .await
}

fn what(job_type: JobType) -> &'static str {
    match job_type {
        JobType::Refresh => "refresh job",
        JobType::HaSynchronize => "synchronize job",
    }
}

/// The job with this id, if it is of this type (a refresh is not found under
/// synchronize, nor the other way round).
fn job_of_type(store: &luna_store::Store, id: Uuid, job_type: JobType) -> Result<Job, ApiError> {
    store
        .get_job(id)?
        .filter(|j| j.job_type == job_type)
        .ok_or_else(|| not_found(what(job_type), id))
}

async fn get_job(
    state: web::Data<AppState>,
    job_type: JobType,
    _caller: Reader,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(what(job_type), &id)?;
    let store = state.store.clone();
    let job = blocking(move || job_of_type(&store, id, job_type)).await?;
    Ok(HttpResponse::Ok().json(JobView::new(&job, &state.tenancy)))
}

/// Answers at once with `abort: true`; the job stops at its next batch.
async fn cancel_job(
    state: web::Data<AppState>,
    job_type: JobType,
    _caller: Manager,
    audit: Audit,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(what(job_type), &id)?;
    let store = state.store.clone();
    let record = audit.change(200);
    let job = blocking(move || {
        job_of_type(&store, id, job_type)?;
        store
            .request_job_cancel(id, luna_store::now(), &record)?
            .ok_or_else(|| not_found(what(job_type), id))
    })
    .await?;
    audit.written();
    Ok(HttpResponse::Ok().json(JobView::new(&job, &state.tenancy)))
}

/// The four routes of one job type: each handler's route and its
/// documentation, registered together by `server::routes`.
macro_rules! job_endpoints {
    (
        $job_type:expr, $noun:literal,
        $start:ident $list:ident $get:ident $cancel:ident,
        $collection:literal, $one:literal, $cancel_path:literal
    ) => {
        #[doc = concat!("Starts a ", $noun, " job over the partitions named.")]
        #[utoipa::path(operation_id = stringify!($start), tag = "jobs", security(("bearer" = [])),
            request_body = JobBody,
            params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", min_length = 1, max_length = 255, description = "Sent again with the same key and body, the create answers what the first made (201, Idempotent-Replayed: true); with another body, 409")),
            responses(
                (status = 201, description = "The job, queued", body = JobView),
                (status = 404, description = "A partition named does not exist", body = ErrorBody)))]
        #[post($collection)]
        pub async fn $start(
            state: web::Data<AppState>,
            caller: Manager,
            req: HttpRequest,
            audit: Audit,
            body: JsonObject<JobBody>,
        ) -> Result<HttpResponse, ApiError> {
            start_job(state, $job_type, caller, req, audit, body).await
        }

        #[doc = concat!("Lists ", $noun, " jobs.")]
        #[utoipa::path(operation_id = stringify!($list), tag = "jobs", security(("bearer" = [])),
            params(ListParams<JobFilters>),
            responses((status = 200, description = "A page of jobs", body = ListView<JobView>)))]
        #[get($collection)]
        pub async fn $list(
            state: web::Data<AppState>,
            caller: Reader,
            req: HttpRequest,
        ) -> Result<HttpResponse, ApiError> {
            list_jobs(state, $job_type, caller, req).await
        }

        #[doc = concat!("One ", $noun, " job, with each partition's progress.")]
        #[utoipa::path(operation_id = stringify!($get), tag = "jobs", security(("bearer" = [])), params(("id" = String, Path, description = "the job's id")),
            responses((status = 200, description = "The job", body = JobView)))]
        #[get($one)]
        pub async fn $get(
            state: web::Data<AppState>,
            caller: Reader,
            id: web::Path<String>,
        ) -> Result<HttpResponse, ApiError> {
            get_job(state, $job_type, caller, id).await
        }

        #[doc = concat!("Asks a ", $noun, " job to stop at its next batch; answers at once with `abort: true`.")]
        #[utoipa::path(operation_id = stringify!($cancel), tag = "jobs", security(("bearer" = [])), params(("id" = String, Path, description = "the job's id")),
            responses((status = 200, description = "The job, asked to stop", body = JobView)))]
        #[post($cancel_path)]
        pub async fn $cancel(
            state: web::Data<AppState>,
            caller: Manager,
            audit: Audit,
            id: web::Path<String>,
        ) -> Result<HttpResponse, ApiError> {
            cancel_job(state, $job_type, caller, audit, id).await
        }
    };
}

job_endpoints!(
    JobType::Refresh, "refresh",
    start_refresh list_refresh get_refresh cancel_refresh,
    "/api/v1/cckm/hsm/luna/refresh",
    "/api/v1/cckm/hsm/luna/refresh/{id}",
    "/api/v1/cckm/hsm/luna/refresh/{id}/cancel"
);

job_endpoints!(
    JobType::HaSynchronize, "synchronize",
    start_synchronize list_synchronize get_synchronize cancel_synchronize,
    "/api/v1/cckm/hsm/luna/synchronize",
    "/api/v1/cckm/hsm/luna/synchronize/{id}",
    "/api/v1/cckm/hsm/luna/synchronize/{id}/cancel"
);
