//! The `http` handler: an existing service behind the facade (see README "Your service or
//! script behind it").
//!
//! A job's input is sent as JSON to the declared URL. A `2xx` answer is the result (its body,
//! of its `Content-Type`). A `202 Accepted` with a `Location` makes the backend asynchronous
//! (the pattern this project implements itself): the monitor is polled, honouring its
//! `Retry-After`, until it redirects to the result or answers one. Failures map onto the job's:
//! `400`/`422` are the client's fault (422), other `4xx` the backend's refusal (424), `408`,
//! `429`, `5xx` and network errors are transient (retried, no sooner than `Retry-After`).
//!
//! The worker is only ever steered to the configured origin: a `Location` to another scheme,
//! host or port is refused (SSRF), redirects are not followed by the client, and input fields
//! fill only the path and query, percent-encoded.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;
use shared::signing::{Purpose, Signer};
use shared::webhooks;
use url::Url;

use super::{Segment, TypeContext};
use crate::context::JobContext;
use crate::jobs::{ErasedHandler, JobFailure, Output};

/// `[types.<name>.http]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSpec {
    /// Where the input goes: `http(s)://host[:port]/path?query`; `{field}` placeholders in the
    /// path and query only. May name environment variables (`${BACKEND}/render`).
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
    /// Signs each request as webhooks are signed (`Webhook-Timestamp`, `Webhook-Signature`,
    /// `Webhook-Id`: the job id); may be `${VAR}`.
    #[serde(default)]
    pub hmac_secret: Option<String>,
    /// A PEM file of the CA certificate(s) to trust instead of the system's roots (relative
    /// to the job-types file).
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

/// How long a canceled run may take to pass the cancel on (the `DELETE` has [`DELETE_TIMEOUT`]).
const CANCEL_GRACE: Duration = Duration::from_secs(10);
/// Longest wait for a monitor's answer to a cancel's `DELETE`.
const DELETE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest pause between two polls of a monitor, whatever its `Retry-After` says.
const MAX_POLL_DELAY: Duration = Duration::from_secs(60);
/// How much of a failing answer's body is read (for its excerpt or problem document).
const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// How much of it a failure message quotes.
const EXCERPT_CHARS: usize = 200;
/// The request header that carries the job-scoped progress URL.
pub const PROGRESS_URL_HEADER: &str = "Progress-Url";
/// Statuses of a monitor's JSON document that say the backend is still at it.
const WORKING: [&str; 7] = [
    "queued",
    "running",
    "pending",
    "accepted",
    "in_progress",
    "in-progress",
    "started",
];
/// Statuses that say the backend's job failed (its monitor answering 200 all the same).
const FAILED: [&str; 5] = ["failed", "error", "canceled", "cancelled", "rejected"];

/// What a placeholder value is encoded with: everything but RFC 3986's unreserved characters,
/// so a value is one path segment or one query component (no `/`, `?`, `#`, `&`, `=`, `+`).
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A URL template: the origin, then the path and query with their placeholders.
#[derive(Debug, Clone)]
struct Template {
    /// The part before the path (`https://host:port`), without placeholders.
    origin: String,
    /// The rest (path and query): literals kept as written (a `{{` of the file is a `{`,
    /// which the URL parser encodes), fields encoded at run.
    rest: Vec<Segment>,
}

struct Backend {
    name: String,
    template: Template,
    /// The configured URL's origin: the only one the worker talks to.
    origin: url::Origin,
    method: Method,
    headers: HeaderMap,
    hmac_secret: Option<Vec<u8>>,
    client: reqwest::Client,
    poll: Duration,
    cancel: bool,
    max_result_bytes: u64,
    /// Signs progress URLs, with the facade's base URL; `None`: none are sent.
    progress: Option<(Signer, String)>,
    /// How long a progress URL stays valid.
    progress_ttl: i64,
}

