//! A client for the Asynchronous Request-Reply service.
//!
//! It speaks only the HTTP contract described in the project's README (submit, status monitor
//! with `202`/`303`/problem answers, result, cancel, long-poll with `Prefer: wait=N`, server-sent
//! events, idempotency keys, listing) and links no server code.
//!
//! ```no_run
//! use std::time::Duration;
//! use client::{Client, Error};
//! use serde_json::json;
//!
//! # async fn run() -> client::Result<()> {
//! let client = Client::builder("http://127.0.0.1:8080")
//!     .api_key("secret")               // sent as `Authorization: Bearer secret`
//!     .timeout(Duration::from_secs(10))
//!     .build()?;
//!
//! let job = client
//!     .submit("hash", json!({"bytes": 1_000_000, "seed": 1}))
//!     .priority(5)
//!     .idempotency_key("hash-1")
//!     .await?;
//! println!("submitted {} at {}", job.id, job.location);
//!
//! match job.wait(Duration::from_secs(60)).await {
//!     Ok(done) => println!("result: {}", done.result),
//!     Err(Error::JobFailed { problem, status }) => {
//!         eprintln!("{} failed after {} attempts: {problem}", status.id, status.attempts)
//!     }
//!     Err(Error::JobCanceled { .. }) => eprintln!("canceled"),
//!     Err(Error::Timeout { .. }) => eprintln!("still running, giving up"),
//!     Err(other) => return Err(other),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! The crate also builds the `arr` command-line tool (see `arr --help`).

mod error;
mod handle;
mod sse;
mod types;

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use reqwest::header::{HeaderMap, ACCEPT, CONTENT_TYPE, LOCATION};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use error::{Error, Result};
pub use handle::{Finished, JobHandle};
pub use types::{
    JobError, JobState, Links, Problem, Progress, ResultBody, ResultInfo, StatusDocument,
};

/// The default per-request timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The default longest `Prefer: wait=N` a [`JobHandle::wait`] asks for.
pub const DEFAULT_LONG_POLL: Duration = Duration::from_secs(30);
/// The default upper bound on a `Retry-After` the client honours while polling.
pub const DEFAULT_MAX_POLL_INTERVAL: Duration = Duration::from_secs(30);

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// In a workspace build reqwest's features unify with other crates' (`rustls-no-provider`), and
/// reqwest then needs a process-wide rustls crypto provider before any client is built: install
/// ring's, once. Harmless when one is installed already.
fn install_crypto_provider() {
    static PROVIDER: OnceLock<()> = OnceLock::new();
    PROVIDER.get_or_init(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A connection to one deployment of the service. Cheap to clone (the connection pool is
/// shared).
///
/// ```
/// let client = client::Client::new("http://127.0.0.1:8080").unwrap();
/// assert_eq!(client.base_url().as_str(), "http://127.0.0.1:8080/");
/// ```
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Requests with the per-request timeout; never follows redirects (the 303 is the
    /// protocol).
    http: reqwest::Client,
    /// Event streams: no overall timeout, only one between reads.
    streaming: reqwest::Client,
    base: Url,
    api_key: Option<String>,
    timeout: Duration,
    long_poll: Duration,
    max_poll_interval: Duration,
}

/// Options of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    base: String,
    api_key: Option<String>,
    timeout: Duration,
    long_poll: Duration,
    max_poll_interval: Duration,
    user_agent: String,
}

impl ClientBuilder {
    /// The API key, sent as `Authorization: Bearer <key>` to the base URL's origin (never to
    /// another host a [`JobHandle::from_url`] names).
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        let key = key.into();
        self.api_key = (!key.is_empty()).then_some(key);
        self
    }

    /// Bound on one request (connect, send, answer), [`DEFAULT_TIMEOUT`] unless set. A
    /// long-poll may take this plus the wait it asked for.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Longest `Prefer: wait=N` one status request of [`JobHandle::wait`] asks for (the server
    /// caps it too). `Duration::ZERO` turns long-polling off: plain polling by `Retry-After`.
    pub fn long_poll(mut self, wait: Duration) -> Self {
        self.long_poll = wait;
        self
    }

    /// Upper bound on the `Retry-After` honoured while polling ([`DEFAULT_MAX_POLL_INTERVAL`]).
    pub fn max_poll_interval(mut self, interval: Duration) -> Self {
        self.max_poll_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// The `User-Agent` header.
    pub fn user_agent(mut self, agent: impl Into<String>) -> Self {
        self.user_agent = agent.into();
        self
    }

    pub fn build(self) -> Result<Client> {
        let mut base = Url::parse(&self.base).map_err(|e| Error::InvalidUrl {
            url: self.base.clone(),
            reason: e.to_string(),
        })?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(Error::InvalidUrl {
                url: self.base,
                reason: "not an http(s) URL".into(),
            });
        }
        // Relative paths resolve below the base's path (a facade behind a path prefix).
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        base.set_query(None);
        base.set_fragment(None);
        install_crypto_provider();
        let http = reqwest::Client::builder()
            .user_agent(self.user_agent.clone())
            .redirect(reqwest::redirect::Policy::none())
            .timeout(self.timeout)
            .connect_timeout(self.timeout)
            .build()?;
        let streaming = reqwest::Client::builder()
            .user_agent(self.user_agent)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(self.timeout)
            .read_timeout(Duration::from_secs(120).max(self.timeout))
            .build()?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                streaming,
                base,
                api_key: self.api_key,
                timeout: self.timeout,
                long_poll: self.long_poll,
                max_poll_interval: self.max_poll_interval,
            }),
        })
    }
}

