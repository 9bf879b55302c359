//! What invokes a function besides a request, parsed from its annotations.
//!
//! | annotation              | value                                                            |
//! |-------------------------|------------------------------------------------------------------|
//! | `bramble.trigger.gpio`  | comma-separated `LINE:EDGE[:option...]`, `EDGE` = `rising`, `falling` or `both` |
//! | `topic` + `schedule`    | the cron-connector's: `topic` includes `cron-function`, `schedule` is 5-field cron, `@hourly`… or `@every DURATION` |
//! | `bramble.trigger.sensor`| comma-separated `KIND:ID:above=X[:option...]` or `KIND:ID:below=X[:option...]` |
//!
//! **GPIO options**: `path=/p` (the path invoked, default `/`), and, when the line is not
//! also listed in `bramble.gpio`, the input options of a grant (`pull-up`, `pull-down`,
//! `bias-disabled`, `debounce=DURATION`, `active-low`): a trigger grants its line as an
//! input, so the function runs where the line is. When the line is in `bramble.gpio` it must
//! be an input there and its options are written there. Edges are logical: with
//! `active-low`, pressing a button that pulls the line low is a `rising` edge.
//!
//! `board=NAME` puts the line on board `NAME` of a cluster instead: that board requests it as
//! an input for the trigger itself (with the trigger's input options; the function is granted
//! nothing), watches it, and invokes the function wherever it runs, like any request. The
//! function is placed as if the trigger were not there. Other boards ignore the trigger; so
//! does a board not in a cluster, unless its name (`cluster.board`, else its host name) is
//! `NAME`.
//!
//! **Sensor options**: `every=DURATION` (poll period, default 30s, at least 1s),
//! `hysteresis=X` (the value must come back by this much before the trigger can fire again,
//! default 0), `path=/p`, and `board=NAME`: only board `NAME` polls the sensor (without it,
//! every board that runs the function does). The function is invoked when the value goes beyond the threshold
//! (a new trigger whose first reading is already beyond fires too), and not again until it
//! has come back by the hysteresis. Which side the value is on survives a restart.
//!
//! Schedules are evaluated in the node's local time zone, like cron (across a daylight
//! saving change, as the `croner` crate resolves it). Each cron time fires at most once: one
//! passed more than a minute ago when the node looks (the clock jumped, the board was
//! suspended) is skipped, and a clock set back by more than a minute continues from the new
//! time (see `sources`). `@every 30s` counts from when the trigger starts.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr as _;
use std::time::Duration;

use bramble_hardware::grants::{self, Direction, GrantError, Grants, LineGrant};
use bramble_hardware::{Edge, sensors};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// The annotation subscribing a function to GPIO edges.
pub const GPIO_KEY: &str = "bramble.trigger.gpio";
/// The annotation polling sensors.
pub const SENSOR_KEY: &str = "bramble.trigger.sensor";
/// The cron-connector's topic annotation.
pub const TOPIC_KEY: &str = "topic";
/// The topic that asks for a schedule.
pub const CRON_TOPIC: &str = "cron-function";
/// The cron-connector's schedule annotation.
pub const SCHEDULE_KEY: &str = "schedule";

/// Default sensor poll period.
pub const DEFAULT_SENSOR_EVERY: Duration = Duration::from_secs(30);
/// Shortest sensor poll period (a 1-Wire conversion alone takes up to 750 ms).
pub const MIN_SENSOR_EVERY: Duration = Duration::from_secs(1);
/// Shortest `@every` period.
pub const MIN_EVERY: Duration = Duration::from_secs(1);

/// Which edges fire a GPIO trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edges {
    /// 0 → 1 (logical).
    Rising,
    /// 1 → 0 (logical).
    Falling,
    /// Both.
    Both,
}

impl Edges {
    /// Whether `edge` (logical) fires the trigger.
    pub fn matches(self, edge: Edge) -> bool {
        match self {
            Edges::Rising => edge == Edge::Rising,
            Edges::Falling => edge == Edge::Falling,
            Edges::Both => true,
        }
    }
}

impl fmt::Display for Edges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Edges::Rising => "rising",
            Edges::Falling => "falling",
            Edges::Both => "both",
        })
    }
}

