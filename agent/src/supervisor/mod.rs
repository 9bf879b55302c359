//! One supervisor task per function converges its containers to the desired state.
//!
//! It owns the function's replicas and performs their runtime operations one command at a
//! time, so nothing races within a function. Readiness probes and graceful stops run in
//! spawned tasks and report back, so the supervisor never waits on them. What the gateway
//! needs per request — the ready addresses — is published in a [`Route`], read without
//! talking to the supervisor. The runtime is reached through [`Containers`], so all of this
//! is unit-tested against a scripted fake on tokio's paused clock (`tests.rs`).
//!
//! - A replica serves traffic only once its health check passes.
//! - A replica that exits or is OOM-killed restarts after an exponential backoff
//!   (250 ms doubling up to 30 s; reset after 30 s of healthy running). The status keeps the
//!   restart count and the last reason ([`ExitReason`]).
//! - A start that fails because containerd cannot be reached (restarting, crashed) is retried
//!   every second, without backoff and without counting as a restart; a request waiting for
//!   the replica gets 503 with that reason at once instead of waiting out the ready timeout.
//! - Scaling to zero stops tasks but keeps containers and network, so the next request starts
//!   them again in tens of milliseconds. A replica scaled away leaves the route first, then is
//!   stopped once the requests it was serving finished.
//! - Updates roll out beside the serving version (see `rollout.rs`).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bramble_gateway::types::{ExitReason, FunctionState};
use bramble_gateway::ui::model::Replica as ReplicaView;
use bramble_runtime::{Container, Error as RuntimeError, TaskStatus};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::function::{self, Defaults, FunctionKey};
use crate::probe::Probe;
use crate::runtime::Containers;
use crate::store::{FunctionRecord, Store, StoreError};

mod replica;
mod rollout;
mod route;
mod stop;
#[cfg(test)]
mod tests;

use replica::{Free, Phase, Replica, free_slot};
use rollout::Rollout;
pub(crate) use route::{Route, Slot};

/// A replica that ran this long before exiting starts its backoff afresh.
const STABLE_RUN: Duration = Duration::from_secs(30);
/// How often idle functions are considered for scale-to-zero.
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// Retry delay of a start that failed because containerd could not be reached: not the
/// function's fault, so neither a backoff step nor a restart.
const UNAVAILABLE_RETRY: Duration = Duration::from_secs(1);
/// Consecutive failures after which a function is reported crash-looping (and a rollout's
/// new version given up).
const CRASH_LOOP_FAILURES: u32 = 3;

/// Settings every supervisor shares.
#[derive(Debug)]
pub(crate) struct Context<C> {
    pub runtime: C,
    pub store: Arc<Store>,
    /// The hardware helper: functions with grants get its socket mounted, and their outputs
    /// go to their safe state whenever no replica runs.
    pub hardware: Arc<bramble_hardware::Hardware>,
    pub defaults: Defaults,
    pub ready_timeout: Duration,
    pub stop_grace: Duration,
    /// Marked changed whenever a function's status view changes (the dashboard listens).
    pub changes: watch::Sender<()>,
}

/// A function's observable state, for status answers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct StatusView {
    pub desired: u64,
    pub available: u64,
    pub state: FunctionState,
    pub restarts: u64,
    pub last_exit: Option<ExitReason>,
    pub message: Option<String>,
    /// Container ids of the replicas in service (for usage and logs).
    pub containers: Vec<String>,
    /// Starts that failed because containerd could not be reached (a counter: a request
    /// waiting for a replica answers 503 at once when it grows).
    pub unavailable_starts: u64,
    /// Every replica (a rollout's new ones too), for the dashboard.
    pub replicas: Vec<ReplicaView>,
}

/// Messages to a supervisor.
#[derive(Debug)]
pub(crate) enum Command {
    /// A request found no ready replica: scale from zero if needed.
    Wake,
    /// The desired replicas changed (already persisted).
    Scale(u64),
    /// The deployment changed (already persisted with a new generation).
    Update(Box<FunctionRecord>),
    /// Remove everything; answers when done.
    Delete(oneshot::Sender<()>),
    /// Stop every replica (keeping containers) and supervise no more; answers when done.
    Shutdown(oneshot::Sender<()>),
    /// A task exited. `pid` tells which task: a stopped one's exit may arrive after the same
    /// container was started again, and must not be taken for a crash of the new task.
    Exited {
        container: String,
        pid: u32,
        exit_status: u32,
    },
    Oom {
        container: String,
    },
    /// A replica scaled away has finished stopping (its slot is free again).
    Stopped {
        container: String,
    },
    /// Events may have been missed: re-check every task.
    Resync,
    Probed {
        container: String,
        result: Result<Duration, Probe>,
    },
}

