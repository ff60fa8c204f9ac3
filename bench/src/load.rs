//! Load generation: a minimal HTTP/1.1 keep-alive client and a minimal RESP client over tokio
//! `TcpStream`s, driven closed-loop (each connection sends its next request when the last one is
//! answered: the maximum throughput) or open-loop (requests are due on a fixed schedule and
//! their latency is counted from when they were due, not from when they were sent, so a stalled
//! server cannot hide its stall by slowing the client down: no coordinated omission).
//!
//! Both are deliberately tiny, so the same cheap client measures the facade and its baselines
//! on a machine where the client shares the cores with what it measures.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{msg, Result};
use crate::stats::Latencies;

/// Builds request number `i` (the bytes to write).
pub type MakeRequest = Arc<dyn Fn(u64) -> Vec<u8> + Send + Sync>;

/// An HTTP request with `Host` and, for a body, `Content-Type: application/json`.
pub fn http_request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        out.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// A RESP `GET key`.
pub fn redis_get(key: &str) -> Vec<u8> {
    format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len()).into_bytes()
}

/// One answer: the status (HTTP) and, for HTTP, the header block and the body.
#[derive(Debug, Default)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.split("\r\n").skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Http,
    Redis,
}

/// One keep-alive connection.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    proto: Proto,
}

