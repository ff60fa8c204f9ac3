//! Publishing jobs to RabbitMQ: persistent, mandatory messages on a channel in confirm mode,
//! shared by every request (many confirms in flight at once is what makes publishing fast).
//! A job counts as queued only when the broker confirmed it *and* did not return it as
//! unroutable. The connection is made lazily and remade after a failure, so the facade rides
//! out a broker restart without being restarted itself.
//!
//! Each job type's jobs go to the queue its workers registered (`<queue>.<type>` by default,
//! see `shared::topology`). The facade declares the queues of the types it knows once per
//! connection (when it connects, and when new types appear, as the workers do: so a type whose
//! workers are all down still takes jobs, which wait, and the queues are there for whoever
//! watches them), a queue before its first publish there, and again after a publish came back
//! unroutable (the queue was deleted).
//! Declarations use a short-lived channel of their own: a queue declared elsewhere with other
//! arguments makes the broker close the declaring channel, which must never be the one every
//! publish shares (the queue exists, so publishing goes on).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::ConfirmSelectOptions;
use lapin::types::ShortString;
use lapin::{Channel, Connection};
use shared::amqp::{ConnectError, Nodes};
use shared::configuration::AmqpSettings;
use shared::publish::{publish_confirmed, Outgoing, PublishError};
use shared::topology;
use tokio::sync::Mutex;
use tracing::Instrument;

use crate::io::{Io, IoStopped};
use crate::job_types::JobTypes;

pub mod queue_stats;

/// After a failed connection attempt, requests fail fast for this long instead of each one
/// trying (and waiting) again.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot connect to the broker: {0}")]
    Connect(String),
    #[error("cannot connect to the broker: {0}")]
    Unreachable(#[from] ConnectError),
    #[error("the broker connection failed: {0}")]
    Amqp(#[from] lapin::Error),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Io(#[from] IoStopped),
    /// The broker has no queue of that name.
    #[error("the broker has no queue '{0}'")]
    NoQueue(String),
    /// Within `RECONNECT_BACKOFF` of a failed attempt: why that attempt failed.
    #[error("the broker is unreachable (retrying shortly): {reason}")]
    BackingOff { reason: String, tls: bool },
}

impl BrokerError {
    /// Whether a TLS handshake (a certificate, a host name) is why the broker cannot be
    /// reached: a configuration to fix, not a broker still starting.
    pub fn is_tls(&self) -> bool {
        match self {
            BrokerError::Unreachable(e) => e.is_tls(),
            BrokerError::BackingOff { tls, .. } => *tls,
            _ => false,
        }
    }
}

struct Link {
    // Kept so the connection lives as long as its channel.
    _connection: Connection,
    channel: Channel,
}

/// Where a job is published: its type's queue, and whether that queue takes priorities (its
/// declaration's arguments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueTarget {
    pub name: String,
    pub priorities: bool,
}

#[derive(Default)]
struct Slot {
    link: Option<Arc<Link>>,
    last_failure: Option<Instant>,
    /// Why the last attempt failed, and whether TLS is why (for requests in the back-off).
    last_error: String,
    last_tls: bool,
    /// The queues declared on this connection.
    declared: HashSet<String>,
    /// The catalog generation whose types' queues were declared on this connection.
    declared_generation: Option<u64>,
}

impl Slot {
    fn failed(&mut self, error: String, tls: bool) {
        self.last_failure = Some(Instant::now());
        self.last_error = error;
        self.last_tls = tls;
    }
}

#[derive(Clone)]
pub struct Broker {
    settings: Arc<AmqpSettings>,
    /// The broker node(s) to connect to, in failover order.
    nodes: Nodes,
    slot: Arc<Mutex<Slot>>,
    io: Io,
    /// The job types whose queues to declare (set once the catalog exists).
    types: Arc<std::sync::OnceLock<JobTypes>>,
}

impl Broker {
    pub fn new(settings: AmqpSettings, io: Io) -> Self {
        Broker {
            nodes: Nodes::new(&settings),
            settings: Arc::new(settings),
            slot: Arc::new(Mutex::new(Slot::default())),
            io,
            types: Default::default(),
        }
    }

    /// Declares the queues of `types`' job types from now on (see the module's documentation).
    pub fn follow(&self, types: JobTypes) {
        let _ = self.types.set(types);
    }

    /// Declares the queues of the known types, if the catalog changed since they were.
    async fn declare_known(&self) -> Result<(), BrokerError> {
        let Some(types) = self.types.get() else {
            return Ok(());
        };
        let catalog = types.current();
        if !catalog.loaded || self.slot.lock().await.declared_generation == Some(catalog.generation)
        {
            return Ok(());
        }
        for t in catalog.types() {
            self.declare(&t.queue_target(&self.settings.queue)).await?;
        }
        self.slot.lock().await.declared_generation = Some(catalog.generation);
        Ok(())
    }

