//! The consume loop: one connection, a channel of jobs with a bounded prefetch and at most
//! `concurrency` jobs running at once, and a channel of callbacks (`webhook.rs`) with at most
//! `webhooks.concurrency` deliveries at once. It reconnects by itself when the broker goes
//! away.
//!
//! On shutdown it stops taking both, and drains within one budget,
//! `worker.shutdown_grace_seconds` from the signal: first the running jobs (which still store
//! their outcome and queue their callbacks), then the webhook deliveries in progress. What is
//! unfinished at the deadline is stopped and goes back to its queue when the connection closes
//! (leased jobs are published again), for any worker to take: nothing is lost, and nothing is
//! failed by the shutdown. Closing after the deadline is bounded too ([`CLOSING`]).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::{FieldTable, ShortString};
use shared::amqp::{ConnectError, Nodes};
use shared::configuration::{AmqpSettings, WorkerSettings};
use shared::publish::{publish_confirmed, Outgoing};
use shared::topology;
use shared::webhooks::WebhookSettings;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::acks::Acks;
use crate::process::{now_ms, Processor};

/// The most a shutdown takes after its grace: putting back leased jobs, the last acks, and
/// closing the connection. (Leaving the fleet registry then takes at most 2 s, see `fleet.rs`,
/// and `main.rs` gives blocking handler threads half a second more.)
pub const CLOSING: Duration = Duration::from_secs(3);

const RECONNECT_MIN: Duration = Duration::from_millis(250);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("the broker closed the consumer")]
    Closed,
    #[error("the broker closed the callbacks consumer")]
    CallbacksClosed,
}

pub struct Consumer {
    pub amqp: AmqpSettings,
    pub worker: WorkerSettings,
    pub webhooks: WebhookSettings,
    pub processor: Processor,
    pub consumer_tag: String,
    /// The broker node(s), in failover order (see `shared::amqp`).
    pub nodes: Nodes,
}

enum Ended {
    Shutdown,
}

