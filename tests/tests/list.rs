//! `GET /v1/jobs`: newest first, paginated by an opaque cursor (also in a `Link` header),
//! filtered by status and type, with every bad parameter a 422 problem naming it.

use std::collections::HashSet;
use std::time::Duration;

use e2e::{job_id, Stack, StackOptions};
use reqwest::StatusCode;
use serde_json::{json, Value};

struct Page {
    ids: Vec<String>,
    docs: Vec<Value>,
    next_cursor: Option<String>,
    link: Option<String>,
}

async fn page(stack: &Stack, path: &str) -> Page {
    let r = stack.http.get(stack.url(path)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{path}");
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let link = r
        .headers()
        .get("link")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = r.json().await.unwrap();
    let docs = body["jobs"].as_array().expect("jobs array").clone();
    Page {
        ids: docs
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_owned())
            .collect(),
        docs,
        next_cursor: body["next_cursor"].as_str().map(str::to_owned),
        link,
    }
}

/// The target of a `Link: <…>; rel="next"` header.
fn next_target(link: &str) -> String {
    assert!(link.ends_with("; rel=\"next\""), "{link}");
    link[1..link.find('>').unwrap()].to_owned()
}

/// Creation time in milliseconds (the index's order; finer stamps may tie within one).
fn created_ms(doc: &Value) -> i64 {
    let stamp = doc["created_at"].as_str().unwrap();
    chrono::DateTime::parse_from_rfc3339(stamp)
        .unwrap()
        .timestamp_millis()
}

async fn problem_422(stack: &Stack, path: &str) -> Value {
    let r = stack.http.get(stack.url(path)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{path}");
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    r.json().await.unwrap()
}

#[tokio::test]
async fn lists_newest_first_and_pages_cover_every_job_once() {
    let stack = Stack::start_with("list-pages", StackOptions::default().workers(0)).await;
    let mut submitted = Vec::new();
    for n in 0..25 {
        let loc = stack.submit_ok(&json!({"type": "echo", "input": n})).await;
        submitted.push(job_id(&loc).to_owned());
    }

    // Default limit 20.
    let all = page(&stack, "/v1/jobs").await;
    assert_eq!(all.ids.len(), 20);
    assert_eq!(all.ids[0], submitted[24], "newest first");

    // Three pages of 10, 10 and 5, following the Link header.
    let mut seen = Vec::new();
    let mut docs = Vec::new();
    let mut path = "/v1/jobs?limit=10".to_owned();
    let mut sizes = Vec::new();
    loop {
        let p = page(&stack, &path).await;
        sizes.push(p.ids.len());
        seen.extend(p.ids.clone());
        docs.extend(p.docs.clone());
        match (&p.next_cursor, &p.link) {
            (Some(cursor), Some(link)) => {
                let target = next_target(link);
                assert!(target.starts_with("/v1/jobs?"), "{target}");
                assert!(target.contains("limit=10"), "{target}");
                assert!(target.contains(&format!("cursor={cursor}")), "{target}");
                path = target;
            }
            (None, None) => break,
            other => panic!("next_cursor and Link disagree: {other:?}"),
        }
        assert!(sizes.len() <= 3, "more than three pages: {sizes:?}");
    }
    assert_eq!(sizes, [10, 10, 5]);
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), 25, "a job listed twice");
    assert_eq!(unique, submitted.iter().collect::<HashSet<_>>());
    let stamps: Vec<i64> = docs.iter().map(created_ms).collect();
    assert!(
        stamps.windows(2).all(|w| w[0] >= w[1]),
        "not newest first: {stamps:?}"
    );
    // The documents are the status documents the monitor serves.
    assert_eq!(docs[0]["status"], "queued");
    assert_eq!(docs[0]["links"]["self"], format!("/v1/jobs/{}", seen[0]));

    // A job whose record expired is skipped (and does not shorten the walk).
    let mut redis = stack.redis().await;
    redis::cmd("DEL")
        .arg(format!(
            "{}:default:job:{{{}}}",
            stack.prefix, submitted[24]
        ))
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
    let p = page(&stack, "/v1/jobs?limit=5").await;
    assert_eq!(
        p.ids,
        submitted[19..24].iter().rev().cloned().collect::<Vec<_>>()
    );
    let p = page(&stack, "/v1/jobs?limit=100").await;
    assert_eq!(p.ids.len(), 24);
    assert_eq!(p.next_cursor, None);
}

