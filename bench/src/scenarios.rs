//! The scenarios of the benchmark. Each one runs the service and its baselines in the same run,
//! alternating A-B-A-B over the rounds, records every round's value and the CPU seconds each
//! component spent, and cleans up what it started.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use redis::aio::MultiplexedConnection;
use shared::{JobId, Settings};

use crate::error::{msg, Result};
use crate::load::{closed_loop, http_request, open_loop, redis_get, Conn, LoadResult, Plan, Proto};
use crate::procs::{self, cpu_delta, Components, Owned};
use crate::raw;
use crate::report::Report;
use crate::stack::{delete_matching, Binaries, Stack, StackSpec};
use crate::stats::{median, Latencies};

/// How much work each scenario does (the full run, or the CI smoke run).
#[derive(Debug, Clone)]
pub struct Sizes {
    pub rounds: usize,
    pub e2e_jobs: u64,
    pub clients: usize,
    pub broker_messages: u64,
    pub celery_tasks: u64,
    pub http_seconds: f64,
    pub http_connections: usize,
    pub long_poll_jobs: usize,
    pub polling_jobs: usize,
    pub hash_jobs: u64,
    pub hash_bytes: u64,
    pub open_long_polls: usize,
    /// Scenario 8: clients of the 50 ms backend, seconds per measurement, command jobs.
    pub backend_clients: usize,
    pub backend_seconds: f64,
    pub command_jobs: u64,
}

impl Sizes {
    pub fn full() -> Sizes {
        Sizes {
            rounds: 3,
            e2e_jobs: 3000,
            clients: 32,
            broker_messages: 10000,
            celery_tasks: 2000,
            http_seconds: 3.0,
            http_connections: 32,
            long_poll_jobs: 200,
            polling_jobs: 20,
            hash_jobs: 80,
            // About 30 ms of SHA-256 each: long against the per-job overhead (about 1 ms).
            hash_bytes: 32 << 20,
            open_long_polls: 1000,
            backend_clients: 16,
            backend_seconds: 8.0,
            command_jobs: 200,
        }
    }

    pub fn smoke() -> Sizes {
        Sizes {
            rounds: 1,
            e2e_jobs: 40,
            clients: 4,
            broker_messages: 100,
            celery_tasks: 20,
            http_seconds: 0.3,
            http_connections: 4,
            long_poll_jobs: 5,
            polling_jobs: 2,
            hash_jobs: 4,
            hash_bytes: 1 << 16,
            open_long_polls: 20,
            backend_clients: 2,
            backend_seconds: 0.5,
            command_jobs: 5,
        }
    }
}

/// Where Celery is (the venv's python and celery scripts), if it is to be run.
pub struct Celery {
    pub python: PathBuf,
    pub celery: PathBuf,
    pub script_dir: PathBuf,
}

pub struct Ctx {
    pub settings: Settings,
    pub bins: Binaries,
    pub bench_exe: PathBuf,
    pub sizes: Sizes,
    pub run_id: String,
    pub logs: PathBuf,
    pub redis: MultiplexedConnection,
    /// The shared RabbitMQ and Redis (read only) and this process.
    pub base: Components,
    pub report: Report,
    pub celery: Option<Celery>,
}

impl Ctx {
    pub fn spec(
        &self,
        name: &str,
        quorum: bool,
        workers: usize,
        concurrency: Option<usize>,
    ) -> StackSpec {
        StackSpec {
            name: name.into(),
            queue: format!("{}-{name}", self.run_id),
            key_prefix: format!("{}-{name}", self.run_id),
            quorum,
            workers,
            concurrency,
            env: Vec::new(),
        }
    }

    pub fn components(&self, stack: Option<&Stack>) -> Components {
        let mut c = self.base.clone();
        if let Some(stack) = stack {
            c.set("api", vec![stack.api.pid()]);
            c.set("worker", stack.worker_pids());
        }
        c
    }

    /// Runs `work`, recording its value (as returned) and the CPU each component spent.
    pub async fn measure<F>(
        &mut self,
        components: &Components,
        scenario: &str,
        variant: &str,
        unit: &str,
        work_items: u64,
        work: F,
    ) -> Result<f64>
    where
        F: std::future::Future<Output = Result<f64>>,
    {
        let before = components.snapshot();
        let value = work.await?;
        let cpu = cpu_delta(&before, &components.snapshot());
        self.report
            .record(scenario, variant, unit, value, &cpu, work_items);
        println!("  {scenario} / {variant}: {value:.3} {unit}");
        Ok(value)
    }
}

// ---------------------------------------------------------------------------------------------
// Jobs through the service, counted from Redis
// ---------------------------------------------------------------------------------------------

