//! bramble-runtime: the only code in bramble that speaks to containerd, CNI and cgroups.
//!
//! A [`Runtime`] is a cheap-to-clone handle on one containerd namespace. It pulls, imports and
//! builds images ([`image`]), runs function containers with limits in their own network
//! namespace ([`Runtime::create`], [`Runtime::start`], [`Runtime::stop`], [`Runtime::delete`]),
//! captures their output ([`logs`]), reports task events ([`events`]) and usage ([`metrics`]),
//! and lists what it manages so a restarted daemon can adopt it ([`Runtime::adopt`]).
//!
//! It works against containerd 1.6 (Debian 12 bookworm) and 1.7 (Debian 13 trixie), both
//! tested, and accepts 2.x; other releases are refused by name ([`client::SUPPORTED_CONTAINERD`]).
//! Pulls and imports are done client-side, without the Transfer service (1.7+ only).

pub mod cgroup;
pub mod client;
mod container;
mod content;
pub mod error;
pub mod events;
pub mod image;
pub mod keyed;
pub mod logs;
pub mod metrics;
mod mount;
pub mod network;
pub mod peer;
#[cfg(test)]
mod proptests;
pub mod spec;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;

pub use container::{Container, ContainerSpec, Secret, StartSteps, Started, TaskState, TaskStatus};
pub use error::{Error, Result};
pub use events::TaskEvent;
pub use image::{Image, ImageService, PullPolicy, RegistryConfig};
pub use metrics::Usage;
pub use network::{Attachment, Lease, Network, NetworkConfig};
pub use spec::{BindMount, Limits};

/// Label set on every container bramble creates; [`Runtime::list`] only shows these.
pub const MANAGED_LABEL: &str = "io.bramble.managed";
/// Label naming the log buffer a container's output goes to.
pub const LOG_LABEL: &str = "io.bramble.log";

/// How to reach containerd and where to keep runtime files.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// containerd's gRPC socket.
    pub containerd_socket: PathBuf,
    /// The containerd namespace functions live in.
    pub namespace: String,
    /// containerd snapshotter (overlayfs on every Pi OS).
    pub snapshotter: String,
    /// containerd runtime (shim) name.
    pub runtime: String,
    /// Volatile directory (tmpfs, e.g. `/run/bramble`): FIFOs, per-container `hosts`,
    /// `resolv.conf` and staged secrets. Lost on reboot, like the containers' tasks.
    pub run_dir: PathBuf,
    /// The function network.
    pub network: NetworkConfig,
    /// Registry access.
    pub registries: RegistryConfig,
    /// The platform images are chosen for (default: this machine's).
    pub platform: Option<image::platform::Platform>,
    /// Upper bound of one containerd call; a call that takes longer reports containerd as
    /// unavailable instead of hanging.
    pub call_timeout: Duration,
    /// Bytes of output kept per log buffer.
    pub log_buffer_bytes: usize,
    /// The host's resolver configuration, copied into functions.
    pub resolv_conf: PathBuf,
    /// Largest size one image layer may unpack to, and an uncompressed image archive may have
    /// (a decompression bomb is refused before it fills the disk).
    pub max_unpacked: u64,
}

impl RuntimeConfig {
    /// Defaults for a board: containerd's standard socket, namespace `openfaas-fn`, state in
    /// `run_dir`.
    pub fn new(containerd_socket: impl Into<PathBuf>, run_dir: impl Into<PathBuf>) -> Self {
        let run_dir = run_dir.into();
        let network = NetworkConfig {
            state_dir: run_dir.join("net"),
            ..NetworkConfig::default()
        };
        Self {
            containerd_socket: containerd_socket.into(),
            namespace: "openfaas-fn".into(),
            snapshotter: "overlayfs".into(),
            runtime: "io.containerd.runc.v2".into(),
            run_dir,
            network,
            registries: RegistryConfig::default(),
            platform: None,
            call_timeout: Duration::from_secs(15),
            log_buffer_bytes: 256 * 1024,
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            max_unpacked: image::DEFAULT_MAX_UNPACKED,
        }
    }
}

/// A handle on the runtime; clones share everything.
#[derive(Clone, Debug)]
pub struct Runtime {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: RuntimeConfig,
    conn: client::Connection,
    images: ImageService,
    network: Network,
    logs: logs::Logs,
    events: broadcast::Sender<TaskEvent>,
    events_task: tokio::task::JoinHandle<()>,
    locks: keyed::KeyedLocks,
    /// Log names of containers, so starting a task needs no extra lookup.
    log_names: Mutex<std::collections::HashMap<String, String>>,
    /// Log readers per container with a live task.
    readers: Mutex<std::collections::HashMap<String, Vec<tokio::task::JoinHandle<()>>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.events_task.abort();
        // Log readers hold the FIFOs' read ends; a runtime created later must get the output.
        if let Ok(mut readers) = self.readers.lock() {
            for handle in readers.drain().flat_map(|(_, handles)| handles) {
                handle.abort();
            }
        }
    }
}