impl Consumer {
    /// Consumes until `shutdown` turns true, reconnecting as needed.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = RECONNECT_MIN;
        loop {
            if *shutdown.borrow() {
                return;
            }
            match self.session(&mut shutdown).await {
                Ok(Ended::Shutdown) => return,
                // A TLS failure (a certificate or host name to fix) will not heal by itself.
                Err(ConsumeError::Connect(e)) if e.is_tls() => {
                    tracing::error!(
                        retry_in_ms = backoff.as_millis() as u64,
                        "rabbitmq: {e}; retrying"
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "broker session ended; reconnecting");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(RECONNECT_MAX);
        }
    }

    /// Connects and sets up both channels and consumers.
    async fn connect(&self) -> Result<Session, ConsumeError> {
        let (connection, node) = self.nodes.connect().await?;
        tracing::info!(%node, "connected to the broker");
        let channel = connection.create_channel().await?;
        // The shared delay queues, then each of this worker's types' queues (see
        // `shared::topology`); the types' queues were checked when the worker started.
        topology::declare_delay_queues(&channel, &self.amqp).await?;
        let queues = self
            .processor
            .registry
            .queues(&self.amqp)
            .unwrap_or_default();
        for (queue, priorities) in &queues {
            topology::declare_work_queue(&channel, &self.amqp, queue, *priorities).await?;
        }
        // A second channel, in confirm mode, for what the worker publishes itself (retries,
        // dead letters, re-published jobs whose lease lapsed, callbacks).
        let publisher = connection.create_channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        // A third for the callbacks: its prefetch bounds the deliveries in progress.
        let callbacks = connection.create_channel().await?;
        topology::declare_callback_queues(&callbacks, &self.amqp, &self.webhooks).await?;
        callbacks
            .basic_qos(self.webhooks.concurrency, BasicQosOptions::default())
            .await?;
        let callback_deliveries = callbacks
            .basic_consume(
                ShortString::from(topology::callback_queue(&self.amqp.queue)),
                ShortString::from(self.callback_tag()),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        // Per consumer, so per queue: quorum queues refuse a prefetch shared by a channel's
        // consumers (global QoS).
        channel
            .basic_qos(self.amqp.prefetch, BasicQosOptions::default())
            .await?;
        let mut consumed: Vec<String> = queues.into_keys().collect();
        // The single work queue of older versions, while it exists (see `legacy`).
        if let Some(waiting) = crate::legacy::old_queue(&connection, &self.amqp.queue).await? {
            tracing::info!(queue = %self.amqp.queue, waiting, "the single work queue of an older version is there: consuming it too (its jobs run here or move to their types' queues)");
            consumed.push(self.amqp.queue.clone());
        }
        let mut consumers = Vec::with_capacity(consumed.len());
        let mut tags = Vec::with_capacity(consumed.len());
        for queue in &consumed {
            let tag = format!("{}:{queue}", self.consumer_tag);
            let consumer = channel
                .basic_consume(
                    ShortString::from(queue.as_str()),
                    ShortString::from(tag.as_str()),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            consumers.push(consumer);
            tags.push(tag);
        }
        Ok(Session {
            connection,
            channel,
            publisher,
            deliveries: futures_util::stream::select_all(consumers),
            tags,
            queues: consumed,
            callbacks,
            callback_deliveries,
        })
    }

    fn callback_tag(&self) -> String {
        format!("{}.callbacks", self.consumer_tag)
    }

    /// One connection's life: consume until the connection fails or shutdown is asked.
    async fn session(&self, shutdown: &mut watch::Receiver<bool>) -> Result<Ended, ConsumeError> {
        // A shutdown while connecting (each node may take `amqp.connect_timeout_ms`) ends the
        // wait at once, so that the grace counts from the signal.
        let Session {
            connection,
            channel,
            publisher,
            mut deliveries,
            tags,
            queues,
            callbacks,
            callback_deliveries,
        } = tokio::select! {
            session = self.connect() => session?,
            _ = shutdown.changed() => return Ok(Ended::Shutdown),
        };
        let reaper = tokio::spawn(reap_lapsed_leases(
            self.processor.clone(),
            publisher.clone(),
        ));
        let mut delivering = tokio::spawn(self.processor.webhooks.clone().consume(
            callback_deliveries,
            publisher.clone(),
            shutdown.clone(),
        ));
        tracing::info!(queues = %queues.join(","), prefetch = self.amqp.prefetch, concurrency = self.worker.concurrency, callback_concurrency = self.webhooks.concurrency, "consuming");

        let acks = Acks::new(channel.clone());
        let slots = Arc::new(Semaphore::new(self.worker.concurrency));
        let mut running = JoinSet::new();
        // The callbacks consumer ends on its own only when the broker cancels it (its queue was
        // deleted, say) or the connection fails: then this session ends too, and the next one
        // declares the queues again.
        let mut callbacks_ended = None;
        let ended = loop {
            // Wait for a free slot first, so deliveries beyond `concurrency` stay in the
            // prefetch buffer (where a closing channel hands them back) rather than in memory.
            let permit = tokio::select! {
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break Err(ConsumeError::Closed),
                },
                _ = shutdown.changed() => break Ok(Ended::Shutdown),
                set = &mut delivering => {
                    callbacks_ended = Some(set);
                    break callbacks_closed(shutdown);
                }
            };
            let delivery = tokio::select! {
                next = deliveries.next() => next,
                _ = shutdown.changed() => break Ok(Ended::Shutdown),
                set = &mut delivering => {
                    callbacks_ended = Some(set);
                    break callbacks_closed(shutdown);
                }
            };
            match delivery {
                Some(Ok(delivery)) => {
                    let processor = self.processor.clone();
                    let (publisher, acks) = (publisher.clone(), acks.clone());
                    let received = Instant::now().into_std();
                    acks.received(delivery.delivery_tag);
                    // The job gives its slot back when its handler returns (see `run_job`).
                    running.spawn(async move {
                        processor
                            .handle(delivery, publisher, acks, received, permit)
                            .await;
                    });
                }
                Some(Err(e)) => break Err(e.into()),
                None => break Err(ConsumeError::Closed),
            }
            // Reap finished tasks so the set does not grow.
            while running.try_join_next().is_some() {}
        };

        reaper.abort();
        if matches!(ended, Ok(Ended::Shutdown)) {
            // One budget for the whole drain, from now (the signal).
            let deadline = Instant::now() + Duration::from_secs(self.worker.shutdown_grace_seconds);
            // Stop new deliveries of both kinds: what is still in the prefetch buffers goes
            // back to the queues when the connection closes.
            // (Within the budget: a broker that does not answer must not hold up the drain.)
            let cancels = async {
                for tag in &tags {
                    let _ = channel
                        .basic_cancel(
                            ShortString::from(tag.as_str()),
                            BasicCancelOptions::default(),
                        )
                        .await;
                }
                let _ = callbacks
                    .basic_cancel(
                        ShortString::from(self.callback_tag()),
                        BasicCancelOptions::default(),
                    )
                    .await;
            };
            let _ = tokio::time::timeout_at(deadline, cancels).await;
            while running.try_join_next().is_some() {}
            tracing::info!(
                running = running.len(),
                grace_s = self.worker.shutdown_grace_seconds,
                "shutting down: draining running jobs, then webhook deliveries"
            );
            // Jobs first: those that end now queue their callbacks (for any worker).
            drain_until(
                &mut running,
                deadline,
                "grace period over; unfinished jobs go back to the queue",
            )
            .await;
            // Then the deliveries in progress, within what is left.
            let mut in_progress = match callbacks_ended.take() {
                Some(set) => set,
                None => delivering.await,
            }
            .unwrap_or_default();
            drain_until(
                &mut in_progress,
                deadline,
                "grace period over; unfinished webhook deliveries go back to the callbacks queue",
            )
            .await;
            let closing = async {
                // Leased jobs were acknowledged already, so they are published again;
                // unacknowledged deliveries return when the connection closes.
                self.processor.requeue_leased(&publisher).await;
                // The acks of the last jobs to finish may still wait for their batch.
                if let Err(e) = acks.flush().await {
                    tracing::warn!(error = %e, "could not acknowledge the last deliveries");
                }
                let _ = connection
                    .close(200, ShortString::from("worker stopping"))
                    .await;
            };
            if tokio::time::timeout(CLOSING, closing).await.is_err() {
                // Dropped, the connection goes away; the broker requeues what it held.
                tracing::warn!("closing the broker connection took too long; leaving");
            }
            return ended;
        }
        // The connection is gone: running jobs cannot ack any more, but they still store
        // their outcome (their messages are redelivered, and skipped once the job is
        // terminal). Let them finish in the background rather than hold up reconnecting: a
        // leased job may run for an hour. Deliveries in progress do the same (the callbacks
        // consumer ended with the connection).
        tokio::spawn(async move { while running.join_next().await.is_some() {} });
        tokio::spawn(async move {
            let set = match callbacks_ended {
                Some(set) => set,
                None => delivering.await,
            };
            if let Ok(mut in_progress) = set {
                while in_progress.join_next().await.is_some() {}
            }
        });
        let _ = connection
            .close(200, ShortString::from("worker stopping"))
            .await;
        ended
    }
}

/// Waits for the tasks of `set` until `deadline`, then stops those left (saying so).
async fn drain_until(set: &mut JoinSet<()>, deadline: Instant, message: &str) {
    let drained =
        tokio::time::timeout_at(deadline, async { while set.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(unfinished = set.len(), "{message}");
        set.abort_all();
        while set.join_next().await.is_some() {}
    }
}

/// A connection with its channels and consumers.
struct Session {
    connection: lapin::Connection,
    channel: lapin::Channel,
    publisher: lapin::Channel,
    /// The deliveries of every queue consumed, as one stream.
    deliveries: futures_util::stream::SelectAll<lapin::Consumer>,
    /// Consumer tags, one per queue.
    tags: Vec<String>,
    /// The queues consumed.
    queues: Vec<String>,
    callbacks: lapin::Channel,
    callback_deliveries: lapin::Consumer,
}

/// Puts back on the queue every job whose lease lapsed (its worker died while running it under
/// a lease). Every worker runs this; claiming a lease in Redis is atomic, so one job is
/// re-published by one worker.
async fn reap_lapsed_leases(processor: Processor, publisher: lapin::Channel) {
    let store = &processor.store;
    let lease_ms = processor.lease.as_millis() as i64;
    let period = (processor.lease / 2).max(Duration::from_millis(500));
    let timeout = Duration::from_millis(processor.amqp.publish_timeout_ms);
    loop {
        tokio::time::sleep(period).await;
        let now = now_ms();
        let ids = match store.claim_lapsed(now, now + lease_ms, 100).await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::debug!(error = %e, "cannot check leases");
                continue;
            }
        };
        for member in ids {
            let (id, store) = (member.id, store.for_tenant(&member.tenant));
            let doc = store.load(&id).await;
            let message = store.kept_message(&id).await;
            match (doc, message) {
                (Ok(Some(doc)), Ok(Some(message))) if !doc.status.is_terminal() => {
                    let key = id.to_string();
                    let outgoing = Outgoing::new(&key, &message);
                    let queue = processor.queue_for_message(&message).await;
                    match publish_confirmed(&publisher, &queue, outgoing, timeout).await {
                        Ok(()) => {
                            tracing::warn!(job_id = %id, "lease lapsed (its worker died?); job put back on the queue");
                            if let Err(e) = store.end_lease(&id).await {
                                tracing::warn!(job_id = %id, error = %e, "cannot drop the lapsed lease");
                            }
                        }
                        Err(e) => {
                            tracing::warn!(job_id = %id, error = %e, "cannot re-publish a lapsed job; will retry")
                        }
                    }
                }
                (Ok(Some(doc)), Ok(_)) if doc.status.is_terminal() => {
                    // Finished: its worker stored the outcome, then died (or could not queue
                    // the callback) before dropping the lease. Queue the callback (if it is
                    // pending; a copy is harmless) before the lease goes.
                    match processor
                        .webhooks
                        .enqueue(&publisher, &member.tenant, &doc)
                        .await
                    {
                        Ok(()) => {
                            let _ = store.end_lease(&id).await;
                        }
                        Err(e) => {
                            tracing::warn!(job_id = %id, error = %e, "cannot queue the callback of a finished leased job; will retry")
                        }
                    }
                }
                (Ok(_), Ok(_)) => {
                    // Expired or without a kept message: nothing to put back.
                    let _ = store.end_lease(&id).await;
                }
                _ => {}
            }
        }
    }
}

/// Why the session ends when the callbacks consumer did: on a shutdown the consumer stops by
/// itself (it watches the same signal) and may be seen before the signal is, which must still
/// drain like a shutdown; otherwise the broker cancelled it or the connection failed.
fn callbacks_closed(shutdown: &watch::Receiver<bool>) -> Result<Ended, ConsumeError> {
    if *shutdown.borrow() {
        Ok(Ended::Shutdown)
    } else {
        Err(ConsumeError::CallbacksClosed)
    }
}
