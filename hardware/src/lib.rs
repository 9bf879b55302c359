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
//!
//! # Modules
//!
//! | module       | what |
//! |--------------|------|
//! | `lib.rs`     | [`Hardware`]: the backends chosen at start |
//! | `config`     | [`HardwareConfig`], `[hardware]` of the node's configuration |
//! | `error`      | [`HardwareError`] and its [`ErrorKind`] |
//! | [`grants`]   | what a function may touch: its annotations parsed, and the conflict rules |
//! | `lifecycle`  | check, attach, adopt, safe state, detach; the socket directories |
//! | `lines`      | the lines the node holds, shared by the socket servers |
//! | `watch`      | the edges of a line, for GPIO triggers |
//! | [`broker`]   | the per-function HTTP API on the function's socket |
//! | [`admin`]    | the operator's view (lines, simulated levels) and the `/system/gpio` routes |
//! | [`backend`]  | the backend traits, the checks of transfers, the event bus |
//! | [`sim`]      | the simulator: GPIO lines and jumpers; I2C, SPI and PWM in [`sim::buses`] |
//! | [`cdev`]     | GPIO through the kernel's character device (`gpiocdev`) |
//! | [`pi`]       | the Pi's I2C, SPI and PWM (`rppal`) |
//! | [`sensors`]  | sensors by id (`w1:…` today) |

pub mod admin;
pub mod backend;
pub mod broker;
pub mod cdev;
mod config;
mod error;
pub mod grants;
mod inventory;
mod lifecycle;
mod lines;
pub mod pi;
pub mod sensors;
pub mod sim;
mod watch;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;
use tracing::info;

pub use admin::{LineInfo, MAX_TOGGLES};
pub use backend::{Edge, EdgeEvent};
use backend::{EventBus, GpioBackend, I2cBackend, PwmBackend, SpiBackend};
pub use config::{BackendChoice, HardwareConfig};
pub use error::{ErrorKind, HardwareError};
pub use grants::{Bias, Direction, GrantError, Grants, LineGrant};
pub use inventory::Inventory;
pub use lifecycle::Mount;
use lines::{Shared, State};
use sensors::SensorRegistry;
pub use sim::SimI2cDevice;
pub use watch::LineWatch;

/// Where the per-function socket directories are made when the configuration names none.
pub const DEFAULT_SOCKET_DIR: &str = "/run/bramble/hw";
/// Where the function's socket directory is mounted in its containers.
pub const CONTAINER_DIR: &str = "/run/bramble";
/// The socket's file name, on the host and in the container.
pub const SOCKET_NAME: &str = "hw.sock";

/// A running socket server.
struct Server {
    task: JoinHandle<()>,
    dir: PathBuf,
    socket: PathBuf,
}

/// The hardware helper of a node. Shared as `Arc<Hardware>`.
pub struct Hardware {
    shared: Arc<Shared>,
    sources: inventory::Sources,
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
        let sim_i2c_buses: Vec<u32> = config.sim_i2c.iter().map(|d| u32::from(d.bus)).collect();
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
        let sources = inventory::Sources {
            chip: chips.first().map(|c| c.label.clone()),
            sim_i2c_buses: chips.is_empty().then_some(sim_i2c_buses),
            w1_dir: config.w1_dir.clone(),
        };
        Ok(Arc::new(Hardware {
            sources,
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

    /// Reads a sensor (for sensor-polling triggers); same registry as the functions' API.
    pub fn read_sensor(&self, id: &str) -> Result<sensors::Reading, sensors::SensorError> {
        self.shared.sensors().read(id)
    }

    fn unknown_line(&self, line: &str) -> HardwareError {
        HardwareError::UnknownLine(format!(
            "no GPIO line named {line} on this node ({} backend)",
            self.backend()
        ))
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

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