/// The handler of an `http` type, and how long a canceled run may take to pass the cancel on.
pub fn build(
    spec: HttpSpec,
    context: &TypeContext<'_>,
) -> Result<(ErasedHandler, Duration), String> {
    let url = super::expand_env(&spec.url).map_err(|e| format!("url: {e}"))?;
    // Messages quote the URL as written: what `${VAR}` expands to may be a secret.
    let written = spec.url.as_str();
    let template = parse_template(&url, written, context)?;
    let sample = template_sample(&template);
    let parsed = Url::parse(&sample).map_err(|e| format!("url '{written}' is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "url '{written}' must be http:// or https:// (not {}:)",
            parsed.scheme()
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("url '{written}' has no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!(
            "url '{written}' carries credentials; put them in a header (headers = {{ Authorization = \"…${{TOKEN}}\" }})"
        ));
    }
    let method = match spec
        .method
        .as_deref()
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        None | Some("POST") => Method::POST,
        Some("PUT") => Method::PUT,
        Some("PATCH") => Method::PATCH,
        Some(other) => {
            return Err(format!(
                "method '{other}' is not one of POST (the default), PUT or PATCH"
            ))
        }
    };
    let mut headers = HeaderMap::new();
    for (name, value) in &spec.headers {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("headers: '{name}' is not a valid header name"))?;
        let value = super::expand_env(value).map_err(|e| format!("headers.{name}: {e}"))?;
        let mut value = HeaderValue::from_str(&value)
            .map_err(|_| format!("headers.{name}: the value is not a valid header value"))?;
        value.set_sensitive(true);
        headers.insert(header, value);
    }
    let hmac_secret = match &spec.hmac_secret {
        Some(secret) => {
            let secret = super::expand_env(secret).map_err(|e| format!("hmac_secret: {e}"))?;
            if secret.is_empty() {
                return Err("hmac_secret is empty".to_owned());
            }
            Some(secret.into_bytes())
        }
        None => None,
    };
    let timeout = Duration::from_secs(spec.timeout_seconds.unwrap_or(context.max_run_seconds));
    if timeout.is_zero() {
        return Err("timeout_seconds must be at least 1".to_owned());
    }
    let poll = Duration::from_secs(spec.poll_seconds.unwrap_or(1));
    if poll.is_zero() {
        return Err("poll_seconds must be at least 1".to_owned());
    }
    // reqwest is built without a default crypto provider: use ring, as everywhere here. An
    // error means a provider is installed already, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut client = reqwest::Client::builder()
        // A redirect is the backend's answer to judge (same origin only), never followed blindly.
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .user_agent(concat!(
            "async-request-reply-worker/",
            env!("CARGO_PKG_VERSION")
        ));
    if let Some(ca_file) = &spec.ca_file {
        let path = context.resolve(ca_file);
        let shown = path.display().to_string();
        // Read and checked as the broker's and Redis's CA files are (an error names the file).
        shared::tls::TlsFiles::read(&shared::tls::TlsPaths {
            section: "http",
            ca_file: &shown,
            cert_file: "",
            key_file: "",
        })
        .map_err(|e| e.replacen("http.tls_ca_file", "ca_file", 1))?;
        let pem = std::fs::read(&path).map_err(|e| format!("ca_file: cannot read {shown}: {e}"))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("ca_file: {shown}: {e}"))?;
        client = client.tls_certs_only(certs);
    }
    let client = client
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let progress = if spec.progress_url == Some(false) {
        None
    } else {
        let base = context
            .settings
            .worker
            .progress_base_url
            .trim()
            .trim_end_matches('/');
        let signer = Signer::new(&context.settings.signing)
            .map_err(|e| format!("signing.keys (for progress URLs): {e}"))?;
        if base.is_empty() || !signer.enabled() {
            None
        } else {
            Url::parse(base)
                .map_err(|e| format!("worker.progress_base_url '{base}' is not a URL: {e}"))?;
            Some((signer, base.to_owned()))
        }
    };
    // A progress URL outlives the longest run (the backend may post until it answers).
    let progress_ttl = (context
        .settings
        .signing
        .ttl_seconds
        .max(context.max_run_seconds + 60))
    .min(i64::MAX as u64) as i64;
    let backend = Arc::new(Backend {
        name: context.name.to_owned(),
        origin: parsed.origin(),
        template,
        method,
        headers,
        hmac_secret,
        client,
        poll,
        cancel: spec.cancel != Some(false),
        max_result_bytes: context.max_result_bytes,
        progress,
        progress_ttl,
    });
    let handler: ErasedHandler = Arc::new(move |input, ctx| {
        let backend = backend.clone();
        Box::pin(async move { backend.run(input, ctx).await })
    });
    Ok((handler, CANCEL_GRACE))
}

