//! What a function may touch: grants parsed from its annotations, and the conflict rules
//! between functions.
//!
//! # Annotation keys
//!
//! | key               | value                                                              |
//! |-------------------|--------------------------------------------------------------------|
//! | `bramble.gpio`    | comma-separated `LINE:in[:option...]` or `LINE:out[:option...]`    |
//! | `bramble.i2c`     | comma- or space-separated `BUS:ADDR[+ADDR...]`                     |
//! | `bramble.sensors` | comma- or space-separated sensor ids `KIND:ID`                     |
//! | `bramble.spi`     | comma- or space-separated `BUS.CS`                                 |
//! | `bramble.pwm`     | comma- or space-separated PWM channels `0`, `1`                    |
//!
//! Example: `bramble.gpio=GPIO17:in:pull-up:debounce=20ms:active-low,GPIO27:out:safe=0`,
//! `bramble.i2c=1:0x76+0x77`, `bramble.sensors=w1:28-0316a27966ff`, `bramble.spi=0.0,0.1`,
//! `bramble.pwm=0`.
//!
//! **`LINE`** is the line name as the kernel names it (`GPIO17` on Raspberry Pi OS for BCM
//! GPIO 17, on every Pi including the Pi 5), never a chip number or offset: 1 to 31 printable
//! ASCII characters, no `/`, `:`, `,` or whitespace. `bramble gpio get` lists the node's lines.
//!
//! **GPIO options** (each at most once):
//!
//! | option                                  | applies to | meaning                                            |
//! |-----------------------------------------|------------|----------------------------------------------------|
//! | `pull-up`, `pull-down`, `bias-disabled` | `in`       | the line's bias (default: left as it is)           |
//! | `debounce=DURATION`                     | `in`       | kernel debounce, e.g. `debounce=20ms` (at most 10s; 0 = off) |
//! | `active-low`                            | both       | the function sees 1 when the wire is low           |
//! | `initial=0\|1`                          | `out`      | logical level set when the line is requested (default 0) |
//! | `safe=0\|1`                             | `out`      | logical level set when the function stops, crashes or is deleted (default 0) |
//!
//! Levels a function reads and writes are *logical*: with `active-low`, `initial=0`,
//! `safe=0` and a written 0 mean the wire is high. The admin API and `bramble gpio` show
//! physical (wire) levels.
//!
//! **I2C**: `BUS` is the Linux bus number (`/dev/i2c-BUS`, 0 to 255); each `ADDR` is a 7-bit
//! device address, `0x08` to `0x77`, in hex (`0x76`) or decimal (`118`). The same bus may
//! appear several times; the addresses are merged.
//!
//! **Sensors**: ids are `KIND:ID`; the kinds are in [`super::sensors`]. Today: `w1:SERIAL`, a
//! 1-Wire temperature sensor as the kernel names it under `/sys/bus/w1/devices`
//! (`w1:28-0316a27966ff`).
//!
//! **SPI**: `BUS.CS` is the kernel's spidev device `/dev/spidevBUS.CS`: `BUS` 0 to 6 and the
//! chip select `CS` 0 to 2 (rppal's `Bus` and `SlaveSelect`), e.g. `0.0` for SPI0 CE0. On a
//! Pi, `dtparam=spi=on` in `config.txt` gives `0.0` and `0.1`.
//!
//! **PWM**: channel `0` or `1`, the Pi's hardware PWM channels (rppal's `Pwm0`, `Pwm1`),
//! enabled with `dtoverlay=pwm-2chan` in `config.txt`. When the function stops, crashes or
//! is deleted its channels are disabled (their safe state).
//!
//! # Sharing between functions
//!
//! An output line belongs to one function: a second function asking for it (as input or
//! output) is refused, and so is an output request for a line another function reads.
//! Inputs may be shared, provided every function asks for the same bias and debounce (the
//! kernel line is requested once); `active-low` may differ, it is applied per function.
//! A PWM channel belongs to one function too. I2C addresses, SPI devices and sensors may be
//! shared.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod parse;

