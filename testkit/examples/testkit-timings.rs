//! Prints how long the testkit's building blocks take to start on this machine (median of N
//! runs): `cargo run -p bramble-testkit --example testkit-timings [N]`. Needs root.

use std::io;
use std::time::{Duration, Instant};

use bramble_testkit::{Containerd, Registry, fixture};

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

fn measure<T>(runs: usize, mut f: impl FnMut() -> io::Result<T>) -> io::Result<Duration> {
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let value = f()?;
        samples.push(started.elapsed());
        drop(value);
    }
    Ok(median(samples))
}

fn main() -> io::Result<()> {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10);
    let scratch = tempfile::tempdir()?;
    let source = fixture::fixture_source();
    let mut cold_builds = 0;
    let rows = [
        (
            "containerd start (ready socket)",
            measure(runs, Containerd::start)?,
        ),
        (
            "containerd start + drop",
            measure(runs, || Containerd::start().map(drop))?,
        ),
        (
            "registry start (no auth)",
            measure(runs, || Registry::start(None))?,
        ),
        (
            "registry start (htpasswd auth)",
            measure(runs, || Registry::start(Some(("u", "p"))))?,
        ),
        (
            "fixture build, cold",
            measure(runs, || {
                cold_builds += 1;
                fixture::build_static_binary(
                    &source,
                    "fixture-fn",
                    &scratch.path().join(cold_builds.to_string()),
                )
            })?,
        ),
        (
            "fixture build, cached (new process)",
            measure(runs, || {
                fixture::build_static_binary(&source, "fixture-fn", &fixture::fixture_dir())
            })?,
        ),
        (
            "fixture_binary(), memoised",
            measure(runs, fixture::fixture_binary)?,
        ),
    ];
    println!("median of {runs} runs");
    for (what, took) in rows {
        println!("{what:<40} {:>10.1} ms", took.as_secs_f64() * 1000.0);
    }
    Ok(())
}