impl Client {
    /// A client for the service at `base_url` with the default options.
    pub fn new(base_url: &str) -> Result<Client> {
        Client::builder(base_url).build()
    }

    /// Options for a client of the service at `base_url`.
    pub fn builder(base_url: &str) -> ClientBuilder {
        ClientBuilder {
            base: base_url.to_owned(),
            api_key: None,
            timeout: DEFAULT_TIMEOUT,
            long_poll: DEFAULT_LONG_POLL,
            max_poll_interval: DEFAULT_MAX_POLL_INTERVAL,
            user_agent: concat!("arr-client/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }

    /// The service's base URL (always ending in `/`).
    pub fn base_url(&self) -> &Url {
        &self.inner.base
    }

    /// Starts a job submission; send it with `.await` (or [`Submit::send`]).
    ///
    /// ```no_run
    /// # async fn run(client: client::Client) -> client::Result<()> {
    /// let job = client
    ///     .submit("sleep", serde_json::json!({"seconds": 5}))
    ///     .priority(9)
    ///     .await?;
    /// println!("{}", job.status().await?.status);
    /// # Ok(())
    /// # }
    /// ```
    pub fn submit(&self, job_type: impl Into<String>, input: impl Serialize) -> Submit {
        Submit {
            client: self.clone(),
            job_type: job_type.into(),
            input: serde_json::to_value(input),
            priority: None,
            idempotency_key: None,
            callback_url: None,
        }
    }

    /// A handle on the job with this id (its status monitor is `v1/jobs/{id}` below the base).
    pub fn job(&self, id: &str) -> JobHandle {
        let location = self
            .inner
            .base
            .join(&format!("v1/jobs/{id}"))
            .unwrap_or_else(|_| self.inner.base.clone());
        JobHandle::with(self.clone(), id.to_owned(), location)
    }

    /// Starts a listing of the jobs, newest first; send it with `.await` (or [`List::send`]).
    ///
    /// ```no_run
    /// # async fn run(client: client::Client) -> client::Result<()> {
    /// use client::JobState;
    /// let mut page = client.list().status(JobState::Succeeded).limit(50).await?;
    /// loop {
    ///     for job in &page.jobs {
    ///         println!("{} {}", job.id, job.job_type);
    ///     }
    ///     match page.next().await? {
    ///         Some(next) => page = next,
    ///         None => break,
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn list(&self) -> List {
        List {
            client: self.clone(),
            status: None,
            job_type: None,
            limit: None,
            cursor: None,
        }
    }

    /// `GET` a path below the base URL (or an absolute URL) and return its JSON body; error
    /// statuses become [`Error::Http`]. For resources this client has no method for yet.
    pub async fn get_json(&self, path: &str) -> Result<Value> {
        let url = self.resolve(path)?;
        let response = self
            .request(Method::GET, url)
            .header(ACCEPT, "application/json")
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(problem_error(response).await);
        }
        read_json(response).await
    }

    /// Resolves a path (relative to the base) or an absolute URL.
    fn resolve(&self, url: &str) -> Result<Url> {
        let trimmed = url.trim();
        let resolved = if trimmed.starts_with('/') {
            // An absolute path from the server: below the base's path prefix only if it does
            // not already carry it.
            let prefix = self.inner.base.path().trim_end_matches('/');
            if prefix.is_empty() || trimmed.starts_with(&format!("{prefix}/")) {
                self.inner.base.join(trimmed)
            } else {
                self.inner.base.join(trimmed.trim_start_matches('/'))
            }
        } else {
            self.inner.base.join(trimmed)
        };
        resolved.map_err(|e| Error::InvalidUrl {
            url: url.to_owned(),
            reason: e.to_string(),
        })
    }

    /// A request with the API key when `url` is on the base's origin.
    fn request(&self, method: Method, url: Url) -> RequestBuilder {
        let same_origin = url.origin() == self.inner.base.origin();
        let mut builder = self.inner.http.request(method, url);
        if let (true, Some(key)) = (same_origin, &self.inner.api_key) {
            builder = builder.bearer_auth(key);
        }
        builder
    }
}

/// A job submission, sent with `.await` or [`Submit::send`].
#[must_use = "a submission does nothing until it is awaited"]
pub struct Submit {
    client: Client,
    job_type: String,
    input: serde_json::Result<Value>,
    priority: Option<u8>,
    idempotency_key: Option<String>,
    callback_url: Option<String>,
}

impl Submit {
    /// Priority 0-9: among queued jobs, higher ones are delivered first.
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = Some(priority);
        self
    }

    /// `Idempotency-Key`: a repeat with the same key and body gives the first job back.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// A URL the final status document is POSTed to (it must be on the server's allow-list).
    pub fn callback_url(mut self, url: impl Into<String>) -> Self {
        self.callback_url = Some(url.into());
        self
    }

    /// Sends the submission: `Ok` once the service answered `202` (the job is queued).
    pub async fn send(self) -> Result<JobHandle> {
        let input = self.input.map_err(Error::Input)?;
        let mut body = Map::new();
        body.insert("type".into(), Value::String(self.job_type));
        body.insert("input".into(), input);
        if let Some(priority) = self.priority {
            body.insert("priority".into(), priority.into());
        }
        if let Some(url) = self.callback_url {
            body.insert("callback_url".into(), Value::String(url));
        }
        let url = self.client.resolve("v1/jobs")?;
        let mut request = self
            .client
            .request(Method::POST, url.clone())
            .header(ACCEPT, "application/json")
            .json(&body);
        if let Some(key) = &self.idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(problem_error(response).await);
        }
        let location = header_str(response.headers(), LOCATION)
            .ok_or_else(|| Error::InvalidResponse("202 without Location".into()))?;
        let location = url.join(&location).map_err(|e| Error::InvalidUrl {
            url: location.clone(),
            reason: e.to_string(),
        })?;
        let replayed = header_str(response.headers(), "idempotent-replayed")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let doc: StatusDocument = read_json(response).await?;
        let mut handle = JobHandle::with(self.client, doc.id.clone(), location);
        handle.replayed = replayed;
        handle.submitted = Some(doc);
        Ok(handle)
    }
}

