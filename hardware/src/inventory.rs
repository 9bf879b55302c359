//! What a board has to lend to functions, in summary: what a cluster's placer needs to know to
//! put a function with hardware grants only on boards that have those lines, buses, sensors.

use std::path::{Path, PathBuf};

use crate::Hardware;

/// The hardware of a board.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    /// The GPIO chip's label (`pinctrl-bcm2711`), or `simulator`.
    pub gpio_chip: Option<String>,
    /// GPIO line names (`GPIO17`).
    pub gpio_lines: Vec<String>,
    /// I2C bus numbers.
    pub i2c_buses: Vec<u32>,
    /// 1-Wire sensors (`28-00000abc`), as the kernel lists them.
    pub sensors: Vec<String>,
}

/// Where an inventory comes from, kept from the configuration.
#[derive(Debug)]
pub(crate) struct Sources {
    /// The chip label in use (`None`: the simulator).
    pub(crate) chip: Option<String>,
    /// The simulator's I2C buses (`None`: the board's `/dev/i2c-N`).
    pub(crate) sim_i2c_buses: Option<Vec<u32>>,
    /// The kernel's 1-Wire devices.
    pub(crate) w1_dir: PathBuf,
}

impl Hardware {
    /// The board's hardware now. Blocking (lists `/dev` and the 1-Wire directory).
    pub fn inventory(&self) -> Inventory {
        let sources = &self.sources;
        let mut i2c_buses = match &sources.sim_i2c_buses {
            Some(buses) => buses.clone(),
            None => i2c_buses(Path::new("/dev")),
        };
        i2c_buses.sort_unstable();
        i2c_buses.dedup();
        Inventory {
            gpio_chip: Some(
                sources
                    .chip
                    .clone()
                    .unwrap_or_else(|| "simulator".to_owned()),
            ),
            gpio_lines: self.shared.gpio.line_names(),
            i2c_buses,
            sensors: one_wire_sensors(&sources.w1_dir),
        }
    }
}

/// `N` of every `i2c-N` in `dev`.
fn i2c_buses(dev: &Path) -> Vec<u32> {
    std::fs::read_dir(dev)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_prefix("i2c-"))
                        .and_then(|n| n.parse().ok())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The 1-Wire devices in `w1_dir` (`FF-SSSSSSSSSSSS`; the bus masters left out).
fn one_wire_sensors(w1_dir: &Path) -> Vec<String> {
    let mut sensors: Vec<String> = std::fs::read_dir(w1_dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .filter(|n| {
                    n.split_once('-').is_some_and(|(family, serial)| {
                        family.len() == 2
                            && family.chars().all(|c| c.is_ascii_hexdigit())
                            && !serial.is_empty()
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    sensors.sort();
    sensors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buses_and_sensors_are_read_from_their_directories() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["i2c-1", "i2c-20", "i2c-x", "gpiochip0"] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        let mut buses = i2c_buses(dir.path());
        buses.sort_unstable();
        assert_eq!(buses, [1, 20]);
        let w1 = tempfile::tempdir().unwrap();
        for name in ["28-00000abc", "w1_bus_master1", "10-000801b5", "28-"] {
            std::fs::create_dir(w1.path().join(name)).unwrap();
        }
        assert_eq!(one_wire_sensors(w1.path()), ["10-000801b5", "28-00000abc"]);
        assert!(one_wire_sensors(Path::new("/nonexistent")).is_empty());
    }

    #[test]
    fn the_simulator_lists_its_lines_and_buses() {
        let config = crate::HardwareConfig {
            backend: crate::BackendChoice::Simulator,
            sim_lines: vec!["GPIO17".into(), "GPIO27".into()],
            w1_dir: PathBuf::from("/nonexistent"),
            ..crate::HardwareConfig::default()
        };
        let inventory = Hardware::new(config).unwrap().inventory();
        assert_eq!(inventory.gpio_chip.as_deref(), Some("simulator"));
        assert!(
            inventory.gpio_lines.contains(&"GPIO17".to_owned()),
            "{inventory:?}"
        );
        assert_eq!(inventory.i2c_buses, [1]);
    }
}
