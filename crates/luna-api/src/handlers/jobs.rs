//! Refresh (`/api/v1/cckm/hsm/luna/refresh`) and synchronize
//! (`…/synchronize`) jobs: start, list, get, cancel.

use actix_web::{web, HttpRequest, HttpResponse};
use luna_domain::query::JobFilters;
use luna_domain::{Job, JobRequest, JobScope, JobType, Operation, OperationPayload};
use serde::Deserialize;
use uuid::Uuid;

use super::{blocking, list_query, listing, not_found, path_id};
use crate::auth::{Manager, Reader};
use crate::error::ApiError;
use crate::state::AppState;
use crate::view::JobView;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobBody {
    partitions: Option<Vec<String>>,
    synchronize_all: Option<bool>,
}

// Each job route's scope carries its JobType (see `server::routes`).

pub async fn start_job(
    state: web::Data<AppState>,
    kind: web::Data<JobType>,
    _caller: Manager,
    body: web::Json<JobBody>,
) -> Result<HttpResponse, ApiError> {
    let job_type = **kind;
    let body = body.into_inner();
    let scope = JobRequest {
        partitions: body.partitions,
        synchronize_all: body.synchronize_all,
    }
    .validate()?;
    let store = state.store.clone();
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
        let job = Job::new(Uuid::new_v4(), job_type, partitions, now);
        let op = Operation::queued(Uuid::new_v4(), OperationPayload::RunJob { job_id: job.id }, now);
        store.insert_job_with_operation(&job, &op)?;
        Ok(job)
    })
    .await?;
    state.work.notify_one();
    Ok(HttpResponse::Created().json(JobView::new(&job, &state.tenancy)))
}

pub async fn list_jobs(
    state: web::Data<AppState>,
    kind: web::Data<JobType>,
    _caller: Reader,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let job_type = **kind;
    let query = list_query::<JobFilters>(req.query_string())?;
    let page = query.page;
    let store = state.store.clone();
    let listed = blocking(move || Ok(store.list_jobs(job_type, &query)?)).await?;
    Ok(listing(page, listed, |j| JobView::new(j, &state.tenancy)))
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

pub async fn get_job(
    state: web::Data<AppState>,
    kind: web::Data<JobType>,
    _caller: Reader,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let job_type = **kind;
    let id = path_id(what(job_type), &id)?;
    let store = state.store.clone();
    let job = blocking(move || job_of_type(&store, id, job_type)).await?;
    Ok(HttpResponse::Ok().json(JobView::new(&job, &state.tenancy)))
}

/// Answers at once with `abort: true`; the job stops at its next batch.
pub async fn cancel_job(
    state: web::Data<AppState>,
    kind: web::Data<JobType>,
    _caller: Manager,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let job_type = **kind;
    let id = path_id(what(job_type), &id)?;
    let store = state.store.clone();
    let job = blocking(move || {
        job_of_type(&store, id, job_type)?;
        store
            .request_job_cancel(id, luna_store::now())?
            .ok_or_else(|| not_found(what(job_type), id))
    })
    .await?;
    Ok(HttpResponse::Ok().json(JobView::new(&job, &state.tenancy)))
}
