//! `GET /v1/jobs/{id}/events`: server-sent events, one per status or progress change, closed
//! after the terminal one. Each event's id is the document's ETag; a client that reconnects
//! with `Last-Event-ID` first gets the current document unless it already has it, so the final
//! state is never lost.

use std::time::Duration;

use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::stream;
use shared::{JobId, JobStatus, StatusHead};
use tokio::sync::broadcast::error::RecvError;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::job_response::etag;
use crate::limits::WaitSlot;
use crate::long_poll::subscribe;
use crate::notifier::Watch;
use crate::routes::jobs::parse_id;
use crate::startup::AppState;
use crate::status_store::{Lookup, StatusStore};

struct Stream {
    store: StatusStore,
    /// Held while the stream is open: one of its key's wait slots.
    _slot: WaitSlot,
    id: JobId,
    watch: Option<Watch>,
    /// The document to send first (the current one), if any.
    pending: Option<Vec<u8>>,
    last_etag: Option<String>,
    last_status: Option<JobStatus>,
    keepalive: Duration,
    done: bool,
}

/// One SSE frame for a document, or `None` if the client has it already.
fn frame(s: &mut Stream, doc_bytes: &[u8]) -> Option<(Bytes, bool)> {
    let doc = StatusHead::decode(doc_bytes).ok()?;
    let tag = etag(doc_bytes);
    if s.last_etag.as_deref() == Some(tag.as_str()) {
        // Nothing new; still, a terminal document ends the stream.
        return doc.status.is_terminal().then(|| (Bytes::new(), true));
    }
    let kind = if s.last_status == Some(doc.status) {
        "progress"
    } else {
        "status"
    };
    s.last_etag = Some(tag.clone());
    s.last_status = Some(doc.status);
    let mut text = format!("id: {}\nevent: {kind}\ndata: ", tag.trim_matches('"'));
    text.push_str(std::str::from_utf8(doc_bytes).unwrap_or("{}"));
    text.push_str("\n\n");
    Some((Bytes::from(text), doc.status.is_terminal()))
}

async fn current(s: &Stream) -> Option<Vec<u8>> {
    match s.store.document(&s.id).await {
        Ok(Lookup::Found(bytes)) => Some(bytes),
        _ => None,
    }
}

async fn next_frame(mut s: Stream) -> Option<(Result<Bytes, actix_web::Error>, Stream)> {
    if s.done {
        return None;
    }
    loop {
        if let Some(doc) = s.pending.take() {
            if let Some((bytes, terminal)) = frame(&mut s, &doc) {
                s.done = terminal;
                if !bytes.is_empty() {
                    return Some((Ok(bytes), s));
                }
                if terminal {
                    return None;
                }
            }
            continue;
        }
        let keepalive = s.keepalive;
        // `None`: nothing happened within the keep-alive period.
        let received = match s.watch.as_mut() {
            Some(watch) => tokio::time::timeout(keepalive, watch.changes.recv())
                .await
                .ok(),
            None => {
                tokio::time::sleep(keepalive).await;
                None
            }
        };
        match received {
            Some(Ok(change)) => {
                // Newer than what the poll cache may keep until its invalidation arrives.
                s.store.saw(&s.id, Some(&change));
                s.pending = Some(change.to_vec());
            }
            Some(Err(RecvError::Lagged(_))) => s.pending = current(&s).await,
            Some(Err(RecvError::Closed)) => {
                // Notifications lost: send what is current, then end (the client reconnects).
                s.watch = None;
                s.pending = current(&s).await;
                s.done = s.pending.is_none();
            }
            None => {
                // Quiet for a while: a comment keeps proxies from closing the stream, and a
                // fresh read is a safety net for a missed notification.
                s.pending = current(&s).await;
                s.pending.as_ref()?;
                return Some((Ok(Bytes::from_static(b": keepalive\n\n")), s));
            }
        }
    }
}

/// Follow a job's changes (server-sent events)
///
/// One event per status or progress change, closed after the terminal one.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/events",
    tag = "jobs",
    operation_id = "getJobEvents",
    params(crate::openapi::JobIdPath, crate::openapi::SignedUrl, crate::openapi::LastEventId),
    security((), ("bearer" = [])),
    responses(
        (status = 200, response = crate::openapi::JobEvents),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 410, response = crate::openapi::Gone),
        (status = 429, response = crate::openapi::TooManyRequests),
        (status = 503, response = crate::openapi::Unavailable),
    )
)]
pub async fn events(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    state.limits.check_poll(&caller)?;
    let store = state.store.for_tenant(&caller.tenant);
    // Subscribe first, then read, so no change falls in between.
    let (slot, watch) = subscribe(&state, &caller, store.keys(), &id).await?;
    let doc = match store.document(&id).await? {
        Lookup::Found(bytes) => bytes,
        Lookup::Gone => return Err(ApiError::JobGone),
        Lookup::NotFound => return Err(ApiError::JobNotFound),
    };
    let last_event_id = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(|v| format!("\"{}\"", v.trim()));
    let keepalive = Duration::from_secs(state.settings.http.sse_keepalive_seconds.max(1));
    let stream = Stream {
        store,
        _slot: slot,
        id,
        watch,
        pending: Some(doc),
        last_etag: last_event_id,
        last_status: None,
        keepalive,
        done: false,
    };
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("x-accel-buffering", "no"))
        .streaming(stream::unfold(stream, next_frame)))
}