pub use parse::{
    parse, parse_i2c_address, parse_line, parse_pwm_channel, parse_spi_bus, parse_spi_cs,
    validate_line_name,
};

/// The annotation granting GPIO lines.
pub const GPIO_KEY: &str = "bramble.gpio";
/// The annotation granting I2C addresses.
pub const I2C_KEY: &str = "bramble.i2c";
/// The annotation granting sensors.
pub const SENSORS_KEY: &str = "bramble.sensors";
/// The annotation granting SPI devices.
pub const SPI_KEY: &str = "bramble.spi";
/// The annotation granting PWM channels.
pub const PWM_KEY: &str = "bramble.pwm";

/// Highest SPI bus number (rppal's `Bus::Spi6`).
pub const MAX_SPI_BUS: u8 = 6;
/// Highest SPI chip select (`CE2`).
pub const MAX_SPI_CS: u8 = 2;
/// Highest PWM channel (rppal's `Channel::Pwm1`).
pub const MAX_PWM_CHANNEL: u8 = 1;

/// Longest line name: the kernel's `GPIO_MAX_NAME_SIZE` (32) less the NUL.
pub const MAX_LINE_NAME: usize = 31;
/// Longest debounce period accepted.
pub const MAX_DEBOUNCE: Duration = Duration::from_secs(10);

/// A bad annotation: the key, the item that is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {key}: {item:?}: {reason}")]
pub struct GrantError {
    /// The annotation key (`bramble.gpio`, `bramble.i2c`, `bramble.sensors`, `bramble.spi`
    /// or `bramble.pwm`).
    pub key: &'static str,
    /// The offending item, as written.
    pub item: String,
    /// What is wrong with it.
    pub reason: String,
}

/// The direction a line is granted (and requested) in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    /// An input: read and watch.
    #[serde(rename = "in")]
    In,
    /// An output: read and set.
    #[serde(rename = "out")]
    Out,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::In => "in",
            Direction::Out => "out",
        })
    }
}

/// The bias of an input line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Bias {
    /// Pulled up: reads 1 when nothing drives it.
    #[serde(rename = "pull-up")]
    PullUp,
    /// Pulled down: reads 0 when nothing drives it.
    #[serde(rename = "pull-down")]
    PullDown,
    /// No pull: floats when nothing drives it.
    #[serde(rename = "bias-disabled")]
    Disabled,
}

impl fmt::Display for Bias {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Bias::PullUp => "pull-up",
            Bias::PullDown => "pull-down",
            Bias::Disabled => "bias-disabled",
        })
    }
}

/// One granted GPIO line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineGrant {
    /// Input or output.
    pub direction: Direction,
    /// Bias (inputs; `None` = as it is).
    pub bias: Option<Bias>,
    /// Debounce period (inputs; `None` = none).
    pub debounce: Option<Duration>,
    /// Logical levels are inverted.
    pub active_low: bool,
    /// Logical level when requested (outputs).
    pub initial: u8,
    /// Logical level when the function stops (outputs).
    pub safe: u8,
}

impl LineGrant {
    /// An input with no options.
    pub fn input() -> LineGrant {
        LineGrant {
            direction: Direction::In,
            bias: None,
            debounce: None,
            active_low: false,
            initial: 0,
            safe: 0,
        }
    }

    /// An output with no options (initial and safe level 0).
    pub fn output() -> LineGrant {
        LineGrant {
            direction: Direction::Out,
            ..LineGrant::input()
        }
    }

    /// Whether two input grants can share one kernel request.
    pub(crate) fn same_electrical_input(&self, other: &LineGrant) -> bool {
        self.bias == other.bias && self.debounce == other.debounce
    }

