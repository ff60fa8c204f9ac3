//! The worker's side of the job store in Redis. Every state change is one Lua script that
//! checks the job's current state before writing, so a transition is atomic and a late write
//! (a slow worker, a redelivered message) never moves a job out of a terminal state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use redis::{AsyncCommands, Script};
use shared::configuration::{JobSettings, RedisSettings};
use shared::keys::{field, LeaseMember};
use shared::redis_conn::{RedisConn, Retries};
use shared::{JobId, JobStatus, KeyLayout, StatusDocument, Tenant};
use tracing::Instrument;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("cannot encode the status document: {0}")]
    Encode(#[from] serde_json::Error),
}

/// KEYS: job hash, tombstone. ARGV: allowed current states (each followed by a comma, the
/// list starting with one: ",queued,running,"), new state, document, ttl, worker id,
/// has-result flag, result, tombstone ttl (0: none), count-a-start flag (adds one to the hash's
/// `starts`: how often the job was started, whoever wrote last), events channel (the new
/// document is published there, for long-polls and event streams).
/// Returns "ok" (or "ok-cancel" when counting a start of a job whose cancel was requested), or
/// the current state ("missing" when there is no job) when it did not write.
///
/// Each `redis.call` costs a script about as much as a command sent on its own, so the script
/// makes as few as it can: one read, one write of the hash.
const TRANSITION: &str = r#"
local cur = redis.call('HMGET', KEYS[1], 'state', 'cancel', 'starts')
local state = cur[1]
if not state then return 'missing' end
if not string.find(ARGV[1], ',' .. state .. ',', 1, true) then return state end
if ARGV[9] == '1' then
  redis.call('HSET', KEYS[1], 'state', ARGV[2], 'doc', ARGV[3], 'worker', ARGV[5],
    'starts', (tonumber(cur[3]) or 0) + 1)
elseif ARGV[6] == '1' then
  redis.call('HSET', KEYS[1], 'state', ARGV[2], 'doc', ARGV[3], 'worker', ARGV[5], 'result', ARGV[7])
else
  redis.call('HSET', KEYS[1], 'state', ARGV[2], 'doc', ARGV[3], 'worker', ARGV[5])
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
if tonumber(ARGV[8]) > 0 then redis.call('SET', KEYS[2], '1', 'EX', ARGV[8]) end
redis.call('PUBLISH', ARGV[10], ARGV[3])
if ARGV[9] == '1' and cur[2] == '1' then return 'ok-cancel' end
return 'ok'
"#;

/// The common start in one round trip: a job still exactly as the facade recorded it.
/// KEYS: job hash. ARGV: the queued document as the facade wrote it, the running document,
/// ttl, worker id, events channel. Starts the job (as TRANSITION with a counted start) if it is
/// queued with that very document; returns {"ok"} or {"ok-cancel"} then, {"missing"} when
/// there is no job, or {"other", document} (the stored document, to decide from) otherwise.
const START_FRESH: &str = r#"
local cur = redis.call('HMGET', KEYS[1], 'state', 'doc', 'cancel', 'starts')
if not cur[1] then return {'missing'} end
if cur[1] ~= 'queued' or cur[2] ~= ARGV[1] then return {'other', cur[2]} end
redis.call('HSET', KEYS[1], 'state', 'running', 'doc', ARGV[2], 'worker', ARGV[4],
  'starts', (tonumber(cur[4]) or 0) + 1)
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('PUBLISH', ARGV[5], ARGV[2])
if cur[3] == '1' then return {'ok-cancel'} end
return {'ok'}
"#;

/// KEYS: leases. ARGV: now (ms), new expiry (ms), limit. Claims up to `limit` lapsed leases by
/// pushing their expiry to the new one (so no other worker claims them meanwhile) and returns
/// their job ids.
const CLAIM_LAPSED: &str = r#"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], ARGV[2], id)
end
return ids
"#;

/// What a fresh start found.
#[derive(Debug)]
pub enum FreshStart {
    /// Started (`true`: a client has asked to cancel the job meanwhile).
    Started { cancel_requested: bool },
    /// No record of the job.
    Missing,
    /// The job is not as the facade recorded it (redelivered, retried, canceled…): its
    /// document, to decide from (`None` if it has none).
    Other(Option<Box<StatusDocument>>),
}

