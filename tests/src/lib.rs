//! Harness for the end-to-end tests: builds the real `api` and `worker` binaries, starts them
//! against the local RabbitMQ and Redis with a queue name and key prefix of their own (so tests
//! run in parallel), and removes what they left behind when the test ends, pass or fail.

pub mod browser;
pub mod receiver;
pub mod services;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Connection, ConnectionProperties};
use reqwest::StatusCode;
use serde_json::Value;

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379/0";

/// Builds the binaries once per test process (cargo makes this a no-op when up to date), so
/// tests always run the code under test, never a stale build.
fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace");
        let mut build = Command::new(cargo);
        build.current_dir(workspace).args([
            "build",
            "--quiet",
            "-p",
            "api",
            "-p",
            "worker",
            "-p",
            "client",
            "-p",
            "arr-examples",
            "--bins",
        ]);
        // Cargo hands the test its own CARGO_* variables; passed on, they change the build's
        // fingerprints and make every run rebuild.
        for (key, _) in std::env::vars() {
            if key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_TARGET_DIR" {
                build.env_remove(key);
            }
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "building the binaries failed");
        // target/<profile>/deps/<test binary> -> target/<profile>
        let exe = std::env::current_exe().expect("current exe");
        exe.parent()
            .and_then(Path::parent)
            .expect("target dir")
            .to_path_buf()
    })
}

/// The path of a binary of the workspace (`api`, `worker`, `arr`, `wordcount-worker`), built
/// for this test run.
pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

fn log_dir() -> PathBuf {
    let dir = bin_dir().join("e2e-logs");
    std::fs::create_dir_all(&dir).expect("log dir");
    dir
}

/// An HTTP client builder for tests. In a workspace build, cargo unifies reqwest's features
/// with the worker's (`rustls-no-provider`, for HTTPS webhooks), and reqwest then needs a
/// process-wide rustls crypto provider before any client is built: install ring's, once.
pub fn client_builder() -> reqwest::ClientBuilder {
    static PROVIDER: OnceLock<()> = OnceLock::new();
    PROVIDER.get_or_init(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
}

/// A free TCP port on loopback (bound and released: the race with another process taking it
/// in between is acceptable for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// How to start a stack.
#[derive(Clone, Debug)]
pub struct StackOptions {
    pub workers: usize,
    /// Extra `APP__…` variables for both binaries.
    pub env: Vec<(String, String)>,
    /// Extra variables for the api only.
    pub api_env: Vec<(String, String)>,
    /// Wait for /readyz to answer 200 before returning.
    pub wait_ready: bool,
    /// Register the workers' job types (`worker job-types register`) before the facade
    /// starts, so its jobs are accepted even by a stack without workers (they wait in the
    /// queue), and [`Stack::wait_ready`] waits until the facade has read them.
    pub register_types: bool,
    /// Each built-in type in a queue of its own (`<queue>.<type>`, the default
    /// configuration). Off by default for the tests: the four built-ins share the queue
    /// `<queue>.work` (`amqp.type_queues`), so a test can count one queue whatever types it
    /// submits ([`Stack::work_queue`]). Tests of queues per type turn it on.
    pub per_type_queues: bool,
}

/// The built-in job types.
pub const BUILTIN_TYPES: [&str; 4] = ["echo", "sleep", "hash", "fail"];
/// Types of the tests' other worker binaries (their queues are cleaned up too).
const OTHER_TYPES: [&str; 2] = ["wordcount", "greet"];

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            workers: 1,
            env: Vec::new(),
            api_env: Vec::new(),
            wait_ready: true,
            register_types: true,
            per_type_queues: false,
        }
    }
}

impl StackOptions {
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    pub fn env(mut self, key: &str, value: impl ToString) -> Self {
        self.env.push((key.into(), value.to_string()));
        self
    }

    pub fn api_env(mut self, key: &str, value: impl ToString) -> Self {
        self.api_env.push((key.into(), value.to_string()));
        self
    }

    /// Points both binaries at a broker nobody listens on (a free port), and does not wait
    /// for readiness (the facade will never be ready).
    pub fn unreachable_broker(self) -> Self {
        self.env(
            "APP__AMQP__URL",
            format!("amqp://guest:guest@127.0.0.1:{}/%2f", free_port()),
        )
        .no_wait()
    }

