//! The gateway's `Provider` of a board in a cluster: [`ClusterProvider`] wraps the board's own
//! provider (`L`, the single-board `LocalProvider`).
//!
//! On a board in no cluster it passes every call through: nothing changes. Once a cluster node
//! is attached ([`ClusterProvider::attach`]), the API works on the whole cluster:
//!
//! - **Writes** (functions, namespaces, secrets) are checked like on a single board (the
//!   [`DeploymentCheck`] the node gives: settings, triggers, grants, the image's name), then
//!   against the placement — a deployment no board can take is refused at once with the
//!   numbers, changing nothing ([`crate::placement::admit`]) — and stored in the desired state
//!   with compare-and-set ([`crate::desired`]): a race between two boards gives one 409; no
//!   quorum gives 503. They answer once stored and visible on this board.
//! - **Reads** come from this board's mirror of the desired state, the plan and the boards'
//!   records: every board lists every function, with `replicas` (desired) and
//!   `availableReplicas` (ready, summed over the boards), and `bramble.replicas` says where
//!   they are placed ([`status::function_status`]).
//! - **Invocations** (`endpoint`) are answered by this board's replicas when the function is
//!   placed here, otherwise sent to a board that runs it ([`routes`]: a table in memory, kept
//!   up to date from the plan and the boards' records); a board answers what another board sent
//!   from its own replicas only (`endpoint_here`): one extra hop at most. Logs come from this
//!   board's replicas. Images are each board's own.
//!
//! A board's own functions, deployed before it was in the cluster, are taken into the desired
//! state by [`ClusterProvider::import`] ([`import`]).
//!
//! Until the board has reached its cluster (at start, after a power cut of the whole shelf,
//! the cluster may have no quorum yet), reads show what this board runs and writes answer 503.

pub mod import;
pub mod routes;
pub mod status;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, PoisonError};
use std::time::Duration;

use bramble_gateway::provider::{
    BoardAddr, Endpoint, LogStream, Provider, ProviderError, ProviderResult, Upstream, UsageSample,
};
use bramble_gateway::types::{
    FunctionDeployment, FunctionNamespace, FunctionStatus, ImageSummary, LogRequest, ProviderInfo,
    Secret,
};
use bramble_gateway::ui::model::{Board, Replica};
use tokio::sync::watch;

use crate::desired::FunctionKey;
use crate::node::{ClusterNode, Parts};
use crate::placement::{self, Admitted};

use routes::{Route, Routes};

/// The single-board checks of a deployment the node runs before the cluster stores it.
pub trait DeploymentCheck: Send + Sync + 'static {
    /// Checks `deployment` without side effects (its settings, triggers, hardware grants and
    /// image name); returns the replicas it starts with.
    fn check(&self, deployment: &FunctionDeployment) -> ProviderResult<u64>;
    /// How long this board waits for another board's answer to a call of the function: its
    /// upstream timeout plus the time that board may take to start a replica.
    fn remote_timeout(&self, deployment: &FunctionDeployment) -> Duration;
}

/// The provider of a board that may be in a cluster (see the module docs).
pub struct ClusterProvider<L> {
    local: Arc<L>,
    check: Arc<dyn DeploymentCheck>,
    node: OnceLock<Arc<ClusterNode>>,
    /// Where invocations go, kept up to date once attached ([`routes`]).
    routes: watch::Sender<Arc<Routes>>,
    /// Boards that failed a call at the connection lately: skipped while others can answer.
    unreachable: Unreachable,
    /// The functions whose schedules this board fires.
    schedules: watch::Sender<Schedules>,
    /// Every function of the cluster's annotations.
    annotations: watch::Sender<Arc<Annotations>>,
}

/// The annotations of every function of the cluster, by function.
pub type Annotations = BTreeMap<FunctionKey, BTreeMap<String, String>>;

/// Which functions' schedules a board fires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Schedules {
    /// Every function's it runs (a single board).
    All,
    /// Only these (a board of a cluster: one board fires each function's schedules).
    Only(Arc<BTreeSet<FunctionKey>>),
}

impl Schedules {
    /// Whether `name.namespace`'s schedules fire here.
    pub fn fire(&self, namespace: &str, name: &str) -> bool {
        match self {
            Schedules::All => true,
            Schedules::Only(set) => set.contains(&FunctionKey::of(namespace, name)),
        }
    }
}

