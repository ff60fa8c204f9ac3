//! Jobs of a type this worker does not serve. Every job type shares one work queue today, so a
//! worker that serves some types (the built-ins, say) receives jobs of types that another
//! worker serves (a binary of your own, see `crate::Worker`). Such a job is handed off, not
//! failed, while the facades accept its type: the message is published (with a confirm) to a
//! retry delay queue, which dead-letters it back into the work queue, and the delivery is
//! acknowledged. The job's document is untouched: still `queued`, no attempt counted.
//!
//! - A live, running worker in the fleet registry lists the type: back after the first retry
//!   step (`amqp.retry_base_delay_ms`), for that worker to take.
//! - None does, but the type is still registered (refreshed within
//!   `jobs.type_retention_seconds`, so the facades accept its jobs): its jobs wait for the next
//!   worker that serves it, going round through the longest retry step
//!   (`amqp.retry_max_delay_ms`), so a queue of waiting jobs costs one delivery per job per
//!   step, not a busy loop.
//! - The type is not registered at all: the job fails `undeliverable` as before and its message
//!   goes to the dead-letter queue (`worker dead-letters replay` returns it).
//!
//! Only a job still to run goes round: one already finished (canceled while queued) is
//! settled here like any other, its callback queued.
//!
//! Through a delay queue rather than a requeue: a requeued message comes straight back, so two
//! workers that do not serve it would pass it between them in a tight loop, and on a quorum
//! queue every requeue counts towards `amqp.delivery_limit`, after which the broker
//! dead-letters it.
//!
//! The registries are read from Redis at most once a second while the answer stays the same
//! kind of yes; anything less than "served" is read afresh, so a worker that just started is
//! seen before any job of its type waits the long step or fails.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shared::fleet::{is_fresh, read_members, WorkerRecord};
use shared::job_types::JobTypeRecord;
use shared::redis_conn::{RedisConn, Retries};
use shared::{KeyLayout, Settings};

/// How long a read of the live workers' types is trusted.
const FRESH_FOR: Duration = Duration::from_secs(1);

/// What becomes of a job of a type this worker does not serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// A live worker serves the type: hand it off after the first retry step.
    Served,
    /// The facades accept the type but no live worker serves it: it waits the longest step.
    Waiting,
    /// The type is not registered: the job fails `undeliverable`.
    Nowhere,
}

/// One read of both registries.
#[derive(Debug, Default)]
struct Known {
    /// Types a live, running worker serves.
    served: HashSet<String>,
    /// Types registered within the retention.
    registered: HashSet<String>,
}

impl Known {
    fn destination(&self, job_type: &str) -> Destination {
        if self.served.contains(job_type) {
            Destination::Served
        } else if self.registered.contains(job_type) {
            Destination::Waiting
        } else {
            Destination::Nowhere
        }
    }
}

/// A read of the registries, and when it was made.
type Read = (Instant, Arc<Known>);

/// The job types live workers serve, read from the fleet registry.
#[derive(Clone)]
pub struct LiveTypes {
    conn: Option<RedisConn>,
    keys: KeyLayout,
    type_retention_ms: i64,
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
            type_retention_ms: settings.jobs.type_retention_seconds.saturating_mul(1000) as i64,
            cached: Default::default(),
        }
    }

    /// Where a job of `job_type` goes. Registry trouble reads as [`Destination::Nowhere`]
    /// (the job then fails as it did before hand-offs existed), logged.
    pub async fn destination(&self, job_type: &str) -> Destination {
        if let Ok(cached) = self.cached.lock() {
            if let Some((read_at, known)) = cached.as_ref() {
                if read_at.elapsed() < FRESH_FOR
                    && known.destination(job_type) == Destination::Served
                {
                    return Destination::Served;
                }
            }
        }
        let known = match self.read().await {
            Ok(known) => Arc::new(known),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the fleet registry");
                return Destination::Nowhere;
            }
        };
        let destination = known.destination(job_type);
        if let Ok(mut cached) = self.cached.lock() {
            *cached = Some((Instant::now(), known));
        }
        destination
    }

    async fn read(&self) -> redis::RedisResult<Known> {
        let Some(mut conn) = self.conn.clone() else {
            return Ok(Known::default());
        };
        let now_ms = chrono::Utc::now().timestamp_millis();
        let types: Vec<String> = redis::cmd("HVALS")
            .arg(self.keys.job_types())
            .query_async(&mut conn)
            .await?;
        let cutoff = now_ms - self.type_retention_ms;
        let registered = types
            .iter()
            .filter_map(|json| serde_json::from_str::<JobTypeRecord>(json).ok())
            .filter(|record| record.refreshed_at_ms >= cutoff)
            .map(|record| record.name)
            .collect();
        let records = read_members(&mut conn, &self.keys)
            .await?
            .into_iter()
            .filter_map(|(_, last, record)| Some((last, record?)));
        Ok(Known {
            served: served_types(records, now_ms),
            registered,
        })
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

    #[test]
    fn registered_types_without_a_live_worker_wait() {
        let known = Known {
            served: ["wordcount".to_owned()].into(),
            registered: ["wordcount".to_owned(), "thumbnail".to_owned()].into(),
        };
        assert_eq!(known.destination("wordcount"), Destination::Served);
        assert_eq!(known.destination("thumbnail"), Destination::Waiting);
        assert_eq!(known.destination("resize"), Destination::Nowhere);
    }
}
