//! `GET /v1/jobs/{id}` (the status monitor) and `GET /v1/jobs/{id}/result`.

use actix_web::{web, HttpRequest, HttpResponse};
use shared::{JobId, JobStatus, StatusDocument};

use crate::error::ApiError;
use crate::job_response::{result_answer, status_answer};
use crate::startup::AppState;
use crate::status_store::Lookup;

/// A path id that does not parse names no job: 404, and nothing reaches Redis.
fn parse_id(raw: &str) -> Result<JobId, ApiError> {
    raw.parse().map_err(|_| ApiError::JobNotFound)
}

fn found<T>(lookup: Lookup<T>) -> Result<T, ApiError> {
    match lookup {
        Lookup::Found(value) => Ok(value),
        Lookup::Gone => Err(ApiError::JobGone),
        Lookup::NotFound => Err(ApiError::JobNotFound),
    }
}

fn decode(bytes: &[u8]) -> Result<StatusDocument, ApiError> {
    // A document this service did not write (or a newer format) is as good as no job.
    serde_json::from_slice(bytes).map_err(|e| {
        tracing::error!(error = %e, "undecodable status document in Redis");
        ApiError::JobNotFound
    })
}

pub async fn status(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let bytes = found(state.store.document(&id).await?)?;
    let doc = decode(&bytes)?;
    Ok(status_answer(
        &req,
        &doc,
        bytes,
        &state.settings.retry_after,
    ))
}

pub async fn result(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let (bytes, result) = found(state.store.document_and_result(&id).await?)?;
    let doc = decode(&bytes)?;
    match (doc.status, result) {
        (JobStatus::Succeeded, Some(result)) => Ok(result_answer(&req, result)),
        (JobStatus::Succeeded, None) => {
            tracing::error!(job_id = %id, "succeeded job without a stored result");
            Err(ApiError::JobNotFound)
        }
        _ => Ok(status_answer(
            &req,
            &doc,
            bytes,
            &state.settings.retry_after,
        )),
    }
}