/// How long a board that failed a call at the connection is skipped: until its record says
/// whether it is dead, a call that goes there would fail again.
const SKIP_UNREACHABLE: Duration = Duration::from_secs(5);

/// Boards that failed a call at the connection, with when.
#[derive(Default)]
struct Unreachable {
    /// True while the list may hold a board: invocations read nothing else when it is false.
    any: std::sync::atomic::AtomicBool,
    boards: std::sync::Mutex<Vec<(Arc<str>, std::time::Instant)>>,
}

impl Unreachable {
    /// Skips `board` from now on for a while; true when it was not skipped already.
    fn add(&self, board: &Arc<str>) -> bool {
        let mut boards = self.boards.lock().unwrap_or_else(PoisonError::into_inner);
        let skipped = boards
            .iter()
            .any(|(b, at)| b == board && at.elapsed() < SKIP_UNREACHABLE);
        boards.retain(|(b, _)| b != board);
        boards.push((Arc::clone(board), std::time::Instant::now()));
        self.any.store(true, Ordering::Release);
        !skipped
    }

    /// The boards to skip now; `None` when there are none.
    fn now(&self) -> Option<Vec<Arc<str>>> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        let mut boards = self.boards.lock().unwrap_or_else(PoisonError::into_inner);
        boards.retain(|(_, at)| at.elapsed() < SKIP_UNREACHABLE);
        if boards.is_empty() {
            self.any.store(false, Ordering::Release);
            return None;
        }
        Some(boards.iter().map(|(b, _)| Arc::clone(b)).collect())
    }
}

/// How often a call of a function placed here a moment ago (or nowhere yet) looks again.
const PLACED_HERE_POLL: Duration = Duration::from_millis(100);

/// How a call is served.
enum Mode {
    /// No cluster: the board's own provider.
    Single,
    /// In a cluster that answers.
    Cluster(Arc<ClusterNode>, Arc<Parts>),
    /// In a cluster this board has not reached since it started.
    Unreached,
}

fn unreached() -> ProviderError {
    ProviderError::Unavailable(
        "this board has not reached its cluster since it started (the cluster has no quorum yet, or its nats-server is starting); nothing was changed — functions running here keep serving".into(),
    )
}

impl<L: Provider> ClusterProvider<L> {
    /// A provider that passes everything to `local` until a node is attached.
    pub fn new(local: Arc<L>, check: Arc<dyn DeploymentCheck>) -> ClusterProvider<L> {
        ClusterProvider {
            local,
            check,
            node: OnceLock::new(),
            routes: watch::Sender::new(Arc::default()),
            unreachable: Unreachable::default(),
            schedules: watch::Sender::new(Schedules::All),
            annotations: watch::Sender::new(Arc::default()),
        }
    }

    /// Resolves once this board's routes are built from the cluster's whole desired state
    /// (after its start, a function not known yet would otherwise be "not found").
    pub fn routes_ready(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut routes = self.routes.subscribe();
        async move {
            let _ = routes.wait_for(|r| r.is_current()).await;
        }
    }

    /// Which functions' schedules this board fires; changes when that changes. A single
    /// board fires all of its own; a board of a cluster only those it is the first (by name)
    /// of the boards running them, and none before its routes are built.
    pub fn schedules(&self) -> watch::Receiver<Schedules> {
        self.schedules.subscribe()
    }

    /// The annotations of every function of the cluster, wherever it runs (none on a single
    /// board): a trigger that names this board (`board=`) runs here, whichever board runs
    /// its function.
    pub fn annotations(&self) -> watch::Receiver<Arc<Annotations>> {
        self.annotations.subscribe()
    }

    /// Cluster mode from now on. Only the first call counts. Starts keeping the routes of
    /// invocations up to date (for as long as the node runs).
    pub fn attach(&self, node: Arc<ClusterNode>) {
        if self.node.set(Arc::clone(&node)).is_err() {
            tracing::warn!("a cluster node was already attached; keeping the first");
            return;
        }
        self.schedules
            .send_replace(Schedules::Only(Arc::new(BTreeSet::new())));
        let routes = self.routes.clone();
        let schedules = self.schedules.clone();
        let annotations = self.annotations.clone();
        let check = Arc::clone(&self.check);
        let task = tokio::spawn(async move {
            let Some(parts) = node.ready(Duration::MAX).await else {
                return;
            };
            let follows = Follows {
                routes,
                schedules,
                annotations,
                reading: node.settings().reading(),
            };
            follow_routes(node.board(), &parts, check.as_ref(), &follows).await;
        });
        if let Some(node) = self.node.get() {
            node.keep(task);
        }
    }