    pub fn no_wait(mut self) -> Self {
        self.wait_ready = false;
        self
    }

    /// Starts with an empty job type registry: the facade knows the types only once a worker
    /// registers them.
    pub fn unregistered(mut self) -> Self {
        self.register_types = false;
        self
    }

    /// Each built-in type in its own queue, as configured by default (see
    /// [`StackOptions::per_type_queues`]).
    pub fn per_type_queues(mut self) -> Self {
        self.per_type_queues = true;
        self
    }

    /// The `APP__…` variables every binary of the stack gets besides `env`.
    fn queue_env(&self) -> Vec<(String, String)> {
        if self.per_type_queues {
            return Vec::new();
        }
        BUILTIN_TYPES
            .iter()
            .map(|t| {
                let key = format!("APP__AMQP__TYPE_QUEUES__{}", t.to_uppercase());
                (key, "work".to_owned())
            })
            .collect()
    }
}

/// A running facade and its workers, with their own queue and Redis key prefix.
pub struct Stack {
    pub name: String,
    pub queue: String,
    pub prefix: String,
    pub base: String,
    pub http: reqwest::Client,
    /// A client that does not follow redirects, to see the 303 itself.
    pub http_no_redirect: reqwest::Client,
    api: Option<Child>,
    workers: Vec<Child>,
    options: StackOptions,
}

impl Stack {
    pub async fn start(name: &str) -> Stack {
        Self::start_with(name, StackOptions::default()).await
    }

