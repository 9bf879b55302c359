//! The hardware helper's configuration (`[hardware]` in the node's configuration file).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::sim::{self, SimI2cDevice};

/// Which GPIO backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// The character device when a chip with a known label exists, else the simulator.
    #[default]
    Auto,
    /// Always the simulator (and simulated I2C, SPI and PWM).
    Simulator,
    /// Always the character device and the Pi's I2C, SPI and PWM; an error where no chip
    /// is found.
    Cdev,
}

/// The hardware helper's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HardwareConfig {
    /// `auto` (default), `simulator` or `cdev`.
    pub backend: BackendChoice,
    /// Where the per-function socket directories are made (default `<run_dir>/hw`, i.e.
    /// `/run/bramble/hw`).
    pub socket_dir: Option<PathBuf>,
    /// The kernel's 1-Wire devices (default `/sys/bus/w1/devices`).
    pub w1_dir: PathBuf,
    /// Labels of the GPIO chips whose lines functions may use, in order of preference
    /// (default `pinctrl-rp1`, `pinctrl-bcm2711`, `pinctrl-bcm2835`).
    pub chip_labels: Vec<String>,
    /// The simulator's lines (default `GPIO0`..`GPIO27`).
    pub sim_lines: Vec<String>,
    /// The simulator's I2C devices (default: a BME280 at `1:0x76`).
    pub sim_i2c: Vec<SimI2cDevice>,
    /// Pairs of simulated lines wired together, like a jumper wire between two pins: an
    /// output on one drives the other (default: none). See [`sim`].
    pub sim_jumpers: Vec<[String; 2]>,
}

impl Default for HardwareConfig {
    fn default() -> Self {
        HardwareConfig {
            backend: BackendChoice::Auto,
            socket_dir: None,
            w1_dir: PathBuf::from("/sys/bus/w1/devices"),
            chip_labels: ["pinctrl-rp1", "pinctrl-bcm2711", "pinctrl-bcm2835"]
                .map(String::from)
                .to_vec(),
            sim_lines: sim::default_lines(),
            sim_i2c: vec![SimI2cDevice::bme280()],
            sim_jumpers: Vec::new(),
        }
    }
}
