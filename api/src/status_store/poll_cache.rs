//! Status documents kept in the facade between polls, so that polling a job that has not changed
//! costs no Redis round trip. Most polls see no change: a client polls every `Retry-After`
//! seconds while its job waits or runs, and only two or three writes happen in a job's life.
//!
//! Correctness comes from Redis's server-assisted client-side caching: documents are read on
//! one RESP3 connection with `CLIENT TRACKING ON`, and Redis pushes an invalidation on that
//! connection when a key it read is written or deleted (an expired key: when Redis gets round
//! to deleting it, see below). The cache drops the key when the push arrives (in the
//! connection's own task, as it reads it).
//!
//! Two races are closed here rather than trusted to the transport:
//!
//! - A reply and the invalidation of a write made just after the read can arrive in one read
//!   of the socket; the invalidation is applied at once, the reply only when the waiting poll
//!   resumes. So every read is registered before it is sent, an invalidation of its key marks
//!   it overtaken, and an overtaken reply is answered but not kept. (redis-rs's own cache,
//!   `cache-aio`, keeps such a reply until its client-side TTL: BENCHMARKS.md, stop 14.)
//! - A lost connection loses the invalidations sent meanwhile: everything is dropped, reads in
//!   flight are marked overtaken, and the next miss connects again. A connection that dies
//!   silently (a peer gone without a reset) would carry no invalidations and, while every poll
//!   is a hit, no reads that could fail either: a heartbeat pings it every `HEARTBEAT` and
//!   counts it lost when the ping fails or times out.
//!
//! Expiry needs more than the invalidation: Redis sends it when it *deletes* an expired key, and
//! it deletes one only when a command touches it or its expiry sampling happens to pick it; in
//! a Redis holding many keys with a TTL (every job of the retention period has one) that can
//! take minutes, while a read of the key on any connection already finds it gone. So each read
//! also asks for the key's remaining time to live in the same round trip (`PTTL`, pipelined
//! after the `HGET`), and an entry is never served from the instant its key expires: the
//! deadline is taken from the local monotonic clock read before the request was sent, so the
//! time the request and its reply spent travelling only makes it earlier, and it is moved
//! earlier again by a millisecond (Redis counts in whole ones) and a thousandth of the time to
//! live (two clocks running at slightly different rates). A poll after that reads Redis, whose
//! own check on access makes the key vanish, and the job answers `410` (its tombstone) exactly
//! when its result does. A write that changes the time to live is a write: it invalidates, and
//! so does one that falls between the `HGET` and the `PTTL` (the read is overtaken); a key gone
//! in between answers `-2`, and nothing is kept. Redis's expiries follow its wall clock: one
//! stepped forward on its host (not slewed) expires keys early, and that reaches the cache only
//! as the invalidation.
//!
//! The facade's other reads of a job (result, event stream, long-poll) go to Redis, and its
//! change notifications come on another connection than the invalidations: each tells the
//! cache what it found ([`PollCache::saw`]), and a kept document that differs is dropped. So a
//! client that saw a state through one of them (or a callback, then a result) does not get an
//! older one from the next poll while the invalidation is still on its way.
//!
//! A poll can thus show a changed document for as long as its invalidation takes to arrive
//! (well under a millisecond here), an expired one never, and after a connection died a
//! heartbeat and a reply timeout. Entries also expire after at most `MAX_AGE` (each after its
//! own share of it, see [`max_age`]), and the cache holds at most `poll_cache_entries`
//! documents. Off on a Redis Cluster (tracking is per node).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value,
};
use shared::configuration::RedisSettings;
use shared::keys::field;

use super::StoreError;
use crate::io::Io;

/// Longest time an entry is served: the last bound, should invalidations stop in some way that
/// neither a read nor the heartbeat notices. Every expiry costs a read through one connection,
/// so the bound is long: at 10 s (stop 14), the misses of expiring entries took 7% off the
/// benchmark's poll throughput and, in bursts, its p99 at half load from 3 ms to 30-50 ms.
const MAX_AGE: Duration = Duration::from_secs(60);

/// How often the tracking connection is pinged while it exists.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// From when the document of `key`, read by a request sent at `sent` together with `PTTL`
/// (`pttl_ms`), must no longer be served: its key's expiry as that reply puts it, less the
/// margin (module docs), or the entry's age bound if that comes first. `None`: not to be kept,
/// the key is gone or expires within the millisecond. The margin and the monotonic `sent`
/// make it early, never late: Redis answered after `sent`, so the key lives at least until
/// `sent + pttl`, give or take Redis's whole milliseconds.
fn serve_until(key: &str, sent: Instant, pttl_ms: i64) -> Option<Instant> {
    let served = match pttl_ms {
        // No time to live.
        -1 => max_age(key),
        ms if ms > 0 => {
            let ttl = Duration::from_millis(ms.unsigned_abs());
            let margin = ttl / 1000 + Duration::from_millis(1);
            ttl.saturating_sub(margin).min(max_age(key))
        }
        // -2: no key (expired or deleted since the read); 0: expiring now.
        _ => return None,
    };
    (!served.is_zero()).then(|| sent + served)
}

