//! What the provider does on its own: adopting what runs after a restart (and removing
//! leftovers), routing task events to supervisors, stopping everything on shutdown, and
//! removing images no function uses.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use bramble_runtime::{Container, Error as RuntimeError, TaskEvent};
use tokio::sync::{broadcast, oneshot};

use super::LocalProvider;
use crate::function::FunctionKey;
use crate::runtime::NodeRuntime;
use crate::supervisor::{self, Command};

impl<R: NodeRuntime> LocalProvider<R> {
    pub(super) async fn adopt_and_start(self: Arc<Self>) {
        let runtime = &self.ctx.runtime;
        let mut delay = Duration::from_millis(100);
        let containers = loop {
            match runtime.adopt().await {
                Ok(containers) => break containers,
                Err(e) => {
                    tracing::warn!(error = %e.chain(), "cannot list containers yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
        let state = self.ctx.store.snapshot();
        let mut by_function: HashMap<FunctionKey, Vec<Container>> = HashMap::new();
        let mut orphans = Vec::new();
        for c in containers {
            match FunctionKey::parse_container_id(&c.id) {
                Some((key, _, _)) if state.function(&key.name, &key.namespace).is_some() => {
                    by_function.entry(key).or_default().push(c);
                }
                _ => orphans.push(c.id),
            }
        }
        // Hardware first: the replicas started below get the socket mounted.
        for (namespace, name, record) in state.all_functions() {
            let key = FunctionKey::new(name, namespace);
            match crate::triggers::hardware_grants(&record.deployment.annotations) {
                Ok(Some(grants)) => {
                    // Adopted: its grants stay reserved even if its lines cannot be had now.
                    if let Err(e) = self.ctx.hardware.adopt(&key.to_string(), grants).await {
                        tracing::error!(function = %key, error = %bramble_base::error_chain(&e), "cannot give the function its hardware; it runs without");
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(function = %key, error = %e, "bad hardware annotations; the function runs without hardware");
                }
            }
        }
        {
            let mut functions = self
                .functions
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            for (namespace, name, record) in state.all_functions() {
                let key = FunctionKey::new(name, namespace);
                let adopted = by_function.remove(&key).unwrap_or_default();
                functions.insert(
                    key.clone(),
                    supervisor::spawn(Arc::clone(&self.ctx), key, record.clone(), adopted),
                );
            }
        }
        self.started.send_replace(true);
        tracing::info!(
            functions = state.all_functions().count(),
            orphans = orphans.len(),
            "functions adopted and started"
        );
        for id in &orphans {
            tracing::info!(container = %id, "removing a container of a function that no longer exists");
            if let Err(e) = runtime.delete(id, self.settings.stop_grace).await {
                tracing::warn!(container = %id, error = %e.chain(), "cannot remove orphan container");
            }
        }
        match runtime.remove_orphan_snapshots().await {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!(?removed, "removed orphan snapshots");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e.chain(), "cannot check for orphan snapshots"),
        }
        // Namespaces, IP leases and attachments without a container (a crash between
        // preparing the namespace and recording the container, or in the middle of CNI ADD).
        match runtime.remove_orphan_networks().await {
            Ok(released) if !released.is_empty() => {
                tracing::info!(?released, "released orphan networks");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e.chain(), "cannot check for orphan networks"),
        }
    }

    /// Stops every function (keeping containers); their supervisors end. For a shutdown
    /// configured to stop functions.
    pub async fn stop_all(&self) {
        let handles = self.handles();
        let waits = handles.iter().map(|handle| {
            let (done, finished) = oneshot::channel();
            let sent = handle.commands.send(Command::Shutdown(done)).is_ok();
            async move {
                if sent {
                    let _ = finished.await;
                }
            }
        });
        futures::future::join_all(waits).await;
    }

    /// Removes images no function and no container uses, once they have been unused for
    /// `after` (so an image imported for a deploy a moment later is kept). containerd then
    /// frees their content and snapshots: an SD card does not fill up with old versions.
    pub(super) async fn collect_images(self: Arc<Self>, after: Duration) {
        let interval = (after / 4).clamp(Duration::from_secs(1), Duration::from_secs(300));
        let mut unused_since: HashMap<String, Instant> = HashMap::new();
        let mut ticker = tokio::time::interval(interval);
        loop {
            ticker.tick().await;
            if let Err(e) = self.collect_images_once(after, &mut unused_since).await {
                tracing::warn!(error = %e.chain(), "image garbage collection skipped");
            }
        }
    }

    async fn collect_images_once(
        &self,
        after: Duration,
        unused_since: &mut HashMap<String, Instant>,
    ) -> bramble_runtime::Result<()> {
        let runtime = &self.ctx.runtime;
        let mut used: HashSet<String> = self
            .ctx
            .store
            .snapshot()
            .all_functions()
            // A pending rollout's previous record: its image is what a rollback recreates.
            .flat_map(|(_, _, r)| {
                std::iter::once(r.deployment.image.clone())
                    .chain(r.previous.as_ref().map(|p| p.deployment.image.clone()))
            })
            .collect();
        // Containers keep their image in use too: an old generation draining during an
        // update, which a rollback would recreate.
        used.extend(runtime.list().await?.into_iter().map(|c| c.image));
        let images = runtime.list_images().await?;
        let now = Instant::now();
        unused_since
            .retain(|name, _| images.iter().any(|i| i.name == *name) && !used.contains(name));
        for image in images.iter().filter(|i| !used.contains(&i.name)) {
            let since = *unused_since.entry(image.name.clone()).or_insert(now);
            if now.duration_since(since) >= after {
                tracing::info!(image = %image.name, unused_for = ?now.duration_since(since), "removing an unused image");
                match runtime.remove_image(&image.name).await {
                    Ok(()) | Err(RuntimeError::NotFound { .. }) => {
                        unused_since.remove(&image.name);
                    }
                    Err(e) => {
                        tracing::warn!(image = %image.name, error = %e.chain(), "cannot remove image");
                    }
                }
            }
        }
        Ok(())
    }

    /// Hands task events to the supervisor of the function they concern.
    pub(super) async fn pump_events(self: Arc<Self>, mut events: broadcast::Receiver<TaskEvent>) {
        loop {
            let event = match events.recv().await {
                Ok(event) => event,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "task events were dropped; resynchronising");
                    TaskEvent::Resync
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            let (container, command) = match event {
                TaskEvent::Exited {
                    container,
                    pid,
                    exit_status,
                    ..
                } => (
                    container.clone(),
                    Command::Exited {
                        container,
                        pid,
                        exit_status,
                    },
                ),
                TaskEvent::Oom { container } => (container.clone(), Command::Oom { container }),
                TaskEvent::Resync => {
                    for handle in self.handles() {
                        let _ = handle.commands.send(Command::Resync);
                    }
                    continue;
                }
                TaskEvent::Started { .. } => continue,
            };
            if let Some((key, _, _)) = FunctionKey::parse_container_id(&container)
                && let Some(handle) = self.handle(&key)
            {
                let _ = handle.commands.send(command);
            }
        }
    }
}
