//! The hardware helper: GPIO lines, I2C, SPI, PWM and sensors for functions, through a
//! broker.
//!
//! Functions never get `/dev/gpiochip*`, `/dev/gpiomem` or `privileged`. The agent owns the
//! lines and serves, for each function that asks for hardware, a small HTTP/JSON API on a
//! Unix socket of its own, bind-mounted into its containers: the socket is the identity, so
//! one function cannot use another's grant. Grants come from the function's annotations
//! (`bramble.gpio`, `bramble.i2c`, `bramble.sensors`, `bramble.spi`, `bramble.pwm`; see
//! [`grants`]).
//!
//! # Mounts
//!
//! The socket of function `F` is `<socket_dir>/F/hw.sock` on the host (`socket_dir` defaults
//! to `/run/bramble/hw`). The runtime bind-mounts the **directory** `<socket_dir>/F`
//! (read-only is fine: connecting to a socket needs no write access to the mount) at
//! `/run/bramble` in the container, so the function connects to `/run/bramble/hw.sock`:
//!
//! ```text
//! curl --unix-socket /run/bramble/hw.sock http://hw/v1/gpio/GPIO17
//! ```
//!
//! Mounting the directory rather than the socket file keeps working when the agent restarts
//! and binds a new socket at the same path. `socket_dir` is root-only (0700), so no user of
//! the host but root can reach any function's socket; the function's directory (0755) and
//! socket (0666) are open, so that a non-root user inside the container, where the mount
//! starts at the function's directory, can connect. The routes are in [`broker`].
//!
//! # Life cycle (what the node calls)
//!
//! * [`Hardware::parse_grants`] on deploy, then [`Hardware::check`] (lines exist, no
//!   conflict with the grants of the other deployed functions) to refuse a bad deploy early.
//! * [`Hardware::attach`] when the function is deployed or updated: requests the lines
//!   (outputs at their `initial` level), starts the socket server, returns the [`Mount`].
//!   Idempotent with the same grants. From then on the grants are reserved for the function
//!   (another deploy cannot take its output) until it is detached.
//! * [`Hardware::adopt`] for each deployed function after a daemon restart: reserves its
//!   grants, then `attach`. The grants stay reserved even when the lines cannot be requested
//!   (a line busy in another program), since the function stays deployed.
//! * [`Hardware::safe_state`] when the function's replicas stop or crash (the outputs go to
//!   their `safe` level and its PWM channels are disabled; lines and socket stay).
//! * [`Hardware::detach`] when the function is deleted (or loses its grants): safe state,
//!   lines released, server stopped, socket removed.
//! * [`Hardware::shutdown`] when the daemon stops: `detach` for every function.
//! * [`Hardware::watch`] for GPIO triggers; [`admin::router`] for the node's admin API.
//!
//! Levels: backends and the admin API deal in physical (wire) levels; functions read, write
//! and watch logical levels (their `active-low` applied). `initial` and `safe` are logical.
//! After a daemon restart, outputs start again at `initial` (the kernel releases lines when
//! their owner exits).

pub mod admin;
pub mod backend;
pub mod broker;
pub mod cdev;
pub mod grants;
pub mod pi;
pub mod sensors;
pub mod sim;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::UnixListener;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use backend::{
    BackendError, EventBus, GpioBackend, I2cBackend, InputConfig, LineHandle, PwmBackend,
    SpiBackend,
};
pub use backend::{Edge, EdgeEvent};
pub use grants::{Bias, Direction, GrantError, Grants, LineGrant};
use sensors::SensorRegistry;
pub use sim::SimI2cDevice;

/// Where the per-function socket directories are made when the configuration names none.
pub const DEFAULT_SOCKET_DIR: &str = "/run/bramble/hw";
/// Where the function's socket directory is mounted in its containers.
pub const CONTAINER_DIR: &str = "/run/bramble";
/// The socket's file name, on the host and in the container.
pub const SOCKET_NAME: &str = "hw.sock";
/// Most edges one [`Hardware::toggle`] makes.
pub const MAX_TOGGLES: u32 = 100_000;
/// Longest a [`Hardware::toggle`] may take.
const MAX_TOGGLE_TIME: Duration = Duration::from_secs(60);
/// Longest Unix socket path (`sun_path` is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;
/// How long `attach` retries a line the kernel reports busy (a line just released by this
/// node is freed a moment later).
const BUSY_RETRIES: u32 = 20;
const BUSY_RETRY_DELAY: Duration = Duration::from_millis(25);

