//! How far a run is: the numbers `walhook run-strategy` draws and
//! `GET /runs/{id}` returns, computed in one place so the terminal and the
//! console agree.
//!
//! A run's work is the rows it reads. A row is *done* once its record was
//! delivered or dead-lettered, or the filter skipped it: rows read minus the
//! records still queued or in flight. Progress is done rows of the estimate
//! (`counts.estimate`, see [`super::TableReader::estimate`]), which is only an
//! estimate: a run may read more rows than it (never a fraction above 1) or
//! fewer (a run that succeeded is complete whatever the estimate said).

use std::time::Duration;

use serde_json::{json, Value};

use super::plan::Counts;

/// Where a run stands, derived from its counts and its age.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Progress {
    pub(crate) id: i64,
    pub(crate) counts: Counts,
    /// Rows read whose records are no longer queued or in flight.
    pub(crate) done: u64,
    /// Since the run started (until it ended, for an ended run).
    pub(crate) elapsed: Duration,
    /// `None` while running, else how it ended (`succeeded`, `failed`, …).
    pub(crate) ended: Option<&'static str>,
}

impl Progress {
    /// A run that is still going on (`ended = None`) or has ended.
    pub(crate) fn new(
        id: i64,
        counts: Counts,
        elapsed: Duration,
        ended: Option<&'static str>,
    ) -> Self {
        let pending = counts.sent.saturating_sub(
            counts
                .delivered
                .saturating_add(counts.failed)
                .saturating_add(counts.parked),
        );
        Progress {
            id,
            counts,
            done: counts.read.saturating_sub(pending),
            elapsed,
            ended,
        }
    }

    /// Done rows per second since the start; `None` before a second has
    /// any meaning (nothing done yet).
    pub(crate) fn rate(&self) -> Option<f64> {
        let secs = self.elapsed.as_secs_f64();
        (self.done > 0 && secs > 0.0).then(|| self.done as f64 / secs)
    }

    /// Done rows of the estimate, 0 to 100; `None` without an estimate. A
    /// run that succeeded is at 100.
    pub(crate) fn percent(&self) -> Option<f64> {
        if self.ended == Some("succeeded") {
            return Some(100.0);
        }
        let estimate = self.counts.estimate?;
        if estimate == 0 || self.done >= estimate {
            return Some(100.0);
        }
        Some((self.done as f64 * 100.0 / estimate as f64).min(100.0))
    }

    /// Time left at the rate so far; `None` when ended, without an
    /// estimate, or before the first row is done.
    pub(crate) fn eta(&self) -> Option<Duration> {
        if self.ended.is_some() {
            return None;
        }
        let left = self.counts.estimate?.saturating_sub(self.done);
        let rate = self.rate()?;
        Some(Duration::from_secs_f64(left as f64 / rate))
    }

    /// The `progress` object of `GET /runs/{id}`.
    pub(crate) fn to_json(self) -> Value {
        json!({
            "done": self.done,
            "percent": self.percent().map(|p| (p * 10.0).round() / 10.0),
            "rows_per_second": self.rate().map(|r| r.round()),
            "eta_seconds": self.eta().map(|d| d.as_secs()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(read: u64, sent: u64, delivered: u64, estimate: Option<u64>) -> Counts {
        Counts {
            read,
            sent,
            delivered,
            estimate,
            ..Counts::default()
        }
    }

    #[test]
    fn rows_in_flight_are_not_done_and_skipped_rows_are() {
        // 1000 read, 600 passed the filter, 500 of them delivered.
        let p = Progress::new(
            1,
            counts(1000, 600, 500, Some(4000)),
            Duration::from_secs(2),
            None,
        );
        assert_eq!(p.done, 900);
        assert_eq!(p.percent(), Some(22.5));
        assert_eq!(p.rate(), Some(450.0));
        assert_eq!(p.eta(), Some(Duration::from_secs_f64(3100.0 / 450.0)));
        assert_eq!(
            p.to_json(),
            json!({"done": 900, "percent": 22.5, "rows_per_second": 450.0, "eta_seconds": 6})
        );
    }

    #[test]
    fn an_estimate_exceeded_or_missing_never_breaks_the_numbers() {
        let over = Progress::new(1, counts(30, 30, 30, Some(20)), Duration::ZERO, None);
        assert_eq!(over.percent(), Some(100.0));
        assert_eq!(over.rate(), None, "no time has passed");
        assert_eq!(over.eta(), None);
        let none = Progress::new(1, counts(30, 30, 30, None), Duration::from_secs(1), None);
        assert_eq!(none.percent(), None);
        assert_eq!(none.eta(), None);
        assert_eq!(none.rate(), Some(30.0));
        let empty = Progress::new(1, counts(0, 0, 0, Some(0)), Duration::from_secs(1), None);
        assert_eq!(empty.percent(), Some(100.0));
        assert_eq!(empty.eta(), None);
    }

    #[test]
    fn an_ended_run_has_no_eta_and_success_is_complete() {
        // Row-level security hid rows the estimate counted.
        let ok = Progress::new(
            1,
            counts(50, 50, 50, Some(200)),
            Duration::from_secs(1),
            Some("succeeded"),
        );
        assert_eq!(ok.percent(), Some(100.0));
        assert_eq!(ok.eta(), None);
        let cancelled = Progress::new(
            1,
            counts(50, 50, 50, Some(200)),
            Duration::from_secs(1),
            Some("cancelled"),
        );
        assert_eq!(cancelled.percent(), Some(25.0));
    }
}
