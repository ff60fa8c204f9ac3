//! The index of jobs behind `GET /v1/jobs`: a sorted set `{prefix}:jobs`, member the job id,
//! score its creation time (unix milliseconds). A job enters it in the same transaction that
//! records it and leaves it when the facade takes the job back; entries older than the
//! retention period are trimmed now and then as jobs are created, and ids whose record has
//! expired meanwhile are skipped when listing.

use std::sync::atomic::{AtomicI64, Ordering};

use redis::Pipeline;
use serde_json::Value;
use shared::keys::field;
use shared::redis_conn::RedisConn;
use shared::{JobId, JobStatus, KeyLayout};

use super::{StatusStore, StoreError};

/// At most one trim of the index per this many milliseconds (per process).
const TRIM_EVERY_MS: i64 = 60_000;
/// When this process last trimmed the index (unix milliseconds).
static LAST_TRIM_MS: AtomicI64 = AtomicI64::new(0);

/// A list request reads at most this many index entries (and their documents), so that a
/// selective filter over a long index stays a bounded request: it answers with fewer jobs and
/// a cursor to continue from.
pub const SCAN_BOUND: usize = 1000;

/// Adds `id` to the index in `pipe` (the pipeline that records the job), and now and then
/// drops entries older than `retention_seconds`. The index itself expires with the newest job,
/// so an idle deployment leaves nothing behind.
pub(super) fn add(
    pipe: &mut Pipeline,
    keys: &KeyLayout,
    id: &JobId,
    created_ms: i64,
    retention_seconds: u64,
) {
    let index = keys.jobs_index();
    pipe.zadd(&index, id.to_string(), created_ms).ignore();
    let last = LAST_TRIM_MS.load(Ordering::Relaxed);
    if created_ms - last >= TRIM_EVERY_MS
        && LAST_TRIM_MS
            .compare_exchange(last, created_ms, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        let cutoff = created_ms.saturating_sub((retention_seconds as i64).saturating_mul(1000));
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(&index)
            .arg("-inf")
            .arg(format!("({cutoff}"))
            .ignore();
    }
    pipe.expire(&index, retention_seconds as i64).ignore();
}

/// Removes `id` from the index in `pipe`.
pub(super) fn remove(pipe: &mut Pipeline, keys: &KeyLayout, id: &JobId) {
    pipe.zrem(keys.jobs_index(), id.to_string()).ignore();
}

/// Which jobs a list request wants.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub status: Option<JobStatus>,
    pub job_type: Option<String>,
}

impl ListFilter {
    fn is_empty(&self) -> bool {
        self.status.is_none() && self.job_type.is_none()
    }

    fn accepts(&self, doc: &Value) -> bool {
        self.status.is_none_or(|s| doc["status"] == s.as_str())
            && self.job_type.as_deref().is_none_or(|t| doc["type"] == t)
    }
}

/// A position in the index, newest first: (score, job id).
pub type Position = (i64, JobId);

/// One page of a list.
#[derive(Debug)]
pub struct ListPage {
    /// Status documents as stored, newest first.
    pub docs: Vec<Value>,
    /// Where the next page starts (exclusive), if there may be one.
    pub next: Option<Position>,
}

/// Whether `(score, member)` comes after `bound` when walking the index newest first (score
/// descending, then member descending: Redis orders equal scores by member bytes).
fn after(score: i64, member: &str, bound: &(i64, String)) -> bool {
    score < bound.0 || (score == bound.0 && member < bound.1.as_str())
}

impl StatusStore {
    /// Up to `limit` jobs that pass `filter`, newest first, starting after `after`. Reads at
    /// most [`SCAN_BOUND`] index entries; skips jobs whose record has expired.
    pub async fn list_jobs(
        &self,
        after_position: Option<Position>,
        limit: usize,
        filter: ListFilter,
    ) -> Result<ListPage, StoreError> {
        self.with_conn(move |store, conn| async move {
            store
                .list_here(conn, after_position, limit.max(1), filter)
                .await
        })
        .await
    }

