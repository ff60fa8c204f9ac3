//! `Idempotency-Key` on `POST /v1/jobs`: a client that repeats a submit (say, after a timeout)
//! with the same key and the same body gets the job of the first request back, not a second
//! job; the same key with another body is a `409 Conflict`.
//!
//! The record `{prefix}:idem:<SHA-256 of the key>` holds the job id and a SHA-256 of the
//! body in canonical JSON (object members sorted, no insignificant whitespace), so two bodies
//! that differ only in layout or member order are the same request. It goes through two
//! states:
//!
//! - `pending`: claimed with `SET NX` before the job is recorded, expiring after a bound on how
//!   long a submit can take, so a facade that dies mid-request does not block the key for
//!   long. A concurrent request with the same key waits (briefly) for it to be settled.
//! - `done`: set once the broker confirmed the publish, kept for `jobs.retention_seconds`.
//!
//! A submit that fails (503) releases its claim, so the client's retry can succeed. A `done`
//! record whose job has expired (or vanished) is stale: it is dropped and the request runs as
//! a new one.

use std::time::{Duration, Instant};

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse};
use serde_json::Value;
use sha2::{Digest, Sha256};
use shared::{JobId, StatusHead};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::job_response::{etag, retry_after, with_query};
use crate::startup::AppState;
use crate::status_store::{Lookup, StatusStore};

pub const HEADER: &str = "Idempotency-Key";
/// Set on an answer that replays an earlier request's job.
pub const REPLAYED_HEADER: &str = "Idempotent-Replayed";
const MAX_KEY_LEN: usize = 255;

/// A validated key and the fingerprint of the request it came with.
#[derive(Debug, Clone)]
pub struct Idempotency {
    key_sha256: [u8; 32],
    body_sha256: String,
}

impl Idempotency {
    /// The request's `Idempotency-Key` (none if absent) with the fingerprint of `body`. A key
    /// must be 1 to 255 visible ASCII characters, given once.
    pub fn from_request(req: &HttpRequest, body: &Value) -> Result<Option<Self>, ApiError> {
        let mut values = req.headers().get_all(HEADER);
        let Some(value) = values.next() else {
            return Ok(None);
        };
        let invalid = |detail: &str| ApiError::InvalidHeader {
            name: HEADER,
            detail: format!("{HEADER}: {detail}"),
        };
        if values.next().is_some() {
            return Err(invalid("must be given once"));
        }
        let key = value.as_bytes();
        if key.is_empty()
            || key.len() > MAX_KEY_LEN
            || !key.iter().all(|b| (0x21..=0x7e).contains(b))
        {
            return Err(invalid(
                "must be 1 to 255 visible ASCII characters (no spaces or control characters)",
            ));
        }
        Ok(Some(Idempotency {
            key_sha256: Sha256::digest(key).into(),
            body_sha256: hex::encode(Sha256::digest(canonical_json(body))),
        }))
    }
}

/// `value` as canonical JSON: object members sorted by name, no whitespace.
pub fn canonical_json(value: &Value) -> Vec<u8> {
    fn write(value: &Value, out: &mut Vec<u8>) {
        match value {
            Value::Object(map) => {
                let mut members: Vec<_> = map.iter().collect();
                members.sort_by(|a, b| a.0.cmp(b.0));
                out.push(b'{');
                for (i, (k, v)) in members.into_iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    // Serialising a string cannot fail.
                    out.extend(serde_json::to_vec(k).unwrap_or_default());
                    out.push(b':');
                    write(v, out);
                }
                out.push(b'}');
            }
            Value::Array(items) => {
                out.push(b'[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write(v, out);
                }
                out.push(b']');
            }
            scalar => out.extend(serde_json::to_vec(scalar).unwrap_or_default()),
        }
    }
    let mut out = Vec::new();
    write(value, &mut out);
    out
}

/// What Redis holds for a key.
#[derive(Debug, PartialEq, Eq)]
enum Record {
    Pending { job: JobId, body: String },
    Done { job: JobId, body: String },
}

impl Record {
    fn encode(done: bool, job: &JobId, body: &str) -> String {
        let state = if done { "done" } else { "pending" };
        format!("{state} {job} {body}")
    }

