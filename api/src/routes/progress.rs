//! `POST /v1/jobs/{id}/progress`: a job's backend reports progress, through the signed,
//! job-scoped `Progress-Url` the worker sent it (see `shared::signing`: a progress signature
//! signs another message than a read URL's, so neither grants the other).

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::Value;
use shared::job_types::FieldError;
use shared::signing::{Purpose, SignatureParams};
use shared::Progress;

use crate::body::read_json;
use crate::error::ApiError;
use crate::progress::ProgressWrite;
use crate::routes::jobs::parse_id;
use crate::startup::AppState;

/// Longest progress message kept (characters).
const MAX_MESSAGE_CHARS: usize = 1000;

/// The progress a body reports: `{"percent": 0-100, "message": "…"}`.
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)] // The schema of the body; `report` reads it from JSON.
pub struct ProgressReport {
    /// 0 to 100.
    pub percent: f64,
    #[serde(default)]
    pub message: Option<String>,
}

fn invalid(field: &str, detail: &str) -> ApiError {
    ApiError::Validation {
        detail: format!("{field}: {detail}"),
        errors: vec![FieldError::new(&[field], detail)],
    }
}

/// Checks a body as a progress report.
fn report(body: &Value) -> Result<Progress, ApiError> {
    let object = body
        .as_object()
        .ok_or_else(|| invalid("percent", "the body must be an object {\"percent\": 0-100}"))?;
    if let Some(unknown) = object
        .keys()
        .find(|k| !matches!(k.as_str(), "percent" | "message"))
    {
        return Err(invalid(
            unknown,
            "unknown field (percent and message are known)",
        ));
    }
    let percent = object
        .get("percent")
        .and_then(Value::as_f64)
        .filter(|p| p.is_finite() && (0.0..=100.0).contains(p))
        .ok_or_else(|| invalid("percent", "must be a number from 0 to 100"))?;
    let message = match object.get("message") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(m)) if m.chars().count() <= MAX_MESSAGE_CHARS => m.clone(),
        Some(Value::String(_)) => {
            return Err(invalid(
                "message",
                &format!("must be at most {MAX_MESSAGE_CHARS} characters"),
            ))
        }
        Some(_) => return Err(invalid("message", "must be a string")),
    };
    Ok(Progress {
        // Two decimals, as the worker rounds its own.
        percent: (percent * 100.0).round() / 100.0,
        message,
    })
}

/// Report a job's progress (its backend)
///
/// For the backend of a declared `http` job type: the worker sends it a `Progress-Url`
/// header, this path with a progress signature (`tenant`, `exp`, `kid`, `sig`). The progress is
/// written into the job's status document while the job is running (polls and event streams
/// show it). A read-signed URL does not grant this, nor does an API key.
#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/progress",
    tag = "jobs",
    operation_id = "reportJobProgress",
    params(crate::openapi::JobIdPath, crate::openapi::SignedUrl),
    request_body(content = ProgressReport, content_type = "application/json"),
    security(()),
    responses(
        (status = 204, description = "The progress was recorded."),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 409, response = crate::openapi::ProgressConflict),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 415, response = crate::openapi::UnsupportedMediaType),
        (status = 422, response = crate::openapi::ProgressUnprocessable),
        (status = 503, response = crate::openapi::Unavailable),
    )
)]
pub async fn progress(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    // The signature first: nobody learns anything about a job without it.
    let params = SignatureParams::from_query(req.query_string()).ok_or_else(|| {
        ApiError::Forbidden(
            "reporting progress needs the signed Progress-Url the worker sent (tenant, exp, kid, sig)"
                .to_owned(),
        )
    })?;
    let (tenant, _) = state.signer.verify_for(Purpose::Progress, &id, &params)?;
    let body = read_json(&req, payload, 16 * 1024, &state.settings.limits).await?;
    let progress = report(&body)?;
    match state
        .store
        .for_tenant(&tenant)
        .set_progress(&id, progress)
        .await?
    {
        ProgressWrite::Written => Ok(HttpResponse::NoContent().finish()),
        ProgressWrite::Missing => Err(ApiError::JobNotFound),
        ProgressWrite::NotRunning(status) => Err(ApiError::ProgressRefused(format!(
            "the job is {status}: progress is recorded only while it is running"
        ))),
        ProgressWrite::Contended => Err(ApiError::ProgressRefused(
            "the job's document kept changing; report again".to_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_checked() {
        let p = report(&serde_json::json!({"percent": 42.129, "message": "m"})).unwrap();
        assert_eq!((p.percent, p.message.as_str()), (42.13, "m"));
        assert!(report(&serde_json::json!({"percent": 101})).is_err());
        assert!(report(&serde_json::json!({"percent": "1"})).is_err());
        assert!(report(&serde_json::json!({"message": "m"})).is_err());
        assert!(report(&serde_json::json!({"percent": 1, "x": 1})).is_err());
        assert!(report(&serde_json::json!({"percent": 1, "message": 3})).is_err());
        assert!(report(&serde_json::json!([1])).is_err());
    }
}
