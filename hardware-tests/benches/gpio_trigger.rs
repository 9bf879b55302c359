//! GPIO trigger latency: an edge made on the input → the function receives the request, with
//! the function warm and scaled to zero, through a real `bramble up`. The latency is the
//! function's `CLOCK_MONOTONIC` time of arrival less the edge's timestamp (the simulator's
//! or, on a Pi with `BRAMBLE_HW_JUMPER`, the kernel's); both sides read the same clock.
//! Then a burst of 1,000 edges: how long until a function that answers at once (no delay)
//! has them all, in how many invocations.
//!
//! Edges are made in the simulator through the admin API (no wire), or on real pins with
//! `BRAMBLE_HW_JUMPER` (see `hardware-tests/README.md`).
//!
//! `cargo bench -p bramble-hardware-tests --bench gpio_trigger [-- WARM COLD]` as root
//! (defaults 200 and 200: a nearest-rank p99 of 100 runs or fewer is the maximum, so the
//! p99 column is left empty below 101 runs). Runs in a private network namespace with a
//! private containerd.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use bramble_hardware_tests::{Result, Rig, WAIT, Wiring, edges_counted};
use bramble_testkit::harness;
use bramble_testkit::stats::{Summary, ms};

/// Fewest runs whose nearest-rank p99 is not their maximum.
const P99_RUNS: usize = 101;
use serde_json::{Value, json};

fn main() {
    let counts: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let warm = counts.first().copied().unwrap_or(200);
    let cold = counts.get(1).copied().unwrap_or(200);
    let rt = harness::bench_runtime("gpio_trigger");
    if let Err(e) = rt.block_on(bench(warm, cold)) {
        eprintln!("gpio_trigger failed: {e}");
        std::process::exit(1);
    }
}

/// Edge-to-arrival time of the newest record.
fn latency(record: &Value) -> Result<Duration> {
    let edge = record["json"]["timestamp_ns"]
        .as_u64()
        .ok_or("no timestamp_ns")?;
    let received = record["received_ns"].as_u64().ok_or("no received_ns")?;
    Ok(Duration::from_nanos(received.saturating_sub(edge)))
}

/// One press (a falling edge after a rising one) and its latency; `seen` is how many
/// records the function has before.
async fn press(rig: &Rig, function: &str, seen: usize) -> Result<Duration> {
    rig.drive(1).await?;
    rig.drive(0).await?;
    let records = rig.wait_records(function, WAIT, |r| r.len() > seen).await?;
    latency(&records[seen])
}

async fn bench(warm: usize, cold: usize) -> Result {
    // Real pins when asked for; otherwise edges made in the simulator itself.
    let wiring = match Wiring::from_env()? {
        real if real.is_real() => real,
        _ => Wiring::Simulator,
    };
    let rig = Rig::start_wired(wiring, "hwbench", "").await?;
    let input = rig.wiring.input().to_owned();
    let trigger = format!("{input}:falling:pull-up:path=/record");
    rig.deploy_ready(
        "button",
        &json!({ "bramble.trigger.gpio": trigger }),
        &json!({}),
    )
    .await?;

    // Warm: one press at a time, each waited for.
    let mut warm_samples = Vec::with_capacity(warm);
    press(&rig, "button", 0).await?;
    for i in 0..warm {
        warm_samples.push(press(&rig, "button", i + 1).await?);
    }

    // Scaled to zero before each press (the container is kept; its task starts again).
    let mut cold_samples = Vec::with_capacity(cold);
    for _ in 0..cold {
        rig.node.scale("button", 0).await?;
        // A new process: its records start empty.
        cold_samples.push(press(&rig, "button", 0).await?);
    }

    // A burst into a function that answers at once (`/record` with no delay).
    let burst = format!("{input}:both:pull-up:path=/record");
    rig.deploy_ready(
        "counter",
        &json!({ "bramble.trigger.gpio": burst }),
        &json!({}),
    )
    .await?;
    let started = Instant::now();
    rig.toggle(1000).await?;
    let records = rig
        .wait_records("counter", Duration::from_secs(120), |r| {
            edges_counted(r) >= 1000
        })
        .await?;
    let burst_time = started.elapsed();

    println!("GPIO trigger, edge → function ({})", rig.wiring.describe());
    println!("| function | runs | p50 | p99 | min | max |");
    println!("|---|---|---|---|---|---|");
    for (name, samples) in [("warm", &warm_samples), ("scaled to zero", &cold_samples)] {
        let s = Summary::of(samples);
        let p99 = if s.count >= P99_RUNS {
            format!("{:.2} ms", ms(s.p99))
        } else {
            "—".to_owned()
        };
        println!(
            "| {name} | {} | {:.2} ms | {p99} | {:.2} ms | {:.2} ms |",
            s.count,
            ms(s.p50),
            ms(s.min),
            ms(s.max)
        );
    }
    println!(
        "burst of 1000 edges into a function that answers at once: all delivered {:.0} ms \
         after the first, in {} invocations",
        ms(burst_time),
        records.len()
    );
    Ok(())
}
