//! Nothing lost: retries with back-off, dead letters, run-time limits, leases and graceful
//! shutdown, against the shared RabbitMQ and Redis (each test with its own queues and keys).

use std::time::{Duration, Instant};

use e2e::{job_id, Stack, StackOptions};
use reqwest::StatusCode;
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(60);

/// Short retry steps so tests wait a fraction of a second per retry.
fn fast_retries() -> StackOptions {
    StackOptions::default()
        .env("APP__AMQP__RETRY_BASE_DELAY_MS", 200)
        .env("APP__AMQP__RETRY_MAX_DELAY_MS", 800)
}

#[tokio::test]
async fn a_transient_failure_is_retried_with_backoff_until_it_succeeds() {
    let stack = Stack::start_with("retry-ok", fast_retries()).await;
    let location = stack
        .submit_ok(&json!({"type": "fail", "input": {"message": "db busy", "kind": "transient", "until_attempt": 3}}))
        .await;
    // While it waits for a retry, the status shows the attempts made and the last error.
    let mut saw_waiting = false;
    let deadline = Instant::now() + LONG;
    loop {
        let doc = stack.status_doc(&location).await;
        if doc["status"] == "succeeded" {
            break;
        }
        if doc["status"] == "queued" && doc["attempts"].as_u64() >= Some(1) {
            assert_eq!(doc["error"]["detail"], "db busy");
            assert_eq!(doc["error"]["retryable"], true);
            assert!(doc["next_attempt_at"].is_string(), "{doc}");
            saw_waiting = true;
        }
        assert!(Instant::now() < deadline, "never succeeded: {doc}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(saw_waiting, "never saw the job waiting for its retry");
    let result: Value = stack.wait(&location, LONG).await.json().await.unwrap();
    assert_eq!(result, json!({"succeeded_on_attempt": 3}));
    let doc = stack.status_doc(&location).await;
    assert_eq!(doc["attempts"], 3);
    assert!(
        doc.get("error").is_none(),
        "a succeeded job shows no error: {doc}"
    );
}

#[tokio::test]
async fn retries_are_bounded_and_the_job_then_fails() {
    let stack = Stack::start_with("retry-exhausted", fast_retries()).await;
    let location = stack
        .submit_ok(
            &json!({"type": "fail", "input": {"message": "still down", "kind": "transient"}}),
        )
        .await;
    let response = stack.wait(&location, LONG).await;
    assert_eq!(response.status(), StatusCode::FAILED_DEPENDENCY);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(
        problem["job"]["attempts"], 3,
        "the fail type allows 3 attempts"
    );
    assert_eq!(problem["job"]["error"]["kind"], "retries-exhausted");
    assert!(problem["detail"].as_str().unwrap().contains("still down"));
    assert_eq!(stack.queue_len(&stack.dead_letter_queue()).await, 0);
}

#[tokio::test]
async fn a_permanent_failure_is_not_retried() {
    let stack = Stack::start_with("no-retry", fast_retries()).await;
    let location = stack
        .submit_ok(&json!({"type": "fail", "input": {"message": "bad data"}}))
        .await;
    let problem: Value = stack.wait(&location, LONG).await.json().await.unwrap();
    assert_eq!(problem["job"]["attempts"], 1);
    assert_eq!(problem["job"]["error"]["kind"], "handler-failed");
}

#[tokio::test]
async fn a_panicking_handler_fails_its_job_is_dead_lettered_and_the_worker_lives_on() {
    let mut stack = Stack::start_with(
        "panic",
        StackOptions::default().env("APP__WORKER__CONCURRENCY", 1),
    )
    .await;
    let location = stack
        .submit_ok(
            &json!({"type": "fail", "input": {"message": "index out of bounds", "kind": "panic"}}),
        )
        .await;
    let response = stack.wait(&location, LONG).await;
    assert_eq!(response.status(), StatusCode::FAILED_DEPENDENCY);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["job"]["error"]["kind"], "crashed");
    assert!(problem["detail"]
        .as_str()
        .unwrap()
        .contains("index out of bounds"));
    stack.wait_queue_len(&stack.dead_letter_queue(), 1).await;
    // The worker is alive and still takes jobs.
    assert!(stack.worker_alive(0));
    let next = stack
        .submit_ok(&json!({"type": "echo", "input": "still here"}))
        .await;
    assert_eq!(
        stack.wait(&next, LONG).await.json::<Value>().await.unwrap(),
        "still here"
    );
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_and_their_jobs_fail() {
    // No worker at first: the job's message waits in the queue while we add poison next to it.
    let mut stack = Stack::start_with("poison", StackOptions::default().workers(0)).await;
    let location = stack.submit_ok(&json!({"type": "echo", "input": 1})).await;
    let id = job_id(&location).to_owned();
    // Garbage, and a message for the job in a format from the future.
    stack
        .publish_raw(&stack.work_queue(), b"\x00\xffnot json at all")
        .await;
    stack
        .publish_raw(
            &stack.work_queue(),
            json!({"v": 99, "id": id, "what": "?"})
                .to_string()
                .as_bytes(),
        )
        .await;
    stack.add_worker();
    stack.wait_queue_len(&stack.dead_letter_queue(), 2).await;
    // The job whose id could be read from the poison message failed with a clear error
    // (its real message, delivered first or after, finds it terminal or fails it first).
    let doc = stack.status_doc(&location).await;
    assert!(
        doc["status"] == "failed" || doc["status"] == "succeeded",
        "{doc}"
    );
    if doc["status"] == "failed" {
        assert_eq!(doc["error"]["kind"], "undeliverable");
        assert!(
            doc["error"]["detail"]
                .as_str()
                .unwrap()
                .contains("could not be read"),
            "{doc}"
        );
    }
    assert!(stack.worker_alive(0));
    let next = stack.submit_ok(&json!({"type": "echo", "input": 2})).await;
    assert_eq!(stack.wait(&next, LONG).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_job_past_its_run_time_limit_fails_with_a_timeout_and_frees_the_slot() {
    let stack = Stack::start_with(
        "timeout",
        StackOptions::default()
            .env("APP__WORKER__CONCURRENCY", 1)
            .env("APP__JOBS__LIMITS__SLEEP__MAX_RUN_SECONDS", 1),
    )
    .await;
    let location = stack
        .submit_ok(&json!({"type": "sleep", "input": {"seconds": 30}}))
        .await;
    let response = stack.wait(&location, LONG).await;
    assert_eq!(response.status(), StatusCode::FAILED_DEPENDENCY);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["job"]["error"]["kind"], "timeout");
    // The only slot is free again.
    let next = stack
        .submit_ok(&json!({"type": "echo", "input": "next"}))
        .await;
    assert_eq!(stack.wait(&next, LONG).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn sigterm_lets_running_jobs_finish_and_requeues_what_cannot() {
    // Grace long enough for short jobs: they finish, the worker exits cleanly.
    let mut stack = Stack::start_with(
        "sigterm",
        StackOptions::default()
            .env("APP__WORKER__CONCURRENCY", 4)
            .env("APP__WORKER__SHUTDOWN_GRACE_SECONDS", 10),
    )
    .await;
    let mut locations = Vec::new();
    for _ in 0..3 {
        locations.push(
            stack
                .submit_ok(&json!({"type": "sleep", "input": {"seconds": 1.5}}))
                .await,
        );
    }
    for l in &locations {
        while stack.status_doc(l).await["status"] != "running" {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(
        stack.terminate_worker(0, Duration::from_secs(20)).await,
        "clean exit"
    );
    for l in &locations {
        let doc = stack.status_doc(l).await;
        assert_eq!(doc["status"], "succeeded", "{doc}");
        assert_eq!(doc["attempts"], 1);
    }

    // Grace shorter than the job: it goes back to the queue, not failed, and the next
    // worker finishes it.
    let mut stack = Stack::start_with(
        "sigterm-short",
        StackOptions::default().env("APP__WORKER__SHUTDOWN_GRACE_SECONDS", 1),
    )
    .await;
    let location = stack
        .submit_ok(&json!({"type": "sleep", "input": {"seconds": 3}}))
        .await;
    while stack.status_doc(&location).await["status"] != "running" {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(stack.terminate_worker(0, Duration::from_secs(20)).await);
    let doc = stack.status_doc(&location).await;
    assert_eq!(
        doc["status"], "running",
        "not failed by the shutdown: {doc}"
    );
    stack.wait_queue_len(&stack.work_queue(), 1).await;
    stack.add_worker();
    let done = stack.wait(&location, LONG).await;
    assert_eq!(done.status(), StatusCode::OK);
    assert_eq!(stack.status_doc(&location).await["attempts"], 2);
}

#[tokio::test]
async fn a_leased_job_whose_worker_dies_is_put_back_and_run_again() {
    // A consumer timeout this short makes every job run under a lease (acked early).
    let leased = StackOptions::default()
        .env("APP__AMQP__CONSUMER_TIMEOUT_SECONDS", 2)
        .env("APP__WORKER__LEASE_SECONDS", 3);
    let mut stack = Stack::start_with("lease", leased).await;

    // A leased job runs once and leaves no lease behind.
    let quick = stack
        .submit_ok(&json!({"type": "sleep", "input": {"seconds": 0.2}}))
        .await;
    assert_eq!(stack.wait(&quick, LONG).await.status(), StatusCode::OK);
    assert_eq!(stack.status_doc(&quick).await["attempts"], 1);

    let location = stack
        .submit_ok(&json!({"type": "sleep", "input": {"seconds": 2}}))
        .await;
    while stack.status_doc(&location).await["status"] != "running" {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Acked early: nothing waits in the queue for a redelivery.
    stack.wait_queue_len(&stack.work_queue(), 0).await;
    stack.kill_worker(0);
    stack.add_worker();
    let done = stack.wait(&location, LONG).await;
    assert_eq!(done.status(), StatusCode::OK);
    let doc = stack.status_doc(&location).await;
    assert_eq!(
        doc["attempts"], 2,
        "run again after the lease lapsed: {doc}"
    );
    let mut conn = stack.redis().await;
    let leases: u64 = redis::cmd("ZCARD")
        .arg(format!("{}:leases", stack.prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(leases, 0, "no lease left behind");
}

#[tokio::test]
async fn an_operator_lists_and_replays_dead_letters() {
    let stack = Stack::start("replay").await;
    // Panics on its first attempt only: dead-lettered, then fine when replayed.
    let location = stack
        .submit_ok(&json!({"type": "fail", "input": {"message": "boom", "kind": "panic", "until_attempt": 2}}))
        .await;
    assert_eq!(
        stack.wait(&location, LONG).await.status(),
        StatusCode::FAILED_DEPENDENCY
    );
    let dead = stack.dead_letter_queue();
    stack.wait_queue_len(&dead, 1).await;

    let (ok, out) = stack.worker_command(&["dead-letters", "list"]);
    assert!(ok, "list failed: {out}");
    let letters: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(letters.len(), 1, "{out}");
    assert_eq!(letters[0]["job_id"], job_id(&location));
    assert_eq!(letters[0]["job_status"], "failed");
    assert_eq!(letters[0]["reason"], "rejected");
    // Listing removes nothing.
    stack.wait_queue_len(&dead, 1).await;

    let (ok, out) = stack.worker_command(&["dead-letters", "replay"]);
    assert!(ok, "replay failed: {out}");
    let report: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["replayed"], json!([job_id(&location)]));
    let result: Value = stack.wait(&location, LONG).await.json().await.unwrap();
    assert_eq!(result, json!({"succeeded_on_attempt": 2}));
    assert_eq!(stack.queue_len(&dead).await, 0);
}

#[tokio::test]
async fn the_facade_drains_in_flight_requests_on_sigterm() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut stack = Stack::start("drain").await;
    let body = json!({"type": "echo", "input": "drained"}).to_string();
    let (head, tail) = body.split_at(body.len() / 2);
    let address = stack.base.trim_start_matches("http://").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
    let request = format!(
        "POST /v1/jobs HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{head}",
        body.len()
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    // The request is in flight (half its body sent) when the facade is told to stop.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stack.terminate_api();
    tokio::time::sleep(Duration::from_millis(300)).await;
    socket.write_all(tail.as_bytes()).await.unwrap();
    let mut response = String::new();
    socket.read_to_string(&mut response).await.unwrap();
    assert!(
        response.starts_with("HTTP/1.1 202"),
        "in-flight request not drained: {response}"
    );
    // And the facade then exits by itself, cleanly.
    let deadline = Instant::now() + Duration::from_secs(10);
    let api = stack.terminate_api_wait();
    loop {
        if let Some(status) = api.try_wait().unwrap() {
            assert!(status.success(), "facade exit status {status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "facade did not exit after draining"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn quorum_queues_work_end_to_end() {
    let stack = Stack::start_with(
        "quorum",
        fast_retries().env("APP__AMQP__QUEUE_TYPE", "quorum"),
    )
    .await;
    let echo = stack
        .submit_ok(&json!({"type": "echo", "input": [1, 2]}))
        .await;
    let retried = stack
        .submit_ok(&json!({"type": "fail", "input": {"message": "flaky", "kind": "transient", "until_attempt": 2}}))
        .await;
    let panics = stack
        .submit_ok(&json!({"type": "fail", "input": {"message": "boom", "kind": "panic"}}))
        .await;
    assert_eq!(
        stack.wait(&echo, LONG).await.json::<Value>().await.unwrap(),
        json!([1, 2])
    );
    assert_eq!(
        stack
            .wait(&retried, LONG)
            .await
            .json::<Value>()
            .await
            .unwrap(),
        json!({"succeeded_on_attempt": 2})
    );
    assert_eq!(
        stack.wait(&panics, LONG).await.status(),
        StatusCode::FAILED_DEPENDENCY
    );
    stack.wait_queue_len(&stack.dead_letter_queue(), 1).await;
}

/// Acks are batched (one `multiple` ack for the finished run at the head of the window), but a
/// job finished behind a long one still running is acknowledged on its own: with a window of
/// two deliveries, ten short jobs pass while a long one runs. Held back behind the long job,
/// their acks would fill the window after the first and the rest would wait for the long job.
#[tokio::test]
async fn short_jobs_behind_a_long_one_are_acknowledged_at_once() {
    let mut stack = Stack::start_with(
        "acks",
        StackOptions::default()
            .env("APP__WORKER__CONCURRENCY", 2)
            .env("APP__AMQP__PREFETCH", 2)
            // Short enough that the long job keeps its delivery (no lease, no early ack).
            .env("APP__JOBS__LIMITS__SLEEP__MAX_RUN_SECONDS", 30),
    )
    .await;
    let long = stack
        .submit_ok(&json!({"type": "sleep", "input": {"seconds": 6}}))
        .await;
    let deadline = Instant::now() + LONG;
    while stack.status_doc(&long).await["status"] != "running" {
        assert!(Instant::now() < deadline, "the long job never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut short = Vec::new();
    for i in 0..10 {
        short.push(stack.submit_ok(&json!({"type": "echo", "input": i})).await);
    }
    for location in &short {
        let response = stack.wait(location, LONG).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(
        stack.status_doc(&long).await["status"],
        "running",
        "the short jobs waited for the long one"
    );

    assert_eq!(stack.wait(&long, LONG).await.status(), StatusCode::OK);
    // Every delivery was acknowledged (not just finished): a worker killed now leaves nothing
    // unacknowledged for the broker to put back on the queue.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stack.kill_worker(0);
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            stack.queue_len(&stack.work_queue()).await,
            0,
            "a delivery went back to the queue: it was never acknowledged"
        );
    }
    // And no job was delivered twice.
    for location in short.iter().chain([&long]) {
        assert_eq!(
            stack.job_field(job_id(location), "starts").await.as_deref(),
            Some("1"),
            "{location} ran more than once"
        );
    }
}