    async fn list_here(
        &self,
        mut conn: RedisConn,
        after_position: Option<Position>,
        limit: usize,
        filter: ListFilter,
    ) -> Result<ListPage, StoreError> {
        let index = self.keys.jobs_index();
        // One entry more than a page without filters, to know whether another page follows.
        let batch = if filter.is_empty() {
            limit + 1
        } else {
            (limit * 2).clamp(50, 200)
        };
        let max = match &after_position {
            Some((score, _)) => score.to_string(),
            None => "+inf".to_owned(),
        };
        // Walking position: everything examined is strictly after it, which also drops an
        // entry seen twice when the set shifted between two reads of one request.
        let mut position: Option<(i64, String)> =
            after_position.map(|(score, id)| (score, id.to_string()));
        let mut offset = 0usize;
        let mut examined = 0usize;
        let mut docs = Vec::new();
        loop {
            let entries: Vec<(String, f64)> = redis::cmd("ZREVRANGEBYSCORE")
                .arg(&index)
                .arg(&max)
                .arg("-inf")
                .arg("WITHSCORES")
                .arg("LIMIT")
                .arg(offset)
                .arg(batch)
                .query_async(&mut conn)
                .await?;
            let exhausted = entries.len() < batch;
            offset += entries.len();
            let fresh: Vec<(i64, String)> = entries
                .into_iter()
                .map(|(member, score)| (score as i64, member))
                .filter(|(score, member)| {
                    position.as_ref().is_none_or(|b| after(*score, member, b))
                })
                .collect();
            let mut pipe = redis::pipe();
            for (_, member) in &fresh {
                // Members are only ever written from parsed ids; the key is built from the
                // member as stored, which is one of them.
                match member.parse::<JobId>() {
                    Ok(id) => pipe.hget(self.keys.job(&id), field::DOC),
                    Err(_) => pipe.cmd("ECHO").arg(""),
                };
            }
            let found: Vec<Option<Vec<u8>>> = if fresh.is_empty() {
                Vec::new()
            } else {
                pipe.query_async(&mut conn).await?
            };
            let count = fresh.len();
            for (i, ((score, member), doc)) in fresh.into_iter().zip(found).enumerate() {
                examined += 1;
                position = Some((score, member.clone()));
                let Ok(id) = member.parse::<JobId>() else {
                    continue;
                };
                // Expired since it was indexed (or not a document this service wrote).
                let Some(doc) = doc.and_then(|d| serde_json::from_slice::<Value>(&d).ok()) else {
                    continue;
                };
                if !filter.accepts(&doc) {
                    continue;
                }
                docs.push(doc);
                if docs.len() == limit {
                    let last_of_index = exhausted && i + 1 == count;
                    let next = (!last_of_index).then_some((score, id));
                    return Ok(ListPage { docs, next });
                }
            }
            if exhausted {
                return Ok(ListPage { docs, next: None });
            }
            if examined >= SCAN_BOUND {
                let next = position.and_then(|(score, member)| Some((score, member.parse().ok()?)));
                return Ok(ListPage { docs, next });
            }
        }
    }
}

/// How many jobs of the index are in each state, counted over its newest entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateCounts {
    /// `(state, count)` for the five states, in lifecycle order (zeros included).
    pub by_state: Vec<(JobStatus, u64)>,
    /// Entries of the index (jobs created within the retention period, give or take a trim).
    pub indexed: u64,
    /// Entries whose record was read; less than `indexed` when the index is longer than the
    /// bound. Records that expired meanwhile are read but not counted.
    pub examined: u64,
}

/// The five states, in lifecycle order.
pub const STATES: [JobStatus; 5] = [
    JobStatus::Queued,
    JobStatus::Running,
    JobStatus::Succeeded,
    JobStatus::Failed,
    JobStatus::Canceled,
];

impl StatusStore {
    /// Counts the states of the newest `bound` jobs of the index (one `ZREVRANGE` and one
    /// pipeline of `HGET state`): an operator's view, cheap enough to ask every few seconds.
    pub async fn count_states(&self, bound: usize) -> Result<StateCounts, StoreError> {
        self.with_conn(move |store, mut conn| async move {
            let index = store.keys.jobs_index();
            let (indexed, members): (u64, Vec<String>) = redis::pipe()
                .zcard(&index)
                .zrevrange(&index, 0, bound.max(1) as isize - 1)
                .query_async(&mut conn)
                .await?;
            let ids: Vec<JobId> = members.iter().filter_map(|m| m.parse().ok()).collect();
            let states: Vec<Option<String>> = if ids.is_empty() {
                Vec::new()
            } else {
                let mut pipe = redis::pipe();
                for id in &ids {
                    pipe.hget(store.keys.job(id), field::STATE);
                }
                pipe.query_async(&mut conn).await?
            };
            let mut by_state: Vec<(JobStatus, u64)> = STATES.iter().map(|s| (*s, 0)).collect();
            for state in states.into_iter().flatten() {
                if let Some(slot) = by_state.iter_mut().find(|(s, _)| s.as_str() == state) {
                    slot.1 += 1;
                }
            }
            Ok(StateCounts {
                by_state,
                indexed,
                examined: ids.len() as u64,
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walking_order_is_score_then_member_descending() {
        let bound = (10, "b".to_owned());
        assert!(after(9, "z", &bound));
        assert!(after(10, "a", &bound));
        assert!(!after(10, "b", &bound));
        assert!(!after(10, "c", &bound));
        assert!(!after(11, "a", &bound));
    }

    #[test]
    fn filter_matches_status_and_type() {
        let doc = serde_json::json!({"status": "queued", "type": "sleep"});
        assert!(ListFilter::default().accepts(&doc));
        let f = ListFilter {
            status: Some(JobStatus::Queued),
            job_type: Some("sleep".into()),
        };
        assert!(f.accepts(&doc));
        let f = ListFilter {
            status: Some(JobStatus::Running),
            job_type: None,
        };
        assert!(!f.accepts(&doc));
        let f = ListFilter {
            status: None,
            job_type: Some("echo".into()),
        };
        assert!(!f.accepts(&doc));
    }
}
