//! The `command` handler: a script or CLI behind the facade (see README "Your service or
//! script behind it").
//!
//! ```toml
//! [types.thumbnail.command]
//! argv = ["./bin/thumbnail", "--size", "{size}", "--name=img-{size}.png"]
//! result_media_type = "image/png"
//! env = ["PATH", "LANG"]
//! set_env = { API_TOKEN = "${THUMBNAIL_TOKEN}" }
//! ```
//!
//! How a run goes:
//!
//! - The program is run directly, never through a shell. `argv[0]` is fixed by the file: a
//!   name without `/` is looked up on the worker's `PATH` when the file is loaded, a path with
//!   `/` is relative to the file's directory. The other arguments may hold `{field}`
//!   placeholders (only required scalar fields of the schema): an argument that is exactly
//!   `{field}` is that field's value, and a placeholder inside a larger argument is replaced
//!   by the field's text in place. Both are plain text substitution into one argument (no
//!   shell, no word splitting, no globbing), so a value can never become another argument;
//!   a program that takes options should put `--` before arguments from the input (a value
//!   may start with `-`).
//! - The environment is cleared: the program gets only the variables named in `env` (from the
//!   worker's environment, those that are set), those of `set_env`, and `ARR_JOB_ID` and
//!   `ARR_JOB_ATTEMPT`. `PATH` is passed only when `env` names it; otherwise the program gets
//!   [`SAFE_PATH`] (so that a script's `sleep` or `sha256sum` is found) unless `set_env` sets
//!   one.
//! - It runs in a new process group, in a fresh empty directory under the system's temp
//!   directory (removed after the run, however it ends). The input JSON is written to its
//!   stdin, which is then closed.
//! - stdout is the result (at most `max_stdout_bytes`). stderr lines of the form
//!   `progress <percent> <message…>` (e.g. `progress 40 hashed 40 of 100 MiB`) are the job's
//!   progress, reported while it runs; the last other lines (up to [`TAIL_LINES`] lines,
//!   [`TAIL_BYTES`] bytes) are kept for the error of a failed run. More output than a limit
//!   allows stops the program and fails the job.
//! - Exit 0: succeeded (with `result_media_type` JSON, stdout must be JSON). Exit
//!   `input_rejected_exit_code` (65, `EX_DATAERR`): the input is rejected (422). Exit 75
//!   (`EX_TEMPFAIL`): a transient failure, retried. Any other code: failed (424). Killed by a
//!   signal: crashed.
//! - When the run ends (exit, cancel, timeout, a limit, the worker stopping) the whole group is
//!   killed with SIGKILL: nothing the program started outlives its job. A program that leaves
//!   its group on purpose (`setsid`) is beyond this. If the worker itself is killed with
//!   SIGKILL, the program is killed with it (`PR_SET_PDEATHSIG`, Linux), but processes it
//!   started are not, and its directory (`arr-job-<id>-<attempt>-<random>` under the temp
//!   directory) stays.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use shared::JobErrorKind;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::{Segment, TypeContext};
use crate::context::JobContext;
use crate::jobs::{BoxFuture, ErasedHandler, JobFailure, Output};

/// `[types.<name>.command]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandSpec {
    /// The program and its arguments, run without a shell; `{field}` in an argument (not the
    /// program) is that input field's value.
    pub argv: Vec<String>,
    /// What stdout is: `application/json` (the default: it must be JSON) or any media type
    /// (its bytes are the result).
    #[serde(default)]
    pub result_media_type: Option<String>,
    /// The exit code that means "the input is wrong" (default 65, `EX_DATAERR`; not 0 or 75).
    #[serde(default)]
    pub input_rejected_exit_code: Option<i32>,
    /// The environment variables passed on from the worker's (all others are cleared).
    #[serde(default)]
    pub env: Vec<String>,
    /// Environment variables set for the program; values may name the worker's (`${VAR}`).
    #[serde(default)]
    pub set_env: BTreeMap<String, String>,
    /// Most bytes of stdout kept (default: the type's `max_result_bytes`); more fails the job.
    #[serde(default)]
    pub max_stdout_bytes: Option<u64>,
    /// Most bytes of stderr read (default 1 MiB); more fails the job.
    #[serde(default)]
    pub max_stderr_bytes: Option<u64>,
}

