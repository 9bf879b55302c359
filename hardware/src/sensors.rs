//! Sensors: a registry of sensor kinds, addressed by ids `KIND:ID`.
//!
//! One kind today:
//!
//! * `w1` — a 1-Wire temperature sensor (DS18B20 and friends) read through the kernel's
//!   `w1_therm` driver. `ID` is the device directory name under the w1 directory
//!   (`/sys/bus/w1/devices` by default), `FAMILY-SERIAL` in hex, e.g. `w1:28-0316a27966ff`.
//!   The reading comes from `<dir>/<ID>/temperature` (millidegrees Celsius, newer kernels)
//!   or else from `<dir>/<ID>/w1_slave`, the classic two lines:
//!
//!   ```text
//!   72 01 4b 46 7f ff 0e 10 57 : crc=57 YES
//!   72 01 4b 46 7f ff 0e 10 57 t=23125
//!   ```
//!
//!   where a `NO` at the end of the first line is a CRC failure (an error, never a value).
//!
//! Adding a kind: implement [`SensorKind`], register it in [`SensorRegistry::new`], and add
//! its id check to [`validate_id`] (grants are parsed before a registry exists).

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::ErrorKind;

/// Most bytes read from one sysfs file.
const MAX_SYSFS_READ: u64 = 4096;

/// One reading.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reading {
    /// What is measured, e.g. `temperature`.
    pub kind: &'static str,
    /// The value, in `unit`.
    pub value: f64,
    /// The unit, e.g. `celsius`.
    pub unit: &'static str,
}

/// Why a sensor could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SensorError {
    /// No such sensor on this node.
    #[error("{0}")]
    NotFound(String),
    /// The id is not one this node understands.
    #[error("{0}")]
    BadId(String),
    /// The device answered, but the data failed its check (e.g. a 1-Wire CRC error).
    #[error("{0}")]
    Device(String),
    /// The kernel's file could not be read.
    #[error("{context}")]
    Io {
        /// What was being read.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl SensorError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            SensorError::NotFound(_) => ErrorKind::NotFound,
            SensorError::BadId(_) => ErrorKind::Invalid,
            SensorError::Device(_) | SensorError::Io { .. } => ErrorKind::Device,
        }
    }
}

/// A kind of sensor: ids `KIND:ID` with this kind's prefix are read by it.
pub trait SensorKind: Send + Sync {
    /// The prefix before the `:` of an id.
    fn kind(&self) -> &'static str;
    /// Reads the sensor `id` (the part after `KIND:`). Blocking: call it off the async
    /// threads.
    fn read(&self, id: &str) -> Result<Reading, SensorError>;
    /// The ids (after `KIND:`) of the sensors of this kind present on the node. Blocking.
    fn present(&self) -> Vec<String>;
}

/// The sensor kinds of this node.
pub struct SensorRegistry {
    kinds: BTreeMap<&'static str, Box<dyn SensorKind>>,
}

impl SensorRegistry {
    /// The built-in kinds: `w1`, reading from `w1_dir`.
    pub fn new(w1_dir: PathBuf) -> SensorRegistry {
        let mut registry = SensorRegistry {
            kinds: BTreeMap::new(),
        };
        registry.register(Box::new(W1Temperature { dir: w1_dir }));
        registry
    }

    /// Adds (or replaces) a kind.
    pub fn register(&mut self, kind: Box<dyn SensorKind>) {
        self.kinds.insert(kind.kind(), kind);
    }

    /// The ids (`KIND:ID`) of the sensors present on this node, sorted. Blocking.
    pub fn present(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .kinds
            .values()
            .flat_map(|kind| {
                kind.present()
                    .into_iter()
                    .map(move |id| format!("{}:{id}", kind.kind()))
            })
            .collect();
        ids.sort();
        ids
    }

    /// Reads sensor `id` (`KIND:ID`). Blocking (a 1-Wire conversion takes up to 750 ms).
    pub fn read(&self, id: &str) -> Result<Reading, SensorError> {
        validate_id(id).map_err(SensorError::BadId)?;
        let (kind, rest) = id
            .split_once(':')
            .ok_or_else(|| SensorError::BadId(format!("{id:?} is not KIND:ID")))?;
        let reader = self
            .kinds
            .get(kind)
            .ok_or_else(|| SensorError::BadId(format!("unknown sensor kind {kind:?}")))?;
        reader.read(rest)
    }
}

