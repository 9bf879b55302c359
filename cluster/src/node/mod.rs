//! The cluster side of a node: what `bramble up` runs when the board is in a cluster.
//!
//! [`ClusterNode::start`] reads the board's cluster state ([`files`]), starts its nats-server
//! (owned by one task, [`server`]), and returns at once: the rest comes up in the background,
//! because after a power cut of the whole shelf the boards come back one by one and a board
//! must serve its own functions before the cluster has a quorum again. Once the cluster's
//! buckets can be opened ([`ClusterNode::ready`]), the board starts its membership (record and
//! heartbeats), contends for the placer's lease, and follows the JetStream layout
//! ([`layout`]): which boards carry JetStream, the routes, the replicas, a migration on the
//! first growth, peers to remove.
//!
//! The join handshake is [`join`] (the joining side) and [`answer`] (the answering side);
//! [`leave`] moves a board out of its cluster or forgets a dead one; [`status`] is what
//! `bramble cluster status` shows; [`routes`] are the HTTP routes the gateway serves for all of
//! this.

pub mod answer;
pub mod calls;
pub mod doctor;
pub mod files;
pub mod images;
pub mod init;
pub mod join;
pub mod layout;
pub mod leave;
pub mod placer;
pub mod routes;
pub mod runner;
pub mod server;
pub mod status;
pub mod tls;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream;
use tokio::sync::watch;

use crate::desired::{DesiredConfig, DesiredStore};
use crate::engine::{EngineConfig, EngineError, JetStreamConfig, NatsServer, RouteConfig};
use crate::identity::IdentityError;
use crate::kv::{Bucket, BucketConfig, KvError};
use crate::lease::{Lease, LeaseConfig};
use crate::membership::{
    BOARDS_BUCKET, BoardInfo, HardwareSummary, Membership, MembershipConfig, MemoryBudget, View,
};
use crate::placement::Plan;
use crate::settings::ClusterConfig;

use files::ClusterFiles;
use join::ApiLogin;
use server::ServerHandle;

/// The bucket of cluster-wide records (the JetStream layout).
pub const CLUSTER_BUCKET: &str = "cluster";
/// The lease of the board that places functions and keeps the layout.
pub const PLACER_LEASE: &str = "placer";

/// What the node knows about its board that the cluster needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BoardFacts {
    /// Architecture as OpenFaaS constraints name it: `arm64`, `arm`, `amd64`.
    pub arch: String,
    /// The platform its runtime runs images for (`linux/arm64`).
    pub platform: String,
    /// Memory functions may reserve, bytes (`None`: no budget).
    pub memory_budget: Option<u64>,
    /// Hardware it lends to functions.
    pub hardware: HardwareSummary,
    /// What a function without a memory limit reserves (the node default), bytes.
    pub default_memory: Option<u64>,
}

/// How a node runs in its cluster.
#[derive(Clone, Debug)]
pub struct NodeSettings {
    /// bramble's state directory.
    pub state_dir: PathBuf,
    /// The `[cluster]` section.
    pub config: ClusterConfig,
    /// The board's API credentials (the cluster's, once joined).
    pub api: ApiLogin,
    /// The board's facts.
    pub facts: BoardFacts,
    /// The hardware a deployment's annotations grant (with what its triggers imply), for
    /// placing.
    pub hardware_of: crate::placement::HardwareOf,
}

impl NodeSettings {
    /// How this board reads a deployment for placing.
    pub fn reading(&self) -> crate::placement::Reading {
        crate::placement::Reading {
            default_memory: self.facts.default_memory,
            hardware_of: self.hardware_of,
        }
    }
}

/// Why the cluster side of a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The cluster state on disk cannot be read.
    #[error("reading the board's cluster state")]
    Files(#[source] IdentityError),
    /// The TLS files or configuration cannot be made.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// nats-server did not start.
    #[error("starting nats-server")]
    Engine(#[source] EngineError),
    /// The HTTP client for other boards cannot be made.
    #[error("making the client for other boards")]
    Client(#[source] reqwest::Error),
}

/// A request the cluster side refuses: an HTTP status and the reason, for the operator.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// 400, 403, 404, 409, 500 or 503.
    pub status: u16,
    /// Why.
    pub message: String,
}

impl Refusal {
    /// A refusal with `status`.
    pub fn new(status: u16, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
        }
    }
}

