//! `GET /dashboard`: the operators' web page, and its assets under `/dashboard/`.
//!
//! The page is hand-written HTML, CSS and JavaScript (`api/src/dashboard/`, no framework, no
//! build step), compiled into the binary with `include_bytes!`. It holds no data: everything
//! it shows it reads from the public API with the caller's own key (`/v1/overview`,
//! `/v1/jobs`, `/v1/jobs/{id}/events`, `/v1/workers`, and `/v1/job-types` for the submit
//! form), so it shows exactly what that key may see. Assets are served with a strong ETag (revalidated, `304` when unchanged) and a strict
//! Content-Security-Policy: scripts, styles and connections from this origin only, no inline
//! script or style, no frames.

use std::sync::LazyLock;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::job_response::not_modified;

/// The page's policy: nothing but this origin's own files and API; no inline code, no
/// plugins, no framing, no form posts elsewhere. Images also from `blob:`: a result that is an
/// image is shown from the bytes the page fetched with the caller's key (an `<img>` runs no
/// script, SVG included).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' blob:; connect-src 'self'; base-uri 'none'; \
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

/// `GET /dashboard/{asset}`: its script, style sheet and icon.
pub async fn asset(req: HttpRequest, name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    Ok(serve(&req, find(&name)?))
}

#[cfg(test)]
mod tests {
    use super::*;

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
