//! Cluster mode in `bramble up`: composes [`bramble_cluster::node`] with the daemon.
//!
//! With cluster state on disk (`<state_dir>/cluster/node.json`), the node starts its
//! [`ClusterNode`] (its nats-server, membership, lease, layout), serves the cluster's public
//! hello and `/system/cluster` routes on the API, and the board-to-board listener (TLS under the
//! cluster's CA) on `cluster.board_port`. Without it, `POST /system/cluster/init` and
//! `/system/cluster/join` form or join a cluster (and `cluster.join` in the configuration joins
//! at start): both write the state, answer, then ask the daemon to restart.
//!
//! Restart = a clean gateway shutdown (functions keep running, as after any restart) and a
//! re-exec of the same binary with the same arguments (`main.rs`); the PID stays, so systemd
//! sees the same service, which sends `READY=1` again once the gateway answers.

pub(crate) mod import;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bramble_cluster::membership::{BoardInfo, HardwareSummary, MemoryBudget};
use bramble_cluster::node::images::{self, LocalImages as _};
use bramble_cluster::node::join::{self, ApiLogin, Joiner};
use bramble_cluster::node::{
    BoardFacts, ClusterNode, NodeSettings, Refusal, calls, files, init, routes,
};
use bramble_cluster::provider::{ClusterProvider, DeploymentCheck};
use bramble_cluster::settings::{JoinCommand, board_name_from_host};
use bramble_gateway::Gateway;
use bramble_gateway::provider::{Provider, ProviderError};
use bramble_gateway::types::FunctionDeployment;
use bramble_hardware::Hardware;
use serde::Deserialize;
use tokio::sync::watch;

use crate::config::Config;
use crate::provider::LocalProvider;
use crate::store::{ApiCredentials, Store};

/// The cluster side of a running daemon.
pub struct ClusterSide {
    /// The running node, in cluster mode.
    pub node: Option<Arc<ClusterNode>>,
    /// Set when the daemon must restart (init, join, leave).
    restart: watch::Sender<bool>,
    board_server: Option<tokio::task::JoinHandle<()>>,
}

/// Why the cluster side did not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterStartError {
    #[error("starting cluster mode")]
    Node(#[from] bramble_cluster::node::NodeError),
    #[error("cannot listen for other boards on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The provider the gateway serves: the board's own, wrapped so that it works on the whole
/// cluster once the board is in one (a plain pass-through before).
pub type NodeProvider = ClusterProvider<LocalProvider>;

/// The single-board checks of a deployment, for the cluster's API.
pub struct Checks {
    /// Node-wide function defaults (the upstream timeout).
    pub defaults: crate::function::Defaults,
    /// How long a board waits for a replica to become ready.
    pub ready_wait: std::time::Duration,
}

impl DeploymentCheck for Checks {
    fn check(&self, deployment: &FunctionDeployment) -> Result<u64, ProviderError> {
        crate::function::check_deployment(deployment)?;
        Ok(crate::function::initial_replicas(deployment))
    }

    fn remote_timeout(&self, deployment: &FunctionDeployment) -> std::time::Duration {
        crate::function::timeout(deployment, &self.defaults) + self.ready_wait
    }
}

/// What the cluster needs to know of the daemon.
pub struct Context<'a> {
    pub config: &'a Config,
    pub store: Arc<Store>,
    pub credentials: &'a ApiCredentials,
    pub gateway: &'a Arc<Gateway<NodeProvider>>,
    /// The gateway's provider (attached to the node in cluster mode; its local part runs this
    /// board's part of the cluster).
    pub provider: Arc<NodeProvider>,
    /// The API's address (its port is what other boards call).
    pub api: SocketAddr,
    /// The hardware helper (the board's inventory).
    pub hardware: Arc<Hardware>,
    /// Node-wide function defaults (memory reserved by a function that sets no limit).
    pub defaults: crate::function::Defaults,
}

