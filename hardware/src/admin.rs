//! The node's GPIO admin routes, for the gateway's `/system` API (behind its Basic auth) and
//! `bramble gpio`. Levels here are physical (wire) levels.
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

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::broker::{ApiError, LineLevel, event_line, ndjson, parse_level};
use super::{Hardware, HardwareError, LineInfo};

impl From<HardwareError> for ApiError {
    fn from(e: HardwareError) -> ApiError {
        let status = match &e {
            HardwareError::Backend(_) => {
                if let HardwareError::Backend(backend) = e {
                    return backend.into();
                }
                StatusCode::INTERNAL_SERVER_ERROR
            }
            HardwareError::UnknownLine(_) => StatusCode::NOT_FOUND,
            HardwareError::NotSimulator(_)
            | HardwareError::Busy(_)
            | HardwareError::NotWatchable(_)
            | HardwareError::Conflict(_) => StatusCode::CONFLICT,
            HardwareError::Invalid(_) | HardwareError::Grant(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
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
