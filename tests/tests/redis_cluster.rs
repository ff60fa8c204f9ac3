//! The whole system on a Redis Cluster (three masters, private to the test): jobs of every
//! kind complete, and so do what needs more than one key or pub/sub: idempotency keys, cancel
//! of a running job (the cancel channel), long-polls and event streams (the events channels),
//! listing (the jobs index, in another slot than the jobs) and the worker registry. The poll
//! cache stays off.

use std::time::{Duration, Instant};

use e2e::services::PrivateRedisCluster;
use e2e::{Stack, StackOptions};
use reqwest::StatusCode;
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(60);

async fn wait_status(stack: &Stack, location: &str, status: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while stack.status_doc(location).await["status"] != status {
        assert!(Instant::now() < deadline, "{location} never {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn jobs_cancel_long_polls_and_events_work_on_a_redis_cluster() {
    let cluster = PrivateRedisCluster::start().await;
    let stack = Stack::start_with(
        "redis-cluster",
        StackOptions::default()
            .env("APP__REDIS__CLUSTER_URLS", cluster.urls())
            // Only the harness reads this (to clean up): never the shared Redis.
            .env("APP__REDIS__URL", cluster.nodes[0].url()),
    )
    .await;

    // Plain jobs: a result, a hash, a failure.
    let mut locations = Vec::new();
    let echo = stack
        .submit_ok(&json!({"type": "echo", "input": {"cluster": true}}))
        .await;
    let done = stack.wait(&echo, LONG).await;
    assert_eq!(done.status(), StatusCode::OK);
    assert_eq!(
        done.json::<Value>().await.unwrap(),
        json!({"cluster": true})
    );
    locations.push(echo);
    let hash = stack
        .submit_ok(&json!({"type": "hash", "input": {"bytes": 1000, "seed": 1}}))
        .await;
    assert_eq!(stack.wait(&hash, LONG).await.status(), StatusCode::OK);
    locations.push(hash);
    let fail = stack
        .submit_ok(&json!({"type": "fail", "input": {"message": "on purpose"}}))
        .await;
    assert_eq!(
        stack.wait(&fail, LONG).await.status(),
        StatusCode::FAILED_DEPENDENCY
    );
    locations.push(fail);

    // An idempotency key: the repeat gets the first job.
    let body = json!({"type": "echo", "input": "once"});
    let mut replays = Vec::new();
    for _ in 0..2 {
        let response = stack
            .http
            .post(stack.url("/v1/jobs"))
            .header("Idempotency-Key", "cluster-key-1")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        replays.push((
            response.headers()["location"].to_str().unwrap().to_owned(),
            response.headers().contains_key("idempotent-replayed"),
        ));
    }
    assert_eq!(replays[0].0, replays[1].0, "the repeat made a second job");
    assert!(!replays[0].1 && replays[1].1);
    locations.push(replays[0].0.clone());

    // A long-poll answers when the job finishes (an events channel on the cluster).
    let slow = stack
        .submit_ok(&json!({"type": "sleep", "input": {"seconds": 1.5}}))
        .await;
    wait_status(&stack, &slow, "running", LONG).await;
    let asked = Instant::now();
    let polled = stack
        .http_no_redirect
        .get(stack.url(&slow))
        .header("prefer", "wait=20")
        .send()
        .await
        .unwrap();
    assert_eq!(polled.status(), StatusCode::SEE_OTHER);
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "the long-poll waited for its timeout"
    );
    locations.push(slow);

    // Server-sent events: every change, closed after the last.
    let streamed = stack
        .submit_ok(&json!({"type": "sleep", "input": {"seconds": 1}}))
        .await;
    let events = stack
        .http
        .get(stack.url(&format!("{streamed}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), StatusCode::OK);
    let text = tokio::time::timeout(LONG, events.text())
        .await
        .expect("the event stream never closed")
        .unwrap();
    assert!(text.contains("\"status\":\"running\""), "{text}");
    assert!(text.contains("\"status\":\"succeeded\""), "{text}");
    locations.push(streamed);

    // Cancel a running job: its worker hears it on the cancel channel.
    let long = stack
        .submit_ok(&json!({"type": "sleep", "input": {"seconds": 30}}))
        .await;
    wait_status(&stack, &long, "running", LONG).await;
    let response = stack.http.delete(stack.url(&long)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    wait_status(&stack, &long, "canceled", Duration::from_secs(5)).await;
    locations.push(long);

    // Listing reads the jobs index and the jobs (different slots) in one request.
    let listed: Value = stack.get_json("/v1/jobs?limit=100").await;
    let ids: Vec<&str> = listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    for location in &locations {
        assert!(
            ids.contains(&e2e::job_id(location)),
            "{location} not listed: {ids:?}"
        );
    }

    // The worker registry (a record per worker, read with one MGET across slots).
    let workers: Value = stack.get_json("/v1/workers").await;
    assert_eq!(workers["workers"].as_array().map(Vec::len), Some(1));

    // It really was a cluster: the jobs' keys are spread over more than one node.
    let mut holding = 0;
    for node in &cluster.nodes {
        let client = redis::Client::open(node.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:default:job:*", stack.prefix))
            .query_async(&mut conn)
            .await
            .unwrap();
        holding += usize::from(!keys.is_empty());
    }
    println!("job keys on {holding} of 3 nodes");
    assert!(holding >= 2, "every job landed on one node");

    // The poll cache is off on a cluster (tracking is per node, and a failover moves a slot to
    // a node that never saw the reads): every poll above read the node holding the job.
    assert_eq!(stack.poll_cache_count("hit").await, 0);
    assert_eq!(stack.poll_cache_count("miss").await, 0);
}