/// The hardware summary a board's record carries.
pub fn hardware_summary(hardware: &Hardware) -> HardwareSummary {
    let inventory = hardware.inventory();
    HardwareSummary {
        gpio_chip: inventory.gpio_chip,
        i2c_buses: inventory.i2c_buses,
        one_wire: inventory.sensors,
        gpio_lines: inventory.gpio_lines,
        spi: Vec::new(),
        pwm: Vec::new(),
    }
}

/// This board's facts as the cluster sees them (hardware left empty: see [`hardware_summary`]).
pub fn facts(config: &Config) -> BoardFacts {
    let arch = match std::env::consts::ARCH {
        "aarch64" => "arm64",
        "arm" => "arm",
        "x86_64" => "amd64",
        other => other,
    };
    let platform = match arch {
        "arm" => "linux/arm/v7".to_owned(),
        other => format!("linux/{other}"),
    };
    BoardFacts {
        arch: arch.to_owned(),
        platform,
        memory_budget: config.memory_budget_bytes(),
        hardware: HardwareSummary::default(),
        default_memory: config.defaults.memory.bytes(),
    }
}

impl ClusterSide {
    /// Starts cluster mode when the board has cluster state; otherwise adds the routes that
    /// form or join one (and joins at start when `cluster.join` is set).
    pub async fn start(ctx: Context<'_>) -> Result<ClusterSide, ClusterStartError> {
        let restart = watch::Sender::new(false);
        let mut board_facts = facts(ctx.config);
        let hardware = Arc::clone(&ctx.hardware);
        board_facts.hardware = tokio::task::spawn_blocking(move || hardware_summary(&hardware))
            .await
            .unwrap_or_default();
        let state_dir = ctx.config.state_dir.clone();
        let member = tokio::task::spawn_blocking(move || files::is_member(&state_dir))
            .await
            .unwrap_or(false);
        if !member {
            let single = Arc::new(Single {
                facts: board_facts,
                config: ctx.config.clone(),
                store: ctx.store,
                api: ctx.api,
                restart: restart.clone(),
            });
            ctx.gateway
                .add_admin_routes(single_router(Arc::clone(&single)));
            if let Some(command) = ctx.config.cluster.join.clone() {
                tokio::spawn(join_at_start(single, command));
            }
            return Ok(ClusterSide {
                node: None,
                restart,
                board_server: None,
            });
        }
        let settings = NodeSettings {
            state_dir: ctx.config.state_dir.clone(),
            config: ctx.config.cluster.clone(),
            api: ApiLogin {
                user: ctx.credentials.user.clone(),
                password: ctx.credentials.password.clone(),
            },
            facts: board_facts,
            // A GPIO trigger grants its line: the function runs where the line is.
            hardware_of: crate::triggers::hardware_grants,
        };
        let node = ClusterNode::start(settings).await?;
        // An image this board lacks comes from a board that has it, before its registry (set
        // before this board runs its part of the plan).
        ctx.provider
            .local()
            .image_service()
            .set_source(Arc::new(images::BoardImages::new(Arc::clone(&node))?));
        node.run_board(Arc::clone(ctx.provider.local()));
        ctx.provider.attach(Arc::clone(&node));
        // Functions deployed here before the board was in the cluster become the cluster's;
        // the async calls this board keeps are handed to the cluster after that.
        let imported = watch::Sender::new(false);
        let calls_open = imported.subscribe();
        tokio::spawn(import::import_own_functions(
            Arc::clone(&ctx.provider),
            Arc::downgrade(&node),
            Arc::clone(&ctx.store),
            imported,
        ));
        // Async calls: accepted by any board, run by any board (set before the gateway's
        // workers start, so that calls kept from before are handed to the cluster too).
        ctx.gateway
            .set_call_share(Arc::new(calls::Share::new(Arc::clone(&node), calls_open)));
        calls::serve(
            &node,
            Arc::clone(ctx.gateway),
            ctx.gateway.config().async_workers,
            ctx.provider.routes_ready(),
        );
        tokio::spawn(report_ready(
            Arc::clone(&node),
            Arc::clone(ctx.provider.local()),
        ));
        tokio::spawn(report_usage(
            Arc::clone(&node),
            Arc::clone(&ctx.store),
            ctx.defaults.clone(),
        ));
        ctx.gateway
            .add_public_routes(routes::public_router(Arc::clone(&node)));
        ctx.gateway
            .add_admin_routes(routes::admin_router(Arc::clone(&node)));
        let files = node.files();
        let tls = bramble_cluster::node::tls::server_config(&files.cluster, &files.board)
            .map_err(bramble_cluster::node::NodeError::from)?;
        ctx.gateway.set_board_tls(
            bramble_cluster::node::tls::client_config(&files.cluster, &files.board)
                .map_err(bramble_cluster::node::NodeError::from)?,
        );
        let addr = files.node.board_listen();
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ClusterStartError::Listen { addr, source })?;
        let gateway = Arc::clone(ctx.gateway);
        // Images between boards: this board serves what it has (and fetches what it lacks
        // from a board that has it, set up above).
        let board_routes = routes::board_router(Arc::clone(&node))
            .merge(images::router(Arc::clone(ctx.provider.local())));
        let stop = node.restart_requested();
        let board_server = tokio::spawn(async move {
            if let Err(e) = gateway
                .serve_boards(listener, tls, board_routes, stop)
                .await
            {
                tracing::error!(error = %e, "the board-to-board listener stopped");
            }
        });
        {
            let restart = restart.clone();
            let requested = node.restart_requested();
            tokio::spawn(async move {
                requested.await;
                restart.send_replace(true);
            });
        }
        tracing::info!(board = %node.board(), cluster = %node.cluster(), board_port = addr.port(), "cluster mode");
        Ok(ClusterSide {
            node: Some(node),
            restart,
            board_server: Some(board_server),
        })
    }

    /// Resolves when the daemon must restart (it formed, joined or left a cluster).
    pub fn restart_requested(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut restart = self.restart.subscribe();
        async move {
            let _ = restart.wait_for(|r| *r).await;
        }
    }

    /// This board's name: its cluster's name for it, or the one it would take in a cluster.
    pub fn board_name(&self, config: &Config) -> String {
        self.node
            .as_ref()
            .map_or_else(|| name_of_single(config), |node| node.board())
    }

    /// True once a restart was asked for.
    pub fn must_restart(&self) -> bool {
        *self.restart.borrow()
    }

    /// Stops the board listener and the node's nats-server.
    pub async fn stop(self) {
        if let Some(server) = self.board_server {
            server.abort();
        }
        if let Some(node) = self.node {
            node.stop().await;
        }
    }
}