/// Edges of a GPIO line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpioTrigger {
    /// The line name.
    pub line: String,
    /// Which edges fire.
    pub edges: Edges,
    /// The function sees logical levels (its grant's `active-low`).
    pub active_low: bool,
    /// The board the line is on (`board=`), which requests it as `hold` for the trigger
    /// itself; `None`: the line is the function's, requested where it runs.
    pub board: Option<String>,
    /// The input the trigger requests itself (with `board=`).
    pub hold: Option<LineGrant>,
}

/// When a schedule fires.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// A cron pattern, in local time.
    Cron(Box<Cron>),
    /// A fixed period from when the trigger starts.
    Every(Duration),
}

/// A schedule, as written and parsed.
#[derive(Debug, Clone)]
pub struct ScheduleTrigger {
    /// The `schedule` annotation as written.
    pub text: String,
    /// Parsed.
    pub schedule: Schedule,
}

impl PartialEq for ScheduleTrigger {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

/// Which side of the threshold fires.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    /// Fires when the value rises above.
    Above(f64),
    /// Fires when the value falls below.
    Below(f64),
}

/// A sensor polled at an interval.
#[derive(Debug, Clone, PartialEq)]
pub struct SensorTrigger {
    /// The sensor id, `KIND:ID`.
    pub sensor: String,
    /// The threshold and its direction.
    pub threshold: Threshold,
    /// The poll period.
    pub every: Duration,
    /// How far back the value must come to re-arm.
    pub hysteresis: f64,
    /// The only board that polls it (`board=`); `None`: every board that runs the function.
    pub board: Option<String>,
}

/// What fires.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// GPIO edges.
    Gpio(GpioTrigger),
    /// A schedule.
    Schedule(ScheduleTrigger),
    /// Sensor threshold crossings.
    Sensor(SensorTrigger),
}

/// One trigger of a function.
#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    /// What fires it.
    pub source: Source,
    /// The path invoked (with its query), `/` by default.
    pub path: String,
}

impl Trigger {
    /// A name unique among the function's triggers, safe as a file name: `gpio-GPIO17`,
    /// `gpio-GPIO17-on-pi2`, `schedule`, `sensor-w1-28-0316a27966ff-above-30`.
    pub fn id(&self) -> String {
        let raw = match &self.source {
            Source::Gpio(g) => match &g.board {
                Some(board) => format!("gpio-{}-on-{board}", g.line),
                None => format!("gpio-{}", g.line),
            },
            Source::Schedule(_) => "schedule".to_owned(),
            Source::Sensor(s) => {
                let (side, value) = match s.threshold {
                    Threshold::Above(v) => ("above", v),
                    Threshold::Below(v) => ("below", v),
                };
                match &s.board {
                    Some(board) => format!("sensor-{}-{side}-{value}-on-{board}", s.sensor),
                    None => format!("sensor-{}-{side}-{value}", s.sensor),
                }
            }
        };
        raw.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    }

    /// What fires it, for people: `GPIO17 falling`, `*/5 * * * *`, `w1:28-… above 30
    /// every 30s`.
    pub fn describe(&self) -> String {
        let on = |board: &Option<String>| {
            board
                .as_ref()
                .map(|b| format!(" on {b}"))
                .unwrap_or_default()
        };
        match &self.source {
            Source::Gpio(g) => format!("{} {}{}", g.line, g.edges, on(&g.board)),
            Source::Schedule(s) => s.text.clone(),
            Source::Sensor(s) => {
                let (side, value) = match s.threshold {
                    Threshold::Above(v) => ("above", v),
                    Threshold::Below(v) => ("below", v),
                };
                format!(
                    "{} {side} {value} every {}{}",
                    s.sensor,
                    humantime::format_duration(s.every),
                    on(&s.board)
                )
            }
        }
    }

    /// The board this trigger belongs to (`board=`), if it names one: only that board runs it.
    pub fn board(&self) -> Option<&str> {
        match &self.source {
            Source::Gpio(g) => g.board.as_deref(),
            Source::Sensor(s) => s.board.as_deref(),
            Source::Schedule(_) => None,
        }
    }

    /// `gpio`, `schedule` or `sensor`.
    pub fn kind(&self) -> &'static str {
        match self.source {
            Source::Gpio(_) => "gpio",
            Source::Schedule(_) => "schedule",
            Source::Sensor(_) => "sensor",
        }
    }
}

