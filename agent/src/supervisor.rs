//! One supervisor task per function converges its containers to the desired state.
//!
//! It owns the function's replicas and performs their runtime operations one command at a
//! time, so nothing races within a function. Readiness probes and graceful stops run in
//! spawned tasks and report back, so the supervisor never waits on them. What the gateway
//! needs per request — the ready addresses — is published in a [`Route`], read without
//! talking to the supervisor.
//!
//! - A replica serves traffic only once its health check passes.
//! - A replica that exits or is OOM-killed restarts after an exponential backoff
//!   (250 ms doubling up to 30 s; reset after 30 s of healthy running). The status keeps the
//!   restart count and the last reason: `oom`, `exit code N`, `signal N`, `unhealthy`.
//! - A start that fails because containerd cannot be reached (restarting, crashed) is retried
//!   every second, without backoff and without counting as a restart; a request waiting for
//!   the replica gets 503 with that reason at once instead of waiting out the ready timeout.
//! - Scaling to zero stops tasks but keeps containers and network, so the next request starts
//!   them again in tens of milliseconds.
//! - An update starts the new generation beside the old one, switches traffic when all new
//!   replicas are ready, then stops the old ones; if the new version never becomes ready it is
//!   removed and the old one keeps serving (rolled back).
//! - A rollout survives a crash of the daemon: the new record is saved together with the one
//!   that served before it ([`FunctionRecord::previous`]), in one atomic write. A supervisor
//!   started with such a record resumes the rollout: it adopts the old generation's containers
//!   and keeps them serving, adopts (or starts) the new generation's, switches when those are
//!   ready, and rolls back to the previous record when they never are. The saved rollout is
//!   settled (cleared, or replaced by the previous record) when the switch or the rollback
//!   happens.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bramble_runtime::{Container, Error as RuntimeError, Runtime, TaskStatus};
use tokio::sync::{mpsc, oneshot, watch};

use crate::function::{self, Defaults, FunctionKey};
use crate::probe::{self, Probe};
use crate::store::{FunctionRecord, Store, StoreError};

/// First restart delay; doubled per consecutive failure.
const BACKOFF_START: Duration = Duration::from_millis(250);
/// Longest restart delay.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A replica that ran this long before exiting starts its backoff afresh.
const STABLE_RUN: Duration = Duration::from_secs(30);
/// How often idle functions are considered for scale-to-zero.
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// Retry delay of a start that failed because containerd could not be reached: not the
/// function's fault, so neither a backoff step nor a restart.
const UNAVAILABLE_RETRY: Duration = Duration::from_secs(1);

/// Settings every supervisor shares.
#[derive(Debug)]
pub(crate) struct Context {
    pub runtime: Runtime,
    pub store: Arc<Store>,
    /// The hardware helper: functions with grants get its socket mounted, and their outputs
    /// go to their safe state whenever no replica runs.
    pub hardware: Arc<bramble_hardware::Hardware>,
    pub defaults: Defaults,
    pub ready_timeout: Duration,
    pub stop_grace: Duration,
}

/// What the gateway reads per request: the ready addresses of a function.
#[derive(Debug)]
pub(crate) struct Route {
    ready: std::sync::RwLock<Vec<SocketAddr>>,
    next: AtomicUsize,
    ready_count: watch::Sender<usize>,
    in_flight: Arc<InFlight>,
    last_used_ms: AtomicU64,
    timeout_ms: AtomicU64,
}

/// Requests in flight, in total and per replica address (a replica is drained before it is
/// stopped).
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    total: AtomicUsize,
    by_addr: std::sync::Mutex<std::collections::HashMap<SocketAddr, usize>>,
}

impl InFlight {
    fn to(&self, addr: SocketAddr) -> usize {
        self.by_addr
            .lock()
            .map_or(0, |m| m.get(&addr).copied().unwrap_or(0))
    }
}

