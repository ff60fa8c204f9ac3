//! Publishing a job message the one way both sides do it: persistent, mandatory, on a channel in
//! confirm mode, and counted as done only on a broker `ack` that came without the message being
//! returned as unroutable.

use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation};

use crate::message::CONTENT_TYPE;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the broker connection failed: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the broker did not confirm the publish in time")]
    ConfirmTimeout,
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("the message was returned unroutable: {0}")]
    Returned(String),
    #[error("the channel is not in confirm mode")]
    ConfirmsOff,
}

/// What to publish: a job message and its AMQP properties.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    pub message_id: &'a str,
    pub payload: &'a [u8],
    /// Per-message TTL (for delay queues).
    pub expiration_ms: Option<u64>,
    /// 0-9; higher runs first among queued jobs (classic queues).
    pub priority: u8,
    /// W3C `traceparent` to carry to the consumer (an AMQP header).
    pub traceparent: Option<&'a str>,
}

impl<'a> Outgoing<'a> {
    pub fn new(message_id: &'a str, payload: &'a [u8]) -> Self {
        Outgoing {
            message_id,
            payload,
            expiration_ms: None,
            priority: 0,
            traceparent: None,
        }
    }

    pub fn traceparent(mut self, traceparent: Option<&'a str>) -> Self {
        self.traceparent = traceparent;
        self
    }

    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = priority;
        self
    }

    pub fn expiration_ms(mut self, ms: u64) -> Self {
        self.expiration_ms = Some(ms);
        self
    }
}

/// Publishes to the default exchange with `routing_key` (a queue name) and waits for the
/// confirm.
pub async fn publish_confirmed(
    channel: &Channel,
    routing_key: &str,
    outgoing: Outgoing<'_>,
    timeout: Duration,
) -> Result<(), PublishError> {
    publish_confirmed_via(channel, "", routing_key, outgoing, timeout).await
}

/// Publishes to `exchange` with `routing_key` and waits for the confirm (a delay queue's
/// exchange, with the key of the work queue the message returns to: see `crate::topology`).
pub async fn publish_confirmed_via(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    outgoing: Outgoing<'_>,
    timeout: Duration,
) -> Result<(), PublishError> {
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2) // persistent
        .with_content_type(ShortString::from(CONTENT_TYPE))
        .with_message_id(ShortString::from(outgoing.message_id));
    if let Some(ms) = outgoing.expiration_ms {
        properties = properties.with_expiration(ShortString::from(ms.to_string()));
    }
    if outgoing.priority > 0 {
        properties = properties.with_priority(outgoing.priority);
    }
    if let Some(traceparent) = outgoing.traceparent {
        let mut headers = FieldTable::default();
        headers.insert(
            ShortString::from(crate::trace::HEADER),
            AMQPValue::LongString(LongString::from(traceparent)),
        );
        properties = properties.with_headers(headers);
    }
    let payload = outgoing.payload;
    let publish = async {
        let confirm = channel
            .basic_publish(
                ShortString::from(exchange),
                ShortString::from(routing_key),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                payload,
                properties,
            )
            .await?;
        confirm.await
    };
    match tokio::time::timeout(timeout, publish).await {
        Err(_) => Err(PublishError::ConfirmTimeout),
        Ok(Err(e)) => Err(e.into()),
        Ok(Ok(Confirmation::Ack(None))) => Ok(()),
        Ok(Ok(Confirmation::Ack(Some(returned)))) => {
            Err(PublishError::Returned(returned.reply_text.to_string()))
        }
        Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Nacked),
        Ok(Ok(Confirmation::NotRequested)) => Err(PublishError::ConfirmsOff),
    }
}

/// The `traceparent` header of a delivered message, if it has one.
pub fn traceparent_of(properties: &BasicProperties) -> Option<String> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get(crate::trace::HEADER)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}
