//! The worker's entry in the fleet registry (`GET /v1/workers` on the facade): a heartbeat
//! every `worker.heartbeat_seconds` writes this worker's [`WorkerRecord`] to
//! `{prefix}:worker:<id>` (expiring after three heartbeats) and its heartbeat time to the
//! sorted set `{prefix}:workers`; a graceful shutdown removes both. Registry trouble (Redis
//! down) is logged, never fatal: the worker goes on running jobs.
//!
//! The same heartbeat registers the job types the worker serves: one
//! [`JobTypeRecord`] per type in the hash `{prefix}:job-types` (see `shared::job_types`),
//! written at start and refreshed with every beat, which is how the facades learn the types,
//! their schemas and limits. A graceful shutdown leaves the type records in place: the type's
//! jobs are still accepted (they wait in the queue) until `jobs.type_retention_seconds` after
//! its last refresh, when the first beat of any worker prunes it.

use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use prometheus::core::Collector;
use shared::fleet::{WorkerRecord, TTL_HEARTBEATS};
use shared::job_types::JobTypeRecord;
use shared::redis_conn::{RedisConn, Retries};
use shared::{KeyLayout, Settings};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::jobs::Registry;
use crate::metrics;

/// The running heartbeat; [`Fleet::stop`] deregisters the worker.
pub struct Fleet {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

struct Heart {
    conn: RedisConn,
    keys: KeyLayout,
    record: WorkerRecord,
    /// The job types this worker registers.
    types: Vec<JobTypeRecord>,
    /// Records older than this (ms) are pruned from the type registry at the first beat.
    type_retention_ms: i64,
    pruned: bool,
    interval: Duration,
}

impl Fleet {
    /// Registers the worker `id` and keeps its heartbeat until [`Fleet::stop`]. Once
    /// `shutdown` turns true its record says `draining` (it still beats while jobs drain).
    pub fn start(
        settings: &Settings,
        id: &str,
        registry: &Registry,
        mut shutdown: watch::Receiver<bool>,
    ) -> Fleet {
        let interval = Duration::from_secs(settings.worker.heartbeat_seconds.max(1));
        let (stop_tx, mut stop_rx) = oneshot::channel();
        let retries = Retries {
            count: 1,
            max_delay: Duration::from_secs(1),
        };
        let conn = RedisConn::open(&settings.redis, retries);
        let conn = match conn {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the fleet registry; not registering");
                return Fleet {
                    stop: None,
                    task: None,
                };
            }
        };
        let started = Utc::now();
        let now = started.to_rfc3339_opts(SecondsFormat::Millis, true);
        let started_ms = started.timestamp_millis();
        let mut heart = Heart {
            conn,
            keys: KeyLayout::new(settings.redis.key_prefix.clone()),
            record: WorkerRecord {
                id: id.to_owned(),
                host: host_name(),
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                queue: settings.amqp.queue.clone(),
                concurrency: settings.worker.concurrency,
                in_flight: 0,
                jobs_done: 0,
                state: "running".to_owned(),
                heartbeat_seconds: interval.as_secs(),
                started_at: now.clone(),
                last_seen: now,
                job_types: registry.names().map(str::to_owned).collect(),
                schema_digests: registry
                    .types()
                    .map(|t| t.schema_digest().to_owned())
                    .collect(),
                queues: registry
                    .queues(&settings.amqp)
                    .map(|q| q.into_keys().collect())
                    .unwrap_or_default(),
            },
            types: registry.records(&settings.jobs, &settings.amqp, started_ms, started_ms),
            type_retention_ms: settings.jobs.type_retention_seconds.saturating_mul(1000) as i64,
            pruned: false,
            interval,
        };
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(heart.interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut draining = *shutdown.borrow();
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    changed = shutdown.changed(), if !draining => {
                        draining = changed.is_err() || *shutdown.borrow();
                        if !draining {
                            continue;
                        }
                    }
                    _ = &mut stop_rx => break,
                }
                if draining {
                    heart.record.state = "draining".to_owned();
                }
                // A beat that hangs (Redis unreachable) must not hold up the next one or the
                // worker's exit.
                tokio::select! {
                    _ = tokio::time::timeout(heart.interval, heart.beat()) => {}
                    _ = &mut stop_rx => break,
                }
            }
            if tokio::time::timeout(Duration::from_secs(2), heart.deregister())
                .await
                .is_err()
            {
                tracing::warn!("cannot leave the fleet registry: Redis did not answer in time");
            }
        });
        Fleet {
            stop: Some(stop_tx),
            task: Some(task),
        }
    }

    /// Stops the heartbeat and removes this worker from the registry (waits for it).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Heart {
    async fn beat(&mut self) {
        let now = Utc::now();
        self.record.in_flight = metrics::IN_FLIGHT.get();
        self.record.jobs_done = jobs_done();
        self.record.last_seen = now.to_rfc3339_opts(SecondsFormat::Millis, true);
        let json = match serde_json::to_string(&self.record) {
            Ok(json) => json,
            Err(_) => return,
        };
        for record in &mut self.types {
            record.refreshed_at_ms = now.timestamp_millis();
        }
        if !self.pruned {
            match prune_types(
                &mut self.conn,
                &self.keys,
                now.timestamp_millis() - self.type_retention_ms,
            )
            .await
            {
                Ok(()) => self.pruned = true,
                Err(e) => tracing::warn!(error = %e, "cannot prune the job type registry"),
            }
        }
        let ttl = self.interval.as_secs() * TTL_HEARTBEATS;
        let mut pipe = redis::pipe();
        // Record and registry entry are in different slots of a Redis Cluster: two writes
        // there. A registry entry without its record reads as a stale worker (pruned, and
        // back at the next beat); a record without an entry is not listed until then.
        if !self.conn.is_cluster() {
            pipe.atomic();
        }
        let result = pipe
            .set_ex(self.keys.worker(&self.record.id), json, ttl)
            .ignore()
            .zadd(self.keys.workers(), &self.record.id, now.timestamp_millis())
            .ignore()
            .query_async::<()>(&mut self.conn)
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "fleet heartbeat failed");
        }
        // After the worker's record: by the time a facade accepts a type, the other workers
        // on the queue see that this one serves it, and hand its jobs off (`handoff`)
        // instead of failing them.
        if let Err(e) = write_types(&mut self.conn, &self.keys, &self.types).await {
            tracing::warn!(error = %e, "cannot register the job types");
        }
    }

    async fn deregister(&mut self) {
        let mut pipe = redis::pipe();
        if !self.conn.is_cluster() {
            pipe.atomic();
        }
        let result = pipe
            .del(self.keys.worker(&self.record.id))
            .ignore()
            .zrem(self.keys.workers(), &self.record.id)
            .ignore()
            .query_async::<()>(&mut self.conn)
            .await;
        match result {
            Ok(()) => tracing::info!(worker_id = %self.record.id, "left the fleet registry"),
            Err(e) => tracing::warn!(error = %e, "cannot leave the fleet registry"),
        }
    }
}

