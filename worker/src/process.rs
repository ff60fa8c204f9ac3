//! What happens to one delivery: decode it, find the job, mark it running, run its handler
//! (bounded by the type's maximum run time), store the outcome, and only then acknowledge the
//! message. The rules that keep every accepted job on its way to a terminal state:
//!
//! - the outcome is stored before the ack; if it cannot be stored, the message goes back to the
//!   queue (negative ack with requeue), never silently away;
//! - a job's callback is queued (published to the callbacks queue with a confirm, see
//!   `webhook.rs`) after its outcome is stored and before the ack; if it cannot be, the message
//!   goes back too, and its redelivery, finding the job terminal, queues the callback instead of
//!   running the job again;
//! - a transient failure is retried through a delay queue (published with a confirm before the
//!   ack), up to the type's maximum attempts;
//! - a job of a type this worker does not serve, but that the facades accept, goes to its
//!   type's queue (through a delay queue when that is the queue it came from), untouched, for
//!   a worker that serves it (`handoff.rs`); so does a job the facade accepted against another
//!   version's input schema only, which this worker's schema rejects (`versions.rs`);
//! - a job found in the single work queue of older versions (`amqp.queue`) runs here if this
//!   worker serves its type, or moves to its type's queue (`legacy.rs`);
//! - what cannot be handled at all (undecodable, an unregistered type, a panicking
//!   handler, a job that keeps killing its workers) fails its job, if its id can be read, and
//!   goes to the dead-letter queue;
//! - a job that could hold its delivery past the broker's consumer timeout is acknowledged as
//!   soon as it is recorded as running, and protected by a lease in Redis instead (see
//!   `consumer.rs` for the reaper that re-publishes jobs whose lease lapsed).

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::FutureExt;
use lapin::message::Delivery;
use lapin::Channel;
use shared::configuration::{AmqpSettings, JobSettings, Limits};
use shared::message::MESSAGE_VERSION;
use shared::publish::{publish_confirmed, publish_confirmed_via, traceparent_of, Outgoing};
use shared::topology;
use shared::trace::TraceContext;
use shared::{
    JobError, JobErrorKind, JobId, JobMessage, JobStatus, Progress, ResultInfo, StatusDocument,
    Tenant,
};
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

use crate::acks::Acks;
use crate::cancel::Cancels;
use crate::cancel::Registration;
use crate::context::JobContext;
use crate::handoff::Destination;
use crate::job_store::{FreshStart, JobStore, StoreError, Transition};
use crate::jobs::{JobFailure, JobType, Output, Registry};
use crate::metrics;

/// How long a terminal write is retried (with back-off) before the message is requeued.
const STORE_PATIENCE: Duration = Duration::from_secs(60);
const STORE_BACKOFF_MAX: Duration = Duration::from_secs(5);
const REQUEUE_DELAY: Duration = Duration::from_secs(1);
/// Margin kept below the consumer timeout when deciding whether a job needs a lease.
const CONSUMER_TIMEOUT_MARGIN: f64 = 0.5;

#[derive(Clone)]
pub struct Processor {
    pub store: JobStore,
    pub registry: Registry,
    pub amqp: Arc<AmqpSettings>,
    pub jobs: Arc<JobSettings>,
    pub progress_interval: Duration,
    pub lease: Duration,
    /// Messages of the leased jobs running now (already acknowledged), so that a shutdown
    /// that cannot wait for them can put them back on the queue at once.
    pub leased: Arc<Mutex<HashMap<JobId, LeasedJob>>>,
    /// Cancellation tokens of the jobs running now.
    pub cancels: Cancels,
    /// Queues the callbacks of jobs that reached a terminal state.
    pub webhooks: crate::webhook::Webhooks,
    /// The types other workers serve, for jobs of a type this one does not (`handoff`).
    pub live_types: crate::handoff::LiveTypes,
}

/// A leased job's tenant and queue message.
pub type LeasedJob = (Tenant, Vec<u8>);

/// What is left to tell the broker about a delivery.
#[derive(Debug, PartialEq, Eq)]
enum Settle {
    Ack,
    /// Put it back for another try (the outcome could not be stored).
    Requeue,
    /// To the dead-letter queue: it can never be handled.
    DeadLetter,
    /// Already acknowledged (the job runs under a lease).
    Done,
}

/// How one run ended.
enum Outcome {
    Succeeded(Output),
    Failed(JobFailure),
    /// The handler panicked: the job fails and its message is dead-lettered.
    Panicked(String),
    /// A client canceled the job while it ran.
    Canceled,
}

