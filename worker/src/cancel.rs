//! Cancelling running jobs across processes. The facade marks the job (`cancel` field of its
//! hash) and publishes its id on `<prefix>:cancel`; every worker listens there and cancels the
//! token of that job if it runs it. A request made before the worker registered its token is
//! caught when the start is recorded (the start script reports the mark).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use shared::configuration::RedisSettings;
use shared::JobId;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The tokens of the jobs running in this process.
#[derive(Clone, Default)]
pub struct Cancels {
    running: Arc<Mutex<HashMap<JobId, CancellationToken>>>,
}

/// A registered token; unregisters itself when dropped.
pub struct Registration {
    id: JobId,
    token: CancellationToken,
    cancels: Cancels,
}

impl Registration {
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    pub fn cancel(&self) {
        self.token.cancel();
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut running) = self.cancels.running.lock() {
            running.remove(&self.id);
        }
    }
}

impl Cancels {
    pub fn register(&self, id: JobId) -> Registration {
        let token = CancellationToken::new();
        if let Ok(mut running) = self.running.lock() {
            running.insert(id, token.clone());
        }
        Registration {
            id,
            token,
            cancels: self.clone(),
        }
    }

    /// Cancels the job if it runs here; returns whether it did.
    pub fn cancel(&self, id: &JobId) -> bool {
        match self.running.lock() {
            Ok(running) => running.get(id).map(|t| t.cancel()).is_some(),
            Err(_) => false,
        }
    }

    /// Listens for cancel requests on `channel` until `shutdown`, reconnecting as needed.
    pub async fn listen(
        self,
        redis: RedisSettings,
        channel: String,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut backoff = Duration::from_millis(250);
        loop {
            let session = async {
                let mut pubsub = shared::redis_conn::pubsub(&redis).await?;
                pubsub.subscribe(&channel).await?;
                let mut messages = pubsub.on_message();
                while let Some(message) = messages.next().await {
                    let Ok(id) = std::str::from_utf8(message.get_payload_bytes())
                        .unwrap_or_default()
                        .parse::<JobId>()
                    else {
                        continue;
                    };
                    if self.cancel(&id) {
                        tracing::info!(job_id = %id, "cancel requested; stopping the job");
                    }
                }
                Ok::<(), redis::RedisError>(())
            };
            tokio::select! {
                result = session => {
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "cancel listener lost Redis; reconnecting");
                    }
                }
                _ = shutdown.changed() => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}
