//! `DELETE /v1/jobs/{id}`: cancel a job. Queued: it never starts. Running: its handler is told
//! to stop and the job ends canceled. `202` with the status document; `200` when it was
//! canceled already; `409` when it had finished. `DELETE` cancels, it does not forget.

use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde_json::Value;
use shared::JobStatus;

use crate::auth::Caller;
use crate::cancel::Canceled;
use crate::error::ApiError;
use crate::job_response::with_query;
use crate::problem::Problem;
use crate::routes::jobs::parse_id;
use crate::startup::AppState;

/// Cancel a job
///
/// A queued job never starts; a running job's handler is told to stop and the job ends
/// `canceled`. `DELETE` cancels, it does not forget the record.
#[utoipa::path(
    delete,
    path = "/v1/jobs/{id}",
    tag = "jobs",
    operation_id = "cancelJob",
    params(crate::openapi::JobIdPath),
    security((), ("bearer" = [])),
    responses(
        (status = 200, response = crate::openapi::JobCanceledAlready),
        (status = 202, response = crate::openapi::JobCancelAccepted),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::JobFinishedConflict),
        (status = 429, response = crate::openapi::TooManyRequests),
        (status = 503, response = crate::openapi::Unavailable),
    )
)]
pub async fn cancel(
    path: web::Path<String>,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    state.limits.check_submit(&caller)?;
    let outcome = state
        .store
        .for_tenant(&caller.tenant)
        .cancel(&id, state.settings.jobs.tombstone_seconds)
        .await?;
    let json = |status: StatusCode, doc: Vec<u8>| {
        HttpResponse::build(status)
            .insert_header((
                header::LOCATION,
                with_query(id.status_path(), state.location_query(&caller, &id)),
            ))
            .content_type("application/json")
            .body(doc)
    };
    Ok(match outcome {
        Canceled::Now(doc) | Canceled::Requested(doc) => {
            tracing::info!(job_id = %id, "cancel requested");
            json(StatusCode::ACCEPTED, doc)
        }
        Canceled::AlreadyFinished(doc, JobStatus::Canceled) => json(StatusCode::OK, doc),
        Canceled::AlreadyFinished(doc, status) => {
            let job: Value = serde_json::from_slice(&doc).unwrap_or(Value::Null);
            Problem::new(StatusCode::CONFLICT, "job-finished", "The job has finished")
                .detail(format!(
                    "the job has {status} and can no longer be canceled"
                ))
                .instance(id.status_path())
                .extension("job", job)
                .into_response()
        }
        Canceled::Missing => return Err(ApiError::JobNotFound),
    })
}
