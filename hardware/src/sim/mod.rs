//! The simulator: GPIO lines, I2C devices, SPI buses and PWM channels in memory, used automatically where the kernel
//! has no GPIO chip bramble knows, and by the tests.
//!
//! **Lines** are named like a Pi header (`GPIO0`..`GPIO27` by default, configurable). Every
//! line has a physical level (0 at start). `drive` (the admin API's `PUT /system/gpio/LINE`,
//! `bramble gpio set`) sets the level on the wire of a line that is not an output; a
//! function's output sets its line's level. Every change of level is an edge, numbered per
//! line (`line_seqno`) and published through the same event path as the kernel's edges, with
//! a `CLOCK_MONOTONIC` timestamp. Differences from the kernel, on purpose:
//!
//! * edges of lines nobody requested are published too, and so are changes of outputs, so
//!   `bramble gpio watch GPIO27` shows an LED being switched in a demo;
//! * requesting an input with `pull-up` (`pull-down`) raises (lowers) a line nothing drives,
//!   without an edge.
//!
//! **Jumpers** (`hardware.sim_jumpers`) wire two lines together, like a jumper wire between
//! two pins of a Pi: while one of them is requested as an output, the other follows its
//! level (edges included), and cannot be driven from the admin API; an input requested on a
//! driven wire reads the output's level, whatever its bias. When the output is released the
//! wire is left to the input's bias (`pull-up` 1, `pull-down` 0; otherwise it keeps its
//! level), as upstream kernels do when they make a released pin an input again (Raspberry
//! Pi OS kernels keep driving a released output unless `strict_gpiod` is set: code that
//! must work on both may not rely on the level of a released output). Driving one line of
//! a jumper from the admin API drives the other too.
//!
//! Debounce works like the kernel's (gpiolib-cdev): a debounced input reports a level once it
//! has been stable for the period — the edge comes that much later, bounces in between are
//! swallowed before they are counted, and a bounce back to the reported level reports
//! nothing. Reads of a debounced line return that stable level. The timer runs on the tokio
//! runtime; outside one (plain unit tests) edges are reported at once.
//!
//! I2C devices, SPI buses and PWM channels: [`buses`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tracing::debug;

use crate::backend::{
    BackendError, Edge, EventBus, GpioBackend, InputConfig, LineHandle, monotonic_ns,
};
use crate::grants::{Bias, Direction};

pub mod buses;

pub use buses::{SimI2c, SimI2cDevice, SimPwm, SimSpi};

/// The default simulated lines: `GPIO0`..`GPIO27`, the BCM GPIOs of a Pi's 40-pin header.
pub fn default_lines() -> Vec<String> {
    (0..=27).map(|n| format!("GPIO{n}")).collect()
}

/// The simulated GPIO lines.
pub struct SimGpio {
    inner: Arc<SimInner>,
}

struct SimInner {
    bus: Arc<EventBus>,
    state: Mutex<SimState>,
}

struct SimState {
    order: Vec<String>,
    lines: HashMap<String, SimLine>,
    next_id: u64,
    /// Each jumpered line → the line at the other end of its wire.
    jumpers: HashMap<String, String>,
}

impl SimState {
    /// The other end of `line`'s jumper, if it has one.
    fn partner(&self, line: &str) -> Option<String> {
        self.jumpers.get(line).cloned()
    }

    fn is_output(&self, line: &str) -> bool {
        self.lines
            .get(line)
            .and_then(|l| l.request)
            .is_some_and(|r| r.direction == Direction::Out)
    }
}

#[derive(Default)]
struct SimLine {
    /// On the wire.
    level: u8,
    /// Last reported (debounced) level.
    stable: u8,
    driven: Option<u8>,
    request: Option<SimRequest>,
    line_seqno: u64,
    /// When the level of a debounced line will have been stable for the period.
    settle_at: Option<tokio::time::Instant>,
}

#[derive(Clone, Copy)]
struct SimRequest {
    id: u64,
    direction: Direction,
    bias: Option<Bias>,
    debounce: Option<Duration>,
}

