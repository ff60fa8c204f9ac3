//! One configuration for both binaries: defaults from `config/default.toml` (compiled in, so a
//! binary runs from any directory), an optional file, then `APP__SECTION__KEY` environment
//! variables. Both sides read the same sections so the queue name and key prefix cannot drift.

use std::collections::HashMap;
use std::path::Path;

use config::{Config, Environment, File, FileFormat};
use serde::{Deserialize, Serialize};

pub use crate::access::LimitSettings;
use crate::access::{AuthSettings, CorsSettings, SigningSettings};
use crate::tls::{TlsFiles, TlsPaths};
use crate::webhooks::WebhookSettings;

/// The defaults file, as shipped in the repository.
pub const DEFAULTS: &str = include_str!("../../config/default.toml");

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub amqp: AmqpSettings,
    pub redis: RedisSettings,
    pub http: HttpSettings,
    pub jobs: JobSettings,
    pub retry_after: RetryAfterSettings,
    pub worker: WorkerSettings,
    pub log: LogSettings,
    pub webhooks: WebhookSettings,
    pub auth: AuthSettings,
    pub signing: SigningSettings,
    pub limits: LimitSettings,
    pub cors: CorsSettings,
    #[serde(default)]
    pub telemetry: crate::telemetry::TelemetrySettings,
}

#[derive(Clone, Deserialize)]
pub struct AmqpSettings {
    pub url: String,
    pub queue: String,
    pub queue_type: QueueType,
    pub prefetch: u16,
    pub publish_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    pub retry_base_delay_ms: u64,
    pub retry_max_delay_ms: u64,
    pub delivery_limit: u32,
    pub consumer_timeout_seconds: u64,
    /// Job types whose jobs share a queue: type name → the queue's name after the prefix
    /// (`email = "light"` puts `email`'s jobs in `<queue>.light`). A type not named here has
    /// a queue of its own, `<queue>.<type>` (see `crate::topology::type_queue`).
    #[serde(default)]
    pub type_queues: std::collections::BTreeMap<String, String>,
    /// TLS (`amqps://`): a CA file instead of the system's roots, and a client certificate and
    /// key for mutual TLS; empty: not set (see `crate::tls`).
    #[serde(default)]
    pub tls_ca_file: String,
    #[serde(default)]
    pub tls_cert_file: String,
    #[serde(default)]
    pub tls_key_file: String,
    /// The files above, read by [`Settings::load`].
    #[serde(skip)]
    pub tls: TlsFiles,
}

// The URL carries the broker password: never print it.
impl std::fmt::Debug for AmqpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpSettings")
            .field(
                "url",
                &self
                    .urls()
                    .iter()
                    .map(|u| redact_url(u))
                    .collect::<Vec<_>>(),
            )
            .field("queue", &self.queue)
            .field("queue_type", &self.queue_type)
            .field("type_queues", &self.type_queues)
            .field("prefetch", &self.prefetch)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .finish_non_exhaustive()
    }
}

impl AmqpSettings {
    /// The queue of `job_type`'s jobs as this configuration names it: `<queue>.<type>`, or
    /// `<queue>.<name>` when `type_queues` puts the type in a shared queue `<name>`.
    pub fn queue_of(&self, job_type: &str) -> String {
        let suffix = self
            .type_queues
            .get(job_type)
            .map_or(job_type, String::as_str);
        crate::topology::type_queue(&self.queue, suffix)
    }

    /// The broker nodes: `url` may list several, separated by commas (see `crate::amqp`).
    pub fn urls(&self) -> Vec<String> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    Classic,
    Quorum,
}