fn post_plan(stack: &Stack, body: &[u8], jobs: u64, clients: usize) -> Plan {
    let request = http_request("POST", "/v1/jobs", &[], body);
    Plan {
        addr: stack.addr,
        proto: Proto::Http,
        connections: clients,
        duration: Duration::from_secs(300),
        max_requests: jobs,
        make: Arc::new(move |_| request.clone()),
        ok_status: &[202],
        collect_locations: true,
    }
}

fn ids_of(result: &LoadResult) -> Vec<JobId> {
    result
        .locations
        .iter()
        .filter_map(|l| l.rsplit('/').next()?.parse().ok())
        .collect()
}

/// Posts `jobs` jobs with `clients` clients, waits until Redis has every one succeeded, and
/// returns jobs per second from the first job's `created_at` to the last one's `finished_at`.
async fn jobs_through(
    stack: &Stack,
    redis: &mut MultiplexedConnection,
    body: &[u8],
    jobs: u64,
    clients: usize,
) -> Result<f64> {
    let posted = closed_loop(post_plan(stack, body, jobs, clients)).await?;
    if posted.errors > 0 {
        return Err(msg(format!(
            "{} submissions failed: {}",
            posted.errors,
            posted.first_error.unwrap_or_default()
        )));
    }
    let keys: Vec<String> = ids_of(&posted).iter().map(|id| stack.job_key(id)).collect();
    wait_succeeded(redis, &keys, Duration::from_secs(300)).await?;
    rate_from_documents(redis, &keys).await
}

