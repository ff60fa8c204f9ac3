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

pub async fn list(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    caller.require_operator()?;
    let workers = state.store.live_workers().await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "private, no-cache"))
        .json(json!({ "workers": workers })))
}