/// How long the entry of `key` is served at most: between half of `MAX_AGE` and all of it, spread
/// by the key. Documents read together (a facade's first polls after it starts or reconnects, a
/// client polling many jobs in step) would otherwise all expire in the same instant, and the burst
/// of misses queues the polls behind it: with one bound for all, the benchmark's poll p99 at half
/// load went from 2.6 ms to 30-50 ms in the rounds that such an instant fell into.
fn max_age(key: &str) -> Duration {
    // Seeded once per process: the spread needs no secret, only keys that differ.
    static SPREAD: std::sync::LazyLock<RandomState> = std::sync::LazyLock::new(RandomState::new);
    let share = (SPREAD.hash_one(key) % 1024) as u32;
    MAX_AGE / 2 + MAX_AGE / 2 * share / 1024
}

#[derive(Clone)]
pub struct PollCache {
    inner: Arc<Inner>,
}

struct Inner {
    redis: RedisSettings,
    io: Io,
    max_entries: usize,
    /// The tracking connection (made by the first miss, on the I/O runtime) and its number;
    /// `None` while there is none. A kept document is only as good as the connection that
    /// read it, so the handle is only ever dropped together with everything kept.
    conn: tokio::sync::Mutex<Option<(u64, MultiplexedConnection)>>,
    connections: AtomicU64,
    /// Set when Redis refused tracking (a server before 6, or one without RESP3): polls then
    /// read Redis as they would without the cache.
    refused: AtomicBool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Documents and from when each is no longer served ([`serve_until`]).
    entries: HashMap<String, (Vec<u8>, Instant)>,
    /// Keys with reads in flight: how many, and whether an invalidation overtook them.
    reading: HashMap<String, (usize, bool)>,
}

impl State {
    fn invalidate(&mut self, key: &[u8]) {
        let Ok(key) = std::str::from_utf8(key) else {
            return;
        };
        self.entries.remove(key);
        if let Some((_, overtaken)) = self.reading.get_mut(key) {
            *overtaken = true;
        }
    }

    /// See [`PollCache::saw`].
    fn saw(&mut self, key: &str, doc: Option<&[u8]>) {
        let same = match (self.entries.get(key), doc) {
            (Some((kept, _)), Some(doc)) => kept.as_slice() == doc,
            // Nothing kept: only reads in flight could bring something older.
            (None, _) => !self.reading.contains_key(key),
            (Some(_), None) => false,
        };
        if !same {
            self.invalidate(key.as_bytes());
        }
    }

    fn invalidate_all(&mut self) {
        self.entries.clear();
        for (_, overtaken) in self.reading.values_mut() {
            *overtaken = true;
        }
    }

    fn begin_read(&mut self, key: &str) {
        match self.reading.get_mut(key) {
            Some((count, _)) => *count += 1,
            None => {
                self.reading.insert(key.to_owned(), (1, false));
            }
        }
    }

    /// Ends a read; keeps `doc` until `until` unless an invalidation overtook the read.
    fn end_read(
        &mut self,
        key: &str,
        doc: Option<&[u8]>,
        until: Option<Instant>,
        max_entries: usize,
    ) {
        let overtaken = match self.reading.get_mut(key) {
            Some((count, overtaken)) if *count > 1 => {
                *count -= 1;
                *overtaken
            }
            Some(&mut (_, overtaken)) => {
                self.reading.remove(key);
                overtaken
            }
            None => true,
        };
        let (Some(doc), Some(until)) = (doc, until) else {
            return;
        };
        if overtaken || until <= Instant::now() {
            return;
        }
        if self.entries.len() >= max_entries && !self.entries.contains_key(key) {
            // Full: make room by dropping an arbitrary entry (a miss costs one read).
            if let Some(old) = self.entries.keys().next().cloned() {
                self.entries.remove(&old);
            }
        }
        self.entries.insert(key.to_owned(), (doc.to_vec(), until));
    }

    /// The kept document of `key`, if it may still be served; one that may not is dropped.
    fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        let (doc, until) = self.entries.get(key)?;
        if Instant::now() < *until {
            return Some(doc.clone());
        }
        self.entries.remove(key);
        None
    }
}

