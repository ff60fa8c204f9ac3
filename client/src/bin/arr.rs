//! `arr`: the command-line client of the Asynchronous Request-Reply service.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use client::{Client, Error, JobHandle, JobState, ResultBody, StatusDocument};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::Value;

const EXIT_CODES: &str = "\
Exit codes:
  0  success (for wait: the job succeeded)
  1  the job failed
  2  the job was canceled
  3  timed out waiting (the job goes on)
  4  usage, connection or other error (including an HTTP problem such as 404)

While waiting, a progress bar (on stderr) shows the job's percent and message when stdout is a
terminal; otherwise one plain line per change is printed (on stdout, or on stderr with --json
so that stdout holds only the JSON).";

const OK: u8 = 0;
const FAILED: u8 = 1;
const CANCELED: u8 = 2;
const TIMED_OUT: u8 = 3;
const ERROR: u8 = 4;

/// Submit, watch and manage jobs of an Asynchronous Request-Reply service.
#[derive(Parser, Debug)]
#[command(name = "arr", version, after_help = EXIT_CODES)]
struct Cli {
    /// Base URL of the service.
    #[arg(
        long,
        global = true,
        env = "ARR_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    url: String,
    /// API key, sent as `Authorization: Bearer <key>`.
    #[arg(long, global = true, env = "ARR_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Print JSON for scripts: the status document, the result, or the problem.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Submit a job; with --wait, wait for it and print its result.
    Submit {
        /// Job type (echo, sleep, hash, fail, …).
        #[arg(value_name = "TYPE")]
        job_type: String,
        /// The job's input: a JSON file, or `-` for standard input.
        #[arg(long, value_name = "FILE|-")]
        input: String,
        /// Wait for the job to end and print its result.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds (exit code 3).
        #[arg(long, value_name = "S")]
        timeout: Option<f64>,
        /// Priority 0-9 (higher first).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(0..=9))]
        priority: Option<u8>,
        /// Idempotency key: a repeat with the same key and input returns the same job.
        #[arg(long, value_name = "K")]
        idempotency_key: Option<String>,
        /// URL the final status document is POSTed to.
        #[arg(long, value_name = "URL")]
        callback_url: Option<String>,
        /// Write the result to FILE (`-`: standard output) as it is, bytes of any type (a
        /// PDF, a PNG); without it a JSON or text result is printed, and another kind only
        /// when standard output is not a terminal.
        #[arg(short = 'o', long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Print a job's status document (exit code 1 if it failed, 2 if canceled).
    Status {
        /// Job id, or its status URL (absolute or relative; a query string is kept).
        id: String,
    },
    /// Wait for a job to end and print its result.
    Wait {
        /// Job id, or its status URL.
        id: String,
        /// Give up after this many seconds (exit code 3).
        #[arg(long, value_name = "S")]
        timeout: Option<f64>,
        /// Write the result to FILE (`-`: standard output) as it is, bytes of any type (a
        /// PDF, a PNG); without it a JSON or text result is printed, and another kind only
        /// when standard output is not a terminal.
        #[arg(short = 'o', long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Print a succeeded job's result (or write it to a file with -o).
    Result {
        /// Job id, or its status URL.
        id: String,
        /// Write the result to FILE (`-`: standard output) as it is, bytes of any type (a
        /// PDF, a PNG); without it a JSON or text result is printed, and another kind only
        /// when standard output is not a terminal.
        #[arg(short = 'o', long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Cancel a job.
    Cancel {
        /// Job id, or its status URL.
        id: String,
    },
    /// List jobs, newest first.
    List {
        /// Only jobs in this state (queued, running, succeeded, failed, canceled).
        #[arg(long, value_name = "S")]
        status: Option<JobState>,
        /// Only jobs of this type.
        #[arg(long = "type", value_name = "T")]
        job_type: Option<String>,
        /// Jobs per page (1-100).
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
        /// Follow the cursor through every page.
        #[arg(long)]
        all: bool,
    },
    /// List the workers (GET /v1/workers).
    Workers,
    /// List the job types the server accepts (GET /v1/job-types): name, state, live workers,
    /// priorities, longest run and description; with --json, each type's input schema and
    /// example too.
    Types,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { ERROR } else { OK });
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(ERROR);
        }
    };
    ExitCode::from(runtime.block_on(run(cli)))
}