    /// The options as written in the annotation, e.g. `in:pull-up:debounce=20ms`.
    pub fn spec(&self) -> String {
        let mut spec = self.direction.to_string();
        if let Some(bias) = self.bias {
            spec.push(':');
            spec.push_str(&bias.to_string());
        }
        if let Some(debounce) = self.debounce {
            spec.push_str(":debounce=");
            spec.push_str(&humantime::format_duration(debounce).to_string());
        }
        if self.active_low {
            spec.push_str(":active-low");
        }
        if self.direction == Direction::Out {
            if self.initial != 0 {
                spec.push_str(&format!(":initial={}", self.initial));
            }
            if self.safe != 0 {
                spec.push_str(&format!(":safe={}", self.safe));
            }
        }
        spec
    }

    /// The electrical settings, for conflict messages: `pull-up and debounce=20ms`.
    fn settings(&self) -> String {
        let bias = self
            .bias
            .map_or_else(|| "bias as-is".to_owned(), |b| b.to_string());
        match self.debounce {
            Some(d) => format!("{bias} and debounce={}", humantime::format_duration(d)),
            None => format!("{bias} and no debounce"),
        }
    }
}

/// Everything one function may use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// GPIO lines by name.
    pub gpio: BTreeMap<String, LineGrant>,
    /// I2C addresses by bus.
    pub i2c: BTreeMap<u8, BTreeSet<u16>>,
    /// Sensor ids (`KIND:ID`).
    pub sensors: BTreeSet<String>,
    /// SPI devices as `(bus, chip select)`.
    pub spi: BTreeSet<(u8, u8)>,
    /// PWM channels.
    pub pwm: BTreeSet<u8>,
}

impl Grants {
    /// Whether nothing is granted.
    pub fn is_empty(&self) -> bool {
        self.gpio.is_empty()
            && self.i2c.is_empty()
            && self.sensors.is_empty()
            && self.spi.is_empty()
            && self.pwm.is_empty()
    }

    /// The GPIO grants as written, e.g. `GPIO17:in, GPIO27:out` (`none` when there are none).
    pub fn gpio_summary(&self) -> String {
        summary(
            self.gpio
                .iter()
                .map(|(line, g)| format!("{line}:{}", g.spec())),
        )
    }

    /// The I2C grants as written, e.g. `1:0x76+0x77` (`none` when there are none).
    pub fn i2c_summary(&self) -> String {
        summary(self.i2c.iter().map(|(bus, addrs)| {
            let addrs: Vec<String> = addrs.iter().map(|a| format!("{a:#04x}")).collect();
            format!("{bus}:{}", addrs.join("+"))
        }))
    }

    /// The sensor grants, e.g. `w1:28-0316a27966ff` (`none` when there are none).
    pub fn sensors_summary(&self) -> String {
        summary(self.sensors.iter().cloned())
    }

    /// The SPI grants as written, e.g. `0.0, 0.1` (`none` when there are none).
    pub fn spi_summary(&self) -> String {
        summary(self.spi.iter().map(|(bus, cs)| format!("{bus}.{cs}")))
    }

    /// The PWM grants, e.g. `0, 1` (`none` when there are none).
    pub fn pwm_summary(&self) -> String {
        summary(self.pwm.iter().map(u8::to_string))
    }

    /// Whether SPI `bus.cs` is granted.
    pub fn allows_spi(&self, bus: u8, cs: u8) -> bool {
        self.spi.contains(&(bus, cs))
    }

    /// Whether PWM `channel` is granted.
    pub fn allows_pwm(&self, channel: u8) -> bool {
        self.pwm.contains(&channel)
    }

    /// Whether `bus:addr` is granted.
    pub fn allows_i2c(&self, bus: u8, addr: u16) -> bool {
        self.i2c
            .get(&bus)
            .is_some_and(|addrs| addrs.contains(&addr))
    }
}