    fn decode(raw: &str) -> Option<Record> {
        let mut parts = raw.split(' ');
        let (state, job, body) = (parts.next()?, parts.next()?.parse().ok()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let body = body.to_owned();
        match state {
            "pending" => Some(Record::Pending { job, body }),
            "done" => Some(Record::Done { job, body }),
            _ => None,
        }
    }
}

/// How a submit with a key goes on.
pub enum Claim {
    /// This request owns the key: create the job, then [`Guard::complete`].
    Fresh(Guard),
    /// The key belongs to an earlier request with the same body: answer with its job.
    Replay(HttpResponse),
}

/// Claims the key of `idempotency` (if any) for the job `id` about to be created.
pub async fn claim(
    idempotency: Option<Idempotency>,
    state: &AppState,
    store: &StatusStore,
    caller: &Caller,
    id: &JobId,
) -> Result<Claim, ApiError> {
    let Some(idem) = idempotency else {
        return Ok(Claim::Fresh(Guard { held: None }));
    };
    let amqp = &state.settings.amqp;
    let redis = &state.settings.redis;
    // A submit takes at most a connection attempt and a publish confirm, plus Redis writes:
    // the other requests wait that long for it, and a claim left by a facade that died
    // mid-request lapses a little later.
    let settle_within = Duration::from_millis(amqp.connect_timeout_ms + amqp.publish_timeout_ms)
        + Duration::from_secs(1);
    let pending_ttl = settle_within
        + Duration::from_millis(2 * redis.response_timeout_ms)
        + Duration::from_secs(5);
    let pending = Record::encode(false, id, &idem.body_sha256);
    let deadline = Instant::now() + settle_within;
    let mut pause = Duration::from_millis(20);
    loop {
        let held = store
            .idempotency_claim(
                idem.key_sha256,
                pending.clone(),
                pending_ttl.as_millis() as u64,
            )
            .await?;
        let Some(raw) = held else {
            return Ok(Claim::Fresh(Guard {
                held: Some(Held {
                    store: store.clone(),
                    key_sha256: idem.key_sha256,
                    pending,
                    done: Record::encode(true, id, &idem.body_sha256),
                }),
            }));
        };
        match Record::decode(&raw) {
            None => {
                // Not written by this service: drop it and claim again.
                tracing::warn!("undecodable idempotency record; replacing it");
                store.idempotency_release(idem.key_sha256, raw).await?;
                continue;
            }
            Some(Record::Pending { body, .. } | Record::Done { body, .. })
                if body != idem.body_sha256 =>
            {
                return Err(ApiError::IdempotencyKeyReused);
            }
            Some(Record::Pending { .. }) => {
                // Another request with this key is on its way: wait for it to settle.
                if Instant::now() >= deadline {
                    return Err(ApiError::IdempotencyKeyInFlight);
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            Some(Record::Done { job, .. }) => match store.document(&job).await? {
                Lookup::Found(bytes) => {
                    return Ok(Claim::Replay(replay(state, caller, bytes).await))
                }
                Lookup::Gone | Lookup::NotFound => {
                    // The job outlived its retention before the key did: the key no longer
                    // names anything, so this request is served as a new one.
                    tracing::info!(job_id = %job, "idempotency key of an expired job; reusing it");
                    store.idempotency_release(idem.key_sha256, raw).await?;
                }
            },
        }
    }
}

/// The answer to a repeated request: the first request's 202 with the job as it is now.
async fn replay(state: &AppState, caller: &Caller, doc_bytes: Vec<u8>) -> HttpResponse {
    let mut builder = HttpResponse::Accepted();
    if let Ok(doc) = StatusHead::decode(&doc_bytes) {
        builder
            .insert_header((
                header::LOCATION,
                with_query(doc.id.status_path(), state.location_query(caller, &doc.id)),
            ))
            .insert_header((
                header::RETRY_AFTER,
                retry_after(&state.estimates.policy_for(&doc).await),
            ));
    }
    builder
        .insert_header((header::ETAG, etag(&doc_bytes)))
        .insert_header((REPLAYED_HEADER, "true"))
        .content_type("application/json")
        .body(doc_bytes)
}

struct Held {
    store: StatusStore,
    key_sha256: [u8; 32],
    pending: String,
    done: String,
}

/// A claimed key (or none, for a request without one). Completed once the job is queued;
/// released at once by [`Guard::release`] or, if the request ends any other way, when dropped.
pub struct Guard {
    held: Option<Held>,
}

impl Guard {
    /// The job is queued: the key now names it for the retention period.
    pub async fn complete(mut self) {
        let Some(held) = self.held.take() else {
            return;
        };
        match held
            .store
            .idempotency_complete(held.key_sha256, held.pending, held.done)
            .await
        {
            Ok(true) => {}
            Ok(false) => tracing::warn!("idempotency claim lapsed before the job was queued"),
            Err(e) => tracing::warn!(error = %e, "could not complete an idempotency record"),
        }
    }

    /// The submit failed: free the key for a retry.
    pub async fn release(mut self) {
        let Some(held) = self.held.take() else {
            return;
        };
        if let Err(e) = held
            .store
            .idempotency_release(held.key_sha256, held.pending.clone())
            .await
        {
            tracing::warn!(error = %e, "could not release an idempotency key; retrying later");
            held.store
                .idempotency_release_later(held.key_sha256, held.pending);
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(held) = self.held.take() {
            held.store
                .idempotency_release_later(held.key_sha256, held.pending);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_ignores_layout_and_member_order() {
        let a: Value =
            serde_json::from_str(r#"{"type":"echo","input":{"b":1,"a":[1,2]}}"#).unwrap();
        let b: Value = serde_json::from_str(
            "{ \"input\" : { \"a\" : [ 1 , 2 ] , \"b\" : 1 },\n \"type\": \"echo\" }",
        )
        .unwrap();
        assert_eq!(canonical_json(&a), canonical_json(&b));
        assert_eq!(
            canonical_json(&a),
            br#"{"input":{"a":[1,2],"b":1},"type":"echo"}"#.to_vec()
        );
        assert_ne!(
            canonical_json(&json!({"input": 1})),
            canonical_json(&json!({"input": 2}))
        );
    }

    #[test]
    fn records_round_trip() {
        let id = JobId::new();
        let pending = Record::encode(false, &id, "ab");
        assert_eq!(
            Record::decode(&pending),
            Some(Record::Pending {
                job: id,
                body: "ab".into()
            })
        );
        assert_eq!(
            Record::decode(&Record::encode(true, &id, "ab")),
            Some(Record::Done {
                job: id,
                body: "ab".into()
            })
        );
        assert_eq!(Record::decode("done nope ab"), None);
        assert_eq!(Record::decode(""), None);
    }
}
