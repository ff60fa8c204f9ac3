//! `Retry-After` that means something: an estimate of when a pending job will be done, from
//!
//! - the job type's observed run time, a moving average that the workers keep in Redis
//!   (`{prefix}:stats`, shared by every facade), and
//! - the backlog: messages ready in the job type's work queue, worked off by `consumers ×
//!   worker.concurrency` jobs at a time.
//!
//! A queued job is told `backlog / parallelism × average + average` (and never less than the
//! time to its next attempt, while a retry waits); a running job `average − elapsed`. A type
//! without history gets `retry_after.default_seconds`. Everything is clamped to
//! `[retry_after.min_seconds, retry_after.max_seconds]`.
//!
//! Both inputs are cached for [`FRESH`] per process, so polls do not each cost a Redis round
//! trip and a broker request; a fetch that fails or is slow leaves the last value in place.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use shared::configuration::RetryAfterSettings;
use shared::{JobStatus, Settings, StatusHead};
use tokio::sync::Mutex;

use crate::broker::queue_stats::QueueStats;
use crate::broker::Broker;
use crate::job_types::JobTypes;
use crate::status_store::StatusStore;

/// How long fetched averages and queue figures are used before they are fetched again.
pub const FRESH: Duration = Duration::from_secs(1);
/// A poll waits at most this long for a fetch; past it, the last known value is used.
const FETCH_TIMEOUT: Duration = Duration::from_millis(500);

struct Cached<T> {
    value: Option<T>,
    fetched: Option<Instant>,
}

impl<T: Clone> Cached<T> {
    const fn empty() -> Self {
        Cached {
            value: None,
            fetched: None,
        }
    }

    /// The cached value, fetching it first if it is stale. Holding the lock while fetching
    /// makes concurrent polls share one fetch.
    async fn get<F, Fut, E>(cell: &Mutex<Self>, fetch: F) -> Option<T>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let mut cached = cell.lock().await;
        if cached.fetched.is_none_or(|at| at.elapsed() >= FRESH) {
            match tokio::time::timeout(FETCH_TIMEOUT, fetch()).await {
                Ok(Ok(value)) => cached.value = Some(value),
                Ok(Err(e)) => tracing::debug!(error = %e, "estimate input unavailable"),
                Err(_) => tracing::debug!("estimate input timed out"),
            }
            // Also after a failure: try again in a second, not on every poll.
            cached.fetched = Some(Instant::now());
        }
        cached.value.clone()
    }
}

/// Estimates how long a client should wait before polling a job again.
pub struct Estimates {
    store: StatusStore,
    broker: Broker,
    settings: RetryAfterSettings,
    /// Jobs one worker process runs at once (`worker.concurrency`, shared configuration).
    concurrency: u32,
    /// Shared, so a poll takes a reference rather than a copy of every type's name.
    averages: Mutex<Cached<Arc<HashMap<String, f64>>>>,
    /// Each work queue's figures, by queue name.
    queues: std::sync::Mutex<HashMap<String, Arc<Mutex<Cached<QueueStats>>>>>,
    /// Where each type's jobs wait.
    job_types: JobTypes,
    /// `amqp.queue`: the single queue of workers before queues per type.
    legacy_queue: String,
}

impl Estimates {
    pub fn new(
        store: StatusStore,
        broker: Broker,
        job_types: JobTypes,
        settings: &Settings,
    ) -> Self {
        Estimates {
            store,
            broker,
            settings: settings.retry_after.clone(),
            concurrency: settings.worker.concurrency.clamp(1, u32::MAX as usize) as u32,
            averages: Mutex::new(Cached::empty()),
            queues: Default::default(),
            job_types,
            legacy_queue: settings.amqp.queue.clone(),
        }
    }

    /// The figures of `queue`, as measured within the last second.
    async fn queue_stats(&self, queue: &str) -> Option<QueueStats> {
        let cell = match self.queues.lock() {
            Ok(mut queues) => queues
                .entry(queue.to_owned())
                .or_insert_with(|| Arc::new(Mutex::new(Cached::empty())))
                .clone(),
            Err(_) => return None,
        };
        Cached::get(&cell, || self.broker.queue_stats(queue)).await
    }

    /// The work queue of `job_type`'s jobs (none for a type the facade does not know).
    pub fn queue_of(&self, job_type: &str) -> Option<String> {
        let catalog = self.job_types.current();
        let known = catalog.get(job_type)?;
        Some(known.queue(&self.legacy_queue).to_owned())
    }

