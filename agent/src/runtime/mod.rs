//! The seam between the agent and the container runtime.
//!
//! The supervisors and the local provider do not call [`bramble_runtime::Runtime`] directly:
//! they call the two traits here, which it implements. [`Containers`] is what a function's
//! supervisor does to its replicas (create, start, probe, stop, delete, look one up);
//! [`NodeRuntime`] adds what the provider does for the whole board (adopt what runs, task
//! events, usage, images, leftovers). A scripted [`fake::FakeRuntime`] implements both for
//! tests that need neither root nor containerd: rollouts, drains, backoff and the
//! containerd-down path are unit tests on tokio's paused clock (see `supervisor/tests.rs`).
//!
//! The model is youki's `CgroupManager` with its `TestManager`, and containerd's
//! rust-extensions `Container`/`ContainerFactory`: a small trait at a real boundary, one real
//! implementation, one that tests script.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bramble_gateway::types::ImageSummary;
use bramble_runtime::image::reference::ImageRef;
use bramble_runtime::logs::Logs;
use bramble_runtime::{
    Container, ContainerSpec, PullPolicy, Result, Runtime, Started, TaskEvent, Usage,
};
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::probe::{self, Probe};

#[cfg(test)]
pub(crate) mod fake;

/// What a supervisor does to its function's replicas.
pub trait Containers: Clone + Send + Sync + 'static {
    /// Creates a container without starting it (network, files, record, snapshot).
    fn create(&self, spec: &ContainerSpec) -> impl Future<Output = Result<()>> + Send;
    /// Starts a created container's task; returns its pid and address.
    fn start(&self, id: &str) -> impl Future<Output = Result<Started>> + Send;
    /// Waits until the replica at `addr` passes its health check, or `deadline`; returns how
    /// long it took, or the last failed probe.
    fn wait_ready(
        &self,
        addr: SocketAddr,
        deadline: Instant,
    ) -> impl Future<Output = std::result::Result<Duration, Probe>> + Send;
    /// Stops a task: SIGTERM, then SIGKILL after `grace`; the container stays. Returns the
    /// exit status if there was a task.
    fn stop(&self, id: &str, grace: Duration) -> impl Future<Output = Result<Option<u32>>> + Send;
    /// Stops (with `grace`) and removes a container and everything it had.
    fn delete(&self, id: &str, grace: Duration) -> impl Future<Output = Result<()>> + Send;
    /// One managed container, if it exists.
    fn get(&self, id: &str) -> impl Future<Output = Result<Option<Container>>> + Send;
    /// Drops a function's log buffer (it was deleted).
    fn forget_logs(&self, name: &str);
}

/// What the provider does for the whole board, on top of [`Containers`].
pub trait NodeRuntime: Containers {
    /// containerd's version; the cheapest "is containerd up?" probe.
    fn version(&self) -> impl Future<Output = Result<String>> + Send;
    /// Every managed container, with task state and address.
    fn list(&self) -> impl Future<Output = Result<Vec<Container>>> + Send;
    /// Every managed container, re-attached after a restart of the daemon (log readers,
    /// network attachments).
    fn adopt(&self) -> impl Future<Output = Result<Vec<Container>>> + Send;
    /// Removes writable snapshots that belong to no container; returns their keys.
    fn remove_orphan_snapshots(&self) -> impl Future<Output = Result<Vec<String>>> + Send;
    /// Releases network namespaces, IP leases and attachments that belong to no container;
    /// returns their ids.
    fn remove_orphan_networks(&self) -> impl Future<Output = Result<Vec<String>>> + Send;
    /// Task events (exits, OOM kills, resynchronisations) from now on.
    fn subscribe(&self) -> broadcast::Receiver<TaskEvent>;
    /// The functions' output buffers.
    fn logs(&self) -> &Logs;
    /// Usage of one container's task.
    fn usage(&self, id: &str) -> impl Future<Output = Result<Option<Usage>>> + Send;
    /// Usage of every running task, by container id.
    fn usage_all(&self) -> impl Future<Output = Result<HashMap<String, Usage>>> + Send;
    /// Makes an image present per the pull policy (no network when present and allowed).
    fn ensure_image(
        &self,
        image: &ImageRef,
        policy: PullPolicy,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Images present, with the size of this board's platform's layers.
    fn list_images(&self) -> impl Future<Output = Result<Vec<ImageSummary>>> + Send;
    /// Imports an image archive; `rename` renames a single image. Returns the names.
    fn import_images(
        &self,
        archive: &Path,
        rename: Option<&ImageRef>,
    ) -> impl Future<Output = Result<Vec<String>>> + Send;
    /// Removes an image record (containerd collects its content).
    fn remove_image(&self, name: &str) -> impl Future<Output = Result<()>> + Send;
}

impl Containers for Runtime {
    async fn create(&self, spec: &ContainerSpec) -> Result<()> {
        Runtime::create(self, spec).await.map(drop)
    }