/// Which GPIO backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// The character device when a chip with a known label exists, else the simulator.
    #[default]
    Auto,
    /// Always the simulator (and simulated I2C, SPI and PWM).
    Simulator,
    /// Always the character device and the Pi's I2C, SPI and PWM; an error where no chip
    /// is found.
    Cdev,
}

/// The hardware helper's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HardwareConfig {
    /// `auto` (default), `simulator` or `cdev`.
    pub backend: BackendChoice,
    /// Where the per-function socket directories are made (default `<run_dir>/hw`, i.e.
    /// `/run/bramble/hw`).
    pub socket_dir: Option<PathBuf>,
    /// The kernel's 1-Wire devices (default `/sys/bus/w1/devices`).
    pub w1_dir: PathBuf,
    /// Labels of the GPIO chips whose lines functions may use, in order of preference
    /// (default `pinctrl-rp1`, `pinctrl-bcm2711`, `pinctrl-bcm2835`).
    pub chip_labels: Vec<String>,
    /// The simulator's lines (default `GPIO0`..`GPIO27`).
    pub sim_lines: Vec<String>,
    /// The simulator's I2C devices (default: a BME280 at `1:0x76`).
    pub sim_i2c: Vec<SimI2cDevice>,
    /// Pairs of simulated lines wired together, like a jumper wire between two pins: an
    /// output on one drives the other (default: none). See [`sim`].
    pub sim_jumpers: Vec<[String; 2]>,
}

impl Default for HardwareConfig {
    fn default() -> Self {
        HardwareConfig {
            backend: BackendChoice::Auto,
            socket_dir: None,
            w1_dir: PathBuf::from("/sys/bus/w1/devices"),
            chip_labels: ["pinctrl-rp1", "pinctrl-bcm2711", "pinctrl-bcm2835"]
                .map(String::from)
                .to_vec(),
            sim_lines: sim::default_lines(),
            sim_i2c: vec![SimI2cDevice::bme280()],
            sim_jumpers: Vec::new(),
        }
    }
}

/// What the runtime mounts into a function's containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The function's socket directory on the host, `<socket_dir>/<function>`.
    pub host_path: PathBuf,
    /// Where to mount it in the container: `/run/bramble`.
    pub container_path: PathBuf,
    /// The socket on the host (`<host_path>/hw.sock`).
    pub socket: PathBuf,
    /// The mount can (and should) be read-only.
    pub read_only: bool,
}

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

/// A hardware helper error.
#[derive(Debug, thiserror::Error)]
pub enum HardwareError {
    /// A bad annotation.
    #[error(transparent)]
    Grant(#[from] GrantError),
    /// The grants collide with another function's.
    #[error("{0}")]
    Conflict(String),
    /// No such line on this node.
    #[error("{0}")]
    UnknownLine(String),
    /// A line is in use (by this node in another way, or by another program).
    #[error("{0}")]
    Busy(String),
    /// Only the simulator can do this.
    #[error("{0}")]
    NotSimulator(String),
    /// The line cannot be watched (not requested as an input).
    #[error("{0}")]
    NotWatchable(String),
    /// A function name that cannot name a socket directory.
    #[error("{0}")]
    InvalidFunction(String),
    /// A bad value.
    #[error("{0}")]
    Invalid(String),
    /// `backend = "cdev"` but no chip with a known label.
    #[error("{0}")]
    NoChip(String),
    /// A file system error (the socket directory).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A backend error.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl HardwareError {
    /// The HTTP status for a deploy refused with this error: 400 for bad grants or a line
    /// the node does not have, 409 for conflicts and busy lines, 500 otherwise.
    pub fn status(&self) -> u16 {
        match self {
            HardwareError::Grant(_)
            | HardwareError::UnknownLine(_)
            | HardwareError::InvalidFunction(_)
            | HardwareError::Invalid(_)
            | HardwareError::Backend(BackendError::UnknownLine(_) | BackendError::Invalid(_)) => {
                400
            }
            HardwareError::Conflict(_)
            | HardwareError::Busy(_)
            | HardwareError::NotSimulator(_)
            | HardwareError::NotWatchable(_)
            | HardwareError::Backend(BackendError::Busy(_) | BackendError::Unsupported(_)) => 409,
            _ => 500,
        }
    }
}

/// A line this node holds.
struct HeldLine {
    handle: Arc<dyn LineHandle>,
    direction: Direction,
    config: InputConfig,
    /// `CLOCK_MONOTONIC` just before it was requested: its edges are not older.
    requested_ns: u64,
    /// The functions granted it (one for an output; any number for an input).
    holders: BTreeSet<String>,
}

#[derive(Default)]
struct State {
    /// The grants of attached functions (only lines actually held).
    functions: BTreeMap<String, Grants>,
    /// The grants of every deployed function, held or not (a function whose lines could
    /// not be requested after a restart is still deployed): what conflicts are checked
    /// against.
    reserved: BTreeMap<String, Grants>,
    lines: HashMap<String, HeldLine>,
}

/// What the socket servers share with `Hardware`.
pub(crate) struct Shared {
    gpio: Box<dyn GpioBackend>,
    i2c: Arc<dyn I2cBackend>,
    spi: Arc<dyn SpiBackend>,
    pwm: Arc<dyn PwmBackend>,
    sensors: Arc<SensorRegistry>,
    bus: Arc<EventBus>,
    state: Mutex<State>,
    /// Bumped whenever a line is requested or released.
    line_changes: tokio::sync::watch::Sender<u64>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
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
    fn disable_pwm(&self, function: &str, channel: u8) {
        if let Err(e) = self.pwm.disable(channel) {
            warn!(function, channel, "cannot disable the PWM channel: {e}");
        }
    }