async fn run(cli: Cli) -> u8 {
    let mut builder = Client::builder(&cli.url);
    if let Some(key) = &cli.api_key {
        builder = builder.api_key(key);
    }
    let client = match builder.build() {
        Ok(client) => client,
        Err(e) => return report(&e, cli.json),
    };
    let json = cli.json;
    match cli.command {
        Command::Submit {
            job_type,
            input,
            wait,
            timeout,
            priority,
            idempotency_key,
            callback_url,
            output,
        } => {
            let input = match read_input(&input) {
                Ok(input) => input,
                Err(message) => {
                    eprintln!("error: {message}");
                    return ERROR;
                }
            };
            let mut submit = client.submit(job_type, input);
            if let Some(priority) = priority {
                submit = submit.priority(priority);
            }
            if let Some(key) = idempotency_key {
                submit = submit.idempotency_key(key);
            }
            if let Some(url) = callback_url {
                submit = submit.callback_url(url);
            }
            let handle = match submit.await {
                Ok(handle) => handle,
                Err(e) => return report(&e, json),
            };
            if wait {
                if !json {
                    eprintln!("submitted {} ({})", handle.id, handle.location);
                }
                wait_for(&handle, timeout, json, output.as_deref()).await
            } else {
                match (&handle.submitted, json) {
                    (Some(doc), true) => print_json(doc),
                    _ => println!(
                        "{} {}{}",
                        handle.id,
                        handle.location,
                        if handle.replayed { " (replayed)" } else { "" }
                    ),
                }
                OK
            }
        }
        Command::Status { id } => {
            let handle = match handle(&client, &id) {
                Ok(handle) => handle,
                Err(e) => return report(&e, json),
            };
            match handle.status().await {
                Ok(doc) => {
                    if json {
                        print_json(&doc);
                    } else {
                        print_doc(&doc);
                    }
                    match doc.status {
                        JobState::Failed => FAILED,
                        JobState::Canceled => CANCELED,
                        _ => OK,
                    }
                }
                Err(e) => report(&e, json),
            }
        }
        Command::Wait {
            id,
            timeout,
            output,
        } => match handle(&client, &id) {
            Ok(handle) => wait_for(&handle, timeout, json, output.as_deref()).await,
            Err(e) => report(&e, json),
        },
        Command::Result { id, output } => {
            let handle = match handle(&client, &id) {
                Ok(handle) => handle,
                Err(e) => return report(&e, json),
            };
            match handle.result_body().await {
                Ok(body) => emit_result(&body, output.as_deref()),
                Err(e) => report(&e, json),
            }
        }
        Command::Cancel { id } => {
            let handle = match handle(&client, &id) {
                Ok(handle) => handle,
                Err(e) => return report(&e, json),
            };
            match handle.cancel().await {
                Ok(doc) => {
                    if json {
                        print_json(&doc);
                    } else if doc.status == JobState::Canceled {
                        println!("{} canceled", doc.id);
                    } else {
                        println!("{} is {}: its worker was told to stop", doc.id, doc.status);
                    }
                    OK
                }
                Err(e) => report(&e, json),
            }
        }
        Command::List {
            status,
            job_type,
            limit,
            all,
        } => {
            let mut list = client.list();
            if let Some(status) = status {
                list = list.status(status);
            }
            if let Some(job_type) = job_type {
                list = list.job_type(job_type);
            }
            if let Some(limit) = limit {
                list = list.limit(limit);
            }
            let mut page = match list.await {
                Ok(page) => page,
                Err(e) => return report(&e, json),
            };
            let mut jobs = Vec::new();
            loop {
                jobs.append(&mut page.jobs);
                if !all {
                    break;
                }
                match page.next().await {
                    Ok(Some(next)) => page = next,
                    Ok(None) => break,
                    Err(e) => return report(&e, json),
                }
            }
            if json {
                print_json(&serde_json::json!({"jobs": jobs, "next_cursor": page.next_cursor}));
            } else {
                for doc in &jobs {
                    print_doc(doc);
                }
                if let Some(cursor) = &page.next_cursor {
                    eprintln!("more: use --all (next cursor {cursor})");
                }
            }
            OK
        }
        Command::Types => match client.get_json("v1/job-types").await {
            Ok(body) if json => {
                print_json(&body);
                OK
            }
            Ok(body) => {
                print_types(&body);
                OK
            }
            Err(e) => report(&e, json),
        },
        Command::Workers => match client.get_json("v1/workers").await {
            Ok(body) => {
                print_json(&body);
                OK
            }
            Err(Error::Http {
                status: 404,
                problem,
            }) => {
                if json {
                    print_json(&problem);
                }
                eprintln!("error: this server has no worker listing (HTTP 404: {problem})");
                ERROR
            }
            Err(e) => report(&e, json),
        },
    }
}