    async fn start(&self, id: &str) -> Result<Started> {
        Runtime::start(self, id).await
    }

    async fn wait_ready(
        &self,
        addr: SocketAddr,
        deadline: Instant,
    ) -> std::result::Result<Duration, Probe> {
        probe::wait_ready(addr, deadline).await
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<Option<u32>> {
        Runtime::stop(self, id, grace).await
    }

    async fn delete(&self, id: &str, grace: Duration) -> Result<()> {
        Runtime::delete(self, id, grace).await
    }

    async fn get(&self, id: &str) -> Result<Option<Container>> {
        Runtime::get(self, id).await
    }

    fn forget_logs(&self, name: &str) {
        Runtime::logs(self).forget(name);
    }
}

impl NodeRuntime for Runtime {
    async fn version(&self) -> Result<String> {
        Runtime::version(self).await
    }

    async fn list(&self) -> Result<Vec<Container>> {
        Runtime::list(self).await
    }

    async fn adopt(&self) -> Result<Vec<Container>> {
        Runtime::adopt(self).await
    }

    async fn remove_orphan_snapshots(&self) -> Result<Vec<String>> {
        Runtime::remove_orphan_snapshots(self).await
    }

    async fn remove_orphan_networks(&self) -> Result<Vec<String>> {
        Runtime::remove_orphan_networks(self).await
    }

    fn subscribe(&self) -> broadcast::Receiver<TaskEvent> {
        Runtime::subscribe(self)
    }

    fn logs(&self) -> &Logs {
        Runtime::logs(self)
    }

    async fn usage(&self, id: &str) -> Result<Option<Usage>> {
        Runtime::usage(self, id).await
    }

    async fn usage_all(&self) -> Result<HashMap<String, Usage>> {
        Runtime::usage_all(self).await
    }

    async fn ensure_image(&self, image: &ImageRef, policy: PullPolicy) -> Result<()> {
        let progress = |p: bramble_runtime::image::Progress| tracing::info!(%image, ?p, "image");
        self.images()
            .ensure(image, policy, &progress)
            .await
            .map(drop)
    }

    async fn list_images(&self) -> Result<Vec<ImageSummary>> {
        let images = self.images();
        let mut out = Vec::new();
        for summary in images.list().await? {
            // The size of what this board runs: the layers of its platform's manifest.
            let size = match images.get(&summary.name).await {
                Ok(Some(image)) => image.size,
                _ => u64::try_from(summary.size).unwrap_or(0),
            };
            out.push(ImageSummary {
                name: summary.name,
                digest: summary.target_digest,
                size,
            });
        }
        Ok(out)
    }

    async fn import_images(
        &self,
        archive: &Path,
        rename: Option<&ImageRef>,
    ) -> Result<Vec<String>> {
        let progress = |p: bramble_runtime::image::Progress| tracing::info!(?p, "import");
        let images = self.images().import(archive, rename, &progress).await?;
        Ok(images.iter().map(|i| i.name.clone()).collect())
    }

    async fn remove_image(&self, name: &str) -> Result<()> {
        self.images().remove(name).await
    }
}
