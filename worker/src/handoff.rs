//! Jobs this worker does not run where they arrived, and where they go instead.
//!
//! - A job of a type it does not serve. Each type has a queue of its own, so this happens only
//!   when types share a queue (`amqp.type_queues`) but not their workers, or for jobs moved out
//!   of the single queue of older versions (`crate::legacy`). While the facades accept the
//!   type, the job is handed on, not failed: published (with a confirm) to the type's queue,
//!   through a delay queue when it would come back to this one, and the delivery is
//!   acknowledged. Its document is untouched: still `queued`, no attempt counted.
//! - A job of a type it serves, but accepted by the facade against another version's input
//!   schema only, which this worker's schema rejects (a rolling deploy that changed the
//!   schema: see `crate::versions`): handed on the same way, for a worker of that version.
//!
//! How long it waits:
//! - a live, running worker serves the type (or that version): back after the first retry
//!   step (`amqp.retry_base_delay_ms`), for that worker to take;
//! - none does, but the type (the version) is still registered (refreshed within
//!   `jobs.type_retention_seconds`, so the facades accept its jobs): its jobs wait for the
//!   next worker that serves it, going round through the longest retry step
//!   (`amqp.retry_max_delay_ms`), so a queue of waiting jobs costs one delivery per job per
//!   step, not a busy loop;
//! - the type (the version) is not registered at all: the job fails (`undeliverable`, or
//!   `input-rejected` for a version gone) and its message goes to the dead-letter queue
//!   (`worker dead-letters replay` returns it).
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

use std::collections::{HashMap, HashSet};
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
    /// Schema digests of the types' versions live, running workers serve.
    live_digests: HashSet<String>,
    /// Schema digests of the versions registered within the retention.
    registered_digests: HashSet<String>,
    /// Each registered type's queue, by its newest registration (`None`: a registration of a
    /// version before queues per type, whose workers consume the single queue).
    queues: HashMap<String, Option<String>>,
}

impl Known {
    fn destination(&self, job_type: &str) -> Destination {
        Self::place(&self.served, &self.registered, job_type)
    }

    fn version_destination(&self, digest: &str) -> Destination {
        Self::place(&self.live_digests, &self.registered_digests, digest)
    }

    fn place(served: &HashSet<String>, registered: &HashSet<String>, key: &str) -> Destination {
        if served.contains(key) {
            Destination::Served
        } else if registered.contains(key) {
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
    /// `amqp.queue`: the single queue of versions before queues per type.
    legacy_queue: String,
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
            legacy_queue: settings.amqp.queue.clone(),
            cached: Default::default(),
        }
    }

    /// Where a job checked against the schema of digest `digest` goes (a worker of that
    /// version, see `crate::versions`).
    pub async fn version_destination(&self, digest: &str) -> Destination {
        self.ask(
            |known| known.version_destination(digest),
            Destination::Nowhere,
        )
        .await
    }

    /// The queue a job of `job_type` that this worker does not serve belongs in: its newest
    /// registration's (the single queue `amqp.queue` for a registration of an older
    /// version); `None` for a type not registered, or when the registry cannot be read.
    pub async fn queue_of(&self, job_type: &str) -> Option<String> {
        self.ask(|known| self.queue_in(known, job_type), None).await
    }

    /// Where a job of a type this worker does not serve goes, and its queue (as
    /// [`queue_of`](Self::queue_of)), from one read. Registry trouble reads as
    /// [`Destination::Nowhere`] (the job then fails as it did before hand-offs existed), logged.
    pub async fn route(&self, job_type: &str) -> (Destination, Option<String>) {
        let answer = |known: &Known| (known.destination(job_type), self.queue_in(known, job_type));
        self.ask(answer, (Destination::Nowhere, None)).await
    }

    fn queue_in(&self, known: &Known, job_type: &str) -> Option<String> {
        known
            .queues
            .get(job_type)
            .map(|q| q.clone().unwrap_or_else(|| self.legacy_queue.clone()))
    }

    /// `answer` from the last read if it is fresh and the answer is a yes ("served", a
    /// queue), else from a new read; `otherwise` when the registry cannot be read.
    async fn ask<T: PartialEq + Positive>(&self, answer: impl Fn(&Known) -> T, otherwise: T) -> T {
        if let Ok(cached) = self.cached.lock() {
            if let Some((read_at, known)) = cached.as_ref() {
                let cached = answer(known);
                if read_at.elapsed() < FRESH_FOR && cached.positive() {
                    return cached;
                }
            }
        }
        let known = match self.read().await {
            Ok(known) => Arc::new(known),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the fleet registry");
                return otherwise;
            }
        };
        let fresh = answer(&known);
        if let Ok(mut cached) = self.cached.lock() {
            *cached = Some((Instant::now(), known));
        }
        fresh
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
        let mut records: Vec<JobTypeRecord> = types
            .iter()
            .filter_map(|json| serde_json::from_str::<JobTypeRecord>(json).ok())
            .filter(|record| record.refreshed_at_ms >= cutoff)
            .collect();
        // Oldest first, so the newest registration's queue is the one kept.
        records.sort_by_key(|r| (r.registered_at_ms, r.refreshed_at_ms));
        let mut known = Known::default();
        for record in records {
            known.registered.insert(record.name.clone());
            known.registered_digests.insert(record.schema_digest);
            known.queues.insert(record.name, record.queue);
        }
        let workers: Vec<(i64, WorkerRecord)> = read_members(&mut conn, &self.keys)
            .await?
            .into_iter()
            .filter_map(|(_, last, record)| Some((last, record?)))
            .filter(|(last_ms, record)| {
                record.state == "running" && is_fresh(*last_ms, record.heartbeat_seconds, now_ms)
            })
            .collect();
        known.live_digests = workers
            .iter()
            .flat_map(|(_, w)| w.schema_digests.iter().cloned())
            .collect();
        known.served = served_types(workers, now_ms);
        Ok(known)
    }
}

/// An answer that may be kept for [`FRESH_FOR`]: a yes.
trait Positive {
    fn positive(&self) -> bool;
}

impl Positive for Destination {
    fn positive(&self) -> bool {
        *self == Destination::Served
    }
}

impl Positive for Option<String> {
    fn positive(&self) -> bool {
        self.is_some()
    }
}

impl Positive for (Destination, Option<String>) {
    fn positive(&self) -> bool {
        self.0.positive() && self.1.positive()
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
            schema_digests: vec![],
            queues: vec![],
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
            live_digests: ["v2".to_owned()].into(),
            registered_digests: ["v1".to_owned(), "v2".to_owned()].into(),
            queues: Default::default(),
        };
        assert_eq!(known.version_destination("v2"), Destination::Served);
        assert_eq!(known.version_destination("v1"), Destination::Waiting);
        assert_eq!(known.version_destination("v0"), Destination::Nowhere);
        assert_eq!(known.destination("wordcount"), Destination::Served);
        assert_eq!(known.destination("thumbnail"), Destination::Waiting);
        assert_eq!(known.destination("resize"), Destination::Nowhere);
    }
}