    /// A connected channel, connecting (and declaring the queue) if there is none.
    async fn channel(&self) -> Result<Channel, BrokerError> {
        let mut slot = self.slot.lock().await;
        if let Some(link) = slot.link.clone() {
            if link.channel.status().connected() {
                return Ok(link.channel.clone());
            }
            tracing::warn!("broker channel closed; reconnecting");
            slot.link = None;
        }
        if slot
            .last_failure
            .is_some_and(|t| t.elapsed() < RECONNECT_BACKOFF)
        {
            return Err(BrokerError::BackingOff {
                reason: slot.last_error.clone(),
                tls: slot.last_tls,
            });
        }
        // Each node gets the connect timeout; setting up the channel on the node that answered
        // gets it once more.
        let timeout = Duration::from_millis(self.settings.connect_timeout_ms);
        let (connection, node) = match self.nodes.connect().await {
            Ok(connected) => connected,
            Err(e) => {
                // Kept for the requests in the back-off, so they say why as well.
                slot.failed(e.to_string(), e.is_tls());
                return Err(e.into());
            }
        };
        match tokio::time::timeout(timeout, Self::set_up(connection)).await {
            Ok(Ok(link)) => {
                let channel = link.channel.clone();
                slot.link = Some(Arc::new(link));
                slot.last_failure = None;
                slot.declared.clear();
                slot.declared_generation = None;
                tracing::info!(%node, "connected to the broker");
                Ok(channel)
            }
            Ok(Err(e)) => {
                slot.failed(e.to_string(), false);
                Err(BrokerError::Connect(e.to_string()))
            }
            Err(_) => {
                slot.failed("timed out".into(), false);
                Err(BrokerError::Connect("timed out".into()))
            }
        }
    }

    /// A confirm-mode channel on `connection`.
    async fn set_up(connection: Connection) -> Result<Link, lapin::Error> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Link {
            _connection: connection,
            channel,
        })
    }

    /// Declares `queue` on a channel of its own (see the module's documentation), once per
    /// connection.
    async fn declare(&self, queue: &QueueTarget) -> Result<(), BrokerError> {
        let link = {
            let slot = self.slot.lock().await;
            if slot.declared.contains(&queue.name) {
                return Ok(());
            }
            slot.link
                .clone()
                .ok_or_else(|| BrokerError::Connect("the connection was lost".into()))?
        };
        let channel = link._connection.create_channel().await?;
        match topology::declare_work_queue(&channel, &self.settings, &queue.name, queue.priorities)
            .await
        {
            Ok(_) => {
                let _ = channel.close(200, ShortString::from("declared")).await;
            }
            // Refused: declared already with other arguments (by a worker of another
            // configuration); it exists, which is all a publish needs.
            Err(e) if link.channel.status().connected() => {
                tracing::warn!(queue = %queue.name, error = %e, "the queue exists with other arguments; publishing to it as it is");
            }
            Err(e) => return Err(e.into()),
        }
        self.slot.lock().await.declared.insert(queue.name.clone());
        Ok(())
    }

    /// Publishes `payload` to `queue` with `priority` (0-9) and the job's `traceparent`, and
    /// waits for the broker's confirm. While connected (and the queue declared) it publishes
    /// from the calling thread (the channel's own tasks run on the I/O runtime, where it was
    /// made, whoever publishes); connecting, reconnecting and declaring happen on the I/O
    /// runtime (see `io.rs`).
    pub async fn publish(
        &self,
        queue: &QueueTarget,
        message_id: &str,
        payload: &[u8],
        priority: u8,
        traceparent: &str,
    ) -> Result<(), BrokerError> {
        let span = shared::export_span!(
            "amqp publish",
            otel.kind = "producer",
            messaging.system = "rabbitmq",
            messaging.destination.name = %queue.name
        );
        async {
            if let Some(channel) = self.ready_channel(&queue.name).await {
                return self
                    .publish_on(
                        &channel,
                        &queue.name,
                        message_id,
                        payload,
                        priority,
                        traceparent,
                    )
                    .await;
            }
            let (broker, message_id, payload) =
                (self.clone(), message_id.to_owned(), payload.to_vec());
            let (traceparent, queue) = (traceparent.to_owned(), queue.clone());
            self.io
                .run(async move {
                    let channel = broker.channel().await?;
                    broker.declare_known().await?;
                    broker.declare(&queue).await?;
                    broker
                        .publish_on(
                            &channel,
                            &queue.name,
                            &message_id,
                            &payload,
                            priority,
                            &traceparent,
                        )
                        .await
                })
                .await?
        }
        .instrument(span)
        .await
    }

    /// The channel, if it is connected and `queue` declared on it.
    async fn ready_channel(&self, queue: &str) -> Option<Channel> {
        let slot = self.slot.lock().await;
        let link = slot.link.as_ref()?;
        (link.channel.status().connected() && slot.declared.contains(queue))
            .then(|| link.channel.clone())
    }

    async fn publish_on(
        &self,
        channel: &Channel,
        queue: &str,
        message_id: &str,
        payload: &[u8],
        priority: u8,
        traceparent: &str,
    ) -> Result<(), BrokerError> {
        let timeout = Duration::from_millis(self.settings.publish_timeout_ms);
        let outgoing = Outgoing::new(message_id, payload)
            .priority(priority)
            .traceparent(Some(traceparent));
        let started = std::time::Instant::now();
        let result = publish_confirmed(channel, queue, outgoing, timeout).await;
        crate::metrics::PUBLISH_CONFIRM.observe(started.elapsed().as_secs_f64());
        match &result {
            // Unroutable: most likely the queue was deleted. Declare it again before the
            // next publish so the facade heals by itself.
            Err(PublishError::Returned(_)) => {
                self.slot.lock().await.declared.remove(queue);
            }
            // Refused: the queue could not take the message, e.g. a quorum queue whose leader
            // died. Seen on RabbitMQ 3.10 (tests/tests/failover.rs): a channel opened on a
            // surviving node just after the leader's node died was sometimes refused for more
            // than 30 s, while a fresh connection after the first refusal was accepted within
            // a second. So the next publish starts on a fresh connection.
            Err(PublishError::Nacked) => self.slot.lock().await.link = None,
            _ => {}
        }
        Ok(result?)
    }

    /// Whether the broker can be reached now (connecting if need be).
    pub async fn check(&self) -> Result<(), BrokerError> {
        let broker = self.clone();
        self.io
            .run(async move {
                broker.channel().await?;
                broker.declare_known().await
            })
            .await?
    }
}
