//! The RabbitMQ topology both sides declare: one durable work queue. Declaring is idempotent, so
//! the facade and every worker declare it at (re)connect and whichever comes first creates it;
//! they must declare it with the same arguments or the broker refuses the second declaration.

use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::Channel;

use crate::configuration::{AmqpSettings, QueueType};

/// The arguments of the work queue for these settings.
pub fn queue_arguments(settings: &AmqpSettings) -> FieldTable {
    let mut args = FieldTable::default();
    let (key, value) = match settings.queue_type {
        // Classic queues in version 2 keep messages on disk without the v1 index cost.
        QueueType::Classic => ("x-queue-version", AMQPValue::LongInt(2)),
        QueueType::Quorum => (
            "x-queue-type",
            AMQPValue::LongString(LongString::from("quorum")),
        ),
    };
    args.insert(ShortString::from(key), value);
    args
}

/// Declares the durable work queue; returns how many messages it holds.
pub async fn declare_work_queue(channel: &Channel, settings: &AmqpSettings) -> lapin::Result<u32> {
    let queue = channel
        .queue_declare(
            ShortString::from(settings.queue.as_str()),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            queue_arguments(settings),
        )
        .await?;
    Ok(queue.message_count())
}
