//! Webhook delivery, at least once across worker crashes, through an outbox in the broker.
//!
//! Once a job with a `callback_url` has reached a terminal state (and that state is stored),
//! the worker that finished it publishes a callback message (job id, tenant, the number of the
//! attempt to make) to the durable queue `<queue>.callbacks`, with a publisher confirm, and
//! only then acknowledges the job's message ([`Webhooks::enqueue`]; `process.rs`). If that
//! publish fails, the job's message is not acknowledged: it comes back, the job is found
//! terminal, and the callback is published then instead of the job running again.
//!
//! Every worker consumes the callbacks queue ([`Webhooks::consume`], at most
//! `webhooks.concurrency` deliveries at once). One message is one attempt: the worker reads the
//! job's status document, POSTs it (signed, see `shared::webhooks`), records the attempt in the
//! document's `callback` member, and if the callback is still pending publishes the next
//! attempt to the delay queue of its back-off (`<queue>.callbacks.retry.<ms>`, which
//! dead-letters it back into the callbacks queue when the back-off is over); the message is
//! acknowledged only after that publish is confirmed. A worker that dies leaves its message
//! unacknowledged: the broker gives it to another worker, which makes the attempt again or,
//! if it was recorded already, publishes the next one. Nothing waits in a worker's memory.
//!
//! The job's status document stays the single source of truth, and it decides what a message
//! still asks for ([`decide`]): message `k` (the k-th attempt) is made when the document
//! records `k - 1` attempts and the callback is pending; the attempt is recorded by a
//! compare-and-set on the document, so of two copies of one message (a crash between a
//! publish and its ack leaves two) at most one records the attempt and carries on; the other
//! stops. A receiver can still see an attempt twice (a worker that died after sending and
//! before recording, or two copies sending at the same moment): `Webhook-Id`, the job id, is
//! the same on every attempt for receivers to drop duplicates.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use lapin::Channel;
use redis::Script;
use serde::{Deserialize, Serialize};
use shared::configuration::AmqpSettings;
use shared::keys::field;
use shared::publish::{publish_confirmed, Outgoing, PublishError};
use shared::redis_conn::{RedisConn, Retries};
use shared::topology;
use shared::webhooks::{self, Callback, CallbackState, WebhookSettings};
use shared::{JobId, KeyLayout, Settings, StatusDocument, Tenant};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

/// Version of the callback message; a worker dead-letters versions it does not know.
pub const CALLBACK_MESSAGE_VERSION: u32 = 1;
/// Longest `last_error` kept in the document.
const MAX_ERROR_CHARS: usize = 300;
/// How long a delivery retries Redis or a publish (with back-off) before it gives its message
/// back to the queue.
const PATIENCE: Duration = Duration::from_secs(60);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Pause before a message is given back, so that what failed has a moment.
const REQUEUE_DELAY: Duration = Duration::from_secs(1);

/// KEYS: job hash. ARGV: document as read, new document. Writes the new document only if the
/// job is terminal and its document is the one read (compare-and-set: the attempt it records
/// follows the one read). Returns 'ok', 'not-terminal' or 'changed'. It never touches `state`.
const RECORD: &str = r#"
local cur = redis.call('HMGET', KEYS[1], 'state', 'doc')
local state = cur[1]
if state ~= 'succeeded' and state ~= 'failed' and state ~= 'canceled' then return 'not-terminal' end
if cur[2] ~= ARGV[1] then return 'changed' end
redis.call('HSET', KEYS[1], 'doc', ARGV[2])
return 'ok'
"#;

/// One callback attempt to make: what the callbacks queue and its delay queues carry. The
/// document to send is read from Redis (it is the job's final document, so every attempt sends
/// the same body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackMessage {
    pub v: u32,
    pub id: JobId,
    #[serde(default)]
    pub tenant: Tenant,
    /// 1 for the first attempt.
    pub attempt: u32,
}

/// What a callback message asks for, given the job's document.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Make the attempt.
    Attempt,
    /// The attempt was made and recorded, but its worker stopped before it was acknowledged:
    /// the next one may never have been published. Publish it.
    Continue,
    /// Nothing to do: acknowledge the message (why, for the log).
    Drop(&'static str),
}