fn error(key: &'static str, item: &str, reason: impl Into<String>) -> GrantError {
    GrantError {
        key,
        item: item.to_owned(),
        reason: reason.into(),
    }
}

/// The function's triggers. Changes nothing; an error names the annotation and the item.
pub fn parse(annotations: &BTreeMap<String, String>) -> Result<Vec<Trigger>, GrantError> {
    let mut triggers = Vec::new();
    let granted = grants::parse(annotations)?.unwrap_or_default();
    for item in items(annotations.get(GPIO_KEY)) {
        let (trigger, _) = parse_gpio(item, &granted)?;
        if triggers.iter().any(|t: &Trigger| t.id() == trigger.id()) {
            return Err(error(GPIO_KEY, item, "this line has a trigger already"));
        }
        triggers.push(trigger);
    }
    if let Some(trigger) = parse_schedule(annotations)? {
        triggers.push(trigger);
    }
    for item in items(annotations.get(SENSOR_KEY)) {
        let trigger = parse_sensor(item)?;
        if triggers.iter().any(|t| t.id() == trigger.id()) {
            return Err(error(SENSOR_KEY, item, "the same trigger is listed twice"));
        }
        triggers.push(trigger);
    }
    Ok(triggers)
}

/// The function's hardware grants (`bramble.gpio`, `bramble.i2c`, `bramble.sensors`,
/// `bramble.spi`, `bramble.pwm`), plus the input lines its GPIO triggers watch. `Ok(None)`:
/// no hardware at all.
pub fn hardware_grants(
    annotations: &BTreeMap<String, String>,
) -> Result<Option<Grants>, GrantError> {
    let mut merged = grants::parse(annotations)?.unwrap_or_default();
    let granted = merged.clone();
    for item in items(annotations.get(GPIO_KEY)) {
        let (trigger, implied) = parse_gpio(item, &granted)?;
        if let (Source::Gpio(g), Some(grant)) = (trigger.source, implied) {
            merged.gpio.insert(g.line, grant);
        }
    }
    Ok((!merged.is_empty()).then_some(merged))
}

fn items(value: Option<&String>) -> impl Iterator<Item = &str> {
    value
        .map(String::as_str)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// A GPIO trigger, and the input grant it implies when its line is not in `bramble.gpio`.
fn parse_gpio(item: &str, granted: &Grants) -> Result<(Trigger, Option<LineGrant>), GrantError> {
    let err = |reason: String| error(GPIO_KEY, item, reason);
    let mut parts = item.split(':');
    let line = parts.next().unwrap_or_default();
    grants::validate_line_name(line).map_err(err)?;
    let edges = match parts.next() {
        Some("rising") => Edges::Rising,
        Some("falling") => Edges::Falling,
        Some("both") => Edges::Both,
        Some(other) => {
            return Err(err(format!(
                "edge {other:?} is not rising, falling or both (write {line}:falling)"
            )));
        }
        None => {
            return Err(err(format!(
                "missing edge (write {line}:rising, {line}:falling or {line}:both)"
            )));
        }
    };
    let mut path = None;
    let mut board = None;
    let mut electrical = Vec::new();
    for option in parts {
        match option.split_once('=') {
            Some(("path", value)) => {
                if path.is_some() {
                    return Err(err("option path is given more than once".to_owned()));
                }
                path = Some(parse_path(value).map_err(err)?);
            }
            Some(("board", value)) => {
                if board.is_some() {
                    return Err(err("option board is given more than once".to_owned()));
                }
                board = Some(parse_board(value).map_err(err)?);
            }
            _ => electrical.push(option),
        }
    }
    let input = |electrical: &[&str]| {
        let spec = std::iter::once(line)
            .chain(std::iter::once("in"))
            .chain(electrical.iter().copied())
            .collect::<Vec<_>>()
            .join(":");
        grants::parse_line(&spec)
            .map(|(_, grant)| grant)
            .map_err(|reason| {
                err(format!(
                    "{reason} (trigger options: path=/p, board=NAME, pull-up, pull-down, \
                 bias-disabled, debounce=DURATION, active-low)"
                ))
            })
    };
    // On a named board the trigger holds the line itself: the function's grants (for the
    // board it runs on) have nothing to do with it.
    if let Some(board) = board {
        let grant = input(&electrical)?;
        let trigger = Trigger {
            source: Source::Gpio(GpioTrigger {
                line: line.to_owned(),
                edges,
                active_low: grant.active_low,
                board: Some(board),
                hold: Some(grant),
            }),
            path: path.unwrap_or_else(|| "/".to_owned()),
        };
        return Ok((trigger, None));
    }
    let (grant, implied) = match granted.gpio.get(line) {
        Some(grant) if grant.direction == Direction::Out => {
            return Err(err(format!(
                "{line} is granted as an output in {}: a trigger needs an input",
                grants::GPIO_KEY
            )));
        }
        Some(_) if !electrical.is_empty() => {
            return Err(err(format!(
                "{line} is also listed in {}: write its options ({}) there",
                grants::GPIO_KEY,
                electrical.join(", ")
            )));
        }
        Some(grant) => (*grant, None),
        None => {
            let grant = input(&electrical)?;
            (grant, Some(grant))
        }
    };
    let trigger = Trigger {
        source: Source::Gpio(GpioTrigger {
            line: line.to_owned(),
            edges,
            active_low: grant.active_low,
            board: None,
            hold: None,
        }),
        path: path.unwrap_or_else(|| "/".to_owned()),
    };
    Ok((trigger, implied))
}

/// A board's name (`board=NAME`), as a cluster takes it.
fn parse_board(value: &str) -> Result<String, String> {
    bramble_cluster::names::validate("board", value)
        .map(|()| value.to_owned())
        .map_err(|e| format!("board={value}: {e}"))
}

/// A path to invoke: starts with `/`, printable ASCII, no spaces.
fn parse_path(value: &str) -> Result<String, String> {
    if !value.starts_with('/') {
        return Err(format!("path={value}: the path must start with '/'"));
    }
    if value.len() > 1024 || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "path={value}: printable ASCII without spaces, at most 1024 bytes"
        ));
    }
    if value.parse::<axum::http::uri::PathAndQuery>().is_err() {
        return Err(format!("path={value}: not a valid URL path"));
    }
    Ok(value.to_owned())
}

