//! Prometheus metrics of the facade (`GET /metrics`) and of a worker (its metrics port).

use std::time::Duration;

use e2e::{free_port, metric_sample as sample, Stack, StackOptions};
use reqwest::StatusCode;
use serde_json::json;

/// The text exposition of the worker listening for metrics on `port`.
async fn worker_metrics(stack: &Stack, port: u16) -> String {
    let response = stack
        .http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .expect("worker metrics");
    response.text().await.expect("a text body")
}

#[tokio::test]
async fn facade_and_worker_expose_prometheus_metrics() {
    let port = free_port();
    let stack = Stack::start_with(
        "metrics",
        StackOptions::default().env("APP__WORKER__METRICS_PORT", port),
    )
    .await;
    let ok = stack.submit_ok(&json!({"type": "echo", "input": 1})).await;
    let failed = stack
        .submit_ok(&json!({"type": "fail", "input": {"message": "no"}}))
        .await;
    stack.wait(&ok, Duration::from_secs(60)).await;
    stack.wait(&failed, Duration::from_secs(60)).await;
    let _ = stack.http.get(stack.url("/nope")).send().await.unwrap();

    let response = stack.http.get(stack.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = response.text().await.unwrap();
    assert_eq!(
        sample(&text, r#"arr_jobs_submitted_total{type="echo"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"arr_http_requests_total{method="POST",route="/v1/jobs",status="202"}"#
        ),
        Some(2.0),
        "{text}"
    );
    // Route labels are patterns, never raw paths.
    assert!(text.contains(r#"route="/v1/jobs/{id}""#), "{text}");
    assert!(text.contains(r#"route="unmatched""#));
    assert!(!text.contains("/v1/jobs/0") && !text.contains("/nope"));
    for family in [
        "arr_http_request_duration_seconds_bucket",
        "arr_publish_confirm_duration_seconds_count",
        "arr_redis_request_duration_seconds_count",
        "arr_queue_messages",
        "arr_queue_consumers",
        "arr_open_waits",
    ] {
        assert!(text.contains(family), "{family} missing");
    }
    assert_eq!(sample(&text, "arr_queue_consumers"), Some(1.0));

    let worker = worker_metrics(&stack, port).await;
    assert_eq!(
        sample(&worker, r#"arr_jobs_succeeded_total{type="echo"}"#),
        Some(1.0),
        "{worker}"
    );
    assert_eq!(
        sample(
            &worker,
            r#"arr_jobs_failed_total{kind="handler-failed",type="fail"}"#
        ),
        Some(1.0),
        "{worker}"
    );
    assert_eq!(
        sample(&worker, r#"arr_jobs_started_total{type="echo"}"#),
        Some(1.0)
    );
    assert_eq!(sample(&worker, "arr_jobs_in_flight"), Some(0.0));
    assert!(worker.contains(r#"arr_job_run_duration_seconds_count{type="echo"} 1"#));
}

/// `worker.concurrency` bounds the handlers a worker runs at once, with the prefetch well
/// above it (a job gives its slot back when its handler returns, before its last write): the
/// worker's in-flight gauge, sampled while a backlog of sleeping jobs drains, reaches the bound
/// and never passes it.
#[tokio::test]
async fn a_worker_runs_at_most_its_concurrency_of_handlers_at_once() {
    let port = free_port();
    let stack = Stack::start_with(
        "concurrency",
        StackOptions::default()
            .env("APP__WORKER__METRICS_PORT", port)
            .env("APP__WORKER__CONCURRENCY", 2)
            .env("APP__AMQP__PREFETCH", 32),
    )
    .await;
    let mut jobs = Vec::new();
    for _ in 0..8 {
        jobs.push(
            stack
                .submit_ok(&json!({"type": "sleep", "input": {"seconds": 0.3}}))
                .await,
        );
    }
    let (mut highest, mut samples) = (0.0f64, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let text = worker_metrics(&stack, port).await;
        let in_flight = sample(&text, "arr_jobs_in_flight").expect("in-flight gauge");
        assert!(
            in_flight <= 2.0,
            "{in_flight} handlers at once with concurrency 2"
        );
        highest = highest.max(in_flight);
        samples += 1;
        let done = sample(&text, r#"arr_jobs_succeeded_total{type="sleep"}"#);
        if done == Some(8.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "jobs not done: {text}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(highest, 2.0, "never two at once in {samples} samples");
    for job in &jobs {
        assert_eq!(stack.status_doc(job).await["status"], "succeeded");
    }
}
