//! `GET /v1/workers`: the live workers of the fleet registry, sorted by id (see
//! `shared::fleet`): `{"workers": [{"id", "host", "pid", "version", "queue", "concurrency",
//! "in_flight", "jobs_done", "state", "heartbeat_seconds", "started_at", "last_seen"}, …]}`.
//!
//! Operators only (it reveals host names, pids and versions): 403 for other keys.

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::startup::AppState;

/// List the live workers (operators)
///
/// The workers whose heartbeats are fresh, sorted by id. Operators only when authentication is
/// on (it reveals host names, pids and versions): another key gets 403.
#[utoipa::path(
    get,
    path = "/v1/workers",
    tag = "operations",
    operation_id = "listWorkers",
    security((), ("bearer" = [])),
    responses(
        (status = 200, response = crate::openapi::WorkerList),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 429, response = crate::openapi::TooManyRequests),
        (status = 503, response = crate::openapi::Unavailable),
    )
)]
pub async fn list(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    caller.require_operator()?;
    let workers = state.store.live_workers().await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "private, no-cache"))
        .json(json!({ "workers": workers })))
}
