//! The dashboard's cost in memory: a release `bramble up` (on a private containerd and network
//! namespace) with one ready function, its RSS sampled every 5 s
//!
//! 1. idle, no page open (`BRAMBLE_DASH_IDLE_SECS`, default 60);
//! 2. with one overview page open in a real headless Chromium, streaming
//!    (`BRAMBLE_DASH_OPEN_SECS`, default 60);
//! 3. idle again after the page closed (`BRAMBLE_DASH_IDLE_SECS`).
//!
//! Prints the samples and a table (min/max per phase, and the growth of the idle RSS from
//! before the page to after it). A benchmark prints; it asserts nothing.
//!
//! The `bramble` measured is `BRAMBLE_DASH_BINARY` (e.g. `target/release/bramble` from
//! `cargo build --release -p bramble-agent`), or this build's. As root, with `chromium` and
//! `chromium-driver` installed:
//! `BRAMBLE_DASH_BINARY=target/release/bramble cargo bench --profile dev -p bramble-agent --bench dashboard_rss`
//! (the harness itself needs no optimising: `--profile dev` reuses the test build).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bramble_testkit::browser::Browser;
use bramble_testkit::harness;
use bramble_testkit::{Node, rss_kib};
use serde_json::json;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const SAMPLE_EVERY: Duration = Duration::from_secs(5);

fn env_secs(name: &str, default: u64) -> Duration {
    Duration::from_secs(
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
            .max(5),
    )
}

fn main() {
    let rt = harness::bench_runtime("dashboard_rss");
    if let Err(e) = rt.block_on(measure()) {
        eprintln!("dashboard_rss failed: {e}");
        std::process::exit(1);
    }
}

/// RSS every [`SAMPLE_EVERY`] for `during`, KiB; printed as they come.
async fn samples(phase: &str, pid: u32, during: Duration) -> Vec<u64> {
    let started = Instant::now();
    let mut all = Vec::new();
    loop {
        let rss = rss_kib(pid);
        println!(
            "{phase:>10} {:>4} s {rss:>7} KiB",
            started.elapsed().as_secs()
        );
        all.push(rss);
        if started.elapsed() + SAMPLE_EVERY > during {
            return all;
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}

fn range(all: &[u64]) -> (u64, u64) {
    (
        all.iter().copied().min().unwrap_or(0),
        all.iter().copied().max().unwrap_or(0),
    )
}

async fn measure() -> Result<()> {
    let idle = env_secs("BRAMBLE_DASH_IDLE_SECS", 60);
    let open = env_secs("BRAMBLE_DASH_OPEN_SECS", 60);
    let binary = std::env::var_os("BRAMBLE_DASH_BINARY").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_bramble")),
        |b| std::fs::canonicalize(&b).unwrap_or_else(|_| PathBuf::from(b)),
    );
    let binary = binary.as_path();
    let node = Node::with_fixture(binary, "dash-rss", "").await?;
    let r = node
        .api(
            "POST",
            "/system/functions",
            json!({"service": "hello", "image": "docker.io/library/fixture:test"})
                .to_string()
                .as_bytes(),
        )
        .await?;
    r.expect(200, "deploy")?;
    node.wait_available("hello", 1).await?;
    let pid = node.pid().ok_or("bramble is not running")?;
    println!("bramble {} (pid {pid})", binary.display());

    let before = samples("no page", pid, idle).await;
    let browser = Browser::start(1280, 900).await?;
    browser.goto(&format!("http://{}/", node.addr())).await?;
    let (user, password) = node.credentials()?;
    browser
        .log_in(&user, &password, Duration::from_secs(10))
        .await?;
    browser
        .wait_for(
            "hello on the overview",
            "return document.querySelector('tr[data-function=\"hello.openfaas-fn\"] [data-state]')?.dataset.state === 'ready'",
            Duration::from_secs(10),
        )
        .await?;
    let during = samples("page open", pid, open).await;
    drop(browser);
    let after = samples("closed", pid, idle).await;

    println!();
    println!("| phase | samples | RSS min | RSS max |");
    println!("|---|---|---|---|");
    for (phase, all) in [
        ("idle, no page", &before),
        ("one overview page open", &during),
        ("idle, after the page closed", &after),
    ] {
        let (min, max) = range(all);
        println!(
            "| {phase} | {} | {:.2} MiB | {:.2} MiB |",
            all.len(),
            min as f64 / 1024.0,
            max as f64 / 1024.0
        );
    }
    let (_, before_max) = range(&before);
    let (after_min, after_max) = range(&after);
    println!(
        "idle RSS after the page vs before: {:+.2} MiB (max vs max), {:+.2} MiB (min vs max)",
        (after_max as f64 - before_max as f64) / 1024.0,
        (after_min as f64 - before_max as f64) / 1024.0
    );
    Ok(())
}
