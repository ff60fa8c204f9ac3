//! Prometheus metrics of the facade (`GET /metrics`) and of a worker (its metrics port).

use std::time::Duration;

use e2e::{free_port, Stack, StackOptions};
use reqwest::StatusCode;
use serde_json::json;

/// The value of the sample `name{labels}` in a text exposition (labels in the order written).
fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
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

    let worker = stack
        .http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
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
