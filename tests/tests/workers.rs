//! The worker fleet registry: every worker registers itself in Redis with a heartbeat,
//! `GET /v1/workers` lists the live ones, a killed worker drops out within a few heartbeats
//! and a worker stopped with SIGTERM deregisters at once.

use std::time::{Duration, Instant};

use e2e::{Stack, StackOptions};
use redis::AsyncCommands;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The `workers` array of `GET /v1/workers`.
async fn workers(stack: &Stack) -> Vec<Value> {
    let response = stack
        .http
        .get(stack.url("/v1/workers"))
        .send()
        .await
        .expect("GET /v1/workers");
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("JSON body");
    body["workers"].as_array().expect("workers array").clone()
}

/// Polls the list until `check` holds (or panics after `timeout`); returns that list.
async fn wait_for<F: Fn(&[Value]) -> bool>(
    stack: &Stack,
    timeout: Duration,
    what: &str,
    check: F,
) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let list = workers(stack).await;
        if check(&list) {
            return list;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {timeout:?}; last list: {list:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn sum(list: &[Value], field: &str) -> i64 {
    list.iter().map(|w| w[field].as_i64().unwrap()).sum()
}

#[tokio::test]
async fn workers_register_heartbeat_and_leave() {
    let mut stack = Stack::start_with(
        "workers",
        StackOptions::default()
            .workers(2)
            .env("APP__WORKER__HEARTBEAT_SECONDS", 1)
            .env("APP__WORKER__CONCURRENCY", 1)
            .env("APP__AMQP__PREFETCH", 1),
    )
    .await;

    // Both register, with the right fields, sorted by id.
    let list = wait_for(&stack, Duration::from_secs(10), "two workers", |l| {
        l.len() == 2
    })
    .await;
    let ids: Vec<&str> = list.iter().map(|w| w["id"].as_str().unwrap()).collect();
    assert!(ids[0] < ids[1], "sorted by id: {ids:?}");
    for w in &list {
        assert_eq!(w["concurrency"], json!(1), "{w}");
        assert_eq!(w["queue"], json!(stack.queue), "{w}");
        assert_eq!(w["version"], json!(env!("CARGO_PKG_VERSION")), "{w}");
        assert_eq!(w["state"], json!("running"), "{w}");
        assert_eq!(w["heartbeat_seconds"], json!(1), "{w}");
        assert_eq!(w["in_flight"], json!(0), "{w}");
        assert_eq!(w["jobs_done"], json!(0), "{w}");
        assert!(w["pid"].as_u64().unwrap() > 0, "{w}");
        assert!(!w["host"].as_str().unwrap().is_empty(), "{w}");
        for at in ["started_at", "last_seen"] {
            chrono::DateTime::parse_from_rfc3339(w[at].as_str().unwrap())
                .unwrap_or_else(|e| panic!("{at} of {w}: {e}"));
        }
    }

    // A running sleep job shows as in flight on one worker.
    let sleeping = stack
        .submit_ok(&json!({"type": "sleep", "input": {"seconds": 3}}))
        .await;
    wait_for(&stack, Duration::from_secs(5), "one job in flight", |l| {
        l.len() == 2 && sum(l, "in_flight") == 1 && l.iter().any(|w| w["in_flight"] == json!(1))
    })
    .await;

    // Finished jobs are counted.
    let echo1 = stack.submit_ok(&json!({"type": "echo", "input": 1})).await;
    let echo2 = stack.submit_ok(&json!({"type": "echo", "input": 2})).await;
    for location in [&sleeping, &echo1, &echo2] {
        let response = stack.wait(location, Duration::from_secs(30)).await;
        assert_eq!(response.status(), StatusCode::OK, "{location}");
    }
    wait_for(&stack, Duration::from_secs(5), "three jobs done", |l| {
        l.len() == 2 && sum(l, "jobs_done") == 3 && sum(l, "in_flight") == 0
    })
    .await;

    // A killed worker (no chance to deregister) drops out within a few heartbeats.
    stack.kill_worker(0);
    let killed_at = Instant::now();
    wait_for(&stack, Duration::from_secs(6), "killed worker gone", |l| {
        l.len() == 1
    })
    .await;
    assert!(killed_at.elapsed() <= Duration::from_secs(5));
    // Its stale member was pruned from the registry.
    let mut redis = stack.redis().await;
    let registry = format!("{}:workers", stack.prefix);
    let members: usize = redis.zcard(&registry).await.unwrap();
    assert_eq!(members, 1);

    // The CLI prints the list.
    let output = tokio::process::Command::new(e2e::bin("arr"))
        .args(["--url", &stack.base, "--json", "workers"])
        .env_remove("ARR_URL")
        .env_remove("ARR_API_KEY")
        .output()
        .await
        .expect("run arr workers");
    assert!(output.status.success(), "{output:?}");
    let printed: Value = serde_json::from_slice(&output.stdout).expect("arr prints JSON");
    let listed = printed["workers"].as_array().expect("workers array");
    assert_eq!(listed.len(), 1, "{printed}");
    assert_eq!(listed[0]["queue"], json!(stack.queue));
    let survivor = listed[0]["id"].as_str().unwrap().to_owned();

    // SIGTERM: the worker deregisters before it exits.
    assert!(stack.terminate_worker(1, Duration::from_secs(15)).await);
    assert_eq!(workers(&stack).await, Vec::<Value>::new());
    let members: usize = redis.zcard(&registry).await.unwrap();
    assert_eq!(members, 0);
    let record: Option<String> = redis
        .get(format!("{}:worker:{survivor}", stack.prefix))
        .await
        .unwrap();
    assert_eq!(record, None);
}
