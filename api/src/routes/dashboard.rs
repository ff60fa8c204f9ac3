//! `GET /dashboard`: the operators' web page, and its assets under `/dashboard/`.
//!
//! The page is hand-written HTML, CSS and JavaScript (`api/src/dashboard/`, no framework, no
//! build step), compiled into the binary with `include_bytes!`. It holds no data: everything
//! it shows it reads from the public API with the caller's own key (`/v1/overview`,
//! `/v1/jobs`, `/v1/jobs/{id}/events`, `/v1/workers`), so it shows exactly what that key may
//! see. Assets are served with a strong ETag (revalidated, `304` when unchanged) and a strict
//! Content-Security-Policy: scripts, styles and connections from this origin only, no inline
//! script or style, no frames.

use std::sync::LazyLock;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use shared::job_types::{FieldKind, FieldSpec, InputRules, JobTypeSpec, CATALOG};

use crate::error::ApiError;
use crate::job_response::not_modified;

/// The page's policy: nothing but this origin's own files and API; no inline code, no
/// plugins, no framing, no form posts elsewhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// One file served by the dashboard.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: Vec<u8>,
    etag: String,
}

impl Asset {
    fn new(name: &'static str, content_type: &'static str, bytes: Vec<u8>) -> Self {
        let digest = Sha256::digest(&bytes);
        let etag = format!("\"{}\"", hex::encode(&digest[..12]));
        Asset {
            name,
            content_type,
            bytes,
            etag,
        }
    }
}

static ASSETS: LazyLock<Vec<Asset>> = LazyLock::new(|| {
    vec![
        Asset::new(
            "index.html",
            "text/html; charset=utf-8",
            include_bytes!("../dashboard/index.html").to_vec(),
        ),
        Asset::new(
            "app.js",
            "text/javascript; charset=utf-8",
            include_bytes!("../dashboard/app.js").to_vec(),
        ),
        Asset::new(
            "app.css",
            "text/css; charset=utf-8",
            include_bytes!("../dashboard/app.css").to_vec(),
        ),
        Asset::new(
            "favicon.svg",
            "image/svg+xml",
            include_bytes!("../dashboard/favicon.svg").to_vec(),
        ),
        Asset::new(
            "job-types.json",
            "application/json",
            // Serialising JSON values cannot fail.
            serde_json::to_vec(&job_types()).unwrap_or_default(),
        ),
    ]
});

fn serve(req: &HttpRequest, asset: &Asset) -> HttpResponse {
    let mut response = if not_modified(req, &asset.etag) {
        HttpResponse::NotModified().finish()
    } else {
        HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, asset.content_type))
            .body(asset.bytes.clone())
    };
    let headers = response.headers_mut();
    let mut set = |name: header::HeaderName, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    };
    set(header::ETAG, &asset.etag);
    // Revalidate every time: a new binary serves new assets at once, and a 304 is cheap.
    set(header::CACHE_CONTROL, "no-cache");
    set(header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY);
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(header::REFERRER_POLICY, "no-referrer");
    set(header::X_FRAME_OPTIONS, "DENY");
    response
}

fn find(name: &str) -> Result<&'static Asset, ApiError> {
    ASSETS
        .iter()
        .find(|a| a.name == name)
        .ok_or(ApiError::RouteNotFound)
}

/// `GET /dashboard`: the page.
pub async fn page(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Ok(serve(&req, find("index.html")?))
}

/// `GET /dashboard/{asset}`: its script, style sheet, icon and the job type catalog.
pub async fn asset(req: HttpRequest, name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    Ok(serve(&req, find(&name)?))
}

/// The job types for the page's submit form: name, description, input fields and an example
/// input that passes the rules.
fn job_types() -> Value {
    Value::Array(
        CATALOG
            .iter()
            .map(|spec| {
                let fields = match spec.input {
                    InputRules::Any => Value::Null,
                    InputRules::Object(fields) => fields.iter().map(field).collect(),
                };
                json!({
                    "name": spec.name,
                    "description": spec.description,
                    "fields": fields,
                    "example": example(spec),
                    "max_run_seconds": spec.max_run_seconds,
                })
            })
            .collect(),
    )
}

fn field(f: &FieldSpec) -> Value {
    let mut v = json!({ "name": f.name, "required": f.required, "description": f.description });
    let rules = match f.kind {
        FieldKind::Number { min, max } => json!({ "kind": "number", "min": min, "max": max }),
        FieldKind::Integer { min, max } => json!({ "kind": "integer", "min": min, "max": max }),
        FieldKind::String {
            min_chars,
            max_chars,
        } => json!({ "kind": "string", "min_chars": min_chars, "max_chars": max_chars }),
        FieldKind::OneOf(options) => json!({ "kind": "one-of", "options": options }),
    };
    if let (Value::Object(v), Value::Object(rules)) = (&mut v, rules) {
        v.extend(rules);
    }
    v
}

/// A sensible first input for the built-in types; for others, the smallest valid value of
/// each required field.
fn example(spec: &JobTypeSpec) -> Value {
    use shared::job_types::{ECHO, FAIL, HASH, SLEEP};
    match spec.name {
        ECHO => json!({ "hello": "world" }),
        SLEEP => json!({ "seconds": 10 }),
        HASH => json!({ "bytes": 300_000_000u64, "seed": 1 }),
        FAIL => json!({ "message": "disk on fire" }),
        _ => match spec.input {
            InputRules::Any => json!({}),
            InputRules::Object(fields) => fields
                .iter()
                .filter(|f| f.required)
                .map(|f| {
                    let value = match f.kind {
                        FieldKind::Number { min, .. } => json!(min),
                        FieldKind::Integer { min, .. } => json!(min),
                        FieldKind::String { min_chars, .. } => json!("x".repeat(min_chars.max(1))),
                        FieldKind::OneOf(options) => json!(options.first()),
                    };
                    (f.name.to_owned(), value)
                })
                .collect::<serde_json::Map<_, _>>()
                .into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_passes_its_rules() {
        for spec in CATALOG {
            let errors = spec.validate(&example(spec));
            assert!(errors.is_empty(), "{}: {errors:?}", spec.name);
        }
    }

    #[test]
    fn assets_have_types_and_distinct_etags() {
        let mut tags: Vec<&str> = ASSETS.iter().map(|a| a.etag.as_str()).collect();
        tags.sort();
        tags.dedup();
        assert_eq!(tags.len(), ASSETS.len());
        assert!(ASSETS.iter().all(|a| !a.bytes.is_empty()));
        // The page loads its code from files: no inline script or style for the policy to
        // forbid.
        let html = String::from_utf8_lossy(&find("index.html").unwrap().bytes).into_owned();
        assert!(!html.contains("<script>") && !html.contains("<style") && !html.contains("style="));
    }
}
