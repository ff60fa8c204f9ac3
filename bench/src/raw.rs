//! The physical limits of this design, measured with the same broker and Redis and without
//! HTTP or the service's code:
//!
//! - the raw pipeline: per job one Redis write of the queued status, a persistent publish
//!   waited on for its confirm, and a consumer with manual acks that writes `running`, then the
//!   result and `succeeded` (one round trip), then acks;
//! - the raw broker loop: publish-confirm and consume-ack alone, with a window of confirms in
//!   flight (256, or 1 for one at a time).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::sync::Semaphore;

use crate::error::{msg, Result};

/// Longest a raw run may take before it is abandoned (it is bounded in count too).
const RUN_LIMIT: Duration = Duration::from_secs(120);

pub async fn connect(url: &str) -> Result<Connection> {
    Ok(Connection::connect(url, ConnectionProperties::default()).await?)
}

/// Declares a durable queue: classic version 2, or quorum; `max_priority` as the service
/// declares its classic work queue (`x-max-priority`).
pub async fn declare(
    channel: &Channel,
    queue: &str,
    quorum: bool,
    max_priority: Option<u8>,
) -> Result<()> {
    let mut args = FieldTable::default();
    if let Some(max) = max_priority {
        args.insert(
            ShortString::from("x-max-priority"),
            AMQPValue::ShortShortUInt(max),
        );
    }
    if quorum {
        args.insert(
            ShortString::from("x-queue-type"),
            AMQPValue::LongString(LongString::from("quorum")),
        );
    } else {
        args.insert(ShortString::from("x-queue-version"), AMQPValue::LongInt(2));
    }
    channel
        .queue_declare(
            ShortString::from(queue),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await?;
    Ok(())
}

/// Deletes `queues` (missing ones are fine: each gets its own channel, as a failed delete
/// closes it).
pub async fn delete_queues(url: &str, queues: &[String]) -> Result<()> {
    let connection = connect(url).await?;
    for queue in queues {
        let channel = connection.create_channel().await?;
        let _ = channel
            .queue_delete(
                ShortString::from(queue.as_str()),
                QueueDeleteOptions::default(),
            )
            .await;
    }
    let _ = connection.close(200, ShortString::from("bench done")).await;
    Ok(())
}

/// Deletes `exchanges` (Celery declares one per queue); missing ones are fine.
pub async fn delete_exchanges(url: &str, exchanges: &[String]) -> Result<()> {
    let connection = connect(url).await?;
    for exchange in exchanges {
        let channel = connection.create_channel().await?;
        let _ = channel
            .exchange_delete(
                ShortString::from(exchange.as_str()),
                lapin::options::ExchangeDeleteOptions::default(),
            )
            .await;
    }
    let _ = connection.close(200, ShortString::from("bench done")).await;
    Ok(())
}

fn persistent() -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::from("application/json"))
}

/// How the raw pipeline publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publish {
    /// A bare persistent publish.
    Bare,
    /// As the service publishes: mandatory, with a message id and a `traceparent` header
    /// (`shared::publish`).
    AsTheService,
}

async fn publish_confirmed(
    channel: &Channel,
    queue: &str,
    payload: &[u8],
    how: Publish,
) -> Result<()> {
    if how == Publish::AsTheService {
        let id = uuid::Uuid::new_v4().to_string();
        let outgoing = shared::publish::Outgoing::new(&id, payload).traceparent(Some(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ));
        return shared::publish::publish_confirmed(channel, queue, outgoing, RUN_LIMIT)
            .await
            .map_err(|e| msg(e.to_string()));
    }
    let confirm = channel
        .basic_publish(
            ShortString::from(""),
            ShortString::from(queue),
            BasicPublishOptions::default(),
            payload,
            persistent(),
        )
        .await?
        .await?;
    if confirm.is_ack() {
        Ok(())
    } else {
        Err(msg("publish nacked"))
    }
}

/// What the raw pipeline writes, sized like the service's documents.
struct Payloads {
    queued: Vec<u8>,
    running: Vec<u8>,
    succeeded: Vec<u8>,
    result: Vec<u8>,
    message: Vec<u8>,
}

