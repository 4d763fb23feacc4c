//! Log lines that stay readable under load.
//!
//! A filter on a nullable column meets NULL on many rows, and each such row
//! is, by design, not matched (SQL's `WHERE`). Logging every one of them
//! was 10,000 lines a second while a backlog drained; the metric
//! `walhook_filter_nulls_total` counts them exactly, and the log gets one
//! summary per strategy at most once a minute. Real evaluation failures
//! keep their warning, at most one per strategy every ten seconds, each
//! saying how many were not logged since the last one.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often NULL outcomes are summarised, per strategy.
pub(crate) const NULL_SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// How often an evaluation failure is logged, per strategy.
pub(crate) const FAILURE_WARN_EVERY: Duration = Duration::from_secs(10);

/// At most one log line per period, with the count of occurrences it covers.
#[derive(Debug)]
pub(crate) struct Throttle {
    every: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// When the last line was logged.
    last: Option<Instant>,
    /// Occurrences since then, not logged yet.
    pending: u64,
}

impl Throttle {
    pub(crate) fn new(every: Duration) -> Throttle {
        Throttle {
            every,
            state: Mutex::new(State::default()),
        }
    }

    /// One occurrence at `now`: `Some(n)` when a line is due, covering `n`
    /// occurrences (this one included); the first occurrence is logged at once.
    pub(crate) fn hit(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.pending += 1;
        let due = state
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= self.every);
        if !due {
            return None;
        }
        state.last = Some(now);
        Some(std::mem::take(&mut state.pending))
    }

    /// The occurrences not logged yet (for a last summary), forgetting them.
    pub(crate) fn take_pending(&self) -> u64 {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut state.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_occurrence_is_logged_then_one_line_per_period_with_its_count() {
        let t = Throttle::new(Duration::from_secs(60));
        let start = Instant::now();
        assert_eq!(t.hit(start), Some(1));
        for s in 1..60 {
            assert_eq!(t.hit(start + Duration::from_secs(s)), None);
        }
        assert_eq!(t.hit(start + Duration::from_secs(60)), Some(60));
        assert_eq!(t.hit(start + Duration::from_secs(61)), None);
        assert_eq!(t.take_pending(), 1);
        assert_eq!(t.take_pending(), 0);
    }
}