impl SimGpio {
    /// Simulated lines named `lines` (duplicates and invalid names are skipped), publishing
    /// edges on `bus`.
    pub fn new(lines: &[String], bus: Arc<EventBus>) -> SimGpio {
        let mut order = Vec::new();
        let mut map = HashMap::new();
        for name in lines {
            if crate::grants::validate_line_name(name).is_ok() && !map.contains_key(name) {
                order.push(name.clone());
                map.insert(name.clone(), SimLine::default());
            }
        }
        SimGpio {
            inner: Arc::new(SimInner {
                bus,
                state: Mutex::new(SimState {
                    order,
                    lines: map,
                    next_id: 1,
                    jumpers: HashMap::new(),
                }),
            }),
        }
    }

    /// Wires lines `a` and `b` together (see the module's documentation). Each line can
    /// have one jumper; set them up before requesting lines.
    pub fn wire(&self, a: &str, b: &str) -> Result<(), BackendError> {
        let mut state = self.inner.state();
        for line in [a, b] {
            if !state.lines.contains_key(line) {
                return Err(BackendError::UnknownLine(line.to_owned()));
            }
            if let Some(other) = state.jumpers.get(line) {
                return Err(BackendError::Invalid(format!(
                    "{line} is already wired to {other}"
                )));
            }
        }
        if a == b {
            return Err(BackendError::Invalid(format!(
                "a jumper joins two lines, not {a} to itself"
            )));
        }
        state.jumpers.insert(a.to_owned(), b.to_owned());
        state.jumpers.insert(b.to_owned(), a.to_owned());
        Ok(())
    }

    /// Drives `line` to the physical `level` at `now_ns` (the clock is a parameter so tests
    /// can place edges exactly).
    pub fn drive_at(&self, line: &str, level: u8, now_ns: u64) -> Result<(), BackendError> {
        self.inner.drive(line, level, now_ns)
    }
}

