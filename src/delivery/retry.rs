//! Retry policy: what an answer decides, and how long to wait before the
//! next attempt. Pure functions; the worker waits with tokio timers.
//!
//! What an answer decides ([`decide`]): a 2xx is delivered; 408, 425, 429,
//! any 5xx (or other non-4xx status), a timeout and a connection error are
//! retried; 410 Gone pauses the endpoint's strategies (the Standard
//! Webhooks meaning: stop sending here); any other 4xx follows the
//! endpoint's `on_client_error`.
//!
//! The wait after failed attempt n ([`delay`]) is random between
//! `initial * 2^(n-1)` and twice that, both capped at `max`, and at least
//! what a `Retry-After` asks. So `initial` is the shortest first wait, as
//! the README defines it, and the jitter still spreads the retries of many
//! batches hitting one recovering endpoint instead of having them return in
//! lockstep.

use std::time::{Duration, SystemTime};

use rand::Rng;

use crate::config::{OnClientError, OnExhausted, Retry};

/// The shortest wait after failed attempt number `failures` (1-based):
/// `min(max, initial * 2^(failures-1))`.
fn floor(retry: &Retry, failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(31);
    let factor = 1u32 << exp;
    retry
        .initial
        .checked_mul(factor)
        .unwrap_or(retry.max)
        .min(retry.max)
}

/// The wait before the next attempt after `failures` failed ones: uniform
/// in `[floor, min(max, 2 * floor)]`, and at least `retry_after` when the
/// endpoint sent one.
pub(crate) fn delay(
    retry: &Retry,
    failures: u32,
    retry_after: Option<Duration>,
    rng: &mut impl Rng,
) -> Duration {
    let low = floor(retry, failures);
    let high = low.saturating_mul(2).min(retry.max).max(low);
    let span = u64::try_from((high - low).as_nanos()).unwrap_or(u64::MAX);
    let wait = low + Duration::from_nanos(rng.random_range(0..=span));
    match retry_after {
        Some(after) => wait.max(after),
        None => wait,
    }
}

/// What one attempt's answer decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// 2xx.
    Delivered,
    /// Try again after a wait (408, 425, 429, 5xx, timeouts, connection
    /// errors, other 4xx under `on_client_error = "retry"`).
    Retry,
    /// 410 Gone: pause every strategy of the endpoint until resumed.
    Pause,
    /// A 4xx under `on_client_error = "dead_letter"`: store it now.
    DeadLetter,
}

impl Decision {
    /// The `decision` label of `walhook_delivery_decisions_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Decision::Delivered => "delivered",
            Decision::Retry => "retry",
            Decision::Pause => "pause",
            Decision::DeadLetter => "dead_letter",
        }
    }
}

/// What an answer with this `status` (`None`: no answer: a timeout, a
/// connection error, a request that could not be built) decides.
pub(crate) fn decide(status: Option<u16>, on_client_error: OnClientError) -> Decision {
    match status {
        Some(200..=299) => Decision::Delivered,
        Some(410) => Decision::Pause,
        Some(408 | 425 | 429) => Decision::Retry,
        Some(400..=499) => match on_client_error {
            OnClientError::Retry => Decision::Retry,
            OnClientError::DeadLetter => Decision::DeadLetter,
        },
        Some(_) | None => Decision::Retry,
    }
}

/// What to do after `attempts` failed attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Try again (after a delay).
    Retry,
    /// Attempts are exhausted, but the policy is to keep trying: the
    /// strategy is blocked (shown in `/status`).
    RetryBlocked,
    /// Store the batch as a dead letter and move on.
    DeadLetter,
}

/// Decides after `attempts` failed attempts.
pub(crate) fn next(retry: &Retry, attempts: u32) -> Next {
    if retry.max_attempts == 0 || attempts < retry.max_attempts {
        return Next::Retry;
    }
    match retry.on_exhausted {
        OnExhausted::Block => Next::RetryBlocked,
        OnExhausted::DeadLetter => Next::DeadLetter,
    }
}