    pub(crate) fn sensors(&self) -> Arc<SensorRegistry> {
        Arc::clone(&self.sensors)
    }

    /// Removes `function` from the holders of `line`; the last holder of an output sets
    /// its safe level, and the line is released.
    fn release(&self, function: &str, line: &str, grant: &LineGrant) {
        let mut state = self.state();
        let Some(held) = state.lines.get_mut(line) else {
            return;
        };
        held.holders.remove(function);
        if !held.holders.is_empty() {
            return;
        }
        if held.direction == Direction::Out
            && let Err(e) = held.handle.write(grant.safe ^ u8::from(grant.active_low))
        {
            warn!(function, line, "cannot set the safe level: {e}");
        }
        state.lines.remove(line);
        drop(state);
        self.line_changes.send_modify(|n| *n += 1);
    }

    /// Adds `function` to the holders of a shared input, or requests the line.
    async fn acquire(
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

/// A running socket server.
struct Server {
    task: JoinHandle<()>,
    dir: PathBuf,
    socket: PathBuf,
}

/// The hardware helper of a node. Shared as `Arc<Hardware>`.
pub struct Hardware {
    shared: Arc<Shared>,
    socket_dir: PathBuf,
    servers: Mutex<HashMap<String, Server>>,
    /// Serializes `attach` and `detach`.
    lifecycle: tokio::sync::Mutex<()>,
}

impl Hardware {
    /// Chooses the backend (`auto`: the character device when a chip with one of
    /// `chip_labels` exists, else the simulator; the choice is logged). Starts nothing.
    pub fn new(config: HardwareConfig) -> Result<Arc<Hardware>, HardwareError> {
        let bus = Arc::new(EventBus::default());
        let labels = config.chip_labels.join(", ");
        let chips = match config.backend {
            BackendChoice::Simulator => Vec::new(),
            BackendChoice::Auto | BackendChoice::Cdev => cdev::find_chips(&config.chip_labels),
        };
        type Backends = (
            Box<dyn GpioBackend>,
            Arc<dyn I2cBackend>,
            Arc<dyn SpiBackend>,
            Arc<dyn PwmBackend>,
        );
        let (gpio, i2c, spi, pwm): Backends = if chips.is_empty() {
            match config.backend {
                BackendChoice::Cdev => {
                    return Err(HardwareError::NoChip(format!(
                        "hardware backend \"cdev\": no GPIO chip labelled {labels} (is this a \
                         Raspberry Pi with GPIO support in the kernel?)"
                    )));
                }
                BackendChoice::Auto => info!(
                    "hardware: no GPIO chip labelled {labels}: using the simulator \
                     (drive it with `bramble gpio set`)"
                ),
                BackendChoice::Simulator => info!("hardware: using the simulator"),
            }
            let gpio = sim::SimGpio::new(&config.sim_lines, Arc::clone(&bus));
            for [a, b] in &config.sim_jumpers {
                gpio.wire(a, b).map_err(|e| {
                    HardwareError::Invalid(format!("hardware.sim_jumpers [{a:?}, {b:?}]: {e}"))
                })?;
            }
            (
                Box::new(gpio),
                Arc::new(sim::SimI2c::new(&config.sim_i2c)),
                Arc::new(sim::SimSpi),
                Arc::new(sim::SimPwm::default()),
            )
        } else {
            let gpio = cdev::CdevGpio::open(&chips, Arc::clone(&bus))?;
            let names: Vec<String> = chips
                .iter()
                .map(|c| format!("{} ({})", c.path.display(), c.label))
                .collect();
            info!(
                "hardware: using the GPIO character device: {}",
                names.join(", ")
            );
            (
                Box::new(gpio),
                Arc::new(pi::PiI2c::new()),
                Arc::new(pi::PiSpi::new()),
                Arc::new(pi::PiPwm::new()),
            )
        };
        Ok(Arc::new(Hardware {
            shared: Arc::new(Shared {
                gpio,
                i2c,
                spi,
                pwm,
                sensors: Arc::new(SensorRegistry::new(config.w1_dir)),
                bus,
                state: Mutex::new(State::default()),
                line_changes: tokio::sync::watch::Sender::new(0),
            }),
            socket_dir: config
                .socket_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET_DIR)),
            servers: Mutex::new(HashMap::new()),
            lifecycle: tokio::sync::Mutex::new(()),
        }))
    }

