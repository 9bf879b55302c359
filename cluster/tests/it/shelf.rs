//! A shelf of boards for the tests: a [`Lan`], the cluster's identity, and per board a tokio
//! runtime whose threads live in the board's network namespace (`setns` at thread start), so
//! the nats-server it spawns, and every client connection it makes, are on that board.
//!
//! A power cut of a board ([`Shelf::power_cut`]) SIGKILLs its nats-server and drops its
//! runtime with every task on it (heartbeats, watches, leases): nothing of it survives.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use bramble_cluster::engine::monitor::MetaCluster;
use bramble_cluster::engine::{
    EngineConfig, EngineError, HealthCheck, JetStreamConfig, LeafConfig, NatsServer, RouteConfig,
    RouteTls,
};
use bramble_cluster::identity::{BoardIdentity, ClusterIdentity};
use bramble_cluster::kv::{self, Bucket, BucketConfig};
use bramble_cluster::membership::{
    BOARDS_BUCKET, BoardInfo, HardwareSummary, Membership, MembershipConfig, MemoryBudget,
};

use bramble_testkit::lan::Lan;

/// The leaf listener's port on a hub board (benches).
pub const LEAF_PORT: u16 = 7425;

pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The nats-server under test (`BRAMBLE_NATS_SERVER`, default `nats-server`).
pub fn binary() -> PathBuf {
    std::env::var_os("BRAMBLE_NATS_SERVER")
        .map(PathBuf::from)
        .or_else(|| bramble_testkit::harness::find_executable("nats-server"))
        .unwrap_or_else(|| PathBuf::from("nats-server"))
}

pub struct Board {
    pub name: String,
    pub addr: IpAddr,
    pub identity: BoardIdentity,
    pub tls: RouteTls,
    pub dir: tempfile::TempDir,
    runtime: Option<tokio::runtime::Runtime>,
    netns: PathBuf,
    pub server: Option<NatsServer>,
    pub client: Option<async_nats::Client>,
}

impl Board {
    /// A runtime on this board (one worker; blocking threads enter the namespace too).
    fn runtime(&mut self) -> TestResult<tokio::runtime::Handle> {
        if self.runtime.is_none() {
            let ns = Arc::new(std::fs::File::open(&self.netns)?);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .max_blocking_threads(4)
                .enable_all()
                .thread_name(format!("board-{}", self.name))
                .on_thread_start(move || {
                    nix::sched::setns(&*ns, nix::sched::CloneFlags::CLONE_NEWNET)
                        .expect("setns into the board's network namespace");
                })
                .build()?;
            self.runtime = Some(runtime);
        }
        Ok(self
            .runtime
            .as_ref()
            .map(|r| r.handle().clone())
            .ok_or("no runtime")?)
    }

    /// Runs `f` on this board (in its network namespace) and waits for it.
    pub async fn run<F, T>(&mut self, f: F) -> TestResult<T>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        Ok(self.runtime()?.spawn(f).await?)
    }

    /// The running server.
    pub fn server(&self) -> &NatsServer {
        self.server.as_ref().expect("board is running")
    }

    /// A client of this board's server (connected from the board's namespace).
    pub fn client(&self) -> async_nats::Client {
        self.client.clone().expect("board is running")
    }

    pub fn js(&self) -> jetstream::Context {
        jetstream::new(self.client())
    }

    /// Opens (or creates) a bucket through this board. Its creation is the tests' setup, not
    /// what they check: it waits up to 30 s for an answer (on a loaded machine, the first
    /// stream of a cluster that has just formed took longer than a write's 5 s); the bucket
    /// then answers within [`kv::DEFAULT_TIMEOUT`] as bramble's do.
    pub async fn bucket(&self, name: &str, replicas: usize) -> TestResult<Bucket> {
        let mut js = self.js();
        js.set_timeout(Duration::from_secs(30));
        Ok(
            Bucket::open_or_create(&js, &BucketConfig::new(name, replicas))
                .await?
                .with_timeout(kv::DEFAULT_TIMEOUT),
        )
    }

    pub fn pid(&self) -> Option<u32> {
        self.server.as_ref().and_then(NatsServer::pid)
    }
}