/// The job types as a table, one a line.
fn print_types(body: &Value) {
    let types = body["job_types"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if types.is_empty() {
        println!("no job type is registered (no worker has started)");
        return;
    }
    println!(
        "{:<20} {:<15} {:>7} {:<10} {:>8}  DESCRIPTION",
        "TYPE", "STATE", "WORKERS", "PRIORITIES", "MAX RUN"
    );
    for t in types {
        println!(
            "{:<20} {:<15} {:>7} {:<10} {:>7}s  {}",
            t["name"].as_str().unwrap_or("?"),
            t["state"].as_str().unwrap_or("?"),
            t["workers"].as_u64().unwrap_or(0),
            if t["priorities"] == Value::Bool(true) {
                "yes"
            } else {
                "no"
            },
            t["limits"]["max_run_seconds"].as_u64().unwrap_or(0),
            t["description"].as_str().unwrap_or(""),
        );
    }
}

/// A handle from an id or a status URL.
fn handle(client: &Client, id: &str) -> client::Result<JobHandle> {
    if id.contains('/') {
        JobHandle::from_url(client, id)
    } else {
        Ok(client.job(id))
    }
}

fn read_input(source: &str) -> Result<Value, String> {
    let text = if source == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("reading standard input: {e}"))?;
        text
    } else {
        std::fs::read_to_string(source).map_err(|e| format!("reading {source}: {e}"))?
    };
    serde_json::from_str(&text).map_err(|e| format!("the input is not JSON: {e}"))
}

/// Waits, showing progress, and prints the outcome; returns the exit code.
async fn wait_for(
    handle: &JobHandle,
    timeout: Option<f64>,
    json: bool,
    output: Option<&Path>,
) -> u8 {
    let timeout = match timeout {
        None => Duration::from_secs(7 * 24 * 3600),
        Some(s) if s.is_finite() && s >= 0.0 => Duration::from_secs_f64(s),
        Some(s) => {
            eprintln!("error: --timeout {s} is not a number of seconds");
            return ERROR;
        }
    };
    let mut progress = Progress::new(json);
    let outcome = handle.wait_with(timeout, |doc| progress.update(doc)).await;
    progress.finish();
    match outcome {
        Ok(done) => emit_result(&done.body, output),
        Err(e) => report(&e, json),
    }
}

/// Prints a result or writes it to `output`; returns the exit code. JSON is printed pretty,
/// text as it is; bytes of another kind go to a file, or to standard output when that is not
/// a terminal (a pipe, a redirect), never onto a terminal.
fn emit_result(body: &ResultBody, output: Option<&Path>) -> u8 {
    let write = |out: &mut dyn Write| out.write_all(&body.bytes).and_then(|()| out.flush());
    match output {
        Some(path) if path == Path::new("-") => match write(&mut std::io::stdout().lock()) {
            Ok(()) => OK,
            Err(e) => {
                eprintln!("error: writing the result: {e}");
                ERROR
            }
        },
        Some(path) => match std::fs::File::create(path).and_then(|mut f| write(&mut f)) {
            Ok(()) => {
                eprintln!(
                    "wrote {} bytes ({}) to {}",
                    body.bytes.len(),
                    body.media_type,
                    path.display()
                );
                OK
            }
            Err(e) => {
                eprintln!("error: writing the result to {}: {e}", path.display());
                ERROR
            }
        },
        None if body.is_json() => match body.json::<Value>() {
            Ok(value) => {
                print_json(&value);
                OK
            }
            Err(e) => report(&e, false),
        },
        None if body.is_text() || !std::io::stdout().is_terminal() => {
            match write(&mut std::io::stdout().lock()) {
                Ok(()) => OK,
                Err(e) => {
                    eprintln!("error: writing the result: {e}");
                    ERROR
                }
            }
        }
        None => {
            eprintln!(
                "the result is {} ({} bytes), not for a terminal: write it to a file with -o FILE",
                body.media_type,
                body.bytes.len()
            );
            ERROR
        }
    }
}