    /// The backend in use: `simulator` or `gpiocdev`.
    pub fn backend(&self) -> &'static str {
        self.shared.gpio.name()
    }

    /// Parses a function's annotations (see [`grants`] for the keys). `Ok(None)`: the
    /// function asks for no hardware.
    pub fn parse_grants(
        annotations: &BTreeMap<String, String>,
    ) -> Result<Option<Grants>, GrantError> {
        grants::parse(annotations)
    }

    /// Checks that every granted line exists and that the grants (lines, PWM channels) do
    /// not conflict with those of the other functions: the attached ones and every deployed
    /// one, attached or not (a function never conflicts with its own current grants).
    /// Changes nothing.
    pub fn check(&self, function: &str, grants: &Grants) -> Result<(), HardwareError> {
        validate_function(function)?;
        for line in grants.gpio.keys() {
            if !self.shared.gpio.has_line(line) {
                return Err(HardwareError::UnknownLine(format!(
                    "{}: no GPIO line named {line} on this node ({} backend; `bramble gpio \
                     get` lists the lines)",
                    grants::GPIO_KEY,
                    self.backend()
                )));
            }
        }
        let state = self.shared.state();
        grants::check_conflicts(
            function,
            grants,
            state
                .functions
                .iter()
                .chain(&state.reserved)
                .map(|(f, g)| (f.as_str(), g)),
        )
        .map_err(HardwareError::Conflict)
    }

    /// [`Hardware::attach`] for a function that is deployed whatever happens, after a daemon
    /// restart: its grants are reserved first, and stay reserved if its lines cannot be
    /// requested now, so that no other deploy takes its output in the meantime. A
    /// [`Hardware::detach`] ends the reservation.
    pub async fn adopt(&self, function: &str, grants: Grants) -> Result<Mount, HardwareError> {
        validate_function(function)?;
        let _serial = self.lifecycle.lock().await;
        let attached = self.attach_locked(function, grants.clone()).await;
        if attached.is_err() {
            self.shared
                .state()
                .reserved
                .insert(function.to_owned(), grants);
        }
        attached
    }

    /// Gives `function` its grants: requests its lines (outputs at their `initial` level;
    /// inputs shared with other functions are joined), starts its socket server if it is
    /// not running, and returns what to mount. Called again with the same grants it changes
    /// nothing; with other grants, lines no longer granted (or granted differently) are
    /// released (outputs at their safe level first) and new ones requested, and the server
    /// keeps running. On error, the lines this call requested are released again.
    pub async fn attach(&self, function: &str, grants: Grants) -> Result<Mount, HardwareError> {
        let _serial = self.lifecycle.lock().await;
        self.attach_locked(function, grants).await
    }

