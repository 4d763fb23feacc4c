//! Server text → JSON values, written straight into the output buffer (the
//! payload around them is written by `batch/payload.rs`).
//!
//! Values arrive as PostgreSQL's text output (with the session pinned to
//! `DateStyle=ISO`, `IntervalStyle=postgres`, `extra_float_digits=3`,
//! `TimeZone=UTC`). They are converted only when a batch is serialised, and
//! without building a `serde_json::Value` or a `String` per cell: each writer
//! appends bytes to the batch buffer.
//!
//! The rules (DESIGN.md "Payload"):
//! - bool → `true`/`false`; int2/4/8, oid, float4/8 and numeric → the exact
//!   number text (numeric is never rounded through f64); NaN, Infinity and
//!   -Infinity → strings.
//! - json/jsonb → embedded as they are.
//! - bytea (`\x…` hex) → standard base64 string.
//! - timestamptz → RFC 3339 `2026-11-22T07:04:00.123456Z`; timestamp →
//!   `2026-11-22T07:04:00.123456`; the fraction keeps the digits the server
//!   sent. `infinity`, `-infinity` and BC dates stay strings as the server
//!   wrote them; years past 9999 keep all their digits.
//! - arrays → JSON arrays of converted elements, any number of dimensions.
//!   A lower-bound prefix such as `[0:1]={7,8}` is dropped: `[7,8]`.
//! - everything else (text, varchar, uuid, date, time, interval, inet,
//!   enums, unknown types…) → a JSON string of the server text.
//!
//! Whatever the input, the output is valid JSON: text that does not look
//! like its type (which PostgreSQL never sends) falls back to a JSON string,
//! and invalid UTF-8 is replaced, never a panic.

use base64::Engine as _;

use super::model::{Cell, TypeKind};

/// Appends the JSON form of one cell. `Null` (and `Unchanged`, which
/// the payload's row images leave out) write `null`; a binary-mode cell
/// writes its bytes as base64.
pub(crate) fn write_cell_json(kind: &TypeKind, cell: &Cell, out: &mut Vec<u8>) {
    match cell {
        Cell::Null | Cell::Unchanged => out.extend_from_slice(b"null"),
        Cell::Text(text) => write_text_json(kind, text, out),
        Cell::Binary(bytes) => {
            out.push(b'"');
            write_base64(bytes, out);
            out.push(b'"');
        }
    }
}

/// Appends the JSON form of one value in the server's text format.
pub(crate) fn write_text_json(kind: &TypeKind, text: &[u8], out: &mut Vec<u8>) {
    match kind {
        TypeKind::Bool => match text {
            b"t" => out.extend_from_slice(b"true"),
            b"f" => out.extend_from_slice(b"false"),
            _ => write_json_string(text, out),
        },
        // NaN and ±Infinity are not JSON numbers, so they become strings here.
        TypeKind::Int | TypeKind::Float | TypeKind::Numeric => {
            if is_json_number(text) {
                out.extend_from_slice(text);
            } else {
                write_json_string(text, out);
            }
        }
        TypeKind::Json => {
            if serde_json::from_slice::<serde::de::IgnoredAny>(text).is_ok() {
                out.extend_from_slice(text);
            } else {
                write_json_string(text, out);
            }
        }
        TypeKind::Bytea => write_bytea(text, out),
        TypeKind::Timestamp => write_timestamp(text, false, out),
        TypeKind::Timestamptz => write_timestamp(text, true, out),
        TypeKind::Text => write_json_string(text, out),
        TypeKind::Array(element) => write_array(element, text, out),
    }
}

/// Appends `s` as a JSON string, escaping quotes, backslashes and control
/// characters; invalid UTF-8 is replaced with U+FFFD.
///
/// One pass for ASCII text: the scan that finds the bytes to escape also
/// stops at the first byte >= 0x80, and UTF-8 is checked only from there
/// (everything before it is ASCII, so it starts a character).
pub(crate) fn write_json_string(s: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    if !write_escaped(s, out, true) {
        out.truncate(start);
        write_escaped(String::from_utf8_lossy(s).as_bytes(), out, false);
    }
}

