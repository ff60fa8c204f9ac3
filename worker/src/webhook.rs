//! Webhook delivery: once a job with a `callback_url` has reached a terminal state (and that
//! state is stored), its final status document is POSTed to the URL, signed (see
//! `shared::webhooks`), in a background task, so neither the job's slot nor its ack waits for
//! the receiver. Failed attempts (no answer, a timeout, anything but a 2xx; redirects are not
//! followed) are retried with exponential back-off up to `webhooks.max_attempts`.
//!
//! The job's status document stays the single source of truth: after every attempt its
//! `callback` member is rewritten (state, attempts, last status or error) by a small script
//! that writes only a terminal job's document, only while this task owns the delivery, and
//! only if the document is unchanged since it was read; it never touches `state`.
//!
//! Ownership: a delivery is claimed in the job's hash (`cb_owner`, `cb_until` in unix ms), and
//! the claim is extended on every write. Whoever calls [`Webhooks::job_finished`] for the same
//! job meanwhile (a cancel racing the outcome, say) finds it claimed and does nothing. If the
//! worker dies, the claim lapses and the callback stays `pending`: a later call for that job
//! (e.g. when its message is redelivered) takes it over and continues with the attempts left;
//! without such a call the delivery is lost (see the README).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use redis::Script;
use shared::keys::field;
use shared::redis_conn::{RedisConn, Retries};
use shared::webhooks::{self, Callback, CallbackState, WebhookSettings};
use shared::{JobId, KeyLayout, Settings, StatusDocument};

/// Fields of the job hash that hold the delivery's claim: an owner token and its expiry (ms).
const OWNER: &str = "cb_owner";
const UNTIL: &str = "cb_until";
/// Kept on a claim beyond the next attempt's worst case.
const CLAIM_SLACK: Duration = Duration::from_secs(30);
/// Longest `last_error` kept in the document.
const MAX_ERROR_CHARS: usize = 300;

/// KEYS: job hash. ARGV: owner, now (ms), claim expiry (ms), owner field, expiry field.
/// Returns {'ok', doc} when the job is terminal and its delivery is free (or lapsed, or ours);
/// {'busy', claim expiry, doc} when another owner holds it; otherwise {reason}.
const CLAIM: &str = r#"
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'missing'} end
if state ~= 'succeeded' and state ~= 'failed' and state ~= 'canceled' then return {'not-terminal'} end
local owner = redis.call('HGET', KEYS[1], ARGV[4])
local expiry = tonumber(redis.call('HGET', KEYS[1], ARGV[5]) or '0') or 0
if owner and owner ~= ARGV[1] and expiry > tonumber(ARGV[2]) then
  return {'busy', tostring(expiry), redis.call('HGET', KEYS[1], 'doc')}
end
redis.call('HSET', KEYS[1], ARGV[4], ARGV[1], ARGV[5], ARGV[3])
return {'ok', redis.call('HGET', KEYS[1], 'doc')}
"#;

/// KEYS: job hash. ARGV: owner, document as read, new document, claim expiry (ms), owner
/// field, expiry field. Writes the new document only if the job is terminal, the delivery is
/// still ours and the document is the one read. Returns 'ok', 'lost', 'not-terminal' or
/// 'changed'.
const UPDATE: &str = r#"
if redis.call('HGET', KEYS[1], ARGV[5]) ~= ARGV[1] then return 'lost' end
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'succeeded' and state ~= 'failed' and state ~= 'canceled' then return 'not-terminal' end
if redis.call('HGET', KEYS[1], 'doc') ~= ARGV[2] then return 'changed' end
redis.call('HSET', KEYS[1], 'doc', ARGV[3], ARGV[6], ARGV[4])
return 'ok'
"#;

/// Delivers the callbacks of finished jobs. Cheap to clone.
#[derive(Clone)]
pub struct Webhooks {
    inner: Arc<Inner>,
    /// The layout scoped to the tenant whose jobs this handle finishes.
    keys: KeyLayout,
}

struct Inner {
    settings: WebhookSettings,
    /// The HTTP client, or why there is none (then every attempt fails with that reason).
    client: Result<reqwest::Client, String>,
    redis: Result<RedisConn, String>,
    claim: Script,
    update: Script,
    in_flight: AtomicUsize,
    shutdown_grace: Duration,
}

/// What a claim found.
enum Claim {
    /// Ours: the stored document, as bytes and parsed.
    Got(Vec<u8>, Box<StatusDocument>),
    /// Another owner holds the pending delivery until this time (unix ms).
    Busy(i64),
    /// Nothing to deliver (not terminal, gone, or no pending callback).
    Nothing,
}

