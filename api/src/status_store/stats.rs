//! Reading the moving averages of run times that workers keep in `{prefix}:stats`.

use std::collections::HashMap;

use redis::AsyncCommands;

use super::{StatusStore, StoreError};

impl StatusStore {
    /// Average run time in seconds per job type (types without history are absent).
    pub async fn run_time_averages(&self) -> Result<HashMap<String, f64>, StoreError> {
        self.with_conn(|store, mut conn| async move {
            let raw: HashMap<String, String> = conn.hgetall(store.keys.run_time_stats()).await?;
            Ok(raw
                .into_iter()
                .filter_map(|(k, v)| Some((k, v.parse::<f64>().ok()?)))
                .filter(|(_, v)| v.is_finite() && *v >= 0.0)
                .collect())
        })
        .await
    }
}
