//! Broker failover: `amqp.url` lists several nodes and both the facade and the workers use the
//! next one when a node is down, at start and when the node they were on dies; and a real
//! three-node cluster with quorum queues loses the node everybody was on without losing a job.

use std::time::{Duration, Instant};

use e2e::services::PrivateRabbit;
use e2e::{free_port, Stack, StackOptions, AMQP_URL};
use reqwest::StatusCode;
use serde_json::json;

fn dead_url() -> String {
    format!("amqp://guest:guest@127.0.0.1:{}/%2f", free_port())
}

/// Submits until the facade answers 202 (it may answer 503 while it finds the next node);
/// returns the status location.
async fn submit_until_accepted(stack: &Stack, body: &serde_json::Value) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = stack.submit(body).await;
        if response.status() == StatusCode::ACCEPTED {
            return response.headers()["location"].to_str().unwrap().to_owned();
        }
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            Instant::now() < deadline,
            "the facade never moved to a live node"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_dead_first_node_is_skipped_by_facade_and_worker() {
    let urls = format!("{},{AMQP_URL}", dead_url());
    let stack = Stack::start_with(
        "failover-dead-first",
        StackOptions::default().env("APP__AMQP__URL", &urls),
    )
    .await;
    // The worker consumes from the live node (a worker stuck on the dead one never would).
    stack.wait_consumers(1).await;
    let location = stack
        .submit_ok(&json!({"type": "echo", "input": {"n": 1}}))
        .await;
    let done = stack.wait(&location, Duration::from_secs(30)).await;
    assert_eq!(done.status(), StatusCode::OK);
    assert_eq!(
        done.json::<serde_json::Value>().await.unwrap(),
        json!({"n": 1})
    );
    for label in ["api", "worker1"] {
        let log = std::fs::read_to_string(stack.log_file(label)).unwrap();
        assert!(
            log.contains("broker node unreachable; trying the next"),
            "{label} did not report skipping the dead node"
        );
    }
}

#[tokio::test]
async fn killing_the_node_in_use_moves_facade_and_worker_to_the_next() {
    let (mut first, second) = tokio::join!(PrivateRabbit::start(), PrivateRabbit::start());
    let urls = format!("{},{}", first.url(), second.url());
    let stack = Stack::start_with(
        "failover-kill",
        StackOptions::default()
            .env("APP__AMQP__URL", &urls)
            .env("APP__AMQP__CONNECT_TIMEOUT_MS", 2000),
    )
    .await;
    let before = stack
        .submit_ok(&json!({"type": "echo", "input": "before"}))
        .await;
    assert_eq!(
        stack.wait(&before, Duration::from_secs(30)).await.status(),
        StatusCode::OK
    );
    // Both were on the first node: the queue and its consumer live there.
    assert_eq!(
        e2e::queue_info(&first.url(), &stack.work_queue())
            .await
            .map(|(_, c)| c),
        Some(1)
    );

    first.kill9();
    let started = Instant::now();
    let after = submit_until_accepted(&stack, &json!({"type": "echo", "input": "after"})).await;
    let done = stack.wait(&after, Duration::from_secs(60)).await;
    assert_eq!(done.status(), StatusCode::OK);
    assert_eq!(
        done.json::<serde_json::Value>().await.unwrap(),
        json!("after")
    );
    println!(
        "failover: job submitted and done {:.1} s after the node was killed",
        started.elapsed().as_secs_f64()
    );
    // The worker consumes from the second node now.
    assert_eq!(
        e2e::queue_info(&second.url(), &stack.work_queue())
            .await
            .map(|(_, c)| c),
        Some(1)
    );
}

#[tokio::test]
async fn a_three_node_cluster_with_quorum_queues_loses_a_node_and_no_job() {
    let (first, second, third) = tokio::join!(
        PrivateRabbit::start(),
        PrivateRabbit::start(),
        PrivateRabbit::start()
    );
    second.join(&first).await;
    third.join(&first).await;
    let urls = format!("{},{},{}", first.url(), second.url(), third.url());
    let mut stack = Stack::start_with(
        "failover-quorum",
        StackOptions::default()
            .workers(0)
            .env("APP__AMQP__URL", &urls)
            .env("APP__AMQP__QUEUE_TYPE", "quorum")
            .env("APP__AMQP__CONNECT_TIMEOUT_MS", 2000)
            .env("APP__AMQP__RETRY_BASE_DELAY_MS", 200)
            .env("APP__AMQP__RETRY_MAX_DELAY_MS", 400),
    )
    .await;
    // Jobs waiting in the (replicated) queue while no worker runs.
    let mut waiting = Vec::new();
    for i in 0..5 {
        waiting.push(stack.submit_ok(&json!({"type": "echo", "input": i})).await);
    }

    // Kill the node that leads the work queue (the facade is on the first node; when the
    // leader is elsewhere the facade keeps its connection and only the queue fails over).
    let queues = first
        .ctl_run(&["list_queues", "name", "leader"])
        .await
        .expect("list_queues");
    let leader = queues
        .lines()
        .find_map(|l| {
            let (name, leader) = l.split_once('\t')?;
            (name == stack.work_queue()).then(|| leader.trim().to_owned())
        })
        .expect("the work queue's leader");
    let mut nodes = [first, second, third];
    let victim = nodes
        .iter()
        .position(|n| n.node() == leader)
        .expect("the leader is one of the nodes");
    println!("killing node {victim} (leader of the work queue; the facade is on node 0)");
    nodes[victim].kill9();
    let started = Instant::now();
    // A submit after the loss: the facade sets up its connection (and the topology) on the
    // next node. The job fails once and goes through a delay queue before it succeeds.
    let retried = submit_until_accepted(
        &stack,
        &json!({"type": "fail", "input": {"message": "flaky", "kind": "transient", "until_attempt": 2}}),
    )
    .await;
    // A worker that starts now skips the dead node.
    stack.add_worker();
    for (i, location) in waiting.iter().enumerate() {
        let done = stack.wait(location, Duration::from_secs(60)).await;
        assert_eq!(
            done.status(),
            StatusCode::OK,
            "job {i} queued before the loss"
        );
        assert_eq!(done.json::<serde_json::Value>().await.unwrap(), json!(i));
    }
    let done = stack.wait(&retried, Duration::from_secs(60)).await;
    assert_eq!(done.status(), StatusCode::OK);
    assert_eq!(
        done.json::<serde_json::Value>().await.unwrap(),
        json!({"succeeded_on_attempt": 2})
    );
    println!(
        "quorum cluster: 5 queued jobs kept and a retried job done {:.1} s after the node was killed",
        started.elapsed().as_secs_f64()
    );
}