/// What happened to a write of the `callback` member.
enum Recorded {
    Ok,
    /// Someone else owns the delivery now (or the job is gone): stop.
    Lost,
    /// Redis failed; the delivery goes on, unrecorded.
    Failed,
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
                client,
                redis,
                claim: Script::new(CLAIM),
                update: Script::new(UPDATE),
                in_flight: AtomicUsize::new(0),
                shutdown_grace: Duration::from_secs(settings.worker.shutdown_grace_seconds),
            }),
            keys: KeyLayout::new(settings.redis.key_prefix.clone()),
        }
    }

    /// The same deliveries, for `tenant`'s jobs.
    pub fn for_tenant(&self, tenant: &shared::Tenant) -> Self {
        Webhooks {
            inner: self.inner.clone(),
            keys: self.keys.for_tenant(tenant),
        }
    }

    /// Call once `doc`'s terminal state is stored (succeeded, failed or canceled). If the job
    /// has a pending callback, its delivery starts in the background; returns at once. Safe to
    /// call more than once for a job: only one delivery runs, and a delivered or failed
    /// callback is not sent again. What is sent is the document stored in Redis, so a caller
    /// whose own write lost a race still delivers the state that stands.
    pub fn job_finished(&self, doc: &StatusDocument) {
        let pending = doc
            .callback
            .as_ref()
            .is_some_and(|c| c.state == CallbackState::Pending);
        if !pending || !doc.status.is_terminal() {
            return;
        }
        let this = self.clone();
        let id = doc.id;
        let guard = InFlight::new(&self.inner);
        tokio::spawn(async move {
            let _guard = guard;
            this.deliver(id).await;
        });
    }

    /// Waits (up to the worker's shutdown grace) for deliveries in progress. Those still
    /// unfinished then stay `pending` in their documents.
    pub async fn drain(&self) {
        let deadline = Instant::now() + self.inner.shutdown_grace;
        loop {
            let n = self.inner.in_flight.load(Ordering::SeqCst);
            if n == 0 {
                return;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    deliveries = n,
                    "webhook deliveries unfinished at shutdown; they stay pending"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn deliver(&self, id: JobId) {
        let owner = uuid::Uuid::new_v4().simple().to_string();
        let settings = &self.inner.settings;
        let mut waited = false;
        let (mut stored, doc) = loop {
            match self.claim(&id, &owner).await {
                Ok(Claim::Got(bytes, doc)) => break (bytes, doc),
                Ok(Claim::Busy(until_ms)) if !waited => {
                    // Someone else delivers it, or did until it died (e.g. before acking the
                    // message that brought us here). Look again once that claim lapses.
                    waited = true;
                    let wait = (until_ms - Utc::now().timestamp_millis()).max(0) as u64 + 1000;
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(job_id = %id, error = %e, "cannot claim the webhook delivery; it is not sent");
                    return;
                }
            }
        };
        let Some(mut callback) = doc.callback.clone() else {
            return;
        };
        if callback.state != CallbackState::Pending {
            return;
        }
        // The final status document, as served, without the delivery's own bookkeeping (the
        // same bytes on every attempt).
        let mut body_doc = *doc;
        body_doc.callback = None;
        let body = match serde_json::to_vec(&body_doc) {
            Ok(body) => body,
            Err(e) => {
                tracing::error!(job_id = %id, error = %e, "cannot encode the webhook body");
                return;
            }
        };
        // The egress is checked here too: the allow-list may have changed since the submit.
        if let Err(reason) = settings.validate_url(&callback.url) {
            callback.state = CallbackState::Failed;
            callback.last_error = Some(format!("refused by the worker: callback_url {reason}"));
            self.record(&id, &owner, &mut stored, &callback, Duration::ZERO)
                .await;
            tracing::warn!(job_id = %id, %reason, "webhook refused");
            return;
        }
        loop {
            if callback.attempts >= settings.max_attempts {
                // Resumed after a crash that happened after the last attempt.
                callback.state = CallbackState::Failed;
                self.record(&id, &owner, &mut stored, &callback, Duration::ZERO)
                    .await;
                return;
            }
            callback.attempts += 1;
            match self.send(&id, &callback.url, &body).await {
                Ok(status) if (200..300).contains(&status) => {
                    callback.state = CallbackState::Delivered;
                    callback.last_status = Some(status);
                    callback.last_error = None;
                    callback.delivered_at = Some(Utc::now());
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
            let delay = if callback.state == CallbackState::Delivered {
                tracing::info!(job_id = %id, attempts = callback.attempts, "webhook delivered");
                Duration::ZERO
            } else if callback.attempts >= settings.max_attempts {
                callback.state = CallbackState::Failed;
                tracing::warn!(job_id = %id, attempts = callback.attempts, error = callback.last_error.as_deref().unwrap_or_default(), "webhook failed; giving up");
                Duration::ZERO
            } else {
                let delay = Duration::from_millis(settings.backoff_ms(callback.attempts));
                tracing::info!(job_id = %id, attempt = callback.attempts, ?delay, error = callback.last_error.as_deref().unwrap_or_default(), "webhook attempt failed; retrying");
                delay
            };
            if let Recorded::Lost = self
                .record(&id, &owner, &mut stored, &callback, delay)
                .await
            {
                tracing::info!(job_id = %id, "webhook delivery taken over or job gone; stopping");
                return;
            }
            if callback.state != CallbackState::Pending {
                return;
            }
            tokio::time::sleep(delay).await;
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

    fn redis(&self) -> Result<RedisConn, String> {
        self.inner.redis.clone()
    }

    /// Claims the delivery of a terminal job's callback.
    async fn claim(&self, id: &JobId, owner: &str) -> Result<Claim, String> {
        let mut conn = self.redis()?;
        let now = Utc::now().timestamp_millis();
        let until = now + self.claim_span(Duration::ZERO).as_millis() as i64;
        let reply: Vec<Vec<u8>> = self
            .inner
            .claim
            .key(self.keys.job(id))
            .arg(owner)
            .arg(now)
            .arg(until)
            .arg(OWNER)
            .arg(UNTIL)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        match reply.as_slice() {
            [ok, doc] if ok == b"ok" => {
                let parsed = serde_json::from_slice(doc).map_err(|e| e.to_string())?;
                Ok(Claim::Got(doc.clone(), Box::new(parsed)))
            }
            [busy, until, doc] if busy == b"busy" => {
                // Worth waiting for only while the callback is still pending.
                let parsed: StatusDocument =
                    serde_json::from_slice(doc).map_err(|e| e.to_string())?;
                let pending = parsed
                    .callback
                    .is_some_and(|c| c.state == CallbackState::Pending);
                let until = String::from_utf8_lossy(until).parse::<f64>().unwrap_or(0.0);
                Ok(if pending {
                    Claim::Busy(until as i64)
                } else {
                    Claim::Nothing
                })
            }
            [reason, ..] => {
                tracing::debug!(job_id = %id, reason = %String::from_utf8_lossy(reason), "webhook not claimed");
                Ok(Claim::Nothing)
            }
            [] => Ok(Claim::Nothing),
        }
    }

    /// How long a claim must last to cover an attempt after `delay`.
    fn claim_span(&self, delay: Duration) -> Duration {
        delay + Duration::from_millis(self.inner.settings.request_timeout_ms) * 2 + CLAIM_SLACK
    }

    /// Writes `callback` into the stored document (`stored`, updated on success), extending
    /// the claim past the next attempt after `delay`.
    async fn record(
        &self,
        id: &JobId,
        owner: &str,
        stored: &mut Vec<u8>,
        callback: &Callback,
        delay: Duration,
    ) -> Recorded {
        let mut conn = match self.redis() {
            Ok(conn) => conn,
            Err(_) => return Recorded::Failed,
        };
        // A few rounds: the document may have changed under us (it should not: the job is
        // terminal), and Redis may blink.
        for _ in 0..3 {
            let mut doc: StatusDocument = match serde_json::from_slice(stored) {
                Ok(doc) => doc,
                Err(e) => {
                    tracing::warn!(job_id = %id, error = %e, "stored document unreadable");
                    return Recorded::Lost;
                }
            };
            doc.callback = Some(callback.clone());
            let Ok(new) = serde_json::to_vec(&doc) else {
                return Recorded::Failed;
            };
            let until = Utc::now().timestamp_millis() + self.claim_span(delay).as_millis() as i64;
            let outcome: Result<String, _> = self
                .inner
                .update
                .key(self.keys.job(id))
                .arg(owner)
                .arg(stored.as_slice())
                .arg(new.as_slice())
                .arg(until)
                .arg(OWNER)
                .arg(UNTIL)
                .invoke_async(&mut conn)
                .await;
            match outcome.as_deref() {
                Ok("ok") => {
                    *stored = new;
                    return Recorded::Ok;
                }
                Ok("changed") => {
                    let fresh: Result<Option<Vec<u8>>, _> = redis::cmd("HGET")
                        .arg(self.keys.job(id))
                        .arg(field::DOC)
                        .query_async(&mut conn)
                        .await;
                    match fresh {
                        Ok(Some(fresh)) => *stored = fresh,
                        Ok(None) => return Recorded::Lost,
                        Err(e) => {
                            tracing::warn!(job_id = %id, error = %e, "cannot re-read the job");
                        }
                    }
                }
                Ok(_) => return Recorded::Lost,
                Err(e) => {
                    tracing::warn!(job_id = %id, error = %e, "cannot record the webhook's state");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        Recorded::Failed
    }
}

/// Counts a delivery in flight for as long as it lives (also if its task panics).
struct InFlight(Arc<Inner>);

impl InFlight {
    fn new(inner: &Arc<Inner>) -> Self {
        inner.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(inner.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
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
