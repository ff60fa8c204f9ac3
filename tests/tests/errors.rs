//! Every error a client can provoke gets the right 4xx with a problem+json body, and nothing
//! is queued or recorded for a request that was refused.

use e2e::{Stack, StackOptions};
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn problem(response: reqwest::Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json",
        "problem+json for {status}"
    );
    let body: Value = response.json().await.expect("problem body is JSON");
    assert_eq!(body["status"], status.as_u16());
    assert!(
        body["type"].is_string() && body["title"].is_string(),
        "{body}"
    );
    body
}

/// Nothing was queued and nothing recorded.
async fn assert_nothing_left(stack: &Stack) {
    let (ready, _) = stack.queue_info().await.expect("queue exists");
    assert_eq!(ready, 0, "a refused request queued a message");
    assert_eq!(
        stack.redis_keys().await,
        Vec::<String>::new(),
        "a refused request left a record"
    );
}

#[tokio::test]
async fn bad_bodies_get_400_415_413_and_nothing_is_queued() {
    // No worker: anything published would stay in the queue for us to see.
    let stack = Stack::start_with(
        "bodies",
        StackOptions::default()
            .workers(0)
            .env("APP__HTTP__BODY_LIMIT_BYTES", 1024),
    )
    .await;
    let post = || stack.http.post(stack.url("/v1/jobs"));

    let p = problem(
        post()
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("JSON"));
    problem(
        post()
            .header("content-type", "application/json")
            .body("")
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    // Invalid UTF-8 inside a string.
    problem(
        post()
            .header("content-type", "application/json")
            .body(b"{\"type\":\"echo\",\"input\":\"\xff\xfe\"}".to_vec())
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    // Nesting deeper than `limits.max_json_depth` is a 422 (found before parsing), not a
    // stack overflow.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_stack = Stack::start_with("deep", StackOptions::default().workers(0)).await;
    problem(
        deep_stack
            .http
            .post(deep_stack.url("/v1/jobs"))
            .header("content-type", "application/json")
            .body(deep)
            .send()
            .await
            .unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;

    problem(
        post()
            .header("content-type", "text/plain")
            .body("{}")
            .send()
            .await
            .unwrap(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
    )
    .await;
    problem(
        post().body("{}").send().await.unwrap(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
    )
    .await;

    let big = json!({"type": "echo", "input": "x".repeat(2000)});
    let p = problem(
        post().json(&big).send().await.unwrap(),
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("1024"));
    // Chunked, without a Content-Length: refused while reading.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..10).map(|_| Ok(vec![b' '; 200])).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    problem(
        post()
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap(),
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;

    // A body just under the limit is fine, and charset parameters are accepted.
    let ok = post()
        .header("content-type", "application/json; charset=utf-8")
        .body(json!({"type": "echo", "input": "x".repeat(900)}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::ACCEPTED);
    let (ready, _) = stack.queue_info().await.unwrap();
    assert_eq!(ready, 1, "exactly the one accepted job is queued");
    assert_nothing_left(&deep_stack).await;
}

#[tokio::test]
async fn invalid_jobs_get_422_naming_each_bad_field() {
    let stack = Stack::start_with("invalid", StackOptions::default().workers(0)).await;

    let p = problem(
        stack.submit(&json!({"type": "nope", "input": {}})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(p["errors"][0]["field"], "type");
    assert!(
        p["errors"][0]["detail"].as_str().unwrap().contains("echo"),
        "lists the known types: {p}"
    );

    let p = problem(
        stack
            .submit(&json!({"type": "hash", "input": {"bytes": -5, "seed": "s", "colour": 1}, "priority": 12, "extra": true}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    let mut fields: Vec<&str> = p["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "extra",
            "input.bytes",
            "input.colour",
            "input.seed",
            "priority"
        ]
    );
    for e in p["errors"].as_array().unwrap() {
        assert!(e["pointer"].as_str().unwrap().starts_with("#/"));
        assert!(!e["detail"].as_str().unwrap().is_empty());
    }

    for (body, field) in [
        (json!({"input": {}}), "type"),
        (json!({"type": 3}), "type"),
        (json!({"type": "sleep"}), "input"),
        (
            json!({"type": "sleep", "input": {"seconds": 1e12}}),
            "input.seconds",
        ),
        (
            json!({"type": "sleep", "input": {"seconds": "1"}}),
            "input.seconds",
        ),
        (
            json!({"type": "hash", "input": {"bytes": 1.5}}),
            "input.bytes",
        ),
        (
            json!({"type": "hash", "input": {"bytes": 2_000_000_000_000u64}}),
            "input.bytes",
        ),
        (
            json!({"type": "fail", "input": {"message": ""}}),
            "input.message",
        ),
        (
            json!({"type": "echo", "callback_url": "http://169.254.169.254/"}),
            "callback_url",
        ),
    ] {
        let p = problem(stack.submit(&body).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(p["errors"][0]["field"], field, "{body} -> {p}");
    }
    // Callbacks are refused by default: the allow-list of callback hosts is empty.
    let p = problem(
        stack
            .submit(&json!({"type": "echo", "callback_url": "https://example.com/hook"}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(p["errors"][0]["field"], "callback_url", "{p}");
    let detail = p["errors"][0]["detail"].as_str().unwrap();
    assert!(detail.contains("not allowed"), "{detail}");
    // A JSON body that is not an object.
    let p = problem(
        stack.submit(&json!([1, 2])).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(p["errors"][0]["pointer"], "#");
    assert_nothing_left(&stack).await;
}

#[tokio::test]
async fn unknown_and_malformed_ids_are_404_and_never_reach_redis() {
    let stack = Stack::start_with("ids", StackOptions::default().workers(0)).await;
    let unknown = uuid::Uuid::new_v4();
    for path in [
        format!("/v1/jobs/{unknown}"),
        format!("/v1/jobs/{unknown}/result"),
        "/v1/jobs/not-a-uuid".to_string(),
        "/v1/jobs/*".to_string(),
        "/v1/jobs/%2A%3F%5B".to_string(),
        "/v1/jobs/..%2F..%2Fetc%2Fpasswd".to_string(),
        format!("/v1/jobs/{}", unknown.to_string().to_uppercase()),
        format!("/v1/jobs/{{{unknown}}}"),
        format!("/v1/jobs/{unknown}%00"),
        "/v1/jobs/%FF%FE".to_string(),
    ] {
        let p = problem(
            stack.http.get(stack.url(&path)).send().await.unwrap(),
            StatusCode::NOT_FOUND,
        )
        .await;
        assert_eq!(p["type"], "/problems/job-not-found", "{path}");
    }
    // Wrong paths and methods.
    problem(
        stack.http.get(stack.url("/nope")).send().await.unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    let r = stack.http.put(stack.url("/v1/jobs")).send().await.unwrap();
    assert_eq!(r.headers()["allow"], "GET, HEAD, POST");
    problem(r, StatusCode::METHOD_NOT_ALLOWED).await;
    problem(
        stack
            .http
            .post(stack.url(&format!("/v1/jobs/{unknown}")))
            .send()
            .await
            .unwrap(),
        StatusCode::METHOD_NOT_ALLOWED,
    )
    .await;
    // `GET /v1/jobs` lists the jobs: none here.
    let list = stack.http.get(stack.url("/v1/jobs")).send().await.unwrap();
    assert_eq!(list.status(), StatusCode::OK);
    assert_eq!(
        list.json::<Value>().await.unwrap(),
        json!({"jobs": [], "next_cursor": null})
    );
    assert_nothing_left(&stack).await;
}

#[tokio::test]
async fn health_and_readiness() {
    let stack = Stack::start_with("health", StackOptions::default().workers(0)).await;
    let r = stack.http.get(stack.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = stack.http.get(stack.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["checks"]["redis"]["status"], "up");
    assert_eq!(body["checks"]["rabbitmq"]["status"], "up");
}