/// The buckets and the tasks that need them, once the cluster answers.
pub struct Parts {
    /// Board records.
    pub boards: Bucket,
    /// Cluster-wide records (the layout).
    pub cluster: Bucket,
    /// This board's membership.
    pub membership: Membership,
    /// The placer's lease.
    pub lease: Lease,
    /// The cluster's functions, namespaces and secrets.
    pub desired: DesiredStore,
    /// The plan in force (`None` until one was read).
    pub plan: watch::Receiver<Option<Arc<Plan>>>,
    /// The work queue of async calls.
    pub calls: crate::queue::CallQueue,
    /// Calls finished (see [`calls`]).
    pub done: Bucket,
}

/// The cluster side of a running node.
pub struct ClusterNode {
    settings: NodeSettings,
    files: Mutex<ClusterFiles>,
    server: ServerHandle,
    js: jetstream::Context,
    parts: watch::Sender<Option<Arc<Parts>>>,
    /// This board's record as it should be.
    me: watch::Sender<BoardInfo>,
    /// Set when the node must restart `bramble up` (it left its cluster).
    restart: watch::Sender<bool>,
    /// Set when the cluster no longer knows this board (it was removed while away).
    removed: watch::Sender<bool>,
    /// True while the board leaves its cluster (nothing new is placed on it).
    leaving: std::sync::atomic::AtomicBool,
    /// How many async calls this board accepted are not done yet (set by [`calls::serve`]).
    kept_calls: std::sync::OnceLock<KeptCalls>,
    /// How many calls from the cluster's queue this board is running now.
    running_calls: watch::Sender<usize>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// Counts the async calls a board accepted that are not done yet.
pub type KeptCalls =
    Arc<dyn Fn() -> futures::future::BoxFuture<'static, std::io::Result<usize>> + Send + Sync>;

impl Drop for ClusterNode {
    fn drop(&mut self) {
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            task.abort();
        }
    }
}

/// `min(3, JetStream boards)`: the replicas of every stream.
pub fn replicas_for(jetstream_boards: usize) -> usize {
    jetstream_boards.clamp(1, 3)
}

/// The nats-server configuration of a board from its files.
pub fn engine_config(
    files: &ClusterFiles,
    settings: &NodeSettings,
) -> Result<EngineConfig, NodeError> {
    let dir = settings.state_dir.join("cluster").join("tls");
    let route_tls = files
        .board
        .write_tls_files(&files.cluster, &dir)
        .map_err(NodeError::Files)?;
    let mut config = EngineConfig::new(
        &files.node.board,
        &settings.state_dir,
        files.board.client.clone(),
        files.board.system.clone(),
    );
    if std::env::var_os(crate::engine::config::BINARY_ENV).is_none() {
        config.binary.clone_from(&settings.config.nats_server);
    }
    config.jetstream = files.node.jetstream.then(JetStreamConfig::default);
    config.cluster = files.node.clustered.then(|| RouteConfig {
        name: files.cluster.cluster.clone(),
        listen: files.node.route_listen(),
        routes: files.node.routes.clone(),
        credentials: files.cluster.route.clone(),
        tls: route_tls,
    });
    Ok(config)
}

