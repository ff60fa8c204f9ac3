//! What happens to one delivery: decode it, find the job, mark it running, run its handler,
//! store the outcome, and only then acknowledge the message. If the outcome cannot be stored,
//! the message goes back to the queue (negative ack with requeue), never silently away.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use chrono::Utc;
use futures_util::FutureExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use shared::message::MESSAGE_VERSION;
use shared::{JobError, JobErrorKind, JobId, JobMessage, JobStatus, Progress, StatusDocument};
use tracing::Instrument;

use crate::context::JobContext;
use crate::job_store::{JobStore, StoreError, Transition};
use crate::jobs::{JobFailure, Registry};

/// How often, and how patiently, a terminal write is retried before the message is requeued.
const STORE_ATTEMPTS: u32 = 6;
const STORE_BACKOFF: Duration = Duration::from_millis(200);
const REQUEUE_DELAY: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Processor {
    pub store: JobStore,
    pub registry: Registry,
    pub progress_interval: Duration,
}

/// What to tell the broker about a delivery.
#[derive(Debug, PartialEq, Eq)]
enum Settle {
    Ack,
    /// Put it back for another try (the outcome could not be stored).
    Requeue,
    /// Drop it: it can never be handled.
    Reject,
}

impl Processor {
    pub async fn handle(&self, delivery: Delivery) {
        let settle = self.process(&delivery.data).await;
        let result = match settle {
            Settle::Ack => delivery.ack(BasicAckOptions::default()).await,
            Settle::Requeue => {
                // Not at once: what failed (Redis, most likely) needs a moment, and an
                // immediate redelivery would spin.
                tokio::time::sleep(REQUEUE_DELAY).await;
                delivery
                    .nack(BasicNackOptions {
                        multiple: false,
                        requeue: true,
                    })
                    .await
            }
            Settle::Reject => delivery.reject(BasicRejectOptions { requeue: false }).await,
        };
        if let Err(e) = result {
            // The channel is gone: the broker redelivers the message, and a job that already
            // reached a terminal state is then acknowledged without running again.
            tracing::warn!(error = %e, ?settle, "could not settle a delivery");
        }
    }

    async fn process(&self, data: &[u8]) -> Settle {
        let message: JobMessage = match serde_json::from_slice(data) {
            Ok(m) => m,
            Err(e) => return self.undecodable(data, &e.to_string()).await,
        };
        if message.v != MESSAGE_VERSION {
            let detail = format!("unsupported message version {}", message.v);
            return self.undecodable(data, &detail).await;
        }
        let span = tracing::info_span!("job", job_id = %message.id, job_type = %message.job_type);
        self.run_job(message).instrument(span).await
    }

    async fn run_job(&self, message: JobMessage) -> Settle {
        let id = message.id;
        let doc = match self.store.load(&id).await {
            Ok(Some(doc)) => doc,
            Ok(None) => {
                // Expired, or taken back by the facade after a failed publish.
                tracing::warn!("no record for this job; dropping its message");
                return Settle::Ack;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the job; requeueing");
                return Settle::Requeue;
            }
        };
        if doc.status.is_terminal() {
            tracing::info!(status = %doc.status, "job already finished; skipping redelivery");
            return Settle::Ack;
        }

        let mut running = doc;
        running.status = JobStatus::Running;
        running.attempts += 1;
        running.started_at = Some(Utc::now());
        running.progress = Some(Progress {
            percent: 0.0,
            message: String::new(),
        });
        match self
            .store
            .transition(&running, &[JobStatus::Queued, JobStatus::Running], None)
            .await
        {
            Ok(Transition::Done) => {}
            Ok(Transition::Refused(state)) => {
                tracing::info!(%state, "job is no longer runnable; skipping");
                return Settle::Ack;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot mark the job running; requeueing");
                return Settle::Requeue;
            }
        }
        tracing::info!(attempt = running.attempts, "job started");

        let ctx = JobContext::new(running.clone(), self.store.clone(), self.progress_interval);
        let outcome = match self
            .registry
            .run(&message.job_type, message.input, ctx.clone())
        {
            None => Err(JobFailure {
                kind: JobErrorKind::Undeliverable,
                message: format!(
                    "this worker has no handler for job type '{}'",
                    message.job_type
                ),
                retryable: false,
            }),
            // A panicking handler fails its job, not the worker.
            Some(run) => match AssertUnwindSafe(run).catch_unwind().await {
                Ok(outcome) => outcome,
                Err(panic) => Err(JobFailure {
                    kind: JobErrorKind::Crashed,
                    message: format!("the handler panicked: {}", panic_message(&panic)),
                    retryable: false,
                }),
            },
        };

        let mut finished = running;
        finished.finished_at = Some(Utc::now());
        finished.progress = ctx.latest_progress().or(finished.progress);
        let result = match outcome {
            Ok(value) => {
                finished.status = JobStatus::Succeeded;
                if let Some(p) = finished.progress.as_mut() {
                    p.percent = 100.0;
                }
                match serde_json::to_vec(&value) {
                    Ok(bytes) => Some(bytes),
                    Err(e) => {
                        finished.status = JobStatus::Failed;
                        finished.error = Some(JobFailure::permanent(e.to_string()).to_error());
                        None
                    }
                }
            }
            Err(failure) => {
                finished.status = JobStatus::Failed;
                finished.error = Some(failure.to_error());
                None
            }
        };
        match self.store_outcome(&finished, result.as_deref()).await {
            Ok(()) => {
                tracing::info!(status = %finished.status, "job finished");
                Settle::Ack
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot store the outcome; requeueing the job");
                Settle::Requeue
            }
        }
    }

    /// Writes the terminal state, retrying a passing Redis failure a few times.
    async fn store_outcome(
        &self,
        doc: &StatusDocument,
        result: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let mut attempt = 0;
        loop {
            match self
                .store
                .transition(doc, &[JobStatus::Running], result)
                .await
            {
                Ok(Transition::Done) => return Ok(()),
                Ok(Transition::Refused(state)) => {
                    // Another writer finished (or canceled) it first: its state stands.
                    tracing::info!(%state, "job changed state while running; outcome discarded");
                    return Ok(());
                }
                Err(e) if attempt + 1 >= STORE_ATTEMPTS => return Err(e),
                Err(e) => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "storing the outcome failed; retrying");
                    tokio::time::sleep(STORE_BACKOFF * 2u32.pow(attempt - 1)).await;
                }
            }
        }
    }

    /// A message that is not a job message. If an id can be read from it, that job fails with
    /// a clear error; the message itself is dropped.
    async fn undecodable(&self, data: &[u8], detail: &str) -> Settle {
        tracing::error!(%detail, "undecodable message; dropping it");
        let id = serde_json::from_slice::<serde_json::Value>(data)
            .ok()
            .and_then(|v| v.get("id")?.as_str()?.parse::<JobId>().ok());
        if let Some(id) = id {
            if let Ok(Some(mut doc)) = self.store.load(&id).await {
                doc.status = JobStatus::Failed;
                doc.finished_at = Some(Utc::now());
                doc.error = Some(JobError::new(
                    JobErrorKind::Undeliverable,
                    format!("the job's message could not be read: {detail}"),
                    false,
                ));
                let from = [JobStatus::Queued, JobStatus::Running];
                if let Err(e) = self.store.transition(&doc, &from, None).await {
                    tracing::warn!(job_id = %id, error = %e, "cannot mark the job failed");
                    return Settle::Requeue;
                }
            }
        }
        Settle::Reject
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}
