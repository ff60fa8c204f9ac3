//! CORS for browser clients on other origins (`[cors] allowed_origins`). An allowed origin
//! gets `Access-Control-Allow-Origin` and may read the headers the protocol lives on
//! (`Location`, `Retry-After`, `Preference-Applied`, `ETag`, …); any other origin's request is
//! still answered (CORS is the browser's check, and curl has no origin) but without those
//! headers, so a browser does not hand the answer to that page. Credentials are API keys in
//! `Authorization`, never cookies, so `Access-Control-Allow-Credentials` is not sent.

use actix_cors::Cors;
use actix_web::http::{header, Method};
use shared::access::CorsSettings;

/// Headers a page may read from an answer.
pub const EXPOSED: [&str; 7] = [
    "location",
    "retry-after",
    "preference-applied",
    "etag",
    "link",
    "idempotent-replayed",
    "www-authenticate",
];

pub fn middleware(settings: &CorsSettings) -> Cors {
    let mut cors = Cors::default()
        // Answer other origins without CORS headers instead of with an error: same-origin
        // pages (the dashboard sends an Origin on POST) and tools keep working.
        .block_on_origin_mismatch(false)
        .allowed_methods([Method::GET, Method::HEAD, Method::POST, Method::DELETE])
        .allowed_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::ACCEPT,
            header::IF_NONE_MATCH,
            header::HeaderName::from_static("prefer"),
            header::HeaderName::from_static("idempotency-key"),
            header::HeaderName::from_static("last-event-id"),
            header::HeaderName::from_static("traceparent"),
        ])
        .expose_headers(EXPOSED.map(header::HeaderName::from_static))
        .max_age(settings.max_age_seconds as usize);
    for origin in &settings.allowed_origins {
        cors = if origin == "*" {
            cors.allow_any_origin()
        } else {
            cors.allowed_origin(origin)
        };
    }
    cors
}
