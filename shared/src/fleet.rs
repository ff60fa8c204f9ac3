//! The worker fleet registry: what each worker writes about itself in Redis on every
//! heartbeat, and how the facade decides who is alive.
//!
//! Layout (see also [`crate::KeyLayout`]):
//! - `{prefix}:worker:<id>`: the worker's [`WorkerRecord`] as JSON, with a TTL of
//!   [`TTL_HEARTBEATS`] heartbeats, so a worker that dies without deregistering disappears.
//! - `{prefix}:workers`: sorted set, member the worker id, score its last heartbeat (unix ms).
//!
//! Both are written in one transaction on every heartbeat and removed together on a graceful
//! shutdown.

use serde::{Deserialize, Serialize};

use crate::KeyLayout;

/// A worker is live while its last heartbeat is at most this many heartbeat intervals old.
pub const TTL_HEARTBEATS: u64 = 3;

/// Registry members read at most at once (a fleet is far smaller).
pub const MAX_WORKERS: isize = 1000;

/// One member of the registry as read: its id, its last heartbeat (unix ms) and its record
/// (`None`: expired, or unreadable).
pub type Member = (String, i64, Option<WorkerRecord>);

/// Reads the registry's members (at most [`MAX_WORKERS`]) with their records, in two round
/// trips (the sorted set, then the records). Deciding who is alive is the caller's
/// ([`is_fresh`]): the facade also prunes the stale ones, a worker only asks who serves what.
pub async fn read_members<C>(conn: &mut C, keys: &KeyLayout) -> redis::RedisResult<Vec<Member>>
where
    C: redis::aio::ConnectionLike + Send,
{
    let members: Vec<(String, i64)> = redis::cmd("ZRANGE")
        .arg(keys.workers())
        .arg(0)
        .arg(MAX_WORKERS - 1)
        .arg("WITHSCORES")
        .query_async(conn)
        .await?;
    if members.is_empty() {
        return Ok(Vec::new());
    }
    let record_keys: Vec<String> = members.iter().map(|(id, _)| keys.worker(id)).collect();
    let records: Vec<Option<String>> = redis::cmd("MGET")
        .arg(&record_keys)
        .query_async(conn)
        .await?;
    Ok(members
        .into_iter()
        .zip(records)
        .map(|((id, last_ms), record)| {
            let record = record.and_then(|r| serde_json::from_str::<WorkerRecord>(&r).ok());
            (id, last_ms, record)
        })
        .collect())
}

/// What a worker tells about itself (served as is by `GET /v1/workers`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkerRecord {
    pub id: String,
    pub host: String,
    pub pid: u32,
    /// The worker binary's version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// The queues' prefix (`amqp.queue`); the queues it consumes are `queues`.
    pub queue: String,
    /// Jobs it runs at once at most.
    pub concurrency: usize,
    /// Jobs running in it now.
    pub in_flight: i64,
    /// Job runs it ended (succeeded, failed or canceled) since it started.
    pub jobs_done: u64,
    /// `running`, or `draining` once it was told to stop.
    pub state: String,
    /// Seconds between its heartbeats.
    pub heartbeat_seconds: u64,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339: the time of the heartbeat that wrote this record.
    pub last_seen: String,
    /// The job types it serves (registered in `{prefix}:job-types`, see
    /// [`crate::job_types`]). Empty in records of older workers.
    #[serde(default)]
    pub job_types: Vec<String>,
    /// The schema digest of each type it serves (as `job_types`), which tells the facades
    /// which versions of a type are live during a rolling deploy. Empty in records of older
    /// workers.
    #[serde(default)]
    pub schema_digests: Vec<String>,
    /// The work queues it consumes (one per type, or shared). Empty in records of older
    /// workers, which consume `queue`.
    #[serde(default)]
    pub queues: Vec<String>,
}

/// Whether a heartbeat at `last_ms` of a worker beating every `heartbeat_seconds` is still
/// fresh at `now_ms`.
pub fn is_fresh(last_ms: i64, heartbeat_seconds: u64, now_ms: i64) -> bool {
    let window = (heartbeat_seconds.max(1) * TTL_HEARTBEATS * 1000) as i64;
    now_ms.saturating_sub(last_ms) <= window
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_window_is_three_heartbeats() {
        assert!(is_fresh(10_000, 5, 25_000));
        assert!(!is_fresh(10_000, 5, 25_001));
        assert!(is_fresh(10_000, 0, 13_000));
    }
}
