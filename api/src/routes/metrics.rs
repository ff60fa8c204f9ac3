//! `GET /metrics` (Prometheus text format) and the middleware that counts and times every
//! request.

use std::future::Future;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::{web, HttpResponse};

use crate::metrics;
use crate::startup::AppState;

/// Prometheus metrics
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    operation_id = "getMetrics",
    responses(        (status = 200, response = crate::openapi::Metrics))
)]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    // Queue figures are read now: a scrape every few seconds costs the broker nothing.
    if let Ok(stats) = state.broker.queue_stats().await {
        metrics::QUEUE_MESSAGES.set(i64::from(stats.messages));
        metrics::QUEUE_CONSUMERS.set(i64::from(stats.consumers));
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(metrics::render())
}

/// Known methods by name, anything else as `other`: labels must not grow with client input.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Middleware (for `App::wrap_fn`): counts each request by route pattern, method and status,
/// and times it.
pub fn record<S, B>(
    req: ServiceRequest,
    service: &S,
) -> impl Future<Output = Result<ServiceResponse<B>, actix_web::Error>> + use<S, B>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = method_label(req.method());
    let started = Instant::now();
    let response = service.call(req);
    async move {
        let response = response.await;
        let status = match &response {
            Ok(r) => r.status().as_u16(),
            Err(e) => e.as_response_error().status_code().as_u16(),
        };
        metrics::HTTP_REQUESTS
            .with_label_values(&[route.as_str(), method, &status.to_string()])
            .inc();
        metrics::HTTP_DURATION
            .with_label_values(&[route.as_str(), method])
            .observe(started.elapsed().as_secs_f64());
        response
    }
}
