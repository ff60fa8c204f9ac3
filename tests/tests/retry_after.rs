//! `Retry-After` is an estimate: it grows with the backlog in the queue, counts down while a job
//! runs, and falls back to the configured default for a job type without history. Workers keep
//! the history (a moving average of run times per type) in Redis.

use std::time::{Duration, Instant};

use e2e::{Stack, StackOptions};
use reqwest::StatusCode;
use serde_json::json;

fn retry_after(response: &reqwest::Response) -> u64 {
    response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Sets the moving average of `job_type`'s run time, as workers would have.
async fn seed_average(stack: &Stack, job_type: &str, seconds: f64) {
    let mut redis = stack.redis().await;
    redis::cmd("HSET")
        .arg(format!("{}:stats", stack.prefix))
        .arg(job_type)
        .arg(seconds.to_string())
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
}

async fn submit_sleep(stack: &Stack) -> (String, u64) {
    let r = stack
        .submit(&json!({"type": "sleep", "input": {"seconds": 1}}))
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    (location, retry_after(&r))
}

#[tokio::test]
async fn retry_after_grows_with_queue_depth() {
    // No worker: every job stays queued, so the queue only grows.
    let stack = Stack::start_with("ra-depth", StackOptions::default().workers(0)).await;
    seed_average(&stack, "sleep", 2.0).await;

    let (first_location, first) = submit_sleep(&stack).await;
    // One job ahead of nothing: about one run time (2 s, rounded up).
    assert!((2..=3).contains(&first), "first Retry-After {first}");

    // The facade caches queue figures for a second: wait it out between the rounds.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut previous = first;
    for _ in 0..20 {
        let (_, ra) = submit_sleep(&stack).await;
        assert!(ra >= previous, "Retry-After went down: {ra} < {previous}");
        previous = ra;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, last) = submit_sleep(&stack).await;
    // 22 jobs queued, 8 at a time (worker.concurrency, with no consumer counted as one):
    // 22 / 8 × 2 s + 2 s = 7.5 s.
    assert!(last > first, "deep queue: {last} <= {first}");
    assert!((7..=9).contains(&last), "last Retry-After {last}");

    // The status monitor's 202 uses the same estimate.
    let poll = stack
        .http_no_redirect
        .get(stack.url(&first_location))
        .send()
        .await
        .unwrap();
    assert_eq!(poll.status(), StatusCode::ACCEPTED);
    assert!(retry_after(&poll) > first);

    // A type without history gets the configured default (1 s), however deep the queue.
    let echo = stack.submit(&json!({"type": "echo", "input": 1})).await;
    assert_eq!(retry_after(&echo), 1);
}

#[tokio::test]
async fn retry_after_is_clamped_to_the_configured_bounds() {
    let stack = Stack::start_with(
        "ra-clamp",
        StackOptions::default()
            .workers(0)
            .env("APP__RETRY_AFTER__MIN_SECONDS", 2)
            .env("APP__RETRY_AFTER__MAX_SECONDS", 10),
    )
    .await;
    seed_average(&stack, "sleep", 500.0).await;
    seed_average(&stack, "echo", 0.01).await;
    let (_, long) = submit_sleep(&stack).await;
    assert_eq!(long, 10);
    let r = stack.submit(&json!({"type": "echo", "input": 1})).await;
    assert_eq!(retry_after(&r), 2);
}

#[tokio::test]
async fn a_running_job_counts_down_from_its_types_average() {
    let stack = Stack::start("ra-running").await;
    seed_average(&stack, "sleep", 30.0).await;
    let location = stack
        .submit_ok(&json!({"type": "sleep", "input": {"seconds": 3}}))
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = stack
            .http_no_redirect
            .get(stack.url(&location))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::ACCEPTED,
            "finished before it was seen running"
        );
        let ra = retry_after(&r);
        let doc: serde_json::Value = r.json().await.unwrap();
        if doc["status"] == "running" {
            // 30 s on average, minus what it has run already.
            assert!((25..=30).contains(&ra), "running Retry-After {ra}");
            break;
        }
        assert!(Instant::now() < deadline, "never saw the job running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn workers_keep_a_moving_average_of_run_times() {
    let mut stack = Stack::start("ra-history").await;
    for _ in 0..3 {
        let location = stack
            .submit_ok(&json!({"type": "sleep", "input": {"seconds": 0.5}}))
            .await;
        stack.wait(&location, Duration::from_secs(30)).await;
    }
    let mut redis = stack.redis().await;
    let key = format!("{}:stats", stack.prefix);
    let deadline = Instant::now() + Duration::from_secs(10);
    let average = loop {
        let value: Option<String> = redis::cmd("HGET")
            .arg(&key)
            .arg("sleep")
            .query_async(&mut redis)
            .await
            .unwrap();
        if let Some(value) = value {
            break value.parse::<f64>().unwrap();
        }
        assert!(Instant::now() < deadline, "no run time recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!((0.4..2.0).contains(&average), "average {average}");

    // With that history and the worker gone, later jobs queue up behind earlier ones.
    assert!(stack.terminate_worker(0, Duration::from_secs(10)).await);
    let mut previous = 0;
    for _ in 0..12 {
        let (_, ra) = submit_sleep(&stack).await;
        assert!(ra >= previous, "Retry-After went down: {ra} < {previous}");
        previous = ra;
    }
}
