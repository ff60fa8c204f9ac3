//! The RabbitMQ topology both sides declare (idempotently, at every connect):
//!
//! - the durable work queue `<queue>`, dead-lettering into `<queue>.dead`;
//! - the dead-letter queue `<queue>.dead`, where messages that cannot be handled end up (an
//!   operator inspects and replays them; see the README);
//! - one delay queue per retry step, `<queue>.retry.<ms>`, whose messages expire after `<ms>`
//!   and are dead-lettered back into the work queue. One queue per step (rather than one queue
//!   with per-message TTLs) because a queue only expires messages at its head: a long delay must
//!   never hold up a short one. With quorum queues they are quorum queues too, named
//!   `<queue>.retry-q.<ms>` (see [`retry_queue`]);
//! - the workers' outbox of webhook deliveries: `<queue>.callbacks` (one message per callback
//!   attempt to make), its delay queues `<queue>.callbacks.retry.<ms>` (`.retry-q.` with quorum
//!   queues) that dead-letter back into it after the back-off, and `<queue>.callbacks.dead` for
//!   callback messages no worker can read. Only workers declare and use these.
//!
//! Both sides must declare with the same arguments or the broker refuses the second declaration,
//! which is why the arguments are built here, once.

use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::Channel;

use crate::configuration::{AmqpSettings, QueueType};
use crate::webhooks::WebhookSettings;

/// Highest job priority (the work queue's `x-max-priority`).
pub const MAX_PRIORITY: u8 = 9;

/// The dead-letter queue of `queue`.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dead")
}

/// The delay queue whose messages wait `delay_ms`.
///
/// With quorum queues the delay queues are quorum queues as well (message TTL needs RabbitMQ
/// 3.10 or newer): a classic queue lives on one node, and while that node is down the queue can
/// neither be used nor declared, so a facade or worker could not set up its connection on any
/// other node of the cluster. They get their own names because a queue cannot change type in
/// place: classic delay queues left by an older version drain by themselves (their messages
/// still expire into the work queue) and can then be deleted.
pub fn retry_queue(settings: &AmqpSettings, delay_ms: u64) -> String {
    delay_queue(settings, "", delay_ms)
}

/// `<queue><kind>.retry.<ms>`, or `.retry-q.` for quorum queues.
fn delay_queue(settings: &AmqpSettings, kind: &str, delay_ms: u64) -> String {
    let retry = match settings.queue_type {
        QueueType::Classic => "retry",
        QueueType::Quorum => "retry-q",
    };
    format!("{}{kind}.{retry}.{delay_ms}", settings.queue)
}

/// The workers' queue of webhook deliveries to make.
pub fn callback_queue(queue: &str) -> String {
    format!("{queue}.callbacks")
}

/// Where callback messages that cannot be read end up.
pub fn callback_dead_letter_queue(queue: &str) -> String {
    format!("{queue}.callbacks.dead")
}

/// The delay queue of the callback back-off of `delay_ms` (named like [`retry_queue`]).
pub fn callback_delay_queue(settings: &AmqpSettings, delay_ms: u64) -> String {
    delay_queue(settings, ".callbacks", delay_ms)
}

/// The distinct back-offs a callback can wait between attempts (after attempts 1 to
/// `max_attempts - 1`), shortest first.
pub fn callback_delays(webhooks: &WebhookSettings) -> Vec<u64> {
    let mut delays: Vec<u64> = (1..webhooks.max_attempts.max(2))
        .map(|attempt| webhooks.backoff_ms(attempt))
        .collect();
    delays.dedup();
    delays
}

/// The retry steps in milliseconds: base, 2·base, 4·base, … up to and including max.
pub fn retry_steps(settings: &AmqpSettings) -> Vec<u64> {
    let mut steps = Vec::new();
    let mut delay = settings.retry_base_delay_ms.max(1);
    while delay < settings.retry_max_delay_ms {
        steps.push(delay);
        delay = delay.saturating_mul(2);
    }
    steps.push(settings.retry_max_delay_ms);
    steps
}

