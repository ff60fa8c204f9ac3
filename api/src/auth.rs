//! Who is calling. A request is authenticated by exactly one of:
//!
//! - an API key, `Authorization: Bearer <key>`: the key's SHA-256 is compared, in constant
//!   time, with every configured digest; the matching entry gives the tenant and whether the
//!   caller is an operator. The key itself is never stored or logged.
//! - a signed URL (see `signing.rs`): read-only access to one job of one tenant.
//! - nothing, when authentication is off: the default tenant, with operator rights.
//!
//! Everything a handler does with jobs goes through the caller's tenant (`StatusStore::
//! for_tenant`), so another tenant's job id names a key that does not exist: 404, exactly as
//! an unknown id.

use std::future::{ready, Ready};
use std::sync::{Arc, LazyLock};

use actix_web::dev::Payload;
use actix_web::http::{header, Method};
use actix_web::{web, FromRequest, HttpRequest};
use sha2::{Digest, Sha256};
use shared::access::{ApiKeyEntry, AuthSettings};
use shared::{JobId, Tenant};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::signing::SignatureParams;
use crate::startup::AppState;

pub struct Keyring {
    enabled: bool,
    keys: Vec<ApiKeyEntry>,
}

impl Keyring {
    pub fn new(settings: &AuthSettings) -> Result<Self, String> {
        Ok(Keyring {
            enabled: settings.enabled,
            keys: settings.entries()?,
        })
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The entry whose digest is the token's. Looks at every entry whatever it finds, so the
    /// time taken says nothing about which digest (or how much of one) matched.
    fn find(&self, token: &str) -> Option<&ApiKeyEntry> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for key in &self.keys {
            if bool::from(key.sha256.ct_eq(&digest)) {
                found = Some(key);
            }
        }
        found
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant: Tenant,
    /// What rate limits and open waits are counted against: the key id, `signed:<tenant>` for
    /// signed URLs, `anonymous` when authentication is off. Never the key itself.
    pub identity: Arc<str>,
    pub operator: bool,
    /// Authentication is off: there is no key to hold per-key limits against.
    pub anonymous: bool,
    /// The canonical signature query when the request came with a signed URL (reused on the
    /// answer's `Location`s, so a valet-key holder can follow them).
    pub signed: Option<String>,
}

impl Caller {
    fn anonymous() -> Self {
        // Built once: with authentication off every request is this caller.
        static IDENTITY: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("anonymous"));
        Caller {
            tenant: Tenant::default(),
            identity: IDENTITY.clone(),
            operator: true,
            anonymous: true,
            signed: None,
        }
    }

    /// Operators only (the worker fleet, the dashboard): anyone else gets 403.
    pub fn require_operator(&self) -> Result<(), ApiError> {
        if self.operator {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "this resource is for operators; use an operator API key".to_owned(),
            ))
        }
    }
}

/// The bearer token of an `Authorization` header.
fn bearer(value: &header::HeaderValue) -> Result<&str, ApiError> {
    let text = value
        .to_str()
        .map_err(|_| ApiError::Unauthorized("the Authorization header is not readable"))?;
    let (scheme, token) = text.split_once(' ').ok_or(ApiError::Unauthorized(
        "use Authorization: Bearer <API key>",
    ))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::Unauthorized(
            "use Authorization: Bearer <API key>",
        ));
    }
    Ok(token.trim())
}

pub fn authenticate(req: &HttpRequest, state: &AppState) -> Result<Caller, ApiError> {
    let keyring = &state.keyring;
    if keyring.enabled() {
        if let Some(value) = req.headers().get(header::AUTHORIZATION) {
            let key = keyring
                .find(bearer(value)?)
                .ok_or(ApiError::Unauthorized("unknown API key"))?;
            return Ok(Caller {
                tenant: key.tenant.clone(),
                identity: Arc::from(key.id.as_str()),
                operator: key.operator,
                anonymous: false,
                signed: None,
            });
        }
    }
    if let Some(params) = SignatureParams::from_query(req.query_string()) {
        // A signed URL reads one job: GET (or HEAD) on a path with that job's id.
        if !matches!(*req.method(), Method::GET | Method::HEAD) {
            return Err(ApiError::Forbidden(
                "a signed URL only grants reading its job".to_owned(),
            ));
        }
        let Some(id) = req.match_info().get("id") else {
            return Err(ApiError::Forbidden(
                "a signed URL only grants reading its job".to_owned(),
            ));
        };
        // An id that does not parse names no job, signed or not.
        let id: JobId = id.parse().map_err(|_| ApiError::JobNotFound)?;
        let (tenant, canonical) = state.signer.verify(&id, &params)?;
        return Ok(Caller {
            identity: Arc::from(format!("signed:{tenant}")),
            tenant,
            operator: false,
            anonymous: false,
            signed: Some(canonical),
        });
    }
    if keyring.enabled() {
        return Err(ApiError::Unauthorized(
            "this API needs a key: Authorization: Bearer <API key>",
        ));
    }
    Ok(Caller::anonymous())
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(match req.app_data::<web::Data<AppState>>() {
            Some(state) => authenticate(req, state),
            None => Err(ApiError::Unauthorized("no authentication configured")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_by_their_digest() {
        let digest = hex::encode(Sha256::digest(b"s3cret-key"));
        let ring = Keyring::new(&AuthSettings {
            enabled: true,
            keys: vec![format!("ci:acme:{digest}:operator")],
        })
        .unwrap();
        assert_eq!(ring.find("s3cret-key").map(|k| k.id.as_str()), Some("ci"));
        assert!(ring.find("s3cret-kez").is_none());
        assert!(ring.find(&digest).is_none());
    }
}
