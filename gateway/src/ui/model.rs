//! The JSON the dashboard reads: the events of `GET /ui/events` and what the node and the
//! provider hand the gateway for them. Field names are camelCase, like the OpenFaaS API.
//!
//! | event        | stream                     | data |
//! |--------------|----------------------------|------|
//! | `overview`   | `/ui/events`               | [`Overview`] |
//! | `function`   | `/ui/events?function=N.NS` | [`FunctionView`] |
//! | `invocations`| `/ui/events?function=N.NS` | [`Invocations`] |
//! | `logs`       | `/ui/events?function=N.NS` | [`LogLines`] |
//! | `hardware`   | `/ui/events?function=N.NS` | [`FunctionHardware`] |
//! | `gone`       | `/ui/events?function=N.NS` | `{"function":"N.NS"}`: deleted; the stream ends |
//! | `hardware`   | `/ui/events?view=hardware` | [`HardwareView`] |
//! | `sensors`    | `/ui/events?view=hardware` | `[`[`SensorView`]`]` |
//! | `edge`       | `/ui/events?view=hardware` | [`EdgeView`] |
//! | `delivery`   | both of the above          | [`Delivery`] |

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::types::{ExitReason, FunctionState, FunctionStatus, LogMessage};

/// The overview: this node, every function, and the boards when the node is in a cluster.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Overview {
    pub node: NodeInfo,
    pub functions: Vec<FunctionSummary>,
    /// `None` on a single board: the page then shows "this board" alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boards: Option<Vec<Board>>,
}

/// The board serving the page.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    /// Its host name.
    pub name: String,
    /// `uname -m`.
    pub arch: String,
    /// bramble's version.
    pub version: String,
    /// Whether the provider can reach what runs functions (containerd).
    pub healthy: bool,
    /// Why not, when it cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// One function as the overview shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionSummary {
    pub name: String,
    pub namespace: String,
    pub image: String,
    pub state: FunctionState,
    /// Desired replicas.
    pub replicas: u64,
    /// Replicas that passed their health check.
    pub available: u64,
    pub restarts: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<ExitReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Finished invocations since bramble started.
    pub invocations: u64,
    /// Of which answered 5xx (the function's or the gateway's: unreachable, timed out).
    pub errors: u64,
    /// Median duration since bramble started, estimated from the histogram like Prometheus'
    /// `histogram_quantile` (inside the first bucket, 5 ms, only "below 5 ms" is known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    /// Memory in use by its replicas (`None` until measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<f64>,
    /// CPU in use by its replicas in millicores, over the last few seconds (`None` until
    /// measured twice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<f64>,
}

/// Whether a board is heard from (the cluster's liveness).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BoardState {
    Alive,
    Suspect,
    Dead,
}

/// A board of the cluster, as the board serving the page sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Board {
    pub name: String,
    pub state: BoardState,
    /// `arm64`, `arm`, `amd64` (`None` while only its heartbeat is known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Bytes reserved by the functions placed on it.
    pub memory_used: u64,
    /// Bytes functions may reserve on it.
    pub memory_budget: u64,
    /// The functions with a replica placed on it, `name.namespace`.
    pub functions: Vec<String>,
    /// When it was last heard, ms since the Unix epoch (`None`: not since this board started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_ms: Option<u64>,
    /// The board serving the page.
    #[serde(default)]
    pub this_board: bool,
}

/// What a replica is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplicaState {
    /// Its task runs; the health check has not passed yet.
    Starting,
    /// Serving.
    Ready,
    /// Waiting out a restart backoff after a failure.
    Restarting,
    /// Finishing its requests before it stops (scaled away, replaced by an update).
    Stopping,
    /// No task (scaled away, not started yet).
    Stopped,
}

/// One replica of a function and where it runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Replica {
    /// The container id (the `instance` of its log lines).
    pub id: String,
    pub state: ReplicaState,
    /// The board it runs on (`None`: this board).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub board: Option<String>,
    /// Its address on the function network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Consecutive failed runs.
    #[serde(default)]
    pub failures: u32,
}

