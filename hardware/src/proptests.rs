//! Property tests of the hardware helper's parsers of outside input: line grants (what a grant
//! prints parses back to itself), line names and I2C addresses from the socket's routes, the
//! socket's level bodies, and sensor files.
//!
//! Each property: no panic on any input; an error says what is wrong; a grant prints back to
//! itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use proptest::collection::vec;
use proptest::prelude::*;

use crate::grants::{self, Bias, LineGrant};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: ProptestConfig::default().cases.max(512),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A grant as the parser could produce it.
fn line_grant() -> impl Strategy<Value = LineGrant> {
    (
        any::<bool>(),
        prop::option::of(prop_oneof![
            Just(Bias::PullUp),
            Just(Bias::PullDown),
            Just(Bias::Disabled)
        ]),
        prop::option::of(1u64..=10_000_000),
        any::<bool>(),
        0u8..=1,
        0u8..=1,
    )
        .prop_map(|(input, bias, debounce_us, active_low, initial, safe)| {
            if input {
                LineGrant {
                    bias,
                    debounce: debounce_us.map(Duration::from_micros),
                    active_low,
                    ..LineGrant::input()
                }
            } else {
                LineGrant {
                    active_low,
                    initial,
                    safe,
                    ..LineGrant::output()
                }
            }
        })
}

proptest! {
    #![proptest_config(config())]

    /// What a grant says about itself (`spec()`, shown in status and conflicts) parses back to
    /// the same grant.
    #[test]
    fn line_grants_round_trip(name in "[A-Za-z0-9_.-]{1,31}", grant in line_grant()) {
        let item = format!("{name}:{}", grant.spec());
        let parsed = grants::parse_line(&item).map_err(|e| TestCaseError::fail(format!("{item}: {e}")))?;
        prop_assert_eq!(parsed, (name, grant));
    }

    /// Line names and I2C addresses from the socket's routes (`/v1/gpio/LINE`,
    /// `/v1/i2c/BUS/ADDR`).
    #[test]
    fn line_names_and_i2c_addresses(name in ".{0,40}", addr in prop_oneof!["(0x|0X)?[0-9a-fA-F]{0,6}", ".{0,8}"], n in 0u16..=0x7f) {
        if grants::validate_line_name(&name).is_ok() {
            prop_assert!(name.len() <= grants::MAX_LINE_NAME && !name.contains(['/', ':', ',', ' ']));
        }
        match grants::parse_i2c_address(&addr) {
            Ok(a) => prop_assert!((0x08..=0x77).contains(&a)),
            Err(e) => prop_assert!(e.contains("address")),
        }
        let expected = (0x08..=0x77).contains(&n);
        prop_assert_eq!(grants::parse_i2c_address(&format!("{n:#x}")).is_ok(), expected);
        prop_assert_eq!(grants::parse_i2c_address(&n.to_string()).ok(), expected.then_some(n));
    }

    /// `PUT /v1/gpio/LINE` bodies from inside a function.
    #[test]
    fn level_bodies(bytes in prop_oneof![
        vec(any::<u8>(), 0..64),
        "\\{\"level\": ?-?[0-9]{1,22}(\\.[0-9])?\\}".prop_map(String::into_bytes),
        "\\{\"level\":[01](,\"[a-z]{1,5}\":[0-9])?\\}".prop_map(String::into_bytes),
    ]) {
        match crate::broker::parse_level(&bytes) {
            Ok(level) => prop_assert!(level <= 1),
            Err(e) => prop_assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST),
        }
    }

    /// Sensor files (`w1_slave`, `temperature`) as a device or a driver bug may leave them.
    #[test]
    fn sensor_files(text in prop_oneof![
        ".{0,80}",
        "([0-9a-f]{2} ){9}: crc=[0-9a-f]{2} (YES|NO)\n([0-9a-f]{2} ){9}t=-?[0-9]{1,22}\n?",
        "-?[0-9]{1,25}\n?",
    ]) {
        let path = Path::new("/sys/bus/w1/devices/28-x/w1_slave");
        for result in [
            crate::sensors::parse_w1_slave(&text, path),
            crate::sensors::parse_millidegrees(&text, path),
        ] {
            match result {
                Ok(reading) => prop_assert!(reading.value.is_finite()),
                Err(e) => prop_assert!(e.to_string().contains("w1_slave")),
            }
        }
    }
}