/// Escape for each byte < 0x80: 0 = copy, b'u' = `\u00XX`, else `\<byte>`.
static ESCAPE: [u8; 128] = {
    let mut t = [0u8; 128];
    let mut i = 0;
    while i < 0x20 {
        t[i] = b'u';
        i += 1;
    }
    t[0x08] = b'b';
    t[0x09] = b't';
    t[0x0a] = b'n';
    t[0x0c] = b'f';
    t[0x0d] = b'r';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

/// Writes `s` escaped and quoted. With `check_utf8`, false (and `out`
/// holds part of the string) when `s` is not valid UTF-8; `s` is already
/// known to be valid otherwise.
fn write_escaped(s: &[u8], out: &mut Vec<u8>, check_utf8: bool) -> bool {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(s.len() + 2);
    out.push(b'"');
    // Bytes >= 0x80 still stop the scan: none checked yet.
    let mut ascii = check_utf8;
    // `start..i` is the clean run not yet copied: it goes out whole.
    let mut start = 0;
    let mut i = clean_prefix(s, 0, ascii);
    while let Some(&b) = s.get(i) {
        if b >= 0x80 {
            if ascii {
                if std::str::from_utf8(s.get(i..).unwrap_or_default()).is_err() {
                    return false;
                }
                ascii = false;
            }
            i = clean_prefix(s, i + 1, false);
            continue;
        }
        let esc = ESCAPE[usize::from(b)];
        if esc == 0 {
            i = clean_prefix(s, i + 1, ascii);
            continue;
        }
        out.extend_from_slice(&s[start..i]);
        if esc == b'u' {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]);
        } else {
            out.extend_from_slice(&[b'\\', esc]);
        }
        i += 1;
        start = i;
        i = clean_prefix(s, i, ascii);
    }
    out.extend_from_slice(&s[start..]);
    out.push(b'"');
    true
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// Where, from `from`, the first byte that may need escaping is (or, with
/// `high`, the first byte >= 0x80): 16 bytes at a time with SSE2 (every
/// x86-64 has it), then 8 at a time (SWAR), so a long clean run costs a few
/// instructions per word instead of a table lookup per byte. The answer is
/// never past such a byte; [`write_escaped`] checks the byte itself.
fn clean_prefix(s: &[u8], from: usize, high: bool) -> usize {
    let from = clean_prefix_simd(s, from, high);
    clean_prefix_words(s, from, high)
}

#[cfg(target_arch = "x86_64")]
fn clean_prefix_simd(s: &[u8], mut from: usize, high: bool) -> usize {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };
    // SAFETY: SSE2 is part of the x86-64 baseline, so these intrinsics are
    // always available; the one load reads 16 bytes of `chunk`, which has
    // 16 (loadu needs no alignment).
    unsafe {
        let quote = _mm_set1_epi8(b'"' as i8);
        let backslash = _mm_set1_epi8(b'\\' as i8);
        let below_space = _mm_set1_epi8(0x1f);
        while let Some(chunk) = s.get(from..from.saturating_add(16)) {
            let v = _mm_loadu_si128(chunk.as_ptr().cast());
            // Unsigned b <= 0x1f: min(b, 0x1f) == b.
            let control = _mm_cmpeq_epi8(_mm_min_epu8(v, below_space), v);
            let special = _mm_or_si128(
                _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)),
                control,
            );
            // movemask: one bit per byte, its top bit.
            let mut mask = _mm_movemask_epi8(special) as u32;
            if high {
                mask |= _mm_movemask_epi8(v) as u32;
            }
            if mask != 0 {
                return from + mask.trailing_zeros() as usize;
            }
            from += 16;
        }
    }
    from
}

#[cfg(not(target_arch = "x86_64"))]
fn clean_prefix_simd(_: &[u8], from: usize, _: bool) -> usize {
    from
}

fn clean_prefix_words(s: &[u8], mut from: usize, high: bool) -> usize {
    while let Some(word) = s.get(from..from.saturating_add(8)) {
        let Ok(word) = <[u8; 8]>::try_from(word) else {
            break;
        };
        let word = u64::from_le_bytes(word);
        let mut found = needs_escape(word);
        if high {
            found |= word & HIGH;
        }
        if found != 0 {
            return from + (found.trailing_zeros() / 8) as usize;
        }
        from += 8;
    }
    from
}

