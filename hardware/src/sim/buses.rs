//! The simulator's buses (see [the simulator](super)).
//!
//! **I2C devices** are register files (256 bytes) at `(bus, address)`: a write's first byte
//! sets the register pointer and the following bytes are written from there; a read returns
//! bytes from the pointer; both auto-increment (the BME280/most-sensor convention). The
//! default device is a BME280 at `1:0x76` whose chip-id register `0xD0` reads `0x60`. An
//! address without a device fails like the kernel's ENXIO; a bus without devices (other than
//! bus 1) does not exist.
//!
//! **SPI** is a loopback on every bus and chip select, as if MISO were wired to MOSI: a
//! transfer reads back exactly the bytes it writes (speed and mode are checked, then
//! ignored).
//!
//! **PWM** channels 0 and 1 keep the period, duty and enabled flag last set (all 0 and
//! disabled at start); nothing is generated.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};

use crate::backend::{self, BackendError, I2cBackend, PwmBackend, PwmState, SpiBackend};

/// A simulated I2C device: a register file at `bus:address`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimI2cDevice {
    /// The bus number.
    pub bus: u8,
    /// The 7-bit address.
    pub address: u16,
    /// Initial register values as `[register, value]` pairs (all others are 0).
    #[serde(default)]
    pub registers: Vec<[u8; 2]>,
}

impl SimI2cDevice {
    /// A BME280 at `1:0x76`: the chip-id register `0xD0` reads `0x60`.
    pub fn bme280() -> SimI2cDevice {
        SimI2cDevice {
            bus: 1,
            address: 0x76,
            registers: vec![[0xD0, 0x60]],
        }
    }
}

/// The simulated I2C buses.
pub struct SimI2c {
    buses: BTreeSet<u8>,
    devices: Mutex<HashMap<(u8, u16), RegisterFile>>,
}

struct RegisterFile {
    registers: [u8; 256],
    pointer: u8,
}

impl SimI2c {
    /// Buses with these devices; bus 1 always exists.
    pub fn new(devices: &[SimI2cDevice]) -> SimI2c {
        let mut buses = BTreeSet::from([1]);
        let mut map = HashMap::new();
        for device in devices {
            buses.insert(device.bus);
            let mut file = RegisterFile {
                registers: [0; 256],
                pointer: 0,
            };
            for [register, value] in &device.registers {
                file.registers[usize::from(*register)] = *value;
            }
            map.insert((device.bus, device.address), file);
        }
        SimI2c {
            buses,
            devices: Mutex::new(map),
        }
    }
}

impl I2cBackend for SimI2c {
    fn transfer(
        &self,
        bus: u8,
        addr: u16,
        write: &[u8],
        read_len: usize,
    ) -> Result<Vec<u8>, BackendError> {
        backend::check_i2c_transfer(write.len(), read_len)?;
        if !self.buses.contains(&bus) {
            return Err(BackendError::NoBus(bus));
        }
        let mut devices = self.devices.lock().unwrap_or_else(PoisonError::into_inner);
        let device = devices
            .get_mut(&(bus, addr))
            .ok_or(BackendError::NoDevice { bus, addr })?;
        if let Some((pointer, data)) = write.split_first() {
            device.pointer = *pointer;
            for byte in data {
                device.registers[usize::from(device.pointer)] = *byte;
                device.pointer = device.pointer.wrapping_add(1);
            }
        }
        let mut out = Vec::with_capacity(read_len);
        for _ in 0..read_len {
            out.push(device.registers[usize::from(device.pointer)]);
            device.pointer = device.pointer.wrapping_add(1);
        }
        Ok(out)
    }
}

/// The simulated SPI buses: a loopback (MISO wired to MOSI) on every bus and chip select.
#[derive(Debug, Default)]
pub struct SimSpi;

impl SpiBackend for SimSpi {
    fn transfer(
        &self,
        _bus: u8,
        _cs: u8,
        write: &[u8],
        speed_hz: u32,
        mode: u8,
    ) -> Result<Vec<u8>, BackendError> {
        backend::check_spi_transfer(write.len(), speed_hz, mode)?;
        Ok(write.to_vec())
    }
}

/// The simulated PWM channels: their state, kept.
#[derive(Debug, Default)]
pub struct SimPwm {
    channels: Mutex<HashMap<u8, PwmState>>,
}

