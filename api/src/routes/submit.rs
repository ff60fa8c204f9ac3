//! `POST /v1/jobs`: validate, record the job as queued in Redis, publish it with a confirm,
//! and only then answer 202. A job that could not be published is taken back out of Redis, so
//! a client never holds a status URL for work that will never run.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use shared::{JobId, JobMessage, StatusDocument};

use crate::body::read_json;
use crate::error::ApiError;
use crate::job_response::{etag, retry_after};
use crate::startup::AppState;
use crate::submission::Submission;

pub async fn submit(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = read_json(&req, payload, state.settings.http.body_limit_bytes).await?;
    let submission = Submission::parse(body)?;

    let id = JobId::new();
    let now = Utc::now();
    let doc = StatusDocument::queued(id, submission.spec.name, now);
    let doc_bytes = serde_json::to_vec(&doc).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    let message = JobMessage::new(id, submission.spec.name, submission.input, now);
    let payload =
        serde_json::to_vec(&message).map_err(|e| ApiError::MalformedJson(e.to_string()))?;

    state.store.create(&id, &doc_bytes).await?;
    if let Err(e) = state.broker.publish(&id.to_string(), &payload).await {
        if let Err(undo) = state.store.remove(&id).await {
            // The record will expire with the retention period; say so loudly meanwhile.
            tracing::error!(job_id = %id, error = %undo, "could not remove the record of an unpublished job");
        }
        return Err(e.into());
    }
    tracing::info!(job_id = %id, job_type = submission.spec.name, "job queued");

    Ok(HttpResponse::Accepted()
        .insert_header((header::LOCATION, id.status_path()))
        .insert_header((
            header::RETRY_AFTER,
            retry_after(&state.settings.retry_after),
        ))
        .insert_header((header::ETAG, etag(&doc_bytes)))
        .content_type("application/json")
        .body(doc_bytes))
}
