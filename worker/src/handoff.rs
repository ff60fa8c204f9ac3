//! Jobs of a type this worker does not serve. Every job type shares one work queue today, so a
//! worker that serves some types (the built-ins, say) receives jobs of types that another
//! worker serves (a binary of your own, see `crate::Worker`). Such a job is handed off, not
//! failed, when the fleet registry has a live, running worker that lists its type: the message
//! is published (with a confirm) to the first retry delay queue, `<queue>.retry.<base ms>`,
//! which dead-letters it back into the work queue after `amqp.retry_base_delay_ms`, and the
//! delivery is acknowledged. The job's document is untouched: still `queued`, no attempt
//! counted. Through a delay queue rather than a requeue: a requeued message comes straight
//! back, so two workers that do not serve it would pass it between them in a tight loop, and
//! on a quorum queue every requeue counts towards `amqp.delivery_limit`, after which the
//! broker dead-letters it.
//!
//! When no live worker serves the type (none ever did, or the last one has missed three
//! heartbeats), the job fails `undeliverable` as before and its message goes to the
//! dead-letter queue, from which `worker dead-letters replay` returns it once a worker serving
//! the type runs.
//!
//! The set of types the live workers serve is read from Redis at most once a second while it
//! answers yes; a no is always read afresh, so a worker that just started is seen before any
//! job of its type is failed.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shared::fleet::{is_fresh, WorkerRecord};
use shared::redis_conn::{RedisConn, Retries};
use shared::{KeyLayout, Settings};

/// How long a read of the live workers' types is trusted.
const FRESH_FOR: Duration = Duration::from_secs(1);
/// Registry entries read at most (a fleet is far smaller).
const MAX_WORKERS: isize = 1000;

/// A read of the types served, and when it was made.
type Read = (Instant, Arc<HashSet<String>>);

/// The job types live workers serve, read from the fleet registry.
#[derive(Clone)]
pub struct LiveTypes {
    conn: Option<RedisConn>,
    keys: KeyLayout,
    cached: Arc<Mutex<Option<Read>>>,
}

impl LiveTypes {
    pub fn new(settings: &Settings) -> Self {
        let retries = Retries {
            count: 1,
            max_delay: Duration::from_secs(1),
        };
        let conn = RedisConn::open(&settings.redis, retries)
            .map_err(|e| tracing::warn!(error = %e, "cannot open the fleet registry"))
            .ok();
        LiveTypes {
            conn,
            keys: KeyLayout::new(settings.redis.key_prefix.clone()),
            cached: Default::default(),
        }
    }

    /// Whether a live, running worker serves `job_type`. Registry trouble reads as no (the
    /// job then fails as it did before hand-offs existed), logged.
    pub async fn served(&self, job_type: &str) -> bool {
        if let Ok(cached) = self.cached.lock() {
            if let Some((read_at, types)) = cached.as_ref() {
                if read_at.elapsed() < FRESH_FOR && types.contains(job_type) {
                    return true;
                }
            }
        }
        let types = match self.read().await {
            Ok(types) => Arc::new(types),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the fleet registry");
                return false;
            }
        };
        let served = types.contains(job_type);
        if let Ok(mut cached) = self.cached.lock() {
            *cached = Some((Instant::now(), types));
        }
        served
    }

    async fn read(&self) -> redis::RedisResult<HashSet<String>> {
        let Some(mut conn) = self.conn.clone() else {
            return Ok(HashSet::new());
        };
        let members: Vec<(String, i64)> = redis::cmd("ZRANGE")
            .arg(self.keys.workers())
            .arg(0)
            .arg(MAX_WORKERS - 1)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await?;
        if members.is_empty() {
            return Ok(HashSet::new());
        }
        let keys: Vec<String> = members.iter().map(|(id, _)| self.keys.worker(id)).collect();
        let records: Vec<Option<String>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
        let now_ms = chrono::Utc::now().timestamp_millis();
        let records = members
            .into_iter()
            .zip(records)
            .filter_map(|((_, last), r)| {
                let record = serde_json::from_str::<WorkerRecord>(&r?).ok()?;
                Some((last, record))
            });
        Ok(served_types(records, now_ms))
    }
}

/// The types served by the workers whose heartbeat (`last_ms`) is fresh and that are not
/// draining (a draining worker takes no more deliveries).
pub fn served_types(
    workers: impl IntoIterator<Item = (i64, WorkerRecord)>,
    now_ms: i64,
) -> HashSet<String> {
    workers
        .into_iter()
        .filter(|(last_ms, record)| {
            record.state == "running" && is_fresh(*last_ms, record.heartbeat_seconds, now_ms)
        })
        .flat_map(|(_, record)| record.job_types)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(state: &str, types: &[&str]) -> WorkerRecord {
        WorkerRecord {
            id: "w".into(),
            host: "h".into(),
            pid: 1,
            version: "0".into(),
            queue: "q".into(),
            concurrency: 1,
            in_flight: 0,
            jobs_done: 0,
            state: state.into(),
            heartbeat_seconds: 5,
            started_at: String::new(),
            last_seen: String::new(),
            job_types: types.iter().map(|t| (*t).to_owned()).collect(),
        }
    }

    #[test]
    fn only_fresh_running_workers_count() {
        let now = 100_000;
        let served = served_types(
            [
                (now - 1_000, record("running", &["wordcount", "echo"])),
                // Missed three heartbeats: dead.
                (now - 16_000, record("running", &["thumbnail"])),
                // Shutting down: takes no more jobs.
                (now, record("draining", &["resize"])),
            ],
            now,
        );
        let mut served: Vec<_> = served.into_iter().collect();
        served.sort();
        assert_eq!(served, ["echo", "wordcount"]);
    }
}