/// What a transition found.
#[derive(Debug, PartialEq, Eq)]
pub enum Transition {
    Done,
    /// Written (a start), but a client has asked to cancel the job.
    DoneCancelRequested,
    /// The job was in another state (returned), so nothing was written.
    Refused(String),
}

/// The scripts, made once (a `Script` holds its text and digest: two strings to copy).
static TRANSITION_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(TRANSITION));
static START_FRESH_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(START_FRESH));
static CLAIM_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(CLAIM_LAPSED));

/// Cheap to clone (handles and shared text): each job makes a copy scoped to its tenant.
#[derive(Clone)]
pub struct JobStore {
    conn: RedisConn,
    keys: KeyLayout,
    retention_seconds: u64,
    tombstone_seconds: u64,
    worker_id: Arc<str>,
    run_times: Arc<RunTimes>,
}

impl JobStore {
    pub fn new(
        redis: &RedisSettings,
        jobs: &JobSettings,
        worker_id: String,
    ) -> Result<Self, StoreError> {
        let retries = Retries {
            count: 2,
            max_delay: Duration::from_secs(1),
        };
        Ok(JobStore {
            conn: RedisConn::open(redis, retries)?,
            keys: KeyLayout::new(redis.key_prefix.clone()),
            retention_seconds: jobs.retention_seconds,
            tombstone_seconds: jobs.retention_seconds + jobs.tombstone_seconds,
            worker_id: Arc::from(worker_id),
            run_times: Arc::default(),
        })
    }

    /// The same store for `tenant`'s jobs (every job key carries its tenant).
    pub fn for_tenant(&self, tenant: &Tenant) -> JobStore {
        JobStore {
            keys: self.keys.for_tenant(tenant),
            ..self.clone()
        }
    }

    pub fn tenant(&self) -> &Tenant {
        self.keys.tenant()
    }

    /// The job's status document, if the job exists.
    pub async fn load(&self, id: &JobId) -> Result<Option<StatusDocument>, StoreError> {
        let mut conn = self.conn.clone();
        let doc: Option<Vec<u8>> = conn.hget(self.keys.job(id), field::DOC).await?;
        Ok(match doc {
            Some(bytes) => Some(serde_json::from_slice(&bytes)?),
            None => None,
        })
    }

    /// Writes `doc` (and `result`) if the job is now in one of `from`.
    pub async fn transition(
        &self,
        doc: &StatusDocument,
        from: &[JobStatus],
        result: Option<&[u8]>,
    ) -> Result<Transition, StoreError> {
        self.write(doc, from, result, false).await
    }

    /// Records a start of the job (`doc` is running) if the job is now in one of `from`.
    pub async fn start(
        &self,
        doc: &StatusDocument,
        from: &[JobStatus],
    ) -> Result<Transition, StoreError> {
        self.write(doc, from, None, true).await
    }

    async fn write(
        &self,
        doc: &StatusDocument,
        from: &[JobStatus],
        result: Option<&[u8]>,
        count_start: bool,
    ) -> Result<Transition, StoreError> {
        let doc_bytes = serde_json::to_vec(doc)?;
        let allowed = from.iter().fold(String::from(","), |mut list, s| {
            list.push_str(s.as_str());
            list.push(',');
            list
        });
        let tombstone = if doc.status.is_terminal() {
            self.tombstone_seconds
        } else {
            0
        };
        let mut conn = self.conn.clone();
        let _timer = crate::metrics::REDIS_DURATION.start_timer();
        let span = transition_span(doc.status);
        let outcome: String = TRANSITION_SCRIPT
            .key(self.keys.job(&doc.id))
            .key(self.keys.tombstone(&doc.id))
            .arg(allowed)
            .arg(doc.status.as_str())
            .arg(doc_bytes)
            .arg(self.retention_seconds)
            .arg(&*self.worker_id)
            .arg(if result.is_some() { "1" } else { "0" })
            .arg(result.unwrap_or_default())
            .arg(tombstone)
            .arg(if count_start { "1" } else { "0" })
            .arg(self.keys.events(&doc.id))
            .invoke_async(&mut conn)
            .instrument(span)
            .await?;
        Ok(match outcome.as_str() {
            "ok" => Transition::Done,
            "ok-cancel" => Transition::DoneCancelRequested,
            _ => Transition::Refused(outcome),
        })
    }