/// The decision for message `attempt`, against the job's stored document; `redelivered`: the
/// broker delivered this message before (its worker died or gave it back).
fn decide(doc: &StatusDocument, attempt: u32, redelivered: bool) -> Step {
    let Some(callback) = doc.callback.as_ref().filter(|_| doc.status.is_terminal()) else {
        // Not finished (a dead letter replayed meanwhile: its new end publishes again), or
        // no callback.
        return Step::Drop("the job is not finished or has no callback");
    };
    if callback.state != CallbackState::Pending {
        return Step::Drop("the callback was delivered or has failed");
    }
    let made = callback.attempts;
    if made.checked_add(1) == Some(attempt) {
        Step::Attempt
    } else if made == attempt && redelivered {
        Step::Continue
    } else if made == attempt {
        // Another copy of this message made the attempt; that copy's delivery publishes the
        // next one (or, if its worker died, is redelivered and does).
        Step::Drop("a copy of an attempt already made")
    } else {
        Step::Drop("stale: the callback is past this attempt")
    }
}

/// How to settle a callback message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    Ack,
    /// Back to the queue (after a pause): Redis or the broker failed for too long.
    Requeue,
    /// To `<queue>.callbacks.dead`: no worker can read it.
    DeadLetter,
}

/// What became of recording an attempt.
enum Recorded {
    Ok,
    /// Another copy recorded this attempt first, or the job is gone: stop.
    Superseded,
    /// Redis failed for too long.
    Failed,
}

/// Publishes and delivers callbacks. Cheap to clone.
#[derive(Clone)]
pub struct Webhooks {
    inner: Arc<Inner>,
}

struct Inner {
    settings: WebhookSettings,
    amqp: AmqpSettings,
    /// The HTTP client, or why there is none (then every attempt fails with that reason).
    client: Result<reqwest::Client, String>,
    redis: Result<RedisConn, String>,
    record: Script,
    /// The layout of the default tenant; each message's tenant scopes it.
    keys: KeyLayout,
}

impl Webhooks {
    /// Never fails: without a usable HTTP client or Redis, deliveries fail (and say why).
    pub fn new(settings: &Settings) -> Self {
        let timeout = Duration::from_millis(settings.webhooks.request_timeout_ms);
        // reqwest is built without a default crypto provider: use ring, as lapin does. An
        // error means a provider is installed already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!(
                "async-request-reply-webhooks/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .map_err(|e| describe(&e));
        if let Err(e) = &client {
            tracing::error!(error = %e, "no HTTP client for webhooks; callbacks will fail");
        }
        let retries = Retries {
            count: 2,
            max_delay: Duration::from_secs(1),
        };
        let redis = RedisConn::open(&settings.redis, retries).map_err(|e| e.to_string());
        Webhooks {
            inner: Arc::new(Inner {
                settings: settings.webhooks.clone(),
                amqp: settings.amqp.clone(),
                client,
                redis,
                record: Script::new(RECORD),
                keys: KeyLayout::new(settings.redis.key_prefix.clone()),
            }),
        }
    }

    /// Call once `doc`'s terminal state is stored, before the job's message is acknowledged:
    /// if the job has a pending callback, publishes its next attempt to the callbacks queue
    /// and waits for the broker's confirm. `Ok` when there is nothing to publish. On an error
    /// the caller must not acknowledge the job's message (it comes back, and the callback is
    /// published then).
    pub async fn enqueue(
        &self,
        publisher: &Channel,
        tenant: &Tenant,
        doc: &StatusDocument,
    ) -> Result<(), PublishError> {
        let Some(callback) = doc.callback.as_ref() else {
            return Ok(());
        };
        if callback.state != CallbackState::Pending || !doc.status.is_terminal() {
            return Ok(());
        }
        let message = CallbackMessage {
            v: CALLBACK_MESSAGE_VERSION,
            id: doc.id,
            tenant: tenant.clone(),
            attempt: callback.attempts.saturating_add(1),
        };
        let queue = topology::callback_queue(&self.inner.amqp.queue);
        self.publish(publisher, &queue, &message).await
    }

