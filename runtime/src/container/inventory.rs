//! What exists: list and look up managed containers with their tasks, adopt them after a
//! restart of the daemon, and remove leftovers (snapshots, networks) of containers that are gone.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use containerd_client::services::v1::{
    GetContainerRequest, GetRequest, ListContainersRequest, ListTasksRequest,
};

use super::{Container, TaskState, TaskStatus, task_state};
use crate::error::{Error, Result};
use crate::image::remove_snapshot_quietly;
use crate::{LOG_LABEL, MANAGED_LABEL, Runtime, validate_id};

impl Runtime {
    /// Every container bramble manages in the namespace, with its task and IP.
    pub async fn list(&self) -> Result<Vec<Container>> {
        let conn = &self.inner.conn;
        let filter = format!("labels.\"{MANAGED_LABEL}\"==true");
        let mut containers = conn.containers();
        let records = conn
            .call(
                "Containers.List",
                containers.list(conn.request(ListContainersRequest {
                    filters: vec![filter],
                })),
            )
            .await?
            .containers;
        let mut tasks = conn.tasks();
        let tasks: HashMap<String, TaskState> = conn
            .call(
                "Tasks.List",
                tasks.list(conn.request(ListTasksRequest {
                    filter: String::new(),
                })),
            )
            .await?
            .tasks
            .into_iter()
            .map(|p| {
                let id = if p.container_id.is_empty() {
                    p.id.clone()
                } else {
                    p.container_id.clone()
                };
                (id, task_state(&p))
            })
            .collect();
        let ips: HashMap<String, Ipv4Addr> = self
            .network()
            .attachments()?
            .into_iter()
            .map(|a| (a.id, a.ip))
            .collect();
        Ok(records
            .into_iter()
            .map(|c| Container {
                task: tasks.get(&c.id).copied(),
                ip: ips.get(&c.id).copied(),
                id: c.id,
                image: c.image,
                labels: c.labels.into_iter().collect(),
            })
            .collect())
    }

    /// Whether containerd has a container record `id` (managed by bramble or not).
    pub(super) async fn record_exists(&self, id: &str) -> Result<bool> {
        let conn = &self.inner.conn;
        let mut containers = conn.containers();
        match conn
            .call(
                "Containers.Get",
                containers.get(conn.request(GetContainerRequest { id: id.to_owned() })),
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// One managed container, if it exists.
    pub async fn get(&self, id: &str) -> Result<Option<Container>> {
        validate_id(id).map_err(Error::Invalid)?;
        let conn = &self.inner.conn;
        let mut containers = conn.containers();
        let record = match conn
            .call(
                "Containers.Get",
                containers.get(conn.request(GetContainerRequest { id: id.to_owned() })),
            )
            .await
        {
            Ok(reply) => reply.container,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(record) =
            record.filter(|c| c.labels.get(MANAGED_LABEL).is_some_and(|v| v == "true"))
        else {
            return Ok(None);
        };
        let ip = self
            .network()
            .attachments()?
            .into_iter()
            .find(|a| a.id == id)
            .map(|a| a.ip);
        Ok(Some(Container {
            task: self.task(id).await?,
            ip,
            id: record.id,
            image: record.image,
            labels: record.labels.into_iter().collect(),
        }))
    }

    /// Removes writable snapshots that no container owns (a crash between preparing a
    /// container's snapshot and recording it, or between removing the two). Snapshots of
    /// unpacks and image inspections in progress are protected by leases and left alone.
    /// Returns the keys removed.
    pub async fn remove_orphan_snapshots(&self) -> Result<Vec<String>> {
        use containerd_client::services::v1::snapshots::{Kind, ListSnapshotsRequest};
        let conn = &self.inner.conn;
        let snapshotter = &self.inner.config.snapshotter;
        let mut containers = conn.containers();
        let owned: std::collections::HashSet<String> = conn
            .call(
                "Containers.List",
                containers.list(conn.request(ListContainersRequest { filters: vec![] })),
            )
            .await?
            .containers
            .into_iter()
            .map(|c| c.snapshot_key)
            .collect();
        let mut snapshots = conn.snapshots();
        let request = conn.request(ListSnapshotsRequest {
            snapshotter: snapshotter.clone(),
            filters: vec![],
        });
        let mut stream = conn.call("Snapshots.List", snapshots.list(request)).await?;
        let mut orphans = Vec::new();
        loop {
            match stream.message().await {
                Ok(Some(page)) => orphans.extend(
                    page.info
                        .into_iter()
                        .filter(|i| i.kind == Kind::Active as i32)
                        .filter(|i| {
                            !i.name.starts_with("extract-") && !i.name.starts_with("bramble-user-")
                        })
                        .filter(|i| validate_id(&i.name).is_ok() && !owned.contains(&i.name))
                        .map(|i| i.name),
                ),
                Ok(None) => break,
                Err(status) => return Err(conn.status_error("Snapshots.List", &status)),
            }
        }
        for key in &orphans {
            tracing::info!(snapshot = %key, "removing a snapshot no container owns");
            remove_snapshot_quietly(conn, snapshotter, key).await;
        }
        Ok(orphans)
    }

    /// Releases the network state of ids that have no container record: pinned namespaces,
    /// IP leases and attachments left by a crash between preparing a container's namespace
    /// and recording the container, or in the middle of a CNI ADD. Each id is checked and
    /// released under its container lock, so a create or start running meanwhile is never
    /// taken for an orphan. Returns the ids released; one that cannot be released is logged
    /// and left for the next sweep.
    pub async fn remove_orphan_networks(&self) -> Result<Vec<String>> {
        let mut released = Vec::new();
        for id in self.network().holders()? {
            let _guard = self.inner.locks.lock(&id).await;
            if self.record_exists(&id).await? {
                continue;
            }
            tracing::info!(id = %id, "releasing the network of a container that does not exist");
            match self.network().detach(&id).await {
                Ok(()) => released.push(id),
                // Kept for the next start; the other ids are still released.
                Err(e) => tracing::warn!(id = %id, error = %e, "cannot release an orphan network"),
            }
        }
        Ok(released)
    }

    /// After a daemon restart: lists managed containers and re-attaches the log capture of
    /// every running task, so output keeps flowing into the buffers.
    pub async fn adopt(&self) -> Result<Vec<Container>> {
        let containers = self.list().await?;
        for c in &containers {
            if let Some(name) = c.labels.get(LOG_LABEL) {
                self.remember_log_name(&c.id, name);
            }
            if c.task.is_some_and(|t| t.status == TaskStatus::Running)
                && let Err(e) = self.attach_logs(&c.id, false).await
            {
                tracing::warn!(container = %c.id, error = %e.chain(), "cannot re-attach log capture");
            }
        }
        Ok(containers)
    }

    pub(super) async fn task(&self, id: &str) -> Result<Option<TaskState>> {
        let conn = &self.inner.conn;
        let mut tasks = conn.tasks();
        match conn
            .call(
                "Tasks.Get",
                tasks.get(conn.request(GetRequest {
                    container_id: id.to_owned(),
                    exec_id: String::new(),
                })),
            )
            .await
        {
            Ok(reply) => Ok(reply.process.as_ref().map(task_state)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }
}
