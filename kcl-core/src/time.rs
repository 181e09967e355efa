//! One clock for the whole crate: tokio's, so tests can pause and advance it.
//!
//! Wall-clock values (record arrival times, `AT_TIMESTAMP` positions) are derived from tokio's
//! monotonic clock through a fixed anchor taken once per process, so that advancing a paused tokio
//! clock also advances "wall-clock" time consistently for the model and the worker (the age of a
//! record, `WorkerBuilder::max_record_age`, is measured on it).

use std::sync::OnceLock;
use std::time::SystemTime;

use tokio::time::Instant;

static ANCHOR: OnceLock<(SystemTime, std::time::Instant)> = OnceLock::new();

fn anchor() -> (SystemTime, std::time::Instant) {
    *ANCHOR.get_or_init(|| (SystemTime::now(), std::time::Instant::now()))
}

/// Converts a tokio instant to wall-clock time.
pub(crate) fn to_system(at: Instant) -> SystemTime {
    let (sys, base) = anchor();
    let at = at.into_std();
    match at.checked_duration_since(base) {
        Some(after) => sys + after,
        None => sys - base.duration_since(at),
    }
}

/// The current wall-clock time, as seen through tokio's clock.
pub(crate) fn system_now() -> SystemTime {
    to_system(Instant::now())
}

/// Milliseconds between two instants, saturating at zero.
#[cfg(any(test, feature = "model"))]
pub(crate) fn millis_between(earlier: Instant, later: Instant) -> u64 {
    u64::try_from(later.saturating_duration_since(earlier).as_millis()).unwrap_or(u64::MAX)
}
