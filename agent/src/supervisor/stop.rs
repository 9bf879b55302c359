//! How replicas go: drained of their requests, stopped with the grace period, and removed
//! when no longer kept as the spare — in spawned tasks that report back, so the supervisor
//! never waits on a stop (only a delete or a shutdown of the whole function does).

use std::sync::Arc;
use std::time::Duration;

use super::{Command, Phase, Slot, Supervisor};
use crate::runtime::Containers;

impl<C: Containers> Supervisor<C> {
    pub(super) fn stop_in_background(&self, id: String, grace: Duration) {
        let runtime = self.ctx.runtime.clone();
        tokio::spawn(async move {
            if let Err(e) = runtime.stop(&id, grace).await {
                tracing::warn!(container = %id, error = %e.chain(), "stopping failed");
            }
        });
    }

    pub(super) fn remove_in_background(&self, id: String) {
        let runtime = self.ctx.runtime.clone();
        let grace = self.ctx.stop_grace;
        tokio::spawn(async move {
            if let Err(e) = runtime.delete(&id, grace).await {
                tracing::warn!(container = %id, error = %e.chain(), "removing an old container failed");
            }
        });
    }

    /// Waits until no request is in flight to the replica (bounded by the function's
    /// timeout), then stops the container with its grace period — and removes it with
    /// `remove`. The replica must already be out of the route.
    pub(super) fn stop_after_drain(&self, id: String, slot: Arc<Slot>, remove: bool) {
        let runtime = self.ctx.runtime.clone();
        let grace = self.ctx.stop_grace;
        let drain_for = self.route.timeout();
        let commands = self.commands.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(drain_for, slot.drained()).await;
            let result = if remove {
                runtime.delete(&id, grace).await
            } else {
                runtime.stop(&id, grace).await.map(|_| ())
            };
            if let Err(e) = result {
                tracing::warn!(container = %id, error = %e.chain(), "stopping a drained replica failed");
            }
            let _ = commands.send(Command::Stopped { container: id });
        });
    }

    /// A replica scaled away is gone: its container stays for a fast restart — unless another
    /// stopped one already does (one spare per function is enough), then it is removed.
    pub(super) fn stopped(&mut self, container: &str) {
        let Some(position) = self
            .replicas
            .iter()
            .position(|r| r.id == container && r.phase == Phase::Stopping)
        else {
            return;
        };
        self.replicas[position].phase = Phase::Stopped;
        // One stopped container is kept as the spare the next start reuses (its network
        // namespace and address too): a start during a stop takes another slot, so a function
        // that goes to zero and back alternates between two containers instead of making a new
        // one, with a new address, each time.
        let spare = self
            .replicas
            .iter()
            .any(|r| r.id != container && r.phase == Phase::Stopped && r.created);
        if spare {
            let replica = self.replicas.remove(position);
            self.remove_in_background(replica.id);
        }
    }

    /// A shutdown of the daemon (`remove` false: the containers stay for the next start) or a
    /// delete (`remove`: they go too): out of the route, then every replica stopped with its
    /// grace, all at once. A delete's API answer has gone already; only a deploy of the same
    /// name (and a function wanting the same hardware lines) waits for this.
    pub(super) async fn end_all(&mut self, remove: bool) {
        self.route.publish(Vec::new());
        let ids: Vec<String> = self.all_replicas().map(|r| r.id.clone()).collect();
        let grace = self.ctx.stop_grace;
        let runtime = &self.ctx.runtime;
        futures::future::join_all(ids.iter().map(|id| async move {
            let result = if remove {
                runtime.delete(id, grace).await
            } else {
                runtime.stop(id, grace).await.map(|_| ())
            };
            if let Err(e) = result {
                let what = if remove { "deleting" } else { "stopping" };
                tracing::warn!(container = %id, error = %e.chain(), "{what} failed");
            }
        }))
        .await;
        if remove {
            runtime.forget_logs(&self.key.to_string());
        }
    }
}
