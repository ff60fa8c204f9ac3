//! Signed status URLs (the valet-key pattern): a `Location` can carry `tenant`, `exp`, `kid`
//! and `sig` query parameters, so that whoever holds the URL (a browser, a third party) may read
//! that one job's status, result and events until `exp` without an API key. The signature
//! itself is `shared::signing`'s (the worker signs progress URLs with it too); this wraps it
//! in the facade's error type.
//!
//! A read signature binds the job, its tenant and the expiry, so changing any of them (or the
//! key id) breaks it. It does not bind the path, so one URL's parameters serve the status
//! monitor, the result and the event stream of its job alike, and only those: they are
//! read-only ([`Purpose::Progress`] signatures, for `POST /v1/jobs/{id}/progress`, sign another
//! message).

use shared::access::SigningSettings;
pub use shared::signing::{Purpose, SignatureParams};
use shared::{JobId, Tenant};

use crate::error::ApiError;

pub struct Signer {
    inner: shared::signing::Signer,
}

impl Signer {
    pub fn new(settings: &SigningSettings) -> Result<Self, String> {
        Ok(Signer {
            inner: shared::signing::Signer::new(settings)?,
        })
    }

    pub fn enabled(&self) -> bool {
        self.inner.enabled()
    }

    /// The query string that lets the holder read `tenant`'s job `id` until now + ttl (never
    /// past the signing key's end); `None` when no key can sign now.
    pub fn sign(&self, tenant: &Tenant, id: &JobId) -> Option<String> {
        self.inner.sign(Purpose::Read, tenant, id)
    }

    /// Checks a read signature for job `id`; the tenant it grants, and the canonical query to
    /// put on the `Location`s of the answer. Every failure is a 403 that says which check
    /// failed.
    pub fn verify(
        &self,
        id: &JobId,
        params: &SignatureParams,
    ) -> Result<(Tenant, String), ApiError> {
        self.verify_for(Purpose::Read, id, params)
    }

    /// As [`verify`](Self::verify), for a signature granting `purpose`.
    pub fn verify_for(
        &self,
        purpose: Purpose,
        id: &JobId,
        params: &SignatureParams,
    ) -> Result<(Tenant, String), ApiError> {
        self.inner
            .verify(purpose, id, params)
            .map_err(|e| ApiError::Forbidden(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

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
        let query = s.sign(&acme, &id).unwrap();
        let params = SignatureParams::from_query(&query).unwrap();
        let (tenant, canonical) = s.verify(&id, &params).unwrap();
        assert_eq!((tenant, canonical.as_str()), (acme.clone(), query.as_str()));
        // Another job, another tenant, another expiry: all refused.
        assert!(s.verify(&JobId::new(), &params).is_err());
        let other = query.replace("tenant=acme", "tenant=evil");
        assert!(s
            .verify(&id, &SignatureParams::from_query(&other).unwrap())
            .is_err());
        let exp = params.exp.clone().unwrap();
        let later = query.replace(
            &format!("exp={exp}"),
            &format!("exp={}", exp.parse::<i64>().unwrap() + 1),
        );
        assert!(s
            .verify(&id, &SignatureParams::from_query(&later).unwrap())
            .is_err());
        // Given twice: refused.
        let twice = format!("{query}&tenant=acme");
        assert!(s
            .verify(&id, &SignatureParams::from_query(&twice).unwrap())
            .is_err());
        // A read signature grants no progress posting.
        assert!(matches!(
            s.verify_for(Purpose::Progress, &id, &params),
            Err(ApiError::Forbidden(_))
        ));
    }

    #[test]
    fn a_retired_key_no_longer_verifies_and_the_next_one_signs() {
        let old = signer(&[&format!("k1:{SECRET}")]);
        let (t, id) = (Tenant::default(), JobId::new());
        let query = old.sign(&t, &id).unwrap();
        let params = SignatureParams::from_query(&query).unwrap();
        let future = (Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
        let past = (Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
        let rotated = signer(&[&format!("k2:{SECRET}x"), &format!("k1:{SECRET}@{future}")]);
        assert!(rotated.verify(&id, &params).is_ok());
        assert!(rotated.sign(&t, &id).unwrap().contains("kid=k2"));
        let retired = signer(&[&format!("k2:{SECRET}x"), &format!("k1:{SECRET}@{past}")]);
        assert!(retired.verify(&id, &params).is_err());
    }
}
