//! Declared `http` job types (worker/src/declared/http.rs) against a real HTTP backend this test
//! starts (actix-web), with the real api and worker binaries: results of any media type,
//! asynchronous backends (202 + Location, polled to a 303), the failure mapping, retries after
//! Retry-After, timeouts, cancels passed on as a DELETE, limits, URL encoding, the same-origin
//! rule and the signed progress URL.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use e2e::{client_builder, free_port, job_id, Stack, StackOptions};
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::Sha256;

const TOKEN: &str = "tok-from-env";
const HMAC_SECRET: &str = "backend-hmac-secret";
const SIGNING_KEY: &str = "k1:0123456789abcdef0123456789abcdef";
/// Not a real PNG, but bytes that are not UTF-8 and not JSON all the same.
const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe\x00\x01";

/// One request the backend received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    /// As received (percent-encoding kept).
    path: String,
    query: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
    at: Instant,
}

#[derive(Default)]
struct BackendState {
    seen: Mutex<Vec<Seen>>,
    counters: Mutex<HashMap<String, u32>>,
    /// What the facade answered to the sync backend's progress post.
    progress_post: Mutex<Option<u16>>,
    port: u16,
}

impl BackendState {
    fn count(&self, key: &str) -> u32 {
        let mut counters = self.counters.lock().unwrap();
        let n = counters.entry(key.to_owned()).or_default();
        *n += 1;
        *n
    }
}

struct Backend {
    state: Arc<BackendState>,
    base: String,
}

impl Backend {
    fn seen(&self, method: &str, path: &str) -> Vec<Seen> {
        self.state
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.method == method && s.path.starts_with(path))
            .cloned()
            .collect()
    }
}

async fn handle(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<BackendState>,
) -> HttpResponse {
    let path = req.uri().path().to_owned();
    let method = req.method().to_string();
    state.seen.lock().unwrap().push(Seen {
        method: method.clone(),
        path: path.clone(),
        query: req.uri().query().unwrap_or("").to_owned(),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect(),
        body: body.to_vec(),
        at: Instant::now(),
    });
    match (method.as_str(), path.as_str()) {
        ("POST", "/json") => HttpResponse::Ok().json(json!({"answer": 42})),
        ("POST", "/png") => HttpResponse::Ok().content_type("image/png").body(PNG),
        ("POST", "/big") => HttpResponse::Ok()
            .content_type("text/plain")
            .body("x".repeat(2000)),
        ("POST", p) if p.starts_with("/seg/") => HttpResponse::Ok().json(json!({"path": p})),
        ("POST", "/bad") => HttpResponse::BadRequest()
            .content_type("application/problem+json")
            .body(
                json!({"type": "about:blank", "title": "Bad input", "status": 400,
                       "detail": "the name is too short"})
                .to_string(),
            ),
        ("POST", "/denied") => HttpResponse::Forbidden().body("no entry for you"),
        ("POST", "/flaky") => {
            if state.count("flaky") == 1 {
                HttpResponse::ServiceUnavailable()
                    .insert_header(("Retry-After", "2"))
                    .body("busy, come back later")
            } else {
                HttpResponse::Ok().json(json!({"ok": true}))
            }
        }
        ("POST", "/hang") => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            HttpResponse::Ok().finish()
        }
        ("POST", "/async") => HttpResponse::Accepted()
            .insert_header(("Location", "/monitor/a1"))
            .insert_header(("Retry-After", "1"))
            .finish(),
        ("GET", "/monitor/a1") => {
            let n = state.count("monitor");
            if n <= 3 {
                HttpResponse::Ok()
                    .insert_header(("Retry-After", "1"))
                    .json(json!({"status": "running",
                                 "progress": {"percent": 25 * n, "message": format!("step {n}")}}))
            } else {
                HttpResponse::SeeOther()
                    .insert_header(("Location", "/done/a1"))
                    .finish()
            }
        }
        ("GET", "/done/a1") => HttpResponse::Ok().json(json!({"rendered": true})),
        ("POST", "/elsewhere") => HttpResponse::Accepted()
            .insert_header((
                "Location",
                format!("http://localhost:{}/monitor/a1", state.port),
            ))
            .finish(),
        ("POST", "/slow") => HttpResponse::Accepted()
            .insert_header(("Location", "/slowmon"))
            .finish(),
        ("GET", "/slowmon") => HttpResponse::Ok()
            .insert_header(("Retry-After", "1"))
            .json(json!({"status": "running", "percent": 10})),
        ("DELETE", "/slowmon") => HttpResponse::NoContent().finish(),
        ("POST", "/sync-progress") => {
            let url = req
                .headers()
                .get("progress-url")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            if let Some(url) = url {
                let answer = client_builder()
                    .build()
                    .unwrap()
                    .post(&url)
                    .json(&json!({"percent": 30, "message": "posting"}))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                *state.progress_post.lock().unwrap() = Some(answer);
            }
            tokio::time::sleep(Duration::from_secs(4)).await;
            HttpResponse::Ok().json(json!({"ok": true}))
        }
        _ => HttpResponse::NotFound().body("no such fake"),
    }
}