/// The handle the provider keeps for a function.
#[derive(Clone, Debug)]
pub(crate) struct Handle {
    pub route: Arc<Route>,
    pub commands: mpsc::UnboundedSender<Command>,
    pub status: watch::Receiver<StatusView>,
}

struct Supervisor<C> {
    key: FunctionKey,
    ctx: Arc<Context<C>>,
    record: FunctionRecord,
    replicas: Vec<Replica>,
    rollout: Option<Rollout>,
    route: Arc<Route>,
    status: watch::Sender<StatusView>,
    commands: mpsc::UnboundedSender<Command>,
    restarts: u64,
    /// See [`StatusView::unavailable_starts`].
    unavailable_starts: u64,
    last_exit: Option<ExitReason>,
    /// The container whose exit `last_exit` tells.
    last_exit_of: Option<String>,
    message: Option<String>,
    /// Containers with an OOM kill reported before their task's exit.
    oom: std::collections::HashSet<String>,
    /// Whether a replica ran at the last publish (for safe-state transitions).
    hardware_live: bool,
}

/// Starts the supervisor of a function. `adopted` are its containers found in containerd.
/// A `record` with a pending rollout ([`FunctionRecord::previous`]) resumes that rollout.
pub(crate) fn spawn<C: Containers>(
    ctx: Arc<Context<C>>,
    key: FunctionKey,
    record: FunctionRecord,
    adopted: Vec<Container>,
) -> Handle {
    let (commands, receiver) = mpsc::unbounded_channel();
    let route = Arc::new(Route::new(function::timeout(
        &record.deployment,
        &ctx.defaults,
    )));
    let (status, status_rx) = watch::channel(StatusView::default());
    let (serving, rollout, unsettled) = rollout::resume(&key, record, ctx.ready_timeout);
    let mut supervisor = Supervisor {
        key,
        ctx,
        replicas: Vec::new(),
        rollout,
        route: Arc::clone(&route),
        status,
        commands: commands.clone(),
        restarts: 0,
        unavailable_starts: 0,
        last_exit: None,
        last_exit_of: None,
        message: None,
        oom: std::collections::HashSet::new(),
        hardware_live: false,
        record: serving,
    };
    supervisor.adopt(adopted);
    tokio::spawn(async move {
        if let Some(generation) = unsettled {
            supervisor
                .persist_if_generation(generation, |r| r.previous = None)
                .await;
        }
        supervisor.run(receiver).await;
    });
    Handle {
        route,
        commands,
        status: status_rx,
    }
}