impl Route {
    fn new(timeout: Duration) -> Self {
        Self {
            ready: std::sync::RwLock::new(Vec::new()),
            next: AtomicUsize::new(0),
            ready_count: watch::channel(0).0,
            in_flight: Arc::new(InFlight::default()),
            last_used_ms: AtomicU64::new(now_ms()),
            timeout_ms: AtomicU64::new(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)),
        }
    }

    /// A ready replica, round robin, with the request counted in flight to it; records the
    /// use. The count is taken while the ready list is read-locked, so once [`Route::publish`]
    /// returns, every request that picked a replica of the old list is counted and a drain
    /// cannot miss it.
    pub(crate) fn pick(&self) -> Option<(SocketAddr, InFlightGuard)> {
        self.last_used_ms.store(now_ms(), Ordering::Relaxed);
        let ready = self
            .ready
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if ready.is_empty() {
            return None;
        }
        let addr = ready[self.next.fetch_add(1, Ordering::Relaxed) % ready.len()];
        Some((addr, self.count_in_flight(addr)))
    }

    /// Waits until at least one replica is ready or `timeout` passes.
    pub(crate) async fn wait_ready(&self, timeout: Duration) -> bool {
        let mut receiver = self.ready_count.subscribe();
        tokio::time::timeout(timeout, receiver.wait_for(|n| *n > 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The function's upstream timeout.
    pub(crate) fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed))
    }

    /// Counts a request to `addr` in flight until the guard is dropped.
    fn count_in_flight(&self, addr: SocketAddr) -> InFlightGuard {
        self.in_flight.total.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut m) = self.in_flight.by_addr.lock() {
            *m.entry(addr).or_insert(0) += 1;
        }
        InFlightGuard {
            counts: Arc::clone(&self.in_flight),
            addr,
        }
    }

    fn publish(&self, addrs: Vec<SocketAddr>) {
        let count = addrs.len();
        *self
            .ready
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = addrs;
        self.ready_count.send_replace(count);
    }

    fn idle_for(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.last_used_ms.load(Ordering::Relaxed)))
    }
}

/// Keeps a request counted as in flight.
#[derive(Debug)]
pub(crate) struct InFlightGuard {
    counts: Arc<InFlight>,
    addr: SocketAddr,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.counts.total.fetch_sub(1, Ordering::AcqRel);
        if let Ok(mut m) = self.counts.by_addr.lock()
            && let Some(n) = m.get_mut(&self.addr)
        {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.addr);
            }
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A function's observable state, for status answers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct StatusView {
    pub desired: u64,
    pub available: u64,
    /// `ready`, `starting`, `scaled-to-zero`, `crash-looping`, `updating`, `deleting`.
    pub state: String,
    pub restarts: u64,
    pub last_exit: Option<String>,
    pub message: Option<String>,
    /// Container ids of the replicas in service (for usage and logs).
    pub containers: Vec<String>,
    /// Starts that failed because containerd could not be reached (a counter: a request
    /// waiting for a replica answers 503 at once when it grows).
    pub unavailable_starts: u64,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// No task (never started, stopped on purpose).
    Stopped,
    /// Task running, health check in progress.
    Starting,
    Ready,
    /// Waiting to restart after a failure.
    Backoff(Instant),
}

#[derive(Debug)]
struct Replica {
    index: u64,
    id: String,
    /// The container record exists in containerd.
    created: bool,
    phase: Phase,
    ip: Option<Ipv4Addr>,
    /// The pid of the task this replica runs now.
    pid: Option<u32>,
    started_at: Option<Instant>,
    /// Consecutive failed runs (drives the backoff).
    failures: u32,
}

impl Replica {
    fn new(key: &FunctionKey, generation: u64, index: u64) -> Self {
        Self {
            index,
            id: key.container_id(generation, index),
            created: false,
            phase: Phase::Stopped,
            ip: None,
            pid: None,
            started_at: None,
            failures: 0,
        }
    }
}

/// An update in progress; the supervisor's `record` is the one still serving meanwhile.
#[derive(Debug)]
struct Rollout {
    record: FunctionRecord,
    replicas: Vec<Replica>,
    deadline: Instant,
}