#[derive(Clone, Deserialize)]
pub struct RedisSettings {
    pub url: String,
    /// Nodes of a Redis Cluster (any few; the rest are discovered). When not empty, `url` is
    /// not used (see `crate::redis_conn`).
    #[serde(default)]
    pub cluster_urls: Vec<String>,
    pub key_prefix: String,
    pub response_timeout_ms: u64,
    pub connection_timeout_ms: u64,
    /// Status documents the facade keeps between polls (invalidated by Redis: see the facade's
    /// `status_store::poll_cache`); 0 turns the cache off.
    #[serde(default)]
    pub poll_cache_entries: usize,
    /// TLS (`rediss://`): as in [`AmqpSettings`].
    #[serde(default)]
    pub tls_ca_file: String,
    #[serde(default)]
    pub tls_cert_file: String,
    #[serde(default)]
    pub tls_key_file: String,
    #[serde(skip)]
    pub tls: TlsFiles,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &redact_url(&self.url))
            .field("key_prefix", &self.key_prefix)
            .field(
                "cluster_urls",
                &self
                    .cluster_urls
                    .iter()
                    .map(|u| redact_url(u))
                    .collect::<Vec<_>>(),
            )
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .finish_non_exhaustive()
    }
}

impl RedisSettings {
    /// Whether Redis is a cluster (`cluster_urls` lists nodes).
    pub fn is_cluster(&self) -> bool {
        !self.cluster_urls.is_empty()
    }