/// The delivery being handled, as far as `finish` needs it.
#[derive(Clone, Copy)]
struct Incoming<'a> {
    data: &'a [u8],
    priority: u8,
    traceparent: Option<&'a str>,
}

pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

impl Processor {
    /// The same processor for `tenant`'s jobs.
    fn for_tenant(&self, tenant: &Tenant) -> Processor {
        Processor {
            store: self.store.for_tenant(tenant),
            ..self.clone()
        }
    }

    /// Handles one delivery; `publisher` is a confirm-mode channel for retries and dead letters,
    /// `acks` settles deliveries on the consume channel, `received` when the delivery arrived
    /// (its consumer-timeout clock started about then), `slot` one of the `worker.concurrency`
    /// slots, given back as soon as the job's handler returns.
    pub async fn handle(
        &self,
        delivery: Delivery,
        publisher: Channel,
        acks: Acks,
        received: Instant,
        slot: OwnedSemaphorePermit,
    ) {
        let settle = self
            .process(&delivery, &publisher, &acks, received, slot)
            .await;
        let tag = delivery.delivery_tag;
        let result = match settle {
            Settle::Done => return,
            // Sent with the next batch of acks (see `acks`).
            Settle::Ack => return acks.ack(tag),
            Settle::Requeue => {
                // Not at once: what failed (Redis, most likely) needs a moment, and an
                // immediate redelivery would spin.
                tokio::time::sleep(REQUEUE_DELAY).await;
                acks.requeue(tag).await
            }
            // The work queue dead-letters rejected messages into `<queue>.dead`.
            Settle::DeadLetter => acks.reject(tag).await,
        };
        if let Err(e) = result {
            // The channel is gone: the broker redelivers the message, and a job that already
            // reached a terminal state is then acknowledged without running again.
            tracing::warn!(error = %e, ?settle, "could not settle a delivery");
        }
    }

    async fn process(
        &self,
        delivery: &Delivery,
        publisher: &Channel,
        acks: &Acks,
        received: Instant,
        slot: OwnedSemaphorePermit,
    ) -> Settle {
        let message: JobMessage = match serde_json::from_slice(&delivery.data) {
            Ok(m) => m,
            Err(e) => {
                return self
                    .undecodable(&delivery.data, &e.to_string(), publisher)
                    .await
            }
        };
        if message.v != MESSAGE_VERSION {
            let detail = format!("unsupported message version {}", message.v);
            return self.undecodable(&delivery.data, &detail, publisher).await;
        }
        // Every log line of the job carries its id and the trace id the facade started (or
        // continued from the client's `traceparent`).
        // With span export on, the span is a child of the facade's POST span (named by the
        // message's `traceparent`), so the whole job is one trace.
        let parent = traceparent_of(&delivery.properties).and_then(|t| TraceContext::parse(&t));
        // From here on every store and callback write is scoped to the job's tenant.
        let this = self.for_tenant(&message.tenant);
        let span = if shared::telemetry::exporting() {
            let span = tracing::info_span!(
                "job",
                otel.name = %format!("job {}", message.job_type),
                otel.kind = "consumer",
                job_id = %message.id,
                job_type = %message.job_type,
                trace_id = tracing::field::Empty
            );
            let trace = shared::telemetry::continue_trace(&span, parent);
            span.record("trace_id", trace.trace_id());
            span
        } else {
            // Without export the span only labels the job's log lines: no OpenTelemetry
            // fields, and the trace id known before the span is made (recording it later
            // would have the log layer format the fields twice).
            let trace = shared::telemetry::continue_trace(&tracing::Span::none(), parent);
            tracing::info_span!(
                "job",
                job_id = %message.id,
                job_type = %message.job_type,
                trace_id = %trace.trace_id_hex()
            )
        };
        this.run_job(message, delivery, publisher, acks, received, slot)
            .instrument(span)
            .await
    }

