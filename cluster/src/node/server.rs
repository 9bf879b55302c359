//! The board's nats-server, owned by one task: layout changes (migration, restart with or
//! without JetStream, new routes) are commands to it, one at a time, so two changes never race
//! on the process.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::engine::{EngineConfig, EngineError, EngineState, NatsServer, ServerVersion};
use crate::migrate;

/// How long a migration waits for the second JetStream board's server (it restarts into the
/// cluster at the same time).
const MIGRATION_WAIT: Duration = Duration::from_secs(120);

/// What the server task tells everyone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerStatus {
    /// The server's version.
    pub version: ServerVersion,
    /// Its process state.
    pub state: EngineState,
    /// Whether it carries JetStream now.
    pub jetstream: bool,
    /// Whether it runs with a cluster block now.
    pub clustered: bool,
    /// A standalone board's data waits to be written into the cluster.
    pub migration_pending: bool,
}

enum Command {
    Migrate {
        config: Box<EngineConfig>,
        replicas: usize,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Restart {
        config: Box<EngineConfig>,
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
    Reload {
        routes: Vec<std::net::SocketAddr>,
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
    Rss {
        reply: oneshot::Sender<Option<u64>>,
    },
    Stop {
        reply: oneshot::Sender<()>,
    },
}

/// A handle on the server task.
#[derive(Clone)]
pub struct ServerHandle {
    commands: mpsc::Sender<Command>,
    status: watch::Receiver<ServerStatus>,
}

/// The server task is gone (the node stopped).
#[derive(Debug, thiserror::Error)]
#[error("the board's nats-server task has stopped")]
pub struct Stopped;

impl ServerHandle {
    /// Starts the task owning `server`; `replicas` is what a pending migration imports with.
    pub fn start(server: NatsServer, migration_pending: bool, replicas: usize) -> ServerHandle {
        let config = server.config();
        let (status_tx, status) = watch::channel(ServerStatus {
            version: server.version(),
            state: server.state().borrow().clone(),
            jetstream: config.jetstream.is_some(),
            clustered: config.cluster.is_some(),
            migration_pending,
        });
        let (commands, rx) = mpsc::channel(8);
        tokio::spawn(run(server, rx, status_tx, replicas));
        ServerHandle { commands, status }
    }

    /// The current status; `changed()` wakes on every change.
    pub fn status(&self) -> watch::Receiver<ServerStatus> {
        self.status.clone()
    }

    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| Stopped)?;
        answer.await.map_err(|_| Stopped)
    }

    /// Moves the standalone server's data into the cluster (see [`migrate`]).
    pub async fn migrate(&self, config: EngineConfig, replicas: usize) -> Result<(), String> {
        self.ask(|reply| Command::Migrate {
            config: Box::new(config),
            replicas,
            reply,
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Restarts the server with `config` (JetStream switched on or off).
    pub async fn restart(&self, config: EngineConfig) -> Result<(), String> {
        self.ask(|reply| Command::Restart {
            config: Box::new(config),
            reply,
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| bramble_base::error_chain(&e))
    }

    /// Applies new routes without a restart.
    pub async fn reload_routes(&self, routes: Vec<std::net::SocketAddr>) -> Result<(), String> {
        self.ask(|reply| Command::Reload { routes, reply })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| bramble_base::error_chain(&e))
    }

    /// The server's resident memory in bytes.
    pub async fn rss(&self) -> Option<u64> {
        self.ask(|reply| Command::Rss { reply })
            .await
            .ok()
            .flatten()
    }

    /// Stops the server and the task.
    pub async fn stop(&self) {
        let _ = self.ask(|reply| Command::Stop { reply }).await;
    }
}

async fn run(
    server: NatsServer,
    mut commands: mpsc::Receiver<Command>,
    status: watch::Sender<ServerStatus>,
    mut replicas: usize,
) {
    let mut server = Some(server);
    let mut retry = tokio::time::interval(Duration::from_secs(2));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut engine_state = server.as_ref().map(NatsServer::state);
    loop {
        let pending = status.borrow().migration_pending;
        tokio::select! {
            command = commands.recv() => {
                let Some(command) = command else { break };
                match command {
                    Command::Migrate { config, replicas: r, reply } => {
                        replicas = r;
                        let result = migrate_now(&mut server, *config, r, &status).await;
                        engine_state = server.as_ref().map(NatsServer::state);
                        let _ = reply.send(result);
                    }
                    Command::Restart { config, reply } => {
                        let result = match server.as_mut() {
                            Some(s) => s.restart_with(*config).await,
                            None => start_again(&mut server, *config).await,
                        };
                        engine_state = server.as_ref().map(NatsServer::state);
                        publish(&server, &status);
                        let _ = reply.send(result);
                    }
                    Command::Reload { routes, reply } => {
                        let result = match server.as_mut() {
                            Some(s) => s.reload_routes(routes).await,
                            None => Err(EngineError::Stopped),
                        };
                        let _ = reply.send(result);
                    }
                    Command::Rss { reply } => {
                        let rss = match server.as_ref() {
                            Some(s) => s.rss().await,
                            None => None,
                        };
                        let _ = reply.send(rss);
                    }
                    Command::Stop { reply } => {
                        if let Some(s) = server.take() {
                            s.stop().await;
                        }
                        status.send_modify(|s| s.state = EngineState::Stopped);
                        let _ = reply.send(());
                        return;
                    }
                }
            }
            Ok(()) = async {
                match engine_state.as_mut() {
                    Some(state) => state.changed().await,
                    None => std::future::pending().await,
                }
            } => publish(&server, &status),
            _ = retry.tick(), if pending => {
                if let Some(s) = server.as_ref() {
                    finish_migration(s, replicas, &status).await;
                }
            }
        }
    }
    if let Some(s) = server.take() {
        s.stop().await;
    }
}

fn publish(server: &Option<NatsServer>, status: &watch::Sender<ServerStatus>) {
    let Some(s) = server.as_ref() else { return };
    let state = s.state().borrow().clone();
    let config = s.config();
    let (jetstream, clustered) = (config.jetstream.is_some(), config.cluster.is_some());
    status.send_if_modified(|current| {
        let changed = current.state != state
            || current.jetstream != jetstream
            || current.clustered != clustered;
        current.state = state;
        current.jetstream = jetstream;
        current.clustered = clustered;
        changed
    });
}

async fn start_again(
    server: &mut Option<NatsServer>,
    config: EngineConfig,
) -> Result<(), EngineError> {
    *server = Some(NatsServer::start(config).await?);
    Ok(())
}

async fn migrate_now(
    server: &mut Option<NatsServer>,
    config: EngineConfig,
    replicas: usize,
    status: &watch::Sender<ServerStatus>,
) -> Result<(), String> {
    let Some(standalone) = server.take() else {
        return Err("the server is not running".into());
    };
    status.send_modify(|s| s.migration_pending = true);
    tracing::info!(board = %config.board, replicas, "moving the standalone JetStream data into the cluster");
    match migrate::migrate_standalone_to_clustered(
        standalone,
        config.clone(),
        replicas,
        MIGRATION_WAIT,
    )
    .await
    {
        Ok((clustered, report)) => {
            tracing::info!(streams = report.import.streams, downtime = ?report.downtime, "data moved into the cluster");
            *server = Some(clustered);
            status.send_modify(|s| s.migration_pending = false);
            publish(server, status);
            Ok(())
        }
        Err(e) => {
            let message = bramble_base::error_chain(&e);
            tracing::warn!(error = %message, "moving the data into the cluster did not finish; it is retried");
            // The snapshot stays on disk; the server runs clustered and the import is retried.
            if let Err(start) = start_again(server, config).await {
                tracing::error!(error = %bramble_base::error_chain(&start), "cannot start nats-server clustered");
            }
            publish(server, status);
            Err(message)
        }
    }
}

async fn finish_migration(
    server: &NatsServer,
    replicas: usize,
    status: &watch::Sender<ServerStatus>,
) {
    if server
        .wait_jetstream(Duration::from_millis(500))
        .await
        .is_err()
    {
        return;
    }
    match migrate::finish_pending_migration(server, replicas).await {
        Ok(report) => {
            tracing::info!(?report, "the standalone data is in the cluster");
            status.send_modify(|s| s.migration_pending = false);
        }
        Err(e) => {
            tracing::debug!(error = %bramble_base::error_chain(&e), "finishing the migration failed; retrying");
        }
    }
}