    async fn publish(
        &self,
        publisher: &Channel,
        queue: &str,
        message: &CallbackMessage,
    ) -> Result<(), PublishError> {
        // A struct of a uuid, a checked name and a number always encodes.
        let payload = serde_json::to_vec(message).unwrap_or_default();
        let key = message.id.to_string();
        let timeout = Duration::from_millis(self.inner.amqp.publish_timeout_ms);
        publish_confirmed(publisher, queue, Outgoing::new(&key, &payload), timeout).await
    }

    /// Takes callback messages from `deliveries` (a consumer of the callbacks queue, its
    /// prefetch `webhooks.concurrency`) and delivers each in a task of its own, until
    /// `shutdown` turns true or the consumer ends. Returns the deliveries still in progress,
    /// for the caller to wait for (or abort: their messages go back to the queue when the
    /// channel closes).
    pub async fn consume(
        self,
        mut deliveries: lapin::Consumer,
        publisher: Channel,
        mut shutdown: watch::Receiver<bool>,
    ) -> JoinSet<()> {
        let mut running = JoinSet::new();
        loop {
            let next = tokio::select! {
                next = deliveries.next() => next,
                _ = shutdown.changed() => break,
            };
            match next {
                Some(Ok(delivery)) => {
                    let (this, publisher) = (self.clone(), publisher.clone());
                    running.spawn(async move { this.handle(delivery, &publisher).await });
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "the callbacks consumer failed");
                    break;
                }
                None => break,
            }
            while running.try_join_next().is_some() {}
        }
        running
    }

    /// Delivers one callback message and settles it.
    async fn handle(&self, delivery: Delivery, publisher: &Channel) {
        let settle = AssertUnwindSafe(self.process(&delivery, publisher))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                tracing::error!("a webhook delivery panicked; dead-lettering its message");
                Settle::DeadLetter
            });
        let result = match settle {
            Settle::Ack => delivery.ack(BasicAckOptions::default()).await,
            Settle::Requeue => {
                tokio::time::sleep(REQUEUE_DELAY).await;
                delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    })
                    .await
            }
            Settle::DeadLetter => delivery.reject(BasicRejectOptions { requeue: false }).await,
        };
        if let Err(e) = result {
            // The channel is gone: the broker redelivers the message, and `decide` sorts out
            // what of it was done.
            tracing::warn!(error = %e, ?settle, "could not settle a callback message");
        }
    }

    async fn process(&self, delivery: &Delivery, publisher: &Channel) -> Settle {
        let message: CallbackMessage =
            match serde_json::from_slice::<CallbackMessage>(&delivery.data) {
                Ok(m) if m.v == CALLBACK_MESSAGE_VERSION => m,
                Ok(m) => {
                    tracing::error!(
                        version = m.v,
                        "unsupported callback message version; dead-lettering it"
                    );
                    return Settle::DeadLetter;
                }
                Err(e) => {
                    tracing::error!(error = %e, "undecodable callback message; dead-lettering it");
                    return Settle::DeadLetter;
                }
            };
        let span = tracing::info_span!("webhook", job_id = %message.id, attempt = message.attempt);
        self.deliver(message, delivery.redelivered, publisher)
            .instrument(span)
            .await
    }

    /// Does what callback message `message` still asks for.
    async fn deliver(
        &self,
        message: CallbackMessage,
        redelivered: bool,
        publisher: &Channel,
    ) -> Settle {
        let id = message.id;
        let keys = self.inner.keys.for_tenant(&message.tenant);
        let Some(stored) = self.read(&keys, &id).await else {
            return Settle::Requeue;
        };
        let Some(stored) = stored else {
            tracing::info!("no record of the job (expired?); callback dropped");
            return Settle::Ack;
        };
        let doc: StatusDocument = match serde_json::from_slice(&stored) {
            Ok(doc) => doc,
            Err(e) => {
                tracing::warn!(error = %e, "the job's document is unreadable; callback dropped");
                return Settle::Ack;
            }
        };
        match decide(&doc, message.attempt, redelivered) {
            Step::Drop(why) => {
                tracing::debug!(why, "callback message needs nothing");
                Settle::Ack
            }
            Step::Continue => {
                tracing::info!("attempt recorded before its worker stopped; scheduling the next");
                self.schedule_next(publisher, &message).await
            }
            Step::Attempt => {
                self.attempt(publisher, &message, redelivered, &keys, stored, doc)
                    .await
            }
        }
    }

    /// Makes attempt `message.attempt`, records it and, if the callback is still pending,
    /// schedules the next one.
    async fn attempt(
        &self,
        publisher: &Channel,
        message: &CallbackMessage,
        redelivered: bool,
        keys: &KeyLayout,
        stored: Vec<u8>,
        doc: StatusDocument,
    ) -> Settle {
        let settings = &self.inner.settings;
        let Some(mut callback) = doc.callback.clone() else {
            return Settle::Ack;
        };
        // The egress is checked here too: the allow-list may have changed since the submit.
        if let Err(reason) = settings.validate_url(&callback.url) {
            tracing::warn!(%reason, "webhook refused");
            callback.state = CallbackState::Failed;
            callback.last_error = Some(format!("refused by the worker: callback_url {reason}"));
            return self
                .settle_record(publisher, keys, message, redelivered, stored, doc, callback)
                .await;
        }
        if message.attempt > settings.max_attempts {
            // `max_attempts` was lowered since the last attempt was scheduled.
            callback.state = CallbackState::Failed;
            return self
                .settle_record(publisher, keys, message, redelivered, stored, doc, callback)
                .await;
        }
        // The final status document, as served, without the delivery's own bookkeeping.
        let mut body_doc = doc.clone();
        body_doc.callback = None;
        let body = match serde_json::to_vec(&body_doc) {
            Ok(body) => body,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode the webhook body");
                return Settle::Ack;
            }
        };
        callback.attempts = message.attempt;
        match self.send(&message.id, &callback.url, &body).await {
            Ok(status) if (200..300).contains(&status) => {
                callback.state = CallbackState::Delivered;
                callback.last_status = Some(status);
                callback.last_error = None;
                callback.delivered_at = Some(Utc::now());
                tracing::info!("webhook delivered");
            }
            Ok(status) => {
                callback.last_status = Some(status);
                callback.last_error = Some(format!("the receiver answered {status}"));
            }
            Err(e) => {
                callback.last_status = None;
                callback.last_error = Some(e);
            }
        }
        if callback.state == CallbackState::Pending {
            let error = callback.last_error.as_deref().unwrap_or_default();
            if callback.attempts >= settings.max_attempts {
                callback.state = CallbackState::Failed;
                tracing::warn!(error, "webhook failed; giving up");
            } else {
                let delay_ms = settings.backoff_ms(callback.attempts);
                tracing::info!(error, delay_ms, "webhook attempt failed; retrying");
            }
        }
        self.settle_record(publisher, keys, message, redelivered, stored, doc, callback)
            .await
    }

    /// Records `callback` (the outcome of attempt `message.attempt`, or its end) and, if it is
    /// still pending, schedules the next attempt.
    #[allow(clippy::too_many_arguments)]
    async fn settle_record(
        &self,
        publisher: &Channel,
        keys: &KeyLayout,
        message: &CallbackMessage,
        redelivered: bool,
        stored: Vec<u8>,
        doc: StatusDocument,
        callback: Callback,
    ) -> Settle {
        let pending = callback.state == CallbackState::Pending;
        match self.record(keys, message, stored, doc, callback).await {
            Recorded::Ok if pending => self.schedule_next(publisher, message).await,
            Recorded::Ok => Settle::Ack,
            Recorded::Superseded => {
                // Another copy of this message recorded the attempt first. If this copy is the
                // redelivery of the one whose worker recorded it and died before scheduling the
                // next attempt (its record reached Redis after this copy read the document),
                // nobody else will schedule it: decide again from what is stored now.
                let next = match self.read(keys, &message.id).await {
                    Some(Some(fresh)) => serde_json::from_slice::<StatusDocument>(&fresh)
                        .map(|fresh| decide(&fresh, message.attempt, redelivered))
                        .unwrap_or(Step::Drop("unreadable")),
                    Some(None) => Step::Drop("the job is gone"),
                    None => return Settle::Requeue,
                };
                if next == Step::Continue {
                    tracing::info!("another copy recorded this attempt; scheduling the next");
                    return self.schedule_next(publisher, message).await;
                }
                tracing::info!("another copy recorded this attempt first; stopping");
                Settle::Ack
            }
            // Unrecorded, the attempt is made again when the message comes back.
            Recorded::Failed => Settle::Requeue,
        }
    }

    /// Publishes the attempt after `message`'s to the delay queue of its back-off, retrying
    /// for a while; `Ack` once confirmed.
    async fn schedule_next(&self, publisher: &Channel, message: &CallbackMessage) -> Settle {
        let next = CallbackMessage {
            attempt: message.attempt.saturating_add(1),
            ..message.clone()
        };
        let delay = self.inner.settings.backoff_ms(message.attempt);
        let queue = topology::callback_delay_queue(&self.inner.amqp, delay);
        let mut patience = Patience::new("cannot schedule the next webhook attempt");
        loop {
            match self.publish(publisher, &queue, &next).await {
                Ok(()) => return Settle::Ack,
                Err(e) => {
                    if !patience.again(&e).await {
                        return Settle::Requeue;
                    }
                }
            }
        }
    }

    /// The job's stored document (`Some(None)`: no such job), retrying Redis for a while;
    /// `None` when Redis keeps failing.
    async fn read(&self, keys: &KeyLayout, id: &JobId) -> Option<Option<Vec<u8>>> {
        let mut patience = Patience::new("cannot read the job");
        loop {
            let result = match self.inner.redis.clone() {
                Ok(mut conn) => redis::cmd("HGET")
                    .arg(keys.job(id))
                    .arg(field::DOC)
                    .query_async::<Option<Vec<u8>>>(&mut conn)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            match result {
                Ok(doc) => return Some(doc),
                Err(e) => {
                    if !patience.again(&e).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Writes `callback` into the stored document if it still records the attempts before
    /// `message`'s (compare-and-set), retrying Redis for a while.
    async fn record(
        &self,
        keys: &KeyLayout,
        message: &CallbackMessage,
        mut stored: Vec<u8>,
        mut doc: StatusDocument,
        mut callback: Callback,
    ) -> Recorded {
        let mut patience = Patience::new("cannot record the webhook attempt");
        loop {
            doc.callback = Some(callback.clone());
            let Ok(new) = serde_json::to_vec(&doc) else {
                return Recorded::Superseded;
            };
            let outcome = match self.inner.redis.clone() {
                Ok(mut conn) => self
                    .inner
                    .record
                    .key(keys.job(&message.id))
                    .arg(stored.as_slice())
                    .arg(new.as_slice())
                    .invoke_async::<String>(&mut conn)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            match outcome.as_deref() {
                Ok("ok") => return Recorded::Ok,
                Ok("changed") => {
                    // Someone else wrote the document: decide again from what is there now.
                    match self.read(keys, &message.id).await {
                        None => return Recorded::Failed,
                        Some(None) => return Recorded::Superseded,
                        Some(Some(fresh)) => {
                            let Ok(fresh_doc) = serde_json::from_slice::<StatusDocument>(&fresh)
                            else {
                                return Recorded::Superseded;
                            };
                            let still_pending = fresh_doc.status.is_terminal()
                                && fresh_doc
                                    .callback
                                    .as_ref()
                                    .is_some_and(|c| c.state == CallbackState::Pending);
                            if callback.state == CallbackState::Delivered && still_pending {
                                // The receiver has it: that is what the document must say,
                                // whichever attempt another copy recorded meanwhile (else
                                // the delivery is lost: that copy's chain may have died
                                // with its worker, or deliver again only as a duplicate).
                                let made = fresh_doc.callback.as_ref().map_or(0, |c| c.attempts);
                                callback.attempts = callback.attempts.max(made);
                            } else if decide(&fresh_doc, message.attempt, false) != Step::Attempt {
                                return Recorded::Superseded;
                            }
                            (stored, doc) = (fresh, fresh_doc);
                        }
                    }
                }
                Ok(_) => return Recorded::Superseded,
                Err(e) => {
                    if !patience.again(&e).await {
                        return Recorded::Failed;
                    }
                }
            }
        }
    }

    /// One attempt; the HTTP status, or why there is none.
    async fn send(&self, id: &JobId, url: &str, body: &[u8]) -> Result<u16, String> {
        let client = self.inner.client.as_ref().map_err(Clone::clone)?;
        let timestamp = Utc::now().timestamp();
        let signature = webhooks::sign(self.inner.settings.secret.as_bytes(), timestamp, body);
        let response = client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(webhooks::TIMESTAMP_HEADER, timestamp.to_string())
            .header(webhooks::SIGNATURE_HEADER, signature)
            .header(webhooks::ID_HEADER, id.to_string())
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| describe(&e.without_url()))?;
        // The answer's body is of no interest.
        Ok(response.status().as_u16())
    }
}

/// Retrying what failed (Redis, a publish) with back-off, for up to [`PATIENCE`].
struct Patience {
    what: &'static str,
    started: Instant,
    backoff: Duration,
}

impl Patience {
    fn new(what: &'static str) -> Self {
        Patience {
            what,
            started: Instant::now(),
            backoff: Duration::from_millis(100),
        }
    }

    /// After a failure: waits and says `true` (try again), or `false` once patience ran out
    /// (the message is then given back).
    async fn again(&mut self, error: &(dyn std::fmt::Display + Sync)) -> bool {
        if self.started.elapsed() >= PATIENCE {
            tracing::warn!(%error, "{}; giving the callback message back", self.what);
            return false;
        }
        tracing::warn!(%error, "{}; retrying", self.what);
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        true
    }
}

/// An error with its causes, short enough for the status document.
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = cause.source();
    }
    text.chars().take(MAX_ERROR_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::JobStatus;

    /// A finished job (or not) whose callback has had `attempts`.
    fn doc(finished: bool, attempts: u32, state: CallbackState) -> StatusDocument {
        let mut doc = StatusDocument::queued(JobId::new(), "echo", Utc::now())
            .with_callback(Some("https://hooks.example.com/"));
        if finished {
            doc.status = JobStatus::Succeeded;
        }
        if let Some(callback) = doc.callback.as_mut() {
            callback.attempts = attempts;
            callback.state = state;
        }
        doc
    }

    fn pending(attempts: u32) -> StatusDocument {
        doc(true, attempts, CallbackState::Pending)
    }

    #[test]
    fn the_next_attempt_is_made() {
        assert_eq!(decide(&pending(0), 1, false), Step::Attempt);
        assert_eq!(decide(&pending(2), 3, true), Step::Attempt);
    }

    #[test]
    fn a_redelivered_attempt_that_was_recorded_schedules_the_next() {
        assert_eq!(decide(&pending(2), 2, true), Step::Continue);
        // A copy that was not redelivered leaves that to the delivery that recorded it.
        assert!(matches!(decide(&pending(2), 2, false), Step::Drop(_)));
    }

    #[test]
    fn stale_settled_and_unfinished_are_dropped() {
        assert!(matches!(decide(&pending(3), 2, true), Step::Drop(_)));
        let delivered = doc(true, 1, CallbackState::Delivered);
        assert!(matches!(decide(&delivered, 2, false), Step::Drop(_)));
        let failed = doc(true, 0, CallbackState::Failed);
        assert!(matches!(decide(&failed, 1, false), Step::Drop(_)));
        let running = doc(false, 0, CallbackState::Pending);
        assert!(matches!(decide(&running, 1, false), Step::Drop(_)));
        let mut without = pending(0);
        without.callback = None;
        assert!(matches!(decide(&without, 1, false), Step::Drop(_)));
    }

    #[test]
    fn the_message_round_trips() {
        let message = CallbackMessage {
            v: CALLBACK_MESSAGE_VERSION,
            id: JobId::new(),
            tenant: Tenant::default(),
            attempt: 2,
        };
        let bytes = serde_json::to_vec(&message).unwrap();
        assert_eq!(
            serde_json::from_slice::<CallbackMessage>(&bytes).unwrap(),
            message
        );
    }
}