pub struct Shelf {
    pub lan: Lan,
    pub cluster: ClusterIdentity,
    pub boards: Vec<Board>,
}

impl Shelf {
    /// `n` boards on a LAN, not started.
    pub fn new(n: usize) -> TestResult<Shelf> {
        let lan = Lan::new(n)?;
        let cluster = ClusterIdentity::init("shelf")?;
        let mut boards = Vec::new();
        for i in 0..n {
            let name = format!("pi{}", i + 1);
            let addr = IpAddr::V4(Lan::address(i));
            let identity = cluster.issue_board(&name, &[addr])?;
            let dir = tempfile::Builder::new()
                .prefix(&format!("bramble-cluster-{name}-"))
                .tempdir()?;
            let tls = identity.write_tls_files(&cluster, &dir.path().join("tls"))?;
            boards.push(Board {
                name,
                addr,
                identity,
                tls,
                dir,
                runtime: None,
                netns: lan.netns(i),
                server: None,
                client: None,
            });
        }
        Ok(Shelf {
            lan,
            cluster,
            boards,
        })
    }

    /// Board `i`'s route listener.
    pub fn route(&self, i: usize) -> SocketAddr {
        SocketAddr::new(
            self.boards[i].addr,
            bramble_cluster::engine::config::DEFAULT_ROUTE_PORT,
        )
    }

    /// Board `i`'s configuration: standalone when `routes` is `None`, else clustered with
    /// routes to those boards; JetStream on or off.
    pub fn config(&self, i: usize, routes: Option<&[usize]>, jetstream: bool) -> EngineConfig {
        let board = &self.boards[i];
        let mut config = EngineConfig::new(
            &board.name,
            board.dir.path(),
            board.identity.client.clone(),
            board.identity.system.clone(),
        );
        config.binary = binary();
        config.jetstream = jetstream.then(JetStreamConfig::default);
        config.cluster = routes.map(|routes| RouteConfig {
            name: self.cluster.cluster.clone(),
            listen: self.route(i),
            routes: routes.iter().map(|&r| self.route(r)).collect(),
            credentials: self.cluster.route.clone(),
            tls: board.tls.clone(),
        });
        config
    }

    /// Board `i`'s leaf listener, when it is a hub (benches).
    pub fn leaf(&self, i: usize) -> SocketAddr {
        SocketAddr::new(self.boards[i].addr, LEAF_PORT)
    }

    /// Board `i` in the leaf-node shape: a board of `hubs` routes to the other hubs, carries
    /// JetStream and accepts leaf connections; any other is a standalone server connected as a
    /// leaf to one of the hubs (same credentials and CA as routes).
    pub fn leaf_config(&self, i: usize, hubs: &[usize]) -> EngineConfig {
        let credentials = self.cluster.route.clone();
        let tls = self.boards[i].tls.clone();
        if hubs.contains(&i) {
            let mut config = self.config(i, Some(hubs), true);
            config.leaf = Some(LeafConfig::Hub {
                listen: self.leaf(i),
                credentials,
                tls,
            });
            config
        } else {
            let mut config = self.config(i, None, false);
            config.leaf = Some(LeafConfig::Member {
                hubs: hubs.iter().map(|&h| self.leaf(h)).collect(),
                credentials,
                tls,
            });
            config
        }
    }

    /// Every board of `members` in a cluster with every other, JetStream on `js` of them.
    pub fn cluster_config(&self, i: usize, members: &[usize], js: &[usize]) -> EngineConfig {
        self.config(i, Some(members), js.contains(&i))
    }