fn summary(items: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = items.collect();
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

/// Checks `grants` of `function` against the grants of the other functions. The message
/// names both functions and the line or PWM channel.
pub fn check_conflicts<'a>(
    function: &str,
    grants: &Grants,
    others: impl IntoIterator<Item = (&'a str, &'a Grants)>,
) -> Result<(), String> {
    for (other, theirs) in others {
        if other == function {
            continue;
        }
        if let Some(channel) = grants.pwm.intersection(&theirs.pwm).next() {
            return Err(format!(
                "PWM channel {channel} is already granted to function {other:?}; function \
                 {function:?} cannot have it (a PWM channel belongs to one function only)"
            ));
        }
        for (line, mine) in &grants.gpio {
            let Some(their) = theirs.gpio.get(line) else {
                continue;
            };
            match (mine.direction, their.direction) {
                (Direction::Out, _) | (_, Direction::Out) => {
                    return Err(format!(
                        "{line} is already granted to function {other:?} as {}; function \
                         {function:?} cannot have it as {} (an output line belongs to one \
                         function only)",
                        their.direction, mine.direction
                    ));
                }
                (Direction::In, Direction::In) if !mine.same_electrical_input(their) => {
                    return Err(format!(
                        "{line} is already granted to function {other:?} as input with {}; \
                         function {function:?} asks for {}: functions sharing an input must \
                         use the same bias and debounce",
                        their.settings(),
                        mine.settings()
                    ));
                }
                (Direction::In, Direction::In) => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grants::parse::tests::{annotations, gpio};

    #[test]
    fn pwm_channels_belong_to_one_function() {
        let pwm = |value: &str| parse(&annotations(&[(PWM_KEY, value)])).unwrap().unwrap();
        let a = pwm("0");
        let others = [("a", &a)];
        let err = check_conflicts("b", &pwm("1,0"), others).unwrap_err();
        assert!(err.contains("PWM channel 0"), "{err}");
        assert!(err.contains("\"a\"") && err.contains("\"b\""), "{err}");
        assert!(err.contains("one function only"), "{err}");
        check_conflicts("b", &pwm("1"), others).unwrap();
        check_conflicts("a", &pwm("0"), others).unwrap();
        // SPI devices may be shared.
        let spi = parse(&annotations(&[(SPI_KEY, "0.0")])).unwrap().unwrap();
        check_conflicts("b", &spi, [("a", &spi)]).unwrap();
    }

    fn grants_of(value: &str) -> Grants {
        gpio(value).unwrap().unwrap()
    }

    #[test]
    fn conflicts() {
        let a = grants_of("GPIO17:in:pull-up,GPIO27:out");
        let others = [("a", &a)];
        // Same output twice.
        let err = check_conflicts("b", &grants_of("GPIO27:out"), others).unwrap_err();
        assert!(err.contains("GPIO27"), "{err}");
        assert!(err.contains("\"a\"") && err.contains("\"b\""), "{err}");
        assert!(err.contains("as out"), "{err}");
        // Input on another function's output.
        let err = check_conflicts("b", &grants_of("GPIO27:in"), others).unwrap_err();
        assert!(
            err.contains("GPIO27") && err.contains("cannot have it as in"),
            "{err}"
        );
        // Output on another function's input.
        let err = check_conflicts("b", &grants_of("GPIO17:out"), others).unwrap_err();
        assert!(err.contains("GPIO17") && err.contains("as in"), "{err}");
        // Shared inputs: same settings are fine, active-low may differ.
        check_conflicts("b", &grants_of("GPIO17:in:pull-up:active-low"), others).unwrap();
        let err = check_conflicts("b", &grants_of("GPIO17:in:pull-down"), others).unwrap_err();
        assert!(err.contains("same bias and debounce"), "{err}");
        assert!(
            err.contains("pull-up") && err.contains("pull-down"),
            "{err}"
        );
        let err =
            check_conflicts("b", &grants_of("GPIO17:in:pull-up:debounce=5ms"), others).unwrap_err();
        assert!(err.contains("debounce=5ms"), "{err}");
        // A function never conflicts with itself (a redeploy replaces its grants).
        check_conflicts("a", &grants_of("GPIO27:in"), others).unwrap();
        // Other lines are free.
        check_conflicts("b", &grants_of("GPIO22:out"), others).unwrap();
    }
}
