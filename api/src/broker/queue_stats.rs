//! How many messages wait in a work queue and how many consumers take from it, for the
//! `Retry-After` estimate, admission control and the overview (`shared::topology::inspect`:
//! a passive declare on a short-lived channel of its own, never the one publishes share).

pub use shared::topology::QueueStats;

use super::{Broker, BrokerError};

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
        shared::topology::inspect(&link._connection, queue)
            .await?
            .ok_or_else(|| BrokerError::NoQueue(queue.to_owned()))
    }
}
