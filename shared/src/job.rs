//! The job as clients see it: its id, its lifecycle states and the status document that the
//! status monitor serves. The worker writes these documents and the facade reads them, so the
//! type lives here, once.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Path under which the status monitor of every job lives.
pub const JOBS_PATH: &str = "/v1/jobs";
/// Length of a job id's text.
const ID_LEN: usize = uuid::fmt::Hyphenated::LENGTH;

/// An unguessable job id (UUID v4: 122 random bits). Parsing is the only way to get one from
/// outside, so a `JobId` that exists is safe to put into a Redis key or a URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct JobId(Uuid);

impl JobId {
    pub fn new() -> Self {
        JobId(Uuid::new_v4())
    }

    /// Appends the id's one spelling (what `Display` writes) to `out`. Keys and paths are
    /// built with this rather than `format!`, which grows its string piece by piece (the key
    /// and the paths of every job and poll cost about 2k instructions each that way).
    pub fn push_to(&self, out: &mut String) {
        out.push_str(self.encode(&mut [0; ID_LEN]));
    }

    /// The id's one spelling (lower-case, hyphenated), written into `buf`.
    fn encode<'b>(&self, buf: &'b mut [u8; ID_LEN]) -> &'b str {
        self.0.hyphenated().encode_lower(buf)
    }

    /// The status monitor's path, `/v1/jobs/{id}`.
    pub fn status_path(&self) -> String {
        self.path_with("")
    }

    /// The result's path, `/v1/jobs/{id}/result`.
    pub fn result_path(&self) -> String {
        self.path_with("/result")
    }

    /// The event stream's path, `/v1/jobs/{id}/events`.
    pub fn events_path(&self) -> String {
        self.path_with("/events")
    }

    /// `/v1/jobs/{id}` followed by `tail`.
    fn path_with(&self, tail: &str) -> String {
        let mut path = String::with_capacity(JOBS_PATH.len() + 1 + ID_LEN + tail.len());
        path.push_str(JOBS_PATH);
        path.push('/');
        self.push_to(&mut path);
        path.push_str(tail);
        path
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Always the lower-case hyphenated form, so a key or URL has one spelling.
        f.write_str(self.encode(&mut [0; ID_LEN]))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("not a job id")]
pub struct InvalidJobId;

impl FromStr for JobId {
    type Err = InvalidJobId;

    /// Accepts only the canonical lower-case, hyphenated form, so that every id has one
    /// spelling (and one Redis key).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 36 {
            return Err(InvalidJobId);
        }
        let id = Uuid::try_parse(s).map(JobId).map_err(|_| InvalidJobId)?;
        if id.encode(&mut [0; ID_LEN]) == s {
            Ok(id)
        } else {
            Err(InvalidJobId)
        }
    }
}

/// Where a job is in its life. `Succeeded`, `Failed` and `Canceled` are terminal: nothing moves
/// a job out of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Canceled,
}

impl JobStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Canceled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Canceled => "canceled",
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The latest progress a handler reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Progress {
    /// 0 to 100.
    pub percent: f64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// Why a job failed. Decides how the status monitor answers: `InputRejected` is the client's
/// fault (422), everything else is a failed dependency (424).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum JobErrorKind {
    /// The handler rejected its input (a business rule only the worker could check).
    InputRejected,
    /// The handler returned an error.
    HandlerFailed,
    /// The handler panicked or the worker could not run it.
    Crashed,
    /// The job ran past its type's maximum run time.
    Timeout,
    /// A transient error persisted past the retry limit.
    RetriesExhausted,
    /// The message could not be understood (undecodable, unknown type).
    Undeliverable,
}

impl JobErrorKind {
    pub fn slug(self) -> &'static str {
        match self {
            JobErrorKind::InputRejected => "input-rejected",
            JobErrorKind::HandlerFailed => "handler-failed",
            JobErrorKind::Crashed => "crashed",
            JobErrorKind::Timeout => "timeout",
            JobErrorKind::RetriesExhausted => "retries-exhausted",
            JobErrorKind::Undeliverable => "undeliverable",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            JobErrorKind::InputRejected => "The job rejected its input",
            JobErrorKind::HandlerFailed => "The job failed",
            JobErrorKind::Crashed => "The job crashed",
            JobErrorKind::Timeout => "The job ran out of time",
            JobErrorKind::RetriesExhausted => "The job failed after all retries",
            JobErrorKind::Undeliverable => "The job could not be run",
        }
    }
}

