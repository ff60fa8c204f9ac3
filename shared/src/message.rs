//! The queue message: what the facade publishes and a worker consumes. JSON, persistent, with
//! the job id also in the AMQP `message_id` property so tools can see it without decoding.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::job::JobId;
use crate::tenant::Tenant;

/// Version of the message format; a worker refuses versions it does not know.
pub const MESSAGE_VERSION: u32 = 1;

/// AMQP content type of a [`JobMessage`].
pub const CONTENT_TYPE: &str = "application/json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobMessage {
    pub v: u32,
    pub id: JobId,
    #[serde(rename = "type")]
    pub job_type: String,
    pub input: Value,
    #[serde(serialize_with = "crate::timestamp::serialize")]
    pub created_at: DateTime<Utc>,
    /// Where to POST the final status document (already checked against the allow-list).
    /// Absent in messages of older versions, which decode as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    /// The tenant the job belongs to (its Redis keys carry it). Messages from before tenants
    /// decode as the default tenant's.
    #[serde(default)]
    pub tenant: Tenant,
    /// Digest of the input schema the facade checked `input` against (the registered
    /// type's `schema_digest`). Absent in messages of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_digest: Option<String>,
    /// During a rolling deploy two versions of a type may be registered with different
    /// schemas: the digests of every live version's schema that `input` meets besides
    /// `schema_digest` (a worker whose schema is among them runs the job as it is; see
    /// `worker::versions`). Empty when only one version was live.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also_valid_for: Vec<String>,
}

impl JobMessage {
    pub fn new(
        id: JobId,
        job_type: impl Into<String>,
        input: Value,
        created_at: DateTime<Utc>,
    ) -> Self {
        JobMessage {
            v: MESSAGE_VERSION,
            id,
            job_type: job_type.into(),
            input,
            created_at,
            callback_url: None,
            tenant: Tenant::default(),
            schema_digest: None,
            also_valid_for: Vec::new(),
        }
    }

    /// Whether the facade found `input` valid against the schema of digest `digest`.
    /// Messages of older versions (no digest) say nothing either way.
    pub fn checked_against_digest(&self, digest: &str) -> bool {
        self.schema_digest.as_deref() == Some(digest)
            || self.also_valid_for.iter().any(|d| d == digest)
    }

    /// The same message, marked as checked against the schema of digest `digest` (and of
    /// the digests `others`, see [`JobMessage::also_valid_for`]).
    pub fn checked_against(mut self, digest: &str, others: &[String]) -> Self {
        self.schema_digest = Some(digest.to_owned());
        self.also_valid_for = others.iter().filter(|d| *d != digest).cloned().collect();
        self
    }

    /// The same message for `tenant`'s job.
    pub fn for_tenant(mut self, tenant: &Tenant) -> Self {
        self.tenant = tenant.clone();
        self
    }

    /// The same message with a callback URL (if any).
    pub fn with_callback(mut self, url: Option<String>) -> Self {
        self.callback_url = url;
        self
    }
}