impl Conn {
    pub async fn connect(addr: SocketAddr, proto: Proto) -> Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(4096),
            proto,
        })
    }

    /// Sends `request` and reads its answer.
    pub async fn call(&mut self, request: &[u8]) -> Result<Response> {
        self.stream.write_all(request).await?;
        match self.proto {
            Proto::Http => self.read_http().await,
            Proto::Redis => self.read_resp().await,
        }
    }

    /// Sends `request` without reading the answer (for held long-polls).
    pub async fn send(&mut self, request: &[u8]) -> Result<()> {
        Ok(self.stream.write_all(request).await?)
    }

    async fn fill(&mut self) -> Result<()> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(msg("connection closed by the server"));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    pub async fn read_http(&mut self) -> Result<Response> {
        let head_end = loop {
            if let Some(pos) = find(&self.buf, b"\r\n\r\n") {
                break pos + 4;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| msg("bad status line"))?;
        let mut response = Response {
            status,
            head,
            body: Vec::new(),
        };
        let length: usize = match response.header("content-length") {
            Some(v) => v.parse().map_err(|_| msg("bad content-length"))?,
            None if response.header("transfer-encoding").is_some() => {
                return Err(msg("chunked answers are not supported by the bench client"))
            }
            None => 0,
        };
        while self.buf.len() < head_end + length {
            self.fill().await?;
        }
        response.body = self.buf[head_end..head_end + length].to_vec();
        self.buf.drain(..head_end + length);
        Ok(response)
    }

    /// Reads one RESP bulk string or simple reply (enough for GET/SET).
    async fn read_resp(&mut self) -> Result<Response> {
        let line_end = loop {
            if let Some(pos) = find(&self.buf, b"\r\n") {
                break pos;
            }
            self.fill().await?;
        };
        let kind = self.buf.first().copied().unwrap_or(b'-');
        let mut consumed = line_end + 2;
        let mut status = 200;
        match kind {
            b'$' => {
                let len: i64 = std::str::from_utf8(&self.buf[1..line_end])
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| msg("bad RESP length"))?;
                if len >= 0 {
                    consumed += len as usize + 2;
                    while self.buf.len() < consumed {
                        self.fill().await?;
                    }
                } else {
                    status = 404;
                }
            }
            b'-' => status = 500,
            _ => {}
        }
        self.buf.drain(..consumed);
        Ok(Response {
            status,
            ..Response::default()
        })
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What a load run measured.
#[derive(Debug, Default)]
pub struct LoadResult {
    /// Answers with an expected status.
    pub ok: u64,
    /// Answers with another status, and failed requests.
    pub errors: u64,
    pub elapsed: Duration,
    pub latencies: Latencies,
    /// `Location` headers of the answers, when asked for.
    pub locations: Vec<String>,
    pub first_error: Option<String>,
}

impl LoadResult {
    pub fn per_second(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn merge(&mut self, other: LoadResult) {
        self.ok += other.ok;
        self.errors += other.errors;
        self.latencies.extend(other.latencies);
        self.locations.extend(other.locations);
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// How to drive a load.
#[derive(Clone)]
pub struct Plan {
    pub addr: SocketAddr,
    pub proto: Proto,
    pub connections: usize,
    /// Stop after this long …
    pub duration: Duration,
    /// … or after this many requests, whichever comes first.
    pub max_requests: u64,
    pub make: MakeRequest,
    /// Statuses that count as success.
    pub ok_status: &'static [u16],
    pub collect_locations: bool,
}

/// Closed loop: every connection sends its next request as soon as the last one is answered.
pub async fn closed_loop(plan: Plan) -> Result<LoadResult> {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + plan.duration;
    let mut tasks = Vec::new();
    for _ in 0..plan.connections {
        let plan = plan.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut result = LoadResult::default();
            let mut conn = match Conn::connect(plan.addr, plan.proto).await {
                Ok(c) => c,
                Err(e) => {
                    result.errors += 1;
                    result.first_error = Some(e.to_string());
                    return result;
                }
            };
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= plan.max_requests || Instant::now() >= deadline {
                    break;
                }
                let request = (plan.make)(i);
                let sent = Instant::now();
                match conn.call(&request).await {
                    Ok(response) if plan.ok_status.contains(&response.status) => {
                        result.ok += 1;
                        result.latencies.record(sent.elapsed());
                        if plan.collect_locations {
                            if let Some(location) = response.header("location") {
                                result.locations.push(location.to_owned());
                            }
                        }
                    }
                    Ok(response) => {
                        result.errors += 1;
                        if result.first_error.is_none() {
                            result.first_error = Some(format!(
                                "status {}: {}",
                                response.status,
                                String::from_utf8_lossy(&response.body)
                            ));
                        }
                    }
                    Err(e) => {
                        result.errors += 1;
                        result.first_error.get_or_insert(e.to_string());
                        // The connection may be broken: open another.
                        match Conn::connect(plan.addr, plan.proto).await {
                            Ok(c) => conn = c,
                            Err(_) => break,
                        }
                    }
                }
            }
            result
        }));
    }
    let mut total = LoadResult::default();
    for task in tasks {
        total.merge(task.await.map_err(|e| msg(e.to_string()))?);
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

/// Open loop: request `i` is due at `start + i / rate`; connection `k` sends the requests
/// `k, k + connections, …`. Latency counts from when a request was due.
pub async fn open_loop(plan: Plan, rate: f64) -> Result<LoadResult> {
    let total = ((rate * plan.duration.as_secs_f64()) as u64).min(plan.max_requests);
    let mut conns = Vec::new();
    for _ in 0..plan.connections {
        conns.push(Conn::connect(plan.addr, plan.proto).await?);
    }
    let started = Instant::now() + Duration::from_millis(20);
    let mut tasks = Vec::new();
    for (k, mut conn) in conns.into_iter().enumerate() {
        let plan = plan.clone();
        tasks.push(tokio::spawn(async move {
            let mut result = LoadResult::default();
            let mut i = k as u64;
            while i < total {
                let due = started + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                let request = (plan.make)(i);
                match conn.call(&request).await {
                    Ok(response) if plan.ok_status.contains(&response.status) => {
                        result.ok += 1;
                        result.latencies.record(due.elapsed());
                    }
                    Ok(response) => {
                        result.errors += 1;
                        result
                            .first_error
                            .get_or_insert(format!("status {}", response.status));
                    }
                    Err(e) => {
                        result.errors += 1;
                        result.first_error.get_or_insert(e.to_string());
                        match Conn::connect(plan.addr, plan.proto).await {
                            Ok(c) => conn = c,
                            Err(_) => break,
                        }
                    }
                }
                i += plan.connections as u64;
            }
            result
        }));
    }
    let mut result = LoadResult::default();
    for task in tasks {
        result.merge(task.await.map_err(|e| msg(e.to_string()))?);
    }
    result.elapsed = started.elapsed();
    Ok(result)
}
