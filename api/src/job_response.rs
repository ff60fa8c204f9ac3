//! How a job's stored status becomes an HTTP answer. The status monitor answers each poll with
//! what the synchronous request would have answered had it waited: 202 while the job is
//! pending, 303 to the result once it succeeded, and the job's own failure as a 4xx problem
//! (never a 5xx: the poll itself worked, and generic clients retry a 5xx for minutes).

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::Value;
use shared::configuration::RetryAfterSettings;
use shared::hex::Hex;
use shared::{JobErrorKind, JobStatus, StatusDocument, StatusHead};

use crate::problem::Problem;

// Header values as constants: no copy and no validation per answer.
const JSON: HeaderValue = HeaderValue::from_static("application/json");
/// Polls may be cached only if revalidated (the ETag makes that cheap); the data is the
/// caller's own.
const CACHE_CONTROL: HeaderValue = HeaderValue::from_static("private, no-cache");

/// A strong ETag over the stored document: it changes whenever the status document does.
pub fn etag(bytes: &[u8]) -> String {
    // FNV-1a's step taken eight bytes at a time, with an xor-shift after each multiply so that
    // high bits flow back down: deterministic across processes and versions, and about six
    // times cheaper than FNV byte by byte (which was 2% of the facade's CPU per poll).
    // Collisions between two successive versions of one job's document are not a concern.
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325 ^ bytes.len() as u64;
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        hash = (hash ^ u64::from_le_bytes(w)).wrapping_mul(PRIME);
        hash ^= hash >> 29;
    }
    for b in words.remainder() {
        hash = (hash ^ u64::from(*b)).wrapping_mul(PRIME);
    }
    hash ^= hash >> 32;
    // `format!("\"{hash:016x}\"")`, without the formatter's machinery (every poll makes one).
    let mut tag = String::with_capacity(18);
    tag.push('"');
    tag.push_str(Hex::<16>::new(u128::from(hash)).as_str());
    tag.push('"');
    tag
}

/// Whether the request's `If-None-Match` names this ETag (or `*`).
pub fn not_modified(req: &HttpRequest, etag: &str) -> bool {
    req.headers()
        .get_all(header::IF_NONE_MATCH)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == etag || t == "*")
}

/// `path` with `query` (the signature of a signed URL) appended, if there is one.
pub fn with_query(path: String, query: Option<impl AsRef<str>>) -> String {
    match query {
        Some(query) => format!("{path}?{}", query.as_ref()),
        None => path,
    }
}

/// Seconds to tell a client to wait before its next poll.
pub fn retry_after(settings: &RetryAfterSettings) -> u64 {
    settings.clamp(settings.default_seconds)
}

/// The answer for a job that has not succeeded (or for the status monitor in every state).
/// `doc_bytes` is the document as stored; it is served as is.
pub fn status_answer(
    req: &HttpRequest,
    doc: &StatusHead,
    doc_bytes: Vec<u8>,
    retry: &RetryAfterSettings,
    query: Option<&str>,
) -> HttpResponse {
    let tag = etag(&doc_bytes);
    let pending = !doc.status.is_terminal();
    if not_modified(req, &tag) {
        let mut builder = HttpResponse::NotModified();
        builder.insert_header((header::ETAG, tag));
        builder.insert_header((header::CACHE_CONTROL, CACHE_CONTROL));
        if pending {
            builder.insert_header((header::RETRY_AFTER, retry_after(retry)));
        }
        return builder.finish();
    }
    answer_with_tag(doc, doc_bytes, tag, retry, query)
}

/// The status monitor's answer without regard to conditional headers: for a submit's
/// `Prefer: wait`, whose `If-None-Match` (if any) cannot name a document it never saw.
pub fn fresh_status_answer(
    doc: &StatusHead,
    doc_bytes: Vec<u8>,
    retry: &RetryAfterSettings,
    query: Option<&str>,
) -> HttpResponse {
    let tag = etag(&doc_bytes);
    answer_with_tag(doc, doc_bytes, tag, retry, query)
}

