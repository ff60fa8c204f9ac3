//! Webhooks: what the facade and the workers agree on about `callback_url`. The facade checks
//! a URL against the configured allow-list before it accepts a job; the worker POSTs the final
//! status document there once the job has ended, signed with the shared secret; the delivery's
//! progress is recorded in the status document's `callback` member.
//!
//! The signature: `Webhook-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`,
//! where `<timestamp>` is the `Webhook-Timestamp` header (unix seconds) and `<body>` the exact
//! bytes of the request body. See [`sign`] and [`verify`].

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Longest callback URL accepted, in characters.
pub const MAX_URL_CHARS: usize = 2048;

/// Header with the unix time (seconds) at which the request was signed.
pub const TIMESTAMP_HEADER: &str = "Webhook-Timestamp";
/// Header with the signature, `v1=<hex>`.
pub const SIGNATURE_HEADER: &str = "Webhook-Signature";
/// Header with the job id (the same on every attempt, and on a repeat after a worker died, so
/// receivers can drop duplicates).
pub const ID_HEADER: &str = "Webhook-Id";
/// Version prefix of the signature.
pub const SIGNATURE_VERSION: &str = "v1";

/// The `[webhooks]` section of the configuration.
#[derive(Clone, Deserialize)]
pub struct WebhookSettings {
    /// Hosts callbacks may go to: `host`, `*.suffix` (any subdomain of `suffix`, not `suffix`
    /// itself), each optionally with `:port`. Empty: callbacks are refused.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Key of the HMAC-SHA256 signature. Must be set when `allowed_hosts` is not empty.
    #[serde(default)]
    pub secret: String,
    /// Delivery attempts before the callback is given up as failed.
    pub max_attempts: u32,
    /// Delay before the second attempt; doubles after each failed attempt, up to the maximum.
    pub base_delay_ms: u64,
    pub max_delay_ms: u64,
    /// Bound on one attempt (connect, send, response headers).
    pub request_timeout_ms: u64,
    /// Deliveries one worker makes at the same time (its prefetch on the callbacks queue).
    pub concurrency: u16,
}

// The secret must never reach a log.
impl std::fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSettings")
            .field("allowed_hosts", &self.allowed_hosts)
            .field("secret", &if self.secret.is_empty() { "" } else { "***" })
            .field("max_attempts", &self.max_attempts)
            .field("base_delay_ms", &self.base_delay_ms)
            .field("max_delay_ms", &self.max_delay_ms)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("concurrency", &self.concurrency)
            .finish()
    }
}

impl WebhookSettings {
    /// Whether callbacks can be accepted at all.
    pub fn enabled(&self) -> bool {
        self.has_hosts() && !self.secret.is_empty()
    }

    /// Whether any host is allowed (blank entries, as an empty environment variable gives,
    /// do not count).
    fn has_hosts(&self) -> bool {
        self.entries().next().is_some()
    }

    fn entries(&self) -> impl Iterator<Item = &str> {
        self.allowed_hosts
            .iter()
            .map(|e| e.trim())
            .filter(|e| !e.is_empty())
    }

    /// Checks the settings themselves (called when the configuration is loaded).
    pub fn check(&self) -> Result<(), String> {
        if self.has_hosts() && self.secret.is_empty() {
            return Err(
                "webhooks.secret must be set when webhooks.allowed_hosts is not empty".into(),
            );
        }
        for entry in self.entries() {
            HostPattern::parse(entry)
                .ok_or_else(|| format!("webhooks.allowed_hosts: invalid entry '{entry}'"))?;
        }
        if self.max_attempts == 0 {
            return Err("webhooks.max_attempts must be at least 1".into());
        }
        if self.base_delay_ms == 0 || self.max_delay_ms < self.base_delay_ms {
            return Err(
                "webhooks.base_delay_ms must be at least 1 and at most max_delay_ms".into(),
            );
        }
        if self.request_timeout_ms == 0 {
            return Err("webhooks.request_timeout_ms must be at least 1".into());
        }
        if self.concurrency == 0 {
            return Err("webhooks.concurrency must be at least 1".into());
        }
        Ok(())
    }

    /// The delay after failed attempt `attempt` (1-based): base · 2^(attempt-1), capped.
    pub fn backoff_ms(&self, attempt: u32) -> u64 {
        let factor = 1u64 << attempt.saturating_sub(1).min(32);
        self.base_delay_ms
            .saturating_mul(factor)
            .min(self.max_delay_ms)
    }

    /// Checks a client's `callback_url`; returns the URL to store, or why it is refused.
    pub fn validate_url(&self, raw: &str) -> Result<String, String> {
        if raw.chars().count() > MAX_URL_CHARS {
            return Err(format!("must be at most {MAX_URL_CHARS} characters"));
        }
        let url = url::Url::parse(raw).map_err(|e| format!("must be an absolute URL ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("must be an http or https URL".into());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not contain user information (user:password@)".into());
        }
        let Some(host) = url.host_str() else {
            return Err("must name a host".into());
        };
        let port = url.port_or_known_default();
        let allowed = self
            .entries()
            .filter_map(HostPattern::parse)
            .any(|pattern| pattern.matches(host, port));
        if !allowed {
            return Err(format!(
                "the host '{host}' is not allowed for callbacks on this server{}",
                if !self.has_hosts() {
                    " (no callback hosts are configured)"
                } else {
                    ""
                }
            ));
        }
        if self.secret.is_empty() {
            // Unreachable with a checked configuration; never send unsigned callbacks.
            return Err("webhooks are not configured on this server (no signing secret)".into());
        }
        Ok(url.to_string())
    }
}

/// One entry of the allow-list.
struct HostPattern {
    host: String,
    /// `*.host`: any subdomain of `host`.
    wildcard: bool,
    port: Option<u16>,
}

