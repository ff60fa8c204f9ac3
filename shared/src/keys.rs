//! The Redis key layout. Every job is one hash, `{prefix}:{tenant}:job:{<id>}`, holding the
//! fields below; the braces make the id a Redis Cluster hash tag, so all of a job's keys share a
//! slot and can be written by one script. Keys are built only from a parsed [`JobId`] and a
//! checked [`Tenant`], never from raw request text.
//!
//! A layout is scoped to one tenant ([`KeyLayout::for_tenant`]): the job's hash, its events
//! channel, tombstone, idempotency records and the list index all carry it, so a request
//! authenticated as one tenant cannot reach another tenant's job. Keys that belong to the
//! deployment (leases, workers, run-time statistics, the cancel channel) carry only the prefix.

use std::sync::Arc;

use crate::job::JobId;
use crate::tenant::Tenant;

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

/// Cheap to clone (shared text): every job's handles carry one.
#[derive(Debug, Clone)]
pub struct KeyLayout {
    prefix: Arc<str>,
    tenant: Tenant,
}

impl KeyLayout {
    /// The layout under `prefix`, scoped to the default tenant.
    pub fn new(prefix: impl Into<String>) -> Self {
        KeyLayout {
            prefix: Arc::from(prefix.into()),
            tenant: Tenant::default(),
        }
    }

    /// The same layout scoped to `tenant`.
    pub fn for_tenant(&self, tenant: &Tenant) -> Self {
        KeyLayout {
            prefix: self.prefix.clone(),
            tenant: tenant.clone(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn tenant(&self) -> &Tenant {
        &self.tenant
    }

    /// The job's hash.
    pub fn job(&self, id: &JobId) -> String {
        self.of_job("job", id)
    }

    /// `{prefix}:{tenant}:{kind}:{<id>}`, built in one allocation of the right size (every
    /// job and every poll builds one or more).
    fn of_job(&self, kind: &str, id: &JobId) -> String {
        let (prefix, tenant) = (&*self.prefix, self.tenant.as_str());
        let mut key = String::with_capacity(prefix.len() + tenant.len() + kind.len() + 42);
        for part in [prefix, ":", tenant, ":", kind, ":{"] {
            key.push_str(part);
        }
        id.push_to(&mut key);
        key.push('}');
        key
    }

    /// Pub/sub channel on which every change of the job's status document is published (the
    /// document itself), for long-polls and event streams.
    pub fn events(&self, id: &JobId) -> String {
        self.of_job("events", id)
    }

    /// Pub/sub channel on which cancel requests for running jobs are published (the job id).
    pub fn cancel_requests(&self) -> String {
        format!("{}:cancel", self.prefix)
    }

    /// Sorted set of jobs running under a lease: member [`LeaseMember`] (`<tenant>/<job id>`),
    /// score the lease's expiry (unix milliseconds).
    pub fn leases(&self) -> String {
        format!("{}:leases", self.prefix)
    }

    /// A tiny marker that outlives the job's hash, so an expired job answers 410, not 404.
    pub fn tombstone(&self, id: &JobId) -> String {
        self.of_job("tomb", id)
    }

    /// The record of one `Idempotency-Key`: `{prefix}:{tenant}:idem:<hex SHA-256 of the key>`
    /// (two tenants' equal keys are different records). Takes
    /// the digest, never the header text, so no client-chosen bytes reach a key.
    pub fn idempotency(&self, key_sha256: &[u8; 32]) -> String {
        let hex: String = key_sha256.iter().map(|b| format!("{b:02x}")).collect();
        format!("{}:{}:idem:{}", self.prefix, self.tenant, hex)
    }

    /// Index of the tenant's jobs, for listing: sorted set, member the job id, score its
    /// creation time (unix milliseconds).
    pub fn jobs_index(&self) -> String {
        format!("{}:{}:jobs", self.prefix, self.tenant)
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

    /// The job type registry: hash, field `<name>@<schema digest>`, value the
    /// [`JobTypeRecord`](crate::job_types::JobTypeRecord) as JSON (see [`crate::job_types`]).
    pub fn job_types(&self) -> String {
        format!("{}:job-types", self.prefix)
    }
}

/// A member of the leases set: the tenant and id of a leased job, written `<tenant>/<id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseMember {
    pub tenant: Tenant,
    pub id: JobId,
}

impl LeaseMember {
    pub fn new(tenant: &Tenant, id: &JobId) -> Self {
        LeaseMember {
            tenant: tenant.clone(),
            id: *id,
        }
    }
}

impl std::fmt::Display for LeaseMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.tenant, self.id)
    }
}

impl std::str::FromStr for LeaseMember {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        // A bare id is a lease taken before tenants existed: the default tenant's.
        let (tenant, id) = s
            .split_once('/')
            .unwrap_or((crate::tenant::DEFAULT_TENANT, s));
        Ok(LeaseMember {
            tenant: tenant.parse().map_err(|_| ())?,
            id: id.parse().map_err(|_| ())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_job_hash_tag() {
        let keys = KeyLayout::new("arr");
        let id = JobId::new();
        assert_eq!(keys.job(&id), format!("arr:default:job:{{{id}}}"));
        assert!(keys.tombstone(&id).ends_with(&format!("{{{id}}}")));
    }

    #[test]
    fn scoped_keys_carry_the_tenant() {
        let acme = Tenant::parse("acme").unwrap();
        let keys = KeyLayout::new("arr").for_tenant(&acme);
        let id = JobId::new();
        assert_eq!(keys.job(&id), format!("arr:acme:job:{{{id}}}"));
        assert_eq!(keys.events(&id), format!("arr:acme:events:{{{id}}}"));
        assert_eq!(keys.jobs_index(), "arr:acme:jobs");
        assert_eq!(keys.leases(), "arr:leases");
        let member = LeaseMember::new(&acme, &id).to_string();
        assert_eq!(
            member.parse::<LeaseMember>(),
            Ok(LeaseMember::new(&acme, &id))
        );
        assert!("acme/not-an-id".parse::<LeaseMember>().is_err());
        assert_eq!(
            id.to_string().parse::<LeaseMember>(),
            Ok(LeaseMember::new(&Tenant::default(), &id))
        );
    }
}
