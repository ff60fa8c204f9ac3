//! Every way a request can fail, and the one place each is mapped to an HTTP answer.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;
use shared::job_types::FieldError;

use crate::broker::BrokerError;
use crate::problem::Problem;
use crate::status_store::StoreError;

/// What a client is told to wait before trying again when a dependency is down (seconds).
pub const UNAVAILABLE_RETRY_AFTER: u64 = 5;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the request body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("the request body must be application/json")]
    UnsupportedMediaType,
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the request body could not be read: {0}")]
    BodyRead(String),
    #[error("the request body did not arrive within {seconds} s")]
    BodyTimeout { seconds: u64 },
    #[error("{detail}")]
    Validation {
        detail: String,
        errors: Vec<FieldError>,
    },
    #[error("no job with this id")]
    JobNotFound,
    #[error("this job's record has expired")]
    JobGone,
    #[error("no resource at this path")]
    RouteNotFound,
    #[error("method not allowed; allowed: {allow}")]
    MethodNotAllowed { allow: &'static str },
    #[error("the job store is unavailable")]
    Store(#[from] StoreError),
    #[error("the job queue is unavailable")]
    Broker(#[from] BrokerError),
    /// The job type registry was never read (Redis unreachable since the start): whether a
    /// type exists is not known, so it is not called unknown.
    #[error("the job type registry could not be read yet; retry shortly")]
    RegistryUnread,
    #[error("{detail}")]
    InvalidHeader { name: &'static str, detail: String },
    #[error("{detail}")]
    InvalidParameter { name: String, detail: String },
    #[error("this Idempotency-Key was already used with a different request body")]
    IdempotencyKeyReused,
    #[error("a request with this Idempotency-Key is still in progress; retry shortly")]
    IdempotencyKeyInFlight,
    #[error("the request's headers are larger than {limit} bytes")]
    HeadersTooLarge { limit: usize },
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(String),
    /// A backend's progress for a job that is not running (or could not be written now).
    #[error("{0}")]
    ProgressRefused(String),
    #[error("too many requests with this API key; retry in {retry_after} s")]
    RateLimited { retry_after: u64 },
    #[error("this API key has {limit} long-polls or event streams open already")]
    TooManyWaits { limit: u32 },
    #[error(
        "{depth} jobs are waiting in the queue, over the admission limit of {limit}; retry later"
    )]
    Overloaded {
        depth: u64,
        limit: u64,
        retry_after: u64,
    },
}

impl ApiError {
    fn problem(&self) -> Problem {
        let status = self.status_code();
        let problem = match self {
            ApiError::MalformedJson(_) => Problem::new(status, "malformed-json", "Malformed JSON"),
            ApiError::UnsupportedMediaType => {
                Problem::new(status, "unsupported-media-type", "Unsupported media type")
            }
            ApiError::PayloadTooLarge { .. } => {
                Problem::new(status, "payload-too-large", "Request body too large")
            }
            ApiError::BodyRead(_) => Problem::new(status, "bad-request", "Bad request"),
            ApiError::BodyTimeout { .. } => {
                Problem::new(status, "request-timeout", "Request body too slow")
            }
            ApiError::Validation { errors, .. } => {
                Problem::new(status, "validation", "The request is not valid")
                    .extension("errors", json!(errors))
            }
            ApiError::JobNotFound => Problem::new(status, "job-not-found", "Job not found"),
            ApiError::JobGone => Problem::new(status, "job-gone", "Job expired"),
            ApiError::RouteNotFound => Problem::new(status, "not-found", "Not found"),
            ApiError::MethodNotAllowed { .. } => {
                Problem::new(status, "method-not-allowed", "Method not allowed")
            }
            ApiError::Store(_) | ApiError::Broker(_) | ApiError::RegistryUnread => {
                Problem::new(status, "service-unavailable", "Service unavailable")
            }
            ApiError::InvalidHeader { name, .. } => {
                Problem::new(status, "invalid-header", "Invalid request header")
                    .extension("header", json!(name))
            }
            ApiError::InvalidParameter { name, .. } => {
                Problem::new(status, "invalid-parameter", "Invalid query parameter")
                    .extension("parameter", json!(name))
            }
            ApiError::IdempotencyKeyReused => Problem::new(
                status,
                "idempotency-key-reused",
                "Idempotency key reused with another request",
            ),
            ApiError::IdempotencyKeyInFlight => Problem::new(
                status,
                "idempotency-key-in-flight",
                "A request with this idempotency key is in progress",
            ),
            ApiError::Unauthorized(_) => {
                Problem::new(status, "unauthorized", "Authentication required")
            }
            ApiError::Forbidden(_) => Problem::new(status, "forbidden", "Forbidden"),
            ApiError::ProgressRefused(_) => {
                Problem::new(status, "job-not-running", "The job is not running")
            }
            ApiError::HeadersTooLarge { .. } => Problem::new(
                status,
                "headers-too-large",
                "Request header fields too large",
            ),
            ApiError::RateLimited { .. } => {
                Problem::new(status, "rate-limited", "Too many requests")
            }
            ApiError::TooManyWaits { .. } => {
                Problem::new(status, "too-many-waits", "Too many open waits")
            }
            ApiError::Overloaded { .. } => {
                Problem::new(status, "overloaded", "Too much work queued")
            }
        };
        problem.detail(self.to_string())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_) | ApiError::BodyRead(_) => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Validation { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::JobNotFound | ApiError::RouteNotFound => StatusCode::NOT_FOUND,
            ApiError::JobGone => StatusCode::GONE,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Store(_) | ApiError::Broker(_) | ApiError::RegistryUnread => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::InvalidHeader { .. } => StatusCode::BAD_REQUEST,
            ApiError::InvalidParameter { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::IdempotencyKeyReused | ApiError::IdempotencyKeyInFlight => {
                StatusCode::CONFLICT
            }
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::ProgressRefused(_) => StatusCode::CONFLICT,
            ApiError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::RateLimited { .. } | ApiError::TooManyWaits { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let problem = self.problem();
        let mut builder = problem.builder();
        match self {
            ApiError::Store(e) => {
                tracing::warn!(error = %e, "job store unavailable");
                builder.insert_header((header::RETRY_AFTER, UNAVAILABLE_RETRY_AFTER));
            }
            ApiError::Broker(e) => {
                tracing::warn!(error = %e, "job queue unavailable");
                builder.insert_header((header::RETRY_AFTER, UNAVAILABLE_RETRY_AFTER));
            }
            ApiError::RegistryUnread => {
                builder.insert_header((header::RETRY_AFTER, UNAVAILABLE_RETRY_AFTER));
            }
            ApiError::MethodNotAllowed { allow } => {
                builder.insert_header((header::ALLOW, HeaderValue::from_static(allow)));
            }
            ApiError::IdempotencyKeyInFlight | ApiError::TooManyWaits { .. } => {
                builder.insert_header((header::RETRY_AFTER, 1));
            }
            ApiError::Unauthorized(_) => {
                builder.insert_header((
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"arr\""),
                ));
            }
            ApiError::RateLimited { retry_after } | ApiError::Overloaded { retry_after, .. } => {
                builder.insert_header((header::RETRY_AFTER, *retry_after));
            }
            _ => {}
        }
        builder.body(problem.body())
    }
}
