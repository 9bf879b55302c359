//! Stop benchmark (issue 14), in one run on a private containerd and network namespace, with a
//! function that takes its whole grace period to exit after SIGTERM (the fixture with
//! `ON_SIGTERM=ignore`; of-watchdog functions drain the same way) and the default
//! `stop_grace` of 10 s:
//!
//! - a scale to zero: how long the API takes to answer, then how long a request sent as soon as
//!   the replica is out of service takes (served by a new replica, or after the old one is
//!   gone);
//! - for reference, a request to a function scaled to zero whose replica is gone (a plain cold
//!   start);
//! - a delete: how long the API takes to answer, whether the list still names the function
//!   right after, and how long a deploy of the same name sent right after takes.
//!
//! `cargo bench -p bramble-agent --bench stops` as root (`BRAMBLE_BENCH_RUNS`, default 5, runs
//! per row; `BRAMBLE_BENCH_BINARY` runs another build of `bramble`, e.g. an older one to compare
//! with). Each run waits for the old replica to be gone, so a run takes about the grace period.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bramble_testkit::stats::{Summary, ms};
use bramble_testkit::{Node, harness};
use serde_json::json;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const FIXTURE: &str = "docker.io/library/fixture:test";
/// bramble's default `stop_grace` (the node runs with its defaults).
const GRACE: Duration = Duration::from_secs(10);

fn main() {
    let rt = harness::bench_runtime("stops bench");
    if let Err(e) = rt.block_on(bench()) {
        eprintln!("stops bench failed: {e}");
        std::process::exit(1);
    }
}

struct Rows {
    scale_answer: Vec<Duration>,
    request_after_scale: Vec<Duration>,
    cold_start: Vec<Duration>,
    delete_answer: Vec<Duration>,
    deploy_after_delete: Vec<Duration>,
    listed_after_delete: usize,
}

async fn bench() -> Result<()> {
    let runs: usize = std::env::var("BRAMBLE_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let binary = std::env::var_os("BRAMBLE_BENCH_BINARY").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_bramble")),
        PathBuf::from,
    );
    let node = Node::with_fixture(&binary, "stopbench", "").await?;
    let mut rows = Rows {
        scale_answer: Vec::new(),
        request_after_scale: Vec::new(),
        cold_start: Vec::new(),
        delete_answer: Vec::new(),
        deploy_after_delete: Vec::new(),
        listed_after_delete: 0,
    };
    deploy(&node).await?;
    for run in 0..runs {
        wait_running(&node, 1).await?;
        let asked = Instant::now();
        node.ask_scale("slow", 0).await?;
        rows.scale_answer.push(asked.elapsed());
        // Once the replica is out of service (a request sent before may still reach it).
        node.wait_available("slow", 0).await?;
        let asked = Instant::now();
        let r = node.call("GET", "/function/slow", &[], b"").await?;
        rows.request_after_scale.push(asked.elapsed());
        r.expect(200, "a request during the stop")?;
        println!(
            "scale run {}: answered in {:.1} ms, the request after it in {:.1} ms",
            run + 1,
            ms(rows.scale_answer[run]),
            ms(rows.request_after_scale[run])
        );
    }
    // The reference: a cold start with nothing stopping.
    for run in 0..runs {
        wait_running(&node, 1).await?;
        node.ask_scale("slow", 0).await?;
        wait_running(&node, 0).await?;
        let asked = Instant::now();
        let r = node.call("GET", "/function/slow", &[], b"").await?;
        rows.cold_start.push(asked.elapsed());
        r.expect(200, "a request to a function scaled to zero")?;
        println!(
            "cold start run {}: the request answered in {:.1} ms",
            run + 1,
            ms(rows.cold_start[run])
        );
    }
    for run in 0..runs {
        wait_running(&node, 1).await?;
        let asked = Instant::now();
        let r = node
            .api("DELETE", "/system/functions", br#"{"functionName":"slow"}"#)
            .await?;
        rows.delete_answer.push(asked.elapsed());
        r.expect(200, "delete")?;
        let list: serde_json::Value =
            serde_json::from_slice(&node.api("GET", "/system/functions", b"").await?.body)?;
        if list.as_array().is_some_and(|l| !l.is_empty()) {
            rows.listed_after_delete += 1;
        }
        let asked = Instant::now();
        deploy(&node).await?;
        rows.deploy_after_delete.push(asked.elapsed());
        println!(
            "delete run {}: answered in {:.1} ms, the deploy after it in {:.1} ms",
            run + 1,
            ms(rows.delete_answer[run]),
            ms(rows.deploy_after_delete[run])
        );
    }
    print_table(&binary, runs, &rows);
    Ok(())
}

async fn deploy(node: &Node) -> Result<()> {
    let body = json!({"service": "slow", "image": FIXTURE,
                      "envVars": {"ON_SIGTERM": "ignore", "BODY": "hi"}})
    .to_string();
    node.api("POST", "/system/functions", body.as_bytes())
        .await?
        .expect(200, "deploy")?;
    Ok(())
}

/// Waits until exactly `want` tasks of the function run (and, with one, it serves): the
/// replicas of the run before are gone, so every run starts alike.
async fn wait_running(node: &Node, want: usize) -> Result<()> {
    if want > 0 {
        node.wait_available("slow", 1).await?;
    }
    node.wait_running_tasks("slow", want, GRACE * 4).await?;
    Ok(())
}

fn print_table(binary: &std::path::Path, runs: usize, rows: &Rows) {
    println!();
    println!(
        "{}, stop_grace {GRACE:?}, a function that takes all of it to exit, {runs} runs per row:",
        binary.display()
    );
    println!();
    println!("| step | median | min | max |");
    println!("|---|---|---|---|");
    for (what, samples) in [
        ("scale to zero → API answer", &rows.scale_answer),
        (
            "request once the replica is out of service → answer",
            &rows.request_after_scale,
        ),
        (
            "request to a function scaled to zero, nothing stopping (a plain cold start) → answer",
            &rows.cold_start,
        ),
        ("delete → API answer", &rows.delete_answer),
        (
            "deploy of the same name right after the delete → answer",
            &rows.deploy_after_delete,
        ),
    ] {
        let s = Summary::of(samples);
        println!(
            "| {what} | {:.1} ms | {:.1} ms | {:.1} ms |",
            ms(s.p50),
            ms(s.min),
            ms(s.max)
        );
    }
    println!();
    println!(
        "still listed right after its delete: {} of {runs} runs",
        rows.listed_after_delete
    );
}