/// Parses a `Retry-After` value: delay seconds or an HTTP-date.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn policy(max_attempts: u32, on_exhausted: OnExhausted) -> Retry {
        Retry {
            max_attempts,
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            on_exhausted,
            park_after: Default::default(),
        }
    }

    #[test]
    fn floor_doubles_up_to_max() {
        let r = policy(0, OnExhausted::Block);
        let c: Vec<u128> = (1..=6).map(|n| floor(&r, n).as_millis()).collect();
        assert_eq!(c, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(floor(&r, u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn each_wait_is_between_its_floor_and_twice_that_capped_at_max() {
        let r = policy(0, OnExhausted::Block);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let bounds = [
            (100, 200),
            (200, 400),
            (400, 800),
            (800, 1000),
            (1000, 1000),
        ];
        for (n, (low, high)) in (1..).zip(bounds) {
            let waits: Vec<Duration> = (0..500).map(|_| delay(&r, n, None, &mut rng)).collect();
            let (min, max) = (waits.iter().min().unwrap(), waits.iter().max().unwrap());
            assert!(*min >= Duration::from_millis(low), "wait {n}: {min:?}");
            assert!(*max <= Duration::from_millis(high), "wait {n}: {max:?}");
            if low < high {
                // Spread over the range, not stuck at one end.
                let span = Duration::from_millis(high - low);
                assert!(*max - *min > span / 2, "wait {n}: {min:?}..{max:?}");
            }
        }
    }

    /// The sequence the delivery loop waits, on tokio's paused clock: the
    /// same `delay` the worker sleeps on, measured as the loop sees it.
    #[tokio::test(start_paused = true)]
    async fn the_waits_between_attempts_start_at_initial_and_double() {
        let r = policy(0, OnExhausted::Block);
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let start = tokio::time::Instant::now();
        let mut attempts = vec![start];
        for failures in 1..=6 {
            tokio::time::sleep(delay(&r, failures, None, &mut rng)).await;
            attempts.push(tokio::time::Instant::now());
        }
        let gaps: Vec<u128> = attempts
            .windows(2)
            .map(|w| (w[1] - w[0]).as_millis())
            .collect();
        eprintln!("waits between attempts (ms): {gaps:?}");
        let bounds = [
            (100, 200),
            (200, 400),
            (400, 800),
            (800, 1000),
            (1000, 1000),
            (1000, 1000),
        ];
        for (gap, (low, high)) in gaps.iter().zip(bounds) {
            assert!((low..=high).contains(gap), "{gaps:?}");
        }
        // With a Retry-After longer than the backoff, that is the wait.
        let before = tokio::time::Instant::now();
        tokio::time::sleep(delay(&r, 1, Some(Duration::from_secs(3)), &mut rng)).await;
        assert_eq!(before.elapsed(), Duration::from_secs(3));
    }

    #[test]
    fn retry_after_is_a_lower_bound() {
        let r = policy(0, OnExhausted::Block);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..100 {
            let d = delay(&r, 1, Some(Duration::from_secs(2)), &mut rng);
            assert_eq!(d, Duration::from_secs(2));
        }
    }

    #[test]
    fn answers_decide_by_status() {
        use Decision::*;
        let retry = OnClientError::Retry;
        let dead = OnClientError::DeadLetter;
        for (status, default, with_dead_letter) in [
            (Some(200), Delivered, Delivered),
            (Some(204), Delivered, Delivered),
            (Some(307), Retry, Retry),
            (Some(400), Retry, DeadLetter),
            (Some(401), Retry, DeadLetter),
            (Some(404), Retry, DeadLetter),
            (Some(408), Retry, Retry),
            (Some(410), Pause, Pause),
            (Some(413), Retry, DeadLetter),
            (Some(425), Retry, Retry),
            (Some(429), Retry, Retry),
            (Some(500), Retry, Retry),
            (Some(503), Retry, Retry),
            (None, Retry, Retry),
        ] {
            assert_eq!(decide(status, retry), default, "{status:?}");
            assert_eq!(decide(status, dead), with_dead_letter, "{status:?}");
        }
    }

    #[test]
    fn retry_after_seconds_and_http_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(parse_retry_after(" 2 ", now), Some(Duration::from_secs(2)));
        // 784111777 = Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:47 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }

    #[test]
    fn exhaustion_follows_the_policy() {
        assert_eq!(next(&policy(0, OnExhausted::DeadLetter), 1000), Next::Retry);
        let b = policy(3, OnExhausted::Block);
        assert_eq!(next(&b, 2), Next::Retry);
        assert_eq!(next(&b, 3), Next::RetryBlocked);
        let d = policy(3, OnExhausted::DeadLetter);
        assert_eq!(next(&d, 3), Next::DeadLetter);
    }
}
