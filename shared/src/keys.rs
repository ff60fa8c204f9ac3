//! The Redis key layout. Every job is one hash, `{prefix}:job:{<id>}`, holding the fields
//! below; the braces make the id a Redis Cluster hash tag, so all of a job's keys share a slot
//! and can be written by one script. Keys are built only from a parsed [`JobId`], never from
//! raw request text.

use crate::job::JobId;

/// Fields of the job hash.
pub mod field {
    /// The status document, JSON, exactly as the status monitor serves it.
    pub const DOC: &str = "doc";
    /// The status alone (`queued`, `running`, …), for atomic state checks in scripts.
    pub const STATE: &str = "state";
    /// The result, JSON, once succeeded.
    pub const RESULT: &str = "result";
    /// Id of the worker that last took the job (for operators and tests; not served).
    pub const WORKER: &str = "worker";
    /// The queue message of a job run under a lease (acknowledged early), so that it can be
    /// published again if its worker dies.
    pub const MESSAGE: &str = "msg";
    /// How many times the job was started (an attempt that raced another counts too).
    pub const STARTS: &str = "starts";
    /// Set to 1 when a client asked to cancel the job while it was running.
    pub const CANCEL: &str = "cancel";
}

#[derive(Debug, Clone)]
pub struct KeyLayout {
    prefix: String,
}

impl KeyLayout {
    pub fn new(prefix: impl Into<String>) -> Self {
        KeyLayout {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The job's hash.
    pub fn job(&self, id: &JobId) -> String {
        format!("{}:job:{{{}}}", self.prefix, id)
    }

    /// Pub/sub channel on which every change of the job's status document is published (the
    /// document itself), for long-polls and event streams.
    pub fn events(&self, id: &JobId) -> String {
        format!("{}:events:{{{}}}", self.prefix, id)
    }

    /// Pub/sub channel on which cancel requests for running jobs are published (the job id).
    pub fn cancel_requests(&self) -> String {
        format!("{}:cancel", self.prefix)
    }

    /// Sorted set of jobs running under a lease: member job id, score the lease's expiry
    /// (unix milliseconds).
    pub fn leases(&self) -> String {
        format!("{}:leases", self.prefix)
    }

    /// A tiny marker that outlives the job's hash, so an expired job answers 410, not 404.
    pub fn tombstone(&self, id: &JobId) -> String {
        format!("{}:tomb:{{{}}}", self.prefix, id)
    }

    /// The record of one `Idempotency-Key`: `{prefix}:idem:<hex SHA-256 of the key>`. Takes
    /// the digest, never the header text, so no client-chosen bytes reach a key.
    pub fn idempotency(&self, key_sha256: &[u8; 32]) -> String {
        let hex: String = key_sha256.iter().map(|b| format!("{b:02x}")).collect();
        format!("{}:idem:{}", self.prefix, hex)
    }

    /// Index of the jobs, for listing: sorted set, member the job id, score its creation time
    /// (unix milliseconds).
    pub fn jobs_index(&self) -> String {
        format!("{}:jobs", self.prefix)
    }

    /// Moving averages of run times: hash, field the job type, value seconds.
    pub fn run_time_stats(&self) -> String {
        format!("{}:stats", self.prefix)
    }

    /// A worker's registry record (JSON, expiring after a few missed heartbeats); see
    /// [`crate::fleet`]. `id` is the worker's own id, never request text.
    pub fn worker(&self, id: &str) -> String {
        format!("{}:worker:{}", self.prefix, id)
    }

    /// The worker registry: sorted set, member the worker id, score its last heartbeat (unix
    /// milliseconds).
    pub fn workers(&self) -> String {
        format!("{}:workers", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_job_hash_tag() {
        let keys = KeyLayout::new("arr");
        let id = JobId::new();
        assert_eq!(keys.job(&id), format!("arr:job:{{{id}}}"));
        assert!(keys.tombstone(&id).ends_with(&format!("{{{id}}}")));
    }
}
