//! What produces trigger events: GPIO edges, schedules and sensor polls. Each source runs as
//! a task sending `(event, count)` to its trigger's queue; it never waits for delivery.

use std::sync::Arc;
use std::time::Duration;

use bramble_hardware::{Edge, Hardware};
use chrono::{DateTime, Local, TimeZone};
use croner::Cron;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc::UnboundedSender;
use tracing::{error, info, warn};

use super::journal::now_ms;
use super::spec::{Edges, GpioTrigger, Schedule, ScheduleTrigger, SensorTrigger, Threshold};
use crate::function::FunctionKey;
use bramble_hardware::grants::{Grants, LineGrant};

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

/// Longest sleep of the schedule loop, so that a wall clock set during the sleep (a Pi
/// without a real-time clock gets its time from the network after boot) is noticed.
const CLOCK_CHECK: Duration = Duration::from_secs(30);
/// A cron time further in the past than this when the loop wakes up is skipped, not run:
/// the clock jumped. A clock set back by more than this starts the schedule again from the
/// new time.
const LATE_LIMIT: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// Edges of a line, logical (the function's `active-low` applied), filtered and counted. The
/// line is the function's (requested where it runs) or, on a named board, the trigger's own
/// ([`Held`]); the trigger waits until it is requested.
pub(crate) async fn gpio(hardware: Arc<Hardware>, trigger: GpioTrigger, events: Events) {
    let mut waited = false;
    let watch = hardware
        .watch_when_requested(&trigger.line, |e| {
            warn!(line = %trigger.line, error = %e, "GPIO trigger waits for its line to be requested");
            waited = true;
        })
        .await;
    let mut edges = match watch {
        Ok(edges) => edges,
        Err(e) => {
            error!(line = %trigger.line, error = %e, "GPIO trigger cannot watch its line; it never fires");
            return;
        }
    };
    if waited {
        info!(line = %trigger.line, "GPIO trigger watching its line");
    }
    let mut counter = EdgeCounter::new(trigger.edges);
    loop {
        match edges.recv().await {
            Ok(event) => {
                let event = event.logical(trigger.active_low);
                let Some(count) = counter.take(event.edge, event.request, event.line_seqno) else {
                    continue;
                };
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
                warn!(line = %trigger.line, missed, "GPIO trigger fell behind; the edges it missed are counted in the next invocation");
                counter.lagged(missed);
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// Who holds the line of a trigger on a named board, for the hardware helper (its grants are
/// shown under this name, e.g. in `bramble gpio get`): `trigger-NAME.NAMESPACE`.
pub(crate) fn holder(function: &FunctionKey) -> String {
    format!("trigger-{function}")
}

/// A line a trigger on a named board (`board=`) requested itself, for as long as the trigger
/// runs: [`Held::release`] gives it back (a drop does too, later).
pub(crate) struct Held {
    hardware: Arc<Hardware>,
    holder: String,
}

impl Held {
    /// Requests `line` as `grant` for `function`'s trigger.
    pub(crate) async fn request(
        hardware: &Arc<Hardware>,
        function: &FunctionKey,
        line: &str,
        grant: LineGrant,
    ) -> Result<Held, bramble_hardware::HardwareError> {
        let holder = holder(function);
        let grants = Grants {
            gpio: std::collections::BTreeMap::from([(line.to_owned(), grant)]),
            ..Grants::default()
        };
        hardware.attach(&holder, grants).await?;
        info!(function = %function, line, "GPIO trigger requested its line");
        Ok(Held {
            hardware: Arc::clone(hardware),
            holder,
        })
    }

    /// Gives the line back, before the trigger's task returns (so a trigger started again
    /// right after finds it free).
    pub(crate) async fn release(mut self) {
        let holder = std::mem::take(&mut self.holder);
        self.hardware.detach(&holder).await;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.holder.is_empty() {
            return;
        }
        let hardware = Arc::clone(&self.hardware);
        let holder = std::mem::take(&mut self.holder);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { hardware.detach(&holder).await });
        }
    }
}

/// Counts what each edge a GPIO trigger receives stands for. The line's sequence numbers
/// count every edge, so a gap is edges that were not received: dropped by the kernel when
/// its buffer was full, or by this trigger falling behind. Wanted edges among them are
/// counted in the next invocation. The numbering starts again at 1 when the line is
/// requested again; across that, the edges before the received one in the new numbering
/// are counted (or, if more, those the trigger fell behind on).
#[derive(Debug)]
struct EdgeCounter {
    edges: Edges,
    /// The request and line sequence number of the last edge received.
    last: Option<(u64, u64)>,
    /// Edges the trigger fell behind on since the last one it received.
    lagged: u64,
    /// Wanted edges missed since the last invocation.
    missed: u64,
}

impl EdgeCounter {
    fn new(edges: Edges) -> EdgeCounter {
        EdgeCounter {
            edges,
            last: None,
            lagged: 0,
            missed: 0,
        }
    }

    /// The trigger fell `n` edges behind (`RecvError::Lagged`).
    fn lagged(&mut self, n: u64) {
        self.lagged = self.lagged.saturating_add(n);
    }

    /// Takes a received edge (logical): `Some(count)` when it fires the trigger, standing
    /// for `count` wanted edges (itself and those missed since the last invocation).
    fn take(&mut self, edge: Edge, request: u64, line_seqno: u64) -> Option<u64> {
        let lagged = std::mem::take(&mut self.lagged);
        let missed = match self.last {
            // No numbering (uAPI v1): only what the trigger fell behind on is known.
            _ if line_seqno == 0 => lagged,
            Some((last_request, last)) if last_request == request && line_seqno > last => {
                line_seqno - last - 1
            }
            // Requested again: numbered from 1.
            Some((last_request, _)) if last_request != request => lagged.max(line_seqno - 1),
            // The first edge the trigger sees: the line's earlier edges are not its own.
            _ => lagged,
        };
        if line_seqno != 0 {
            self.last = Some((request, line_seqno));
        }
        self.missed = self
            .missed
            .saturating_add(wanted_before(missed, edge, self.edges));
        if !self.edges.matches(edge) {
            return None;
        }
        Some(1 + std::mem::take(&mut self.missed))
    }
}

/// How many of the `missed` edges right before `next` are ones `edges` wants. The edges of
/// a line alternate: the one just before `next` is its opposite, the one before that is
/// like `next`, and so on.
fn wanted_before(missed: u64, next: Edge, edges: Edges) -> u64 {
    let opposite = if edges.matches(next.inverted()) {
        missed.div_ceil(2)
    } else {
        0
    };
    let same = if edges.matches(next) { missed / 2 } else { 0 };
    opposite + same
}

/// A schedule: cron times in local time, or a fixed period.
pub(crate) async fn schedule(trigger: ScheduleTrigger, events: Events) {
    match trigger.schedule {
        Schedule::Every(period) => {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                if events.send(message(fired(&Local::now()), 1)).is_err() {
                    return;
                }
            }
        }
        Schedule::Cron(cron) => run_cron(&trigger.text, &cron, Local::now, &events).await,
    }
}

/// Runs a cron schedule on the wall clock `now` until its receiver is gone or it has no
/// further times.
async fn run_cron<Tz>(text: &str, cron: &Cron, now: impl Fn() -> DateTime<Tz>, events: &Events)
where
    Tz: TimeZone,
    Tz::Offset: std::fmt::Display,
{
    let mut ticks = match CronTicks::new(cron, &now()) {
        Ok(ticks) => ticks,
        Err(e) => {
            warn!(schedule = %text, error = %e, "schedule never fires");
            return;
        }
    };
    loop {
        match ticks.poll(cron, &now()) {
            Tick::Sleep(wait) => tokio::time::sleep(wait).await,
            Tick::Fire(at) => {
                if events.send(message(fired(&at), 1)).is_err() {
                    return;
                }
            }
            Tick::Skipped(at) => {
                warn!(schedule = %text, missed = %at.to_rfc3339(), "the clock jumped past a scheduled time; skipping it");
            }
            Tick::Restarted(at) => {
                warn!(schedule = %text, next = %at.to_rfc3339(), "the clock was set back; the schedule continues from the new time");
            }
            Tick::End(e) => {
                warn!(schedule = %text, error = %e, "schedule has no further times");
                return;
            }
        }
    }
}

/// What the cron loop does next.
#[derive(Debug, PartialEq)]
enum Tick<Tz: TimeZone> {
    /// Nothing is due: sleep this long (at most [`CLOCK_CHECK`]) and ask again.
    Sleep(Duration),
    /// Invoke for this scheduled time.
    Fire(DateTime<Tz>),
    /// This time passed more than [`LATE_LIMIT`] ago (a clock jump, a suspended board): not
    /// run.
    Skipped(DateTime<Tz>),
    /// The clock was set back: the next time is now this one.
    Restarted(DateTime<Tz>),
    /// No further times.
    End(String),
}

/// The next-fire-time computation of a cron schedule, on any time zone (the node's local
/// one in use). Each scheduled time is fired at most once, and only when the loop is awake
/// within [`LATE_LIMIT`] of it: a late wake or a jump forward of the clock skips the times
/// it passed (without a burst of invocations), and a clock set back a little does not run
/// a time again.
#[derive(Debug)]
struct CronTicks<Tz: TimeZone> {
    /// The next time to fire (`None`: no further times).
    next: Option<DateTime<Tz>>,
    /// The last time fired or skipped.
    last: Option<DateTime<Tz>>,
}

impl<Tz: TimeZone> CronTicks<Tz> {
    fn new(cron: &Cron, now: &DateTime<Tz>) -> Result<CronTicks<Tz>, String> {
        let next = cron
            .find_next_occurrence(now, false)
            .map_err(|e| e.to_string())?;
        Ok(CronTicks {
            next: Some(next),
            last: None,
        })
    }

    fn poll(&mut self, cron: &Cron, now: &DateTime<Tz>) -> Tick<Tz> {
        let Some(next) = self.next.clone() else {
            return Tick::End("no further times".to_owned());
        };
        if *now < next {
            if let Some(last) = &self.last
                && now.clone() + LATE_LIMIT < *last
            {
                // Set back by more than the late limit: start again from the new time.
                return match cron.find_next_occurrence(now, false) {
                    Ok(next) => {
                        self.next = Some(next.clone());
                        self.last = None;
                        Tick::Restarted(next)
                    }
                    Err(e) => {
                        self.next = None;
                        Tick::End(e.to_string())
                    }
                };
            }
            let wait = (next - now.clone()).to_std().unwrap_or(Duration::ZERO);
            return Tick::Sleep(wait.min(CLOCK_CHECK));
        }
        // Due: the next time is the first one after now, so none is run twice and the
        // times a jump passed are not run one after the other.
        self.next = cron.find_next_occurrence(now, false).ok();
        self.last = Some(next.clone());
        if now.clone() - next.clone() <= LATE_LIMIT {
            Tick::Fire(next)
        } else {
            Tick::Skipped(next)
        }
    }
}

fn fired<Tz>(at: &DateTime<Tz>) -> Value
where
    Tz: TimeZone,
    Tz::Offset: std::fmt::Display,
{
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
                    warn!(sensor = %trigger.sensor, error = %bramble_base::error_chain(&e), "sensor trigger cannot read its sensor; retrying");
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

    use chrono::{FixedOffset, Utc};

    /// Feeds `(edge, request, line_seqno)` edges; the counts of the invocations.
    fn counts(edges: Edges, received: &[(Edge, u64, u64)]) -> Vec<Option<u64>> {
        let mut counter = EdgeCounter::new(edges);
        received
            .iter()
            .map(|&(edge, request, seqno)| counter.take(edge, request, seqno))
            .collect()
    }

    use Edge::{Falling as F, Rising as R};

    #[test]
    fn edges_the_kernel_dropped_are_counted_from_the_sequence_numbers() {
        // No gap: one each.
        assert_eq!(
            counts(Edges::Both, &[(R, 1, 1), (F, 1, 2), (R, 1, 3)]),
            [Some(1), Some(1), Some(1)]
        );
        // 3..=9 dropped by the kernel (7 edges): all counted with edge 10.
        assert_eq!(
            counts(Edges::Both, &[(R, 1, 1), (F, 1, 2), (F, 1, 10)]),
            [Some(1), Some(1), Some(8)]
        );
        // Falling only: 2 (falling) received, 3..=7 dropped (R F R F R), 8 falling:
        // the dropped fallings are 4 and 6.
        assert_eq!(
            counts(Edges::Falling, &[(F, 1, 2), (F, 1, 8)]),
            [Some(1), Some(3)]
        );
        // Rising only, a gap before an edge that is not wanted: counted with the next
        // wanted one. 1 R, 2..=4 dropped (F R F), 5 R... here 5 is F: 2..=4 = R F R
        // before a falling one: 2 rising missed, carried to 6.
        assert_eq!(
            counts(Edges::Rising, &[(R, 1, 1), (F, 1, 5), (R, 1, 6)]),
            [Some(1), None, Some(3)]
        );
    }

    #[test]
    fn numbering_that_starts_again_after_a_new_request() {
        // Request 1 up to 7; the line is requested again (request 2): its edges 1..=3
        // came before the one received, which is counted with them.
        assert_eq!(
            counts(Edges::Both, &[(R, 1, 6), (F, 1, 7), (R, 2, 4)]),
            [Some(1), Some(1), Some(4)]
        );
        // A new request whose first edge is received: nothing missed.
        assert_eq!(
            counts(Edges::Both, &[(R, 1, 6), (F, 1, 7), (R, 2, 1), (F, 2, 2)]),
            [Some(1), Some(1), Some(1), Some(1)]
        );
        // The first edge a trigger sees: the line's earlier edges are not its own.
        assert_eq!(counts(Edges::Both, &[(R, 3, 41)]), [Some(1)]);
        // No numbering at all (0): one each.
        assert_eq!(
            counts(Edges::Both, &[(R, 0, 0), (F, 0, 0)]),
            [Some(1), Some(1)]
        );
    }

    #[test]
    fn edges_the_trigger_fell_behind_on_are_counted_once() {
        // The broadcast dropped 5 edges (2..=6); the gap in the numbering says the same:
        // counted once, not twice.
        let mut counter = EdgeCounter::new(Edges::Both);
        assert_eq!(counter.take(R, 1, 1), Some(1));
        counter.lagged(5);
        assert_eq!(counter.take(R, 1, 7), Some(6));
        // Lagging across a new request: the larger of the two is what is known.
        counter.lagged(9);
        assert_eq!(counter.take(F, 2, 3), Some(10));
        // Before the first edge, only the lag is known.
        let mut counter = EdgeCounter::new(Edges::Both);
        counter.lagged(4);
        assert_eq!(counter.take(R, 1, 100), Some(5));
    }

    #[test]
    fn missed_edges_alternate_back_from_the_next_one() {
        assert_eq!(wanted_before(5, R, Edges::Falling), 3);
        assert_eq!(wanted_before(5, R, Edges::Rising), 2);
        assert_eq!(wanted_before(4, F, Edges::Rising), 2);
        assert_eq!(wanted_before(1, F, Edges::Falling), 0);
        assert_eq!(wanted_before(1, F, Edges::Rising), 1);
        assert_eq!(wanted_before(7, R, Edges::Both), 7);
        assert_eq!(wanted_before(0, R, Edges::Both), 0);
    }

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn cron(text: &str) -> Cron {
        match super::super::spec::parse_schedule_text(text).unwrap() {
            Schedule::Cron(cron) => *cron,
            Schedule::Every(_) => panic!("{text} is not cron"),
        }
    }

    fn fire_times<Tz: TimeZone + std::fmt::Debug>(
        cron_text: &str,
        start: DateTime<Tz>,
        n: usize,
    ) -> Vec<String>
    where
        Tz::Offset: std::fmt::Display,
    {
        let cron = cron(cron_text);
        let mut ticks = CronTicks::new(&cron, &start).unwrap();
        let mut now = start;
        let mut fired = Vec::new();
        while fired.len() < n {
            match ticks.poll(&cron, &now) {
                Tick::Sleep(wait) => now += chrono::TimeDelta::from_std(wait).unwrap(),
                Tick::Fire(at) => fired.push(at.to_rfc3339()),
                other => panic!("{other:?}"),
            }
        }
        fired
    }

    #[test]
    fn cron_times_in_utc() {
        assert_eq!(
            fire_times("*/5 * * * *", utc("2024-03-01T10:02:17Z"), 3),
            [
                "2024-03-01T10:05:00+00:00",
                "2024-03-01T10:10:00+00:00",
                "2024-03-01T10:15:00+00:00"
            ]
        );
        // Exactly on a time: that one is not run again, the next one is.
        assert_eq!(
            fire_times("*/5 * * * *", utc("2024-03-01T10:05:00Z"), 1),
            ["2024-03-01T10:10:00+00:00"]
        );
        assert_eq!(
            fire_times("@hourly", utc("2024-12-31T23:59:59Z"), 2),
            ["2025-01-01T00:00:00+00:00", "2025-01-01T01:00:00+00:00"]
        );
        // Day of week (Mondays 07:30), across a month.
        assert_eq!(
            fire_times("30 7 * * 1", utc("2024-03-26T08:00:00Z"), 2),
            ["2024-04-01T07:30:00+00:00", "2024-04-08T07:30:00+00:00"]
        );
        // The sleeps are capped, so a wall clock set meanwhile is noticed.
        let c = cron("@daily");
        let mut ticks = CronTicks::new(&c, &utc("2024-03-01T10:00:00Z")).unwrap();
        assert_eq!(
            ticks.poll(&c, &utc("2024-03-01T10:00:00Z")),
            Tick::Sleep(CLOCK_CHECK)
        );
        assert_eq!(
            ticks.poll(&c, &utc("2024-03-01T23:59:50Z")),
            Tick::Sleep(Duration::from_secs(10))
        );
    }

    #[test]
    fn cron_times_are_local_times() {
        // The node's time zone decides (here a fixed +02:00, no DST): 07:00 local is
        // 05:00 UTC.
        let tz = FixedOffset::east_opt(2 * 3600).unwrap();
        let start = utc("2024-06-01T04:00:00Z").with_timezone(&tz);
        assert_eq!(
            fire_times("0 7 * * *", start, 2),
            ["2024-06-01T07:00:00+02:00", "2024-06-02T07:00:00+02:00"]
        );
        let west = FixedOffset::west_opt(5 * 3600).unwrap();
        let start = utc("2024-06-01T04:00:00Z").with_timezone(&west);
        // 23:00 the day before there: @daily is the coming local midnight.
        assert_eq!(
            fire_times("@daily", start, 1),
            ["2024-06-01T00:00:00-05:00"]
        );
    }

    #[test]
    fn a_missed_time_never_fires_twice() {
        let c = cron("*/5 * * * *");
        let mut ticks = CronTicks::new(&c, &utc("2024-03-01T10:02:00Z")).unwrap();
        // On time.
        assert_eq!(
            ticks.poll(&c, &utc("2024-03-01T10:05:00.010Z")),
            Tick::Fire(utc("2024-03-01T10:05:00Z"))
        );
        // Polled again at once (a spurious wake): nothing more for 10:05.
        assert!(matches!(
            ticks.poll(&c, &utc("2024-03-01T10:05:00.020Z")),
            Tick::Sleep(_)
        ));
        // The clock set back a little (NTP): 10:05 is not run again.
        assert!(matches!(
            ticks.poll(&c, &utc("2024-03-01T10:04:40Z")),
            Tick::Sleep(_)
        ));
        // A late wake within the limit: fired once, late.
        assert_eq!(
            ticks.poll(&c, &utc("2024-03-01T10:10:40Z")),
            Tick::Fire(utc("2024-03-01T10:10:00Z"))
        );
        assert!(matches!(
            ticks.poll(&c, &utc("2024-03-01T10:10:41Z")),
            Tick::Sleep(_)
        ));
        // The clock jumps forward 2 hours (a board without RTC gets the time): the times
        // passed are not run one after the other; one skip, then the next time.
        assert_eq!(
            ticks.poll(&c, &utc("2024-03-01T12:11:00Z")),
            Tick::Skipped(utc("2024-03-01T10:15:00Z"))
        );
        assert_eq!(
            ticks.poll(&c, &utc("2024-03-01T12:11:00Z")),
            Tick::Sleep(Duration::from_secs(240).min(CLOCK_CHECK))
        );
        assert_eq!(
            ticks.poll(&c, &utc("2024-03-01T12:15:00Z")),
            Tick::Fire(utc("2024-03-01T12:15:00Z"))
        );
        // Set back by an hour: the schedule continues from the new time.
        assert_eq!(
            ticks.poll(&c, &utc("2024-03-01T11:12:00Z")),
            Tick::Restarted(utc("2024-03-01T11:15:00Z"))
        );
        assert_eq!(
            ticks.poll(&c, &utc("2024-03-01T11:15:00Z")),
            Tick::Fire(utc("2024-03-01T11:15:00Z"))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_five_field_schedule_fires_from_its_loop() {
        // The loop on a clock that follows tokio's paused time: 21 minutes from 10:00:30.
        let start = utc("2024-03-01T10:00:30Z");
        let origin = tokio::time::Instant::now();
        let clock =
            move || start + chrono::TimeDelta::from_std(origin.elapsed()).unwrap_or_default();
        let (events, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let c = cron("*/5 * * * *");
        let task = tokio::spawn(async move { run_cron("*/5 * * * *", &c, clock, &events).await });
        let mut fired = Vec::new();
        while fired.len() < 4 {
            match rx.recv().await {
                Some(Message::Event { event, count }) => {
                    assert_eq!(count, 1);
                    fired.push(event["scheduled_at"].as_str().unwrap().to_owned());
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            fired,
            [
                "2024-03-01T10:05:00+00:00",
                "2024-03-01T10:10:00+00:00",
                "2024-03-01T10:15:00+00:00",
                "2024-03-01T10:20:00+00:00"
            ]
        );
        // Each on time (paused time wakes the sleeps exactly).
        assert!(origin.elapsed() >= Duration::from_secs(19 * 60 + 30));
        task.abort();
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