    async fn run_job(
        &self,
        message: JobMessage,
        delivery: &Delivery,
        publisher: &Channel,
        acks: &Acks,
        received: Instant,
        slot: OwnedSemaphorePermit,
    ) -> Settle {
        let id = message.id;
        let (spec, running, cancel) = match self.begin(&message, delivery, publisher).await {
            Ok(started) => started,
            Err(settle) => return settle,
        };
        let limits = spec.limits_in(&self.jobs);

        // Could this delivery stay unacknowledged past the broker's consumer timeout? Then
        // take a lease and acknowledge now, or the broker would close the channel and hand the
        // job to another worker while this one still runs it.
        let budget = self.amqp.consumer_timeout_seconds as f64 * CONSUMER_TIMEOUT_MARGIN;
        let leased = received.elapsed().as_secs_f64() + limits.max_run_seconds as f64 > budget;
        if leased {
            let until = now_ms() + self.lease.as_millis() as i64;
            if let Err(e) = self.store.start_lease(&id, &delivery.data, until).await {
                tracing::warn!(error = %e, "cannot take a lease; requeueing");
                return Settle::Requeue;
            }
            if let Ok(mut leased) = self.leased.lock() {
                leased.insert(id, (self.store.tenant().clone(), delivery.data.clone()));
            }
            // A failed ack is logged by the flush; the broker then redelivers the message
            // and the lease stays until this run ends.
            acks.ack(delivery.delivery_tag);
        }
        // Debug: "job finished" (info) is the one line per job at the default level.
        tracing::debug!(attempt = running.attempts, leased, "job started");
        metrics::STARTED.with_label_values(&[spec.name()]).inc();
        metrics::IN_FLIGHT.inc();
        let run_started = Instant::now();

        let traceparent = traceparent_of(&delivery.properties);
        let ctx = JobContext::new(
            running.clone(),
            self.store.clone(),
            self.progress_interval,
            cancel.token(),
        )
        .with_origin(message.tenant.clone(), traceparent.clone());
        let outcome = self
            .run_handler(
                spec.name(),
                limits,
                spec.cancel_grace_period(),
                message,
                ctx.clone(),
                leased,
            )
            .await;
        drop(cancel);
        metrics::IN_FLIGHT.dec();
        // The handler is done: its slot takes the next delivery while this job stores its
        // outcome and is acknowledged. `worker.concurrency` bounds the handlers running at
        // once, not the jobs in their last Redis write: holding the slot through that write
        // made every job's round trip to Redis part of the cap on a worker's throughput. The
        // jobs still finishing stay within the prefetch (they are not acknowledged yet), and a
        // shutdown waits for them like any running job. (A job's document says `running`
        // until that write lands, so for that moment a worker's jobs shown as running can
        // outnumber `concurrency`: by as many as are storing their outcome.)
        drop(slot);
        metrics::RUN_TIME
            .with_label_values(&[spec.name()])
            .observe(run_started.elapsed().as_secs_f64());
        let priority = delivery.properties.priority().unwrap_or(0);

        let settle = self
            .finish(
                running,
                &ctx,
                limits,
                outcome,
                Incoming {
                    data: &delivery.data,
                    priority,
                    traceparent: traceparent.as_deref(),
                },
                publisher,
                leased,
            )
            .await;
        if leased {
            if let Ok(mut leased) = self.leased.lock() {
                leased.remove(&id);
            }
            if settle == Settle::Requeue {
                // The lease stays and lapses: the reaper puts the job back on the queue.
                return Settle::Done;
            }
            if let Err(e) = self.store.end_lease(&id).await {
                tracing::warn!(error = %e, "cannot drop the lease (the reaper will)");
            }
            if settle == Settle::DeadLetter {
                self.publish_dead_letter(&id, spec.name(), &delivery.data, publisher)
                    .await;
            }
            return Settle::Done;
        }
        settle
    }