fn parse_schedule(annotations: &BTreeMap<String, String>) -> Result<Option<Trigger>, GrantError> {
    let cron_topic = annotations
        .get(TOPIC_KEY)
        .is_some_and(|topics| topics.split(',').any(|t| t.trim() == CRON_TOPIC));
    if !cron_topic {
        return Ok(None);
    }
    let Some(text) = annotations.get(SCHEDULE_KEY).map(|s| s.trim()) else {
        return Err(error(
            SCHEDULE_KEY,
            "",
            format!(
                "{TOPIC_KEY}={CRON_TOPIC} needs a {SCHEDULE_KEY} annotation, e.g. \"*/5 * * * *\""
            ),
        ));
    };
    let schedule = parse_schedule_text(text).map_err(|reason| error(SCHEDULE_KEY, text, reason))?;
    Ok(Some(Trigger {
        source: Source::Schedule(ScheduleTrigger {
            text: text.to_owned(),
            schedule,
        }),
        path: "/".to_owned(),
    }))
}

/// A 5-field cron pattern, a `@descriptor`, or `@every DURATION`.
pub fn parse_schedule_text(text: &str) -> Result<Schedule, String> {
    if let Some(period) = text.strip_prefix("@every") {
        let period = period.trim();
        let every = humantime::parse_duration(period)
            .map_err(|e| format!("@every {period}: {e} (write e.g. @every 30s)"))?;
        if every < MIN_EVERY {
            return Err(format!(
                "@every {period} is shorter than {}",
                humantime::format_duration(MIN_EVERY)
            ));
        }
        if every > crate::function::MAX_PERIOD {
            return Err(format!(
                "@every {period} is longer than {}",
                humantime::format_duration(crate::function::MAX_PERIOD)
            ));
        }
        return Ok(Schedule::Every(every));
    }
    if !text.starts_with('@') && text.split_whitespace().count() != 5 {
        return Err(
            "a schedule has 5 fields: minute hour day-of-month month day-of-week \
             (e.g. \"*/5 * * * *\"), or @hourly, @daily, @weekly, @monthly, @yearly, \
             @every DURATION"
                .to_owned(),
        );
    }
    let parsed = if text.starts_with('@') {
        Cron::from_str(text)
    } else {
        CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(text)
    };
    parsed
        .map(|cron| Schedule::Cron(Box::new(cron)))
        .map_err(|e| format!("not a cron schedule: {e}"))
}

