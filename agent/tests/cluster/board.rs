//! Boards of a cluster on one machine, for the multi-board tests (this binary) and the cluster
//! benchmark (`agent/benches/cluster.rs`, which includes this file): a real
//! `bramble up` per board in its own network namespace of a [`Lan`], started with `nsenter
//! --net=` (never `ip netns exec`: the board's containerd, in the host's mount namespace, must
//! see the network namespaces bramble pins), each starting its own nats-server, and — made with
//! [`Board::with_containerd`] — its own containerd holding the fixture image. Boards are driven
//! with the real `bramble` CLI, entered the same way, like an operator's shell on the board.
//!
//! A board without containerd points at a socket that does not exist, which `bramble up`
//! tolerates (it waits for containerd; the API answers meanwhile). [`Board::power_cut`] is
//! SIGKILL of everything the board runs. `BRAMBLE_KEEP_TEST_DIRS=1` keeps each board's
//! directory (its log, state) after the test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use bramble_runtime::image::platform::Platform;
use serde_json::Value;

use bramble_testkit::http;
use bramble_testkit::lan::Lan;

/// A board's API, as a client on the board sees it.
pub(crate) const API: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8080);

/// One board: a `bramble up` in namespace `i` of the LAN, with its own directories.
pub(crate) struct Board {
    pub(crate) netns: PathBuf,
    pub(crate) dir: PathBuf,
    pub(crate) name: String,
    pub(crate) address: std::net::Ipv4Addr,
    /// More flags of `bramble up`.
    pub(crate) extra: Vec<String>,
    up: Option<Child>,
    /// The `bramble` binary it runs.
    binary: PathBuf,
    /// The board's own containerd (with the fixture image), when it runs functions.
    pub(crate) env: Option<bramble_testkit::TestEnv>,
}

