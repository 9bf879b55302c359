//! The edges of a line, for GPIO triggers and the admin API's watch route.

use std::collections::VecDeque;

use tokio::sync::broadcast;

use crate::backend::{self, EdgeEvent};
use crate::grants::{self, Direction};
use crate::{Hardware, HardwareError};

/// The edges of a line for a GPIO trigger, from [`Hardware::watch_when_requested`].
#[derive(Debug)]
pub struct LineWatch {
    /// Edges that came while waiting for the line to be requested.
    early: VecDeque<EdgeEvent>,
    rx: broadcast::Receiver<EdgeEvent>,
}

impl LineWatch {
    /// The next edge (physical levels), as [`broadcast::Receiver::recv`].
    pub async fn recv(&mut self) -> Result<EdgeEvent, broadcast::error::RecvError> {
        match self.early.pop_front() {
            Some(event) => Ok(event),
            None => self.rx.recv().await,
        }
    }
}

impl Hardware {
    /// The edges of `line` (physical levels), for GPIO triggers. The line must be requested
    /// as an input, i.e. granted as `LINE:in` to some attached function (its bias and
    /// debounce apply); watching never requests a line by itself. The receiver keeps
    /// working across detach and re-attach (events simply stop while nobody holds the
    /// line); a receiver that falls more than 256 events behind gets `Lagged`, and the gap
    /// shows in the sequence numbers.
    pub fn watch(&self, line: &str) -> Result<broadcast::Receiver<EdgeEvent>, HardwareError> {
        let state = self.shared.state();
        match state.lines.get(line) {
            Some(held) if held.direction == Direction::In => Ok(self.shared.bus.subscribe(line)),
            Some(_) => Err(not_watchable(line, true)),
            None if !self.shared.gpio.has_line(line) => Err(self.unknown_line(line)),
            None => Err(not_watchable(line, false)),
        }
    }

    /// [`Hardware::watch`] for a GPIO trigger, which may start before its line is requested
    /// (after a restart its function's line may not be requestable yet): waits, without
    /// polling, until the line is requested as an input. The subscription is made before the
    /// line is checked, edges that come while waiting are kept, and those older than the
    /// request are dropped, so no edge from the request on is missed. `waiting` is called
    /// once, with the reason, when it has to wait. Fails at once for a line the node does
    /// not have.
    pub async fn watch_when_requested(
        &self,
        line: &str,
        mut waiting: impl FnMut(&HardwareError),
    ) -> Result<LineWatch, HardwareError> {
        let mut changes = self.shared.line_changes.subscribe();
        let mut kept: Option<broadcast::Receiver<EdgeEvent>> = None;
        let mut early: VecDeque<EdgeEvent> = VecDeque::new();
        let mut warned = false;
        loop {
            changes.borrow_and_update();
            // Subscribed before the check: an edge right after the request is not missed.
            let mut rx = kept
                .take()
                .unwrap_or_else(|| self.shared.bus.subscribe(line));
            let held = self
                .shared
                .state()
                .lines
                .get(line)
                .map(|held| (held.direction, held.requested_ns));
            let someones_output = match held {
                Some((Direction::In, since)) => {
                    // Edges still queued in the receiver may be from before the request too:
                    // take them out (in order) and keep only those since the request.
                    loop {
                        match rx.try_recv() {
                            Ok(event) => early.push_back(event),
                            Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                            Err(_) => break,
                        }
                    }
                    early.retain(|event| event.timestamp_ns >= since);
                    return Ok(LineWatch { early, rx });
                }
                Some((Direction::Out, _)) => true,
                None if !self.shared.gpio.has_line(line) => return Err(self.unknown_line(line)),
                None => false,
            };
            let reason = not_watchable(line, someones_output);
            if !warned {
                waiting(&reason);
                warned = true;
            }
            if someones_output {
                // Nothing of another function's output may reach the trigger.
                early.clear();
                drop(rx);
                if changes.changed().await.is_err() {
                    return Err(reason);
                }
                continue;
            }
            loop {
                tokio::select! {
                    changed = changes.changed() => {
                        if changed.is_err() {
                            return Err(reason);
                        }
                        break;
                    }
                    event = rx.recv() => match event {
                        // Perhaps the first edges of a request this task has not seen yet.
                        Ok(event) => {
                            early.push_back(event);
                            if early.len() > backend::EVENT_BUFFER {
                                early.pop_front();
                            }
                        }
                        // Older than what is kept: edges from before the request.
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return Err(reason),
                    }
                }
            }
            kept = Some(rx);
        }
    }

    /// `watch` for the admin API: on the simulator every line can be watched.
    pub(crate) fn admin_watch(
        &self,
        line: &str,
    ) -> Result<broadcast::Receiver<EdgeEvent>, HardwareError> {
        if self.shared.gpio.events_for_unrequested_lines() {
            if !self.shared.gpio.has_line(line) {
                return Err(self.unknown_line(line));
            }
            return Ok(self.shared.bus.subscribe(line));
        }
        self.watch(line)
    }
}

/// Why a line cannot be watched: it is an output, or not requested at all.
fn not_watchable(line: &str, output: bool) -> HardwareError {
    HardwareError::NotWatchable(if output {
        format!("{line} is an output: edges can be watched on inputs only")
    } else {
        format!(
            "{line} is not requested as an input: grant it to a function ({}={line}:in) to \
             watch it",
            grants::GPIO_KEY
        )
    })
}
