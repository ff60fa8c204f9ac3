//! The facade's side of the job store in Redis: create a queued job, take it back if the
//! publish fails, and read status documents and results. Writes after `queued` belong to the
//! workers.
//!
//! Each thread that serves requests has its own multiplexed connection (it pipelines the
//! concurrent commands of that thread's requests). One connection shared by all HTTP workers
//! would live on one thread: every command of every other worker would cross threads twice,
//! and those hand-offs cost the facade more CPU than the commands themselves (BENCHMARKS.md).
//! A connection's tasks run on the runtime of the thread that made it, and an HTTP worker's
//! runtime ends with the worker, after that worker's last request: so each connection lives
//! exactly as long as its users.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use shared::configuration::{JobSettings, RedisSettings};
use shared::keys::field;
use shared::redis_conn::{RedisConn, Retries};
use shared::{JobId, KeyLayout, StatusDocument};

use crate::io::{Io, IoStopped};
use tracing::Instrument;

mod idempotency;
pub mod index;
mod poll_cache;
mod stats;
mod workers;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Io(#[from] IoStopped),
}

/// What Redis holds about a job.
pub enum Lookup<T> {
    Found(T),
    /// Expired: only its tombstone is left.
    Gone,
    NotFound,
}

impl<T> Lookup<T> {
    /// What was found, if anything.
    pub fn found(&self) -> Option<&T> {
        match self {
            Lookup::Found(value) => Some(value),
            Lookup::Gone | Lookup::NotFound => None,
        }
    }
}

#[derive(Clone)]
pub struct StatusStore {
    /// Where to connect; every operation runs with its thread's connection
    /// ([`StatusStore::with_conn`]).
    target: Arc<ConnTarget>,
    pub(crate) keys: Arc<KeyLayout>,
    pub(crate) retention_seconds: u64,
    pub(crate) io: Io,
    /// Documents kept between polls; `None` when off.
    poll_cache: Option<poll_cache::PollCache>,
}

struct ConnTarget {
    /// Tells the connections of different stores (several facades in one test process) apart.
    id: usize,
    redis: RedisSettings,
    retries: Retries,
}

static NEXT_TARGET: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's connections, by [`ConnTarget::id`].
    static THREAD_CONNS: RefCell<Vec<(usize, RedisConn)>> = const { RefCell::new(Vec::new()) };
}

impl ConnTarget {
    /// This thread's connection to the target, opened (lazily) on first use. Must run inside
    /// the thread's runtime: the connection's tasks are spawned there.
    fn for_this_thread(&self) -> Result<RedisConn, StoreError> {
        THREAD_CONNS.with(|conns| {
            if let Some((_, conn)) = conns.borrow().iter().find(|(id, _)| *id == self.id) {
                return Ok(conn.clone());
            }
            let conn = RedisConn::open(&self.redis, self.retries)?;
            conns.borrow_mut().push((self.id, conn.clone()));
            Ok(conn)
        })
    }
}

impl StatusStore {
    /// Connects lazily: the facade starts (and answers 503) while Redis is down, and the
    /// manager reconnects by itself when it is back.
    pub fn new(redis: &RedisSettings, jobs: &JobSettings, io: Io) -> Result<Self, StoreError> {
        // Fail a request fast while Redis is down rather than queueing it behind long
        // reconnection back-off; the next request tries again.
        let retries = Retries {
            count: 1,
            max_delay: Duration::from_millis(500),
        };
        let target = Arc::new(ConnTarget {
            id: NEXT_TARGET.fetch_add(1, Ordering::Relaxed),
            redis: redis.clone(),
            retries,
        });
        // The starting thread's connection: a configuration it cannot open fails here.
        target.for_this_thread()?;
        Ok(StatusStore {
            target,
            keys: Arc::new(KeyLayout::new(redis.key_prefix.clone())),
            retention_seconds: jobs.retention_seconds,
            poll_cache: poll_cache::PollCache::new(redis, io.clone()),
            io,
        })
    }

    /// The same store for `tenant`'s jobs: every job key it builds carries the tenant.
    pub fn for_tenant(&self, tenant: &shared::Tenant) -> StatusStore {
        // Every request asks: the store's own tenant (the default one, always, with
        // authentication off) costs a clone of the handle, not a new layout.
        if self.keys.tenant() == tenant {
            return self.clone();
        }
        StatusStore {
            keys: Arc::new(self.keys.for_tenant(tenant)),
            ..self.clone()
        }
    }

    /// The key layout of this store's tenant.
    pub fn keys(&self) -> &KeyLayout {
        &self.keys
    }

