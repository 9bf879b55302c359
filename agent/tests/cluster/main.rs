//! Multi-board tests of cluster mode: real `bramble up` processes, one per board, each in its
//! own network namespace on a bridge that plays the LAN ([`bramble_testkit::lan::Lan`]), each
//! starting its own nats-server. Boards are driven with the real `bramble cluster` CLI, entered
//! with `nsenter --net=` like an operator's shell on the board.
//!
//! These steps need no containerd (no function is deployed): each board's `bramble up` points
//! at a containerd socket that does not exist, which it tolerates (it waits for containerd, the
//! API answers meanwhile). Measured figures are printed (`measured: ...`), never asserted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod dashboard;

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use bramble_testkit::harness::{self, Need, Trial};
use bramble_testkit::lan::Lan;
use serde_json::Value;

/// The `bramble` binary the boards run: this build's, or `BRAMBLE_CLUSTER_BINARY` (e.g. a release
/// build, to measure its memory).
fn bramble() -> String {
    std::env::var("BRAMBLE_CLUSTER_BINARY")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_bramble").to_owned())
}
type TestResult = Result<(), Box<dyn std::error::Error>>;

/// One board: a `bramble up` in namespace `i` of the LAN, with its own directories.
struct Board {
    netns: PathBuf,
    dir: PathBuf,
    name: String,
    address: std::net::Ipv4Addr,
    /// More flags of `bramble up`.
    extra: Vec<String>,
    up: Option<Child>,
}

