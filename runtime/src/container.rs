//! Function containers: create (network, files, spec, container record, snapshot), start
//! (FIFOs, task), stop with a grace period, delete in containerd's safe order, list and adopt.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use containerd_client::services::v1::container::Runtime as CtrRuntime;
use containerd_client::services::v1::snapshots::{MountsRequest, PrepareSnapshotRequest};
use containerd_client::services::v1::{
    Container as CtrContainer, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteTaskRequest, GetContainerRequest, GetRequest, KillRequest, ListContainersRequest,
    ListTasksRequest, StartRequest, WaitRequest,
};
use containerd_client::types::v1::Status as CtrStatus;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::image::remove_snapshot_quietly;
use crate::logs::LogStream;
use crate::spec::{self, BindMount, Limits, SpecInput};
use crate::{LOG_LABEL, MANAGED_LABEL, Runtime, validate_id};

/// Type URL of a runtime spec in a container record (what every Go consumer expects).
const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// Creating a task spawns a shim and runs `runc create`; slow on a Pi with a busy SD card.
const TASK_CREATE_TIMEOUT: Duration = Duration::from_secs(60);
/// containerd cleans up after a task creation whose caller went away (a daemon killed in the
/// middle of it) for a couple of seconds; a new creation of the same task meanwhile fails on
/// the leftover bundle directory. It is retried this long.
const INTERRUPTED_CREATE_WAIT: Duration = Duration::from_secs(10);
/// Pause between those retries.
const INTERRUPTED_CREATE_RETRY: Duration = Duration::from_millis(200);
/// How long to wait for a task after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// PATH when the image sets none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What to run.
#[derive(Clone, Debug, Default)]
pub struct ContainerSpec {
    /// containerd container id (also the network attachment and cgroup name).
    pub id: String,
    /// Normalised name of an image that is present and unpacked.
    pub image: String,
    pub hostname: String,
    /// Environment on top of the image's (same key: this wins).
    pub env: Vec<(String, String)>,
    /// Replaces the image's entrypoint + cmd.
    pub args: Option<Vec<String>>,
    /// Replaces the image's `User`.
    pub user: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub limits: Limits,
    /// Mount the image read-only with a writable tmpfs at `/tmp`.
    pub read_only_rootfs: bool,
    /// Secrets, readable only by the function's user at `/var/openfaas/secrets/NAME`.
    pub secrets: Vec<Secret>,
    /// Extra bind mounts (the hardware socket, for one).
    pub mounts: Vec<BindMount>,
    /// Capabilities to keep (none by default), e.g. `CAP_NET_RAW`.
    pub capabilities: Vec<String>,
    /// The log buffer output goes to (default: the id). Containers of one function share it.
    pub log_name: Option<String>,
}

/// A secret file for a function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Secret {
    /// File name under `/var/openfaas/secrets`.
    pub name: String,
    /// Where bramble keeps it on the host.
    pub source: PathBuf,
}

/// A managed container as containerd knows it.
#[derive(Clone, Debug, Serialize)]
pub struct Container {
    pub id: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    /// The function's address on the bridge, if attached.
    pub ip: Option<Ipv4Addr>,
    pub task: Option<TaskState>,
}

/// A task that was started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Started {
    pub pid: u32,
    /// The function's address on the bridge.
    pub ip: Ipv4Addr,
}

/// A container's task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TaskState {
    pub pid: u32,
    pub status: TaskStatus,
    /// Set once stopped.
    pub exit_status: Option<u32>,
}

/// Lifecycle state of a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Created,
    Running,
    Stopped,
    Paused,
    Unknown,
}

impl TaskStatus {
    fn from_ctr(status: i32) -> Self {
        match CtrStatus::try_from(status) {
            Ok(CtrStatus::Created) => TaskStatus::Created,
            Ok(CtrStatus::Running) => TaskStatus::Running,
            Ok(CtrStatus::Stopped) => TaskStatus::Stopped,
            Ok(CtrStatus::Paused | CtrStatus::Pausing) => TaskStatus::Paused,
            _ => TaskStatus::Unknown,
        }
    }
}

