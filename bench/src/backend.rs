//! Scenario 8: an existing service behind the facade (issue 18). A backend that answers in a
//! fixed time (50 ms) is called directly and through the facade (a declared `http` job type,
//! `POST /v1/jobs` with `Prefer: wait` and the `GET` of the result), by the same number of
//! clients; and a `command` job against the same program run directly.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use tokio::io::AsyncWriteExt;

use crate::error::{msg, Result};
use crate::load::{http_request, Conn, Proto};
use crate::procs::free_port;
use crate::procs::Owned;
use crate::scenarios::Ctx;
use crate::stack::Stack;
use crate::stats::Latencies;

/// The scenario's name in the report.
pub const SCENARIO: &str = "8. a backend behind it (50 ms per request)";
pub const COMMAND_SCENARIO: &str = "8. a command behind it: ms per job, one client, sequential";
pub const DIRECT: &str = "backend called directly";
pub const THROUGH: &str = "through the facade (POST Prefer: wait + GET result)";
/// The program of the command type, and of its direct runs: reads the input JSON from stdin
/// and writes it back, a JSON result.
const PROGRAM: &str = "/bin/cat";

/// Serves `POST /work` on 127.0.0.1:`port`, answering `{"ok":true}` after `delay_ms`, until
/// killed. One HTTP worker: the wait is a timer, not work.
pub fn serve(port: u16, delay_ms: u64) -> std::io::Result<()> {
    let delay = Duration::from_millis(delay_ms);
    actix_web::rt::System::new().block_on(async move {
        HttpServer::new(move || {
            App::new().route(
                "/work",
                web::post().to(move |_body: web::Bytes| async move {
                    tokio::time::sleep(delay).await;
                    HttpResponse::Ok()
                        .content_type("application/json")
                        .body(r#"{"ok":true}"#)
                }),
            )
        })
        .workers(1)
        .bind(("127.0.0.1", port))?
        .run()
        .await
    })
}

/// The job-types file of the scenario: `backend` in front of the backend, `cat` around
/// [`PROGRAM`].
fn job_types_file(dir: &Path, backend: SocketAddr) -> Result<String> {
    let text = format!(
        r#"[types.backend]
description = "The benchmark's 50 ms backend."
example = {{ n = 1 }}
schema = {{ type = "object", properties = {{ n = {{ type = "integer" }} }} }}
max_run_seconds = 30
[types.backend.http]
url = "http://{backend}/work"
progress_url = false

[types.cat]
description = "cat: the input back as the result."
example = {{ n = 1 }}
schema = {{ type = "object", properties = {{ n = {{ type = "integer" }} }} }}
[types.cat.command]
argv = ["{PROGRAM}"]
"#
    );
    std::fs::create_dir_all(dir)?;
    let path = dir.join("job-types.toml");
    std::fs::write(&path, text)?;
    Ok(path.display().to_string())
}

/// What `clients` closed loops measured: answers per second and the latencies.
struct Measured {
    per_second: f64,
    latencies: Latencies,
}

/// `clients` connections to `addr`, each making `one` (one request, or the POST and the GET
/// of a job) again as soon as the last ended, for `seconds`.
async fn closed_loops<F, Fut>(
    addr: SocketAddr,
    clients: usize,
    seconds: f64,
    one: F,
) -> Result<Measured>
where
    F: Fn(Conn, u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Result<Conn>> + Send,
{
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let one = one.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(addr, Proto::Http).await?;
            let mut latencies = Latencies::default();
            let mut i = c as u64 * 1_000_000;
            while Instant::now() < deadline {
                let sent = Instant::now();
                conn = one(conn, i).await?;
                latencies.record(sent.elapsed());
                i += 1;
            }
            Ok::<_, crate::error::BenchError>(latencies)
        }));
    }
    let mut all = Latencies::default();
    for task in tasks {
        all.extend(task.await.map_err(|e| msg(e.to_string()))??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(Measured {
        per_second: all.len() as f64 / elapsed,
        latencies: all,
    })
}

async fn direct_call(mut conn: Conn, i: u64) -> Result<Conn> {
    let body = format!(r#"{{"n":{i}}}"#);
    let answer = conn
        .call(&http_request("POST", "/work", &[], body.as_bytes()))
        .await?;
    if answer.status != 200 {
        return Err(msg(format!("the backend answered {}", answer.status)));
    }
    Ok(conn)
}

/// One job of `job_type` through the facade: `POST` with `Prefer: wait`, then the result.
async fn job_through(mut conn: Conn, job_type: &str, i: u64) -> Result<Conn> {
    let body = format!(r#"{{"type":"{job_type}","input":{{"n":{i}}}}}"#);
    let answer = conn
        .call(&http_request(
            "POST",
            "/v1/jobs",
            &[("Prefer", "wait=20")],
            body.as_bytes(),
        ))
        .await?;
    if answer.status != 303 {
        return Err(msg(format!(
            "a {job_type} job answered {} (not done within the wait?): {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        )));
    }
    let result = answer
        .header("location")
        .ok_or_else(|| msg("no Location"))?
        .to_owned();
    let got = conn.call(&http_request("GET", &result, &[], b"")).await?;
    if got.status != 200 {
        return Err(msg(format!("the result answered {}", got.status)));
    }
    Ok(conn)
}

/// The same program run directly, as the worker runs it (stdin the input, stdout read).
async fn run_directly(i: u64) -> Result<()> {
    let mut child = tokio::process::Command::new(PROGRAM)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(format!(r#"{{"n":{i}}}"#).as_bytes())
            .await?;
    }
    let out = child.wait_with_output().await?;
    if !out.status.success() || out.stdout.is_empty() {
        return Err(msg(format!("{PROGRAM} failed: {}", out.status)));
    }
    Ok(())
}

/// Runs scenario 8.
pub async fn behind(ctx: &mut Ctx) -> Result<()> {
    println!("{SCENARIO}");
    let sizes = ctx.sizes.clone();
    let clients = sizes.backend_clients;
    let port = free_port()?;
    let mut command = Command::new(&ctx.bench_exe);
    command.args(["backend", "--port", &port.to_string(), "--delay-ms", "50"]);
    let backend = Owned::spawn("backend", command, &ctx.logs.join("backend.log"))?;
    let backend_addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    while Conn::connect(backend_addr, Proto::Http).await.is_err() {
        if Instant::now() > deadline {
            return Err(msg("the backend did not start"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let file = job_types_file(&ctx.logs.join("backend-types"), backend_addr)?;
    // Enough handler slots (and prefetch) that the worker never queues a job behind another:
    // the backend is to be the bottleneck.
    let mut spec = ctx.spec("backend", false, 1, Some(clients * 2));
    spec.env = vec![
        ("APP__WORKER__JOB_TYPES_FILE".into(), file),
        ("APP__AMQP__PREFETCH".into(), (clients * 4).to_string()),
    ];
    let stack = Stack::start(&ctx.bins, spec, &ctx.logs).await?;
    let mut comps = ctx.components(Some(&stack));
    comps.set("backend", vec![backend.pid()]);
    let facade = stack.addr;
    let outcome: Result<()> = async {
        // Warm-up: the facade learns the declared types from the worker's registration.
        let warm = Instant::now() + Duration::from_secs(30);
        loop {
            let conn = Conn::connect(facade, Proto::Http).await?;
            match job_through(conn, "backend", 0).await {
                Ok(_) => break,
                Err(e) if Instant::now() > warm => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        for _ in 0..sizes.rounds {
            let seconds = sizes.backend_seconds;
            for (variant, addr, through) in [(DIRECT, backend_addr, false), (THROUGH, facade, true)]
            {
                let mut measured =
                    closed_loops(addr, clients, seconds, move |conn, i| async move {
                        if through {
                            job_through(conn, "backend", i).await
                        } else {
                            direct_call(conn, i).await
                        }
                    })
                    .await?;
                let n = measured.latencies.len() as u64;
                let p50 = measured.latencies.quantile_ms(0.5);
                let p99 = measured.latencies.quantile_ms(0.99);
                let per_second = measured.per_second;
                ctx.measure(
                    &comps,
                    SCENARIO,
                    &format!("{variant}: req/s, {clients} clients"),
                    "req/s",
                    n,
                    async move { Ok(per_second) },
                )
                .await?;
                ctx.report.record(
                    SCENARIO,
                    &format!("{variant}: p50"),
                    "ms",
                    p50,
                    &Default::default(),
                    n,
                );
                ctx.report.record(
                    SCENARIO,
                    &format!("{variant}: p99"),
                    "ms",
                    p99,
                    &Default::default(),
                    n,
                );
                println!("    p50 {p50:.2} ms, p99 {p99:.2} ms");
            }
            // The command: one client, sequential, against the program run directly, and a
            // no-op job (echo) through the facade to tell the facade's part from the command's.
            let jobs = sizes.command_jobs;
            for (variant, kind) in [
                ("cat run directly (spawn, stdin, stdout)", 0u8),
                ("cat job through the facade", 1),
                ("echo job through the facade (no process)", 2),
            ] {
                ctx.measure(&comps, COMMAND_SCENARIO, variant, "ms", jobs, async move {
                    let mut latencies = Latencies::default();
                    let mut conn = Conn::connect(facade, Proto::Http).await?;
                    for i in 0..jobs {
                        let started = Instant::now();
                        match kind {
                            0 => run_directly(i).await?,
                            1 => conn = job_through(conn, "cat", i).await?,
                            _ => conn = job_through(conn, "echo", i).await?,
                        }
                        latencies.record(started.elapsed());
                    }
                    Ok(latencies.quantile_ms(0.5))
                })
                .await?;
            }
        }
        Ok(())
    }
    .await;
    let mut redis = ctx.redis.clone();
    stack.remove(&ctx.settings, &mut redis).await;
    drop(backend);
    outcome?;
    Ok(())
}
