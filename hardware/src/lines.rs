//! The lines this node holds, and what the socket servers share with [`Hardware`](crate::Hardware):
//! the backends, the event bus, and which function holds which line. A line is requested once
//! whoever holds it (functions may share an input) and released when its last holder lets go.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bramble_base::error_chain;
use tokio::sync::broadcast;
use tracing::warn;

use crate::HardwareError;
use crate::backend::{
    self, BackendError, EdgeEvent, EventBus, GpioBackend, I2cBackend, InputConfig, LineHandle,
    PwmBackend, SpiBackend,
};
use crate::grants::{Direction, Grants, LineGrant};
use crate::sensors::SensorRegistry;

/// How long `attach` retries a line the kernel reports busy (a line just released by this
/// node is freed a moment later).
const BUSY_RETRIES: u32 = 20;
const BUSY_RETRY_DELAY: Duration = Duration::from_millis(25);

/// A line this node holds.
pub(crate) struct HeldLine {
    pub(crate) handle: Arc<dyn LineHandle>,
    pub(crate) direction: Direction,
    pub(crate) config: InputConfig,
    /// `CLOCK_MONOTONIC` just before it was requested: its edges are not older.
    pub(crate) requested_ns: u64,
    /// The functions granted it (one for an output; any number for an input).
    pub(crate) holders: BTreeSet<String>,
}

impl HeldLine {
    /// Sets the output to the safe level of `function`'s `grant` (logical: its `active-low`
    /// applied); a failure is logged, since a stop or a release goes on regardless.
    pub(crate) fn set_safe(&self, function: &str, line: &str, grant: &LineGrant) {
        if let Err(e) = self.handle.write(grant.safe ^ u8::from(grant.active_low)) {
            warn!(
                function,
                line,
                "cannot set the safe level: {}",
                error_chain(&e)
            );
        }
    }
}

#[derive(Default)]
pub(crate) struct State {
    /// The grants of attached functions (only lines actually held).
    pub(crate) functions: BTreeMap<String, Grants>,
    /// The grants of every deployed function, held or not (a function whose lines could
    /// not be requested after a restart is still deployed): what conflicts are checked
    /// against.
    pub(crate) reserved: BTreeMap<String, Grants>,
    pub(crate) lines: HashMap<String, HeldLine>,
}

/// What the socket servers share with `Hardware`.
pub(crate) struct Shared {
    pub(crate) gpio: Box<dyn GpioBackend>,
    pub(crate) i2c: Arc<dyn I2cBackend>,
    pub(crate) spi: Arc<dyn SpiBackend>,
    pub(crate) pwm: Arc<dyn PwmBackend>,
    pub(crate) sensors: Arc<SensorRegistry>,
    pub(crate) bus: Arc<EventBus>,
    pub(crate) state: Mutex<State>,
    /// Bumped whenever a line is requested or released.
    pub(crate) line_changes: tokio::sync::watch::Sender<u64>,
}

impl Shared {
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The grants of an attached function.
    pub(crate) fn grants(&self, function: &str) -> Option<Grants> {
        self.state().functions.get(function).cloned()
    }

    /// The handle of a held line.
    pub(crate) fn handle(&self, line: &str) -> Option<Arc<dyn LineHandle>> {
        self.state().lines.get(line).map(|h| Arc::clone(&h.handle))
    }

    pub(crate) fn has_line(&self, line: &str) -> bool {
        self.gpio.has_line(line)
    }

    pub(crate) fn backend_name(&self) -> &'static str {
        self.gpio.name()
    }

    pub(crate) fn subscribe(&self, line: &str) -> broadcast::Receiver<EdgeEvent> {
        self.bus.subscribe(line)
    }

    pub(crate) fn i2c(&self) -> Arc<dyn I2cBackend> {
        Arc::clone(&self.i2c)
    }

    pub(crate) fn spi(&self) -> Arc<dyn SpiBackend> {
        Arc::clone(&self.spi)
    }

    pub(crate) fn pwm(&self) -> Arc<dyn PwmBackend> {
        Arc::clone(&self.pwm)
    }

    /// Disables a PWM channel of `function` (its safe state).
    pub(crate) fn disable_pwm(&self, function: &str, channel: u8) {
        if let Err(e) = self.pwm.disable(channel) {
            warn!(
                function,
                channel,
                "cannot disable the PWM channel: {}",
                error_chain(&e)
            );
        }
    }

    pub(crate) fn sensors(&self) -> Arc<SensorRegistry> {
        Arc::clone(&self.sensors)
    }

    /// Removes `function` from the holders of `line`; the last holder of an output sets
    /// its safe level, and the line is released.
    pub(crate) fn release(&self, function: &str, line: &str, grant: &LineGrant) {
        let mut state = self.state();
        let Some(held) = state.lines.get_mut(line) else {
            return;
        };
        held.holders.remove(function);
        if !held.holders.is_empty() {
            return;
        }
        if held.direction == Direction::Out {
            held.set_safe(function, line, grant);
        }
        state.lines.remove(line);
        drop(state);
        self.line_changes.send_modify(|n| *n += 1);
    }

    /// Adds `function` to the holders of a shared input, or requests the line.
    pub(crate) async fn acquire(
        &self,
        function: &str,
        line: &str,
        grant: &LineGrant,
    ) -> Result<(), HardwareError> {
        let config = InputConfig {
            bias: grant.bias,
            debounce: grant.debounce,
        };
        {
            let mut state = self.state();
            if let Some(held) = state.lines.get_mut(line) {
                if held.direction == Direction::In
                    && grant.direction == Direction::In
                    && held.config == config
                {
                    held.holders.insert(function.to_owned());
                    return Ok(());
                }
                let owners: Vec<&str> = held.holders.iter().map(String::as_str).collect();
                return Err(HardwareError::Busy(format!(
                    "{line} is already requested as {} for {}",
                    held.direction,
                    owners.join(", ")
                )));
            }
        }
        let mut tries = 0;
        let requested_ns = backend::monotonic_ns();
        let handle = loop {
            let requested = match grant.direction {
                Direction::In => self.gpio.request_input(line, config),
                Direction::Out => self
                    .gpio
                    .request_output(line, grant.initial ^ u8::from(grant.active_low)),
            };
            match requested {
                Ok(handle) => break handle,
                Err(BackendError::Busy(_)) if tries < BUSY_RETRIES => {
                    tries += 1;
                    tokio::time::sleep(BUSY_RETRY_DELAY).await;
                }
                Err(BackendError::Busy(message)) => return Err(HardwareError::Busy(message)),
                Err(e) => return Err(e.into()),
            }
        };
        self.state().lines.insert(
            line.to_owned(),
            HeldLine {
                handle: Arc::from(handle),
                direction: grant.direction,
                config,
                requested_ns,
                holders: BTreeSet::from([function.to_owned()]),
            },
        );
        self.line_changes.send_modify(|n| *n += 1);
        Ok(())
    }
}
