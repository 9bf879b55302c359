//! The node's GPIO as its operator sees it: every line with its owners ([`Hardware::lines`]),
//! simulated inputs driven by hand ([`Hardware::simulate`], [`Hardware::toggle`]), and the
//! admin routes for the gateway's `/system` API (behind its Basic auth) and `bramble gpio`.
//! Levels here are physical (wire) levels.
//!
//! | route                            | answer                                                   |
//! |----------------------------------|----------------------------------------------------------|
//! | `GET /system/gpio`               | `{"backend":"simulator","lines":[LineInfo…]}`            |
//! | `GET /system/gpio/LINE`          | one `LineInfo`: `{"name","direction","level","bias","debounce","owners"}` |
//! | `PUT /system/gpio/LINE`          | body `{"level":0\|1}`: drives a simulated line → `{"line","level"}`; 409 on real hardware or for an output |
//! | `POST /system/gpio/LINE/toggle`  | body `{"times":N,"interval":"1ms"}` (both optional: 2 and no pause): toggles a simulated input N times → `{"line","level"}` |
//! | `GET /system/gpio/LINE/watch`    | NDJSON edges (physical) until the client disconnects; on real hardware only lines requested as inputs |
//!
//! Errors are one line of `text/plain`: 400 bad body, 404 no such line, 409 refused.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};

use crate::backend::BackendError;
use crate::broker::{ApiError, LineLevel, event_line, ndjson, parse_level};
use crate::grants::{Bias, Direction, Grants};
use crate::{EdgeEvent, Hardware, HardwareError};

/// Most edges one [`Hardware::toggle`] makes.
pub const MAX_TOGGLES: u32 = 100_000;
/// Longest a [`Hardware::toggle`] may take.
const MAX_TOGGLE_TIME: Duration = Duration::from_secs(60);

/// One line as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineInfo {
    /// The line name.
    pub name: String,
    /// How the node has requested it (`None`: not requested).
    pub direction: Option<Direction>,
    /// The physical level, where known.
    pub level: Option<u8>,
    /// The bias of a requested input.
    pub bias: Option<Bias>,
    /// The debounce of a requested input, e.g. `20ms`.
    pub debounce: Option<String>,
    /// The functions granted the line.
    pub owners: Vec<String>,
}

impl Hardware {
    /// Every line of the node: direction, physical level (where known), owners.
    pub fn lines(&self) -> Vec<LineInfo> {
        let state = self.shared.state();
        self.shared
            .gpio
            .line_names()
            .into_iter()
            .map(|name| match state.lines.get(&name) {
                Some(held) => LineInfo {
                    level: held.handle.read().ok(),
                    direction: Some(held.direction),
                    bias: held.config.bias,
                    debounce: held
                        .config
                        .debounce
                        .map(|d| humantime::format_duration(d).to_string()),
                    owners: held.holders.iter().cloned().collect(),
                    name,
                },
                None => LineInfo {
                    level: self.shared.gpio.peek(&name),
                    direction: None,
                    bias: None,
                    debounce: None,
                    owners: Vec::new(),
                    name,
                },
            })
            .collect()
    }

    /// Whether this node's lines are simulated (inputs can be driven by hand).
    pub fn is_simulator(&self) -> bool {
        self.shared.gpio.events_for_unrequested_lines()
    }

    /// The grants of every deployed function, by function (`name.namespace`).
    pub fn granted(&self) -> BTreeMap<String, Grants> {
        self.shared.state().reserved.clone()
    }

    /// The edges of every line from now on (physical levels), for the dashboard. On real
    /// hardware only requested inputs have edges.
    pub fn subscribe_edges(&self) -> broadcast::Receiver<EdgeEvent> {
        self.shared.bus.subscribe_all()
    }

    /// Changes whenever a line is requested or released (its direction, owners).
    pub fn line_changes(&self) -> watch::Receiver<u64> {
        self.shared.line_changes.subscribe()
    }

    /// The ids of the sensors present on this node (`w1:…` devices), sorted. Blocking: it
    /// lists a sysfs directory.
    pub fn present_sensors(&self) -> Vec<String> {
        self.shared.sensors().present()
    }