    /// Seconds a client should wait before polling `doc`'s job again, clamped to the bounds.
    pub async fn retry_after(&self, doc: &StatusHead) -> u64 {
        if doc.status.is_terminal() {
            return self.settings.clamp(self.settings.min_seconds);
        }
        let averages = Cached::get(&self.averages, || async {
            self.store.run_time_averages().await.map(Arc::new)
        })
        .await;
        let Some(average) = averages.and_then(|a| a.get(&doc.job_type).copied()) else {
            return self.settings.clamp(self.settings.default_seconds);
        };
        let queue = match self.queue_of(&doc.job_type) {
            Some(queue) if doc.status == JobStatus::Queued => self.queue_stats(&queue).await,
            _ => None,
        };
        let seconds = estimate(doc, average, queue, self.concurrency, Utc::now());
        self.settings.clamp(seconds.max(0.0).ceil() as u64)
    }

    /// Messages ready in `queue`, as measured within the last second (shared with the
    /// estimates); `None` when the broker could not be asked.
    pub async fn queue_depth(&self, queue: &str) -> Option<u64> {
        self.queue_stats(queue).await.map(|q| u64::from(q.messages))
    }

    /// The depth of the deepest work queue of the known types (what admission control
    /// compares with `limits.max_queue_depth` before a submission's type is read); `None`
    /// when no queue could be measured.
    pub async fn deepest_queue(&self) -> Option<u64> {
        let queues = self.job_types.current().queues(&self.legacy_queue);
        let depths = futures_util::future::join_all(queues.iter().map(|q| self.queue_depth(q)));
        depths.await.into_iter().flatten().max()
    }

    /// The `Retry-After` settings in force for `doc`'s job: the configured bounds, with this
    /// job's estimate as the value to give (what `job_response::retry_after` answers).
    pub async fn policy_for(&self, doc: &StatusHead) -> RetryAfterSettings {
        RetryAfterSettings {
            default_seconds: self.retry_after(doc).await,
            ..self.settings.clone()
        }
    }
}

/// Seconds until a pending job is likely done (unclamped; may be negative for an overdue
/// running job). `average` is the type's mean run time in seconds.
pub fn estimate(
    doc: &StatusHead,
    average: f64,
    queue: Option<QueueStats>,
    concurrency: u32,
    now: DateTime<Utc>,
) -> f64 {
    let since = |t: DateTime<Utc>| (now - t).num_milliseconds() as f64 / 1000.0;
    match doc.status {
        JobStatus::Running => average - doc.started_at.map(since).unwrap_or(0.0),
        JobStatus::Queued => {
            let backlog = queue.map_or(0.0, |q| {
                let parallel = f64::from(q.consumers.max(1)) * f64::from(concurrency.max(1));
                f64::from(q.messages) / parallel * average
            });
            let until_retry = doc.next_attempt_at.map_or(0.0, |t| -since(t)).max(0.0);
            backlog.max(until_retry) + average
        }
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::{JobId, StatusDocument};

    fn doc(status: JobStatus) -> StatusDocument {
        let mut doc = StatusDocument::queued(JobId::new(), "sleep", Utc::now());
        doc.status = status;
        doc
    }

    #[test]
    fn queued_grows_with_the_backlog() {
        let now = Utc::now();
        let q = |messages, consumers| {
            Some(QueueStats {
                messages,
                consumers,
            })
        };
        let d = doc(JobStatus::Queued);
        assert_eq!(estimate(&d.head(), 2.0, None, 8, now), 2.0);
        assert_eq!(estimate(&d.head(), 2.0, q(0, 1), 8, now), 2.0);
        assert_eq!(estimate(&d.head(), 2.0, q(16, 1), 8, now), 6.0);
        assert_eq!(estimate(&d.head(), 2.0, q(16, 2), 8, now), 4.0);
        // No consumer yet: counted as one, not as a division by zero.
        assert_eq!(estimate(&d.head(), 2.0, q(16, 0), 8, now), 6.0);
    }

    #[test]
    fn running_counts_down_and_retries_wait() {
        let now = Utc::now();
        let mut d = doc(JobStatus::Running);
        d.started_at = Some(now - chrono::Duration::seconds(3));
        assert_eq!(estimate(&d.head(), 10.0, None, 8, now), 7.0);
        assert!(estimate(&d.head(), 1.0, None, 8, now) < 0.0);
        let mut d = doc(JobStatus::Queued);
        d.next_attempt_at = Some(now + chrono::Duration::seconds(30));
        assert_eq!(estimate(&d.head(), 1.0, None, 8, now), 31.0);
    }
}