/// The default of `input_rejected_exit_code` (`EX_DATAERR` of sysexits.h).
pub const DEFAULT_INPUT_REJECTED_EXIT_CODE: i32 = 65;
/// The exit code of a passing failure (`EX_TEMPFAIL`): the job is retried.
pub const TEMPFAIL_EXIT_CODE: i32 = 75;
/// The default of `max_stderr_bytes`.
pub const DEFAULT_MAX_STDERR_BYTES: u64 = 1024 * 1024;
/// The `PATH` a program gets when `env` does not pass the worker's and `set_env` sets none.
pub const SAFE_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Most stderr lines kept for a failure's detail.
pub const TAIL_LINES: usize = 20;
/// Most bytes of stderr kept for a failure's detail.
pub const TAIL_BYTES: usize = 4096;
/// Longest stderr line looked at (a longer one is cut there).
const MAX_LINE_BYTES: usize = 4096;
/// How long the pipes may stay open after the program exited and its group was killed
/// (only a process that left the group can hold them).
const PIPE_CLOSE_WAIT: Duration = Duration::from_secs(5);

/// A command, checked at load.
#[derive(Debug)]
struct Program {
    /// Absolute (resolved on `PATH` or against the file's directory).
    path: PathBuf,
    /// The arguments after the program, each a text with placeholders.
    args: Vec<Vec<Segment>>,
    media_type: String,
    json: bool,
    rejected_code: i32,
    /// Names passed on from the worker's environment.
    pass_env: Vec<String>,
    /// Set for the program (values expanded at load).
    set_env: Vec<(String, String)>,
    /// Whether the program gets [`SAFE_PATH`] (neither `env` nor `set_env` gives a `PATH`).
    safe_path: bool,
    max_stdout: u64,
    max_stderr: u64,
}

/// The handler of a `command` type, and how long a canceled run may take to stop (zero: the
/// run is stopped at once, and dropping it kills the program's whole group).
pub fn build(
    spec: CommandSpec,
    context: &TypeContext<'_>,
) -> Result<(ErasedHandler, Duration), String> {
    let program = Arc::new(check(spec, context)?);
    let handler: ErasedHandler = Arc::new(move |input: Value, ctx: JobContext| {
        let program = program.clone();
        Box::pin(async move { run(&program, &input, &ctx).await }) as BoxFuture
    });
    Ok((handler, Duration::ZERO))
}

fn check(spec: CommandSpec, context: &TypeContext<'_>) -> Result<Program, String> {
    let (first, rest) = spec
        .argv
        .split_first()
        .ok_or("argv is empty: give the program and its arguments")?;
    if first.contains('{') || first.contains('}') {
        return Err(format!(
            "argv[0] ('{first}') is the program and takes no placeholders: the program is fixed by the file"
        ));
    }
    let path = resolve_program(first, context)?;
    let mut args = Vec::with_capacity(rest.len());
    for arg in rest {
        let segments = super::placeholders(arg).map_err(|e| format!("argv: {e}"))?;
        for segment in &segments {
            if let Segment::Field(field) = segment {
                context
                    .check_placeholder(field)
                    .map_err(|e| format!("argv: {e}"))?;
            }
        }
        args.push(segments);
    }
    let media_type = spec
        .result_media_type
        .unwrap_or_else(|| shared::job::JSON_MEDIA_TYPE.to_owned());
    check_media_type(&media_type)?;
    let rejected_code = spec
        .input_rejected_exit_code
        .unwrap_or(DEFAULT_INPUT_REJECTED_EXIT_CODE);
    if rejected_code == 0 || rejected_code == TEMPFAIL_EXIT_CODE {
        return Err(format!(
            "input_rejected_exit_code cannot be {rejected_code}: 0 means succeeded and 75 (EX_TEMPFAIL) a passing failure"
        ));
    }
    if !(1..=255).contains(&rejected_code) {
        return Err(format!(
            "input_rejected_exit_code must be an exit code from 1 to 255, not {rejected_code}"
        ));
    }
    for name in &spec.env {
        check_env_name(name).map_err(|e| format!("env: {e}"))?;
    }
    let mut set_env = Vec::with_capacity(spec.set_env.len());
    for (name, value) in &spec.set_env {
        check_env_name(name).map_err(|e| format!("set_env: {e}"))?;
        if name.starts_with("ARR_JOB_") {
            return Err(format!(
                "set_env: {name} is set by the worker (ARR_JOB_ID, ARR_JOB_ATTEMPT and the like)"
            ));
        }
        let value = super::expand_env(value).map_err(|e| format!("set_env {name}: {e}"))?;
        if value.contains('\0') {
            return Err(format!("set_env {name}: the value holds a NUL byte"));
        }
        set_env.push((name.clone(), value));
    }
    let safe_path = !spec.env.iter().any(|n| n == "PATH") && !spec.set_env.contains_key("PATH");
    let max_stdout = spec.max_stdout_bytes.unwrap_or(context.max_result_bytes);
    let max_stderr = spec.max_stderr_bytes.unwrap_or(DEFAULT_MAX_STDERR_BYTES);
    if max_stdout == 0 || max_stderr == 0 {
        return Err("max_stdout_bytes and max_stderr_bytes must be at least 1".to_owned());
    }
    Ok(Program {
        path,
        args,
        json: is_json(&media_type),
        media_type,
        rejected_code,
        pass_env: spec.env,
        set_env,
        safe_path,
        max_stdout,
        max_stderr,
    })
}

