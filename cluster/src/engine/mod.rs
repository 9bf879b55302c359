//! The engine: the nats-server each board runs, supervised by bramble.
//!
//! [`NatsServer::start`] probes the binary's version (`nats-server --version`; older than 2.9
//! is refused), renders the configuration file from the typed [`EngineConfig`] for that
//! version (see [`config`]), has nats-server check it (`-t`), stops a server a crashed bramble
//! left behind (pid file + command line), checks the listeners' ports, spawns the server with
//! `GOMEMLIMIT` and `GOGC`, and returns once `/healthz?js-enabled-only=true` answers ok. A supervisor task
//! then restarts the server when it dies (doubling backoff, reset after a minute of uptime) and
//! publishes the [`EngineState`]. [`NatsServer::restart_with`] applies a new configuration (a
//! cluster block, JetStream on/off: these need a restart), [`NatsServer::stop`] ends it.
//!
//! Readiness has two levels ([`HealthCheck`]): the server is up (what `start` waits for), and
//! JetStream has a meta leader ([`NatsServer::wait_jetstream`]) — a clustered server without a
//! quorum of JetStream peers is up but cannot answer JetStream requests.

pub mod config;
mod error;
pub mod monitor;
mod process;
pub mod version;

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

pub use config::{
    Backoff, ConfigError, Credentials, EngineConfig, JetStreamConfig, LeafConfig, RouteConfig,
    RouteTls, SyncPolicy,
};
pub use error::EngineError;
pub use monitor::{Health, HealthCheck, Monitor, MonitorError};
pub use version::{Capabilities, ServerVersion};

use process::{LogTail, Process};

/// How long a stopping server gets to shut down cleanly before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Uptime after which the restart backoff starts from its first delay again.
const STABLE_UPTIME: Duration = Duration::from_secs(60);

/// What the board's nats-server is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineState {
    /// Started and ready.
    Running {
        /// Its process id.
        pid: u32,
        /// How many times it was restarted after dying.
        restarts: u32,
    },
    /// Died; bramble restarts it after a delay.
    Restarting {
        /// How it ended.
        exit: String,
        /// Restart attempts so far.
        restarts: u32,
    },
    /// Stopped by bramble.
    Stopped,
}

/// The nats-server of this board.
pub struct NatsServer {
    config: EngineConfig,
    version: ServerVersion,
    monitor: Monitor,
    state: watch::Receiver<EngineState>,
    commands: mpsc::Sender<Command>,
    log: LogTail,
}

