//! A scripted runtime for unit tests: no root, no containerd, tokio's paused clock.
//!
//! What a replica does is scripted per image ([`Script`]): how long until it answers its
//! health check (or never), whether it exits or is OOM-killed after a while, how long it takes
//! to exit after SIGTERM. containerd itself can be made unavailable. Every call is recorded
//! with the (virtual) time it was made, for assertions such as "stopped only after its last
//! request finished". Exits and OOM kills are reported as [`TaskEvent`]s, as containerd does.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bramble_gateway::types::ImageSummary;
use bramble_runtime::image::reference::ImageRef;
use bramble_runtime::logs::Logs;
use bramble_runtime::{
    Container, ContainerSpec, Error, PullPolicy, Result, StartSteps, Started, TaskEvent, TaskState,
    TaskStatus, Usage,
};
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::{Containers, NodeRuntime};
use crate::probe::Probe;

/// How the replicas of one image behave.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Script {
    /// Time from start until the health check passes; `None`: never.
    pub ready_after: Option<Duration>,
    /// The task ends by itself this long after it started.
    pub exits_after: Option<(Duration, Exit)>,
    /// Time the process takes to exit after SIGTERM (a stock of-watchdog function waits out
    /// its timeouts); beyond the grace period it is killed.
    pub stop_takes: Duration,
    /// Time the removal of a container takes once its task is gone (containerd removing a
    /// snapshot from a slow SD card).
    pub remove_takes: Duration,
}

impl Script {
    /// Ready after `after`, runs until stopped, exits at once on SIGTERM.
    pub(crate) fn ready_after(after: Duration) -> Self {
        Self {
            ready_after: Some(after),
            exits_after: None,
            stop_takes: Duration::ZERO,
            remove_takes: Duration::ZERO,
        }
    }

    /// Never passes its health check.
    pub(crate) fn never_ready() -> Self {
        Self {
            ready_after: None,
            ..Self::ready_after(Duration::ZERO)
        }
    }
}

/// How a task ends by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exit {
    Code(u32),
    /// Killed for memory; containerd's OOM event comes before the exit.
    Oom,
    /// Killed for memory; the OOM event comes after the exit (as under load).
    OomReportedLate,
}

/// A call the fake received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Call {
    Create(String),
    Start(String),
    /// SIGTERM sent (the stop begins).
    Stop(String),
    /// The task is gone (after its `stop_takes`, or killed at the end of the grace period).
    Stopped(String),
    Delete(String),
}

#[derive(Debug)]
struct FakeContainer {
    image: String,
    labels: BTreeMap<String, String>,
    ip: Ipv4Addr,
    task: Option<FakeTask>,
}

#[derive(Clone, Copy, Debug)]
struct FakeTask {
    pid: u32,
    started: Instant,
    exit_status: Option<u32>,
}

#[derive(Debug, Default)]
struct State {
    scripts: HashMap<String, Script>,
    images: HashSet<String>,
    containers: BTreeMap<String, FakeContainer>,
    unavailable: bool,
    next_pid: u32,
    next_ip: u32,
    calls: Vec<(Instant, Call)>,
}

/// The scripted runtime; clones share everything.
#[derive(Clone, Debug)]
pub(crate) struct FakeRuntime {
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<TaskEvent>,
    logs: Arc<Logs>,
}

impl Default for FakeRuntime {
    fn default() -> Self {
        Self {
            state: Arc::default(),
            events: broadcast::channel(1024).0,
            logs: Arc::new(Logs::new(64 * 1024)),
        }
    }
}

fn unavailable() -> Error {
    Error::Unavailable {
        socket: PathBuf::from("/run/containerd/containerd.sock"),
        reason: "connection refused (scripted)".into(),
    }
}

fn not_found(id: &str) -> Error {
    Error::NotFound {
        kind: "container",
        id: id.to_owned(),
    }
}

impl FakeRuntime {
    /// Replicas of `image` behave as `script`; the image is present.
    pub(crate) fn script(&self, image: &str, script: Script) {
        let mut state = self.lock();
        state.images.insert(image.to_owned());
        state.scripts.insert(image.to_owned(), script);
    }

    /// containerd goes away (every call fails as unavailable) or comes back.
    pub(crate) fn set_unavailable(&self, unavailable: bool) {
        self.lock().unavailable = unavailable;
    }

    /// Every call so far, with when it was made.
    pub(crate) fn calls(&self) -> Vec<(Instant, Call)> {
        self.lock().calls.clone()
    }

    /// When `call` was first made.
    pub(crate) fn when(&self, call: &Call) -> Option<Instant> {
        self.lock()
            .calls
            .iter()
            .find(|(_, c)| c == call)
            .map(|(at, _)| *at)
    }

