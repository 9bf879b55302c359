//! What produces trigger events: GPIO edges, schedules and sensor polls. Each source runs as
//! a task sending `(event, count)` to its trigger's queue; it never waits for delivery.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Local};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc::UnboundedSender;
use tracing::{info, warn};

use super::journal::now_ms;
use super::spec::{Edges, GpioTrigger, Schedule, ScheduleTrigger, SensorTrigger, Threshold};
use crate::hardware::{Edge, Hardware};

/// What a source tells its trigger.
#[derive(Debug)]
pub(crate) enum Message {
    /// An event, standing for `count` events.
    Event { event: Value, count: u64 },
    /// State the source wants back after a restart (kept in the trigger's queue file).
    Memo(Value),
}

/// Where a source sends its messages.
pub(crate) type Events = UnboundedSender<Message>;

fn message(event: Value, count: u64) -> Message {
    Message::Event { event, count }
}

/// How often a GPIO trigger retries watching a line that is not requested (yet).
const WATCH_RETRY: Duration = Duration::from_secs(1);
/// Longest sleep of the schedule loop, so that a wall clock set during the sleep (a Pi
/// without a real-time clock gets its time from the network after boot) is noticed.
const CLOCK_CHECK: Duration = Duration::from_secs(30);
/// A cron time further in the past than this when the loop wakes up is skipped, not run:
/// the clock jumped.
const LATE_LIMIT: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// Edges of a line, logical (the function's `active-low` applied), filtered.
pub(crate) async fn gpio(hardware: Arc<Hardware>, trigger: GpioTrigger, events: Events) {
    let mut warned = false;
    let mut edges = loop {
        match hardware.watch(&trigger.line) {
            Ok(rx) => break rx,
            Err(e) => {
                if !warned {
                    warn!(line = %trigger.line, error = %e, "GPIO trigger waits for its line");
                    warned = true;
                }
                tokio::time::sleep(WATCH_RETRY).await;
            }
        }
    };
    if warned {
        info!(line = %trigger.line, "GPIO trigger watching its line");
    }
    let mut previous: Option<Edge> = None;
    let mut missed_matching = 0u64;
    loop {
        match edges.recv().await {
            Ok(event) => {
                let event = event.logical(trigger.active_low);
                previous = Some(event.edge);
                if !trigger.edges.matches(event.edge) {
                    continue;
                }
                let count = 1 + std::mem::take(&mut missed_matching);
                let value = match serde_json::to_value(&event) {
                    Ok(value) => value,
                    Err(e) => {
                        warn!(error = %e, "cannot encode an edge");
                        continue;
                    }
                };
                if events.send(message(value, count)).is_err() {
                    return;
                }
            }
            Err(RecvError::Lagged(missed)) => {
                let matching = matching_in_gap(previous, missed, trigger.edges);
                warn!(line = %trigger.line, missed, "GPIO trigger fell behind; the edges it missed are counted in the next invocation");
                missed_matching = missed_matching.saturating_add(matching);
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// How many of `missed` consecutive edges after `previous` are ones `edges` wants. Edges of
/// a line alternate, so the missed ones are known but for the first when `previous` is not.
fn matching_in_gap(previous: Option<Edge>, missed: u64, edges: Edges) -> u64 {
    match (edges, previous) {
        (Edges::Both, _) => missed,
        // Alternating from the edge after `previous`: odd positions are its opposite.
        (Edges::Rising | Edges::Falling, Some(previous)) => {
            let opposite_wanted = edges.matches(previous.inverted());
            if opposite_wanted {
                missed.div_ceil(2)
            } else {
                missed / 2
            }
        }
        (Edges::Rising | Edges::Falling, None) => missed.div_ceil(2),
    }
}

/// A schedule: cron times in local time, or a fixed period.
pub(crate) async fn schedule(trigger: ScheduleTrigger, events: Events) {
    match trigger.schedule {
        Schedule::Every(period) => {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                if events.send(message(fired(Local::now()), 1)).is_err() {
                    return;
                }
            }
        }
        Schedule::Cron(cron) => {
            let mut next = match cron.find_next_occurrence(&Local::now(), false) {
                Ok(next) => next,
                Err(e) => {
                    warn!(schedule = %trigger.text, error = %e, "schedule never fires");
                    return;
                }
            };
            loop {
                let now = Local::now();
                if now < next {
                    let wait = (next - now).to_std().unwrap_or(Duration::ZERO);
                    tokio::time::sleep(wait.min(CLOCK_CHECK)).await;
                    continue;
                }
                if now - next <= LATE_LIMIT {
                    if events.send(message(fired(next), 1)).is_err() {
                        return;
                    }
                } else {
                    warn!(schedule = %trigger.text, missed = %next, "the clock jumped past a scheduled time; skipping it");
                }
                next = match cron.find_next_occurrence(&now, false) {
                    Ok(next) => next,
                    Err(e) => {
                        warn!(schedule = %trigger.text, error = %e, "schedule has no further times");
                        return;
                    }
                };
            }
        }
    }
}

fn fired(at: DateTime<Local>) -> Value {
    json!({ "scheduled_at": at.to_rfc3339() })
}

/// Polls a sensor and sends an event when the value crosses the threshold. A value already
/// beyond the threshold when the trigger is new counts as a crossing; which side the value
/// is on is kept (`memo`: `{"beyond":bool}`), so a restart of the node does not fire again.
pub(crate) async fn sensor(
    hardware: Arc<Hardware>,
    trigger: SensorTrigger,
    memo: Option<Value>,
    events: Events,
) {
    let mut ticks = tokio::time::interval(trigger.every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let beyond = memo
        .as_ref()
        .and_then(|m| m.get("beyond"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut crossing = Crossing::new(trigger.threshold, trigger.hysteresis, beyond);
    let mut failing = false;
    loop {
        ticks.tick().await;
        let reader = Arc::clone(&hardware);
        let id = trigger.sensor.clone();
        let reading = tokio::task::spawn_blocking(move || reader.read_sensor(&id)).await;
        let reading = match reading {
            Ok(Ok(reading)) => reading,
            Ok(Err(e)) => {
                if !failing {
                    warn!(sensor = %trigger.sensor, error = %e, "sensor trigger cannot read its sensor; retrying");
                    failing = true;
                }
                continue;
            }
            Err(e) => {
                warn!(sensor = %trigger.sensor, error = %e, "sensor read panicked");
                continue;
            }
        };
        if failing {
            info!(sensor = %trigger.sensor, "sensor readable again");
            failing = false;
        }
        let was_beyond = crossing.beyond;
        let fire = crossing.update(reading.value);
        if crossing.beyond != was_beyond
            && events
                .send(Message::Memo(json!({ "beyond": crossing.beyond })))
                .is_err()
        {
            return;
        }
        if fire {
            let (side, threshold) = match trigger.threshold {
                Threshold::Above(t) => ("above", t),
                Threshold::Below(t) => ("below", t),
            };
            let event = json!({
                "sensor": trigger.sensor,
                "kind": reading.kind,
                "value": reading.value,
                "unit": reading.unit,
                "crossed": side,
                "threshold": threshold,
                "timestamp_ms": now_ms(),
            });
            if events.send(message(event, 1)).is_err() {
                return;
            }
        }
    }
}

/// Threshold crossing with hysteresis.
#[derive(Debug)]
struct Crossing {
    threshold: Threshold,
    hysteresis: f64,
    /// Beyond the threshold (fired, waiting to come back by the hysteresis).
    beyond: bool,
}

impl Crossing {
    fn new(threshold: Threshold, hysteresis: f64, beyond: bool) -> Crossing {
        Crossing {
            threshold,
            hysteresis,
            beyond,
        }
    }

    /// Takes a value; true when it crosses the threshold.
    fn update(&mut self, value: f64) -> bool {
        let (beyond, back) = match self.threshold {
            Threshold::Above(t) => (value > t, value <= t - self.hysteresis),
            Threshold::Below(t) => (value < t, value >= t + self.hysteresis),
        };
        if !self.beyond && beyond {
            self.beyond = true;
            return true;
        }
        if self.beyond && back {
            self.beyond = false;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_count_the_edges_that_alternate() {
        // After a rising edge the missed ones are falling, rising, falling, ...
        assert_eq!(matching_in_gap(Some(Edge::Rising), 5, Edges::Falling), 3);
        assert_eq!(matching_in_gap(Some(Edge::Rising), 5, Edges::Rising), 2);
        assert_eq!(matching_in_gap(Some(Edge::Falling), 4, Edges::Rising), 2);
        assert_eq!(matching_in_gap(Some(Edge::Falling), 1, Edges::Falling), 0);
        assert_eq!(matching_in_gap(None, 7, Edges::Both), 7);
        assert_eq!(matching_in_gap(None, 3, Edges::Rising), 2);
    }

    #[test]
    fn crossing_fires_once_per_excursion_with_hysteresis() {
        // Already beyond after a restart: no new invocation until it comes back.
        let mut c = Crossing::new(Threshold::Above(30.0), 1.0, true);
        assert!(!c.update(35.0));
        assert!(!c.update(29.5), "not back by the hysteresis yet");
        assert!(!c.update(31.0), "never re-armed");
        assert!(!c.update(28.9));
        assert!(c.update(30.1), "crossed");
        assert!(!c.update(40.0));
        assert!(
            !c.update(29.0),
            "re-armed at exactly threshold - hysteresis"
        );
        assert!(c.update(30.5));

        // A new trigger and a value already beyond: that is a crossing.
        let mut hot = Crossing::new(Threshold::Above(30.0), 0.0, false);
        assert!(hot.update(31.0));
        assert!(!hot.update(32.0));

        let mut cold = Crossing::new(Threshold::Below(5.0), 0.0, false);
        assert!(!cold.update(10.0));
        assert!(cold.update(4.9));
        assert!(!cold.update(4.0));
        assert!(!cold.update(5.0));
        assert!(cold.update(4.99));
    }
}