/// Splits `url` at the start of its path; placeholders before it (scheme, host, port) are
/// refused, those after it must name required scalar input fields.
fn parse_template(url: &str, written: &str, context: &TypeContext<'_>) -> Result<Template, String> {
    if url.contains('#') {
        return Err(format!(
            "url '{written}' has a fragment (#…), which is never sent"
        ));
    }
    let after_scheme = url
        .find("://")
        .map(|i| i + 3)
        .ok_or_else(|| format!("url '{written}' must start with http:// or https://"))?;
    let path_at = url[after_scheme..]
        .find(['/', '?'])
        .map_or(url.len(), |i| after_scheme + i);
    let (origin, rest) = url.split_at(path_at);
    let origin_pieces = super::placeholders(origin).map_err(|e| format!("url: {e}"))?;
    if origin_pieces.iter().any(|p| matches!(p, Segment::Field(_))) {
        return Err(format!(
            "url '{written}': placeholders may fill the path and query only, never the scheme, host or port"
        ));
    }
    let origin = origin_pieces
        .into_iter()
        .map(|p| match p {
            Segment::Literal(l) | Segment::Field(l) => l,
        })
        .collect();
    let rest = super::placeholders(rest).map_err(|e| format!("url: {e}"))?;
    for piece in &rest {
        if let Segment::Field(field) = piece {
            context
                .check_placeholder(field)
                .map_err(|e| format!("url: {e}"))?;
        }
    }
    Ok(Template { origin, rest })
}

/// The template with every placeholder filled by `x`: what checks the URL's shape at load.
fn template_sample(template: &Template) -> String {
    let mut out = template.origin.clone();
    for piece in &template.rest {
        match piece {
            Segment::Literal(l) => out.push_str(l),
            Segment::Field(_) => out.push('x'),
        }
    }
    out
}

/// A short, one-line excerpt of a body, for failure messages.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(no body)".to_owned();
    }
    let mut short: String = text.chars().take(EXCERPT_CHARS).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    short.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The URL as shown in messages: without its query (which may hold secrets) or credentials.
fn shown(url: &Url) -> String {
    let mut url = url.clone();
    url.set_query(None);
    let _ = url.set_password(None);
    let _ = url.set_username("");
    url.to_string()
}

/// An error with its causes, without the URL (messages name it themselves).
fn describe(e: reqwest::Error) -> String {
    let timeout = e.is_timeout();
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        let message = cause.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = cause.source();
    }
    if timeout && !text.contains("timed out") {
        text.push_str(" (timed out)");
    }
    text
}

/// A `Retry-After` (seconds or an HTTP date) as a wait from now.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .unwrap_or("application/octet-stream")
        .to_owned()
}

/// Whether a media type is JSON (`application/json`, `application/…+json`).
fn is_json(media_type: &str) -> bool {
    shared::job::is_json_media_type(media_type)
}

/// What a monitor's JSON document says about the backend's job.
#[derive(Debug, PartialEq)]
enum Reading {
    Working,
    Failed(String),
    /// A status that is neither working nor failed (`succeeded`, `done`, …).
    Done,
    /// No `status` (or not JSON): the answer's code and `Retry-After` decide.
    Silent,
}

fn read_status(doc: &Value) -> Reading {
    let Some(status) = doc.get("status").and_then(Value::as_str) else {
        return Reading::Silent;
    };
    let status = status.to_ascii_lowercase();
    if WORKING.contains(&status.as_str()) {
        Reading::Working
    } else if FAILED.contains(&status.as_str()) {
        Reading::Failed(status)
    } else {
        Reading::Done
    }
}

