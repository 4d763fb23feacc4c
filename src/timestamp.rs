//! Points in time as walhook reads and writes them: Postgres's epoch, and
//! the one RFC 3339 formatter (the payload's `commit_time`, `/status`, and
//! `now()` in batch templates all print through it).
//!
//! Times travel as µs since the Unix epoch (`i64`). The formatter runs
//! once per record on the hot path, so it appends to the payload buffer
//! without allocating: the digits directly for years 1–9999, else through
//! a static list of chrono format items (chrono's `to_rfc3339_opts` and
//! `Display` allocate a `String` per call).

use chrono::format::{Fixed, Item, Numeric, Pad};

/// Microseconds between the Unix epoch and Postgres's epoch (2000-01-01 UTC).
pub(crate) const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// Converts a Postgres timestamp (µs since 2000-01-01) to µs since the Unix epoch.
pub(crate) fn pg_to_unix_micros(pg: i64) -> i64 {
    pg.saturating_add(PG_EPOCH_OFFSET_MICROS)
}

/// Now, in µs since the Unix epoch.
pub(crate) fn unix_now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Now, in µs since Postgres's epoch (for standby status messages).
pub(crate) fn pg_now_micros() -> i64 {
    unix_now_micros() - PG_EPOCH_OFFSET_MICROS
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
const RFC3339_MICROS: &[Item<'static>] = &[
    Item::Numeric(Numeric::Year, Pad::Zero),
    Item::Literal("-"),
    Item::Numeric(Numeric::Month, Pad::Zero),
    Item::Literal("-"),
    Item::Numeric(Numeric::Day, Pad::Zero),
    Item::Literal("T"),
    Item::Numeric(Numeric::Hour, Pad::Zero),
    Item::Literal(":"),
    Item::Numeric(Numeric::Minute, Pad::Zero),
    Item::Literal(":"),
    Item::Numeric(Numeric::Second, Pad::Zero),
    Item::Fixed(Fixed::Nanosecond6),
    Item::Literal("Z"),
];

/// Appends µs since the Unix epoch as RFC 3339 UTC with six fraction digits
/// (`2026-11-22T07:04:00.123456Z`). A time beyond chrono's range (±262,000
/// years, only from a broken clock) is written as the Unix epoch.
pub(crate) fn write_rfc3339(unix_micros: i64, out: &mut Vec<u8>) {
    if (MIN_FAST..=MAX_FAST).contains(&unix_micros) {
        return write_rfc3339_fast(unix_micros, out);
    }
    write_rfc3339_chrono(unix_micros, out);
}

/// 0001-01-01T00:00:00Z and the last µs of 9999: four-digit years, where
/// the digits are written directly (chrono's formatting machinery costs
/// more than the rest of a small record's envelope).
const MIN_FAST: i64 = -62_135_596_800_000_000;
const MAX_FAST: i64 = 253_402_300_799_999_999;

/// [`write_rfc3339`] for a time in `MIN_FAST..=MAX_FAST`: the civil date
/// from days since the epoch (Howard Hinnant's `civil_from_days`).
fn write_rfc3339_fast(unix_micros: i64, out: &mut Vec<u8>) {
    const DAY: i64 = 86_400_000_000;
    let days = unix_micros.div_euclid(DAY);
    let micros = unix_micros.rem_euclid(DAY);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let secs = micros / 1_000_000;
    let digit = |n: i64, place: i64| b'0' + ((n / place) % 10) as u8;
    let two = |n: i64| [digit(n, 10), digit(n, 1)];
    let [y1, y2] = two(year / 100);
    let [y3, y4] = two(year);
    let [mo1, mo2] = two(month);
    let [d1, d2] = two(day);
    let [h1, h2] = two(secs / 3600);
    let [mi1, mi2] = two(secs / 60 % 60);
    let [s1, s2] = two(secs % 60);
    let f = micros % 1_000_000;
    out.extend_from_slice(&[
        y1,
        y2,
        y3,
        y4,
        b'-',
        mo1,
        mo2,
        b'-',
        d1,
        d2,
        b'T',
        h1,
        h2,
        b':',
        mi1,
        mi2,
        b':',
        s1,
        s2,
        b'.',
        digit(f, 100_000),
        digit(f, 10_000),
        digit(f, 1000),
        digit(f, 100),
        digit(f, 10),
        digit(f, 1),
        b'Z',
    ]);
}

/// [`write_rfc3339`] through chrono: any year it can represent.
fn write_rfc3339_chrono(unix_micros: i64, out: &mut Vec<u8>) {
    let time = chrono::DateTime::from_timestamp_micros(unix_micros).unwrap_or_default();
    // Writing to a Vec cannot fail.
    let _ = time
        .naive_utc()
        .format_with_items(RFC3339_MICROS.iter())
        .write_to(&mut Utf8Vec(out));
}

/// [`write_rfc3339`] into a new `String`.
pub(crate) fn format_rfc3339(unix_micros: i64) -> String {
    let mut out = Vec::with_capacity(27);
    write_rfc3339(unix_micros, &mut out);
    // Only `str`s are written into it.
    String::from_utf8(out).unwrap_or_default()
}

/// A byte buffer that chrono writes `str`s into.
struct Utf8Vec<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Utf8Vec<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339_utc_with_microseconds() {
        assert_eq!(
            format_rfc3339(1_795_331_040_123_456),
            "2026-11-22T07:04:00.123456Z"
        );
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(format_rfc3339(-1), "1969-12-31T23:59:59.999999Z");
        // A leap day, and the last µs of year 9999.
        assert_eq!(
            format_rfc3339(951_782_400_000_000),
            "2000-02-29T00:00:00.000000Z"
        );
        assert_eq!(
            format_rfc3339(253_402_300_799_999_999),
            "9999-12-31T23:59:59.999999Z"
        );
        let mut out = b"x".to_vec();
        write_rfc3339(PG_EPOCH_OFFSET_MICROS + 1_000_000, &mut out);
        assert_eq!(out, b"x2000-01-01T00:00:01.000000Z");
    }

    proptest::proptest! {
        /// The direct digits are chrono's, for every µs of years 1–9999
        /// and around the edges of that range.
        #[test]
        fn the_fast_path_writes_what_chrono_writes(
            us in proptest::prop_oneof![
                MIN_FAST..=MAX_FAST,
                (MIN_FAST - 1_000_000)..(MIN_FAST + 1_000_000),
                (MAX_FAST - 1_000_000)..(MAX_FAST + 1_000_000),
                -100_000_000_000i64..100_000_000_000,
            ]
        ) {
            let mut fast = Vec::new();
            write_rfc3339(us, &mut fast);
            let mut slow = Vec::new();
            write_rfc3339_chrono(us, &mut slow);
            proptest::prop_assert_eq!(String::from_utf8(fast).unwrap(), String::from_utf8(slow).unwrap());
        }
    }

    #[test]
    fn matches_chronos_rfc3339_across_the_calendar() {
        // One instant every ~37 days and 1 µs over four centuries (leap
        // years, the 1900 and 2100 non-leap centuries, before 1970).
        let step = 37 * 86_400_000_000 + 3_600_000_001;
        let mut us = -2_208_988_800_000_000; // 1900-01-01
        while us < 10_413_792_000_000_000 {
            // 2300-01-01
            let expected = chrono::DateTime::from_timestamp_micros(us)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            assert_eq!(format_rfc3339(us), expected, "{us}");
            us += step;
        }
        // Extreme garbage still formats, without a panic.
        for us in [i64::MIN, i64::MAX] {
            assert_eq!(format_rfc3339(us), "1970-01-01T00:00:00.000000Z");
        }
    }

    #[test]
    fn postgres_epoch() {
        assert_eq!(pg_to_unix_micros(0), PG_EPOCH_OFFSET_MICROS);
        assert_eq!(
            format_rfc3339(pg_to_unix_micros(0)),
            "2000-01-01T00:00:00.000000Z"
        );
        assert_eq!(pg_to_unix_micros(i64::MAX), i64::MAX);
        assert!(pg_now_micros() > 0);
    }
}