    /// The board's own provider.
    pub fn local(&self) -> &Arc<L> {
        &self.local
    }

    /// Where a change goes: `None` on a board in no cluster (its own provider), the cluster
    /// otherwise; 503 while the board has not reached its cluster.
    fn writer(&self) -> ProviderResult<Option<(Arc<ClusterNode>, Arc<Parts>)>> {
        match self.mode() {
            Mode::Single => Ok(None),
            Mode::Unreached => Err(unreached()),
            Mode::Cluster(node, parts) => Ok(Some((node, parts))),
        }
    }

    fn mode(&self) -> Mode {
        match self.node.get() {
            None => Mode::Single,
            Some(node) => match node.parts() {
                Some(parts) => Mode::Cluster(Arc::clone(node), parts),
                None => Mode::Unreached,
            },
        }
    }

    /// Where the routes send a call: `Ok(None)` for this board (placed here, or placed
    /// nowhere yet), another board's endpoint, or the reason none can take it.
    fn route(&self, name: &str, namespace: &str) -> ProviderResult<Option<Endpoint>> {
        let skip = self.unreachable.now();
        let routes = self.routes.borrow();
        match routes.find(namespace, name) {
            None | Some(Route::Here) => Ok(None),
            Some(Route::Refused(message)) => Err(ProviderError::Unavailable(message.clone())),
            Some(Route::Elsewhere(remote)) => Ok(remote
                .pick(|b| skip.as_ref().is_some_and(|skip| skip.contains(&b.name)))
                .map(|board| Endpoint {
                    upstream: Upstream::Board(board.clone()),
                    timeout: remote.timeout,
                    in_flight: None,
                })),
        }
    }

    /// The endpoint of a call on a board in a cluster: where the routes send it (`via_routes`:
    /// a client's call; a call another board sent here is answered here, one hop at most).
    /// Deployed or scaled a moment ago, the function may be placed nowhere yet, or here and
    /// not on this board yet (its runner deploys it; the board's own provider does not know
    /// it): while the cluster has the function, look again — at the routes, which may have
    /// placed it elsewhere meanwhile, and here — until `wait` is over (then 503, which a
    /// queued call retries), never 404.
    async fn wait_for_endpoint(
        &self,
        name: &str,
        namespace: &str,
        wait: Duration,
        via_routes: bool,
    ) -> ProviderResult<Endpoint> {
        let mut left = wait;
        // Set at the first miss only (a hit, the common case, reads no clock): when the wait
        // ends, and the routes' changes that end each round early.
        let mut waiting: Option<(tokio::time::Instant, watch::Receiver<Arc<Routes>>)> = None;
        loop {
            if via_routes && let Some(elsewhere) = self.route(name, namespace)? {
                return Ok(elsewhere);
            }
            match self.local.endpoint(name, namespace, left).await {
                // A call sent here waits only while this board's routes also place the
                // function here (or nowhere yet): one moved away since gets 503 at once.
                Err(ProviderError::NotFound(_))
                    if self.cluster_has(namespace, name)
                        && (via_routes || self.routed_here(namespace, name)) =>
                {
                    if left.is_zero() {
                        return Err(ProviderError::Unavailable(format!(
                            "function {name} is not started on a board that can answer yet; try again"
                        )));
                    }
                    // A miss answers at once: the wait starts here.
                    let (deadline, changes) = waiting.get_or_insert_with(|| {
                        (tokio::time::Instant::now() + wait, self.routes.subscribe())
                    });
                    // A change of the routes, or the next look here, whichever comes first.
                    let _ = tokio::time::timeout(PLACED_HERE_POLL, changes.changed()).await;
                    left = deadline.saturating_duration_since(tokio::time::Instant::now());
                }
                other => return other,
            }
        }
    }

    /// Whether this board's routes send calls of `name.namespace` here (or it is placed
    /// nowhere yet).
    fn routed_here(&self, namespace: &str, name: &str) -> bool {
        matches!(
            self.routes.borrow().find(namespace, name),
            None | Some(Route::Here)
        )
    }