impl Runtime {
    /// Prepares the runtime. Nothing is asked of containerd yet, so this succeeds while
    /// containerd is still starting; calls then fail with [`Error::Unavailable`] until it is
    /// up. Must be called inside a tokio runtime.
    pub fn new(config: RuntimeConfig) -> Result<Self> {
        let conn = client::Connection::new(
            &config.containerd_socket,
            &config.namespace,
            config.call_timeout,
        )?;
        for dir in [
            config.run_dir.clone(),
            config.run_dir.join("containers"),
            config.run_dir.join("io"),
            config.run_dir.join("mnt"),
        ] {
            create_private_dir(&dir)?;
        }
        let network = Network::new(config.network.clone())?;
        let platform = config
            .platform
            .clone()
            .unwrap_or_else(image::platform::Platform::host);
        let images = ImageService::new(
            conn.clone(),
            config.snapshotter.clone(),
            platform,
            config.registries.clone(),
            config.max_unpacked,
        );
        images.set_scratch_dir(config.run_dir.join("mnt"));
        let events = events::channel();
        let events_task = events::spawn(conn.clone(), events.clone());
        Ok(Self {
            inner: Arc::new(Inner {
                logs: logs::Logs::new(config.log_buffer_bytes),
                config,
                conn,
                images,
                network,
                events,
                events_task,
                locks: keyed::KeyedLocks::default(),
                log_names: Mutex::default(),
                readers: Mutex::default(),
            }),
        })
    }

    /// The configuration the runtime was made with.
    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.config
    }

    /// containerd's version (an error for a release bramble does not support); also the
    /// cheapest "is containerd up?" probe.
    pub async fn version(&self) -> Result<String> {
        self.inner.conn.version().await
    }

    /// The runtime's containerd connection, for the cold-start benchmark's bare-containerd
    /// baseline (the same channel bramble's own calls use). Only with the `bench` feature.
    #[cfg(feature = "bench")]
    pub fn connection(&self) -> &client::Connection {
        &self.inner.conn
    }

    /// Image operations.
    pub fn images(&self) -> &ImageService {
        &self.inner.images
    }

    /// The function network.
    pub fn network(&self) -> &Network {
        &self.inner.network
    }

    /// Output buffers of functions.
    pub fn logs(&self) -> &logs::Logs {
        &self.inner.logs
    }

    /// Task events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<TaskEvent> {
        self.inner.events.subscribe()
    }

    /// Usage of one container's task.
    pub async fn usage(&self, id: &str) -> Result<Option<Usage>> {
        validate_id(id).map_err(Error::Invalid)?;
        Ok(metrics::collect(&self.inner.conn, Some(id))
            .await?
            .remove(id))
    }

    /// Usage of every running task in the namespace, by container id (one call).
    pub async fn usage_all(&self) -> Result<std::collections::HashMap<String, Usage>> {
        metrics::collect(&self.inner.conn, None).await
    }

    /// The cgroup path of a container (`/<namespace>/<id>`), relative to the cgroup root.
    pub fn cgroup_path(&self, id: &str) -> String {
        format!("/{}/{id}", self.inner.config.namespace)
    }
}

/// Creates a directory readable by root only (it holds FIFOs and staged secrets).
fn create_private_dir(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))
}

/// containerd's identifier rules (ids of containers, namespaces, snapshots): 1–76 characters,
/// letters, digits, `.`, `_` and `-`, starting and ending with a letter or digit.
pub fn validate_id(id: &str) -> std::result::Result<(), String> {
    let ok_chars = id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    let ends = id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && id.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    if id.is_empty() || id.len() > 76 || !ok_chars || !ends {
        Err(format!(
            "{id:?} is not a valid identifier: use 1 to 76 letters, digits, '.', '_' or '-', starting and ending with a letter or digit"
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_containerd_rules() {
        for good in [
            "a",
            "hello",
            "hello-world.v2",
            "fn_1",
            "a".repeat(76).as_str(),
        ] {
            assert!(validate_id(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "a/b",
            "../x",
            "a b",
            "a".repeat(77).as_str(),
            "é",
        ] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }
}
