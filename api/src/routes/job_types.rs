//! `GET /v1/job-types`: the job types this facade accepts, as the workers registered them (see
//! `crate::job_types`): `{"job_types": [{"name", "description", "input_schema", "example",
//! "limits", "priorities", "schema_digest", "worker_version", "workers", "state", "queue"}, …]}`,
//! sorted by name. `state` is `served` while a live worker serves the type, `no-live-worker`
//! when none does (its jobs are still accepted and wait in the queue). `queue` is where the
//! type's jobs wait and how many are ready there. `versions` lists every registered version
//! of the type (two during a rolling deploy that changed its schema), newest first, each with
//! the live workers that serve it; the other members describe the newest.

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::startup::AppState;

/// List the job types
///
/// Every job type this deployment accepts, learned from the workers that serve them: its
/// input's JSON Schema (what `POST /v1/jobs` checks `input` against), an example input, its
/// limits, whether it takes priorities, and how many live workers serve it. Any key may read
/// it.
#[utoipa::path(
    get,
    path = "/v1/job-types",
    tag = "jobs",
    operation_id = "listJobTypes",
    security((), ("bearer" = [])),
    responses(
        (status = 200, response = crate::openapi::JobTypeList),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 429, response = crate::openapi::TooManyRequests),
    )
)]
pub async fn list(state: web::Data<AppState>, _caller: Caller) -> Result<HttpResponse, ApiError> {
    let catalog = state.job_types.current();
    let legacy = state.settings.amqp.queue.as_str();
    let depths = futures_util::future::join_all(
        catalog
            .types()
            .map(|t| state.estimates.queue_depth(t.queue(legacy))),
    )
    .await;
    let types: Vec<Value> = catalog
        .types()
        .zip(depths)
        .map(|(t, depth)| {
            let r = &t.record;
            let queue = json!({"name": t.queue(legacy), "depth": depth});
            let versions: Vec<Value> = t
                .versions
                .iter()
                .map(|v| {
                    json!({
                        "schema_digest": v.schema_digest,
                        "worker_version": v.worker_version,
                        "workers": v.workers,
                    })
                })
                .collect();
            json!({
                "name": r.name,
                "description": r.description,
                "input_schema": r.input_schema,
                "example": r.example,
                "limits": r.limits,
                "priorities": r.priorities,
                "schema_digest": r.schema_digest,
                "worker_version": r.worker_version,
                "workers": t.workers,
                "state": t.state(),
                "queue": queue,
                "versions": versions,
            })
        })
        .collect();
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "private, no-cache"))
        .json(json!({ "job_types": types })))
}