/// The program `argv[0]` names, as an absolute path to an executable file.
fn resolve_program(name: &str, context: &TypeContext<'_>) -> Result<PathBuf, String> {
    if name.is_empty() {
        return Err("argv[0] is empty: it names the program".to_owned());
    }
    let path = if name.contains('/') {
        let path = context.resolve(Path::new(name));
        if !is_executable(&path) {
            return Err(format!(
                "the program {} (argv[0]) is not an executable file",
                path.display()
            ));
        }
        path
    } else {
        let search = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&search)
            .map(|dir| dir.join(name))
            .find(|candidate| is_executable(candidate))
            .ok_or_else(|| {
                format!(
                    "the program '{name}' (argv[0]) is not on the worker's PATH ({})",
                    search.to_string_lossy()
                )
            })?
    };
    // The run's working directory is a temp dir: a relative path would point elsewhere there.
    std::path::absolute(&path).map_err(|e| format!("argv[0] {}: {e}", path.display()))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn check_media_type(media_type: &str) -> Result<(), String> {
    let essence = media_type.split(';').next().unwrap_or_default().trim();
    let valid_token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    match essence.split_once('/') {
        Some((kind, sub))
            if valid_token(kind) && valid_token(sub) && !media_type.contains(['\r', '\n']) =>
        {
            Ok(())
        }
        _ => Err(format!(
            "result_media_type '{media_type}' is not a media type (type/subtype, e.g. text/plain)"
        )),
    }
}

/// Whether a media type is JSON (`application/json`, `application/…+json`).
fn is_json(media_type: &str) -> bool {
    shared::job::is_json_media_type(media_type)
}

fn check_env_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "'{name}' is not an environment variable name (letters, digits and _, not starting with a digit)"
        ))
    }
}

/// A `progress <percent> <message…>` line of stderr: the percent (a decimal number) and the
/// message (may be empty). `None` for any other line.
pub fn parse_progress(line: &str) -> Option<(f64, &str)> {
    let rest = line.strip_prefix("progress")?;
    if !rest.starts_with([' ', '\t']) {
        return None;
    }
    let rest = rest.trim_start_matches([' ', '\t']);
    let (number, message) = match rest.find([' ', '\t']) {
        Some(at) => (&rest[..at], rest[at..].trim_matches([' ', '\t'])),
        None => (rest, ""),
    };
    let percent: f64 = number.parse().ok()?;
    percent.is_finite().then_some((percent, message))
}

// -- Process groups ------------------------------------------------------------------------

/// The process groups of the programs running now, to kill when the worker stops (see
/// [`kill_all`]).
static LIVE_GROUPS: Mutex<Option<HashSet<i32>>> = Mutex::new(None);

/// Kills (SIGKILL) every process group of a program still running. The worker calls this as
/// it stops: its drain may end with runs still going (after a connection loss they run on
/// in the background, undrained), and the process then exits without dropping their
/// futures, which would leave the programs behind.
pub fn kill_all() {
    let groups: Vec<i32> = match LIVE_GROUPS.lock() {
        Ok(mut live) => live.take().unwrap_or_default().into_iter().collect(),
        Err(_) => return,
    };
    if !groups.is_empty() {
        tracing::warn!(
            groups = groups.len(),
            "stopping the programs of unfinished command jobs"
        );
    }
    for pgid in groups {
        kill_group(pgid);
    }
}

fn kill_group(pgid: i32) {
    // SAFETY: killpg only sends a signal; a group that is gone already answers ESRCH, which
    // is what we want anyway.
    unsafe {
        libc::killpg(pgid, libc::SIGKILL);
    }
}

/// A program's process group, killed when this is dropped (the run ends however it ends:
/// the program exited, the job was canceled or timed out and its future dropped).
struct Group {
    pgid: i32,
}

impl Group {
    fn new(pgid: i32) -> Group {
        if let Ok(mut live) = LIVE_GROUPS.lock() {
            live.get_or_insert_with(HashSet::new).insert(pgid);
        }
        Group { pgid }
    }

