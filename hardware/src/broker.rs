//! The per-function hardware API: HTTP/1.1 and JSON on the function's Unix socket
//! (`/run/bramble/hw.sock` in its containers).
//!
//! | route                        | body / answer                                                        |
//! |------------------------------|----------------------------------------------------------------------|
//! | `GET /v1/capabilities`       | the caller's grants: `{"function","backend","gpio":[…],"i2c":[…],"spi":["0.0",…],"pwm":[0,…],"sensors":[…]}` |
//! | `GET /v1/gpio/LINE`          | `{"line":"GPIO17","level":0}` (inputs and outputs)                   |
//! | `PUT /v1/gpio/LINE`          | body `{"level":1}` → `{"line":"GPIO27","level":1}` (outputs only)    |
//! | `GET /v1/gpio/LINE/watch`    | NDJSON, one edge per line, until the client disconnects (inputs only): `{"line","edge":"rising"\|"falling","level","timestamp_ns","seqno","line_seqno"}` |
//! | `POST /v1/i2c/BUS/ADDR`      | body `{"write":[bytes],"read":N}` (either or both) → `{"data":[bytes]}` |
//! | `POST /v1/spi/BUS/CS`        | body `{"write":[bytes],"speed_hz":N,"mode":M}` (speed and mode optional) → `{"data":[bytes]}`, as many bytes as written |
//! | `GET /v1/pwm/CHANNEL`        | `{"channel":0,"period_ns":20000000,"duty_ns":1500000,"enabled":true}` |
//! | `PUT /v1/pwm/CHANNEL`        | body `{"period_ns":N,"duty_ns":N,"enabled":bool}` → the new state, as `GET` |
//! | `GET /v1/sensors/ID`         | `{"id":"w1:28-…","kind":"temperature","value":23.125,"unit":"celsius"}` |
//!
//! Levels are logical (the grant's `active-low` applied). `ADDR` is hex (`0x76`) or decimal.
//! An SPI transfer is full duplex, at most 4096 bytes, at `speed_hz` 1 kHz to 125 MHz
//! (default 1 MHz) in `mode` 0 to 3 (default 0); the simulator's SPI is a loopback (it reads
//! back what it writes). A PWM period is 1 µs to 1 s and the duty at most the period; a
//! function's PWM channels are disabled when it stops, crashes or is deleted.
//! Errors are one line of `text/plain`: 400 bad input, 403 not granted (naming the missing
//! grant and listing the caller's), 404 no such line, bus, SPI device, PWM channel or
//! sensor, 409 line busy or released, 502 the device failed (no I2C acknowledge, 1-Wire CRC
//! error), 500 otherwise.
//! Each request is served with the grants of the moment: a re-attach with other grants
//! applies at once, and a watch stream ends when its line is no longer granted.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bramble_base::error_chain;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::UnixListener;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::Shared;
use super::backend::{self, BackendError, EdgeEvent, PwmState};
use super::grants::{self, Direction, Grants, LineGrant};
use super::sensors::SensorError;
use crate::ErrorKind;

/// An error answer: a status and one line of text.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut message = self.message;
        message.push('\n');
        let mut response = (self.status, message).into_response();
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    }
}

impl ApiError {
    /// The answer to `error`, of `kind`: its status, and the error with its causes.
    pub(crate) fn of(kind: ErrorKind, error: &dyn std::error::Error) -> ApiError {
        ApiError::new(status_of(kind), error_chain(error))
    }
}

/// The HTTP status of an error of `kind`.
pub(crate) fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::Invalid => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Device => StatusCode::BAD_GATEWAY,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> ApiError {
        ApiError::of(e.kind(), &e)
    }
}

impl From<SensorError> for ApiError {
    fn from(e: SensorError) -> ApiError {
        ApiError::of(e.kind(), &e)
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Runs blocking backend work off the async threads.
pub(crate) async fn blocking<T, E>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> ApiResult<T>
where
    T: Send + 'static,
    E: Into<ApiError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(Into::into),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the hardware call failed: {e}"),
        )),
    }
}

/// A `{"level":0|1}` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SetLevel {
    pub(crate) level: u8,
}

/// Parses a `{"level":0|1}` body.
pub(crate) fn parse_level(body: &[u8]) -> ApiResult<u8> {
    match serde_json::from_slice::<SetLevel>(body) {
        Ok(SetLevel { level }) if level <= 1 => Ok(level),
        Ok(SetLevel { level }) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("level {level} is not 0 or 1"),
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the body must be {{\"level\":0}} or {{\"level\":1}}: {e}"),
        )),
    }
}