impl Payloads {
    fn new() -> Self {
        let doc = |status: &str| {
            let mut d = serde_json::json!({
                "id": "00000000-0000-4000-8000-000000000000", "type": "echo", "status": status,
                "attempts": 1, "created_at": "2026-11-25T02:01:57.663199173Z",
                "links": {"self": "/v1/jobs/00000000-0000-4000-8000-000000000000",
                          "result": "/v1/jobs/00000000-0000-4000-8000-000000000000/result"}
            });
            if status != "queued" {
                d["started_at"] = "2026-11-25T02:01:57.663199173Z".into();
                d["progress"] = serde_json::json!({"percent": 0.0, "message": ""});
            }
            serde_json::to_vec(&d).unwrap_or_default()
        };
        Payloads {
            queued: doc("queued"),
            running: doc("running"),
            succeeded: doc("succeeded"),
            result: br#"{"n":1}"#.to_vec(),
            message: serde_json::to_vec(&serde_json::json!({
                "v": 1, "id": "00000000-0000-4000-8000-000000000000", "type": "echo",
                "input": {"n": 1}, "created_at": "2026-11-25T02:01:57.663199173Z"
            }))
            .unwrap_or_default(),
        }
    }
}

/// The raw pipeline: `jobs` jobs from `producers` concurrent producers, consumed with
/// `prefetch` deliveries in flight. Returns jobs per second (first write to last ack).
#[allow(clippy::too_many_arguments)] // one call site per variant, each naming every knob
pub async fn pipeline(
    amqp_url: &str,
    redis_url: &str,
    queue: &str,
    key_prefix: &str,
    jobs: u64,
    producers: usize,
    prefetch: u16,
    how: Publish,
) -> Result<f64> {
    let payloads = Arc::new(Payloads::new());
    let redis = redis::Client::open(redis_url)?;
    let producer_redis = redis.get_multiplexed_async_connection().await?;
    let consumer_redis = redis.get_multiplexed_async_connection().await?;
    let pub_conn = connect(amqp_url).await?;
    let publisher = pub_conn.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let sub_conn = connect(amqp_url).await?;
    let consumer = sub_conn.create_channel().await?;
    consumer
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let mut deliveries = consumer
        .basic_consume(
            ShortString::from(queue),
            ShortString::from("bench-raw"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;

    let started = Instant::now();
    let done = Arc::new(AtomicU64::new(0));
    let consume = {
        let payloads = payloads.clone();
        let done = done.clone();
        let key_prefix = key_prefix.to_owned();
        tokio::spawn(async move {
            let mut running = FuturesUnordered::new();
            let mut received = 0u64;
            while received < jobs || !running.is_empty() {
                tokio::select! {
                    delivery = deliveries.next(), if received < jobs => {
                        let delivery = match delivery {
                            Some(Ok(d)) => d,
                            Some(Err(e)) => return Err(e.into()),
                            None => return Err(msg("consumer closed")),
                        };
                        let key = format!("{key_prefix}:raw:{received}");
                        received += 1;
                        let mut redis = consumer_redis.clone();
                        let payloads = payloads.clone();
                        running.push(async move {
                            let _: () = redis::cmd("HSET")
                                .arg(&key).arg("state").arg("running").arg("doc").arg(&payloads.running)
                                .query_async(&mut redis).await?;
                            let _: () = redis::pipe()
                                .atomic()
                                .cmd("HSET").arg(&key).arg("state").arg("succeeded")
                                .arg("doc").arg(&payloads.succeeded).arg("result").arg(&payloads.result)
                                .ignore()
                                .cmd("PUBLISH").arg(format!("{key}:events")).arg(&payloads.succeeded)
                                .ignore()
                                .query_async(&mut redis).await?;
                            delivery.ack(BasicAckOptions::default()).await?;
                            Ok::<(), crate::error::BenchError>(())
                        });
                    }
                    Some(result) = running.next(), if !running.is_empty() => {
                        result?;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Ok(())
        })
    };

    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..producers {
        let (publisher, mut redis, next, payloads) = (
            publisher.clone(),
            producer_redis.clone(),
            next.clone(),
            payloads.clone(),
        );
        let (queue, key_prefix) = (queue.to_owned(), key_prefix.to_owned());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= jobs {
                    return Ok::<(), crate::error::BenchError>(());
                }
                let key = format!("{key_prefix}:raw:{i}");
                let _: () = redis::cmd("HSET")
                    .arg(&key)
                    .arg("state")
                    .arg("queued")
                    .arg("doc")
                    .arg(&payloads.queued)
                    .query_async(&mut redis)
                    .await?;
                publish_confirmed(&publisher, &queue, &payloads.message, how).await?;
            }
        }));
    }
    let all = async {
        for task in tasks {
            task.await.map_err(|e| msg(e.to_string()))??;
        }
        consume.await.map_err(|e| msg(e.to_string()))?
    };
    tokio::time::timeout(RUN_LIMIT, all)
        .await
        .map_err(|_| msg("raw pipeline timed out"))??;
    let elapsed = started.elapsed();
    let _ = pub_conn.close(200, ShortString::from("done")).await;
    let _ = sub_conn.close(200, ShortString::from("done")).await;
    Ok(done.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64())
}

/// Publish-confirm and consume-ack alone: `messages` persistent messages with up to `window`
/// confirms in flight, consumed (prefetch 256) and acknowledged one by one. Returns messages
/// per second (first publish to last ack).
pub async fn broker_loop(amqp_url: &str, queue: &str, messages: u64, window: usize) -> Result<f64> {
    let payload = Payloads::new().message;
    let pub_conn = connect(amqp_url).await?;
    let publisher = pub_conn.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let sub_conn = connect(amqp_url).await?;
    let consumer = sub_conn.create_channel().await?;
    consumer.basic_qos(256, BasicQosOptions::default()).await?;
    let mut deliveries = consumer
        .basic_consume(
            ShortString::from(queue),
            ShortString::from("bench-loop"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let started = Instant::now();
    let consume = tokio::spawn(async move {
        for _ in 0..messages {
            match deliveries.next().await {
                Some(Ok(d)) => {
                    d.ack(BasicAckOptions::default()).await?;
                }
                Some(Err(e)) => return Err(e.into()),
                None => return Err(msg("consumer closed")),
            }
        }
        Ok::<(), crate::error::BenchError>(())
    });
    let publish = async {
        let window = Arc::new(Semaphore::new(window));
        let mut confirms = FuturesUnordered::new();
        for _ in 0..messages {
            let permit = window
                .clone()
                .acquire_owned()
                .await
                .map_err(|e| msg(e.to_string()))?;
            // Drain confirms that are already in, so the set stays small.
            while let Some(Some(r)) = futures_util::FutureExt::now_or_never(confirms.next()) {
                r?;
            }
            let confirm = publisher
                .basic_publish(
                    ShortString::from(""),
                    ShortString::from(queue),
                    BasicPublishOptions::default(),
                    &payload,
                    persistent(),
                )
                .await?;
            confirms.push(async move {
                let c = confirm.await;
                drop(permit);
                match c {
                    Ok(c) if c.is_ack() => Ok(()),
                    Ok(_) => Err(msg("publish nacked")),
                    Err(e) => Err(e.into()),
                }
            });
            if window.available_permits() == 0 {
                if let Some(r) = confirms.next().await {
                    r?;
                }
            }
        }
        while let Some(r) = confirms.next().await {
            r?;
        }
        Ok::<(), crate::error::BenchError>(())
    };
    let all = async {
        publish.await?;
        consume.await.map_err(|e| msg(e.to_string()))?
    };
    tokio::time::timeout(RUN_LIMIT, all)
        .await
        .map_err(|_| msg("raw broker loop timed out"))??;
    let elapsed = started.elapsed();
    let _ = pub_conn.close(200, ShortString::from("done")).await;
    let _ = sub_conn.close(200, ShortString::from("done")).await;
    Ok(messages as f64 / elapsed.as_secs_f64())
}
