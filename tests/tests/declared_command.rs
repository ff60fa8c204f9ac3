//! Declared `command` job types (`worker.job_types_file`, `[types.<name>.command]`): real
//! bash scripts run by a real worker behind a real facade. Their input on stdin, their
//! environment, working directory, exit codes, result media types, output limits and
//! progress lines; and that nothing a script starts outlives its job, however the job ends
//! (cancel, timeout, worker shutdown).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use e2e::{Stack, StackOptions};
use reqwest::StatusCode;
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(60);

/// The declared types, all on the stack's shared test queue (`<queue>.work`, which the
/// harness cleans up).
const TYPES: [&str; 9] = [
    "cmd_ok",
    "cmd_png",
    "cmd_reject",
    "cmd_flaky",
    "cmd_fail",
    "cmd_fork",
    "cmd_fork_slow",
    "cmd_big",
    "cmd_progress",
];

/// A directory with the scripts and the job-types file, removed at the end.
struct Fixture {
    dir: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = std::env::temp_dir().join(format!(
            "arr-e2e-command-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..10]
        ));
        std::fs::create_dir_all(dir.join("scripts")).expect("fixture dir");
        let f = Fixture { dir };
        f.script(
            "ok.sh",
            r#"input=$(cat)
echo "a file of the run" > scratch.txt
printf '{"input":%s,"arg":"%s","passed":"%s","hidden":"%s","pwd":"%s","job_id":"%s","attempt":"%s","path":"%s"}' \
  "$input" "$1" "${ARR_TEST_PASSED-unset}" "${ARR_TEST_HIDDEN-unset}" "$PWD" "$ARR_JOB_ID" "$ARR_JOB_ATTEMPT" "$PATH"
"#,
        );
        f.script("png.sh", r#"printf '\x89PNG\r\n\x1a\n%s' "$1""#);
        f.script(
            "reject.sh",
            r#"cat > /dev/null
echo "progress 10 checking" >&2
echo "looking at the input" >&2
echo "the name must not be 'bad'" >&2
exit 65
"#,
        );
        f.script(
            "flaky.sh",
            r#"if [ ! -e "$COUNTER" ]; then
  touch "$COUNTER"
  echo "the backend is busy" >&2
  exit 75
fi
printf '{"attempt":%s}' "$ARR_JOB_ATTEMPT"
"#,
        );
        f.script(
            "fail.sh",
            r#"echo "disk on fire" >&2
exit 3
"#,
        );
        // Children and grandchildren in the background (each in a subshell), their pids in
        // $PIDS; then it waits for a long time.
        f.script(
            "fork.sh",
            r#"echo "$PWD" > "$PIDS.dir"
echo $$ > "$PIDS.main"
( sleep 300 & echo $! >> "$PIDS"; ( sleep 301 & echo $! >> "$PIDS"; wait ) & echo $! >> "$PIDS"; wait ) &
echo $! >> "$PIDS"
echo $$ >> "$PIDS"
echo "progress 5 forked" >&2
exec sleep 302
"#,
        );
        f.script("big.sh", "yes 'more output than allowed'\n");
        f.script(
            "progress.sh",
            r#"echo "progress 40 hashed 40 of 100 MiB" >&2
sleep 3
echo "progress 80 hashed 80 of 100 MiB" >&2
sleep 1
echo '{"done":true}'
"#,
        );
        let counter = f.path("counter");
        let pids = f.path("pids");
        // Priorities like the built-ins, with which they share the queue.
        let any = r#"schema = { type = "object" }
example = {}
priorities = true"#;
        let toml = format!(
            r#"
[types.cmd_ok]
description = "Echoes its input, argument, environment and directory."
schema = {{ type = "object", required = ["name"], properties = {{ name = {{ type = "string" }} }} }}
example = {{ name = "x" }}
priorities = true
[types.cmd_ok.command]
argv = ["scripts/ok.sh", "{{name}}"]
env = ["ARR_TEST_PASSED"]

[types.cmd_png]
description = "A PNG (of sorts)."
schema = {{ type = "object", required = ["tag"], properties = {{ tag = {{ type = "string" }} }} }}
example = {{ tag = "x" }}
priorities = true
[types.cmd_png.command]
argv = ["./scripts/png.sh", "tag={{tag}}"]
result_media_type = "image/png"

[types.cmd_reject]
description = "Rejects its input."
{any}
[types.cmd_reject.command]
argv = ["scripts/reject.sh"]

[types.cmd_flaky]
description = "Fails once with EX_TEMPFAIL."
{any}
max_attempts = 3
[types.cmd_flaky.command]
argv = ["scripts/flaky.sh"]
set_env = {{ COUNTER = "{counter}" }}

[types.cmd_fail]
description = "Exits with 3."
{any}
[types.cmd_fail.command]
argv = ["scripts/fail.sh"]

[types.cmd_fork]
description = "Forks, then waits."
{any}
max_run_seconds = 3
max_attempts = 1
[types.cmd_fork.command]
argv = ["scripts/fork.sh"]
set_env = {{ PIDS = "{pids}" }}

[types.cmd_fork_slow]
description = "Forks, then waits (a long limit)."
{any}
max_run_seconds = 600
[types.cmd_fork_slow.command]
argv = ["scripts/fork.sh"]
set_env = {{ PIDS = "{pids}" }}

[types.cmd_big]
description = "Writes too much."
{any}
[types.cmd_big.command]
argv = ["scripts/big.sh"]
result_media_type = "text/plain"
max_stdout_bytes = 1000

[types.cmd_progress]
description = "Reports progress."
{any}
[types.cmd_progress.command]
argv = ["scripts/progress.sh"]
"#,
            counter = counter.display(),
            pids = pids.display(),
        );
        std::fs::write(f.file(), toml).expect("job-types file");
        f
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn file(&self) -> PathBuf {
        self.path("job-types.toml")
    }

    fn script(&self, name: &str, body: &str) {
        let path = self.dir.join("scripts").join(name);
        std::fs::write(&path, format!("#!/bin/bash\n{body}")).expect("script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    fn options(&self) -> StackOptions {
        let mut options = StackOptions::default()
            .env("APP__WORKER__JOB_TYPES_FILE", self.file().display())
            .env("APP__AMQP__RETRY_BASE_DELAY_MS", 100)
            .env("ARR_TEST_PASSED", "passed on")
            .env("ARR_TEST_HIDDEN", "not for the program");
        for t in TYPES {
            options = options.env(
                &format!("APP__AMQP__TYPE_QUEUES__{}", t.to_uppercase()),
                "work",
            );
        }
        options
    }

    /// The pids `fork.sh` wrote, once all five are there.
    async fn forked_pids(&self) -> Vec<u32> {
        let deadline = Instant::now() + LONG;
        loop {
            let pids: Vec<u32> = std::fs::read_to_string(self.path("pids"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            if pids.len() >= 5 {
                return pids;
            }
            assert!(Instant::now() < deadline, "fork.sh never forked: {pids:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The working directory `fork.sh` ran in.
    fn fork_dir(&self) -> PathBuf {
        PathBuf::from(
            std::fs::read_to_string(self.path("pids.dir"))
                .expect("fork.sh wrote its directory")
                .trim(),
        )
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether `pid` is a live process (a zombie waiting for its parent to reap it is dead).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S …": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Waits (up to 10 s) until none of `pids` is alive; fails naming those that are.
async fn assert_all_gone(pids: &[u32], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|&p| alive(p)).collect();
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: processes of the job are still alive: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_running(stack: &Stack, location: &str) {
    let deadline = Instant::now() + LONG;
    while stack.status_doc(location).await["status"] != "running" {
        assert!(Instant::now() < deadline, "never running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn problem(response: reqwest::Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    let body: Value = response.json().await.expect("a problem document");
    assert!(body["detail"].is_string(), "{body}");
    body
}

#[tokio::test]
async fn a_script_gets_its_input_on_stdin_its_environment_and_a_fresh_directory() {
    let f = Fixture::new();
    let stack = Stack::start_with("cmd-ok", f.options()).await;
    let location = stack
        .submit_ok(&json!({"type": "cmd_ok", "input": {"name": "a b; $(rm -rf /)"}}))
        .await;
    let response = stack.wait(&location, LONG).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let result: Value = response.json().await.unwrap();
    assert_eq!(result["input"], json!({"name": "a b; $(rm -rf /)"}));
    // One argument, as given: no shell saw it.
    assert_eq!(result["arg"], "a b; $(rm -rf /)");
    assert_eq!(result["passed"], "passed on");
    assert_eq!(result["hidden"], "unset", "a variable not listed in env");
    assert_eq!(result["job_id"], e2e::job_id(&location));
    assert_eq!(result["attempt"], "1");
    assert_eq!(result["path"], "/usr/local/bin:/usr/bin:/bin");
    let pwd = PathBuf::from(result["pwd"].as_str().unwrap());
    assert!(
        pwd.starts_with(std::env::temp_dir())
            && pwd
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("arr-job-"),
        "{pwd:?}"
    );
    assert!(!pwd.exists(), "the run's directory {pwd:?} is still there");
    let doc = stack.status_doc(&location).await;
    assert_eq!(doc["status"], "succeeded");
}

#[tokio::test]
async fn a_result_of_another_media_type_is_served_as_its_bytes() {
    let f = Fixture::new();
    let stack = Stack::start_with("cmd-png", f.options()).await;
    let location = stack
        .submit_ok(&json!({"type": "cmd_png", "input": {"tag": "t1"}}))
        .await;
    let response = stack.wait(&location, LONG).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "image/png");
    let body = response.bytes().await.unwrap();
    assert_eq!(&body[..], b"\x89PNG\r\n\x1a\ntag=t1");
    let doc = stack.status_doc(&location).await;
    assert_eq!(doc["result"]["media_type"], "image/png", "{doc}");
    assert_eq!(doc["result"]["size"], body.len());
}

#[tokio::test]
async fn exit_codes_mean_rejected_retried_and_failed() {
    let f = Fixture::new();
    let stack = Stack::start_with("cmd-exits", f.options()).await;
    let reject = stack
        .submit_ok(&json!({"type": "cmd_reject", "input": {}}))
        .await;
    let flaky = stack
        .submit_ok(&json!({"type": "cmd_flaky", "input": {}}))
        .await;
    let fail = stack
        .submit_ok(&json!({"type": "cmd_fail", "input": {}}))
        .await;
    let big = stack
        .submit_ok(&json!({"type": "cmd_big", "input": {}}))
        .await;

    // 65: the input is rejected, with what the script said (not its progress line).
    let p = problem(
        stack.wait(&reject, LONG).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    let detail = p["detail"].as_str().unwrap();
    assert!(
        detail.contains("the name must not be 'bad'") && detail.contains("looking at the input"),
        "{p}"
    );
    assert!(!detail.contains("progress 10"), "{p}");
    assert_eq!(p["job"]["error"]["kind"], "input-rejected", "{p}");

    // 75: retried; the second run succeeds.
    let response = stack.wait(&flaky, LONG).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"attempt": 2})
    );
    assert_eq!(stack.status_doc(&flaky).await["attempts"], 2);

    // Another code: failed (424), with the code and stderr.
    let p = problem(stack.wait(&fail, LONG).await, StatusCode::FAILED_DEPENDENCY).await;
    let detail = p["detail"].as_str().unwrap();
    assert!(
        detail.contains("exited with 3") && detail.contains("disk on fire"),
        "{p}"
    );
    assert_eq!(stack.status_doc(&fail).await["attempts"], 1);

    // More stdout than max_stdout_bytes: stopped, failed, saying so.
    let p = problem(stack.wait(&big, LONG).await, StatusCode::FAILED_DEPENDENCY).await;
    let detail = p["detail"].as_str().unwrap();
    assert!(
        detail.contains("more than 1000 bytes to stdout") && detail.contains("max_stdout_bytes"),
        "{p}"
    );
}

#[tokio::test]
async fn progress_lines_show_in_the_status_and_the_event_stream() {
    let f = Fixture::new();
    let stack = Stack::start_with("cmd-progress", f.options()).await;
    let location = stack
        .submit_ok(&json!({"type": "cmd_progress", "input": {}}))
        .await;
    let events = stack
        .http
        .get(stack.url(&format!("{location}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), StatusCode::OK);
    let events = tokio::spawn(async move { events.text().await });

    let deadline = Instant::now() + LONG;
    loop {
        let doc = stack.status_doc(&location).await;
        if doc["progress"]["message"] == "hashed 40 of 100 MiB" {
            assert_eq!(doc["status"], "running", "{doc}");
            assert_eq!(doc["progress"]["percent"], 40.0, "{doc}");
            break;
        }
        assert!(Instant::now() < deadline, "no progress seen: {doc}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let response = stack.wait(&location, LONG).await;
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"done": true})
    );

    let body = tokio::time::timeout(LONG, events)
        .await
        .expect("the event stream closed")
        .unwrap()
        .unwrap();
    let messages: Vec<(String, f64)> = body
        .split("\n\n")
        .filter(|e| e.lines().any(|l| l == "event: progress"))
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|d| {
            let d: Value = serde_json::from_str(d).unwrap();
            (
                d["progress"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                d["progress"]["percent"].as_f64().unwrap_or_default(),
            )
        })
        .collect();
    assert!(
        messages.contains(&("hashed 40 of 100 MiB".to_owned(), 40.0))
            && messages.contains(&("hashed 80 of 100 MiB".to_owned(), 80.0)),
        "{messages:?}\n{body}"
    );
}

#[tokio::test]
async fn a_canceled_script_leaves_no_process_behind() {
    let f = Fixture::new();
    let stack = Stack::start_with("cmd-cancel", f.options()).await;
    let location = stack
        .submit_ok(&json!({"type": "cmd_fork_slow", "input": {}}))
        .await;
    wait_running(&stack, &location).await;
    let pids = f.forked_pids().await;
    assert!(pids.iter().all(|&p| alive(p)), "{pids:?}");
    let dir = f.fork_dir();
    assert!(dir.is_dir());

    let response = stack.cancel(&location).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_all_gone(&pids, "after the cancel").await;
    assert!(!dir.exists(), "the run's directory {dir:?} is still there");
    assert_eq!(stack.status_doc(&location).await["status"], "canceled");
}

#[tokio::test]
async fn a_script_past_its_time_leaves_no_process_behind() {
    let f = Fixture::new();
    let stack = Stack::start_with("cmd-timeout", f.options()).await;
    let location = stack
        .submit_ok(&json!({"type": "cmd_fork", "input": {}}))
        .await;
    let pids = f.forked_pids().await;
    let dir = f.fork_dir();
    let p = problem(
        stack.wait(&location, LONG).await,
        StatusCode::FAILED_DEPENDENCY,
    )
    .await;
    assert_eq!(p["job"]["error"]["kind"], "timeout", "{p}");
    assert_all_gone(&pids, "after the timeout").await;
    assert!(!dir.exists(), "the run's directory {dir:?} is still there");
}

#[tokio::test]
async fn a_stopping_worker_leaves_no_process_behind() {
    let f = Fixture::new();
    let mut stack = Stack::start_with(
        "cmd-shutdown",
        f.options().env("APP__WORKER__SHUTDOWN_GRACE_SECONDS", 1),
    )
    .await;
    let location = stack
        .submit_ok(&json!({"type": "cmd_fork_slow", "input": {}}))
        .await;
    wait_running(&stack, &location).await;
    let pids = f.forked_pids().await;
    assert!(pids.iter().all(|&p| alive(p)), "{pids:?}");
    let dir = f.fork_dir();

    assert!(
        stack.terminate_worker(0, Duration::from_secs(20)).await,
        "the worker did not exit cleanly"
    );
    assert_all_gone(&pids, "after the worker stopped").await;
    assert!(!dir.exists(), "the run's directory {dir:?} is still there");
}

#[tokio::test]
async fn a_killed_worker_takes_its_program_with_it() {
    let f = Fixture::new();
    let mut stack = Stack::start_with("cmd-sigkill", f.options()).await;
    let location = stack
        .submit_ok(&json!({"type": "cmd_fork_slow", "input": {}}))
        .await;
    wait_running(&stack, &location).await;
    let pids = f.forked_pids().await;
    let main: u32 = std::fs::read_to_string(f.path("pids.main"))
        .expect("fork.sh wrote its pid")
        .trim()
        .parse()
        .expect("a pid");
    assert!(alive(main));

    // SIGKILL: the worker cleans up nothing, but the kernel kills its direct child
    // (PR_SET_PDEATHSIG). What that child started survives (documented): the test kills it.
    stack.kill_worker(0);
    assert_all_gone(&[main], "after the worker was killed").await;
    for pid in pids.iter().filter(|&&p| alive(p)) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    // Its run directory stays too (nobody was left to remove it).
    let _ = std::fs::remove_dir_all(f.fork_dir());
}

#[tokio::test]
async fn a_program_not_on_path_stops_the_worker_naming_the_file_and_type() {
    let dir = std::env::temp_dir().join(format!(
        "arr-e2e-command-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("job-types.toml");
    std::fs::write(
        &file,
        r#"
[types.cmd_missing]
description = "Runs a program nobody installed."
schema = { type = "object" }
example = {}
[types.cmd_missing.command]
argv = ["arr-no-such-program-anywhere", "--flag"]
"#,
    )
    .unwrap();
    let output = std::process::Command::new(e2e::bin("worker"))
        .env("APP__WORKER__JOB_TYPES_FILE", &file)
        .output()
        .expect("run the worker");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&file.display().to_string())
            && stderr.contains("job type 'cmd_missing'")
            && stderr.contains("'arr-no-such-program-anywhere'")
            && stderr.contains("PATH"),
        "{stderr}"
    );
    assert!(!Path::new(&dir).exists());
}