    /// Starts a job that is still exactly as the facade recorded it (`queued`, the document
    /// `queued_doc`) in one round trip, writing `running`; anything else is returned to decide
    /// from. Saves the read that `load` + `start` take for the common first delivery.
    pub async fn start_fresh(
        &self,
        queued_doc: &[u8],
        running: &StatusDocument,
    ) -> Result<FreshStart, StoreError> {
        let running_bytes = serde_json::to_vec(running)?;
        let mut conn = self.conn.clone();
        let _timer = crate::metrics::REDIS_DURATION.start_timer();
        let span = transition_span(running.status);
        let reply: Vec<Vec<u8>> = START_FRESH_SCRIPT
            .key(self.keys.job(&running.id))
            .arg(queued_doc)
            .arg(running_bytes)
            .arg(self.retention_seconds)
            .arg(&*self.worker_id)
            .arg(self.keys.events(&running.id))
            .invoke_async(&mut conn)
            .instrument(span)
            .await?;
        Ok(match reply.as_slice() {
            [ok] if ok == b"ok" => FreshStart::Started {
                cancel_requested: false,
            },
            [ok] if ok == b"ok-cancel" => FreshStart::Started {
                cancel_requested: true,
            },
            [other, doc] if other == b"other" => {
                FreshStart::Other(Some(Box::new(serde_json::from_slice(doc)?)))
            }
            [missing] if missing == b"missing" => FreshStart::Missing,
            // Read the job the general way.
            _ => FreshStart::Other(None),
        })
    }

    /// Puts the job under a lease until `until_ms`, keeping its message for a re-publish.
    pub async fn start_lease(
        &self,
        id: &JobId,
        message: &[u8],
        until_ms: i64,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        // Two keys in different hash slots: two commands, pipelined (not one script).
        redis::pipe()
            .hset(self.keys.job(id), field::MESSAGE, message)
            .ignore()
            .zadd(self.keys.leases(), self.lease_member(id), until_ms)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Extends a lease that this worker holds (only if it is still there).
    pub async fn renew_lease(&self, id: &JobId, until_ms: i64) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("ZADD")
            .arg(self.keys.leases())
            .arg("XX")
            .arg(until_ms)
            .arg(self.lease_member(id))
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Drops the job's lease and its kept message.
    pub async fn end_lease(&self, id: &JobId) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        redis::pipe()
            .zrem(self.keys.leases(), self.lease_member(id))
            .ignore()
            .hdel(self.keys.job(id), field::MESSAGE)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    fn lease_member(&self, id: &JobId) -> String {
        LeaseMember::new(self.keys.tenant(), id).to_string()
    }

    /// Claims up to `limit` lapsed leases, extending them to `until_ms`.
    pub async fn claim_lapsed(
        &self,
        now_ms: i64,
        until_ms: i64,
        limit: usize,
    ) -> Result<Vec<LeaseMember>, StoreError> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = CLAIM_SCRIPT
            .key(self.keys.leases())
            .arg(now_ms)
            .arg(until_ms)
            .arg(limit)
            .invoke_async(&mut conn)
            .await?;
        // Members are only ever written from parsed ids; anything else is dropped.
        Ok(ids.iter().filter_map(|s| s.parse().ok()).collect())
    }

    /// The kept message of a leased job.
    pub async fn kept_message(&self, id: &JobId) -> Result<Option<Vec<u8>>, StoreError> {
        let mut conn = self.conn.clone();
        Ok(conn.hget(self.keys.job(id), field::MESSAGE).await?)
    }

    /// The channel cancel requests are published on.
    pub fn cancel_channel(&self) -> String {
        self.keys.cancel_requests()
    }

    /// Counts the run time of a finished run (`finished_at - started_at` of `doc`) towards its
    /// job type's moving average in `{prefix}:stats`, which every facade reads to estimate
    /// `Retry-After`. Samples are gathered in memory and folded in once a second, one script
    /// per job type (not one per job); it never delays the job's ack, and a failure costs only
    /// a second's samples.
    pub fn record_run_time(&self, doc: &StatusDocument) {
        let (Some(started), Some(finished)) = (doc.started_at, doc.finished_at) else {
            return;
        };
        let seconds = (finished - started).num_milliseconds().max(0) as f64 / 1000.0;
        if self.run_times.add(&doc.job_type, seconds) {
            tokio::spawn(
                self.run_times
                    .clone()
                    .flush_later(self.conn.clone(), self.keys.run_time_stats()),
            );
        }
    }
}

