//! Several workers on one queue, and a thousand jobs through the whole path.

use std::collections::HashSet;
use std::time::Duration;

use e2e::{job_id, Stack, StackOptions};
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test]
async fn two_workers_share_one_queue() {
    let stack = Stack::start_with(
        "share",
        StackOptions::default()
            .workers(2)
            .env("APP__WORKER__CONCURRENCY", 1)
            .env("APP__AMQP__PREFETCH", 1),
    )
    .await;
    stack.wait_consumers(2).await;
    let mut locations = Vec::new();
    for _ in 0..6 {
        locations.push(
            stack
                .submit_ok(&json!({"type": "sleep", "input": {"seconds": 0.3}}))
                .await,
        );
    }
    let mut workers = HashSet::new();
    for location in &locations {
        let done = stack.wait(location, Duration::from_secs(60)).await;
        assert_eq!(done.status(), StatusCode::OK);
        workers.insert(
            stack
                .job_field(job_id(location), "worker")
                .await
                .expect("worker recorded"),
        );
    }
    assert_eq!(
        workers.len(),
        2,
        "both workers should have run jobs: {workers:?}"
    );
}

#[tokio::test]
async fn a_thousand_echo_jobs_all_succeed_with_the_right_results() {
    const JOBS: usize = 1000;
    let stack = Stack::start_with("thousand", StackOptions::default().workers(2)).await;
    let stack = &stack;
    let locations: Vec<(usize, String)> = futures_util::stream::iter(0..JOBS)
        .map(|i| async move {
            let location = stack
                .submit_ok(&json!({"type": "echo", "input": {"i": i, "tag": format!("job-{i}")}}))
                .await;
            (i, location)
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert_eq!(locations.len(), JOBS);
    let ids: HashSet<&str> = locations.iter().map(|(_, l)| job_id(l)).collect();
    assert_eq!(ids.len(), JOBS, "job ids must be unique");

    let succeeded: usize = futures_util::stream::iter(locations.iter())
        .map(|(i, location)| async move {
            let response = stack.wait(location, Duration::from_secs(120)).await;
            assert_eq!(response.status(), StatusCode::OK, "job {i}");
            let result: Value = response.json().await.unwrap();
            assert_eq!(result, json!({"i": i, "tag": format!("job-{i}")}));
            1
        })
        .buffer_unordered(32)
        .fold(0, |a, b| async move { a + b })
        .await;
    assert_eq!(succeeded, JOBS);
    let (ready, _) = stack.queue_info().await.unwrap();
    assert_eq!(ready, 0, "queue drained");
}
