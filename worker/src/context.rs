//! What a running handler gets besides its input: the job's id and attempt, and a way to
//! report progress. Progress writes are coalesced (at most one per configured interval), so a
//! handler may report as often as it likes without flooding Redis.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shared::{BackendCancel, JobId, JobStatus, Progress, StatusDocument, Tenant};

use tokio_util::sync::CancellationToken;

use crate::job_store::JobStore;

#[derive(Clone)]
pub struct JobContext {
    inner: Arc<Inner>,
}

struct Inner {
    id: JobId,
    attempt: u32,
    store: Option<JobStore>,
    interval: Duration,
    cancel: CancellationToken,
    state: Mutex<ProgressState>,
    /// Where background progress writes run (the runtime the context was made on).
    runtime: Option<tokio::runtime::Handle>,
    /// The job's tenant and the W3C trace context of its message (what a handler that calls
    /// another service passes on).
    tenant: Tenant,
    traceparent: Option<String>,
}

struct ProgressState {
    doc: StatusDocument,
    last_write: Option<Instant>,
    backend_cancel: Option<BackendCancel>,
}

impl JobContext {
    pub(crate) fn new(
        doc: StatusDocument,
        store: JobStore,
        interval: Duration,
        cancel: CancellationToken,
    ) -> Self {
        Self::build(doc, Some(store), interval, cancel)
    }

    /// A context that records progress in memory only: for testing handlers without Redis.
    pub fn detached(doc: StatusDocument) -> Self {
        Self::build(doc, None, Duration::ZERO, CancellationToken::new())
    }

    /// A context for testing a handler of `job_type` without Redis: progress is kept in
    /// memory ([`latest_progress`](Self::latest_progress)), and cancelling `cancel` is a
    /// client's cancel request.
    pub fn detached_for(job_type: &str, cancel: CancellationToken) -> Self {
        let doc = StatusDocument::queued(JobId::new(), job_type, chrono::Utc::now());
        Self::build(doc, None, Duration::ZERO, cancel)
    }

    /// The same context for a job of `tenant` whose message carried `traceparent`.
    pub(crate) fn with_origin(self, tenant: Tenant, traceparent: Option<String>) -> Self {
        match Arc::try_unwrap(self.inner) {
            Ok(mut inner) => {
                inner.tenant = tenant;
                inner.traceparent = traceparent;
                JobContext {
                    inner: Arc::new(inner),
                }
            }
            Err(inner) => JobContext { inner },
        }
    }

    fn build(
        doc: StatusDocument,
        store: Option<JobStore>,
        interval: Duration,
        cancel: CancellationToken,
    ) -> Self {
        JobContext {
            inner: Arc::new(Inner {
                id: doc.id,
                attempt: doc.attempts,
                store,
                interval,
                cancel,
                runtime: tokio::runtime::Handle::try_current().ok(),
                tenant: Tenant::default(),
                traceparent: None,
                state: Mutex::new(ProgressState {
                    doc,
                    last_write: None,
                    backend_cancel: None,
                }),
            }),
        }
    }

    pub fn job_id(&self) -> JobId {
        self.inner.id
    }

    /// The tenant the job belongs to.
    pub fn tenant(&self) -> &Tenant {
        &self.inner.tenant
    }

    /// The W3C `traceparent` of the job's message, when it carried one.
    pub fn traceparent(&self) -> Option<&str> {
        self.inner.traceparent.as_deref()
    }

    /// Records how a backend took this job's cancel (shown in the canceled job's document as
    /// `backend_cancel`). For handlers with a cancel grace (`JobType::cancel_grace`).
    pub fn backend_canceled(&self, confirmed: bool, detail: impl Into<String>) {
        if let Ok(mut state) = self.inner.state.lock() {
            state.backend_cancel = Some(BackendCancel {
                confirmed,
                detail: detail.into(),
            });
        }
    }

    /// What [`backend_canceled`](Self::backend_canceled) recorded.
    pub fn backend_cancel(&self) -> Option<BackendCancel> {
        self.inner
            .state
            .lock()
            .ok()
            .and_then(|s| s.backend_cancel.clone())
    }

    /// 1 on the first run, more when the job is run again.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// Reports progress (`percent` is clamped to 0..=100). Best effort: a failed write is
    /// logged, never fails the job.
    pub async fn progress(&self, percent: f64, message: impl Into<String>) {
        if let Some(doc) = self.record_progress(percent, message.into()) {
            self.write_progress(doc).await;
        }
    }

    /// Reports progress from blocking code (a handler's `spawn_blocking` closure) without
    /// waiting: the write, when one is due, runs on the worker's runtime in the background. A
    /// write that arrives after the job finished is refused by the store (it only updates a
    /// running job), so it never undoes the outcome.
    pub fn progress_nowait(&self, percent: f64, message: impl Into<String>) {
        let Some(doc) = self.record_progress(percent, message.into()) else {
            return;
        };
        if let Some(runtime) = &self.inner.runtime {
            let this = self.clone();
            runtime.spawn(async move { this.write_progress(doc).await });
        }
    }

    /// Keeps the latest progress; returns the document to write when a write is due.
    fn record_progress(&self, percent: f64, message: String) -> Option<StatusDocument> {
        let percent = if percent.is_finite() {
            // Two decimals are plenty for a progress bar and keep the document short.
            (percent.clamp(0.0, 100.0) * 100.0).round() / 100.0
        } else {
            0.0
        };
        let mut state = self.inner.state.lock().ok()?;
        state.doc.progress = Some(Progress { percent, message });
        let due = state
            .last_write
            .is_none_or(|t| t.elapsed() >= self.inner.interval);
        if !due || self.inner.store.is_none() {
            return None;
        }
        state.last_write = Some(Instant::now());
        Some(state.doc.clone())
    }

    async fn write_progress(&self, doc: StatusDocument) {
        if let Some(store) = &self.inner.store {
            if let Err(e) = store.transition(&doc, &[JobStatus::Running], None).await {
                tracing::warn!(job_id = %self.inner.id, error = %e, "progress not recorded");
            }
        }
    }

    /// Whether a client asked to cancel this job. The worker stops a canceled handler at its
    /// next await point anyway; a handler checks this (or awaits [`cancelled`]) to stop
    /// blocking work or clean up first.
    ///
    /// [`cancelled`]: JobContext::cancelled
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancel.is_cancelled()
    }

    /// Resolves when a client asks to cancel this job.
    pub async fn cancelled(&self) {
        self.inner.cancel.cancelled().await
    }

    pub(crate) fn cancel_token(&self) -> CancellationToken {
        self.inner.cancel.clone()
    }

    /// The latest progress reported (written or not).
    pub fn latest_progress(&self) -> Option<Progress> {
        self.inner
            .state
            .lock()
            .ok()
            .and_then(|s| s.doc.progress.clone())
    }
}