struct Supervisor {
    key: FunctionKey,
    ctx: Arc<Context>,
    record: FunctionRecord,
    replicas: Vec<Replica>,
    rollout: Option<Rollout>,
    route: Arc<Route>,
    status: watch::Sender<StatusView>,
    commands: mpsc::UnboundedSender<Command>,
    restarts: u64,
    /// See [`StatusView::unavailable_starts`].
    unavailable_starts: u64,
    last_exit: Option<String>,
    message: Option<String>,
    oom: std::collections::HashSet<String>,
    /// Whether a replica ran at the last publish (for safe-state transitions).
    hardware_live: std::cell::Cell<bool>,
}

/// Starts the supervisor of a function. `adopted` are its containers found in containerd.
/// A `record` with a pending rollout ([`FunctionRecord::previous`]) resumes that rollout.
pub(crate) fn spawn(
    ctx: Arc<Context>,
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
    let generation = record.generation;
    let replicas = record.replicas;
    let (serving, rollout, unsettled) = match record.previous {
        // The replicas wanted now apply to the old generation too while the rollout resumes.
        Some(previous) if replicas > 0 => {
            tracing::info!(function = %key, generation, "resuming an interrupted update");
            let rollout = Rollout {
                record: FunctionRecord {
                    previous: None,
                    ..record
                },
                replicas: Vec::new(),
                deadline: Instant::now() + ctx.ready_timeout,
            };
            let serving = FunctionRecord {
                replicas,
                ..previous.settled()
            };
            (serving, Some(rollout), false)
        }
        // Scaled to zero meanwhile: nothing serves to protect; the new record applies.
        previous => {
            let settled = FunctionRecord {
                previous: None,
                ..record
            };
            (settled, None, previous.is_some())
        }
    };
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
        message: None,
        oom: std::collections::HashSet::new(),
        hardware_live: std::cell::Cell::new(false),
        record: serving,
    };
    supervisor.adopt(adopted);
    if unsettled {
        supervisor.persist_if_generation(generation, |r| r.previous = None);
    }
    tokio::spawn(supervisor.run(receiver));
    Handle {
        route,
        commands,
        status: status_rx,
    }
}