    /// Records the start of the job (`running`), registering it for cancel requests first;
    /// or says how to settle its delivery when it is not to run.
    async fn begin(
        &self,
        message: &JobMessage,
        delivery: &Delivery,
        publisher: &Channel,
    ) -> Result<(Arc<JobType>, StatusDocument, Registration), Settle> {
        let id = message.id;
        let spec = self.registry.get(&message.job_type).cloned();
        // Checked by the facade against another version's schema only, and this version's
        // rejects it: not to run here (see `versions`).
        let rejected_here = spec
            .as_ref()
            .map(|spec| crate::versions::problems(spec, message))
            .unwrap_or_default();
        // The common case first: the job is still exactly as the facade recorded it (its
        // document is rebuilt from the message), so one script checks that and starts it. Any
        // other state (a redelivery, a retry, a cancel, a facade of another version writing
        // another document) falls through to the general path with the stored document.
        let mut stored = None;
        if let Some(spec) = spec.as_ref().filter(|_| rejected_here.is_empty()) {
            let queued = StatusDocument::queued(id, &message.job_type, message.created_at)
                .with_callback(message.callback_url.as_deref());
            if let Ok(queued_bytes) = serde_json::to_vec(&queued) {
                let running = started(queued);
                let cancel = self.cancels.register(id);
                match self.store.start_fresh(&queued_bytes, &running).await {
                    Ok(FreshStart::Started { cancel_requested }) => {
                        if cancel_requested {
                            cancel.cancel();
                        }
                        return Ok((spec.clone(), running, cancel));
                    }
                    Ok(FreshStart::Missing) => return Err(no_record()),
                    Ok(FreshStart::Other(doc)) => stored = doc,
                    Err(e) => return Err(not_started(&e)),
                }
            }
        }

        let doc = match stored {
            Some(doc) => *doc,
            None => match self.store.load(&id).await {
                Ok(Some(doc)) => doc,
                Ok(None) => return Err(no_record()),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the job; requeueing");
                    return Err(Settle::Requeue);
                }
            },
        };
        if doc.status.is_terminal() {
            tracing::info!(status = %doc.status, "job already finished; skipping redelivery");
            // A job canceled while queued, or one whose worker stored the outcome and died (or
            // could not queue the callback) before the ack: queue its callback now.
            return Err(self.queue_callback(&doc, publisher).await);
        }
        let Some(spec) = spec else {
            // Not a type of this worker: to its type's queue for one that serves it, while
            // the facades accept the type (see `handoff`).
            let (destination, queue) = self.live_types.route(&message.job_type).await;
            let (Some(queue), Some(step)) = (queue, self.hand_off_step(destination)) else {
                let failure = JobFailure::new(
                    JobErrorKind::Undeliverable,
                    format!("no handler for job type '{}'", message.job_type),
                    false,
                );
                return Err(self.give_up(doc, failure, publisher).await);
            };
            // Straight there from another queue (the old single one); through a delay queue
            // when it would come back here at once.
            let delay = (queue == delivery.routing_key.as_str()).then_some(step);
            return Err(self
                .hand_off(message, &queue, delay, delivery, publisher)
                .await);
        };
        if !rejected_here.is_empty() {
            // For a worker of the version the facade checked it against (see `versions`).
            let queue = self.amqp.queue_of(spec.name());
            let destination = crate::versions::destination(&self.live_types, message).await;
            let Some(step) = self.hand_off_step(destination) else {
                let failure = crate::versions::gone(spec.schema_digest(), message, &rejected_here);
                return Err(self.give_up(doc, failure, publisher).await);
            };
            return Err(self
                .hand_off(message, &queue, Some(step), delivery, publisher)
                .await);
        }
        let limits = spec.limits_in(&self.jobs);
        // Found `running`: the last start ended without an outcome (its worker died). Only
        // those count towards giving up here; failed attempts were counted when they failed.
        if doc.status == JobStatus::Running && doc.attempts >= limits.max_attempts {
            // Every earlier start ended without an outcome: the job keeps killing its workers.
            let failure = JobFailure::new(
                JobErrorKind::Crashed,
                format!(
                    "gave up after {} attempts: each one ended without an outcome (the worker stopped)",
                    doc.attempts
                ),
                false,
            );
            return Err(self.give_up(doc, failure, publisher).await);
        }