/// The progress a monitor's JSON document reports, in the shapes backends write it:
/// `progress: {percent, message}` (this project's own), `progress: <number>`, `percent`,
/// `percentComplete`; the message from `progress.message` or `message`.
fn read_progress(doc: &Value) -> Option<(f64, String)> {
    let progress = doc.get("progress");
    let percent = progress
        .and_then(|p| p.get("percent"))
        .and_then(Value::as_f64)
        .or_else(|| progress.and_then(Value::as_f64))
        .or_else(|| doc.get("percent").and_then(Value::as_f64))
        .or_else(|| doc.get("percentComplete").and_then(Value::as_f64))?;
    let message = progress
        .and_then(|p| p.get("message"))
        .and_then(Value::as_str)
        .or_else(|| doc.get("message").and_then(Value::as_str))
        .unwrap_or("")
        .to_owned();
    Some((percent, message))
}

/// Reads a body of at most `limit` bytes; `Err(None)` when it is longer, `Err(Some(why))`
/// when reading failed.
async fn read_limited(
    response: &mut reqwest::Response,
    limit: u64,
) -> Result<Vec<u8>, Option<String>> {
    if response.content_length().is_some_and(|n| n > limit) {
        return Err(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| Some(describe(e)))? {
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

impl Backend {
    async fn run(self: Arc<Self>, input: Value, ctx: JobContext) -> Result<Output, JobFailure> {
        let url = self.target(&input)?;
        // The monitor, once an asynchronous backend named one: what a cancel is passed to.
        let monitor: Mutex<Option<Url>> = Mutex::new(None);
        tokio::select! {
            outcome = self.exchange(url, &input, &ctx, &monitor) => outcome,
            _ = ctx.cancelled() => {
                // The exchange's future is dropped here: a request in flight is aborted.
                let known = monitor.lock().ok().and_then(|m| m.clone());
                self.pass_cancel(known, &ctx).await;
                Err(JobFailure::permanent("canceled"))
            }
        }
    }

    /// The URL for `input`: placeholders filled with the fields' text, percent-encoded.
    fn target(&self, input: &Value) -> Result<Url, JobFailure> {
        let mut url = self.template.origin.clone();
        let mut in_query = false;
        for piece in &self.template.rest {
            match piece {
                Segment::Literal(l) => {
                    in_query |= l.contains('?');
                    url.push_str(l);
                }
                Segment::Field(field) => {
                    let text = super::field_text(input, field).ok_or_else(|| {
                        JobFailure::input_rejected(format!(
                            "the input has no scalar field '{field}' for the URL"
                        ))
                    })?;
                    // A whole segment of dots would be resolved away (`/a/../b` is `/b`), even
                    // encoded (`%2E%2E` is a dot segment too): refuse it.
                    if !in_query && !text.is_empty() && text.chars().all(|c| c == '.') {
                        return Err(JobFailure::input_rejected(format!(
                            "the field '{field}' cannot be '{text}' in the URL's path"
                        )));
                    }
                    url.extend(utf8_percent_encode(&text, COMPONENT));
                }
            }
        }
        let parsed = Url::parse(&url)
            .map_err(|e| JobFailure::input_rejected(format!("the URL for this input: {e}")))?;
        if parsed.origin() != self.origin {
            return Err(JobFailure::permanent(
                "the URL for this input left the configured origin",
            ));
        }
        Ok(parsed)
    }

    /// Whether `location` (resolved against `base`) may be followed: same scheme, host and
    /// port as the configured URL.
    fn follow(&self, base: &Url, location: &str, what: &str) -> Result<Url, JobFailure> {
        let next = base.join(location).map_err(|e| {
            JobFailure::permanent(format!(
                "{what} {} gave a Location that is not a URL ({location:?}): {e}",
                shown(base)
            ))
        })?;
        if next.origin() != self.origin {
            return Err(JobFailure::permanent(format!(
                "{what} {} sent the worker to another origin ({}); only {} is followed",
                shown(base),
                next.origin().ascii_serialization(),
                self.origin.ascii_serialization()
            )));
        }
        Ok(next)
    }

    fn request(&self, ctx: &JobContext, body: &[u8], url: &Url) -> reqwest::RequestBuilder {
        let id = ctx.job_id().to_string();
        let mut request = self
            .client
            .request(self.method.clone(), url.clone())
            .headers(self.headers.clone())
            .header(CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", &id)
            .header("Job-Id", &id);
        if let Some(traceparent) = ctx.traceparent() {
            request = request.header("traceparent", traceparent);
        }
        if let Some(secret) = &self.hmac_secret {
            let timestamp = chrono::Utc::now().timestamp();
            request = request
                .header(webhooks::TIMESTAMP_HEADER, timestamp.to_string())
                .header(
                    webhooks::SIGNATURE_HEADER,
                    webhooks::sign(secret, timestamp, body),
                )
                .header(webhooks::ID_HEADER, &id);
        }
        if let Some((signer, base)) = &self.progress {
            if let Some(query) = signer.sign_for(
                Purpose::Progress,
                ctx.tenant(),
                &ctx.job_id(),
                self.progress_ttl,
            ) {
                request = request.header(
                    PROGRESS_URL_HEADER,
                    format!("{base}/v1/jobs/{id}/progress?{query}"),
                );
            }
        }
        request.body(body.to_vec())
    }

    async fn exchange(
        &self,
        url: Url,
        input: &Value,
        ctx: &JobContext,
        monitor: &Mutex<Option<Url>>,
    ) -> Result<Output, JobFailure> {
        let body = serde_json::to_vec(input)
            .map_err(|e| JobFailure::permanent(format!("cannot encode the input: {e}")))?;
        let what = format!("{} {}", self.method, shown(&url));
        let response = self
            .request(ctx, &body, &url)
            .send()
            .await
            .map_err(|e| JobFailure::transient(format!("{what} failed: {}", describe(e))))?;
        let status = response.status();
        if status == StatusCode::ACCEPTED {
            if let Some(location) = location(response.headers()) {
                let next = self.follow(&url, &location, &what)?;
                if let Ok(mut m) = monitor.lock() {
                    *m = Some(next.clone());
                }
                let delay = self.poll_delay(response.headers());
                return self.watch(next, delay, ctx).await;
            }
        }
        if status.is_success() {
            return self.result(response, &what).await;
        }
        Err(self.failure(response, &what).await)
    }

    /// How long to wait before the next poll: the answer's `Retry-After` (at most
    /// [`MAX_POLL_DELAY`]), else `poll_seconds`.
    fn poll_delay(&self, headers: &HeaderMap) -> Duration {
        retry_after(headers)
            .unwrap_or(self.poll)
            .min(MAX_POLL_DELAY)
    }

    /// Polls an asynchronous backend's monitor until it gives the result or fails.
    async fn watch(
        &self,
        monitor: Url,
        mut delay: Duration,
        ctx: &JobContext,
    ) -> Result<Output, JobFailure> {
        let what = format!("the monitor GET {}", shown(&monitor));
        loop {
            tokio::time::sleep(delay).await;
            let mut response = self
                .get(&monitor)
                .await
                .map_err(|e| JobFailure::transient(format!("{what} failed: {e}")))?;
            let status = response.status();
            if status.is_redirection() {
                let Some(location) = location(response.headers()) else {
                    return Err(self.failure(response, &what).await);
                };
                let result_url = self.follow(&monitor, &location, &what)?;
                let result_what = format!("GET {}", shown(&result_url));
                let response = self
                    .get(&result_url)
                    .await
                    .map_err(|e| JobFailure::transient(format!("{result_what} failed: {e}")))?;
                if response.status().is_success() {
                    return self.result(response, &result_what).await;
                }
                return Err(self.failure(response, &result_what).await);
            }
            if status == StatusCode::ACCEPTED || status == StatusCode::OK {
                let media = media_type(response.headers());
                let retry_after_given = response.headers().contains_key(RETRY_AFTER);
                delay = self.poll_delay(response.headers());
                let body = self.body(&mut response, &what).await?;
                let doc: Option<Value> = if is_json(&media) {
                    serde_json::from_slice(&body).ok()
                } else {
                    None
                };
                let reading = doc.as_ref().map_or(Reading::Silent, read_status);
                if let Reading::Failed(state) = &reading {
                    return Err(JobFailure::permanent(format!(
                        "{what} answered {status}: the backend's job is {state}: {}",
                        excerpt(&body)
                    )));
                }
                // Still at it: a 202, a document that says so, or a 200 that says nothing but
                // asks to be polled again (`Retry-After`). A 200 whose document says it is done
                // is the result, whatever its headers.
                let waiting = status == StatusCode::ACCEPTED
                    || reading == Reading::Working
                    || (reading == Reading::Silent && retry_after_given);
                if waiting {
                    if let Some((percent, message)) = doc.as_ref().and_then(read_progress) {
                        ctx.progress(percent, message).await;
                    }
                    continue;
                }
                return Ok(Output::Bytes {
                    media_type: media,
                    body,
                });
            }
            if status.is_success() {
                return self.result(response, &what).await;
            }
            return Err(self.failure(response, &what).await);
        }
    }

    async fn get(&self, url: &Url) -> Result<reqwest::Response, String> {
        self.client
            .get(url.clone())
            .headers(self.headers.clone())
            .send()
            .await
            .map_err(describe)
    }

    async fn body(
        &self,
        response: &mut reqwest::Response,
        what: &str,
    ) -> Result<Vec<u8>, JobFailure> {
        read_limited(response, self.max_result_bytes)
            .await
            .map_err(|e| match e {
                None => JobFailure::permanent(format!(
                    "{what}: the answer is larger than the type's max_result_bytes ({} bytes)",
                    self.max_result_bytes
                )),
                Some(why) => {
                    JobFailure::transient(format!("{what}: reading the answer failed: {why}"))
                }
            })
    }

    /// A `2xx` answer as the result: its body, of its media type.
    async fn result(
        &self,
        mut response: reqwest::Response,
        what: &str,
    ) -> Result<Output, JobFailure> {
        let media_type = media_type(response.headers());
        let body = self.body(&mut response, what).await?;
        Ok(Output::Bytes { media_type, body })
    }

    /// A failing answer as the job's failure.
    async fn failure(&self, mut response: reqwest::Response, what: &str) -> JobFailure {
        let status = response.status();
        let wait = retry_after(response.headers());
        let media = media_type(response.headers());
        let body = read_limited(&mut response, ERROR_BODY_LIMIT as u64)
            .await
            .unwrap_or_default();
        let problem: Option<Value> = media
            .to_ascii_lowercase()
            .starts_with("application/problem+json")
            .then(|| serde_json::from_slice::<Value>(&body).ok())
            .flatten()
            .filter(Value::is_object);
        let said = problem
            .as_ref()
            .and_then(|p| {
                p.get("detail")
                    .and_then(Value::as_str)
                    .or_else(|| p.get("title").and_then(Value::as_str))
            })
            .map(str::to_owned)
            .unwrap_or_else(|| excerpt(&body));
        let message = format!("{what} answered {status}: {said}");
        match status.as_u16() {
            400 | 422 => JobFailure::input_rejected(message).with_backend_problem(problem),
            408 | 429 | 500..=599 => JobFailure::transient(message)
                .retry_after(wait)
                .with_backend_problem(problem),
            _ => JobFailure::permanent(message).with_backend_problem(problem),
        }
    }

    /// Passes a cancel on: a `DELETE` to the monitor of an asynchronous backend, recorded with
    /// its answer; a synchronous request was aborted by dropping it.
    async fn pass_cancel(&self, monitor: Option<Url>, ctx: &JobContext) {
        let Some(monitor) = monitor else {
            ctx.backend_canceled(
                false,
                "the request in flight was aborted; a synchronous backend has no monitor to cancel",
            );
            return;
        };
        if !self.cancel {
            ctx.backend_canceled(
                false,
                format!(
                    "the backend's monitor {} was not told (cancel = false for type {})",
                    shown(&monitor),
                    self.name
                ),
            );
            return;
        }
        let delete = self
            .client
            .delete(monitor.clone())
            .headers(self.headers.clone())
            .header("Job-Id", ctx.job_id().to_string())
            .timeout(DELETE_TIMEOUT)
            .send();
        let url = shown(&monitor);
        match tokio::time::timeout(DELETE_TIMEOUT, delete).await {
            Ok(Ok(response)) => {
                let status = response.status();
                ctx.backend_canceled(
                    status.is_success(),
                    format!("DELETE {url} answered {status}"),
                );
            }
            Ok(Err(e)) => {
                ctx.backend_canceled(false, format!("DELETE {url} failed: {}", describe(e)))
            }
            Err(_) => ctx.backend_canceled(
                false,
                format!(
                    "DELETE {url} had no answer within {} s",
                    DELETE_TIMEOUT.as_secs()
                ),
            ),
        }
    }
}

fn location(headers: &HeaderMap) -> Option<String> {
    headers
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::Settings;
    use std::path::Path;

    fn schema() -> Value {
        serde_json::json!({
            "type": "object",
            "required": ["name", "n"],
            "properties": {"name": {"type": "string"}, "n": {"type": "integer"}}
        })
    }

    fn build_with(spec: &str) -> Result<Duration, String> {
        let spec: HttpSpec = toml::from_str(spec).map_err(|e| e.to_string())?;
        let settings = Settings::load(None).unwrap();
        let schema = schema();
        let context = TypeContext {
            name: "t",
            dir: Path::new("."),
            schema: &schema,
            max_result_bytes: 100,
            max_run_seconds: 5,
            settings: &settings,
        };
        build(spec, &context).map(|(_, grace)| grace)
    }

    fn backend(url: &str) -> Arc<Backend> {
        let settings = Settings::load(None).unwrap();
        let schema = schema();
        let context = TypeContext {
            name: "t",
            dir: Path::new("."),
            schema: &schema,
            max_result_bytes: 100,
            max_run_seconds: 5,
            settings: &settings,
        };
        let template = parse_template(url, url, &context).unwrap();
        let origin = Url::parse(&template_sample(&template)).unwrap().origin();
        // reqwest needs a process-wide provider (as `build` installs it).
        let _ = rustls::crypto::ring::default_provider().install_default();
        Arc::new(Backend {
            name: "t".into(),
            template,
            origin,
            method: Method::POST,
            headers: HeaderMap::new(),
            hmac_secret: None,
            client: reqwest::Client::new(),
            poll: Duration::from_secs(1),
            cancel: true,
            max_result_bytes: 100,
            progress: None,
            progress_ttl: 60,
        })
    }

    #[test]
    fn a_good_spec_builds_with_a_cancel_grace() {
        std::env::set_var("ARR_HTTP_TEST_BASE", "http://127.0.0.1:9");
        let grace = build_with(
            r#"url = "${ARR_HTTP_TEST_BASE}/render/{name}?n={n}"
method = "put""#,
        )
        .unwrap();
        assert_eq!(grace, CANCEL_GRACE);
    }

    #[test]
    fn placeholders_in_scheme_host_or_port_are_refused() {
        for url in [
            "http://{name}/x",
            "http://example.com:{n}/x",
            "http://{name}.example.com",
            "{name}://example.com/",
        ] {
            let e = build_with(&format!("url = \"{url}\"")).unwrap_err();
            assert!(
                e.contains("never the scheme, host or port") || e.contains("must start with"),
                "{url}: {e}"
            );
        }
        // Unknown or optional fields are refused too (the schema's rules).
        let e = build_with(r#"url = "http://h/{nope}""#).unwrap_err();
        assert!(e.contains("no property"), "{e}");
    }

    #[test]
    fn bad_methods_schemes_and_headers_are_refused() {
        let e = build_with("url = \"http://h/\"\nmethod = \"GET\"").unwrap_err();
        assert!(e.contains("method 'GET'"), "{e}");
        let e = build_with(r#"url = "ftp://h/""#).unwrap_err();
        assert!(e.contains("http:// or https://"), "{e}");
        let e = build_with(r#"url = "http://u:p@h/""#).unwrap_err();
        assert!(e.contains("credentials"), "{e}");
        std::env::set_var("ARR_HTTP_TEST_SECRET_URL", "http://u:hunter2@h/");
        let e = build_with(r#"url = "${ARR_HTTP_TEST_SECRET_URL}""#).unwrap_err();
        assert!(e.contains("credentials") && !e.contains("hunter2"), "{e}");
        let e = build_with("url = \"http://h/\"\nheaders = { \"Bad Name\" = \"x\" }").unwrap_err();
        assert!(e.contains("not a valid header name"), "{e}");
        let e = build_with("url = \"http://h/\"\nheaders = { X = \"a\\nb\" }").unwrap_err();
        assert!(e.contains("not a valid header value"), "{e}");
        let e = build_with("url = \"http://h/\"\nca_file = \"/nonexistent/ca.pem\"").unwrap_err();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        let not_pem = std::env::temp_dir().join(format!("arr-http-{}.pem", uuid::Uuid::new_v4()));
        std::fs::write(&not_pem, "not a certificate").unwrap();
        let e = build_with(&format!(
            "url = \"http://h/\"\nca_file = {:?}",
            not_pem.display().to_string()
        ))
        .unwrap_err();
        std::fs::remove_file(&not_pem).unwrap();
        assert!(e.starts_with("ca_file") && e.contains("PEM"), "{e}");
    }

    #[test]
    fn a_missing_environment_variable_is_named() {
        let e = build_with(r#"url = "${ARR_HTTP_TEST_UNSET_URL}/x""#).unwrap_err();
        assert!(e.contains("ARR_HTTP_TEST_UNSET_URL"), "{e}");
        let e = build_with(
            "url = \"http://h/\"\nheaders = { Authorization = \"Bearer ${ARR_HTTP_TEST_UNSET_TOKEN}\" }",
        )
        .unwrap_err();
        assert!(
            e.contains("ARR_HTTP_TEST_UNSET_TOKEN") && e.contains("Authorization"),
            "{e}"
        );
        let e = build_with("url = \"http://h/\"\nhmac_secret = \"${ARR_HTTP_TEST_UNSET_KEY}\"")
            .unwrap_err();
        assert!(e.contains("ARR_HTTP_TEST_UNSET_KEY"), "{e}");
    }

    #[test]
    fn field_values_are_encoded_into_one_segment_or_component() {
        let b = backend("http://h:1/a/{name}/b?n={n}&x=1");
        let url = b
            .target(&serde_json::json!({"name": "x/../y?z#w&v=1 é", "n": 3}))
            .unwrap();
        assert_eq!(url.path(), "/a/x%2F..%2Fy%3Fz%23w%26v%3D1%20%C3%A9/b");
        assert_eq!(url.query(), Some("n=3&x=1"));
        assert_eq!(url.path_segments().unwrap().count(), 3);
        // A segment of dots would climb out of the path.
        let e = b
            .target(&serde_json::json!({"name": "..", "n": 3}))
            .unwrap_err();
        assert_eq!(e.kind, shared::JobErrorKind::InputRejected);
    }

    #[test]
    fn a_location_to_another_origin_is_not_followed() {
        let b = backend("http://h:1/a");
        let base = Url::parse("http://h:1/a").unwrap();
        assert_eq!(
            b.follow(&base, "/jobs/7", "POST").unwrap().as_str(),
            "http://h:1/jobs/7"
        );
        for other in [
            "http://evil:1/x",
            "http://h:2/x",
            "https://h:1/x",
            "//evil/x",
        ] {
            let e = b.follow(&base, other, "POST").unwrap_err();
            assert!(e.message.contains("another origin"), "{other}: {e}");
            assert!(!e.retryable);
        }
    }

    #[test]
    fn monitor_documents_are_read() {
        let own = serde_json::json!({"status": "running", "progress": {"percent": 40.0, "message": "half"}});
        assert_eq!(read_status(&own), Reading::Working);
        assert_eq!(read_progress(&own), Some((40.0, "half".into())));
        let plain = serde_json::json!({"status": "in-progress", "progress": 12, "message": "m"});
        assert_eq!(read_status(&plain), Reading::Working);
        assert_eq!(read_progress(&plain), Some((12.0, "m".into())));
        assert_eq!(
            read_progress(&serde_json::json!({"percentComplete": 7})),
            Some((7.0, String::new()))
        );
        assert_eq!(
            read_status(&serde_json::json!({"status": "failed"})),
            Reading::Failed("failed".into())
        );
        assert_eq!(
            read_status(&serde_json::json!({"answer": 42})),
            Reading::Silent
        );
        assert_eq!(
            read_status(&serde_json::json!({"status": "succeeded"})),
            Reading::Done
        );
    }

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        let later = SystemTime::now() + Duration::from_secs(30);
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_str(&httpdate::fmt_http_date(later)).unwrap(),
        );
        let wait = retry_after(&h).unwrap();
        assert!(
            wait > Duration::from_secs(25) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }
}