impl Board {
    /// A board (not started) running `binary`, in namespace `i` of `lan`.
    pub(crate) fn new(binary: &Path, lan: &Lan, i: usize, name: &str) -> Board {
        // Unique in this process too: trials of one process (`cargo test`) may name their
        // boards alike.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "bramble-cluster-{}-{n}-{i}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Board {
            netns: lan.netns(i),
            dir,
            name: name.to_owned(),
            address: Lan::address(i),
            extra: Vec::new(),
            up: None,
            binary: binary.to_path_buf(),
            env: None,
        }
    }

    /// A board that runs functions: its own containerd, holding the fixture image.
    pub(crate) async fn with_containerd(binary: &Path, lan: &Lan, i: usize, name: &str) -> Board {
        let mut board = Board::new(binary, lan, i, name);
        let env = bramble_testkit::TestEnv::new(name).unwrap();
        bramble_testkit::node::import_fixture(&env, Platform::host())
            .await
            .unwrap();
        // Its containerd namespace, bridge and subnet are its own (runc's state and the
        // cgroups are shared by every containerd of this machine).
        let c = &env.config;
        std::fs::write(
            board.dir.join("bramble.toml"),
            format!(
                "containerd_namespace = \"{}\"\n\n[network]\nbridge = \"{}\"\nsubnet = \"{}\"\n",
                c.namespace, c.network.bridge, c.network.subnet
            ),
        )
        .unwrap();
        board.env = Some(env);
        board
    }

    pub(crate) fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    pub(crate) fn start(&mut self) {
        // Power back on: the board's containerd first, as at boot.
        if let Some(env) = self.env.as_mut()
            && env.containerd.pid().is_none()
        {
            env.containerd.start_again().unwrap();
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("bramble.log"))
            .unwrap();
        let (config, run_dir, socket) = match &self.env {
            Some(env) => (
                vec![
                    "--config".to_owned(),
                    self.dir.join("bramble.toml").display().to_string(),
                ],
                env.config.run_dir.clone(),
                env.containerd.socket().to_path_buf(),
            ),
            None => (
                Vec::new(),
                self.dir.join("run"),
                self.dir.join("no-containerd.sock"),
            ),
        };
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.netns.display()))
            .arg(&self.binary)
            .arg("up")
            .args(config)
            .args(["--listen", "0.0.0.0:8080"])
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--run-dir")
            .arg(run_dir)
            .arg("--containerd-socket")
            .arg(socket)
            .args(["--hardware-backend", "simulator"])
            .args(["--cluster-board", &self.name])
            .args(["--cluster-address", &self.address.to_string()])
            .args(["--cluster-dead-after", "5s"])
            .args(&self.extra)
            .env(
                "BRAMBLE_LOG",
                "info,bramble_cluster=debug,bramble_gateway::queue=debug,nats_server=debug",
            )
            .env_remove("BRAMBLE_URL")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.up = Some(child);
    }

    /// `bramble cluster ARGS` on this board.
    pub(crate) fn cluster(&self, args: &[&str]) -> Output {
        let mut all = vec!["cluster"];
        all.extend_from_slice(args);
        self.bramble(&all)
    }

    /// `bramble ARGS` (any command that talks to the node's API) on this board.
    pub(crate) fn bramble(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net={}", self.netns.display()))
            .arg(&self.binary)
            .args(args)
            .args(["-g", "http://127.0.0.1:8080"])
            .arg("--state-dir")
            .arg(self.state_dir())
            .env_remove("BRAMBLE_USER")
            .env_remove("BRAMBLE_PASSWORD")
            .env_remove("BRAMBLE_URL")
            .env_remove("OPENFAAS_URL")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// [`Board::bramble`], which must succeed (its stderr and the board's log otherwise).
    pub(crate) fn bramble_ok(&self, args: &[&str]) -> Output {
        let out = self.bramble(args);
        assert!(
            out.status.success(),
            "bramble {}: {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        out
    }

    /// `bramble describe NAME --json` on this board (`None`: not found).
    pub(crate) fn describe(&self, name: &str) -> Option<Value> {
        let out = self.bramble(&["describe", name, "--json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    /// `bramble cluster ARGS --json`, which must succeed.
    pub(crate) fn cluster_ok(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.cluster(&all);
        assert!(
            out.status.success(),
            "{}: bramble cluster {args:?} failed: {}\n{}",
            self.name,
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{}: not JSON ({e}): {}",
                self.name,
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// `bramble cluster ARGS`, which must fail; its stderr.
    pub(crate) fn cluster_refused(&self, args: &[&str]) -> String {
        let out = self.cluster(args);
        assert!(
            !out.status.success(),
            "{}: bramble cluster {args:?} succeeded: {}",
            self.name,
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("bramble.log")).unwrap_or_default()
    }

    pub(crate) fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let from = lines.len().saturating_sub(40);
        format!(
            "--- {} log tail ---\n{}",
            self.name,
            lines[from..].join("\n")
        )
    }

    /// The end of what its nats-server said about leaders, quorum and problems (the boards
    /// log the server at debug).
    pub(crate) fn nats_log(&self) -> String {
        let log = self.log();
        // Elections, quorum and warnings: what tells why a stream has no leader.
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("nats_server"))
            .filter(|l| {
                ["leader", "quorum", "stall", "[WRN]", "[ERR]", "Restored"]
                    .iter()
                    .any(|w| l.contains(w))
            })
            .collect();
        let from = lines.len().saturating_sub(60);
        format!(
            "--- {} nats-server log ---\n{}",
            self.name,
            lines[from..].join("\n")
        )
    }

    /// Waits until the node answers (`GET /system/cluster`, in a cluster or not).
    pub(crate) async fn wait_up(&self) {
        let started = Instant::now();
        loop {
            let out = self.cluster(&["status", "--json"]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            if out.status.success() || stderr.contains("not in a cluster") {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{} did not answer: {stderr}\n{}",
                self.name,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `bramble doctor --json` on this board: its `nats-server` check.
    pub(crate) fn doctor_nats(&self) -> Value {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.netns.display()))
            .arg(&self.binary)
            .args(["doctor", "--json", "--state-dir"])
            .arg(self.state_dir())
            .arg("--containerd-socket")
            .arg(self.dir.join("no-containerd.sock"))
            .output()
            .unwrap();
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "doctor --json: {e}: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        report["checks"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == "nats-server").cloned())
            .unwrap_or(Value::Null)
    }

    /// Resident memory of bramble and of its nats-server.
    pub(crate) fn rss(&self) -> (Rss, Rss) {
        let bramble = self.up.as_ref().and_then(|c| i32::try_from(c.id()).ok());
        (Rss::of(bramble), Rss::of(self.nats_pid()))
    }

    pub(crate) fn nats_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.state_dir().join("cluster/nats-server.pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
    }

    /// A power cut: SIGKILL of bramble, its nats-server and, on a board that runs functions,
    /// its containerd, shims and containers.
    pub(crate) fn power_cut(&mut self) {
        let nats = self.nats_pid();
        if let Some(mut child) = self.up.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(pid) = nats {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if let Some(env) = self.env.as_mut() {
            env.containerd.power_cut();
        }
    }

    /// A clean stop (SIGTERM), as `systemctl stop` does.
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.up.take() {
            // nsenter execs bramble: the child's PID is bramble's.
            let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Board {
    fn drop(&mut self) {
        self.power_cut();
        if std::env::var_os("BRAMBLE_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub(crate) fn boards_of(status: &Value) -> Vec<(String, String, bool)> {
    status["boards"]
        .as_array()
        .map(|boards| {
            boards
                .iter()
                .map(|b| {
                    (
                        b["name"].as_str().unwrap_or_default().to_owned(),
                        b["state"].as_str().unwrap_or_default().to_owned(),
                        b["jetstream"].as_bool().unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A process's resident memory, bytes (0 when it is not running): all of it, and the part
/// that is its own (anonymous: heap, stacks) rather than pages of its executable and
/// libraries, which the kernel can drop and read again.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Rss {
    pub(crate) total: u64,
    pub(crate) anon: u64,
}

impl Rss {
    fn of(pid: Option<i32>) -> Rss {
        let Some(status) =
            pid.and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        else {
            return Rss::default();
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map_or(0, |kb| kb * 1024)
        };
        Rss {
            total: field("VmRSS:"),
            anon: field("RssAnon:"),
        }
    }

    /// "23.1 MiB (own 5.2)".
    pub(crate) fn mib(self) -> String {
        format!(
            "{:.1} MiB (own {:.1})",
            self.total as f64 / 1048576.0,
            self.anon as f64 / 1048576.0
        )
    }
}

/// Waits until `board`'s status satisfies `check`; returns it.
pub(crate) async fn wait_status(
    board: &Board,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    let mut last = Value::Null;
    while started.elapsed() < Duration::from_secs(60) {
        let out = board.cluster(&["status", "--json"]);
        if out.status.success()
            && let Ok(status) = serde_json::from_slice::<Value>(&out.stdout)
        {
            if check(&status) {
                return status;
            }
            last = status;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "{}: {what} did not happen within 60 s; last status: {last}\n{}",
        board.name,
        board.log_tail()
    )
}

/// Waits (at most 30 s) until `done` holds.
pub(crate) async fn wait_for(what: &str, done: impl FnMut() -> bool) {
    wait_within(Duration::from_secs(30), what, done).await;
}

/// Waits (at most `bound`) until `done` holds.
pub(crate) async fn wait_within(bound: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < bound,
            "timed out after {bound:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) fn names_states(status: &Value) -> Vec<(String, String)> {
    boards_of(status)
        .into_iter()
        .map(|(n, s, _)| (n, s))
        .collect()
}

pub(crate) fn alive(names: &[&str]) -> Vec<(String, String)> {
    names
        .iter()
        .map(|n| ((*n).to_owned(), "alive".to_owned()))
        .collect()
}

/// Runs `f` on a thread inside network namespace `netns` (a client on that board), with a
/// runtime of its own: sockets made there belong to that namespace.
pub(crate) fn in_netns<T: Send>(netns: &Path, f: impl AsyncFnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let ns = std::fs::File::open(netns).unwrap();
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(f())
            })
            .join()
            .unwrap()
    })
}

/// `GET PATH` on `board`'s API (from the board itself): status and body.
pub(crate) fn get(board: &Board, path: &str) -> (u16, String) {
    in_netns(&board.netns, async || {
        let r = http::request(API, "GET", path, &[], b"", Duration::from_secs(30))
            .await
            .unwrap();
        (r.status, r.text())
    })
}

/// Three boards b0, b1, b2 with their own containerd, in one cluster, all alive.
pub(crate) async fn shelf(binary: &Path, lan: &Lan) -> Vec<Board> {
    let mut boards = Vec::new();
    for (i, name) in ["b0", "b1", "b2"].into_iter().enumerate() {
        boards.push(Board::with_containerd(binary, lan, i, name).await);
    }
    for b in &mut boards {
        b.start();
    }
    for b in &boards {
        b.wait_up().await;
    }
    let init = boards[0].cluster_ok(&["init", "--name", "shelf"]);
    let join = init["join"].as_str().unwrap().to_owned();
    let (token, address) = join.split_once(' ').unwrap();
    for b in &boards[1..] {
        b.cluster_ok(&["join", token, address]);
    }
    for b in &boards {
        wait_status(b, "three boards alive", |s| {
            names_states(s) == alive(&["b0", "b1", "b2"])
        })
        .await;
    }
    // Settled: every stream has its three copies, all current (a board's death loses no
    // quorum from here on).
    wait_status(&boards[0], "three current copies of every stream", |s| {
        s["replication"]["copies"] == 3
            && s["replication"]["behind"]
                .as_array()
                .is_some_and(Vec::is_empty)
    })
    .await;
    boards
}

/// Where a function's status (`describe --json`) says the plan puts it: (board, replicas)
/// placed.
pub(crate) fn placed_on(status: &Value) -> Vec<(String, u64)> {
    status["bramble"]["replicas"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter(|p| p["state"] == "placed")
                .map(|p| {
                    (
                        p["board"].as_str().unwrap_or_default().to_owned(),
                        p["replicas"].as_u64().unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Deploys through `board`, as a faas-cli stack file, functions of the fixture image (32 MiB
/// limit) each with one constraint: `(name, constraint)`.
pub(crate) fn deploy_constrained(board: &Board, functions: &[(&str, &str)]) {
    let mut stack = String::from("version: 1.0\nprovider:\n  name: openfaas\nfunctions:\n");
    for (name, constraint) in functions {
        stack.push_str(&format!(
            "  {name}:\n    image: {}\n    limits:\n      memory: 32Mi\n    constraints:\n      - {constraint}\n",
            bramble_testkit::node::FIXTURE_IMAGE
        ));
    }
    let file = board.dir.join("stack.yml");
    std::fs::write(&file, stack).unwrap();
    board.bramble_ok(&["deploy", "-f", file.to_str().unwrap()]);
}
