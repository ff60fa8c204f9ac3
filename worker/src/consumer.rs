//! The consume loop: one connection and channel, a bounded prefetch, and at most
//! `concurrency` jobs running at once. It reconnects by itself when the broker goes away, and on
//! shutdown stops taking deliveries, lets running jobs finish within the grace period, and
//! closes the channel so that whatever is unfinished goes back to the queue.

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
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::acks::Acks;
use crate::process::{now_ms, Processor};

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
}

pub struct Consumer {
    pub amqp: AmqpSettings,
    pub worker: WorkerSettings,
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

    /// One connection's life: consume until the connection fails or shutdown is asked.
    async fn session(&self, shutdown: &mut watch::Receiver<bool>) -> Result<Ended, ConsumeError> {
        let (connection, node) = self.nodes.connect().await?;
        tracing::info!(%node, "connected to the broker");
        let channel = connection.create_channel().await?;
        topology::declare_work_queue(&channel, &self.amqp).await?;
        // A second channel, in confirm mode, for what the worker publishes itself (retries,
        // dead letters, re-published jobs whose lease lapsed).
        let publisher = connection.create_channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let reaper = tokio::spawn(reap_lapsed_leases(
            self.processor.clone(),
            publisher.clone(),
        ));
        channel
            .basic_qos(self.amqp.prefetch, BasicQosOptions::default())
            .await?;
        let mut deliveries = channel
            .basic_consume(
                ShortString::from(self.amqp.queue.as_str()),
                ShortString::from(self.consumer_tag.as_str()),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        tracing::info!(queue = %self.amqp.queue, prefetch = self.amqp.prefetch, concurrency = self.worker.concurrency, "consuming");

        let acks = Acks::new(channel.clone());
        let slots = Arc::new(Semaphore::new(self.worker.concurrency));
        let mut running = JoinSet::new();
        let ended = loop {
            // Wait for a free slot first, so deliveries beyond `concurrency` stay in the
            // prefetch buffer (where a closing channel hands them back) rather than in memory.
            let permit = tokio::select! {
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break Err(ConsumeError::Closed),
                },
                _ = shutdown.changed() => break Ok(Ended::Shutdown),
            };
            let delivery = tokio::select! {
                next = deliveries.next() => next,
                _ = shutdown.changed() => break Ok(Ended::Shutdown),
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
            // Stop new deliveries, then give running jobs the grace period.
            let _ = channel
                .basic_cancel(
                    ShortString::from(self.consumer_tag.as_str()),
                    BasicCancelOptions::default(),
                )
                .await;
            let grace = Duration::from_secs(self.worker.shutdown_grace_seconds);
            while running.try_join_next().is_some() {}
            tracing::info!(
                running = running.len(),
                grace_s = grace.as_secs(),
                "shutting down: draining running jobs"
            );
            let drained = tokio::time::timeout(grace, async {
                while running.join_next().await.is_some() {}
            })
            .await;
            if drained.is_err() {
                tracing::warn!(
                    unfinished = running.len(),
                    "grace period over; unfinished jobs go back to the queue"
                );
                running.abort_all();
                while running.join_next().await.is_some() {}
                // Unacknowledged deliveries return when the channel closes; leased jobs were
                // acknowledged already, so they are published again.
                self.processor.requeue_leased(&publisher).await;
            }
            // The acks of the last jobs to finish may still wait for their batch.
            if let Err(e) = acks.flush().await {
                tracing::warn!(error = %e, "could not acknowledge the last deliveries");
            }
        } else {
            // The connection is gone: running jobs cannot ack any more, but they still store
            // their outcome (their messages are redelivered, and skipped once the job is
            // terminal). Let them finish in the background rather than hold up reconnecting:
            // a leased job may run for an hour.
            tokio::spawn(async move { while running.join_next().await.is_some() {} });
        }
        // Closing returns every unacknowledged delivery to the queue.
        let _ = connection
            .close(200, ShortString::from("worker stopping"))
            .await;
        ended
    }
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
                    match publish_confirmed(&publisher, &processor.amqp.queue, outgoing, timeout)
                        .await
                    {
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
                (Ok(_), Ok(_)) => {
                    // Finished, expired or without a kept message: nothing to put back.
                    let _ = store.end_lease(&id).await;
                }
                _ => {}
            }
        }
    }
}
