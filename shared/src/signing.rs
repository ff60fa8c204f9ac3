//! Signed, job-scoped URLs (the valet-key pattern), shared by the facade (which hands out and
//! checks them) and the worker (which hands progress URLs to `http` backends).
//!
//! A signed URL carries `tenant`, `exp`, `kid` and `sig` query parameters. `sig` is the
//! URL-safe base64 HMAC-SHA256, under key `kid`, of `<purpose>\n<job id>\n<tenant>\n<exp>`,
//! where the purpose prefix depends on what the URL grants ([`Purpose`]): `arr-v1` for reading a
//! job (its status, result and events), `arr-progress-v1` for posting its progress. Different
//! messages mean a read URL can never post progress and a progress URL never reads.
//!
//! Keys rotate: the newest key without an end signs; every configured key verifies until its
//! end, so URLs handed out before a rotation keep working until then.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::Utc;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::access::{SigningKey, SigningSettings};
use crate::{JobId, Tenant};

type HmacSha256 = Hmac<Sha256>;

/// What a signature grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Reading the job: its status monitor, result and event stream.
    Read,
    /// Posting the job's progress (`POST /v1/jobs/{id}/progress`).
    Progress,
}

impl Purpose {
    fn prefix(self) -> &'static str {
        match self {
            Purpose::Read => "arr-v1",
            Purpose::Progress => "arr-progress-v1",
        }
    }
}

/// Why a signature was refused (each says which check failed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid signed URL: {0}")]
pub struct SignatureError(pub &'static str);

/// The query parameters of a signed URL, as read from a request.
#[derive(Debug, Default)]
pub struct SignatureParams {
    pub tenant: Option<String>,
    pub exp: Option<String>,
    pub kid: Option<String>,
    pub sig: Option<String>,
}

impl SignatureParams {
    /// The signature parameters in `query`, if it has any of them.
    pub fn from_query(query: &str) -> Option<Self> {
        let mut params = SignatureParams::default();
        let mut any = false;
        for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
            let slot = match name.as_ref() {
                "tenant" => &mut params.tenant,
                "exp" => &mut params.exp,
                "kid" => &mut params.kid,
                "sig" => &mut params.sig,
                _ => continue,
            };
            any = true;
            // A parameter given twice is ambiguous: refuse rather than pick one.
            if slot.replace(value.into_owned()).is_some() {
                return Some(SignatureParams {
                    sig: None,
                    ..SignatureParams::default()
                });
            }
        }
        any.then_some(params)
    }
}

/// Signs and verifies with the configured keys.
pub struct Signer {
    keys: Vec<SigningKey>,
    ttl_seconds: i64,
}

impl Signer {
    pub fn new(settings: &SigningSettings) -> Result<Self, String> {
        Ok(Signer {
            keys: settings.parsed()?,
            ttl_seconds: settings.ttl_seconds.min(i64::MAX as u64) as i64,
        })
    }

    /// Whether any key is configured.
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    fn mac(key: &SigningKey, purpose: Purpose, id: &JobId, tenant: &str, exp: i64) -> HmacSha256 {
        // HMAC takes a key of any length, so this cannot fail.
        let mut mac = HmacSha256::new_from_slice(&key.secret).expect("HMAC accepts any key");
        mac.update(format!("{}\n{id}\n{tenant}\n{exp}", purpose.prefix()).as_bytes());
        mac
    }

    /// The query string that grants `purpose` on `tenant`'s job `id` until now + the
    /// configured ttl (never past the signing key's end); `None` when no key can sign now.
    pub fn sign(&self, purpose: Purpose, tenant: &Tenant, id: &JobId) -> Option<String> {
        self.sign_for(purpose, tenant, id, self.ttl_seconds)
    }

    /// As [`sign`](Self::sign), valid for `ttl_seconds`.
    pub fn sign_for(
        &self,
        purpose: Purpose,
        tenant: &Tenant,
        id: &JobId,
        ttl_seconds: i64,
    ) -> Option<String> {
        let now = Utc::now();
        let key = self
            .keys
            .iter()
            .find(|k| k.not_after.is_none_or(|end| end > now))?;
        let mut exp = now.timestamp().saturating_add(ttl_seconds);
        if let Some(end) = key.not_after {
            exp = exp.min(end.timestamp());
        }
        let sig = URL_SAFE_NO_PAD.encode(
            Self::mac(key, purpose, id, tenant.as_str(), exp)
                .finalize()
                .into_bytes(),
        );
        Some(format!(
            "tenant={tenant}&exp={exp}&kid={}&sig={sig}",
            key.id
        ))
    }