    async fn attach_locked(&self, function: &str, grants: Grants) -> Result<Mount, HardwareError> {
        self.check(function, &grants)?;
        let old = self.shared.grants(function);
        let running = self.server_running(function);
        if running && old.as_ref() == Some(&grants) {
            return Ok(self.mount(function));
        }
        let old = old.unwrap_or_default();
        for channel in old.pwm.difference(&grants.pwm) {
            self.shared.disable_pwm(function, *channel);
        }
        for (line, grant) in &old.gpio {
            if grants.gpio.get(line) != Some(grant) {
                self.shared.release(function, line, grant);
            }
        }
        let mut acquired: Vec<(&String, &LineGrant)> = Vec::new();
        for (line, grant) in &grants.gpio {
            if old.gpio.get(line) == Some(grant) {
                continue;
            }
            if let Err(e) = self.shared.acquire(function, line, grant).await {
                for (line, grant) in acquired {
                    self.shared.release(function, line, grant);
                }
                let mut kept = old.clone();
                kept.gpio
                    .retain(|line, grant| grants.gpio.get(line) == Some(grant));
                let mut state = self.shared.state();
                if kept.is_empty() && !running {
                    state.functions.remove(function);
                } else {
                    state.functions.insert(function.to_owned(), kept);
                }
                return Err(e);
            }
            acquired.push((line, grant));
        }
        {
            let mut state = self.shared.state();
            state.functions.insert(function.to_owned(), grants.clone());
            state.reserved.insert(function.to_owned(), grants);
        }
        if !running && let Err(e) = self.start_server(function) {
            self.detach_locked(function);
            return Err(e);
        }
        info!(function, backend = self.backend(), "hardware attached");
        Ok(self.mount(function))
    }

    /// The mount of a function attached with [`Hardware::attach`], `None` otherwise.
    pub fn mount_of(&self, function: &str) -> Option<Mount> {
        let attached = self.servers().contains_key(function);
        attached.then(|| self.mount(function))
    }

    /// Reads a sensor (for sensor-polling triggers); same registry as the functions' API.
    pub fn read_sensor(&self, id: &str) -> Result<sensors::Reading, sensors::SensorError> {
        self.shared.sensors().read(id)
    }

    /// Puts the function's outputs at their `safe` level and disables its PWM channels. Its
    /// lines stay requested and its socket stays up (for when its replicas start again).
    /// Call it when the function's replicas stop, crash or are scaled to zero.
    pub fn safe_state(&self, function: &str) {
        let state = self.shared.state();
        let Some(grants) = state.functions.get(function) else {
            return;
        };
        for (line, grant) in &grants.gpio {
            if grant.direction != Direction::Out {
                continue;
            }
            if let Some(held) = state.lines.get(line)
                && let Err(e) = held.handle.write(grant.safe ^ u8::from(grant.active_low))
            {
                warn!(function, line, "cannot set the safe level: {e}");
            }
        }
        for channel in &grants.pwm {
            self.shared.disable_pwm(function, *channel);
        }
    }

    /// Takes the function's hardware away: safe state, lines released, socket server
    /// stopped (open connections and watch streams end), socket and its directory removed.
    /// Does nothing for a function that is not attached.
    pub async fn detach(&self, function: &str) {
        let _serial = self.lifecycle.lock().await;
        self.detach_locked(function);
    }

    /// `detach` for every function, when the daemon stops, except that the socket
    /// directories stay: containers that keep running hold them mounted, and the next start
    /// binds its sockets in them again.
    pub async fn shutdown(&self) {
        let _serial = self.lifecycle.lock().await;
        let mut functions: BTreeSet<String> = {
            let state = self.shared.state();
            state
                .functions
                .keys()
                .chain(state.reserved.keys())
                .cloned()
                .collect()
        };
        functions.extend(self.servers().keys().cloned());
        for function in functions {
            self.release_locked(&function, false);
        }
    }

    fn detach_locked(&self, function: &str) {
        self.release_locked(function, true);
    }

