//! The documents of the HTTP contract, as this client sees them. Every document keeps the
//! members it does not know in `extra`, so a newer server's additions survive a round trip.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Where a job stands (`status` in the status document).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Canceled,
    /// A state this client does not know (a newer server); treated as pending.
    #[serde(other)]
    Unknown,
}

impl JobState {
    /// Whether the job has ended (`succeeded`, `failed` or `canceled`).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Canceled
        )
    }

    /// The name the server uses (`"queued"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Canceled => "canceled",
            JobState::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JobState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "queued" => Ok(JobState::Queued),
            "running" => Ok(JobState::Running),
            "succeeded" => Ok(JobState::Succeeded),
            "failed" => Ok(JobState::Failed),
            "canceled" => Ok(JobState::Canceled),
            other => Err(format!(
                "unknown status {other:?} (queued, running, succeeded, failed, canceled)"
            )),
        }
    }
}

/// A job's progress as its handler reports it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Progress {
    #[serde(default)]
    pub percent: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Why a job failed (the status document's `error` member).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct JobError {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default)]
    pub retryable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The links of a status document.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Links {
    #[serde(rename = "self", default, skip_serializing_if = "Option::is_none")]
    pub self_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The status document the service answers polls with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusDocument {
    pub id: String,
    #[serde(rename = "type")]
    pub job_type: String,
    pub status: JobState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    #[serde(default)]
    pub attempts: u32,
    /// RFC 3339 timestamps, as the server wrote them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    #[serde(default)]
    pub links: Links,
    /// Webhook delivery state, for jobs submitted with a `callback_url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<Value>,
    /// Once succeeded: the result's media type and size (servers before results that are not
    /// JSON leave it out; their results are JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ResultInfo>,
    /// Members this client does not know (`next_attempt_at`, …).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A result's media type and size, as the status document gives them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultInfo {
    pub media_type: String,
    pub size: u64,
}

/// A result as the server sent it: its bytes and `Content-Type`. Results of the built-in and
/// Rust job types are JSON; a type in front of another service or a program can answer
/// anything (a PDF, a PNG, text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultBody {
    /// The `Content-Type` (`application/json` when the server sent none).
    pub media_type: String,
    pub bytes: bytes::Bytes,
}

impl ResultBody {
    /// Whether the result is JSON (`application/json` or a `+json` type).
    pub fn is_json(&self) -> bool {
        let essence = self
            .media_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        essence == "application/json"
            || (essence.starts_with("application/") && essence.ends_with("+json"))
    }

    /// Whether the result is text a terminal can show (`text/*`, JSON, XML, SVG).
    pub fn is_text(&self) -> bool {
        let essence = self.media_type.to_ascii_lowercase();
        self.is_json()
            || essence.starts_with("text/")
            || essence.contains("xml")
            || essence.starts_with("application/x-ndjson")
    }

    /// The result parsed as JSON into `T`.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> crate::Result<T> {
        serde_json::from_slice(&self.bytes).map_err(|e| {
            crate::Error::InvalidResponse(format!(
                "the result ({}) is not the expected JSON: {e}",
                self.media_type
            ))
        })
    }
}

impl StatusDocument {
    /// The progress in percent (0 when none was reported).
    pub fn percent(&self) -> f64 {
        self.progress.as_ref().map_or(0.0, |p| p.percent)
    }

    /// The progress message, if any.
    pub fn message(&self) -> Option<&str> {
        self.progress.as_ref().and_then(|p| p.message.as_deref())
    }
}

/// An RFC 9457 problem document (`application/problem+json`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Problem {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Extension members: `job` (the status document of a failed job), `errors`, …
    #[serde(flatten)]
    pub extensions: Map<String, Value>,
}

impl Problem {
    /// The status document embedded in the problem's `job` member, if any.
    pub fn job(&self) -> Option<StatusDocument> {
        self.extensions
            .get("job")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.title.as_deref().unwrap_or("problem"))?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}