impl HostPattern {
    fn parse(entry: &str) -> Option<Self> {
        let entry = entry.trim().to_ascii_lowercase();
        let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
            // [v6]:port or [v6]
            let (v6, after) = rest.split_once(']')?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':')?.parse().ok()?),
            };
            (format!("[{v6}]"), port)
        } else {
            match entry.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p.parse().ok()?)),
                None => (entry.clone(), None),
            }
        };
        let (host, wildcard) = match host.strip_prefix("*.") {
            Some(suffix) => (suffix.to_owned(), true),
            None => (host, false),
        };
        let host = host.trim_end_matches('.').to_owned();
        if host.is_empty() || host.contains(['*', '/', '@', ' ']) {
            return None;
        }
        Some(HostPattern {
            host,
            wildcard,
            port,
        })
    }

    fn matches(&self, host: &str, port: Option<u16>) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let host_ok = if self.wildcard {
            host.strip_suffix(&self.host)
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.'))
        } else {
            host == self.host
        };
        host_ok && self.port.is_none_or(|p| Some(p) == port)
    }
}

/// Where the delivery of a job's callback stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum CallbackState {
    /// Not delivered yet (the job runs, or attempts are still to come).
    Pending,
    /// A 2xx answer was received.
    Delivered,
    /// Every attempt failed; no more are made.
    Failed,
}

/// The `callback` member of the status document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Callback {
    pub url: String,
    pub state: CallbackState,
    pub attempts: u32,
    /// HTTP status of the last answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    /// Why the last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::timestamp::option::serialize"
    )]
    pub delivered_at: Option<DateTime<Utc>>,
}

impl Callback {
    /// A callback not tried yet.
    pub fn pending(url: impl Into<String>) -> Self {
        Callback {
            url: url.into(),
            state: CallbackState::Pending,
            attempts: 0,
            last_status: None,
            last_error: None,
            delivered_at: None,
        }
    }
}

fn mac(secret: &[u8], timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `Webhook-Signature` value for `body` sent at `timestamp` (unix seconds).
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let tag = mac(secret, &timestamp.to_string(), body)
        .finalize()
        .into_bytes();
    format!("{SIGNATURE_VERSION}={}", hex::encode(tag))
}

/// Whether `signature` (a `Webhook-Signature` value) signs `body` with `timestamp` (the
/// `Webhook-Timestamp` value, as received). Compares in constant time. Receivers should also
/// refuse timestamps too far from their clock (replays).
pub fn verify(secret: &[u8], timestamp: &str, signature: &str, body: &[u8]) -> bool {
    let Some(hex_tag) = signature.trim().strip_prefix("v1=") else {
        return false;
    };
    let Ok(tag) = hex::decode(hex_tag) else {
        return false;
    };
    mac(secret, timestamp.trim(), body)
        .verify_slice(&tag)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(hosts: &[&str]) -> WebhookSettings {
        WebhookSettings {
            allowed_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            secret: "s3cret".into(),
            max_attempts: 5,
            base_delay_ms: 1000,
            max_delay_ms: 60_000,
            request_timeout_ms: 10_000,
            concurrency: 16,
        }
    }

    #[test]
    fn allow_list() {
        let s = settings(&[
            "hooks.example.com",
            "*.example.org",
            "127.0.0.1:9000",
            "[::1]",
        ]);
        assert!(s.check().is_ok());
        for ok in [
            "https://hooks.example.com/x?y=1",
            "http://HOOKS.example.com:8080/",
            "https://a.example.org/",
            "https://a.b.example.org/",
            "http://127.0.0.1:9000/cb",
            "http://[::1]:1234/",
        ] {
            assert!(s.validate_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "https://example.org/",
            "https://evilexample.org/",
            "https://other.example.com/",
            "http://127.0.0.1/",
            "http://127.0.0.1:9001/",
            "http://169.254.169.254/",
            "ftp://hooks.example.com/",
            "hooks.example.com/cb",
            "/relative",
            "http://user:pw@hooks.example.com/",
            "http://user@hooks.example.com/",
        ] {
            assert!(s.validate_url(bad).is_err(), "{bad}");
        }
        let long = format!("https://hooks.example.com/{}", "a".repeat(MAX_URL_CHARS));
        assert!(s.validate_url(&long).is_err());
    }

    #[test]
    fn empty_allow_list_refuses_everything() {
        let mut s = settings(&["", " "]);
        s.secret.clear();
        assert!(s.check().is_ok());
        assert!(!s.enabled());
        let e = s.validate_url("https://hooks.example.com/").unwrap_err();
        assert!(e.contains("not allowed"), "{e}");
        // Hosts without a secret is a configuration error.
        let mut s = settings(&["x.example.com"]);
        s.secret.clear();
        assert!(s.check().is_err());
        assert!(settings(&["a:b"]).check().is_err());
    }

    #[test]
    fn signatures() {
        let body = br#"{"id":"x"}"#;
        let sig = sign(b"key", 1_700_000_000, body);
        assert!(sig.starts_with("v1="));
        assert_eq!(sig.len(), 3 + 64);
        assert!(verify(b"key", "1700000000", &sig, body));
        assert!(!verify(b"other", "1700000000", &sig, body));
        assert!(!verify(b"key", "1700000001", &sig, body));
        assert!(!verify(b"key", "1700000000", &sig, b"{}"));
        assert!(!verify(b"key", "1700000000", "v0=00", body));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s = settings(&[]);
        assert_eq!(s.backoff_ms(1), 1000);
        assert_eq!(s.backoff_ms(2), 2000);
        assert_eq!(s.backoff_ms(7), 60_000);
        assert_eq!(s.backoff_ms(100), 60_000);
    }
}