impl PollCache {
    /// A cache of at most `max_entries` documents; `None` when it is off (0 entries, or a
    /// Redis Cluster).
    pub fn new(redis: &RedisSettings, io: Io) -> Option<PollCache> {
        if redis.poll_cache_entries == 0 || redis.is_cluster() {
            return None;
        }
        Some(PollCache {
            inner: Arc::new(Inner {
                redis: redis.clone(),
                io,
                max_entries: redis.poll_cache_entries,
                conn: tokio::sync::Mutex::new(None),
                connections: AtomicU64::new(0),
                refused: AtomicBool::new(false),
                state: Mutex::new(State::default()),
            }),
        })
    }

    /// Drops `key`'s document, as an invalidation would.
    pub fn forget(&self, key: &str) {
        self.inner.state().invalidate(key.as_bytes());
    }

    /// A read of `key` outside the cache found `doc` (`None`: no document): a kept document
    /// that differs is dropped, and reads in flight are not kept, as an invalidation would do.
    /// Redis's own invalidation may still be on its way; a poll after this sees nothing older.
    pub fn saw(&self, key: &str, doc: Option<&[u8]>) {
        self.inner.state().saw(key, doc);
    }

    /// Whether the cache is in use (Redis has not refused tracking).
    pub fn enabled(&self) -> bool {
        !self.inner.refused.load(Ordering::Relaxed)
    }

    /// The job hash `key`'s status document: kept, or read (and kept) through the tracking
    /// connection. `None` when the hash has no document.
    pub async fn document(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(doc) = self.inner.state().get(key) {
            crate::metrics::POLL_CACHE.with_label_values(&["hit"]).inc();
            return Ok(Some(doc));
        }
        crate::metrics::POLL_CACHE
            .with_label_values(&["miss"])
            .inc();
        let mut read = Read::begin(&self.inner, key);
        let inner = self.inner.clone();
        let owned_key = key.to_owned();
        let (doc, until) = self
            .inner
            .io
            .run(async move { inner.read(&owned_key).await })
            .await??;
        read.end(doc.as_deref(), until);
        Ok(doc)
    }
}

/// A read in flight; ends without keeping anything if the poll fails or is dropped first.
struct Read<'a> {
    inner: &'a Inner,
    key: &'a str,
    ended: bool,
}

impl<'a> Read<'a> {
    fn begin(inner: &'a Inner, key: &'a str) -> Self {
        inner.state().begin_read(key);
        Read {
            inner,
            key,
            ended: false,
        }
    }

    fn end(&mut self, doc: Option<&[u8]>, until: Option<Instant>) {
        self.ended = true;
        self.inner
            .state()
            .end_read(self.key, doc, until, self.inner.max_entries);
    }
}

impl Drop for Read<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.inner.state().end_read(self.key, None, None, 0);
        }
    }
}

impl Inner {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reads `key`'s document and when it must stop being served ([`serve_until`]), in one
    /// round trip.
    async fn read(
        self: &Arc<Self>,
        key: &str,
    ) -> redis::RedisResult<(Option<Vec<u8>>, Option<Instant>)> {
        let mut slot = self.conn.lock().await;
        let (number, mut conn) = match slot.as_ref() {
            Some(current) => current.clone(),
            None => {
                let number = self.connections.fetch_add(1, Ordering::Relaxed) + 1;
                let conn = self
                    .connect(number)
                    .await
                    .inspect_err(|e| self.refusal(e))?;
                *slot = Some((number, conn.clone()));
                self.io
                    .spawn(heartbeat(Arc::downgrade(self), number, conn.clone()));
                (number, conn)
            }
        };
        drop(slot);
        // Before the request is sent: the deadline counts from a moment before Redis answered.
        let sent = Instant::now();
        let reply: redis::RedisResult<(Option<Vec<u8>>, i64)> = redis::pipe()
            .cmd("HGET")
            .arg(key)
            .arg(field::DOC)
            .cmd("PTTL")
            .arg(key)
            .query_async(&mut conn)
            .await;
        match reply {
            Ok((doc, pttl)) => Ok((doc, serve_until(key, sent, pttl))),
            Err(e) => {
                // Invalidations may have been lost with whatever failed: start over.
                self.lost(number);
                Err(e)
            }
        }
    }

