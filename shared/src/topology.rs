//! The RabbitMQ topology both sides declare (idempotently, at every connect):
//!
//! - a durable work queue per job type, `<queue>.<type>` ([`type_queue`]; types may share one
//!   by configuration, `amqp.type_queues`), dead-lettering into `<that queue>.dead`, where
//!   messages that cannot be handled end up (an operator inspects and replays them; see the
//!   README). Only the queues of types that take priorities are declared with
//!   `x-max-priority`: a priority queue costs the broker 12-20% of its throughput
//!   (BENCHMARKS.md), which a type without priorities should not pay;
//! - one delay queue per retry step, `<queue>.delay.<ms>`, shared by every work queue, whose
//!   messages expire after `<ms>` and are dead-lettered back to the queue they are for. A
//!   message is published to the step's fanout exchange (named as its queue) with the routing
//!   key of the work queue it returns to; the delay queue dead-letters to the default exchange
//!   without a routing key of its own, so the broker routes the expired message by that key,
//!   back to its work queue. One queue per step (rather than one queue with per-message TTLs)
//!   because a queue only expires messages at its head: a long delay must never hold up a
//!   short one. With quorum queues they are quorum queues too, `<queue>.delay-q.<ms>`;
//! - the workers' outbox of webhook deliveries: `<queue>.callbacks` (one message per callback
//!   attempt to make), its delay queues `<queue>.callbacks.retry.<ms>` (`.retry-q.` with quorum
//!   queues) that dead-letter back into it after the back-off, and `<queue>.callbacks.dead` for
//!   callback messages no worker can read. Only workers declare and use these;
//! - `<queue>` itself, the one work queue of every type before queues per type (declared with
//!   priorities, and its delay queues `<queue>.retry.<ms>`). Nothing publishes there any
//!   more but facades of that version during an upgrade; workers move what they find there to
//!   the types' queues (`worker::legacy`).
//!
//! Everyone must declare a queue with the same arguments or the broker refuses the second
//! declaration, which is why the arguments are built here, once.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
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

/// The work queue `<prefix>.<suffix>`: a type's own queue (`suffix` its name) or one that
/// types share by configuration.
pub fn type_queue(prefix: &str, suffix: &str) -> String {
    format!("{prefix}.{suffix}")
}

/// First segments of a type's queue name that other queues use (`<queue>.dead`,
/// `<queue>.callbacks…`, `<queue>.delay.<ms>`, the old `<queue>.retry.<ms>`).
const RESERVED: &[&str] = &["dead", "callbacks", "delay", "delay-q", "retry", "retry-q"];

/// Whether `suffix` may end a work queue's name `<queue>.<suffix>` without colliding with a
/// queue of another kind: a job type name (or a shared queue's), whose first dot-separated
/// segment is none of [`RESERVED`] and whose last is not `dead` (`<queue>.x.dead` is the dead
/// letters of `<queue>.x`).
pub fn check_queue_suffix(suffix: &str) -> Result<(), String> {
    if !crate::job_types::valid_name(suffix) {
        return Err(format!(
            "'{suffix}' is not a queue name (1 to 64 of a-z 0-9 . _ -)"
        ));
    }
    let first = suffix.split('.').next().unwrap_or(suffix);
    if RESERVED.contains(&first) || suffix.rsplit('.').next() == Some("dead") {
        return Err(format!(
            "'{suffix}' would collide with the broker's other queues (names starting with {} or ending in .dead are reserved)",
            RESERVED.join(", ")
        ));
    }
    Ok(())
}

/// The shared delay queue (and its fanout exchange, of the same name) whose messages wait
/// `delay_ms` before returning to the work queue they were published for.
///
/// With quorum queues the delay queues are quorum queues as well (message TTL needs RabbitMQ
/// 3.10 or newer): a classic queue lives on one node, and while that node is down the queue can
/// neither be used nor declared, so a facade or worker could not set up its connection on any
/// other node of the cluster. They get their own names because a queue cannot change type in
/// place.
pub fn delay_queue(settings: &AmqpSettings, delay_ms: u64) -> String {
    let delay = match settings.queue_type {
        QueueType::Classic => "delay",
        QueueType::Quorum => "delay-q",
    };
    format!("{}.{delay}.{delay_ms}", settings.queue)
}

