//! Raspberry Pi buses through `rppal` (0.22; retired upstream in July 2025, so it stays in
//! this one module). Today: I2C, with `rppal::i2c::I2c` over the kernel's i2c-dev
//! (`/dev/i2c-N`), which needs no Pi model detection and so also builds and opens buses on
//! any Linux machine. SPI and PWM would go here too.
//!
//! One open bus per bus number, kept; a mutex per node serializes transactions, because the
//! slave address is state of the open file. Untested against real devices here.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use rppal::i2c::{Error as I2cError, I2c};

use super::backend::{BackendError, I2cBackend};
use super::sim::MAX_I2C_TRANSFER;

/// I2C on the node's buses.
#[derive(Default)]
pub struct PiI2c {
    buses: Mutex<HashMap<u8, I2c>>,
}

impl PiI2c {
    /// No bus is opened before it is used.
    pub fn new() -> PiI2c {
        PiI2c::default()
    }
}

fn io_error(bus: u8, addr: u16, what: &str, e: std::io::Error) -> BackendError {
    match e.raw_os_error() {
        Some(libc::ENXIO | libc::EREMOTEIO) => BackendError::NoDevice { bus, addr },
        Some(libc::EBUSY) => BackendError::Busy(format!(
            "I2C {bus}:{addr:#04x} is in use by a kernel driver (EBUSY)"
        )),
        _ => BackendError::Io {
            context: format!("I2C {bus}:{addr:#04x}: {what}"),
            source: e,
        },
    }
}

fn rppal_error(bus: u8, addr: u16, what: &str, e: I2cError) -> BackendError {
    match e {
        I2cError::Io(e) => io_error(bus, addr, what, e),
        I2cError::InvalidSlaveAddress(a) => {
            BackendError::Invalid(format!("{a:#04x} is not a valid I2C address"))
        }
        I2cError::FeatureNotSupported => {
            BackendError::Unsupported(format!("I2C bus {bus} does not support this transfer"))
        }
        other => BackendError::Io {
            context: format!("I2C {bus}:{addr:#04x}: {what}"),
            source: std::io::Error::other(other.to_string()),
        },
    }
}

impl I2cBackend for PiI2c {
    fn transfer(
        &self,
        bus: u8,
        addr: u16,
        write: &[u8],
        read_len: usize,
    ) -> Result<Vec<u8>, BackendError> {
        if write.len() > MAX_I2C_TRANSFER || read_len > MAX_I2C_TRANSFER {
            return Err(BackendError::Invalid(format!(
                "an I2C transfer is at most {MAX_I2C_TRANSFER} bytes each way"
            )));
        }
        let mut buses = self.buses.lock().unwrap_or_else(PoisonError::into_inner);
        let i2c = match buses.entry(bus) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let opened = I2c::with_bus(bus).map_err(|err| match err {
                    I2cError::Io(io) if io.kind() == std::io::ErrorKind::NotFound => {
                        BackendError::NoBus(bus)
                    }
                    other => rppal_error(bus, addr, "opening the bus", other),
                })?;
                e.insert(opened)
            }
        };
        i2c.set_slave_address(addr)
            .map_err(|e| rppal_error(bus, addr, "setting the address", e))?;
        let mut read = vec![0u8; read_len];
        match (write.is_empty(), read_len == 0) {
            (true, true) => {}
            (false, false) => i2c
                .write_read(write, &mut read)
                .map_err(|e| rppal_error(bus, addr, "write-read", e))?,
            (false, true) => {
                let n = i2c
                    .write(write)
                    .map_err(|e| rppal_error(bus, addr, "write", e))?;
                if n != write.len() {
                    return Err(BackendError::Io {
                        context: format!("I2C {bus}:{addr:#04x}: write"),
                        source: std::io::Error::other(format!(
                            "wrote {n} of {} bytes",
                            write.len()
                        )),
                    });
                }
            }
            (true, false) => {
                let n = i2c
                    .read(&mut read)
                    .map_err(|e| rppal_error(bus, addr, "read", e))?;
                read.truncate(n);
            }
        }
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_bus_is_no_bus() {
        // No /dev/i2c-250 on a build machine (nor on a Pi).
        let i2c = PiI2c::new();
        assert!(matches!(
            i2c.transfer(250, 0x76, &[0xD0], 1),
            Err(BackendError::NoBus(250))
        ));
        assert!(matches!(
            i2c.transfer(1, 0x76, &[], MAX_I2C_TRANSFER + 1),
            Err(BackendError::Invalid(_))
        ));
    }

    #[test]
    fn errno_mapping() {
        let e = io_error(1, 0x76, "x", std::io::Error::from_raw_os_error(libc::ENXIO));
        assert!(matches!(e, BackendError::NoDevice { bus: 1, addr: 0x76 }));
        let e = io_error(1, 0x76, "x", std::io::Error::from_raw_os_error(libc::EBUSY));
        assert!(matches!(e, BackendError::Busy(_)));
    }
}