/// The job's own error, as written into its status document (RFC 9457 members).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobError {
    /// A URI reference naming the kind of failure, `/problems/job/<kind>`.
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub detail: String,
    pub retryable: bool,
    pub kind: JobErrorKind,
    /// The problem document (RFC 9457) of the backend a declared `http` type calls, when it
    /// answered with one: its own words on why, kept as it sent them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub backend: Option<serde_json::Value>,
}

impl JobError {
    pub fn new(kind: JobErrorKind, detail: impl Into<String>, retryable: bool) -> Self {
        JobError {
            type_uri: format!("/problems/job/{}", kind.slug()),
            title: kind.title().to_owned(),
            detail: detail.into(),
            retryable,
            kind,
            backend: None,
        }
    }
}

/// The media type of a result that does not say (every result of a Rust handler).
pub const JSON_MEDIA_TYPE: &str = "application/json";

/// What a succeeded job's result is, without its bytes: `GET …/result` serves them with this
/// media type. Results of Rust handlers are JSON; a declared `http` or `command` type keeps
/// what its backend answered (a PDF, a PNG, text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResultInfo {
    /// The result's `Content-Type`.
    pub media_type: String,
    /// Its size in bytes.
    pub size: u64,
}

impl ResultInfo {
    /// Whether the result is JSON (`application/json` or a `+json` type, parameters aside).
    pub fn is_json(&self) -> bool {
        is_json_media_type(&self.media_type)
    }
}

/// Whether `media_type` is JSON: `application/json` or `…/…+json`, parameters aside.
pub fn is_json_media_type(media_type: &str) -> bool {
    let essence = media_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == JSON_MEDIA_TYPE
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// How the backend of a canceled job took the cancel (declared `http` types: the request in
/// flight is aborted, an asynchronous backend's monitor gets a `DELETE`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BackendCancel {
    /// Whether the backend confirmed it stopped: a `2xx` answer to the `DELETE` sent to an
    /// asynchronous backend's monitor. `false` when that `DELETE` failed, was refused or was
    /// not sent (`cancel = false`), and when there was no monitor to tell: a synchronous
    /// request in flight is aborted, but the backend may still finish what it started.
    pub confirmed: bool,
    /// What happened, in words (`DELETE http://…/jobs/7 answered 204`).
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Links {
    #[serde(rename = "self")]
    pub self_: String,
    pub result: String,
    /// `DELETE` here cancels the job.
    #[serde(default)]
    pub cancel: String,
    /// Server-sent events of the job's changes.
    #[serde(default)]
    pub events: String,
}

impl Links {
    pub fn for_job(id: &JobId) -> Self {
        Links {
            self_: id.status_path(),
            result: id.result_path(),
            cancel: id.status_path(),
            events: id.events_path(),
        }
    }
}

/// What `GET /v1/jobs/{id}` shows. Stored in Redis as JSON exactly as served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatusDocument {
    pub id: JobId,
    #[serde(rename = "type")]
    pub job_type: String,
    pub status: JobStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    pub attempts: u32,
    #[serde(serialize_with = "crate::timestamp::serialize")]
    pub created_at: DateTime<Utc>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::timestamp::option::serialize"
    )]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::timestamp::option::serialize"
    )]
    pub finished_at: Option<DateTime<Utc>>,
    /// While a failed attempt waits for its retry: when the next attempt is due.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::timestamp::option::serialize"
    )]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The last error: the final one when failed, the last attempt's while a retry waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    pub links: Links,
    /// The webhook, when the client gave a `callback_url`, and how its delivery stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<crate::webhooks::Callback>,
    /// Once succeeded: the result's media type and size (absent in documents of versions
    /// before results that are not JSON: those results are JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ResultInfo>,
    /// Once canceled, for a job whose handler passes a cancel on to a backend: whether the
    /// backend confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_cancel: Option<BackendCancel>,
}

impl StatusDocument {
    /// A freshly accepted job.
    pub fn queued(id: JobId, job_type: impl Into<String>, created_at: DateTime<Utc>) -> Self {
        StatusDocument {
            id,
            job_type: job_type.into(),
            status: JobStatus::Queued,
            progress: None,
            attempts: 0,
            created_at,
            started_at: None,
            finished_at: None,
            next_attempt_at: None,
            error: None,
            links: Links::for_job(&id),
            callback: None,
            result: None,
            backend_cancel: None,
        }
    }