/// A delay queue of the single work queue of versions before queues per type,
/// `<queue>.retry.<ms>` (`.retry-q.` with quorum queues): they dead-letter into `<queue>`.
pub fn legacy_retry_queue(settings: &AmqpSettings, delay_ms: u64) -> String {
    old_style_delay_queue(settings, "", delay_ms)
}

/// `<queue><kind>.retry.<ms>`, or `.retry-q.` for quorum queues.
fn old_style_delay_queue(settings: &AmqpSettings, kind: &str, delay_ms: u64) -> String {
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

/// The delay queue of the callback back-off of `delay_ms` (named like [`legacy_retry_queue`]).
pub fn callback_delay_queue(settings: &AmqpSettings, delay_ms: u64) -> String {
    old_style_delay_queue(settings, ".callbacks", delay_ms)
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

/// The shortest step that waits at least `ms` (the longest when none does): where a retry that
/// must wait `ms` (a backend's `Retry-After`) goes.
pub fn step_at_least(settings: &AmqpSettings, ms: u64) -> u64 {
    let steps = retry_steps(settings);
    steps
        .iter()
        .copied()
        .find(|&step| step >= ms)
        .unwrap_or(steps[steps.len() - 1])
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

/// The arguments of the work queue `name`, with priorities or without.
pub fn queue_arguments(settings: &AmqpSettings, name: &str, priorities: bool) -> FieldTable {
    let mut args = FieldTable::default();
    queue_kind(&mut args, settings.queue_type);
    args.insert(ShortString::from("x-dead-letter-exchange"), text(""));
    args.insert(
        ShortString::from("x-dead-letter-routing-key"),
        text(&dead_letter_queue(name)),
    );
    if settings.queue_type == QueueType::Classic && priorities {
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

/// A delay queue's arguments: its messages expire after `ttl_ms` into `target`, or, without
/// one, back by the routing key they were published with.
fn delay_queue_arguments(queue_type: QueueType, ttl_ms: u64, target: Option<&str>) -> FieldTable {
    let mut args = FieldTable::default();
    queue_kind(&mut args, queue_type);
    args.insert(
        ShortString::from("x-message-ttl"),
        AMQPValue::LongLongInt(ttl_ms as i64),
    );
    args.insert(ShortString::from("x-dead-letter-exchange"), text(""));
    if let Some(target) = target {
        args.insert(ShortString::from("x-dead-letter-routing-key"), text(target));
    }
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

/// Declares the work queue `name` (with priorities or without) and its dead-letter queue;
/// returns how many messages the work queue holds.
pub async fn declare_work_queue(
    channel: &Channel,
    settings: &AmqpSettings,
    name: &str,
    priorities: bool,
) -> lapin::Result<u32> {
    let mut dead_args = FieldTable::default();
    queue_kind(&mut dead_args, settings.queue_type);
    declare(channel, &dead_letter_queue(name), dead_args).await?;
    declare(channel, name, queue_arguments(settings, name, priorities)).await
}

/// Declares the shared delay queues of the retry steps, each behind a fanout exchange of its
/// name (see the module's documentation).
pub async fn declare_delay_queues(channel: &Channel, settings: &AmqpSettings) -> lapin::Result<()> {
    for step in retry_steps(settings) {
        let name = delay_queue(settings, step);
        let args = delay_queue_arguments(settings.queue_type, step, None);
        declare(channel, &name, args).await?;
        channel
            .exchange_declare(
                ShortString::from(name.as_str()),
                lapin::ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                ShortString::from(name.as_str()),
                ShortString::from(name.as_str()),
                ShortString::from(""),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
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
        let args = delay_queue_arguments(settings.queue_type, delay, Some(&queue));
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

/// A queue as the broker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    /// Messages ready for delivery (not counting those delivered and not yet acknowledged).
    pub messages: u32,
    pub consumers: u32,
}

/// `queue`'s figures, or `None` if it does not exist. Asked with a passive declare on a
/// short-lived channel of its own: the broker closes a channel that asks for a missing queue,
/// which must never be a channel anything else uses.
pub async fn inspect(
    connection: &lapin::Connection,
    queue: &str,
) -> lapin::Result<Option<QueueStats>> {
    let channel = connection.create_channel().await?;
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
    match declared {
        Ok(q) => {
            let _ = channel.close(200, ShortString::from("inspected")).await;
            Ok(Some(QueueStats {
                messages: q.message_count(),
                consumers: q.consumer_count(),
            }))
        }
        // 404: the broker closed the channel; the connection lives on.
        Err(_) if connection.status().connected() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Every queue and exchange the topology of `settings` declares for the work queues `work`
/// (the shared delay queues, each work queue with its dead letters, the callbacks' queues):
/// what a test or benchmark that made its own deletes afterwards.
pub fn declared_names(
    settings: &AmqpSettings,
    webhooks: &WebhookSettings,
    work: &[String],
) -> (Vec<String>, Vec<String>) {
    let delays: Vec<String> = retry_steps(settings)
        .into_iter()
        .map(|ms| delay_queue(settings, ms))
        .collect();
    let mut queues = delays.clone();
    for queue in work {
        queues.push(queue.clone());
        queues.push(dead_letter_queue(queue));
    }
    queues.push(callback_queue(&settings.queue));
    queues.push(callback_dead_letter_queue(&settings.queue));
    queues.extend(
        callback_delays(webhooks)
            .into_iter()
            .map(|ms| callback_delay_queue(settings, ms)),
    );
    (queues, delays)
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
        assert_eq!(step_at_least(&amqp, 0), 1000);
        assert_eq!(step_at_least(&amqp, 1500), 2000);
        assert_eq!(step_at_least(&amqp, 4000), 4000);
        assert_eq!(step_at_least(&amqp, 90_000), 5000);
        amqp.retry_max_delay_ms = 1000;
        assert_eq!(retry_steps(&amqp), [1000]);
        amqp.queue = "jobs".into();
        assert_eq!(delay_queue(&amqp, 1000), "jobs.delay.1000");
        assert_eq!(legacy_retry_queue(&amqp, 1000), "jobs.retry.1000");
        assert_eq!(callback_delay_queue(&amqp, 100), "jobs.callbacks.retry.100");
        amqp.queue_type = QueueType::Quorum;
        assert_eq!(delay_queue(&amqp, 1000), "jobs.delay-q.1000");
        assert_eq!(legacy_retry_queue(&amqp, 1000), "jobs.retry-q.1000");
        assert_eq!(
            callback_delay_queue(&amqp, 100),
            "jobs.callbacks.retry-q.100"
        );
    }

    #[test]
    fn type_queues_do_not_collide_with_the_other_queues() {
        let mut amqp = Settings::load(None).unwrap().amqp;
        amqp.queue = "jobs".into();
        assert_eq!(amqp.queue_of("echo"), "jobs.echo");
        amqp.type_queues.insert("email".into(), "light".into());
        assert_eq!(amqp.queue_of("email"), "jobs.light");
        for ok in [
            "echo",
            "render.pdf",
            "dead-letters",
            "retryable",
            "a.deadline",
        ] {
            assert!(check_queue_suffix(ok).is_ok(), "{ok}");
        }
        for bad in [
            "dead",
            "callbacks",
            "callbacks.x",
            "delay",
            "retry-q.5",
            "x.dead",
            "",
            "A",
        ] {
            assert!(check_queue_suffix(bad).is_err(), "{bad}");
        }
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
