//! `GET /healthz` (the process answers) and `GET /readyz` (it can reach RabbitMQ and Redis).
//! `/readyz` also tells which job types are registered and whether a live worker serves each;
//! that is information, not readiness: a type without a worker still takes jobs (they wait).

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::problem::Problem;
use crate::startup::AppState;

/// A readiness probe must answer quickly even when a dependency hangs.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Liveness
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    operation_id = "getHealth",
    responses(        (status = 200, response = crate::openapi::Health))
)]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// Readiness: RabbitMQ and Redis reachable
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    operation_id = "getReadiness",
    responses(        (status = 200, response = crate::openapi::Ready),
        (status = 503, response = crate::openapi::NotReady))
)]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let (redis, rabbitmq) = tokio::join!(
        tokio::time::timeout(CHECK_TIMEOUT, state.store.ping()),
        tokio::time::timeout(CHECK_TIMEOUT, state.broker.check()),
    );
    let describe = |r: Result<Result<(), String>, _>| match r {
        Ok(Ok(())) => json!({ "status": "up" }),
        Ok(Err(e)) => json!({ "status": "down", "error": e }),
        Err(_) => json!({ "status": "down", "error": "timed out" }),
    };
    let redis_up = matches!(redis, Ok(Ok(())));
    let rabbitmq_up = matches!(rabbitmq, Ok(Ok(())));
    let checks = json!({
        "redis": describe(redis.map(|r| r.map_err(|e| e.to_string()))),
        "rabbitmq": describe(rabbitmq.map(|r| r.map_err(|e| e.to_string()))),
    });
    // Shedding or limiting is not unreadiness: the instance still answers polls.
    let limits = state.limits.report(state.estimates.queue_depth().await);
    let job_types = state.job_types.current().readiness();
    if redis_up && rabbitmq_up {
        HttpResponse::Ok().json(json!({
            "status": "ready",
            "checks": checks,
            "limits": limits,
            "job_types": job_types,
        }))
    } else {
        let down: Vec<&str> = [("redis", redis_up), ("rabbitmq", rabbitmq_up)]
            .into_iter()
            .filter(|(_, up)| !up)
            .map(|(name, _)| name)
            .collect();
        let problem = Problem::new(StatusCode::SERVICE_UNAVAILABLE, "not-ready", "Not ready")
            .detail(format!("unreachable: {}", down.join(", ")))
            .extension("checks", checks);
        problem
            .builder()
            .insert_header(("Retry-After", crate::error::UNAVAILABLE_RETRY_AFTER))
            .body(problem.body())
    }
}