    /// Checks a signature granting `purpose` on job `id`; the tenant it grants, and the
    /// canonical query (to put on the `Location`s of an answer).
    pub fn verify(
        &self,
        purpose: Purpose,
        id: &JobId,
        params: &SignatureParams,
    ) -> Result<(Tenant, String), SignatureError> {
        let (Some(tenant), Some(exp), Some(kid), Some(sig)) =
            (&params.tenant, &params.exp, &params.kid, &params.sig)
        else {
            return Err(SignatureError(
                "it needs each of tenant, exp, kid and sig once",
            ));
        };
        let tenant = Tenant::parse(tenant).map_err(|_| SignatureError("bad tenant"))?;
        let exp: i64 = exp.parse().map_err(|_| SignatureError("bad exp"))?;
        let now = Utc::now();
        if exp <= now.timestamp() {
            return Err(SignatureError("it has expired"));
        }
        let key = self
            .keys
            .iter()
            .find(|k| k.id == *kid)
            .ok_or(SignatureError("unknown key id"))?;
        if key.not_after.is_some_and(|end| end <= now) {
            return Err(SignatureError("its key has been retired"));
        }
        let given = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| SignatureError("bad sig encoding"))?;
        // `verify_slice` compares in constant time.
        Self::mac(key, purpose, id, tenant.as_str(), exp)
            .verify_slice(&given)
            .map_err(|_| SignatureError("the signature does not match"))?;
        let canonical = format!("tenant={tenant}&exp={exp}&kid={kid}&sig={sig}");
        Ok((tenant, canonical))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(keys: &[&str]) -> Signer {
        Signer::new(&SigningSettings {
            keys: keys.iter().map(|k| k.to_string()).collect(),
            ttl_seconds: 60,
        })
        .unwrap()
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_signature_verifies_and_binds_job_tenant_and_expiry() {
        let s = signer(&[&format!("k1:{SECRET}")]);
        let (acme, id) = (Tenant::parse("acme").unwrap(), JobId::new());
        let query = s.sign(Purpose::Read, &acme, &id).unwrap();
        let params = SignatureParams::from_query(&query).unwrap();
        let (tenant, canonical) = s.verify(Purpose::Read, &id, &params).unwrap();
        assert_eq!((tenant, canonical.as_str()), (acme.clone(), query.as_str()));
        // Another job, another tenant, another expiry: all refused.
        assert!(s.verify(Purpose::Read, &JobId::new(), &params).is_err());
        let other = query.replace("tenant=acme", "tenant=evil");
        assert!(s
            .verify(
                Purpose::Read,
                &id,
                &SignatureParams::from_query(&other).unwrap()
            )
            .is_err());
        let exp = params.exp.clone().unwrap();
        let later = query.replace(
            &format!("exp={exp}"),
            &format!("exp={}", exp.parse::<i64>().unwrap() + 1),
        );
        assert!(s
            .verify(
                Purpose::Read,
                &id,
                &SignatureParams::from_query(&later).unwrap()
            )
            .is_err());
        // Given twice: refused.
        let twice = format!("{query}&tenant=acme");
        assert!(s
            .verify(
                Purpose::Read,
                &id,
                &SignatureParams::from_query(&twice).unwrap()
            )
            .is_err());
    }

    #[test]
    fn a_read_signature_does_not_grant_progress_and_back() {
        let s = signer(&[&format!("k1:{SECRET}")]);
        let (t, id) = (Tenant::default(), JobId::new());
        let read = SignatureParams::from_query(&s.sign(Purpose::Read, &t, &id).unwrap()).unwrap();
        let progress =
            SignatureParams::from_query(&s.sign(Purpose::Progress, &t, &id).unwrap()).unwrap();
        assert!(s.verify(Purpose::Progress, &id, &read).is_err());
        assert!(s.verify(Purpose::Read, &id, &progress).is_err());
        assert!(s.verify(Purpose::Progress, &id, &progress).is_ok());
    }

    #[test]
    fn a_retired_key_no_longer_verifies_and_the_next_one_signs() {
        let old = signer(&[&format!("k1:{SECRET}")]);
        let (t, id) = (Tenant::default(), JobId::new());
        let query = old.sign(Purpose::Read, &t, &id).unwrap();
        let params = SignatureParams::from_query(&query).unwrap();
        let future = (Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
        let past = (Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
        let rotated = signer(&[&format!("k2:{SECRET}x"), &format!("k1:{SECRET}@{future}")]);
        assert!(rotated.verify(Purpose::Read, &id, &params).is_ok());
        assert!(rotated
            .sign(Purpose::Read, &t, &id)
            .unwrap()
            .contains("kid=k2"));
        let retired = signer(&[&format!("k2:{SECRET}x"), &format!("k1:{SECRET}@{past}")]);
        assert!(retired.verify(Purpose::Read, &id, &params).is_err());
    }
}
