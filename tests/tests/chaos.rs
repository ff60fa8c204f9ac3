//! The chaos suite: each scenario owns a RabbitMQ node and a Redis server of its own (spare
//! ports, removed afterwards) and breaks them while jobs run. Every scenario asserts exact counts
//! and prints its figures: jobs submitted, terminal, lost, and run more than once (for the
//! webhook scenario, lost counts callbacks that never arrived).

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::receiver::Receiver;
use e2e::services::{PrivateRabbit, PrivateRedis};
use e2e::{job_id, Stack, StackOptions};
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(120);

/// A stack whose broker and Redis are private to the test.
fn private(rabbit: &PrivateRabbit, redis: &PrivateRedis) -> StackOptions {
    StackOptions::default()
        .env("APP__AMQP__URL", rabbit.url())
        .env("APP__REDIS__URL", redis.url())
        .env("APP__AMQP__CONNECT_TIMEOUT_MS", 2000)
        .env("APP__REDIS__CONNECTION_TIMEOUT_MS", 1000)
}

/// Figures of one scenario, printed and appended to `target/chaos-figures.txt`.
struct Figures {
    scenario: &'static str,
    submitted: usize,
    terminal: usize,
    lost: usize,
    run_more_than_once: usize,
    extra: String,
}

impl Figures {
    fn report(&self) {
        let line = format!(
            "chaos {:<28} submitted={:<5} terminal={:<5} lost={:<3} run_more_than_once={:<4} {}",
            self.scenario,
            self.submitted,
            self.terminal,
            self.lost,
            self.run_more_than_once,
            self.extra
        );
        println!("{line}");
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/chaos-figures.txt");
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(file, "{line}");
        }
    }
}