    /// Kills the group, and forgets it. Its pgid is the program's pid, which cannot be reused
    /// while the group has a member, and the group is killed right after the program was
    /// reaped, so this hits no other process.
    fn kill(&self) {
        kill_group(self.pgid);
        if let Ok(mut live) = LIVE_GROUPS.lock() {
            if let Some(live) = live.as_mut() {
                live.remove(&self.pgid);
            }
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A run's working directory, removed when dropped.
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn create(ctx: &JobContext) -> std::io::Result<WorkDir> {
        let path = std::env::temp_dir().join(format!(
            "arr-job-{}-{}-{}",
            ctx.job_id(),
            ctx.attempt(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir(&path)?;
        // The program's own: other users of the machine need not see the job's files.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))?;
        Ok(WorkDir { path })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(dir = %self.path.display(), error = %e, "cannot remove a command job's directory");
        }
    }
}

// -- Running -------------------------------------------------------------------------------

/// A stream that passed its limit.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error(
        "the program wrote more than {limit} bytes to {stream} (the limit {key}); it was stopped"
    )]
    TooLong {
        stream: &'static str,
        key: &'static str,
        limit: u64,
    },
    #[error("cannot read the program's {stream}: {source}")]
    Read {
        stream: &'static str,
        source: std::io::Error,
    },
}

/// The last lines of stderr (not progress lines), bounded in lines and bytes.
#[derive(Debug, Default)]
struct Tail {
    lines: VecDeque<String>,
    bytes: usize,
}

impl Tail {
    fn push(&mut self, line: String) {
        self.bytes += line.len() + 1;
        self.lines.push_back(line);
        while self.lines.len() > TAIL_LINES || (self.bytes > TAIL_BYTES && self.lines.len() > 1) {
            if let Some(old) = self.lines.pop_front() {
                self.bytes -= old.len() + 1;
            }
        }
    }

    fn text(&self) -> String {
        let text = self
            .lines
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n");
        if text.len() <= TAIL_BYTES {
            return text;
        }
        // One long line: its end.
        let mut start = text.len() - TAIL_BYTES;
        while !text.is_char_boundary(start) {
            start += 1;
        }
        text[start..].to_owned()
    }