/// The high bit of each byte of `w` that is < 0x20, '"' or '\\'; a borrow
/// may also mark a byte above such a byte, never one below the first, so
/// the lowest mark is exact.
fn needs_escape(w: u64) -> u64 {
    let zero = |x: u64| x.wrapping_sub(ONES) & !x;
    let control = w.wrapping_sub(ONES * 0x20) & !w;
    let quote = zero(w ^ (ONES * u64::from(b'"')));
    let backslash = zero(w ^ (ONES * u64::from(b'\\')));
    (control | quote | backslash) & HIGH
}

/// RFC 8259 number grammar: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn is_json_number(s: &[u8]) -> bool {
    let digits = |s: &[u8], i: &mut usize| {
        let start = *i;
        while s.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i > start
    };
    let mut i = 0;
    if s.first() == Some(&b'-') {
        i += 1;
    }
    match s.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(s, &mut i);
        }
        _ => return false,
    }
    if s.get(i) == Some(&b'.') {
        i += 1;
        if !digits(s, &mut i) {
            return false;
        }
    }
    if matches!(s.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(s.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !digits(s, &mut i) {
            return false;
        }
    }
    i == s.len()
}

/// `\x0aff…` → `"Cv8="`. Anything else (e.g. `bytea_output = escape`) is
/// written as a string.
fn write_bytea(text: &[u8], out: &mut Vec<u8>) {
    let Some(hex) = text.strip_prefix(b"\\x") else {
        return write_json_string(text, out);
    };
    if hex.len() % 2 != 0 || !hex.iter().all(u8::is_ascii_hexdigit) {
        return write_json_string(text, out);
    }
    out.push(b'"');
    // Decode and encode in chunks of a multiple of 3 bytes, so the base64
    // of the chunks concatenates without padding in between.
    let mut raw = [0u8; 768];
    for chunk in hex.chunks(raw.len() * 2) {
        let mut n = 0;
        for (dst, pair) in raw.iter_mut().zip(chunk.chunks_exact(2)) {
            if let [hi, lo] = pair {
                *dst = (hex_val(*hi) << 4) | hex_val(*lo);
                n += 1;
            }
        }
        write_base64(raw.get(..n).unwrap_or_default(), out);
    }
    out.push(b'"');
}

fn hex_val(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => 0,
    }
}

/// Appends standard base64 (with padding) of `bytes`.
fn write_base64(bytes: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    let len = bytes.len().div_ceil(3) * 4;
    out.resize(start + len, 0);
    let written = out.get_mut(start..).map_or(0, |buf| {
        base64::engine::general_purpose::STANDARD
            .encode_slice(bytes, buf)
            .unwrap_or(0)
    });
    out.truncate(start + written);
}

/// ISO timestamps: `YYYY-MM-DD HH:MM:SS[.f…]` plus, with a time zone,
/// `±HH[:MM[:SS]]`. Anything else (infinity, BC, a malformed value) is
/// written as the server's text.
fn write_timestamp(text: &[u8], with_zone: bool, out: &mut Vec<u8>) {
    let start = out.len();
    if !try_write_timestamp(text, with_zone, out) {
        out.truncate(start);
        write_json_string(text, out);
    }
}