impl ClusterNode {
    /// Starts nats-server from the board's cluster state and brings the rest up in the
    /// background (see the module docs).
    pub async fn start(settings: NodeSettings) -> Result<Arc<ClusterNode>, NodeError> {
        let state_dir = settings.state_dir.clone();
        let files = tokio::task::spawn_blocking(move || ClusterFiles::load(&state_dir))
            .await
            .map_err(|e| NodeError::Files(io_error(e)))?
            .map_err(NodeError::Files)?;
        let config = {
            let (files, settings) = (files.clone(), settings.clone());
            tokio::task::spawn_blocking(move || engine_config(&files, &settings))
                .await
                .map_err(|e| NodeError::Files(io_error(e)))??
        };
        let pending = crate::migrate::snapshot_path(&config).exists();
        let server = NatsServer::start(config).await.map_err(NodeError::Engine)?;
        let client = server.connect().await.map_err(NodeError::Engine)?;
        let nats_version = server.version().to_string();
        let replicas = replicas_for(files.node.routes.len());
        let server = ServerHandle::start(server, pending, replicas);
        let me = board_info(&files, &settings, nats_version);
        let node = Arc::new(ClusterNode {
            settings,
            files: Mutex::new(files),
            server,
            js: jetstream::new(client),
            parts: watch::Sender::new(None),
            me: watch::Sender::new(me),
            restart: watch::Sender::new(false),
            removed: watch::Sender::new(false),
            leaving: std::sync::atomic::AtomicBool::new(false),
            kept_calls: std::sync::OnceLock::new(),
            running_calls: watch::Sender::new(0),
            tasks: Mutex::new(Vec::new()),
        });
        let bring_up = tokio::spawn(Arc::clone(&node).bring_up());
        node.keep(bring_up);
        Ok(node)
    }

    /// How many async calls this board accepted are not done yet; `None` before the board's
    /// calls are served.
    pub(crate) async fn kept_calls(&self) -> Option<std::io::Result<usize>> {
        let count = self.kept_calls.get()?;
        Some(count().await)
    }

