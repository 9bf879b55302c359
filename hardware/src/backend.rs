//! The backend traits, the edge event record and the event path shared by every backend.
//!
//! Backends deal in **physical** levels only (1 = the wire is high): lines are always
//! requested active-high, and `active-low` is applied per function by the broker, so that
//! functions with different `active-low` settings can share one input.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use nix::time::{ClockId, clock_gettime};
use serde::Serialize;
use tokio::sync::broadcast;

use crate::ErrorKind;
use crate::grants::Bias;

/// How many events a slow watcher may fall behind before it misses some (the gap then
/// shows in the sequence numbers).
pub const EVENT_BUFFER: usize = 256;

/// The kind of edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Edge {
    /// 0 → 1.
    Rising,
    /// 1 → 0.
    Falling,
}

impl Edge {
    /// The level after this edge.
    pub fn level(self) -> u8 {
        match self {
            Edge::Rising => 1,
            Edge::Falling => 0,
        }
    }

    /// The opposite edge.
    pub fn inverted(self) -> Edge {
        match self {
            Edge::Rising => Edge::Falling,
            Edge::Falling => Edge::Rising,
        }
    }
}

/// One edge on a line, as delivered to watchers (one NDJSON line of a watch stream).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EdgeEvent {
    /// The line name.
    pub line: String,
    /// Rising or falling.
    pub edge: Edge,
    /// The level after the edge.
    pub level: u8,
    /// When, in nanoseconds of `CLOCK_MONOTONIC` (the kernel's timestamp on real lines).
    pub timestamp_ns: u64,
    /// Node-wide sequence number of the events of the hardware helper (all lines), from 1.
    pub seqno: u64,
    /// Sequence number of edges on this line (the kernel's, on real lines), from 1. A gap
    /// means edges were not delivered: dropped by a slow watcher or by the kernel's buffer.
    /// On real lines the numbering starts again at 1 each time the line is requested.
    pub line_seqno: u64,
    /// Which request of the line numbered `line_seqno` (a new number each time a real line
    /// is requested; 0 where the numbering never restarts: the simulator). Not sent to
    /// functions.
    #[serde(skip)]
    pub request: u64,
}

impl EdgeEvent {
    /// The event as a function with `active-low` sees it.
    pub fn logical(mut self, active_low: bool) -> EdgeEvent {
        if active_low {
            self.edge = self.edge.inverted();
            self.level ^= 1;
        }
        self
    }
}

/// The event path: backends emit edges here; watchers subscribe per line, or to every line
/// (the dashboard's hardware page).
#[derive(Debug, Default)]
pub struct EventBus {
    seqno: AtomicU64,
    channels: Mutex<HashMap<String, broadcast::Sender<EdgeEvent>>>,
    /// Every line's edges; made by the first [`EventBus::subscribe_all`], so a node whose
    /// dashboard never shows its hardware keeps no buffer for it.
    all: Mutex<Option<broadcast::Sender<EdgeEvent>>>,
}

impl EventBus {
    /// Publishes an edge of `line`, numbering it node-wide; `line_seqno` is numbered by the
    /// line's request `request` (see [`EdgeEvent::request`]).
    pub fn emit(&self, line: &str, edge: Edge, timestamp_ns: u64, line_seqno: u64, request: u64) {
        let seqno = self.seqno.fetch_add(1, Ordering::Relaxed) + 1;
        let event = || EdgeEvent {
            line: line.to_owned(),
            edge,
            level: edge.level(),
            timestamp_ns,
            seqno,
            line_seqno,
            request,
        };
        {
            let channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(sender) = channels.get(line) {
                // No receiver is fine: nobody watches right now.
                let _ = sender.send(event());
            }
        }
        let all = self.all.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sender) = all.as_ref().filter(|s| s.receiver_count() > 0) {
            let _ = sender.send(event());
        }
    }

    /// A receiver of the edges of every line from now on.
    pub fn subscribe_all(&self) -> broadcast::Receiver<EdgeEvent> {
        let mut all = self.all.lock().unwrap_or_else(PoisonError::into_inner);
        all.get_or_insert_with(|| broadcast::channel(EVENT_BUFFER).0)
            .subscribe()
    }

    /// A receiver of the edges of `line` from now on. The channel lives as long as the bus,
    /// so a receiver keeps working across releases and re-requests of the line.
    pub fn subscribe(&self, line: &str) -> broadcast::Receiver<EdgeEvent> {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        channels
            .entry(line.to_owned())
            .or_insert_with(|| broadcast::channel(EVENT_BUFFER).0)
            .subscribe()
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of the kernel's GPIO event timestamps (0 in
/// the impossible case that Linux cannot read it).
pub fn monotonic_ns() -> u64 {
    let Ok(now) = clock_gettime(ClockId::CLOCK_MONOTONIC) else {
        return 0;
    };
    let secs = u64::try_from(now.tv_sec()).unwrap_or(0);
    let nanos = u64::try_from(now.tv_nsec()).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

/// How an input is requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InputConfig {
    /// Bias (`None` = as it is).
    pub bias: Option<Bias>,
    /// Debounce period.
    pub debounce: Option<Duration>,
}

/// A backend failure.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// No such line.
    #[error("no GPIO line named {0} on this node")]
    UnknownLine(String),
    /// The line or device is in use (by this node or by another program).
    #[error("{0}")]
    Busy(String),
    /// Not possible with this backend or in this state.
    #[error("{0}")]
    Unsupported(String),
    /// The request itself is wrong (bad level, too much data).
    #[error("{0}")]
    Invalid(String),
    /// No such I2C bus.
    #[error("I2C bus {0} does not exist on this node (/dev/i2c-{0}; is I2C enabled?)")]
    NoBus(u8),
    /// No such SPI device or PWM channel on this node (the message says how to enable it).
    #[error("{0}")]
    NotFound(String),
    /// Nothing acknowledged the address (the kernel's ENXIO or EREMOTEIO).
    #[error("no I2C device answered at {bus}:{addr:#04x}")]
    NoDevice {
        /// The bus.
        bus: u8,
        /// The address.
        addr: u16,
    },
    /// An I/O error from the kernel or the device.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl BackendError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            BackendError::UnknownLine(_) | BackendError::NoBus(_) | BackendError::NotFound(_) => {
                ErrorKind::NotFound
            }
            BackendError::Busy(_) | BackendError::Unsupported(_) => ErrorKind::Conflict,
            BackendError::Invalid(_) => ErrorKind::Invalid,
            BackendError::NoDevice { .. } | BackendError::Io { .. } => ErrorKind::Device,
        }
    }
}