impl Supervisor {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        self.reconcile().await;
        loop {
            let wake_at = self.next_deadline();
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Delete(done)) => {
                        self.delete_everything().await;
                        let _ = done.send(());
                        return;
                    }
                    Some(Command::Shutdown(done)) => {
                        self.stop_everything().await;
                        let _ = done.send(());
                        return;
                    }
                    Some(command) => self.handle(command).await,
                    None => return,
                },
                () = tokio::time::sleep_until(wake_at.into()) => {}
            }
            self.check_idle().await;
            self.check_rollout_deadline().await;
            self.reconcile().await;
        }
    }

    /// The next moment something is due: a backoff ending, a rollout deadline, an idle check.
    fn next_deadline(&self) -> Instant {
        let mut next = Instant::now() + IDLE_CHECK;
        let replicas = self
            .replicas
            .iter()
            .chain(self.rollout.iter().flat_map(|r| r.replicas.iter()));
        for r in replicas {
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
                    self.set_desired(1);
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
            Command::Oom { container } => {
                self.oom.insert(container);
            }
            Command::Resync => self.resync().await,
            Command::Probed { container, result } => self.probed(&container, result),
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
            if !(of_rollout || generation == self.record.generation)
                || index >= function::MAX_REPLICAS
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
            for index in 0..rollout.record.replicas.max(1) {
                if !new_generation.iter().any(|r| r.index == index) {
                    new_generation.push(Replica::new(&self.key, rollout.record.generation, index));
                }
            }
            new_generation.sort_by_key(|r| r.index);
            rollout.replicas = new_generation;
            let timeout = function::timeout(&rollout.record.deployment, &self.ctx.defaults);
            self.route.timeout_ms.store(
                u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
        }
    }

    /// Brings the replicas of the current generation (and of a rollout) to what is desired.
    async fn reconcile(&mut self) {
        let desired = self.record.replicas;
        for index in 0..desired {
            if !self.replicas.iter().any(|r| r.index == index) {
                self.replicas
                    .push(Replica::new(&self.key, self.record.generation, index));
            }
        }
        self.replicas.sort_by_key(|r| r.index);
        let now = Instant::now();
        let record = self.record.clone();
        let mut replicas = std::mem::take(&mut self.replicas);
        // Stopped only once they are out of the route: a drain that started before the
        // publish could miss a request picking the replica meanwhile, which the stop would
        // then refuse.
        let mut to_stop = Vec::new();
        for replica in &mut replicas {
            let wanted = replica.index < desired;
            match replica.phase {
                Phase::Stopped if wanted => self.start_in(replica, &record).await,
                Phase::Backoff(at) if wanted && at <= now => self.start_in(replica, &record).await,
                Phase::Starting | Phase::Ready if !wanted => {
                    replica.phase = Phase::Stopped;
                    if let Some(ip) = replica.ip {
                        to_stop.push((replica.id.clone(), SocketAddr::from((ip, 8080))));
                    }
                }
                Phase::Backoff(_) if !wanted => replica.phase = Phase::Stopped,
                _ => {}
            }
        }
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
            self.finish_rollout_if_ready();
        }
        self.publish();
        for (id, addr) in to_stop {
            self.stop_after_drain(id, addr, false);
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
                    Ok(_) => replica.created = true,
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
                Self::backoff(replica);
            }
        }
    }

    fn spawn_probe(&self, container: &str, ip: Ipv4Addr) {
        let commands = self.commands.clone();
        let container = container.to_owned();
        let deadline = Instant::now() + self.ctx.ready_timeout;
        tokio::spawn(async move {
            let result = probe::wait_ready(SocketAddr::from((ip, 8080)), deadline).await;
            let _ = commands.send(Command::Probed { container, result });
        });
    }

    fn probed(&mut self, container: &str, result: Result<Duration, Probe>) {
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
                Self::backoff(replica);
                let id = replica.id.clone();
                self.message = Some(why);
                self.restarts += 1;
                self.last_exit = Some("unhealthy".into());
                self.stop_in_background(id, Duration::ZERO);
            }
        }
        self.finish_rollout_if_ready();
        self.publish();
    }

    /// A task exited; `pid` is `None` when a resync found it stopped (no event).
    fn exited(&mut self, container: &str, pid: Option<u32>, exit_status: u32) {
        let key = self.key.clone();
        let relevant = self.find(container).is_some_and(|replica| {
            // Not the exit of an earlier task of this container, nor of one stopped on purpose
            // or already handled.
            let earlier_task = pid.is_some() && replica.pid.is_some() && pid != replica.pid;
            let handled = matches!(replica.phase, Phase::Stopped | Phase::Backoff(_));
            !earlier_task && !handled
        });
        if !relevant {
            return;
        }
        let oom = self.oom.remove(container);
        let Some(replica) = self.find(container) else {
            return;
        };
        let reason = match exit_status {
            _ if oom => "oom".to_owned(),
            s if s > 128 => format!("signal {}", s - 128),
            s => format!("exit code {s}"),
        };
        let ran = replica.started_at.map(|t| t.elapsed()).unwrap_or_default();
        tracing::warn!(function = %key, container, reason, ?ran, "replica exited; restarting after backoff");
        if ran >= STABLE_RUN {
            replica.failures = 0;
        }
        Self::backoff(replica);
        self.restarts += 1;
        self.last_exit = Some(reason);
        self.publish();
    }

    /// Marks a failed run and schedules the next start.
    fn backoff(replica: &mut Replica) {
        let delay = BACKOFF_START
            .saturating_mul(1 << replica.failures.min(7))
            .min(BACKOFF_MAX);
        replica.failures = replica.failures.saturating_add(1);
        replica.phase = Phase::Backoff(Instant::now() + delay);
    }

    /// Re-checks every task after an interruption of the event stream.
    async fn resync(&mut self) {
        let ids: Vec<String> = self
            .all_replicas()
            .filter(|r| matches!(r.phase, Phase::Starting | Phase::Ready))
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

    fn stop_in_background(&self, id: String, grace: Duration) {
        let runtime = self.ctx.runtime.clone();
        tokio::spawn(async move {
            if let Err(e) = runtime.stop(&id, grace).await {
                tracing::warn!(container = %id, error = %e.chain(), "stopping failed");
            }
        });
    }

    fn remove_in_background(&self, id: String) {
        let runtime = self.ctx.runtime.clone();
        let grace = self.ctx.stop_grace;
        tokio::spawn(async move {
            if let Err(e) = runtime.delete(&id, grace).await {
                tracing::warn!(container = %id, error = %e.chain(), "removing an old container failed");
            }
        });
    }

    /// Waits until no request is in flight to `addr` (bounded by the function's timeout),
    /// then stops the container with its grace period — and removes it with `remove`.
    fn stop_after_drain(&self, id: String, addr: SocketAddr, remove: bool) {
        let runtime = self.ctx.runtime.clone();
        let grace = self.ctx.stop_grace;
        let in_flight = Arc::clone(&self.route.in_flight);
        let drain_for = self.route.timeout();
        tokio::spawn(async move {
            let deadline = Instant::now() + drain_for;
            while in_flight.to(addr) > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let result = if remove {
                runtime.delete(&id, grace).await
            } else {
                runtime.stop(&id, grace).await.map(|_| ())
            };
            if let Err(e) = result {
                tracing::warn!(container = %id, error = %e.chain(), "stopping a drained replica failed");
            }
        });
    }

    /// `saved` is the record as the provider saved it, with the rollback target it chose.
    async fn begin_update(&mut self, saved: FunctionRecord) {
        let record = saved.settled();
        // A rollout still in progress is superseded by the newer one.
        if let Some(old) = self.rollout.take() {
            for r in old.replicas {
                self.remove_in_background(r.id);
            }
        }
        self.route.timeout_ms.store(
            u64::try_from(function::timeout(&record.deployment, &self.ctx.defaults).as_millis())
                .unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        if self.replicas.iter().all(|r| r.phase != Phase::Ready) {
            // Nothing serving (scaled to zero, or broken): nothing to protect; replace at once.
            self.record = record;
            for r in std::mem::take(&mut self.replicas) {
                self.remove_in_background(r.id);
            }
            self.message = None;
            self.persist_if_generation(self.record.generation, |r| r.previous = None);
            return;
        }
        // Keep the old generation serving under its own record until the new one is ready. The
        // saved rollback target must be that record: the provider's guess is wrong when a
        // rollout finished between its write and this command.
        let serving = self.record.settled();
        let guessed = saved.previous.as_deref().is_some_and(|p| {
            p.generation == serving.generation && p.deployment == serving.deployment
        });
        if !guessed {
            self.persist_if_generation(record.generation, |r| {
                r.previous = Some(Box::new(serving));
            });
        }
        let count = record.replicas.max(1);
        let replicas = (0..count)
            .map(|i| Replica::new(&self.key, record.generation, i))
            .collect();
        tracing::info!(function = %self.key, generation = record.generation, "rolling out an update");
        self.rollout = Some(Rollout {
            record,
            replicas,
            deadline: Instant::now() + self.ctx.ready_timeout,
        });
    }

    /// Changes this function's record in the saved state, when `applies` holds for it.
    fn save_record(
        &self,
        applies: impl FnOnce(&FunctionRecord) -> bool,
        change: impl FnOnce(&mut FunctionRecord),
    ) -> Result<(), StoreError> {
        let key = &self.key;
        self.ctx.store.update(|state| {
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
    }

    /// Changes the saved record of this function if it is still generation `generation`: a
    /// newer update saved meanwhile is left alone (its own rollout settles it). A failed write
    /// is logged and shown in the status; the saved rollout then resumes after a restart.
    fn persist_if_generation(&mut self, generation: u64, change: impl FnOnce(&mut FunctionRecord)) {
        if let Err(e) = self.save_record(|r| r.generation == generation, change) {
            tracing::error!(function = %self.key, error = %e, "cannot save the state of the update");
            self.message = Some(format!("cannot save the state of the update: {e}"));
        }
    }

    /// Switches traffic to the new generation once all its replicas are ready.
    fn finish_rollout_if_ready(&mut self) {
        let ready = self
            .rollout
            .as_ref()
            .is_some_and(|r| r.replicas.iter().all(|x| x.phase == Phase::Ready));
        if !ready {
            return;
        }
        let Some(rollout) = self.rollout.take() else {
            return;
        };
        tracing::info!(function = %self.key, generation = rollout.record.generation, "update ready; switching traffic");
        let old = std::mem::replace(&mut self.replicas, rollout.replicas);
        self.record = rollout.record;
        self.message = None;
        // Publish first: new requests go to the new replicas; the old ones finish what they
        // are serving, then stop with their grace period.
        self.publish();
        self.persist_if_generation(self.record.generation, |r| r.previous = None);
        for r in old {
            match r.ip {
                Some(ip) => self.stop_after_drain(r.id, SocketAddr::from((ip, 8080)), true),
                None => self.remove_in_background(r.id),
            }
        }
    }

    /// Rolls an update back when its deadline passed or a new replica keeps failing.
    async fn check_rollout_deadline(&mut self) {
        let failed = self.rollout.as_ref().is_some_and(|r| {
            Instant::now() >= r.deadline || r.replicas.iter().any(|x| x.failures >= 3)
        });
        if !failed {
            return;
        }
        let Some(rollout) = self.rollout.take() else {
            return;
        };
        let why = format!(
            "update to {} failed: the new version did not become ready within {:?}{}; rolled back, the previous version keeps serving",
            rollout.record.deployment.image,
            self.ctx.ready_timeout,
            self.message
                .as_ref()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default()
        );
        tracing::warn!(function = %self.key, "{why}");
        for r in rollout.replicas {
            self.remove_in_background(r.id);
        }
        // The record that keeps serving is saved again, with the replicas wanted now.
        let previous = self.record.settled();
        self.persist_if_generation(rollout.record.generation, |r| {
            *r = FunctionRecord {
                replicas: r.replicas,
                ..previous
            };
        });
        self.message = Some(why);
    }

    /// Scales an idle function to zero when it asked for it.
    async fn check_idle(&mut self) {
        let Some(after) = function::scale_to_zero_after(&self.record.deployment) else {
            return;
        };
        if self.record.replicas == 0
            || self.rollout.is_some()
            || self.route.in_flight.total.load(Ordering::Acquire) > 0
        {
            return;
        }
        if self.route.idle_for() >= after {
            tracing::info!(function = %self.key, idle = ?self.route.idle_for(), "idle: scaling to zero");
            self.set_desired(0);
        }
    }

    /// Persists and applies new desired replicas.
    fn set_desired(&mut self, replicas: u64) {
        match self.save_record(|_| true, |r| r.replicas = replicas) {
            Ok(()) => {
                self.record.replicas = replicas;
                // A request that woke us starts the idle clock afresh.
                self.route.last_used_ms.store(now_ms(), Ordering::Relaxed);
            }
            Err(e) => {
                tracing::error!(function = %self.key, error = %e, "cannot persist the replica count");
                self.message = Some(format!("cannot persist the replica count: {e}"));
            }
        }
    }

    async fn stop_everything(&mut self) {
        self.route.publish(Vec::new());
        let ids: Vec<String> = self.all_replicas().map(|r| r.id.clone()).collect();
        let grace = self.ctx.stop_grace;
        let runtime = &self.ctx.runtime;
        futures::future::join_all(ids.iter().map(|id| async move {
            if let Err(e) = runtime.stop(id, grace).await {
                tracing::warn!(container = %id, error = %e.chain(), "stopping failed");
            }
        }))
        .await;
    }

    async fn delete_everything(&mut self) {
        self.route.publish(Vec::new());
        let ids: Vec<String> = self.all_replicas().map(|r| r.id.clone()).collect();
        let grace = self.ctx.stop_grace;
        let runtime = &self.ctx.runtime;
        futures::future::join_all(ids.iter().map(|id| async move {
            if let Err(e) = runtime.delete(id, grace).await {
                tracing::warn!(container = %id, error = %e.chain(), "deleting failed");
            }
        }))
        .await;
        runtime.logs().forget(&self.key.to_string());
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
    fn publish(&self) {
        // Outputs go to their safe state when the last replica stops, crashes or is removed.
        let live = self
            .all_replicas()
            .any(|r| matches!(r.phase, Phase::Starting | Phase::Ready));
        if self.hardware_live.replace(live) && !live {
            self.ctx.hardware.safe_state(&self.key.to_string());
        }
        let ready: Vec<&Replica> = self
            .replicas
            .iter()
            .filter(|r| r.phase == Phase::Ready && r.index < self.record.replicas)
            .collect();
        self.route.publish(
            ready
                .iter()
                .filter_map(|r| r.ip.map(|ip| SocketAddr::from((ip, 8080))))
                .collect(),
        );
        let crash_looping = self
            .replicas
            .iter()
            .any(|r| matches!(r.phase, Phase::Backoff(_)) && r.failures >= 3);
        let available = ready.len() as u64;
        let state = if self.rollout.is_some() {
            "updating"
        } else if self.record.replicas == 0 {
            "scaled-to-zero"
        } else if available >= self.record.replicas {
            "ready"
        } else if crash_looping {
            "crash-looping"
        } else {
            "starting"
        };
        self.status.send_replace(StatusView {
            desired: self.record.replicas,
            available,
            state: state.to_owned(),
            restarts: self.restarts,
            last_exit: self.last_exit.clone(),
            message: self.message.clone(),
            containers: self
                .replicas
                .iter()
                .filter(|r| matches!(r.phase, Phase::Starting | Phase::Ready))
                .map(|r| r.id.clone())
                .collect(),
            unavailable_starts: self.unavailable_starts,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let key = FunctionKey::new("f", "ns");
        let mut r = Replica::new(&key, 1, 0);
        let mut delays = Vec::new();
        for _ in 0..10 {
            let before = Instant::now();
            Supervisor::backoff(&mut r);
            let Phase::Backoff(at) = r.phase else {
                panic!("not in backoff")
            };
            delays.push(at.duration_since(before));
        }
        assert!(delays[0] >= Duration::from_millis(250) && delays[0] < Duration::from_millis(400));
        assert!(delays[1] >= Duration::from_millis(500));
        assert!(delays[3] >= Duration::from_secs(2));
        assert!(
            delays
                .iter()
                .all(|d| *d <= BACKOFF_MAX + Duration::from_millis(50))
        );
        assert!(delays[9] >= BACKOFF_MAX - Duration::from_millis(50));
    }

    #[tokio::test]
    async fn routes_round_robin_and_wake_waiters() {
        let route = Arc::new(Route::new(Duration::from_secs(60)));
        assert!(route.pick().is_none());
        let waiter = {
            let route = Arc::clone(&route);
            tokio::spawn(async move { route.wait_ready(Duration::from_secs(5)).await })
        };
        let a = SocketAddr::from(([10, 0, 0, 2], 8080));
        let b = SocketAddr::from(([10, 0, 0, 3], 8080));
        route.publish(vec![a, b]);
        assert!(waiter.await.unwrap());
        let picks: Vec<_> = (0..4).map(|_| route.pick().unwrap().0).collect();
        assert_eq!(picks.iter().filter(|p| **p == a).count(), 2);
        assert!(
            !Route::new(Duration::from_secs(1))
                .wait_ready(Duration::from_millis(20))
                .await
        );
        let guard = route.count_in_flight(a);
        assert_eq!(
            (
                route.in_flight.total.load(Ordering::Acquire),
                route.in_flight.to(a),
                route.in_flight.to(b)
            ),
            (1, 1, 0)
        );
        drop(guard);
        assert_eq!(
            (
                route.in_flight.total.load(Ordering::Acquire),
                route.in_flight.to(a)
            ),
            (0, 0)
        );
    }
}