/// Polls the jobs' `state` until all are `succeeded`. Jobs finish about in order, so each poll
/// reads the oldest pending ones first and stops at the first batch that is not done.
async fn wait_succeeded(
    redis: &mut MultiplexedConnection,
    keys: &[String],
    limit: Duration,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    let mut pending: &[String] = keys;
    while !pending.is_empty() {
        let batch = &pending[..pending.len().min(200)];
        let mut pipe = redis::pipe();
        for key in batch {
            pipe.cmd("HGET").arg(key).arg("state");
        }
        let states: Vec<Option<String>> = pipe.query_async(redis).await?;
        let done = states
            .iter()
            .take_while(|s| s.as_deref() == Some("succeeded"))
            .count();
        if let Some(bad) = states
            .iter()
            .flatten()
            .find(|s| matches!(s.as_str(), "failed" | "canceled"))
        {
            return Err(msg(format!("a job ended {bad}")));
        }
        pending = &pending[done..];
        if done < batch.len() {
            if Instant::now() > deadline {
                return Err(msg(format!("{} jobs unfinished", pending.len())));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

async fn rate_from_documents(redis: &mut MultiplexedConnection, keys: &[String]) -> Result<f64> {
    let mut first: Option<DateTime<Utc>> = None;
    let mut last: Option<DateTime<Utc>> = None;
    for chunk in keys.chunks(500) {
        let mut pipe = redis::pipe();
        for key in chunk {
            pipe.cmd("HGET").arg(key).arg("doc");
        }
        let docs: Vec<Option<Vec<u8>>> = pipe.query_async(redis).await?;
        for doc in docs.into_iter().flatten() {
            let doc: serde_json::Value = serde_json::from_slice(&doc)?;
            let time = |field: &str| -> Option<DateTime<Utc>> { doc[field].as_str()?.parse().ok() };
            if let Some(c) = time("created_at") {
                first = Some(first.map_or(c, |f| f.min(c)));
            }
            if let Some(f) = time("finished_at") {
                last = Some(last.map_or(f, |l| l.max(f)));
            }
        }
    }
    let (Some(first), Some(last)) = (first, last) else {
        return Err(msg("no timestamps in the documents"));
    };
    let seconds = (last - first).num_microseconds().unwrap_or(0) as f64 / 1e6;
    Ok(keys.len() as f64 / seconds.max(1e-6))
}

/// The largest resident size each sampled process reached while `work` ran.
struct RssPeak {
    peaks: Arc<Mutex<BTreeMap<String, f64>>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl RssPeak {
    fn start(processes: Vec<(String, u32)>) -> RssPeak {
        let peaks = Arc::new(Mutex::new(BTreeMap::new()));
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let shared = peaks.clone();
        tokio::spawn(async move {
            loop {
                for (name, pid) in &processes {
                    let rss = procs::rss_mib(*pid);
                    if let Ok(mut p) = shared.lock() {
                        let e = p.entry(name.clone()).or_insert(0.0);
                        *e = f64::max(*e, rss);
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = stopped.changed() => return,
                }
            }
        });
        RssPeak { peaks, stop }
    }

    fn finish(self) -> BTreeMap<String, f64> {
        let _ = self.stop.send(true);
        self.peaks.lock().map(|p| p.clone()).unwrap_or_default()
    }
}

const ECHO: &[u8] = br#"{"type":"echo","input":{"n":1}}"#;
/// The same no-op, of a type without priorities (a plain queue; `bench-worker` serves it).
const PLAIN: &[u8] = br#"{"type":"plain","input":{"n":1}}"#;

/// The end-to-end figure of a type without priorities.
pub const PLAIN_SERVICE: &str = "service, a type without priorities (plain classic queue)";

/// 1 and 7 (idle and under load): end-to-end jobs per second against the raw pipeline and the
/// raw broker loop, on a classic (v2) and a quorum queue. Leaves the classic stack running for
/// the later scenarios.
pub async fn end_to_end(ctx: &mut Ctx) -> Result<Stack> {
    let mut classic = None;
    for quorum in [false, true] {
        let kind = if quorum { "quorum" } else { "classic" };
        let scenario = format!("1. end-to-end jobs/s ({kind} queue)");
        println!("{scenario}");
        let stack = Stack::start(
            &ctx.bins,
            ctx.spec(&format!("e2e-{kind}"), quorum, 1, None),
            &ctx.logs,
        )
        .await?;
        if !quorum {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let idle_api = procs::rss_mib(stack.api.pid());
            let idle_worker = procs::rss_mib(stack.workers[0].pid());
            let none = BTreeMap::new();
            ctx.report
                .record("7. memory", "facade RSS idle", "MiB", idle_api, &none, 0);
            ctx.report
                .record("7. memory", "worker RSS idle", "MiB", idle_worker, &none, 0);
        }
        let raw_queue = format!("{}-raw-{kind}", ctx.run_id);
        let loop_queue = format!("{}-loop-{kind}", ctx.run_id);
        let prio_queue = format!("{}-rawprio-{kind}", ctx.run_id);
        let amqp_url = ctx.settings.amqp.url.clone();
        let redis_url = ctx.settings.redis.url.clone();
        {
            let connection = raw::connect(&amqp_url).await?;
            let channel = connection.create_channel().await?;
            raw::declare(&channel, &raw_queue, quorum, None).await?;
            raw::declare(&channel, &loop_queue, quorum, None).await?;
            if !quorum {
                raw::declare(
                    &channel,
                    &prio_queue,
                    quorum,
                    Some(shared::topology::MAX_PRIORITY),
                )
                .await?;
            }
            let _ = connection.close(200, "declared".into()).await;
        }
        let sizes = ctx.sizes.clone();
        let with_stack = ctx.components(Some(&stack));
        let alone = ctx.components(None);
        // The same service with `worker.concurrency` raised to the prefetch (32): a tuning
        // for short jobs (see BENCHMARKS.md), measured beside the defaults.
        let tuned = if quorum {
            None
        } else {
            Some(
                Stack::start(
                    &ctx.bins,
                    ctx.spec(&format!("e2e-{kind}-c32"), quorum, 1, Some(32)),
                    &ctx.logs,
                )
                .await?,
            )
        };
        let raw_prefix = format!("{}-raw-{kind}", ctx.run_id);
        let peak = RssPeak::start(vec![
            ("facade".into(), stack.api.pid()),
            ("worker".into(), stack.workers[0].pid()),
        ]);
        for _ in 0..sizes.rounds {
            let mut redis = ctx.redis.clone();
            ctx.measure(
                &with_stack,
                &scenario,
                "service: POST → worker → succeeded in Redis",
                "jobs/s",
                sizes.e2e_jobs,
                jobs_through(&stack, &mut redis, ECHO, sizes.e2e_jobs, sizes.clients),
            )
            .await?;
            if !quorum {
                ctx.measure(
                    &with_stack,
                    &scenario,
                    PLAIN_SERVICE,
                    "jobs/s",
                    sizes.e2e_jobs,
                    jobs_through(&stack, &mut redis, PLAIN, sizes.e2e_jobs, sizes.clients),
                )
                .await?;
            }
            if let Some(tuned) = &tuned {
                let components = ctx.components(Some(tuned));
                ctx.measure(
                    &components,
                    &scenario,
                    "service with worker.concurrency 32 (= prefetch)",
                    "jobs/s",
                    sizes.e2e_jobs,
                    jobs_through(tuned, &mut redis, ECHO, sizes.e2e_jobs, sizes.clients),
                )
                .await?;
            }
            ctx.measure(
                &alone,
                &scenario,
                "raw pipeline (Redis + publish-confirm + consume-ack, no HTTP)",
                "jobs/s",
                sizes.e2e_jobs,
                raw::pipeline(
                    &amqp_url,
                    &redis_url,
                    &raw_queue,
                    &raw_prefix,
                    sizes.e2e_jobs,
                    sizes.clients,
                    ctx.settings.amqp.prefetch,
                    raw::Publish::Bare,
                ),
            )
            .await?;
            if !quorum {
                // The same on a queue declared as the service declares its classic work queue
                // (with priorities), to tell the queue's cost from the service's.
                ctx.measure(
                    &alone,
                    &scenario,
                    "raw pipeline on a priority queue (x-max-priority 9, as the service's)",
                    "jobs/s",
                    sizes.e2e_jobs,
                    raw::pipeline(
                        &amqp_url,
                        &redis_url,
                        &prio_queue,
                        &raw_prefix,
                        sizes.e2e_jobs,
                        sizes.clients,
                        ctx.settings.amqp.prefetch,
                        raw::Publish::Bare,
                    ),
                )
                .await?;
                ctx.measure(
                    &alone,
                    &scenario,
                    "raw pipeline on a priority queue, publishing as the service does (mandatory, message id, traceparent)",
                    "jobs/s",
                    sizes.e2e_jobs,
                    raw::pipeline(
                        &amqp_url,
                        &redis_url,
                        &prio_queue,
                        &raw_prefix,
                        sizes.e2e_jobs,
                        sizes.clients,
                        ctx.settings.amqp.prefetch,
                        raw::Publish::AsTheService,
                    ),
                )
                .await?;
            }
            ctx.measure(
                &alone,
                &scenario,
                "raw broker loop, 256 confirms in flight",
                "msg/s",
                sizes.broker_messages,
                raw::broker_loop(&amqp_url, &loop_queue, sizes.broker_messages, 256),
            )
            .await?;
            ctx.measure(
                &alone,
                &scenario,
                "raw broker loop, one confirm at a time",
                "msg/s",
                sizes.broker_messages / 10,
                raw::broker_loop(&amqp_url, &loop_queue, sizes.broker_messages / 10, 1),
            )
            .await?;
        }
        if !quorum {
            let none = BTreeMap::new();
            for (name, mib) in peak.finish() {
                ctx.report.record(
                    "7. memory",
                    &format!("{name} RSS peak under end-to-end load"),
                    "MiB",
                    mib,
                    &none,
                    0,
                );
            }
        } else {
            peak.finish();
        }
        raw::delete_queues(&amqp_url, &[raw_queue, loop_queue, prio_queue]).await?;
        let mut redis = ctx.redis.clone();
        delete_matching(&mut redis, &format!("{raw_prefix}:*")).await?;
        if let Some(tuned) = tuned {
            tuned.remove(&ctx.settings, &mut redis).await;
        }
        if quorum {
            stack.remove(&ctx.settings, &mut redis).await;
        } else {
            classic = Some(stack);
        }
    }
    classic.ok_or_else(|| msg("no classic stack"))
}

/// 2: the same no-op workload through Celery (prefork and threads pools), alternating with the
/// service.
pub async fn celery(ctx: &mut Ctx, stack: &Stack) -> Result<()> {
    let Some(celery) = ctx.celery.as_ref() else {
        ctx.report
            .notes
            .push("Celery not run (no --celery-python given)".into());
        return Ok(());
    };
    let scenario = "2. versus Celery: no-op jobs/s end to end";
    println!("{scenario}");
    let prefix = format!("{}-celery-", ctx.run_id);
    let pools = [("prefork", 2usize), ("threads", 8usize)];
    let mut workers = Vec::new();
    for (pool, concurrency) in pools {
        let queue = format!("{}-celery-{pool}", ctx.run_id);
        let mut command = Command::new(&celery.celery);
        command
            .current_dir(&celery.script_dir)
            .env("BENCH_QUEUE", &queue)
            .env("BENCH_PREFIX", &prefix)
            .env("BENCH_AMQP_URL", &ctx.settings.amqp.url)
            .env("BENCH_REDIS_URL", &ctx.settings.redis.url)
            .args(["-A", "celery_bench", "worker", "-P", pool, "-c"])
            .arg(concurrency.to_string())
            .args([
                "-Q",
                &queue,
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-l",
                "WARNING",
            ])
            .arg("-n")
            .arg(format!("{queue}@%h"));
        let worker = Owned::spawn(
            &format!("celery-{pool}"),
            command,
            &ctx.logs.join(format!("celery-{pool}.log")),
        )?;
        workers.push((pool, concurrency, queue, worker));
    }
    let run_celery = |python: PathBuf,
                      dir: PathBuf,
                      queue: String,
                      prefix: String,
                      amqp: String,
                      redis: String,
                      tasks: u64| async move {
        let out = tokio::process::Command::new(python)
            .current_dir(dir)
            .env("BENCH_QUEUE", &queue)
            .env("BENCH_PREFIX", &prefix)
            .env("BENCH_AMQP_URL", amqp)
            .env("BENCH_REDIS_URL", redis)
            .args(["celery_bench.py", "submit"])
            .arg(tasks.to_string())
            .arg("8")
            .output()
            .await?;
        if !out.status.success() {
            return Err(msg(format!(
                "celery client failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let line: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        line["tasks_per_second"]
            .as_f64()
            .ok_or_else(|| msg("no tasks_per_second"))
    };
    // Warm up (and wait for) each worker with a handful of tasks.
    let (python, dir) = (celery.python.clone(), celery.script_dir.clone());
    for (_, _, queue, _) in &workers {
        run_celery(
            python.clone(),
            dir.clone(),
            queue.clone(),
            prefix.clone(),
            ctx.settings.amqp.url.clone(),
            ctx.settings.redis.url.clone(),
            5,
        )
        .await?;
    }
    let sizes = ctx.sizes.clone();
    let ours = ctx.components(Some(stack));
    for _ in 0..sizes.rounds {
        let mut redis = ctx.redis.clone();
        ctx.measure(
            &ours,
            scenario,
            "service (classic queue)",
            "jobs/s",
            sizes.celery_tasks,
            jobs_through(stack, &mut redis, ECHO, sizes.celery_tasks, sizes.clients),
        )
        .await?;
        for (pool, concurrency, queue, worker) in &workers {
            let mut components = ctx.base.clone();
            let mut pids = vec![worker.pid()];
            pids.extend(procs::descendants(worker.pid()));
            components.set("celery-worker", pids);
            let variant = format!("Celery {pool} pool ({concurrency}), acks_late, confirms on");
            let work = run_celery(
                python.clone(),
                dir.clone(),
                queue.clone(),
                prefix.clone(),
                ctx.settings.amqp.url.clone(),
                ctx.settings.redis.url.clone(),
                sizes.celery_tasks,
            );
            ctx.measure(
                &components,
                scenario,
                &variant,
                "jobs/s",
                sizes.celery_tasks,
                work,
            )
            .await?;
        }
    }
    let queues: Vec<String> = workers.iter().map(|(_, _, q, _)| q.clone()).collect();
    for (_, _, _, mut worker) in workers {
        worker.stop(Duration::from_secs(10));
    }
    raw::delete_queues(&ctx.settings.amqp.url, &queues).await?;
    // Celery also declared a direct exchange named after each queue.
    raw::delete_exchanges(&ctx.settings.amqp.url, &queues).await?;
    let mut redis = ctx.redis.clone();
    delete_matching(&mut redis, &format!("{prefix}*")).await?;
    Ok(())
}

fn http_plan(
    addr: std::net::SocketAddr,
    connections: usize,
    seconds: f64,
    make: crate::load::MakeRequest,
    ok: &'static [u16],
) -> Plan {
    Plan {
        addr,
        proto: Proto::Http,
        connections,
        duration: Duration::from_secs_f64(seconds),
        max_requests: u64::MAX,
        make,
        ok_status: ok,
        collect_locations: false,
    }
}

fn check(result: LoadResult, what: &str) -> Result<LoadResult> {
    if result.ok == 0 || result.errors > result.ok / 100 {
        return Err(msg(format!(
            "{what}: {} ok, {} errors, first: {}",
            result.ok,
            result.errors,
            result.first_error.unwrap_or_default()
        )));
    }
    Ok(result)
}

/// 3 and 4: POST and GET throughput and latency against the bare handler, and GET latency at
/// half the maximum rate, open loop, against the bare handler and raw Redis.
pub async fn submit_and_poll(ctx: &mut Ctx) -> Result<()> {
    let mut redis = ctx.redis.clone();
    let stack = Stack::start(&ctx.bins, ctx.spec("http", false, 0, None), &ctx.logs).await?;
    // Sizes of the facade's answers, for the bare handler.
    let mut conn = Conn::connect(stack.addr, Proto::Http).await?;
    let post = conn
        .call(&http_request("POST", "/v1/jobs", &[], ECHO))
        .await?;
    let location = post
        .header("location")
        .ok_or_else(|| msg("no Location"))?
        .to_owned();
    let get = conn.call(&http_request("GET", &location, &[], b"")).await?;
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let bare_port = procs::free_port()?;
    let mut command = Command::new(&ctx.bench_exe);
    command
        .args([
            "bare-server",
            "--port",
            &bare_port.to_string(),
            "--workers",
            &workers.to_string(),
        ])
        .args([
            "--post-size",
            &post.body.len().to_string(),
            "--get-size",
            &get.body.len().to_string(),
        ]);
    let bare = Owned::spawn("bare", command, &ctx.logs.join("bare.log"))?;
    let bare_addr = std::net::SocketAddr::from(([127, 0, 0, 1], bare_port));
    let deadline = Instant::now() + Duration::from_secs(10);
    while Conn::connect(bare_addr, Proto::Http).await.is_err() {
        if Instant::now() > deadline {
            return Err(msg("bare server did not start"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ctx.report.notes.push(format!(
        "HTTP scenarios: facade without workers (jobs stay queued), {workers} HTTP workers for the facade and for the bare handler; answers of {} (POST) and {} (GET) bytes",
        post.body.len(), get.body.len()
    ));

    let sizes = ctx.sizes.clone();
    let facade = ctx.components(Some(&stack));
    let mut bare_components = ctx.base.clone();
    bare_components.set("bare", vec![bare.pid()]);
    let post_request = http_request("POST", "/v1/jobs", &[], ECHO);
    let post_make: crate::load::MakeRequest = Arc::new(move |_| post_request.clone());
    let bare_post = http_request("POST", "/v1/jobs", &[], ECHO);
    let bare_post_make: crate::load::MakeRequest = Arc::new(move |_| bare_post.clone());

    let s3 = "3. submit: POST req/s (closed loop)";
    let s3l = "3. submit: POST latency under max load (closed loop)";
    println!("{s3}");
    let mut ids: Vec<String> = vec![location.clone()];
    for _ in 0..sizes.rounds {
        for (variant, addr, make, comps, is_facade) in [
            ("facade", stack.addr, post_make.clone(), &facade, true),
            (
                "bare actix handler",
                bare_addr,
                bare_post_make.clone(),
                &bare_components,
                false,
            ),
        ] {
            let before = comps.snapshot();
            let mut plan = http_plan(
                addr,
                sizes.http_connections,
                sizes.http_seconds,
                make,
                &[202],
            );
            plan.collect_locations = is_facade;
            let mut r = check(closed_loop(plan).await?, variant)?;
            let cpu = cpu_delta(&before, &comps.snapshot());
            ctx.report
                .record(s3, variant, "req/s", r.per_second(), &cpu, r.ok);
            let none = BTreeMap::new();
            ctx.report.record(
                s3l,
                &format!("{variant} p50"),
                "ms",
                r.latencies.quantile_ms(0.5),
                &none,
                0,
            );
            ctx.report.record(
                s3l,
                &format!("{variant} p99"),
                "ms",
                r.latencies.quantile_ms(0.99),
                &none,
                0,
            );
            println!("  {variant}: {:.0} req/s", r.per_second());
            if is_facade && ids.len() < 10_000 {
                ids.extend(r.locations.drain(..).take(10_000));
            }
        }
    }

    let s4 = "4. poll: GET status req/s (closed loop)";
    println!("{s4}");
    let ids = Arc::new(ids);
    let get_make: crate::load::MakeRequest = {
        let requests: Vec<Vec<u8>> = ids
            .iter()
            .map(|l| http_request("GET", l, &[], b""))
            .collect();
        Arc::new(move |i| requests[i as usize % requests.len()].clone())
    };
    let bare_get = http_request("GET", &location, &[], b"");
    let bare_get_make: crate::load::MakeRequest = Arc::new(move |_| bare_get.clone());
    for _ in 0..sizes.rounds {
        for (variant, addr, make, comps) in [
            ("facade", stack.addr, get_make.clone(), &facade),
            (
                "bare actix handler",
                bare_addr,
                bare_get_make.clone(),
                &bare_components,
            ),
        ] {
            let before = comps.snapshot();
            let r = check(
                closed_loop(http_plan(
                    addr,
                    sizes.http_connections,
                    sizes.http_seconds,
                    make,
                    &[202],
                ))
                .await?,
                variant,
            )?;
            let cpu = cpu_delta(&before, &comps.snapshot());
            ctx.report
                .record(s4, variant, "req/s", r.per_second(), &cpu, r.ok);
            println!("  {variant}: {:.0} req/s", r.per_second());
        }
    }

    // Open loop at half the facade's maximum, the same rate and connections for all three.
    let rate = ctx.report.median_of(s4, "facade").unwrap_or(1000.0) / 2.0;
    let s4l = format!("4. poll: GET latency open loop at {rate:.0} req/s (half the facade's max)");
    println!("{s4l}");
    let doc_key = format!("{}-http:bench-doc", ctx.run_id);
    let _: () = redis::cmd("SET")
        .arg(&doc_key)
        .arg(&get.body)
        .query_async(&mut redis)
        .await?;
    let redis_request = redis_get(&doc_key);
    let redis_make: crate::load::MakeRequest = Arc::new(move |_| redis_request.clone());
    let redis_addr = redis_addr(&ctx.settings.redis.url);
    for _ in 0..sizes.rounds {
        for (variant, addr, proto, make, comps, ok) in [
            (
                "facade",
                stack.addr,
                Proto::Http,
                get_make.clone(),
                &facade,
                &[202u16][..],
            ),
            (
                "bare actix handler",
                bare_addr,
                Proto::Http,
                bare_get_make.clone(),
                &bare_components,
                &[202u16][..],
            ),
            (
                "raw Redis GET",
                redis_addr,
                Proto::Redis,
                redis_make.clone(),
                &ctx.base.clone(),
                &[200u16][..],
            ),
        ] {
            let ok: &'static [u16] = if ok[0] == 200 { &[200] } else { &[202] };
            let before = comps.snapshot();
            let mut plan = http_plan(addr, sizes.http_connections, sizes.http_seconds, make, ok);
            plan.proto = proto;
            let mut r = check(open_loop(plan, rate).await?, variant)?;
            let cpu = cpu_delta(&before, &comps.snapshot());
            let (p50, p99) = (r.latencies.quantile_ms(0.5), r.latencies.quantile_ms(0.99));
            ctx.report.record(
                &s4l,
                &format!("{variant} p50"),
                "ms",
                p50,
                &BTreeMap::new(),
                0,
            );
            ctx.report
                .record(&s4l, &format!("{variant} p99"), "ms", p99, &cpu, r.ok);
            println!(
                "  {variant}: p50 {p50:.3} ms, p99 {p99:.3} ms ({} requests)",
                r.latencies.len()
            );
        }
    }
    ctx.report
        .meta
        .insert("open-loop rate (req/s)".into(), format!("{rate:.0}"));
    drop(bare);
    stack.remove(&ctx.settings, &mut redis).await;
    Ok(())
}

fn redis_addr(url: &str) -> std::net::SocketAddr {
    // redis://host:port/db; the benchmark only ever targets the loopback.
    let port = url
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next()?.parse().ok())
        .unwrap_or(6379);
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

/// 5: POST → result in hand for a no-op job: plain polling that honours `Retry-After`, and one
/// long-poll (`Prefer: wait`).
pub async fn time_to_result(ctx: &mut Ctx, stack: &Stack) -> Result<()> {
    let scenario = "5. time to result: POST → result in hand (median)";
    println!("{scenario}");
    let sizes = ctx.sizes.clone();
    let comps = ctx.components(Some(stack));
    let addr = stack.addr;
    for _ in 0..sizes.rounds {
        let n = sizes.long_poll_jobs;
        ctx.measure(
            &comps,
            scenario,
            "long-poll (Prefer: wait=10), one client, sequential",
            "ms",
            n as u64,
            async move {
                let mut conn = Conn::connect(addr, Proto::Http).await?;
                let post = http_request("POST", "/v1/jobs", &[("Prefer", "wait=10")], ECHO);
                let mut lat = Latencies::default();
                for _ in 0..n {
                    let started = Instant::now();
                    let answer = conn.call(&post).await?;
                    if answer.status != 303 {
                        return Err(msg(format!("long-poll POST answered {}", answer.status)));
                    }
                    let result = answer
                        .header("location")
                        .ok_or_else(|| msg("no Location"))?
                        .to_owned();
                    let got = conn.call(&http_request("GET", &result, &[], b"")).await?;
                    if got.status != 200 {
                        return Err(msg(format!("result answered {}", got.status)));
                    }
                    lat.record(started.elapsed());
                }
                Ok(lat.quantile_ms(0.5))
            },
        )
        .await?;
        let n = sizes.polling_jobs;
        ctx.measure(
            &comps,
            scenario,
            "plain polling honouring Retry-After, concurrent clients",
            "ms",
            n as u64,
            async move {
                let mut tasks = Vec::new();
                for _ in 0..n {
                    tasks.push(tokio::spawn(poll_one(addr)));
                }
                let mut all = Vec::new();
                for t in tasks {
                    all.push(t.await.map_err(|e| msg(e.to_string()))??);
                }
                Ok(median(&all))
            },
        )
        .await?;
    }
    Ok(())
}

/// One job by plain polling; returns milliseconds from POST to result.
async fn poll_one(addr: std::net::SocketAddr) -> Result<f64> {
    let mut conn = Conn::connect(addr, Proto::Http).await?;
    let started = Instant::now();
    let mut answer = conn
        .call(&http_request("POST", "/v1/jobs", &[], ECHO))
        .await?;
    let status_url = answer
        .header("location")
        .ok_or_else(|| msg("no Location"))?
        .to_owned();
    for _ in 0..100 {
        match answer.status {
            202 => {
                let wait: u64 = answer
                    .header("retry-after")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1);
                tokio::time::sleep(Duration::from_secs(wait)).await;
                answer = conn
                    .call(&http_request("GET", &status_url, &[], b""))
                    .await?;
            }
            303 => {
                let result = answer
                    .header("location")
                    .ok_or_else(|| msg("no Location"))?
                    .to_owned();
                let got = conn.call(&http_request("GET", &result, &[], b"")).await?;
                if got.status != 200 {
                    return Err(msg(format!("result answered {}", got.status)));
                }
                return Ok(started.elapsed().as_secs_f64() * 1000.0);
            }
            other => return Err(msg(format!("poll answered {other}"))),
        }
    }
    Err(msg("job not done after 100 polls"))
}

/// 6: `hash` jobs with 1 and 2 worker processes (each running one job at a time).
pub async fn scaling(ctx: &mut Ctx) -> Result<()> {
    let scenario = "6. scaling: hash jobs/s";
    println!("{scenario}");
    let one = Stack::start(&ctx.bins, ctx.spec("scale1", false, 1, Some(1)), &ctx.logs).await?;
    let two = Stack::start(&ctx.bins, ctx.spec("scale2", false, 2, Some(1)), &ctx.logs).await?;
    let body = format!(
        r#"{{"type":"hash","input":{{"bytes":{},"seed":7}}}}"#,
        ctx.sizes.hash_bytes
    )
    .into_bytes();
    let sizes = ctx.sizes.clone();
    for _ in 0..sizes.rounds {
        for (variant, stack) in [("1 worker process", &one), ("2 worker processes", &two)] {
            let comps = ctx.components(Some(stack));
            let mut redis = ctx.redis.clone();
            ctx.measure(
                &comps,
                scenario,
                variant,
                "jobs/s",
                sizes.hash_jobs,
                jobs_through(stack, &mut redis, &body, sizes.hash_jobs, 8),
            )
            .await?;
        }
    }
    ctx.report.notes.push(format!(
        "Scaling: hash jobs of {} bytes; each worker process runs one job at a time (APP__WORKER__CONCURRENCY=1), because on 2 cores one worker at the default concurrency already uses both cores through the blocking pool",
        sizes.hash_bytes
    ));
    let mut redis = ctx.redis.clone();
    one.remove(&ctx.settings, &mut redis).await;
    two.remove(&ctx.settings, &mut redis).await;
    Ok(())
}

/// 7: the facade's resident memory with many long-polls open at once.
pub async fn open_long_polls(ctx: &mut Ctx, stack: &Stack) -> Result<()> {
    let n = ctx.sizes.open_long_polls;
    println!("7. memory with {n} open long-polls");
    let mut conn = Conn::connect(stack.addr, Proto::Http).await?;
    let job = conn
        .call(&http_request(
            "POST",
            "/v1/jobs",
            &[],
            br#"{"type":"sleep","input":{"seconds":8}}"#,
        ))
        .await?;
    let location = job
        .header("location")
        .ok_or_else(|| msg("no Location"))?
        .to_owned();
    // Let it start, so the long-polls wait for its end rather than for `running`.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let request = http_request("GET", &location, &[("Prefer", "wait=4")], b"");
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let mut c = Conn::connect(stack.addr, Proto::Http).await?;
        c.send(&request).await?;
        held.push(c);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = procs::rss_mib(stack.api.pid());
    let started = Instant::now();
    let mut answered_late = 0;
    let answers = futures_util::future::join_all(held.iter_mut().map(|c| c.read_http())).await;
    for a in answers {
        if matches!(a, Ok(ref r) if r.status == 202 && r.header("preference-applied").is_some()) {
            answered_late += 1;
        }
    }
    if answered_late < n {
        return Err(msg(format!(
            "only {answered_late} of {n} long-polls were held and answered"
        )));
    }
    let none = BTreeMap::new();
    ctx.report.record(
        "7. memory",
        &format!("facade RSS with {n} open long-polls"),
        "MiB",
        rss,
        &none,
        n as u64,
    );
    ctx.report.notes.push(format!(
        "{n} long-polls (Prefer: wait=4) held on a running job, all answered when their wait ran out ({} ms after the RSS sample)",
        started.elapsed().as_millis()
    ));
    let _ = conn
        .call(&http_request("DELETE", &location, &[], b""))
        .await;
    Ok(())
}