    /// Whether the cluster's desired state has `name.namespace`.
    fn cluster_has(&self, namespace: &str, name: &str) -> bool {
        matches!(self.mode(), Mode::Cluster(_, parts) if parts.desired.snapshot().function(namespace, name).is_some())
    }

    /// Checks a deployment as a single board would, then against the placement; returns the
    /// replicas it starts with (`replicas`, or the deployment's own initial count).
    fn admit(
        &self,
        node: &ClusterNode,
        parts: &Parts,
        deployment: &FunctionDeployment,
        replicas: Option<u64>,
    ) -> ProviderResult<u64> {
        let initial = self.check.check(deployment)?;
        let namespace = parts.desired.namespace_of(deployment.namespace.as_deref());
        let key = FunctionKey::new(&namespace, &deployment.service).map_err(ProviderError::from)?;
        let replicas = replicas.unwrap_or(initial);
        let reading = node.settings().reading();
        let function = placement::Function::from_deployment(
            key,
            u32::try_from(replicas).unwrap_or(u32::MAX),
            deployment,
            reading,
            None,
        )
        .map_err(|e| match e {
            placement::FunctionError::Constraint(e) => {
                ProviderError::invalid("constraints", e.to_string())
            }
            placement::FunctionError::Grant(e) => {
                ProviderError::invalid("annotations", e.to_string())
            }
            placement::FunctionError::Memory(m) => ProviderError::invalid("limits.memory", m),
        })?;
        let previous = parts.plan.borrow().as_deref().cloned().unwrap_or_default();
        let input = crate::node::placer::input(
            &parts.membership.watch().borrow().clone(),
            &parts.desired.snapshot(),
            previous,
            reading,
        );
        match placement::admit(&input, &function) {
            Ok(Admitted::Placed(_) | Admitted::Waiting(_)) => Ok(replicas),
            Err(refused) => Err(ProviderError::invalid("service", refused.to_string())),
        }
    }

    /// This board's status of a function it runs, if it does.
    async fn local_status(&self, key: &FunctionKey) -> Option<FunctionStatus> {
        self.local
            .get_function(&key.name, &key.namespace, false)
            .await
            .ok()
            .flatten()
    }

    async fn cluster_status(
        &self,
        parts: &Parts,
        key: &FunctionKey,
        record: &crate::desired::FunctionRecord,
    ) -> FunctionStatus {
        let plan = parts.plan.borrow().clone();
        let view = parts.membership.watch().borrow().clone();
        let local = self.local_status(key).await;
        status::function_status(key, record, plan.as_deref(), &view, local)
    }
}

/// What [`follow_routes`] keeps up to date.
struct Follows {
    routes: watch::Sender<Arc<Routes>>,
    schedules: watch::Sender<Schedules>,
    annotations: watch::Sender<Arc<Annotations>>,
    /// How the placer reads deployments (for the plan it will store after a board died).
    reading: placement::Reading,
}

/// Rebuilds the routes (and the schedules this board fires) whenever the plan, the boards'
/// records or the desired state change, and the functions' annotations with the latter.
async fn follow_routes(me: String, parts: &Parts, check: &dyn DeploymentCheck, follows: &Follows) {
    let Follows {
        routes,
        schedules,
        annotations,
        reading,
    } = follows;
    let mut plan = parts.plan.clone();
    let mut view = parts.membership.watch();
    let mut desired = parts.desired.mirror().subscribe();
    // The desired state the annotations were last taken from: the view changes with every
    // heartbeat, the desired state only with a change.
    let mut annotated = None;
    loop {
        let table = {
            let plan = plan.borrow_and_update().clone();
            let view = view.borrow_and_update().clone();
            let desired = desired.borrow_and_update().clone();
            if annotated.as_ref().is_none_or(|a| !Arc::ptr_eq(a, &desired)) {
                let now: Annotations = desired
                    .functions
                    .iter()
                    .map(|(key, record)| (key.clone(), record.value.deployment.annotations.clone()))
                    .collect();
                annotations.send_if_modified(|a| {
                    let changed = **a != now;
                    if changed {
                        *a = Arc::new(now);
                    }
                    changed
                });
                annotated = Some(Arc::clone(&desired));
            }
            // The plan the boards run (see `node::runner::effective`).
            plan.map(|plan| {
                let plan = crate::node::runner::effective(plan, &view, &desired, *reading);
                Routes::build(&me, &plan, &view, &desired, check)
            })
        };
        if let Some(table) = table {
            schedules.send_if_modified(|s| {
                let changed = !matches!(s, Schedules::Only(set) if **set == *table.schedules());
                if changed {
                    *s = Schedules::Only(Arc::new(table.schedules().clone()));
                }
                changed
            });
            routes.send_replace(Arc::new(table));
        }
        tokio::select! {
            Ok(()) = plan.changed() => {}
            Ok(()) = view.changed() => {}
            Ok(()) = desired.changed() => {}
            else => return,
        }
    }
}

