//! The poll cache never answers with a document Redis no longer holds, beyond the bounds README
//! states ("Polls of an unchanged job stay in the facade"). One test per way a job's document
//! can change or leave Redis, each with the cache on and the document kept (a poll answered
//! from the cache first): a worker's write, a cancel (by this facade, and of a running job by
//! its worker), a deletion and a change of the time to live from another connection, expiry in
//! a Redis whose expiry sampling takes minutes to find the key, and a Redis restart with and
//! without its data. (On a Redis Cluster the cache is off: `redis_cluster.rs` checks it.)
//!
//! Correctness is asserted strictly where the facade knows the answer: a job past its key's
//! expiry is never served, and this facade's own cancel shows in the very next poll. Where the
//! change reaches the facade as Redis's invalidation, the test asserts that the poll shows it
//! within `LATE` of the change being visible in Redis (it takes well under a millisecond; the
//! bound is loose because the machine is loaded) and that no later poll goes back.

use std::time::{Duration, Instant};

use e2e::services::PrivateRedis;
use e2e::{job_id, Stack, StackOptions};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Loose bound on how late a poll may show a change made in Redis by another connection.
const LATE: Duration = Duration::from_secs(5);

/// The document's `status`, or "" without one.
fn status_of(doc: &Option<Value>) -> &str {
    doc.as_ref()
        .and_then(|d| d["status"].as_str())
        .unwrap_or_default()
}

/// Polls until `shows` accepts the answer, at most `LATE` after `changed` (when the change was
/// visible in Redis); then polls a few more times, each of which must still show it (no poll
/// goes back to what was kept). Returns how long after `changed` the first poll showed it.
async fn shown_within_bound(
    stack: &Stack,
    location: &str,
    what: &str,
    changed: Instant,
    shows: impl Fn(StatusCode, &Option<Value>) -> bool,
) -> Duration {
    let shown = loop {
        let (status, doc) = stack.poll(location).await;
        if shows(status, &doc) {
            break changed.elapsed();
        }
        assert!(
            changed.elapsed() < LATE,
            "{what}: polls still answer {status} {doc:?} {LATE:?} after the change"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    for _ in 0..5 {
        let (status, doc) = stack.poll(location).await;
        assert!(
            shows(status, &doc),
            "{what}: a poll went back to {status} {doc:?}"
        );
    }
    eprintln!("{what}: shown {shown:?} after the change was visible in Redis");
    shown
}

/// Polls until one is answered from the cache (the document is kept), asserting that the
/// answer stays `status`.
async fn kept(stack: &Stack, location: &str, status: StatusCode) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let hits = stack.poll_cache_count("hit").await;
        let (answer, doc) = stack.poll(location).await;
        assert_eq!(answer, status, "{doc:?}");
        if stack.poll_cache_count("hit").await > hits {
            return doc.expect("a document");
        }
        assert!(Instant::now() < deadline, "polls never hit the cache");
    }
}

