//! The performance benchmark of the service (issue 6): every scenario against its baseline in
//! the same run, A-B alternating over the rounds, medians, CPU seconds per component, written
//! to `results.json` and `results.md`. Traffic goes to 127.0.0.1 only, every loop is bounded in
//! count and time. Run it through `scripts/bench.sh` (one command: builds, sets up Celery,
//! runs); `--smoke` is the tiny CI variant that asserts no speed.

mod backend;
mod bare;
mod error;
mod load;
mod procs;
mod raw;
mod report;
mod scenarios;
mod stack;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};

use crate::error::{msg, Result};
use crate::procs::Components;
use crate::report::Report;
use crate::scenarios::{Celery, Ctx, Sizes};
use crate::stack::Binaries;

#[derive(Parser)]
#[command(about = "Benchmark of the async request-reply service against its baselines")]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every scenario and write the results.
    Run {
        /// Tiny counts, one round: proves the harness works, measures nothing worth quoting.
        #[arg(long)]
        smoke: bool,
        /// Where results.json, results.md and the logs go.
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
        #[arg(long, default_value = "target/release/api")]
        api_bin: PathBuf,
        #[arg(long, default_value = "target/release/worker")]
        worker_bin: PathBuf,
        /// Python of a venv with Celery installed; without it Celery is not run.
        #[arg(long)]
        celery_python: Option<PathBuf>,
        /// Folder of celery_bench.py.
        #[arg(long, default_value = "bench")]
        celery_dir: PathBuf,
        /// Only these scenarios (comma-separated numbers 1-8); all by default.
        #[arg(long, value_delimiter = ',')]
        only: Vec<u8>,
    },
    /// The 50 ms backend of scenario 8 (started by `run`).
    Backend {
        #[arg(long)]
        port: u16,
        #[arg(long, default_value_t = 50)]
        delay_ms: u64,
    },
    /// The bare actix-web handler baseline (started by `run`).
    BareServer {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        workers: usize,
        #[arg(long)]
        post_size: usize,
        #[arg(long)]
        get_size: usize,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Cmd::Backend { port, delay_ms } => match backend::serve(port, delay_ms) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("backend: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::BareServer {
            port,
            workers,
            post_size,
            get_size,
        } => match bare::serve(port, workers, post_size, get_size) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bare server: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Run {
            smoke,
            out,
            api_bin,
            worker_bin,
            celery_python,
            celery_dir,
            only,
        } => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let options = RunOptions {
                smoke,
                out,
                bins: Binaries {
                    api: api_bin,
                    worker: worker_bin,
                },
                celery_python,
                celery_dir,
                only,
            };
            match runtime.block_on(run(options)) {
                Ok(0) => ExitCode::SUCCESS,
                Ok(failures) => {
                    eprintln!("{failures} scenario(s) failed; see the notes in the results");
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("benchmark failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

struct RunOptions {
    smoke: bool,
    out: PathBuf,
    bins: Binaries,
    celery_python: Option<PathBuf>,
    celery_dir: PathBuf,
    only: Vec<u8>,
}

/// Lets this process (and the facade it starts, which inherits it) hold the many sockets of
/// the long-poll scenario.
fn raise_open_files() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain get/setrlimit calls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max.min(65536);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

/// Runs the scenarios; returns how many failed (each failure is noted in the report).
async fn run(options: RunOptions) -> Result<usize> {
    raise_open_files();
    let started = Instant::now();
    let settings = shared::Settings::load(None).map_err(|e| msg(e.to_string()))?;
    for bin in [&options.bins.api, &options.bins.worker] {
        if !bin.exists() {
            return Err(msg(format!("{} not found: build it first", bin.display())));
        }
    }
    let run_id = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let logs = options.out.join("logs");
    std::fs::create_dir_all(&logs)?;
    let redis = redis::Client::open(settings.redis.url.as_str())?
        .get_multiplexed_async_connection()
        .await?;

    let mut base = Components::default();
    match procs::pid_listening_on(5672) {
        Some(pid) => base.set("rabbitmq", vec![pid]),
        None => eprintln!("warning: no process found listening on 5672; RabbitMQ CPU not reported"),
    }
    match procs::pid_listening_on(6379) {
        Some(pid) => base.set("redis", vec![pid]),
        None => eprintln!("warning: no process found listening on 6379; Redis CPU not reported"),
    }
    base.set("bench (load client)", vec![std::process::id()]);

    let mut report = Report::default();
    let sizes = if options.smoke {
        Sizes::smoke()
    } else {
        Sizes::full()
    };
    let meta = &mut report.meta;
    meta.insert(
        "mode".into(),
        if options.smoke {
            "smoke (tiny counts, figures meaningless)"
        } else {
            "full"
        }
        .into(),
    );
    meta.insert("run id".into(), run_id.clone());
    meta.insert(
        "date (UTC)".into(),
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    );
    meta.insert(
        "cores".into(),
        std::thread::available_parallelism()
            .map(|n| n.get().to_string())
            .unwrap_or_default(),
    );
    meta.insert(
        "load average at start".into(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
            .to_owned(),
    );
    meta.insert("rustc".into(), command_output("rustc", &["--version"]));
    meta.insert(
        "RabbitMQ".into(),
        command_output("rabbitmqctl", &["version"]),
    );
    meta.insert(
        "Redis".into(),
        command_output("redis-server", &["--version"]),
    );
    meta.insert("service".into(), env!("CARGO_PKG_VERSION").into());
    meta.insert("rounds".into(), sizes.rounds.to_string());
    meta.insert("sizes".into(), format!("{sizes:?}"));
    meta.insert(
        "command".into(),
        if options.smoke {
            "scripts/bench.sh --smoke"
        } else {
            "scripts/bench.sh"
        }
        .into(),
    );

    let celery = match &options.celery_python {
        Some(python) => {
            let version = command_output(&python.to_string_lossy(), &["-c", "import celery, kombu; print('celery', celery.__version__, 'kombu', kombu.__version__)"]);
            report.meta.insert("Celery".into(), version);
            let celery_bin = python.with_file_name("celery");
            Some(Celery {
                // Absolute but not canonical: the venv's python is a symlink, and resolving it
                // would lose the venv.
                python: std::path::absolute(python)?,
                celery: std::path::absolute(celery_bin)?,
                script_dir: options.celery_dir.canonicalize()?,
            })
        }
        None => None,
    };
    let mut ctx = Ctx {
        settings,
        bench_exe: std::env::current_exe()?,
        bins: options.bins,
        sizes,
        run_id,
        logs,
        redis,
        base,
        report,
        celery,
    };

    let wanted = |n: u8| options.only.is_empty() || options.only.contains(&n);
    let mut failures = 0;
    let mut note_failure = |ctx: &mut Ctx, what: &str, e: error::BenchError| {
        eprintln!("scenario {what} failed: {e}");
        ctx.report.notes.push(format!("FAILED: {what}: {e}"));
        failures += 1;
    };

    // 1 (and memory idle/under load), then 2, 5 and 7 on the same classic stack.
    let needs_stack = [1u8, 2, 5, 7].iter().any(|&n| wanted(n));
    let classic = if needs_stack {
        match scenarios::end_to_end(&mut ctx).await {
            Ok(stack) => Some(stack),
            Err(e) => {
                note_failure(&mut ctx, "1. end-to-end", e);
                None
            }
        }
    } else {
        None
    };
    if let Some(stack) = &classic {
        if wanted(2) {
            if let Err(e) = scenarios::celery(&mut ctx, stack).await {
                note_failure(&mut ctx, "2. Celery", e);
            }
        }
        if wanted(5) {
            if let Err(e) = scenarios::time_to_result(&mut ctx, stack).await {
                note_failure(&mut ctx, "5. time to result", e);
            }
        }
        if wanted(7) {
            if let Err(e) = scenarios::open_long_polls(&mut ctx, stack).await {
                note_failure(&mut ctx, "7. open long-polls", e);
            }
        }
    }
    if let Some(stack) = classic {
        let mut redis = ctx.redis.clone();
        stack.remove(&ctx.settings, &mut redis).await;
    }
    if wanted(3) || wanted(4) {
        if let Err(e) = scenarios::submit_and_poll(&mut ctx).await {
            note_failure(&mut ctx, "3/4. submit and poll", e);
        }
    }
    if wanted(6) {
        if let Err(e) = scenarios::scaling(&mut ctx).await {
            note_failure(&mut ctx, "6. scaling", e);
        }
    }

    if wanted(8) {
        if let Err(e) = backend::behind(&mut ctx).await {
            note_failure(&mut ctx, "8. a backend behind it", e);
        }
    }

    goals(&mut ctx.report);
    ctx.report.meta.insert(
        "wall time (s)".into(),
        format!("{:.0}", started.elapsed().as_secs_f64()),
    );
    ctx.report.write(&options.out)?;
    println!("\n{}", ctx.report.markdown());
    println!(
        "written: {0}/results.json, {0}/results.md",
        options.out.display()
    );
    Ok(failures)
}

/// The goals of issue 6. A ratio is the median of the per-round ratios (each round's service
/// figure against its baselines' figures of the same round, measured next to each other), so a
/// burst of load from elsewhere on the machine lands on both sides of a ratio.
fn goals(r: &mut Report) {
    let ratio = |x: &[f64]| x[0] / x[1];
    let e2e = |kind: &str| format!("1. end-to-end jobs/s ({kind} queue)");
    let service = "service: POST → worker → succeeded in Redis";
    let raw = "raw pipeline (Redis + publish-confirm + consume-ack, no HTTP)";
    for kind in ["classic", "quorum"] {
        let scenario = e2e(kind);
        let measured = r.paired(&[(&scenario, service), (&scenario, raw)], ratio);
        let detail = medians(r, &scenario, &[service, raw], "jobs/s");
        r.goal(
            &format!("end-to-end ≥ 0.6 × raw pipeline ({kind})"),
            measured,
            Some(0.6),
            true,
            detail,
        );
    }
    // Issue 17: a type without priorities has a plain queue, like the raw pipeline's.
    let classic = e2e("classic");
    let plain = scenarios::PLAIN_SERVICE;
    let measured = r.paired(&[(&classic, plain), (&classic, raw)], ratio);
    let detail = medians(r, &classic, &[plain, raw], "jobs/s");
    r.goal(
        "end-to-end, a type without priorities ≥ 0.6 × raw pipeline (classic)",
        measured,
        Some(0.6),
        true,
        detail,
    );
    // Not a goal: against a raw pipeline that uses the broker as the service does (priority
    // queue, mandatory publish with headers), to tell the design's broker features from the
    // service's own cost.
    let classic = e2e("classic");
    let like = "raw pipeline on a priority queue, publishing as the service does (mandatory, message id, traceparent)";
    if let Some(x) = r.paired(&[(&classic, service), (&classic, like)], ratio) {
        r.notes.push(format!(
            "end-to-end (classic) against a raw pipeline using the broker as the service does: {x:.3} (median of the per-round ratios)"
        ));
    }
    let tuned = "service with worker.concurrency 32 (= prefetch)";
    if let Some(x) = r.paired(&[(&classic, tuned), (&classic, raw)], ratio) {
        r.notes.push(format!(
            "end-to-end (classic) with worker.concurrency 32 against the raw pipeline: {x:.3} (median of the per-round ratios)"
        ));
    }
    let celery_s = "2. versus Celery: no-op jobs/s end to end";
    let ours = "service (classic queue)";
    let pools: Vec<String> = r
        .figures
        .iter()
        .filter(|f| f.scenario == celery_s && f.variant.starts_with("Celery"))
        .map(|f| f.variant.clone())
        .collect();
    let mut figures = vec![(celery_s, ours)];
    figures.extend(pools.iter().map(|p| (celery_s, p.as_str())));
    let measured = if pools.is_empty() {
        None
    } else {
        r.paired(&figures, |x| {
            x[0] / x[1..].iter().copied().fold(0.0, f64::max)
        })
    };
    let mut names = vec![ours];
    names.extend(pools.iter().map(String::as_str));
    let detail = medians(r, celery_s, &names, "jobs/s");
    r.goal(
        "end-to-end ≥ 10 × Celery (its best pool in each round)",
        measured,
        Some(10.0),
        true,
        detail,
    );
    for (goal, scenario, target) in [
        (
            "POST req/s ≥ 0.35 × bare handler",
            "3. submit: POST req/s (closed loop)",
            0.35,
        ),
        (
            "GET status req/s ≥ 0.6 × bare handler",
            "4. poll: GET status req/s (closed loop)",
            0.6,
        ),
    ] {
        let measured = r.paired(
            &[(scenario, "facade"), (scenario, "bare actix handler")],
            ratio,
        );
        let detail = medians(r, scenario, &["facade", "bare actix handler"], "req/s");
        r.goal(goal, measured, Some(target), true, detail);
    }
    // Not a goal: every 202 waits for a publisher confirm, so no submit rate can pass what the
    // broker confirms (the raw broker loop, 256 confirms in flight). Medians of two scenarios.
    let post = r.median_of("3. submit: POST req/s (closed loop)", "facade");
    let bare = r.median_of("3. submit: POST req/s (closed loop)", "bare actix handler");
    let ceiling = r.median_of(&classic, "raw broker loop, 256 confirms in flight");
    if let (Some(post), Some(bare), Some(ceiling)) = (post, bare, ceiling) {
        r.notes.push(format!(
            "submit against the broker's confirm ceiling (raw broker loop, 256 confirms in flight, classic queue, {ceiling:.0} msg/s): POST {:.3}; that ceiling is {:.3} × the bare handler, the most any confirmed submit can reach",
            post / ceiling,
            ceiling / bare
        ));
    }
    let open = r
        .figures
        .iter()
        .find(|f| f.scenario.starts_with("4. poll: GET latency open loop"))
        .map(|f| f.scenario.clone());
    if let Some(open) = open {
        let names = ["facade p99", "bare actix handler p99", "raw Redis GET p99"];
        let measured = r.paired(
            &[(&open, names[0]), (&open, names[1]), (&open, names[2])],
            |x| x[0] / (x[1] + x[2]),
        );
        let detail = medians(r, &open, &names, "ms");
        r.goal(
            "GET p99 at half load ≤ 1.5 × (raw Redis p99 + bare p99): facade p99 / (Redis p99 + bare p99)",
            measured,
            Some(1.5),
            false,
            detail,
        );
    }
    let lp = r.median_of(
        "5. time to result: POST → result in hand (median)",
        "long-poll (Prefer: wait=10), one client, sequential",
    );
    r.goal(
        "POST → result with long-poll ≤ 2 ms median (ms)",
        lp,
        Some(2.0),
        false,
        String::new(),
    );
    let scaling = "6. scaling: hash jobs/s";
    let measured = r.paired(
        &[
            (scaling, "2 worker processes"),
            (scaling, "1 worker process"),
        ],
        ratio,
    );
    let detail = medians(
        r,
        scaling,
        &["2 worker processes", "1 worker process"],
        "jobs/s",
    );
    r.goal(
        "hash jobs/s with 2 workers ≥ 1.8 × with 1",
        measured,
        Some(1.8),
        true,
        detail,
    );
    // Issue 18: a 50 ms backend called directly and through the facade by as many clients.
    let clients_of = |r: &Report, prefix: &str| {
        r.figures
            .iter()
            .find(|f| {
                f.scenario == backend::SCENARIO
                    && f.variant.starts_with(prefix)
                    && f.unit == "req/s"
            })
            .map(|f| f.variant.clone())
    };
    if let (Some(direct), Some(through)) = (
        clients_of(r, backend::DIRECT),
        clients_of(r, backend::THROUGH),
    ) {
        let s = backend::SCENARIO;
        let measured = r.paired(&[(s, &through), (s, &direct)], ratio);
        let detail = medians(r, s, &[&through, &direct], "req/s");
        r.goal(
            "a 50 ms backend through the facade ≥ 0.9 × its throughput called directly",
            measured,
            Some(0.9),
            true,
            detail,
        );
        for q in ["p50", "p99"] {
            let t = format!("{}: {q}", backend::THROUGH);
            let d = format!("{}: {q}", backend::DIRECT);
            let added = r.paired(&[(s, &t), (s, &d)], |x| x[0] - x[1]);
            let detail = medians(r, s, &[&t, &d], "ms");
            let goal = format!("time the facade adds to a 50 ms backend at {q} (ms)");
            if q == "p50" {
                r.goal(&goal, added, Some(2.0), false, detail);
            } else if let Some(added) = added {
                // Not a goal: the tail on 2 shared cores, for the record.
                r.notes.push(format!(
                    "{goal}: {added:.3} (median of the per-round differences; {detail})"
                ));
            }
        }
    }
    let c = backend::COMMAND_SCENARIO;
    let names = [
        "cat job through the facade",
        "cat run directly (spawn, stdin, stdout)",
        "echo job through the facade (no process)",
    ];
    let over_direct = r.paired(&[(c, names[0]), (c, names[1])], |x| x[0] - x[1]);
    if let Some(over) = over_direct {
        let detail = medians(r, c, &names, "ms");
        r.notes.push(format!(
            "what a command job costs over running the command directly: {over:.3} ms per job (median of the per-round differences; {detail})"
        ));
        let over_echo = r.paired(&[(c, names[0]), (c, names[2])], |x| x[0] - x[1]);
        if let Some(x) = over_echo {
            r.notes.push(format!(
                "a command job (cat) against a no-op job through the facade: {x:.3} ms more (the process: spawn, pipes, its group and temp dir)"
            ));
        }
    }
    let idle = r.median_of("7. memory", "facade RSS idle");
    r.goal(
        "facade RSS idle ≤ 40 MiB",
        idle,
        Some(40.0),
        false,
        String::new(),
    );
}

/// "a / b / c unit": the medians of `variants`, for a goal's detail.
fn medians(r: &Report, scenario: &str, variants: &[&str], unit: &str) -> String {
    let values: Vec<String> = variants
        .iter()
        .map(|v| match r.median_of(scenario, v) {
            Some(m) if m >= 100.0 => format!("{m:.0}"),
            Some(m) => format!("{m:.3}"),
            None => "?".into(),
        })
        .collect();
    format!("medians {} {unit}", values.join(" / "))
}
