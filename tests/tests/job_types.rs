//! Job types that the facade learns from the workers (issue 17), over real RabbitMQ and Redis:
//! a facade with an empty registry refuses every type; a worker started later, serving only
//! `echo`, makes `echo` accepted and run within a few seconds, without a facade restart, while
//! the types it does not serve stay unknown; `GET /v1/job-types`, `/readyz`, `/openapi.json`
//! and `arr types` follow the registry; a type whose last worker stopped is still accepted and
//! its job waits in the queue for the next worker. And the input that used to be accepted and
//! then fail in the worker (`"seed": null`) runs.

use std::process::Stdio;
use std::time::{Duration, Instant};

use e2e::{Stack, StackOptions};
use reqwest::StatusCode;
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(30);

/// Polls `GET /v1/job-types` until `done` holds for its list; returns that list.
async fn wait_types(stack: &Stack, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + LONG;
    loop {
        let body = stack.get_json("/v1/job-types").await;
        let types = body["job_types"].as_array().cloned().expect("job_types");
        if done(&types) {
            return types;
        }
        assert!(Instant::now() < deadline, "{what}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn names(types: &[Value]) -> Vec<&str> {
    types.iter().map(|t| t["name"].as_str().unwrap()).collect()
}

async fn problem(response: reqwest::Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    response.json().await.expect("problem body")
}

/// The `JobRequest` alternatives of the served OpenAPI document, by the `type` they take.
async fn request_variants(stack: &Stack) -> Vec<(String, Value)> {
    let doc = stack.get_json("/openapi.json").await;
    let request = &doc["components"]["schemas"]["JobRequest"];
    request["oneOf"]
        .as_array()
        .map(|alts| {
            alts.iter()
                .map(|a| {
                    let name = a["properties"]["type"]["const"]
                        .as_str()
                        .unwrap()
                        .to_owned();
                    (name, a.clone())
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn arr_types(stack: &Stack, json: bool) -> String {
    let mut cmd = tokio::process::Command::new(e2e::bin("arr"));
    cmd.arg("--url").arg(&stack.base).arg("types");
    if json {
        cmd.arg("--json");
    }
    let output = cmd
        .env_remove("ARR_URL")
        .env_remove("ARR_API_KEY")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run arr");
    assert!(output.status.success(), "arr types: {output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn a_worker_started_later_makes_its_type_accepted_and_run() {
    let mut stack = Stack::start_with(
        "types-learned",
        StackOptions::default().workers(0).unregistered(),
    )
    .await;

    // A fresh registry: every type is unknown, and the documents say so.
    assert_eq!(
        stack.get_json("/v1/job-types").await,
        json!({"job_types": []})
    );
    let ready = stack.get_json("/readyz").await;
    assert_eq!(ready["job_types"]["registry"], "empty", "{ready}");
    let p = problem(
        stack.submit(&json!({"type": "echo", "input": 1})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(p["errors"][0]["field"], "type", "{p}");
    assert!(
        p["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("no job type is registered"),
        "{p}"
    );
    assert!(request_variants(&stack).await.is_empty());
    assert!(arr_types(&stack, false)
        .await
        .contains("no job type is registered"));

    // A worker that serves only `echo` registers it; the running facade picks it up.
    stack.add_worker_with(&[("APP__WORKER__TYPES", "echo")]);
    // The queue's depth shows once the facade has read it (it declares a type's queue when it
    // learns the type, a moment after the registration).
    let types = wait_types(&stack, "echo registered by its worker", |t| {
        t.len() == 1 && t[0]["workers"] == 1 && t[0]["queue"]["depth"].is_u64()
    })
    .await;
    let echo = &types[0];
    assert_eq!(echo["name"], "echo");
    assert_eq!(echo["state"], "served");
    assert_eq!(echo["priorities"], true);
    assert_eq!(echo["example"], json!({"hello": "world"}));
    assert_eq!(
        echo["limits"],
        json!({"max_attempts": 3, "max_run_seconds": 30})
    );
    assert_eq!(
        echo["input_schema"],
        json!({"$schema": "https://json-schema.org/draft/2020-12/schema"})
    );
    assert_eq!(echo["schema_digest"].as_str().unwrap().len(), 64);
    assert!(echo["worker_version"].is_string());
    assert_eq!(echo["queue"]["name"], stack.work_queue().as_str());
    assert!(echo["queue"]["depth"].is_u64(), "{echo}");
    assert!(echo["description"].as_str().unwrap().contains("unchanged"));

    // Accepted and run.
    let location = stack
        .submit_ok(&json!({"type": "echo", "input": {"n": 1}}))
        .await;
    let done = stack.wait(&location, LONG).await;
    assert_eq!(done.status(), StatusCode::OK, "the result after the 303");
    assert_eq!(done.json::<Value>().await.unwrap(), json!({"n": 1}));
    // The types it does not serve stay unknown, and the detail names the known one.
    let p = problem(
        stack
            .submit(&json!({"type": "sleep", "input": {"seconds": 1}}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(
        p["errors"][0]["detail"], "unknown job type; known types: echo",
        "{p}"
    );

    // Everything that reads the registry agrees.
    let ready = stack.get_json("/readyz").await;
    assert_eq!(ready["job_types"]["registry"], "loaded", "{ready}");
    assert_eq!(
        ready["job_types"]["types"],
        json!({"echo": {"workers": 1, "state": "served", "versions": 1}})
    );
    let workers = stack.get_json("/v1/workers").await;
    assert_eq!(
        workers["workers"][0]["job_types"],
        json!(["echo"]),
        "{workers}"
    );
    let variants = request_variants(&stack).await;
    assert_eq!(variants.len(), 1);
    assert_eq!(variants[0].0, "echo");
    let table = arr_types(&stack, false).await;
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("echo") && l.contains("served")),
        "{table}"
    );
    let listed: Value = serde_json::from_str(&arr_types(&stack, true).await).unwrap();
    assert_eq!(listed["job_types"][0]["name"], "echo");

    // Its last worker stops: the type stays known, its jobs are accepted and wait.
    assert!(
        stack.terminate_worker(0, LONG).await,
        "worker exits cleanly"
    );
    wait_types(&stack, "echo without a live worker", |t| {
        t.len() == 1 && t[0]["state"] == "no-live-worker" && t[0]["workers"] == 0
    })
    .await;
    let ready = stack.get_json("/readyz").await;
    assert_eq!(
        ready["status"], "ready",
        "not serving a type is not unreadiness"
    );
    assert_eq!(
        ready["job_types"]["types"]["echo"]["state"],
        "no-live-worker"
    );
    let waiting = stack
        .submit_ok(&json!({"type": "echo", "input": "later"}))
        .await;
    assert_eq!(stack.status_doc(&waiting).await["status"], "queued");

    // The next worker (every built-in) runs it, and brings its other types along.
    stack.add_worker();
    let done = stack.wait(&waiting, LONG).await;
    assert_eq!(done.json::<Value>().await.unwrap(), json!("later"));
    let types = wait_types(&stack, "all four built-ins", |t| t.len() == 4).await;
    assert_eq!(names(&types), ["echo", "fail", "hash", "sleep"]);
    let accepted = stack
        .submit(&json!({"type": "sleep", "input": {"seconds": 0}}))
        .await;
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
}

#[tokio::test]
async fn inputs_are_checked_against_the_registered_schemas() {
    let stack = Stack::start("types-schemas").await;

    // The reported bug: accepted, then failed in the worker. Now accepted and run.
    let location = stack
        .submit_ok(&json!({"type": "hash", "input": {"bytes": 5, "seed": null}}))
        .await;
    let done = stack.wait(&location, LONG).await;
    assert_eq!(done.status(), StatusCode::OK);
    let result: Value = done.json().await.unwrap();
    assert_eq!(
        (result["bytes"].clone(), result["seed"].clone()),
        (json!(5), json!(0))
    );
    // An integer written as a float is an integer, for the schema and the worker alike.
    let location = stack
        .submit_ok(&json!({"type": "hash", "input": {"bytes": 8.0, "seed": 1e3}}))
        .await;
    let result: Value = stack.wait(&location, LONG).await.json().await.unwrap();
    assert_eq!(
        (result["bytes"].clone(), result["seed"].clone()),
        (json!(8), json!(1000))
    );

    // Each violation is one entry of `errors`, with field, pointer and detail.
    let p = problem(
        stack
            .submit(&json!({"type": "fail", "input": {"message": "", "kind": "nope", "until_attempt": 0, "x": 1}}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    let mut errors: Vec<(String, String, String)> = p["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap().to_owned();
            (s("field"), s("pointer"), s("detail"))
        })
        .collect();
    errors.sort();
    assert_eq!(
        errors,
        [
            (
                "input.kind".into(),
                "#/input/kind".into(),
                "must be one of: handler-failed, input-rejected, transient, panic, null".into()
            ),
            (
                "input.message".into(),
                "#/input/message".into(),
                "must not be empty".into()
            ),
            (
                "input.until_attempt".into(),
                "#/input/until_attempt".into(),
                "must be at least 1".into()
            ),
            ("input.x".into(), "#/input/x".into(), "unknown field".into()),
        ]
    );

    // The OpenAPI document has one variant per type, with the registered schema as `input`.
    let types = stack.get_json("/v1/job-types").await;
    let variants = request_variants(&stack).await;
    let variant_names: Vec<&str> = variants.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(variant_names, ["echo", "fail", "hash", "sleep"]);
    for t in types["job_types"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        let (_, variant) = variants.iter().find(|(n, _)| n == name).unwrap();
        let mut registered = t["input_schema"].clone();
        registered.as_object_mut().unwrap().remove("$schema");
        assert_eq!(variant["properties"]["input"], registered, "{name}");
        assert_eq!(variant["examples"][0]["input"], t["example"], "{name}");
    }
}
