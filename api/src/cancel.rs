//! Cancelling a job: a queued job is marked canceled at once (it will never start: a worker
//! that later receives its message finds it terminal); a running job is marked and its id
//! published to the workers, whose handler is then stopped and the job ends canceled.

use redis::Script;
use shared::{JobId, JobStatus};

use crate::status_store::{StatusStore, StoreError};

/// KEYS: job hash, tombstone. ARGV: the document as read, the canceled document, ttl, tombstone
/// ttl, events channel, cancel channel, job id. Returns "canceled", "requested", "changed" (the
/// document changed since it was read: read again), "missing", or the terminal state.
const CANCEL: &str = r#"
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'missing' end
if state == 'queued' then
  if redis.call('HGET', KEYS[1], 'doc') ~= ARGV[1] then return 'changed' end
  redis.call('HSET', KEYS[1], 'state', 'canceled', 'doc', ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  redis.call('SET', KEYS[2], '1', 'EX', ARGV[4])
  redis.call('PUBLISH', ARGV[5], ARGV[2])
  return 'canceled'
end
if state == 'running' then
  redis.call('HSET', KEYS[1], 'cancel', '1')
  redis.call('PUBLISH', ARGV[6], ARGV[7])
  return 'requested'
end
return state
"#;

/// What a cancel request found and did.
pub enum Canceled {
    /// It was queued and is now canceled (the new document).
    Now(Vec<u8>),
    /// It is running; its worker was told (the current document).
    Requested(Vec<u8>),
    /// It had ended already (the document).
    AlreadyFinished(Vec<u8>, JobStatus),
    Missing,
}

impl StatusStore {
    /// Cancels job `id` (see the module comment), given the tombstone lifetime.
    pub async fn cancel(&self, id: &JobId, tombstone_seconds: u64) -> Result<Canceled, StoreError> {
        let id = *id;
        self.with_conn(|store, mut conn| async move {
            // Optimistic: read, build the canceled document, write it only if unchanged.
            for _ in 0..5 {
                let Some((current, mut doc)) = store.read_for_update(&mut conn, &id).await? else {
                    return Ok(Canceled::Missing);
                };
                if doc.status.is_terminal() {
                    return Ok(Canceled::AlreadyFinished(current, doc.status));
                }
                doc.status = JobStatus::Canceled;
                doc.finished_at = Some(chrono::Utc::now());
                doc.next_attempt_at = None;
                let canceled = serde_json::to_vec(&doc).unwrap_or_default();
                let outcome: String = Script::new(CANCEL)
                    .key(store.keys.job(&id))
                    .key(store.keys.tombstone(&id))
                    .arg(&current)
                    .arg(&canceled)
                    .arg(store.retention_seconds)
                    .arg(store.retention_seconds + tombstone_seconds)
                    .arg(store.keys.events(&id))
                    .arg(store.keys.cancel_requests())
                    .arg(id.to_string())
                    .invoke_async(&mut conn)
                    .await?;
                match outcome.as_str() {
                    "canceled" => return Ok(Canceled::Now(canceled)),
                    "requested" => return Ok(Canceled::Requested(current)),
                    "changed" => continue,
                    "missing" => return Ok(Canceled::Missing),
                    _ => continue, // finished meanwhile: the next read says how
                }
            }
            Ok(Canceled::Missing)
        })
        .await
        .inspect(|outcome| {
            if matches!(outcome, Canceled::Now(_)) {
                // Its own write: the next poll here shows it without waiting for Redis's
                // invalidation to come round.
                self.forget_polled(&id);
            }
        })
    }
}