/// `{"line","level"}`.
#[derive(Serialize)]
pub(crate) struct LineLevel {
    pub(crate) line: String,
    pub(crate) level: u8,
}

/// An NDJSON response of edge events.
pub(crate) fn ndjson(stream: impl futures::Stream<Item = String> + Send + 'static) -> Response {
    use futures::StreamExt as _;
    let body = Body::from_stream(stream.map(Ok::<String, Infallible>));
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// One NDJSON line.
pub(crate) fn event_line(event: &EdgeEvent) -> String {
    let mut line = serde_json::to_string(event).unwrap_or_default();
    line.push('\n');
    line
}

#[derive(Clone)]
struct Broker {
    shared: Arc<Shared>,
    function: Arc<str>,
}

impl Broker {
    /// The caller's grants right now.
    fn grants(&self) -> ApiResult<Grants> {
        self.shared.grants(&self.function).ok_or_else(|| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                "this function has no hardware grants any more",
            )
        })
    }

    /// The caller's grant of `line`: 404 for a line the node does not have, 403 for one
    /// not granted.
    fn line_grant(&self, line: &str) -> ApiResult<LineGrant> {
        let grants = self.grants()?;
        match grants.gpio.get(line) {
            Some(grant) => Ok(*grant),
            None if !self.shared.has_line(line) => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no GPIO line named {line} on this node"),
            )),
            None => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "{line} is not granted to this function (grants: {}); add it to the \
                     function's {} annotation",
                    grants.gpio_summary(),
                    grants::GPIO_KEY
                ),
            )),
        }
    }

    /// Ok when the caller's grants allow what `allowed` checks; otherwise 403 naming `what`,
    /// the caller's grants of that kind (`summary`) and the annotation `key`.
    fn granted(
        &self,
        allowed: impl FnOnce(&Grants) -> bool,
        what: &str,
        summary: impl FnOnce(&Grants) -> String,
        key: &str,
    ) -> ApiResult<()> {
        let grants = self.grants()?;
        if allowed(&grants) {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "{what} is not granted to this function (grants: {}); add it to the \
                 function's {key} annotation",
                summary(&grants)
            ),
        ))
    }

    /// The PWM channel of a route, parsed and granted.
    fn pwm_channel(&self, channel: &str) -> ApiResult<u8> {
        let channel = grants::parse_pwm_channel(channel)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
        self.granted(
            |g| g.allows_pwm(channel),
            &format!("PWM channel {channel}"),
            Grants::pwm_summary,
            grants::PWM_KEY,
        )?;
        Ok(channel)
    }

    fn handle(&self, line: &str) -> ApiResult<Arc<dyn super::backend::LineHandle>> {
        self.shared.handle(line).ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                format!("{line} is not requested right now (being re-attached?); try again"),
            )
        })
    }
}

/// The routes of one function's socket.
pub(crate) fn router(shared: Arc<Shared>, function: &str) -> Router {
    Router::new()
        .route("/v1/capabilities", get(capabilities))
        .route("/v1/gpio/{line}", get(read_line).put(write_line))
        .route("/v1/gpio/{line}/watch", get(watch_line))
        .route("/v1/i2c/{bus}/{addr}", post(i2c))
        .route("/v1/spi/{bus}/{cs}", post(spi))
        .route("/v1/pwm/{channel}", get(read_pwm).put(write_pwm))
        .route("/v1/sensors/{id}", get(sensor))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no such route: the hardware API is GET /v1/capabilities, GET|PUT \
                 /v1/gpio/LINE, GET /v1/gpio/LINE/watch, POST /v1/i2c/BUS/ADDR, POST \
                 /v1/spi/BUS/CS, GET|PUT /v1/pwm/CHANNEL, GET /v1/sensors/ID",
            )
        })
        .with_state(Broker {
            shared,
            function: Arc::from(function),
        })
}