/// The fresh answer, with the document's ETag already computed.
fn answer_with_tag(
    doc: &StatusHead,
    doc_bytes: Vec<u8>,
    tag: String,
    retry: &RetryAfterSettings,
    query: Option<&str>,
) -> HttpResponse {
    match doc.status {
        JobStatus::Queued | JobStatus::Running => HttpResponse::Accepted()
            .insert_header((header::LOCATION, with_query(doc.id.status_path(), query)))
            .insert_header((header::RETRY_AFTER, retry_after(retry)))
            .insert_header((header::ETAG, tag))
            .insert_header((header::CACHE_CONTROL, CACHE_CONTROL))
            .content_type(JSON)
            .body(doc_bytes),
        JobStatus::Succeeded => HttpResponse::SeeOther()
            .insert_header((header::LOCATION, with_query(doc.id.result_path(), query)))
            .insert_header((header::ETAG, tag))
            .insert_header((header::CACHE_CONTROL, CACHE_CONTROL))
            .content_type(JSON)
            .body(doc_bytes),
        JobStatus::Failed | JobStatus::Canceled => {
            let mut builder = terminal_problem(doc, &doc_bytes).into_response();
            let headers = builder.headers_mut();
            if let Ok(tag) = HeaderValue::from_str(&tag) {
                headers.insert(header::ETAG, tag);
            }
            headers.insert(header::CACHE_CONTROL, CACHE_CONTROL);
            builder
        }
    }
}

/// The problem a failed or canceled job is answered with: its `job` member is the status
/// document, its `instance` the status monitor. The error is read from the whole document
/// here (the head does not carry it): terminal failures are answered rarely.
fn terminal_problem(head: &StatusHead, doc_bytes: &[u8]) -> Problem {
    let job: Value = serde_json::from_slice(doc_bytes).unwrap_or(Value::Null);
    let error = StatusDocument::deserialize(&job)
        .ok()
        .and_then(|doc| doc.error);
    let problem = match (head.status, &error) {
        (JobStatus::Canceled, _) => {
            Problem::new(StatusCode::CONFLICT, "job-canceled", "The job was canceled")
                .detail("the job was canceled before it finished")
        }
        (_, Some(error)) => {
            let status = if error.kind == JobErrorKind::InputRejected {
                StatusCode::UNPROCESSABLE_ENTITY
            } else {
                StatusCode::FAILED_DEPENDENCY
            };
            let mut problem = Problem::new(status, "job-failed", error.title.clone())
                .detail(error.detail.clone());
            problem.type_uri = error.type_uri.clone();
            // A declared http type's backend explained itself: its problem as it sent it.
            if let Some(backend) = &error.backend {
                problem = problem.extension("backend", backend.clone());
            }
            problem
        }
        (_, None) => Problem::new(
            StatusCode::FAILED_DEPENDENCY,
            "job-failed",
            "The job failed",
        )
        .detail("the job failed without a recorded error"),
    };
    problem
        .instance(head.id.status_path())
        .extension("job", job)
}

/// The answer of the result resource for a succeeded job.
/// `media_type` is the result's as its document records it (`None`: JSON, every result of a
/// version before results of other types). One the header cannot carry is served as bytes.
pub fn result_answer(req: &HttpRequest, result: Vec<u8>, media_type: Option<&str>) -> HttpResponse {
    let tag = etag(&result);
    if not_modified(req, &tag) {
        return HttpResponse::NotModified()
            .insert_header((header::ETAG, tag))
            .finish();
    }
    HttpResponse::Ok()
        .insert_header((header::ETAG, tag))
        .insert_header((
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, max-age=0"),
        ))
        .insert_header((header::CONTENT_TYPE, result_content_type(media_type)))
        .body(result)
}

fn result_content_type(media_type: Option<&str>) -> HeaderValue {
    match media_type {
        None => JSON,
        Some(media_type) => HeaderValue::from_str(media_type)
            .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream")),
    }
}

#[cfg(test)]
mod tests {
    use super::etag;

    #[test]
    fn the_etag_is_stable_and_changes_with_any_byte() {
        let doc =
            br#"{"id":"0b7c4f0e-4b7e-4a55-9d7e-2f0c8e1d6a3b","status":"queued","attempts":0}"#;
        let tag = etag(doc);
        assert_eq!(tag, etag(doc));
        assert_eq!(tag.len(), 18);
        assert!(tag.starts_with('"') && tag.ends_with('"'));
        assert!(tag[1..17]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        for i in 0..doc.len() {
            let mut changed = doc.to_vec();
            changed[i] ^= 1;
            assert_ne!(etag(&changed), tag, "byte {i}");
        }
        assert_ne!(etag(&doc[..doc.len() - 1]), tag);
        assert_ne!(etag(b""), etag(b"\0"));
    }
}
