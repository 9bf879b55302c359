//! Cluster benchmark: three boards on one machine, each a network namespace on a bridge that
//! plays the LAN, each with its own `bramble up`, nats-server and containerd (the harness of
//! the cluster tests, `tests/cluster/board.rs`). In one run:
//!
//! - invocations on the board that runs the function and through another board (one extra
//!   hop over TLS), with `wrk` (keep-alive, a 10-byte POST) at 1 and 8 connections: p50, p99,
//!   requests/s;
//! - deploy through one board → the first answer through it from a replica on another board;
//! - the cluster's write latency as the API answers it (deploy, scale: stored, replicated,
//!   visible on the board that took it);
//! - RSS of bramble and of nats-server per board, idle and with 10 functions;
//! - failover: a board powered off (everything it runs SIGKILLed) → its only replica of a
//!   function serves again from another board.
//!
//! `cargo bench -p bramble-agent --bench cluster` as root, with `wrk` and `nats-server`
//! installed (`BRAMBLE_BENCH_SECS`, default 10, is the length of each `wrk` run;
//! `BRAMBLE_BENCH_BINARY` runs another build of `bramble`; `BRAMBLE_NATS_SERVER` another
//! nats-server).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    dead_code
)]

#[path = "../tests/cluster/board.rs"]
mod board;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bramble_testkit::lan::Lan;
use bramble_testkit::node::FIXTURE_IMAGE;
use bramble_testkit::stats::{Summary, ms};
use bramble_testkit::{harness, http, wrk};

use board::{API, Board, deploy_constrained, in_netns, shelf, wait_for};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn main() {
    let rt = harness::bench_runtime("cluster bench");
    if let Err(e) = rt.block_on(bench()) {
        eprintln!("cluster bench failed: {e}");
        std::process::exit(1);
    }
}

