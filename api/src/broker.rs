//! Publishing jobs to RabbitMQ: persistent, mandatory messages on a channel in confirm mode,
//! shared by every request (many confirms in flight at once is what makes publishing fast).
//! A job counts as queued only when the broker confirmed it *and* did not return it as
//! unroutable. The connection is made lazily and remade after a failure, so the facade rides
//! out a broker restart without being restarted itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection};
use shared::amqp::{ConnectError, Nodes};
use shared::configuration::AmqpSettings;
use shared::publish::{publish_confirmed, Outgoing, PublishError};
use shared::topology;
use tokio::sync::Mutex;
use tracing::Instrument;

use crate::io::{Io, IoStopped};

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

#[derive(Default)]
struct Slot {
    link: Option<Arc<Link>>,
    last_failure: Option<Instant>,
    /// Why the last attempt failed, and whether TLS is why (for requests in the back-off).
    last_error: String,
    last_tls: bool,
    /// The queue must be declared again before the next publish (it was found missing).
    redeclare: bool,
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
}

impl Broker {
    pub fn new(settings: AmqpSettings, io: Io) -> Self {
        Broker {
            nodes: Nodes::new(&settings),
            settings: Arc::new(settings),
            slot: Arc::new(Mutex::new(Slot::default())),
            io,
        }
    }

    /// A connected channel, connecting (and declaring the queue) if there is none.
    async fn channel(&self) -> Result<Channel, BrokerError> {
        let mut slot = self.slot.lock().await;
        if let Some(link) = slot.link.clone() {
            if link.channel.status().connected() {
                if slot.redeclare {
                    topology::declare_work_queue(&link.channel, &self.settings).await?;
                    slot.redeclare = false;
                }
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
        match tokio::time::timeout(timeout, Self::set_up(connection, &self.settings)).await {
            Ok(Ok(link)) => {
                let channel = link.channel.clone();
                slot.link = Some(Arc::new(link));
                slot.last_failure = None;
                slot.redeclare = false;
                tracing::info!(queue = %self.settings.queue, %node, "connected to the broker");
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

    /// A confirm-mode channel on `connection`, with the topology declared.
    async fn set_up(connection: Connection, settings: &AmqpSettings) -> Result<Link, lapin::Error> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        topology::declare_work_queue(&channel, settings).await?;
        Ok(Link {
            _connection: connection,
            channel,
        })
    }

    /// Publishes `payload` to the work queue with `priority` (0-9) and the job's
    /// `traceparent`, and waits for the broker's confirm. While connected it publishes from
    /// the calling thread (the channel's own tasks run on the I/O runtime, where it was made,
    /// whoever publishes); connecting and reconnecting happen on the I/O runtime (see `io.rs`).
    pub async fn publish(
        &self,
        message_id: &str,
        payload: &[u8],
        priority: u8,
        traceparent: &str,
    ) -> Result<(), BrokerError> {
        let span = shared::export_span!(
            "amqp publish",
            otel.kind = "producer",
            messaging.system = "rabbitmq",
            messaging.destination.name = %self.settings.queue
        );
        async {
            if let Some(channel) = self.ready_channel().await {
                return self
                    .publish_on(&channel, message_id, payload, priority, traceparent)
                    .await;
            }
            let (broker, message_id, payload) =
                (self.clone(), message_id.to_owned(), payload.to_vec());
            let traceparent = traceparent.to_owned();
            self.io
                .run(async move {
                    let channel = broker.channel().await?;
                    broker
                        .publish_on(&channel, &message_id, &payload, priority, &traceparent)
                        .await
                })
                .await?
        }
        .instrument(span)
        .await
    }

    /// The channel, if it is connected and ready for publishing as it is.
    async fn ready_channel(&self) -> Option<Channel> {
        let slot = self.slot.lock().await;
        let link = slot.link.as_ref()?;
        (link.channel.status().connected() && !slot.redeclare).then(|| link.channel.clone())
    }

    async fn publish_on(
        &self,
        channel: &Channel,
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
        let result = publish_confirmed(channel, &self.settings.queue, outgoing, timeout).await;
        crate::metrics::PUBLISH_CONFIRM.observe(started.elapsed().as_secs_f64());
        match &result {
            // Unroutable: most likely the queue was deleted. Declare it again before the
            // next publish so the facade heals by itself.
            Err(PublishError::Returned(_)) => self.slot.lock().await.redeclare = true,
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
            .run(async move { broker.channel().await.map(|_| ()) })
            .await?
    }
}