/// Starts the fake backend on its own thread (its own actix system, so it outlives nothing).
fn start_backend() -> Backend {
    let port = free_port();
    let state = Arc::new(BackendState {
        port,
        ..BackendState::default()
    });
    let data = web::Data::from(state.clone());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let server = HttpServer::new(move || {
                App::new()
                    .app_data(data.clone())
                    .default_service(web::to(handle))
            })
            .workers(2)
            .disable_signals()
            .bind(("127.0.0.1", port))
            .expect("bind the fake backend")
            .run();
            ready_tx.send(()).unwrap();
            let _ = server.await;
        });
    });
    ready_rx.recv().unwrap();
    Backend {
        state,
        base: format!("http://127.0.0.1:{port}"),
    }
}

const TYPES: &str = r#"
[types.h-json]
description = "A JSON backend."
example = { name = "x" }
schema = { type = "object" }
max_attempts = 1
[types.h-json.http]
url = "${ARR_E2E_BACKEND}/json"
headers = { X-Token = "${ARR_E2E_TOKEN}" }
hmac_secret = "${ARR_E2E_HMAC}"

[types.h-png]
description = "An image backend."
example = {}
schema = { type = "object" }
[types.h-png.http]
url = "${ARR_E2E_BACKEND}/png"

[types.h-big]
description = "Answers more than it may."
example = {}
schema = { type = "object" }
max_result_bytes = 1000
max_attempts = 1
[types.h-big.http]
url = "${ARR_E2E_BACKEND}/big"

[types.h-seg]
description = "A placeholder in the path and query."
example = { name = "x" }
schema = { type = "object", required = ["name"], properties = { name = { type = "string" } } }
[types.h-seg.http]
url = "${ARR_E2E_BACKEND}/seg/{name}/tail?q={name}"

[types.h-bad]
description = "Rejects the input."
example = {}
schema = { type = "object" }
[types.h-bad.http]
url = "${ARR_E2E_BACKEND}/bad"

[types.h-denied]
description = "Refuses."
example = {}
schema = { type = "object" }
[types.h-denied.http]
url = "${ARR_E2E_BACKEND}/denied"

[types.h-flaky]
description = "503 once."
example = {}
schema = { type = "object" }
max_attempts = 2
[types.h-flaky.http]
url = "${ARR_E2E_BACKEND}/flaky"

[types.h-hang]
description = "Never answers."
example = {}
schema = { type = "object" }
max_attempts = 1
[types.h-hang.http]
url = "${ARR_E2E_BACKEND}/hang"
timeout_seconds = 1

[types.h-wait]
description = "Never answers, for longer."
example = {}
schema = { type = "object" }
[types.h-wait.http]
url = "${ARR_E2E_BACKEND}/hang"

[types.h-async]
description = "An asynchronous backend."
example = {}
schema = { type = "object" }
[types.h-async.http]
url = "${ARR_E2E_BACKEND}/async"

