//! Tenants: who a job belongs to. Every job's Redis keys carry its tenant, so one tenant's
//! request can never name another tenant's job: the same id under another tenant is simply a
//! key that does not exist. A tenant name comes only from configuration (the API keys), never
//! from request text, and is checked when it is parsed, so it is safe inside a Redis key.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, LazyLock};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A tenant's name: 1 to 63 characters of `a-z`, `0-9`, `_` and `-`, starting with a letter
/// or digit. No `:`, `{`, `}`, `*`, `?` or `[`: nothing that could change a key's meaning.
///
/// Shared text: every job's handles (key layout, store, callbacks) carry their tenant, and a
/// clone is a reference count, not an allocation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tenant(Arc<str>);

/// The tenant of every job when authentication is off, and of messages from before tenants.
pub const DEFAULT_TENANT: &str = "default";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid tenant name {0:?}: use 1-63 characters of a-z, 0-9, '_' and '-', starting with a letter or digit")]
pub struct InvalidTenant(pub String);

impl Tenant {
    pub fn parse(name: &str) -> Result<Self, InvalidTenant> {
        let valid = (1..=63).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
            && name
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if valid {
            Ok(Tenant(Arc::from(name)))
        } else {
            Err(InvalidTenant(name.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Tenant {
    fn default() -> Self {
        static DEFAULT: LazyLock<Tenant> = LazyLock::new(|| Tenant(Arc::from(DEFAULT_TENANT)));
        DEFAULT.clone()
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Tenant {
    type Err = InvalidTenant;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tenant::parse(s)
    }
}

impl Serialize for Tenant {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Tenant {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Tenant::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_safe_names_parse() {
        for good in ["acme", "a", "team-7", "x_y", "0abc"] {
            assert!(Tenant::parse(good).is_ok(), "{good}");
        }
        let long = "a".repeat(64);
        for bad in [
            "", "Acme", "-a", "_a", "a:b", "a{b}", "a*", "a?", "a[b]", "a b", "a/b", &long,
        ] {
            assert!(Tenant::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn deserializing_checks_the_name() {
        assert!(serde_json::from_str::<Tenant>("\"ok\"").is_ok());
        assert!(serde_json::from_str::<Tenant>("\"a:*\"").is_err());
    }
}