    /// Starts board `i` with `config` (on the board) and connects its client.
    pub async fn start(&mut self, i: usize, config: EngineConfig) -> TestResult {
        let board = &mut self.boards[i];
        let (server, client) = board
            .run(async move {
                let server = NatsServer::start(config).await?;
                let client = server.connect().await?;
                Ok::<_, EngineError>((server, client))
            })
            .await??;
        board.server = Some(server);
        board.client = Some(client);
        Ok(())
    }

    /// Starts `members` clustered with each other (JetStream on `js`), concurrently, and waits
    /// until JetStream has a meta leader on every JetStream board.
    pub async fn start_cluster(&mut self, members: &[usize], js: &[usize]) -> TestResult {
        let configs: Vec<(usize, EngineConfig)> = members
            .iter()
            .map(|&i| (i, self.cluster_config(i, members, js)))
            .collect();
        self.start_all(configs).await?;
        for &i in js {
            self.wait_jetstream(i, Duration::from_secs(60)).await?;
        }
        self.wait_meta_peers(js, Duration::from_secs(60)).await
    }

    /// Starts each board with its configuration, concurrently, and connects its client.
    pub async fn start_all(&mut self, configs: Vec<(usize, EngineConfig)>) -> TestResult {
        let mut starts = Vec::new();
        for (i, config) in configs {
            let handle = self.boards[i].runtime()?;
            starts.push((
                i,
                handle.spawn(async move {
                    let server = NatsServer::start(config).await?;
                    let client = server.connect().await?;
                    Ok::<_, EngineError>((server, client))
                }),
            ));
        }
        for (i, start) in starts {
            let (server, client) = start.await??;
            self.boards[i].server = Some(server);
            self.boards[i].client = Some(client);
        }
        Ok(())
    }

    /// Starts bramble's membership on board `i` (default settings), its record saying whether
    /// it carries JetStream, the `boards` bucket with `replicas`.
    pub async fn membership(
        &mut self,
        i: usize,
        jetstream: bool,
        replicas: usize,
    ) -> TestResult<Membership> {
        let bucket = self.boards[i].bucket(BOARDS_BUCKET, replicas).await?;
        let client = self.boards[i].client();
        let me = BoardInfo {
            jetstream,
            ..self.board_info(i)
        };
        Ok(self.boards[i]
            .run(async move {
                Membership::start(client, bucket, "shelf", me, MembershipConfig::default()).await
            })
            .await??)
    }

    /// Board `i`'s record as its membership writes it (an arm64 board with a GPIO chip, an
    /// I2C bus and a 1-Wire sensor, carrying JetStream; its server running).
    pub fn board_info(&self, i: usize) -> BoardInfo {
        let board = &self.boards[i];
        BoardInfo {
            name: board.name.clone(),
            address: board.addr,
            arch: "arm64".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            nats_version: board.server().version().to_string(),
            memory: MemoryBudget {
                total: 512 << 20,
                used: 0,
            },
            functions: 0,
            hardware: HardwareSummary {
                gpio_chip: Some("pinctrl-bcm2711".into()),
                i2c_buses: vec![1],
                one_wire: vec!["28-00000abc".into()],
                ..HardwareSummary::default()
            },
            labels: BTreeMap::from([("zone".into(), format!("shelf-{i}"))]),
            started_at_ms: 1,
            jetstream: true,
            platform: "linux/arm64".into(),
            api_port: 8080,
            board_port: 7425,
            route_port: 7424,
            leaving: false,
            ready: Default::default(),
            outside: Default::default(),
        }
    }

