//! A queue per job type (issue 17, items 3, 4 and 7), over real RabbitMQ and Redis:
//!
//! - a type that takes priorities and one that does not, side by side: only the first's queue
//!   is a priority queue, and it orders its jobs;
//! - the upgrade from the single `jobs` queue: jobs and status documents written by the
//!   version before queues per type (its exact formats) run to their end;
//! - a rolling deploy of a type whose input schema changed: two worker versions at once, every
//!   job accepted runs on a version whose schema it meets, none fails.

use std::time::{Duration, Instant};

use e2e::{Stack, StackOptions};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use reqwest::StatusCode;
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(40);

fn text(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v))
}

/// A classic work queue's arguments as the service declares them, with priorities or without.
fn work_queue_args(queue: &str, priorities: bool) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(ShortString::from("x-queue-version"), AMQPValue::LongInt(2));
    args.insert(ShortString::from("x-dead-letter-exchange"), text(""));
    args.insert(
        ShortString::from("x-dead-letter-routing-key"),
        text(&format!("{queue}.dead")),
    );
    if priorities {
        args.insert(
            ShortString::from("x-max-priority"),
            AMQPValue::ShortShortUInt(9),
        );
    }
    args
}

/// Declares `queue` with `args` on a channel of its own: `Ok` if the broker accepted them
/// (the queue is new, or exists with exactly these arguments).
async fn declare(url: &str, queue: &str, args: FieldTable) -> Result<(), lapin::Error> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let declared = channel
        .queue_declare(
            ShortString::from(queue),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await;
    let _ = connection.close(200, ShortString::from("bye")).await;
    declared.map(drop)
}

async fn job_type_info(stack: &Stack, name: &str) -> Option<Value> {
    let body = stack.get_json("/v1/job-types").await;
    body["job_types"]
        .as_array()?
        .iter()
        .find(|t| t["name"] == name)
        .cloned()
}