/// A board in no cluster: what forms or joins one.
struct Single {
    facts: BoardFacts,
    config: Config,
    store: Arc<Store>,
    api: SocketAddr,
    restart: watch::Sender<bool>,
}

fn single_router(single: Arc<Single>) -> Router {
    Router::new()
        .route("/system/cluster", get(not_in_a_cluster))
        .route("/system/cluster/init", post(init_handler))
        .route("/system/cluster/join", post(join_handler))
        .with_state(single)
}

async fn not_in_a_cluster() -> Response {
    Refusal::new(
        404,
        "this board is not in a cluster: `bramble cluster init` forms one, `bramble cluster join TOKEN ADDRESS` joins one",
    )
    .into_response()
}

/// The name a board not in a cluster would take in one: `cluster.board`, else from its host
/// name.
fn name_of_single(config: &Config) -> String {
    config.cluster.board.clone().unwrap_or_else(|| {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default();
        board_name_from_host(&host)
    })
}

impl Single {
    fn board_name(&self) -> String {
        name_of_single(&self.config)
    }

    fn address(&self) -> Result<IpAddr, Refusal> {
        if let Some(address) = self.config.cluster.address {
            return Ok(address);
        }
        if !self.api.ip().is_unspecified() && !self.api.ip().is_loopback() {
            return Ok(self.api.ip());
        }
        init::detect_address(&[self.config.network.bridge.as_str()]).ok_or_else(|| {
            Refusal::new(
                400,
                "cannot tell this board's LAN address: set cluster.address (BRAMBLE_CLUSTER_ADDRESS)",
            )
        })
    }

