//! Raspberry Pi buses through `rppal` (0.22; retired upstream in July 2025, so it stays in
//! this one module):
//!
//! * **I2C** with `rppal::i2c::I2c` over the kernel's i2c-dev (`/dev/i2c-N`);
//! * **SPI** with `rppal::spi::Spi` over the kernel's spidev (`/dev/spidevB.C`; on a Pi,
//!   `dtparam=spi=on` in `config.txt`);
//! * **PWM** with `rppal::pwm::Pwm` over the kernel's PWM sysfs (`/sys/class/pwm`; on a Pi,
//!   `dtoverlay=pwm-2chan` in `config.txt`). rppal picks the pwmchip by Pi model, so PWM
//!   works on a Pi only; I2C and SPI need no model detection and open on any Linux machine.
//!
//! One open device per bus (SPI: per bus and chip select; PWM: per channel), opened on first
//! use and kept; a mutex per kind serializes transactions, because the slave address, the
//! clock and the mode are state of the open file. Untested against real devices here.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rppal::i2c::{Error as I2cError, I2c};
use rppal::pwm::{Channel, Error as PwmError, Polarity, Pwm};
use rppal::spi::{Bus, Error as SpiError, Mode, SlaveSelect, Spi};

use super::backend::{
    self, BackendError, I2cBackend, PwmBackend, PwmState, SpiBackend, check_pwm_channel,
};

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

/// An error of any other kind, with what was being done.
fn other_error(context: String, e: impl std::fmt::Display) -> BackendError {
    BackendError::Io {
        context,
        source: std::io::Error::other(e.to_string()),
    }
}