/// Writes `records` to the job type registry (one field each, see `shared::job_types`).
pub async fn write_types(
    conn: &mut RedisConn,
    keys: &KeyLayout,
    records: &[JobTypeRecord],
) -> redis::RedisResult<()> {
    let mut fields = Vec::with_capacity(records.len());
    for record in records {
        // A record is plain data: encoding it cannot fail.
        if let Ok(json) = serde_json::to_string(record) {
            fields.push((record.field(), json));
        }
    }
    if fields.is_empty() {
        return Ok(());
    }
    redis::cmd("HSET")
        .arg(keys.job_types())
        .arg(&fields)
        .query_async(conn)
        .await
}

/// Removes the registry's records last refreshed before `cutoff_ms` (and any that do not
/// decode): types no worker has served for the whole retention.
pub async fn prune_types(
    conn: &mut RedisConn,
    keys: &KeyLayout,
    cutoff_ms: i64,
) -> redis::RedisResult<()> {
    let all: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(keys.job_types())
        .query_async(conn)
        .await?;
    let stale: Vec<String> = all
        .into_iter()
        .filter(|(_, json)| {
            serde_json::from_str::<JobTypeRecord>(json)
                .map_or(true, |r| r.refreshed_at_ms < cutoff_ms)
        })
        .map(|(field, _)| field)
        .collect();
    if stale.is_empty() {
        return Ok(());
    }
    tracing::info!(types = %stale.join(","), "pruning job types no worker served within the retention");
    redis::cmd("HDEL")
        .arg(keys.job_types())
        .arg(&stale)
        .query_async(conn)
        .await
}

/// Registers `registry`'s types once (`worker job-types register`): for a deployment that
/// wants its types accepted before any worker runs. Returns how many were written.
pub async fn register_once(settings: &Settings, registry: &Registry) -> Result<usize, String> {
    let retries = Retries {
        count: 2,
        max_delay: Duration::from_secs(1),
    };
    let mut conn = RedisConn::open(&settings.redis, retries).map_err(|e| e.to_string())?;
    let keys = KeyLayout::new(settings.redis.key_prefix.clone());
    let now = Utc::now().timestamp_millis();
    let records = registry.records(&settings.jobs, &settings.amqp, now, now);
    write_types(&mut conn, &keys, &records)
        .await
        .map_err(|e| e.to_string())?;
    Ok(records.len())
}

/// Job runs that ended here (succeeded, failed or canceled), from the metrics counters.
fn jobs_done() -> u64 {
    let counters = [&*metrics::SUCCEEDED, &*metrics::FAILED, &*metrics::CANCELED];
    counters
        .iter()
        .flat_map(|c| c.collect())
        .flat_map(|family| {
            family
                .get_metric()
                .iter()
                .map(|m| m.get_counter().get_value())
                .collect::<Vec<_>>()
        })
        .sum::<f64>() as u64
}

/// This machine's (or container's) host name, `unknown` if it cannot be read.
pub fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}