#[tokio::test]
async fn filters_by_status_and_type() {
    let stack = Stack::start("list-filters").await;
    let mut locations = Vec::new();
    for n in 0..3 {
        locations.push(stack.submit_ok(&json!({"type": "echo", "input": n})).await);
    }
    for _ in 0..2 {
        locations.push(
            stack
                .submit_ok(&json!({"type": "fail", "input": {"message": "no"}}))
                .await,
        );
    }
    for loc in &locations {
        stack.wait(loc, Duration::from_secs(60)).await;
    }
    let count = |p: Page| p.ids.len();
    assert_eq!(count(page(&stack, "/v1/jobs").await), 5);
    assert_eq!(count(page(&stack, "/v1/jobs?status=succeeded").await), 3);
    let failed = page(&stack, "/v1/jobs?status=failed").await;
    assert_eq!(failed.ids.len(), 2);
    assert!(failed.docs.iter().all(|d| d["type"] == "fail"));
    assert_eq!(count(page(&stack, "/v1/jobs?type=echo").await), 3);
    assert_eq!(
        count(page(&stack, "/v1/jobs?type=fail&status=failed").await),
        2
    );
    assert_eq!(
        count(page(&stack, "/v1/jobs?type=echo&status=failed").await),
        0
    );
    assert_eq!(count(page(&stack, "/v1/jobs?status=queued").await), 0);
    assert_eq!(count(page(&stack, "/v1/jobs?type=sleep").await), 0);

    // Filters carry over to the next page.
    let first = page(&stack, "/v1/jobs?type=echo&limit=2").await;
    assert_eq!(first.ids.len(), 2);
    let target = next_target(first.link.as_deref().expect("Link"));
    assert!(target.contains("type=echo"), "{target}");
    let second = page(&stack, &target).await;
    assert_eq!(second.ids.len(), 1);
    assert!(second.docs.iter().all(|d| d["type"] == "echo"));
    assert_eq!(second.next_cursor, None);
}

#[tokio::test]
async fn bad_parameters_are_422_problems_naming_them() {
    let stack = Stack::start_with("list-bad", StackOptions::default().workers(0)).await;
    stack.submit_ok(&json!({"type": "echo", "input": 1})).await;
    for (query, parameter) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=-1", "limit"),
        ("limit=ten", "limit"),
        ("limit=", "limit"),
        ("status=done", "status"),
        ("status=QUEUED", "status"),
        ("type=nope", "type"),
        ("cursor=garbage!", "cursor"),
        ("cursor=AAAA", "cursor"),
        ("cursor=", "cursor"),
        ("cursor=%00%FF", "cursor"),
        ("limit=1&limit=2", "limit"),
        ("page=2", "page"),
    ] {
        let p = problem_422(&stack, &format!("/v1/jobs?{query}")).await;
        assert_eq!(p["type"], "/problems/invalid-parameter", "{query}");
        assert_eq!(p["parameter"], parameter, "{query}");
        assert!(
            p["detail"].as_str().unwrap().contains(parameter),
            "{query}: {p}"
        );
    }
    // A cursor that was tampered with is refused or still pages safely; it never makes the
    // facade fail.
    stack.submit_ok(&json!({"type": "echo", "input": 2})).await;
    let first = page(&stack, "/v1/jobs?limit=1").await;
    assert_eq!(first.ids.len(), 1);
    let cursor = first.next_cursor.expect("a second page");
    assert_eq!(
        page(&stack, &format!("/v1/jobs?limit=1&cursor={cursor}"))
            .await
            .ids
            .len(),
        1
    );
    for i in 0..cursor.len() {
        for replacement in ["A", "_", "z"] {
            let mut tampered = cursor.clone();
            tampered.replace_range(i..i + 1, replacement);
            let r = stack
                .http
                .get(stack.url(&format!("/v1/jobs?cursor={tampered}")))
                .send()
                .await
                .unwrap();
            assert!(
                r.status() == StatusCode::OK || r.status() == StatusCode::UNPROCESSABLE_ENTITY,
                "{tampered}: {}",
                r.status()
            );
        }
    }
    let truncated = &cursor[..cursor.len() - 1];
    problem_422(&stack, &format!("/v1/jobs?cursor={truncated}")).await;
    problem_422(&stack, &format!("/v1/jobs?cursor={cursor}A")).await;
    // The bounds themselves are fine.
    assert_eq!(page(&stack, "/v1/jobs?limit=1").await.ids.len(), 1);
    assert_eq!(page(&stack, "/v1/jobs?limit=100").await.ids.len(), 2);
}