[types.h-elsewhere]
description = "Points elsewhere."
example = {}
schema = { type = "object" }
max_attempts = 1
[types.h-elsewhere.http]
url = "${ARR_E2E_BACKEND}/elsewhere"

[types.h-slow]
description = "An asynchronous backend that never finishes."
example = {}
schema = { type = "object" }
max_run_seconds = 60
[types.h-slow.http]
url = "${ARR_E2E_BACKEND}/slow"

[types.h-chain]
description = "This project's own facade as a backend."
example = { type = "echo", input = {} }
schema = { type = "object" }
[types.h-chain.http]
url = "${ARR_E2E_FACADE}/v1/jobs"

[types.h-progress]
description = "A synchronous backend that posts progress."
example = {}
schema = { type = "object" }
[types.h-progress.http]
url = "${ARR_E2E_BACKEND}/sync-progress"
"#;

/// A backend, and a stack whose worker serves [`TYPES`] against it (and knows the facade's
/// address: progress URLs and the chain point there).
async fn fixture(name: &str) -> (Backend, Stack) {
    let backend = start_backend();
    let dir = std::env::temp_dir().join(format!("arr-e2e-http-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("job-types.toml");
    std::fs::write(&file, TYPES).unwrap();
    let options = StackOptions::default()
        .workers(0)
        .env("APP__WORKER__JOB_TYPES_FILE", file.display())
        .env("APP__SIGNING__KEYS", SIGNING_KEY)
        .env("APP__AMQP__RETRY_BASE_DELAY_MS", 200)
        .env("APP__AMQP__RETRY_MAX_DELAY_MS", 10_000)
        .env("ARR_E2E_BACKEND", &backend.base)
        .env("ARR_E2E_TOKEN", TOKEN)
        .env("ARR_E2E_HMAC", HMAC_SECRET)
        // Only the worker started below learns the facade's address (its port is chosen when
        // the stack starts); the registration before it needs some value.
        .env("ARR_E2E_FACADE", "http://127.0.0.1:9");
    let mut stack = Stack::start_with(name, options).await;
    let base = stack.base.clone();
    stack.add_worker_with(&[
        ("ARR_E2E_FACADE", &base),
        ("APP__WORKER__PROGRESS_BASE_URL", &base),
    ]);
    (backend, stack)
}

/// Polls until the job is terminal; its status document.
async fn finished(stack: &Stack, location: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let doc = stack.status_doc(location).await;
        if matches!(
            doc["status"].as_str(),
            Some("succeeded" | "failed" | "canceled")
        ) {
            return doc;
        }
        assert!(Instant::now() < deadline, "{location} unfinished: {doc}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn submit(stack: &Stack, job_type: &str, input: Value) -> String {
    stack
        .submit_ok(&json!({"type": job_type, "input": input}))
        .await
}

/// The path of a Location (the facade signs its Locations when signing keys are set).
fn path_of(location: &str) -> &str {
    location.split('?').next().unwrap_or(location)
}

#[tokio::test]
async fn synchronous_backends_results_and_failures() {
    let (backend, stack) = fixture("http-sync").await;
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    // 200 JSON, with the request's headers checked.
    let response = stack
        .http
        .post(stack.url("/v1/jobs"))
        .header("traceparent", trace)
        .json(&json!({"type": "h-json", "input": {"name": "x"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let json_job = response.headers()["location"].to_str().unwrap().to_owned();
    let png_job = submit(&stack, "h-png", json!({})).await;
    let big_job = submit(&stack, "h-big", json!({})).await;
    let seg_job = submit(&stack, "h-seg", json!({"name": "a/b?c#d&e=f"})).await;
    let bad_job = submit(&stack, "h-bad", json!({})).await;
    let denied_job = submit(&stack, "h-denied", json!({})).await;

    let doc = finished(&stack, &json_job, Duration::from_secs(20)).await;
    assert_eq!(doc["status"], "succeeded", "{doc}");
    let result = stack
        .http
        .get(stack.url(&format!("{}/result", path_of(&json_job))));
    let result = result.send().await.unwrap();
    assert_eq!(result.status(), StatusCode::OK);
    let content_type = result.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    assert_eq!(result.json::<Value>().await.unwrap(), json!({"answer": 42}));
    let id = job_id(path_of(&json_job)).to_owned();
    let seen = backend.seen("POST", "/json");
    assert_eq!(seen.len(), 1, "{seen:?}");
    let request = &seen[0];
    assert_eq!(request.headers["idempotency-key"], id);
    assert_eq!(request.headers["job-id"], id);
    assert_eq!(request.headers["x-token"], TOKEN);
    assert_eq!(request.headers["content-type"], "application/json");
    assert_eq!(
        serde_json::from_slice::<Value>(&request.body).unwrap(),
        json!({"name": "x"})
    );
    // The trace goes on: same trace id, the worker's span as parent.
    let sent = &request.headers["traceparent"];
    assert!(
        sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{sent}"
    );
    // The HMAC signs timestamp.body as webhooks do.
    let timestamp = &request.headers["webhook-timestamp"];
    let mut mac = Hmac::<Sha256>::new_from_slice(HMAC_SECRET.as_bytes()).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(&request.body);
    let expected = format!("v1={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(request.headers["webhook-signature"], expected);
    assert_eq!(request.headers["webhook-id"], id);

    // 200 PNG: served with its media type, the same bytes, an ETag that revalidates.
    let doc = finished(&stack, &png_job, Duration::from_secs(20)).await;
    assert_eq!(doc["status"], "succeeded", "{doc}");
    assert_eq!(doc["result"]["media_type"], "image/png", "{doc}");
    assert_eq!(doc["result"]["size"], PNG.len(), "{doc}");
    let url = stack.url(&format!("{}/result", path_of(&png_job)));
    let result = stack.http.get(&url).send().await.unwrap();
    assert_eq!(result.status(), StatusCode::OK);
    assert_eq!(result.headers()["content-type"], "image/png");
    let etag = result.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(result.bytes().await.unwrap().as_ref(), PNG);
    let again = stack
        .http
        .get(&url)
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);

    // Over max_result_bytes: fails, naming the limit.
    let doc = finished(&stack, &big_job, Duration::from_secs(20)).await;
    assert_eq!(doc["status"], "failed", "{doc}");
    let message = doc["error"]["detail"].as_str().unwrap();
    assert!(
        message.contains("max_result_bytes (1000 bytes)"),
        "{message}"
    );

    // A value with / ? # & arrives encoded, in one segment and one query component.
    let doc = finished(&stack, &seg_job, Duration::from_secs(20)).await;
    assert_eq!(doc["status"], "succeeded", "{doc}");
    let seen = backend.seen("POST", "/seg/");
    assert_eq!(seen[0].path, "/seg/a%2Fb%3Fc%23d%26e%3Df/tail", "{seen:?}");
    assert_eq!(seen[0].query, "q=a%2Fb%3Fc%23d%26e%3Df");

    // 400 problem+json: the client's fault (422), with the backend's detail and document.
    let doc = finished(&stack, &bad_job, Duration::from_secs(20)).await;
    assert_eq!(doc["status"], "failed", "{doc}");
    let (status, _) = stack.poll(&bad_job).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let message = doc["error"]["detail"].as_str().unwrap();
    assert!(message.contains("the name is too short"), "{message}");
    assert!(message.contains("400"), "{message}");
    assert_eq!(doc["error"]["backend"]["title"], "Bad input", "{doc}");
    assert_eq!(backend.seen("POST", "/bad").len(), 1, "not retried");

    // Another 4xx: the backend's refusal (424), not retried, the body quoted.
    let doc = finished(&stack, &denied_job, Duration::from_secs(20)).await;
    assert_eq!(doc["status"], "failed", "{doc}");
    let (status, _) = stack.poll(&denied_job).await;
    assert_eq!(status, StatusCode::FAILED_DEPENDENCY);
    let message = doc["error"]["detail"].as_str().unwrap();
    assert!(
        message.contains("403") && message.contains("no entry for you"),
        "{message}"
    );
    assert_eq!(backend.seen("POST", "/denied").len(), 1, "not retried");
}

#[tokio::test]
async fn asynchronous_backends_are_polled_and_canceled() {
    let (backend, stack) = fixture("http-async").await;
    let async_job = submit(&stack, "h-async", json!({})).await;
    let elsewhere_job = submit(&stack, "h-elsewhere", json!({})).await;
    let chain_job = submit(
        &stack,
        "h-chain",
        json!({"type": "echo", "input": {"hi": 1}}),
    )
    .await;
    let slow_job = submit(&stack, "h-slow", json!({})).await;

    // 202 + Location, polled: the monitor's progress shows while running, then the result.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut progress_seen = None;
    loop {
        let doc = stack.status_doc(&async_job).await;
        if doc["status"] == "running" && doc["progress"]["percent"].as_f64().unwrap_or(0.0) > 0.0 {
            progress_seen = Some(doc["progress"].clone());
        }
        if doc["status"] == "succeeded" || doc["status"] == "failed" {
            assert_eq!(doc["status"], "succeeded", "{doc}");
            break;
        }
        assert!(Instant::now() < deadline, "{doc}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let progress = progress_seen.expect("progress seen while running");
    assert!(
        progress["message"].as_str().unwrap().starts_with("step "),
        "{progress}"
    );
    let result = stack
        .get_json(&format!("{}/result", path_of(&async_job)))
        .await;
    assert_eq!(result, json!({"rendered": true}));
    assert!(backend.seen("GET", "/monitor/a1").len() >= 4);
    assert_eq!(backend.seen("GET", "/done/a1").len(), 1);

    // A Location on another host is refused (and not fetched).
    let doc = finished(&stack, &elsewhere_job, Duration::from_secs(20)).await;
    assert_eq!(doc["status"], "failed", "{doc}");
    let message = doc["error"]["detail"].as_str().unwrap();
    assert!(message.contains("another origin"), "{message}");
    assert!(message.contains("localhost"), "{message}");

    // This project's own facade as the backend: 202, monitor, 303, result.
    let doc = finished(&stack, &chain_job, Duration::from_secs(20)).await;
    assert_eq!(doc["status"], "succeeded", "{doc}");
    let result = stack
        .get_json(&format!("{}/result", path_of(&chain_job)))
        .await;
    assert_eq!(result, json!({"hi": 1}));

    // Cancel while the monitor is being polled: the monitor gets a DELETE, confirmed.
    let deadline = Instant::now() + Duration::from_secs(20);
    while backend.seen("GET", "/slowmon").is_empty() {
        assert!(
            Instant::now() < deadline,
            "the slow monitor was never polled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let response = stack.cancel(path_of(&slow_job)).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let doc = finished(&stack, &slow_job, Duration::from_secs(20)).await;
    assert_eq!(doc["status"], "canceled", "{doc}");
    assert_eq!(doc["backend_cancel"]["confirmed"], true, "{doc}");
    let detail = doc["backend_cancel"]["detail"].as_str().unwrap();
    assert!(
        detail.contains("DELETE") && detail.contains("204"),
        "{detail}"
    );
    assert_eq!(backend.seen("DELETE", "/slowmon").len(), 1);
}

#[tokio::test]
async fn transient_failures_are_retried_after_retry_after_and_timeouts_fail() {
    let (backend, stack) = fixture("http-retry").await;
    let flaky_job = submit(&stack, "h-flaky", json!({})).await;
    let hang_job = submit(&stack, "h-hang", json!({})).await;

    let doc = finished(&stack, &flaky_job, Duration::from_secs(30)).await;
    assert_eq!(doc["status"], "succeeded", "{doc}");
    assert_eq!(doc["attempts"], 2, "{doc}");
    let seen = backend.seen("POST", "/flaky");
    assert_eq!(seen.len(), 2);
    let waited = seen[1].at - seen[0].at;
    // Retry-After: 2, though the back-off alone would be 200 ms.
    assert!(waited >= Duration::from_millis(1900), "{waited:?}");
    // The same job: the same idempotency key on both attempts.
    assert_eq!(
        seen[0].headers["idempotency-key"],
        seen[1].headers["idempotency-key"]
    );

    // A synchronous request canceled: aborted, and said to be unconfirmed.
    let wait_job = submit(&stack, "h-wait", json!({})).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while backend.seen("POST", "/hang").len() < 2 {
        assert!(Instant::now() < deadline, "the waiting request never came");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let response = stack.cancel(path_of(&wait_job)).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let doc = finished(&stack, &wait_job, Duration::from_secs(20)).await;
    assert_eq!(doc["status"], "canceled", "{doc}");
    assert_eq!(doc["backend_cancel"]["confirmed"], false, "{doc}");
    let detail = doc["backend_cancel"]["detail"].as_str().unwrap();
    assert!(detail.contains("aborted"), "{detail}");

    let doc = finished(&stack, &hang_job, Duration::from_secs(30)).await;
    assert_eq!(doc["status"], "failed", "{doc}");
    let message = doc["error"]["detail"].as_str().unwrap();
    assert!(message.contains("timed out"), "{message}");
    // Transient: it would have been retried, had the type allowed more than one attempt.
    assert_eq!(doc["error"]["kind"], "retries-exhausted", "{doc}");
}

#[tokio::test]
async fn a_synchronous_backend_posts_progress_to_its_signed_url() {
    let (backend, stack) = fixture("http-progress").await;
    let location = submit(&stack, "h-progress", json!({})).await;
    // The event stream, read to its end (it closes after the job's last change).
    let events = stack
        .http
        .get(stack.url(&format!("{}/events", path_of(&location))))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), StatusCode::OK);
    let events = tokio::spawn(events.text());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let doc = stack.status_doc(&location).await;
        if doc["status"] == "running" && doc["progress"]["percent"] == 30.0 {
            assert_eq!(doc["progress"]["message"], "posting");
            break;
        }
        assert_ne!(doc["status"], "succeeded", "progress never seen: {doc}");
        assert!(Instant::now() < deadline, "{doc}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(*backend.state.progress_post.lock().unwrap(), Some(204));
    let seen = backend.seen("POST", "/sync-progress");
    let progress_url = seen[0].headers["progress-url"].clone();
    let id = job_id(path_of(&location)).to_owned();
    assert!(
        progress_url.starts_with(&stack.url(&format!("/v1/jobs/{id}/progress?tenant="))),
        "{progress_url}"
    );

    // The read-signed Location grants no progress posting, and nothing at all does not either.
    let read_query = location.split_once('?').expect("a signed Location").1;
    let report = json!({"percent": 99});
    for url in [
        stack.url(&format!("/v1/jobs/{id}/progress?{read_query}")),
        stack.url(&format!("/v1/jobs/{id}/progress")),
    ] {
        let response = stack.http.post(&url).json(&report).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{url}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }
    // A bad body is a 422 problem.
    let response = stack
        .http
        .post(&progress_url)
        .json(&json!({"percent": 140}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // The progress URL does not read the job.
    let progress_query = progress_url.split_once('?').unwrap().1;
    let response = stack
        .http
        .get(stack.url(&format!("/v1/jobs/{id}?{progress_query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);

    let doc = finished(&stack, &location, Duration::from_secs(20)).await;
    assert_eq!(doc["status"], "succeeded", "{doc}");
    let events = tokio::time::timeout(Duration::from_secs(10), events)
        .await
        .expect("the event stream closed")
        .unwrap()
        .unwrap();
    assert!(
        events
            .split("\n\n")
            .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .any(|d| d["status"] == "running"
                && d["progress"]["percent"] == 30.0
                && d["progress"]["message"] == "posting"),
        "the posted progress is not in the event stream: {events}"
    );
    // Once finished, progress is refused (409), and the document keeps its outcome.
    let response = stack
        .http
        .post(&progress_url)
        .json(&json!({"percent": 50}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CONFLICT);
    let doc = stack.status_doc(&location).await;
    assert_eq!(doc["status"], "succeeded", "{doc}");
}
