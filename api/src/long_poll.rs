//! Long-polling (`Prefer: wait=N`, RFC 7240): hold a request until the job's status changes or
//! N seconds pass, woken by change notifications (see `notifier.rs`), never by re-reading
//! Redis in a loop.

use std::time::Duration;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse};
use shared::{JobId, JobStatus, KeyLayout, StatusHead};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::limits::WaitSlot;
use crate::notifier::Watch;
use crate::startup::AppState;
use crate::status_store::{Lookup, StatusStore};

/// The `wait` preference of the request in whole seconds, capped at `max_seconds`; `None` when
/// there is none (or it is not a number).
pub fn prefer_wait(req: &HttpRequest, max_seconds: u64) -> Option<Duration> {
    req.headers()
        .get_all("prefer")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|pref| {
            let (name, value) = pref.split_once('=')?;
            if !name.trim().eq_ignore_ascii_case("wait") {
                return None;
            }
            value.trim().trim_matches('"').parse::<u64>().ok()
        })
        .next()
        .map(|seconds| Duration::from_secs(seconds.min(max_seconds)))
}

/// Starts watching `caller`'s job `id` (a long-poll or an event stream): takes one of the
/// key's wait slots (429 when it has none left), held until the slot is dropped, then
/// subscribes to the job's changes. Call it before reading the job, so no change falls in
/// between; the watch is `None` when notifications are unavailable (the waiter then re-reads).
pub async fn subscribe(
    state: &AppState,
    caller: &Caller,
    keys: &KeyLayout,
    id: &JobId,
) -> Result<(WaitSlot, Option<Watch>), ApiError> {
    let slot = state.limits.wait_slot(caller)?;
    Ok((slot, state.notifier.watch(keys, id).await.ok()))
}

/// Says that the wait preference was honoured.
pub fn mark_applied(response: &mut HttpResponse, wait: Duration) {
    if let Ok(value) = HeaderValue::from_str(&format!("wait={}", wait.as_secs())) {
        response
            .headers_mut()
            .insert(header::HeaderName::from_static("preference-applied"), value);
    }
}

/// What a waiter is waiting for.
#[derive(Clone, Copy)]
pub enum Until {
    /// Any status other than this one.
    StatusChanges(JobStatus),
    /// A terminal status.
    Terminal,
}

impl Until {
    fn reached(self, status: JobStatus) -> bool {
        match self {
            Until::StatusChanges(baseline) => status != baseline,
            Until::Terminal => status.is_terminal(),
        }
    }
}

/// Waits on `watch` until `until` is reached or `wait` passes; returns the latest document.
pub async fn wait_for(
    store: &StatusStore,
    id: &JobId,
    mut watch: Watch,
    until: Until,
    wait: Duration,
) -> Result<Vec<u8>, ApiError> {
    let deadline = Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, watch.changes.recv()).await {
            Ok(Ok(change)) => {
                // Newer than what the poll cache may keep until its invalidation arrives.
                store.saw(id, Some(&change));
                if let Ok(doc) = StatusHead::decode(&change) {
                    if until.reached(doc.status) {
                        return Ok(change.to_vec());
                    }
                }
            }
            // Fell behind: look at the status itself, then keep waiting.
            Ok(Err(RecvError::Lagged(_))) => {
                let bytes = read(store, id).await?;
                if let Ok(doc) = StatusHead::decode(&bytes) {
                    if until.reached(doc.status) {
                        return Ok(bytes);
                    }
                }
            }
            // Notifications lost, or time is up: answer with what is there now.
            Ok(Err(RecvError::Closed)) | Err(_) => return read(store, id).await,
        }
    }
}

async fn read(store: &StatusStore, id: &JobId) -> Result<Vec<u8>, ApiError> {
    match store.document(id).await? {
        Lookup::Found(bytes) => Ok(bytes),
        Lookup::Gone => Err(ApiError::JobGone),
        Lookup::NotFound => Err(ApiError::JobNotFound),
    }
}
