//! A facade and its workers, run as the real release binaries against the shared RabbitMQ and
//! Redis with a queue name and key prefix of their own, configured only through `APP__…`
//! environment variables, and cleaned up afterwards (processes, queues, keys).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use shared::{JobId, KeyLayout, Settings};

use crate::error::{msg, Result};
use crate::load::{http_request, Conn, Proto};
use crate::procs::{free_port, Owned};

pub struct Binaries {
    pub api: PathBuf,
    pub worker: PathBuf,
}

/// What to run.
pub struct StackSpec {
    pub name: String,
    pub queue: String,
    pub key_prefix: String,
    pub quorum: bool,
    pub workers: usize,
    /// `worker.concurrency`; `None` keeps the default.
    pub concurrency: Option<usize>,
    /// More environment for the facade and the workers.
    pub env: Vec<(String, String)>,
}

pub struct Stack {
    pub spec: StackSpec,
    pub addr: SocketAddr,
    pub api: Owned,
    pub workers: Vec<Owned>,
    pub keys: KeyLayout,
}

impl Stack {
    pub async fn start(bins: &Binaries, spec: StackSpec, logs: &Path) -> Result<Stack> {
        let port = free_port()?;
        let env = |command: &mut Command| {
            command
                .env("APP__AMQP__QUEUE", &spec.queue)
                .env(
                    "APP__AMQP__QUEUE_TYPE",
                    if spec.quorum { "quorum" } else { "classic" },
                )
                .env("APP__REDIS__KEY_PREFIX", &spec.key_prefix)
                .env("APP__HTTP__PORT", port.to_string())
                .env("APP__WORKER__METRICS_PORT", "0");
            if let Some(c) = spec.concurrency {
                command.env("APP__WORKER__CONCURRENCY", c.to_string());
            }
            command.envs(spec.env.iter().map(|(k, v)| (k, v)));
        };
        // The workers' job types, registered before the facade starts (as a deploy does), so
        // that a stack without workers (the HTTP scenarios) accepts its submits too.
        let mut register = Command::new(&bins.worker);
        env(&mut register);
        let registered = register
            .args(["job-types", "register"])
            .output()
            .map_err(|e| msg(format!("{}: worker job-types register: {e}", spec.name)))?;
        if !registered.status.success() {
            return Err(msg(format!(
                "{}: worker job-types register failed: {}",
                spec.name,
                String::from_utf8_lossy(&registered.stderr)
            )));
        }
        let mut api = Command::new(&bins.api);
        env(&mut api);
        let api = Owned::spawn(
            &format!("{}-api", spec.name),
            api,
            &logs.join(format!("{}-api.log", spec.name)),
        )?;
        let mut workers = Vec::new();
        for i in 0..spec.workers {
            let mut worker = Command::new(&bins.worker);
            env(&mut worker);
            workers.push(Owned::spawn(
                &format!("{}-worker{i}", spec.name),
                worker,
                &logs.join(format!("{}-worker{i}.log", spec.name)),
            )?);
        }
        let keys = KeyLayout::new(spec.key_prefix.clone());
        let mut stack = Stack {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            spec,
            api,
            workers,
            keys,
        };
        stack.wait_ready().await?;
        Ok(stack)
    }

    /// Until `/readyz` answers 200 and, with workers, one echo job went through.
    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if !self.api.alive() {
                return Err(msg(format!("{} exited; see its log", self.api.name)));
            }
            if let Ok(mut conn) = Conn::connect(self.addr, Proto::Http).await {
                let ready = conn.call(&http_request("GET", "/readyz", &[], b"")).await;
                if matches!(ready, Ok(r) if r.status == 200) {
                    break;
                }
            }
            if Instant::now() > deadline {
                return Err(msg(format!("{} not ready in 30 s", self.api.name)));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The facade reads the registry about once a second: wait until it knows the types.
        loop {
            let mut conn = Conn::connect(self.addr, Proto::Http).await?;
            let types = conn
                .call(&http_request("GET", "/v1/job-types", &[], b""))
                .await?;
            if types.status == 200 && types.body.windows(6).any(|w| w == b"\"echo\"") {
                break;
            }
            if Instant::now() > deadline {
                return Err(msg(format!(
                    "{}: the facade did not list the registered job types in 30 s",
                    self.spec.name
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !self.workers.is_empty() {
            let mut conn = Conn::connect(self.addr, Proto::Http).await?;
            let request = http_request(
                "POST",
                "/v1/jobs",
                &[("Prefer", "wait=20")],
                br#"{"type":"echo","input":{"warm":"up"}}"#,
            );
            // 422 (unknown type) until the facade has read the workers' registration.
            let mut answer = conn.call(&request).await?;
            while answer.status == 422 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(200)).await;
                answer = conn.call(&request).await?;
            }
            if answer.status != 303 {
                return Err(msg(format!(
                    "{}: warm-up job answered {} (workers not consuming?)",
                    self.spec.name, answer.status
                )));
            }
        }
        Ok(())
    }

    pub fn worker_pids(&self) -> Vec<u32> {
        self.workers.iter().map(|w| w.pid()).collect()
    }

    pub fn job_key(&self, id: &JobId) -> String {
        self.keys.job(id)
    }

    /// Stops the processes and deletes the stack's queues and keys.
    pub async fn remove(mut self, settings: &Settings, redis: &mut MultiplexedConnection) {
        for worker in &mut self.workers {
            worker.stop(Duration::from_secs(5));
        }
        self.api.stop(Duration::from_secs(5));
        let mut amqp = settings.amqp.clone();
        amqp.queue = self.spec.queue.clone();
        amqp.queue_type = if self.spec.quorum {
            shared::configuration::QueueType::Quorum
        } else {
            shared::configuration::QueueType::Classic
        };
        let work: Vec<String> = ["echo", "sleep", "hash", "fail", "plain"]
            .iter()
            .map(|t| amqp.queue_of(t))
            .collect();
        let (queues, exchanges) =
            shared::topology::declared_names(&amqp, &settings.webhooks, &work);
        if let Err(e) = crate::raw::delete_exchanges(&settings.amqp.url, &exchanges).await {
            eprintln!(
                "warning: cannot delete the exchanges of {}: {e}",
                self.spec.name
            );
        }
        if let Err(e) = crate::raw::delete_queues(&settings.amqp.url, &queues).await {
            eprintln!(
                "warning: cannot delete the queues of {}: {e}",
                self.spec.name
            );
        }
        if let Err(e) = delete_keys(redis, &self.spec.key_prefix).await {
            eprintln!("warning: cannot delete the keys of {}: {e}", self.spec.name);
        }
    }
}

/// Deletes every key that starts with `prefix` followed by `:` (or by nothing but the
/// `glob_suffix` given, for Celery's prefix).
pub async fn delete_keys(redis: &mut MultiplexedConnection, prefix: &str) -> Result<u64> {
    delete_matching(redis, &format!("{prefix}:*")).await
}

pub async fn delete_matching(redis: &mut MultiplexedConnection, pattern: &str) -> Result<u64> {
    let mut cursor: u64 = 0;
    let mut deleted = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(redis)
            .await?;
        if !keys.is_empty() {
            let n: u64 = redis::cmd("DEL").arg(&keys).query_async(redis).await?;
            deleted += n;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}