    /// The same document with a pending callback to `url` (if any).
    pub fn with_callback(mut self, url: Option<&str>) -> Self {
        self.callback = url.map(crate::webhooks::Callback::pending);
        self
    }
}

/// The members of a status document that decide how it is answered (HTTP status, `Location`,
/// `Retry-After`), read without the rest. A poll serves the stored bytes as they are, so
/// decoding the links, the callback and timestamps it does not use into owned values is work
/// thrown away: the whole document cost about 10k instructions per poll, an eighth of the
/// facade's (BENCHMARKS.md). Members it does not name are skipped, not checked.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct StatusHead {
    pub id: JobId,
    #[serde(rename = "type")]
    pub job_type: String,
    pub status: JobStatus,
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub next_attempt_at: Option<DateTime<Utc>>,
}

impl StatusHead {
    /// The head of a stored status document.
    pub fn decode(bytes: &[u8]) -> serde_json::Result<Self> {
        serde_json::from_slice(bytes)
    }
}

impl StatusDocument {
    /// The head of this document (what [`StatusHead::decode`] reads from its JSON).
    pub fn head(&self) -> StatusHead {
        StatusHead {
            id: self.id,
            job_type: self.job_type.clone(),
            status: self.status,
            started_at: self.started_at,
            next_attempt_at: self.next_attempt_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_id_has_one_spelling() {
        let id = JobId::new();
        let s = id.to_string();
        assert_eq!(s.parse::<JobId>().unwrap(), id);
        assert!(s.to_uppercase().parse::<JobId>().is_err());
        assert!(s.replace('-', "").parse::<JobId>().is_err());
        assert!(format!("{{{s}}}").parse::<JobId>().is_err());
        for bad in [
            "",
            "*",
            "../etc/passwd",
            "00000000-0000-0000-0000-00000000000*",
        ] {
            assert!(bad.parse::<JobId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn paths_and_text_of_an_id() {
        let id = JobId::new();
        let text = id.0.as_hyphenated().to_string();
        assert_eq!(id.to_string(), text);
        assert_eq!(id.status_path(), format!("/v1/jobs/{text}"));
        assert_eq!(id.result_path(), format!("/v1/jobs/{text}/result"));
        assert_eq!(id.events_path(), format!("/v1/jobs/{text}/events"));
        let mut out = String::from("x:");
        id.push_to(&mut out);
        assert_eq!(out, format!("x:{text}"));
    }

    #[test]
    fn document_round_trips_and_omits_empty_fields() {
        let doc = StatusDocument::queued(JobId::new(), "echo", Utc::now());
        let json = serde_json::to_value(&doc).unwrap();
        assert_eq!(json["status"], "queued");
        assert!(json.get("error").is_none());
        assert_eq!(json["links"]["self"], doc.id.status_path());
        let back: StatusDocument = serde_json::from_value(json).unwrap();
        assert_eq!(back, doc);
    }

    #[test]
    fn the_head_reads_what_the_whole_document_says() {
        let mut doc = StatusDocument::queued(JobId::new(), "echo", Utc::now())
            .with_callback(Some("https://example.com/hook"));
        doc.status = JobStatus::Running;
        doc.started_at = Some(Utc::now());
        doc.progress = Some(Progress {
            percent: 50.0,
            message: "half".into(),
        });
        let bytes = serde_json::to_vec(&doc).unwrap();
        let head = StatusHead::decode(&bytes).unwrap();
        assert_eq!(head, doc.head());
        // A type name with an escape is read all the same.
        let escaped = br#"{"id":"0b7c4f0e-4b7e-4a55-9d7e-2f0c8e1d6a3b","type":"e\u0063ho","status":"queued"}"#;
        assert_eq!(StatusHead::decode(escaped).unwrap().job_type, "echo");
        assert!(StatusHead::decode(br#"{"type":"echo","status":"queued"}"#).is_err());
        assert!(StatusHead::decode(br#"{"id":"x","type":"echo","status":"queued"}"#).is_err());
    }

    #[test]
    fn terminal_states() {
        assert!(!JobStatus::Queued.is_terminal());
        assert!(!JobStatus::Running.is_terminal());
        assert!(JobStatus::Succeeded.is_terminal());
        assert!(JobStatus::Failed.is_terminal());
        assert!(JobStatus::Canceled.is_terminal());
    }
}
