//! Property tests of the agent's parsers of outside input: hardware grants and triggers
//! together, and schedules (annotations of API deployments), the settings bramble reads from
//! annotations, and the configuration file. The hardware helper's own parsers (line grants,
//! level bodies, sensor files) are property-tested in `bramble_hardware`.
//!
//! Each property: no panic on any input; an error names the annotation (or key) and says what
//! is wrong; every period accepted can be scheduled.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::Duration;

use bramble_gateway::types::FunctionDeployment;
use bramble_hardware::grants;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;

use crate::config::Config;
use crate::triggers::spec::{self, Schedule, Source};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: ProptestConfig::default().cases.max(512),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Every period the agent may be asked to wait: it must fit a timer (an `Instant` plus it).
fn assert_schedulable(period: Duration) -> Result<(), TestCaseError> {
    prop_assert!(
        tokio::time::Instant::now().checked_add(period).is_some()
            && std::time::Instant::now().checked_add(period * 2).is_some(),
        "accepted a period no timer can hold: {:?}",
        period
    );
    Ok(())
}

fn duration_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{1,4}(ns|us|ms|s|m|h|d|w)",
        "[0-9]{1,25}(ns|us|ms|s|m|h|d|w|y|M)",
        // Near the largest durations: what a timer can and cannot hold.
        "[1-9][0-9]{9,11}(y|w|d)",
        "[1-9][0-9]{16,19}(s|ms)",
        "[0-9]{1,4}(ms|s) [0-9]{1,3}(ns|us)",
        ".{0,10}",
    ]
}

fn line_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "GPIO[0-9]{1,2}",
        1 => "[!-~]{0,35}",
        1 => ".{0,12}",
    ]
}

fn gpio_item() -> impl Strategy<Value = String> {
    let option = prop_oneof![
        Just("pull-up".to_owned()),
        Just("pull-down".to_owned()),
        Just("bias-disabled".to_owned()),
        Just("active-low".to_owned()),
        duration_text().prop_map(|d| format!("debounce={d}")),
        "(initial|safe)=[0-2]",
        "path=/?[ -~]{0,12}",
        ".{0,8}",
    ];
    (
        line_name(),
        prop_oneof!["in|out|rising|falling|both", ".{0,5}"],
        vec(option, 0..4),
    )
        .prop_map(|(line, dir, options)| {
            let mut item = format!("{line}:{dir}");
            for o in options {
                item.push(':');
                item.push_str(&o);
            }
            item
        })
}

fn annotations() -> impl Strategy<Value = BTreeMap<String, String>> {
    let sensor = prop_oneof!["w1:28-[0-9a-f]{12}", "[a-z0-9]{0,4}:[ -~]{0,16}", ".{0,12}"];
    let sensor_trigger = (
        sensor.clone(),
        vec(
            prop_oneof![
                "(above|below|hysteresis)=-?[0-9]{1,4}(\\.[0-9]{1,3})?",
                "(above|below|hysteresis)=[a-zA-Z0-9.+-]{0,8}",
                duration_text().prop_map(|d| format!("every={d}")),
                "path=/?[ -~]{0,10}",
                ".{0,8}",
            ],
            0..4,
        ),
    )
        .prop_map(|(s, options)| {
            let mut item = s;
            for o in options {
                item.push(':');
                item.push_str(&o);
            }
            item
        });
    let schedule = prop_oneof![
        "[0-9*/,-]{1,6} [0-9*/,-]{1,6} [0-9*/,?LW#-]{1,6} [0-9*/,A-Za-z-]{1,6} [0-9*/,A-Za-z#L?-]{1,6}",
        "@(hourly|daily|weekly|monthly|yearly|annually|midnight|reboot|[a-z]{0,6})",
        duration_text().prop_map(|d| format!("@every {d}")),
        ".{0,30}",
    ];
    (
        vec(gpio_item(), 0..4),
        vec(
            prop_oneof![
                "[0-9]{1,3}:(0x[0-9a-fA-F]{1,3}|[0-9]{1,4})(\\+(0x[0-9a-f]{1,3}|[0-9]{1,4})){0,2}",
                ".{0,12}"
            ],
            0..3,
        ),
        vec(sensor, 0..3),
        vec(
            prop_oneof!["[0-9]{1,2}\\.[0-9]{1,2}", "[0-7.]{0,5}", ".{0,6}"],
            0..3,
        ),
        vec(prop_oneof!["[0-3]", "[0-9+-]{0,3}", ".{0,4}"], 0..3),
        vec(gpio_item(), 0..3),
        vec(sensor_trigger, 0..3),
        prop::option::of(prop_oneof![Just("cron-function".to_owned()), ".{0,20}"]),
        prop::option::of(schedule),
        prop_oneof![Just(","), Just(", "), Just(" ")],
    )
        .prop_map(
            |(gpio, i2c, sensors, spi, pwm, trig_gpio, trig_sensor, topic, schedule, sep)| {
                let mut a = BTreeMap::new();
                let mut put = |key: &str, items: Vec<String>| {
                    if !items.is_empty() {
                        a.insert(key.to_owned(), items.join(sep));
                    }
                };
                put(grants::GPIO_KEY, gpio);
                put(grants::I2C_KEY, i2c);
                put(grants::SENSORS_KEY, sensors);
                put(grants::SPI_KEY, spi);
                put(grants::PWM_KEY, pwm);
                put(spec::GPIO_KEY, trig_gpio);
                put(spec::SENSOR_KEY, trig_sensor);
                if let Some(t) = topic {
                    a.insert(spec::TOPIC_KEY.to_owned(), t);
                }
                if let Some(s) = schedule {
                    a.insert(spec::SCHEDULE_KEY.to_owned(), s);
                }
                a
            },
        )
}