enum Command {
    Restart {
        config: Box<EngineConfig>,
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
    Reload {
        config: Box<EngineConfig>,
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
    Stop {
        reply: oneshot::Sender<()>,
    },
}

impl NatsServer {
    /// Starts the server and returns once it is ready (see the module docs).
    pub async fn start(config: EngineConfig) -> Result<NatsServer, EngineError> {
        let version = version::probe(&config.binary).await?;
        process::write_config(&config, version).await?;
        process::stop_leftover(&config).await;
        process::check_ports(&config).await?;
        let log = LogTail::default();
        let monitor = Monitor::new(config.monitor_url());
        let mut child = process::spawn(&config, &log)?;
        if let Err(e) = process::wait_ready(&mut child, &monitor, &log, &config).await {
            process::terminate(&mut child, Duration::from_secs(2)).await;
            return Err(e);
        }
        tracing::info!(board = %config.board, %version, pid = child.pid, "nats-server ready");
        let (state_tx, state) = watch::channel(EngineState::Running {
            pid: child.pid,
            restarts: 0,
        });
        let (commands, rx) = mpsc::channel(4);
        let supervisor = Supervisor {
            config: config.clone(),
            version,
            monitor: monitor.clone(),
            log: log.clone(),
            state: state_tx,
            commands: rx,
        };
        tokio::spawn(supervisor.run(child));
        Ok(NatsServer {
            config,
            version,
            monitor,
            state,
            commands,
            log,
        })
    }

    /// The server's version.
    pub fn version(&self) -> ServerVersion {
        self.version
    }

    /// What this server's version can do.
    pub fn capabilities(&self) -> Capabilities {
        self.version.capabilities()
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Whether JetStream on this board fsyncs a write before acknowledging it (2.10+ with
    /// `SyncPolicy::Always`). When false, whoever accepts work keeps its own fsynced copy until
    /// the work is done: JetStream's default fsyncs every two minutes, and a power cut of every
    /// board at once can lose what was acknowledged in that time.
    pub fn fsync_before_ack(&self) -> bool {
        self.config.fsync_before_ack(self.version)
    }

    /// The monitoring client.
    pub fn monitor(&self) -> &Monitor {
        &self.monitor
    }

    /// The current state; `changed()` on the receiver to follow it.
    pub fn state(&self) -> watch::Receiver<EngineState> {
        self.state.clone()
    }

    /// The process id while running.
    pub fn pid(&self) -> Option<u32> {
        match *self.state.borrow() {
            EngineState::Running { pid, .. } => Some(pid),
            _ => None,
        }
    }

    /// Resident memory of the server process in bytes.
    pub async fn rss(&self) -> Option<u64> {
        process::rss(self.pid()?).await
    }

    /// The last lines of the server's log, for diagnostics.
    pub fn log_tail(&self, lines: usize) -> String {
        self.log.last(lines)
    }

    /// Waits until JetStream has a meta leader this server is current with, up to `timeout`.
    pub async fn wait_jetstream(&self, timeout: Duration) -> Result<(), EngineError> {
        self.monitor
            .wait_for(HealthCheck::MetaLeader, timeout)
            .await
    }

    /// A client of this board's server, as the board's user (account `BRAMBLE`).
    pub async fn connect(&self) -> Result<async_nats::Client, EngineError> {
        connect_as(&self.config, &self.config.client).await
    }

    /// A client as the board's system-account user (peer removal, server requests).
    pub async fn connect_system(&self) -> Result<async_nats::Client, EngineError> {
        connect_as(&self.config, &self.config.system).await
    }

    /// Restarts the server with a new configuration (routes, cluster block, JetStream on or
    /// off) and returns once it is ready again.
    pub async fn restart_with(&mut self, config: EngineConfig) -> Result<(), EngineError> {
        self.apply(config, |config, reply| Command::Restart { config, reply })
            .await
    }

    /// Sends the supervisor a configuration change and waits for its outcome.
    async fn apply(
        &mut self,
        config: EngineConfig,
        command: impl FnOnce(Box<EngineConfig>, oneshot::Sender<Result<(), EngineError>>) -> Command,
    ) -> Result<(), EngineError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(Box::new(config.clone()), reply))
            .await
            .map_err(|_| EngineError::Stopped)?;
        answer.await.map_err(|_| EngineError::Stopped)??;
        self.config = config;
        Ok(())
    }

    /// Applies a new list of routes without a restart (nats-server reloads its configuration
    /// on SIGHUP): how a board that carries no JetStream is added or removed. Returns once the
    /// server reports the reload.
    pub async fn reload_routes(
        &mut self,
        routes: Vec<std::net::SocketAddr>,
    ) -> Result<(), EngineError> {
        let mut config = self.config.clone();
        let Some(cluster) = config.cluster.as_mut() else {
            return Err(EngineError::Config(ConfigError::Invalid(
                "a standalone server has no routes to change".into(),
            )));
        };
        cluster.routes = routes;
        self.apply(config, |config, reply| Command::Reload { config, reply })
            .await
    }

    /// Stops the server (SIGTERM, SIGKILL after 10 s) and its supervisor.
    pub async fn stop(self) {
        let (reply, done) = oneshot::channel();
        if self.commands.send(Command::Stop { reply }).await.is_ok() {
            let _ = done.await;
        }
    }
}

/// Connects to a board's server as `creds`: loopback, no discovered servers (the other boards'
/// client URLs are not this board's), reconnecting forever with a short delay (the server is
/// on the same board and comes back quickly after a restart).
pub(crate) async fn connect_as(
    config: &EngineConfig,
    creds: &Credentials,
) -> Result<async_nats::Client, EngineError> {
    let url = config.client_url();
    async_nats::ConnectOptions::with_user_and_password(creds.user.clone(), creds.password.clone())
        .name(format!("bramble-{}", config.board))
        .ignore_discovered_servers()
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis(50 * u64::try_from(attempts.min(20)).unwrap_or(20))
        })
        .connection_timeout(Duration::from_secs(3))
        .connect(url.as_str())
        .await
        .map_err(|source| EngineError::Connect { url, source })
}

struct Supervisor {
    config: EngineConfig,
    version: ServerVersion,
    monitor: Monitor,
    log: LogTail,
    state: watch::Sender<EngineState>,
    commands: mpsc::Receiver<Command>,
}

impl Supervisor {
    async fn run(mut self, first: Process) {
        let mut process = Some(first);
        let mut restarts = 0u32;
        let mut delay = self.config.restart.initial;
        let mut started = Instant::now();
        loop {
            let Some(current) = process.as_mut() else {
                // Not running: wait for the restart delay or a command.
                tokio::select! {
                    () = tokio::time::sleep(delay) => {
                        delay = (delay * 2).min(self.config.restart.max);
                        restarts += 1;
                        process = self.start_once(restarts).await;
                        started = Instant::now();
                    }
                    command = self.commands.recv() => {
                        if self.handle(command, &mut process, &mut started).await { return; }
                    }
                }
                continue;
            };
            tokio::select! {
                status = current.child.wait() => {
                    let exit = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                    tracing::warn!(board = %self.config.board, %exit, log = %self.log.last(3), "nats-server died; restarting");
                    if started.elapsed() > STABLE_UPTIME {
                        delay = self.config.restart.initial;
                    }
                    self.state.send_replace(EngineState::Restarting { exit, restarts });
                    process = None;
                }
                command = self.commands.recv() => {
                    if self.handle(command, &mut process, &mut started).await { return; }
                }
            }
        }
    }