        let running = started(doc);
        // Registered before the start is recorded: a cancel request published from then on
        // reaches this token; one made earlier is reported by the start itself.
        let cancel = self.cancels.register(id);
        match self
            .store
            .start(&running, &[JobStatus::Queued, JobStatus::Running])
            .await
        {
            Ok(Transition::Done) => Ok((spec, running, cancel)),
            Ok(Transition::DoneCancelRequested) => {
                cancel.cancel();
                Ok((spec, running, cancel))
            }
            Ok(Transition::Refused(state)) => {
                tracing::info!(%state, "job is no longer runnable; skipping");
                Err(Settle::Ack)
            }
            Err(e) => Err(not_started(&e)),
        }
    }

    /// Runs the handler, bounded by the type's maximum run time, renewing the lease meanwhile.
    /// A cancel request stops it at once, or, for a type with a cancel grace, after it had
    /// up to that long to pass the cancel on (it watches `JobContext::cancelled`).
    #[allow(clippy::too_many_arguments)]
    async fn run_handler(
        &self,
        job_type: &str,
        limits: Limits,
        cancel_grace: Duration,
        message: JobMessage,
        ctx: JobContext,
        leased: bool,
    ) -> Outcome {
        let canceled = ctx.cancel_token();
        let Some(run) = self.registry.run(job_type, message.input, ctx) else {
            return Outcome::Failed(JobFailure::permanent("no handler"));
        };
        let limit = Duration::from_secs(limits.max_run_seconds);
        let work = tokio::time::timeout(limit, AssertUnwindSafe(run).catch_unwind());
        tokio::pin!(work);
        let renew_every = self.lease / 3;
        let result = loop {
            tokio::select! {
                result = &mut work => {
                    // A handler with a cancel grace watches the cancel itself and may end (with
                    // an error, say) in the very poll the cancel arrives: this select picks
                    // among ready branches at random, so the cancel is checked here too, or the
                    // job would end failed rather than canceled half the time.
                    if !cancel_grace.is_zero() && canceled.is_cancelled() {
                        return Outcome::Canceled;
                    }
                    break result;
                }
                // A cancel request stops the handler at its next await point (handlers may
                // also watch `JobContext::cancelled` to clean up first).
                _ = canceled.cancelled() => {
                    if !cancel_grace.is_zero() {
                        // Whatever it ends with, the job is canceled; the grace is for
                        // passing the cancel on (dropping the future stops what is left).
                        let _ = tokio::time::timeout(cancel_grace, &mut work).await;
                    }
                    return Outcome::Canceled;
                }
                _ = tokio::time::sleep(renew_every), if leased => {
                    let until = now_ms() + self.lease.as_millis() as i64;
                    if let Err(e) = self.store.renew_lease(&message.id, until).await {
                        tracing::warn!(error = %e, "cannot renew the lease");
                    }
                }
            }
        };
        match result {
            Err(_) => Outcome::Failed(JobFailure::new(
                JobErrorKind::Timeout,
                format!(
                    "the job ran longer than its limit of {} s",
                    limits.max_run_seconds
                ),
                false,
            )),
            Ok(Err(panic)) => Outcome::Panicked(panic_message(&panic)),
            Ok(Ok(Ok(value))) => Outcome::Succeeded(value),
            Ok(Ok(Err(failure))) => Outcome::Failed(failure),
        }
    }

    /// Records how the run ended and says what to do with the delivery.
    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &self,
        running: StatusDocument,
        ctx: &JobContext,
        limits: Limits,
        outcome: Outcome,
        incoming: Incoming<'_>,
        publisher: &Channel,
        leased: bool,
    ) -> Settle {
        let mut doc = running;
        doc.progress = ctx.latest_progress().or(doc.progress);
        let now = Utc::now();
        let (result, settle) = match outcome {
            Outcome::Succeeded(output) => match output.encode() {
                Ok((bytes, media_type)) => {
                    doc.status = JobStatus::Succeeded;
                    doc.error = None;
                    if let Some(p) = doc.progress.as_mut() {
                        p.percent = 100.0;
                    }
                    doc.result = Some(ResultInfo {
                        media_type,
                        size: bytes.len() as u64,
                    });
                    (Some(bytes), Settle::Ack)
                }
                Err(e) => {
                    doc.status = JobStatus::Failed;
                    doc.error = Some(JobFailure::permanent(e).to_error());
                    (None, Settle::Ack)
                }
            },
            Outcome::Failed(failure) if failure.retryable && doc.attempts < limits.max_attempts => {
                return self
                    .schedule_retry(doc, failure, incoming, publisher, leased)
                    .await;
            }
            Outcome::Failed(mut failure) => {
                if failure.retryable {
                    failure.kind = JobErrorKind::RetriesExhausted;
                    failure.message = format!(
                        "failed {} times; last error: {}",
                        doc.attempts, failure.message
                    );
                    failure.retryable = false;
                }
                doc.status = JobStatus::Failed;
                doc.error = Some(failure.to_error());
                (None, Settle::Ack)
            }
            Outcome::Canceled => {
                doc.status = JobStatus::Canceled;
                doc.backend_cancel = ctx.backend_cancel();
                (None, Settle::Ack)
            }
            Outcome::Panicked(message) => {
                tracing::error!(%message, "handler panicked");
                doc.status = JobStatus::Failed;
                doc.error = Some(JobError::new(
                    JobErrorKind::Crashed,
                    format!("the handler panicked: {message}"),
                    false,
                ));
                (None, Settle::DeadLetter)
            }
        };
        doc.finished_at = Some(now);
        match self.store_outcome(&doc, result.as_deref()).await {
            Ok(()) => {
                tracing::info!(status = %doc.status, attempts = doc.attempts, "job finished");
                count_outcome(&doc, settle == Settle::DeadLetter);
                self.store.record_run_time(&doc);
                match self.queue_callback(&doc, publisher).await {
                    Settle::Ack => settle,
                    requeue => requeue,
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot store the outcome; the job will run again");
                Settle::Requeue
            }
        }
    }

    /// How long a job handed off to `destination` waits first (see `handoff`): the first
    /// retry step when a live worker will take it, the longest while it waits for one; `None`
    /// when nowhere will.
    fn hand_off_step(&self, destination: Destination) -> Option<u64> {
        match destination {
            Destination::Served => Some(topology::retry_step(&self.amqp, 2)),
            Destination::Waiting => Some(self.amqp.retry_max_delay_ms),
            Destination::Nowhere => None,
        }
    }

    /// Passes a job this worker does not run to `queue`, after `delay` ms in a delay queue if
    /// given (see `handoff`); its document stays as it is.
    async fn hand_off(
        &self,
        message: &JobMessage,
        queue: &str,
        delay: Option<u64>,
        delivery: &Delivery,
        publisher: &Channel,
    ) -> Settle {
        let timeout = Duration::from_millis(self.amqp.publish_timeout_ms);
        let id = message.id.to_string();
        let traceparent = traceparent_of(&delivery.properties);
        let outgoing = Outgoing::new(&id, &delivery.data)
            .priority(delivery.properties.priority().unwrap_or(0))
            .traceparent(traceparent.as_deref());
        let exchange = delay.map(|step| topology::delay_queue(&self.amqp, step));
        let published = publish_confirmed_via(
            publisher,
            exchange.as_deref().unwrap_or(""),
            queue,
            outgoing,
            timeout,
        )
        .await;
        match published {
            Ok(()) => {
                tracing::debug!(queue, delay_ms = delay, "not for this worker; handed off");
                metrics::HANDED_OFF
                    .with_label_values(&[message.job_type.as_str()])
                    .inc();
                Settle::Ack
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand the job off; requeueing");
                Settle::Requeue
            }
        }
    }

    /// Records the failed attempt (the job is queued again, with its error and when the next
    /// attempt is due) and publishes the message to the delay queue of that step.
    async fn schedule_retry(
        &self,
        mut doc: StatusDocument,
        failure: JobFailure,
        incoming: Incoming<'_>,
        publisher: &Channel,
        leased: bool,
    ) -> Settle {
        let mut step = topology::retry_step(&self.amqp, doc.attempts + 1);
        // What failed asked for a pause of its own (an HTTP backend's Retry-After): at least
        // that long, in the first step that long or longer (capped at the longest step).
        let asked_ms = failure.retry_after.map(|d| d.as_millis() as u64);
        if let Some(asked) = asked_ms {
            step = step.max(topology::step_at_least(&self.amqp, asked));
        }
        // Jitter: wait between 75% and 100% of the step, so retries of jobs that failed
        // together spread out. Messages in one delay queue then differ by at most a quarter
        // of the step, which bounds how long one can wait behind another at the queue's head.
        let jitter = 0.75 + 0.25 * rand_fraction();
        let delay_ms = ((step as f64) * jitter)
            .max(asked_ms.unwrap_or(0).min(step) as f64)
            .max(1.0) as u64;
        doc.status = JobStatus::Queued;
        doc.error = Some(failure.to_error());
        doc.next_attempt_at = Some(Utc::now() + chrono::Duration::milliseconds(delay_ms as i64));
        match self
            .store
            .transition(&doc, &[JobStatus::Running], None)
            .await
        {
            Ok(Transition::Done | Transition::DoneCancelRequested) => {}
            Ok(Transition::Refused(state)) => {
                tracing::info!(%state, "job changed state while running; no retry");
                return Settle::Ack;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot record the failed attempt; requeueing");
                return Settle::Requeue;
            }
        }
        // Through the step's delay queue back to the type's queue (also for a job that came
        // from the old single queue).
        let delay_queue = topology::delay_queue(&self.amqp, step);
        let queue = self.amqp.queue_of(&doc.job_type);
        let timeout = Duration::from_millis(self.amqp.publish_timeout_ms);
        let id = doc.id.to_string();
        let outgoing = Outgoing::new(&id, incoming.data)
            .expiration_ms(delay_ms)
            .priority(incoming.priority)
            .traceparent(incoming.traceparent);
        match publish_confirmed_via(publisher, &delay_queue, &queue, outgoing, timeout).await {
            Ok(()) => {
                tracing::info!(attempt = doc.attempts, delay_ms, error = %failure, "attempt failed; retry scheduled");
                metrics::RETRIED
                    .with_label_values(&[doc.job_type.as_str()])
                    .inc();
                Settle::Ack
            }
            Err(e) => {
                // Without the delayed copy, the original must stay: retry it now instead.
                // (A leased job's lease then lapses and the reaper re-publishes it.)
                tracing::warn!(error = %e, leased, "cannot schedule the retry; requeueing now");
                Settle::Requeue
            }
        }
    }

    /// Writes the terminal state, retrying while Redis is unavailable (up to a bound).
    async fn store_outcome(
        &self,
        doc: &StatusDocument,
        result: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(100);
        loop {
            match self
                .store
                .transition(doc, &[JobStatus::Running], result)
                .await
            {
                Ok(Transition::Done | Transition::DoneCancelRequested) => return Ok(()),
                Ok(Transition::Refused(state)) => {
                    // Another writer finished (or canceled) it first: its state stands.
                    tracing::info!(%state, "job changed state while running; outcome discarded");
                    return Ok(());
                }
                Err(e) if started.elapsed() >= STORE_PATIENCE => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "storing the outcome failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(STORE_BACKOFF_MAX);
                }
            }
        }
    }

    /// Queues the pending callback of a finished job (see `webhook.rs`): `Ack` once the broker
    /// confirmed it (or there is none), `Requeue` when it could not be queued (the message
    /// comes back, and its redelivery queues it).
    async fn queue_callback(&self, doc: &StatusDocument, publisher: &Channel) -> Settle {
        match self
            .webhooks
            .enqueue(publisher, self.store.tenant(), doc)
            .await
        {
            Ok(()) => Settle::Ack,
            Err(e) => {
                tracing::warn!(error = %e, "cannot queue the job's callback; requeueing its message");
                Settle::Requeue
            }
        }
    }

    /// Fails a job that cannot be run here at all, and dead-letters its message (once its
    /// callback, if any, is queued).
    async fn give_up(
        &self,
        mut doc: StatusDocument,
        failure: JobFailure,
        publisher: &Channel,
    ) -> Settle {
        tracing::error!(error = %failure, "job cannot be run; dead-lettering it");
        doc.status = JobStatus::Failed;
        doc.finished_at = Some(Utc::now());
        doc.error = Some(failure.to_error());
        let from = [JobStatus::Queued, JobStatus::Running];
        match self.store.transition(&doc, &from, None).await {
            Ok(_) => {
                count_outcome(&doc, true);
                match self.queue_callback(&doc, publisher).await {
                    Settle::Ack => Settle::DeadLetter,
                    requeue => requeue,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot mark the job failed; requeueing");
                Settle::Requeue
            }
        }
    }

    /// A message that is not a job message. If an id can be read from it, that job fails with
    /// a clear error; the message goes to the dead-letter queue.
    async fn undecodable(&self, data: &[u8], detail: &str, publisher: &Channel) -> Settle {
        tracing::error!(%detail, "undecodable message; dead-lettering it");
        let value = serde_json::from_slice::<serde_json::Value>(data).ok();
        let id = value
            .as_ref()
            .and_then(|v| v.get("id")?.as_str()?.parse::<JobId>().ok());
        let tenant = value
            .as_ref()
            .and_then(|v| v.get("tenant")?.as_str()?.parse::<Tenant>().ok())
            .unwrap_or_default();
        let this = self.for_tenant(&tenant);
        if let Some(id) = id {
            if let Ok(Some(doc)) = this.store.load(&id).await {
                if !doc.status.is_terminal() {
                    let failure = JobFailure::new(
                        JobErrorKind::Undeliverable,
                        format!("the job's message could not be read: {detail}"),
                        false,
                    );
                    return this.give_up(doc, failure, publisher).await;
                }
                // Failed by an earlier delivery of this message, whose callback could not be
                // queued then.
                if this.queue_callback(&doc, publisher).await == Settle::Requeue {
                    return Settle::Requeue;
                }
            }
        }
        metrics::DEAD_LETTERED.with_label_values(&["unknown"]).inc();
        Settle::DeadLetter
    }

    /// Dead-letters a message that was already acknowledged (a leased job): a copy goes to
    /// the dead-letter queue directly.
    async fn publish_dead_letter(
        &self,
        id: &JobId,
        job_type: &str,
        raw: &[u8],
        publisher: &Channel,
    ) {
        let queue = topology::dead_letter_queue(&self.amqp.queue_of(job_type));
        let timeout = Duration::from_millis(self.amqp.publish_timeout_ms);
        if let Err(e) = publish_confirmed(
            publisher,
            &queue,
            Outgoing::new(&id.to_string(), raw),
            timeout,
        )
        .await
        {
            tracing::warn!(error = %e, "cannot dead-letter the message (the job is failed)");
        }
    }
}