    /// Ids of containers whose task runs now.
    pub(crate) fn running(&self) -> Vec<String> {
        self.lock()
            .containers
            .iter()
            .filter(|(_, c)| c.task.is_some_and(|t| t.exit_status.is_none()))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Ids of every container that exists.
    pub(crate) fn containers(&self) -> Vec<String> {
        self.lock().containers.keys().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, call: Call) {
        self.lock().calls.push((Instant::now(), call));
    }

    fn check_available(&self) -> Result<()> {
        if self.lock().unavailable {
            Err(unavailable())
        } else {
            Ok(())
        }
    }

    fn script_of(&self, id: &str) -> Option<Script> {
        let state = self.lock();
        let image = &state.containers.get(id)?.image;
        state.scripts.get(image).copied()
    }

    /// Ends the task `pid` of `id` with `status`, if it still runs; reports it.
    fn end_task(&self, id: &str, pid: u32, status: u32, oom: bool) -> bool {
        {
            let mut state = self.lock();
            let Some(task) = state
                .containers
                .get_mut(id)
                .and_then(|c| c.task.as_mut())
                .filter(|t| t.pid == pid && t.exit_status.is_none())
            else {
                return false;
            };
            task.exit_status = Some(status);
        }
        if oom {
            let _ = self.events.send(TaskEvent::Oom {
                container: id.to_owned(),
            });
        }
        let _ = self.events.send(TaskEvent::Exited {
            container: id.to_owned(),
            pid,
            exit_status: status,
            at: SystemTime::now(),
        });
        true
    }
}

impl Containers for FakeRuntime {
    async fn create(&self, spec: &ContainerSpec) -> Result<()> {
        self.check_available()?;
        let mut state = self.lock();
        if state.containers.contains_key(&spec.id) {
            return Err(Error::AlreadyExists {
                kind: "container",
                id: spec.id.clone(),
            });
        }
        if !state.images.contains(&spec.image) {
            return Err(Error::ImageNotPresent {
                image: spec.image.clone(),
            });
        }
        state.next_ip += 1;
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 72, 0, 1)) + state.next_ip);
        state.containers.insert(
            spec.id.clone(),
            FakeContainer {
                image: spec.image.clone(),
                labels: spec.labels.clone(),
                ip,
                task: None,
            },
        );
        state
            .calls
            .push((Instant::now(), Call::Create(spec.id.clone())));
        Ok(())
    }

    async fn start(&self, id: &str) -> Result<Started> {
        self.check_available()?;
        let (pid, ip, script) = {
            let mut state = self.lock();
            state.next_pid += 1;
            let pid = 1000 + state.next_pid;
            let Some(container) = state.containers.get_mut(id) else {
                return Err(not_found(id));
            };
            if container.task.is_some_and(|t| t.exit_status.is_none()) {
                return Err(Error::AlreadyExists {
                    kind: "task",
                    id: id.to_owned(),
                });
            }
            container.task = Some(FakeTask {
                pid,
                started: Instant::now(),
                exit_status: None,
            });
            let ip = container.ip;
            let script = state.scripts.get(&state.containers[id].image).copied();
            state
                .calls
                .push((Instant::now(), Call::Start(id.to_owned())));
            (pid, ip, script)
        };
        let _ = self.events.send(TaskEvent::Started {
            container: id.to_owned(),
            pid,
        });
        if let Some((after, exit)) = script.and_then(|s| s.exits_after) {
            let fake = self.clone();
            let id = id.to_owned();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                match exit {
                    Exit::Code(code) => fake.end_task(&id, pid, code, false),
                    Exit::Oom => fake.end_task(&id, pid, 137, true),
                    Exit::OomReportedLate => {
                        if fake.end_task(&id, pid, 137, false) {
                            let _ = fake.events.send(TaskEvent::Oom { container: id });
                        }
                        true
                    }
                };
            });
        }
        Ok(Started {
            pid,
            ip,
            steps: StartSteps::default(),
        })
    }

    async fn wait_ready(
        &self,
        addr: SocketAddr,
        deadline: Instant,
    ) -> std::result::Result<Duration, Probe> {
        let begun = Instant::now();
        let found = {
            let state = self.lock();
            state
                .containers
                .iter()
                .find(|(_, c)| SocketAddr::from((c.ip, 8080)) == addr)
                .and_then(|(id, c)| {
                    Some((
                        id.clone(),
                        c.task?.pid,
                        state.scripts.get(&c.image).copied()?,
                    ))
                })
        };
        let Some((id, pid, script)) = found else {
            tokio::time::sleep_until(deadline).await;
            return Err(Probe::NotReady(None));
        };
        let still_running = |fake: &FakeRuntime| {
            fake.lock()
                .containers
                .get(&id)
                .and_then(|c| c.task)
                .is_some_and(|t| t.pid == pid && t.exit_status.is_none())
        };
        match script.ready_after {
            Some(after) if begun + after <= deadline => {
                tokio::time::sleep(after).await;
                if still_running(self) {
                    return Ok(begun.elapsed());
                }
                tokio::time::sleep_until(deadline).await;
                Err(Probe::NotReady(None))
            }
            _ => {
                tokio::time::sleep_until(deadline).await;
                Err(Probe::NotReady(None))
            }
        }
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<Option<u32>> {
        self.check_available()?;
        let task = {
            let state = self.lock();
            let Some(container) = state.containers.get(id) else {
                return Err(not_found(id));
            };
            container.task
        };
        let Some(task) = task.filter(|t| t.exit_status.is_none()) else {
            return Ok(task.and_then(|t| t.exit_status));
        };
        self.record(Call::Stop(id.to_owned()));
        let takes = self.script_of(id).map_or(Duration::ZERO, |s| s.stop_takes);
        let (wait, status) = if takes <= grace {
            (takes, 143)
        } else {
            (grace, 137)
        };
        tokio::time::sleep(wait).await;
        if self.end_task(id, task.pid, status, false) {
            self.record(Call::Stopped(id.to_owned()));
        }
        Ok(Some(status))
    }

    async fn delete(&self, id: &str, grace: Duration) -> Result<()> {
        self.check_available()?;
        if !self.lock().containers.contains_key(id) {
            return Err(not_found(id));
        }
        self.stop(id, grace).await?;
        let takes = self
            .script_of(id)
            .map_or(Duration::ZERO, |s| s.remove_takes);
        tokio::time::sleep(takes).await;
        self.lock().containers.remove(id);
        self.record(Call::Delete(id.to_owned()));
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<Container>> {
        self.check_available()?;
        Ok(self.lock().containers.get(id).map(|c| container(id, c)))
    }

    fn forget_logs(&self, name: &str) {
        self.logs.forget(name);
    }
}

fn container(id: &str, c: &FakeContainer) -> Container {
    Container {
        id: id.to_owned(),
        image: c.image.clone(),
        labels: c.labels.clone(),
        ip: Some(c.ip),
        task: c.task.map(|t| TaskState {
            pid: t.pid,
            status: if t.exit_status.is_some() {
                TaskStatus::Stopped
            } else {
                TaskStatus::Running
            },
            exit_status: t.exit_status,
        }),
    }
}

impl NodeRuntime for FakeRuntime {
    async fn version(&self) -> Result<String> {
        self.check_available()?;
        Ok("1.6.20-fake".into())
    }

    async fn list(&self) -> Result<Vec<Container>> {
        self.check_available()?;
        Ok(self
            .lock()
            .containers
            .iter()
            .map(|(id, c)| container(id, c))
            .collect())
    }

    async fn adopt(&self) -> Result<Vec<Container>> {
        self.list().await
    }

    async fn remove_orphan_snapshots(&self) -> Result<Vec<String>> {
        self.check_available()?;
        Ok(Vec::new())
    }

    async fn remove_orphan_networks(&self) -> Result<Vec<String>> {
        self.check_available()?;
        Ok(Vec::new())
    }

    fn subscribe(&self) -> broadcast::Receiver<TaskEvent> {
        self.events.subscribe()
    }

    fn logs(&self) -> &Logs {
        &self.logs
    }

    async fn usage(&self, id: &str) -> Result<Option<Usage>> {
        self.check_available()?;
        let state = self.lock();
        Ok(state.containers.get(id).and_then(|c| {
            c.task.filter(|t| t.exit_status.is_none()).map(|t| Usage {
                memory_bytes: 4 << 20,
                memory_limit_bytes: None,
                cpu_ns: u64::try_from(t.started.elapsed().as_nanos() / 100).unwrap_or(0),
                pids: 1,
            })
        }))
    }

    async fn usage_all(&self) -> Result<HashMap<String, Usage>> {
        let ids = self.running();
        let mut out = HashMap::new();
        for id in ids {
            if let Some(usage) = self.usage(&id).await? {
                out.insert(id, usage);
            }
        }
        Ok(out)
    }

    async fn ensure_image(&self, image: &ImageRef, policy: PullPolicy) -> Result<()> {
        self.check_available()?;
        let name = image.to_string();
        if self.lock().images.contains(&name) {
            Ok(())
        } else if policy == PullPolicy::Never {
            Err(Error::ImageNotPresent { image: name })
        } else {
            Err(Error::InvalidImage {
                image: name,
                reason: "no such image in the scripted registry".into(),
            })
        }
    }

    async fn list_images(&self) -> Result<Vec<ImageSummary>> {
        self.check_available()?;
        Ok(self
            .lock()
            .images
            .iter()
            .map(|name| ImageSummary {
                name: name.clone(),
                digest: format!("sha256:{:064}", 0),
                size: 1 << 20,
            })
            .collect())
    }

    async fn import_images(
        &self,
        archive: &Path,
        _rename: Option<&ImageRef>,
    ) -> Result<Vec<String>> {
        Err(Error::Archive {
            path: archive.to_path_buf(),
            reason: "the fake runtime imports nothing".into(),
        })
    }

    async fn remove_image(&self, name: &str) -> Result<()> {
        self.check_available()?;
        if self.lock().images.remove(name) {
            Ok(())
        } else {
            Err(Error::NotFound {
                kind: "image",
                id: name.to_owned(),
            })
        }
    }
}