/// Waits until `GET /v1/job-types` shows `name` and `done` holds for it.
async fn wait_type(stack: &Stack, name: &str, what: &str, done: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + LONG;
    loop {
        let info = job_type_info(stack, name).await;
        if info.as_ref().is_some_and(&done) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {info:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_priority_type_and_a_plain_type_side_by_side() {
    // Workers: only the example's (wordcount, no priorities); the built-ins' worker starts
    // later, so that echo's jobs wait and show their order.
    let mut stack = Stack::start_with(
        "queues-priorities",
        StackOptions::default().workers(0).per_type_queues(),
    )
    .await;
    stack.add_worker_binary("wordcount-worker", &[]);
    wait_type(&stack, "wordcount", "wordcount served", |t| {
        t["workers"] == 1
    })
    .await;
    let (echo_q, wordcount_q) = (stack.queue_of("echo"), stack.queue_of("wordcount"));
    assert_eq!(echo_q, format!("{}.echo", stack.queue));
    let echo = job_type_info(&stack, "echo").await.unwrap();
    let wordcount = job_type_info(&stack, "wordcount").await.unwrap();
    assert_eq!(
        (echo["priorities"].clone(), echo["queue"]["name"].clone()),
        (json!(true), json!(echo_q))
    );
    assert_eq!(
        (
            wordcount["priorities"].clone(),
            wordcount["queue"]["name"].clone()
        ),
        (json!(false), json!(wordcount_q))
    );

    // A type without priorities refuses one, with the field named.
    let refused = stack
        .submit(&json!({"type": "wordcount", "input": {"text": "a b"}, "priority": 3}))
        .await;
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let p: Value = refused.json().await.unwrap();
    assert_eq!(p["errors"][0]["field"], "priority", "{p}");

    // Echo's jobs wait (no worker serves echo yet): five plain, then five urgent ones.
    let mut plain = Vec::new();
    let mut urgent = Vec::new();
    for i in 0..5 {
        plain.push(stack.submit_ok(&json!({"type": "echo", "input": i})).await);
    }
    for i in 0..5 {
        let body = json!({"type": "echo", "input": 10 + i, "priority": 9});
        urgent.push(stack.submit_ok(&body).await);
    }
    stack.wait_queue_len(&echo_q, 10).await;
    // Meanwhile the plain type's jobs run, in their own queue.
    let location = stack
        .submit_ok(&json!({"type": "wordcount", "input": {"text": "b a b"}}))
        .await;
    let result: Value = stack.wait(&location, LONG).await.json().await.unwrap();
    assert_eq!(result["words"], 3, "{result}");

    // Only the priority type's queue is a priority queue: declaring each again with the plain
    // arguments is accepted for wordcount's, refused for echo's (it has x-max-priority).
    let url = stack.amqp_url();
    declare(&url, &wordcount_q, work_queue_args(&wordcount_q, false))
        .await
        .expect("wordcount's queue has no priorities");
    assert!(declare(&url, &echo_q, work_queue_args(&echo_q, false))
        .await
        .is_err());
    declare(&url, &echo_q, work_queue_args(&echo_q, true))
        .await
        .expect("echo's queue is a priority queue");

    // One job at a time: the urgent jobs all start before any plain one.
    stack.add_worker_with(&[
        ("APP__WORKER__CONCURRENCY", "1"),
        ("APP__AMQP__PREFETCH", "1"),
        ("APP__WORKER__TYPES", "echo"),
    ]);
    let mut started = Vec::new();
    for (kind, locations) in [("urgent", &urgent), ("plain", &plain)] {
        for location in locations {
            assert_eq!(stack.wait(location, LONG).await.status(), StatusCode::OK);
            let doc = stack.status_doc(location).await;
            let at = doc["started_at"].as_str().unwrap().to_owned();
            started.push((kind, at));
        }
    }
    let last_urgent = started
        .iter()
        .filter(|(k, _)| *k == "urgent")
        .map(|(_, t)| t)
        .max();
    let first_plain = started
        .iter()
        .filter(|(k, _)| *k == "plain")
        .map(|(_, t)| t)
        .min();
    assert!(last_urgent < first_plain, "{started:?}");
}

/// A status document as the version before queues per type wrote it at submit (the exact
/// bytes of its `POST /v1/jobs`, with this job's id and time).
fn old_status_doc(id: &str, job_type: &str, created_at: &str) -> String {
    format!(
        r#"{{"id":"{id}","type":"{job_type}","status":"queued","attempts":0,"created_at":"{created_at}","links":{{"self":"/v1/jobs/{id}","result":"/v1/jobs/{id}/result","cancel":"/v1/jobs/{id}","events":"/v1/jobs/{id}/events"}}}}"#
    )
}

/// Its queue message for that job.
fn old_message(id: &str, job_type: &str, input: &Value, created_at: &str) -> String {
    format!(
        r#"{{"v":1,"id":"{id}","type":"{job_type}","input":{input},"created_at":"{created_at}","tenant":"default","schema_digest":"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}}"#
    )
}

#[tokio::test]
async fn jobs_left_in_the_single_queue_of_the_old_version_run_after_the_upgrade() {
    let mut stack = Stack::start_with(
        "queues-upgrade",
        StackOptions::default().workers(0).per_type_queues(),
    )
    .await;
    let url = stack.amqp_url();
    let old = stack.queue.clone();
    // The old version's topology: the single work queue (priorities, dead letters into
    // `<queue>.dead`) and a delay queue expiring back into it.
    declare(&url, &format!("{old}.dead"), {
        let mut a = FieldTable::default();
        a.insert(ShortString::from("x-queue-version"), AMQPValue::LongInt(2));
        a
    })
    .await
    .unwrap();
    declare(&url, &old, work_queue_args(&old, true))
        .await
        .unwrap();
    let retry = format!("{old}.retry.1000");
    declare(&url, &retry, {
        let mut a = FieldTable::default();
        a.insert(ShortString::from("x-queue-version"), AMQPValue::LongInt(2));
        a.insert(
            ShortString::from("x-message-ttl"),
            AMQPValue::LongLongInt(1000),
        );
        a.insert(ShortString::from("x-dead-letter-exchange"), text(""));
        a.insert(ShortString::from("x-dead-letter-routing-key"), text(&old));
        a
    })
    .await
    .unwrap();

    // Jobs the old facade accepted: documents in Redis, messages in the old queues (one in
    // the delay queue, as a retry in progress would be).
    let jobs = [
        ("echo", json!({"n": 1}), false),
        ("echo", json!([2]), false),
        ("sleep", json!({"seconds": 0.1}), false),
        ("hash", json!({"bytes": 16}), false),
        ("echo", json!("later"), true),
    ];
    let connection = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut redis = stack.redis().await;
    let mut ids = Vec::new();
    for (job_type, input, delayed) in &jobs {
        let id = uuid::Uuid::new_v4().to_string();
        let created_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let key = format!("{}:default:job:{{{id}}}", stack.prefix);
        let _: () = redis::pipe()
            .cmd("HSET")
            .arg(&key)
            .arg("doc")
            .arg(old_status_doc(&id, job_type, &created_at))
            .arg("state")
            .arg("queued")
            .cmd("EXPIRE")
            .arg(&key)
            .arg(86400)
            .cmd("ZADD")
            .arg(format!("{}:default:jobs", stack.prefix))
            .arg(chrono::Utc::now().timestamp_millis())
            .arg(&id)
            .query_async(&mut redis)
            .await
            .unwrap();
        let target = if *delayed { &retry } else { &old };
        let confirm = channel
            .basic_publish(
                ShortString::from(""),
                ShortString::from(target.as_str()),
                BasicPublishOptions::default(),
                old_message(&id, job_type, input, &created_at).as_bytes(),
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type(ShortString::from("application/json"))
                    .with_message_id(ShortString::from(id.as_str()))
                    .with_priority(3),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack());
        ids.push((id, input.clone(), *job_type));
    }
    let _ = connection.close(200, ShortString::from("bye")).await;
    stack.wait_queue_len(&old, 4).await;

    // The new workers: one for echo and sleep, one for hash, as specialised workers would be.
    stack.add_worker_with(&[("APP__WORKER__TYPES", "echo,sleep")]);
    stack.add_worker_with(&[("APP__WORKER__TYPES", "hash")]);
    for (id, input, job_type) in &ids {
        let location = format!("/v1/jobs/{id}");
        let done = stack.wait(&location, LONG).await;
        assert_eq!(done.status(), StatusCode::OK, "{job_type} {id}");
        let result: Value = done.json().await.unwrap();
        match *job_type {
            "echo" => assert_eq!(&result, input),
            "sleep" => assert_eq!(result, json!({"slept_seconds": 0.1})),
            _ => assert!(result["sha256"].is_string(), "{result}"),
        }
        let doc = stack.status_doc(&location).await;
        assert_eq!(doc["status"], "succeeded", "{doc}");
        assert_eq!(doc["attempts"], 1, "{doc}");
    }
    // Nothing left behind; the old queue stays (old facades may still publish there) and is
    // consumed, so a job published there later runs too.
    assert_eq!(stack.queue_len(&old).await, 0);
    assert_eq!(stack.queue_len(&format!("{old}.dead")).await, 0);
    // The hash worker moved the echo jobs it found there to echo's queue; it ran none.
    let hash_log = std::fs::read_to_string(stack.log_file("worker2")).unwrap();
    assert!(
        !hash_log
            .lines()
            .any(|l| l.contains("job finished") && l.contains(r#""job_type":"echo""#)),
        "the hash worker never runs echo jobs"
    );
}

#[tokio::test]
async fn a_rolling_deploy_that_changes_a_types_schema_fails_no_job() {
    // Waiting jobs go round the longest retry step: short here.
    let mut stack = Stack::start_with(
        "queues-rolling",
        StackOptions::default()
            .workers(0)
            .per_type_queues()
            .env("APP__AMQP__RETRY_MAX_DELAY_MS", 2000),
    )
    .await;
    let v1 = |name: &str| json!({"type": "greet", "input": {"name": name}});
    let v2 = |name: &str| json!({"type": "greet", "input": {"name": name, "greeting": "Bonjour"}});
    let digests = |t: &Value| -> Vec<(String, u64)> {
        t["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["schema_digest"].as_str().unwrap().to_owned(),
                    v["workers"].as_u64().unwrap(),
                )
            })
            .collect()
    };

    // Version 1 runs, registers `greet`, and stops (worker 1).
    stack.add_worker_binary("greet-worker", &[("GREET_VERSION", "1")]);
    wait_type(&stack, "greet", "v1 served", |t| t["workers"] == 1).await;
    assert!(stack.terminate_worker(0, Duration::from_secs(10)).await);
    wait_type(&stack, "greet", "v1 gone", |t| t["workers"] == 0).await;
    // Accepted against v1's schema (the only one): these wait for a worker.
    let mut old_jobs = Vec::new();
    for i in 0..4 {
        old_jobs.push(stack.submit_ok(&v1(&format!("old{i}"))).await);
    }

    // Version 2 starts (worker 2): the newest, and the only live one.
    stack.add_worker_binary("greet-worker", &[("GREET_VERSION", "2")]);
    wait_type(&stack, "greet", "v2 served", |t| {
        t["workers"] == 1 && t["versions"].as_array().is_some_and(|v| v.len() == 2)
    })
    .await;
    // It receives v1's jobs, which its schema refuses: it neither runs nor fails them.
    let deadline = Instant::now() + LONG;
    let log = || std::fs::read_to_string(stack.log_file("worker2")).unwrap_or_default();
    while log().matches("handed off").count() < 4 {
        assert!(Instant::now() < deadline, "v2 never handed v1's jobs on");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for location in &old_jobs {
        let doc = stack.status_doc(location).await;
        assert_eq!(
            (doc["status"].as_str(), doc["attempts"].as_u64()),
            (Some("queued"), Some(0)),
            "{doc}"
        );
    }
    // Only v2 is live: v1's shape is refused at the door now (no worker could run it), v2's
    // is accepted and runs.
    let refused = stack.submit(&v1("late")).await;
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let p: Value = refused.json().await.unwrap();
    assert_eq!(p["errors"][0]["field"], "input.greeting", "{p}");
    let location = stack.submit_ok(&v2("Ada")).await;
    let result: Value = stack.wait(&location, LONG).await.json().await.unwrap();
    assert_eq!(result, json!({"text": "Bonjour, Ada", "version": 2}));

    // The rolling deploy: version 1 runs again beside version 2 (worker 3). Both shapes are
    // accepted, and each job runs on a version whose schema it meets.
    stack.add_worker_binary("greet-worker", &[("GREET_VERSION", "1")]);
    wait_type(&stack, "greet", "both versions live", |t| {
        digests(t).iter().all(|(_, workers)| *workers == 1)
    })
    .await;
    let mut jobs: Vec<(u8, String, String)> = Vec::new();
    for i in 0..10 {
        let name = format!("n{i}");
        jobs.push((1, name.clone(), stack.submit_ok(&v1(&name)).await));
        jobs.push((2, name.clone(), stack.submit_ok(&v2(&name)).await));
    }
    for (i, location) in old_jobs.iter().enumerate() {
        jobs.push((1, format!("old{i}"), location.clone()));
    }
    for (version, name, location) in &jobs {
        let done = stack.wait(location, LONG).await;
        assert_eq!(done.status(), StatusCode::OK, "{version} {name}");
        let result: Value = done.json().await.unwrap();
        let text = match version {
            1 => format!("Hello, {name}"),
            _ => format!("Bonjour, {name}"),
        };
        assert_eq!(result, json!({"text": text, "version": version}));
        let doc = stack.status_doc(location).await;
        assert_eq!(doc["status"], "succeeded", "{doc}");
    }
    for label in ["worker2", "worker3"] {
        let log = std::fs::read_to_string(stack.log_file(label)).unwrap();
        assert!(
            !log.contains("invalid input"),
            "{label} failed a job on its shape"
        );
    }

    // The deploy ends: version 1 stops; its shape is refused again, v2's still runs.
    assert!(stack.terminate_worker(2, Duration::from_secs(10)).await);
    wait_type(&stack, "greet", "v1 gone again", |t| t["workers"] == 1).await;
    let refused = stack.submit(&v1("after")).await;
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
}
