//! The command line of every worker binary, the `worker` binary's and yours (see
//! [`crate::Worker`]): parses the arguments, loads the settings (the built-in defaults, an
//! optional `--config` file, `APP__SECTION__KEY` overrides), builds the async runtime and runs
//! the worker or one of its tools (`job-types list|register`, `dead-letters list|replay`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shared::Settings;

use crate::builder::Worker;
use crate::dead_letters;
use crate::jobs::Registry;

/// A worker of the asynchronous request-reply service. Without a command it runs the worker.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// A TOML file layered over the built-in defaults (environment variables still win).
    #[arg(long, env = "APP_CONFIG_FILE", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the worker (the default).
    Run,
    /// Inspect or replay the dead-letter queues (`<work queue>.dead`).
    #[command(subcommand)]
    DeadLetters(DeadLetterCommand),
    /// The job types this worker serves (its binary's and those of `worker.job_types_file`,
    /// narrowed by `worker.types`). `job-types list` also checks a job-types file: a bad one
    /// is an error naming the file, the type and the problem (exit code 2).
    #[command(subcommand)]
    JobTypes(JobTypesCommand),
}

#[derive(Subcommand)]
enum JobTypesCommand {
    /// Print what this worker registers about each type, one JSON object a line.
    List,
    /// Register the types with the facades (in Redis) and exit, without serving them: their
    /// jobs are accepted and wait in the queue until a worker serving them starts.
    Register,
}

#[derive(Subcommand)]
enum DeadLetterCommand {
    /// Print up to LIMIT dead letters, one JSON object a line, without removing them.
    List {
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// The work queue whose dead letters to read (`jobs.render`; repeatable). Default:
        /// the queues of the types this worker serves, and the old single queue's.
        #[arg(long = "queue")]
        queues: Vec<String>,
    },
    /// Move up to LIMIT dead letters back into their types' queues; their jobs become queued
    /// again.
    Replay {
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// As for `list`.
        #[arg(long = "queue")]
        queues: Vec<String>,
    },
}

/// Parses the command line and runs what it asks for with `worker`'s job types.
pub fn main(worker: Worker) -> ExitCode {
    let args = Args::parse();
    let settings = match Settings::load_or_exit_code(args.config.as_deref()) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    // One thread runs the worker's async side by default: handing deliveries, Redis replies
    // and acks between threads cost more CPU than the jobs' bookkeeping itself (BENCHMARKS.md:
    // about a third less worker CPU per no-op job). CPU-heavy handlers run on the blocking
    // pool either way; `worker.runtime_threads` > 1 is for handlers that compute in async code.
    let runtime = match settings.worker.runtime_threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    };
    match runtime {
        Ok(runtime) => {
            let code = runtime.block_on(run(args, settings, worker));
            // A handler's blocking thread still running past the grace (its job went back to
            // the queue) must not hold up the exit: dropping the runtime would wait for it.
            runtime.shutdown_timeout(std::time::Duration::from_millis(500));
            code
        }
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args, settings: Settings, worker: Worker) -> ExitCode {
    let registry = match worker.registry_for(&settings) {
        Ok(registry) => registry,
        Err(e) => {
            eprintln!("invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    match args.command.unwrap_or(Command::Run) {
        Command::Run => {
            // Only the worker logs; the tools print their result alone on stdout.
            let telemetry =
                shared::telemetry::init_for(worker.name(), &settings.log, &settings.telemetry);
            let shutdown = crate::startup::shutdown_signal();
            let code = match crate::startup::run(settings, registry, shutdown).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "worker failed");
                    ExitCode::FAILURE
                }
            };
            // Send the spans still buffered before exiting.
            telemetry.shutdown();
            code
        }
        Command::JobTypes(JobTypesCommand::List) => {
            let now = chrono::Utc::now().timestamp_millis();
            for record in registry.records(&settings.jobs, &settings.amqp, now, now) {
                println!("{}", serde_json::to_string(&record).unwrap_or_default());
            }
            ExitCode::SUCCESS
        }
        Command::JobTypes(JobTypesCommand::Register) => {
            match crate::fleet::register_once(&settings, &registry).await {
                Ok(n) => {
                    println!("{}", serde_json::json!({ "registered": n }));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("cannot register the job types: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::DeadLetters(DeadLetterCommand::List { limit, queues }) => {
            let queues = dead_letter_queues(&settings, &registry, queues);
            match dead_letters::list(&settings, &queues, limit).await {
                Ok(letters) => {
                    for letter in letters {
                        println!("{}", serde_json::to_string(&letter).unwrap_or_default());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("cannot list dead letters: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::DeadLetters(DeadLetterCommand::Replay { limit, queues }) => {
            let queues = dead_letter_queues(&settings, &registry, queues);
            // A type's queue as this worker's configuration names it (the registry of other
            // workers is not consulted: replay with the binary and configuration that serve
            // the type).
            let route = |job_type: &str| settings.amqp.queue_of(job_type);
            match dead_letters::replay(&settings, &queues, route, limit).await {
                Ok(report) => {
                    println!("{}", serde_json::to_string(&report).unwrap_or_default());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("cannot replay dead letters: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The work queues whose dead letters a command reads: those given, or this worker's types'
/// queues and the old single queue.
fn dead_letter_queues(settings: &Settings, registry: &Registry, given: Vec<String>) -> Vec<String> {
    if !given.is_empty() {
        return given;
    }
    let mut queues: Vec<String> = registry
        .queues(&settings.amqp)
        .map(|q| q.into_keys().collect())
        .unwrap_or_default();
    queues.push(settings.amqp.queue.clone());
    queues
}
