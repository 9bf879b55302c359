//! The configuration's values as types, parsed once when the configuration is read — from
//! the file, an environment variable or a flag alike (each type is `FromStr` for clap and
//! deserialises from the same text in TOML) — so nothing downstream re-parses a string or
//! falls back to a default on a parse error. Each prints back as the text it was read from
//! (`bramble install --print-config`, `Config::keys`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use bramble_gateway::validate::{parse_cpu_millis, parse_memory};

/// Serialises through `Display` and deserialises through `FromStr`: a value is written in
/// TOML exactly as on the command line.
macro_rules! text_serde {
    ($($type:ty),+) => {$(
        impl serde::Serialize for $type {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    )+};
}

text_serde!(ByteSize, MemoryLimit, CpuLimit, MemoryBudget, Expiry);

/// A size in bytes, written as a quantity: `256Ki`, `1Mi`, `4Gi`, `1000000`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(u64);

impl ByteSize {
    pub const fn from_bytes(bytes: u64) -> Self {
        Self(bytes)
    }

    pub const fn bytes(self) -> u64 {
        self.0
    }

    /// The size as a `usize` (saturating on 32-bit boards).
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        parse_memory(text).map(Self)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u32); 4] = [("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)];
        match UNITS
            .iter()
            .find(|(_, shift)| self.0 != 0 && self.0.is_multiple_of(1 << shift))
        {
            Some((unit, shift)) => write!(f, "{}{unit}", self.0 >> shift),
            None => write!(f, "{}", self.0),
        }
    }
}

/// A memory limit of functions that set none: a size, or none (written empty).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryLimit {
    Unlimited,
    Limit(ByteSize),
}

impl MemoryLimit {
    pub fn bytes(self) -> Option<u64> {
        match self {
            MemoryLimit::Unlimited => None,
            MemoryLimit::Limit(size) => Some(size.bytes()),
        }
    }
}

/// The smallest memory limit a process can start in.
const MIN_MEMORY_LIMIT: u64 = 4 << 20;

impl FromStr for MemoryLimit {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Ok(MemoryLimit::Unlimited);
        }
        let size: ByteSize = text.parse()?;
        if size.bytes() < MIN_MEMORY_LIMIT {
            return Err(format!(
                "{text:?} is below 4Mi, too little to start a process; leave it empty for no limit"
            ));
        }
        Ok(MemoryLimit::Limit(size))
    }
}

impl fmt::Display for MemoryLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemoryLimit::Unlimited => Ok(()),
            MemoryLimit::Limit(size) => size.fmt(f),
        }
    }
}

/// A CPU limit of functions that set none: millicores (`500m`, `1`), or none (written empty).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuLimit {
    Unlimited,
    Millicores(u64),
}

impl CpuLimit {
    pub fn millicores(self) -> Option<u64> {
        match self {
            CpuLimit::Unlimited => None,
            CpuLimit::Millicores(m) => Some(m),
        }
    }
}

impl FromStr for CpuLimit {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Ok(CpuLimit::Unlimited);
        }
        match parse_cpu_millis(text)? {
            0 => Err(format!(
                "cpu quantity {text:?} is zero: leave it empty for no limit"
            )),
            millis => Ok(CpuLimit::Millicores(millis)),
        }
    }
}

impl fmt::Display for CpuLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CpuLimit::Unlimited => Ok(()),
            CpuLimit::Millicores(m) if m.is_multiple_of(1000) => write!(f, "{}", m / 1000),
            CpuLimit::Millicores(m) => write!(f, "{m}m"),
        }
    }
}

/// Memory all functions may reserve together: `auto` (75 % of the board's RAM), `none`, or a
/// size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryBudget {
    Auto,
    Unlimited,
    Size(ByteSize),
}

impl MemoryBudget {
    /// The budget in bytes on a board with `total` bytes of RAM (`None`: unlimited; `auto`
    /// where the RAM is unknown: unlimited too).
    pub fn bytes(self, total: Option<u64>) -> Option<u64> {
        match self {
            MemoryBudget::Auto => Some(total.map_or(u64::MAX, |total| total / 4 * 3)),
            MemoryBudget::Unlimited => None,
            MemoryBudget::Size(size) => Some(size.bytes()),
        }
    }
}

