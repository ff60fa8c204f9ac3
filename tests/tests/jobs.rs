//! The happy paths and the failure path of each built-in job type, through the real facade and
//! a real worker: submit, poll the status monitor, follow the 303, read the result.

use std::time::Duration;

use e2e::{job_id, Stack, StackOptions};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const LONG: Duration = Duration::from_secs(60);

#[tokio::test]
async fn echo_returns_its_input_through_a_303() {
    let stack = Stack::start("echo").await;
    let input = json!({"hello": "world", "n": [1, 2, 3], "nested": {"ok": true}});
    let response = stack.submit(&json!({"type": "echo", "input": input})).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with("/v1/jobs/"));
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    assert!(response.headers().contains_key("etag"));
    let doc: Value = response.json().await.unwrap();
    assert_eq!(doc["status"], "queued");
    assert_eq!(doc["type"], "echo");
    assert_eq!(doc["id"], job_id(&location));
    assert_eq!(doc["links"]["self"], location);

    // A plain polling loop that follows redirects ends with the result.
    let done = stack.wait(&location, LONG).await;
    assert_eq!(done.status(), StatusCode::OK);
    assert_eq!(done.url().path(), format!("{location}/result"));
    assert_eq!(done.json::<Value>().await.unwrap(), input);

    // The status monitor itself answers 303 See Other to the result.
    let monitor = stack
        .http_no_redirect
        .get(stack.url(&location))
        .send()
        .await
        .unwrap();
    assert_eq!(monitor.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        monitor.headers()["location"],
        format!("{location}/result").as_str()
    );
    let doc: Value = monitor.json().await.unwrap();
    assert_eq!(doc["status"], "succeeded");
    assert_eq!(doc["attempts"], 1);
    for stamp in ["created_at", "started_at", "finished_at"] {
        assert!(doc[stamp].is_string(), "{stamp} missing in {doc}");
    }
}

#[tokio::test]
async fn sleep_reports_progress_while_running() {
    let stack = Stack::start("sleep").await;
    let location = stack
        .submit_ok(&json!({"type": "sleep", "input": {"seconds": 1.5}}))
        .await;
    // While it runs: 202 with Location (itself), Retry-After, and rising progress.
    let mut seen_running = false;
    let mut last_percent = -1.0;
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let r = stack
            .http_no_redirect
            .get(stack.url(&location))
            .send()
            .await
            .unwrap();
        if r.status() != StatusCode::ACCEPTED {
            assert_eq!(r.status(), StatusCode::SEE_OTHER);
            break;
        }
        assert_eq!(r.headers()["location"], location.as_str());
        assert!(r.headers().contains_key("retry-after"));
        let doc: Value = r.json().await.unwrap();
        if doc["status"] == "running" {
            seen_running = true;
            assert!(doc["started_at"].is_string());
            if let Some(p) = doc["progress"]["percent"].as_f64() {
                assert!(
                    p >= last_percent,
                    "progress went back: {p} < {last_percent}"
                );
                last_percent = p;
            }
        }
        assert!(std::time::Instant::now() < deadline, "sleep never finished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen_running, "never saw the job running");
    assert!(last_percent > 0.0, "never saw progress above 0");
    let result: Value = stack.wait(&location, LONG).await.json().await.unwrap();
    assert_eq!(result, json!({"slept_seconds": 1.5}));
}

/// SplitMix64, written again here so the test checks the worker against an independent copy.
fn generated_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(n);
    out
}

#[tokio::test]
async fn hash_computes_the_sha256_of_its_generated_bytes() {
    let stack = Stack::start("hash").await;
    for (bytes, seed) in [(0usize, 0u64), (1, 1), (12_345_679, 99)] {
        let location = stack
            .submit_ok(&json!({"type": "hash", "input": {"bytes": bytes, "seed": seed}}))
            .await;
        let result: Value = stack.wait(&location, LONG).await.json().await.unwrap();
        let expected = hex::encode(Sha256::digest(generated_bytes(seed, bytes)));
        assert_eq!(result["sha256"], expected, "bytes={bytes} seed={seed}");
        assert_eq!(result["bytes"], bytes);
        let doc = stack.status_doc(&location).await;
        assert_eq!(doc["progress"]["percent"], 100.0);
    }
}

#[tokio::test]
async fn a_failed_job_answers_424_with_its_status_document() {
    let stack = Stack::start("fail").await;
    let location = stack
        .submit_ok(&json!({"type": "fail", "input": {"message": "disk on fire"}}))
        .await;
    let response = stack.wait(&location, LONG).await;
    assert_eq!(response.status(), StatusCode::FAILED_DEPENDENCY);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["status"], 424);
    assert_eq!(problem["instance"], location);
    assert_eq!(problem["detail"], "disk on fire");
    assert_eq!(problem["job"]["status"], "failed");
    assert_eq!(problem["job"]["error"]["detail"], "disk on fire");
    assert_eq!(problem["job"]["error"]["retryable"], false);
    assert!(problem["job"]["finished_at"].is_string());

    // The result resource answers the same as the status monitor.
    let result = stack
        .http
        .get(stack.url(&format!("{location}/result")))
        .send()
        .await
        .unwrap();
    assert_eq!(result.status(), StatusCode::FAILED_DEPENDENCY);
    assert_eq!(
        result.json::<Value>().await.unwrap()["job"]["id"],
        job_id(&location)
    );
}