/// Checks a sensor id (`KIND:ID`) without reading it.
pub fn validate_id(id: &str) -> Result<(), String> {
    let Some((kind, rest)) = id.split_once(':') else {
        return Err(format!(
            "{id:?} is not a sensor id: write KIND:ID, e.g. w1:28-0316a27966ff"
        ));
    };
    match kind {
        "w1" => validate_w1(rest),
        other => Err(format!("unknown sensor kind {other:?} (known kinds: w1)")),
    }
}

/// A 1-Wire device directory name: `FAMILY-SERIAL`, hex digits and one `-`.
fn validate_w1(name: &str) -> Result<(), String> {
    let ok = name.split_once('-').is_some_and(|(family, serial)| {
        family.len() == 2
            && !serial.is_empty()
            && serial.len() <= 16
            && family.bytes().all(|b| b.is_ascii_hexdigit())
            && serial.bytes().all(|b| b.is_ascii_hexdigit())
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a 1-Wire device name (FAMILY-SERIAL in hex, e.g. 28-0316a27966ff)"
        ))
    }
}

/// 1-Wire temperature through the kernel's w1 sysfs files.
struct W1Temperature {
    dir: PathBuf,
}

impl SensorKind for W1Temperature {
    fn kind(&self) -> &'static str {
        "w1"
    }

    /// The device directories that are temperature sensors (`w1_therm`'s files); bus
    /// masters (`w1_bus_master1`) and other devices are left out.
    fn present(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| validate_w1(name).is_ok())
            .filter(|name| {
                let device = self.dir.join(name);
                device.join("temperature").exists() || device.join("w1_slave").exists()
            })
            .collect()
    }

    fn read(&self, id: &str) -> Result<Reading, SensorError> {
        validate_w1(id).map_err(SensorError::BadId)?;
        let device = self.dir.join(id);
        let temperature = device.join("temperature");
        match read_small(&temperature) {
            Ok(text) => return parse_millidegrees(&text, &temperature),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(SensorError::Io {
                    context: format!("reading {}", temperature.display()),
                    source: e,
                });
            }
        }
        let w1_slave = device.join("w1_slave");
        match read_small(&w1_slave) {
            Ok(text) => parse_w1_slave(&text, &w1_slave),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if device.is_dir() {
                    Err(SensorError::NotFound(format!(
                        "1-Wire device {id} has no temperature or w1_slave file: is it a \
                         temperature sensor?"
                    )))
                } else {
                    Err(SensorError::NotFound(format!(
                        "no 1-Wire device {id} on this node (nothing at {})",
                        device.display()
                    )))
                }
            }
            Err(e) => Err(SensorError::Io {
                context: format!("reading {}", w1_slave.display()),
                source: e,
            }),
        }
    }
}

fn read_small(path: &Path) -> std::io::Result<String> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_SYSFS_READ)
        .read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn celsius(millidegrees: i64) -> Reading {
    // Any millidegree value a sensor reports fits an f64 exactly.
    let value = millidegrees as f64 / 1000.0;
    Reading {
        kind: "temperature",
        value,
        unit: "celsius",
    }
}

/// `temperature`: an integer in millidegrees Celsius.
pub(crate) fn parse_millidegrees(text: &str, path: &Path) -> Result<Reading, SensorError> {
    let text = text.trim();
    text.parse::<i64>().map(celsius).map_err(|_| {
        SensorError::Device(format!(
            "{} holds {text:?}, not a temperature in millidegrees",
            path.display()
        ))
    })
}