impl SimInner {
    fn state(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn drive(self: &Arc<Self>, line: &str, level: u8, now_ns: u64) -> Result<(), BackendError> {
        check_level(level)?;
        let mut state = self.state();
        if !state.lines.contains_key(line) {
            return Err(BackendError::UnknownLine(line.to_owned()));
        }
        if state.is_output(line) {
            return Err(BackendError::Busy(format!(
                "{line} is an output: the simulator drives inputs only"
            )));
        }
        let partner = state.partner(line);
        if let Some(partner) = partner.as_deref()
            && state.is_output(partner)
        {
            return Err(BackendError::Busy(format!(
                "{line} is wired to {partner}, an output that drives it: set {partner} instead"
            )));
        }
        if let Some(sim) = state.lines.get_mut(line) {
            sim.driven = Some(level);
            self.change(line, sim, level, now_ns);
        }
        self.follow(&mut state, line, level, now_ns);
        Ok(())
    }

    /// The other end of `from`'s jumper takes `level`, unless it is an output itself (two
    /// outputs on one wire: each keeps its own level).
    fn follow(self: &Arc<Self>, state: &mut SimState, from: &str, level: u8, now_ns: u64) {
        let Some(partner) = state.partner(from) else {
            return;
        };
        if state.is_output(&partner) {
            return;
        }
        if let Some(other) = state.lines.get_mut(&partner) {
            self.change(&partner, other, level, now_ns);
        }
    }

    /// A released output no longer drives its wire: both ends go to the level the other end
    /// gives them (its bias, or the level it was driven to from the admin API), or keep
    /// theirs.
    fn release_wire(self: &Arc<Self>, state: &mut SimState, released: &str) {
        let Some(partner) = state.partner(released) else {
            return;
        };
        if state.is_output(&partner) {
            return;
        }
        let Some(other) = state.lines.get(&partner) else {
            return;
        };
        let level = match (other.request, other.driven) {
            (
                Some(SimRequest {
                    bias: Some(Bias::PullUp),
                    ..
                }),
                _,
            ) => Some(1),
            (
                Some(SimRequest {
                    bias: Some(Bias::PullDown),
                    ..
                }),
                _,
            ) => Some(0),
            (_, driven) => driven,
        };
        let Some(level) = level else {
            return;
        };
        let now_ns = monotonic_ns();
        for line in [released, partner.as_str()] {
            if let Some(sim) = state.lines.get_mut(line) {
                self.change(line, sim, level, now_ns);
            }
        }
    }

    /// Sets the level and publishes the edge, at once or, on a debounced line, when the level
    /// has been stable for the debounce period.
    fn change(self: &Arc<Self>, line: &str, sim: &mut SimLine, level: u8, now_ns: u64) {
        if sim.level == level {
            return;
        }
        sim.level = level;
        let debounce = sim.request.and_then(|r| r.debounce);
        match (debounce, tokio::runtime::Handle::try_current()) {
            (Some(period), Ok(runtime)) => {
                let timer_running = sim.settle_at.is_some();
                sim.settle_at = Some(tokio::time::Instant::now() + period);
                if !timer_running {
                    runtime.spawn(Arc::clone(self).settle(line.to_owned()));
                }
            }
            _ => self.report(line, sim, now_ns),
        }
    }

    /// Publishes the line's level as its new stable level, if it is one.
    fn report(&self, line: &str, sim: &mut SimLine, now_ns: u64) {
        if sim.stable == sim.level {
            return;
        }
        sim.stable = sim.level;
        sim.line_seqno += 1;
        let edge = if sim.level == 1 {
            Edge::Rising
        } else {
            Edge::Falling
        };
        self.bus.emit(line, edge, now_ns, sim.line_seqno, 0);
    }

    /// The debounce timer of `line`: waits until its level has been stable for the period
    /// (each change moves `settle_at`), then reports it.
    async fn settle(self: Arc<Self>, line: String) {
        loop {
            let due = match self.state().lines.get(&line).and_then(|l| l.settle_at) {
                Some(due) => due,
                None => return,
            };
            tokio::time::sleep_until(due).await;
            let mut state = self.state();
            let Some(sim) = state.lines.get_mut(&line) else {
                return;
            };
            match sim.settle_at {
                Some(due) if due <= tokio::time::Instant::now() => {
                    sim.settle_at = None;
                    if sim.stable != sim.level {
                        debug!(
                            line,
                            level = sim.level,
                            "simulator: debounced level reported"
                        );
                    }
                    self.report(&line, sim, monotonic_ns());
                    return;
                }
                Some(_) => {}
                None => return,
            }
        }
    }

    fn request(
        self: &Arc<Self>,
        line: &str,
        direction: Direction,
        bias: Option<Bias>,
        debounce: Option<Duration>,
        level: u8,
    ) -> Result<Box<dyn LineHandle>, BackendError> {
        check_level(level)?;
        let mut state = self.state();
        let id = state.next_id;
        state.next_id += 1;
        // The level of an output at the other end of a jumper, which this line follows.
        let wire = state
            .partner(line)
            .filter(|partner| state.is_output(partner))
            .and_then(|partner| state.lines.get(&partner).map(|p| p.level));
        let sim = state
            .lines
            .get_mut(line)
            .ok_or_else(|| BackendError::UnknownLine(line.to_owned()))?;
        if sim.request.is_some() {
            return Err(BackendError::Busy(format!("{line} is already requested")));
        }
        sim.request = Some(SimRequest {
            id,
            direction,
            bias,
            debounce,
        });
        sim.settle_at = None;
        sim.stable = sim.level;
        match direction {
            Direction::Out => {
                sim.driven = None;
                let now_ns = monotonic_ns();
                self.change(line, sim, level, now_ns);
                self.follow(&mut state, line, level, now_ns);
            }
            Direction::In if wire.is_some() => {
                if let Some(level) = wire {
                    (sim.level, sim.stable) = (level, level);
                }
            }
            Direction::In if sim.driven.is_none() => match bias {
                Some(Bias::PullUp) => (sim.level, sim.stable) = (1, 1),
                Some(Bias::PullDown) => (sim.level, sim.stable) = (0, 0),
                _ => {}
            },
            Direction::In => {}
        }
        Ok(Box::new(SimHandle {
            inner: Arc::clone(self),
            line: line.to_owned(),
            id,
            direction,
        }))
    }
}

fn check_level(level: u8) -> Result<(), BackendError> {
    if level > 1 {
        return Err(BackendError::Invalid(format!(
            "level {level} is not 0 or 1"
        )));
    }
    Ok(())
}

impl GpioBackend for SimGpio {
    fn name(&self) -> &'static str {
        "simulator"
    }

    fn line_names(&self) -> Vec<String> {
        self.inner.state().order.clone()
    }