/// Whether opening a device failed because its device file does not exist.
fn is_not_found(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::NotFound
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
        other => other_error(format!("I2C {bus}:{addr:#04x}: {what}"), other),
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
        backend::check_i2c_transfer(write.len(), read_len)?;
        let mut buses = self.buses.lock().unwrap_or_else(PoisonError::into_inner);
        let i2c = match buses.entry(bus) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let opened = I2c::with_bus(bus).map_err(|err| match err {
                    I2cError::Io(io) if is_not_found(&io) => BackendError::NoBus(bus),
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

/// SPI on the node's spidev devices.
#[derive(Default)]
pub struct PiSpi {
    devices: Mutex<HashMap<(u8, u8), Spi>>,
}

impl PiSpi {
    /// No device is opened before it is used.
    pub fn new() -> PiSpi {
        PiSpi::default()
    }
}

fn spi_error(bus: u8, cs: u8, what: &str, e: SpiError) -> BackendError {
    let context = format!("SPI {bus}.{cs}: {what}");
    match e {
        SpiError::Io(io) if is_not_found(&io) => spi_not_found(bus, cs),
        SpiError::Io(io) if io.raw_os_error() == Some(libc::EBUSY) => {
            BackendError::Busy(format!("SPI {bus}.{cs} is in use (EBUSY)"))
        }
        SpiError::Io(io) => BackendError::Io {
            context,
            source: io,
        },
        SpiError::ClockSpeedNotSupported(hz) => BackendError::Invalid(format!(
            "SPI {bus}.{cs} does not support a clock of {hz} Hz"
        )),
        SpiError::ModeNotSupported(mode) => {
            BackendError::Unsupported(format!("SPI {bus}.{cs} does not support {mode}"))
        }
        other => other_error(context, other),
    }
}

fn spi_not_found(bus: u8, cs: u8) -> BackendError {
    BackendError::NotFound(format!(
        "SPI device {bus}.{cs} does not exist on this node (/dev/spidev{bus}.{cs}; is SPI \
         enabled? dtparam=spi=on in config.txt)"
    ))
}

fn spi_bus(bus: u8) -> Option<Bus> {
    Some(match bus {
        0 => Bus::Spi0,
        1 => Bus::Spi1,
        2 => Bus::Spi2,
        3 => Bus::Spi3,
        4 => Bus::Spi4,
        5 => Bus::Spi5,
        6 => Bus::Spi6,
        _ => return None,
    })
}

fn spi_cs(cs: u8) -> Option<SlaveSelect> {
    Some(match cs {
        0 => SlaveSelect::Ss0,
        1 => SlaveSelect::Ss1,
        2 => SlaveSelect::Ss2,
        _ => return None,
    })
}

fn spi_mode(mode: u8) -> Mode {
    match mode {
        0 => Mode::Mode0,
        1 => Mode::Mode1,
        2 => Mode::Mode2,
        _ => Mode::Mode3,
    }
}

impl SpiBackend for PiSpi {
    fn transfer(
        &self,
        bus: u8,
        cs: u8,
        write: &[u8],
        speed_hz: u32,
        mode: u8,
    ) -> Result<Vec<u8>, BackendError> {
        backend::check_spi_transfer(write.len(), speed_hz, mode)?;
        let (Some(rppal_bus), Some(rppal_cs)) = (spi_bus(bus), spi_cs(cs)) else {
            return Err(spi_not_found(bus, cs));
        };
        let mode = spi_mode(mode);
        let mut devices = self.devices.lock().unwrap_or_else(PoisonError::into_inner);
        let spi = match devices.entry((bus, cs)) {
            Entry::Occupied(e) => {
                let spi = e.into_mut();
                spi.set_clock_speed(speed_hz)
                    .map_err(|e| spi_error(bus, cs, "setting the clock", e))?;
                spi.set_mode(mode)
                    .map_err(|e| spi_error(bus, cs, "setting the mode", e))?;
                spi
            }
            Entry::Vacant(e) => e.insert(
                Spi::new(rppal_bus, rppal_cs, speed_hz, mode)
                    .map_err(|e| spi_error(bus, cs, "opening the device", e))?,
            ),
        };
        let mut read = vec![0u8; write.len()];
        if !write.is_empty() {
            let n = spi
                .transfer(&mut read, write)
                .map_err(|e| spi_error(bus, cs, "transfer", e))?;
            read.truncate(n);
        }
        Ok(read)
    }
}

/// PWM on the Pi's hardware PWM channels.
#[derive(Default)]
pub struct PiPwm {
    channels: Mutex<HashMap<u8, Pwm>>,
}

impl PiPwm {
    /// No channel is exported before it is used.
    pub fn new() -> PiPwm {
        PiPwm::default()
    }
}

fn pwm_error(channel: u8, what: &str, e: PwmError) -> BackendError {
    match e {
        PwmError::Io(io) if is_not_found(&io) => pwm_not_found(channel),
        PwmError::InvalidChannel => pwm_not_found(channel),
        PwmError::UnknownModel => BackendError::NotFound(format!(
            "PWM channel {channel}: PWM needs a Raspberry Pi that rppal recognises, and this \
             node is not one"
        )),
        PwmError::Io(io) => BackendError::Io {
            context: format!("PWM channel {channel}: {what}"),
            source: io,
        },
    }
}

fn pwm_not_found(channel: u8) -> BackendError {
    BackendError::NotFound(format!(
        "PWM channel {channel} does not exist on this node (no pwmchip in /sys/class/pwm; is \
         the PWM overlay enabled? dtoverlay=pwm-2chan in config.txt)"
    ))
}

fn pwm_channel(channel: u8) -> Result<Channel, BackendError> {
    check_pwm_channel(channel)?;
    Channel::try_from(channel).map_err(|e| pwm_error(channel, "choosing the channel", e))
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn read_state(channel: u8, pwm: &Pwm) -> Result<PwmState, BackendError> {
    let err = |e| pwm_error(channel, "reading the state", e);
    Ok(PwmState {
        period_ns: nanos(pwm.period().map_err(err)?),
        duty_ns: nanos(pwm.pulse_width().map_err(err)?),
        enabled: pwm.is_enabled().map_err(err)?,
    })
}

impl PwmBackend for PiPwm {
    fn set(
        &self,
        channel: u8,
        period_ns: u64,
        duty_ns: u64,
        enabled: bool,
    ) -> Result<PwmState, BackendError> {
        backend::check_pwm(period_ns, duty_ns)?;
        let rppal_channel = pwm_channel(channel)?;
        let (period, duty) = (
            Duration::from_nanos(period_ns),
            Duration::from_nanos(duty_ns),
        );
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        let pwm = match channels.entry(channel) {
            Entry::Vacant(e) => e.insert(
                Pwm::with_period(rppal_channel, period, duty, Polarity::Normal, enabled)
                    .map_err(|e| pwm_error(channel, "exporting the channel", e))?,
            ),
            Entry::Occupied(e) => {
                let pwm = e.into_mut();
                let err = |e| pwm_error(channel, "setting period and duty", e);
                // The kernel refuses a duty longer than the period at every step: shorten
                // the duty first when the period shrinks below it.
                if duty <= pwm.period().map_err(err)? {
                    pwm.set_pulse_width(duty).map_err(err)?;
                    pwm.set_period(period).map_err(err)?;
                } else {
                    pwm.set_period(period).map_err(err)?;
                    pwm.set_pulse_width(duty).map_err(err)?;
                }
                if enabled {
                    pwm.enable().map_err(err)?;
                } else {
                    pwm.disable().map_err(err)?;
                }
                pwm
            }
        };
        read_state(channel, pwm)
    }

    fn get(&self, channel: u8) -> Result<PwmState, BackendError> {
        let rppal_channel = pwm_channel(channel)?;
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        let pwm = match channels.entry(channel) {
            Entry::Occupied(e) => e.into_mut(),
            // Exported disabled: nothing of bramble's ran on it yet.
            Entry::Vacant(e) => e.insert(
                Pwm::new(rppal_channel)
                    .map_err(|e| pwm_error(channel, "exporting the channel", e))?,
            ),
        };
        read_state(channel, pwm)
    }

    fn disable(&self, channel: u8) -> Result<(), BackendError> {
        let channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        match channels.get(&channel) {
            Some(pwm) => pwm
                .disable()
                .map_err(|e| pwm_error(channel, "disabling the channel", e)),
            None => Ok(()),
        }
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
            i2c.transfer(1, 0x76, &[], backend::MAX_I2C_TRANSFER + 1),
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

    #[test]
    fn missing_spidev_is_not_found() {
        // No /dev/spidev* on a build machine.
        let spi = PiSpi::new();
        let e = spi.transfer(6, 2, &[0x9F], 1_000_000, 0).unwrap_err();
        assert!(matches!(e, BackendError::NotFound(_)), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("/dev/spidev6.2") && text.contains("dtparam=spi=on"),
            "{text}"
        );
        // Bad requests are refused before anything is opened.
        for (len, speed, mode) in [
            (backend::MAX_SPI_TRANSFER + 1, 1_000_000, 0),
            (1, 999, 0),
            (1, 1_000_000, 4),
        ] {
            assert!(matches!(
                spi.transfer(6, 2, &vec![0; len], speed, mode),
                Err(BackendError::Invalid(_))
            ));
        }
        assert!(spi.devices.lock().unwrap().is_empty());
        // A bus or chip select rppal has no name for.
        assert!(matches!(
            spi.transfer(7, 0, &[1], 1_000_000, 0),
            Err(BackendError::NotFound(_))
        ));
    }

    #[test]
    fn missing_pwm_is_not_found() {
        // Not a Pi, and no /sys/class/pwm here.
        let pwm = PiPwm::new();
        for e in [
            pwm.set(0, 20_000_000, 1_500_000, true).unwrap_err(),
            pwm.get(1).unwrap_err(),
        ] {
            assert!(matches!(e, BackendError::NotFound(_)), "{e}");
            assert!(e.to_string().starts_with("PWM channel"), "{e}");
        }
        assert!(matches!(pwm.get(2), Err(BackendError::NotFound(_))));
        assert!(matches!(
            pwm.set(0, 1_000, 2_000, true),
            Err(BackendError::Invalid(_))
        ));
        assert!(matches!(
            pwm.set(0, 0, 0, true),
            Err(BackendError::Invalid(_))
        ));
        // Nothing used, nothing to disable.
        pwm.disable(0).unwrap();
        // The errors a missing pwmchip gives name the overlay.
        let e = pwm_error(0, "x", PwmError::Io(std::io::ErrorKind::NotFound.into()));
        assert!(e.to_string().contains("dtoverlay=pwm-2chan"), "{e}");
        assert!(matches!(
            pwm_error(1, "x", PwmError::InvalidChannel),
            BackendError::NotFound(_)
        ));
    }
}
