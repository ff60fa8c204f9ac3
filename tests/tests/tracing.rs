//! One trace from the POST to the worker: the W3C `traceparent` travels in the AMQP message
//! headers, and every JSON log line of the job, in the facade and in the worker, carries the
//! same trace id.

use std::time::Duration;

use e2e::Stack;
use serde_json::{json, Value};

fn lines_about(stack: &Stack, label: &str, job_id: &str) -> Vec<Value> {
    std::fs::read_to_string(stack.log_file(label))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(job_id))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The trace id of a log line: a field of the event or of its `job` span.
fn trace_id(line: &Value) -> Option<&str> {
    line.get("trace_id")
        .or_else(|| line.get("span").and_then(|s| s.get("trace_id")))
        .and_then(Value::as_str)
}

#[tokio::test]
async fn the_trace_id_follows_the_job_through_the_queue() {
    let stack = Stack::start("trace").await;
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let response = stack
        .http
        .post(stack.url("/v1/jobs"))
        .header("traceparent", incoming)
        .json(&json!({"type": "sleep", "input": {"seconds": 0.3}}))
        .send()
        .await
        .unwrap();
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    stack.wait(&location, Duration::from_secs(60)).await;
    let job_id = e2e::job_id(&location).to_owned();

    let api = lines_about(&stack, "api", &job_id);
    assert!(!api.is_empty(), "no facade log line names the job");
    assert!(api
        .iter()
        .any(|l| trace_id(l) == Some("4bf92f3577b34da6a3ce929d0e0e4736")));
    // Give the worker's log a moment to be flushed.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let worker = lines_about(&stack, "worker1", &job_id);
    assert!(
        worker.len() >= 2,
        "started and finished lines expected: {worker:?}"
    );
    for line in &worker {
        assert_eq!(
            trace_id(line),
            Some("4bf92f3577b34da6a3ce929d0e0e4736"),
            "{line}"
        );
    }

    // Without a traceparent the facade starts a trace, and the worker continues it.
    let location = stack.submit_ok(&json!({"type": "echo", "input": 1})).await;
    stack.wait(&location, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let job_id = e2e::job_id(&location).to_owned();
    let started = lines_about(&stack, "api", &job_id)
        .iter()
        .find_map(|l| trace_id(l).map(str::to_owned))
        .expect("the facade logged a trace id");
    assert_eq!(started.len(), 32);
    let worker = lines_about(&stack, "worker1", &job_id);
    assert!(!worker.is_empty());
    assert!(worker.iter().all(|l| trace_id(l) == Some(started.as_str())));
}
