//! The `client` crate and its `arr` CLI against the real facade and worker: submit and wait
//! (long-poll, 303, result), failures and cancellation as typed errors, deadlines, events,
//! listing, idempotency keys, status URLs; and the CLI's output and exit codes.

use std::collections::HashSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use client::{Client, Error, JobHandle, JobState};
use e2e::Stack;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

const LONG: Duration = Duration::from_secs(60);

fn client(stack: &Stack) -> Client {
    Client::builder(&stack.base)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// Polls until the job is running.
async fn until_running(job: &JobHandle) {
    let deadline = Instant::now() + LONG;
    loop {
        let doc = job.status().await.expect("status");
        if doc.status == JobState::Running {
            return;
        }
        assert!(!doc.status.is_terminal(), "ended before running: {doc:?}");
        assert!(Instant::now() < deadline, "never started: {doc:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn submit_and_wait_returns_the_result() {
    let stack = Stack::start("client-echo").await;
    let client = client(&stack);
    let input = json!({"hello": "world", "n": [1, 2, 3]});
    let job = client.submit("echo", &input).await.expect("submit");
    assert!(!job.replayed);
    assert_eq!(
        job.location.as_str(),
        stack.url(&format!("/v1/jobs/{}", job.id))
    );
    let submitted = job.submitted.as_ref().expect("submit document");
    assert_eq!(submitted.status, JobState::Queued);
    assert_eq!(submitted.job_type, "echo");

    let done = job.wait(LONG).await.expect("wait");
    assert_eq!(done.status.status, JobState::Succeeded);
    assert_eq!(done.result, input);
    assert_eq!(done.result::<Value>().unwrap(), input);

    // Afterwards: the status document (from the 303) and the result by itself.
    let status = job.status().await.expect("status");
    assert_eq!(status.status, JobState::Succeeded);
    assert_eq!(status.id, job.id);
    assert_eq!(job.result::<Value>().await.expect("result"), input);

    // A job of a type that takes a while, with progress reported to the callback.
    let job = client
        .submit("sleep", json!({"seconds": 1.5}))
        .priority(5)
        .await
        .expect("submit");
    let mut seen = Vec::new();
    let done = job
        .wait_with(LONG, |doc| seen.push((doc.status, doc.percent())))
        .await
        .expect("wait");
    assert_eq!(done.result, json!({"slept_seconds": 1.5}));
    assert!(
        seen.iter().any(|(s, _)| *s == JobState::Running),
        "{seen:?}"
    );
    assert_eq!(seen.last().map(|(s, _)| *s), Some(JobState::Succeeded));
    // Long-polling plus the one-second progress cap: a handful of updates, not a flood.
    assert!(seen.len() < 30, "{seen:?}");

    // Unknown job and invalid input are HTTP problems.
    let missing = client.job("bd15735b-6480-4b74-b7e6-f955561743cc");
    match missing.status().await {
        Err(Error::Http { status: 404, .. }) => {}
        other => panic!("expected a 404, got {other:?}"),
    }
    match client.submit("nope", json!({})).await {
        Err(Error::Http {
            status: 422,
            problem,
        }) => {
            assert!(problem.extensions.contains_key("errors"), "{problem:?}")
        }
        other => panic!("expected a 422, got {other:?}"),
    }
}

#[tokio::test]
async fn a_failed_job_is_a_typed_error_with_the_problem_and_the_document() {
    let stack = Stack::start("client-fail").await;
    let client = client(&stack);
    let job = client
        .submit("fail", json!({"message": "disk on fire"}))
        .await
        .expect("submit");
    match job.wait(LONG).await {
        Err(Error::JobFailed { problem, status }) => {
            assert_eq!(problem.status, Some(424));
            assert_eq!(problem.detail.as_deref(), Some("disk on fire"));
            assert_eq!(status.id, job.id);
            assert_eq!(status.status, JobState::Failed);
            let error = status.error.as_ref().expect("error member");
            assert_eq!(error.kind.as_deref(), Some("handler-failed"));
        }
        other => panic!("expected JobFailed, got {other:?}"),
    }
    // `status()` answers with the document; `result()` with the same typed error.
    assert_eq!(job.status().await.unwrap().status, JobState::Failed);
    assert!(matches!(
        job.result::<Value>().await,
        Err(Error::JobFailed { .. })
    ));

    // Input rejected by the handler: 422.
    let job = client
        .submit("fail", json!({"message": "bad", "kind": "input-rejected"}))
        .await
        .expect("submit");
    match job.wait(LONG).await {
        Err(e @ Error::JobFailed { .. }) => assert_eq!(e.http_status(), Some(422)),
        other => panic!("expected JobFailed, got {other:?}"),
    }
}

#[tokio::test]
async fn canceling_a_running_job_ends_the_wait_with_job_canceled() {
    let stack = Stack::start("client-cancel").await;
    let client = client(&stack);
    let job = client
        .submit("sleep", json!({"seconds": 60}))
        .await
        .expect("submit");
    until_running(&job).await;
    // The waiter is in a long-poll when the cancel lands.
    let waiter = {
        let job = job.clone();
        tokio::spawn(async move { job.wait(LONG).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let doc = job.cancel().await.expect("cancel");
    assert!(matches!(doc.status, JobState::Running | JobState::Canceled));
    match waiter.await.unwrap() {
        Err(Error::JobCanceled { status }) => {
            assert_eq!(status.id, job.id);
            assert_eq!(status.status, JobState::Canceled);
        }
        other => panic!("expected JobCanceled, got {other:?}"),
    }
    // Long-polling: the waiter heard of it at once, not after a poll interval.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // Canceling again: 200 with the canceled document.
    assert_eq!(job.cancel().await.unwrap().status, JobState::Canceled);

    // Canceling a finished job is a 409 problem.
    let done = client.submit("echo", json!(1)).await.unwrap();
    done.wait(LONG).await.unwrap();
    match done.cancel().await {
        Err(Error::Http { status: 409, .. }) => {}
        other => panic!("expected a 409, got {other:?}"),
    }
}

#[tokio::test]
async fn wait_gives_up_at_the_deadline() {
    let stack = Stack::start("client-timeout").await;
    let client = client(&stack);
    let job = client
        .submit("sleep", json!({"seconds": 60}))
        .await
        .expect("submit");
    let started = Instant::now();
    match job.wait(Duration::from_millis(1500)).await {
        Err(Error::Timeout { waited, last }) => {
            assert!(waited >= Duration::from_millis(1500), "{waited:?}");
            let last = last.expect("a status was seen");
            assert!(!last.status.is_terminal(), "{last:?}");
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(4), "took {elapsed:?}");
    job.cancel().await.expect("cancel");
}

#[tokio::test]
async fn events_stream_status_documents_until_the_terminal_one() {
    let stack = Stack::start("client-events").await;
    let client = client(&stack);
    let job = client
        .submit("sleep", json!({"seconds": 1}))
        .await
        .expect("submit");
    let docs: Vec<_> = tokio::time::timeout(LONG, job.events().collect::<Vec<_>>())
        .await
        .expect("stream ended");
    let docs: Vec<_> = docs.into_iter().map(|d| d.expect("event")).collect();
    let states: Vec<_> = docs.iter().map(|d| d.status).collect();
    assert!(states.contains(&JobState::Running), "{states:?}");
    assert_eq!(states.last(), Some(&JobState::Succeeded), "{states:?}");
    assert!(states[..states.len() - 1].iter().all(|s| !s.is_terminal()));
    // Progress events in between: the percent never goes down.
    let percents: Vec<_> = docs.iter().map(|d| d.percent()).collect();
    assert!(percents.windows(2).all(|w| w[0] <= w[1]), "{percents:?}");
    // A finished job's stream: just its final document.
    let again: Vec<_> = job.events().collect().await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].as_ref().unwrap().status, JobState::Succeeded);
}

#[tokio::test]
async fn list_follows_the_cursor_and_idempotency_keys_give_the_same_job() {
    let stack = Stack::start("client-list").await;
    let client = client(&stack);
    let mut submitted = HashSet::new();
    for i in 0..5 {
        let job = client.submit("echo", json!({"i": i})).await.unwrap();
        submitted.insert(job.id.clone());
    }
    let other = client.submit("sleep", json!({"seconds": 0})).await.unwrap();

    let mut page = client.list().job_type("echo").limit(2).await.expect("list");
    let mut listed = Vec::new();
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(page.jobs.len() <= 2);
        listed.extend(page.jobs.iter().map(|d| d.id.clone()));
        assert!(page.jobs.iter().all(|d| d.job_type == "echo"));
        match page.next().await.expect("next page") {
            Some(next) => page = next,
            None => break,
        }
    }
    assert!(pages >= 3, "{pages} pages");
    assert_eq!(listed.len(), 5, "{listed:?}");
    assert_eq!(listed.iter().cloned().collect::<HashSet<_>>(), submitted);
    assert!(!listed.contains(&other.id));

    // A bad limit is the server's 422.
    match client.list().limit(0).await {
        Err(Error::Http { status: 422, .. }) => {}
        other => panic!("expected a 422, got {other:?}"),
    }

    // Idempotency key: the same key and body give the first job back.
    let first = client
        .submit("echo", json!({"pay": 10}))
        .idempotency_key("order-17")
        .await
        .unwrap();
    let second = client
        .submit("echo", json!({"pay": 10}))
        .idempotency_key("order-17")
        .await
        .unwrap();
    assert_eq!(first.id, second.id);
    assert_eq!(first.location, second.location);
    assert!(!first.replayed);
    assert!(second.replayed);
    match client
        .submit("echo", json!({"pay": 11}))
        .idempotency_key("order-17")
        .await
    {
        Err(Error::Http { status: 409, .. }) => {}
        other => panic!("expected a 409, got {other:?}"),
    }
}

#[tokio::test]
async fn a_handle_from_a_status_url_keeps_its_query_string() {
    let stack = Stack::start("client-url").await;
    let client = client(&stack);
    let job = client.submit("echo", json!({"x": 1})).await.unwrap();
    job.wait(LONG).await.unwrap();

    // Absolute and relative URLs with a query string (signed URLs have one: see security.rs
    // for real signatures), polled by a client without an API key.
    let anonymous = Client::new(&stack.base).unwrap();
    let absolute = format!("{}?from=mail&n=1", job.location);
    let relative = format!("/v1/jobs/{}?from=mail&n=1", job.id);
    for url in [absolute, relative] {
        let handle = JobHandle::from_url(&anonymous, &url)
            .unwrap()
            .without_api_key();
        assert_eq!(handle.id, job.id);
        assert_eq!(handle.location.query(), Some("from=mail&n=1"));
        assert_eq!(handle.status().await.unwrap().status, JobState::Succeeded);
        assert_eq!(handle.wait(LONG).await.unwrap().result, json!({"x": 1}));
    }
}

/// Runs `arr --url <stack> <args>` with `stdin` piped in; returns (exit code, stdout, stderr).
async fn arr(stack: &Stack, args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = tokio::process::Command::new(e2e::bin("arr"))
        .arg("--url")
        .arg(&stack.base)
        .args(args)
        .env_remove("ARR_URL")
        .env_remove("ARR_API_KEY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn arr");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let output = tokio::time::timeout(LONG, child.wait_with_output())
        .await
        .expect("arr finished")
        .expect("arr output");
    (
        output.status.code().expect("exit code"),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_cli_prints_results_and_exits_with_the_outcome() {
    let stack = Stack::start("client-cli").await;

    // Submit from stdin, wait, print the result as JSON: exit 0.
    let input = json!({"hello": "cli", "n": 3});
    let (code, out, err) = arr(
        &stack,
        &["submit", "echo", "--input", "-", "--wait", "--json"],
        &input.to_string(),
    )
    .await;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert_eq!(serde_json::from_str::<Value>(&out).expect(&out), input);

    // A failing job: exit 1, the problem on stdout with --json.
    let (code, out, err) = arr(
        &stack,
        &["submit", "fail", "--input", "-", "--wait", "--json"],
        r#"{"message": "disk on fire"}"#,
    )
    .await;
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    let problem: Value = serde_json::from_str(&out).expect(&out);
    assert_eq!(problem["status"], 424);
    assert_eq!(problem["job"]["status"], "failed");
    assert!(err.contains("disk on fire"), "{err}");
    let (code, _, err) = arr(
        &stack,
        &["submit", "fail", "--input", "-", "--wait"],
        r#"{"message": "disk on fire"}"#,
    )
    .await;
    assert_eq!(code, 1, "{err}");

    // Submit without waiting, then `wait --timeout 1` on a long sleep: exit 3.
    let (code, out, err) = arr(
        &stack,
        &["submit", "sleep", "--input", "-", "--json"],
        r#"{"seconds": 60}"#,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let doc: Value = serde_json::from_str(&out).expect(&out);
    let id = doc["id"].as_str().unwrap().to_owned();
    let started = Instant::now();
    let (code, _, err) = arr(&stack, &["wait", &id, "--timeout", "1"], "").await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("timed out"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // status --json prints the document; cancel; wait on it then exits 2.
    let (code, out, _) = arr(&stack, &["status", &id, "--json"], "").await;
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["id"], id);
    let (code, out, err) = arr(&stack, &["cancel", &id], "").await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = arr(&stack, &["wait", &id], "").await;
    assert_eq!(code, 2, "{err}");
    let (code, _, _) = arr(&stack, &["status", &id], "").await;
    assert_eq!(code, 2);

    // Piped (not a terminal): plain progress lines, one per change, then the result.
    let (code, out, err) = arr(
        &stack,
        &["submit", "sleep", "--input", "-", "--wait"],
        r#"{"seconds": 1.5}"#,
    )
    .await;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(
        !out.contains('\u{1b}'),
        "escape codes in piped output: {out:?}"
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines.iter().any(|l| l.contains(" running ")),
        "no running line: {out}"
    );
    assert!(
        lines.iter().any(|l| l.contains(" succeeded 100.0%")),
        "{out}"
    );
    let result_start = lines.iter().position(|l| l.starts_with('{')).expect(&out);
    let result: Value = serde_json::from_str(&lines[result_start..].join("\n")).expect(&out);
    assert_eq!(result, json!({"slept_seconds": 1.5}));
    let progress = &lines[..result_start];
    let unique: HashSet<_> = progress.iter().collect();
    assert_eq!(unique.len(), progress.len(), "repeated lines: {out}");

    // list --json
    let (code, out, _) = arr(&stack, &["list", "--type", "echo", "--json"], "").await;
    assert_eq!(code, 0);
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 1);

    // workers: the fleet registry as JSON (this stack's one worker ran the jobs above).
    let (code, out, err) = arr(&stack, &["workers", "--json"], "").await;
    assert_eq!(code, 0, "{out}{err}");
    let fleet: Value = serde_json::from_str(&out).expect(&out);
    assert_eq!(fleet["workers"].as_array().expect(&out).len(), 1, "{out}");

    // Usage errors and a server that is not there: exit 4.
    let (code, _, _) = arr(&stack, &["submit", "echo"], "").await;
    assert_eq!(code, 4);
    let (code, _, _) = arr(&stack, &["submit", "echo", "--input", "-"], "not json").await;
    assert_eq!(code, 4);
    let port = e2e::free_port();
    let (code, _, err) = arr(
        &stack,
        &["--url", &format!("http://127.0.0.1:{port}"), "status", &id],
        "",
    )
    .await;
    assert_eq!(code, 4, "{err}");
    let (code, out, _) = arr(&stack, &["--help"], "").await;
    assert_eq!(code, 0);
    assert!(out.contains("Exit codes"), "{out}");
}
