//! What an endpoint's recent attempts looked like, for the console's
//! endpoint table (`GET /endpoints`): up or down, latency, last status.
//! Updated once per attempt (per batch, not per record).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::sender::AttemptResult;

/// Weight of the newest attempt in the average latency.
const EWMA_WEIGHT: f64 = 0.2;

/// A shared view of one endpoint's attempts.
#[derive(Debug, Clone, Default)]
pub struct EndpointStats(Arc<Mutex<EndpointSnapshot>>);

/// One endpoint's attempts so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EndpointSnapshot {
    /// Requests sent.
    pub attempts: u64,
    /// Requests that did not deliver (no answer, or not 2xx).
    pub failures: u64,
    /// Failed requests since the last delivered one.
    pub consecutive_failures: u64,
    /// The status of the last answer; `None` before one, or when the last
    /// request got no answer.
    pub last_status: Option<u16>,
    /// Why the last request failed (no secret, no URL, no body).
    pub last_error: Option<String>,
    /// Time the last request took.
    pub last_latency: Option<Duration>,
    /// Average request time, recent requests weighing most.
    pub avg_latency: Option<Duration>,
    /// When the last request ended.
    pub last_attempt: Option<SystemTime>,
    /// The circuit breaker is open: only probes reach the endpoint.
    pub circuit_open: bool,
}

impl EndpointSnapshot {
    /// Down when the circuit is open or the last request failed; `None`
    /// before any request.
    pub fn up(&self) -> Option<bool> {
        (self.attempts > 0 || self.circuit_open)
            .then_some(!self.circuit_open && self.consecutive_failures == 0)
    }
}

impl EndpointStats {
    /// The current numbers.
    pub fn snapshot(&self) -> EndpointSnapshot {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Counts one attempt; `circuit_open` is the breaker's state after it.
    pub(crate) fn record(&self, result: &AttemptResult, circuit_open: bool) {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        s.circuit_open = circuit_open;
        if !result.sent {
            return;
        }
        s.attempts += 1;
        if result.delivered() {
            s.consecutive_failures = 0;
        } else {
            s.failures += 1;
            s.consecutive_failures += 1;
        }
        s.last_status = result.status;
        s.last_error = result.error.clone();
        s.last_latency = Some(result.elapsed);
        s.avg_latency = Some(match s.avg_latency {
            None => result.elapsed,
            Some(avg) => avg.mul_f64(1.0 - EWMA_WEIGHT) + result.elapsed.mul_f64(EWMA_WEIGHT),
        });
        s.last_attempt = Some(SystemTime::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(status: Option<u16>, ms: u64) -> AttemptResult {
        AttemptResult {
            status,
            retry_after: None,
            error: (!status.is_some_and(|s| (200..300).contains(&s))).then(|| "HTTP 503".into()),
            body: None,
            elapsed: Duration::from_millis(ms),
            sent: true,
            refused: false,
        }
    }

    #[test]
    fn up_down_latency_and_last_status_follow_the_attempts() {
        let stats = EndpointStats::default();
        assert_eq!(stats.snapshot().up(), None, "unknown before a request");
        stats.record(&attempt(Some(200), 100), false);
        let s = stats.snapshot();
        assert_eq!(s.up(), Some(true));
        assert_eq!(s.last_status, Some(200));
        assert_eq!(s.avg_latency, Some(Duration::from_millis(100)));
        stats.record(&attempt(Some(503), 200), false);
        let s = stats.snapshot();
        assert_eq!(s.up(), Some(false));
        assert_eq!((s.attempts, s.failures, s.consecutive_failures), (2, 1, 1));
        assert_eq!(s.last_status, Some(503));
        assert_eq!(s.last_error.as_deref(), Some("HTTP 503"));
        assert_eq!(s.last_latency, Some(Duration::from_millis(200)));
        assert_eq!(s.avg_latency, Some(Duration::from_millis(120)));
        // Refused by the open breaker: no request, but down.
        let refused = AttemptResult {
            sent: false,
            refused: true,
            ..attempt(None, 0)
        };
        stats.record(&refused, true);
        let s = stats.snapshot();
        assert_eq!((s.up(), s.attempts), (Some(false), 2));
        stats.record(&attempt(Some(204), 50), false);
        assert_eq!(stats.snapshot().up(), Some(true));
        assert_eq!(stats.snapshot().consecutive_failures, 0);
    }
}
