//! `POST /v1/jobs`: validate, record the job as queued in Redis, publish it with a confirm,
//! and only then answer 202. A job that could not be published is taken back out of Redis, so
//! a client never holds a status URL for work that will never run.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use shared::trace::TraceContext;
use shared::{JobId, JobMessage, StatusDocument, StatusHead};
use tracing::Instrument;

use crate::auth::Caller;
use crate::body::read_json;
use crate::error::ApiError;
use crate::idempotency::{self, Claim, Idempotency};
use crate::job_response::{etag, fresh_status_answer, retry_after, with_query};
use crate::long_poll::{mark_applied, prefer_wait, subscribe, wait_for, Until};
use crate::startup::AppState;
use crate::submission::Submission;

/// Submit a job
///
/// Validates the request and the input against its job type's schema (as the workers registered
/// it; see `GET /v1/job-types`), records the job as `queued` in Redis,
/// publishes it (persistent, confirmed) and only then answers `202` with `Location` (the status
/// monitor) and `Retry-After`. Nothing is queued for a request that gets a 4xx.
#[utoipa::path(
    post,
    path = "/v1/jobs",
    tag = "jobs",
    operation_id = "submitJob",
    params(crate::openapi::SubmitHeaders, crate::openapi::PreferWait),
    request_body(content = crate::openapi::JobRequest, content_type = "application/json"),
    security((), ("bearer" = [])),
    responses(
        (status = 202, response = crate::openapi::JobAccepted),
        (status = 303, response = crate::openapi::JobSucceeded),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 409, response = crate::openapi::SubmitConflict),
        (status = 408, response = crate::openapi::RequestTimeout),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 415, response = crate::openapi::UnsupportedMediaType),
        (status = 422, response = crate::openapi::SubmitUnprocessable),
        (status = 424, response = crate::openapi::JobFailed),
        (status = 429, response = crate::openapi::TooManyRequests),
        (status = 503, response = crate::openapi::Unavailable),
    )
)]
pub async fn submit(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    // Continue the caller's trace if it sent one, else start one; the worker continues it
    // (its job span becomes a child of this span when spans are exported).
    let incoming = req
        .headers()
        .get(shared::trace::HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceContext::parse);
    // Only for an exported trace: without a collector the lines a submit writes name their
    // job themselves.
    let span = shared::export_span!(
        "POST /v1/jobs",
        otel.kind = "server",
        http.request.method = "POST",
        http.route = "/v1/jobs",
        job_id = tracing::field::Empty,
    );
    let trace = shared::telemetry::continue_trace(&span, incoming);
    submit_traced(req, payload, state, caller, trace)
        .instrument(span)
        .await
}

async fn submit_traced(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    caller: Caller,
    trace: TraceContext,
) -> Result<HttpResponse, ApiError> {
    state.limits.check_submit(&caller)?;
    let store = state.store.for_tenant(&caller.tenant);
    let body = read_json(
        &req,
        payload,
        state.settings.http.body_limit_bytes,
        &state.settings.limits,
    )
    .await?;
    let idempotency = Idempotency::from_request(&req, &body)?;
    let submission =
        Submission::parse_with(body, &state.job_types.current(), &state.settings.webhooks)?;
    let job_type = submission.job_type.name();
    let queue = submission.job_type.queue_target(&state.settings.amqp.queue);
    // Shed load before anything is written: a deep backlog of this type is not worth growing
    // (other types' queues may be short).
    if state.limits.admission_enabled() {
        state
            .limits
            .admit(state.estimates.queue_depth(&queue.name).await)?;
    }

    let id = JobId::new();
    tracing::Span::current().record("job_id", tracing::field::display(&id));
    let now = Utc::now();
    let doc =
        StatusDocument::queued(id, job_type, now).with_callback(submission.callback_url.as_deref());
    let doc_bytes = serde_json::to_vec(&doc).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    let message = JobMessage::new(id, job_type, submission.input, now)
        .checked_against(&submission.checked.digest, &submission.checked.also)
        .with_callback(submission.callback_url.clone())
        .for_tenant(&caller.tenant);
    let payload =
        serde_json::to_vec(&message).map_err(|e| ApiError::MalformedJson(e.to_string()))?;

    let claim = match idempotency::claim(idempotency, &state, &store, &caller, &id).await? {
        Claim::Fresh(claim) => claim,
        Claim::Replay(answer) => return Ok(answer),
    };
    let wait = prefer_wait(&req, state.settings.http.max_wait_seconds);
    // Subscribed before the job exists, so even an instant job's end is seen.
    let (_slot, watch) = match wait {
        Some(_) => {
            let (slot, watch) = subscribe(&state, &caller, store.keys(), &id).await?;
            (Some(slot), watch)
        }
        None => (None, None),
    };
    store
        .create(&id, &doc_bytes, now.timestamp_millis())
        .await?;
    if let Err(e) = state
        .broker
        .publish(
            &queue,
            &id.to_string(),
            &payload,
            submission.priority,
            &trace.to_string(),
        )
        .await
    {
        if let Err(undo) = store.remove(&id).await {
            // The record will expire with the retention period; say so loudly meanwhile.
            tracing::error!(job_id = %id, error = %undo, "could not remove the record of an unpublished job");
        }
        claim.release().await;
        return Err(e.into());
    }
    // Debug, not info: the access log has the request, and the worker's "job finished" line
    // (info) the job's id, trace id and outcome. A log line is a write to stdout on the
    // request's thread; two more per job cost about 5% of the CPU per job end to end.
    tracing::debug!(
        job_id = %id,
        job_type,
        tenant = %caller.tenant,
        trace_id = %trace.trace_id(),
        "job queued"
    );
    crate::metrics::JOBS_SUBMITTED
        .with_label_values(&[job_type])
        .inc();
    claim.complete().await;

    let query = state.location_query(&caller, &id);
    let accepted = HttpResponse::Accepted()
        .insert_header((
            header::LOCATION,
            with_query(id.status_path(), query.as_deref()),
        ))
        .insert_header((
            header::RETRY_AFTER,
            retry_after(&state.estimates.policy_for(&doc.head()).await),
        ))
        .insert_header((header::ETAG, etag(&doc_bytes)))
        .content_type("application/json")
        .body(doc_bytes);

    // `Prefer: wait=N`: answer as the status monitor would once the job ends within N s.
    let (Some(wait), Some(watch)) = (wait, watch) else {
        return Ok(accepted);
    };
    let latest = wait_for(&store, &id, watch, Until::Terminal, wait).await?;
    let mut response = match StatusHead::decode(&latest) {
        Ok(doc) if doc.status.is_terminal() => {
            fresh_status_answer(&doc, latest, &state.settings.retry_after, query.as_deref())
        }
        _ => accepted,
    };
    mark_applied(&mut response, wait);
    Ok(response)
}
