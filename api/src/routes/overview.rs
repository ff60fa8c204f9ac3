//! `GET /v1/overview`: the deployment at a glance, for operators and the dashboard:
//!
//! ```json
//! { "queue": { "name": "jobs", "depth": 3, "consumers": 2 },
//!   "workers": { "live": 2, "in_flight": 5, "capacity": 16, "draining": 0 },
//!   "jobs_by_state": { "queued": 3, "running": 5, "succeeded": 90, "failed": 1, "canceled": 1 },
//!   "jobs": { "indexed": 100, "counted": 100, "complete": true },
//!   "generated_at": "RFC 3339" }
//! ```
//!
//! `queue.depth` is the work queue's ready messages (a passive declare, as for `Retry-After`);
//! if the broker cannot be asked, `queue` holds `error` instead and the rest is still served.
//! `jobs_by_state` counts the newest [`COUNT_BOUND`] jobs of the index (`jobs.complete` says
//! whether that was all of them). The answer is computed at most once per [`FRESH`] per
//! process and shared by every caller, so any number of open dashboards costs Redis and the
//! broker one small read a second.
//!
//! Operators only (it reveals the deployment's figures): another key gets 403. Queue and workers
//! are the deployment's; `jobs_by_state` counts the caller's tenant's jobs (with authentication
//! off, every job).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use serde_json::{json, Map, Value};
use shared::Tenant;
use tokio::sync::Mutex;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::startup::AppState;

/// How long one computed overview is served.
pub const FRESH: Duration = Duration::from_secs(1);
/// Jobs of the index whose state is counted (the newest ones).
pub const COUNT_BOUND: usize = crate::status_store::index::SCAN_BOUND;
/// The broker may be slow or away; the overview does not wait for it longer than this.
const QUEUE_TIMEOUT: Duration = Duration::from_millis(1500);

/// The last overview computed by this process, per tenant.
#[derive(Default)]
pub struct OverviewCache {
    last: Mutex<HashMap<Tenant, (Instant, Value)>>,
}

/// The deployment at a glance (operators)
///
/// Queue depth and consumers, live workers, and the caller's tenant's newest jobs by state;
/// computed at most once a second per facade. Operators only when authentication is on.
#[utoipa::path(
    get,
    path = "/v1/overview",
    tag = "operations",
    operation_id = "overview",
    security((), ("bearer" = [])),
    responses(
        (status = 200, response = crate::openapi::Overview),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 429, response = crate::openapi::TooManyRequests),
        (status = 503, response = crate::openapi::Unavailable),
    )
)]
pub async fn overview(
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    caller.require_operator()?;
    // Holding the lock while computing makes concurrent callers share one computation.
    let mut last = state.overview.last.lock().await;
    let body = match last.get(&caller.tenant) {
        Some((at, body)) if at.elapsed() < FRESH => body.clone(),
        _ => {
            let body = compute(&state, &caller.tenant).await?;
            last.insert(caller.tenant.clone(), (Instant::now(), body.clone()));
            body
        }
    };
    drop(last);
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "private, no-cache"))
        .json(body))
}

async fn compute(state: &AppState, tenant: &Tenant) -> Result<Value, ApiError> {
    let prefix = state.settings.amqp.queue.clone();
    let store = state.store.for_tenant(tenant);
    // Every known type's queue (types may share one).
    let names = state.job_types.current().queues(&prefix);
    let stats = futures_util::future::join_all(names.iter().map(|name| async move {
        tokio::time::timeout(QUEUE_TIMEOUT, state.broker.queue_stats(name)).await
    }));
    let (stats, workers, counts) = tokio::join!(
        stats,
        state.store.live_workers(),
        store.count_states(COUNT_BOUND),
    );
    let (workers, counts) = (workers?, counts?);
    let (mut depth, mut consumers, mut errors) = (0u64, 0u64, Vec::new());
    let queues: Vec<Value> = names
        .iter()
        .zip(stats)
        .map(|(name, stats)| match stats {
            Ok(Ok(q)) => {
                depth += u64::from(q.messages);
                consumers += u64::from(q.consumers);
                json!({ "name": name, "depth": q.messages, "consumers": q.consumers })
            }
            Ok(Err(e)) => {
                errors.push(format!("{name}: {e}"));
                json!({ "name": name, "error": e.to_string() })
            }
            Err(_) => {
                errors.push(format!("{name}: the broker did not answer in time"));
                json!({ "name": name, "error": "the broker did not answer in time" })
            }
        })
        .collect();
    // `depth` and `consumers` sum the types' queues (as one work queue did before queues
    // per type); `queues` has each.
    let queue = if errors.is_empty() {
        json!({ "name": prefix, "depth": depth, "consumers": consumers, "queues": queues })
    } else {
        json!({ "name": prefix, "error": errors.join("; "), "queues": queues })
    };
    let by_state: Map<String, Value> = counts
        .by_state
        .iter()
        .map(|(s, n)| (s.as_str().to_owned(), json!(n)))
        .collect();
    Ok(json!({
        "queue": queue,
        "workers": {
            "live": workers.len(),
            "in_flight": workers.iter().map(|w| w.in_flight.max(0)).sum::<i64>(),
            "capacity": workers.iter().map(|w| w.concurrency).sum::<usize>(),
            "draining": workers.iter().filter(|w| w.state != "running").count(),
        },
        "jobs_by_state": by_state,
        "jobs": {
            "indexed": counts.indexed,
            "counted": counts.examined,
            "complete": counts.examined >= counts.indexed,
        },
        "generated_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    }))
}