    /// Turns the cache off for good when Redis cannot do what it needs (`HELLO 3` or `CLIENT
    /// TRACKING` unknown, RESP3 refused); a connection that failed otherwise (Redis down,
    /// loading, out of clients) is tried again by the next miss.
    fn refusal(&self, e: &redis::RedisError) {
        let text = e.to_string();
        let unsupported = text.contains("NOPROTO")
            || text.to_ascii_lowercase().contains("unknown command")
            || text.to_ascii_lowercase().contains("unknown subcommand");
        if unsupported && !self.refused.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %e, "Redis refused client tracking: every poll reads Redis");
        }
    }

    /// Whether connection `number` is the one in use.
    async fn is_current(&self, number: u64) -> bool {
        holds(&*self.conn.lock().await, number)
    }

    /// Connection `number` is gone or failed: drops everything kept and the connection (the
    /// next miss connects again). A newer connection is left alone.
    fn lost(self: &Arc<Self>, number: u64) {
        self.state().invalidate_all();
        let clear = move |slot: &mut Option<(u64, MultiplexedConnection)>| {
            if holds(slot, number) {
                *slot = None;
            }
        };
        if let Ok(mut slot) = self.conn.try_lock() {
            clear(&mut slot);
        } else {
            let this = self.clone();
            self.io.spawn(async move {
                clear(&mut *this.conn.lock().await);
                // Whatever was kept meanwhile may have come through the dropped connection.
                this.state().invalidate_all();
            });
        }
    }

    async fn connect(self: &Arc<Self>, number: u64) -> redis::RedisResult<MultiplexedConnection> {
        let info = self.redis.url.as_str().into_connection_info()?;
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = shared::redis_conn::client(info.set_redis_settings(resp3), &self.redis)?;
        let weak = Arc::downgrade(self);
        // Runs in the connection's task as each push is read, before the replies read after it
        // reach their callers.
        let on_push = move |push: PushInfo| -> Result<(), std::convert::Infallible> {
            if let Some(inner) = weak.upgrade() {
                inner.on_push(number, push);
            }
            Ok(())
        };
        let config = AsyncConnectionConfig::new()
            .set_push_sender(on_push)
            .set_connection_timeout(Some(Duration::from_millis(
                self.redis.connection_timeout_ms,
            )))
            .set_response_timeout(Some(Duration::from_millis(self.redis.response_timeout_ms)));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        redis::cmd("CLIENT")
            .arg("TRACKING")
            .arg("ON")
            .exec_async(&mut conn)
            .await?;
        Ok(conn)
    }

    fn on_push(self: &Arc<Self>, number: u64, push: PushInfo) {
        match push.kind {
            PushKind::Invalidate => match push.data.first() {
                Some(Value::Array(keys)) => {
                    let mut state = self.state();
                    for key in keys {
                        if let Value::BulkString(key) = key {
                            state.invalidate(key);
                        }
                    }
                }
                // After FLUSHALL / FLUSHDB, or a key Redis could not name.
                _ => self.state().invalidate_all(),
            },
            PushKind::Disconnection => self.lost(number),
            _ => {}
        }
    }
}

/// Whether `slot` holds connection `number`.
fn holds(slot: &Option<(u64, MultiplexedConnection)>, number: u64) -> bool {
    slot.as_ref().is_some_and(|(current, _)| *current == number)
}