    pub(crate) fn keep(&self, task: tokio::task::JoinHandle<()>) {
        self.tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(task);
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &NodeSettings {
        &self.settings
    }

    /// A copy of the board's files as they are now.
    pub fn files(&self) -> ClusterFiles {
        self.files
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn update_node_file(&self, change: impl FnOnce(&mut files::NodeFile)) -> ClusterFiles {
        let mut files = self.files.lock().unwrap_or_else(PoisonError::into_inner);
        change(&mut files.node);
        files.clone()
    }

    /// The board's name.
    pub fn board(&self) -> String {
        self.me.borrow().name.clone()
    }

    /// The cluster's name.
    pub fn cluster(&self) -> String {
        self.files().cluster.cluster
    }

    /// The server task.
    pub fn server(&self) -> &ServerHandle {
        &self.server
    }

    /// The JetStream context of the board's client.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// A new client of the system account on this board's nats-server (peer removal and
    /// leader step-downs are system-account APIs).
    pub(crate) async fn system_client(
        &self,
    ) -> Result<async_nats::Client, crate::engine::EngineError> {
        let files = self.files();
        let config = crate::engine::EngineConfig::new(
            &files.node.board,
            &self.settings().state_dir,
            files.board.client.clone(),
            files.board.system.clone(),
        );
        crate::engine::connect_as(&config, &config.system).await
    }

    /// The buckets and membership, once the cluster answered (`None` before).
    pub fn parts(&self) -> Option<Arc<Parts>> {
        self.parts.borrow().clone()
    }

    /// Waits until the cluster's buckets are open, at most `timeout`.
    pub async fn ready(&self, timeout: Duration) -> Option<Arc<Parts>> {
        let mut parts = self.parts.subscribe();
        let ready = tokio::time::timeout(timeout, parts.wait_for(Option::is_some)).await;
        match ready {
            Ok(Ok(parts)) => parts.clone(),
            _ => None,
        }
    }

    /// The membership view (empty until the node is up).
    pub fn view(&self) -> Arc<View> {
        self.parts()
            .map(|p| p.membership.watch().borrow().clone())
            .unwrap_or_default()
    }

    /// This board's record as it should be; `changed()` wakes on every change.
    pub fn me(&self) -> watch::Receiver<BoardInfo> {
        self.me.subscribe()
    }

    /// Changes this board's record (memory in use, functions running); written to the
    /// cluster when it differs.
    pub fn update_me(&self, change: impl FnOnce(&mut BoardInfo)) {
        self.me.send_if_modified(|me| {
            let before = me.clone();
            change(me);
            *me != before
        });
    }

    /// Resolves when the node must restart (it left its cluster).
    pub fn restart_requested(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut restart = self.restart.subscribe();
        async move {
            let _ = restart.wait_for(|r| *r).await;
        }
    }

    /// True when the cluster no longer knows this board (it was removed while it was away).
    pub fn was_removed(&self) -> bool {
        *self.removed.borrow()
    }

    /// Stops the board's part of the cluster: heartbeats, lease, and its nats-server.
    pub async fn stop(&self) {
        self.parts.send_replace(None);
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            task.abort();
        }
        self.server.stop().await;
    }

    /// Opens the buckets (retrying until the cluster answers), then starts membership, the
    /// lease and the layout tasks.
    async fn bring_up(self: Arc<Self>) {
        let started = std::time::Instant::now();
        let mut reported = None::<std::time::Instant>;
        let mut patience = Patience::default();
        let buckets = loop {
            let attempt = patience
                .ask(
                    &format!("{BOARDS_BUCKET}/{CLUSTER_BUCKET}"),
                    Box::pin(self.open_buckets()),
                )
                .await;
            match attempt {
                Ok(buckets) => break buckets,
                Err(e) => {
                    tracing::debug!(error = %bramble_base::error_chain(&e), waited = ?started.elapsed(), "opening the cluster's buckets");
                    if reported.is_none_or(|at| at.elapsed() > Duration::from_secs(30)) {
                        tracing::warn!(error = %bramble_base::error_chain(&e), waited = ?started.elapsed(), "the cluster does not answer yet; functions on this board keep running");
                        reported = Some(std::time::Instant::now());
                    }
                    patience.pause(&e).await;
                }
            }
        };
        let (boards, cluster) = buckets;
        let me = self.me.borrow().clone();
        // A board removed while it was away finds neither its record nor its place; a board
        // that has just joined may not find its record yet.
        let joining = self.files().node.joining;
        let known = loop {
            match patience
                .ask(BOARDS_BUCKET, boards.entry_from_leader(&me.name))
                .await
            {
                Ok(Some(_)) => break true,
                Ok(None) if joining && started.elapsed() < JOINING_PATIENCE => {
                    tracing::debug!(waited = ?started.elapsed(), "this board's record is not in the cluster yet (its data is still being moved in?)");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Ok(None) => break false,
                Err(e) => {
                    tracing::debug!(error = %bramble_base::error_chain(&e), waited = ?started.elapsed(), "reading this board's record");
                    patience.pause(&e).await;
                }
            }
        };
        if known && joining {
            let files = self.update_node_file(|n| n.joining = false);
            let state_dir = self.settings.state_dir.clone();
            let saved = tokio::task::spawn_blocking(move || files.node.save(&state_dir)).await;
            if !matches!(saved, Ok(Ok(()))) {
                tracing::warn!(
                    "cannot note in node.json that this board found its record; it will wait for it again at its next start"
                );
            }
        }
        if !known {
            tracing::error!(board = %me.name, cluster = %self.cluster(), "this board was removed from its cluster while it was away: run `bramble cluster leave` to return it to single-board mode");
            self.removed.send_replace(true);
            return;
        }
        let membership = loop {
            let config = MembershipConfig {
                dead_after: self.settings.config.dead_after,
                ..MembershipConfig::default()
            };
            let client = self.js.client();
            match Membership::start(client, boards.clone(), &self.cluster(), me.clone(), config)
                .await
            {
                Ok(m) => break m,
                Err(e) => {
                    tracing::warn!(error = %bramble_base::error_chain(&e), "starting membership");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let leases = loop {
            match Bucket::open_or_create(
                &self.js,
                &BucketConfig::new(crate::lease::LEASES_BUCKET, self.replicas_now()),
            )
            .await
            {
                Ok(b) => break b,
                Err(e) => {
                    tracing::debug!(error = %bramble_base::error_chain(&e), "opening the leases");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let lease_config = LeaseConfig {
            dead_after: self.settings.config.dead_after,
            ..LeaseConfig::default()
        };
        let lease = match Lease::start(leases, PLACER_LEASE, &me.name, lease_config) {
            Ok(lease) => lease,
            Err(e) => {
                tracing::error!(error = %bramble_base::error_chain(&e), "cannot contend for the placer's lease");
                return;
            }
        };
        let desired = loop {
            let config =
                DesiredConfig::new(&me.name, self.files().node.founder, self.replicas_now());
            let seal = self.files().cluster.seal_key.clone();
            match DesiredStore::open(&self.js, config, seal).await {
                Ok(store) => break store.with_membership(membership.watch()),
                Err(e) => {
                    tracing::debug!(error = %bramble_base::error_chain(&e), "opening the desired state");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let (calls, done) = loop {
            match calls::open(&self, self.replicas_now()).await {
                Ok(opened) => break opened,
                Err(e) => {
                    tracing::debug!(error = %e, "opening the call queue");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        // Nothing is answered from a mirror still filling: a board that has just joined would
        // say "not found" of functions the cluster has (seen: a scale through a board right
        // after its join, 404).
        if !desired.mirror().wait_current(MIRROR_PATIENCE).await {
            tracing::warn!(waited = ?started.elapsed(), "the cluster's functions, namespaces and secrets are not all here yet; answering from what is");
        }
        let plan = placer::follow(cluster.clone());
        let parts = Arc::new(Parts {
            boards,
            cluster,
            membership,
            lease,
            desired,
            plan,
            calls,
            done,
        });
        self.parts.send_replace(Some(Arc::clone(&parts)));
        tracing::info!(board = %me.name, cluster = %self.cluster(), waited = ?started.elapsed(), "in the cluster");
        let record = tokio::spawn(Arc::clone(&self).write_record(Arc::clone(&parts)));
        let layout = tokio::spawn(layout::follow(Arc::clone(&self), Arc::clone(&parts)));
        let keeper = tokio::spawn(layout::keep(Arc::clone(&self), Arc::clone(&parts)));
        let placing = tokio::spawn(placer::run(parts, self.settings.reading()));
        self.keep(record);
        self.keep(layout);
        self.keep(keeper);
        self.keep(placing);
    }

    pub(crate) fn replicas_now(&self) -> usize {
        let files = self.files();
        replicas_for(if files.node.clustered {
            files.node.routes.len()
        } else {
            1
        })
    }

    /// The founder makes the buckets (and, on the cluster's first start, its record and the
    /// first layout); the others open them.
    async fn open_buckets(&self) -> Result<(Bucket, Bucket), KvError> {
        let founder = self.files().node.founder;
        let open = |name: &'static str| async move {
            if founder {
                Bucket::open_or_create(&self.js, &BucketConfig::new(name, self.replicas_now()))
                    .await
            } else {
                Bucket::open(&self.js, name).await
            }
        };
        let boards = open(BOARDS_BUCKET).await?;
        let cluster = open(CLUSTER_BUCKET).await?;
        if founder && layout::read(&cluster).await?.is_none() {
            // The cluster's first start: the founder's record, then the first layout (in that
            // order, so that a layout without the founder's record means it was removed).
            let me = self.me.borrow().clone();
            let record = bytes::Bytes::from(serde_json::to_vec(&me).unwrap_or_default());
            match boards.create(&me.name, record).await {
                Err(e) if !e.is_conflict() => return Err(e),
                _ => {}
            }
            layout::found(&cluster, &me.name).await?;
        }
        Ok((boards, cluster))
    }

    /// Writes this board's record whenever it changes.
    async fn write_record(self: Arc<Self>, parts: Arc<Parts>) {
        let mut me = self.me.subscribe();
        loop {
            let info = me.borrow_and_update().clone();
            if let Err(e) = parts.membership.update(&info).await {
                tracing::debug!(error = %bramble_base::error_chain(&e), "writing this board's record; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            if me.changed().await.is_err() {
                return;
            }
        }
    }

    /// True while the board leaves its cluster.
    pub fn leaving(&self) -> bool {
        self.leaving.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Marks the board leaving (or back from a refused leave): nothing new is placed on it and
    /// it takes no call from the queue meanwhile; its record says so once written.
    pub(crate) fn set_leaving(&self, leaving: bool) {
        self.leaving
            .store(leaving, std::sync::atomic::Ordering::SeqCst);
        self.update_me(|info| info.leaving = leaving);
    }

    /// Runs this board's part of the plan on `local` (its own provider) for as long as the node
    /// runs: waits for the cluster's parts, then [`runner::run`].
    pub fn run_board<L: bramble_gateway::provider::Provider>(self: &Arc<Self>, local: Arc<L>) {
        let node = Arc::clone(self);
        let task = tokio::spawn(async move {
            let Some(parts) = node.ready(Duration::MAX).await else {
                return;
            };
            let plan = parts.plan.clone();
            let reading = node.settings.reading();
            runner::run(node.board(), parts, plan, reading, local).await;
        });
        self.keep(task);
    }

    /// Asks the daemon to restart.
    pub(crate) fn request_restart(&self) {
        self.restart.send_replace(true);
    }
}

/// This board's record from its files and facts.
fn board_info(files: &ClusterFiles, settings: &NodeSettings, nats_version: String) -> BoardInfo {
    let facts = &settings.facts;
    BoardInfo {
        name: files.node.board.clone(),
        address: files.node.address,
        arch: facts.arch.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        nats_version,
        memory: MemoryBudget {
            total: facts.memory_budget.unwrap_or(u64::MAX),
            used: 0,
        },
        functions: 0,
        hardware: facts.hardware.clone(),
        labels: settings
            .config
            .labels
            .iter()
            .map(|l| (l.key.clone(), l.value.clone()))
            .collect(),
        started_at_ms: join::now_ms(),
        jetstream: files.node.jetstream,
        platform: facts.platform.clone(),
        api_port: files.node.api_port,
        board_port: files.node.board_port,
        route_port: files.node.route_port,
        leaving: false,
        ready: Default::default(),
        outside: Default::default(),
    }
}

fn io_error(e: tokio::task::JoinError) -> IdentityError {
    IdentityError::Io {
        action: "reading",
        path: PathBuf::from("cluster"),
        source: std::io::Error::other(e),
    }
}

/// How long a board coming up waits for its mirror of the desired state to hold every value
/// before it answers from it.
const MIRROR_PATIENCE: Duration = Duration::from_secs(30);

/// How long a board that has just joined waits for its record to show in the cluster before
/// it concludes it was removed.
const JOINING_PATIENCE: Duration = Duration::from_secs(120);

/// How a board asks the cluster the reads it needs to come up. A request sent while the
/// cluster's JetStream is forming (the first board moving its data into the cluster as the
/// second joins, a stream without a leader yet) gets no answer at all, while the next one is
/// answered in milliseconds: each attempt waits 1 s for its answer, one more after each
/// unanswered attempt (up to [`crate::kv::DEFAULT_TIMEOUT`]), so a slow board still gets one.
/// Measured on the second board's join: 11–15 s with a 5 s wait per unanswered request;
/// 5.8–6.4 s with this on 2.9.10, 4.3 s on 2.10.27 (most of it the first board moving its
/// streams into the cluster one after the other, 4–5 s).
struct Patience {
    within: Duration,
}

impl Default for Patience {
    fn default() -> Self {
        Patience {
            within: Duration::from_secs(1),
        }
    }
}

impl Patience {
    /// `request`, given up as [`KvError::Timeout`] when unanswered within the current bound.
    async fn ask<T>(
        &mut self,
        bucket: &str,
        request: impl Future<Output = Result<T, KvError>>,
    ) -> Result<T, KvError> {
        match tokio::time::timeout(self.within, request).await {
            Ok(answer) => answer,
            Err(_) => {
                let waited = self.within;
                self.within =
                    (self.within + Duration::from_secs(1)).min(crate::kv::DEFAULT_TIMEOUT);
                Err(KvError::Timeout {
                    bucket: bucket.to_owned(),
                    waited,
                })
            }
        }
    }

    /// Before the next attempt after `error`: none after a timeout (it waited already), half a
    /// second after an answer that says no (no bucket yet, no quorum).
    async fn pause(&self, error: &KvError) {
        if !matches!(error, KvError::Timeout { .. }) {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
