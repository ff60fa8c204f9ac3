//! The `http` handler: an existing service behind the facade (see README "Your service or
//! script behind it").

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::TypeContext;
use crate::jobs::{ErasedHandler, JobFailure};

/// `[types.<name>.http]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSpec {
    /// Where the input goes: `http(s)://host[:port]/path?query`; `{field}` placeholders in the
    /// path and query only.
    pub url: String,
    /// `POST` (the default), `PUT` or `PATCH`.
    #[serde(default)]
    pub method: Option<String>,
    /// Request headers; values may name environment variables (`${TOKEN}`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Longest one request may take (seconds; default: the type's `max_run_seconds`).
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    /// Signs each request as webhooks are signed (`Webhook-Signature`); may be `${VAR}`.
    #[serde(default)]
    pub hmac_secret: Option<String>,
    /// A PEM file of the CA certificate(s) to trust instead of the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// How often an asynchronous backend's monitor is polled when it gives no `Retry-After`
    /// (seconds; default 1).
    #[serde(default)]
    pub poll_seconds: Option<u64>,
    /// Whether requests carry a signed `Progress-Url` (default true; needs
    /// `worker.progress_base_url` and signing keys).
    #[serde(default)]
    pub progress_url: Option<bool>,
    /// Whether a cancel sends `DELETE` to an asynchronous backend's monitor (default true).
    #[serde(default)]
    pub cancel: Option<bool>,
}

/// The handler of an `http` type, and how long a canceled run may take to pass the cancel on.
pub fn build(
    spec: HttpSpec,
    context: &TypeContext<'_>,
) -> Result<(ErasedHandler, Duration), String> {
    let _ = (&spec, context);
    let handler: ErasedHandler = std::sync::Arc::new(|_, _| {
        Box::pin(async { Err(JobFailure::permanent("the http handler is not built yet")) })
    });
    Ok((handler, Duration::ZERO))
}