/// A requested line. Dropping the last reference releases it.
pub trait LineHandle: Send + Sync {
    /// The physical level.
    fn read(&self) -> Result<u8, BackendError>;
    /// Sets the physical level (outputs only).
    fn write(&self, level: u8) -> Result<(), BackendError>;
}

/// GPIO lines: the kernel's character device, or the simulator.
pub trait GpioBackend: Send + Sync {
    /// `simulator` or `gpiocdev`.
    fn name(&self) -> &'static str;
    /// Every line's name, in the backend's order.
    fn line_names(&self) -> Vec<String>;
    /// Whether a line of this name exists.
    fn has_line(&self, line: &str) -> bool;
    /// Requests an input with edge detection on both edges; its edges go to the event bus
    /// the backend was made with.
    fn request_input(
        &self,
        line: &str,
        config: InputConfig,
    ) -> Result<Box<dyn LineHandle>, BackendError>;
    /// Requests an output, driven at `level` from the start.
    fn request_output(&self, line: &str, level: u8) -> Result<Box<dyn LineHandle>, BackendError>;
    /// The physical level of a line nobody requested, where the backend can know it
    /// without requesting the line (the simulator).
    fn peek(&self, _line: &str) -> Option<u8> {
        None
    }
    /// Whether the edges of lines nobody requested reach the event bus (the simulator).
    fn events_for_unrequested_lines(&self) -> bool {
        false
    }
    /// Drives an input from outside (the simulator only).
    fn simulate(&self, _line: &str, _level: u8) -> Result<(), BackendError> {
        Err(BackendError::Unsupported(format!(
            "the {} backend drives real pins: only simulated lines can be set from the \
             admin API",
            self.name()
        )))
    }
}

/// I2C buses. Blocking: call it off the async threads.
pub trait I2cBackend: Send + Sync {
    /// One transaction with the device at `bus:addr`: writes `write` (if not empty), then
    /// reads `read_len` bytes (if not 0) after a repeated start.
    fn transfer(
        &self,
        bus: u8,
        addr: u16,
        write: &[u8],
        read_len: usize,
    ) -> Result<Vec<u8>, BackendError>;
}

/// Most bytes one I2C transfer may write, and most it may read.
pub const MAX_I2C_TRANSFER: usize = 4096;

/// Checks an I2C transfer before any device is opened: at most [`MAX_I2C_TRANSFER`] bytes
/// written and at most as many read.
pub fn check_i2c_transfer(write_len: usize, read_len: usize) -> Result<(), BackendError> {
    if write_len > MAX_I2C_TRANSFER || read_len > MAX_I2C_TRANSFER {
        return Err(BackendError::Invalid(format!(
            "an I2C transfer is at most {MAX_I2C_TRANSFER} bytes each way"
        )));
    }
    Ok(())
}

