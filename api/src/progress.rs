//! Progress posted by a job's backend (a declared `http` type's service, through the signed
//! `Progress-Url` the worker gave it): written into the running job's status document, so polls,
//! long-polls and event streams see it like the worker's own progress.
//!
//! The worker writes progress too (coalesced) by replacing the whole document; the two do not
//! coordinate: the last write wins, which for a progress bar is what one wants.

use redis::Script;
use shared::{JobId, JobStatus, Progress};

use crate::status_store::{StatusStore, StoreError};

/// KEYS: job hash. ARGV: the document as read, the document with the new progress, events
/// channel. Writes only if the job is running with the document as read (else the worker wrote
/// meanwhile: read again); returns "ok", "changed", "missing" or the state it is in.
const PROGRESS: &str = r#"
local cur = redis.call('HMGET', KEYS[1], 'state', 'doc')
if not cur[1] then return 'missing' end
if cur[1] ~= 'running' then return cur[1] end
if cur[2] ~= ARGV[1] then return 'changed' end
redis.call('HSET', KEYS[1], 'doc', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[2])
return 'ok'
"#;

/// What a progress write found.
#[derive(Debug, PartialEq)]
pub enum ProgressWrite {
    Written,
    /// The job is not running (its state).
    NotRunning(JobStatus),
    /// The worker kept rewriting the document in between (the write was not made).
    Contended,
    Missing,
}

impl StatusStore {
    /// Sets job `id`'s progress if it is running.
    pub async fn set_progress(
        &self,
        id: &JobId,
        progress: Progress,
    ) -> Result<ProgressWrite, StoreError> {
        let id = *id;
        let outcome = self
            .with_conn(|store, mut conn| async move {
                // Optimistic, as a cancel: read, change, write only if unchanged.
                for _ in 0..5 {
                    let Some((current, mut doc)) = store.read_for_update(&mut conn, &id).await?
                    else {
                        return Ok(ProgressWrite::Missing);
                    };
                    if doc.status != JobStatus::Running {
                        return Ok(ProgressWrite::NotRunning(doc.status));
                    }
                    doc.progress = Some(progress.clone());
                    let Ok(updated) = serde_json::to_vec(&doc) else {
                        return Ok(ProgressWrite::Missing);
                    };
                    let outcome: String = Script::new(PROGRESS)
                        .key(store.keys.job(&id))
                        .arg(&current)
                        .arg(&updated)
                        .arg(store.keys.events(&id))
                        .invoke_async(&mut conn)
                        .await?;
                    match outcome.as_str() {
                        "ok" => return Ok(ProgressWrite::Written),
                        "missing" => return Ok(ProgressWrite::Missing),
                        // Changed by the worker meanwhile, or no longer running: read again.
                        _ => continue,
                    }
                }
                // Five writes of the worker in a row in between: it is busy reporting itself.
                Ok(ProgressWrite::Contended)
            })
            .await?;
        if outcome == ProgressWrite::Written {
            // Its own write: the next poll here shows it without waiting for Redis's
            // invalidation to come round.
            self.forget_polled(&id);
        }
        Ok(outcome)
    }
}