async fn job_key_command(stack: &Stack, command: &str, location: &str, args: &[&str]) -> i64 {
    let mut conn = stack.redis().await;
    redis::cmd(command)
        .arg(format!(
            "{}:default:job:{{{}}}",
            stack.prefix,
            job_id(location)
        ))
        .arg(args)
        .query_async(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{command}: {e}"))
}

/// Waits until the job's `state` in Redis is `state`; returns when it saw it.
async fn state_in_redis(stack: &Stack, location: &str, state: &str) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if stack.job_field(job_id(location), "state").await.as_deref() == Some(state) {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "{location} never {state} in Redis"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_workers_writes_show_in_the_next_polls() {
    // No worker yet: the queued document is kept before the worker exists.
    let mut stack = Stack::start_with("fresh-worker", StackOptions::default().workers(0)).await;
    let location = stack
        .submit_ok(&json!({"type": "sleep", "input": {"seconds": 1.5}}))
        .await;
    kept(&stack, &location, StatusCode::ACCEPTED).await;
    stack.add_worker();

    let running = state_in_redis(&stack, &location, "running").await;
    shown_within_bound(&stack, &location, "worker: running", running, |s, d| {
        s == StatusCode::SEE_OTHER || status_of(d) == "running"
    })
    .await;
    let succeeded = state_in_redis(&stack, &location, "succeeded").await;
    shown_within_bound(&stack, &location, "worker: succeeded", succeeded, |s, _| {
        s == StatusCode::SEE_OTHER
    })
    .await;
}

#[tokio::test]
async fn cancels_show_in_the_next_polls() {
    let mut stack = Stack::start_with("fresh-cancel", StackOptions::default().workers(0)).await;

    // Queued, canceled by this facade: its own write, so the very next poll shows it.
    let queued = stack.submit_ok(&json!({"type": "echo", "input": 1})).await;
    kept(&stack, &queued, StatusCode::ACCEPTED).await;
    let cancel = stack.http.delete(stack.url(&queued)).send().await.unwrap();
    assert_eq!(cancel.status(), StatusCode::ACCEPTED);
    let (status, doc) = stack.poll(&queued).await;
    assert_eq!(status, StatusCode::CONFLICT, "{doc:?}");
    assert_eq!(status_of(&doc), "canceled");

    // Running, canceled: the facade flags it, the worker stops it and writes `canceled`.
    stack.add_worker();
    let running = stack
        .submit_ok(&json!({"type": "sleep", "input": {"seconds": 30}}))
        .await;
    state_in_redis(&stack, &running, "running").await;
    let doc = kept(&stack, &running, StatusCode::ACCEPTED).await;
    assert_eq!(doc["status"], "running");
    let cancel = stack.http.delete(stack.url(&running)).send().await.unwrap();
    assert_eq!(cancel.status(), StatusCode::ACCEPTED);
    let canceled = state_in_redis(&stack, &running, "canceled").await;
    shown_within_bound(
        &stack,
        &running,
        "cancel of a running job",
        canceled,
        |s, d| s == StatusCode::CONFLICT && status_of(d) == "canceled",
    )
    .await;
}

#[tokio::test]
async fn deletions_and_new_expiries_from_another_connection_show_in_the_next_polls() {
    let stack = Stack::start_with("fresh-delete", StackOptions::default()).await;

    // A queued job deleted (as an operator would): no tombstone, so 404.
    let location = stack.submit_ok(&json!({"type": "echo", "input": 1})).await;
    let done = stack.wait(&location, Duration::from_secs(30)).await;
    assert_eq!(done.status(), StatusCode::OK);
    kept(&stack, &location, StatusCode::SEE_OTHER).await;
    assert_eq!(job_key_command(&stack, "DEL", &location, &[]).await, 1);
    let deleted = Instant::now();
    // The finished job left a tombstone: 410, as after expiry.
    shown_within_bound(&stack, &location, "deletion", deleted, |s, _| {
        s == StatusCode::GONE
    })
    .await;

    // A new, short time to live on a kept document (a write that changes only the TTL): it
    // invalidates, and the document read again is not served from its new expiry on.
    let location = stack.submit_ok(&json!({"type": "echo", "input": 2})).await;
    let done = stack.wait(&location, Duration::from_secs(30)).await;
    assert_eq!(done.status(), StatusCode::OK);
    kept(&stack, &location, StatusCode::SEE_OTHER).await;
    assert_eq!(
        job_key_command(&stack, "PEXPIRE", &location, &["3000"]).await,
        1
    );
    // Redis set it before its reply; a millisecond for its rounding.
    let expires = Instant::now() + Duration::from_millis(3001);
    kept(&stack, &location, StatusCode::SEE_OTHER).await;
    loop {
        let sent = Instant::now();
        let (status, doc) = stack.poll(&location).await;
        if status == StatusCode::GONE {
            break;
        }
        assert_eq!(status, StatusCode::SEE_OTHER, "{doc:?}");
        assert!(
            sent < expires,
            "the document was served after its key's new expiry"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Fills `redis` with `n` keys that expire in an hour, as a production Redis holds the jobs
/// of its retention period: its expiry sampling (20 keys a cycle, ten cycles a second) then
/// takes many minutes to come across one particular expired key, and until it does, Redis
/// sends no invalidation for it.
async fn fill_with_expiring_keys(redis: &PrivateRedis, n: usize) {
    const FILL: &str = r#"
for i = tonumber(ARGV[1]), tonumber(ARGV[2]) do
  redis.call('SET', 'filler:' .. i, 'x', 'EX', 3600)
end
return 1
"#;
    let client = redis::Client::open(redis.url()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    for start in (0..n).step_by(50_000) {
        let end = (start + 50_000).min(n) - 1;
        let _: i64 = redis::Script::new(FILL)
            .arg(start)
            .arg(end)
            .invoke_async(&mut conn)
            .await
            .expect("fill");
    }
    let keys: usize = redis::cmd("DBSIZE")
        .query_async(&mut conn)
        .await
        .expect("DBSIZE");
    assert!(keys >= n, "filled {keys} keys");
}

/// The latest instant `key` can expire at, from its `PTTL` (read now); `None` without a TTL.
async fn expires_by(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<Instant> {
    let pttl: i64 = redis::cmd("PTTL")
        .arg(key)
        .query_async(conn)
        .await
        .expect("PTTL");
    // Redis answered before now: the key lives at most `pttl` from now (and a millisecond
    // of Redis's rounding).
    (pttl > 0).then(|| Instant::now() + Duration::from_millis(pttl as u64 + 1))
}

/// What the job's answers say about it: 0 alive (303, 200), 1 expired (410), 2 unknown (404).
fn phase(status: StatusCode) -> u8 {
    match status {
        StatusCode::SEE_OTHER | StatusCode::OK => 0,
        StatusCode::GONE => 1,
        StatusCode::NOT_FOUND => 2,
        other => panic!("unexpected answer {other}"),
    }
}

/// The issue's report: with retention 2 s and tombstones 4 s, in a Redis holding 200,000 keys
/// with a TTL, the status monitor answered `303` from the poll cache long after the result
/// answered `410`. Now the status monitor, the result and the event stream move together from
/// `303`/`200` to `410` to `404`, and none answers as if the job were alive after its key's
/// expiry, nor `410` after its tombstone's.
#[tokio::test]
async fn an_expired_job_answers_303_then_410_then_404_on_time_with_the_cache_on() {
    let redis = PrivateRedis::start().await;
    fill_with_expiring_keys(&redis, 200_000).await;
    let stack = Stack::start_with(
        "fresh-expiry",
        StackOptions::default()
            .env("APP__REDIS__URL", redis.url())
            .env("APP__JOBS__RETENTION_SECONDS", 2)
            .env("APP__JOBS__TOMBSTONE_SECONDS", 4),
    )
    .await;
    let location = stack.submit_ok(&json!({"type": "echo", "input": 1})).await;
    let done = stack.wait(&location, Duration::from_secs(30)).await;
    assert_eq!(done.status(), StatusCode::OK);
    let result_path = format!("{location}/result");
    let events_path = format!("{location}/events");
    kept(&stack, &location, StatusCode::SEE_OTHER).await;

    let mut conn = stack.redis().await;
    let id = job_id(&location);
    let job_gone = expires_by(&mut conn, &format!("{}:default:job:{{{id}}}", stack.prefix))
        .await
        .expect("the job hash has a TTL");
    let tomb_gone = expires_by(
        &mut conn,
        &format!("{}:default:tomb:{{{id}}}", stack.prefix),
    )
    .await
    .expect("the tombstone has a TTL");
    let hits = stack.poll_cache_count("hit").await;

    // Status, result and events in turn, one request at a time, until all say 404.
    let mut answers: Vec<(&str, Instant, StatusCode)> = Vec::new();
    let deadline = tomb_gone + Duration::from_secs(30);
    let mut turn = 0usize;
    loop {
        let (what, path) = match turn % 5 {
            0 | 2 => ("status", &location),
            1 | 3 => ("result", &result_path),
            _ => ("events", &events_path),
        };
        turn += 1;
        let sent = Instant::now();
        let response = stack
            .http_no_redirect
            .get(stack.url(path))
            .send()
            .await
            .expect("GET");
        let status = response.status();
        drop(response);
        answers.push((what, sent, status));
        if status == StatusCode::NOT_FOUND
            && answers
                .iter()
                .rev()
                .take(5)
                .all(|(_, _, s)| *s == StatusCode::NOT_FOUND)
        {
            break;
        }
        assert!(Instant::now() < deadline, "never 404 everywhere");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        stack.poll_cache_count("hit").await > hits,
        "the status polls did not use the cache"
    );

    // Never contradicting each other: in the order asked, the answers only move forward.
    let mut furthest = 0;
    for (what, sent, status) in &answers {
        let now = phase(*status);
        assert!(
            now >= furthest,
            "{what} answered {status} after another answer said the job was further \
             ({:?} after the key's expiry)",
            sent.checked_duration_since(job_gone)
        );
        furthest = now;
        // Never alive after the key's expiry, never gone-but-known after the tombstone's.
        if *sent > job_gone {
            assert!(now >= 1, "{what} answered {status} after the job's expiry");
        }
        if *sent > tomb_gone {
            assert_eq!(
                now, 2,
                "{what} answered {status} after the tombstone's expiry"
            );
        }
    }
    // On time: each answer went through every phase (the 410 lasts only the 4 s the
    // tombstone does, so a status monitor late by more never shows it).
    for what in ["status", "result", "events"] {
        let seen: Vec<u8> = answers
            .iter()
            .filter(|(w, _, _)| *w == what)
            .map(|(_, _, s)| phase(*s))
            .collect();
        for p in 0..=2 {
            assert!(
                seen.contains(&p),
                "{what} never answered phase {p}: {seen:?}"
            );
        }
    }
    let first_gone = answers
        .iter()
        .find(|(w, _, s)| *w == "status" && *s == StatusCode::GONE)
        .map(|(_, sent, _)| *sent)
        .expect("a 410");
    eprintln!(
        "status monitor: first 410 {:?} after the key's latest expiry (negative: before)",
        first_gone
            .checked_duration_since(job_gone)
            .map(|d| d.as_secs_f64())
            .unwrap_or_else(|| -(job_gone - first_gone).as_secs_f64())
    );
}

/// A facade (no worker) on `redis`.
async fn facade_on(name: &str, redis: &PrivateRedis) -> Stack {
    let options = StackOptions::default()
        .workers(0)
        .env("APP__REDIS__URL", redis.url());
    Stack::start_with(name, options).await
}

#[tokio::test]
async fn a_redis_restart_drops_what_was_kept() {
    let mut redis = PrivateRedis::start().await;
    let stack = facade_on("fresh-restart", &redis).await;
    let location = stack.submit_ok(&json!({"type": "echo", "input": 1})).await;
    let queued = kept(&stack, &location, StatusCode::ACCEPTED).await;

    // Redis gone: the closed connection drops what was kept, so polls cannot be answered.
    redis.stop().await;
    let stopped = Instant::now();
    shown_within_bound(&stack, &location, "Redis stopped", stopped, |s, _| {
        s == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;

    // Back with its data (AOF): the job as it was, then a write right after the restart shows
    // (the cache tracks the key on its new connection).
    redis.start_again().await;
    let back = Instant::now();
    shown_within_bound(&stack, &location, "Redis back", back, |s, d| {
        s == StatusCode::ACCEPTED && d.as_ref() == Some(&queued)
    })
    .await;
    kept(&stack, &location, StatusCode::ACCEPTED).await;
    let mut running = queued.clone();
    running["status"] = json!("running");
    running["attempts"] = json!(1);
    job_key_command(
        &stack,
        "HSET",
        &location,
        &["doc", &running.to_string(), "state", "running"],
    )
    .await;
    let written = Instant::now();
    shown_within_bound(&stack, &location, "write after restart", written, |s, d| {
        s == StatusCode::ACCEPTED && d.as_ref() == Some(&running)
    })
    .await;
}

#[tokio::test]
async fn a_redis_that_restarts_without_its_data_loses_the_job_for_polls_too() {
    let mut redis = PrivateRedis::start_with_args(&["--appendonly", "no"], &[]).await;
    let stack = facade_on("fresh-amnesia", &redis).await;
    let location = stack.submit_ok(&json!({"type": "echo", "input": 1})).await;
    kept(&stack, &location, StatusCode::ACCEPTED).await;
    redis.kill9();
    redis.start_again().await;
    let back = Instant::now();
    let mut conn = stack.redis().await;
    let keys: usize = redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap();
    assert_eq!(keys, 0, "the restarted Redis kept data");
    shown_within_bound(&stack, &location, "Redis restarted empty", back, |s, _| {
        s == StatusCode::NOT_FOUND
    })
    .await;
}