    /// `; stderr: <tail>` to end a message with, or nothing when stderr said nothing.
    fn suffix(&self) -> String {
        let text = self.text();
        if text.trim().is_empty() {
            String::new()
        } else {
            format!("; stderr: {text}")
        }
    }
}

async fn run(program: &Program, input: &Value, ctx: &JobContext) -> Result<Output, JobFailure> {
    let mut args = Vec::with_capacity(program.args.len());
    for segments in &program.args {
        let mut arg = String::new();
        for segment in segments {
            match segment {
                Segment::Literal(text) => arg.push_str(text),
                // The schema requires the field (checked at load), so only a job checked
                // against another version's schema lacks it.
                Segment::Field(field) => {
                    arg.push_str(&super::field_text(input, field).ok_or_else(|| {
                        JobFailure::input_rejected(format!(
                            "the input has no scalar field '{field}'"
                        ))
                    })?)
                }
            }
        }
        args.push(arg);
    }
    let stdin_bytes = serde_json::to_vec(input)
        .map_err(|e| JobFailure::permanent(format!("cannot encode the input: {e}")))?;
    let dir = WorkDir::create(ctx).map_err(|e| {
        JobFailure::transient(format!("cannot create the job's working directory: {e}"))
    })?;

    let mut command = tokio::process::Command::new(&program.path);
    command
        .args(&args)
        .env_clear()
        .current_dir(&dir.path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // The program leads a group of its own, so that everything it starts can be killed
        // at once (and a Ctrl-C at the worker's terminal does not reach it).
        .process_group(0)
        .kill_on_drop(true);
    for name in &program.pass_env {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    if program.safe_path {
        command.env("PATH", SAFE_PATH);
    }
    for (name, value) in &program.set_env {
        command.env(name, value);
    }
    command
        .env("ARR_JOB_ID", ctx.job_id().to_string())
        .env("ARR_JOB_ATTEMPT", ctx.attempt().to_string());
    die_with_worker(&mut command);

    let mut child = command.spawn().map_err(|e| {
        JobFailure::permanent(format!(
            "cannot start the program {}: {e}",
            program.path.display()
        ))
    })?;
    // Declared after `dir`, dropped before it: the group is gone before its directory is removed.
    let group = child.id().map(|pid| Group::new(pid as i32));
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(JobFailure::permanent("the program's pipes were not set up"));
    };

    let write_input = async move {
        // A program that does not read its input closes the pipe; that is its business.
        let _ = stdin.write_all(&stdin_bytes).await;
        drop(stdin);
        Ok::<(), StreamError>(())
    };
    let io = async {
        tokio::try_join!(
            write_input,
            read_limited(stdout, program.max_stdout),
            read_stderr(stderr, program.max_stderr, ctx)
        )
    };
    tokio::pin!(io);
    let mut outputs = None;
    let status = loop {
        tokio::select! {
            done = &mut io, if outputs.is_none() => match done {
                Ok((_, out, tail)) => outputs = Some((out, tail)),
                Err(e) => {
                    drop(group);
                    return Err(JobFailure::permanent(e.to_string()));
                }
            },
            status = child.wait() => break status,
        }
    };
    // The program exited: what it left running in its group goes now (which also closes the
    // pipes those inherited, so the reads below end).
    drop(group);
    let status =
        status.map_err(|e| JobFailure::permanent(format!("cannot wait for the program: {e}")))?;
    let (stdout, tail) = match outputs {
        Some(outputs) => outputs,
        None => match tokio::time::timeout(PIPE_CLOSE_WAIT, &mut io).await {
            Ok(Ok((_, out, tail))) => (out, tail),
            Ok(Err(e)) => return Err(JobFailure::permanent(e.to_string())),
            Err(_) => {
                return Err(JobFailure::permanent(
                    "the program exited but its output stayed open (a process it started left its process group)",
                ))
            }
        },
    };
    outcome(program, status, stdout, &tail)
}

/// What the run's exit means.
fn outcome(
    program: &Program,
    status: ExitStatus,
    stdout: Vec<u8>,
    tail: &Tail,
) -> Result<Output, JobFailure> {
    match status.code() {
        Some(0) if program.json => serde_json::from_slice(&stdout)
            .map(Output::Json)
            .map_err(|e| {
                JobFailure::permanent(format!("stdout is not JSON: {e}{}", tail.suffix()))
            }),
        Some(0) => Ok(Output::Bytes {
            media_type: program.media_type.clone(),
            body: stdout,
        }),
        Some(code) if code == program.rejected_code => {
            let text = tail.text();
            Err(JobFailure::input_rejected(if text.trim().is_empty() {
                format!("the program rejected the input (exited with {code})")
            } else {
                text
            }))
        }
        Some(TEMPFAIL_EXIT_CODE) => Err(JobFailure::transient(format!(
            "exited with {TEMPFAIL_EXIT_CODE} (EX_TEMPFAIL: to be retried){}",
            tail.suffix()
        ))),
        Some(code) => Err(JobFailure::permanent(format!(
            "exited with {code}{}",
            tail.suffix()
        ))),
        None => Err(JobFailure::new(
            JobErrorKind::Crashed,
            format!(
                "killed by signal {}{}",
                status.signal().map_or("?".to_owned(), |s| s.to_string()),
                tail.suffix()
            ),
            false,
        )),
    }
}

/// Asks the kernel to kill the program when the worker dies (Linux; elsewhere nothing). It
/// covers the direct child only, and fires when the thread that started it ends: a runtime
/// worker thread, which lives as long as the worker.
#[cfg(target_os = "linux")]
fn die_with_worker(command: &mut tokio::process::Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs between fork and exec and calls only async-signal-safe
    // functions (prctl, getppid), allocating nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The worker died before the prctl: nobody would kill this one.
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_worker(_command: &mut tokio::process::Command) {}

/// All of `stream`, or an error once it passes `limit` bytes.
async fn read_limited(stream: impl AsyncRead + Unpin, limit: u64) -> Result<Vec<u8>, StreamError> {
    let mut out = Vec::new();
    stream
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .await
        .map_err(|source| StreamError::Read {
            stream: "stdout",
            source,
        })?;
    if out.len() as u64 > limit {
        return Err(StreamError::TooLong {
            stream: "stdout",
            key: "max_stdout_bytes",
            limit,
        });
    }
    Ok(out)
}

/// Reads stderr line by line (up to `limit` bytes): progress lines are reported as they come,
/// the others kept in the tail.
async fn read_stderr(
    mut stream: impl AsyncRead + Unpin,
    limit: u64,
    ctx: &JobContext,
) -> Result<Tail, StreamError> {
    let mut tail = Tail::default();
    let mut pending: Vec<u8> = Vec::new();
    let mut total: u64 = 0;
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|source| StreamError::Read {
                stream: "stderr",
                source,
            })?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > limit {
            return Err(StreamError::TooLong {
                stream: "stderr",
                key: "max_stderr_bytes",
                limit,
            });
        }
        pending.extend_from_slice(&chunk[..n]);
        while let Some(at) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=at).collect();
            stderr_line(&line[..at], &mut tail, ctx).await;
        }
        if pending.len() > MAX_LINE_BYTES {
            // A line this long is no progress line; keep its start in the tail.
            let line: Vec<u8> = std::mem::take(&mut pending);
            stderr_line(&line[..MAX_LINE_BYTES], &mut tail, ctx).await;
        }
    }
    if !pending.is_empty() {
        stderr_line(&pending, &mut tail, ctx).await;
    }
    Ok(tail)
}