/// Prints what went wrong (the JSON of it on stdout with --json); returns the exit code.
fn report(error: &Error, json: bool) -> u8 {
    match error {
        Error::JobFailed { problem, status } => {
            if json {
                print_json(problem);
            }
            eprintln!(
                "job {} failed (HTTP {}): {problem}",
                status.id,
                problem.status.unwrap_or_default()
            );
            FAILED
        }
        Error::JobCanceled { status } => {
            if json {
                print_json(status);
            }
            eprintln!("job {} was canceled", status.id);
            CANCELED
        }
        Error::Timeout { waited, last } => {
            if let (true, Some(doc)) = (json, last) {
                print_json(doc);
            }
            match last {
                Some(doc) => eprintln!(
                    "timed out after {:.1} s: job {} is still {}",
                    waited.as_secs_f64(),
                    doc.id,
                    doc.status
                ),
                None => eprintln!("timed out after {:.1} s", waited.as_secs_f64()),
            }
            TIMED_OUT
        }
        Error::Http { problem, .. } => {
            if json {
                print_json(problem);
            }
            eprintln!("error: {error}");
            ERROR
        }
        other => {
            eprintln!("error: {other}");
            ERROR
        }
    }
}

fn print_json(value: &impl Serialize) {
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| "null".into());
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

/// One line per job: id, type, status, percent, message (and the error, if any).
fn print_doc(doc: &StatusDocument) {
    let mut line = format!(
        "{}  {:<8} {:<9} {:>5.1}%",
        doc.id,
        doc.job_type,
        doc.status,
        doc.percent()
    );
    if let Some(message) = doc.message() {
        line.push_str("  ");
        line.push_str(message);
    }
    if let Some(error) = &doc.error {
        line.push_str("  error: ");
        line.push_str(
            error
                .detail
                .as_deref()
                .or(error.title.as_deref())
                .unwrap_or(""),
        );
    }
    println!("{line}");
}

/// Shows a job's progress while waiting: a bar on a terminal, plain lines otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    /// Plain lines go to stderr (with --json, stdout is for the JSON only).
    to_stderr: bool,
    last: Option<(JobState, i64, Option<String>)>,
}

impl Progress {
    fn new(json: bool) -> Progress {
        let bar = std::io::stdout().is_terminal().then(|| {
            let bar = ProgressBar::new(1000);
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{bar:40}] {prefix:>6} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Progress {
            bar,
            to_stderr: json,
            last: None,
        }
    }

    fn update(&mut self, doc: &StatusDocument) {
        let percent = doc.percent().clamp(0.0, 100.0);
        let key = (
            doc.status,
            (percent * 10.0).round() as i64,
            doc.message().map(str::to_owned),
        );
        if self.last.as_ref() == Some(&key) {
            return;
        }
        self.last = Some(key);
        let message = match doc.message() {
            Some(m) => format!("{} {}", doc.status, m),
            None => doc.status.to_string(),
        };
        match &self.bar {
            Some(bar) => {
                bar.set_position((percent * 10.0).round() as u64);
                bar.set_prefix(format!("{percent:.1}%"));
                bar.set_message(message);
            }
            None => {
                let line = format!(
                    "{} {} {percent:.1}%{}",
                    doc.id,
                    doc.status,
                    match doc.message() {
                        Some(m) => format!(" {m}"),
                        None => String::new(),
                    }
                );
                if self.to_stderr {
                    eprintln!("{line}");
                } else {
                    println!("{line}");
                }
            }
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