    /// Runs a Redis operation with this thread's connection.
    pub(crate) async fn with_conn<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(StatusStore, RedisConn) -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let _timer = crate::metrics::REDIS_DURATION.start_timer();
        let work = op(self.clone(), self.target.for_this_thread()?);
        // Inside a traced request (a submit), the operation is a span of its own when spans are
        // exported; status polls have no span and make none.
        if !shared::telemetry::exporting() {
            return work.await;
        }
        let parent = tracing::Span::current();
        if parent.is_none() {
            return work.await;
        }
        let span = tracing::info_span!(
            parent: &parent,
            "redis",
            otel.kind = "client",
            db.system.name = "redis"
        );
        work.instrument(span).await
    }

    /// Job `id`'s stored document, as read and decoded (`None`: no such job, or a document that
    /// does not decode): where an optimistic read-change-write (a cancel, a progress write)
    /// starts, passing the bytes read back to its script to write only if they are unchanged.
    pub(crate) async fn read_for_update(
        &self,
        conn: &mut RedisConn,
        id: &JobId,
    ) -> Result<Option<(Vec<u8>, StatusDocument)>, StoreError> {
        let current: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(self.keys.job(id))
            .arg(field::DOC)
            .query_async(conn)
            .await?;
        Ok(current.and_then(|bytes| {
            let doc = serde_json::from_slice(&bytes).ok()?;
            Some((bytes, doc))
        }))
    }

    /// Records a new job as queued (document and state in one hash, expiring after retention)
    /// and adds it to the index of jobs (`created_ms`: its creation time, unix milliseconds).
    pub async fn create(
        &self,
        id: &JobId,
        doc_json: &[u8],
        created_ms: i64,
    ) -> Result<(), StoreError> {
        let (id, doc_json) = (*id, doc_json.to_vec());
        self.with_conn(move |store, mut conn| async move {
            let key = store.keys.job(&id);
            let mut pipe = redis::pipe();
            // On a Redis Cluster the job and the index live in different slots, so they are
            // two writes there, not one transaction: a facade dying in between leaves a job
            // that is not listed, or an index entry that listing skips (no job behind it);
            // neither is served wrong. The job's own keys stay atomic (one slot).
            if !conn.is_cluster() {
                pipe.atomic();
            }
            pipe.hset_multiple(
                &key,
                &[(field::DOC, doc_json.as_slice()), (field::STATE, b"queued")],
            )
            .ignore()
            .expire(&key, store.retention_seconds as i64)
            .ignore();
            index::add(
                &mut pipe,
                &store.keys,
                &id,
                created_ms,
                store.retention_seconds,
            );
            pipe.query_async::<()>(&mut conn).await?;
            Ok(())
        })
        .await
    }

    /// Takes back a job whose publish failed, so no half-made job is left behind.
    pub async fn remove(&self, id: &JobId) -> Result<(), StoreError> {
        let id = *id;
        self.with_conn(|store, mut conn| async move {
            let mut pipe = redis::pipe();
            pipe.del(store.keys.job(&id)).ignore();
            index::remove(&mut pipe, &store.keys, &id);
            pipe.query_async::<()>(&mut conn).await?;
            Ok(())
        })
        .await
    }

    /// The status document as stored (JSON bytes).
    pub async fn document(&self, id: &JobId) -> Result<Lookup<Vec<u8>>, StoreError> {
        let id = *id;
        let lookup = self
            .with_conn(|store, mut conn| async move {
                let doc: Option<Vec<u8>> = conn.hget(store.keys.job(&id), field::DOC).await?;
                match doc {
                    Some(doc) => Ok(Lookup::Found(doc)),
                    None => store.missing(&mut conn, &id).await,
                }
            })
            .await?;
        self.saw(&id, lookup.found().map(Vec::as_slice));
        Ok(lookup)
    }

    /// The status document for a status poll: as [`Self::document`], but answered from the
    /// poll cache when it holds the job's current document.
    pub async fn poll_document(&self, id: &JobId) -> Result<Lookup<Vec<u8>>, StoreError> {
        let Some(cache) = self.poll_cache.as_ref().filter(|c| c.enabled()) else {
            return self.document(id).await;
        };
        let id = *id;
        match cache.document(&self.keys.job(&id)).await {
            Ok(Some(doc)) => Ok(Lookup::Found(doc)),
            // No document: tell an expired job from an unknown one, as `document` does.
            Ok(None) => {
                self.with_conn(|store, mut conn| async move { store.missing(&mut conn, &id).await })
                    .await
            }
            // The cache's connection failed; this thread's connection may still work.
            Err(_) => self.document(&id).await,
        }
    }

    /// Drops the poll cache's copy of job `id`'s document (after this facade changed it).
    pub fn forget_polled(&self, id: &JobId) {
        if let Some(cache) = &self.poll_cache {
            cache.forget(&self.keys.job(id));
        }
    }

    /// Tells the poll cache what a read or a change notification outside it found of job
    /// `id`'s document (`None`: none): a kept copy that differs is dropped. So once a result,
    /// an event or a long-poll of this facade has shown a state, a poll here shows nothing
    /// older, even while Redis's invalidation is still on its way.
    pub fn saw(&self, id: &JobId, doc: Option<&[u8]>) {
        if let Some(cache) = &self.poll_cache {
            cache.saw(&self.keys.job(id), doc);
        }
    }

    /// The status document and, if there is one, the result (one round trip).
    pub async fn document_and_result(
        &self,
        id: &JobId,
    ) -> Result<Lookup<(Vec<u8>, Option<Vec<u8>>)>, StoreError> {
        let id = *id;
        let lookup = self
            .with_conn(|store, mut conn| async move {
                let (doc, result): (Option<Vec<u8>>, Option<Vec<u8>>) = redis::cmd("HMGET")
                    .arg(store.keys.job(&id))
                    .arg(field::DOC)
                    .arg(field::RESULT)
                    .query_async(&mut conn)
                    .await?;
                match doc {
                    Some(doc) => Ok(Lookup::Found((doc, result))),
                    None => store.missing(&mut conn, &id).await,
                }
            })
            .await?;
        self.saw(&id, lookup.found().map(|(doc, _)| doc.as_slice()));
        Ok(lookup)
    }

    async fn missing<T>(&self, conn: &mut RedisConn, id: &JobId) -> Result<Lookup<T>, StoreError> {
        let gone: bool = conn.exists(self.keys.tombstone(id)).await?;
        Ok(if gone { Lookup::Gone } else { Lookup::NotFound })
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.with_conn(|_, mut conn| async move {
            redis::cmd("PING").query_async::<()>(&mut conn).await?;
            Ok(())
        })
        .await
    }
}
