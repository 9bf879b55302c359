//! A complete runtime environment for one test: a private containerd and a
//! [`RuntimeConfig`] whose containerd namespace, bridge, subnet and state directory belong to
//! this test alone, so tests can run side by side in one process (`cargo test`) or one per
//! process (`cargo nextest`).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use bramble_runtime::{NetworkConfig, RuntimeConfig};

use crate::Containerd;

/// Distinguishes the environments of one process.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// A private containerd plus a runtime configuration pointing at it.
#[derive(Debug)]
pub struct TestEnv {
    /// The private containerd (drop cleans up everything the test made).
    pub containerd: Containerd,
    /// Use this to build the runtime; adjust it first if a test needs to.
    pub config: RuntimeConfig,
    /// A scratch directory private to the test (images, secrets).
    pub scratch: PathBuf,
}

impl TestEnv {
    /// Starts containerd and prepares a configuration: namespace `t-<name>-<n>`, bridge
    /// `brt<n>`, subnet `10.<100+n>.0.0/24`, runtime files under containerd's directory (whose
    /// cleanup also unmounts the pinned network namespaces).
    pub fn new(name: &str) -> io::Result<TestEnv> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        if n > 150 {
            return Err(io::Error::other(
                "more than 150 test environments in one process",
            ));
        }
        let containerd = Containerd::start()?;
        let run_dir = containerd.dir().join("run");
        let scratch = containerd.dir().join("scratch");
        std::fs::create_dir_all(&scratch)?;
        let mut config = RuntimeConfig::new(containerd.socket(), &run_dir);
        let pid = std::process::id() % 10_000;
        config.namespace = format!("t-{name}-{pid}-{n}");
        config.network = NetworkConfig {
            name: format!("bramble-t{n}"),
            bridge: format!("brt{n}"),
            subnet: format!("10.{}.0.0/24", 100 + n),
            state_dir: run_dir.join("net"),
            ..NetworkConfig::default()
        };
        Ok(TestEnv {
            containerd,
            config,
            scratch,
        })
    }

    /// The scratch directory.
    pub fn scratch(&self) -> &Path {
        &self.scratch
    }
}
