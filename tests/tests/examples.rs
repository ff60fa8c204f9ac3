//! A job type of the user's own (issue 17, item 5): `wordcount`, declared in the `examples`
//! crate and served by its own binary, `wordcount-worker`, built on the `worker` library. A
//! running facade, unchanged, refuses it until that worker starts, then accepts, checks and
//! runs its jobs, with no restart. The new type has a queue of its own, which only its worker
//! consumes: the built-in worker never sees its jobs (and the example worker never sees the
//! built-ins'). A registered type whose worker is not running yet keeps its jobs queued in its
//! queue until it is.

use std::process::Command;
use std::time::{Duration, Instant};

use e2e::{Stack, StackOptions};
use reqwest::StatusCode;
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(30);

/// Polls `GET /v1/job-types` until `wordcount` is listed and `done` holds for its entry.
async fn wait_wordcount(stack: &Stack, what: &str, done: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + LONG;
    loop {
        let body = stack.get_json("/v1/job-types").await;
        let found = body["job_types"]
            .as_array()
            .and_then(|types| types.iter().find(|t| t["name"] == "wordcount").cloned());
        if found.as_ref().is_some_and(&done) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn problem(response: reqwest::Response) -> Value {
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    response.json().await.expect("problem body")
}

fn log_of(stack: &Stack, label: &str) -> String {
    std::fs::read_to_string(stack.log_file(label)).unwrap_or_default()
}

/// A text with `n` distinct words, word `i` repeated `i` times: `w1 w2 w2 w3 w3 w3 …`.
fn staircase(n: usize, salt: usize) -> String {
    (1..=n)
        .flat_map(|i| std::iter::repeat_n(format!("w{i}x{salt}"), i))
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test]
async fn an_example_worker_started_later_makes_its_type_accepted_and_run() {
    let mut stack = Stack::start("examples-wordcount").await;
    let job = |text: &str| json!({"type": "wordcount", "input": {"text": text, "top": 2}});

    // The facade and the built-in worker know nothing of `wordcount`.
    let p = problem(stack.submit(&job("one two two")).await).await;
    assert_eq!(p["errors"][0]["field"], "type", "{p}");
    assert!(
        p["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("unknown"),
        "{p}"
    );

    // Its own worker binary starts on the same queue, next to the built-in one.
    stack.add_worker_binary("wordcount-worker", &[]);
    wait_wordcount(&stack, "wordcount registered by wordcount-worker", |t| {
        t["state"] == "served" && t["workers"] == 1
    })
    .await;

    // The schema derived from the Rust input type, bounds included, is what the facade checks.
    let p = problem(stack.submit(&job("")).await).await;
    assert_eq!(p["errors"][0]["field"], "input.text", "{p}");
    let p = problem(
        stack
            .submit(&json!({"type": "wordcount", "input": {"text": "a", "top": 51}}))
            .await,
    )
    .await;
    assert_eq!(p["errors"][0]["field"], "input.top", "{p}");
    let p = problem(
        stack
            .submit(&json!({"type": "wordcount", "input": {"text": "a", "colour": "red"}}))
            .await,
    )
    .await;
    assert_eq!(p["errors"][0]["field"], "input.colour", "{p}");
    let too_long = "a".repeat(100_001);
    let p = problem(stack.submit(&job(&too_long)).await).await;
    assert_eq!(p["errors"][0]["field"], "input.text", "{p}");

    // Its jobs wait in a queue of their own.
    wait_wordcount(&stack, "wordcount's queue", |t| {
        t["queue"]["name"] == format!("{}.wordcount", stack.queue)
    })
    .await;

    // Its jobs run, and their results are right.
    {
        let mut jobs = Vec::new();
        for salt in 0..8 {
            let location = stack.submit_ok(&job(&staircase(6, salt))).await;
            jobs.push((salt, location));
        }
        for (salt, location) in jobs {
            let result: Value = stack.wait(&location, LONG).await.json().await.unwrap();
            assert_eq!(
                result,
                json!({
                    "words": 21,
                    "distinct": 6,
                    "top": [
                        {"word": format!("w6x{salt}"), "count": 6},
                        {"word": format!("w5x{salt}"), "count": 5},
                    ],
                }),
            );
            let doc = stack.status_doc(&location).await;
            assert_eq!(doc["status"], "succeeded", "{doc}");
            assert_eq!(doc["attempts"], 1, "{doc}");
            assert_eq!(doc["progress"]["percent"], 100.0, "{doc}");
        }
    }
    // The built-in types still run.
    for i in 0..8 {
        let location = stack.submit_ok(&json!({"type": "echo", "input": i})).await;
        let result: Value = stack.wait(&location, LONG).await.json().await.unwrap();
        assert_eq!(result, json!(i));
    }
    assert!(stack.api_alive(), "the facade was not restarted");
    // Specialised workers: each received only the jobs of its own types (a job's log lines
    // name its type), none was handed off.
    let (builtin, example) = (log_of(&stack, "worker1"), log_of(&stack, "worker2"));
    assert!(builtin.matches(r#""job_type":"echo""#).count() >= 8);
    assert!(!builtin.contains(r#""job_type":"wordcount""#), "{builtin}");
    assert!(example.matches(r#""job_type":"wordcount""#).count() >= 8);
    assert!(!example.contains(r#""job_type":"echo""#), "{example}");
    for log in [&builtin, &example] {
        assert!(!log.contains("handed off"));
        assert!(!log.contains("no handler for job type"));
    }
}

#[tokio::test]
async fn a_registered_type_without_its_worker_keeps_its_jobs_queued() {
    // The longest retry step is what a waiting job goes round: short here.
    let mut stack = Stack::start_with(
        "examples-waiting",
        StackOptions::default().env("APP__AMQP__RETRY_MAX_DELAY_MS", 2000),
    )
    .await;

    // The example binary is a whole worker, tools included: it lists and registers its type.
    let tool = |args: &[&str]| {
        let output = Command::new(e2e::bin("wordcount-worker"))
            .args(args)
            .env("APP__AMQP__QUEUE", &stack.queue)
            .env("APP__REDIS__KEY_PREFIX", &stack.prefix)
            .output()
            .expect("run wordcount-worker");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let listed: Vec<Value> = tool(&["job-types", "list"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["name"], "wordcount");
    assert_eq!(
        listed[0]["input_schema"]["properties"]["text"]["maxLength"],
        100_000
    );
    assert_eq!(
        tool(&["job-types", "register"]).trim(),
        json!({"registered": 1}).to_string()
    );
    wait_wordcount(&stack, "wordcount registered without a worker", |t| {
        t["state"] == "no-live-worker"
    })
    .await;

    // Accepted; it waits in its type's queue (the built-in worker does not consume it).
    let location = stack
        .submit_ok(&json!({"type": "wordcount", "input": {"text": "to be or not to be"}}))
        .await;
    let queue = format!("{}.wordcount", stack.queue);
    stack.wait_queue_len(&queue, 1).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(stack.queue_len(&queue).await, 1, "still waiting");
    let doc = stack.status_doc(&location).await;
    assert_eq!(doc["status"], "queued", "it waits, it does not fail: {doc}");
    assert_eq!(doc["attempts"], 0, "{doc}");
    assert!(!log_of(&stack, "worker1").contains("wordcount"));

    // Its worker starts: the job runs.
    stack.add_worker_binary("wordcount-worker", &[]);
    let result: Value = stack.wait(&location, LONG).await.json().await.unwrap();
    assert_eq!(
        result,
        json!({
            "words": 6,
            "distinct": 4,
            "top": [
                {"word": "be", "count": 2},
                {"word": "to", "count": 2},
                {"word": "not", "count": 1},
                {"word": "or", "count": 1},
            ],
        })
    );
}

/// `example-backend` (the service behind examples/job-types.toml's http types), on its own:
/// a process killed when the test ends.
struct Backend {
    child: std::process::Child,
    base: String,
}

impl Backend {
    async fn start() -> Backend {
        let port = e2e::free_port();
        let child = Command::new(e2e::bin("example-backend"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .spawn()
            .expect("start example-backend");
        let backend = Backend {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let client = backend.client();
        let deadline = Instant::now() + LONG;
        while !client
            .get(format!("{}/healthz", backend.base))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(
                Instant::now() < deadline,
                "example-backend did not answer /healthz"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        backend
    }

    /// A client that does not follow redirects (the 303 is what is checked).
    fn client(&self) -> reqwest::Client {
        e2e::client_builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client")
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no {name} header"))
}

/// The asynchronous endpoint as the declared `report` type uses it: 202 + Location +
/// Retry-After, a monitor with progress while it works, then a 303 to the CSV; a repeated
/// POST with the same Idempotency-Key gets the same report; a DELETE stops one (then 404).
#[tokio::test]
async fn the_example_backend_runs_an_asynchronous_report_and_cancels_one() {
    let backend = Backend::start().await;
    let client = backend.client();
    let base = &backend.base;

    let start = || {
        client
            .post(format!("{base}/reports"))
            .header("idempotency-key", "job-1")
            .json(&json!({"rows": 4, "seconds": 1}))
            .send()
    };
    let accepted = start().await.expect("POST /reports");
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&accepted, "retry-after"), "1");
    let monitor = header(&accepted, "location").to_owned();
    assert!(monitor.starts_with("/reports/"), "{monitor}");
    let again = start().await.expect("POST /reports again");
    assert_eq!(header(&again, "location"), monitor, "same Idempotency-Key");

    let status = client.get(format!("{base}{monitor}")).send().await.unwrap();
    assert_eq!(status.status(), StatusCode::OK);
    let doc: Value = status.json().await.unwrap();
    assert_eq!(doc["status"], "running", "{doc}");
    assert!(doc["progress"]["percent"].as_u64().unwrap() < 100, "{doc}");
    assert!(doc["progress"]["message"].is_string(), "{doc}");

    let deadline = Instant::now() + LONG;
    let result = loop {
        let answer = client.get(format!("{base}{monitor}")).send().await.unwrap();
        if answer.status() == StatusCode::SEE_OTHER {
            break header(&answer, "location").to_owned();
        }
        assert_eq!(answer.status(), StatusCode::OK);
        assert!(Instant::now() < deadline, "the report did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(result, format!("{monitor}/result"));
    let csv = client.get(format!("{base}{result}")).send().await.unwrap();
    assert_eq!(csv.status(), StatusCode::OK);
    assert!(header(&csv, "content-type").starts_with("text/csv"));
    assert_eq!(
        csv.text().await.unwrap(),
        "row,square\n1,1\n2,4\n3,9\n4,16\n"
    );

    // A bad input is a 400 problem; a canceled report is gone.
    let bad = client
        .post(format!("{base}/reports"))
        .json(&json!({"rows": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert_eq!(header(&bad, "content-type"), "application/problem+json");
    let other = client
        .post(format!("{base}/reports"))
        .json(&json!({"seconds": 60}))
        .send()
        .await
        .unwrap();
    let other = header(&other, "location").to_owned();
    let deleted = client
        .delete(format!("{base}{other}"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let gone = client.get(format!("{base}{other}")).send().await.unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
}

/// The synchronous endpoint as the declared `render` type uses it: the SVG with its media type,
/// and a 400 problem for an unknown format.
#[tokio::test]
async fn the_example_backend_renders_synchronously() {
    let backend = Backend::start().await;
    let client = backend.client();
    let svg = client
        .post(format!("{}/render/svg", backend.base))
        .json(&json!({"title": "Q3 & Q4", "format": "svg", "delay_ms": 40}))
        .send()
        .await
        .unwrap();
    assert_eq!(svg.status(), StatusCode::OK);
    assert_eq!(header(&svg, "content-type"), "image/svg+xml");
    let body = svg.text().await.unwrap();
    assert!(
        body.starts_with("<svg") && body.contains("Q3 &amp; Q4"),
        "{body}"
    );
    let bad = client
        .post(format!("{}/render/pdf", backend.base))
        .json(&json!({"title": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}
