//! Durations as humane text in configuration files (`"10s"`, `"5m"`, `"1h 30m"`), for
//! `#[serde(with = "bramble_base::duration_text")]`.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// Writes `"1m 30s"`.
pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*value).to_string())
}

/// Reads what [`serialize`] writes, and any text `humantime` reads (`"90s"`, `"2m"`).
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "{text:?} is not a duration ({e}); write e.g. \"60s\" or \"2m\""
        ))
    })
}
