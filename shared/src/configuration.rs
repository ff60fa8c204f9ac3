//! One configuration for both binaries: defaults from `config/default.toml` (compiled in, so a
//! binary runs from any directory), an optional file, then `APP__SECTION__KEY` environment
//! variables. Both sides read the same sections so the queue name and key prefix cannot drift.

use std::path::Path;

use config::{Config, Environment, File, FileFormat};
use serde::Deserialize;

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
}

#[derive(Clone, Deserialize)]
pub struct AmqpSettings {
    pub url: String,
    pub queue: String,
    pub queue_type: QueueType,
    pub prefetch: u16,
    pub publish_timeout_ms: u64,
    pub connect_timeout_ms: u64,
}

// The URL carries the broker password: never print it.
impl std::fmt::Debug for AmqpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpSettings")
            .field("url", &redact_url(&self.url))
            .field("queue", &self.queue)
            .field("queue_type", &self.queue_type)
            .field("prefetch", &self.prefetch)
            .finish_non_exhaustive()
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
    pub key_prefix: String,
    pub response_timeout_ms: u64,
    pub connection_timeout_ms: u64,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &redact_url(&self.url))
            .field("key_prefix", &self.key_prefix)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct HttpSettings {
    pub host: String,
    pub port: u16,
    pub body_limit_bytes: usize,
    pub workers: usize,
    pub shutdown_grace_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct JobSettings {
    pub retention_seconds: u64,
    pub tombstone_seconds: u64,
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
    pub progress_interval_ms: u64,
    pub shutdown_grace_seconds: u64,
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
        let settings: Settings = builder
            .add_source(
                Environment::with_prefix("APP")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true),
            )
            .build()
            .and_then(Config::try_deserialize)
            .map_err(|e| ConfigError(e.to_string()))?;
        settings.check()?;
        Ok(settings)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError(m.to_owned()));
        if self.amqp.queue.is_empty() {
            return bad("amqp.queue must not be empty");
        }
        if self.amqp.prefetch == 0 {
            return bad("amqp.prefetch must be at least 1");
        }
        if self.worker.concurrency == 0 {
            return bad("worker.concurrency must be at least 1");
        }
        if self.redis.key_prefix.is_empty() || self.redis.key_prefix.contains(['{', '}']) {
            return bad("redis.key_prefix must be non-empty and hold no braces");
        }
        if self.jobs.retention_seconds == 0 {
            return bad("jobs.retention_seconds must be at least 1");
        }
        Ok(())
    }
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
