//! Webhooks: a job submitted with a `callback_url` has its final status document POSTed there,
//! signed, retried on failure, and the delivery's outcome shows in the status document. The
//! receiver is a tiny HTTP/1.1 server inside the test.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::{job_id, Stack, StackOptions};
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const SECRET: &str = "test-webhook-secret";
const LONG: Duration = Duration::from_secs(60);

/// One request the receiver got.
#[derive(Debug)]
struct Received {
    request_line: String,
    /// Header names in lower case.
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("webhook body is JSON")
    }
}

/// An HTTP/1.1 receiver on 127.0.0.1 that answers the given statuses in order, then 200.
struct Receiver {
    port: u16,
    requests: mpsc::UnboundedReceiver<Received>,
    count: Arc<AtomicUsize>,
}

impl Receiver {
    async fn start(statuses: &[u16]) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().unwrap().port();
        let (tx, requests) = mpsc::unbounded_channel();
        let count = Arc::new(AtomicUsize::new(0));
        let statuses = statuses.to_vec();
        let counter = count.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let status = statuses.get(n).copied().unwrap_or(200);
                let tx = tx.clone();
                tokio::spawn(async move {
                    let Some(request) = read_request(&mut socket).await else {
                        return;
                    };
                    let _ = tx.send(request);
                    let mut answer = format!(
                        "HTTP/1.1 {status} Whatever\r\ncontent-length: 0\r\nconnection: close\r\n"
                    );
                    if (300..400).contains(&status) {
                        // Following it would land on this receiver again, within one attempt.
                        answer.push_str("location: /redirected\r\n");
                    }
                    answer.push_str("\r\n");
                    let _ = socket.write_all(answer.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        Receiver {
            port,
            requests,
            count,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook?x=1", self.port)
    }

    /// The next request (waits up to a minute).
    async fn next(&mut self) -> Received {
        tokio::time::timeout(LONG, self.requests.recv())
            .await
            .expect("no webhook arrived in time")
            .expect("receiver stopped")
    }

    fn received(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

async fn read_request(socket: &mut tokio::net::TcpStream) -> Option<Received> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next()?.to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Received {
        request_line,
        headers,
        body,
    })
}

/// What a receiver does: HMAC-SHA256 over "<timestamp>.<body>", compared with the header.
fn signature_valid(secret: &str, request: &Received) -> bool {
    let timestamp = request.header("webhook-timestamp");
    let Some(hex_tag) = request.header("webhook-signature").strip_prefix("v1=") else {
        return false;
    };
    let Ok(tag) = hex::decode(hex_tag) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(&request.body);
    mac.verify_slice(&tag).is_ok()
}

fn webhook_stack() -> StackOptions {
    StackOptions::default()
        .env(
            "APP__WEBHOOKS__ALLOWED_HOSTS",
            "127.0.0.1,hooks.example.com",
        )
        .env("APP__WEBHOOKS__SECRET", SECRET)
        .env("APP__WEBHOOKS__MAX_ATTEMPTS", 3)
        .env("APP__WEBHOOKS__BASE_DELAY_MS", 100)
        .env("APP__WEBHOOKS__MAX_DELAY_MS", 400)
        .env("APP__WEBHOOKS__REQUEST_TIMEOUT_MS", 5000)
}

/// Polls the status document until its callback is no longer pending.
async fn settled_callback(stack: &Stack, location: &str) -> Value {
    let deadline = Instant::now() + LONG;
    loop {
        let doc = stack.status_doc(location).await;
        if doc["callback"]["state"] != "pending" {
            return doc;
        }
        assert!(Instant::now() < deadline, "callback still pending: {doc}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn without_callback(mut doc: Value) -> Value {
    doc.as_object_mut().unwrap().remove("callback");
    doc
}

/// Checks what every webhook request must carry; returns its body.
fn check_request(request: &Received, id: &str) -> Value {
    assert!(
        request.request_line.starts_with("POST /hook?x=1 "),
        "{}",
        request.request_line
    );
    assert_eq!(request.header("content-type"), "application/json");
    assert_eq!(request.header("webhook-id"), id);
    let timestamp: i64 = request.header("webhook-timestamp").parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now - timestamp).abs() < 60, "timestamp {timestamp}");
    assert!(
        signature_valid(SECRET, request),
        "bad signature: {request:?}"
    );
    // Sanity: the check does fail with another secret.
    assert!(!signature_valid("not-the-secret", request));
    request.json()
}

#[tokio::test]
async fn succeeded_job_posts_a_signed_final_document() {
    let mut receiver = Receiver::start(&[]).await;
    let stack = Stack::start_with("webhook-ok", webhook_stack()).await;
    let input = json!({"hello": "webhooks"});
    let response = stack
        .submit(&json!({"type": "echo", "input": input, "callback_url": receiver.url()}))
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let queued: Value = response.json().await.unwrap();
    assert_eq!(queued["callback"]["url"], receiver.url());
    assert_eq!(queued["callback"]["state"], "pending");
    assert_eq!(queued["callback"]["attempts"], 0);
    let id = job_id(&location).to_owned();

    let request = receiver.next().await;
    let body = check_request(&request, &id);
    assert_eq!(body["id"], id);
    assert_eq!(body["status"], "succeeded");
    assert!(body.get("callback").is_none(), "{body}");

    let doc = settled_callback(&stack, &location).await;
    assert_eq!(doc["callback"]["state"], "delivered", "{doc}");
    assert_eq!(doc["callback"]["attempts"], 1);
    assert_eq!(doc["callback"]["last_status"], 200);
    assert!(doc["callback"]["delivered_at"].is_string());
    assert!(doc["callback"].get("last_error").is_none());
    // The body is the final status document (without the delivery's own bookkeeping).
    assert_eq!(without_callback(doc), body);
    // The result is unaffected.
    let result = stack.wait(&location, LONG).await;
    assert_eq!(result.json::<Value>().await.unwrap(), input);
    // Exactly one delivery.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received(), 1);
}

#[tokio::test]
async fn failed_attempts_are_retried_and_redirects_not_followed() {
    // 500, then a redirect (which must not be followed: it counts as a failed attempt), then
    // 200.
    let mut receiver = Receiver::start(&[500, 307]).await;
    let stack = Stack::start_with("webhook-retry", webhook_stack()).await;
    let location = stack
        .submit_ok(&json!({"type": "echo", "input": 1, "callback_url": receiver.url()}))
        .await;
    let id = job_id(&location).to_owned();
    let mut bodies = Vec::new();
    for _ in 0..3 {
        let request = receiver.next().await;
        bodies.push(check_request(&request, &id));
    }
    // Every attempt sends the same document.
    assert!(bodies.iter().all(|b| b == &bodies[0]));
    let doc = settled_callback(&stack, &location).await;
    assert_eq!(doc["callback"]["state"], "delivered", "{doc}");
    assert_eq!(doc["callback"]["attempts"], 3);
    assert_eq!(doc["callback"]["last_status"], 200);
    assert_eq!(without_callback(doc), bodies[0]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received(), 3, "a redirect was followed");
}

#[tokio::test]
async fn second_attempt_is_delivered_after_a_500() {
    let mut receiver = Receiver::start(&[500]).await;
    let stack = Stack::start_with("webhook-500", webhook_stack()).await;
    let location = stack
        .submit_ok(&json!({"type": "echo", "input": 1, "callback_url": receiver.url()}))
        .await;
    let id = job_id(&location).to_owned();
    check_request(&receiver.next().await, &id);
    let first = Instant::now();
    check_request(&receiver.next().await, &id);
    // The first back-off is 100 ms (75 ms leaves room for when the request was read).
    assert!(first.elapsed() >= Duration::from_millis(75), "no back-off");
    let doc = settled_callback(&stack, &location).await;
    assert_eq!(doc["callback"]["state"], "delivered", "{doc}");
    assert_eq!(doc["callback"]["attempts"], 2);
    assert_eq!(doc["callback"]["last_status"], 200);
}

#[tokio::test]
async fn a_receiver_that_keeps_failing_gets_max_attempts() {
    let mut receiver = Receiver::start(&[503, 503, 503, 503]).await;
    let stack = Stack::start_with("webhook-gone", webhook_stack()).await;
    let location = stack
        .submit_ok(&json!({"type": "echo", "input": 1, "callback_url": receiver.url()}))
        .await;
    let doc = settled_callback(&stack, &location).await;
    assert_eq!(doc["callback"]["state"], "failed", "{doc}");
    assert_eq!(doc["callback"]["attempts"], 3);
    assert_eq!(doc["callback"]["last_status"], 503);
    assert!(doc["callback"]["last_error"]
        .as_str()
        .unwrap()
        .contains("503"));
    // The job itself is still succeeded.
    assert_eq!(doc["status"], "succeeded");
    for _ in 0..3 {
        receiver.next().await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received(), 3);
}

#[tokio::test]
async fn failed_job_gets_a_callback_too() {
    let mut receiver = Receiver::start(&[]).await;
    let stack = Stack::start_with("webhook-fail", webhook_stack()).await;
    let location = stack
        .submit_ok(&json!({
            "type": "fail",
            "input": {"message": "disk on fire"},
            "callback_url": receiver.url(),
        }))
        .await;
    let id = job_id(&location).to_owned();
    let body = check_request(&receiver.next().await, &id);
    assert_eq!(body["status"], "failed");
    assert_eq!(body["error"]["detail"], "disk on fire");
    let doc = settled_callback(&stack, &location).await;
    assert_eq!(doc["callback"]["state"], "delivered", "{doc}");
    assert_eq!(without_callback(doc), body);
}

#[tokio::test]
async fn callback_urls_outside_the_allow_list_are_refused_and_nothing_is_queued() {
    // No worker: anything published would stay in the queue for us to see.
    let stack = Stack::start_with("webhook-refused", webhook_stack().workers(0)).await;
    for (url, why) in [
        ("http://169.254.169.254/latest/meta-data", "not allowed"),
        ("http://localhost:8080/", "not allowed"),
        ("https://evil.hooks.example.com/", "not allowed"),
        ("http://user:pw@127.0.0.1/", "user information"),
        ("http://user@127.0.0.1/", "user information"),
        ("ftp://127.0.0.1/", "http or https"),
        ("/relative/path", "absolute"),
    ] {
        let response = stack
            .submit(&json!({"type": "echo", "input": 1, "callback_url": url}))
            .await;
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY, "{url}");
        let p: Value = response.json().await.unwrap();
        assert_eq!(p["errors"][0]["field"], "callback_url", "{url}: {p}");
        assert_eq!(p["errors"][0]["pointer"], "#/callback_url");
        let detail = p["errors"][0]["detail"].as_str().unwrap();
        assert!(detail.contains(why), "{url}: {detail}");
    }
    let too_long = format!("http://127.0.0.1/{}", "a".repeat(2048));
    let response = stack
        .submit(&json!({"type": "echo", "callback_url": too_long}))
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let response = stack
        .submit(&json!({"type": "echo", "callback_url": 42}))
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let (ready, _) = stack.queue_info().await.expect("queue exists");
    assert_eq!(ready, 0, "a refused request queued a message");
    let jobs: Vec<String> = stack
        .redis_keys()
        .await
        .into_iter()
        .filter(|k| k.contains(":job:"))
        .collect();
    assert!(jobs.is_empty(), "a refused request left a record: {jobs:?}");

    // An allowed host is accepted (and queued).
    stack
        .submit_ok(&json!({"type": "echo", "callback_url": "https://hooks.example.com/x"}))
        .await;
    stack.wait_queue_len(&stack.queue, 1).await;
}
