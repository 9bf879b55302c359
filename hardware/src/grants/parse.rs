//! Grants from a function's annotations: the syntax of `bramble.gpio`, `bramble.i2c`,
//! `bramble.sensors`, `bramble.spi` and `bramble.pwm` (see [the module](super)), and the
//! parsers of the names and numbers the socket's routes take (line names, I2C addresses, SPI
//! buses and chip selects, PWM channels).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::{
    Bias, Direction, GPIO_KEY, GrantError, Grants, I2C_KEY, LineGrant, MAX_DEBOUNCE, MAX_LINE_NAME,
    MAX_PWM_CHANNEL, MAX_SPI_BUS, MAX_SPI_CS, PWM_KEY, SENSORS_KEY, SPI_KEY,
};

/// Parses a function's annotations. `Ok(None)` when none of the keys is present (or all are
/// empty): the function gets no hardware and no socket.
pub fn parse(annotations: &BTreeMap<String, String>) -> Result<Option<Grants>, GrantError> {
    let mut grants = Grants::default();
    if let Some(value) = annotations.get(GPIO_KEY) {
        for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (line, grant) = parse_line(item).map_err(|reason| GrantError {
                key: GPIO_KEY,
                item: item.to_owned(),
                reason,
            })?;
            if grants.gpio.insert(line.clone(), grant).is_some() {
                return Err(GrantError {
                    key: GPIO_KEY,
                    item: item.to_owned(),
                    reason: format!("{line} is listed more than once"),
                });
            }
        }
    }
    each_item(annotations, I2C_KEY, |item| {
        let (bus, addrs) = parse_i2c(item)?;
        grants.i2c.entry(bus).or_default().extend(addrs);
        Ok(())
    })?;
    each_item(annotations, SENSORS_KEY, |item| {
        crate::sensors::validate_id(item)?;
        grants.sensors.insert(item.to_owned());
        Ok(())
    })?;
    each_item(annotations, SPI_KEY, |item| {
        grants.spi.insert(parse_spi(item)?);
        Ok(())
    })?;
    each_item(annotations, PWM_KEY, |item| {
        grants.pwm.insert(parse_pwm_channel(item)?);
        Ok(())
    })?;
    Ok((!grants.is_empty()).then_some(grants))
}

/// Calls `f` with each item of the annotation `key` (items separated by commas or
/// whitespace), if it is given; an error of `f` names the key and the item.
fn each_item(
    annotations: &BTreeMap<String, String>,
    key: &'static str,
    mut f: impl FnMut(&str) -> Result<(), String>,
) -> Result<(), GrantError> {
    let Some(value) = annotations.get(key) else {
        return Ok(());
    };
    for item in value
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
    {
        f(item).map_err(|reason| GrantError {
            key,
            item: item.to_owned(),
            reason,
        })?;
    }
    Ok(())
}

