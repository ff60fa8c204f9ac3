//! The operators' dashboard: `GET /v1/overview` counts what it should, the page's assets are
//! served with their types, ETags and Content-Security-Policy, and, in a real headless
//! Chromium against the real stack, a person can submit a `sleep` job from the form, watch its
//! progress move, cancel it and see it canceled, with no error in the browser console. The
//! browser test saves screenshots to `target/dashboard.png` (running) and
//! `target/dashboard-canceled.png`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use e2e::browser::Browser;
use e2e::{Stack, StackOptions};
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn overview(stack: &Stack) -> Value {
    stack.get_json("/v1/overview").await
}

/// Polls the overview (it is recomputed at most once a second) until `check` holds.
async fn wait_overview(stack: &Stack, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = overview(stack).await;
        if check(&o) {
            return o;
        }
        assert!(Instant::now() < deadline, "{what}: last overview {o:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn overview_counts_the_queue_the_workers_and_jobs_by_state() {
    // No worker at first: submitted jobs wait in the queue.
    let mut stack = Stack::start_with("overview", StackOptions::default().workers(0)).await;
    let o = overview(&stack).await;
    assert_eq!(o["queue"]["name"], json!(stack.queue), "{o}");
    assert_eq!(o["workers"]["live"], json!(0), "{o}");
    assert_eq!(o["jobs"]["indexed"], json!(0), "{o}");
    for state in ["queued", "running", "succeeded", "failed", "canceled"] {
        assert_eq!(o["jobs_by_state"][state], json!(0), "{state}: {o}");
    }

    for _ in 0..3 {
        stack
            .submit_ok(&json!({"type": "echo", "input": {"n": 1}}))
            .await;
    }
    stack
        .submit_ok(&json!({"type": "fail", "input": {"message": "no"}}))
        .await;
    let canceled = stack
        .submit_ok(&json!({"type": "sleep", "input": {"seconds": 5}}))
        .await;
    let response = stack
        .http
        .delete(stack.url(&canceled))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(response.status(), StatusCode::ACCEPTED);

    let o = wait_overview(&stack, "five jobs queued", |o| {
        o["queue"]["depth"] == json!(5) && o["jobs_by_state"]["queued"] == json!(4)
    })
    .await;
    assert_eq!(o["jobs_by_state"]["canceled"], json!(1), "{o}");
    assert_eq!(o["queue"]["consumers"], json!(0), "{o}");
    assert_eq!(
        o["jobs"],
        json!({"indexed": 5, "counted": 5, "complete": true}),
        "{o}"
    );

    // A worker takes them: the queue drains and the states move on.
    stack.add_worker();
    let o = wait_overview(&stack, "jobs done", |o| {
        o["jobs_by_state"]["succeeded"] == json!(3)
            && o["jobs_by_state"]["failed"] == json!(1)
            && o["queue"]["depth"] == json!(0)
            && o["workers"]["live"] == json!(1)
    })
    .await;
    assert_eq!(o["jobs_by_state"]["queued"], json!(0), "{o}");
    assert_eq!(o["jobs_by_state"]["canceled"], json!(1), "{o}");
    assert_eq!(o["queue"]["consumers"], json!(1), "{o}");
    assert_eq!(o["workers"]["capacity"], json!(8), "{o}");
    assert!(o["generated_at"].as_str().is_some(), "{o}");
}

#[tokio::test]
async fn dashboard_assets_have_types_etags_and_a_strict_policy() {
    let stack = Stack::start_with("dashboard-assets", StackOptions::default().workers(0)).await;
    for (path, content_type) in [
        ("/dashboard", "text/html; charset=utf-8"),
        ("/dashboard/app.js", "text/javascript; charset=utf-8"),
        ("/dashboard/app.css", "text/css; charset=utf-8"),
        ("/dashboard/favicon.svg", "image/svg+xml"),
    ] {
        let response = stack.http.get(stack.url(path)).send().await.expect(path);
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let h = response.headers().clone();
        assert_eq!(h["content-type"], content_type, "{path}");
        assert_eq!(h["cache-control"], "no-cache", "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("script-src 'self';"),
            "{path}: {csp}"
        );
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        let etag = h["etag"].to_str().unwrap().to_owned();
        assert!(!response.bytes().await.unwrap().is_empty(), "{path}");

        // Revalidation is a 304 without a body.
        let again = stack
            .http
            .get(stack.url(path))
            .header("if-none-match", &etag)
            .send()
            .await
            .expect(path);
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{path}");
        assert_eq!(again.headers()["etag"], etag.as_str(), "{path}");
    }

    // Compressed for clients that ask (the script is the largest asset).
    let response = stack
        .http
        .get(stack.url("/dashboard/app.js"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .expect("gzip");
    assert_eq!(response.headers()["content-encoding"], "gzip");

    // The form offers the registered types (GET /v1/job-types, which the page reads); the
    // page no longer carries a catalog of its own.
    let types: Value = stack.get_json("/v1/job-types").await;
    let names: Vec<&str> = types["job_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["echo", "fail", "hash", "sleep"]);
    assert_eq!(types["job_types"][3]["example"], json!({"seconds": 0.5}));
    let script = stack.get_text("/dashboard/app.js").await;
    assert!(script.contains("'/v1/job-types'"));
    let gone = stack
        .http
        .get(stack.url("/dashboard/job-types.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);

    let response = stack
        .http
        .get(stack.url("/dashboard/nothing.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let response = stack
        .http
        .post(stack.url("/dashboard"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
}

/// Waits (up to 30 s) until `script` returns `expected` in the page.
async fn wait_js(browser: &Browser, script: &str, expected: Value, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = browser.execute(script, json!([])).await;
        if got == expected {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {script} gave {got}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn target_dir() -> PathBuf {
    // target/<profile>/api -> target
    let api = e2e::bin("api");
    api.parent()
        .and_then(|p| p.parent())
        .expect("target dir")
        .to_path_buf()
}

/// Reads a percentage such as "17%" ("" reads as none).
fn percent(text: &str) -> Option<u32> {
    text.trim().strip_suffix('%')?.parse().ok()
}

#[tokio::test]
async fn dashboard_in_a_real_browser_submits_watches_and_cancels() {
    e2e::browser::require();
    let stack = Stack::start_with(
        "dashboard-browser",
        StackOptions::default().env("APP__WORKER__PROGRESS_INTERVAL_MS", 100),
    )
    .await;
    // Some history for the page to show.
    for body in [
        json!({"type": "echo", "input": {"hello": "world"}}),
        json!({"type": "hash", "input": {"bytes": 20_000_000, "seed": 7}}),
        json!({"type": "fail", "input": {"message": "disk on fire"}}),
    ] {
        let location = stack.submit_ok(&body).await;
        stack.wait(&location, Duration::from_secs(60)).await;
    }

    let browser = Browser::start(1440, 1000).await;
    browser.goto(&stack.url("/dashboard")).await;
    let long = Duration::from_secs(30);

    // The overview and the list come in.
    browser
        .wait_text("#conn-text", long, "connection", |t| t == "live")
        .await;
    browser
        .wait_text("#workers-live", long, "live workers", |t| t == "1")
        .await;
    browser
        .wait_text("#queue-depth", long, "queue depth", |t| t == "0")
        .await;
    browser
        .wait_text("#states .s-failed b", long, "one failed job counted", |t| {
            t == "1"
        })
        .await;
    browser.wait_for("#jobs-body tr:nth-child(3)", long).await;

    // Filtering by state lists only those jobs (the stat buttons and the chips do the same).
    let rows = "return document.querySelectorAll('#jobs-body tr').length";
    browser.click("#filters button[data-state='failed']").await;
    wait_js(&browser, rows, json!(1), "only the failed job listed").await;
    assert_eq!(browser.text("#jobs-body tr .pill").await, "failed");
    browser.click("#filters button[data-state='']").await;
    wait_js(&browser, rows, json!(3), "all three listed again").await;

    // Submit a sleep from the form.
    browser.click("#submit-type option[value='sleep']").await;
    browser.fill("#submit-input", r#"{"seconds": 60}"#).await;
    browser.click("#submit-button").await;

    // Its detail opens, and its progress moves.
    browser
        .wait_text("#detail-type", long, "detail of the sleep job", |t| {
            t == "sleep"
        })
        .await;
    let id = browser.text("#detail-id").await;
    assert_eq!(id.len(), 36, "job id in the detail: {id:?}");
    browser
        .wait_text("#detail-status", long, "running", |t| t == "running")
        .await;
    let first = browser
        .wait_text("#detail-percent", long, "some progress", |t| {
            percent(t).is_some_and(|p| p >= 1)
        })
        .await;
    let first = percent(&first).unwrap();
    browser
        .wait_text("#detail-percent", long, "progress moving", |t| {
            percent(t).is_some_and(|p| p >= first + 2)
        })
        .await;
    // The new job's row in the list moves too.
    let row = format!("#jobs-body tr[data-id='{id}']");
    browser.wait_for(&row, long).await;
    browser
        .wait_text(&format!("{row} .pill"), long, "row running", |t| {
            t == "running"
        })
        .await;
    browser
        .wait_text("#states .s-running b", long, "running counted", |t| {
            t == "1"
        })
        .await;
    browser
        .screenshot(&target_dir().join("dashboard.png"))
        .await;

    // Cancel it from the page.
    browser.click("#cancel-button").await;
    browser
        .wait_text("#detail-status", long, "canceled", |t| t == "canceled")
        .await;
    browser
        .wait_text(&format!("{row} .pill"), long, "row canceled", |t| {
            t == "canceled"
        })
        .await;
    browser
        .wait_text(
            "#detail-history li:last-child .what",
            long,
            "history ends canceled",
            |t| t == "canceled",
        )
        .await;
    let hidden = browser
        .execute(
            "return document.getElementById('cancel-button').hidden",
            json!([]),
        )
        .await;
    assert_eq!(hidden, json!(true), "no cancel button on a canceled job");
    browser
        .wait_text("#states .s-canceled b", long, "canceled counted", |t| {
            t == "1"
        })
        .await;
    browser
        .screenshot(&target_dir().join("dashboard-canceled.png"))
        .await;

    // The service agrees.
    let doc = stack.status_doc(&format!("/v1/jobs/{id}")).await;
    assert_eq!(doc["status"], json!("canceled"), "{doc}");

    // A bad input is refused by the service and shown on the form, nothing submitted.
    browser.fill("#submit-input", r#"{"seconds": -1}"#).await;
    browser.click("#submit-button").await;
    let error = browser
        .wait_text("#submit-error", long, "422 shown", |t| {
            t.contains("input.seconds")
        })
        .await;
    assert!(!error.is_empty());

    // An API key typed in stays in the tab and goes with every request; with keys off the
    // service ignores it and the page stays live.
    browser.click("#key-summary").await;
    browser.fill("#key-input", "operator-key").await;
    browser.click("#key-form button[type='submit']").await;
    browser
        .wait_text("#key-summary", long, "key kept", |t| t == "API key ✓")
        .await;
    let stored = browser
        .execute(
            "return sessionStorage.getItem('arr.dashboard.apiKey')",
            json!([]),
        )
        .await;
    assert_eq!(stored, json!("operator-key"));
    browser
        .wait_text("#conn-text", long, "still live with a key", |t| t == "live")
        .await;

    let log = browser.console_log().await;
    let errors: Vec<&Value> = log
        .iter()
        .filter(|e| e["level"] == json!("SEVERE"))
        .collect();
    // The 422 of the bad submit is logged by the browser as a failed load: expected. Anything
    // else (a script error, a CSP violation, a missing asset) is not.
    let unexpected: Vec<&&Value> = errors
        .iter()
        .filter(|e| {
            let m = e["message"].as_str().unwrap_or("");
            !(m.contains("/v1/jobs ") && m.contains("422"))
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "browser console errors: {unexpected:#?}"
    );
    browser.quit().await;
}

/// With authentication on, the page asks for a key, says when a key is not an operator's, and
/// shows the live figures once an operator key is entered (kept in the tab, sent as Bearer).
#[tokio::test]
async fn the_dashboard_asks_for_an_operator_key_when_auth_is_on() {
    use sha2::{Digest, Sha256};
    let (ops, user) = ("dash-ops-key-0123456789", "dash-user-key-0123456789");
    let digest = |k: &str| hex::encode(Sha256::digest(k.as_bytes()));
    let keys = format!(
        "ops:acme:{}:operator,web:acme:{}",
        digest(ops),
        digest(user)
    );
    let options = StackOptions::default()
        .workers(0)
        .api_env("APP__AUTH__ENABLED", "true")
        .api_env("APP__AUTH__KEYS", keys);
    let stack = Stack::start_with("dash-auth", options).await;
    let browser = Browser::start(1280, 900).await;
    browser.goto(&stack.url("/dashboard")).await;
    let wait = Duration::from_secs(20);
    browser
        .wait_text("#banner", wait, "asks for a key", |t| t.contains("API key"))
        .await;
    assert_eq!(browser.text("#queue-depth").await, "–");

    // A key that is not an operator's: the page says so.
    browser.fill("#key-input", user).await;
    browser.click("#key-form button[type=submit]").await;
    browser
        .wait_text("#banner", wait, "not an operator", |t| {
            t.contains("operator key")
        })
        .await;

    // The operator's key (the key form is open again): the figures appear, the banner goes.
    browser.fill("#key-input", ops).await;
    browser.click("#key-form button[type=submit]").await;
    browser
        .wait_text("#queue-depth", wait, "queue depth shown", |t| t == "0")
        .await;
    assert_eq!(browser.text("#banner").await, "", "the banner is hidden");
    browser.quit().await;
}

/// A result that is not JSON (issue 18): the dashboard shows an image as an image (fetched with
/// the caller's key, shown from a `blob:` URL the page's policy allows) and offers other bytes
/// as a download naming their type and size, where a JSON result is printed.
#[tokio::test]
async fn the_dashboard_shows_an_image_result_and_offers_other_bytes_as_a_download() {
    e2e::browser::require();
    let dir = std::env::temp_dir().join(format!("arr-dashboard-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let svg = r##"<svg xmlns="http://www.w3.org/2000/svg" width="120" height="40"><rect width="120" height="40" fill="#1f6feb"/></svg>"##;
    let file = dir.join("job-types.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[types.badge]
description = "An SVG badge."
example = {{}}
schema = {{ type = "object" }}
priorities = true
[types.badge.command]
argv = ["/bin/echo", '{svg}']
result_media_type = "image/svg+xml"

[types.packed]
description = "The input, gzipped."
example = {{}}
schema = {{ type = "object" }}
priorities = true
[types.packed.command]
argv = ["/bin/gzip", "-c", "-n"]
result_media_type = "application/gzip"
"#
        ),
    )
    .expect("job-types file");
    // The harness cleans up `<queue>.work`: the declared types share it.
    let stack = Stack::start_with(
        "dashboard-bytes",
        StackOptions::default()
            .env("APP__WORKER__JOB_TYPES_FILE", file.display())
            .env("APP__AMQP__TYPE_QUEUES__BADGE", "work")
            .env("APP__AMQP__TYPE_QUEUES__PACKED", "work"),
    )
    .await;
    let long = Duration::from_secs(30);
    let mut ids = Vec::new();
    for job_type in ["badge", "packed"] {
        let location = stack
            .submit_ok(&json!({"type": job_type, "input": {"n": 1}}))
            .await;
        assert_eq!(stack.wait(&location, long).await.status(), StatusCode::OK);
        ids.push(e2e::job_id(&location).to_owned());
    }

    let browser = Browser::start(1280, 900).await;
    browser
        .goto(&stack.url(&format!("/dashboard#{}", ids[0])))
        .await;
    browser
        .wait_text("#detail-status", long, "the badge job succeeded", |t| {
            t == "succeeded"
        })
        .await;
    // The image is loaded (decoded: it has a width) and the text view is hidden.
    wait_js(
        &browser,
        "const i = document.getElementById('detail-result-image'); \
         return !i.hidden && i.complete && i.naturalWidth === 120 && i.src.startsWith('blob:') \
           && document.getElementById('detail-result').hidden",
        json!(true),
        "the SVG result shown as an image",
    )
    .await;
    browser
        .screenshot(&target_dir().join("dashboard-image-result.png"))
        .await;

    // Another job's bytes: a download link with their type and size, no image.
    browser
        .click(&format!("#jobs-body tr[data-id='{}']", ids[1]))
        .await;
    browser
        .wait_text(
            "#detail-result-download",
            long,
            "a download of the gzip result",
            |t| t.starts_with("Download (application/gzip, ") && t.ends_with(" bytes)"),
        )
        .await;
    wait_js(
        &browser,
        "return document.getElementById('detail-result-image').hidden \
           && document.getElementById('detail-result-download').href.startsWith('blob:')",
        json!(true),
        "no image for the gzip result, and a blob link",
    )
    .await;
    browser.quit().await;
    let _ = std::fs::remove_dir_all(&dir);
}