/// `w1_slave`: the CRC line, then the data line ending `t=MILLIDEGREES`.
pub(crate) fn parse_w1_slave(text: &str, path: &Path) -> Result<Reading, SensorError> {
    let mut lines = text.lines();
    let malformed = || {
        SensorError::Device(format!(
            "{} is not in the w1_slave format ({text:?})",
            path.display()
        ))
    };
    let crc = lines.next().ok_or_else(malformed)?.trim_end();
    if crc.ends_with("NO") {
        return Err(SensorError::Device(format!(
            "1-Wire CRC check failed ({}: {crc:?}); try again",
            path.display()
        )));
    }
    if !crc.ends_with("YES") {
        return Err(malformed());
    }
    let data = lines.next().ok_or_else(malformed)?;
    let (_, value) = data.rsplit_once("t=").ok_or_else(malformed)?;
    let millidegrees: i64 = value.trim().parse().map_err(|_| malformed())?;
    Ok(celsius(millidegrees))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, id: &str, file: &str, content: &str) {
        std::fs::create_dir_all(dir.join(id)).unwrap();
        std::fs::write(dir.join(id).join(file), content).unwrap();
    }

    #[test]
    fn w1_temperature_file() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "28-0316a27966ff", "temperature", "23125\n");
        write(tmp.path(), "28-000000000001", "temperature", "-1250\n");
        let registry = SensorRegistry::new(tmp.path().to_owned());
        let r = registry.read("w1:28-0316a27966ff").unwrap();
        assert_eq!(
            r,
            Reading {
                kind: "temperature",
                value: 23.125,
                unit: "celsius"
            }
        );
        assert_eq!(registry.read("w1:28-000000000001").unwrap().value, -1.25);
        // The bus master and devices that are no temperature sensor are not listed.
        std::fs::create_dir_all(tmp.path().join("w1_bus_master1")).unwrap();
        write(tmp.path(), "3a-000000000002", "state", "\n");
        assert_eq!(
            registry.present(),
            ["w1:28-000000000001", "w1:28-0316a27966ff"]
        );
        assert!(
            SensorRegistry::new(tmp.path().join("none"))
                .present()
                .is_empty()
        );
    }

    #[test]
    fn w1_slave_file() {
        let tmp = tempfile::tempdir().unwrap();
        write(
            tmp.path(),
            "28-0316a27966ff",
            "w1_slave",
            "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n",
        );
        write(
            tmp.path(),
            "28-00000000bad0",
            "w1_slave",
            "72 01 4b 46 7f ff 0e 10 57 : crc=ff NO\n72 01 4b 46 7f ff 0e 10 57 t=85000\n",
        );
        write(tmp.path(), "28-00000000bad1", "w1_slave", "garbage\n");
        write(tmp.path(), "28-00000000bad2", "temperature", "hot\n");
        std::fs::create_dir_all(tmp.path().join("28-00000000bad3")).unwrap();
        let registry = SensorRegistry::new(tmp.path().to_owned());
        assert_eq!(registry.read("w1:28-0316a27966ff").unwrap().value, 23.125);
        let crc = registry.read("w1:28-00000000bad0").unwrap_err();
        assert!(
            matches!(crc, SensorError::Device(ref m) if m.contains("CRC")),
            "{crc}"
        );
        assert!(matches!(
            registry.read("w1:28-00000000bad1"),
            Err(SensorError::Device(_))
        ));
        assert!(matches!(
            registry.read("w1:28-00000000bad2"),
            Err(SensorError::Device(_))
        ));
        let empty = registry.read("w1:28-00000000bad3").unwrap_err();
        assert!(matches!(empty, SensorError::NotFound(ref m) if m.contains("temperature sensor")));
        let missing = registry.read("w1:28-ffffffffffff").unwrap_err();
        assert!(matches!(missing, SensorError::NotFound(ref m) if m.contains("no 1-Wire device")));
        assert!(matches!(
            registry.read("w1:../../etc/passwd"),
            Err(SensorError::BadId(_))
        ));
        assert!(matches!(
            registry.read("nope:1"),
            Err(SensorError::BadId(_))
        ));
    }

    #[test]
    fn w1_slave_parsing() {
        let p = Path::new("x");
        assert_eq!(
            parse_w1_slave("a : crc=1 YES\nb t=-62\n", p).unwrap().value,
            -0.062
        );
        for bad in [
            "",
            "a : crc=1 YES\n",
            "a : crc=1 YES\nb t=\n",
            "a YES\nb t=1x\n",
        ] {
            assert!(parse_w1_slave(bad, p).is_err(), "{bad:?}");
        }
    }
}
