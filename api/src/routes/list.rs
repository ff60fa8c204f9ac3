//! `GET /v1/jobs?status=&type=&limit=&cursor=`: the jobs, newest first, a page at a time.
//!
//! Pages are linked by an opaque cursor (base64url of a version byte, the last job's index
//! score and its id) in `next_cursor` and in a `Link: <…>; rel="next"` header; `next_cursor`
//! is `null` on the last page. A filtered page may hold fewer than `limit` jobs (a request
//! reads a bounded part of the index) and still have a next page. Every parameter is checked:
//! an unknown one, a repeated one or a bad value is a 422 naming it, and a cursor this service
//! did not make is a 422, never a 500.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;
use shared::job::JOBS_PATH;
use shared::{JobId, JobStatus};
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::startup::AppState;
use crate::status_store::index::{ListFilter, Position};

pub const DEFAULT_LIMIT: usize = 20;
pub const MAX_LIMIT: usize = 100;
const CURSOR_VERSION: u8 = 1;
const STATUSES: [JobStatus; 5] = [
    JobStatus::Queued,
    JobStatus::Running,
    JobStatus::Succeeded,
    JobStatus::Failed,
    JobStatus::Canceled,
];

/// A list request's parameters, checked.
#[derive(Debug, Default)]
pub struct ListQuery {
    pub filter: ListFilter,
    pub limit: usize,
    pub after: Option<Position>,
}

fn invalid(name: &str, detail: impl std::fmt::Display) -> ApiError {
    ApiError::InvalidParameter {
        name: name.to_owned(),
        detail: format!("{name}: {detail}"),
    }
}

impl ListQuery {
    /// Parses the query; a `type` must be one of `types`.
    pub fn parse(query: &str, types: &crate::job_types::Catalog) -> Result<Self, ApiError> {
        let pairs = web::Query::<Vec<(String, String)>>::from_query(query)
            .map_err(|e| invalid("query", e))?
            .into_inner();
        let mut parsed = ListQuery {
            limit: DEFAULT_LIMIT,
            ..ListQuery::default()
        };
        let mut seen: Vec<&str> = Vec::new();
        for (name, value) in &pairs {
            let name = match name.as_str() {
                n @ ("status" | "type" | "limit" | "cursor") => n,
                other => {
                    return Err(invalid(
                        other,
                        "unknown parameter; known: status, type, limit, cursor",
                    ))
                }
            };
            if seen.contains(&name) {
                return Err(invalid(name, "must be given at most once"));
            }
            seen.push(name);
            match name {
                "status" => {
                    let status =
                        STATUSES
                            .iter()
                            .find(|s| s.as_str() == value)
                            .ok_or_else(|| {
                                invalid(
                                    "status",
                                    "must be one of queued, running, succeeded, failed, canceled",
                                )
                            })?;
                    parsed.filter.status = Some(*status);
                }
                "type" => {
                    if types.get(value).is_none() && !types.loaded {
                        return Err(ApiError::RegistryUnread);
                    }
                    if types.get(value).is_none() {
                        return Err(invalid(
                            "type",
                            format!("unknown job type; known types: {}", types.names()),
                        ));
                    }
                    parsed.filter.job_type = Some(value.to_owned());
                }
                "limit" => {
                    parsed.limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(|| {
                            invalid("limit", format!("must be an integer from 1 to {MAX_LIMIT}"))
                        })?;
                }
                _ => {
                    parsed.after =
                        Some(decode_cursor(value).ok_or_else(|| {
                            invalid("cursor", "not a cursor this service issued")
                        })?);
                }
            }
        }
        Ok(parsed)
    }

    /// The path of the page that starts after `next`, with the same filters and limit.
    fn next_link(&self, next: &Position) -> String {
        let mut link = format!("{JOBS_PATH}?limit={}", self.limit);
        if let Some(status) = self.filter.status {
            link.push_str(&format!("&status={status}"));
        }
        if let Some(job_type) = &self.filter.job_type {
            // A catalog name: plain ASCII, nothing to escape.
            link.push_str(&format!("&type={job_type}"));
        }
        link.push_str(&format!("&cursor={}", encode_cursor(next)));
        link
    }
}

