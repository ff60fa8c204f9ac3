//! Webhooks: a job submitted with a `callback_url` has its final status document POSTed there,
//! signed, retried on failure, and the delivery's outcome shows in the status document. The
//! receiver is a tiny HTTP/1.1 server inside the test (`e2e::receiver`).

use std::time::{Duration, Instant};

use e2e::receiver::{Received, Receiver};
use e2e::{job_id, Stack, StackOptions};
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::Sha256;

const SECRET: &str = "test-webhook-secret";
const LONG: Duration = Duration::from_secs(60);

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
    stack.wait_queue_len(&stack.work_queue(), 1).await;
}

#[tokio::test]
async fn a_job_canceled_while_queued_gets_its_callback() {
    let mut receiver = Receiver::start(&[]).await;
    let mut stack = Stack::start_with("webhook-cancel", webhook_stack().workers(0)).await;
    let location = stack
        .submit_ok(&json!({"type": "echo", "input": 1, "callback_url": receiver.url()}))
        .await;
    let id = job_id(&location).to_owned();
    assert_eq!(stack.cancel(&location).await.status(), StatusCode::ACCEPTED);
    // The callback is queued when a worker takes the job's message off the queue.
    stack.add_worker();
    let body = check_request(&receiver.next().await, &id);
    assert_eq!(body["status"], "canceled");
    let doc = settled_callback(&stack, &location).await;
    assert_eq!(doc["callback"]["state"], "delivered", "{doc}");
    assert_eq!(without_callback(doc), body);
}

#[tokio::test]
async fn a_delivery_unfinished_at_shutdown_is_made_by_another_worker() {
    // Every answer takes 4 s: the worker's grace (2 s in the tests) ends while the first
    // attempt waits for it.
    let mut receiver = Receiver::start_with(Duration::from_secs(4), |_, _| 200).await;
    let mut stack = Stack::start_with("webhook-sigterm", webhook_stack()).await;
    let location = stack
        .submit_ok(&json!({"type": "echo", "input": 1, "callback_url": receiver.url()}))
        .await;
    let deadline = Instant::now() + LONG;
    while receiver.received() == 0 {
        assert!(Instant::now() < deadline, "no attempt started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The whole drain fits in one budget: grace (2 s) + closing (3 s) + leaving the fleet
    // registry (2 s) + 0.5 s, well within this bound.
    assert!(stack.terminate_worker(0, Duration::from_secs(15)).await);
    assert_eq!(
        stack.status_doc(&location).await["callback"]["state"],
        "pending"
    );
    // The unfinished delivery went back to the callbacks queue: another worker makes it.
    stack.add_worker();
    let doc = settled_callback(&stack, &location).await;
    assert_eq!(doc["callback"]["state"], "delivered", "{doc}");
    // The attempt the first worker abandoned was not recorded, so this is attempt 1 again.
    assert_eq!(doc["callback"]["attempts"], 1);
    check_request(&receiver.next().await, job_id(&location));
    assert_eq!(receiver.received(), 2);
}

#[tokio::test]
async fn retries_go_through_quorum_delay_queues_too() {
    let mut receiver = Receiver::start(&[503]).await;
    let stack = Stack::start_with(
        "webhook-quorum",
        webhook_stack().env("APP__AMQP__QUEUE_TYPE", "quorum"),
    )
    .await;
    let location = stack
        .submit_ok(&json!({"type": "echo", "input": 1, "callback_url": receiver.url()}))
        .await;
    let id = job_id(&location).to_owned();
    check_request(&receiver.next().await, &id);
    check_request(&receiver.next().await, &id);
    let doc = settled_callback(&stack, &location).await;
    assert_eq!(doc["callback"]["state"], "delivered", "{doc}");
    assert_eq!(doc["callback"]["attempts"], 2);
    // The delay queue of the first back-off is a quorum queue of its own name.
    let delay_queue = format!("{}.callbacks.retry-q.100", stack.queue);
    assert!(stack.queue_exists(&delay_queue).await, "no {delay_queue}");
}

#[tokio::test]
async fn a_deleted_callbacks_queue_is_declared_again_and_the_job_not_run_again() {
    let mut receiver = Receiver::start(&[]).await;
    let stack = Stack::start_with("webhook-noqueue", webhook_stack()).await;
    let callbacks = format!("{}.callbacks", stack.queue);
    stack.wait_queue_len(&callbacks, 0).await;
    // The broker cancels the worker's consumer of it: the worker's session ends and the next
    // one declares the queue again. (A callback published meanwhile is returned unroutable:
    // the job's message goes back to the queue, and its redelivery queues the callback.)
    stack.delete_queue_named(&callbacks).await;
    let location = stack
        .submit_ok(&json!({"type": "echo", "input": 1, "callback_url": receiver.url()}))
        .await;
    let id = job_id(&location).to_owned();
    let body = check_request(&receiver.next().await, &id);
    assert_eq!(body["status"], "succeeded");
    let doc = settled_callback(&stack, &location).await;
    assert_eq!(doc["callback"]["state"], "delivered", "{doc}");
    assert_eq!(doc["attempts"], 1);
    assert_eq!(
        stack.job_field(&id, "starts").await.as_deref(),
        Some("1"),
        "the job ran again"
    );
    assert!(
        stack.queue_exists(&callbacks).await,
        "{callbacks} was not declared again"
    );
}

#[tokio::test]
async fn unreadable_callback_messages_are_dead_lettered_once() {
    let mut receiver = Receiver::start(&[]).await;
    let stack = Stack::start_with("webhook-poison", webhook_stack()).await;
    let callbacks = format!("{}.callbacks", stack.queue);
    // Once the worker has declared it (a raw publish to a missing queue is dropped).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !stack.queue_exists(&callbacks).await {
        assert!(std::time::Instant::now() < deadline, "no callbacks queue");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stack.publish_raw(&callbacks, b"not json").await;
    stack
        .publish_raw(&callbacks, br#"{"v":99,"id":"x","attempt":1}"#)
        .await;
    // Both end in the dead-letter queue and stay there (no loop back).
    let dead = format!("{}.callbacks.dead", stack.queue);
    stack.wait_queue_len(&dead, 2).await;
    assert_eq!(stack.queue_len(&callbacks).await, 0);
    // The worker delivers the next callback as usual.
    let location = stack
        .submit_ok(&json!({"type": "echo", "input": 1, "callback_url": receiver.url()}))
        .await;
    check_request(&receiver.next().await, job_id(&location));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stack.queue_len(&dead).await, 2);
}