/// Serves HTTP/1.1 on `listener` until the task is aborted; aborting it also ends every
/// open connection (each is a task of the set this future owns).
pub(crate) async fn serve(listener: UnixListener, router: Router) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let service = TowerToHyperService::new(router.clone());
                    connections.spawn(async move {
                        let served = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                        if let Err(e) = served {
                            debug!("hardware socket connection: {e}");
                        }
                    });
                }
                Err(e) => {
                    warn!("hardware socket accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

fn line_json(line: &str, grant: &LineGrant) -> Value {
    let mut entry = json!({
        "line": line,
        "direction": grant.direction,
        "active_low": grant.active_low,
        "grant": format!("{line}:{}", grant.spec()),
    });
    if let Some(map) = entry.as_object_mut() {
        match grant.direction {
            Direction::In => {
                map.insert("bias".into(), json!(grant.bias));
                map.insert(
                    "debounce".into(),
                    json!(
                        grant
                            .debounce
                            .map(|d| humantime::format_duration(d).to_string())
                    ),
                );
            }
            Direction::Out => {
                map.insert("initial".into(), json!(grant.initial));
                map.insert("safe".into(), json!(grant.safe));
            }
        }
    }
    entry
}

async fn capabilities(State(broker): State<Broker>) -> ApiResult<Json<Value>> {
    let grants = broker.grants()?;
    let gpio: Vec<Value> = grants
        .gpio
        .iter()
        .map(|(line, grant)| line_json(line, grant))
        .collect();
    let i2c: Vec<Value> = grants
        .i2c
        .iter()
        .map(|(bus, addrs)| {
            let addrs: Vec<String> = addrs.iter().map(|a| format!("{a:#04x}")).collect();
            json!({"bus": bus, "addresses": addrs})
        })
        .collect();
    Ok(Json(json!({
        "function": &*broker.function,
        "backend": broker.shared.backend_name(),
        "gpio": gpio,
        "i2c": i2c,
        "spi": grants.spi.iter().map(|(bus, cs)| format!("{bus}.{cs}")).collect::<Vec<_>>(),
        "pwm": grants.pwm,
        "sensors": grants.sensors,
    })))
}

async fn read_line(
    State(broker): State<Broker>,
    Path(line): Path<String>,
) -> ApiResult<Json<LineLevel>> {
    let grant = broker.line_grant(&line)?;
    let handle = broker.handle(&line)?;
    let physical = blocking(move || handle.read()).await?;
    Ok(Json(LineLevel {
        line,
        level: physical ^ u8::from(grant.active_low),
    }))
}

async fn write_line(
    State(broker): State<Broker>,
    Path(line): Path<String>,
    body: Bytes,
) -> ApiResult<Json<LineLevel>> {
    let grant = broker.line_grant(&line)?;
    if grant.direction != Direction::Out {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "{line} is granted as input ({line}:{}); setting it needs an output grant \
                 ({line}:out)",
                grant.spec()
            ),
        ));
    }
    let level = parse_level(&body)?;
    let handle = broker.handle(&line)?;
    let physical = level ^ u8::from(grant.active_low);
    blocking(move || handle.write(physical)).await?;
    Ok(Json(LineLevel { line, level }))
}

async fn watch_line(State(broker): State<Broker>, Path(line): Path<String>) -> ApiResult<Response> {
    let grant = broker.line_grant(&line)?;
    if grant.direction != Direction::In {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "{line} is granted as output ({line}:{}); watching needs an input grant \
                 ({line}:in)",
                grant.spec()
            ),
        ));
    }
    let rx = broker.shared.subscribe(&line);
    let stream = futures::stream::unfold((rx, broker, line), |(mut rx, broker, line)| async move {
        loop {
            match rx.recv().await {
                Ok(event) => {
                    // The grant of the moment: the stream ends when it is gone.
                    let grant = broker
                        .shared
                        .grants(&broker.function)
                        .and_then(|g| g.gpio.get(&line).copied())
                        .filter(|g| g.direction == Direction::In)?;
                    let text = event_line(&event.logical(grant.active_low));
                    return Some((text, (rx, broker, line)));
                }
                // Missed events show as a gap in the sequence numbers.
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return None,
            }
        }
    });
    Ok(ndjson(stream))
}

/// `{"write":[...],"read":N}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct I2cRequest {
    #[serde(default)]
    write: Vec<u8>,
    #[serde(default)]
    read: usize,
}

