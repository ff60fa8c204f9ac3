//! Beyond plain polling: cancel, long-poll (`Prefer: wait`), server-sent events and priority.

use std::time::{Duration, Instant};

use e2e::{job_id, Stack, StackOptions};
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(60);

async fn wait_running(stack: &Stack, location: &str) {
    let deadline = Instant::now() + LONG;
    while stack.status_doc(location).await["status"] != "running" {
        assert!(Instant::now() < deadline, "never running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn cancel_a_queued_job_and_it_never_starts() {
    let mut stack = Stack::start_with("cancel-queued", StackOptions::default().workers(0)).await;
    let location = stack.submit_ok(&json!({"type": "echo", "input": 1})).await;
    let response = stack
        .http
        .delete(stack.url(&location))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let doc: Value = response.json().await.unwrap();
    assert_eq!(doc["status"], "canceled");
    // Again: 200, it is canceled already.
    let again = stack
        .http
        .delete(stack.url(&location))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    // The status monitor answers 409 with the document.
    let monitor = stack.http.get(stack.url(&location)).send().await.unwrap();
    assert_eq!(monitor.status(), StatusCode::CONFLICT);
    assert_eq!(
        monitor.json::<Value>().await.unwrap()["job"]["status"],
        "canceled"
    );
    // A worker that now receives its message does not run it.
    stack.add_worker();
    stack.wait_queue_len(&stack.work_queue(), 0).await;
    let other = stack.submit_ok(&json!({"type": "echo", "input": 2})).await;
    assert_eq!(stack.wait(&other, LONG).await.status(), StatusCode::OK);
    assert_eq!(stack.status_doc(&location).await["status"], "canceled");
    assert_eq!(
        stack.job_field(job_id(&location), "starts").await,
        None,
        "it never started"
    );
}

#[tokio::test]
async fn cancel_a_running_job_within_a_second() {
    let stack = Stack::start("cancel-running").await;
    for input in [
        json!({"type": "sleep", "input": {"seconds": 30}}),
        json!({"type": "hash", "input": {"bytes": 1_000_000_000u64, "seed": 1}}),
    ] {
        let location = stack.submit_ok(&input).await;
        wait_running(&stack, &location).await;
        let asked = Instant::now();
        let response = stack
            .http
            .delete(stack.url(&location))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        loop {
            if stack.status_doc(&location).await["status"] == "canceled" {
                break;
            }
            assert!(
                asked.elapsed() < Duration::from_secs(5),
                "{input}: not canceled in time"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = asked.elapsed();
        println!(
            "{}: canceled {} ms after the request",
            input["type"],
            took.as_millis()
        );
        assert!(
            took < Duration::from_secs(1),
            "{input}: canceled after {took:?}"
        );
        let monitor = stack.http.get(stack.url(&location)).send().await.unwrap();
        assert_eq!(monitor.status(), StatusCode::CONFLICT);
    }
}

#[tokio::test]
async fn cancel_a_finished_job_is_a_409_and_unknown_is_404() {
    let stack = Stack::start("cancel-done").await;
    let location = stack.submit_ok(&json!({"type": "echo", "input": 1})).await;
    stack.wait(&location, LONG).await;
    let response = stack
        .http
        .delete(stack.url(&location))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    assert_eq!(
        response.json::<Value>().await.unwrap()["job"]["status"],
        "succeeded"
    );
    let unknown = format!("/v1/jobs/{}", uuid::Uuid::new_v4());
    assert_eq!(
        stack
            .http
            .delete(stack.url(&unknown))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        stack
            .http
            .delete(stack.url("/v1/jobs/nope"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_long_poll_answers_within_100_ms_of_the_job_finishing() {
    let stack = Stack::start("long-poll").await;
    let location = stack
        .submit_ok(&json!({"type": "sleep", "input": {"seconds": 1.5}}))
        .await;
    wait_running(&stack, &location).await;
    let asked = Instant::now();
    let response = stack
        .http_no_redirect
        .get(stack.url(&location))
        .header("prefer", "wait=20")
        .send()
        .await
        .unwrap();
    let answered = Instant::now();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()["preference-applied"], "wait=20");
    let doc: Value = response.json().await.unwrap();
    let finished: chrono::DateTime<chrono::Utc> =
        doc["finished_at"].as_str().unwrap().parse().unwrap();
    let lag = (chrono::Utc::now() - finished).to_std().unwrap_or_default() - answered.elapsed();
    println!(
        "long-poll answered {} ms after the job finished (waited {} ms)",
        lag.as_millis(),
        (answered - asked).as_millis()
    );
    assert!(
        lag < Duration::from_millis(100),
        "answered {lag:?} after the job finished"
    );

    // A terminal job answers at once; the wait is capped and times out with the same state.
    let started = Instant::now();
    let done = stack
        .http_no_redirect
        .get(stack.url(&location))
        .header("prefer", "wait=30")
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_long_poll_times_out_with_the_unchanged_status() {
    let stack = Stack::start_with("long-poll-timeout", StackOptions::default().workers(0)).await;
    let location = stack.submit_ok(&json!({"type": "echo", "input": 1})).await;
    let started = Instant::now();
    let response = stack
        .http
        .get(stack.url(&location))
        .header("prefer", "wait=1")
        .send()
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "did not wait"
    );
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(response.headers()["preference-applied"], "wait=1");
    assert_eq!(response.json::<Value>().await.unwrap()["status"], "queued");
}

#[tokio::test]
async fn post_with_prefer_wait_returns_the_outcome() {
    let stack = Stack::start("post-wait").await;
    let response = stack
        .http
        .post(stack.url("/v1/jobs"))
        .header("prefer", "wait=10")
        .json(&json!({"type": "echo", "input": {"fast": true}}))
        .send()
        .await
        .unwrap();
    // Followed the 303 to the result.
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"fast": true})
    );

    let failed = stack
        .http
        .post(stack.url("/v1/jobs"))
        .header("prefer", "wait=10")
        .json(&json!({"type": "fail", "input": {"message": "no"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), StatusCode::FAILED_DEPENDENCY);
    assert_eq!(failed.headers()["preference-applied"], "wait=10");

    // Longer than the wait: the normal 202.
    let slow = stack
        .http
        .post(stack.url("/v1/jobs"))
        .header("prefer", "respond-async, wait=1")
        .json(&json!({"type": "sleep", "input": {"seconds": 5}}))
        .send()
        .await
        .unwrap();
    assert_eq!(slow.status(), StatusCode::ACCEPTED);
    assert_eq!(slow.headers()["preference-applied"], "wait=1");
}

#[tokio::test]
async fn thousands_of_long_polls_are_cheap() {
    let stack = Stack::start_with("many-polls", StackOptions::default().workers(0)).await;
    let location = stack
        .submit_ok(&json!({"type": "echo", "input": "many"}))
        .await;
    let stack = &stack;
    let location = &location;
    let started = Instant::now();
    let answers: Vec<StatusCode> = futures_util::stream::iter(0..2000)
        .map(|_| async move {
            stack
                .http
                .get(stack.url(location))
                .header("prefer", "wait=3")
                .send()
                .await
                .unwrap()
                .status()
        })
        .buffer_unordered(2000)
        .collect()
        .await;
    assert!(answers.iter().all(|s| *s == StatusCode::ACCEPTED));
    println!(
        "2000 concurrent long-polls answered in {} ms",
        started.elapsed().as_millis()
    );
}

#[tokio::test]
async fn server_sent_events_stream_every_change_and_close_after_the_last() {
    let stack = Stack::start("sse").await;
    let location = stack
        .submit_ok(&json!({"type": "sleep", "input": {"seconds": 1}}))
        .await;
    let response = stack
        .http
        .get(stack.url(&format!("{location}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let body = tokio::time::timeout(LONG, response.text())
        .await
        .expect("stream closed")
        .unwrap();
    let events: Vec<(String, String, Value)> = body
        .split("\n\n")
        .filter(|e| e.contains("data: "))
        .map(|e| {
            let field = |name: &str| {
                e.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .unwrap_or_default()
                    .to_owned()
            };
            (
                field("id: "),
                field("event: "),
                serde_json::from_str(&field("data: ")).unwrap(),
            )
        })
        .collect();
    let statuses: Vec<&str> = events
        .iter()
        .filter(|(_, kind, _)| kind == "status")
        .map(|(_, _, d)| d["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses.last(), Some(&"succeeded"), "{body}");
    assert!(statuses.contains(&"running"), "{body}");
    assert!(
        events.iter().any(|(_, kind, d)| kind == "progress"
            && d["progress"]["percent"].as_f64().unwrap_or(0.0) > 0.0),
        "no progress events: {body}"
    );
    let ids: std::collections::HashSet<&String> = events.iter().map(|(id, _, _)| id).collect();
    assert_eq!(ids.len(), events.len(), "event ids are unique");

    // Reconnecting with an older Last-Event-ID still delivers the final state, then closes.
    let (first_id, _, _) = &events[0];
    let again = stack
        .http
        .get(stack.url(&format!("{location}/events")))
        .header("last-event-id", first_id)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(again.contains("\"status\":\"succeeded\""), "{again}");
    // With the final id: nothing new, closed at once.
    let (last_id, _, _) = events.last().unwrap();
    let none = stack
        .http
        .get(stack.url(&format!("{location}/events")))
        .header("last-event-id", last_id)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!none.contains("data: "), "{none}");
}

#[tokio::test]
async fn a_high_priority_job_overtakes_a_backlog() {
    let mut stack = Stack::start_with(
        "priority",
        StackOptions::default()
            .workers(0)
            .env("APP__WORKER__CONCURRENCY", 1)
            .env("APP__AMQP__PREFETCH", 1),
    )
    .await;
    let mut low = Vec::new();
    for _ in 0..10 {
        low.push(
            stack
                .submit_ok(&json!({"type": "sleep", "input": {"seconds": 0.05}}))
                .await,
        );
    }
    let high = stack
        .submit_ok(&json!({"type": "sleep", "input": {"seconds": 0.05}, "priority": 9}))
        .await;
    stack.add_worker();
    stack.wait(&high, LONG).await;
    let high_done: String = stack.status_doc(&high).await["finished_at"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut after = 0;
    for l in &low {
        stack.wait(l, LONG).await;
        let done = stack.status_doc(l).await["finished_at"]
            .as_str()
            .unwrap()
            .to_owned();
        if done > high_done {
            after += 1;
        }
    }
    // At most the one delivery already in the worker's prefetch can finish first.
    assert!(
        after >= 9,
        "the high-priority job finished after {} of 10 low ones",
        10 - after
    );
}
