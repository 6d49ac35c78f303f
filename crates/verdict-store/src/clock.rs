//! The service clock. Every domain time (presence, deadlines, the sweeper,
//! outbox due times) comes from here, never from the system directly, so
//! tests and the manual test clock control time without sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use verdict_core::UnixMillis;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> UnixMillis;

    /// The manual clock, when this is one (the test-clock route needs it).
    fn as_manual(&self) -> Option<&ManualClock> {
        None
    }
}

/// Real time.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixMillis {
        UnixMillis(system_now_millis())
    }
}

/// Milliseconds since the epoch by the system clock.
pub fn system_now_millis() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

/// A clock that moves only when told to, like Stripe's test clocks.
///
/// An atomic rather than a mutex: reads are on every request, and the only
/// write is an addition.
#[derive(Debug)]
pub struct ManualClock {
    millis: AtomicI64,
}

impl ManualClock {
    pub fn starting_at(at: UnixMillis) -> ManualClock {
        ManualClock { millis: AtomicI64::new(at.0) }
    }

    /// Moves the clock forward and returns the new time.
    pub fn advance_millis(&self, millis: i64) -> UnixMillis {
        assert!(millis >= 0, "a clock never goes back");
        UnixMillis(self.millis.fetch_add(millis, Ordering::SeqCst) + millis)
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixMillis {
        UnixMillis(self.millis.load(Ordering::SeqCst))
    }

    fn as_manual(&self) -> Option<&ManualClock> {
        Some(self)
    }
}