impl<C: Containers> Supervisor<C> {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        self.reconcile().await;
        loop {
            let wake_at = self.next_deadline();
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Delete(done)) => {
                        self.end_all(true).await;
                        let _ = done.send(());
                        return;
                    }
                    Some(Command::Shutdown(done)) => {
                        self.end_all(false).await;
                        let _ = done.send(());
                        return;
                    }
                    Some(command) => self.handle(command).await,
                    None => return,
                },
                () = tokio::time::sleep_until(wake_at) => {}
            }
            self.check_idle().await;
            self.check_rollout_deadline().await;
            self.reconcile().await;
        }
    }

    /// The next moment something is due: a backoff ending, a rollout deadline, an idle check.
    fn next_deadline(&self) -> Instant {
        let mut next = Instant::now() + IDLE_CHECK;
        for r in self.all_replicas() {
            if let Phase::Backoff(at) = r.phase {
                next = next.min(at);
            }
        }
        if let Some(rollout) = &self.rollout {
            next = next.min(rollout.deadline);
        }
        next
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Wake => {
                if self.record.replicas == 0 {
                    tracing::info!(function = %self.key, "scaling from zero for a request");
                    // Start first, persist while the new replica is probed: the write (with
                    // its fsyncs, slow on an SD card) is not on the request's path. A crash in
                    // between only leaves the function at zero until the next request.
                    self.record.replicas = 1;
                    self.reconcile().await;
                    self.set_desired(1).await;
                }
            }
            Command::Scale(replicas) => {
                self.record.replicas = replicas;
                if let Some(rollout) = &mut self.rollout {
                    rollout.record.replicas = replicas;
                }
            }
            Command::Update(record) => self.begin_update(*record).await,
            Command::Exited {
                container,
                pid,
                exit_status,
            } => self.exited(&container, Some(pid), exit_status),
            Command::Oom { container } => self.oom_killed(container),
            Command::Stopped { container } => self.stopped(&container),
            Command::Resync => self.resync().await,
            Command::Probed { container, result } => self.probed(&container, result).await,
            Command::Delete(_) | Command::Shutdown(_) => {}
        }
    }

    /// Takes over containers that already exist (daemon restart): those of the serving
    /// generation and, while a rollout resumes, those of the new one.
    fn adopt(&mut self, containers: Vec<Container>) {
        let rolling_out = self
            .rollout
            .as_ref()
            .map(|r| (r.record.generation, r.record.replicas.max(1)));
        let mut new_generation = Vec::new();
        for c in containers {
            let Some((_, generation, index)) = FunctionKey::parse_container_id(&c.id) else {
                continue;
            };
            let running = c.task.is_some_and(|t| t.status == TaskStatus::Running);
            let of_rollout = rolling_out.is_some_and(|(g, count)| g == generation && index < count);
            if !(of_rollout || generation == self.record.generation) || index >= function::MAX_SLOTS
            {
                // A leftover of an interrupted update or of an old generation.
                self.remove_in_background(c.id);
                continue;
            }
            let mut replica = Replica::new(&self.key, generation, index);
            replica.created = true;
            replica.ip = c.ip;
            replica.pid = c.task.map(|t| t.pid);
            // A running task whose address is unknown goes through `start`, which returns it.
            if let (true, Some(ip)) = (running, c.ip) {
                replica.phase = Phase::Starting;
                replica.started_at = Some(Instant::now());
                replica.slot = Some(Slot::new(SocketAddr::from((ip, 8080))));
                self.spawn_probe(&replica.id, ip);
            }
            if of_rollout {
                new_generation.push(replica);
            } else {
                self.replicas.push(replica);
            }
        }
        self.replicas.sort_by_key(|r| r.index);
        if let Some(rollout) = &mut self.rollout {
            rollout.adopt(&self.key, new_generation);
            self.route.set_timeout(function::timeout(
                &rollout.record.deployment,
                &self.ctx.defaults,
            ));
        }
    }

    /// Brings the replicas of the current generation (and of a rollout) to what is desired.
    ///
    /// A replica's index is its container's slot, not its rank: replicas that are stopping
    /// keep their slot until their task is gone, and a replica wanted meanwhile takes another
    /// slot — a stopped container (restarted in tens of milliseconds), or a new one — so no
    /// request ever waits for a replica that is stopping.
    async fn reconcile(&mut self) {
        let desired = usize::try_from(self.record.replicas).unwrap_or(usize::MAX);
        let now = Instant::now();
        let record = self.record.clone();
        let mut replicas = std::mem::take(&mut self.replicas);
        let live = replicas.iter().filter(|r| r.is_wanted()).count();
        // Too few: take slots for the missing replicas, stopped containers first.
        for _ in live..desired {
            match free_slot(&replicas) {
                Some(Free::Stopped(i)) => replicas[i].phase = Phase::Backoff(now),
                Some(Free::New(index)) => {
                    let mut replica = Replica::new(&self.key, record.generation, index);
                    replica.phase = Phase::Backoff(now);
                    replicas.push(replica);
                }
                None => {
                    // Every slot is held by a replica still stopping (scaled up and down again
                    // faster than its replicas exit): the first to exit frees one and wakes
                    // us again. Not more slots: each stopping replica still holds its memory.
                    let why = format!(
                        "waiting for a replica to finish stopping: all {} container slots are held by stopping replicas",
                        function::MAX_SLOTS
                    );
                    tracing::warn!(function = %self.key, "{why}");
                    self.message = Some(why);
                    break;
                }
            }
        }
        // Too many: the ones not serving yet go first, then the newest.
        let mut surplus = live.saturating_sub(desired);
        let mut to_stop = Vec::new();
        let mut order: Vec<usize> = (0..replicas.len())
            .filter(|i| replicas[*i].is_wanted())
            .collect();
        order.sort_by_key(|i| {
            (
                replicas[*i].phase == Phase::Ready,
                std::cmp::Reverse(replicas[*i].index),
            )
        });
        for i in order {
            if surplus == 0 {
                break;
            }
            surplus -= 1;
            let replica = &mut replicas[i];
            match replica.slot.take() {
                // A running task: out of the route first (below), then drained and stopped.
                // Stopped only once it is out of the route: a drain that started before the
                // publish could miss a request picking the replica meanwhile, which the stop
                // would then refuse.
                Some(slot) if replica.is_live() => {
                    replica.phase = Phase::Stopping;
                    to_stop.push((replica.id.clone(), slot));
                }
                _ => replica.phase = Phase::Stopped,
            }
        }
        for replica in &mut replicas {
            if matches!(replica.phase, Phase::Backoff(at) if at <= now) {
                self.start_in(replica, &record).await;
            }
        }
        replicas.sort_by_key(|r| r.index);
        self.replicas = replicas;
        if let Some(mut rollout) = self.rollout.take() {
            for replica in &mut rollout.replicas {
                if replica.phase == Phase::Stopped
                    || matches!(replica.phase, Phase::Backoff(at) if at <= now)
                {
                    self.start_in(replica, &rollout.record).await;
                }
            }
            self.rollout = Some(rollout);
            self.finish_rollout_if_ready().await;
        }
        self.publish();
        for (id, slot) in to_stop {
            self.stop_after_drain(id, slot, false);
        }
    }

    /// Creates (if needed) and starts a replica's container, then probes it.
    async fn start_in(&mut self, replica: &mut Replica, record: &FunctionRecord) {
        let mounts = self
            .ctx
            .hardware
            .mount_of(&self.key.to_string())
            .map(|m| bramble_runtime::BindMount {
                source: m.host_path,
                destination: m.container_path.display().to_string(),
                read_only: m.read_only,
            })
            .into_iter()
            .collect();
        let spec = function::container_spec(
            &self.key,
            record,
            replica.index,
            &self.ctx.store,
            &self.ctx.defaults,
            mounts,
        );
        let runtime = &self.ctx.runtime;
        let mut attempt = 0;
        let result = loop {
            attempt += 1;
            if !replica.created {
                match runtime.create(&spec).await {
                    Ok(()) => replica.created = true,
                    Err(e) if e.is_already_exists() => replica.created = true,
                    Err(e) => break Err(e),
                }
            }
            match runtime.start(&replica.id).await {
                Err(RuntimeError::Stale { .. } | RuntimeError::NotFound { .. }) if attempt == 1 => {
                    // Created before a reboot (or removed behind our back): make it anew.
                    if let Err(e) = runtime.delete(&replica.id, Duration::ZERO).await {
                        break Err(e);
                    }
                    replica.created = false;
                }
                other => break other,
            }
        };
        match result {
            Ok(started) => {
                replica.ip = Some(started.ip);
                replica.slot = Some(Slot::new(SocketAddr::from((started.ip, 8080))));
                replica.pid = Some(started.pid);
                replica.phase = Phase::Starting;
                replica.started_at = Some(Instant::now());
                self.oom.remove(&replica.id);
                self.spawn_probe(&replica.id, started.ip);
            }
            Err(e) if e.is_unavailable() => {
                // containerd is down or restarting: retry soon, without growing the backoff
                // or calling the function crash-looping.
                tracing::warn!(function = %self.key, container = %replica.id, error = %e.chain(), "cannot start replica: containerd unavailable");
                self.message = Some(format!("cannot start: {}", e.chain()));
                self.unavailable_starts += 1;
                replica.phase = Phase::Backoff(Instant::now() + UNAVAILABLE_RETRY);
            }
            Err(e) => {
                tracing::warn!(function = %self.key, container = %replica.id, error = %e.chain(), "cannot start replica");
                self.message = Some(format!("cannot start: {}", e.chain()));
                replica.backoff();
            }
        }
    }

    fn spawn_probe(&self, container: &str, ip: Ipv4Addr) {
        let commands = self.commands.clone();
        let container = container.to_owned();
        let deadline = Instant::now() + self.ctx.ready_timeout;
        let runtime = self.ctx.runtime.clone();
        tokio::spawn(async move {
            let result = runtime
                .wait_ready(SocketAddr::from((ip, 8080)), deadline)
                .await;
            let _ = commands.send(Command::Probed { container, result });
        });
    }

    async fn probed(&mut self, container: &str, result: Result<Duration, Probe>) {
        let timeout = self.ctx.ready_timeout;
        let key = self.key.clone();
        let Some(replica) = self.find(container) else {
            return;
        };
        if replica.phase != Phase::Starting {
            return;
        }
        match result {
            Ok(took) => {
                tracing::info!(function = %key, container, ready_after = ?took, "replica ready");
                replica.phase = Phase::Ready;
                self.message = None;
            }
            Err(last) => {
                let detail = match last {
                    Probe::NotReady(Some(code)) => format!("its health check answered {code}"),
                    _ => "nothing answered on port 8080".to_owned(),
                };
                let why = format!("did not become ready within {timeout:?}: {detail}");
                tracing::warn!(function = %key, container, "{why}");
                replica.backoff();
                let id = replica.id.clone();
                self.message = Some(why);
                self.restarts += 1;
                self.last_exit = Some(ExitReason::Unhealthy);
                self.stop_in_background(id, Duration::ZERO);
            }
        }
        self.finish_rollout_if_ready().await;
        self.publish();
    }

    /// A task exited; `pid` is `None` when a resync found it stopped (no event).
    fn exited(&mut self, container: &str, pid: Option<u32>, exit_status: u32) {
        let key = self.key.clone();
        let relevant = self.find(container).is_some_and(|replica| {
            // Not the exit of an earlier task of this container, nor of one stopped on purpose
            // or already handled.
            let earlier_task = pid.is_some() && replica.pid.is_some() && pid != replica.pid;
            let handled = matches!(
                replica.phase,
                Phase::Stopped | Phase::Backoff(_) | Phase::Stopping
            );
            !earlier_task && !handled
        });
        if !relevant {
            return;
        }
        let oom = self.oom.remove(container);
        let Some(replica) = self.find(container) else {
            return;
        };
        let reason = ExitReason::of_exit(exit_status, oom);
        let ran = replica.started_at.map(|t| t.elapsed()).unwrap_or_default();
        tracing::warn!(function = %key, container, %reason, ?ran, "replica exited; restarting after backoff");
        if ran >= STABLE_RUN {
            replica.failures = 0;
        }
        replica.backoff();
        self.restarts += 1;
        self.last_exit = Some(reason);
        self.last_exit_of = Some(container.to_owned());
        self.publish();
    }

    /// containerd reports an OOM kill either before the task's exit or, under load, after it.
    /// Before: the exit is told as an OOM when it comes. After: the SIGKILL exit of that
    /// container just told is one, as long as its replica has not started again (an OOM kept
    /// for later would be pinned on the next task's exit instead).
    fn oom_killed(&mut self, container: String) {
        let exited_just_now = self.last_exit == Some(ExitReason::Signal(9))
            && self.last_exit_of.as_deref() == Some(container.as_str())
            && self
                .find(&container)
                .is_some_and(|r| matches!(r.phase, Phase::Backoff(_) | Phase::Stopped));
        if exited_just_now {
            self.last_exit = Some(ExitReason::Oom);
            self.publish();
        } else {
            self.oom.insert(container);
        }
    }

    /// Re-checks every task after an interruption of the event stream.
    async fn resync(&mut self) {
        let ids: Vec<String> = self
            .all_replicas()
            .filter(|r| r.is_live())
            .map(|r| r.id.clone())
            .collect();
        for id in ids {
            match self.ctx.runtime.get(&id).await {
                Ok(Some(c)) if c.task.is_some_and(|t| t.status == TaskStatus::Running) => {}
                Ok(Some(c)) => {
                    let status = c.task.and_then(|t| t.exit_status).unwrap_or(255);
                    self.exited(&id, None, status);
                }
                Ok(None) => {
                    if let Some(r) = self.find(&id) {
                        r.created = false;
                    }
                    self.exited(&id, None, 255);
                }
                Err(e) => {
                    tracing::debug!(container = %id, error = %e.chain(), "resync: cannot read task");
                }
            }
        }
    }

    /// Changes this function's record in the saved state, when `applies` holds for it.
    async fn save_record(
        &self,
        applies: impl FnOnce(&FunctionRecord) -> bool,
        change: impl FnOnce(&mut FunctionRecord),
    ) -> Result<(), StoreError> {
        let key = &self.key;
        self.ctx
            .store
            .update(|state| {
                if let Some(record) = state
                    .functions
                    .get_mut(&key.namespace)
                    .and_then(|f| f.get_mut(&key.name))
                    .filter(|r| applies(r))
                {
                    change(record);
                }
                Ok::<_, StoreError>(())
            })
            .await
    }

    /// Changes the saved record of this function if it is still generation `generation`: a
    /// newer update saved meanwhile is left alone (its own rollout settles it). A failed write
    /// is logged and shown in the status; the saved rollout then resumes after a restart.
    async fn persist_if_generation(
        &mut self,
        generation: u64,
        change: impl FnOnce(&mut FunctionRecord),
    ) {
        if let Err(e) = self
            .save_record(|r| r.generation == generation, change)
            .await
        {
            tracing::error!(function = %self.key, error = %e, "cannot save the state of the update");
            self.message = Some(format!("cannot save the state of the update: {e}"));
        }
    }

    /// Scales an idle function to zero when it asked for it.
    async fn check_idle(&mut self) {
        let Some(after) = function::scale_to_zero_after(&self.record.deployment) else {
            return;
        };
        if self.record.replicas == 0 || self.rollout.is_some() || self.in_flight() > 0 {
            return;
        }
        if self.route.idle_for() >= after {
            tracing::info!(function = %self.key, idle = ?self.route.idle_for(), "idle: scaling to zero");
            self.set_desired(0).await;
        }
    }

    /// Requests in flight to any replica, draining ones included.
    fn in_flight(&self) -> usize {
        self.all_replicas()
            .filter_map(|r| r.slot.as_ref())
            .map(|s| s.in_flight())
            .sum()
    }

    /// Persists and applies new desired replicas.
    async fn set_desired(&mut self, replicas: u64) {
        match self.save_record(|_| true, |r| r.replicas = replicas).await {
            Ok(()) => {
                self.record.replicas = replicas;
                // A request that woke us starts the idle clock afresh.
                self.route.touch();
            }
            Err(e) => {
                tracing::error!(function = %self.key, error = %e, "cannot persist the replica count");
                self.message = Some(format!("cannot persist the replica count: {e}"));
            }
        }
    }

    fn all_replicas(&self) -> impl Iterator<Item = &Replica> {
        self.replicas
            .iter()
            .chain(self.rollout.iter().flat_map(|r| r.replicas.iter()))
    }

    fn find(&mut self, id: &str) -> Option<&mut Replica> {
        let rollout = self
            .rollout
            .as_mut()
            .map(|r| r.replicas.iter_mut())
            .into_iter()
            .flatten();
        self.replicas.iter_mut().chain(rollout).find(|r| r.id == id)
    }

    /// Publishes ready addresses and the status.
    fn publish(&mut self) {
        // Outputs go to their safe state when the last replica stops, crashes or is removed.
        // A stopping replica still runs (finishing its requests) and may use its hardware.
        let live = self
            .all_replicas()
            .any(|r| r.is_live() || r.phase == Phase::Stopping);
        if std::mem::replace(&mut self.hardware_live, live) && !live {
            self.ctx.hardware.safe_state(&self.key.to_string());
        }
        let ready: Vec<Arc<Slot>> = self
            .replicas
            .iter()
            .filter(|r| r.phase == Phase::Ready)
            .filter_map(|r| r.slot.clone())
            .collect();
        let available = ready.len() as u64;
        self.route.publish(ready);
        let crash_looping = self
            .replicas
            .iter()
            .any(|r| matches!(r.phase, Phase::Backoff(_)) && r.failures >= CRASH_LOOP_FAILURES);
        let state = if self.rollout.is_some() {
            FunctionState::Updating
        } else if self.record.replicas == 0
            && self.replicas.iter().any(|r| r.phase == Phase::Stopping)
        {
            FunctionState::Stopping
        } else if self.record.replicas == 0 {
            FunctionState::ScaledToZero
        } else if available >= self.record.replicas {
            FunctionState::Ready
        } else if crash_looping {
            FunctionState::CrashLooping
        } else {
            FunctionState::Starting
        };
        let previous = self.status.send_replace(StatusView {
            desired: self.record.replicas,
            available,
            state,
            restarts: self.restarts,
            last_exit: self.last_exit,
            message: self.message.clone(),
            containers: self
                .replicas
                .iter()
                .filter(|r| r.is_live())
                .map(|r| r.id.clone())
                .collect(),
            unavailable_starts: self.unavailable_starts,
            replicas: self.all_replicas().map(Replica::view).collect(),
        });
        if *self.status.borrow() != previous {
            self.ctx.changes.send_replace(());
        }
    }
}