impl<L: Provider> Provider for ClusterProvider<L> {
    async fn list_functions(&self, namespace: &str) -> ProviderResult<Vec<FunctionStatus>> {
        let Mode::Cluster(_, parts) = self.mode() else {
            return self.local.list_functions(namespace).await;
        };
        let desired = parts.desired.snapshot();
        let mut list = Vec::new();
        for (key, record) in desired.functions_in(namespace) {
            list.push(self.cluster_status(&parts, key, &record.value).await);
        }
        Ok(list)
    }

    async fn get_function(
        &self,
        name: &str,
        namespace: &str,
        usage: bool,
    ) -> ProviderResult<Option<FunctionStatus>> {
        let Mode::Cluster(_, parts) = self.mode() else {
            return self.local.get_function(name, namespace, usage).await;
        };
        let desired = parts.desired.snapshot();
        let Some(record) = desired.function(namespace, name) else {
            return Ok(None);
        };
        let key = FunctionKey::of(namespace, name);
        let mut status = self.cluster_status(&parts, &key, &record.value).await;
        if usage && let Ok(Some(local)) = self.local.get_function(name, namespace, true).await {
            status.usage = local.usage;
        }
        Ok(Some(status))
    }

    async fn deploy(&self, request: FunctionDeployment) -> ProviderResult<()> {
        let Some((node, parts)) = self.writer()? else {
            return self.local.deploy(request).await;
        };
        let replicas = self.admit(&node, &parts, &request, None)?;
        parts.desired.deploy(request, replicas).await?;
        Ok(())
    }

    async fn update(&self, request: FunctionDeployment) -> ProviderResult<()> {
        let Some((node, parts)) = self.writer()? else {
            return self.local.update(request).await;
        };
        let namespace = parts.desired.namespace_of(request.namespace.as_deref());
        let replicas = parts
            .desired
            .snapshot()
            .function(&namespace, &request.service)
            .map(|r| r.value.replicas);
        self.admit(&node, &parts, &request, replicas)?;
        parts.desired.update(request).await?;
        Ok(())
    }

    async fn delete(&self, name: &str, namespace: &str) -> ProviderResult<()> {
        let Some((_, parts)) = self.writer()? else {
            return self.local.delete(name, namespace).await;
        };
        parts.desired.delete(namespace, name).await?;
        Ok(())
    }

    async fn scale(&self, name: &str, namespace: &str, replicas: u64) -> ProviderResult<()> {
        let Some((node, parts)) = self.writer()? else {
            return self.local.scale(name, namespace, replicas).await;
        };
        let deployment = parts
            .desired
            .snapshot()
            .function(namespace, name)
            .map(|r| r.value.deployment.clone())
            .ok_or_else(|| {
                ProviderError::NotFound(format!(
                    "function {name} not found in namespace {namespace}"
                ))
            })?;
        self.admit(&node, &parts, &deployment, Some(replicas))?;
        parts.desired.scale(namespace, name, replicas).await?;
        Ok(())
    }

    async fn list_namespaces(&self) -> ProviderResult<Vec<String>> {
        let Mode::Cluster(_, parts) = self.mode() else {
            return self.local.list_namespaces().await;
        };
        Ok(parts
            .desired
            .snapshot()
            .namespaces
            .keys()
            .cloned()
            .collect())
    }

    async fn get_namespace(&self, name: &str) -> ProviderResult<Option<FunctionNamespace>> {
        let Mode::Cluster(_, parts) = self.mode() else {
            return self.local.get_namespace(name).await;
        };
        Ok(parts
            .desired
            .snapshot()
            .namespaces
            .get(name)
            .map(|record| FunctionNamespace {
                name: name.to_owned(),
                labels: record.value.labels.clone(),
                annotations: record.value.annotations.clone(),
            }))
    }

