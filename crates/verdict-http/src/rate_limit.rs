//! Per-caller rate limits on write routes (docs/limits.md): a GCRA limiter
//! (governor) keyed by the bearer token's role and subject. `service` and
//! `admin` are exempt; a request without a valid token is not limited here
//! (its handler answers 401). The table of callers lives in this process
//! only: N processes behind a load balancer allow N times the rate.
//!
//! Time is the service clock (system, or the manual test clock), like every
//! other time of verdict, so tests move it instead of sleeping.

use std::num::NonZeroU32;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use governor::Quota;
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use verdict_core::Role;
use verdict_store::clock::Clock;

use crate::auth::{JwtKeys, bearer_token};
use crate::problem::problem_response;

/// The rate and burst allowed to one caller on write routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Writes a second, sustained (`rate_limit_per_second`).
    pub per_second: NonZeroU32,
    /// Writes at once after a quiet spell (`rate_limit_burst`).
    pub burst: NonZeroU32,
}

impl Default for RateLimit {
    fn default() -> RateLimit {
        RateLimit { per_second: NonZeroU32::new(20).unwrap(), burst: NonZeroU32::new(40).unwrap() }
    }
}

/// How often the table of callers drops those whose state is back to
/// fresh (an idle caller), so memory stays flat whatever the number of
/// distinct callers over time.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// The service clock as governor reads time: since the epoch.
#[derive(Clone)]
struct ServiceClock(Arc<dyn Clock>);

impl governor::clock::Clock for ServiceClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.0.now().0).unwrap_or(0))
    }
}

/// The callers' limiter: one GCRA state per `role:subject`.
pub struct CallerLimits {
    limiter: governor::RateLimiter<
        String,
        DashMapStateStore<String>,
        ServiceClock,
        NoOpMiddleware<Duration>,
    >,
    clock: ServiceClock,
}

impl CallerLimits {
    pub fn new(limit: RateLimit, clock: Arc<dyn Clock>) -> CallerLimits {
        let quota = Quota::per_second(limit.per_second).allow_burst(limit.burst);
        let clock = ServiceClock(clock);
        CallerLimits {
            limiter: governor::RateLimiter::dashmap_with_clock(quota, clock.clone()),
            clock,
        }
    }

    /// Counts one write of `caller`; `Err` with how long until it would be
    /// allowed when it is over its rate.
    pub fn check(&self, caller: &str) -> Result<(), Duration> {
        self.limiter.check_key(&caller.to_owned()).map_err(|not_until| {
            use governor::clock::Clock as _;
            not_until.wait_time_from(self.clock.now())
        })
    }

    /// Drops the callers whose state is indistinguishable from a fresh one.
    pub fn prune(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Callers in the table.
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }
}

/// What the middleware needs: the limiter and the keys to read tokens.
#[derive(Clone)]
pub(crate) struct Limiting {
    pub(crate) limits: Arc<CallerLimits>,
    pub(crate) jwt: Arc<JwtKeys>,
}

impl Limiting {
    /// The limiter, pruned every [`PRUNE_EVERY`] for as long as it is in use
    /// (the pruning task ends when the router is dropped).
    pub(crate) fn new(limit: RateLimit, clock: Arc<dyn Clock>, jwt: Arc<JwtKeys>) -> Limiting {
        let limits = Arc::new(CallerLimits::new(limit, clock));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(prune_until_dropped(Arc::downgrade(&limits)));
        }
        Limiting { limits, jwt }
    }
}

async fn prune_until_dropped(limits: Weak<CallerLimits>) {
    let mut every = tokio::time::interval(PRUNE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        let Some(limits) = limits.upgrade() else { return };
        limits.prune();
    }
}

/// Limits writes (POST, PUT, PATCH, DELETE) per caller: 429 problem+json
/// with `Retry-After` (whole seconds, at least 1) over the rate.
pub(crate) async fn limit_writes(
    State(limiting): State<Limiting>,
    request: Request,
    next: Next,
) -> Response {
    let writes =
        matches!(*request.method(), Method::POST | Method::PUT | Method::PATCH | Method::DELETE);
    if !writes {
        return next.run(request).await;
    }
    let caller = match bearer_token(request.headers()) {
        Some(Ok(token)) => limiting.jwt.verify(token).ok(),
        _ => None,
    };
    let Some(caller) = caller else { return next.run(request).await };
    // The handler's `Caller` is this one: the token is verified once.
    let mut request = request;
    crate::access::record_role(caller.role);
    request.extensions_mut().insert(caller.clone());
    if matches!(caller.role, Role::Service | Role::Admin) {
        return next.run(request).await;
    }
    match limiting.limits.check(&format!("{}:{}", caller.role, caller.id)) {
        Ok(()) => next.run(request).await,
        Err(wait) => {
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            let seconds = seconds.max(1);
            crate::metrics::record_rate_limited();
            let mut response = problem_response(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too Many Requests",
                format!(
                    "{} {} is over its rate of writes (rate_limit_per_second, \
                     rate_limit_burst); retry in {seconds} s",
                    caller.role, caller.id
                ),
            );
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use verdict_core::UnixMillis;
    use verdict_store::clock::ManualClock;

    #[test]
    fn a_caller_over_its_burst_waits_and_idle_callers_are_pruned() {
        let clock = Arc::new(ManualClock::starting_at(UnixMillis(1_000_000)));
        let limit = RateLimit {
            per_second: NonZeroU32::new(2).unwrap(),
            burst: NonZeroU32::new(3).unwrap(),
        };
        let limits = CallerLimits::new(limit, clock.clone());
        for _ in 0..3 {
            limits.check("customer:a").expect("within the burst");
        }
        let wait = limits.check("customer:a").expect_err("over the burst");
        assert_eq!(wait, Duration::from_millis(500));
        limits.check("customer:b").expect("callers are apart");
        for n in 0..1_000 {
            limits.check(&format!("customer:{n}")).expect("a first write");
        }
        assert_eq!(limits.len(), 1_002);
        clock.advance_millis(500);
        limits.check("customer:a").expect("one more after half a second");
        // Once every caller is back to a fresh state, the table is empty.
        clock.advance_millis(2_000);
        limits.prune();
        assert!(limits.is_empty(), "{} callers kept", limits.len());
    }
}