/// Most bytes one SPI transfer may write (and so read).
pub const MAX_SPI_TRANSFER: usize = 4096;
/// Slowest SPI clock accepted, in Hz.
pub const MIN_SPI_SPEED_HZ: u32 = 1_000;
/// Fastest SPI clock accepted, in Hz (the kernel rounds down to what the bus can do).
pub const MAX_SPI_SPEED_HZ: u32 = 125_000_000;
/// The SPI clock when a request gives none, in Hz.
pub const DEFAULT_SPI_SPEED_HZ: u32 = 1_000_000;
/// Shortest PWM period accepted, in nanoseconds (1 µs).
pub const MIN_PWM_PERIOD_NS: u64 = 1_000;
/// Longest PWM period accepted, in nanoseconds (1 s).
pub const MAX_PWM_PERIOD_NS: u64 = 1_000_000_000;

/// Checks an SPI transfer before any device is opened: at most [`MAX_SPI_TRANSFER`] bytes,
/// a clock in [`MIN_SPI_SPEED_HZ`]..=[`MAX_SPI_SPEED_HZ`], mode 0 to 3.
pub fn check_spi_transfer(len: usize, speed_hz: u32, mode: u8) -> Result<(), BackendError> {
    if len > MAX_SPI_TRANSFER {
        return Err(BackendError::Invalid(format!(
            "an SPI transfer is at most {MAX_SPI_TRANSFER} bytes ({len} given)"
        )));
    }
    if !(MIN_SPI_SPEED_HZ..=MAX_SPI_SPEED_HZ).contains(&speed_hz) {
        return Err(BackendError::Invalid(format!(
            "SPI speed_hz {speed_hz} is outside {MIN_SPI_SPEED_HZ}..={MAX_SPI_SPEED_HZ} \
             (1 kHz to 125 MHz)"
        )));
    }
    if mode > 3 {
        return Err(BackendError::Invalid(format!(
            "SPI mode {mode} is not 0, 1, 2 or 3"
        )));
    }
    Ok(())
}

/// Checks PWM settings before any channel is touched: a period in
/// [`MIN_PWM_PERIOD_NS`]..=[`MAX_PWM_PERIOD_NS`] and a duty no longer than the period.
pub fn check_pwm(period_ns: u64, duty_ns: u64) -> Result<(), BackendError> {
    if !(MIN_PWM_PERIOD_NS..=MAX_PWM_PERIOD_NS).contains(&period_ns) {
        return Err(BackendError::Invalid(format!(
            "PWM period_ns {period_ns} is outside {MIN_PWM_PERIOD_NS}..={MAX_PWM_PERIOD_NS} \
             (1 µs to 1 s)"
        )));
    }
    if duty_ns > period_ns {
        return Err(BackendError::Invalid(format!(
            "PWM duty_ns {duty_ns} is longer than period_ns {period_ns}"
        )));
    }
    Ok(())
}

/// Checks that `channel` is one of the PWM channels bramble grants (0 and 1).
pub fn check_pwm_channel(channel: u8) -> Result<(), BackendError> {
    if channel > super::grants::MAX_PWM_CHANNEL {
        return Err(BackendError::NotFound(format!(
            "no PWM channel {channel}: the channels are 0 and 1"
        )));
    }
    Ok(())
}

/// SPI buses. Blocking: call it off the async threads.
pub trait SpiBackend: Send + Sync {
    /// One full-duplex transfer with the device on `bus` selected by chip select `cs`:
    /// writes `write` while reading as many bytes, at `speed_hz` in SPI `mode` (0 to 3).
    fn transfer(
        &self,
        bus: u8,
        cs: u8,
        write: &[u8],
        speed_hz: u32,
        mode: u8,
    ) -> Result<Vec<u8>, BackendError>;
}

/// The state of a PWM channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct PwmState {
    /// The period, in nanoseconds.
    pub period_ns: u64,
    /// How long the output is high in each period, in nanoseconds.
    pub duty_ns: u64,
    /// Whether the channel is running.
    pub enabled: bool,
}

/// PWM channels. Blocking: call it off the async threads.
pub trait PwmBackend: Send + Sync {
    /// Sets `channel`'s period and duty and enables or disables it.
    fn set(
        &self,
        channel: u8,
        period_ns: u64,
        duty_ns: u64,
        enabled: bool,
    ) -> Result<PwmState, BackendError>;
    /// The state of `channel`.
    fn get(&self, channel: u8) -> Result<PwmState, BackendError>;
    /// Stops `channel` (its safe state), keeping period and duty; nothing to do for a
    /// channel never used.
    fn disable(&self, channel: u8) -> Result<(), BackendError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn i2c_checks() {
        check_i2c_transfer(MAX_I2C_TRANSFER, MAX_I2C_TRANSFER).unwrap();
        check_i2c_transfer(0, 0).unwrap();
        for (write, read) in [(MAX_I2C_TRANSFER + 1, 0), (0, MAX_I2C_TRANSFER + 1)] {
            let e = check_i2c_transfer(write, read).unwrap_err();
            assert!(matches!(e, BackendError::Invalid(_)), "{e}");
            assert_eq!(
                e.to_string(),
                "an I2C transfer is at most 4096 bytes each way"
            );
        }
    }