impl IntoFuture for Submit {
    type Output = Result<JobHandle>;
    type IntoFuture = BoxFuture<Result<JobHandle>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}

/// A listing request, sent with `.await` or [`List::send`].
#[must_use = "a listing does nothing until it is awaited"]
#[derive(Clone)]
pub struct List {
    client: Client,
    status: Option<JobState>,
    job_type: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

impl List {
    /// Only jobs in this state.
    pub fn status(mut self, status: JobState) -> Self {
        self.status = Some(status);
        self
    }

    /// Only jobs of this type.
    pub fn job_type(mut self, job_type: impl Into<String>) -> Self {
        self.job_type = Some(job_type.into());
        self
    }

    /// Jobs per page (1-100; the server's default is 20).
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Start after this cursor (a page's `next_cursor`).
    pub fn cursor(mut self, cursor: impl Into<String>) -> Self {
        self.cursor = Some(cursor.into());
        self
    }

    pub async fn send(self) -> Result<Page> {
        let mut url = self.client.resolve("v1/jobs")?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(status) = self.status {
                query.append_pair("status", status.as_str());
            }
            if let Some(job_type) = &self.job_type {
                query.append_pair("type", job_type);
            }
            if let Some(limit) = self.limit {
                query.append_pair("limit", &limit.to_string());
            }
            if let Some(cursor) = &self.cursor {
                query.append_pair("cursor", cursor);
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        let response = self
            .client
            .request(Method::GET, url)
            .header(ACCEPT, "application/json")
            .send()
            .await?;
        if response.status() != StatusCode::OK {
            return Err(problem_error(response).await);
        }
        #[derive(Deserialize)]
        struct Body {
            jobs: Vec<StatusDocument>,
            #[serde(default)]
            next_cursor: Option<String>,
        }
        let body: Body = read_json(response).await?;
        Ok(Page {
            jobs: body.jobs,
            next_cursor: body.next_cursor,
            query: self,
        })
    }
}

impl IntoFuture for List {
    type Output = Result<Page>;
    type IntoFuture = BoxFuture<Result<Page>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}

/// One page of a listing.
#[derive(Clone)]
pub struct Page {
    /// Status documents, newest first. A page may hold fewer than `limit` jobs (even none)
    /// and still have a next one.
    pub jobs: Vec<StatusDocument>,
    /// The cursor of the next page; `None` on the last one.
    pub next_cursor: Option<String>,
    query: List,
}

impl std::fmt::Debug for Page {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Page")
            .field("jobs", &self.jobs)
            .field("next_cursor", &self.next_cursor)
            .finish()
    }
}

impl Page {
    /// The next page with the same filters and limit, or `None` after the last one.
    pub async fn next(&self) -> Result<Option<Page>> {
        match &self.next_cursor {
            None => Ok(None),
            Some(cursor) => self
                .query
                .clone()
                .cursor(cursor.clone())
                .send()
                .await
                .map(Some),
        }
    }
}

fn header_str(headers: &HeaderMap, name: impl reqwest::header::AsHeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Reads a JSON body, or says why it is not the expected document.
async fn read_json<T: DeserializeOwned>(response: Response) -> Result<T> {
    let status = response.status();
    let bytes = response.bytes().await?;
    serde_json::from_slice(&bytes).map_err(|e| {
        Error::InvalidResponse(format!(
            "{status}: unexpected body ({e}): {}",
            snippet(&bytes)
        ))
    })
}

fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out: String = text.chars().take(200).collect();
    if text.chars().count() > 200 {
        out.push('…');
    }
    out
}

/// The problem an error answer carries (or one made from its status line).
async fn read_problem(response: Response) -> (u16, Problem) {
    let status = response.status();
    let is_json = header_str(response.headers(), CONTENT_TYPE).is_some_and(|v| v.contains("json"));
    let bytes = response.bytes().await.unwrap_or_default();
    let parsed = if is_json {
        serde_json::from_slice::<Problem>(&bytes).ok()
    } else {
        None
    };
    let problem = parsed.unwrap_or_else(|| Problem {
        title: Some(
            status
                .canonical_reason()
                .unwrap_or("Unexpected status")
                .to_owned(),
        ),
        status: Some(status.as_u16()),
        detail: (!bytes.is_empty()).then(|| snippet(&bytes)),
        ..Problem::default()
    });
    (status.as_u16(), problem)
}

/// [`Error::Http`] for an error answer.
async fn problem_error(response: Response) -> Error {
    let (status, problem) = read_problem(response).await;
    Error::Http {
        status,
        problem: Box::new(problem),
    }
}