impl SimPwm {
    fn channels(&self, channel: u8) -> Result<MutexGuard<'_, HashMap<u8, PwmState>>, BackendError> {
        backend::check_pwm_channel(channel)?;
        Ok(self.channels.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl PwmBackend for SimPwm {
    fn set(
        &self,
        channel: u8,
        period_ns: u64,
        duty_ns: u64,
        enabled: bool,
    ) -> Result<PwmState, BackendError> {
        backend::check_pwm(period_ns, duty_ns)?;
        let state = PwmState {
            period_ns,
            duty_ns,
            enabled,
        };
        self.channels(channel)?.insert(channel, state);
        Ok(state)
    }

    fn get(&self, channel: u8) -> Result<PwmState, BackendError> {
        Ok(self
            .channels(channel)?
            .get(&channel)
            .copied()
            .unwrap_or_default())
    }

    fn disable(&self, channel: u8) -> Result<(), BackendError> {
        if let Some(state) = self.channels(channel)?.get_mut(&channel) {
            state.enabled = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn i2c_register_file() {
        let i2c = SimI2c::new(&[
            SimI2cDevice::bme280(),
            SimI2cDevice {
                bus: 3,
                address: 0x48,
                registers: vec![[0, 0x12], [1, 0x34]],
            },
        ]);
        // write-read: the chip id.
        assert_eq!(i2c.transfer(1, 0x76, &[0xD0], 1).unwrap(), [0x60]);
        // write registers, then read them back (auto-increment).
        assert!(
            i2c.transfer(1, 0x76, &[0xF4, 0x27, 0xA0], 0)
                .unwrap()
                .is_empty()
        );
        assert_eq!(i2c.transfer(1, 0x76, &[0xF4], 2).unwrap(), [0x27, 0xA0]);
        // read-only continues from the pointer.
        assert_eq!(i2c.transfer(3, 0x48, &[], 2).unwrap(), [0x12, 0x34]);
        // the pointer wraps at 0xFF.
        assert_eq!(i2c.transfer(3, 0x48, &[0xFF], 2).unwrap(), [0x00, 0x12]);
        assert!(matches!(
            i2c.transfer(1, 0x77, &[0xD0], 1),
            Err(BackendError::NoDevice { bus: 1, addr: 0x77 })
        ));
        assert!(matches!(
            i2c.transfer(2, 0x76, &[], 1),
            Err(BackendError::NoBus(2))
        ));
        assert!(matches!(
            i2c.transfer(1, 0x76, &[], backend::MAX_I2C_TRANSFER + 1),
            Err(BackendError::Invalid(_))
        ));
        let e = i2c.transfer(1, 0x77, &[], 1).unwrap_err();
        assert_eq!(e.to_string(), "no I2C device answered at 1:0x77");
    }

    #[test]
    fn spi_is_a_loopback() {
        let spi = SimSpi;
        for (bus, cs) in [(0, 0), (0, 1), (6, 2)] {
            assert_eq!(
                spi.transfer(bus, cs, &[0x9F, 0, 0], 1_000_000, 0).unwrap(),
                [0x9F, 0, 0]
            );
        }
        assert!(spi.transfer(0, 0, &[], 1_000_000, 3).unwrap().is_empty());
        assert!(matches!(
            spi.transfer(0, 0, &[1], 1_000_000, 4),
            Err(BackendError::Invalid(_))
        ));
    }

    #[test]
    fn pwm_keeps_its_state() {
        let pwm = SimPwm::default();
        assert_eq!(pwm.get(0).unwrap(), PwmState::default());
        let on = pwm.set(0, 20_000_000, 1_500_000, true).unwrap();
        assert_eq!(pwm.get(0).unwrap(), on);
        assert_eq!(pwm.get(1).unwrap(), PwmState::default());
        pwm.disable(0).unwrap();
        assert_eq!(
            pwm.get(0).unwrap(),
            PwmState {
                enabled: false,
                ..on
            }
        );
        pwm.disable(1).unwrap();
        assert!(matches!(
            pwm.set(0, 1_000, 2_000, true),
            Err(BackendError::Invalid(_))
        ));
        assert!(matches!(pwm.get(2), Err(BackendError::NotFound(_))));
    }
}
