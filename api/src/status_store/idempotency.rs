//! Idempotency records in Redis: `{prefix}:idem:<SHA-256 of the key>`, a string holding the
//! record's state, the job id and the SHA-256 of the canonical request body (see
//! `crate::idempotency`). Every change is conditional on the record's current value, so a
//! request only ever completes or releases its own claim.

use redis::Script;

use super::{StatusStore, StoreError};

/// KEYS: record. ARGV: value, ttl (ms). Claims the key with `SET NX` and returns nil, or
/// returns the record that holds it.
const CLAIM: &str = r#"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
return redis.call('GET', KEYS[1])
"#;

/// KEYS: record. ARGV: expected value, new value, ttl (s). Replaces the record only if it
/// still holds the expected value; returns 1 if it did.
const REPLACE: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
"#;

/// KEYS: record. ARGV: expected value. Deletes the record only if it holds the expected value.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"#;

impl StatusStore {
    /// Claims the key for `value` (for `ttl_ms`), or returns the record that holds it. Atomic:
    /// of any number of concurrent claims exactly one succeeds.
    pub async fn idempotency_claim(
        &self,
        key_sha256: [u8; 32],
        value: String,
        ttl_ms: u64,
    ) -> Result<Option<String>, StoreError> {
        self.with_conn(move |store, mut conn| async move {
            let held: Option<String> = Script::new(CLAIM)
                .key(store.keys.idempotency(&key_sha256))
                .arg(value)
                .arg(ttl_ms.max(1))
                .invoke_async(&mut conn)
                .await?;
            Ok(held)
        })
        .await
    }

    /// Replaces the record `expected` by `value`, kept for the retention period. Returns
    /// whether the record still held `expected`.
    pub async fn idempotency_complete(
        &self,
        key_sha256: [u8; 32],
        expected: String,
        value: String,
    ) -> Result<bool, StoreError> {
        self.with_conn(move |store, mut conn| async move {
            let done: i64 = Script::new(REPLACE)
                .key(store.keys.idempotency(&key_sha256))
                .arg(expected)
                .arg(value)
                .arg(store.retention_seconds.max(1))
                .invoke_async(&mut conn)
                .await?;
            Ok(done == 1)
        })
        .await
    }

    /// Deletes the record if it (still) holds `expected`.
    pub async fn idempotency_release(
        &self,
        key_sha256: [u8; 32],
        expected: String,
    ) -> Result<(), StoreError> {
        self.with_conn(move |store, mut conn| async move {
            Script::new(RELEASE)
                .key(store.keys.idempotency(&key_sha256))
                .arg(expected)
                .invoke_async::<i64>(&mut conn)
                .await?;
            Ok(())
        })
        .await
    }

    /// [`Self::idempotency_release`] without waiting for it (for a request that ends early).
    pub fn idempotency_release_later(&self, key_sha256: [u8; 32], expected: String) {
        let store = self.clone();
        self.io.spawn(async move {
            if let Err(e) = store.idempotency_release(key_sha256, expected).await {
                tracing::warn!(error = %e, "could not release an idempotency key; it lapses by itself");
            }
        });
    }
}