/// The client span of one transition script (a child of the job's span), when spans are
/// exported.
fn transition_span(status: JobStatus) -> tracing::Span {
    shared::export_span!(
        "redis transition",
        otel.kind = "client",
        db.system.name = "redis",
        job.status = status.as_str()
    )
}

/// Run-time samples not yet folded into `{prefix}:stats`, per job type: (sum of seconds, count).
#[derive(Default)]
struct RunTimes {
    pending: Mutex<HashMap<String, (f64, u32)>>,
    /// Whether a flush is scheduled (at most one at a time).
    scheduled: AtomicBool,
}

impl RunTimes {
    /// How long samples gather before they are written.
    const FLUSH_EVERY: Duration = Duration::from_secs(1);
    /// Weight of one sample in the exponentially weighted moving average.
    const ALPHA: f64 = 0.2;

    /// Adds a sample; true when the caller must schedule a flush.
    fn add(&self, job_type: &str, seconds: f64) -> bool {
        if let Ok(mut pending) = self.pending.lock() {
            match pending.get_mut(job_type) {
                Some((sum, count)) => {
                    *sum += seconds;
                    *count += 1;
                }
                None => {
                    pending.insert(job_type.to_owned(), (seconds, 1));
                }
            }
        }
        !self.scheduled.swap(true, Ordering::AcqRel)
    }

    /// Waits a moment, then folds what gathered meanwhile into the moving averages.
    async fn flush_later(self: Arc<Self>, mut conn: RedisConn, key: String) {
        /// KEYS: stats hash. ARGV: job type, mean of the samples (seconds), their weight.
        const EWMA: &str = r#"
local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
local x = tonumber(ARGV[2])
local new = x
if old then new = old + tonumber(ARGV[3]) * (x - old) end
redis.call('HSET', KEYS[1], ARGV[1], string.format('%.3f', new))
return 1
"#;
        static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(EWMA));
        tokio::time::sleep(Self::FLUSH_EVERY).await;
        // Cleared before taking the samples: one added from now on schedules the next flush
        // (or is taken by this one, leaving the next with nothing to do).
        self.scheduled.store(false, Ordering::Release);
        let batch = match self.pending.lock() {
            Ok(mut pending) => std::mem::take(&mut *pending),
            Err(_) => return,
        };
        for (job_type, (sum, count)) in batch {
            let result: Result<i64, redis::RedisError> = SCRIPT
                .key(&key)
                .arg(&job_type)
                .arg(format!("{:.3}", sum / f64::from(count)))
                .arg(batch_weight(Self::ALPHA, count))
                .invoke_async(&mut conn)
                .await;
            if let Err(e) = result {
                tracing::debug!(error = %e, %job_type, "could not record run times");
            }
        }
    }
}

/// The weight of `count` samples folded in at once as their mean: what `count` single steps
/// of weight `alpha` give the newest samples together, 1 - (1 - alpha)^count (exact when
/// the samples are equal).
fn batch_weight(alpha: f64, count: u32) -> f64 {
    1.0 - (1.0 - alpha).powi(count.min(1000) as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_moves_the_average_as_its_single_steps_would() {
        assert!((batch_weight(0.2, 1) - 0.2).abs() < 1e-12);
        // Ten equal samples one at a time...
        let (mut one_by_one, x) = (1.0_f64, 3.0_f64);
        for _ in 0..10 {
            one_by_one += 0.2 * (x - one_by_one);
        }
        // ...and at once as their mean.
        let batched = 1.0 + batch_weight(0.2, 10) * (x - 1.0);
        assert!((one_by_one - batched).abs() < 1e-12);
        assert!(batch_weight(0.2, u32::MAX) <= 1.0);
    }

    #[test]
    fn samples_gather_until_the_scheduled_flush() {
        let run_times = RunTimes::default();
        assert!(
            run_times.add("echo", 0.5),
            "the first sample schedules a flush"
        );
        assert!(!run_times.add("echo", 1.5));
        assert!(!run_times.add("hash", 2.0));
        let pending = run_times.pending.lock().unwrap();
        assert_eq!(pending.get("echo"), Some(&(2.0, 2)));
        assert_eq!(pending.get("hash"), Some(&(2.0, 1)));
    }
}
