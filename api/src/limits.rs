//! Per-key rate limits, a cap on open waits (long-polls and event streams) per key, and
//! admission control on the depth of the work queue. With authentication off there are no
//! keys, and only admission control applies (one budget shared by every client would throttle
//! the whole service, not an abuser). Rate limits are token buckets (GCRA,
//! the `governor` crate) kept in this process: with several facades, each enforces the limit
//! on its own share of the traffic.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::future::Future;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde_json::{json, Value};
use shared::access::LimitSettings;

use crate::auth::Caller;
use crate::error::ApiError;

/// What a shed submit is told to wait (seconds): the backlog needs time to drain.
const SHED_RETRY_AFTER: u64 = 5;

type Limiter = DefaultKeyedRateLimiter<Arc<str>>;
/// Open waits per key.
type OpenWaits = Arc<Mutex<HashMap<Arc<str>, u32>>>;

fn limiter(per_second: u32, burst: u32) -> Option<Limiter> {
    let rate = NonZeroU32::new(per_second)?;
    let burst = NonZeroU32::new(burst).unwrap_or(rate);
    Some(RateLimiter::keyed(
        Quota::per_second(rate).allow_burst(burst),
    ))
}

#[derive(Default)]
struct Counters {
    submit_limited: AtomicU64,
    poll_limited: AtomicU64,
    waits_refused: AtomicU64,
    shed: AtomicU64,
}

pub struct Limits {
    settings: LimitSettings,
    submit: Option<Limiter>,
    poll: Option<Limiter>,
    waits: OpenWaits,
    counters: Counters,
}

/// Logs the first refusal and then every hundredth, so a flood does not flood the logs too.
fn log_refusal(counter: &AtomicU64, what: &str, identity: &str) {
    let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
    if n == 1 || n.is_multiple_of(100) {
        tracing::warn!(key = identity, refused_total = n, "{what}");
    }
}

impl Limits {
    pub fn new(settings: &LimitSettings) -> Self {
        Limits {
            submit: limiter(settings.submit_per_second, settings.submit_burst),
            poll: limiter(settings.poll_per_second, settings.poll_burst),
            settings: settings.clone(),
            waits: Arc::default(),
            counters: Counters::default(),
        }
    }

    /// Takes a token from `caller`'s bucket in `limiter`; when there is none, counts and logs
    /// the refusal (`what`) and answers 429 with the whole seconds until the next token.
    fn check(
        &self,
        limiter: &Option<Limiter>,
        refused: &AtomicU64,
        what: &str,
        caller: &Caller,
    ) -> Result<(), ApiError> {
        let Some(limiter) = limiter.as_ref().filter(|_| !caller.anonymous) else {
            return Ok(());
        };
        limiter.check_key(&caller.identity).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            log_refusal(refused, what, &caller.identity);
            // Whole seconds, rounded up (at least one): a client that waits that long gets
            // through.
            let retry_after = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            ApiError::RateLimited {
                retry_after: retry_after.max(1),
            }
        })
    }

    pub fn check_submit(&self, caller: &Caller) -> Result<(), ApiError> {
        let refused = &self.counters.submit_limited;
        self.check(&self.submit, refused, "submit rate limit reached", caller)
    }

    pub fn check_poll(&self, caller: &Caller) -> Result<(), ApiError> {
        let refused = &self.counters.poll_limited;
        self.check(&self.poll, refused, "poll rate limit reached", caller)
    }

    /// A slot for one long-poll or event stream of `caller`, given back when dropped.
    pub fn wait_slot(&self, caller: &Caller) -> Result<WaitSlot, ApiError> {
        let max = if caller.anonymous {
            0
        } else {
            self.settings.max_waits_per_key
        };
        if max > 0 {
            let mut waits = self
                .waits
                .lock()
                .map_err(|_| ApiError::TooManyWaits { limit: max })?;
            let open = waits.entry(caller.identity.clone()).or_insert(0);
            if *open >= max {
                drop(waits);
                log_refusal(
                    &self.counters.waits_refused,
                    "open-wait limit reached",
                    &caller.identity,
                );
                return Err(ApiError::TooManyWaits { limit: max });
            }
            *open += 1;
        }
        Ok(WaitSlot {
            waits: (max > 0).then(|| (self.waits.clone(), caller.identity.clone())),
        })
    }

    pub fn admission_enabled(&self) -> bool {
        self.settings.max_queue_depth > 0
    }

    /// Refuses a submit while its type's work queue holds more than the admission limit
    /// (`depth`: messages ready, as last measured; unknown depth admits).
    pub fn admit(&self, depth: Option<u64>) -> Result<(), ApiError> {
        let limit = self.settings.max_queue_depth;
        match depth {
            Some(depth) if limit > 0 && depth > limit => {
                log_refusal(
                    &self.counters.shed,
                    "work queue over the admission limit: shedding submits",
                    "*",
                );
                Err(ApiError::Overloaded {
                    depth,
                    limit,
                    retry_after: SHED_RETRY_AFTER,
                })
            }
            _ => Ok(()),
        }
    }

    /// For `/readyz`: the limits in force and how often each refused.
    pub fn report(&self, depth: Option<u64>) -> Value {
        let s = &self.settings;
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "admission": {
                "max_queue_depth": s.max_queue_depth,
                "queue_depth": depth,
                "shedding": s.max_queue_depth > 0 && depth.is_some_and(|d| d > s.max_queue_depth),
                "shed_total": load(&c.shed),
            },
            "rate_limits": {
                "submit_per_second": s.submit_per_second,
                "submit_burst": s.submit_burst,
                "poll_per_second": s.poll_per_second,
                "poll_burst": s.poll_burst,
                "submit_limited_total": load(&c.submit_limited),
                "poll_limited_total": load(&c.poll_limited),
            },
            "waits": {
                "max_per_key": s.max_waits_per_key,
                "refused_total": load(&c.waits_refused),
            },
        })
    }
}

/// One open wait of a key; dropping it frees the slot.
pub struct WaitSlot {
    waits: Option<(OpenWaits, Arc<str>)>,
}

impl Drop for WaitSlot {
    fn drop(&mut self) {
        if let Some((waits, identity)) = self.waits.take() {
            if let Ok(mut waits) = waits.lock() {
                if let Some(open) = waits.get_mut(&identity) {
                    *open = open.saturating_sub(1);
                    if *open == 0 {
                        waits.remove(&identity);
                    }
                }
            }
        }
    }
}

/// Refuses a request whose header section (names and values) is larger than `max_bytes` with a
/// `431` problem, before any handler reads it. The HTTP server itself refuses more than 96
/// headers (with a bare `431`) and header sections beyond its buffer.
pub fn guard_headers<S, B>(
    req: ServiceRequest,
    service: &S,
    max_bytes: usize,
) -> impl Future<Output = Result<ServiceResponse<B>, actix_web::Error>> + use<S, B>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let size: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    let call = if size > max_bytes {
        Err(ApiError::HeadersTooLarge { limit: max_bytes })
    } else {
        Ok(service.call(req))
    };
    async move {
        match call {
            Ok(response) => response.await,
            Err(e) => Err(e.into()),
        }
    }
}