impl Processor {
    /// Puts the leased jobs still running back on the queue (at shutdown, once their tasks
    /// were stopped), so they need not wait for their lease to lapse.
    pub async fn requeue_leased(&self, publisher: &Channel) {
        let jobs: Vec<(JobId, (Tenant, Vec<u8>))> = match self.leased.lock() {
            Ok(mut leased) => leased.drain().collect(),
            Err(_) => return,
        };
        let timeout = Duration::from_millis(self.amqp.publish_timeout_ms);
        for (id, (tenant, message)) in jobs {
            let key = id.to_string();
            let outgoing = Outgoing::new(&key, &message);
            let queue = self.queue_for_message(&message).await;
            match publish_confirmed(publisher, &queue, outgoing, timeout).await {
                Ok(()) => {
                    tracing::info!(job_id = %id, "unfinished leased job put back on the queue");
                    if let Err(e) = self.store.for_tenant(&tenant).end_lease(&id).await {
                        tracing::warn!(job_id = %id, error = %e, "cannot drop the lease");
                    }
                }
                // The lease stays and lapses: another worker's reaper puts it back.
                Err(e) => tracing::warn!(job_id = %id, error = %e, "cannot put a leased job back"),
            }
        }
    }

    /// The work queue a kept job message (a leased job's) goes back to: its type's, as this
    /// worker names it if it serves the type, else as the registry does.
    pub async fn queue_for_message(&self, message: &[u8]) -> String {
        #[derive(serde::Deserialize)]
        struct TypeOnly {
            #[serde(rename = "type")]
            job_type: String,
        }
        let Ok(TypeOnly { job_type }) = serde_json::from_slice(message) else {
            // Not a job message (it was one when the lease was taken): the type-less queue
            // of old, where a worker dead-letters it.
            return self.amqp.queue.clone();
        };
        if self.registry.contains(&job_type) {
            return self.amqp.queue_of(&job_type);
        }
        match self.live_types.queue_of(&job_type).await {
            Some(queue) => queue,
            None => self.amqp.queue_of(&job_type),
        }
    }
}