    /// The URLs connections are made to: the cluster's nodes, or `url`.
    pub fn urls(&self) -> Vec<&str> {
        if self.is_cluster() {
            self.cluster_urls.iter().map(String::as_str).collect()
        } else {
            vec![self.url.as_str()]
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct HttpSettings {
    pub host: String,
    pub port: u16,
    pub body_limit_bytes: usize,
    pub workers: usize,
    pub shutdown_grace_seconds: u64,
    pub max_wait_seconds: u64,
    pub sse_keepalive_seconds: u64,
    /// Largest header section accepted (names and values, bytes); larger gets 431.
    pub max_header_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct JobSettings {
    pub retention_seconds: u64,
    pub tombstone_seconds: u64,
    /// Per job type overrides of the limits its declaration gives, e.g. `[jobs.limits.sleep]`
    /// or `APP__JOBS__LIMITS__SLEEP__MAX_RUN_SECONDS=60` (applied by the worker, which
    /// registers the limits in force).
    #[serde(default)]
    pub limits: HashMap<String, TypeLimits>,
    /// How long a job type stays known to the facades after the last worker that served it
    /// stopped refreshing its registration (seconds): its jobs are accepted and wait in the
    /// queue meanwhile.
    pub type_retention_seconds: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct TypeLimits {
    pub max_attempts: Option<u32>,
    pub max_run_seconds: Option<u64>,
}

/// The limits in force for one job type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Limits {
    pub max_attempts: u32,
    pub max_run_seconds: u64,
}

impl JobSettings {
    /// The limits of job type `name` as declared, with this configuration's overrides applied.
    pub fn limits_for(&self, name: &str, declared: Limits) -> Limits {
        let overrides = self.limits.get(name).cloned().unwrap_or_default();
        Limits {
            max_attempts: overrides
                .max_attempts
                .unwrap_or(declared.max_attempts)
                .max(1),
            max_run_seconds: overrides
                .max_run_seconds
                .unwrap_or(declared.max_run_seconds)
                .max(1),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct RetryAfterSettings {
    pub default_seconds: u64,
    pub min_seconds: u64,
    pub max_seconds: u64,
}

impl RetryAfterSettings {
    /// `seconds` clamped to the configured bounds.
    pub fn clamp(&self, seconds: u64) -> u64 {
        seconds.clamp(self.min_seconds, self.max_seconds.max(self.min_seconds))
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct WorkerSettings {
    pub concurrency: usize,
    /// Threads of the worker's async runtime (1: a single-threaded runtime).
    pub runtime_threads: usize,
    pub metrics_host: String,
    pub metrics_port: u16,
    pub lease_seconds: u64,
    pub progress_interval_ms: u64,
    pub shutdown_grace_seconds: u64,
    /// Seconds between a worker's registry heartbeats (see `shared::fleet`).
    pub heartbeat_seconds: u64,
    /// The built-in job types this worker serves (and registers); empty: all of them.
    #[serde(default)]
    pub types: Vec<String>,
    /// A TOML file declaring `http` and `command` job types (see `worker::declared`); empty:
    /// none. Its types are served besides the binary's own.
    #[serde(default)]
    pub job_types_file: String,
    /// The facade's address as the backends of declared `http` types reach it
    /// (`http://api:8080`): they get a signed, job-scoped progress URL under it in the
    /// `Progress-Url` header. Empty: no progress URL is sent.
    #[serde(default)]
    pub progress_base_url: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl Settings {
    /// Defaults, then `file` if given, then `APP__…` environment variables.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut builder = Config::builder().add_source(File::from_str(DEFAULTS, FileFormat::Toml));
        if let Some(path) = file {
            builder = builder.add_source(File::from(path).required(true));
        }
        let mut settings: Settings = builder
            .add_source(
                Environment::with_prefix("APP")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true)
                    // APP__WEBHOOKS__ALLOWED_HOSTS=a.example.com,*.example.org
                    .list_separator(",")
                    .with_list_parse_key("webhooks.allowed_hosts")
                    // APP__AUTH__KEYS=<id>:<tenant>:<sha256>[:operator],…
                    .with_list_parse_key("auth.keys")
                    .with_list_parse_key("signing.keys")
                    .with_list_parse_key("cors.allowed_origins")
                    // APP__WORKER__TYPES=echo,hash
                    .with_list_parse_key("worker.types")
                    // APP__REDIS__CLUSTER_URLS=redis://10.0.0.1:6379,redis://10.0.0.2:6379
                    .with_list_parse_key("redis.cluster_urls"),
            )
            .build()
            .and_then(Config::try_deserialize)
            .map_err(|e| ConfigError(e.to_string()))?;
        settings.check()?;
        settings.read_tls_files()?;
        Ok(settings)
    }

    /// Reads the TLS files each backend names (at start: a missing or invalid file is a
    /// configuration error naming the key and the path).
    fn read_tls_files(&mut self) -> Result<(), ConfigError> {
        let amqp = &self.amqp;
        let urls = amqp.urls();
        let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
        self.amqp.tls = tls_files(
            TlsPaths {
                section: "amqp",
                ca_file: &amqp.tls_ca_file,
                cert_file: &amqp.tls_cert_file,
                key_file: &amqp.tls_key_file,
            },
            ("amqp.url", &urls, "amqps://"),
        )?;
        let redis = &self.redis;
        let key = if redis.is_cluster() {
            "redis.cluster_urls"
        } else {
            "redis.url"
        };
        self.redis.tls = tls_files(
            TlsPaths {
                section: "redis",
                ca_file: &redis.tls_ca_file,
                cert_file: &redis.tls_cert_file,
                key_file: &redis.tls_key_file,
            },
            (key, &redis.urls(), "rediss://"),
        )?;
        Ok(())
    }

    /// [`load`](Self::load) for a binary's `main`: on an invalid configuration it prints why on
    /// stderr and returns the exit code to end with (2, a usage error).
    pub fn load_or_exit_code(file: Option<&Path>) -> Result<Self, std::process::ExitCode> {
        Self::load(file).map_err(|e| {
            eprintln!("{e}");
            std::process::ExitCode::from(2)
        })
    }

    fn check(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError(m.to_owned()));
        if self.amqp.urls().is_empty() {
            return bad("amqp.url must name at least one broker");
        }
        if self.amqp.queue.is_empty() {
            return bad("amqp.queue must not be empty");
        }
        if self.amqp.prefetch == 0 {
            return bad("amqp.prefetch must be at least 1");
        }
        if self.worker.concurrency == 0 {
            return bad("worker.concurrency must be at least 1");
        }
        if self.worker.runtime_threads == 0 {
            return bad("worker.runtime_threads must be at least 1");
        }
        if self.redis.key_prefix.is_empty() || self.redis.key_prefix.contains(['{', '}']) {
            return bad("redis.key_prefix must be non-empty and hold no braces");
        }
        if self.amqp.retry_base_delay_ms == 0
            || self.amqp.retry_max_delay_ms < self.amqp.retry_base_delay_ms
        {
            return bad(
                "amqp.retry_base_delay_ms must be at least 1 and at most retry_max_delay_ms",
            );
        }
        if self.worker.lease_seconds < 3 {
            return bad("worker.lease_seconds must be at least 3");
        }
        if self.worker.heartbeat_seconds == 0 {
            return bad("worker.heartbeat_seconds must be at least 1");
        }
        if let Some(bad_name) = self
            .worker
            .types
            .iter()
            .find(|t| !crate::job_types::valid_name(t))
        {
            return Err(ConfigError(format!(
                "worker.types: '{bad_name}' is not a job type name"
            )));
        }
        for (job_type, suffix) in &self.amqp.type_queues {
            if !crate::job_types::valid_name(job_type) {
                return Err(ConfigError(format!(
                    "amqp.type_queues: '{job_type}' is not a job type name"
                )));
            }
            if let Err(e) = crate::topology::check_queue_suffix(suffix) {
                return Err(ConfigError(format!("amqp.type_queues.{job_type}: {e}")));
            }
        }
        if self.jobs.retention_seconds == 0 {
            return bad("jobs.retention_seconds must be at least 1");
        }
        self.webhooks.check().map_err(ConfigError)?;
        self.auth.entries().map_err(ConfigError)?;
        self.signing.parsed().map_err(ConfigError)?;
        self.cors.check().map_err(ConfigError)?;
        Ok(())
    }
}

/// The TLS files `paths` name, refused when `urls` (the value of `key`) are not all of the TLS
/// `scheme`: they would be ignored, and the connection left in clear.
fn tls_files(
    paths: TlsPaths<'_>,
    (key, urls, scheme): (&str, &[&str], &str),
) -> Result<TlsFiles, ConfigError> {
    let files = TlsFiles::read(&paths).map_err(ConfigError)?;
    if files.is_set() {
        if let Some(plain) = urls.iter().find(|u| !u.starts_with(scheme)) {
            return Err(ConfigError(format!(
                "{}.tls_* files are set, but {key} {} is not {scheme}",
                paths.section,
                redact_url(plain)
            )));
        }
    }
    Ok(files)
}

/// `scheme://user:***@host/…` for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load_and_redact() {
        let s = Settings::load(None).expect("defaults are valid");
        assert_eq!(s.amqp.queue_type, QueueType::Classic);
        assert!(s.worker.concurrency >= 1);
        assert!(!format!("{:?}", s.amqp).contains("guest:guest"));
        assert_eq!(redact_url("amqp://u:p@h:1/v"), "amqp://***@h:1/v");
    }

    #[test]
    fn per_type_limits_can_be_overridden() {
        let mut s = Settings::load(None).unwrap();
        let sleep = Limits {
            max_attempts: 3,
            max_run_seconds: 3660,
        };
        assert_eq!(s.jobs.limits_for("sleep", sleep), sleep);
        s.jobs.limits.insert(
            "sleep".into(),
            TypeLimits {
                max_attempts: None,
                max_run_seconds: Some(2),
            },
        );
        let limits = s.jobs.limits_for("sleep", sleep);
        assert_eq!(limits.max_run_seconds, 2);
        assert_eq!(limits.max_attempts, sleep.max_attempts);
    }

    #[test]
    fn webhook_hosts_are_a_list_in_the_environment() {
        // Secret first and hosts last (removed in reverse): a test loading the configuration
        // meanwhile always sees a valid combination.
        std::env::set_var("APP__WEBHOOKS__SECRET", "k");
        std::env::set_var(
            "APP__WEBHOOKS__ALLOWED_HOSTS",
            "hooks.example.com,*.example.org:8443",
        );
        let loaded = Settings::load(None);
        std::env::remove_var("APP__WEBHOOKS__ALLOWED_HOSTS");
        std::env::remove_var("APP__WEBHOOKS__SECRET");
        let s = loaded.expect("valid");
        assert_eq!(
            s.webhooks.allowed_hosts,
            ["hooks.example.com", "*.example.org:8443"]
        );
        assert!(s.webhooks.enabled());
        assert!(!format!("{s:?}").contains("secret: \"k\""));
        assert!(Settings::load(None)
            .unwrap()
            .webhooks
            .allowed_hosts
            .is_empty());
    }

    #[test]
    fn clamp_respects_bounds() {
        let r = RetryAfterSettings {
            default_seconds: 1,
            min_seconds: 2,
            max_seconds: 5,
        };
        assert_eq!(r.clamp(0), 2);
        assert_eq!(r.clamp(9), 5);
        assert_eq!(r.clamp(3), 3);
    }
}
