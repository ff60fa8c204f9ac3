//! `Idempotency-Key` on `POST /v1/jobs`: a repeated request gets the first job back, also when
//! the repeats race each other; the key with another body is a 409; a failed submit frees the
//! key; a bad key is a 400 problem naming the header.

use e2e::{job_id, Stack, StackOptions};
use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::Value;

const KEY: &str = "Idempotency-Key";

async fn post(stack: &Stack, key: Option<&str>, body: &str) -> reqwest::Response {
    let mut request = stack
        .http
        .post(stack.url("/v1/jobs"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(key) = key {
        request = request.header(KEY, key);
    }
    request.send().await.expect("POST /v1/jobs")
}

fn location(response: &reqwest::Response) -> String {
    response.headers()["location"].to_str().unwrap().to_owned()
}

async fn problem(response: reqwest::Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status.as_u16());
    body
}

/// How many job records the stack has in Redis.
async fn job_records(stack: &Stack) -> usize {
    stack
        .redis_keys()
        .await
        .iter()
        .filter(|k| k.contains(":job:"))
        .count()
}

#[tokio::test]
async fn same_key_and_body_return_the_first_job_another_body_is_409() {
    let stack = Stack::start_with("idem-same", StackOptions::default().workers(0)).await;
    let first = post(
        &stack,
        Some("order-42"),
        r#"{"type":"sleep","input":{"seconds":1}}"#,
    )
    .await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let loc = location(&first);
    assert!(!first.headers().contains_key("idempotent-replayed"));

    // The same request, laid out differently (whitespace, member order): the same job.
    let again = post(
        &stack,
        Some("order-42"),
        "{ \"input\" : { \"seconds\" : 1 },\n  \"type\" : \"sleep\" }",
    )
    .await;
    assert_eq!(again.status(), StatusCode::ACCEPTED);
    assert_eq!(location(&again), loc);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert!(again.headers().contains_key("retry-after"));
    assert!(again.headers().contains_key("etag"));
    let doc: Value = again.json().await.unwrap();
    assert_eq!(doc["id"], job_id(&loc));
    assert_eq!(doc["status"], "queued");

    // The same key with another body: 409, and nothing new is queued.
    let p = problem(
        post(
            &stack,
            Some("order-42"),
            r#"{"type":"sleep","input":{"seconds":2}}"#,
        )
        .await,
        StatusCode::CONFLICT,
    )
    .await;
    assert_eq!(p["type"], "/problems/idempotency-key-reused");

    // Another key (or none) is another job.
    let other = post(
        &stack,
        Some("order-43"),
        r#"{"type":"sleep","input":{"seconds":1}}"#,
    )
    .await;
    assert_eq!(other.status(), StatusCode::ACCEPTED);
    assert_ne!(location(&other), loc);
    stack.wait_queue_len(&stack.work_queue(), 2).await;
    assert_eq!(job_records(&stack).await, 2);

    // The key is stored hashed, never as the header text.
    let keys = stack.redis_keys().await;
    let idem: Vec<_> = keys.iter().filter(|k| k.contains(":idem:")).collect();
    assert_eq!(idem.len(), 2, "{keys:?}");
    assert!(keys.iter().all(|k| !k.contains("order-4")), "{keys:?}");
}

#[tokio::test]
async fn concurrent_requests_with_one_key_create_one_job() {
    let stack = Stack::start_with("idem-race", StackOptions::default().workers(0)).await;
    let body = r#"{"type":"echo","input":{"n":1}}"#;
    let answers = join_all((0..10).map(|_| post(&stack, Some("race-key"), body))).await;
    let mut locations = Vec::new();
    for answer in answers {
        assert_eq!(answer.status(), StatusCode::ACCEPTED);
        locations.push(location(&answer));
    }
    locations.dedup();
    assert_eq!(locations.len(), 1, "{locations:?}");
    assert_eq!(job_records(&stack).await, 1);
    // Give a stray second publish time to show up; there must be exactly one message.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(stack.queue_len(&stack.work_queue()).await, 1);
}

#[tokio::test]
async fn a_failed_submit_releases_the_key() {
    // A broker that cannot be reached: 503, and the key is not left claimed.
    let stack = Stack::start_with(
        "idem-nobroker",
        StackOptions::default().workers(0).unreachable_broker(),
    )
    .await;
    stack.wait_alive().await;
    let body = r#"{"type":"echo","input":1}"#;
    for _ in 0..2 {
        // The second attempt is not a 409 "in progress": the first one let go of the key.
        let p = problem(
            post(&stack, Some("retry-me"), body).await,
            StatusCode::SERVICE_UNAVAILABLE,
        )
        .await;
        assert_eq!(p["type"], "/problems/service-unavailable");
    }
    assert_eq!(stack.redis_keys().await, Vec::<String>::new());

    // An unroutable publish (queue deleted) is a 503 too; the retry with the same key
    // succeeds once the facade has declared the queue again.
    let stack = Stack::start_with("idem-heal", StackOptions::default().workers(0)).await;
    stack.delete_queue().await;
    problem(
        post(&stack, Some("retry-me"), body).await,
        StatusCode::SERVICE_UNAVAILABLE,
    )
    .await;
    let retry = post(&stack, Some("retry-me"), body).await;
    assert_eq!(retry.status(), StatusCode::ACCEPTED);
    assert!(!retry.headers().contains_key("idempotent-replayed"));
    let loc = location(&retry);
    assert_eq!(stack.queue_len(&stack.work_queue()).await, 1);
    let replay = post(&stack, Some("retry-me"), body).await;
    assert_eq!(location(&replay), loc);
}

#[tokio::test]
async fn a_key_whose_job_expired_starts_a_new_job() {
    let stack = Stack::start_with("idem-expired", StackOptions::default().workers(0)).await;
    let body = r#"{"type":"echo","input":"x"}"#;
    let first = location(&post(&stack, Some("old-key"), body).await);
    // The job's record is gone (expired) while the key's record is still there.
    let mut redis = stack.redis().await;
    redis::cmd("DEL")
        .arg(format!(
            "{}:default:job:{{{}}}",
            stack.prefix,
            job_id(&first)
        ))
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
    let second = post(&stack, Some("old-key"), body).await;
    assert_eq!(second.status(), StatusCode::ACCEPTED);
    assert!(!second.headers().contains_key("idempotent-replayed"));
    let second = location(&second);
    assert_ne!(second, first);
    assert_eq!(stack.status_doc(&second).await["status"], "queued");
    // From now on the key names the new job.
    assert_eq!(location(&post(&stack, Some("old-key"), body).await), second);
}

#[tokio::test]
async fn bad_keys_are_400_problems_naming_the_header() {
    let stack = Stack::start_with("idem-bad", StackOptions::default().workers(0)).await;
    let body = r#"{"type":"echo","input":1}"#;
    let long = "k".repeat(256);
    for key in ["", "has space", long.as_str(), "tab\there"] {
        let p = problem(post(&stack, Some(key), body).await, StatusCode::BAD_REQUEST).await;
        assert_eq!(p["type"], "/problems/invalid-header", "{key:?}");
        assert_eq!(p["header"], KEY);
        assert!(p["detail"].as_str().unwrap().contains(KEY), "{p}");
    }
    // Not ASCII.
    let r = stack
        .http
        .post(stack.url("/v1/jobs"))
        .header("content-type", "application/json")
        .header(
            KEY,
            reqwest::header::HeaderValue::from_bytes(b"caf\xe9").unwrap(),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::BAD_REQUEST).await;
    // Given twice.
    let r = stack
        .http
        .post(stack.url("/v1/jobs"))
        .header("content-type", "application/json")
        .header(KEY, "a")
        .header(KEY, "b")
        .body(body)
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::BAD_REQUEST).await;
    assert_eq!(stack.queue_len(&stack.work_queue()).await, 0);
    assert_eq!(stack.redis_keys().await, Vec::<String>::new());

    // The longest key allowed, of every visible character.
    let visible: String = (0x21u8..=0x7e).map(char::from).collect();
    let longest: String = visible.chars().cycle().take(255).collect();
    let r = post(&stack, Some(&longest), body).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
}