    pub async fn start_with(name: &str, options: StackOptions) -> Stack {
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..10];
        let port = free_port();
        let mut stack = Stack {
            name: format!("{name}-{tag}"),
            queue: format!("e2e-{name}-{tag}"),
            prefix: format!("e2e-{tag}"),
            base: format!("http://127.0.0.1:{port}"),
            // Idle connections are dropped well before the facade's keep-alive (5 s) ends:
            // reusing one the server is closing fails the request (IncompleteMessage).
            http: client_builder()
                .timeout(Duration::from_secs(30))
                .pool_idle_timeout(Duration::from_secs(2))
                .build()
                .expect("client"),
            http_no_redirect: client_builder()
                .timeout(Duration::from_secs(30))
                .pool_idle_timeout(Duration::from_secs(2))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            api: None,
            workers: Vec::new(),
            options: options.clone(),
        };
        if options.register_types {
            // Needs only Redis; a stack whose Redis is not up yet learns its types from its
            // workers instead.
            let (registered, _) = stack.worker_command(&["job-types", "register"]);
            if !registered {
                eprintln!(
                    "{}: could not register the job types in advance",
                    stack.name
                );
            }
        }
        let mut api_env = options.api_env.clone();
        api_env.push(("APP__HTTP__PORT".into(), port.to_string()));
        stack.api = Some(stack.spawn("api", "api", &api_env));
        for _ in 0..options.workers {
            stack.add_worker();
        }
        if options.wait_ready {
            stack.wait_ready().await;
        }
        stack
    }

    fn spawn(&self, binary: &str, label: &str, extra: &[(String, String)]) -> Child {
        let log = log_dir().join(format!("{}-{label}.log", self.name));
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let mut cmd = Command::new(bin_dir().join(binary));
        cmd.env("APP__AMQP__QUEUE", &self.queue)
            .env("APP__REDIS__KEY_PREFIX", &self.prefix)
            .env("APP__LOG__FORMAT", "json")
            .env("APP__WORKER__SHUTDOWN_GRACE_SECONDS", "2")
            .env("APP__HTTP__SHUTDOWN_GRACE_SECONDS", "1")
            // Parallel tests' workers would fight over one metrics port; a test that wants
            // worker metrics sets a port of its own.
            .env("APP__WORKER__METRICS_PORT", "0")
            // Info, plus the per-job lines that are debug by default ("job queued", "job
            // started"), so tests can follow a job through both logs.
            .env(
                "RUST_LOG",
                "info,api::routes::submit=debug,worker::process=debug",
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let queue_env = self.options.queue_env();
        for (k, v) in queue_env.iter().chain(&self.options.env).chain(extra) {
            cmd.env(k, v);
        }
        cmd.spawn().expect("spawn binary")
    }

    /// Runs `worker <args>` (a tool command) with this stack's settings; returns whether it
    /// succeeded and what it printed on stdout.
    pub fn worker_command(&self, args: &[&str]) -> (bool, String) {
        let mut cmd = Command::new(bin_dir().join("worker"));
        cmd.args(args)
            .env("APP__AMQP__QUEUE", &self.queue)
            .env("APP__REDIS__KEY_PREFIX", &self.prefix);
        for (k, v) in self.options.queue_env().iter().chain(&self.options.env) {
            cmd.env(k, v);
        }
        let output = cmd.output().expect("run worker command");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    }

    /// The log file of a process of this stack: `api`, `worker1`, `worker2`, …
    pub fn log_file(&self, label: &str) -> PathBuf {
        log_dir().join(format!("{}-{label}.log", self.name))
    }

    /// Starts one more worker on the same queue.
    pub fn add_worker(&mut self) {
        self.add_worker_with(&[]);
    }

    /// Starts one more worker with extra `APP__…` variables (e.g. `APP__WORKER__TYPES`).
    pub fn add_worker_with(&mut self, env: &[(&str, &str)]) {
        self.add_worker_binary("worker", env);
    }

    /// Starts one more worker on the same queue from another worker binary of the workspace
    /// (`wordcount-worker`, a worker with job types of its own); its log is `worker<n>` like
    /// the others'.
    pub fn add_worker_binary(&mut self, binary: &str, env: &[(&str, &str)]) {
        let label = format!("worker{}", self.workers.len() + 1);
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let child = self.spawn(binary, &label, &env);
        self.workers.push(child);
    }

    /// Kills worker `i` (0-based) with SIGKILL: no chance to finish or requeue anything.
    pub fn kill_worker(&mut self, i: usize) {
        let worker = &mut self.workers[i];
        let _ = worker.kill();
        let _ = worker.wait();
    }

    /// Sends SIGTERM to worker `i` and waits (up to `timeout`) for it to exit; returns whether
    /// it exited successfully.
    pub async fn terminate_worker(&mut self, i: usize, timeout: Duration) -> bool {
        let pid = self.workers[i].id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -TERM {pid}");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.workers[i].try_wait().expect("try_wait") {
                return status.success();
            }
            assert!(
                Instant::now() < deadline,
                "worker {i} did not exit within {timeout:?} of SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGTERM to the facade; returns its process so the caller can wait for it.
    pub fn terminate_api(&mut self) -> &mut Child {
        let api = self.api.as_mut().expect("api running");
        let status = Command::new("kill")
            .args(["-TERM", &api.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        api
    }

    /// The facade's process (after `terminate_api`), to wait for its exit.
    pub fn terminate_api_wait(&mut self) -> &mut Child {
        self.api.as_mut().expect("api running")
    }

    /// Whether the facade that started with the stack is still running (it was not restarted).
    pub fn api_alive(&mut self) -> bool {
        self.api
            .as_mut()
            .is_some_and(|api| matches!(api.try_wait(), Ok(None)))
    }

    /// Whether worker `i` is still running.
    pub fn worker_alive(&mut self, i: usize) -> bool {
        matches!(self.workers[i].try_wait(), Ok(None))
    }

    /// The queue the built-in types share in this stack (see
    /// [`StackOptions::per_type_queues`]).
    pub fn work_queue(&self) -> String {
        format!("{}.work", self.queue)
    }

    /// The queue of `job_type`'s jobs in this stack.
    pub fn queue_of(&self, job_type: &str) -> String {
        if !self.options.per_type_queues && BUILTIN_TYPES.contains(&job_type) {
            self.work_queue()
        } else {
            format!("{}.{job_type}", self.queue)
        }
    }

    /// The dead-letter queue of this stack's shared work queue.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.work_queue())
    }

    /// Publishes raw bytes to a queue of this stack (as a broken producer would).
    pub async fn publish_raw(&self, queue: &str, payload: &[u8]) {
        let connection = Connection::connect(&self.amqp_url(), ConnectionProperties::default())
            .await
            .expect("amqp connection");
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await
            .expect("confirm mode");
        let confirm = channel
            .basic_publish(
                ShortString::from(""),
                ShortString::from(queue),
                lapin::options::BasicPublishOptions::default(),
                payload,
                lapin::BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "raw publish not confirmed");
        let _ = connection.close(200, ShortString::from("bye")).await;
    }

    /// Messages ready in `queue` (0 if it does not exist).
    pub async fn queue_len(&self, queue: &str) -> u32 {
        queue_info(&self.amqp_url(), queue)
            .await
            .map(|(m, _)| m)
            .unwrap_or(0)
    }

    /// Whether `queue` exists.
    pub async fn queue_exists(&self, queue: &str) -> bool {
        queue_info(&self.amqp_url(), queue).await.is_some()
    }

    /// Waits (up to 30 s) until `queue` holds `n` messages.
    pub async fn wait_queue_len(&self, queue: &str, n: u32) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let len = self.queue_len(queue).await;
            if len == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{queue} holds {len} messages, expected {n}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The broker URL this stack uses; of a list of nodes (failover tests), the last one
    /// (those tests put the nodes they kill or leave dead first).
    pub fn amqp_url(&self) -> String {
        self.setting("APP__AMQP__URL")
            .and_then(|list| list.rsplit(',').next().map(|u| u.trim().to_owned()))
            .unwrap_or_else(|| AMQP_URL.to_owned())
    }

    fn setting(&self, key: &str) -> Option<String> {
        self.options
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    /// Every queue this stack's topology declares (work, dead-letter, delay and callback
    /// queues, and those of the single work queue of older versions), and the delay queues'
    /// exchanges.
    fn queues(&self) -> (Vec<String>, Vec<String>) {
        let base: u64 = self
            .setting("APP__AMQP__RETRY_BASE_DELAY_MS")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        let max: u64 = self
            .setting("APP__AMQP__RETRY_MAX_DELAY_MS")
            .and_then(|v| v.parse().ok())
            .unwrap_or(60_000);
        // Quorum delay queues have names of their own (see `shared::topology::delay_queue`).
        let (retry, delay_kind) = match self.setting("APP__AMQP__QUEUE_TYPE").as_deref() {
            Some("quorum") => ("retry-q", "delay-q"),
            _ => ("retry", "delay"),
        };
        let mut work = vec![self.queue.clone(), self.work_queue()];
        for t in BUILTIN_TYPES.iter().chain(&OTHER_TYPES) {
            work.push(format!("{}.{t}", self.queue));
        }
        let mut queues = Vec::new();
        for queue in work {
            queues.push(format!("{queue}.dead"));
            queues.push(queue);
        }
        let mut steps = Vec::new();
        let mut delay = base.max(1);
        while delay < max {
            steps.push(delay);
            delay *= 2;
        }
        steps.push(max);
        let mut exchanges = Vec::new();
        for step in steps {
            // The old single queue's delay queues, and the shared ones of queues per type.
            queues.push(format!("{}.{retry}.{step}", self.queue));
            let shared = format!("{}.{delay_kind}.{step}", self.queue);
            queues.push(shared.clone());
            exchanges.push(shared);
        }
        // The workers' callbacks queues (see `shared::topology::declare_callback_queues`).
        let setting = |key: &str, default: u64| {
            self.setting(key)
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        let attempts = setting("APP__WEBHOOKS__MAX_ATTEMPTS", 5);
        let base = setting("APP__WEBHOOKS__BASE_DELAY_MS", 1000);
        let max = setting("APP__WEBHOOKS__MAX_DELAY_MS", 60_000);
        queues.push(format!("{}.callbacks", self.queue));
        queues.push(format!("{}.callbacks.dead", self.queue));
        let mut delays: Vec<u64> = (1..attempts.max(2))
            .map(|attempt| base.saturating_mul(1 << (attempt - 1).min(32)).min(max))
            .collect();
        delays.dedup();
        for delay in delays {
            queues.push(format!("{}.callbacks.{retry}.{delay}", self.queue));
        }
        (queues, exchanges)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Waits (up to 30 s) until the facade answers /readyz with 200 and, unless the stack
    /// started [`unregistered`](StackOptions::unregistered), has read the job types.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.http.get(self.url("/readyz")).send().await {
                if r.status() == StatusCode::OK {
                    let ready: Value = r.json().await.unwrap_or_default();
                    if !self.options.register_types || ready["job_types"]["registry"] == "loaded" {
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "{}: facade never became ready",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (up to 30 s) until the facade answers anything on /healthz.
    pub async fn wait_alive(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.http.get(self.url("/healthz")).send().await.is_err() {
            assert!(
                Instant::now() < deadline,
                "{}: facade never started",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// POSTs a job request (any JSON) with the JSON content type.
    pub async fn submit(&self, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url("/v1/jobs"))
            .json(body)
            .send()
            .await
            .expect("POST /v1/jobs")
    }

    /// `DELETE` of a job (cancel it).
    pub async fn cancel(&self, location: &str) -> reqwest::Response {
        self.http
            .delete(self.url(location))
            .send()
            .await
            .expect("DELETE")
    }

    /// GETs `path` without a key, asserts a 200 and returns its JSON body.
    pub async fn get_json(&self, path: &str) -> Value {
        let response = self.http.get(self.url(path)).send().await.expect("GET");
        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
        response.json().await.expect("a JSON body")
    }

    /// GETs `path` without a key, asserts a 200 and returns its body as text.
    pub async fn get_text(&self, path: &str) -> String {
        let response = self.http.get(self.url(path)).send().await.expect("GET");
        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
        response.text().await.expect("a text body")
    }

    /// `arr_poll_cache_total{result}` from the facade's metrics (0 before the first).
    pub async fn poll_cache_count(&self, result: &str) -> u64 {
        let text = self.get_text("/metrics").await;
        let series = format!("arr_poll_cache_total{{result=\"{result}\"}}");
        metric_sample(&text, &series).map_or(0, |n| n as u64)
    }

    /// Submits and asserts 202; returns the status monitor's path.
    pub async fn submit_ok(&self, body: &Value) -> String {
        let response = self.submit(body).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED, "submit {body}");
        response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .expect("Location")
            .to_owned()
    }

    /// The plain polling loop a generic client runs: GET the status monitor while it answers
    /// 202, following redirects; returns the first answer that is not 202.
    pub async fn wait(&self, location: &str, timeout: Duration) -> reqwest::Response {
        let deadline = Instant::now() + timeout;
        loop {
            let response = self
                .http
                .get(self.url(location))
                .send()
                .await
                .expect("poll");
            if response.status() != StatusCode::ACCEPTED {
                return response;
            }
            assert!(
                response.headers().contains_key("retry-after"),
                "202 without Retry-After"
            );
            assert!(
                Instant::now() < deadline,
                "{location} still pending after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The job's status document as served (following no redirect, unwrapping failures).
    pub async fn status_doc(&self, location: &str) -> Value {
        self.poll(location).await.1.expect("JSON body")
    }

    /// One poll of the status monitor (following no redirect): its status, and the status
    /// document it carries (a problem's `job`), if any.
    pub async fn poll(&self, location: &str) -> (StatusCode, Option<Value>) {
        let response = self
            .http_no_redirect
            .get(self.url(location))
            .send()
            .await
            .expect("status");
        let status = response.status();
        let body: Option<Value> = response.json().await.ok();
        let doc = body.map(|body| match body.get("job") {
            Some(job) => job.clone(),
            None => body,
        });
        (status, doc)
    }

    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        let url = self
            .setting("APP__REDIS__URL")
            .unwrap_or_else(|| REDIS_URL.to_owned());
        redis::Client::open(url)
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("redis connection")
    }

    /// Every Redis key under this stack's prefix, except the worker fleet registry's
    /// (`<prefix>:worker:<id>`, `<prefix>:workers`) and the job type registry
    /// (`<prefix>:job-types`), which running workers keep whatever a test does.
    pub async fn redis_keys(&self) -> Vec<String> {
        let mut conn = self.redis().await;
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}:*", self.prefix))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .expect("SCAN");
            let fleet = [
                format!("{}:workers", self.prefix),
                format!("{}:worker:", self.prefix),
                format!("{}:job-types", self.prefix),
            ];
            keys.extend(
                batch
                    .into_iter()
                    .filter(|k| *k != fleet[0] && !k.starts_with(&fleet[1]) && *k != fleet[2]),
            );
            if next == 0 {
                return keys;
            }
            cursor = next;
        }
    }

    /// A field of the job's hash in Redis (`state`, `doc`, `result`, `worker`).
    pub async fn job_field(&self, job_id: &str, field: &str) -> Option<String> {
        let mut conn = self.redis().await;
        redis::cmd("HGET")
            .arg(format!("{}:default:job:{{{job_id}}}", self.prefix))
            .arg(field)
            .query_async(&mut conn)
            .await
            .expect("HGET")
    }

    /// (messages ready, consumers) of this stack's shared work queue, or `None` if it does
    /// not exist.
    pub async fn queue_info(&self) -> Option<(u32, u32)> {
        queue_info(&self.amqp_url(), &self.work_queue()).await
    }

    /// Deletes this stack's shared work queue (to make publishes unroutable).
    pub async fn delete_queue(&self) {
        self.delete_queue_named(&self.work_queue()).await;
    }

    /// Deletes one of this stack's queues (`<queue>.callbacks`, say).
    pub async fn delete_queue_named(&self, queue: &str) {
        delete_queues(&self.amqp_url(), &[queue.to_owned()]).await;
    }

    /// Waits until the queue has `n` consumers.
    pub async fn wait_consumers(&self, n: u32) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.queue_info().await.is_some_and(|(_, c)| c >= n) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: never saw {n} consumers",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The value of the sample `name{labels}` in a Prometheus text exposition (labels in the order
/// written).
pub fn metric_sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The id at the end of a status monitor path.
pub fn job_id(location: &str) -> &str {
    location.rsplit('/').next().unwrap_or_default()
}

/// (messages ready, consumers) of `queue`, or `None` if it does not exist.
pub async fn queue_info(url: &str, queue: &str) -> Option<(u32, u32)> {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .ok()?;
    let channel = connection.create_channel().await.ok()?;
    let info = channel
        .queue_declare(
            ShortString::from(queue),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .ok()
        .map(|q| (q.message_count(), q.consumer_count()));
    let _ = connection.close(200, ShortString::from("bye")).await;
    info
}

async fn delete_exchanges(url: &str, exchanges: &[String]) {
    if let Ok(connection) = Connection::connect(url, ConnectionProperties::default()).await {
        for exchange in exchanges {
            if let Ok(channel) = connection.create_channel().await {
                let _ = channel
                    .exchange_delete(
                        ShortString::from(exchange.as_str()),
                        lapin::options::ExchangeDeleteOptions::default(),
                    )
                    .await;
            }
        }
        let _ = connection.close(200, ShortString::from("bye")).await;
    }
}

async fn delete_queues(url: &str, queues: &[String]) {
    if let Ok(connection) = Connection::connect(url, ConnectionProperties::default()).await {
        for queue in queues {
            // A channel per delete: deleting a queue that is missing does not close it, but
            // any other error would.
            if let Ok(channel) = connection.create_channel().await {
                let _ = channel
                    .queue_delete(
                        ShortString::from(queue.as_str()),
                        QueueDeleteOptions::default(),
                    )
                    .await;
            }
        }
        let _ = connection.close(200, ShortString::from("bye")).await;
    }
}

async fn delete_keys(redis_url: &str, prefix: &str) {
    let Ok(client) = redis::Client::open(redis_url) else {
        return;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let mut cursor: u64 = 0;
    loop {
        let Ok((next, keys)): Result<(u64, Vec<String>), _> = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
        else {
            return;
        };
        if !keys.is_empty() {
            let _ = redis::cmd("DEL")
                .arg(&keys)
                .query_async::<()>(&mut conn)
                .await;
        }
        if next == 0 {
            return;
        }
        cursor = next;
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for child in self.api.iter_mut().chain(self.workers.iter_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Clean up on a thread of its own: Drop may run inside a runtime, or while panicking.
        let (queues, exchanges) = self.queues();
        let url = self.amqp_url();
        let redis_url = self
            .setting("APP__REDIS__URL")
            .unwrap_or_else(|| REDIS_URL.to_owned());
        let prefix = self.prefix.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(async {
                    let cleanup = async {
                        delete_queues(&url, &queues).await;
                        delete_exchanges(&url, &exchanges).await;
                        delete_keys(&redis_url, &prefix).await;
                    };
                    // A broker or Redis the test stopped must not hang the cleanup.
                    let _ = tokio::time::timeout(Duration::from_secs(10), cleanup).await;
                });
            }
        })
        .join();
    }
}