fn parse_sensor(item: &str) -> Result<Trigger, GrantError> {
    let err = |reason: String| error(SENSOR_KEY, item, reason);
    let mut parts = item.split(':');
    let sensor = match (parts.next(), parts.next()) {
        (Some(kind), Some(id)) => format!("{kind}:{id}"),
        _ => {
            return Err(err(
                "expected KIND:ID:above=X or KIND:ID:below=X, e.g. w1:28-0316a27966ff:above=30"
                    .to_owned(),
            ));
        }
    };
    sensors::validate_id(&sensor).map_err(err)?;
    let mut threshold = None;
    let mut every = None;
    let mut hysteresis = None;
    let mut path = None;
    let mut board = None;
    for option in parts {
        let Some((name, value)) = option.split_once('=') else {
            return Err(err(format!(
                "option {option:?} needs a value (options: above=X, below=X, every=DURATION, \
                 hysteresis=X, path=/p, board=NAME)"
            )));
        };
        let number = || {
            value
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| err(format!("{name}={value}: not a number")))
        };
        let duplicate = match name {
            "above" | "below" => threshold
                .replace(if name == "above" {
                    Threshold::Above(number()?)
                } else {
                    Threshold::Below(number()?)
                })
                .is_some(),
            "every" => {
                let period = humantime::parse_duration(value)
                    .map_err(|e| err(format!("every={value}: {e} (write e.g. every=30s)")))?;
                if period < MIN_SENSOR_EVERY {
                    return Err(err(format!(
                        "every={value} is shorter than {}",
                        humantime::format_duration(MIN_SENSOR_EVERY)
                    )));
                }
                if period > crate::function::MAX_PERIOD {
                    return Err(err(format!(
                        "every={value} is longer than {}",
                        humantime::format_duration(crate::function::MAX_PERIOD)
                    )));
                }
                every.replace(period).is_some()
            }
            "hysteresis" => {
                let h = number()?;
                if h < 0.0 {
                    return Err(err(format!("hysteresis={value} is negative")));
                }
                hysteresis.replace(h).is_some()
            }
            "path" => path.replace(parse_path(value).map_err(err)?).is_some(),
            "board" => board.replace(parse_board(value).map_err(err)?).is_some(),
            other => {
                return Err(err(format!(
                    "unknown option {other:?} (options: above=X, below=X, every=DURATION, \
                     hysteresis=X, path=/p, board=NAME)"
                )));
            }
        };
        if duplicate {
            return Err(err(if matches!(name, "above" | "below") {
                "one threshold per trigger (list a second trigger for the other side)".to_owned()
            } else {
                format!("option {name} is given more than once")
            }));
        }
    }
    let threshold =
        threshold.ok_or_else(|| err("missing threshold: add above=X or below=X".to_owned()))?;
    Ok(Trigger {
        source: Source::Sensor(SensorTrigger {
            sensor,
            threshold,
            every: every.unwrap_or(DEFAULT_SENSOR_EVERY),
            hysteresis: hysteresis.unwrap_or(0.0),
            board,
        }),
        path: path.unwrap_or_else(|| "/".to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn gpio(trigger: &Trigger) -> &GpioTrigger {
        match &trigger.source {
            Source::Gpio(g) => g,
            other => panic!("not a GPIO trigger: {other:?}"),
        }
    }

    #[test]
    fn no_annotations_no_triggers() {
        assert_eq!(parse(&BTreeMap::new()), Ok(Vec::new()));
        assert_eq!(hardware_grants(&BTreeMap::new()), Ok(None));
    }

    #[test]
    fn gpio_trigger_grants_its_line_as_an_input() {
        let a = annotations(&[(
            GPIO_KEY,
            "GPIO17:rising:pull-up:active-low:debounce=20ms:path=/press?x=1",
        )]);
        let triggers = parse(&a).unwrap();
        assert_eq!(triggers.len(), 1);
        let g = gpio(&triggers[0]);
        assert_eq!(
            (g.line.as_str(), g.edges, g.active_low),
            ("GPIO17", Edges::Rising, true)
        );
        assert_eq!(triggers[0].path, "/press?x=1");
        assert_eq!(triggers[0].id(), "gpio-GPIO17");
        assert_eq!(triggers[0].describe(), "GPIO17 rising");
        let grants = hardware_grants(&a).unwrap().unwrap();
        assert_eq!(
            grants.gpio_summary(),
            "GPIO17:in:pull-up:debounce=20ms:active-low"
        );
    }

    #[test]
    fn gpio_trigger_on_a_granted_input_uses_its_grant() {
        let a = annotations(&[
            (grants::GPIO_KEY, "GPIO17:in:active-low,GPIO27:out"),
            (GPIO_KEY, "GPIO17:both"),
        ]);
        let triggers = parse(&a).unwrap();
        assert!(gpio(&triggers[0]).active_low);
        assert_eq!(
            hardware_grants(&a).unwrap().unwrap().gpio_summary(),
            "GPIO17:in:active-low, GPIO27:out"
        );
    }

    #[test]
    fn a_gpio_trigger_on_a_named_board_holds_its_line_and_grants_nothing() {
        let a = annotations(&[
            (grants::GPIO_KEY, "GPIO17:out"),
            (
                GPIO_KEY,
                "GPIO17:falling:board=pi-garage:pull-up:active-low,GPIO17:rising:board=pi2",
            ),
        ]);
        let triggers = parse(&a).unwrap();
        assert_eq!(triggers.len(), 2);
        let g = gpio(&triggers[0]);
        assert_eq!(g.board.as_deref(), Some("pi-garage"));
        assert!(g.active_low);
        let hold = g.hold.unwrap();
        assert_eq!(hold.direction, Direction::In);
        assert!(hold.active_low);
        assert_eq!(triggers[0].id(), "gpio-GPIO17-on-pi-garage");
        assert_eq!(triggers[0].describe(), "GPIO17 falling on pi-garage");
        assert_eq!(triggers[0].board(), Some("pi-garage"));
        assert_eq!(triggers[1].id(), "gpio-GPIO17-on-pi2");
        // The function's own GPIO17 (an output where it runs) is not the trigger's line.
        assert_eq!(
            hardware_grants(&a).unwrap().unwrap().gpio_summary(),
            "GPIO17:out"
        );
        let only_trigger = annotations(&[(GPIO_KEY, "GPIO17:rising:board=pi2")]);
        assert_eq!(hardware_grants(&only_trigger), Ok(None));
        let sensor = annotations(&[(SENSOR_KEY, "w1:28-0316a27966ff:above=30:board=pi2")]);
        let triggers = parse(&sensor).unwrap();
        assert_eq!(triggers[0].board(), Some("pi2"));
        assert_eq!(
            triggers[0].id(),
            "sensor-w1-28-0316a27966ff-above-30-on-pi2"
        );
        assert!(
            triggers[0].describe().ends_with(" on pi2"),
            "{}",
            triggers[0].describe()
        );
        for (key, value, expected) in [
            (GPIO_KEY, "GPIO17:rising:board=Pi_2", "board=Pi_2"),
            (GPIO_KEY, "GPIO17:rising:board=", "board="),
            (GPIO_KEY, "GPIO17:rising:board=a:board=b", "more than once"),
            (GPIO_KEY, "GPIO17:rising:board=a:out", "unknown option"),
            (
                SENSOR_KEY,
                "w1:28-0316a27966ff:above=30:board=a:board=b",
                "more than once",
            ),
        ] {
            let e = parse(&annotations(&[(key, value)])).unwrap_err();
            assert!(e.to_string().contains(expected), "{value}: {e}");
        }
    }

    #[test]
    fn bad_gpio_triggers_are_explained() {
        let cases = [
            ("GPIO17", "missing edge"),
            ("GPIO17:up", "is not rising, falling or both"),
            ("GPIO17:rising:initial=1", "applies to outputs only"),
            ("GPIO17:rising:wobble", "unknown option"),
            ("GPIO17:rising:path=press", "must start with '/'"),
            ("GPIO 17:rising", "contains"),
            ("GPIO17:rising,GPIO17:falling", "has a trigger already"),
        ];
        for (value, expected) in cases {
            let e = parse(&annotations(&[(GPIO_KEY, value)])).unwrap_err();
            assert_eq!(e.key, GPIO_KEY);
            assert!(e.to_string().contains(expected), "{value}: {e}");
        }
        let output = annotations(&[
            (grants::GPIO_KEY, "GPIO27:out"),
            (GPIO_KEY, "GPIO27:rising"),
        ]);
        assert!(parse(&output).unwrap_err().reason.contains("output"));
        let options_twice = annotations(&[
            (grants::GPIO_KEY, "GPIO17:in"),
            (GPIO_KEY, "GPIO17:rising:pull-up"),
        ]);
        let e = hardware_grants(&options_twice).unwrap_err();
        assert!(
            e.reason.contains("write its options (pull-up) there"),
            "{e}"
        );
    }

    #[test]
    fn cron_connector_annotations_make_a_schedule() {
        let a = annotations(&[
            (TOPIC_KEY, "nats,cron-function"),
            (SCHEDULE_KEY, "*/5 * * * *"),
        ]);
        let triggers = parse(&a).unwrap();
        assert_eq!(triggers.len(), 1);
        assert_eq!(triggers[0].kind(), "schedule");
        assert_eq!(triggers[0].path, "/");
        // Without the topic the schedule is just an annotation.
        assert!(
            parse(&annotations(&[(SCHEDULE_KEY, "* * * * *")]))
                .unwrap()
                .is_empty()
        );
        for text in [
            "@hourly",
            "@daily",
            "0 9 * * MON-FRI",
            "0 0 1 jan *",
            "@every 1m30s",
        ] {
            assert!(parse_schedule_text(text).is_ok(), "{text}");
        }
        assert!(matches!(
            parse_schedule_text("@every 2s"),
            Ok(Schedule::Every(d)) if d == Duration::from_secs(2)
        ));
    }

    #[test]
    fn bad_schedules_are_refused() {
        for (text, expected) in [
            ("* * * *", "5 fields"),
            ("0 * * * * *", "5 fields"),
            ("61 * * * *", "not a cron schedule"),
            ("@every soon", "@every soon"),
            ("@every 10ms", "shorter than"),
        ] {
            let a = annotations(&[(TOPIC_KEY, CRON_TOPIC), (SCHEDULE_KEY, text)]);
            let e = parse(&a).unwrap_err();
            assert_eq!(e.key, SCHEDULE_KEY);
            assert!(e.to_string().contains(expected), "{text}: {e}");
        }
        let e = parse(&annotations(&[(TOPIC_KEY, CRON_TOPIC)])).unwrap_err();
        assert!(e.reason.contains("needs a schedule"), "{e}");
    }

    #[test]
    fn sensor_triggers() {
        let a = annotations(&[(
            SENSOR_KEY,
            "w1:28-0316a27966ff:above=30.5:every=5s:hysteresis=0.5, w1:28-0316a27966ff:below=5",
        )]);
        let triggers = parse(&a).unwrap();
        assert_eq!(triggers.len(), 2);
        let Source::Sensor(s) = &triggers[0].source else {
            panic!("not a sensor trigger");
        };
        assert_eq!(s.sensor, "w1:28-0316a27966ff");
        assert_eq!(s.threshold, Threshold::Above(30.5));
        assert_eq!((s.every, s.hysteresis), (Duration::from_secs(5), 0.5));
        assert_eq!(triggers[0].id(), "sensor-w1-28-0316a27966ff-above-30.5");
        assert_eq!(
            triggers[0].describe(),
            "w1:28-0316a27966ff above 30.5 every 5s"
        );
        assert_ne!(triggers[0].id(), triggers[1].id());
        for (value, expected) in [
            ("w1:28-0316a27966ff", "missing threshold"),
            ("w1:28-0316a27966ff:above=hot", "not a number"),
            ("w1:28-0316a27966ff:above=1:below=0", "one threshold"),
            ("w1:28-0316a27966ff:above=1:every=100ms", "shorter than"),
            ("w1:28-0316a27966ff:above=1:hysteresis=-1", "negative"),
            ("w1:zz:above=1", "w1"),
            ("spi:0:above=1", "unknown sensor kind"),
            ("w1", "expected KIND:ID"),
        ] {
            let e = parse(&annotations(&[(SENSOR_KEY, value)])).unwrap_err();
            assert!(e.to_string().contains(expected), "{value}: {e}");
        }
    }
}