/// List jobs
///
/// The caller's jobs, newest first, a page at a time; `next_cursor` (and a `Link: rel="next"`
/// header) lead to the next page. A filtered page may hold fewer than `limit` jobs and still
/// have a next page.
#[utoipa::path(
    get,
    path = "/v1/jobs",
    tag = "jobs",
    operation_id = "listJobs",
    params(crate::openapi::ListParams),
    security((), ("bearer" = [])),
    responses(
        (status = 200, response = crate::openapi::JobList),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 422, response = crate::openapi::InvalidParameter),
        (status = 429, response = crate::openapi::TooManyRequests),
        (status = 503, response = crate::openapi::Unavailable),
    )
)]
pub async fn list(
    req: HttpRequest,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    state.limits.check_poll(&caller)?;
    let query = ListQuery::parse(req.query_string(), &state.job_types.current())?;
    let page = state
        .store
        .for_tenant(&caller.tenant)
        .list_jobs(query.after, query.limit, query.filter.clone())
        .await?;
    let mut builder = HttpResponse::Ok();
    builder.insert_header((header::CACHE_CONTROL, "private, no-cache"));
    let next_cursor = page.next.as_ref().map(|next| {
        builder.insert_header((
            header::LINK,
            format!("<{}>; rel=\"next\"", query.next_link(next)),
        ));
        encode_cursor(next)
    });
    Ok(builder.json(json!({ "jobs": page.docs, "next_cursor": next_cursor })))
}

/// base64url (no padding) of: version, score (i64, big-endian), job id (16 bytes).
pub fn encode_cursor((score, id): &Position) -> String {
    let mut bytes = Vec::with_capacity(25);
    bytes.push(CURSOR_VERSION);
    bytes.extend_from_slice(&score.to_be_bytes());
    // A JobId always prints as a canonical UUID.
    let uuid = Uuid::parse_str(&id.to_string()).unwrap_or_default();
    bytes.extend_from_slice(uuid.as_bytes());
    base64url::encode(&bytes)
}

pub fn decode_cursor(cursor: &str) -> Option<Position> {
    let bytes = base64url::decode(cursor)?;
    if bytes.len() != 25 || bytes[0] != CURSOR_VERSION {
        return None;
    }
    let score = i64::from_be_bytes(bytes[1..9].try_into().ok()?);
    if score < 0 {
        return None;
    }
    let uuid = Uuid::from_slice(&bytes[9..]).ok()?;
    let id: JobId = uuid.to_string().parse().ok()?;
    Some((score, id))
}

/// RFC 4648 §5 base64url without padding: small enough not to need a dependency.
mod base64url {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

    pub fn encode(bytes: &[u8]) -> String {
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }

    pub fn decode(text: &str) -> Option<Vec<u8>> {
        let value = |c: u8| ALPHABET.iter().position(|&a| a == c).map(|v| v as u32);
        if text.len() % 4 == 1 || text.len() > 1024 {
            return None;
        }
        let mut out = Vec::with_capacity(text.len() * 3 / 4);
        for chunk in text.as_bytes().chunks(4) {
            let mut n = 0u32;
            for (i, c) in chunk.iter().enumerate() {
                n |= value(*c)? << (18 - 6 * i);
            }
            let produced = chunk.len() - 1;
            // Bits past the last byte must be zero, so every cursor has one spelling.
            if n & ((1 << (24 - 8 * produced)) - 1) != 0 {
                return None;
            }
            for i in 0..produced {
                out.push((n >> (16 - 8 * i)) as u8);
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_round_trips() {
        for len in 0..40 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let text = base64url::encode(&bytes);
            assert!(!text.contains(['+', '/', '=']));
            assert_eq!(base64url::decode(&text), Some(bytes), "{text}");
        }
        assert_eq!(base64url::encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64url::encode(b"fo"), "Zm8");
        assert_eq!(base64url::decode("Zm9"), None, "non-zero trailing bits");
        assert_eq!(base64url::decode("Z"), None);
        assert_eq!(base64url::decode("Zm8="), None);
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let position = (1_700_000_000_123, JobId::new());
        let cursor = encode_cursor(&position);
        assert_eq!(decode_cursor(&cursor), Some(position));
        for bad in ["", "garbage!", "AAAA", &cursor[1..], &format!("{cursor}A")] {
            assert_eq!(decode_cursor(bad), None, "{bad}");
        }
    }

    #[test]
    fn query_checks_every_parameter() {
        let types =
            crate::job_types::Catalog::for_tests([("sleep", serde_json::json!(true), true)]);
        let q = ListQuery::parse("", &types).unwrap();
        assert_eq!(q.limit, DEFAULT_LIMIT);
        let q = ListQuery::parse("status=failed&type=sleep&limit=100", &types).unwrap();
        assert_eq!(q.filter.status, Some(JobStatus::Failed));
        assert_eq!(q.filter.job_type.as_deref(), Some("sleep"));
        assert_eq!(q.limit, 100);
        let name = |query: &str| match ListQuery::parse(query, &types) {
            Err(ApiError::InvalidParameter { name, .. }) => name,
            other => panic!("{query}: {other:?}"),
        };
        assert_eq!(name("limit=0"), "limit");
        assert_eq!(name("limit=101"), "limit");
        assert_eq!(name("limit=x"), "limit");
        assert_eq!(name("status=done"), "status");
        assert_eq!(name("type=nope"), "type");
        assert_eq!(name("cursor=%FF"), "cursor");
        assert_eq!(name("limit=1&limit=2"), "limit");
        assert_eq!(name("page=2"), "page");
    }
}
