//! A handle on one job: status, cancel, wait, result, events.

use std::time::{Duration, Instant};

use futures_util::Stream;
use reqwest::header::{ACCEPT, LOCATION, RETRY_AFTER};
use reqwest::{Method, Response, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::types::{Problem, ResultBody, StatusDocument};
use crate::{header_str, problem_error, read_json, read_problem, Client, Error, JobState, Result};

/// How often a waiter with a progress callback hears from the server at least.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// Poll no faster than this, whatever `Retry-After` says.
const MIN_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// The poll interval when a pending answer has no (usable) `Retry-After`.
const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// A job on the service: its id and its status monitor's URL.
///
/// Get one from [`Client::submit`], [`Client::job`] (by id) or [`JobHandle::from_url`] (from a
/// status URL, e.g. a signed one).
#[derive(Clone, Debug)]
pub struct JobHandle {
    /// The job id.
    pub id: String,
    /// The status monitor (absolute; its query string, if any, is kept on every request).
    pub location: Url,
    /// Whether the submit was an idempotent replay (`Idempotent-Replayed: true`).
    pub replayed: bool,
    /// The status document the submit was answered with.
    pub submitted: Option<StatusDocument>,
    client: Client,
    send_api_key: bool,
}

/// A job that succeeded: its final status document and its result.
#[derive(Debug, Clone)]
pub struct Finished {
    pub status: StatusDocument,
    /// The result when it is JSON (`Null` when it is not: see `body`).
    pub result: Value,
    /// The result as sent: bytes and media type (any result, JSON or not).
    pub body: ResultBody,
}

impl Finished {
    /// The result as `T`.
    pub fn result<T: DeserializeOwned>(&self) -> Result<T> {
        if !self.body.is_json() {
            return Err(Error::InvalidResponse(format!(
                "the result is {}, not JSON: read `body`",
                self.body.media_type
            )));
        }
        serde_json::from_value(self.result.clone())
            .map_err(|e| Error::InvalidResponse(format!("result is not the expected type: {e}")))
    }
}

/// One answer of the status monitor.
enum Poll {
    Pending {
        doc: StatusDocument,
        retry_after: Option<Duration>,
        long_poll_applied: bool,
    },
    NotModified {
        retry_after: Option<Duration>,
    },
    Succeeded {
        doc: StatusDocument,
        result: Url,
    },
    Failed {
        problem: Problem,
        doc: StatusDocument,
    },
    Canceled {
        doc: StatusDocument,
    },
}

impl JobHandle {
    pub(crate) fn with(client: Client, id: String, location: Url) -> JobHandle {
        JobHandle {
            id,
            location,
            replayed: false,
            submitted: None,
            client,
            send_api_key: true,
        }
    }

    /// A handle on the job whose status monitor is `url`: absolute, or relative to the
    /// client's base URL. The query string is kept (signed URLs), and the API key is sent only
    /// if the URL is on the base URL's origin (see also [`JobHandle::without_api_key`]).
    ///
    /// ```
    /// let client = client::Client::new("http://127.0.0.1:8080").unwrap();
    /// let job = client::JobHandle::from_url(
    ///     &client,
    ///     "/v1/jobs/bd15735b-6480-4b74-b7e6-f955561743cc?expires=1700000000&sig=abc",
    /// )
    /// .unwrap();
    /// assert_eq!(job.id, "bd15735b-6480-4b74-b7e6-f955561743cc");
    /// assert_eq!(
    ///     job.location.as_str(),
    ///     "http://127.0.0.1:8080/v1/jobs/bd15735b-6480-4b74-b7e6-f955561743cc?expires=1700000000&sig=abc"
    /// );
    /// ```
    pub fn from_url(client: &Client, url: &str) -> Result<JobHandle> {
        let location = client.resolve(url)?;
        if !matches!(location.scheme(), "http" | "https") {
            return Err(Error::InvalidUrl {
                url: url.to_owned(),
                reason: "not an http(s) URL".into(),
            });
        }
        let id = location
            .path_segments()
            .and_then(|mut segments| segments.rfind(|s| !s.is_empty()))
            .map(str::to_owned)
            .ok_or_else(|| Error::InvalidUrl {
                url: url.to_owned(),
                reason: "no job id in the path".into(),
            })?;
        Ok(JobHandle::with(client.clone(), id, location))
    }

    /// Never send the client's API key for this job (a signed URL authorizes itself).
    pub fn without_api_key(mut self) -> Self {
        self.send_api_key = false;
        self
    }

    fn request(&self, method: Method, url: Url) -> reqwest::RequestBuilder {
        if self.send_api_key {
            self.client.request(method, url)
        } else {
            self.client.inner.http.request(method, url)
        }
    }

    /// A URL next to the status monitor (`{location}/{leaf}`), with its query string.
    fn sub_url(&self, leaf: &str) -> Url {
        let mut url = self.location.clone();
        let path = format!("{}/{leaf}", url.path().trim_end_matches('/'));
        url.set_path(&path);
        url
    }

    /// The job's current status document, whatever the state: the `202` body while it is
    /// pending, the `303` body once it succeeded, the `job` member of the problem once it
    /// failed or was canceled. Other answers (`404`, `410`, `503`, …) are errors.
    pub async fn status(&self) -> Result<StatusDocument> {
        match self.poll(None, self.client.inner.timeout).await? {
            Poll::Pending { doc, .. }
            | Poll::Succeeded { doc, .. }
            | Poll::Failed { doc, .. }
            | Poll::Canceled { doc } => Ok(doc),
            Poll::NotModified { .. } => Err(Error::InvalidResponse(
                "304 to a request without If-None-Match".into(),
            )),
        }
    }

    /// Cancels the job (`DELETE`): returns the status document the service answered with
    /// (`canceled` if it was queued; still `running` while its worker stops it). A finished
    /// job is an [`Error::Http`] `409`.
    pub async fn cancel(&self) -> Result<StatusDocument> {
        let response = self
            .request(Method::DELETE, self.location.clone())
            .header(ACCEPT, "application/json")
            .send()
            .await?;
        match response.status() {
            StatusCode::OK | StatusCode::ACCEPTED => read_json(response).await,
            _ => Err(problem_error(response).await),
        }
    }

    /// The result of a job that succeeded, as JSON. A failed or canceled job is
    /// [`Error::JobFailed`]/[`Error::JobCanceled`], a pending one [`Error::NotFinished`]; a
    /// result that is not JSON is [`Error::InvalidResponse`] (read it with
    /// [`result_body`](Self::result_body)).
    pub async fn result<T: DeserializeOwned>(&self) -> Result<T> {
        self.result_body().await?.json()
    }

    /// The result of a job that succeeded, as sent: its bytes and media type (a PDF, a PNG,
    /// JSON). Errors as [`result`](Self::result).
    pub async fn result_body(&self) -> Result<ResultBody> {
        match self.poll(None, self.client.inner.timeout).await? {
            Poll::Succeeded { result, .. } => read_body(self.fetch_result(result).await?).await,
            Poll::Pending { doc, .. } => Err(Error::NotFinished {
                status: Box::new(doc),
            }),
            Poll::Failed { problem, doc } => Err(failed(problem, doc)),
            Poll::Canceled { doc } => Err(Error::JobCanceled {
                status: Box::new(doc),
            }),
            Poll::NotModified { .. } => Err(Error::InvalidResponse(
                "304 to a request without If-None-Match".into(),
            )),
        }
    }

    /// Waits until the job ends or `timeout` passes; see [`JobHandle::wait_with`].
    ///
    /// ```no_run
    /// # async fn run(client: client::Client) -> client::Result<()> {
    /// use std::time::Duration;
    /// let job = client.submit("echo", serde_json::json!({"hello": "world"})).await?;
    /// let done = job.wait(Duration::from_secs(30)).await?;
    /// assert_eq!(done.result["hello"], "world");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn wait(&self, timeout: Duration) -> Result<Finished> {
        self.wait_inner(timeout, None).await
    }

    /// Waits until the job ends or `timeout` passes, calling `on_update` with every status
    /// document seen (for progress displays).
    ///
    /// The protocol: each status request asks for a long-poll (`Prefer: wait=N`, at most the
    /// client's [`long_poll`](crate::ClientBuilder::long_poll) and what is left of `timeout`;
    /// at most a second with a callback, so progress shows). If the answer has no
    /// `Preference-Applied`, the server does not long-poll and the client falls back to plain
    /// polling, sleeping what `Retry-After` says (bounded by
    /// [`max_poll_interval`](crate::ClientBuilder::max_poll_interval) and the deadline). A
    /// `503` is retried the same way. The `303` is followed to the result; a failed job is
    /// [`Error::JobFailed`] (the problem and the status document), a canceled one
    /// [`Error::JobCanceled`], and after `timeout` it is [`Error::Timeout`].
    pub async fn wait_with(
        &self,
        timeout: Duration,
        on_update: impl FnMut(&StatusDocument) + Send,
    ) -> Result<Finished> {
        let mut on_update = on_update;
        self.wait_inner(timeout, Some(&mut on_update)).await
    }

    async fn wait_inner(
        &self,
        timeout: Duration,
        mut on_update: Option<&mut (dyn FnMut(&StatusDocument) + Send)>,
    ) -> Result<Finished> {
        let inner = &self.client.inner;
        let started = Instant::now();
        let deadline = started + timeout;
        let mut long_poll = !inner.long_poll.is_zero();
        let mut last: Option<StatusDocument> = None;
        let timed_out = |last: Option<StatusDocument>| Error::Timeout {
            waited: started.elapsed(),
            last: last.map(Box::new),
        };
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(timed_out(last));
            }
            let remaining = deadline - now;
            let mut wait = inner.long_poll.min(remaining);
            if on_update.is_some() {
                wait = wait.min(PROGRESS_INTERVAL);
            }
            // Whole seconds only; below one second, poll plainly.
            let wait_secs = wait.as_secs();
            let prefer = (long_poll && wait_secs > 0).then_some(wait_secs);
            // Bound the request by the deadline too (plus a little, for the answer to come).
            let request_timeout = (inner.timeout + Duration::from_secs(wait_secs))
                .min(remaining + Duration::from_secs(1));
            let asked = Instant::now();
            let poll = match self.poll(prefer, request_timeout).await {
                Ok(poll) => poll,
                Err(Error::Transport(e)) if e.is_timeout() && Instant::now() >= deadline => {
                    return Err(timed_out(last));
                }
                Err(Error::Http { status: 503, .. }) => {
                    // Unavailable for now (the server says when to retry; we poll anyway).
                    sleep_until_bounded(DEFAULT_POLL_INTERVAL, inner.max_poll_interval, deadline)
                        .await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            match poll {
                Poll::Pending {
                    doc,
                    retry_after,
                    long_poll_applied,
                } => {
                    let changed_status = last.as_ref().map(|l| l.status) != Some(doc.status);
                    if last.as_ref() != Some(&doc) {
                        if let Some(f) = on_update.as_mut() {
                            f(&doc);
                        }
                    }
                    last = Some(doc);
                    if prefer.is_some() && !long_poll_applied {
                        // The server ignores `Prefer: wait`: plain polling from now on.
                        long_poll = false;
                    }
                    let answered_at_once = asked.elapsed() < MIN_POLL_INTERVAL;
                    if prefer.is_some()
                        && long_poll_applied
                        && (changed_status || !answered_at_once)
                    {
                        // A long-poll that waited, or answered a change: ask again right away.
                        continue;
                    }
                    let pause = if on_update.is_some() {
                        retry_after
                            .unwrap_or(DEFAULT_POLL_INTERVAL)
                            .min(PROGRESS_INTERVAL * 2)
                    } else {
                        retry_after.unwrap_or(DEFAULT_POLL_INTERVAL)
                    };
                    sleep_until_bounded(pause, inner.max_poll_interval, deadline).await;
                }
                Poll::NotModified { retry_after } => {
                    sleep_until_bounded(
                        retry_after.unwrap_or(DEFAULT_POLL_INTERVAL),
                        inner.max_poll_interval,
                        deadline,
                    )
                    .await;
                }
                Poll::Succeeded { doc, result } => {
                    if let Some(f) = on_update.as_mut() {
                        f(&doc);
                    }
                    let body = read_body(self.fetch_result(result).await?).await?;
                    let result = if body.is_json() {
                        body.json()?
                    } else {
                        Value::Null
                    };
                    return Ok(Finished {
                        status: doc,
                        result,
                        body,
                    });
                }
                Poll::Failed { problem, doc } => {
                    if let Some(f) = on_update.as_mut() {
                        f(&doc);
                    }
                    return Err(failed(problem, doc));
                }
                Poll::Canceled { doc } => {
                    if let Some(f) = on_update.as_mut() {
                        f(&doc);
                    }
                    return Err(Error::JobCanceled {
                        status: Box::new(doc),
                    });
                }
            }
        }
    }

    /// The job's status and progress changes as server-sent events (`GET …/events`): a stream
    /// of status documents that ends after the terminal one. A dropped connection is resumed
    /// with `Last-Event-ID` (a few times in a row at most), so no final state is missed.
    ///
    /// ```no_run
    /// # async fn run(job: client::JobHandle) -> client::Result<()> {
    /// use futures_util::StreamExt;
    /// let mut events = std::pin::pin!(job.events());
    /// while let Some(doc) = events.next().await {
    ///     let doc = doc?;
    ///     println!("{} {:.0}%", doc.status, doc.percent());
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn events(&self) -> impl Stream<Item = Result<StatusDocument>> + Send + 'static {
        let url = self.sub_url("events");
        let mut request = self
            .client
            .inner
            .streaming
            .get(url.clone())
            .header(ACCEPT, "text/event-stream");
        let same_origin = url.origin() == self.client.inner.base.origin();
        if let (true, true, Some(key)) =
            (self.send_api_key, same_origin, &self.client.inner.api_key)
        {
            request = request.bearer_auth(key);
        }
        crate::sse::status_stream(request)
    }

    /// One request to the status monitor, optionally a long-poll.
    async fn poll(&self, prefer_wait: Option<u64>, timeout: Duration) -> Result<Poll> {
        let mut request = self
            .request(Method::GET, self.location.clone())
            .header(ACCEPT, "application/json")
            .timeout(timeout);
        if let Some(wait) = prefer_wait {
            request = request.header("Prefer", format!("wait={wait}"));
        }
        let response = request.send().await?;
        let retry_after = header_str(response.headers(), RETRY_AFTER).and_then(|v| parse_retry(&v));
        match response.status() {
            StatusCode::ACCEPTED => {
                let long_poll_applied = header_str(response.headers(), "preference-applied")
                    .is_some_and(|v| v.to_ascii_lowercase().contains("wait"));
                let doc: StatusDocument = read_json(response).await?;
                Ok(Poll::Pending {
                    doc,
                    retry_after,
                    long_poll_applied,
                })
            }
            StatusCode::NOT_MODIFIED => Ok(Poll::NotModified { retry_after }),
            StatusCode::SEE_OTHER => {
                let location = header_str(response.headers(), LOCATION)
                    .ok_or_else(|| Error::InvalidResponse("303 without Location".into()))?;
                let result = self
                    .location
                    .join(&location)
                    .map_err(|e| Error::InvalidUrl {
                        url: location.clone(),
                        reason: e.to_string(),
                    })?;
                let doc: StatusDocument = read_json(response).await?;
                Ok(Poll::Succeeded { doc, result })
            }
            status if status.is_client_error() => {
                let (code, problem) = read_problem(response).await;
                match problem.job() {
                    Some(doc) if doc.status == JobState::Failed => {
                        Ok(Poll::Failed { problem, doc })
                    }
                    Some(doc) if doc.status == JobState::Canceled => Ok(Poll::Canceled { doc }),
                    _ => Err(Error::Http {
                        status: code,
                        problem: Box::new(problem),
                    }),
                }
            }
            _ => Err(problem_error(response).await),
        }
    }

    /// GETs the result resource the `303` named.
    async fn fetch_result(&self, url: Url) -> Result<Response> {
        let response = self
            .request(Method::GET, url)
            // A result is whatever its job type answers (JSON, a PDF, …); errors are JSON.
            .header(ACCEPT, "application/json, */*;q=0.8")
            .send()
            .await?;
        if response.status() == StatusCode::OK {
            Ok(response)
        } else {
            Err(problem_error(response).await)
        }
    }
}