    /// Waits until the meta leader counts exactly the boards `js` as peers, all current.
    pub async fn wait_meta_peers(&mut self, js: &[usize], timeout: Duration) -> TestResult {
        let deadline = std::time::Instant::now() + timeout;
        let mut names: Vec<String> = js.iter().map(|&i| self.boards[i].name.clone()).collect();
        names.sort();
        loop {
            let mut last = String::new();
            for &i in js {
                let meta = self.meta(i).await?;
                if meta.leader != self.boards[i].name {
                    continue;
                }
                let mut peers: Vec<String> = meta
                    .replicas
                    .iter()
                    .filter(|p| p.current && !p.offline)
                    .map(|p| p.name.clone())
                    .chain(std::iter::once(meta.leader.clone()))
                    .collect();
                peers.sort();
                if peers == names && meta.cluster_size == js.len() {
                    return Ok(());
                }
                last = format!("{meta:?}");
            }
            if std::time::Instant::now() > deadline {
                return Err(format!("meta group never became {names:?}: {last}").into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until board `i`'s JetStream has a meta leader (asked on the board).
    pub async fn wait_jetstream(&mut self, i: usize, timeout: Duration) -> TestResult {
        let monitor = self.boards[i].server().monitor().clone();
        self.boards[i]
            .run(async move { monitor.wait_for(HealthCheck::MetaLeader, timeout).await })
            .await??;
        Ok(())
    }

    /// SIGKILL of board `i`'s nats-server and everything bramble ran on it.
    pub fn power_cut(&mut self, i: usize) {
        let board = &mut self.boards[i];
        let pid = board.pid();
        // The runtime first, so the supervisor cannot restart the server it sees die.
        if let Some(runtime) = board.runtime.take() {
            runtime.shutdown_background();
        }
        if let Some(pid) = pid {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        board.client = None;
        board.server = None;
    }

    /// Stops board `i` cleanly.
    pub async fn stop(&mut self, i: usize) -> TestResult {
        let board = &mut self.boards[i];
        board.client = None;
        if let Some(server) = board.server.take() {
            board.run(server.stop()).await?;
        }
        Ok(())
    }

    /// The meta group as board `i` sees it (`/jsz`, asked on the board).
    pub async fn meta(&mut self, i: usize) -> TestResult<MetaCluster> {
        let monitor = self.boards[i].server().monitor().clone();
        let info = self.boards[i]
            .run(async move { monitor.jetstream().await })
            .await??;
        Ok(info.meta_cluster.unwrap_or_default())
    }

    /// A client of board `i`'s system account (peer removal, step-downs).
    pub async fn system_client(&mut self, i: usize) -> TestResult<async_nats::Client> {
        let config = self.boards[i].server().config().clone();
        Ok(self.boards[i]
            .run(async move {
                let creds = config.system.clone();
                async_nats::ConnectOptions::with_user_and_password(creds.user, creds.password)
                    .connect(config.client_url())
                    .await
            })
            .await??)
    }

    /// A monitoring endpoint of board `i`'s server (`/varz`, `/routez`), asked on the board.
    pub async fn monitor_json(&mut self, i: usize, path: &str) -> TestResult<serde_json::Value> {
        let url = format!("{}{path}", self.boards[i].server().config().monitor_url());
        Ok(self.boards[i]
            .run(async move {
                let http = reqwest::Client::builder().no_proxy().build()?;
                http.get(url)
                    .send()
                    .await?
                    .json::<serde_json::Value>()
                    .await
            })
            .await??)
    }

    /// How many other servers board `i`'s server has a route to (`/routez`, asked on the
    /// board), and its route connections (2.10 pools several per server).
    pub async fn route_peers(&mut self, i: usize) -> TestResult<(usize, usize)> {
        let routez = self.monitor_json(i, "/routez").await?;
        let routes = routez["routes"].as_array().cloned().unwrap_or_default();
        let peers: std::collections::BTreeSet<&str> = routes
            .iter()
            .filter_map(|r| r["remote_id"].as_str())
            .collect();
        Ok((peers.len(), routes.len()))
    }

    /// Board `i`'s nats-server RSS in bytes.
    pub async fn rss(&mut self, i: usize) -> TestResult<u64> {
        let pid = self.boards[i].pid().ok_or("not running")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .ok_or("no VmRSS")?
            .parse()?;
        Ok(kib * 1024)
    }
}

impl Drop for Shelf {
    fn drop(&mut self) {
        for i in 0..self.boards.len() {
            self.power_cut(i);
        }
    }
}