    /// Handles a command; true when the supervisor ends.
    async fn handle(
        &mut self,
        command: Option<Command>,
        process: &mut Option<Process>,
        started: &mut Instant,
    ) -> bool {
        match command {
            None | Some(Command::Stop { .. }) => {
                if let Some(mut p) = process.take() {
                    process::terminate(&mut p, STOP_GRACE).await;
                }
                self.state.send_replace(EngineState::Stopped);
                if let Some(Command::Stop { reply }) = command {
                    let _ = reply.send(());
                }
                true
            }
            Some(Command::Reload { config, reply }) => {
                let result = match process.as_ref() {
                    Some(p) => self.reload(*config, p.pid).await,
                    None => Err(EngineError::NotReady {
                        waited: Duration::ZERO,
                        log: "the server is restarting; reload after it runs again".into(),
                    }),
                };
                let _ = reply.send(result);
                false
            }
            Some(Command::Restart { config, reply }) => {
                if let Some(mut p) = process.take() {
                    process::terminate(&mut p, STOP_GRACE).await;
                }
                let result = self.restart(*config, process).await;
                *started = Instant::now();
                let _ = reply.send(result);
                false
            }
        }
    }

    async fn restart(
        &mut self,
        config: EngineConfig,
        process: &mut Option<Process>,
    ) -> Result<(), EngineError> {
        process::write_config(&config, self.version).await?;
        self.config = config;
        self.monitor = Monitor::new(self.config.monitor_url());
        process::check_ports(&self.config).await?;
        let mut child = process::spawn(&self.config, &self.log)?;
        if let Err(e) =
            process::wait_ready(&mut child, &self.monitor, &self.log, &self.config).await
        {
            process::terminate(&mut child, Duration::from_secs(2)).await;
            return Err(e);
        }
        self.state.send_replace(EngineState::Running {
            pid: child.pid,
            restarts: 0,
        });
        *process = Some(child);
        Ok(())
    }

    /// Writes `config`, sends SIGHUP, and waits until `/varz` shows a new load time.
    async fn reload(&mut self, config: EngineConfig, pid: u32) -> Result<(), EngineError> {
        use nix::sys::signal::{Signal, kill};
        let before = self
            .monitor
            .varz()
            .await
            .map(|v| v.config_load_time)
            .unwrap_or_default();
        process::write_config(&config, self.version).await?;
        self.config = config;
        // pid 0 would signal bramble's own process group.
        let pid = i32::try_from(pid)
            .ok()
            .filter(|p| *p > 0)
            .ok_or(EngineError::Stopped)?;
        kill(nix::unistd::Pid::from_raw(pid), Signal::SIGHUP).map_err(|e| EngineError::Io {
            action: "signalling (SIGHUP)",
            path: self.config.config_file(),
            source: e.into(),
        })?;
        let started = Instant::now();
        loop {
            if let Ok(varz) = self.monitor.varz().await
                && varz.config_load_time != before
            {
                return Ok(());
            }
            if started.elapsed() > self.config.ready_timeout {
                return Err(EngineError::NotReady {
                    waited: self.config.ready_timeout,
                    log: self.log.last(3),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn start_once(&mut self, restarts: u32) -> Option<Process> {
        let mut child = match process::spawn(&self.config, &self.log) {
            Ok(child) => child,
            Err(e) => {
                tracing::warn!(board = %self.config.board, error = %bramble_base::error_chain(&e), "could not restart nats-server");
                return None;
            }
        };
        match process::wait_ready(&mut child, &self.monitor, &self.log, &self.config).await {
            Ok(()) => {
                tracing::info!(board = %self.config.board, pid = child.pid, restarts, "nats-server restarted");
                self.state.send_replace(EngineState::Running {
                    pid: child.pid,
                    restarts,
                });
                Some(child)
            }
            Err(e) => {
                tracing::warn!(board = %self.config.board, error = %bramble_base::error_chain(&e), "restarted nats-server did not become ready");
                process::terminate(&mut child, Duration::from_secs(2)).await;
                self.state.send_replace(EngineState::Restarting {
                    exit: e.to_string(),
                    restarts,
                });
                None
            }
        }
    }
}