    fn has_line(&self, line: &str) -> bool {
        self.inner.state().lines.contains_key(line)
    }

    fn request_input(
        &self,
        line: &str,
        config: InputConfig,
    ) -> Result<Box<dyn LineHandle>, BackendError> {
        self.inner
            .request(line, Direction::In, config.bias, config.debounce, 0)
    }

    fn request_output(&self, line: &str, level: u8) -> Result<Box<dyn LineHandle>, BackendError> {
        self.inner.request(line, Direction::Out, None, None, level)
    }

    fn peek(&self, line: &str) -> Option<u8> {
        self.inner.state().lines.get(line).map(|l| l.level)
    }

    fn events_for_unrequested_lines(&self) -> bool {
        true
    }

    fn simulate(&self, line: &str, level: u8) -> Result<(), BackendError> {
        self.inner.drive(line, level, monotonic_ns())
    }
}

struct SimHandle {
    inner: Arc<SimInner>,
    line: String,
    id: u64,
    direction: Direction,
}

impl SimHandle {
    fn with_line<T>(
        &self,
        f: impl FnOnce(&Arc<SimInner>, &mut SimLine) -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        let mut state = self.inner.state();
        match state.lines.get_mut(&self.line) {
            Some(sim) if sim.request.is_some_and(|r| r.id == self.id) => f(&self.inner, sim),
            _ => Err(released(&self.line)),
        }
    }
}

fn released(line: &str) -> BackendError {
    BackendError::Unsupported(format!("{line} has been released"))
}

impl LineHandle for SimHandle {
    fn read(&self) -> Result<u8, BackendError> {
        self.with_line(|_, sim| Ok(sim.stable))
    }

