//! Reading the worker fleet registry and the job type registry that workers keep in Redis
//! (see `shared::fleet` and `shared::job_types`).

use std::sync::LazyLock;

use shared::fleet::{is_fresh, read_members, WorkerRecord};

use super::{StatusStore, StoreError};

/// Removes the given members (ARGV: id, score, …) only if their score is still the one read:
/// a worker that beat again meanwhile keeps its place.
static PRUNE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
for i = 1, #ARGV, 2 do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) == tonumber(ARGV[i + 1]) then
    redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return 0
",
    )
});

impl StatusStore {
    /// The live workers, sorted by id. Members whose heartbeat is stale (more than three of
    /// their heartbeat intervals old) or whose record expired are pruned from the registry.
    pub async fn live_workers(&self) -> Result<Vec<WorkerRecord>, StoreError> {
        self.with_conn(|store, mut conn| async move {
            let registry = store.keys.workers();
            let members = read_members(&mut conn, &store.keys).await?;
            let now_ms = chrono::Utc::now().timestamp_millis();
            let mut live = Vec::new();
            let mut stale = Vec::new();
            for (id, last_ms, record) in members {
                match record {
                    Some(record) if is_fresh(last_ms, record.heartbeat_seconds, now_ms) => {
                        live.push(record)
                    }
                    _ => stale.push((id, last_ms)),
                }
            }
            if !stale.is_empty() {
                let mut prune = PRUNE.prepare_invoke();
                prune.key(&registry);
                for (id, last_ms) in &stale {
                    prune.arg(id).arg(*last_ms);
                }
                if let Err(e) = prune.invoke_async::<()>(&mut conn).await {
                    tracing::warn!(error = %e, "cannot prune the worker registry");
                }
            }
            live.sort_by(|a, b| a.id.cmp(&b.id));
            Ok(live)
        })
        .await
    }

    /// Every record of the job type registry: (field, JSON), undecoded.
    pub async fn job_type_records(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.with_conn(|store, mut conn| async move {
            let records: Vec<(String, String)> = redis::cmd("HGETALL")
                .arg(store.keys.job_types())
                .query_async(&mut conn)
                .await?;
            Ok(records)
        })
        .await
    }
}