proptest! {
    #![proptest_config(config())]

    /// `bramble.gpio`, `bramble.i2c`, `bramble.sensors`, `bramble.spi`, `bramble.pwm` and the
    /// trigger annotations together: an error names its annotation and item; what parses is
    /// a set of valid grants (whose SPI and PWM summaries parse back to the same grants) and
    /// triggers whose periods a timer can hold.
    #[test]
    fn hardware_and_trigger_annotations(a in annotations()) {
        match grants::parse(&a) {
            Ok(Some(g)) => {
                for (line, grant) in &g.gpio {
                    prop_assert!(grants::validate_line_name(line).is_ok());
                    if let Some(d) = grant.debounce {
                        prop_assert!(d <= grants::MAX_DEBOUNCE);
                    }
                }
                for addrs in g.i2c.values() {
                    prop_assert!(addrs.iter().all(|a| (0x08..=0x77).contains(a)));
                }
                for (bus, cs) in &g.spi {
                    prop_assert!(*bus <= grants::MAX_SPI_BUS && *cs <= grants::MAX_SPI_CS);
                }
                prop_assert!(g.pwm.iter().all(|c| *c <= grants::MAX_PWM_CHANNEL));
                let again = BTreeMap::from([
                    (grants::SPI_KEY.to_owned(), g.spi_summary().replace("none", "")),
                    (grants::PWM_KEY.to_owned(), g.pwm_summary().replace("none", "")),
                ]);
                let again = grants::parse(&again)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?
                    .unwrap_or_default();
                prop_assert_eq!(&again.spi, &g.spi);
                prop_assert_eq!(&again.pwm, &g.pwm);
            }
            Ok(None) => {}
            Err(e) => {
                prop_assert!(a.contains_key(e.key), "error names {} which is not given", e.key);
                prop_assert!(!e.reason.is_empty());
                let prefix = format!("annotation {}: ", e.key);
                prop_assert!(e.to_string().starts_with(&prefix), "{}", e);
            }
        }
        match spec::parse(&a) {
            Ok(triggers) => {
                for t in &triggers {
                    prop_assert!(t.path.starts_with('/'), "path {:?}", t.path);
                    match &t.source {
                        Source::Schedule(s) => {
                            if let Schedule::Every(p) = s.schedule {
                                assert_schedulable(p)?;
                                prop_assert!(p >= spec::MIN_EVERY);
                            }
                        }
                        Source::Sensor(s) => {
                            assert_schedulable(s.every)?;
                            prop_assert!(s.hysteresis >= 0.0 && s.hysteresis.is_finite());
                        }
                        Source::Gpio(_) => {}
                    }
                }
                let _ = spec::hardware_grants(&a);
            }
            Err(e) => {
                // A cron topic without a schedule names the missing schedule.
                let missing_schedule = e.key == spec::SCHEDULE_KEY && a.contains_key(spec::TOPIC_KEY);
                prop_assert!(a.contains_key(e.key) || missing_schedule, "error names {} which is not given", e.key);
                prop_assert!(!e.reason.is_empty());
            }
        }
    }

    /// `schedule` on its own: any text.
    #[test]
    fn schedules(text in prop_oneof![
        ".{0,40}",
        "[0-9*/,? -]{0,30}",
        "@[a-z]{0,10}( .{0,10})?",
        duration_text().prop_map(|d| format!("@every {d}")),
    ]) {
        match spec::parse_schedule_text(&text) {
            Ok(Schedule::Every(p)) => assert_schedulable(p)?,
            Ok(Schedule::Cron(_)) => {}
            Err(e) => prop_assert!(e.len() > 10, "{}", e),
        }
    }

    /// The settings bramble reads from labels and annotations (`bramble.timeout`,
    /// `com.openfaas.scale.*`): refused with the field named, or usable.
    #[test]
    fn deployment_settings(
        timeout in duration_text(),
        zero in prop_oneof![Just("true".to_owned()), ".{0,5}"],
        zero_duration in duration_text(),
        min in prop_oneof!["[0-9]{1,22}", ".{0,4}"],
        extra in btree_map(".{0,10}", ".{0,10}", 0..3),
    ) {
        let mut annotations = extra;
        annotations.insert(crate::function::TIMEOUT_ANNOTATION.to_owned(), timeout);
        annotations.insert(crate::function::SCALE_ZERO.to_owned(), zero);
        annotations.insert(crate::function::SCALE_ZERO_DURATION.to_owned(), zero_duration);
        annotations.insert(crate::function::SCALE_MIN.to_owned(), min);
        let d = FunctionDeployment {
            service: "f".into(),
            image: "fixture:test".into(),
            annotations,
            ..FunctionDeployment::default()
        };
        match crate::function::validate_settings(&d) {
            Ok(()) => {
                let defaults = crate::function::Defaults {
                    memory_bytes: None,
                    cpu_millis: None,
                    pids: 512,
                    timeout: Duration::from_secs(60),
                };
                assert_schedulable(crate::function::timeout(&d, &defaults))?;
                if let Some(after) = crate::function::scale_to_zero_after(&d) {
                    assert_schedulable(after)?;
                }
                prop_assert!(crate::function::initial_replicas(&d) <= crate::function::MAX_REPLICAS);
            }
            Err((field, message)) => {
                prop_assert!(field.starts_with("annotations.") || field.starts_with("labels."));
                prop_assert!(!message.is_empty());
            }
        }
    }

    /// The configuration file: any text, and every key with values of any shape. A bad file
    /// is an error; a file that parses either validates into usable values or names the key.
    #[test]
    fn configuration_files(
        text in ".{0,200}",
        entries in vec((
            prop_oneof![
                "listen|state_dir|run_dir|containerd_socket|containerd_namespace|default_namespace|pull_policy",
                "function_timeout|ready_timeout|stop_grace|log_buffer|max_api_body|max_upload|memory_budget|image_gc_after",
                "stop_functions_on_shutdown|defaults\\.(memory|cpu|pids)|network\\.(bridge|subnet)|async\\.(workers|max_body)",
                "[a-z_.]{1,12}",
            ],
            prop_oneof![
                ".{0,20}".prop_map(|s| toml_string(&s)),
                duration_text().prop_map(|s| toml_string(&s)),
                "[0-9]{1,5}(Ki|Mi|Gi|m)?".prop_map(|s| toml_string(&s)),
                any::<i64>().prop_map(|n| n.to_string()),
                Just("true".to_owned()),
                Just("[]".to_owned()),
                Just("\"/abs/path\"".to_owned()),
            ],
        ), 0..6),
    ) {
        if let Ok(c) = Config::parse(&text) {
            let _ = c.validate();
        }
        let mut document = String::new();
        let mut seen = std::collections::BTreeSet::new();
        for (key, value) in entries {
            if seen.insert(key.clone()) {
                document.push_str(&format!("{key} = {value}\n"));
            }
        }
        match Config::parse(&document) {
            Ok(c) => match c.validate() {
                Ok(()) => {
                    for d in [c.function_timeout, c.ready_timeout, c.stop_grace] {
                        assert_schedulable(d)?;
                    }
                }
                Err(e) => prop_assert!(e.to_string().len() > 10),
            },
            Err(e) => prop_assert!(!e.is_empty()),
        }
    }
}

/// `s` as a TOML basic string.
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}
