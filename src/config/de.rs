//! Small serde helpers: humantime durations and field defaults.

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