    fn restart_soon(&self) {
        // The answer goes out first; then the gateway drains and the daemon re-executes.
        let restart = self.restart.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            restart.send_replace(true);
        });
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct InitBody {
    /// The cluster's name (default `bramble`).
    #[serde(default)]
    cluster: Option<String>,
}

async fn init_handler(State(single): State<Arc<Single>>, body: Option<Json<InitBody>>) -> Response {
    let name = body
        .and_then(|b| b.0.cluster)
        .unwrap_or_else(|| "bramble".to_owned());
    if let Err(e) = bramble_cluster::names::validate("cluster", &name) {
        return Refusal::new(400, e.to_string()).into_response();
    }
    let address = match single.address() {
        Ok(address) => address,
        Err(refusal) => return refusal.into_response(),
    };
    let founding = init::Founding {
        cluster: name.clone(),
        board: single.board_name(),
        address,
        api_port: single.api.port(),
        board_port: single.config.cluster.board_port,
        route_port: single.config.cluster.route_port,
    };
    let state_dir = single.config.state_dir.clone();
    let created = {
        let founding = founding.clone();
        tokio::task::spawn_blocking(move || init::create(&state_dir, &founding)).await
    };
    let token = match created {
        Ok(Ok(token)) => token,
        Ok(Err(e)) => {
            return Refusal::new(500, bramble_base::error_chain(&e)).into_response();
        }
        Err(e) => return Refusal::new(500, e.to_string()).into_response(),
    };
    tracing::info!(cluster = %name, board = %founding.board, %address, "cluster formed; restarting into cluster mode");
    single.restart_soon();
    Json(serde_json::json!({
        "cluster": name,
        "board": founding.board,
        "token": token.to_string(),
        "join": init::join_command(&token, address, founding.api_port),
    }))
    .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinBody {
    token: String,
    address: String,
}

async fn join_handler(State(single): State<Arc<Single>>, Json(body): Json<JoinBody>) -> Response {
    let command = match format!("{} {}", body.token, body.address).parse::<JoinCommand>() {
        Ok(command) => command,
        Err(message) => return Refusal::new(400, message).into_response(),
    };
    match single
        .join_patiently(&command, &[503], Some(JOIN_PATIENCE))
        .await
    {
        Ok(answer) => {
            single.restart_soon();
            Json(answer).into_response()
        }
        Err(refusal) => refusal.into_response(),
    }
}

/// How long `bramble cluster join` (`POST /system/cluster/join`) keeps asking a cluster that
/// cannot store the new board now (it is electing leaders: right after another board joined,
/// or one died).
const JOIN_PATIENCE: Duration = Duration::from_secs(30);

impl Single {
    /// [`Single::join`], asked again (1, 2, 4, 8 s apart, then every 8 s) while the answer is
    /// a refusal with one of the `passing` statuses, for at most `patience` (`None`: until it
    /// is another answer). A refusal given up on says how long it was asked.
    async fn join_patiently(
        &self,
        command: &JoinCommand,
        passing: &[u16],
        patience: Option<Duration>,
    ) -> Result<serde_json::Value, Refusal> {
        let started = std::time::Instant::now();
        let mut wait = Duration::from_secs(1);
        loop {
            match self.join(command).await {
                Err(refusal)
                    if passing.contains(&refusal.status)
                        && patience.is_none_or(|p| started.elapsed() + wait < p) =>
                {
                    tracing::warn!(reason = %refusal.message, "cannot join the cluster yet; trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(8));
                }
                Err(mut refusal) if passing.contains(&refusal.status) => {
                    refusal.message = format!(
                        "{} (asked for {} s)",
                        refusal.message,
                        started.elapsed().as_secs()
                    );
                    return Err(refusal);
                }
                answer => return answer,
            }
        }
    }

    /// Joins the cluster of `command`, keeps the state and the cluster's API login.
    async fn join(&self, command: &JoinCommand) -> Result<serde_json::Value, Refusal> {
        let board = self.board_name();
        let address = self
            .config
            .cluster
            .address
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let facts = self.facts.clone();
        let me = Joiner {
            board: BoardInfo {
                name: board.clone(),
                address,
                arch: facts.arch,
                version: env!("CARGO_PKG_VERSION").to_owned(),
                nats_version: String::new(),
                memory: MemoryBudget {
                    total: facts.memory_budget.unwrap_or(u64::MAX),
                    used: 0,
                },
                functions: 0,
                hardware: facts.hardware,
                labels: self
                    .config
                    .cluster
                    .labels
                    .iter()
                    .map(|l| (l.key.clone(), l.value.clone()))
                    .collect(),
                started_at_ms: join::now_ms(),
                jetstream: false,
                platform: facts.platform,
                api_port: self.api.port(),
                board_port: self.config.cluster.board_port,
                route_port: self.config.cluster.route_port,
                leaving: false,
                ready: Default::default(),
                outside: Default::default(),
            },
            api_port: self.api.port(),
            board_port: self.config.cluster.board_port,
            route_port: self.config.cluster.route_port,
        };
        let grant = join::join(&command.token, &command.address, me)
            .await
            .map_err(|e| {
                let status = match &e {
                    join::JoinError::Refused { status, .. } => *status,
                    join::JoinError::Address(_) => 400,
                    join::JoinError::OtherCluster { .. } | join::JoinError::CaMismatch { .. } => {
                        403
                    }
                    _ => 502,
                };
                Refusal::new(status, bramble_base::error_chain(&e))
            })?;
        let grant_files = grant.files();
        let login = ApiCredentials {
            user: grant.api.user.clone(),
            password: grant.api.password.clone(),
        };
        let state_dir = self.config.state_dir.clone();
        let store = Arc::clone(&self.store);
        let saved = tokio::task::spawn_blocking(move || {
            store
                .set_api_credentials(&login)
                .map_err(|e| bramble_base::error_chain(&e))?;
            grant_files
                .save(&state_dir)
                .map_err(|e| bramble_base::error_chain(&e))?;
            match std::fs::remove_file(files::left_path(&state_dir)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(format!(
                    "removing {}: {e}",
                    files::left_path(&state_dir).display()
                )),
                _ => Ok(()),
            }
        })
        .await
        .map_err(|e| Refusal::new(500, e.to_string()))?;
        saved.map_err(|message| {
            Refusal::new(500, format!("keeping the cluster's state: {message}"))
        })?;
        tracing::info!(cluster = %grant.node.cluster, %board, jetstream = grant.node.jetstream, "joined the cluster; restarting into cluster mode");
        Ok(serde_json::json!({
            "cluster": grant.node.cluster,
            "board": board,
            "address": grant.node.address,
            "jetstream": grant.node.jetstream,
        }))
    }
}

/// `cluster.join` in the configuration: joins at start, retrying while the cluster cannot be
/// reached or has no quorum; a refusal for a cause that does not pass (wrong token, name
/// taken) is logged and not retried.
async fn join_at_start(single: Arc<Single>, command: JoinCommand) {
    let state_dir = single.config.state_dir.clone();
    let left = tokio::task::spawn_blocking(move || files::left_cluster(&state_dir))
        .await
        .ok()
        .flatten();
    if left.as_deref() == Some(command.token.cluster.as_str()) {
        tracing::info!(cluster = %command.token.cluster, "this board left cluster {} earlier: cluster.join is not acted on again (`bramble cluster join` joins explicitly)", command.token.cluster);
        return;
    }
    match single.join_patiently(&command, &[502, 503], None).await {
        Ok(_) => single.restart_soon(),
        Err(refusal) => {
            tracing::error!(reason = %refusal.message, "the cluster refused this board (cluster.join)");
        }
    }
}

/// Keeps this board's record up to date with what its functions reserve: memory against the
/// budget and replicas, from the desired state of the board (as the local admission counts
/// them). Ends with the node.
async fn report_usage(
    node: Arc<ClusterNode>,
    store: Arc<Store>,
    defaults: crate::function::Defaults,
) {
    let mut state = store.subscribe();
    let node = Arc::downgrade(&node);
    loop {
        let (used, replicas) = {
            let state = state.borrow_and_update();
            state
                .all_functions()
                .fold((0u64, 0u64), |(used, replicas), (_, _, r)| {
                    (
                        used.saturating_add(crate::function::memory_reservation(r, &defaults)),
                        replicas.saturating_add(r.replicas),
                    )
                })
        };
        let Some(node) = node.upgrade() else { return };
        node.update_me(|me| {
            me.memory.used = used;
            me.functions = u32::try_from(replicas).unwrap_or(u32::MAX);
        });
        drop(node);
        if state.changed().await.is_err() {
            return;
        }
    }
}

/// Keeps this board's record telling the ready replicas of each function it runs (what every
/// board's API sums into `availableReplicas`), re-read whenever a function's status changes.
async fn report_ready(node: Arc<ClusterNode>, local: Arc<LocalProvider>) {
    let Some(mut changes) = local.status_changes() else {
        return;
    };
    let node = Arc::downgrade(&node);
    loop {
        let mut ready = std::collections::BTreeMap::new();
        for namespace in local.list_namespaces().await.unwrap_or_default() {
            for f in local.list_functions(&namespace).await.unwrap_or_default() {
                // Only the cluster's: a function of the board's own outside the cluster never
                // answers for one of the cluster's of the same name.
                if f.available_replicas > 0
                    && f.annotations
                        .contains_key(bramble_cluster::reconcile::SPEC_ANNOTATION)
                {
                    ready.insert(format!("{}.{namespace}", f.name), f.available_replicas);
                }
            }
        }
        let Some(node) = node.upgrade() else { return };
        node.update_me(|me| me.ready = ready);
        drop(node);
        if changes.changed().await.is_err() {
            return;
        }
        // Several replicas start together: one record write for them.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bramble_cluster::membership::{BoardState, HardwareSummary};
    use bramble_cluster::placement::{self, Board, Function, FunctionKey, PlacementInput, Reading};
    use bramble_gateway::types::FunctionDeployment;

    /// The reading a board in a cluster places with ([`super::ClusterSide::start`]).
    fn reading() -> Reading {
        Reading {
            default_memory: None,
            hardware_of: crate::triggers::hardware_grants,
        }
    }

    fn board(name: &str, lines: &[&str]) -> Board {
        Board {
            name: name.into(),
            state: BoardState::Alive,
            leaving: false,
            arch: "arm64".into(),
            platform: None,
            memory_budget: None,
            hardware: HardwareSummary {
                gpio_chip: (!lines.is_empty()).then(|| "pinctrl-bcm2711".into()),
                gpio_lines: lines.iter().map(|l| (*l).to_owned()).collect(),
                ..HardwareSummary::default()
            },
            labels: BTreeMap::new(),
            outside: Default::default(),
        }
    }

    /// A function whose only hardware is a GPIO trigger's line runs on the board with the
    /// line: the trigger grants it the line, as on a single board (grants alone would place it
    /// anywhere, where it could not start).
    #[test]
    fn a_gpio_trigger_places_its_function_where_the_line_is() {
        let deployment = FunctionDeployment {
            service: "button".into(),
            image: "ghcr.io/x/button:1".into(),
            annotations: BTreeMap::from([(
                "bramble.trigger.gpio".to_owned(),
                "GPIO17:falling:pull-up".to_owned(),
            )]),
            ..FunctionDeployment::default()
        };
        let key = FunctionKey::of("openfaas-fn", "button");
        let function =
            Function::from_deployment(key.clone(), 1, &deployment, reading(), None).unwrap();
        assert!(
            function
                .hardware
                .as_ref()
                .unwrap()
                .gpio
                .contains_key("GPIO17")
        );
        for order in [["a", "b"], ["b", "a"]] {
            let boards = order
                .iter()
                .map(|n| board(n, if *n == "b" { &["GPIO17"] } else { &[] }))
                .collect();
            let plan = placement::place(&PlacementInput {
                boards,
                functions: vec![function.clone()],
                previous: placement::Plan::default(),
            });
            let placed = plan.function(&key).unwrap();
            assert_eq!(
                placed.boards,
                BTreeMap::from([("b".to_owned(), 1)]),
                "{plan:?}"
            );
        }
    }
}