/// Checks a line name: what the kernel could call a line, and safe in paths and messages.
pub fn validate_line_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the line name is empty".to_owned());
    }
    if name.len() > MAX_LINE_NAME {
        return Err(format!(
            "the line name is longer than {MAX_LINE_NAME} characters"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !c.is_ascii_graphic() || matches!(c, '/' | ':' | ','))
    {
        return Err(format!(
            "the line name contains {c:?}: names are printable ASCII without '/', ':', ',' or spaces"
        ));
    }
    Ok(())
}

/// Parses one item of the `bramble.gpio` annotation, `LINE:in[:option...]` or
/// `LINE:out[:option...]`: the line name and its grant, or what is wrong with it.
pub fn parse_line(item: &str) -> Result<(String, LineGrant), String> {
    let mut parts = item.split(':');
    let name = parts.next().unwrap_or_default();
    validate_line_name(name)?;
    let direction = match parts.next() {
        Some("in") => Direction::In,
        Some("out") => Direction::Out,
        Some(other) => {
            return Err(format!(
                "direction {other:?} is not \"in\" or \"out\" (write {name}:in or {name}:out)"
            ));
        }
        None => {
            return Err(format!("missing direction (write {name}:in or {name}:out)"));
        }
    };
    let mut grant = LineGrant {
        direction,
        ..LineGrant::input()
    };
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    for option in parts {
        let (opt, value) = match option.split_once('=') {
            Some((o, v)) => (o, Some(v)),
            None => (option, None),
        };
        let slot = match opt {
            "pull-up" | "pull-down" | "bias-disabled" => "bias",
            other => other,
        };
        if !seen.insert(slot) {
            return Err(if slot == "bias" {
                "more than one bias option (pull-up, pull-down, bias-disabled)".to_owned()
            } else {
                format!("option {slot} is given more than once")
            });
        }
        let input_only = |what: &str| {
            if direction == Direction::In {
                Ok(())
            } else {
                Err(format!(
                    "{what} applies to inputs only ({name} is an output)"
                ))
            }
        };
        let output_only = |what: &str| {
            if direction == Direction::Out {
                Ok(())
            } else {
                Err(format!(
                    "{what} applies to outputs only ({name} is an input)"
                ))
            }
        };
        let no_value = |value: Option<&str>| match value {
            None => Ok(()),
            Some(_) => Err(format!("option {opt} takes no value")),
        };
        match opt {
            "pull-up" | "pull-down" | "bias-disabled" => {
                no_value(value)?;
                input_only(opt)?;
                grant.bias = Some(match opt {
                    "pull-up" => Bias::PullUp,
                    "pull-down" => Bias::PullDown,
                    _ => Bias::Disabled,
                });
            }
            "active-low" => {
                no_value(value)?;
                grant.active_low = true;
            }
            "debounce" => {
                input_only("debounce")?;
                let value = value.ok_or("debounce needs a period, e.g. debounce=20ms")?;
                grant.debounce = parse_debounce(value)?;
            }
            "initial" | "safe" => {
                output_only(opt)?;
                let level = match value {
                    Some("0") => 0,
                    Some("1") => 1,
                    Some(v) => return Err(format!("{opt}={v}: the level must be 0 or 1")),
                    None => return Err(format!("{opt} needs a level: {opt}=0 or {opt}=1")),
                };
                if opt == "initial" {
                    grant.initial = level;
                } else {
                    grant.safe = level;
                }
            }
            "" => return Err("empty option (two ':' in a row?)".to_owned()),
            other => {
                return Err(format!(
                    "unknown option {other:?} (options: pull-up, pull-down, bias-disabled, \
                     debounce=DURATION, active-low, initial=0|1, safe=0|1)"
                ));
            }
        }
    }
    Ok((name.to_owned(), grant))
}

fn parse_debounce(value: &str) -> Result<Option<Duration>, String> {
    if value == "0" {
        return Ok(None);
    }
    let period = humantime::parse_duration(value)
        .map_err(|e| format!("debounce={value}: {e} (write e.g. debounce=20ms)"))?;
    if period > MAX_DEBOUNCE {
        return Err(format!(
            "debounce={value} is longer than {}",
            humantime::format_duration(MAX_DEBOUNCE)
        ));
    }
    if period.is_zero() {
        return Ok(None);
    }
    if period < Duration::from_micros(1) {
        return Err(format!(
            "debounce={value} is shorter than the kernel's resolution (1us)"
        ));
    }
    Ok(Some(period))
}

fn parse_i2c(item: &str) -> Result<(u8, Vec<u16>), String> {
    let (bus, addrs) = item
        .split_once(':')
        .ok_or("expected BUS:ADDR[+ADDR...], e.g. 1:0x76+0x77")?;
    let bus: u8 = bus
        .parse()
        .map_err(|_| format!("bus {bus:?} is not a number from 0 to 255"))?;
    let addrs = addrs
        .split('+')
        .map(parse_i2c_address)
        .collect::<Result<Vec<u16>, String>>()?;
    Ok((bus, addrs))
}

/// Parses a 7-bit I2C device address, `0x76` or `118`, in `0x08..=0x77`.
pub fn parse_i2c_address(text: &str) -> Result<u16, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            u16::from_str_radix(hex, 16).ok()
        }
        Some(_) => None,
        None if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => text.parse().ok(),
        None => None,
    };
    let addr = parsed.ok_or_else(|| {
        format!("address {text:?} is not a number (write hex 0x76 or decimal 118)")
    })?;
    if !(0x08..=0x77).contains(&addr) {
        return Err(format!(
            "address {text} is outside 0x08..0x77, the 7-bit device addresses"
        ));
    }
    Ok(addr)
}

