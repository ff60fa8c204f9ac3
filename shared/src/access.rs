//! Who may call the facade and how much: API keys and their tenants, the keys that sign
//! status URLs, rate limits and admission control, and the origins a browser may call from.
//! Only the facade acts on these; they live here because all configuration is one document.
//!
//! Lists are strings so that each fits one environment variable, comma-separated:
//!
//! - an API key: `<key id>:<tenant>:<hex SHA-256 of the key>[:operator]`, e.g.
//!   `APP__AUTH__KEYS=ci:acme:9f86d0…:operator,web:acme:2c26b4…`. Only the digest is
//!   configured: the key itself never sits in a file or an environment.
//! - a signing key: `<key id>:<secret>[@<RFC 3339 time after which it is no longer accepted>]`,
//!   newest first: the first key that has no end signs, the others only verify. To rotate, put
//!   a new key first and give the old one an end a little beyond the longest URL lifetime.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::tenant::Tenant;

#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    /// Off: every request is the default tenant's, with operator rights (local use only).
    pub enabled: bool,
    #[serde(default)]
    pub keys: Vec<String>,
}

/// One configured API key.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeyEntry {
    pub id: String,
    pub tenant: Tenant,
    pub sha256: [u8; 32],
    pub operator: bool,
}

impl fmt::Debug for ApiKeyEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyEntry")
            .field("id", &self.id)
            .field("tenant", &self.tenant)
            .field("operator", &self.operator)
            .finish_non_exhaustive()
    }
}

impl ApiKeyEntry {
    pub fn parse(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.trim().split(':').collect();
        let (id, tenant, digest, operator) = match parts.as_slice() {
            [id, tenant, digest] => (*id, *tenant, *digest, false),
            [id, tenant, digest, "operator"] => (*id, *tenant, *digest, true),
            _ => return Err("an API key is <id>:<tenant>:<hex sha256>[:operator]".to_owned()),
        };
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!("API key id {id:?}: 1-64 visible ASCII characters"));
        }
        let tenant = Tenant::parse(tenant).map_err(|e| e.to_string())?;
        let bytes = hex::decode(digest)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| format!("API key {id}: the digest must be 64 hex digits (SHA-256)"))?;
        Ok(ApiKeyEntry {
            id: id.to_owned(),
            tenant,
            sha256: bytes,
            operator,
        })
    }
}

impl AuthSettings {
    pub fn entries(&self) -> Result<Vec<ApiKeyEntry>, String> {
        let entries = self
            .keys
            .iter()
            .filter(|k| !k.trim().is_empty())
            .map(|k| ApiKeyEntry::parse(k))
            .collect::<Result<Vec<_>, _>>()?;
        for (i, a) in entries.iter().enumerate() {
            if entries[..i].iter().any(|b| b.id == a.id) {
                return Err(format!("API key id {} is configured twice", a.id));
            }
        }
        if self.enabled && entries.is_empty() {
            return Err("auth.enabled is true but auth.keys is empty".to_owned());
        }
        Ok(entries)
    }
}

#[derive(Clone, Deserialize)]
pub struct SigningSettings {
    /// Newest first; empty: status URLs are not signed (and signed ones are refused).
    #[serde(default)]
    pub keys: Vec<String>,
    /// How long a signed URL stays valid (seconds).
    pub ttl_seconds: u64,
}

impl fmt::Debug for SigningSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningSettings")
            .field("keys", &self.keys.len())
            .field("ttl_seconds", &self.ttl_seconds)
            .finish()
    }
}

/// One configured signing key.
#[derive(Clone)]
pub struct SigningKey {
    pub id: String,
    pub secret: Vec<u8>,
    /// After this time the key no longer verifies (nor signs).
    pub not_after: Option<DateTime<Utc>>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("id", &self.id)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (id, rest) = text
            .trim()
            .split_once(':')
            .ok_or("a signing key is <id>:<secret>[@<RFC 3339 end>]")?;
        let (secret, not_after) = match rest.rsplit_once('@') {
            Some((secret, end)) => {
                let end = DateTime::parse_from_rfc3339(end)
                    .map_err(|e| format!("signing key {id}: end {end:?}: {e}"))?;
                (secret, Some(end.with_timezone(&Utc)))
            }
            None => (rest, None),
        };
        if id.is_empty()
            || id.len() > 32
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "signing key id {id:?}: 1-32 of a-z, A-Z, 0-9, '-', '_'"
            ));
        }
        if secret.len() < 32 {
            return Err(format!(
                "signing key {id}: the secret needs at least 32 characters"
            ));
        }
        Ok(SigningKey {
            id: id.to_owned(),
            secret: secret.as_bytes().to_vec(),
            not_after,
        })
    }
}

