//! Benchmark of the placer: how long [`place`] takes from nothing, again on its own plan (the
//! common case: a board's heartbeat or a scale changed nothing), after a board died, and one
//! [`admit`], for shelves of several sizes. Prints a table.
//!
//! `cargo bench -p bramble-cluster --bench placement`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bramble_cluster::membership::{BoardState, HardwareSummary};
use bramble_cluster::placement::{
    Board, Function, FunctionKey, PlacementInput, Plan, admit, parse_constraints, place,
};

const MIB: u64 = 1 << 20;

fn boards(n: usize) -> Vec<Board> {
    (0..n)
        .map(|i| {
            let arm = i % 4 == 3;
            Board {
                name: format!("pi{i:02}"),
                state: BoardState::Alive,
                leaving: false,
                arch: if arm { "arm" } else { "arm64" }.into(),
                platform: Some(
                    if arm { "linux/arm/v7" } else { "linux/arm64" }
                        .parse()
                        .unwrap(),
                ),
                memory_budget: Some(if arm { 384 } else { 3072 } * MIB),
                hardware: HardwareSummary {
                    gpio_lines: if i % 3 == 0 {
                        vec!["GPIO17".into(), "GPIO27".into()]
                    } else {
                        Vec::new()
                    },
                    ..HardwareSummary::default()
                },
                labels: BTreeMap::from([("zone".into(), format!("z{}", i % 3))]),
                outside: Default::default(),
            }
        })
        .collect()
}

fn functions(n: usize) -> Vec<Function> {
    (0..n)
        .map(|i| {
            let constraints: Vec<String> = match i % 10 {
                0 => vec!["zone=z1".into()],
                1 => vec!["arch=arm64".into()],
                _ => Vec::new(),
            };
            let hardware = (i % 25 == 0).then(|| {
                let annotations =
                    BTreeMap::from([("bramble.gpio".to_owned(), "GPIO17:in".to_owned())]);
                bramble_hardware::grants::parse(&annotations)
                    .unwrap()
                    .unwrap()
            });
            Function {
                key: FunctionKey::of("openfaas-fn", &format!("fn{i:04}")),
                replicas: u32::try_from(i % 4).unwrap(),
                memory: [32, 64, 128][i % 3] * MIB,
                platforms: (i % 2 == 0).then(|| vec!["linux/arm64".parse().unwrap()]),
                hardware,
                constraints: parse_constraints(&constraints).unwrap(),
                prefers: None,
            }
        })
        .collect()
}

/// Median and worst of `runs` timings of `f`.
fn time(runs: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    let mut samples: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    samples.sort();
    (samples[samples.len() / 2], samples[samples.len() - 1])
}

fn ms((median, worst): (Duration, Duration)) -> String {
    format!(
        "{:.3} / {:.3}",
        median.as_secs_f64() * 1000.0,
        worst.as_secs_f64() * 1000.0
    )
}

fn main() {
    println!(
        "| boards | functions | replicas | placed | from nothing (ms, median / worst) | again on its plan | after a board died | one admit |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (b, f) in [(3, 10), (5, 50), (10, 100), (20, 300), (50, 1000)] {
        let fresh = PlacementInput {
            boards: boards(b),
            functions: functions(f),
            previous: Plan::default(),
        };
        let plan = place(&fresh);
        let again = PlacementInput {
            previous: plan.clone(),
            ..fresh.clone()
        };
        let mut died = again.clone();
        died.boards[1].state = BoardState::Dead;
        let candidate = Function {
            key: FunctionKey::of("openfaas-fn", "new"),
            replicas: 3,
            memory: 64 * MIB,
            platforms: None,
            hardware: None,
            constraints: Vec::new(),
            prefers: None,
        };
        let runs = 21;
        let from_nothing = time(runs, || {
            black_box(place(black_box(&fresh)));
        });
        let stable = time(runs, || {
            black_box(place(black_box(&again)));
        });
        let after_death = time(runs, || {
            black_box(place(black_box(&died)));
        });
        let one_admit = time(runs, || {
            black_box(admit(black_box(&again), &candidate)).ok();
        });
        let wanted: u32 = fresh.functions.iter().map(|f| f.replicas).sum();
        let placed: u32 = plan
            .functions
            .iter()
            .map(|f| f.boards.values().sum::<u32>())
            .sum();
        println!(
            "| {b} | {f} | {wanted} | {placed} | {} | {} | {} | {} |",
            ms(from_nothing),
            ms(stable),
            ms(after_death),
            ms(one_admit)
        );
    }
}
