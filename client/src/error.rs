//! The errors of this client.

use std::time::Duration;

use crate::types::{Problem, StatusDocument};

/// What can go wrong talking to the service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The service answered with an error status (the problem document it sent, or one made
    /// up from the status line when the body was not one).
    #[error("HTTP {status}: {problem}")]
    Http { status: u16, problem: Box<Problem> },
    /// The request did not get an answer (connection refused, reset, timed out, …).
    #[error("transport error: {0}")]
    Transport(#[from] reqwest::Error),
    /// The caller's deadline passed before the job ended; `last` is the last status seen.
    #[error("gave up waiting after {waited:?}")]
    Timeout {
        waited: Duration,
        last: Option<Box<StatusDocument>>,
    },
    /// The job failed: the problem the status monitor answered with (424, or 422 when the job
    /// rejected its input) and the job's status document.
    #[error("job failed (HTTP {}): {problem}", problem.status.unwrap_or_default())]
    JobFailed {
        problem: Box<Problem>,
        status: Box<StatusDocument>,
    },
    /// The job was canceled.
    #[error("job {} was canceled", status.id)]
    JobCanceled { status: Box<StatusDocument> },
    /// The result was asked for before the job ended.
    #[error("job {} has not finished (it is {})", status.id, status.status)]
    NotFinished { status: Box<StatusDocument> },
    /// The answer does not follow the contract (a missing header, a body that is not the
    /// expected document, …).
    #[error("invalid response: {0}")]
    InvalidResponse(String),
    /// A URL (the base URL, or one handed to [`JobHandle::from_url`](crate::JobHandle::from_url))
    /// that cannot be used.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// The job's input could not be serialized to JSON.
    #[error("input is not serializable to JSON: {0}")]
    Input(#[source] serde_json::Error),
}

impl Error {
    /// The HTTP status of an [`Error::Http`] or a failed job's problem.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            Error::Http { status, .. } => Some(*status),
            Error::JobFailed { problem, .. } => problem.status,
            _ => None,
        }
    }

    /// The problem document, for the errors that carry one.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Error::Http { problem, .. } | Error::JobFailed { problem, .. } => Some(problem),
            _ => None,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