/// How many times the job was started, as the workers counted in Redis.
async fn starts(stack: &Stack, location: &str) -> u64 {
    stack
        .job_field(job_id(location), "starts")
        .await
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Waits for every job to be terminal; returns (terminal, run more than once) and checks each
/// result with `check`.
async fn settle_all(
    stack: &Stack,
    locations: &[(usize, String)],
    check: impl Fn(usize, &Value) + Sync,
) -> (usize, usize) {
    let check = &check;
    let outcomes: Vec<(bool, u64)> = futures_util::stream::iter(locations.iter())
        .map(|(i, location)| async move {
            let response = stack.wait(location, LONG).await;
            let ok = response.status() == StatusCode::OK;
            if ok {
                check(*i, &response.json::<Value>().await.unwrap());
            }
            let doc = stack.status_doc(location).await;
            let terminal =
                ["succeeded", "failed", "canceled"].contains(&doc["status"].as_str().unwrap_or(""));
            assert!(terminal, "job {i} not terminal: {doc}");
            (ok, doc["attempts"].as_u64().unwrap_or(0))
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let terminal = outcomes.len();
    let again = outcomes
        .iter()
        .filter(|(_, attempts)| *attempts > 1)
        .count();
    (terminal, again)
}

#[tokio::test]
async fn kill_9_a_worker_with_a_thousand_jobs_in_flight() {
    const JOBS: usize = 1000;
    let rabbit = PrivateRabbit::start().await;
    let redis = PrivateRedis::start().await;
    let mut stack = Stack::start_with(
        "chaos-kill",
        private(&rabbit, &redis)
            .workers(0)
            .env("APP__WORKER__CONCURRENCY", 8)
            .env("APP__AMQP__PREFETCH", 64),
    )
    .await;
    let s = &stack;
    let locations: Vec<(usize, String)> = futures_util::stream::iter(0..JOBS)
        .map(|i| async move {
            (
                i,
                s.submit_ok(&json!({"type": "echo", "input": {"i": i}}))
                    .await,
            )
        })
        .buffer_unordered(32)
        .collect()
        .await;
    // All 1,000 wait in the queue; a worker starts on them and is killed mid-way.
    stack.add_worker();
    let deadline = Instant::now() + LONG;
    loop {
        let left = stack.queue_len(&stack.work_queue()).await;
        if left < 700 {
            break;
        }
        assert!(Instant::now() < deadline, "the worker never got going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stack.kill_worker(0);
    stack.add_worker();
    let (terminal, again) = settle_all(&stack, &locations, |i, result| {
        assert_eq!(result, &json!({"i": i}), "job {i} has the wrong result");
    })
    .await;
    Figures {
        scenario: "kill -9 worker",
        submitted: JOBS,
        terminal,
        lost: JOBS - terminal,
        run_more_than_once: again,
        extra: String::new(),
    }
    .report();
    assert_eq!(terminal, JOBS);
}

#[tokio::test]
async fn restart_the_broker_during_a_run_of_submits() {
    let rabbit = PrivateRabbit::start().await;
    let redis = PrivateRedis::start().await;
    let stack = Stack::start_with(
        "chaos-broker",
        private(&rabbit, &redis)
            .workers(2)
            .env("APP__AMQP__PUBLISH_TIMEOUT_MS", 2000),
    )
    .await;
    let accepted = Arc::new(std::sync::Mutex::new(Vec::new()));
    let refused = Arc::new(AtomicUsize::new(0));
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    let submitter = {
        let http = stack.http.clone();
        let url = stack.url("/v1/jobs");
        let accepted = accepted.clone();
        let refused = refused.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let started = Instant::now();
            let mut i = 0usize;
            // Submit for a while: before, during and after the outage.
            while started.elapsed() < Duration::from_secs(14) {
                let response = http
                    .post(&url)
                    .json(&json!({"type": "echo", "input": {"i": i}}))
                    .send()
                    .await
                    .expect("the facade answers during a broker outage");
                let status = response.status();
                seen.push(status.as_u16());
                if status == StatusCode::ACCEPTED {
                    let location = response.headers()["location"].to_str().unwrap().to_owned();
                    accepted.lock().unwrap().push((i, location));
                } else {
                    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "only 202 or 503");
                    assert!(
                        response.headers().contains_key("retry-after"),
                        "503 without Retry-After"
                    );
                    refused.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    rabbit.stop_app().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    rabbit.start_app().await;
    for status in submitter.await.expect("submitter") {
        *statuses.entry(status).or_default() += 1;
    }
    let accepted = accepted.lock().unwrap().clone();
    assert!(
        statuses.get(&503).copied().unwrap_or(0) > 0,
        "the outage was never seen: {statuses:?}"
    );
    assert!(!accepted.is_empty());
    let (terminal, again) = settle_all(&stack, &accepted, |i, result| {
        assert_eq!(result, &json!({"i": i}));
    })
    .await;
    Figures {
        scenario: "broker restart",
        submitted: accepted.len(),
        terminal,
        lost: accepted.len() - terminal,
        run_more_than_once: again,
        extra: format!("refused_503={}", refused.load(Ordering::Relaxed)),
    }
    .report();
    assert_eq!(terminal, accepted.len());
}

#[tokio::test]
async fn restart_redis_during_a_run() {
    let rabbit = PrivateRabbit::start().await;
    let mut redis = PrivateRedis::start().await;
    let stack = Stack::start_with("chaos-redis", private(&rabbit, &redis).workers(2)).await;

    // A first batch finishes before the outage: its results must survive the restart.
    let mut before = Vec::new();
    for i in 0..50 {
        before.push((
            i,
            stack
                .submit_ok(&json!({"type": "echo", "input": {"i": i}}))
                .await,
        ));
    }
    settle_all(&stack, &before, |_, _| {}).await;
    // Then jobs that are running while Redis goes away.
    let mut during = Vec::new();
    for i in 50..60 {
        during.push((
            i,
            stack
                .submit_ok(&json!({"type": "sleep", "input": {"seconds": 2}}))
                .await,
        ));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.stop().await;
    let refused = stack.submit(&json!({"type": "echo", "input": 0})).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers().contains_key("retry-after"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    redis.start_again().await;

    let (terminal_before, _) = settle_all(&stack, &before, |i, result| {
        assert_eq!(result, &json!({"i": i}), "an acknowledged result was lost");
    })
    .await;
    let (terminal_during, again) = settle_all(&stack, &during, |_, result| {
        assert_eq!(result, &json!({"slept_seconds": 2.0}));
    })
    .await;
    // And the system takes new work.
    let after = stack
        .submit_ok(&json!({"type": "echo", "input": "after"}))
        .await;
    assert_eq!(stack.wait(&after, LONG).await.status(), StatusCode::OK);
    let submitted = before.len() + during.len();
    Figures {
        scenario: "redis restart",
        submitted,
        terminal: terminal_before + terminal_during,
        lost: submitted - terminal_before - terminal_during,
        run_more_than_once: again,
        extra: String::new(),
    }
    .report();
    assert_eq!(terminal_before + terminal_during, submitted);
}

#[tokio::test]
async fn poison_and_panics_are_dead_lettered_and_the_worker_survives() {
    let rabbit = PrivateRabbit::start().await;
    let redis = PrivateRedis::start().await;
    let mut stack = Stack::start_with("chaos-poison", private(&rabbit, &redis)).await;
    let panicking = stack
        .submit_ok(&json!({"type": "fail", "input": {"message": "boom", "kind": "panic"}}))
        .await;
    stack
        .publish_raw(&stack.work_queue(), b"{\"this is\": \"no job\"}")
        .await;
    stack
        .publish_raw(&stack.work_queue(), b"\xff\xfe\x00")
        .await;
    let response = stack.wait(&panicking, LONG).await;
    assert_eq!(response.status(), StatusCode::FAILED_DEPENDENCY);
    assert_eq!(
        response.json::<Value>().await.unwrap()["job"]["error"]["kind"],
        "crashed"
    );
    stack.wait_queue_len(&stack.dead_letter_queue(), 3).await;
    assert!(stack.worker_alive(0));
    let ok = stack
        .submit_ok(&json!({"type": "echo", "input": "alive"}))
        .await;
    assert_eq!(stack.wait(&ok, LONG).await.status(), StatusCode::OK);
    Figures {
        scenario: "poison + panic",
        submitted: 2,
        terminal: 2,
        lost: 0,
        run_more_than_once: 0,
        extra: "dead_lettered=3".into(),
    }
    .report();
}

#[tokio::test]
async fn a_missing_queue_gets_no_202_and_leaves_no_record() {
    let rabbit = PrivateRabbit::start().await;
    let redis = PrivateRedis::start().await;
    let stack = Stack::start_with("chaos-noqueue", private(&rabbit, &redis).workers(0)).await;
    stack.delete_queue().await;
    let response = stack.submit(&json!({"type": "echo", "input": 1})).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(
        stack.redis_keys().await,
        Vec::<String>::new(),
        "orphaned queued record"
    );
    Figures {
        scenario: "queue missing",
        submitted: 0,
        terminal: 0,
        lost: 0,
        run_more_than_once: 0,
        extra: "refused_503=1 orphans=0".into(),
    }
    .report();
}

#[tokio::test]
async fn sigterm_during_work_finishes_or_requeues_and_fails_nothing() {
    let rabbit = PrivateRabbit::start().await;
    let redis = PrivateRedis::start().await;
    let mut stack = Stack::start_with(
        "chaos-sigterm",
        private(&rabbit, &redis)
            .env("APP__WORKER__CONCURRENCY", 4)
            .env("APP__WORKER__SHUTDOWN_GRACE_SECONDS", 1),
    )
    .await;
    let mut locations = Vec::new();
    // Two finish within the grace period, two cannot.
    for (i, seconds) in [0.3, 0.3, 4.0, 4.0].into_iter().enumerate() {
        locations.push((
            i,
            stack
                .submit_ok(&json!({"type": "sleep", "input": {"seconds": seconds}}))
                .await,
        ));
    }
    for (_, l) in &locations {
        while stack.status_doc(l).await["status"] != "running" {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(
        stack.terminate_worker(0, Duration::from_secs(20)).await,
        "clean exit"
    );
    let mut failed = 0;
    for (_, l) in &locations {
        if stack.status_doc(l).await["status"] == "failed" {
            failed += 1;
        }
    }
    assert_eq!(failed, 0, "the shutdown failed a job");
    stack.add_worker();
    let (terminal, again) = settle_all(&stack, &locations, |_, result| {
        assert!(result["slept_seconds"].is_number());
    })
    .await;
    Figures {
        scenario: "SIGTERM during work",
        submitted: locations.len(),
        terminal,
        lost: locations.len() - terminal,
        run_more_than_once: again,
        extra: String::new(),
    }
    .report();
    assert_eq!(terminal, locations.len());
    assert_eq!(again, 2, "exactly the two long jobs ran again");
}

#[tokio::test]
async fn a_job_longer_than_the_consumer_timeout_runs_once() {
    // The broker closes a channel holding a delivery for more than 3 s (checked every second).
    let rabbit = PrivateRabbit::start_with_advanced_config(Some(
        "[{rabbit, [{consumer_timeout, 3000}, {channel_tick_interval, 1000}]}].",
    ))
    .await;
    let redis = PrivateRedis::start().await;

    // Control: a worker that does not know about the short timeout holds the delivery, the
    // broker takes it back, and the job runs a second time. This shows the timeout is real.
    // (A sleep job's default limit is long enough to be leased anyway; bring it below half
    // of the assumed 30-minute timeout so this worker holds the delivery.)
    let control = Stack::start_with(
        "chaos-ctimeout-control",
        private(&rabbit, &redis).env("APP__JOBS__LIMITS__SLEEP__MAX_RUN_SECONDS", 20),
    )
    .await;
    let location = control
        .submit_ok(&json!({"type": "sleep", "input": {"seconds": 7}}))
        .await;
    assert_eq!(control.wait(&location, LONG).await.status(), StatusCode::OK);
    let control_starts = starts(&control, &location).await;
    assert!(
        control_starts >= 2,
        "the broker never enforced its consumer timeout"
    );
    drop(control);

    // A worker told the broker's timeout runs the job under a lease: once, whatever its length.
    let stack = Stack::start_with(
        "chaos-ctimeout",
        private(&rabbit, &redis)
            .env("APP__JOBS__LIMITS__SLEEP__MAX_RUN_SECONDS", 20)
            .env("APP__AMQP__CONSUMER_TIMEOUT_SECONDS", 3),
    )
    .await;
    let location = stack
        .submit_ok(&json!({"type": "sleep", "input": {"seconds": 7}}))
        .await;
    let response = stack.wait(&location, LONG).await;
    assert_eq!(response.status(), StatusCode::OK);
    let doc = stack.status_doc(&location).await;
    let runs = starts(&stack, &location).await;
    Figures {
        scenario: "longer than consumer timeout",
        submitted: 1,
        terminal: 1,
        lost: 0,
        run_more_than_once: usize::from(runs > 1),
        extra: format!("control_runs={control_starts}"),
    }
    .report();
    assert_eq!(runs, 1, "run exactly once: {doc}");
    assert_eq!(doc["attempts"], 1);
}

#[tokio::test]
async fn kill_9_workers_while_callbacks_wait_for_their_next_attempt() {
    const JOBS: usize = 100;
    // The receiver answers 503 to the first requests of every Webhook-Id, so each callback
    // spends seconds between attempts (in a delay queue, or in a worker's hands), and takes
    // 200 ms to answer any request, so that kills also land on attempts in flight.
    const REFUSED: usize = 3;
    const MIN_KILLS: usize = 10;
    const MAX_KILLS: usize = 30;
    let rabbit = PrivateRabbit::start().await;
    let redis = PrivateRedis::start().await;
    let mut receiver = Receiver::start_with(Duration::from_millis(200), |_, before| {
        if before < REFUSED {
            503
        } else {
            200
        }
    })
    .await;
    let mut stack = Stack::start_with(
        "chaos-webhooks",
        private(&rabbit, &redis)
            .workers(2)
            .env("APP__WEBHOOKS__ALLOWED_HOSTS", "127.0.0.1")
            .env("APP__WEBHOOKS__SECRET", "chaos-secret")
            .env("APP__WEBHOOKS__MAX_ATTEMPTS", 12)
            .env("APP__WEBHOOKS__BASE_DELAY_MS", 1000)
            .env("APP__WEBHOOKS__MAX_DELAY_MS", 2000)
            .env("APP__WEBHOOKS__REQUEST_TIMEOUT_MS", 5000),
    )
    .await;
    // Jobs arrive over about three seconds, while the kills go on: some are killed running,
    // some between storing their outcome and the ack, most while their callbacks wait.
    let submitter = {
        let (http, url, callback_url) = (stack.http.clone(), stack.url("/v1/jobs"), receiver.url());
        tokio::spawn(async move {
            let mut locations = Vec::new();
            for i in 0..JOBS {
                let body = json!({"type": "echo", "input": {"i": i}, "callback_url": callback_url});
                let response = http.post(&url).json(&body).send().await.expect("submit");
                assert_eq!(response.status(), StatusCode::ACCEPTED);
                let location = response.headers()["location"].to_str().unwrap().to_owned();
                locations.push((i, location));
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            locations
        })
    };

    // Per Webhook-Id: (requests answered, of which 2xx).
    let mut tally: HashMap<String, (usize, usize)> = HashMap::new();
    let count = |receiver: &mut Receiver, tally: &mut HashMap<String, (usize, usize)>| {
        for request in receiver.drain() {
            let id = request.header("webhook-id").to_owned();
            let body = request.json();
            assert_eq!(body["id"], id.as_str(), "body of another job");
            assert_eq!(body["status"], "succeeded", "{body}");
            let entry = tally.entry(id).or_default();
            entry.0 += 1;
            if (200..300).contains(&request.answered) {
                entry.1 += 1;
            }
        }
    };
    let arrived =
        |tally: &HashMap<String, (usize, usize)>| tally.values().filter(|(_, ok)| *ok > 0).count();
    // Kill -9 the oldest worker and start a new one every half second, while jobs run and
    // callbacks go through their refused attempts and back-offs; stop once every callback
    // has arrived.
    let mut live: Vec<usize> = vec![0, 1];
    let mut started = 2;
    let mut kills = 0;
    let deadline = Instant::now() + LONG;
    loop {
        count(&mut receiver, &mut tally);
        if arrived(&tally) == JOBS && kills >= MIN_KILLS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {JOBS} callbacks arrived after {kills} kills",
            arrived(&tally)
        );
        if kills < MAX_KILLS {
            tokio::time::sleep(Duration::from_millis(500)).await;
            stack.kill_worker(live.remove(0));
            kills += 1;
            stack.add_worker();
            live.push(started);
            started += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let locations = submitter.await.expect("submitter");
    // Every status document records its delivery; copies still on their way show up now.
    for (_, location) in &locations {
        let deadline = Instant::now() + LONG;
        loop {
            let doc = stack.status_doc(location).await;
            if doc["callback"]["state"] == "delivered" {
                assert_eq!(doc["status"], "succeeded");
                break;
            }
            assert_ne!(doc["callback"]["state"], "failed", "{doc}");
            assert!(Instant::now() < deadline, "callback not recorded: {doc}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    count(&mut receiver, &mut tally);
    let (terminal, again) = settle_all(&stack, &locations, |i, result| {
        assert_eq!(result, &json!({"i": i}));
    })
    .await;
    let delivered = locations
        .iter()
        .filter(|(_, l)| tally.get(job_id(l)).is_some_and(|(_, ok)| *ok > 0))
        .count();
    let duplicates: usize = tally.values().map(|(_, ok)| ok.saturating_sub(1)).sum();
    let requests: usize = tally.values().map(|(n, _)| n).sum();
    Figures {
        scenario: "kill -9 during webhook backoff",
        submitted: JOBS,
        terminal,
        lost: JOBS - delivered,
        run_more_than_once: again,
        extra: format!(
            "callbacks_expected={JOBS} delivered={delivered} duplicates={duplicates} requests={requests} kills={kills}"
        ),
    }
    .report();
    assert_eq!(tally.len(), JOBS, "callbacks of unknown jobs");
    assert_eq!(delivered, JOBS);
    // Each callback was refused REFUSED times before it arrived.
    assert!(requests >= JOBS * (REFUSED + 1), "{requests} requests");
}
