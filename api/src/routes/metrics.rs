//! `GET /metrics` (Prometheus text format) and the middleware that counts and times every
//! request.

use std::borrow::Cow;
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
    // Queue figures are read now: a scrape every few seconds costs the broker nothing. The
    // sums over the known types' queues (one work queue before queues per type).
    let prefix = state.settings.amqp.queue.as_str();
    let names = state.job_types.current().queues(prefix);
    let stats =
        futures_util::future::join_all(names.iter().map(|q| state.broker.queue_stats(q))).await;
    let (mut messages, mut consumers) = (0i64, 0i64);
    for stats in stats.into_iter().flatten() {
        messages += i64::from(stats.messages);
        consumers += i64::from(stats.consumers);
    }
    metrics::QUEUE_MESSAGES.set(messages);
    metrics::QUEUE_CONSUMERS.set(consumers);
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

/// The pattern of a job route (`/v1/jobs`, `/v1/jobs/{id}`, `…/result`, `…/events`),
/// recognised without the router: `match_pattern` walks the resource map again and runs a
/// capturing regex per dynamic resource, which cost about 5% of the facade's CPU on every
/// status poll (see BENCHMARKS.md). `{id}` is one non-empty segment, as in the router; a path
/// this does not recognise (or with percent-escapes) falls back to `match_pattern`.
fn job_route(path: &str) -> Option<&'static str> {
    let rest = path.strip_prefix("/v1/jobs")?;
    if rest.is_empty() {
        return Some("/v1/jobs");
    }
    let rest = rest.strip_prefix('/')?;
    let (id, tail) = match rest.split_once('/') {
        Some((id, tail)) => (id, Some(tail)),
        None => (rest, None),
    };
    if id.is_empty() || id.contains('%') {
        return None;
    }
    match tail {
        None => Some("/v1/jobs/{id}"),
        Some("result") => Some("/v1/jobs/{id}/result"),
        Some("events") => Some("/v1/jobs/{id}/events"),
        Some(_) => None,
    }
}

/// Middleware (for `App::wrap_fn`): counts each request by route pattern, method and status,
/// times it, and writes the access log line (target `access`).
///
/// The access log is `info` for what changes something (every method but GET and HEAD) and for
/// every answer of 400 and above, `debug` for the rest: status polls, results, lists and health
/// checks. A line is a `write` on the thread serving the request, and polls are the bulk of the
/// traffic (the benchmark's GET scenario wrote 64 MB of them); their counts and times are in
/// `/metrics`. The line names the path without its query, which may carry a signed URL's `sig`.
pub fn record<S, B>(
    req: ServiceRequest,
    service: &S,
) -> impl Future<Output = Result<ServiceResponse<B>, actix_web::Error>> + use<S, B>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let route: Cow<'static, str> = match job_route(req.path()) {
        Some(pattern) => Cow::Borrowed(pattern),
        None => Cow::Owned(
            req.match_pattern()
                .unwrap_or_else(|| "unmatched".to_owned()),
        ),
    };
    let method = method_label(req.method());
    let reads = matches!(*req.method(), Method::GET | Method::HEAD);
    // A copy of the path, not a clone of the `HttpRequest`: actix recycles a request only while
    // it holds the sole reference, and panics when a clone outlives the response.
    let path = req.path().to_owned();
    let started = Instant::now();
    let response = service.call(req);
    async move {
        let response = response.await;
        let status = match &response {
            Ok(r) => r.status(),
            Err(e) => e.as_response_error().status_code(),
        };
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        if access_line_is_info(reads, status.as_u16()) {
            tracing::info!(target: "access", "{method} {path} {} {ms:.3}ms", status.as_str());
        } else {
            tracing::debug!(target: "access", "{method} {path} {} {ms:.3}ms", status.as_str());
        }
        metrics::HTTP_REQUESTS
            .with_label_values(&[route.as_ref(), method, status.as_str()])
            .inc();
        metrics::HTTP_DURATION
            .with_label_values(&[route.as_ref(), method])
            .observe(started.elapsed().as_secs_f64());
        response
    }
}

/// Whether a request's access line is `info` (else `debug`): a successful read is `debug`.
fn access_line_is_info(reads: bool, status: u16) -> bool {
    !reads || status >= 400
}

#[cfg(test)]
mod tests {
    use super::{access_line_is_info, job_route};

    #[test]
    fn successful_reads_are_logged_at_debug_the_rest_at_info() {
        assert!(!access_line_is_info(true, 200));
        assert!(!access_line_is_info(true, 202));
        assert!(!access_line_is_info(true, 303));
        assert!(!access_line_is_info(true, 304));
        assert!(access_line_is_info(true, 404));
        assert!(access_line_is_info(true, 503));
        assert!(access_line_is_info(false, 202));
        assert!(access_line_is_info(false, 422));
    }

    #[test]
    fn job_routes_are_recognised_like_the_router_does() {
        let id = "/v1/jobs/0b7c4f0e-4b7e-4a55-9d7e-2f0c8e1d6a3b";
        assert_eq!(job_route("/v1/jobs"), Some("/v1/jobs"));
        assert_eq!(job_route(id), Some("/v1/jobs/{id}"));
        assert_eq!(job_route("/v1/jobs/not-a-uuid"), Some("/v1/jobs/{id}"));
        assert_eq!(
            job_route(&format!("{id}/result")),
            Some("/v1/jobs/{id}/result")
        );
        assert_eq!(
            job_route(&format!("{id}/events")),
            Some("/v1/jobs/{id}/events")
        );
        // Left to the router.
        for other in [
            "/v1/jobs/",
            "/v1/jobsx",
            "/v1/jobs//result",
            "/v1/jobs/a%2Fb",
            "/v1/jobs/a/b",
            "/v1/jobs/a/result/",
            "/v1/workers",
            "/healthz",
        ] {
            assert_eq!(job_route(other), None, "{other}");
        }
    }
}
