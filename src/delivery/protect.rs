//! Endpoint protection, shared by every strategy sending to one endpoint:
//! a circuit breaker and a rate limit (DESIGN.md "Delivery rules").
//!
//! - Circuit breaker: after `circuit_breaker.failures` failed attempts in a
//!   row (the failures worth retrying: timeouts, refused connections, 408,
//!   425, 429, 5xx), the circuit opens and `walhook_endpoint_up` drops to 0.
//!   While open, one request at a time may reach the endpoint (a probe);
//!   every other attempt fails at once without a request and backs off as
//!   after a failure. The first probe that succeeds closes the circuit and
//!   wakes the batches waiting out a backoff, so they go at once.
//!   Why fail fast instead of queueing behind the probe: sixteen batches in
//!   flight would otherwise probe back to back, which is the load the
//!   breaker exists to take off a struggling endpoint.
//! - Rate limit: requests are spaced `1 / rate_limit` seconds apart (a
//!   burst of requests waits its turn, none is refused), across strategies.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use metrics::Gauge;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::EndpointConfig;
use crate::telemetry::names;

/// What [`Guard::admit`] allows.
#[derive(Debug)]
pub(crate) enum Admission {
    /// Send (the circuit is closed).
    Send,
    /// Send as the one probe of an open circuit (held until the outcome is known).
    Probe { _permit: OwnedSemaphorePermit },
    /// The circuit is open and a probe is out: do not send.
    Refused,
}

/// An endpoint's circuit breaker and rate limit.
pub(crate) struct Guard {
    endpoint: String,
    threshold: u32,
    failures: AtomicU32,
    probe: std::sync::Arc<Semaphore>,
    up: Gauge,
    /// Counts the times the circuit closed (backoff waits end on a change).
    closed: watch::Sender<u64>,
    /// When the next request may start (rate limit), and the spacing.
    limit: Option<(Mutex<Instant>, Duration)>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("endpoint", &self.endpoint)
            .field("threshold", &self.threshold)
            .field("failures", &self.failures.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Guard {
    pub(crate) fn new(endpoint: &str, cfg: &EndpointConfig) -> Guard {
        let up = metrics::gauge!(names::ENDPOINT_UP, "endpoint" => endpoint.to_string());
        up.set(1.0);
        Guard {
            endpoint: endpoint.to_string(),
            threshold: cfg.circuit_breaker.failures,
            failures: AtomicU32::new(0),
            probe: std::sync::Arc::new(Semaphore::new(1)),
            up,
            closed: watch::channel(0).0,
            limit: cfg
                .rate_limit
                .filter(|r| r.is_finite() && *r > 0.0)
                .map(|rate| {
                    (
                        Mutex::new(Instant::now()),
                        Duration::from_secs_f64(1.0 / rate),
                    )
                }),
        }
    }

    /// True while the circuit is open.
    pub(crate) fn is_open(&self) -> bool {
        self.threshold > 0 && self.failures.load(Ordering::Acquire) >= self.threshold
    }

    /// Changes each time the circuit closes.
    pub(crate) fn closed(&self) -> watch::Receiver<u64> {
        self.closed.subscribe()
    }

    /// May an attempt send now? Then waits for its rate-limit turn.
    pub(crate) async fn admit(&self) -> Admission {
        let admission = if self.is_open() {
            match self.probe.clone().try_acquire_owned() {
                Ok(permit) => Admission::Probe { _permit: permit },
                Err(_) => return Admission::Refused,
            }
        } else {
            Admission::Send
        };
        if let Some((next, spacing)) = &self.limit {
            let at = {
                let mut next = next.lock().unwrap_or_else(|e| e.into_inner());
                let at = (*next).max(Instant::now());
                *next = at + *spacing;
                at
            };
            tokio::time::sleep_until(at).await;
        }
        admission
    }

    /// The outcome of an admitted attempt: `Some(true)` succeeded,
    /// `Some(false)` failed in a way that counts against the endpoint,
    /// `None` neither (a 4xx: the endpoint answered).
    pub(crate) fn record(&self, admission: Admission, outcome: Option<bool>) {
        match outcome {
            Some(true) => {
                let was_open = self.is_open();
                self.failures.store(0, Ordering::Release);
                if was_open {
                    tracing::info!(endpoint = %self.endpoint, "endpoint answered again; circuit closed");
                    self.up.set(1.0);
                    self.closed.send_modify(|n| *n = n.wrapping_add(1));
                }
            }
            Some(false) => {
                let failures = self
                    .failures
                    .fetch_add(1, Ordering::AcqRel)
                    .saturating_add(1);
                if self.threshold > 0 && failures == self.threshold {
                    tracing::warn!(
                        endpoint = %self.endpoint,
                        failures,
                        "endpoint failed too often in a row; circuit open: one probe request at a time"
                    );
                    self.up.set(0.0);
                }
            }
            // A 4xx is an answer: the endpoint is up, but nothing is proven
            // about the requests it rejects, so the count stays.
            None => {}
        }
        drop(admission);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(failures: u32, rate: Option<f64>) -> Guard {
        let mut cfg: EndpointConfig = toml::from_str("url = \"http://127.0.0.1:9/\"").unwrap();
        cfg.circuit_breaker.failures = failures;
        cfg.rate_limit = rate;
        Guard::new("test", &cfg)
    }

    #[tokio::test]
    async fn opens_after_n_failures_lets_one_probe_through_and_closes_on_success() {
        let g = guard(3, None);
        for _ in 0..3 {
            let a = g.admit().await;
            assert!(matches!(a, Admission::Send));
            g.record(a, Some(false));
        }
        assert!(g.is_open());
        let probe = g.admit().await;
        assert!(matches!(probe, Admission::Probe { .. }));
        assert!(
            matches!(g.admit().await, Admission::Refused),
            "one probe at a time"
        );
        g.record(probe, Some(false));
        let probe = g.admit().await;
        assert!(
            matches!(probe, Admission::Probe { .. }),
            "the next probe after a failed one"
        );
        let closed = g.closed();
        g.record(probe, Some(true));
        assert!(!g.is_open());
        assert!(closed.has_changed().unwrap(), "waiting batches are woken");
        assert!(matches!(g.admit().await, Admission::Send));
    }

    #[tokio::test]
    async fn a_4xx_neither_opens_nor_closes() {
        let g = guard(2, None);
        let a = g.admit().await;
        g.record(a, Some(false));
        let a = g.admit().await;
        g.record(a, None);
        let a = g.admit().await;
        g.record(a, Some(false));
        assert!(g.is_open());
    }

    #[tokio::test]
    async fn zero_failures_never_opens() {
        let g = guard(0, None);
        for _ in 0..100 {
            let a = g.admit().await;
            g.record(a, Some(false));
        }
        assert!(!g.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_limit_spaces_requests() {
        let g = guard(0, Some(5.0));
        let start = Instant::now();
        for _ in 0..11 {
            let a = g.admit().await;
            g.record(a, Some(true));
        }
        // The first goes at once, then one every 200 ms.
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }
}