async fn stderr_line(line: &[u8], tail: &mut Tail, ctx: &JobContext) {
    let line = String::from_utf8_lossy(line);
    let line = line.trim_end_matches('\r');
    match parse_progress(line) {
        Some((percent, message)) => ctx.progress(percent, message).await,
        None => tail.push(line.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::Settings;

    #[test]
    fn progress_lines_are_parsed() {
        assert_eq!(
            parse_progress("progress 40 hashed 40 of 100 MiB"),
            Some((40.0, "hashed 40 of 100 MiB"))
        );
        assert_eq!(parse_progress("progress 12.5"), Some((12.5, "")));
        assert_eq!(parse_progress("progress\t7\t  a b "), Some((7.0, "a b")));
        assert_eq!(parse_progress("progress 150 over"), Some((150.0, "over")));
        assert_eq!(parse_progress("progress"), None);
        assert_eq!(parse_progress("progress abc"), None);
        assert_eq!(parse_progress("progress NaN x"), None);
        assert_eq!(parse_progress("progress inf"), None);
        assert_eq!(parse_progress("progressive 5"), None);
        assert_eq!(parse_progress(" progress 5"), None);
        assert_eq!(parse_progress("warning: progress 5"), None);
    }

    #[test]
    fn the_tail_keeps_the_last_lines_and_bytes() {
        let mut tail = Tail::default();
        for i in 0..30 {
            tail.push(format!("line {i}"));
        }
        assert_eq!(tail.lines.len(), TAIL_LINES);
        assert!(tail.text().starts_with("line 10\n"), "{}", tail.text());
        assert!(tail.text().ends_with("line 29"));
        tail.push("x".repeat(10_000));
        assert_eq!(tail.lines.len(), 1);
        assert_eq!(tail.text().len(), TAIL_BYTES);
        assert!(Tail::default().suffix().is_empty());
    }

    struct Fixture {
        dir: PathBuf,
        schema: Value,
        settings: Settings,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = std::env::temp_dir().join(format!("arr-command-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(dir.join("bin")).unwrap();
            let script = dir.join("bin/run.sh");
            std::fs::write(&script, "#!/bin/sh\ncat\n").unwrap();
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::write(dir.join("bin/plain.txt"), "not a program").unwrap();
            Fixture {
                dir,
                schema: serde_json::json!({
                    "type": "object",
                    "required": ["name", "n"],
                    "properties": {
                        "name": {"type": "string"},
                        "n": {"type": "integer"},
                        "opt": {"type": "string"},
                        "obj": {"type": "object"}
                    }
                }),
                settings: Settings::load(None).unwrap(),
            }
        }

        fn check(&self, toml_text: &str) -> Result<Program, String> {
            let spec: CommandSpec = toml::from_str(toml_text).map_err(|e| e.to_string())?;
            let context = TypeContext {
                name: "t",
                dir: &self.dir,
                schema: &self.schema,
                max_result_bytes: 1234,
                max_run_seconds: 10,
                settings: &self.settings,
            };
            check(spec, &context)
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn a_command_is_checked_at_load() {
        let f = Fixture::new();
        let p = f
            .check(r#"argv = ["./bin/run.sh", "{name}", "--n={n}", "{{literal}}"]"#)
            .unwrap();
        assert_eq!(p.path, f.dir.join("./bin/run.sh"));
        assert!(p.path.is_absolute());
        assert_eq!(p.args.len(), 3);
        assert_eq!(p.args[0], vec![Segment::Field("name".into())]);
        assert_eq!(
            p.args[1],
            vec![Segment::Literal("--n=".into()), Segment::Field("n".into())]
        );
        assert_eq!(p.args[2], vec![Segment::Literal("{literal}".into())]);
        // The defaults.
        assert!(p.json);
        assert_eq!(p.media_type, "application/json");
        assert_eq!(p.rejected_code, 65);
        assert_eq!((p.max_stdout, p.max_stderr), (1234, 1024 * 1024));
        assert!(p.safe_path);

        // On PATH.
        let p = f.check(r#"argv = ["sh", "-c", "true"]"#).unwrap();
        assert!(
            p.path.is_absolute() && p.path.ends_with("sh"),
            "{:?}",
            p.path
        );

        let e = |text: &str| f.check(text).unwrap_err();
        assert!(e("argv = []").contains("argv is empty"));
        let not_found = e(r#"argv = ["arr-no-such-program-x"]"#);
        assert!(
            not_found.contains("'arr-no-such-program-x'") && not_found.contains("PATH"),
            "{not_found}"
        );
        assert!(e(r#"argv = ["./bin/missing.sh"]"#).contains("not an executable file"));
        assert!(e(r#"argv = ["./bin/plain.txt"]"#).contains("not an executable file"));
        assert!(e(r#"argv = ["./bin"]"#).contains("not an executable file"));
        assert!(e(r#"argv = ["{name}"]"#).contains("takes no placeholders"));
        assert!(e(r#"argv = ["sh", "{opt}"]"#).contains("does not require"));
        assert!(f.check(r#"argv = ["sh", "{obj}"]"#).is_err());
        assert!(e(r#"argv = ["sh", "{nope}"]"#).contains("no property"));
        assert!(e(r#"argv = ["sh", "{open"]"#).contains("argv"));
        assert!(e(r#"argv = ["sh"]
input_rejected_exit_code = 0"#)
        .contains("cannot be 0"));
        assert!(e(r#"argv = ["sh"]
input_rejected_exit_code = 75"#)
        .contains("cannot be 75"));
        assert!(e(r#"argv = ["sh"]
input_rejected_exit_code = 300"#)
        .contains("1 to 255"));
        assert!(e(r#"argv = ["sh"]
result_media_type = "png""#)
        .contains("not a media type"));
        assert!(e(r#"argv = ["sh"]
env = ["NOT-A-NAME"]"#)
        .contains("not an environment variable name"));
        assert!(e(r#"argv = ["sh"]
set_env = { ARR_JOB_ID = "x" }"#)
        .contains("set by the worker"));
        assert!(e(r#"argv = ["sh"]
set_env = { X = "${ARR_COMMAND_TEST_UNSET_VAR}" }"#)
        .contains("ARR_COMMAND_TEST_UNSET_VAR"));
        assert!(e(r#"argv = ["sh"]
max_stdout_bytes = 0"#)
        .contains("at least 1"));
        assert!(e(r#"argv = ["sh"]
shell = true"#)
        .contains("shell"));

        let p = f
            .check(
                r#"argv = ["sh"]
result_media_type = "text/plain; charset=utf-8"
input_rejected_exit_code = 3
env = ["PATH", "HOME"]
max_stdout_bytes = 10
max_stderr_bytes = 20"#,
            )
            .unwrap();
        assert!(!p.json && !p.safe_path);
        assert_eq!(p.rejected_code, 3);
        assert_eq!((p.max_stdout, p.max_stderr), (10, 20));
        assert!(
            f.check(
                r#"argv = ["sh"]
result_media_type = "application/problem+json""#
            )
            .unwrap()
            .json
        );
        let p = f
            .check(
                r#"argv = ["sh"]
set_env = { PATH = "/bin" }"#,
            )
            .unwrap();
        assert!(!p.safe_path);
    }

    fn program(argv: &[&str], media_type: &str) -> Program {
        let settings = Settings::load(None).unwrap();
        let schema = serde_json::json!({"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}});
        let context = TypeContext {
            name: "t",
            dir: Path::new("/"),
            schema: &schema,
            max_result_bytes: 1024,
            max_run_seconds: 10,
            settings: &settings,
        };
        let spec = CommandSpec {
            argv: argv.iter().map(|s| (*s).to_owned()).collect(),
            result_media_type: Some(media_type.to_owned()),
            input_rejected_exit_code: None,
            env: Vec::new(),
            set_env: BTreeMap::new(),
            max_stdout_bytes: Some(100),
            max_stderr_bytes: None,
        };
        check(spec, &context).unwrap()
    }

    fn run_once(
        argv: &[&str],
        media_type: &str,
        input: Value,
    ) -> (Result<Output, JobFailure>, JobContext) {
        let program = program(argv, media_type);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let ctx = JobContext::detached_for("t", Default::default());
            (run(&program, &input, &ctx).await, ctx)
        })
    }

    /// Held by the tests that run programs: `kill_all` kills every one of this process.
    static RUNS: Mutex<()> = Mutex::new(());

    fn alive(pid: &str) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state != "Z" && state != "X")
        })
    }

    #[test]
    fn what_a_program_leaves_behind_goes_when_it_exits() {
        let _runs = RUNS.lock().unwrap_or_else(|e| e.into_inner());
        let pid_file =
            std::env::temp_dir().join(format!("arr-command-pid-{}", uuid::Uuid::new_v4()));
        let script = format!("sleep 300 & echo $! > {}; echo '[1]'", pid_file.display());
        let (out, _) = run_once(&["sh", "-c", &script], "application/json", Value::Null);
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        let _ = std::fs::remove_file(&pid_file);
        // The background `sleep` kept stdout open: the run ended only because it was killed.
        assert_eq!(out.unwrap(), Output::Json(serde_json::json!([1])));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while alive(pid.trim()) {
            assert!(
                std::time::Instant::now() < deadline,
                "sleep {pid} outlived its job"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn kill_all_stops_every_running_program() {
        let _runs = RUNS.lock().unwrap_or_else(|e| e.into_inner());
        let program = program(&["sh", "-c", "sleep 300 & sleep 301"], "application/json");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let started = std::time::Instant::now();
        let out = runtime.block_on(async {
            let ctx = JobContext::detached_for("t", Default::default());
            let run = run(&program, &Value::Null, &ctx);
            tokio::pin!(run);
            // Until the program runs (its group is registered), then stop them all.
            loop {
                tokio::select! {
                    out = &mut run => break out,
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {
                        let running = LIVE_GROUPS.lock().unwrap().as_ref().is_some_and(|g| !g.is_empty());
                        if running {
                            kill_all();
                        }
                    }
                }
            }
        });
        let failure = out.unwrap_err();
        assert_eq!(failure.kind, JobErrorKind::Crashed, "{failure:?}");
        assert!(
            failure.message.starts_with("killed by signal 9"),
            "{failure:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn a_run_maps_exits_to_outcomes() {
        let _runs = RUNS.lock().unwrap_or_else(|e| e.into_inner());
        let input = serde_json::json!({"name": "a b"});
        let (out, _) = run_once(&["sh", "-c", "cat", "x"], "application/json", input.clone());
        assert_eq!(out.unwrap(), Output::Json(input.clone()));
        // A whole-argument placeholder is one argument, spaces and all.
        let (out, _) = run_once(
            &[
                "sh",
                "-c",
                "printf '%s|' \"$@\"; printf '%s' \"$PATH\"",
                "sh",
                "{name}",
                "n={name}",
            ],
            "text/plain",
            input.clone(),
        );
        assert_eq!(
            out.unwrap(),
            Output::Bytes {
                media_type: "text/plain".into(),
                body: format!("a b|n=a b|{SAFE_PATH}").into_bytes()
            }
        );
        let (out, ctx) = run_once(
            &[
                "sh",
                "-c",
                "echo 'progress 30 a third' >&2; echo oops >&2; exit 65",
            ],
            "application/json",
            input.clone(),
        );
        let failure = out.unwrap_err();
        assert_eq!(failure.kind, JobErrorKind::InputRejected);
        assert_eq!(failure.message, "oops");
        let progress = ctx.latest_progress().unwrap();
        assert_eq!(
            (progress.percent, progress.message.as_str()),
            (30.0, "a third")
        );
        let (out, _) = run_once(&["sh", "-c", "exit 75"], "application/json", input.clone());
        assert!(out.unwrap_err().retryable);
        let (out, _) = run_once(
            &["sh", "-c", "echo bad >&2; exit 3"],
            "application/json",
            input.clone(),
        );
        let failure = out.unwrap_err();
        assert!(!failure.retryable);
        assert_eq!(failure.message, "exited with 3; stderr: bad");
        let (out, _) = run_once(
            &["sh", "-c", "kill -9 $$"],
            "application/json",
            input.clone(),
        );
        let failure = out.unwrap_err();
        assert_eq!(failure.kind, JobErrorKind::Crashed);
        assert!(
            failure.message.starts_with("killed by signal 9"),
            "{}",
            failure.message
        );
        let (out, _) = run_once(
            &["sh", "-c", "echo nope"],
            "application/json",
            input.clone(),
        );
        assert!(out.unwrap_err().message.starts_with("stdout is not JSON"));
        let (out, _) = run_once(&["sh", "-c", "yes >&2"], "text/plain", input.clone());
        let message = out.unwrap_err().message;
        assert!(
            message.contains("more than 1048576 bytes to stderr")
                && message.contains("max_stderr_bytes"),
            "{message}"
        );
        let (out, _) = run_once(&["sh", "-c", "yes"], "text/plain", input);
        let message = out.unwrap_err().message;
        assert!(
            message.contains("more than 100 bytes") && message.contains("max_stdout_bytes"),
            "{message}"
        );
    }
}
