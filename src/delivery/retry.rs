//! Retry policy: exponential backoff with full jitter, honouring
//! `Retry-After`. Pure functions; the sender waits with tokio timers.
//!
//! Full jitter (a uniform delay in `[0, min(max, initial * 2^n)]`) spreads
//! the retries of many strategies hitting one recovering endpoint, instead of
//! having them return in lockstep.

use std::time::{Duration, SystemTime};

use rand::Rng;

use crate::config::{OnExhausted, Retry};

/// The ceiling of the delay after failed attempt number `failures` (1-based):
/// `min(max, initial * 2^(failures-1))`.
fn ceiling(retry: &Retry, failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(31);
    let factor = 1u32 << exp;
    retry
        .initial
        .checked_mul(factor)
        .unwrap_or(retry.max)
        .min(retry.max)
}

/// The delay before the next attempt after `failures` failed ones: uniform
/// in `[0, ceiling]`, and at least `retry_after` when the endpoint sent one.
pub(crate) fn delay(
    retry: &Retry,
    failures: u32,
    retry_after: Option<Duration>,
    rng: &mut impl Rng,
) -> Duration {
    let cap = ceiling(retry, failures);
    let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
    let jitter = Duration::from_nanos(rng.random_range(0..=nanos));
    match retry_after {
        Some(after) => jitter.max(after),
        None => jitter,
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
        }
    }

    #[test]
    fn ceiling_doubles_up_to_max() {
        let r = policy(0, OnExhausted::Block);
        let c: Vec<u128> = (1..=6).map(|n| ceiling(&r, n).as_millis()).collect();
        assert_eq!(c, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(ceiling(&r, u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn full_jitter_spans_the_ceiling_and_grows() {
        let r = policy(0, OnExhausted::Block);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mean = |n: u32, rng: &mut rand::rngs::StdRng| {
            let total: Duration = (0..2000).map(|_| delay(&r, n, None, rng)).sum();
            total / 2000
        };
        for n in 1..=4 {
            for _ in 0..500 {
                assert!(delay(&r, n, None, &mut rng) <= ceiling(&r, n));
            }
        }
        let (m1, m4) = (mean(1, &mut rng), mean(4, &mut rng));
        assert!(
            m1 > Duration::from_millis(40) && m1 < Duration::from_millis(60),
            "{m1:?}"
        );
        assert!(
            m4 > Duration::from_millis(350) && m4 < Duration::from_millis(450),
            "{m4:?}"
        );
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