    fn write(&self, level: u8) -> Result<(), BackendError> {
        check_level(level)?;
        if self.direction != Direction::Out {
            return Err(BackendError::Unsupported(format!(
                "{} is requested as an input",
                self.line
            )));
        }
        let mut state = self.inner.state();
        match state.lines.get_mut(&self.line) {
            Some(sim) if sim.request.is_some_and(|r| r.id == self.id) => {
                let now_ns = monotonic_ns();
                self.inner.change(&self.line, sim, level, now_ns);
                self.inner.follow(&mut state, &self.line, level, now_ns);
                Ok(())
            }
            _ => Err(released(&self.line)),
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        let mut state = self.inner.state();
        if let Some(sim) = state.lines.get_mut(&self.line)
            && sim.request.is_some_and(|r| r.id == self.id)
        {
            sim.request = None;
            if self.direction == Direction::Out {
                self.inner.release_wire(&mut state, &self.line);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::sync::broadcast::error::TryRecvError;

    fn sim() -> (SimGpio, Arc<EventBus>) {
        let bus = Arc::new(EventBus::default());
        (SimGpio::new(&default_lines(), Arc::clone(&bus)), bus)
    }

    #[test]
    fn lines_levels_and_requests() {
        let (sim, _) = sim();
        assert_eq!(sim.line_names().len(), 28);
        assert_eq!(sim.line_names()[17], "GPIO17");
        assert!(sim.has_line("GPIO27") && !sim.has_line("GPIO28"));
        assert_eq!(sim.peek("GPIO17"), Some(0));

        let input = sim
            .request_input(
                "GPIO17",
                InputConfig {
                    bias: Some(Bias::PullUp),
                    debounce: None,
                },
            )
            .unwrap();
        assert_eq!(input.read().unwrap(), 1, "pull-up raises an undriven line");
        assert!(input.write(0).is_err(), "inputs cannot be written");
        assert!(matches!(
            sim.request_output("GPIO17", 0),
            Err(BackendError::Busy(_))
        ));
        sim.simulate("GPIO17", 0).unwrap();
        assert_eq!(input.read().unwrap(), 0);

        let output = sim.request_output("GPIO27", 1).unwrap();
        assert_eq!(output.read().unwrap(), 1);
        output.write(0).unwrap();
        assert_eq!(sim.peek("GPIO27"), Some(0));
        assert!(matches!(
            sim.simulate("GPIO27", 1),
            Err(BackendError::Busy(_))
        ));
        assert!(matches!(output.write(2), Err(BackendError::Invalid(_))));
        assert!(matches!(
            sim.simulate("GPIO99", 1),
            Err(BackendError::UnknownLine(_))
        ));
        drop(output);
        // Released: the line keeps its level and can be driven and requested again.
        sim.simulate("GPIO27", 1).unwrap();
        drop(sim.request_output("GPIO27", 0).unwrap());
        drop(input);
        sim.request_input("GPIO17", InputConfig::default()).unwrap();
    }

    /// The edges `rx` has now, as `(edge, line_seqno)`.
    fn drain(
        rx: &mut tokio::sync::broadcast::Receiver<super::super::EdgeEvent>,
    ) -> Vec<(Edge, u64)> {
        let mut edges = Vec::new();
        while let Ok(e) = rx.try_recv() {
            edges.push((e.edge, e.line_seqno));
        }
        edges
    }

    #[test]
    fn a_jumper_makes_the_input_follow_the_output() {
        let (sim, bus) = sim();
        sim.wire("GPIO27", "GPIO17").unwrap();
        let pull_up = InputConfig {
            bias: Some(Bias::PullUp),
            debounce: None,
        };
        let mut rx = bus.subscribe("GPIO17");
        let input = sim.request_input("GPIO17", pull_up).unwrap();
        assert_eq!(
            input.read().unwrap(),
            1,
            "nothing drives the wire: the pull-up"
        );
        // An output at the input's idle level: no edge.
        let output = sim.request_output("GPIO27", 1).unwrap();
        assert_eq!(input.read().unwrap(), 1);
        assert_eq!(drain(&mut rx), []);
        // The output drives the input, edges numbered on the input.
        output.write(0).unwrap();
        output.write(1).unwrap();
        output.write(1).unwrap();
        output.write(0).unwrap();
        assert_eq!(input.read().unwrap(), 0);
        assert_eq!(
            drain(&mut rx),
            [(Edge::Falling, 1), (Edge::Rising, 2), (Edge::Falling, 3)]
        );
        // A driven wire cannot be driven from the admin API, at either end.
        let e = sim.simulate("GPIO17", 1).unwrap_err();
        assert!(e.to_string().contains("wired to GPIO27"), "{e}");
        assert!(matches!(
            sim.simulate("GPIO27", 1),
            Err(BackendError::Busy(_))
        ));
        // Released, the output no longer drives the wire: the pull-up raises it.
        drop(output);
        assert_eq!(input.read().unwrap(), 1);
        assert_eq!(drain(&mut rx), [(Edge::Rising, 4)]);
        // An input requested on a driven wire reads the output, whatever its bias.
        drop(input);
        let output = sim.request_output("GPIO27", 0).unwrap();
        let input = sim
            .request_input(
                "GPIO17",
                InputConfig {
                    bias: Some(Bias::PullUp),
                    debounce: None,
                },
            )
            .unwrap();
        assert_eq!(input.read().unwrap(), 0);
        drop(output);
        drop(input);
        // Undriven, the wire is one line: driving one end drives the other.
        let mut other = bus.subscribe("GPIO27");
        sim.simulate("GPIO17", 0).unwrap();
        sim.simulate("GPIO27", 1).unwrap();
        assert_eq!((sim.peek("GPIO17"), sim.peek("GPIO27")), (Some(1), Some(1)));
        let edges: Vec<Edge> = drain(&mut other).into_iter().map(|(e, _)| e).collect();
        assert_eq!(edges, [Edge::Falling, Edge::Rising]);
        // Lines without a jumper are untouched.
        let lone = sim.request_output("GPIO5", 1).unwrap();
        assert_eq!(sim.peek("GPIO6"), Some(0));
        drop(lone);
        // Bad jumpers.
        assert!(matches!(
            sim.wire("GPIO17", "GPIO5"),
            Err(BackendError::Invalid(_))
        ));
        assert!(matches!(
            sim.wire("GPIO5", "GPIO5"),
            Err(BackendError::Invalid(_))
        ));
        assert!(matches!(
            sim.wire("GPIO5", "GPIO99"),
            Err(BackendError::UnknownLine(_))
        ));
    }

    #[test]
    fn edges_with_timestamps_and_sequence_numbers() {
        let (sim, bus) = sim();
        let mut rx = bus.subscribe("GPIO5");
        let _input = sim.request_input("GPIO5", InputConfig::default()).unwrap();
        sim.drive_at("GPIO5", 1, 1_000).unwrap();
        sim.drive_at("GPIO5", 1, 2_000).unwrap(); // no change, no edge
        sim.drive_at("GPIO5", 0, 3_000).unwrap();
        let a = rx.try_recv().unwrap();
        let b = rx.try_recv().unwrap();
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(
            (a.edge, a.level, a.timestamp_ns, a.line_seqno),
            (Edge::Rising, 1, 1_000, 1)
        );
        assert_eq!(
            (b.edge, b.level, b.timestamp_ns, b.line_seqno),
            (Edge::Falling, 0, 3_000, 2)
        );
        assert_eq!(b.seqno, a.seqno + 1);
        // The real clock is used outside tests.
        sim.simulate("GPIO5", 1).unwrap();
        assert!(rx.try_recv().unwrap().timestamp_ns > 3_000);
    }

    #[tokio::test(start_paused = true)]
    async fn debounce_reports_a_level_once_it_is_stable_like_the_kernel() {
        let (sim, bus) = sim();
        let mut rx = bus.subscribe("GPIO17");
        let input = sim
            .request_input(
                "GPIO17",
                InputConfig {
                    bias: None,
                    debounce: Some(Duration::from_millis(20)),
                },
            )
            .unwrap();
        let ms = Duration::from_millis;
        let settle = || async {
            // Past the period, then let the timer task run.
            tokio::time::advance(ms(21)).await;
            tokio::task::yield_now().await;
        };
        // A press that bounces: one edge, 20 ms after the last bounce; reads stay 0 until then.
        for (level, after) in [(1, 0), (0, 5), (1, 5), (0, 9), (1, 6)] {
            tokio::time::advance(ms(after)).await;
            sim.simulate("GPIO17", level).unwrap();
        }
        tokio::time::advance(ms(19)).await;
        tokio::task::yield_now().await;
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(input.read().unwrap(), 0, "not stable yet");
        settle().await;
        let a = rx.try_recv().unwrap();
        assert_eq!((a.edge, a.line_seqno), (Edge::Rising, 1));
        assert_eq!(input.read().unwrap(), 1);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));

        // A glitch back to the reported level reports nothing.
        sim.simulate("GPIO17", 0).unwrap();
        tokio::time::advance(ms(3)).await;
        sim.simulate("GPIO17", 1).unwrap();
        settle().await;
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));

        // A press and release faster than the period: the release is not lost — the level
        // ends at 0 and is reported as such.
        sim.simulate("GPIO17", 0).unwrap();
        settle().await;
        sim.simulate("GPIO17", 1).unwrap();
        tokio::time::advance(ms(2)).await;
        sim.simulate("GPIO17", 0).unwrap();
        settle().await;
        let b = rx.try_recv().unwrap();
        assert_eq!((b.edge, b.line_seqno), (Edge::Falling, 2));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(input.read().unwrap(), 0);
        assert_eq!(b.seqno, a.seqno + 1, "the node-wide seqno has no gap");
    }

    #[test]
    fn outputs_and_unrequested_lines_publish_edges() {
        let (sim, bus) = sim();
        let mut led = bus.subscribe("GPIO27");
        let mut free = bus.subscribe("GPIO4");
        let output = sim.request_output("GPIO27", 0).unwrap();
        output.write(1).unwrap();
        assert_eq!(led.try_recv().unwrap().edge, Edge::Rising);
        sim.simulate("GPIO4", 1).unwrap();
        assert_eq!(free.try_recv().unwrap().edge, Edge::Rising);
        // Initial level 1 on request is an edge too.
        let mut rx = bus.subscribe("GPIO26");
        let _o = sim.request_output("GPIO26", 1).unwrap();
        assert_eq!(rx.try_recv().unwrap().edge, Edge::Rising);
    }

    #[test]
    fn configurable_lines() {
        let bus = Arc::new(EventBus::default());
        let sim = SimGpio::new(
            &[
                "LED".into(),
                "BUTTON".into(),
                "LED".into(),
                "bad/name".into(),
            ],
            bus,
        );
        assert_eq!(sim.line_names(), ["LED", "BUTTON"]);
    }
}