impl SigningSettings {
    pub fn parsed(&self) -> Result<Vec<SigningKey>, String> {
        let keys = self
            .keys
            .iter()
            .filter(|k| !k.trim().is_empty())
            .map(|k| SigningKey::parse(k))
            .collect::<Result<Vec<_>, _>>()?;
        for (i, a) in keys.iter().enumerate() {
            if keys[..i].iter().any(|b| b.id == a.id) {
                return Err(format!("signing key id {} is configured twice", a.id));
            }
        }
        if !keys.is_empty() && self.ttl_seconds == 0 {
            return Err("signing.ttl_seconds must be at least 1".to_owned());
        }
        Ok(keys)
    }
}

/// `[limits]`: bounds on what a request may hold (the shape of bodies), per-key request rates,
/// concurrent waits, and admission control. 0 turns a rate, wait or admission limit off.
#[derive(Debug, Clone, Deserialize)]
pub struct LimitSettings {
    // Shape of request bodies (see `api/src/body.rs`).
    pub max_json_depth: usize,
    pub max_string_bytes: usize,
    pub max_array_items: usize,
    pub max_body_read_seconds: u64,
    /// Submits per second per API key (sustained), and the burst allowed above it.
    pub submit_per_second: u32,
    pub submit_burst: u32,
    /// Polls (status, result, events, list) per second per API key, and the burst.
    pub poll_per_second: u32,
    pub poll_burst: u32,
    /// Open long-polls and event streams per API key.
    pub max_waits_per_key: u32,
    /// Submits are refused (503) while more messages than this wait in the work queue.
    pub max_queue_depth: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CorsSettings {
    /// Origins (`https://app.example.com`) whose pages may call the API; `*` allows any.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// How long a browser may cache a preflight answer (seconds).
    pub max_age_seconds: u32,
}

impl CorsSettings {
    pub fn check(&self) -> Result<(), String> {
        for origin in &self.allowed_origins {
            if origin == "*" {
                continue;
            }
            // An origin is scheme://host[:port], nothing more: a browser sends exactly that.
            let ok = url::Url::parse(origin).is_ok_and(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host_str().is_some()
                    && u.path() == "/"
                    && !origin.ends_with('/')
                    && u.query().is_none()
                    && u.username().is_empty()
            });
            if !ok {
                return Err(format!(
                    "cors.allowed_origins: {origin:?} is not an origin like https://app.example.com"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn api_keys_parse() {
        let key = ApiKeyEntry::parse(&format!("ci:acme:{DIGEST}:operator")).unwrap();
        assert_eq!((key.id.as_str(), key.tenant.as_str()), ("ci", "acme"));
        assert!(key.operator);
        assert!(
            !ApiKeyEntry::parse(&format!("web:acme:{DIGEST}"))
                .unwrap()
                .operator
        );
        for bad in [
            "ci:acme",
            "ci:Acme:00",
            &format!("ci:acme:{}", &DIGEST[..62]),
            &format!("ci:a*b:{DIGEST}"),
            &format!("ci:acme:{DIGEST}:admin"),
        ] {
            assert!(ApiKeyEntry::parse(bad).is_err(), "{bad}");
        }
        // The digest never shows in logs.
        assert!(!format!("{key:?}").contains("9f86"));
    }

    #[test]
    fn cors_origins_are_checked() {
        let check = |o: &str| {
            CorsSettings {
                allowed_origins: vec![o.to_owned()],
                max_age_seconds: 1,
            }
            .check()
        };
        assert!(check("http://localhost:8000").is_ok());
        assert!(check("*").is_ok());
        for bad in [
            "localhost:8000",
            "http://x.org/",
            "http://x.org/a",
            "ftp://x.org",
        ] {
            assert!(check(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn signing_keys_parse_with_an_optional_end() {
        let secret = "s".repeat(32);
        let k = SigningKey::parse(&format!("k2:{secret}")).unwrap();
        assert_eq!((k.id.as_str(), k.not_after), ("k2", None));
        let old = SigningKey::parse(&format!("k1:{secret}@2026-12-01T00:00:00Z")).unwrap();
        assert!(old.not_after.is_some());
        assert!(SigningKey::parse("k1:short").is_err());
        assert!(SigningKey::parse(&format!("k1:{secret}@yesterday")).is_err());
        assert!(!format!("{k:?}").contains(&secret));
    }
}
