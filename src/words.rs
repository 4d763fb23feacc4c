//! How counts and durations read in what walhook prints: "1 batch", "2
//! batches", "42 ms", "3.4 s". One place, so no message says "1 batches"
//! or rounds a 42 ms run down to "0.0s".

use std::time::Duration;

/// `n` and the noun in the right number: `count(1, "batch", "batches")`.
pub(crate) fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A duration for people: milliseconds under a second, then seconds with
/// one decimal under a minute, then minutes and seconds.
pub(crate) fn elapsed(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        let s = d.as_secs();
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_durations_read_right() {
        assert_eq!(count(1, "batch", "batches"), "1 batch");
        assert_eq!(count(0, "batch", "batches"), "0 batches");
        assert_eq!(count(2, "batch", "batches"), "2 batches");
        assert_eq!(elapsed(Duration::from_millis(42)), "42 ms");
        assert_eq!(elapsed(Duration::from_millis(3420)), "3.4 s");
        assert_eq!(elapsed(Duration::from_secs(125)), "2m05s");
    }
}