/// Pings tracking connection `number` every `HEARTBEAT` until it is replaced or dropped (or the
/// cache is); a failed or unanswered ping (the connection's reply timeout) counts it lost.
async fn heartbeat(inner: std::sync::Weak<Inner>, number: u64, mut conn: MultiplexedConnection) {
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        let Some(this) = inner.upgrade() else { return };
        if !this.is_current(number).await {
            return;
        }
        if let Err(e) = redis::cmd("PING").exec_async(&mut conn).await {
            tracing::warn!(error = %e, "the poll cache's Redis connection stopped answering; dropping what it kept");
            this.lost(number);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{max_age, serve_until, State, MAX_AGE};

    /// A deadline that does not pass during a test.
    fn later() -> Option<Instant> {
        Some(Instant::now() + Duration::from_secs(600))
    }

    #[test]
    fn a_read_overtaken_by_an_invalidation_is_not_kept() {
        let mut state = State::default();
        state.begin_read("k");
        state.invalidate(b"k");
        state.end_read("k", Some(b"old"), later(), 10);
        assert_eq!(state.get("k"), None);
        // The next read is kept.
        state.begin_read("k");
        state.end_read("k", Some(b"new"), later(), 10);
        assert_eq!(state.get("k").as_deref(), Some(&b"new"[..]));
        // And dropped by the next invalidation.
        state.invalidate(b"k");
        assert_eq!(state.get("k"), None);
    }

    #[test]
    fn concurrent_reads_of_a_key_share_the_mark() {
        let mut state = State::default();
        state.begin_read("k");
        state.begin_read("k");
        state.invalidate(b"k");
        state.end_read("k", Some(b"a"), later(), 10);
        state.end_read("k", Some(b"b"), later(), 10);
        assert_eq!(state.get("k"), None);
        assert!(state.reading.is_empty());
    }

    #[test]
    fn a_lost_connection_drops_everything_and_marks_reads_in_flight() {
        let mut state = State::default();
        state.begin_read("a");
        state.end_read("a", Some(b"1"), later(), 10);
        state.begin_read("b");
        state.invalidate_all();
        state.end_read("b", Some(b"2"), later(), 10);
        assert_eq!(state.get("a"), None);
        assert_eq!(state.get("b"), None);
    }

    #[test]
    fn the_cache_stays_within_its_size() {
        let mut state = State::default();
        for i in 0..5 {
            let key = format!("k{i}");
            state.begin_read(&key);
            state.end_read(&key, Some(b"d"), later(), 3);
        }
        assert_eq!(state.entries.len(), 3);
        // A missing document is not kept.
        state.begin_read("gone");
        state.end_read("gone", None, later(), 3);
        assert_eq!(state.get("gone"), None);
    }

    #[test]
    fn entries_read_together_expire_spread_over_half_the_bound() {
        let ages: Vec<_> = (0..1000).map(|i| max_age(&format!("job:{i}"))).collect();
        assert!(ages.iter().all(|a| *a >= MAX_AGE / 2 && *a <= MAX_AGE));
        // Spread: no tenth of the span holds more than a fifth of the keys.
        let mut tenths = [0usize; 10];
        for age in &ages {
            let at = (age.as_secs_f64() / MAX_AGE.as_secs_f64() - 0.5) * 20.0;
            tenths[(at as usize).min(9)] += 1;
        }
        assert!(tenths.iter().all(|n| *n < 200), "{tenths:?}");
        // A key keeps its share.
        assert_eq!(max_age("job:7"), max_age("job:7"));
    }

    #[test]
    fn an_entry_is_never_served_from_its_keys_expiry() {
        let sent = Instant::now();
        // A key with 10 s to live is served until before `sent` + 10 s, by the margin.
        let until = serve_until("k", sent, 10_000).unwrap();
        assert!(until < sent + Duration::from_secs(10));
        assert!(until >= sent + Duration::from_millis(10_000 - 10 - 1));
        // A key with longer to live than the age bound, or none, is bounded by the age.
        assert_eq!(serve_until("k", sent, 3_600_000), Some(sent + max_age("k")));
        assert_eq!(serve_until("k", sent, -1), Some(sent + max_age("k")));
        // Gone since the read, expiring now, or within the margin: not kept.
        assert_eq!(serve_until("k", sent, -2), None);
        assert_eq!(serve_until("k", sent, 0), None);
        assert_eq!(serve_until("k", sent, 1), None);

        let mut state = State::default();
        // Kept until its deadline...
        state.begin_read("k");
        let until = serve_until("k", Instant::now(), 1_000);
        state.end_read("k", Some(b"d"), until, 10);
        assert_eq!(state.get("k").as_deref(), Some(&b"d"[..]));
        // ...and not from then on, without any invalidation (Redis has not deleted the key).
        std::thread::sleep(until.unwrap().saturating_duration_since(Instant::now()));
        assert_eq!(state.get("k"), None);
        assert!(state.entries.is_empty(), "the expired entry is dropped");
        // A document whose deadline has passed by the time its read ends is not kept.
        state.begin_read("k");
        state.end_read("k", Some(b"d"), Some(Instant::now()), 10);
        assert_eq!(state.get("k"), None);
    }

    #[test]
    fn a_newer_document_seen_elsewhere_drops_the_kept_one() {
        let mut state = State::default();
        state.begin_read("k");
        state.end_read("k", Some(b"queued"), later(), 10);
        // The same document seen by a result read or a notification: kept.
        state.saw("k", Some(b"queued"));
        assert_eq!(state.get("k").as_deref(), Some(&b"queued"[..]));
        // Another one (the invalidation still on its way): dropped.
        state.saw("k", Some(b"succeeded"));
        assert_eq!(state.get("k"), None);
        // No document any more (expired, deleted): dropped.
        state.begin_read("k");
        state.end_read("k", Some(b"succeeded"), later(), 10);
        state.saw("k", None);
        assert_eq!(state.get("k"), None);
        // A read in flight may bring what was there before: not kept.
        state.begin_read("k");
        state.saw("k", Some(b"succeeded"));
        state.end_read("k", Some(b"running"), later(), 10);
        assert_eq!(state.get("k"), None);
    }
}