impl Board {
    fn new(lan: &Lan, i: usize, name: &str) -> Board {
        let dir =
            std::env::temp_dir().join(format!("bramble-cluster-{}-{i}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Board {
            netns: lan.netns(i),
            dir,
            name: name.to_owned(),
            address: Lan::address(i),
            extra: Vec::new(),
            up: None,
        }
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("bramble.log"))
            .unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.netns.display()))
            .arg(bramble())
            .arg("up")
            .args(["--listen", "0.0.0.0:8080"])
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--run-dir")
            .arg(self.dir.join("run"))
            .arg("--containerd-socket")
            .arg(self.dir.join("no-containerd.sock"))
            .args(["--hardware-backend", "simulator"])
            .args(["--cluster-board", &self.name])
            .args(["--cluster-address", &self.address.to_string()])
            .args(["--cluster-dead-after", "5s"])
            .args(&self.extra)
            .env("BRAMBLE_LOG", "info,bramble_cluster=debug")
            .env_remove("BRAMBLE_URL")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.up = Some(child);
    }

    /// `bramble cluster ARGS` on this board.
    fn cluster(&self, args: &[&str]) -> Output {
        let mut all = vec!["cluster"];
        all.extend_from_slice(args);
        self.bramble(&all)
    }

    /// `bramble ARGS` (any command that talks to the node's API) on this board.
    fn bramble(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net={}", self.netns.display()))
            .arg(bramble())
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

    /// `bramble describe NAME --json` on this board (`None`: not found).
    fn describe(&self, name: &str) -> Option<Value> {
        let out = self.bramble(&["describe", name, "--json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    /// `bramble cluster ARGS --json`, which must succeed.
    fn cluster_ok(&self, args: &[&str]) -> Value {
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
    fn cluster_refused(&self, args: &[&str]) -> String {
        let out = self.cluster(args);
        assert!(
            !out.status.success(),
            "{}: bramble cluster {args:?} succeeded: {}",
            self.name,
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("bramble.log")).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let from = lines.len().saturating_sub(40);
        format!(
            "--- {} log tail ---\n{}",
            self.name,
            lines[from..].join("\n")
        )
    }

    /// Waits until the node answers (`GET /system/cluster`, in a cluster or not).
    async fn wait_up(&self) {
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
    fn doctor_nats(&self) -> Value {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.netns.display()))
            .arg(bramble())
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

    /// RSS of bramble and of its nats-server, bytes.
    fn rss(&self) -> (u64, u64) {
        let of = |pid: Option<i32>| {
            pid.and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
                .and_then(|status| {
                    status
                        .lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                })
                .map_or(0, |kb| kb * 1024)
        };
        let bramble = self.up.as_ref().and_then(|c| i32::try_from(c.id()).ok());
        (of(bramble), of(self.nats_pid()))
    }

    fn nats_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.state_dir().join("cluster/nats-server.pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
    }

    /// A power cut: SIGKILL of bramble and its nats-server.
    fn power_cut(&mut self) {
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
    }

    /// A clean stop (SIGTERM), as `systemctl stop` does.
    fn stop(&mut self) {
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

fn boards_of(status: &Value) -> Vec<(String, String, bool)> {
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

/// Waits until `board`'s status satisfies `check`; returns it.
async fn wait_status(board: &Board, what: &str, check: impl Fn(&Value) -> bool) -> Value {
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
async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn names_states(status: &Value) -> Vec<(String, String)> {
    boards_of(status)
        .into_iter()
        .map(|(n, s, _)| (n, s))
        .collect()
}

fn alive(names: &[&str]) -> Vec<(String, String)> {
    names
        .iter()
        .map(|n| ((*n).to_owned(), "alive".to_owned()))
        .collect()
}

/// init on one board, join of two more, status on each, a wrong token and a taken name
/// refused, a board without JetStream joining and leaving, an alive board's removal refused,
/// a dead board removed, the last two JetStream boards refusing to shrink to one, and a
/// restart in cluster mode.
async fn init_join_status_leave_remove() -> TestResult {
    let suite = Instant::now();
    let lan = Lan::new(4)?;
    let mut b0 = Board::new(&lan, 0, "b0");
    let mut b1 = Board::new(&lan, 1, "b1");
    let mut b2 = Board::new(&lan, 2, "b2");
    for b in [&mut b0, &mut b1, &mut b2] {
        b.start();
    }
    for b in [&b0, &b1, &b2] {
        b.wait_up().await;
    }
    // Not in a cluster yet: a clear answer.
    let refused = b1.cluster_refused(&["status"]);
    assert!(refused.contains("not in a cluster"), "{refused}");

    let started = Instant::now();
    let init = b0.cluster_ok(&["init", "--name", "shelf"]);
    println!("measured: init → in cluster mode: {:?}", started.elapsed());
    let join = init["join"].as_str().unwrap().to_owned();
    let (token, address) = join.split_once(' ').unwrap();
    assert_eq!(address, "10.77.0.1:8080");
    assert!(token.starts_with("bramble1.shelf."), "{token}");

    // A token of another cluster of the same name (another CA): refused, nothing changed.
    let other = bramble_cluster::identity::ClusterIdentity::init("shelf")?.join_token()?;
    let refused = b1.cluster_refused(&["join", &other.to_string(), address]);
    assert!(refused.contains("does not match"), "{refused}");
    let refused = b1.cluster_refused(&["status"]);
    assert!(refused.contains("not in a cluster"), "{refused}");

    for b in [&b1, &b2] {
        let started = Instant::now();
        let joined = b.cluster_ok(&["join", token, address]);
        println!(
            "measured: {} join → in cluster mode: {:?}",
            b.name,
            started.elapsed()
        );
        assert_eq!(joined["cluster"], "shelf");
        assert_eq!(joined["jetstream"], true, "{joined}");
    }
    // One login for the whole cluster: the joined boards took b0's.
    let login = |b: &Board| {
        std::fs::read_to_string(b.state_dir().join("secrets/basic-auth-password")).unwrap()
    };
    assert_eq!(login(&b1), login(&b0));
    assert_eq!(login(&b2), login(&b0));

    // Every board sees every board alive, and all three carry JetStream.
    for b in [&b0, &b1, &b2] {
        let status = wait_status(b, "three boards alive", |s| {
            names_states(s) == alive(&["b0", "b1", "b2"])
        })
        .await;
        assert!(boards_of(&status).iter().all(|(_, _, js)| *js), "{status}");
        let first = &status["boards"][0];
        assert_eq!(first["address"], "10.77.0.1:8080");
        assert_eq!(first["arch"], "amd64");
        assert!(first["lastSeen"].is_string(), "{first}");
        assert_eq!(first["memory"]["used"], 0, "{first}");
        assert!(
            first["memory"]["budget"].as_u64().unwrap_or(0) > 0,
            "{first}"
        );
        assert_eq!(first["functions"], 0, "{first}");
        // The simulator's hardware (its BME280 on I2C bus 1), as the board's inventory says.
        assert_eq!(first["hardware"]["gpioChip"], "simulator", "{first}");
        assert_eq!(
            first["hardware"]["i2cBuses"],
            serde_json::json!([1]),
            "{first}"
        );
    }
    // doctor checks the nats-server in cluster mode, and not at all on a single board.
    let nats = b1.doctor_nats();
    assert_eq!(nats["status"], "ok", "{nats}");
    for b in [&b0, &b1, &b2] {
        let (bramble, nats) = b.rss();
        println!(
            "measured: {} idle RSS: bramble {} MiB + nats-server {} MiB ({})",
            b.name,
            bramble >> 20,
            nats >> 20,
            if std::env::var_os("BRAMBLE_CLUSTER_BINARY").is_some() {
                "BRAMBLE_CLUSTER_BINARY"
            } else {
                "this build"
            }
        );
    }
    let table = b1.cluster(&["status"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("BOARD") && table.contains("b2*") && table.contains("alive"),
        "{table}"
    );

    // One desired state: a function deployed through one board is listed by every board, with
    // where the placer put it; a scale through another spreads it; a deployment that no board
    // can take is refused at once. (No containerd here: the boards cannot start the replicas,
    // so none is ready; what runs is the runtime tests' business.)
    let deployed = b0.bramble(&[
        "deploy",
        "--name",
        "hello",
        "--image",
        "hello:latest",
        "--memory",
        "32Mi",
        "--json",
    ]);
    assert!(
        deployed.status.success(),
        "deploy through b0: {}\n{}",
        String::from_utf8_lossy(&deployed.stderr),
        b0.log_tail()
    );
    let placed_on = |status: &Value| -> Vec<(String, u64)> {
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
    };
    let placed = Instant::now();
    for b in [&b0, &b1, &b2] {
        wait_for(&format!("{} shows hello placed", b.name), || {
            b.describe("hello")
                .is_some_and(|s| placed_on(&s).len() == 1 && s["replicas"] == 1)
        })
        .await;
    }
    println!(
        "measured: deploy through b0 → placed, shown by every board: {:?}",
        placed.elapsed()
    );
    // A board that does not run it says which board does (routing between boards comes later).
    let host = b0
        .describe("hello")
        .map(|s| placed_on(&s))
        .and_then(|on| on.first().map(|(board, _)| board.clone()))
        .unwrap_or_default();
    let other = [&b0, &b1, &b2]
        .into_iter()
        .find(|b| b.name != host)
        .unwrap();
    let invoked = other.bramble(&["invoke", "hello"]);
    let why = String::from_utf8_lossy(&invoked.stderr);
    assert!(
        !invoked.status.success() && why.contains(&format!("runs on {host}")),
        "invoke on {}: {why}",
        other.name
    );
    let scaled = b2.bramble(&["scale", "hello", "2"]);
    assert!(
        scaled.status.success(),
        "{}",
        String::from_utf8_lossy(&scaled.stderr)
    );
    wait_for("hello spread over two boards", || {
        b1.describe("hello").is_some_and(|s| {
            let on = placed_on(&s);
            on.len() == 2 && on.iter().all(|(_, n)| *n == 1)
        })
    })
    .await;
    let stack = b1.dir.join("stack.yml");
    std::fs::write(
        &stack,
        "version: 1.0\nprovider:\n  name: openfaas\nfunctions:\n  attic:\n    image: hello:latest\n    constraints:\n      - node=attic\n",
    )?;
    let refused = b1.bramble(&["deploy", "-f", stack.to_str().unwrap_or_default()]);
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && why.contains("node=attic"),
        "{why}"
    );
    assert!(
        b2.describe("attic").is_none(),
        "a refused deployment was stored"
    );
    let removed = b1.bramble(&["rm", "hello"]);
    assert!(
        removed.status.success(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
    assert!(
        b1.describe("hello").is_none(),
        "removed, yet still listed by the board that took the change"
    );
    wait_for("hello gone from b0", || b0.describe("hello").is_none()).await;

    // A fourth board under a name already taken: refused, nothing changed.
    let mut b3 = Board::new(&lan, 3, "b1");
    b3.start();
    b3.wait_up().await;
    assert_eq!(b3.doctor_nats(), Value::Null);
    let refused = b3.cluster_refused(&["join", token, address]);
    assert!(refused.contains("already in the cluster"), "{refused}");
    b3.stop();
    // The fourth joins by its configuration (`cluster.join`, what the SD image's first boot
    // writes), with no CLI.
    let mut b3 = Board::new(&lan, 3, "b3");
    b3.extra = vec!["--cluster-join".into(), join.clone()];
    b3.start();
    let b3_status = wait_status(&b3, "b3 joined by its configuration", |s| {
        s["connected"] == true && names_states(s).len() == 4
    })
    .await;
    // At most three boards carry JetStream: the fourth joins without it.
    let me = boards_of(&b3_status)
        .into_iter()
        .find(|(n, _, _)| n == "b3");
    assert_eq!(me.map(|(_, _, js)| js), Some(false), "{b3_status}");
    wait_status(&b0, "four boards alive", |s| {
        names_states(s) == alive(&["b0", "b1", "b2", "b3"])
    })
    .await;

    // It leaves: back to single-board mode, and the cluster forgets it.
    let left = b3.cluster_ok(&["leave"]);
    assert_eq!(left["cluster"], "shelf");
    wait_status(&b0, "b3 gone", |s| {
        names_states(s) == alive(&["b0", "b1", "b2"])
    })
    .await;
    b3.wait_up().await;
    let started = Instant::now();
    loop {
        let refused = b3.cluster_refused(&["status"]);
        if refused.contains("not in a cluster") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{refused}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!b3.state_dir().join("cluster/node.json").exists());
    assert_eq!(
        std::fs::read_to_string(b3.state_dir().join("cluster-left")).unwrap(),
        "shelf"
    );
    // Its configuration still says cluster.join: a board that left does not join again.
    let started = Instant::now();
    while !b3.log().contains("is not acted on again") {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{}",
            b3.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = b3.cluster_refused(&["status"]);
    assert!(refused.contains("not in a cluster"), "{refused}");

    // An alive board is not removed.
    let refused = b0.cluster_refused(&["remove", "b2"]);
    assert!(refused.contains("only a dead board"), "{refused}");

    // A power cut of b2: dead after cluster.dead_after, then removed.
    b2.power_cut();
    let cut = Instant::now();
    wait_status(&b0, "b2 dead", |s| {
        names_states(s).contains(&("b2".to_owned(), "dead".to_owned()))
    })
    .await;
    println!(
        "measured: power cut → dead in b0's status: {:?} (dead_after 5s)",
        cut.elapsed()
    );
    b0.cluster_ok(&["remove", "b2"]);
    wait_status(&b1, "b2 forgotten", |s| {
        names_states(s) == alive(&["b0", "b1"])
    })
    .await;

    // Two JetStream boards and none to promote: the cluster cannot shrink to one.
    let refused = b1.cluster_refused(&["leave"]);
    assert!(refused.contains("cannot shrink"), "{refused}");

    // A restart keeps the board in its cluster.
    b0.stop();
    b0.start();
    b0.wait_up().await;
    wait_status(&b0, "b0 back in the cluster", |s| {
        s["connected"] == true && names_states(s) == alive(&["b0", "b1"])
    })
    .await;
    println!(
        "measured: suite of init/join/status/leave/remove: {:?}",
        suite.elapsed()
    );
    Ok(())
}

fn main() {
    let nats: &'static str = Box::leak(
        // As in the engine's tests: `BRAMBLE_NATS_SERVER` (inherited by every board's bramble,
        // whose engine runs it) picks the nats-server under test.
        std::env::var(bramble_cluster::engine::config::BINARY_ENV)
            .unwrap_or_else(|_| "nats-server".into())
            .into_boxed_str(),
    );
    let trials = vec![
        Trial::test("init_join_status_leave_remove", || {
            harness::block_on(init_join_status_leave_remove())
        }),
        dashboard::trial(),
    ];
    harness::main(
        &[
            Need::Root,
            Need::Binary(nats),
            Need::Binary("ip"),
            Need::Binary("iptables"),
            Need::Binary("nsenter"),
        ],
        trials,
    )
}