fn try_write_timestamp(t: &[u8], with_zone: bool, out: &mut Vec<u8>) -> bool {
    let digits = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
    let Some(space) = t.iter().position(|&b| b == b' ') else {
        return false;
    };
    let (date, rest) = t.split_at(space);
    // YYYY…-MM-DD (four or more year digits)
    let Some((year, month_day)) = date.split_at_checked(date.len().saturating_sub(6)) else {
        return false;
    };
    let [b'-', m1, m2, b'-', d1, d2] = month_day else {
        return false;
    };
    if year.len() < 4 || !digits(year) || !digits(&[*m1, *m2, *d1, *d2]) {
        return false;
    }
    // ' 'HH:MM:SS[.f…] then the zone
    let [b' ', h1, h2, b':', n1, n2, b':', s1, s2, after @ ..] = rest else {
        return false;
    };
    if !digits(&[*h1, *h2, *n1, *n2, *s1, *s2]) {
        return false;
    }
    let (fraction, zone) = match after {
        [b'.', more @ ..] => {
            let n = more.iter().take_while(|b| b.is_ascii_digit()).count();
            if n == 0 {
                return false;
            }
            after.split_at(n + 1)
        }
        _ => after.split_at(0),
    };
    out.push(b'"');
    out.extend_from_slice(date);
    out.extend_from_slice(&[b'T', *h1, *h2, b':', *n1, *n2, b':', *s1, *s2]);
    out.extend_from_slice(fraction);
    if with_zone {
        // ±HH, ±HH:MM or ±HH:MM:SS (historical offsets); RFC 3339 has no seconds.
        let (sign, hh, mm) = match zone {
            [sign @ (b'+' | b'-'), h1, h2] => (sign, [*h1, *h2], *b"00"),
            [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => (sign, [*h1, *h2], [*m1, *m2]),
            [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2, b':', b'0', b'0'] => {
                (sign, [*h1, *h2], [*m1, *m2])
            }
            _ => return false,
        };
        if !digits(&hh) || !digits(&mm) {
            return false;
        }
        if hh == *b"00" && mm == *b"00" {
            out.push(b'Z');
        } else {
            out.extend_from_slice(&[*sign, hh[0], hh[1], b':', mm[0], mm[1]]);
        }
    } else if !zone.is_empty() {
        return false;
    }
    out.push(b'"');
    true
}

/// PostgreSQL allows at most 6 dimensions (MAXDIM).
const MAX_ARRAY_DEPTH: usize = 6;

/// `{1,NULL,"a \"b\""}` → `[1,null,"a \"b\""]`; malformed text is written
/// as a string.
fn write_array(element: &TypeKind, text: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    let mut p = ArrayText {
        s: text,
        pos: 0,
        scratch: Vec::new(),
    };
    // `[lo:hi][lo:hi]=` dimension decoration: the bounds are dropped.
    if text.first() == Some(&b'[') {
        match text.iter().position(|&b| b == b'=') {
            Some(eq) => p.pos = eq + 1,
            None => p.pos = text.len(),
        }
    }
    if p.level(element, 1, out).is_none() || p.pos != text.len() {
        out.truncate(start);
        write_json_string(text, out);
    }
}

struct ArrayText<'a> {
    s: &'a [u8],
    pos: usize,
    /// Unescaped element text, reused between elements.
    scratch: Vec<u8>,
}