/// Polls `GET /function/NAME/` through `board` until it answers 200; the time it took.
fn first_answer(board: &Board, name: &str, since: Instant) -> Duration {
    in_netns(&board.netns, async || {
        let path = format!("/function/{name}/");
        loop {
            let r = http::request(API, "GET", &path, &[], b"", Duration::from_secs(30)).await;
            if r.is_ok_and(|r| r.status == 200) {
                return since.elapsed();
            }
            assert!(
                since.elapsed() < Duration::from_secs(120),
                "{name} never answered"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}

fn rss_line(boards: &[Board]) -> String {
    boards
        .iter()
        .map(|b| {
            let (bramble, nats) = b.rss();
            format!(
                "{}: bramble {} + nats-server {}",
                b.name,
                bramble.mib(),
                nats.mib()
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

async fn bench() -> Result<()> {
    let binary = std::env::var_os("BRAMBLE_BENCH_BINARY").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_bramble")),
        PathBuf::from,
    );
    let seconds = Duration::from_secs(
        std::env::var("BRAMBLE_BENCH_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10),
    );
    let lan = Lan::new(3)?;
    let mut boards = shelf(&binary, &lan).await;
    // Settled: the first growth's JetStream move is over, heartbeats steady.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = rss_line(&boards);

    // Deploy through b0 a function that only b1 may run: the first answer through b0.
    let deployed = Instant::now();
    deploy_constrained(&boards[0], &[("hop", "node=b1")]);
    let remote_ready = first_answer(&boards[0], "hop", deployed);

    // The extra hop: the same calls on b1 (which runs it) and on b0 (which sends them to b1).
    let scratch = tempfile::tempdir()?;
    let mut rows = Vec::new();
    for connections in [1, 8] {
        for (via, board) in [
            ("on the board that runs it (b1)", &boards[1]),
            ("through another board (b0 → b1)", &boards[0]),
        ] {
            let url = "http://127.0.0.1:8080/function/hop/";
            let run = in_netns(&board.netns, async || {
                wrk::post(url, connections, seconds, "0123456789", scratch.path())
            })?;
            rows.push(format!(
                "| {via} | {connections} | {:.3} | {:.3} | {:.0} |",
                ms(run.p50),
                ms(run.p99),
                run.requests_per_second
            ));
        }
    }

    // Write latency as the API answers it: ten deploys (one function each), then scales.
    // One login for the cluster: b0's is everyone's.
    let auth = bramble_testkit::node::auth_header_in(&boards[0].state_dir())?;
    let writes = in_netns(&boards[0].netns, async || {
        // One write through the API: how long until it answered.
        let write = async |path: &str, body: serde_json::Value| {
            let started = Instant::now();
            let r = http::request(
                API,
                "POST",
                path,
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                ],
                body.to_string().as_bytes(),
                Duration::from_secs(30),
            )
            .await
            .unwrap();
            assert!(
                r.status == 200 || r.status == 202,
                "{path}: {} {}",
                r.status,
                r.text()
            );
            started.elapsed()
        };
        let mut deploys = Vec::new();
        for i in 0..10 {
            let body = serde_json::json!({
                "service": format!("f{i}"),
                "image": FIXTURE_IMAGE,
                "limits": {"memory": "32Mi"},
            });
            deploys.push(write("/system/functions", body).await);
        }
        let mut scales = Vec::new();
        for i in 0..20 {
            let body = serde_json::json!({"serviceName": "f0", "replicas": 1 + i % 2});
            scales.push(write("/system/scale-function/f0", body).await);
        }
        (Summary::of(&deploys), Summary::of(&scales))
    });
    // Ten functions (and hop) running, spread over the boards.
    let started = Instant::now();
    wait_for("f0..f9 ready", || {
        (0..10).all(|i| {
            boards[0]
                .describe(&format!("f{i}"))
                .is_some_and(|s| s["availableReplicas"].as_u64().unwrap_or(0) >= 1)
        })
    })
    .await;
    let ten_ready = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let busy = rss_line(&boards);

    // Failover: `solo` runs only on b2's side of the shelf (anywhere but b0); b2 loses power.
    deploy_constrained(&boards[0], &[("solo", "node!=b0")]);
    first_answer(&boards[0], "solo", Instant::now());
    let on = boards[0]
        .describe("solo")
        .and_then(|s| {
            s["bramble"]["replicas"][0]["board"]
                .as_str()
                .map(str::to_owned)
        })
        .ok_or("solo is not placed")?;
    let victim = boards
        .iter_mut()
        .find(|b| b.name == on)
        .ok_or("no such board")?;
    let cut = Instant::now();
    victim.power_cut();
    let failover = first_answer(&boards[0], "solo", cut);

    println!();
    println!("cluster bench: 3 boards, {}", binary.display());
    println!();
    println!("| invocation (10-byte POST, keep-alive) | connections | p50 ms | p99 ms | req/s |");
    println!("|---|---|---|---|---|");
    for row in &rows {
        println!("{row}");
    }
    println!();
    println!("| what | figure |");
    println!("|---|---|");
    println!(
        "| deploy through b0 → first answer through b0 from b1 | {:.0} ms |",
        ms(remote_ready)
    );
    println!(
        "| deploy (stored, replicated, visible on the board), p50 / p99 of 10 | {:.1} / {:.1} ms |",
        ms(writes.0.p50),
        ms(writes.0.p99)
    );
    println!(
        "| scale, p50 / p99 of 20 | {:.1} / {:.1} ms |",
        ms(writes.1.p50),
        ms(writes.1.p99)
    );
    println!(
        "| ten functions deployed → all ready | {:.0} ms |",
        ms(ten_ready)
    );
    println!(
        "| power cut of {on} → its only replica of solo serves again | {:.2} s (dead_after 5 s) |",
        failover.as_secs_f64()
    );
    println!("| RSS idle | {idle} |");
    println!("| RSS with 11 functions placed | {busy} |");
    Ok(())
}