    #[test]
    fn io_errors_say_what_failed_once_and_keep_the_cause() {
        let e = BackendError::Io {
            context: "I2C 1:0x76: write".to_owned(),
            source: std::io::Error::from_raw_os_error(libc::EIO),
        };
        assert_eq!(e.to_string(), "I2C 1:0x76: write");
        assert_eq!(
            bramble_base::error_chain(&e),
            format!(
                "I2C 1:0x76: write: {}",
                std::io::Error::from_raw_os_error(libc::EIO)
            )
        );
        assert_eq!(e.kind(), ErrorKind::Device);
    }

    #[test]
    fn spi_and_pwm_checks() {
        check_spi_transfer(MAX_SPI_TRANSFER, DEFAULT_SPI_SPEED_HZ, 3).unwrap();
        check_spi_transfer(0, MIN_SPI_SPEED_HZ, 0).unwrap();
        for (len, speed, mode, what) in [
            (
                MAX_SPI_TRANSFER + 1,
                DEFAULT_SPI_SPEED_HZ,
                0,
                "at most 4096 bytes",
            ),
            (1, MIN_SPI_SPEED_HZ - 1, 0, "speed_hz 999"),
            (1, MAX_SPI_SPEED_HZ + 1, 0, "125 MHz"),
            (1, DEFAULT_SPI_SPEED_HZ, 4, "mode 4"),
        ] {
            let e = check_spi_transfer(len, speed, mode).unwrap_err();
            assert!(matches!(e, BackendError::Invalid(_)), "{e}");
            assert!(e.to_string().contains(what), "{e}");
        }
        check_pwm(MIN_PWM_PERIOD_NS, MIN_PWM_PERIOD_NS).unwrap();
        check_pwm(MAX_PWM_PERIOD_NS, 0).unwrap();
        for (period, duty, what) in [
            (0, 0, "period_ns 0"),
            (MAX_PWM_PERIOD_NS + 1, 0, "outside"),
            (20_000, 20_001, "longer than period_ns 20000"),
        ] {
            let e = check_pwm(period, duty).unwrap_err();
            assert!(matches!(e, BackendError::Invalid(_)), "{e}");
            assert!(e.to_string().contains(what), "{e}");
        }
    }

    #[test]
    fn bus_numbers_events_and_fans_out_per_line() {
        let bus = EventBus::default();
        bus.emit("GPIO1", Edge::Rising, 5, 1, 0); // nobody watches: numbered, not delivered
        let mut a = bus.subscribe("GPIO17");
        let mut b = bus.subscribe("GPIO17");
        let mut other = bus.subscribe("GPIO27");
        bus.emit("GPIO17", Edge::Rising, 10, 1, 7);
        bus.emit("GPIO17", Edge::Falling, 20, 2, 7);
        for rx in [&mut a, &mut b] {
            let e1 = rx.try_recv().unwrap();
            let e2 = rx.try_recv().unwrap();
            assert_eq!(
                (e1.edge, e1.level, e1.seqno, e1.line_seqno),
                (Edge::Rising, 1, 2, 1)
            );
            assert_eq!(
                (e2.edge, e2.level, e2.seqno, e2.timestamp_ns, e2.request),
                (Edge::Falling, 0, 3, 20, 7)
            );
            // The request is bramble's own: functions never see it.
            let json = serde_json::to_value(&e2).unwrap();
            assert!(json.get("request").is_none(), "{json}");
            assert_eq!(json["line_seqno"], 2);
        }
        assert!(other.try_recv().is_err());
        // Every line's edges, from the subscription on.
        let mut all = bus.subscribe_all();
        bus.emit("GPIO27", Edge::Rising, 30, 1, 0);
        bus.emit("GPIO4", Edge::Falling, 40, 1, 0);
        let lines: Vec<String> = [all.try_recv().unwrap(), all.try_recv().unwrap()]
            .into_iter()
            .map(|e| e.line)
            .collect();
        assert_eq!(lines, ["GPIO27", "GPIO4"]);
        assert_eq!(other.try_recv().unwrap().seqno, 4);
        let e = EdgeEvent {
            line: "X".into(),
            edge: Edge::Rising,
            level: 1,
            timestamp_ns: 1,
            seqno: 1,
            line_seqno: 1,
            request: 0,
        };
        let l = e.clone().logical(true);
        assert_eq!((l.edge, l.level), (Edge::Falling, 0));
        assert_eq!(e.clone().logical(false), e);
    }

    #[test]
    fn monotonic_clock_moves_forward() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(a > 0 && b >= a);
    }
}
