//! `GET /v1/jobs/{id}` (the status monitor) and `GET /v1/jobs/{id}/result`.

use actix_web::{web, HttpRequest, HttpResponse};
use shared::{JobId, JobStatus, StatusHead};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::job_response::{etag, result_answer, status_answer};
use crate::long_poll::{mark_applied, prefer_wait, subscribe, wait_for, Until};
use crate::startup::AppState;
use crate::status_store::Lookup;

/// A path id that does not parse names no job: 404, and nothing reaches Redis.
pub fn parse_id(raw: &str) -> Result<JobId, ApiError> {
    raw.parse().map_err(|_| ApiError::JobNotFound)
}

fn found<T>(lookup: Lookup<T>) -> Result<T, ApiError> {
    match lookup {
        Lookup::Found(value) => Ok(value),
        Lookup::Gone => Err(ApiError::JobGone),
        Lookup::NotFound => Err(ApiError::JobNotFound),
    }
}

/// What decides the answer to a stored document; the bytes are served as they are.
fn decode(bytes: &[u8]) -> Result<StatusHead, ApiError> {
    // A document this service did not write (or a newer format) is as good as no job.
    StatusHead::decode(bytes).map_err(|e| {
        tracing::error!(error = %e, "undecodable status document in Redis");
        ApiError::JobNotFound
    })
}

/// Poll a job (the status monitor)
///
/// Answers each poll with what the synchronous request would have answered had it waited:
/// `202` while queued or running, `303` to the result once succeeded, the job's failure as a
/// `422`/`424` problem, `409` when canceled.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    tag = "jobs",
    operation_id = "getJobStatus",
    params(crate::openapi::JobIdPath, crate::openapi::SignedUrl, crate::openapi::IfNoneMatch, crate::openapi::PreferWait),
    security((), ("bearer" = [])),
    responses(
        (status = 202, response = crate::openapi::JobPending),
        (status = 303, response = crate::openapi::JobSucceeded),
        (status = 304, response = crate::openapi::NotModified),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::JobCanceledConflict),
        (status = 410, response = crate::openapi::Gone),
        (status = 422, response = crate::openapi::JobFailedInput),
        (status = 424, response = crate::openapi::JobFailed),
        (status = 429, response = crate::openapi::TooManyRequests),
        (status = 503, response = crate::openapi::Unavailable),
    )
)]
pub async fn status(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    state.limits.check_poll(&caller)?;
    let store = state.store.for_tenant(&caller.tenant);
    let wait = prefer_wait(&req, state.settings.http.max_wait_seconds);
    // A long-poll subscribes before it reads, so no change falls in between.
    let (_slot, watch) = match wait {
        Some(_) => {
            let (slot, watch) = subscribe(&state, &caller, store.keys(), &id).await?;
            (Some(slot), watch)
        }
        None => (None, None),
    };
    // A long-poll reads Redis itself: a kept document a moment older than a change whose
    // notification came before the subscription would have it wait for nothing.
    let read = match wait {
        Some(_) => store.document(&id).await?,
        None => store.poll_document(&id).await?,
    };
    let mut bytes = found(read)?;
    let mut doc = decode(&bytes)?;
    let mut applied = None;
    if let (Some(wait), Some(watch)) = (wait, watch) {
        // Wait only if the client has seen this state: a stale If-None-Match, or none at
        // all, compares against the state as it is now.
        let seen = if_none_match_is_stale(&req, &bytes);
        if !doc.status.is_terminal() && !seen {
            bytes = wait_for(&store, &id, watch, Until::StatusChanges(doc.status), wait).await?;
            doc = decode(&bytes)?;
        }
        applied = Some(wait);
    }
    let retry = state.estimates.policy_for(&doc).await;
    let query = state.location_query(&caller, &id);
    let mut response = status_answer(&req, &doc, bytes, &retry, query.as_deref());
    if let Some(wait) = applied {
        mark_applied(&mut response, wait);
    }
    Ok(response)
}

/// Read a job's result
///
/// `200` with the result once the job succeeded; before that, and when it failed or was
/// canceled, the same answer as the status monitor.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/result",
    tag = "jobs",
    operation_id = "getJobResult",
    params(crate::openapi::JobIdPath, crate::openapi::SignedUrl, crate::openapi::IfNoneMatch),
    security((), ("bearer" = [])),
    responses(
        (status = 200, response = crate::openapi::JobResult),
        (status = 202, response = crate::openapi::JobPending),
        (status = 304, response = crate::openapi::NotModified),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::JobCanceledConflict),
        (status = 410, response = crate::openapi::Gone),
        (status = 422, response = crate::openapi::JobFailedInput),
        (status = 424, response = crate::openapi::JobFailed),
        (status = 429, response = crate::openapi::TooManyRequests),
        (status = 503, response = crate::openapi::Unavailable),
    )
)]
pub async fn result(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    state.limits.check_poll(&caller)?;
    let store = state.store.for_tenant(&caller.tenant);
    let (bytes, result) = found(store.document_and_result(&id).await?)?;
    let doc = decode(&bytes)?;
    match (doc.status, result) {
        (JobStatus::Succeeded, Some(result)) => {
            // Read here rather than in every poll's head: only the result needs it.
            #[derive(serde::Deserialize)]
            struct Described {
                #[serde(default)]
                result: Option<shared::ResultInfo>,
            }
            let described = serde_json::from_slice::<Described>(&bytes)
                .ok()
                .and_then(|d| d.result);
            Ok(result_answer(
                &req,
                result,
                described.as_ref().map(|r| r.media_type.as_str()),
            ))
        }
        (JobStatus::Succeeded, None) => {
            tracing::error!(job_id = %id, "succeeded job without a stored result");
            Err(ApiError::JobNotFound)
        }
        _ => Ok(status_answer(
            &req,
            &doc,
            bytes,
            &state.estimates.policy_for(&doc).await,
            state.location_query(&caller, &id).as_deref(),
        )),
    }
}

/// Whether the request names an ETag other than the current one in `If-None-Match`: the client
/// is behind, so it should get the current state at once rather than wait for the next.
fn if_none_match_is_stale(req: &HttpRequest, current: &[u8]) -> bool {
    let tag = etag(current);
    let given: Vec<&str> = req
        .headers()
        .get_all(actix_web::http::header::IF_NONE_MATCH)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .collect();
    !given.is_empty() && !given.contains(&tag.as_str()) && !given.contains(&"*")
}