/// A result answer's bytes and media type.
async fn read_body(response: Response) -> Result<ResultBody> {
    let media_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_owned();
    let bytes = response.bytes().await?;
    Ok(ResultBody { media_type, bytes })
}

fn failed(problem: Problem, doc: StatusDocument) -> Error {
    Error::JobFailed {
        problem: Box::new(problem),
        status: Box::new(doc),
    }
}

/// `Retry-After` in seconds (an HTTP date is not worth a date parser here: `None`).
fn parse_retry(value: &str) -> Option<Duration> {
    let seconds: f64 = value.trim().parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds))
}

/// Sleeps `pause` bounded below by [`MIN_POLL_INTERVAL`], above by `max` and the deadline.
async fn sleep_until_bounded(pause: Duration, max: Duration, deadline: Instant) {
    let pause = pause.clamp(MIN_POLL_INTERVAL, max.max(MIN_POLL_INTERVAL));
    let until = (Instant::now() + pause).min(deadline);
    tokio::time::sleep_until(until.into()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_parses_seconds() {
        assert_eq!(parse_retry("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry(" 0 "), Some(Duration::ZERO));
        assert_eq!(parse_retry("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry("-1"), None);
    }

    #[test]
    fn sub_url_keeps_the_query() {
        let client = Client::new("http://localhost:8080").unwrap();
        let job = JobHandle::from_url(&client, "http://other:1/v1/jobs/abc?sig=x").unwrap();
        assert_eq!(job.id, "abc");
        assert_eq!(
            job.sub_url("events").as_str(),
            "http://other:1/v1/jobs/abc/events?sig=x"
        );
    }
}
