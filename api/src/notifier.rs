//! Change notifications for long-polls and event streams, without polling Redis in a loop.
//!
//! Every write of a job's status document is published on the job's channel
//! (`<prefix>:events:{<id>}`, by the same script that writes it). The facade keeps one Redis
//! pub/sub connection and subscribes to a job's channel only while someone here waits on that
//! job; waiters share an in-process broadcast channel. A waiting request is a parked future: it
//! holds a few hundred bytes and no thread.
//!
//! If the pub/sub connection drops, every waiter's channel closes; waiters then re-read the
//! status (nothing is lost, they only answer or re-check earlier).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use redis::aio::PubSubSink;
use shared::configuration::RedisSettings;
use shared::{JobId, KeyLayout};
use tokio::sync::{broadcast, OnceCell};

use crate::io::Io;
use crate::status_store::StoreError;

/// A change as published: the new status document (JSON bytes).
pub type Change = Arc<Vec<u8>>;

struct Entry {
    sender: broadcast::Sender<Change>,
    watchers: usize,
    /// Resolved once the SUBSCRIBE was acknowledged (shared by concurrent watchers).
    subscribed: Arc<OnceCell<()>>,
}

struct Inner {
    /// Where to connect (on a Redis Cluster: any node; see `shared::redis_conn::pubsub`).
    redis: RedisSettings,
    io: Io,
    sink: tokio::sync::Mutex<Option<PubSubSink>>,
    entries: Mutex<HashMap<String, Entry>>,
}

#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

/// A subscription to one job's changes; unsubscribes (when it was the last) on drop.
pub struct Watch {
    pub changes: broadcast::Receiver<Change>,
    channel: String,
    notifier: Notifier,
}

impl Drop for Watch {
    fn drop(&mut self) {
        crate::metrics::OPEN_WAITS.dec();
        let last = {
            let Ok(mut entries) = self.notifier.inner.entries.lock() else {
                return;
            };
            match entries.get_mut(&self.channel) {
                Some(entry) if entry.watchers > 1 => {
                    entry.watchers -= 1;
                    false
                }
                Some(_) => {
                    entries.remove(&self.channel);
                    true
                }
                None => false,
            }
        };
        if last {
            let inner = self.notifier.inner.clone();
            let channel = std::mem::take(&mut self.channel);
            self.notifier.inner.io.spawn(async move {
                if let Some(sink) = inner.sink.lock().await.as_mut() {
                    let _ = sink.unsubscribe(&channel).await;
                }
            });
        }
    }
}

impl Notifier {
    pub fn new(redis: &RedisSettings, io: Io) -> Result<Self, StoreError> {
        // Fail at start on a malformed URL, as the connection itself is made on first use.
        if !redis.is_cluster() {
            shared::redis_conn::client(redis.url.as_str(), redis)?;
        }
        Ok(Notifier {
            inner: Arc::new(Inner {
                redis: redis.clone(),
                io,
                sink: tokio::sync::Mutex::new(None),
                entries: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Starts receiving the changes of job `id`. Changes published after this returns are
    /// delivered; read the current status *after* calling it, so none falls in between.
    pub async fn watch(&self, keys: &KeyLayout, id: &JobId) -> Result<Watch, StoreError> {
        let channel = keys.events(id);
        let (changes, subscribed) = {
            let mut entries = self
                .inner
                .entries
                .lock()
                .map_err(|_| StoreError::Io(crate::io::IoStopped))?;
            let entry = entries.entry(channel.clone()).or_insert_with(|| Entry {
                sender: broadcast::channel(16).0,
                watchers: 0,
                subscribed: Arc::new(OnceCell::new()),
            });
            entry.watchers += 1;
            (entry.sender.subscribe(), entry.subscribed.clone())
        };
        crate::metrics::OPEN_WAITS.inc();
        let watch = Watch {
            changes,
            channel: channel.clone(),
            notifier: self.clone(),
        };
        let notifier = self.clone();
        subscribed
            .get_or_try_init(|| async move {
                let inner = notifier.inner.clone();
                notifier
                    .inner
                    .io
                    .run(async move { Notifier { inner }.subscribe(&channel).await })
                    .await?
            })
            .await?;
        Ok(watch)
    }

    /// SUBSCRIBEs on the shared connection, connecting it first if need be.
    async fn subscribe(&self, channel: &str) -> Result<(), StoreError> {
        let mut sink = self.inner.sink.lock().await;
        if sink.is_none() {
            let pubsub = shared::redis_conn::pubsub(&self.inner.redis).await?;
            let (new_sink, mut stream) = pubsub.split();
            let inner = self.inner.clone();
            tokio::spawn(async move {
                while let Some(message) = stream.next().await {
                    let change: Change = Arc::new(message.get_payload_bytes().to_vec());
                    if let Ok(entries) = inner.entries.lock() {
                        if let Some(entry) = entries.get(message.get_channel_name()) {
                            let _ = entry.sender.send(change);
                        }
                    }
                }
                // Connection lost: forget it and close every waiter's channel.
                tracing::warn!("notification connection to Redis lost");
                *inner.sink.lock().await = None;
                if let Ok(mut entries) = inner.entries.lock() {
                    entries.clear();
                }
            });
            *sink = Some(new_sink);
        }
        match sink.as_mut() {
            Some(s) => Ok(s.subscribe(channel).await?),
            None => Ok(()),
        }
    }
}