/// The step to wait before attempt `next_attempt` (2 for the first retry).
pub fn retry_step(settings: &AmqpSettings, next_attempt: u32) -> u64 {
    let steps = retry_steps(settings);
    let index = (next_attempt.saturating_sub(2) as usize).min(steps.len() - 1);
    steps[index]
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

fn queue_kind(args: &mut FieldTable, queue_type: QueueType) {
    let (key, value) = match queue_type {
        // Classic queues in version 2 keep messages on disk without the v1 index cost.
        QueueType::Classic => ("x-queue-version", AMQPValue::LongInt(2)),
        QueueType::Quorum => ("x-queue-type", text("quorum")),
    };
    args.insert(ShortString::from(key), value);
}

/// The arguments of the work queue for these settings.
pub fn queue_arguments(settings: &AmqpSettings) -> FieldTable {
    let mut args = FieldTable::default();
    queue_kind(&mut args, settings.queue_type);
    args.insert(ShortString::from("x-dead-letter-exchange"), text(""));
    args.insert(
        ShortString::from("x-dead-letter-routing-key"),
        text(&dead_letter_queue(&settings.queue)),
    );
    if settings.queue_type == QueueType::Classic {
        // Priorities 0-9 (the API's range); quorum queues on RabbitMQ 3.x have none.
        args.insert(
            ShortString::from("x-max-priority"),
            AMQPValue::ShortShortUInt(MAX_PRIORITY),
        );
    }
    if settings.queue_type == QueueType::Quorum {
        args.insert(
            ShortString::from("x-delivery-limit"),
            AMQPValue::LongInt(settings.delivery_limit.min(i32::MAX as u32) as i32),
        );
    }
    args
}

/// A delay queue's arguments: its messages expire after `ttl_ms` into `target`.
fn delay_queue_arguments(queue_type: QueueType, ttl_ms: u64, target: &str) -> FieldTable {
    let mut args = FieldTable::default();
    queue_kind(&mut args, queue_type);
    args.insert(
        ShortString::from("x-message-ttl"),
        AMQPValue::LongLongInt(ttl_ms as i64),
    );
    args.insert(ShortString::from("x-dead-letter-exchange"), text(""));
    args.insert(ShortString::from("x-dead-letter-routing-key"), text(target));
    args
}

async fn declare(channel: &Channel, name: &str, args: FieldTable) -> lapin::Result<u32> {
    let queue = channel
        .queue_declare(
            ShortString::from(name),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await?;
    Ok(queue.message_count())
}

/// Declares the work queue, its dead-letter queue and its delay queues; returns how many
/// messages the work queue holds.
pub async fn declare_work_queue(channel: &Channel, settings: &AmqpSettings) -> lapin::Result<u32> {
    let mut dead_args = FieldTable::default();
    queue_kind(&mut dead_args, settings.queue_type);
    declare(channel, &dead_letter_queue(&settings.queue), dead_args).await?;
    for step in retry_steps(settings) {
        // Delay queues are of the work queue's type (see `retry_queue`).
        let args = delay_queue_arguments(settings.queue_type, step, &settings.queue);
        declare(channel, &retry_queue(settings, step), args).await?;
    }
    declare(channel, &settings.queue, queue_arguments(settings)).await
}

/// Declares the callbacks queue, its delay queues and its dead-letter queue.
pub async fn declare_callback_queues(
    channel: &Channel,
    settings: &AmqpSettings,
    webhooks: &WebhookSettings,
) -> lapin::Result<()> {
    let queue = callback_queue(&settings.queue);
    let dead = callback_dead_letter_queue(&settings.queue);
    let mut dead_args = FieldTable::default();
    queue_kind(&mut dead_args, settings.queue_type);
    declare(channel, &dead, dead_args).await?;
    for delay in callback_delays(webhooks) {
        let args = delay_queue_arguments(settings.queue_type, delay, &queue);
        declare(channel, &callback_delay_queue(settings, delay), args).await?;
    }
    let mut args = FieldTable::default();
    queue_kind(&mut args, settings.queue_type);
    args.insert(ShortString::from("x-dead-letter-exchange"), text(""));
    args.insert(ShortString::from("x-dead-letter-routing-key"), text(&dead));
    if settings.queue_type == QueueType::Quorum {
        // As on the work queue: a message whose handling keeps killing its workers stops.
        args.insert(
            ShortString::from("x-delivery-limit"),
            AMQPValue::LongInt(settings.delivery_limit.min(i32::MAX as u32) as i32),
        );
    }
    declare(channel, &queue, args).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Settings;

    #[test]
    fn retry_steps_double_up_to_the_cap() {
        let mut amqp = Settings::load(None).unwrap().amqp;
        amqp.retry_base_delay_ms = 1000;
        amqp.retry_max_delay_ms = 5000;
        assert_eq!(retry_steps(&amqp), [1000, 2000, 4000, 5000]);
        assert_eq!(retry_step(&amqp, 2), 1000);
        assert_eq!(retry_step(&amqp, 3), 2000);
        assert_eq!(retry_step(&amqp, 50), 5000);
        amqp.retry_max_delay_ms = 1000;
        assert_eq!(retry_steps(&amqp), [1000]);
        amqp.queue = "jobs".into();
        assert_eq!(retry_queue(&amqp, 1000), "jobs.retry.1000");
        assert_eq!(callback_delay_queue(&amqp, 100), "jobs.callbacks.retry.100");
        amqp.queue_type = QueueType::Quorum;
        assert_eq!(retry_queue(&amqp, 1000), "jobs.retry-q.1000");
        assert_eq!(
            callback_delay_queue(&amqp, 100),
            "jobs.callbacks.retry-q.100"
        );
    }

    #[test]
    fn callback_delays_are_the_distinct_back_offs() {
        let mut webhooks = Settings::load(None).unwrap().webhooks;
        webhooks.max_attempts = 3;
        webhooks.base_delay_ms = 100;
        webhooks.max_delay_ms = 400;
        assert_eq!(callback_delays(&webhooks), [100, 200]);
        webhooks.max_attempts = 6;
        assert_eq!(callback_delays(&webhooks), [100, 200, 400]);
        // One attempt has no back-off; one queue is declared anyway (harmless).
        webhooks.max_attempts = 1;
        assert_eq!(callback_delays(&webhooks), [100]);
    }
}