/// A decimal number from 0 to `max`; `what` names it in the error.
fn parse_small(text: &str, what: &str, max: u8) -> Result<u8, String> {
    match text.parse::<u8>() {
        Ok(n) if n <= max && text.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(format!("{what} {text:?} is not a number from 0 to {max}")),
    }
}

/// Parses an SPI bus number, 0 to [`MAX_SPI_BUS`].
pub fn parse_spi_bus(text: &str) -> Result<u8, String> {
    parse_small(text, "SPI bus", MAX_SPI_BUS)
}

/// Parses an SPI chip select, 0 to [`MAX_SPI_CS`].
pub fn parse_spi_cs(text: &str) -> Result<u8, String> {
    parse_small(text, "SPI chip select", MAX_SPI_CS)
}

/// Parses a PWM channel, 0 to [`MAX_PWM_CHANNEL`].
pub fn parse_pwm_channel(text: &str) -> Result<u8, String> {
    parse_small(text, "PWM channel", MAX_PWM_CHANNEL)
}

fn parse_spi(item: &str) -> Result<(u8, u8), String> {
    let (bus, cs) = item
        .split_once('.')
        .ok_or("expected BUS.CS, e.g. 0.0 for /dev/spidev0.0")?;
    Ok((parse_spi_bus(bus)?, parse_spi_cs(cs)?))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::grants) fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    pub(in crate::grants) fn gpio(value: &str) -> Result<Option<Grants>, GrantError> {
        parse(&annotations(&[(GPIO_KEY, value)]))
    }

    fn gpio_err(value: &str) -> GrantError {
        gpio(value).expect_err(value)
    }

    #[test]
    fn no_keys_no_grants() {
        assert_eq!(parse(&BTreeMap::new()), Ok(None));
        assert_eq!(
            parse(&annotations(&[("com.openfaas.scale.min", "1")])),
            Ok(None)
        );
        assert_eq!(
            parse(&annotations(&[
                (GPIO_KEY, ""),
                (I2C_KEY, " "),
                (SENSORS_KEY, ","),
                (SPI_KEY, " , "),
                (PWM_KEY, "")
            ])),
            Ok(None)
        );
    }

    #[test]
    fn every_gpio_option() {
        let grants = gpio(
            " GPIO17:in:pull-up:debounce=20ms:active-low , GPIO27:out:initial=1:safe=1:active-low,\
             GPIO22:in:pull-down,GPIO23:in:bias-disabled,GPIO24:out,",
        )
        .unwrap()
        .unwrap();
        assert_eq!(grants.gpio.len(), 5);
        assert_eq!(
            grants.gpio["GPIO17"],
            LineGrant {
                direction: Direction::In,
                bias: Some(Bias::PullUp),
                debounce: Some(Duration::from_millis(20)),
                active_low: true,
                initial: 0,
                safe: 0,
            }
        );
        assert_eq!(
            grants.gpio["GPIO27"],
            LineGrant {
                direction: Direction::Out,
                active_low: true,
                initial: 1,
                safe: 1,
                ..LineGrant::input()
            }
        );
        assert_eq!(grants.gpio["GPIO22"].bias, Some(Bias::PullDown));
        assert_eq!(grants.gpio["GPIO23"].bias, Some(Bias::Disabled));
        assert_eq!(grants.gpio["GPIO24"], LineGrant::output());
        assert_eq!(
            grants.gpio_summary(),
            "GPIO17:in:pull-up:debounce=20ms:active-low, GPIO22:in:pull-down, \
             GPIO23:in:bias-disabled, GPIO24:out, GPIO27:out:active-low:initial=1:safe=1"
        );
        // debounce=0 is "off"; other units parse.
        let g = gpio("A:in:debounce=0,B:in:debounce=1s,C:in:debounce=500us")
            .unwrap()
            .unwrap();
        assert_eq!(g.gpio["A"].debounce, None);
        assert_eq!(g.gpio["B"].debounce, Some(Duration::from_secs(1)));
        assert_eq!(g.gpio["C"].debounce, Some(Duration::from_micros(500)));
        // Kernel names other than GPIOn are fine.
        assert!(gpio("ID_SDA:in,SPI_CE0_N:out").unwrap().is_some());
    }

    #[test]
    fn gpio_errors_name_the_key_and_the_item() {
        let cases: &[(&str, &str, &str)] = &[
            ("GPIO17", "GPIO17", "missing direction"),
            (
                "GPIO17:sideways",
                "GPIO17:sideways",
                "is not \"in\" or \"out\"",
            ),
            (":in", ":in", "empty"),
            ("a/b:in", "a/b:in", "'/'"),
            ("GPIO 17:in", "GPIO 17:in", "' '"),
            (
                "GPIO17_IS_A_VERY_LONG_LINE_NAME_X:in",
                "GPIO17_IS_A_VERY_LONG_LINE_NAME_X:in",
                "longer than 31",
            ),
            (
                "GPIO17:in:pull-sideways",
                "GPIO17:in:pull-sideways",
                "unknown option",
            ),
            (
                "GPIO17:in:pull-up:pull-down",
                "GPIO17:in:pull-up:pull-down",
                "more than one bias",
            ),
            (
                "GPIO17:in:active-low:active-low",
                "GPIO17:in:active-low:active-low",
                "more than once",
            ),
            ("GPIO17:in::pull-up", "GPIO17:in::pull-up", "empty option"),
            ("GPIO17:in:debounce", "GPIO17:in:debounce", "needs a period"),
            (
                "GPIO17:in:debounce=20",
                "GPIO17:in:debounce=20",
                "debounce=20",
            ),
            (
                "GPIO17:in:debounce=fast",
                "GPIO17:in:debounce=fast",
                "debounce=fast",
            ),
            (
                "GPIO17:in:debounce=1h",
                "GPIO17:in:debounce=1h",
                "longer than 10s",
            ),
            (
                "GPIO17:in:debounce=1ns",
                "GPIO17:in:debounce=1ns",
                "resolution",
            ),
            ("GPIO17:in:initial=1", "GPIO17:in:initial=1", "outputs only"),
            ("GPIO17:in:safe=1", "GPIO17:in:safe=1", "outputs only"),
            ("GPIO27:out:pull-up", "GPIO27:out:pull-up", "inputs only"),
            (
                "GPIO27:out:debounce=5ms",
                "GPIO27:out:debounce=5ms",
                "inputs only",
            ),
            (
                "GPIO27:out:initial=2",
                "GPIO27:out:initial=2",
                "must be 0 or 1",
            ),
            ("GPIO27:out:safe", "GPIO27:out:safe", "needs a level"),
            (
                "GPIO27:out:active-low=1",
                "GPIO27:out:active-low=1",
                "takes no value",
            ),
            ("GPIO17:in,GPIO17:out", "GPIO17:out", "more than once"),
        ];
        for (value, item, reason) in cases {
            let err = gpio_err(value);
            assert_eq!(err.key, GPIO_KEY, "{value}");
            assert_eq!(err.item, *item, "{value}");
            assert!(
                err.reason.contains(reason),
                "{value}: {:?} should contain {reason:?}",
                err.reason
            );
            let text = err.to_string();
            assert!(text.starts_with("annotation bramble.gpio: "), "{text}");
            assert!(text.contains(item), "{text}");
        }
    }

    #[test]
    fn i2c_grants() {
        let grants = parse(&annotations(&[(I2C_KEY, "1:0x76+0x77, 1:118 3:0x48,0:8")]))
            .unwrap()
            .unwrap();
        assert_eq!(grants.i2c.len(), 3);
        assert_eq!(
            grants.i2c[&1].iter().copied().collect::<Vec<_>>(),
            [0x76, 0x77]
        );
        assert!(grants.allows_i2c(3, 0x48));
        assert!(grants.allows_i2c(0, 8));
        assert!(!grants.allows_i2c(1, 0x48));
        assert_eq!(grants.i2c_summary(), "0:0x08, 1:0x76+0x77, 3:0x48");
        for (value, reason) in [
            ("1", "expected BUS:ADDR"),
            ("x:0x76", "bus \"x\""),
            ("256:0x76", "bus \"256\""),
            ("1:0x7", "outside 0x08..0x77"),
            ("1:0x78", "outside"),
            ("1:0xZZ", "not a number"),
            ("1:0x", "not a number"),
            ("1:0x76+", "not a number"),
            ("1:-5", "not a number"),
        ] {
            let err = parse(&annotations(&[(I2C_KEY, value)])).expect_err(value);
            assert_eq!(err.key, I2C_KEY);
            assert_eq!(err.item, value);
            assert!(err.reason.contains(reason), "{value}: {}", err.reason);
        }
    }

    #[test]
    fn sensor_grants() {
        let grants = parse(&annotations(&[(
            SENSORS_KEY,
            "w1:28-0316a27966ff, w1:10-000802b4b1f8",
        )]))
        .unwrap()
        .unwrap();
        assert_eq!(grants.sensors.len(), 2);
        assert!(grants.sensors.contains("w1:28-0316a27966ff"));
        for (value, reason) in [
            ("28-0316a27966ff", "KIND:ID"),
            ("bogus:1", "unknown sensor kind"),
            ("w1:../../etc", "not a 1-Wire device name"),
            ("w1:", "not a 1-Wire device name"),
        ] {
            let err = parse(&annotations(&[(SENSORS_KEY, value)])).expect_err(value);
            assert_eq!(err.key, SENSORS_KEY);
            assert_eq!(err.item, value);
            assert!(err.reason.contains(reason), "{value}: {}", err.reason);
        }
    }

    #[test]
    fn spi_grants() {
        let grants = parse(&annotations(&[(SPI_KEY, "0.1, 0.0 6.2,0.1")]))
            .unwrap()
            .unwrap();
        assert_eq!(
            grants.spi.iter().copied().collect::<Vec<_>>(),
            [(0, 0), (0, 1), (6, 2)]
        );
        assert!(grants.allows_spi(0, 1) && grants.allows_spi(6, 2));
        assert!(!grants.allows_spi(1, 0));
        assert_eq!(grants.spi_summary(), "0.0, 0.1, 6.2");
        assert_eq!(grants.pwm_summary(), "none");
        // Merged with the other keys' grants.
        let both = parse(&annotations(&[(SPI_KEY, "0.0"), (I2C_KEY, "1:0x76")]))
            .unwrap()
            .unwrap();
        assert!(both.allows_spi(0, 0) && both.allows_i2c(1, 0x76));
        for (value, reason) in [
            ("0", "expected BUS.CS"),
            ("0:0", "expected BUS.CS"),
            ("7.0", "SPI bus \"7\" is not a number from 0 to 6"),
            ("x.0", "SPI bus \"x\""),
            ("+0.0", "SPI bus \"+0\""),
            ("0.3", "SPI chip select \"3\" is not a number from 0 to 2"),
            ("0.", "SPI chip select \"\""),
            ("0.0.0", "SPI chip select \"0.0\""),
        ] {
            let err = parse(&annotations(&[(SPI_KEY, value)])).expect_err(value);
            assert_eq!(err.key, SPI_KEY);
            assert_eq!(err.item, value);
            assert!(err.reason.contains(reason), "{value}: {}", err.reason);
            assert!(
                err.to_string().starts_with("annotation bramble.spi: "),
                "{err}"
            );
        }
    }

    #[test]
    fn pwm_grants() {
        let grants = parse(&annotations(&[(PWM_KEY, "1 0,1")])).unwrap().unwrap();
        assert_eq!(grants.pwm.iter().copied().collect::<Vec<_>>(), [0, 1]);
        assert!(grants.allows_pwm(0) && grants.allows_pwm(1));
        assert_eq!(grants.pwm_summary(), "0, 1");
        assert_eq!(grants.spi_summary(), "none");
        let one = parse(&annotations(&[(PWM_KEY, "1")])).unwrap().unwrap();
        assert!(!one.allows_pwm(0));
        for (value, reason) in [
            ("2", "PWM channel \"2\" is not a number from 0 to 1"),
            ("pwm0", "PWM channel \"pwm0\""),
            ("-1", "PWM channel \"-1\""),
            ("0.0", "PWM channel \"0.0\""),
        ] {
            let err = parse(&annotations(&[(PWM_KEY, value)])).expect_err(value);
            assert_eq!(err.key, PWM_KEY);
            assert_eq!(err.item, value);
            assert!(err.reason.contains(reason), "{value}: {}", err.reason);
            assert!(
                err.to_string().starts_with("annotation bramble.pwm: "),
                "{err}"
            );
        }
    }
}