/// A function's page: its status as the API shows it (with usage), its summary and replicas.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionView {
    pub status: FunctionStatus,
    pub summary: FunctionSummary,
    pub replicas: Vec<Replica>,
}

/// One finished invocation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Invocation {
    /// When it finished, ms since the Unix epoch.
    pub at_ms: u64,
    /// The HTTP status answered.
    pub status: u16,
    /// How long it took, µs.
    pub micros: u32,
}

/// A function's latest invocations, newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Invocations {
    /// Every invocation since bramble started.
    pub total: u64,
    pub recent: Vec<Invocation>,
}

/// Log lines of a function, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLines {
    pub lines: Vec<LogMessage>,
}

/// The hardware page: GPIO lines, bus grants, recent trigger deliveries.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HardwareView {
    /// `simulator` or `gpiocdev`.
    pub backend: String,
    /// Whether inputs can be driven by hand (`PUT /system/gpio/LINE`).
    pub simulated: bool,
    pub lines: Vec<LineView>,
    /// I2C, SPI and PWM grants with their owners.
    pub buses: Vec<BusGrant>,
    /// Newest first.
    pub deliveries: Vec<Delivery>,
}

/// A GPIO line (physical levels).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LineView {
    pub name: String,
    /// `in` or `out`; `None`: not requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bias: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debounce: Option<String>,
    pub owners: Vec<String>,
}

/// A granted I2C address set, SPI device or PWM channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BusGrant {
    /// `i2c`, `spi` or `pwm`.
    pub kind: String,
    /// `1:0x76`, `0.0`, `0`.
    pub device: String,
    pub owners: Vec<String>,
}

/// A sensor and its current value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SensorView {
    /// `w1:28-0316a27966ff`.
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Why it could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub owners: Vec<String>,
}

/// An edge of a GPIO line (physical level), as it happens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EdgeView {
    pub line: String,
    /// `rising` or `falling`.
    pub edge: String,
    pub level: u8,
    /// Node-wide sequence number of hardware events.
    pub seqno: u64,
    /// Edges of the line this event stands for: a burst faster than the page is sent as its
    /// last edge with the count.
    pub count: u64,
}

/// How a trigger delivery ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryOutcome {
    /// The function answered 2xx/3xx.
    Delivered,
    /// The function answered with an error (4xx, 5xx but the retried ones): not retried.
    Failed,
    /// Not delivered yet (the function starting, unreachable): it is retried.
    Retrying,
}

/// One attempt to deliver a trigger's event(s) to its function.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// When it ended, ms since the Unix epoch.
    pub at_ms: u64,
    /// `name.namespace`.
    pub function: String,
    /// The trigger's id (`gpio-GPIO17`, `schedule`, …).
    pub trigger: String,
    /// `gpio`, `schedule` or `sensor`.
    pub kind: String,
    /// What fired: `GPIO17 falling`, `*/5 * * * *`, `w1:28-… above 30`.
    pub source: String,
    pub sequence: u64,
    /// Events in this invocation (a burst is coalesced).
    pub count: u64,
    /// The HTTP status answered.
    pub status: u16,
    pub outcome: DeliveryOutcome,
    /// How long the attempt took, ms.
    pub ms: f64,
}

/// A function's hardware: its grants and its triggers with their last deliveries.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionHardware {
    /// Grants by kind (`gpio`, `i2c`, `spi`, `pwm`, `sensors`), as written
    /// (`GPIO17:in:pull-up`).
    pub grants: BTreeMap<String, Vec<String>>,
    pub triggers: Vec<TriggerView>,
}

/// A trigger of a function.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerView {
    pub id: String,
    pub kind: String,
    /// What fires it, e.g. `GPIO17 falling`.
    pub source: String,
    /// The path it invokes.
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<Delivery>,
}

/// What the node reports as it happens (see [`super::NodeFeed::events`]).
#[derive(Clone, Debug, PartialEq)]
pub enum NodeEvent {
    /// A GPIO edge.
    Edge(EdgeView),
    /// A line was requested or released (direction, owners changed).
    LinesChanged,
    /// A trigger delivery ended.
    Delivery(Delivery),
}
