//! When the broker or Redis cannot be reached, or the publish is not routed, a submit is a 503
//! with Retry-After (never a 202, never a hang), and no half-made job is left behind.

use std::time::{Duration, Instant};

use e2e::services::PrivateRedis;
use e2e::{free_port, Stack, StackOptions};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Generous bound: a refusal must come in bounded time, not hang (this is no speed check).
const NO_HANG: Duration = Duration::from_secs(20);

async fn assert_503(response: reqwest::Response) -> Value {
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    response.json().await.unwrap()
}

#[tokio::test]
async fn broker_unreachable_means_503_and_no_record() {
    let stack = Stack::start_with(
        "nobroker",
        StackOptions::default().workers(0).unreachable_broker(),
    )
    .await;
    stack.wait_alive().await;
    let ready = stack.http.get(stack.url("/readyz")).send().await.unwrap();
    let body = assert_503(ready).await;
    assert_eq!(body["checks"]["rabbitmq"]["status"], "down");
    assert_eq!(body["checks"]["redis"]["status"], "up");

    for _ in 0..3 {
        let started = Instant::now();
        let response = stack.submit(&json!({"type": "echo", "input": 1})).await;
        assert!(started.elapsed() < NO_HANG);
        assert_503(response).await;
    }
    assert_eq!(
        stack.redis_keys().await,
        Vec::<String>::new(),
        "record of an unpublished job left behind"
    );
}

#[tokio::test]
async fn redis_unreachable_means_503_and_nothing_published() {
    let dead_redis = format!("redis://127.0.0.1:{}/0", free_port());
    let stack = Stack::start_with(
        "noredis",
        StackOptions::default()
            .workers(0)
            .env("APP__REDIS__URL", dead_redis)
            .env("APP__REDIS__CONNECTION_TIMEOUT_MS", 500)
            .no_wait(),
    )
    .await;
    stack.wait_alive().await;
    let ready = stack.http.get(stack.url("/readyz")).send().await.unwrap();
    let body = assert_503(ready).await;
    assert_eq!(body["checks"]["redis"]["status"], "down");

    let started = Instant::now();
    assert_503(stack.submit(&json!({"type": "echo", "input": 1})).await).await;
    assert!(started.elapsed() < NO_HANG);
    // Polls cannot be answered either: 503, not 404 (the job may well exist).
    let poll = stack
        .http
        .get(stack.url(&format!("/v1/jobs/{}", uuid::Uuid::new_v4())))
        .send()
        .await
        .unwrap();
    assert_503(poll).await;
    // Nothing was published (without Redis the facade knows no type, so it declared no
    // type's queue either).
    assert_eq!(stack.queue_len(&stack.work_queue()).await, 0);
}

#[tokio::test]
async fn an_unroutable_publish_is_a_503_and_the_facade_heals() {
    let stack = Stack::start_with("unroutable", StackOptions::default().workers(0)).await;
    stack.delete_queue().await;
    assert!(stack.queue_info().await.is_none());

    let response = stack
        .submit(&json!({"type": "echo", "input": "lost?"}))
        .await;
    let problem = assert_503(response).await;
    assert!(problem["detail"].is_string());
    assert_eq!(
        stack.redis_keys().await,
        Vec::<String>::new(),
        "orphaned queued record"
    );

    // The facade declares the queue again; the next submit is accepted and really queued.
    let location = stack
        .submit_ok(&json!({"type": "echo", "input": "kept"}))
        .await;
    let (ready, _) = stack.queue_info().await.expect("queue declared again");
    assert_eq!(ready, 1);
    assert_eq!(stack.status_doc(&location).await["status"], "queued");
}

/// A Redis that stops answering without closing its connections (frozen here with SIGSTOP)
/// sends the facade no invalidations, and while every poll is answered from the poll cache no
/// read would fail either. The cache's heartbeat must notice and drop what it kept: polls are
/// then refused (503) instead of answered with documents nobody vouches for any more, and are
/// answered again once Redis is back.
#[tokio::test]
async fn a_redis_that_stops_answering_empties_the_poll_cache() {
    let redis = PrivateRedis::start().await;
    let stack = Stack::start_with(
        "frozenredis",
        StackOptions::default()
            .workers(0)
            .env("APP__REDIS__URL", redis.url())
            .env("APP__REDIS__RESPONSE_TIMEOUT_MS", 500)
            .env("APP__REDIS__CONNECTION_TIMEOUT_MS", 500),
    )
    .await;
    let location = stack.submit_ok(&json!({"type": "echo", "input": 1})).await;
    let first = stack.status_doc(&location).await;
    assert_eq!(first["status"], "queued");
    let hits = stack.poll_cache_count("hit").await;
    assert_eq!(stack.status_doc(&location).await, first);
    assert!(
        stack.poll_cache_count("hit").await > hits,
        "the second poll did not come from the cache"
    );

    redis.freeze();
    // The heartbeat (every second) and its reply timeout (0.5 s here), with room to spare.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let started = Instant::now();
    let poll = stack.http.get(stack.url(&location)).send().await;
    redis.thaw();
    let poll = poll.unwrap();
    assert!(started.elapsed() < NO_HANG);
    assert_503(poll).await;

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let poll = stack.http.get(stack.url(&location)).send().await.unwrap();
        if poll.status() == StatusCode::ACCEPTED {
            assert_eq!(stack.status_doc(&location).await, first);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "polls not answered after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