impl ArrayText<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    /// One `{…}` level; `None` when the text is not a valid array.
    fn level(&mut self, element: &TypeKind, depth: usize, out: &mut Vec<u8>) -> Option<()> {
        if depth > MAX_ARRAY_DEPTH {
            return None;
        }
        self.skip_space();
        if self.peek()? != b'{' {
            return None;
        }
        self.pos += 1;
        out.push(b'[');
        self.skip_space();
        if self.peek()? == b'}' {
            self.pos += 1;
            out.push(b']');
            return Some(());
        }
        loop {
            self.skip_space();
            match self.peek()? {
                b'{' => self.level(element, depth + 1, out)?,
                b'"' => {
                    self.quoted()?;
                    write_text_json(element, &self.scratch, out);
                }
                _ => self.unquoted(element, out)?,
            }
            self.skip_space();
            match self.peek()? {
                b',' => {
                    self.pos += 1;
                    out.push(b',');
                }
                b'}' => {
                    self.pos += 1;
                    out.push(b']');
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A double-quoted element, unescaped into `scratch`.
    fn quoted(&mut self) -> Option<()> {
        self.pos += 1;
        self.scratch.clear();
        loop {
            match self.peek()? {
                b'"' => {
                    self.pos += 1;
                    return Some(());
                }
                b'\\' => {
                    self.scratch.push(*self.s.get(self.pos + 1)?);
                    self.pos += 2;
                }
                b => {
                    self.scratch.push(b);
                    self.pos += 1;
                }
            }
        }
    }

    /// An unquoted element up to `,` or `}`; `NULL` (any case) is null.
    fn unquoted(&mut self, element: &TypeKind, out: &mut Vec<u8>) -> Option<()> {
        let start = self.pos;
        let mut escaped = false;
        while let Some(b) = self.peek() {
            match b {
                b',' | b'}' => break,
                b'{' | b'"' => return None,
                b'\\' => {
                    escaped = true;
                    self.s.get(self.pos + 1)?;
                    self.pos += 2;
                }
                _ => self.pos += 1,
            }
        }
        let raw = self.s.get(start..self.pos)?.trim_ascii_end();
        if raw.is_empty() {
            return None;
        }
        if !escaped && raw.eq_ignore_ascii_case(b"NULL") {
            out.extend_from_slice(b"null");
        } else if escaped {
            self.scratch.clear();
            let mut i = 0;
            while let Some(&b) = raw.get(i) {
                if b == b'\\' {
                    i += 1;
                    if let Some(&next) = raw.get(i) {
                        self.scratch.push(next);
                    }
                } else {
                    self.scratch.push(b);
                }
                i += 1;
            }
            write_text_json(element, &self.scratch, out);
        } else {
            write_text_json(element, raw, out);
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn json(kind: &TypeKind, text: &str) -> String {
        let mut out = Vec::new();
        write_text_json(kind, text.as_bytes(), &mut out);
        let s = String::from_utf8(out).expect("utf-8 output");
        serde_json::from_str::<serde_json::Value>(&s)
            .unwrap_or_else(|e| panic!("{s} is not JSON: {e}"));
        s
    }

    fn arr(k: TypeKind) -> TypeKind {
        TypeKind::Array(Box::new(k))
    }

    /// The escaper as it was before the word-at-a-time scan: one table
    /// lookup per byte. The fast path must write exactly these bytes.
    fn escaped_bytewise(s: &str) -> Vec<u8> {
        let mut out = vec![b'"'];
        for &b in s.as_bytes() {
            match ESCAPE.get(usize::from(b)).copied().unwrap_or(0) {
                0 => out.push(b),
                b'u' => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
                esc => out.extend_from_slice(&[b'\\', esc]),
            }
        }
        out.push(b'"');
        out
    }

    fn escaped(s: &str) -> Vec<u8> {
        let mut out = Vec::new();
        write_json_string(s.as_bytes(), &mut out);
        out
    }

    #[test]
    fn escapes_at_every_position_of_a_word() {
        // Each special byte at each offset of strings longer than a word,
        // around the 8-byte boundaries and in the tail.
        for special in [
            "\"", "\\", "\n", "\u{0}", "\u{1f}", "\u{7f}", "é", "\u{2028}",
        ] {
            for len in [1, 7, 8, 9, 15, 16, 17, 24, 31, 32, 33, 40, 47] {
                for at in 0..len {
                    let mut s = "a".repeat(len);
                    s.replace_range(at..=at, special);
                    assert_eq!(escaped(&s), escaped_bytewise(&s), "{s:?}");
                    assert_eq!(escaped(&s), serde_json::to_vec(&s).unwrap(), "{s:?}");
                }
            }
        }
        assert_eq!(escaped("a\"b\\c\u{8}\u{c}\t\r"), br#""a\"b\\c\b\f\t\r""#);
        assert_eq!(escaped(""), b"\"\"");
    }

    #[test]
    fn the_word_scan_marks_exactly_the_bytes_to_escape_from_the_first() {
        for b in 0..=255u8 {
            for at in 0..8 {
                let mut word = [b'a'; 8];
                word[at] = b;
                let found = needs_escape(u64::from_le_bytes(word));
                let expected = b < 0x20 || b == b'"' || b == b'\\';
                assert_eq!(found != 0, expected, "byte {b:#x} at {at}");
                if expected {
                    assert_eq!(found.trailing_zeros() / 8, at as u32, "byte {b:#x} at {at}");
                }
            }
        }
    }

    #[test]
    fn the_16_byte_scan_stops_exactly_at_the_first_byte_to_escape_or_above_ascii() {
        for b in 0..=255u8 {
            for at in 0..16 {
                for high in [false, true] {
                    let mut s = [b'a'; 24];
                    s[at] = b;
                    let stop = b < 0x20 || b == b'"' || b == b'\\' || (high && b >= 0x80);
                    let found = clean_prefix(&s, 0, high);
                    if stop {
                        assert_eq!(found, at, "byte {b:#x} at {at}, high {high}");
                    } else {
                        assert_eq!(found, 24, "byte {b:#x} at {at}, high {high}");
                    }
                }
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 2000, failure_persistence: None, ..Default::default() })]

        /// Arbitrary text, dense with bytes that need escaping: the same
        /// bytes as the per-byte escaper and as serde_json.
        #[test]
        fn fast_escaping_writes_what_the_simple_path_writes(s in "(?s)([a-z\"\\\\\x00-\x1f\x7f-\u{10ffff}]{0,40}|.{0,300})") {
            proptest::prop_assert_eq!(escaped(&s), escaped_bytewise(&s));
            proptest::prop_assert_eq!(escaped(&s), serde_json::to_vec(&s).unwrap());
        }

        /// Invalid UTF-8 is replaced as before, also after a long ASCII
        /// run (where the check starts late).
        #[test]
        fn invalid_utf8_is_replaced_then_escaped(
            ascii in "[a-z\"\\\\\n]{0,40}",
            b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..100),
        ) {
            let mut bytes = ascii.into_bytes();
            bytes.extend_from_slice(&b);
            let mut out = b"[".to_vec();
            write_json_string(&bytes, &mut out);
            let mut expected = b"[".to_vec();
            expected.extend_from_slice(&escaped_bytewise(&String::from_utf8_lossy(&bytes)));
            proptest::prop_assert_eq!(out, expected);
        }
    }

    #[test]
    fn bools() {
        assert_eq!(json(&TypeKind::Bool, "t"), "true");
        assert_eq!(json(&TypeKind::Bool, "f"), "false");
        assert_eq!(json(&TypeKind::Bool, "maybe"), r#""maybe""#);
    }

    #[test]
    fn integers_are_exact() {
        assert_eq!(json(&TypeKind::Int, "-32768"), "-32768");
        assert_eq!(
            json(&TypeKind::Int, "9223372036854775807"),
            "9223372036854775807"
        );
        assert_eq!(json(&TypeKind::Int, "4294967295"), "4294967295");
        assert_eq!(json(&TypeKind::Int, "0"), "0");
        assert_eq!(json(&TypeKind::Int, "12abc"), r#""12abc""#);
    }

    #[test]
    fn floats_with_special_values_as_strings() {
        assert_eq!(json(&TypeKind::Float, "1.5"), "1.5");
        assert_eq!(
            json(&TypeKind::Float, "-1.2345678901234567e-300"),
            "-1.2345678901234567e-300"
        );
        assert_eq!(json(&TypeKind::Float, "1e+300"), "1e+300");
        assert_eq!(json(&TypeKind::Float, "-0"), "-0");
        assert_eq!(json(&TypeKind::Float, "NaN"), r#""NaN""#);
        assert_eq!(json(&TypeKind::Float, "Infinity"), r#""Infinity""#);
        assert_eq!(json(&TypeKind::Float, "-Infinity"), r#""-Infinity""#);
    }

    #[test]
    fn numerics_keep_every_digit() {
        let n = "123456789012345678901234567890.123456789";
        assert_eq!(json(&TypeKind::Numeric, n), n);
        assert_eq!(json(&TypeKind::Numeric, "-0.000100"), "-0.000100");
        assert_eq!(json(&TypeKind::Numeric, "NaN"), r#""NaN""#);
        assert_eq!(json(&TypeKind::Numeric, "Infinity"), r#""Infinity""#);
        assert_eq!(json(&TypeKind::Numeric, "-Infinity"), r#""-Infinity""#);
        for bad in ["", "-", "1.", ".5", "01", "1e", "+1", "1 "] {
            assert!(!is_json_number(bad.as_bytes()), "{bad:?}");
        }
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            json(
                &TypeKind::Text,
                "quote \" backslash \\ newline \n tab \t bell \u{7} é 😀"
            ),
            r#""quote \" backslash \\ newline \n tab \t bell \u0007 é 😀""#
        );
        assert_eq!(json(&TypeKind::Text, ""), r#""""#);
        assert_eq!(
            json(&TypeKind::Text, "\u{0}\u{1f}\u{7f}"),
            "\"\\u0000\\u001f\u{7f}\""
        );
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let mut out = Vec::new();
        write_text_json(&TypeKind::Text, b"a\xffb", &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "\"a\u{fffd}b\"");
    }

    #[test]
    fn json_is_embedded_raw() {
        let j = r#"{"a": [1, 2.50, null], "b": "x\"y"}"#;
        assert_eq!(json(&TypeKind::Json, j), j);
        assert_eq!(json(&TypeKind::Json, "null"), "null");
        assert_eq!(json(&TypeKind::Json, "{broken"), r#""{broken""#);
    }

    #[test]
    fn bytea_becomes_base64() {
        assert_eq!(json(&TypeKind::Bytea, r"\x00ff0010"), r#""AP8AEA==""#);
        assert_eq!(json(&TypeKind::Bytea, r"\x"), r#""""#);
        assert_eq!(json(&TypeKind::Bytea, r"\x00"), r#""AA==""#);
        // Longer than one chunk: the chunks must join without padding.
        let bytes: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 256) as u8).collect();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let expected = base64::engine::general_purpose::STANDARD.encode(&bytes);
        assert_eq!(
            json(&TypeKind::Bytea, &format!("\\x{hex}")),
            format!("\"{expected}\"")
        );
        // Escape format or garbage: kept as text.
        assert_eq!(json(&TypeKind::Bytea, r"\000abc"), r#""\\000abc""#);
        assert_eq!(json(&TypeKind::Bytea, r"\x0"), r#""\\x0""#);
        assert_eq!(json(&TypeKind::Bytea, r"\xzz"), r#""\\xzz""#);
    }

    #[test]
    fn timestamptz_becomes_rfc3339() {
        let k = TypeKind::Timestamptz;
        assert_eq!(
            json(&k, "2026-11-22 07:04:00.123456+00"),
            r#""2026-11-22T07:04:00.123456Z""#
        );
        assert_eq!(
            json(&k, "2026-11-22 07:04:00.1+00"),
            r#""2026-11-22T07:04:00.1Z""#
        );
        assert_eq!(
            json(&k, "2026-11-22 07:04:00+00"),
            r#""2026-11-22T07:04:00Z""#
        );
        assert_eq!(
            json(&k, "2026-11-22 07:04:00+05:30"),
            r#""2026-11-22T07:04:00+05:30""#
        );
        assert_eq!(
            json(&k, "2026-11-22 07:04:00-08"),
            r#""2026-11-22T07:04:00-08:00""#
        );
        assert_eq!(
            json(&k, "1900-01-01 00:00:00+00:00:00"),
            r#""1900-01-01T00:00:00Z""#
        );
        assert_eq!(
            json(&k, "12345-06-07 08:09:10.5+00"),
            r#""12345-06-07T08:09:10.5Z""#
        );
        // Not expressible in RFC 3339: the server's text.
        assert_eq!(
            json(&k, "1850-01-01 00:00:00+00:53:28"),
            r#""1850-01-01 00:00:00+00:53:28""#
        );
        assert_eq!(json(&k, "infinity"), r#""infinity""#);
        assert_eq!(json(&k, "-infinity"), r#""-infinity""#);
        assert_eq!(
            json(&k, "0044-03-15 12:00:00+00 BC"),
            r#""0044-03-15 12:00:00+00 BC""#
        );
        assert_eq!(
            json(&k, "2026-11-22 07:04:00."),
            r#""2026-11-22 07:04:00.""#
        );
        assert_eq!(json(&k, "2026-11-22 07:04:00"), r#""2026-11-22 07:04:00""#);
    }

    #[test]
    fn timestamp_without_zone() {
        let k = TypeKind::Timestamp;
        assert_eq!(
            json(&k, "2026-11-22 07:04:00.123456"),
            r#""2026-11-22T07:04:00.123456""#
        );
        assert_eq!(
            json(&k, "10000-01-01 00:00:00"),
            r#""10000-01-01T00:00:00""#
        );
        assert_eq!(json(&k, "infinity"), r#""infinity""#);
        assert_eq!(
            json(&k, "2026-11-22 07:04:00+00"),
            r#""2026-11-22 07:04:00+00""#
        );
    }

    #[test]
    fn other_types_are_strings() {
        for t in [
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "2026-11-22",
            "07:04:00.5",
            "07:04:00+02:30",
            "1 year 2 mons 3 days 04:05:06.7",
            "192.168.0.1/24",
            "08:00:2b:01:02:03",
            "happy",
            "$12.34",
        ] {
            assert_eq!(json(&TypeKind::Text, t), format!("\"{t}\""));
        }
    }

    #[test]
    fn arrays() {
        assert_eq!(json(&arr(TypeKind::Int), "{1,NULL,3}"), "[1,null,3]");
        assert_eq!(json(&arr(TypeKind::Int), "{}"), "[]");
        assert_eq!(json(&arr(TypeKind::Int), "{{1,2},{3,4}}"), "[[1,2],[3,4]]");
        assert_eq!(
            json(&arr(TypeKind::Int), "{{{1},{2}},{{3},{4}}}"),
            "[[[1],[2]],[[3],[4]]]"
        );
        assert_eq!(json(&arr(TypeKind::Int), "[0:1]={7,8}"), "[7,8]");
        assert_eq!(json(&arr(TypeKind::Int), "[1:1][-2:-1]={{7,8}}"), "[[7,8]]");
        assert_eq!(
            json(&arr(TypeKind::Bool), "{t,f,NULL}"),
            "[true,false,null]"
        );
        // PostgreSQL's own output for ARRAY['plain', 'with "quote"', 'back\slash', 'NULL', NULL, '', 'a,b', '{x}'].
        assert_eq!(
            json(
                &arr(TypeKind::Text),
                r#"{plain,"with \"quote\"","back\\slash","NULL",NULL,"","a,b","{x}"}"#
            ),
            r#"["plain","with \"quote\"","back\\slash","NULL",null,"","a,b","{x}"]"#
        );
        assert_eq!(
            json(
                &arr(TypeKind::Numeric),
                "{1.5,NaN,-Infinity,123456789012345678901234567890}"
            ),
            r#"[1.5,"NaN","-Infinity",123456789012345678901234567890]"#
        );
        assert_eq!(
            json(&arr(TypeKind::Bytea), r#"{"\\x00","\\xdeadbeef"}"#),
            r#"["AA==","3q2+7w=="]"#
        );
        assert_eq!(
            json(
                &arr(TypeKind::Timestamptz),
                r#"{"2026-11-22 07:04:00.123456+00",infinity}"#
            ),
            r#"["2026-11-22T07:04:00.123456Z","infinity"]"#
        );
        assert_eq!(
            json(&arr(TypeKind::Json), r#"{"{\"k\": [1]}",null,"\"s\""}"#),
            r#"[{"k": [1]},null,"s"]"#
        );
        // Unquoted elements may carry backslash escapes.
        assert_eq!(json(&arr(TypeKind::Text), r"{a\,b,c}"), r#"["a,b","c"]"#);
        assert_eq!(json(&arr(TypeKind::Text), r"{ a , b }"), r#"["a","b"]"#);
    }

    #[test]
    fn malformed_arrays_are_strings() {
        for bad in [
            "",
            "{",
            "{1",
            "{1,}",
            "{,1}",
            "1,2",
            "{1}}",
            "{\"a}",
            "{\"a\\",
            "[0:1]",
            "{{{{{{{1}}}}}}}",
            "{a\"b}",
            "{{1},2}x",
        ] {
            let out = json(&arr(TypeKind::Int), bad);
            assert!(out.starts_with('"'), "{bad:?} gave {out}");
        }
        // Six dimensions is PostgreSQL's maximum and still an array.
        assert_eq!(json(&arr(TypeKind::Int), "{{{{{{1}}}}}}"), "[[[[[[1]]]]]]");
    }

    #[test]
    fn cells() {
        let mut out = Vec::new();
        write_cell_json(&TypeKind::Int, &Cell::Null, &mut out);
        out.push(b' ');
        write_cell_json(
            &TypeKind::Int,
            &Cell::Text(Bytes::from_static(b"5")),
            &mut out,
        );
        out.push(b' ');
        write_cell_json(
            &TypeKind::Text,
            &Cell::Binary(Bytes::from_static(&[0, 255])),
            &mut out,
        );
        assert_eq!(String::from_utf8(out).unwrap(), r#"null 5 "AP8=""#);
    }
}
