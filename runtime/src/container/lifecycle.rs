//! A container's life: create (network, files, spec, record, snapshot), start (FIFOs, task),
//! stop with a grace period, delete in containerd's safe order.

use std::collections::HashMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use containerd_client::services::v1::container::Runtime as CtrRuntime;
use containerd_client::services::v1::snapshots::{MountsRequest, PrepareSnapshotRequest};
use containerd_client::services::v1::{
    Container as CtrContainer, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteTaskRequest, KillRequest, StartRequest, WaitRequest,
};

use super::spec::{ContainerSpec, hosts_file, merge_env, stage_secrets, write_file};
use super::{Container, StartSteps, Started, TaskState, TaskStatus};
use crate::error::{Error, Result};
use crate::image::remove_snapshot_quietly;
use crate::logs::LogStream;
use crate::spec::{self, SpecInput};
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

    pub(super) async fn create_prepared(
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
                return Ok(Started {
                    pid: task.pid,
                    ip,
                    steps: StartSteps::default(),
                });
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
        let began = Instant::now();
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
        let prepared = Instant::now();
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
            let task_created = Instant::now();
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
            let steps = StartSteps {
                prepare: prepared - began,
                create: task_created - prepared,
                start: task_created.elapsed(),
            };
            tracing::debug!(
                container = id,
                prepare_us = steps.prepare.as_micros(),
                create_us = steps.create.as_micros(),
                start_us = steps.start.as_micros(),
                "task started"
            );
            Ok(Started {
                pid: started.pid,
                ip: attachment.ip,
                steps,
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

    pub(super) async fn stop_locked(&self, id: &str, grace: Duration) -> Result<Option<u32>> {
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

    /// Waits up to `timeout` for the task to exit; `None` on timeout.
    pub(super) async fn wait(&self, id: &str, timeout: Duration) -> Result<Option<u32>> {
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
    pub(super) async fn delete_task(&self, id: &str) -> Result<Option<u32>> {
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

    pub(super) async fn delete_record(&self, id: &str) {
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
    pub(super) async fn attach_logs(&self, id: &str, fresh: bool) -> Result<(PathBuf, PathBuf)> {
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

    pub(super) fn stop_readers(&self, id: &str) {
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

    pub(super) async fn log_name(&self, id: &str) -> Result<String> {
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

    pub(super) fn remember_log_name(&self, id: &str, name: &str) {
        if let Ok(mut names) = self.inner.log_names.lock() {
            names.insert(id.to_owned(), name.to_owned());
        }
    }

    /// Sends `signal` to the task (to every process of it with `all`); a task already gone
    /// is no error.
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

    pub(super) fn container_dir(&self, id: &str) -> PathBuf {
        self.inner.config.run_dir.join("containers").join(id)
    }

    pub(super) fn io_dir(&self, id: &str) -> PathBuf {
        self.inner.config.run_dir.join("io").join(id)
    }
}

/// A task creation refused because the bundle of an earlier, interrupted creation of the same
/// task is still there (`failed to start shim: mkdir …: file exists`): containerd removes it
/// shortly, after which the creation succeeds.
pub(super) fn is_interrupted_create(e: &Error) -> bool {
    matches!(e, Error::Containerd { call: "Tasks.Create", message, .. }
        if message.contains("mkdir") && message.contains("file exists"))
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
}
