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
    // Each failure as an operator should read it: a TLS handshake that failed names the
    // server and rustls's reason (an unknown issuer, a name the certificate does not cover).
    let redis =
        redis.map(|r| r.map_err(|e| shared::redis_conn::describe(&state.settings.redis, &e).0));
    let rabbitmq = rabbitmq.map(|r| r.map_err(|e| e.to_string()));
    let reason = |r: &Result<Result<(), String>, _>| match r {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.clone()),
        Err(_) => Some("timed out".to_owned()),
    };
    let describe = |reason: &Option<String>| match reason {
        None => json!({ "status": "up" }),
        Some(e) => json!({ "status": "down", "error": e }),
    };
    let (redis_down, rabbitmq_down) = (reason(&redis), reason(&rabbitmq));
    let checks = json!({
        "redis": describe(&redis_down),
        "rabbitmq": describe(&rabbitmq_down),
    });
    // Shedding or limiting is not unreadiness: the instance still answers polls.
    let limits = state.limits.report(state.estimates.deepest_queue().await);
    let job_types = state.job_types.current().readiness();
    if redis_down.is_none() && rabbitmq_down.is_none() {
        HttpResponse::Ok().json(json!({
            "status": "ready",
            "checks": checks,
            "limits": limits,
            "job_types": job_types,
        }))
    } else {
        let down: Vec<String> = [("redis", redis_down), ("rabbitmq", rabbitmq_down)]
            .into_iter()
            .filter_map(|(name, reason)| reason.map(|why| format!("{name} ({why})")))
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