    fn release_locked(&self, function: &str, remove_dir: bool) {
        self.safe_state(function);
        let grants = {
            let mut state = self.shared.state();
            state.reserved.remove(function);
            state.functions.remove(function)
        };
        if let Some(grants) = grants {
            for (line, grant) in &grants.gpio {
                self.shared.release(function, line, grant);
            }
        }
        let server = self.servers().remove(function);
        if let Some(server) = server {
            server.task.abort();
            if let Err(e) = std::fs::remove_file(&server.socket)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                warn!(function, "cannot remove {}: {e}", server.socket.display());
            }
            if remove_dir {
                // Fails (and stays) if someone put other files there.
                let _ = std::fs::remove_dir(&server.dir);
            }
            info!(function, "hardware detached");
        }
    }

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

    fn unknown_line(&self, line: &str) -> HardwareError {
        HardwareError::UnknownLine(format!(
            "no GPIO line named {line} on this node ({} backend)",
            self.backend()
        ))
    }

    fn servers(&self) -> MutexGuard<'_, HashMap<String, Server>> {
        self.servers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn server_running(&self, function: &str) -> bool {
        self.servers()
            .get(function)
            .is_some_and(|s| !s.task.is_finished())
    }

    fn mount(&self, function: &str) -> Mount {
        let host_path = self.socket_dir.join(function);
        Mount {
            socket: host_path.join(SOCKET_NAME),
            host_path,
            container_path: PathBuf::from(CONTAINER_DIR),
            read_only: true,
        }
    }

    /// Binds `<socket_dir>/<function>/hw.sock` (replacing a stale socket) and serves it.
    fn start_server(&self, function: &str) -> Result<(), HardwareError> {
        let Mount {
            host_path: dir,
            socket,
            ..
        } = self.mount(function);
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(HardwareError::Invalid(format!(
                "the socket path {} is longer than a Unix socket path may be ({MAX_SOCKET_PATH} \
                 bytes): use a shorter socket_dir or function name",
                socket.display()
            )));
        }
        prepare_dir(&self.socket_dir, &dir)?;
        match std::fs::remove_file(&socket) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(format!("removing {}", socket.display()), e)),
        }
        let listener = UnixListener::bind(&socket)
            .map_err(|e| io_error(format!("binding {}", socket.display()), e))?;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666))
            .map_err(|e| io_error(format!("chmod {}", socket.display()), e))?;
        let router = broker::router(Arc::clone(&self.shared), function);
        let task = tokio::spawn(broker::serve(listener, router));
        let previous = self
            .servers()
            .insert(function.to_owned(), Server { task, dir, socket });
        if let Some(previous) = previous {
            previous.task.abort();
        }
        Ok(())
    }
}

impl std::fmt::Debug for Hardware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hardware")
            .field("backend", &self.backend())
            .field("socket_dir", &self.socket_dir)
            .finish_non_exhaustive()
    }
}

impl Drop for Hardware {
    fn drop(&mut self) {
        for server in self.servers().values() {
            server.task.abort();
        }
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

fn io_error(context: String, source: std::io::Error) -> HardwareError {
    HardwareError::Io { context, source }
}

/// Creates the socket directory, root-only (0700: no other user of the host reaches a
/// function's socket), and the function's directory in it (0755: it is the root of the
/// mount in the container, where a non-root user must be able to reach the socket).
fn prepare_dir(socket_dir: &Path, dir: &Path) -> Result<(), HardwareError> {
    std::fs::create_dir_all(socket_dir)
        .map_err(|e| io_error(format!("creating {}", socket_dir.display()), e))?;
    let meta = std::fs::metadata(socket_dir)
        .map_err(|e| io_error(format!("inspecting {}", socket_dir.display()), e))?;
    if meta.permissions().mode() & 0o1000 != 0 {
        return Err(HardwareError::Invalid(format!(
            "hardware.socket_dir {} is a shared directory (sticky bit, like /tmp): bramble \
             makes its socket directory root-only, so name a directory of its own",
            socket_dir.display()
        )));
    }
    // Also when an older version made it 0755.
    std::fs::set_permissions(socket_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| io_error(format!("chmod {}", socket_dir.display()), e))?;
    match std::fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(HardwareError::Invalid(format!(
                "{} exists and is not a directory",
                dir.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir(dir)
            .map_err(|e| io_error(format!("creating {}", dir.display()), e))?,
        Err(e) => return Err(io_error(format!("inspecting {}", dir.display()), e)),
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| io_error(format!("chmod {}", dir.display()), e))
}

/// A function name that is safe as a directory name.
fn validate_function(function: &str) -> Result<(), HardwareError> {
    let ok = !function.is_empty()
        && function.len() <= 63
        && !function.starts_with('.')
        && function
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(HardwareError::InvalidFunction(format!(
            "function name {function:?} cannot name a hardware socket (letters, digits, '-', \
             '_', '.', at most 63)"
        )))
    }
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