    /// Drives a simulated line to the physical `level` (0 or 1): a button press in a demo
    /// or a test. Refused on real hardware (naming the backend) and for outputs.
    pub fn simulate(&self, line: &str, level: u8) -> Result<(), HardwareError> {
        if level > 1 {
            return Err(HardwareError::Invalid(format!(
                "level {level} is not 0 or 1"
            )));
        }
        {
            let state = self.shared.state();
            if let Some(held) = state.lines.get(line)
                && held.direction == Direction::Out
            {
                let owners: Vec<&str> = held.holders.iter().map(String::as_str).collect();
                return Err(HardwareError::Busy(format!(
                    "{line} is an output of function {}: the simulator drives inputs only",
                    owners.join(", ")
                )));
            }
        }
        self.shared.gpio.simulate(line, level).map_err(|e| match e {
            BackendError::Unsupported(message) => HardwareError::NotSimulator(message),
            BackendError::UnknownLine(_) => self.unknown_line(line),
            BackendError::Busy(message) => HardwareError::Busy(message),
            other => other.into(),
        })
    }

    /// Toggles a simulated input `times` times, `interval` apart (a button pressed and
    /// released, a bouncing contact, a burst of edges for a test). At most
    /// [`MAX_TOGGLES`] edges and a minute in all. Answers the level it ends at.
    pub async fn toggle(
        &self,
        line: &str,
        times: u32,
        interval: Duration,
    ) -> Result<u8, HardwareError> {
        if times == 0 || times > MAX_TOGGLES {
            return Err(HardwareError::Invalid(format!(
                "times {times}: toggle 1 to {MAX_TOGGLES} times"
            )));
        }
        if interval.saturating_mul(times) > MAX_TOGGLE_TIME {
            return Err(HardwareError::Invalid(format!(
                "{times} toggles {} apart take longer than {}",
                humantime::format_duration(interval),
                humantime::format_duration(MAX_TOGGLE_TIME)
            )));
        }
        let mut level = self.shared.gpio.peek(line).unwrap_or(0);
        for n in 0..times {
            if n > 0 && !interval.is_zero() {
                tokio::time::sleep(interval).await;
            }
            level ^= 1;
            self.simulate(line, level)?;
        }
        Ok(level)
    }
}

impl From<HardwareError> for ApiError {
    fn from(e: HardwareError) -> ApiError {
        ApiError::of(e.kind(), &e)
    }
}

/// The admin routes, with their state: mount them in the gateway's authenticated API.
pub fn router(hardware: Arc<Hardware>) -> Router {
    Router::new()
        .route("/system/gpio", get(list))
        .route("/system/gpio/{line}", get(get_line).put(set_line))
        .route("/system/gpio/{line}/watch", get(watch))
        .route("/system/gpio/{line}/toggle", post(toggle))
        .with_state(hardware)
}

async fn list(State(hardware): State<Arc<Hardware>>) -> Json<Value> {
    Json(json!({
        "backend": hardware.backend(),
        "lines": hardware.lines(),
    }))
}

async fn get_line(
    State(hardware): State<Arc<Hardware>>,
    Path(line): Path<String>,
) -> Result<Json<LineInfo>, ApiError> {
    hardware
        .lines()
        .into_iter()
        .find(|info| info.name == line)
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "no GPIO line named {line} on this node ({} backend)",
                    hardware.backend()
                ),
            )
        })
}

async fn set_line(
    State(hardware): State<Arc<Hardware>>,
    Path(line): Path<String>,
    body: Bytes,
) -> Result<Json<LineLevel>, ApiError> {
    let level = parse_level(&body)?;
    hardware.simulate(&line, level)?;
    Ok(Json(LineLevel { line, level }))
}

/// The body of a toggle.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Toggle {
    #[serde(default = "two")]
    times: u32,
    #[serde(default)]
    interval: Option<String>,
}

fn two() -> u32 {
    2
}

async fn toggle(
    State(hardware): State<Arc<Hardware>>,
    Path(line): Path<String>,
    body: Bytes,
) -> Result<Json<LineLevel>, ApiError> {
    let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, message);
    let request: Toggle = if body.is_empty() {
        Toggle {
            times: two(),
            interval: None,
        }
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            bad(format!(
                "the body must be {{\"times\":N,\"interval\":\"1ms\"}}: {e}"
            ))
        })?
    };
    let interval = match &request.interval {
        Some(text) => humantime::parse_duration(text)
            .map_err(|e| bad(format!("interval {text:?}: {e} (write e.g. \"10ms\")")))?,
        None => std::time::Duration::ZERO,
    };
    let level = hardware.toggle(&line, request.times, interval).await?;
    Ok(Json(LineLevel { line, level }))
}

async fn watch(
    State(hardware): State<Arc<Hardware>>,
    Path(line): Path<String>,
) -> Result<Response, ApiError> {
    let rx = hardware.admin_watch(&line)?;
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(event) => return Some((event_line(&event), rx)),
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return None,
            }
        }
    });
    Ok(ndjson(stream))
}