impl ContainerSpec {
    fn validate(&self) -> Result<()> {
        validate_id(&self.id).map_err(|e| Error::Invalid(format!("container id {e}")))?;
        if self.hostname.is_empty()
            || self.hostname.len() > 63
            || !self
                .hostname
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err(Error::Invalid(format!(
                "hostname {:?} is not a valid host name",
                self.hostname
            )));
        }
        for (key, value) in &self.env {
            if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
                return Err(Error::Invalid(format!(
                    "environment variable {key:?} is not valid"
                )));
            }
        }
        for secret in &self.secrets {
            if !is_plain_file_name(&secret.name) {
                return Err(Error::Invalid(format!(
                    "secret name {:?} is not valid: use letters, digits, '.', '_' and '-' (no '/' or '..')",
                    secret.name
                )));
            }
        }
        for m in &self.mounts {
            if !m.destination.starts_with('/') || m.destination.split('/').any(|c| c == "..") {
                return Err(Error::Invalid(format!(
                    "mount destination {:?} must be an absolute path without '..'",
                    m.destination
                )));
            }
        }
        if self.limits.memory_bytes.is_some_and(|m| m < 4 << 20) {
            return Err(Error::Invalid(
                "a memory limit below 4 MiB cannot run a process".into(),
            ));
        }
        if self.limits.pids == Some(0) || self.limits.cpu_millis == Some(0) {
            return Err(Error::Invalid(
                "pids and cpu limits must be greater than zero".into(),
            ));
        }
        if let Some(name) = &self.log_name {
            validate_id(name).map_err(|e| Error::Invalid(format!("log name {e}")))?;
        }
        spec::normalise_capabilities(&self.capabilities).map_err(Error::Invalid)?;
        Ok(())
    }
}

fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Runtime {
    /// Creates a container without starting it: attaches its network, writes its files,
    /// records it in containerd and prepares its writable snapshot. Nothing is left behind
    /// when this fails.
    pub async fn create(&self, spec: &ContainerSpec) -> Result<Container> {
        spec.validate()?;
        let _guard = self.inner.locks.lock(&spec.id).await;
        let image = self
            .images()
            .get(&spec.image)
            .await?
            .filter(|i| i.unpacked)
            .ok_or_else(|| Error::NotFound {
                kind: "image",
                id: format!("{} (pull or import it first)", spec.image),
            })?;
        let user = self
            .images()
            .resolve_user(&image, spec.user.as_deref())
            .await?;
        // An existing container keeps its files and network: refused before touching them.
        if self.record_exists(&spec.id).await? {
            return Err(Error::AlreadyExists {
                kind: "container",
                id: spec.id.clone(),
            });
        }
        // Only the namespace now; the CNI chain runs in `start`, alongside the task's creation.
        let netns = self.network().prepare(&spec.id).await?;
        let result = self.create_prepared(spec, &image, &user, &netns).await;
        if result.is_err() {
            // Roll back: nothing of a failed create may stay.
            if let Err(e) = self.network().detach(&spec.id).await {
                tracing::warn!(container = %spec.id, error = %e, "rollback: detaching the network failed");
            }
            let _ = std::fs::remove_dir_all(self.container_dir(&spec.id));
        }
        result
    }

    async fn create_prepared(
        &self,
        spec: &ContainerSpec,
        image: &crate::Image,
        user: &crate::image::ResolvedUser,
        netns: &Path,
    ) -> Result<Container> {
        let config = &self.inner.config;
        let dir = self.container_dir(&spec.id);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        write_file(&dir.join("hostname"), spec.hostname.as_bytes(), 0o644)?;
        let hosts = dir.join("hosts");
        // Completed with the function's address once it is attached (see `start`).
        write_file(&hosts, hosts_file(None, &spec.hostname).as_bytes(), 0o644)?;
        let resolv = dir.join("resolv.conf");
        write_file(&resolv, self.resolv_conf().as_bytes(), 0o644)?;
        let secrets_dir = if spec.secrets.is_empty() {
            None
        } else {
            Some(stage_secrets(&dir, &spec.secrets, user)?)
        };

        let args = match &spec.args {
            Some(args) => args.clone(),
            None => image
                .config
                .entrypoint
                .iter()
                .chain(&image.config.cmd)
                .cloned()
                .collect(),
        };
        if args.is_empty() {
            return Err(Error::Invalid(format!(
                "image {} has no entrypoint or command, and none was given",
                image.name
            )));
        }
        let capabilities =
            spec::normalise_capabilities(&spec.capabilities).map_err(Error::Invalid)?;
        let json = spec::build(&SpecInput {
            hostname: &spec.hostname,
            args,
            env: merge_env(&image.config.env, &spec.env),
            cwd: image.config.working_dir.as_deref().unwrap_or("/"),
            user,
            capabilities: &capabilities,
            read_only_rootfs: spec.read_only_rootfs,
            netns,
            cgroups_path: self.cgroup_path(&spec.id),
            limits: &spec.limits,
            hosts_file: &hosts,
            resolv_file: &resolv,
            secrets_dir: secrets_dir.as_deref(),
            mounts: &spec.mounts,
        });
        let spec_bytes = serde_json::to_vec(&json)
            .map_err(|e| Error::Invalid(format!("encoding the OCI spec: {e}")))?;

        let log_name = spec.log_name.clone().unwrap_or_else(|| spec.id.clone());
        let mut labels: HashMap<String, String> = spec
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.insert(MANAGED_LABEL.into(), "true".into());
        labels.insert(LOG_LABEL.into(), log_name.clone());
        let record = CtrContainer {
            id: spec.id.clone(),
            labels: labels.clone(),
            image: image.name.clone(),
            runtime: Some(CtrRuntime {
                name: config.runtime.clone(),
                options: None,
            }),
            spec: Some(prost_types::Any {
                type_url: SPEC_TYPE_URL.into(),
                value: spec_bytes,
            }),
            snapshotter: config.snapshotter.clone(),
            snapshot_key: spec.id.clone(),
            ..Default::default()
        };
        let conn = &self.inner.conn;
        let mut containers = conn.containers();
        match conn
            .call(
                "Containers.Create",
                containers.create(conn.request(CreateContainerRequest {
                    container: Some(record),
                })),
            )
            .await
        {
            Err(e) if e.is_already_exists() => {
                return Err(Error::AlreadyExists {
                    kind: "container",
                    id: spec.id.clone(),
                });
            }
            other => other?,
        };
        // The container record exists first, so the snapshot is referenced (safe from GC) from
        // the moment it is created.
        let mut snapshots = conn.snapshots();
        let prepare = PrepareSnapshotRequest {
            snapshotter: config.snapshotter.clone(),
            key: spec.id.clone(),
            parent: image.top_chain_id.clone(),
            labels: HashMap::new(),
        };
        match conn
            .call(
                "Snapshots.Prepare",
                snapshots.prepare(conn.request(prepare)),
            )
            .await
        {
            Ok(_) => {}
            Err(e) if e.is_already_exists() => {} // left over from a crash; same parent by construction
            Err(e) => {
                self.delete_record(&spec.id).await;
                return Err(e);
            }
        }
        self.remember_log_name(&spec.id, &log_name);
        Ok(Container {
            id: spec.id.clone(),
            image: image.name.clone(),
            labels: labels.into_iter().collect(),
            ip: None,
            task: None,
        })
    }

    /// Starts the container's task. Starting a running task returns it as it is; a stopped
    /// task is replaced by a new one (same network namespace, same address).
    ///
    /// The function's network is attached here if it is not yet (first start, or after a
    /// reboot), concurrently with the creation of the task: the two dominate a cold start and
    /// do not depend on each other.
    pub async fn start(&self, id: &str) -> Result<Started> {
        validate_id(id).map_err(Error::Invalid)?;
        let _guard = self.inner.locks.lock(id).await;
        let dir = self.container_dir(id);
        if let Some(task) = self.task(id).await? {
            if task.status == TaskStatus::Running {
                self.attach_logs(id, false).await?;
                let ip = self.network().attach(id).await?.ip;
                return Ok(Started { pid: task.pid, ip });
            }
            self.delete_task(id).await?;
        }
        if !dir.join("hostname").exists() {
            // The container's files live on tmpfs; a record that survived a reboot points at
            // bind-mount sources that are gone.
            return Err(match self.get(id).await? {
                Some(_) => Error::Stale { id: id.to_owned() },
                None => Error::NotFound {
                    kind: "container",
                    id: id.to_owned(),
                },
            });
        }
        let conn = &self.inner.conn;
        let mut snapshots = conn.snapshots();
        let request = MountsRequest {
            snapshotter: self.inner.config.snapshotter.clone(),
            key: id.to_owned(),
        };
        let mounts = match conn
            .call("Snapshots.Mounts", snapshots.mounts(conn.request(request)))
            .await
        {
            Ok(reply) => reply.mounts,
            Err(e) if e.is_not_found() => {
                return Err(Error::NotFound {
                    kind: "container",
                    id: id.to_owned(),
                });
            }
            Err(e) => return Err(e),
        };
        self.network().prepare(id).await?;
        let (stdout, stderr) = self.attach_logs(id, true).await?;
        let create = CreateTaskRequest {
            container_id: id.to_owned(),
            rootfs: mounts,
            stdout: stdout.display().to_string(),
            stderr: stderr.display().to_string(),
            ..Default::default()
        };
        let mut tasks = conn.tasks();
        let result = async {
            let create_task = async {
                let deadline = Instant::now() + INTERRUPTED_CREATE_WAIT;
                loop {
                    let mut tasks = conn.tasks();
                    match conn
                        .call_within(
                            "Tasks.Create",
                            TASK_CREATE_TIMEOUT,
                            tasks.create(conn.request(create.clone())),
                        )
                        .await
                    {
                        Err(e) if is_interrupted_create(&e) && Instant::now() < deadline => {
                            tracing::debug!(container = id, error = %e.chain(), "containerd still cleans up an interrupted task creation; retrying");
                            tokio::time::sleep(INTERRUPTED_CREATE_RETRY).await;
                        }
                        other => break other,
                    }
                }
            };
            let (attached, created) = tokio::join!(self.network().attach(id), create_task);
            let (attachment, _) = (attached?, created?);
            let hostname = std::fs::read_to_string(dir.join("hostname"))
                .map_err(|e| Error::io(format!("reading {}", dir.join("hostname").display()), e))?;
            write_file(
                &dir.join("hosts"),
                hosts_file(Some(attachment.ip), &hostname).as_bytes(),
                0o644,
            )?;
            let start = StartRequest {
                container_id: id.to_owned(),
                exec_id: String::new(),
            };
            let started = conn
                .call("Tasks.Start", tasks.start(conn.request(start)))
                .await?;
            Ok(Started {
                pid: started.pid,
                ip: attachment.ip,
            })
        }
        .await;
        if result.is_err() {
            self.stop_readers(id);
            if let Err(e) = self.delete_task(id).await {
                tracing::warn!(container = id, error = %e.chain(), "cleaning up a failed start");
            }
        }
        result
    }

    /// Creates and starts; a failed start deletes what was created.
    pub async fn run(&self, spec: &ContainerSpec) -> Result<Container> {
        let mut container = self.create(spec).await?;
        match self.start(&spec.id).await {
            Ok(started) => {
                container.task = Some(TaskState {
                    pid: started.pid,
                    status: TaskStatus::Running,
                    exit_status: None,
                });
                container.ip = Some(started.ip);
                Ok(container)
            }
            Err(e) => {
                if let Err(cleanup) = self.delete(&spec.id, Duration::ZERO).await {
                    tracing::warn!(container = %spec.id, error = %cleanup.chain(), "cleaning up a failed run");
                }
                Err(e)
            }
        }
    }

    /// Stops the task: SIGTERM, then SIGKILL after `grace`. Returns the exit status, or `None`
    /// when there was no task. The container stays and can be started again.
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<Option<u32>> {
        validate_id(id).map_err(Error::Invalid)?;
        let _guard = self.inner.locks.lock(id).await;
        self.stop_locked(id, grace).await
    }

    async fn stop_locked(&self, id: &str, grace: Duration) -> Result<Option<u32>> {
        let Some(task) = self.task(id).await? else {
            return Ok(None);
        };
        if task.status != TaskStatus::Stopped {
            self.kill(id, libc::SIGTERM, false).await?;
            if self.wait(id, grace).await?.is_none() {
                tracing::info!(container = id, ?grace, "task ignored SIGTERM, killing it");
                self.kill(id, libc::SIGKILL, true).await?;
                if self.wait(id, KILL_WAIT).await?.is_none() {
                    return Err(Error::Unavailable {
                        socket: self.inner.conn.socket().to_path_buf(),
                        reason: format!("task {id} did not exit {KILL_WAIT:?} after SIGKILL"),
                    });
                }
            }
        }
        self.delete_task(id).await
    }

    /// Stops the task and deletes the container, its snapshot, network attachment and files.
    /// Deleting what does not exist succeeds.
    pub async fn delete(&self, id: &str, grace: Duration) -> Result<()> {
        validate_id(id).map_err(Error::Invalid)?;
        let _guard = self.inner.locks.lock(id).await;
        self.stop_locked(id, grace).await?;
        self.stop_readers(id);
        // Snapshot before container: deleting the record first lets GC take the snapshot
        // under our feet (reference/containerd-rust.md §1.6 item 6b).
        remove_snapshot_quietly(&self.inner.conn, &self.inner.config.snapshotter, id).await;
        self.delete_record(id).await;
        self.network().detach(id).await?;
        let _ = std::fs::remove_dir_all(self.container_dir(id));
        let _ = std::fs::remove_dir_all(self.io_dir(id));
        if let Ok(mut names) = self.inner.log_names.lock() {
            names.remove(id);
        }
        Ok(())
    }

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
    async fn record_exists(&self, id: &str) -> Result<bool> {
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

    async fn task(&self, id: &str) -> Result<Option<TaskState>> {
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

    async fn kill(&self, id: &str, signal: i32, all: bool) -> Result<()> {
        let conn = &self.inner.conn;
        let mut tasks = conn.tasks();
        let request = KillRequest {
            container_id: id.to_owned(),
            exec_id: String::new(),
            signal: signal as u32,
            all,
        };
        match conn
            .call("Tasks.Kill", tasks.kill(conn.request(request)))
            .await
        {
            Ok(_) => Ok(()),
            // The process is already gone: that is what we wanted.
            Err(e) if e.is_not_found() => Ok(()),
            Err(Error::Containerd {
                code: tonic::Code::FailedPrecondition,
                ..
            }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Waits up to `timeout` for the task to exit; `None` on timeout.
    async fn wait(&self, id: &str, timeout: Duration) -> Result<Option<u32>> {
        let conn = &self.inner.conn;
        let mut tasks = conn.tasks();
        let request = conn.request(WaitRequest {
            container_id: id.to_owned(),
            exec_id: String::new(),
        });
        match tokio::time::timeout(timeout, tasks.wait(request)).await {
            Ok(Ok(reply)) => Ok(Some(reply.into_inner().exit_status)),
            Ok(Err(status)) if status.code() == tonic::Code::NotFound => Ok(Some(0)),
            Ok(Err(status)) => Err(conn.status_error("Tasks.Wait", &status)),
            Err(_) => Ok(None),
        }
    }

    /// Deletes a stopped task; returns its exit status.
    async fn delete_task(&self, id: &str) -> Result<Option<u32>> {
        let conn = &self.inner.conn;
        let mut tasks = conn.tasks();
        match conn
            .call(
                "Tasks.Delete",
                tasks.delete(conn.request(DeleteTaskRequest {
                    container_id: id.to_owned(),
                })),
            )
            .await
        {
            Ok(reply) => Ok(Some(reply.exit_status)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn delete_record(&self, id: &str) {
        let conn = &self.inner.conn;
        let mut containers = conn.containers();
        match conn
            .call(
                "Containers.Delete",
                containers.delete(conn.request(DeleteContainerRequest { id: id.to_owned() })),
            )
            .await
        {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                tracing::warn!(container = id, error = %e.chain(), "deleting the container record failed");
            }
        }
    }

    /// Starts reading the task's stdout/stderr FIFOs into its log buffer. With `fresh`, new
    /// FIFOs are made (before a task is created); otherwise the existing ones are reopened
    /// unless readers are already attached. Returns the FIFO paths.
    async fn attach_logs(&self, id: &str, fresh: bool) -> Result<(PathBuf, PathBuf)> {
        let dir = self.io_dir(id);
        let (stdout, stderr) = (dir.join("stdout"), dir.join("stderr"));
        if !fresh
            && self.inner.readers.lock().is_ok_and(|r| {
                r.get(id)
                    .is_some_and(|h| h.iter().any(|h| !h.is_finished()))
            })
        {
            return Ok((stdout, stderr));
        }
        self.stop_readers(id);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let open = |path: &Path| {
            if fresh {
                crate::logs::open_fifo(path)
            } else {
                crate::logs::reopen_fifo(path)
            }
        };
        let (out, err) = (open(&stdout)?, open(&stderr)?);
        let log_name = self.log_name(id).await?;
        let buffer = self.logs().buffer(&log_name);
        let handles = vec![
            crate::logs::spawn_reader(
                out,
                std::sync::Arc::clone(&buffer),
                id.to_owned(),
                LogStream::Stdout,
            ),
            crate::logs::spawn_reader(err, buffer, id.to_owned(), LogStream::Stderr),
        ];
        if let Ok(mut readers) = self.inner.readers.lock() {
            readers.insert(id.to_owned(), handles);
        }
        Ok((stdout, stderr))
    }

    fn stop_readers(&self, id: &str) {
        if let Some(handles) = self
            .inner
            .readers
            .lock()
            .ok()
            .and_then(|mut r| r.remove(id))
        {
            for h in handles {
                h.abort();
            }
        }
    }

    async fn log_name(&self, id: &str) -> Result<String> {
        if let Some(name) = self
            .inner
            .log_names
            .lock()
            .ok()
            .and_then(|n| n.get(id).cloned())
        {
            return Ok(name);
        }
        let name = match self.get(id).await? {
            Some(c) => c
                .labels
                .get(LOG_LABEL)
                .cloned()
                .unwrap_or_else(|| id.to_owned()),
            None => id.to_owned(),
        };
        self.remember_log_name(id, &name);
        Ok(name)
    }

    fn remember_log_name(&self, id: &str, name: &str) {
        if let Ok(mut names) = self.inner.log_names.lock() {
            names.insert(id.to_owned(), name.to_owned());
        }
    }

    fn container_dir(&self, id: &str) -> PathBuf {
        self.inner.config.run_dir.join("containers").join(id)
    }

    fn io_dir(&self, id: &str) -> PathBuf {
        self.inner.config.run_dir.join("io").join(id)
    }

    /// The resolver configuration functions get: the host's, minus loopback nameservers they
    /// cannot reach (systemd-resolved's upstream list is used when the host points at its stub).
    fn resolv_conf(&self) -> String {
        let host = std::fs::read_to_string(&self.inner.config.resolv_conf).unwrap_or_default();
        let upstream = std::fs::read_to_string("/run/systemd/resolve/resolv.conf").ok();
        function_resolv_conf(&host, upstream.as_deref())
    }
}

/// A task creation refused because the bundle of an earlier, interrupted creation of the same
/// task is still there (`failed to start shim: mkdir …: file exists`): containerd removes it
/// shortly, after which the creation succeeds.
fn is_interrupted_create(e: &Error) -> bool {
    matches!(e, Error::Containerd { call: "Tasks.Create", message, .. }
        if message.contains("mkdir") && message.contains("file exists"))
}

fn task_state(p: &containerd_client::types::v1::Process) -> TaskState {
    let status = TaskStatus::from_ctr(p.status);
    TaskState {
        pid: p.pid,
        status,
        exit_status: (status == TaskStatus::Stopped).then_some(p.exit_status),
    }
}

/// Image env, then ours (same key: ours wins), and a PATH if nobody set one.
fn merge_env(image_env: &[String], ours: &[(String, String)]) -> Vec<String> {
    let mut merged: Vec<(String, String)> = Vec::new();
    let entries = image_env
        .iter()
        .filter_map(|e| e.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .chain(ours.iter().cloned());
    for (key, value) in entries {
        match merged.iter_mut().find(|(k, _)| *k == key) {
            Some(existing) => existing.1 = value,
            None => merged.push((key, value)),
        }
    }
    if !merged.iter().any(|(k, _)| k == "PATH") {
        merged.insert(0, ("PATH".into(), DEFAULT_PATH.into()));
    }
    merged
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect()
}

/// `/etc/hosts` of a function. It is bind-mounted, so it is rewritten in place (same inode)
/// once the function's address is known.
fn hosts_file(ip: Option<Ipv4Addr>, hostname: &str) -> String {
    let mut hosts =
        String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if let Some(ip) = ip {
        hosts.push_str(&format!("{ip}\t{hostname}\n"));
    }
    hosts
}

/// Drops nameservers on loopback (unreachable from the function's network namespace). When
/// the host only has a loopback stub (systemd-resolved), its upstream list is used instead.
fn function_resolv_conf(host: &str, systemd_upstream: Option<&str>) -> String {
    let is_loopback_ns = |line: &str| {
        line.split_whitespace()
            .nth(1)
            .and_then(|a| a.parse::<std::net::IpAddr>().ok())
            .is_some_and(|ip| ip.is_loopback())
    };
    let nameservers = |text: &str| {
        text.lines()
            .filter(|l| l.trim_start().starts_with("nameserver"))
            .filter(|l| !is_loopback_ns(l))
            .count()
    };
    let source = match systemd_upstream {
        Some(upstream) if nameservers(host) == 0 && nameservers(upstream) > 0 => upstream,
        _ => host,
    };
    let mut out = String::new();
    for line in source.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('#')
            || trimmed.is_empty()
            || (trimmed.starts_with("nameserver") && is_loopback_ns(trimmed))
        {
            continue;
        }
        out.push_str(trimmed);
        out.push('\n');
    }
    if nameservers(&out) == 0 {
        tracing::warn!(
            "the host has no nameserver a function can reach; DNS will not work in functions"
        );
    }
    out
}

/// Copies secrets into the container's (tmpfs) directory, readable only by the function's
/// user: directory 0500, files 0400, owned by its uid and gid.
fn stage_secrets(
    dir: &Path,
    secrets: &[Secret],
    user: &crate::image::ResolvedUser,
) -> Result<PathBuf> {
    let target = dir.join("secrets");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&target)
        .map_err(|e| Error::io(format!("creating {}", target.display()), e))?;
    for secret in secrets {
        let value = std::fs::read(&secret.source).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound {
                kind: "secret",
                id: secret.name.clone(),
            },
            _ => Error::io(format!("reading secret {}", secret.name), e),
        })?;
        let path = target.join(&secret.name);
        write_file(&path, &value, 0o400)?;
        chown(&path, user)?;
    }
    chown(&target, user)?;
    std::fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(0o500))
        .map_err(|e| Error::io(format!("restricting {}", target.display()), e))?;
    Ok(target)
}

fn chown(path: &Path, user: &crate::image::ResolvedUser) -> Result<()> {
    std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
        .map_err(|e| Error::io(format!("changing the owner of {}", path.display()), e))
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    file.write_all(contents)
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_leftover_bundle_is_an_interrupted_create() {
        let error = |call, message: &str| Error::Containerd {
            call,
            code: tonic::Code::Unknown,
            message: message.to_owned(),
        };
        assert!(is_interrupted_create(&error(
            "Tasks.Create",
            "failed to start shim: mkdir /run/containerd/io.containerd.runtime.v2.task/ns/f-1-0: file exists"
        )));
        assert!(!is_interrupted_create(&error(
            "Tasks.Create",
            "failed to create shim task: OCI runtime create failed"
        )));
        assert!(!is_interrupted_create(&error(
            "Snapshots.Prepare",
            "mkdir /x: file exists"
        )));
    }

    #[test]
    fn env_merges_with_ours_winning_and_a_default_path() {
        let merged = merge_env(
            &["PATH=/bin".into(), "A=1".into(), "junk".into()],
            &[("A".into(), "2".into()), ("fprocess".into(), "cat".into())],
        );
        assert_eq!(merged, ["PATH=/bin", "A=2", "fprocess=cat"]);
        assert_eq!(merge_env(&[], &[])[0], format!("PATH={DEFAULT_PATH}"));
    }

    #[test]
    fn loopback_nameservers_are_dropped_or_replaced_by_upstream() {
        let stub = "# generated\nnameserver 127.0.0.53\noptions edns0 trust-ad\nsearch lan\n";
        let upstream = "nameserver 192.168.1.1\nsearch lan\n";
        assert_eq!(
            function_resolv_conf(stub, Some(upstream)),
            "nameserver 192.168.1.1\nsearch lan\n"
        );
        assert_eq!(
            function_resolv_conf("nameserver 10.0.0.2\nnameserver 127.0.0.1\n", None),
            "nameserver 10.0.0.2\n"
        );
        assert_eq!(
            function_resolv_conf(stub, None),
            "options edns0 trust-ad\nsearch lan\n"
        );
    }

    #[test]
    fn specs_are_validated_before_anything_happens() {
        let good = ContainerSpec {
            id: "f".into(),
            image: "x".into(),
            hostname: "f".into(),
            ..Default::default()
        };
        assert!(good.validate().is_ok());
        let bad = |f: fn(&mut ContainerSpec)| {
            let mut s = good.clone();
            f(&mut s);
            s.validate().unwrap_err().to_string()
        };
        assert!(bad(|s| s.id = "../etc".into()).contains("container id"));
        assert!(bad(|s| s.hostname = "a b".into()).contains("hostname"));
        assert!(bad(|s| s.env = vec![("A=B".into(), "x".into())]).contains("environment"));
        assert!(
            bad(|s| s.secrets = vec![Secret {
                name: "../x".into(),
                source: "/x".into()
            }])
            .contains("secret name")
        );
        assert!(
            bad(|s| s.secrets = vec![Secret {
                name: "a/b".into(),
                source: "/x".into()
            }])
            .contains("secret name")
        );
        assert!(
            bad(|s| s.mounts = vec![BindMount {
                source: "/x".into(),
                destination: "rel".into(),
                read_only: true
            }])
            .contains("absolute")
        );
        assert!(bad(|s| s.limits.memory_bytes = Some(1024)).contains("4 MiB"));
        assert!(bad(|s| s.capabilities = vec!["CAP_FLY".into()]).contains("CAP_FLY"));
    }

    #[test]
    fn secrets_are_staged_owned_by_the_function_user() -> Result<(), String> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("src");
        std::fs::write(&source, "s3cret").unwrap();
        let user = crate::image::ResolvedUser {
            uid: 4242,
            gid: 4343,
            additional_gids: vec![],
        };
        if !nix::unistd::Uid::effective().is_root() {
            return bramble_testkit::harness::cannot_run_here(
                "secrets_are_staged_owned_by_the_function_user",
                "staging chowns to the function's user, which needs root",
            );
        }
        let staged = stage_secrets(
            dir.path(),
            &[Secret {
                name: "api-key".into(),
                source,
            }],
            &user,
        )
        .unwrap();
        let file = std::fs::metadata(staged.join("api-key")).unwrap();
        assert_eq!(
            (file.uid(), file.gid(), file.permissions().mode() & 0o777),
            (4242, 4343, 0o400)
        );
        assert_eq!(
            std::fs::metadata(&staged).unwrap().permissions().mode() & 0o777,
            0o500
        );
        assert_eq!(
            std::fs::read_to_string(staged.join("api-key")).unwrap(),
            "s3cret"
        );
        Ok(())
    }
}