    async fn create_namespace(&self, namespace: FunctionNamespace) -> ProviderResult<()> {
        let Some((_, parts)) = self.writer()? else {
            return self.local.create_namespace(namespace).await;
        };
        parts.desired.create_namespace(namespace).await?;
        Ok(())
    }

    async fn update_namespace(&self, namespace: FunctionNamespace) -> ProviderResult<()> {
        let Some((_, parts)) = self.writer()? else {
            return self.local.update_namespace(namespace).await;
        };
        parts.desired.update_namespace(namespace).await?;
        Ok(())
    }

    async fn delete_namespace(&self, name: &str) -> ProviderResult<()> {
        let Some((_, parts)) = self.writer()? else {
            return self.local.delete_namespace(name).await;
        };
        parts.desired.delete_namespace(name).await?;
        Ok(())
    }

    async fn list_secrets(&self, namespace: &str) -> ProviderResult<Vec<Secret>> {
        let Mode::Cluster(_, parts) = self.mode() else {
            return self.local.list_secrets(namespace).await;
        };
        Ok(parts
            .desired
            .snapshot()
            .secret_names(namespace)
            .into_iter()
            .map(|name| Secret::name_only(name, namespace))
            .collect())
    }

    async fn put_secret(&self, secret: Secret) -> ProviderResult<()> {
        let Some((_, parts)) = self.writer()? else {
            return self.local.put_secret(secret).await;
        };
        parts.desired.put_secret(secret).await?;
        Ok(())
    }

    async fn delete_secret(&self, name: &str, namespace: &str) -> ProviderResult<()> {
        let Some((_, parts)) = self.writer()? else {
            return self.local.delete_secret(name, namespace).await;
        };
        parts.desired.delete_secret(namespace, name).await?;
        Ok(())
    }

    async fn logs(&self, request: LogRequest) -> ProviderResult<LogStream> {
        self.local.logs(request).await
    }

    async fn list_images(&self) -> ProviderResult<Vec<ImageSummary>> {
        self.local.list_images().await
    }

    async fn import_images(
        &self,
        archive: &Path,
        name: Option<&str>,
    ) -> ProviderResult<Vec<String>> {
        self.local.import_images(archive, name).await
    }

    async fn remove_image(&self, name: &str) -> ProviderResult<()> {
        self.local.remove_image(name).await
    }

    fn info(&self) -> ProviderInfo {
        let mut info = self.local.info();
        if self.node.get().is_some() {
            info.orchestration = format!("{} (cluster)", info.orchestration);
        }
        info
    }

    async fn health(&self) -> Result<(), String> {
        self.local.health().await
    }

    async fn endpoint(
        &self,
        name: &str,
        namespace: &str,
        wait: Duration,
    ) -> ProviderResult<Endpoint> {
        // Per request: no clone of the node's parts; a board that has not reached its cluster
        // has no routes yet, and answers from its own replicas.
        if self.node.get().is_none() {
            return self.local.endpoint(name, namespace, wait).await;
        }
        self.wait_for_endpoint(name, namespace, wait, true).await
    }

    fn unreachable(&self, board: &BoardAddr) {
        if self.unreachable.add(&board.name) {
            tracing::info!(board = %board.name, addr = %board.addr, "a board failed a call; skipped while others can answer");
        }
    }

    async fn endpoint_here(
        &self,
        name: &str,
        namespace: &str,
        wait: Duration,
    ) -> ProviderResult<Endpoint> {
        if self.node.get().is_none() {
            return self.local.endpoint(name, namespace, wait).await;
        }
        self.wait_for_endpoint(name, namespace, wait, false).await
    }

    async fn usage(&self) -> HashMap<(String, String), UsageSample> {
        self.local.usage().await
    }

    fn status_changes(&self) -> Option<tokio::sync::watch::Receiver<()>> {
        self.local.status_changes()
    }

    async fn replicas(&self, name: &str, namespace: &str) -> Vec<Replica> {
        self.local.replicas(name, namespace).await
    }

    async fn boards(&self) -> Option<Vec<Board>> {
        let Mode::Cluster(node, parts) = self.mode() else {
            return None;
        };
        let view = parts.membership.watch().borrow().clone();
        let plan = parts.plan.borrow().clone();
        Some(status::boards(&view, plan.as_deref(), &node.board()))
    }
}
