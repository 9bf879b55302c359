//! Multi-board tests of cluster mode: real `bramble up` processes, one per board, each in its
//! own network namespace on a bridge that plays the LAN ([`bramble_testkit::lan::Lan`]), each
//! starting its own nats-server ([`board::Board`]). Boards are driven with the
//! real `bramble cluster` CLI, entered with `nsenter --net=` like an operator's shell on the
//! board.
//!
//! Forming, growing and shrinking need no containerd; the `routing` and `partition` tests run
//! functions, each board with its own containerd. Measured figures are printed
//! (`measured: ...`), never asserted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod board;
mod calls;
mod dashboard;
mod growth;
mod partition;
mod routing;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use board::{Board, alive, boards_of, names_states, placed_on, wait_for, wait_status};
use bramble_testkit::harness::{self, Need, Trial};
use bramble_testkit::lan::Lan;
use serde_json::Value;

/// The `bramble` binary the boards run: this build's, or `BRAMBLE_CLUSTER_BINARY` (e.g. a release
/// build, to measure its memory).
fn bramble() -> PathBuf {
    std::env::var_os("BRAMBLE_CLUSTER_BINARY").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_bramble")),
        PathBuf::from,
    )
}

/// Board `i` of `lan`, running [`bramble`].
fn board(lan: &Lan, i: usize, name: &str) -> Board {
    Board::new(&bramble(), lan, i, name)
}
type TestResult = Result<(), Box<dyn std::error::Error>>;

/// init on one board, join of two more, status on each, a wrong token and a taken name
/// refused, a board without JetStream joining and leaving, an alive board's removal refused,
/// a dead board removed, the last two JetStream boards refusing to shrink to one, and a
/// restart in cluster mode.
async fn init_join_status_leave_remove() -> TestResult {
    let suite = Instant::now();
    let lan = Lan::new(4)?;
    let mut b0 = board(&lan, 0, "b0");
    let mut b1 = board(&lan, 1, "b1");
    let mut b2 = board(&lan, 2, "b2");
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
    // doctor checks the nats-server in cluster mode, and not at all on a single board. Right
    // after a join the JetStream meta group may still be catching up ("not current with the
    // meta leader", a true warning at that moment): it must become ok.
    let started = Instant::now();
    wait_for("doctor: nats-server ok on b1", || {
        b1.doctor_nats()["status"] == "ok"
    })
    .await;
    println!(
        "measured: all joined → doctor's nats-server check ok: {:?}",
        started.elapsed()
    );
    let nats = b1.doctor_nats();
    assert_eq!(nats["status"], "ok", "{nats}");
    for b in [&b0, &b1, &b2] {
        let (bramble, nats) = b.rss();
        println!(
            "measured: {} idle RSS: bramble {} + nats-server {} ({})",
            b.name,
            bramble.mib(),
            nats.mib(),
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
    // (Invocations between boards, which need replicas that run: the `routing` tests.)
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
    let mut b3 = board(&lan, 3, "b1");
    b3.start();
    b3.wait_up().await;
    assert_eq!(b3.doctor_nats(), Value::Null);
    let refused = b3.cluster_refused(&["join", token, address]);
    assert!(refused.contains("already in the cluster"), "{refused}");
    b3.stop();
    // The fourth joins by its configuration (`cluster.join`, what the SD image's first boot
    // writes), with no CLI.
    let mut b3 = board(&lan, 3, "b3");
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
        Trial::test("deploy_on_one_board_invoke_on_every_board", || {
            harness::block_on(routing::deploy_on_one_board_invoke_on_every_board())
        }),
        Trial::test("a_board_powered_off_under_load", || {
            harness::block_on(routing::a_board_powered_off_under_load())
        }),
        Trial::test("a_board_cut_off_serves_refuses_changes_and_heals", || {
            harness::block_on(partition::a_board_cut_off_serves_refuses_changes_and_heals())
        }),
        Trial::test(
            "async_calls_accepted_by_a_board_that_loses_power_all_run",
            || harness::block_on(calls::accepted_calls_run_after_the_accepting_boards_power_cut()),
        ),
        Trial::test("one_board_grows_to_five_and_back_to_three", || {
            harness::block_on(growth::one_board_grows_to_five_and_back_to_three())
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
            Need::Binary("containerd"),
            Need::Binary("runc"),
            Need::CniPlugins,
        ],
        trials,
    )
}