impl FromStr for MemoryBudget {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "auto" | "" => Ok(MemoryBudget::Auto),
            "none" => Ok(MemoryBudget::Unlimited),
            q => q
                .parse()
                .map(MemoryBudget::Size)
                .map_err(|e| format!("{e} (or `auto`, `none`)")),
        }
    }
}

impl fmt::Display for MemoryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemoryBudget::Auto => f.write_str("auto"),
            MemoryBudget::Unlimited => f.write_str("none"),
            MemoryBudget::Size(size) => size.fmt(f),
        }
    }
}

/// After how long something unused is removed: a duration (`1h`), or `never`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    Never,
    After(Duration),
}

impl Expiry {
    pub fn after(self) -> Option<Duration> {
        match self {
            Expiry::Never => None,
            Expiry::After(d) => Some(d),
        }
    }
}

impl FromStr for Expiry {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "never" => Ok(Expiry::Never),
            text => humantime::parse_duration(text)
                .map(Expiry::After)
                .map_err(|e| format!("{text:?} is not a duration ({e}) nor `never`")),
        }
    }
}

impl fmt::Display for Expiry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expiry::Never => f.write_str("never"),
            Expiry::After(d) => humantime::format_duration(*d).fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_print_as_they_are_written() {
        for text in ["256Ki", "1Mi", "4Gi", "1Ti", "1000000", "0"] {
            assert_eq!(text.parse::<ByteSize>().unwrap().to_string(), text);
        }
        assert_eq!("1024Ki".parse::<ByteSize>().unwrap().to_string(), "1Mi");
        for text in ["", "128Mi"] {
            assert_eq!(text.parse::<MemoryLimit>().unwrap().to_string(), text);
        }
        for text in ["", "500m", "2", "1500m"] {
            assert_eq!(text.parse::<CpuLimit>().unwrap().to_string(), text);
        }
        assert_eq!(
            "0.5".parse::<CpuLimit>().unwrap(),
            CpuLimit::Millicores(500)
        );
        for text in ["auto", "none", "1Gi"] {
            assert_eq!(text.parse::<MemoryBudget>().unwrap().to_string(), text);
        }
        for text in ["never", "1h", "30s"] {
            assert_eq!(text.parse::<Expiry>().unwrap().to_string(), text);
        }
    }

    #[test]
    fn bad_values_say_what_was_wrong() {
        assert!("128Qi".parse::<ByteSize>().unwrap_err().contains("Qi"));
        assert!("0".parse::<CpuLimit>().unwrap_err().contains("zero"));
        assert!("1Mi".parse::<MemoryLimit>().unwrap_err().contains("4Mi"));
        assert!(
            "lots"
                .parse::<MemoryBudget>()
                .unwrap_err()
                .contains("`auto`, `none`")
        );
        assert!("soon".parse::<Expiry>().unwrap_err().contains("`never`"));
    }

    #[test]
    fn the_budget_resolves_against_the_boards_memory() {
        assert_eq!(MemoryBudget::Auto.bytes(Some(4 << 30)), Some(3 << 30));
        assert_eq!(MemoryBudget::Auto.bytes(None), Some(u64::MAX));
        assert_eq!(MemoryBudget::Unlimited.bytes(Some(4 << 30)), None);
        assert_eq!(
            MemoryBudget::Size(ByteSize::from_bytes(1 << 30)).bytes(None),
            Some(1 << 30)
        );
    }

    #[test]
    fn values_read_from_toml_like_from_flags() {
        #[derive(serde::Deserialize)]
        struct Doc {
            size: ByteSize,
            budget: MemoryBudget,
            gc: Expiry,
        }
        let doc: Doc = toml::from_str("size = \"2Mi\"\nbudget = \"none\"\ngc = \"2h\"\n").unwrap();
        assert_eq!(doc.size, ByteSize::from_bytes(2 << 20));
        assert_eq!(doc.budget, MemoryBudget::Unlimited);
        assert_eq!(doc.gc, Expiry::After(Duration::from_secs(7200)));
        let error = toml::from_str::<Doc>("size = \"2Qi\"\nbudget = \"none\"\ngc = \"2h\"\n")
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("size") && error.contains("Qi"), "{error}");
    }
}