#[tokio::test]
async fn a_job_that_rejects_its_input_answers_422() {
    let stack = Stack::start("reject").await;
    let location = stack
        .submit_ok(&json!({"type": "fail", "input": {"message": "n must be prime", "kind": "input-rejected"}}))
        .await;
    let response = stack.wait(&location, LONG).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["job"]["error"]["kind"], "input-rejected");
    assert_eq!(problem["detail"], "n must be prime");
}

#[tokio::test]
async fn result_is_202_while_pending_and_etags_make_polls_cheap() {
    let stack = Stack::start("etag").await;
    let location = stack
        .submit_ok(&json!({"type": "sleep", "input": {"seconds": 1.0}}))
        .await;
    let result_path = format!("{location}/result");
    let pending = stack
        .http_no_redirect
        .get(stack.url(&result_path))
        .send()
        .await
        .unwrap();
    assert_eq!(pending.status(), StatusCode::ACCEPTED);
    assert_eq!(pending.headers()["location"], location.as_str());
    assert!(pending.headers().contains_key("retry-after"));

    // Wait for the end, then revalidate with the ETag: 304, no body.
    let done = stack.wait(&location, LONG).await;
    assert_eq!(done.status(), StatusCode::OK);
    let monitor = stack
        .http_no_redirect
        .get(stack.url(&location))
        .send()
        .await
        .unwrap();
    let etag = monitor.headers()["etag"].to_str().unwrap().to_owned();
    let again = stack
        .http_no_redirect
        .get(stack.url(&location))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(again.headers()["etag"], etag.as_str());
    let other = stack
        .http_no_redirect
        .get(stack.url(&location))
        .header("if-none-match", "\"something-else\"")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn status_and_result_live_in_redis_under_the_configured_prefix_and_expire() {
    let stack = Stack::start("layout").await;
    let location = stack.submit_ok(&json!({"type": "echo", "input": 7})).await;
    stack.wait(&location, LONG).await;
    let id = job_id(&location);
    assert_eq!(
        stack.job_field(id, "state").await.as_deref(),
        Some("succeeded")
    );
    assert_eq!(stack.job_field(id, "result").await.as_deref(), Some("7"));
    let mut conn = stack.redis().await;
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("{}:default:job:{{{id}}}", stack.prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 86_400, "job hash TTL {ttl}");
    let tomb_ttl: i64 = redis::cmd("TTL")
        .arg(format!("{}:default:tomb:{{{id}}}", stack.prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        tomb_ttl > ttl,
        "tombstone must outlive the job: {tomb_ttl} vs {ttl}"
    );
}

#[tokio::test]
async fn an_expired_job_answers_410_while_its_tombstone_lasts() {
    let stack = Stack::start("gone").await;
    let location = stack.submit_ok(&json!({"type": "echo", "input": 1})).await;
    stack.wait(&location, LONG).await;
    // Let retention run out now.
    let mut conn = stack.redis().await;
    redis::cmd("DEL")
        .arg(format!(
            "{}:default:job:{{{}}}",
            stack.prefix,
            job_id(&location)
        ))
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let response = stack.http.get(stack.url(&location)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::GONE);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    redis::cmd("DEL")
        .arg(format!(
            "{}:default:tomb:{{{}}}",
            stack.prefix,
            job_id(&location)
        ))
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let response = stack.http.get(stack.url(&location)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn polls_of_an_unchanged_job_are_answered_from_the_facade_and_see_each_change() {
    // No worker: the job stays queued until this test writes its document, as a worker would.
    let stack = Stack::start_with("pollcache", StackOptions::default().workers(0)).await;
    let location = stack.submit_ok(&json!({"type": "echo", "input": 1})).await;
    let id = job_id(&location).to_owned();
    let hits = stack.poll_cache_count("hit").await;
    let first = stack.status_doc(&location).await;
    assert_eq!(first["status"], "queued");
    for _ in 0..5 {
        assert_eq!(stack.status_doc(&location).await, first);
    }
    assert!(
        stack.poll_cache_count("hit").await >= hits + 5,
        "repeated polls of an unchanged job did not come from the cache"
    );

    // A write from another connection (a worker's) invalidates the kept document: polls show
    // it at once (within the invalidation's trip), never the old one after that.
    let key = format!("{}:default:job:{{{id}}}", stack.prefix);
    let mut changed = first.clone();
    changed["status"] = json!("running");
    changed["attempts"] = json!(1);
    let mut redis = stack.redis().await;
    let _: () = redis::cmd("HSET")
        .arg(&key)
        .arg("doc")
        .arg(changed.to_string())
        .arg("state")
        .arg("running")
        .query_async(&mut redis)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        let doc = stack.status_doc(&location).await;
        if doc == changed {
            break;
        }
        assert_eq!(doc, first, "neither the old nor the new document");
        assert!(
            std::time::Instant::now() < deadline,
            "the change did not show within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for _ in 0..5 {
        assert_eq!(stack.status_doc(&location).await, changed);
    }

    // A deleted job is not served from the cache either.
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        let status = stack
            .http_no_redirect
            .get(stack.url(&location))
            .send()
            .await
            .unwrap()
            .status();
        if status == StatusCode::NOT_FOUND {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a deleted job was still served after 2 s ({status})"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