async fn i2c(
    State(broker): State<Broker>,
    Path((bus, addr)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let bus: u8 = bus.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("I2C bus {bus:?} is not a number from 0 to 255"),
        )
    })?;
    let addr =
        grants::parse_i2c_address(&addr).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    broker.granted(
        |g| g.allows_i2c(bus, addr),
        &format!("I2C {bus}:{addr:#04x}"),
        Grants::i2c_summary,
        grants::I2C_KEY,
    )?;
    let request: I2cRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the body must be {{\"write\":[bytes],\"read\":N}}: {e}"),
        )
    })?;
    if request.write.is_empty() && request.read == 0 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "nothing to do: give \"write\": [bytes] and/or \"read\": N",
        ));
    }
    // Checked here too, so a bad request never waits for a blocking thread.
    backend::check_i2c_transfer(request.write.len(), request.read)?;
    let i2c = broker.shared.i2c();
    let data = blocking(move || i2c.transfer(bus, addr, &request.write, request.read)).await?;
    Ok(Json(json!({ "data": data })))
}

/// `{"write":[...],"speed_hz":N,"mode":M}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpiRequest {
    write: Vec<u8>,
    #[serde(default = "default_spi_speed")]
    speed_hz: u32,
    #[serde(default)]
    mode: u8,
}

fn default_spi_speed() -> u32 {
    backend::DEFAULT_SPI_SPEED_HZ
}

async fn spi(
    State(broker): State<Broker>,
    Path((bus, cs)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let bad = |e: String| ApiError::new(StatusCode::BAD_REQUEST, e);
    let bus = grants::parse_spi_bus(&bus).map_err(bad)?;
    let cs = grants::parse_spi_cs(&cs).map_err(bad)?;
    broker.granted(
        |g| g.allows_spi(bus, cs),
        &format!("SPI {bus}.{cs}"),
        Grants::spi_summary,
        grants::SPI_KEY,
    )?;
    let request: SpiRequest = serde_json::from_slice(&body).map_err(|e| {
        bad(format!(
            "the body must be {{\"write\":[bytes],\"speed_hz\":N,\"mode\":0..3}} (speed_hz \
             and mode optional): {e}"
        ))
    })?;
    if request.write.is_empty() {
        return Err(bad(
            "nothing to do: give \"write\": [bytes] (as many bytes are read)".to_owned(),
        ));
    }
    // Checked here too, so a bad request never waits for a blocking thread.
    backend::check_spi_transfer(request.write.len(), request.speed_hz, request.mode)?;
    let spi = broker.shared.spi();
    let data =
        blocking(move || spi.transfer(bus, cs, &request.write, request.speed_hz, request.mode))
            .await?;
    Ok(Json(json!({ "data": data })))
}

/// `{"channel",...}`: a PWM channel's state.
#[derive(Serialize)]
struct PwmChannel {
    channel: u8,
    #[serde(flatten)]
    state: PwmState,
}

/// `{"period_ns":N,"duty_ns":N,"enabled":bool}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetPwm {
    period_ns: u64,
    duty_ns: u64,
    enabled: bool,
}

async fn read_pwm(
    State(broker): State<Broker>,
    Path(channel): Path<String>,
) -> ApiResult<Json<PwmChannel>> {
    let channel = broker.pwm_channel(&channel)?;
    let pwm = broker.shared.pwm();
    let state = blocking(move || pwm.get(channel)).await?;
    Ok(Json(PwmChannel { channel, state }))
}

async fn write_pwm(
    State(broker): State<Broker>,
    Path(channel): Path<String>,
    body: Bytes,
) -> ApiResult<Json<PwmChannel>> {
    let channel = broker.pwm_channel(&channel)?;
    let request: SetPwm = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "the body must be {{\"period_ns\":N,\"duty_ns\":N,\"enabled\":true|false}}: \
                 {e}"
            ),
        )
    })?;
    backend::check_pwm(request.period_ns, request.duty_ns)?;
    let pwm = broker.shared.pwm();
    let state =
        blocking(move || pwm.set(channel, request.period_ns, request.duty_ns, request.enabled))
            .await?;
    Ok(Json(PwmChannel { channel, state }))
}

async fn sensor(State(broker): State<Broker>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    broker.granted(
        |g| g.sensors.contains(&id),
        &format!("sensor {id}"),
        Grants::sensors_summary,
        grants::SENSORS_KEY,
    )?;
    let sensors = broker.shared.sensors();
    let sensor_id = id.clone();
    let reading = blocking(move || sensors.read(&sensor_id)).await?;
    Ok(Json(json!({
        "id": id,
        "kind": reading.kind,
        "value": reading.value,
        "unit": reading.unit,
    })))
}