/// A message whose job has no record (expired, or taken back by the facade after a failed
/// publish): dropped.
fn no_record() -> Settle {
    tracing::warn!("no record for this job; dropping its message");
    Settle::Ack
}

/// The start could not be recorded (Redis): the message goes back for another try.
fn not_started(e: &StoreError) -> Settle {
    tracing::warn!(error = %e, "cannot mark the job running; requeueing");
    Settle::Requeue
}

/// `doc` as a new attempt that starts now.
fn started(mut doc: StatusDocument) -> StatusDocument {
    doc.status = JobStatus::Running;
    doc.attempts += 1;
    doc.started_at = Some(Utc::now());
    doc.next_attempt_at = None;
    doc.progress = Some(Progress {
        percent: 0.0,
        message: String::new(),
    });
    doc
}

/// Counts a stored terminal outcome.
fn count_outcome(doc: &StatusDocument, dead_lettered: bool) {
    let job_type = doc.job_type.as_str();
    match doc.status {
        JobStatus::Succeeded => metrics::SUCCEEDED.with_label_values(&[job_type]).inc(),
        JobStatus::Canceled => metrics::CANCELED.with_label_values(&[job_type]).inc(),
        JobStatus::Failed => {
            let kind = doc
                .error
                .as_ref()
                .map(|e| e.kind.slug())
                .unwrap_or("unknown");
            metrics::FAILED.with_label_values(&[job_type, kind]).inc()
        }
        JobStatus::Queued | JobStatus::Running => {}
    }
    if dead_lettered {
        metrics::DEAD_LETTERED.with_label_values(&[job_type]).inc();
    }
}

/// A number in [0, 1) that differs between calls (jitter needs no cryptographic quality).
fn rand_fraction() -> f64 {
    let bits = uuid::Uuid::new_v4().as_u128() as u64;
    (bits >> 11) as f64 / (1u64 << 53) as f64
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
