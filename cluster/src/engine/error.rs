//! What can go wrong running nats-server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::config::ConfigError;
use super::version::ServerVersion;

/// An error of the engine (the nats-server bramble runs).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The nats-server binary is not there.
    #[error(
        "nats-server not found at {binary:?}: install Debian's `nats-server` package (apt install nats-server) or set BRAMBLE_NATS_SERVER"
    )]
    BinaryMissing {
        /// The binary looked for.
        binary: PathBuf,
    },
    /// The binary exists but could not be run.
    #[error("could not run {binary:?}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `--version` printed something that is not a version.
    #[error("{binary:?} --version printed {output:?}, not a nats-server version")]
    VersionUnknown {
        /// The binary.
        binary: PathBuf,
        /// What it printed.
        output: String,
    },
    /// Older than bramble supports.
    #[error(
        "nats-server {found} is too old: bramble needs {minimum} or newer (Debian 12 ships 2.9.10)"
    )]
    VersionTooOld {
        /// The version found.
        found: ServerVersion,
        /// The oldest supported.
        minimum: ServerVersion,
    },
    /// The typed configuration cannot be written.
    #[error("the engine configuration is not valid")]
    Config(#[from] ConfigError),
    /// nats-server refused the generated file (`nats-server -t`).
    #[error("nats-server refused the configuration {path:?}: {message}")]
    ConfigRejected {
        /// The file.
        path: PathBuf,
        /// What nats-server said.
        message: String,
    },
    /// A listener's port is in use by another process.
    #[error("the {what} address {addr} is already in use by another process")]
    PortTaken {
        /// Which listener ("client", "monitoring", "route").
        what: &'static str,
        /// The address.
        addr: SocketAddr,
    },
    /// A file or directory of the engine could not be written or read.
    #[error("{action} {path:?}")]
    Io {
        /// What was being done ("writing", "creating", ...).
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server exited before it became ready.
    #[error("nats-server exited before it was ready ({status}); its last words: {log}")]
    ExitedEarly {
        /// The exit status.
        status: String,
        /// The last lines of its log.
        log: String,
    },
    /// The server did not become ready in time.
    #[error("nats-server was not ready after {waited:?}; its last words: {log}")]
    NotReady {
        /// How long bramble waited.
        waited: Duration,
        /// The last lines of its log.
        log: String,
    },
    /// The server is stopped (after `stop`, or its supervisor ended).
    #[error("the nats-server of this board is stopped")]
    Stopped,
    /// Connecting the board's client to its own server failed.
    #[error("could not connect to the board's nats-server at {url}")]
    Connect {
        /// The client URL.
        url: String,
        /// Why.
        #[source]
        source: async_nats::ConnectError,
    },
}
