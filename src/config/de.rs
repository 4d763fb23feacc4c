//! Small serde helpers: humantime durations, byte sizes and field defaults.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Deserializes a duration written as text: "15s", "20ms", "5m", "1h 30m".
pub(crate) fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text).map_err(|err| {
        serde::de::Error::custom(format!(
            "invalid duration {text:?} ({err}); write a number and a unit, like \"15s\", \"20ms\" or \"5m\""
        ))
    })
}

/// Deserializes a size in bytes: an integer (`67108864`) or text with a
/// binary unit (`"64MiB"`, `"512KiB"`, `"1GiB"`, `"100B"`).
pub(crate) fn bytes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Number(u64),
        Text(String),
    }
    let invalid = |shown: String| {
        serde::de::Error::custom(format!(
            "invalid size {shown}; write a number of bytes or a number and a unit, \
             like \"64MiB\", \"512KiB\" or \"1GiB\""
        ))
    };
    match Size::deserialize(deserializer).map_err(|_| invalid("(not a number or text)".into()))? {
        Size::Number(n) => usize::try_from(n).map_err(|_| invalid(n.to_string())),
        Size::Text(text) => parse_bytes(&text).ok_or_else(|| invalid(format!("{text:?}"))),
    }
}

/// `"64MiB"` → 67108864; `None` for anything else.
fn parse_bytes(text: &str) -> Option<usize> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: usize = number.parse().ok()?;
    let factor: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(factor)
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn sizes_with_binary_units() {
        assert_eq!(parse_bytes("64MiB"), Some(64 << 20));
        assert_eq!(parse_bytes(" 512 KiB "), Some(512 << 10));
        assert_eq!(parse_bytes("1GiB"), Some(1 << 30));
        assert_eq!(parse_bytes("100"), Some(100));
        assert_eq!(parse_bytes("100B"), Some(100));
        assert_eq!(parse_bytes("64MB"), None);
        assert_eq!(parse_bytes("MiB"), None);
        assert_eq!(parse_bytes("-1MiB"), None);
    }
}
