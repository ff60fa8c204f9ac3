//! How many messages wait in a work queue and how many consumers take from it, for the
//! `Retry-After` estimate. Asked with a passive declare on a short-lived channel of its own: a
//! passive declare of a missing queue closes its channel, which must never be the channel the
//! publishes share.

use lapin::options::QueueDeclareOptions;
use lapin::types::{FieldTable, ShortString};

use super::{Broker, BrokerError};

/// A work queue as the broker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    /// Messages ready for delivery (not counting those delivered and not yet acknowledged).
    pub messages: u32,
    pub consumers: u32,
}

impl Broker {
    /// The depth and consumer count of the work queue `queue` (connecting first if need be).
    pub async fn queue_stats(&self, queue: &str) -> Result<QueueStats, BrokerError> {
        let (broker, queue) = (self.clone(), queue.to_owned());
        self.io
            .run(async move { broker.queue_stats_here(&queue).await })
            .await?
    }

    async fn queue_stats_here(&self, queue: &str) -> Result<QueueStats, BrokerError> {
        self.channel().await?;
        let link = self
            .slot
            .lock()
            .await
            .link
            .clone()
            .ok_or_else(|| BrokerError::Connect("the connection was lost".into()))?;
        let channel = link._connection.create_channel().await?;
        let declared = channel
            .queue_declare(
                ShortString::from(queue),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        let _ = channel.close(200, ShortString::from("done")).await;
        let queue = declared?;
        Ok(QueueStats {
            messages: queue.message_count(),
            consumers: queue.consumer_count(),
        })
    }
}
