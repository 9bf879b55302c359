//! Gateway benchmark, in one run on a private containerd and network namespace:
//!
//! - latency (p50/p99) and requests/s through `http://node/function/NAME`, next to the same
//!   load sent straight to the function's IP, with `wrk` (2 threads, keep-alive, a 10-byte
//!   POST) at 1 and 8 connections, and the CPU time of the bramble process per proxied
//!   request;
//! - cold start through the gateway (request to a scaled-to-zero function → first byte), next
//!   to the runtime's bare start of a stopped container (→ first HTTP answer);
//! - the function's own path: a 1 MiB POST echoed by the replica, straight to its address,
//!   next to the same image in bare containers: without limits, and with each of bramble's
//!   default limits alone.
//!
//! `cargo bench -p bramble-agent --bench gateway` as root, with `wrk` installed
//! (`BRAMBLE_BENCH_SECS`, default 10, is the length of each measured run;
//! `BRAMBLE_BENCH_BINARY` runs another build of `bramble`, e.g. an older one to compare with).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bramble_runtime::image::no_progress;
use bramble_runtime::{ContainerSpec, Limits, Runtime};
use bramble_testkit::stats::{Summary, ms};
use bramble_testkit::{Node, TestEnv, cpu_time, fixture_image, harness, wrk};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn main() {
    let rt = harness::bench_runtime("gateway bench");
    if let Err(e) = rt.block_on(bench()) {
        eprintln!("gateway bench failed: {e}");
        std::process::exit(1);
    }
}

async fn bench() -> Result<()> {
    let env = TestEnv::new("gwbench")?;
    // The node's own network (its IP leases too): the bench's containers sit on its bridge
    // beside the function's, with addresses of their own.
    let runtime = Runtime::new(bramble_testkit::node::runtime_config_of(&env))?;
    let (archive, _) = fixture_image(env.scratch(), "fixture:bench")?;
    let image = runtime
        .images()
        .import(&archive, None, &no_progress)
        .await?
        .remove(0);
    let binary = std::env::var_os("BRAMBLE_BENCH_BINARY").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_bramble")),
        PathBuf::from,
    );
    let node = Node::start(&binary, env, "")?;
    let deploy = serde_json::json!({"service": "bench", "image": image.name}).to_string();
    expect(
        node.api("POST", "/system/functions", deploy.as_bytes())
            .await?
            .status,
        200,
    )?;
    wait_available(&node, 1).await?;
    let ip = runtime
        .list()
        .await?
        .into_iter()
        .find(|c| c.id.starts_with("bench."))
        .and_then(|c| c.ip)
        .ok_or("function has no IP")?;
    let client = reqwest::Client::builder().build()?;
    let through = format!("http://{}/function/bench", node.addr());
    let direct = format!("http://{ip}:8080/");
    let pid = node.pid().ok_or("the node has no pid")?;
    let scratch = tempfile::tempdir()?;
    // wrk, 2 threads, keep-alive, a 10-byte POST: through the gateway and straight to the
    // function's address, one connection and eight, in one run. CPU time of the bramble
    // process per proxied request from /proc.
    let body = "0123456789";
    let seconds = Duration::from_secs(
        std::env::var("BRAMBLE_BENCH_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10),
    );
    let mut rows = Vec::new();
    for connections in [1, 8] {
        // Warm both paths (connections, caches).
        wrk::post(
            &through,
            connections,
            Duration::from_secs(1),
            body,
            scratch.path(),
        )?;
        wrk::post(
            &direct,
            connections,
            Duration::from_secs(1),
            body,
            scratch.path(),
        )?;
        let cpu_before = cpu_time(pid).ok_or("cannot read bramble's CPU time")?;
        let gw = wrk::post(&through, connections, seconds, body, scratch.path())?;
        let cpu = cpu_time(pid).ok_or("cannot read bramble's CPU time")? - cpu_before;
        let fn_direct = wrk::post(&direct, connections, seconds, body, scratch.path())?;
        rows.push((connections, gw, fn_direct, cpu));
    }

    // Cold start through the gateway: scale to zero, then time one request to its first byte.
    let mut cold = Vec::new();
    for _ in 0..10 {
        let zero = serde_json::json!({"serviceName": "bench", "replicas": 0}).to_string();
        expect(
            node.api("POST", "/system/scale-function/bench", zero.as_bytes())
                .await?
                .status,
            200,
        )?;
        wait_available(&node, 0).await?;
        // Traffic stops at once; the task's graceful stop finishes in the background. Time a
        // real cold start, not one queued behind the previous stop.
        wait_task_gone(&runtime).await?;
        let started = Instant::now();
        let response = client.get(&through).send().await?;
        let first_byte = started.elapsed();
        expect(response.status().as_u16(), 200)?;
        cold.push(first_byte);
    }

    // The runtime's bare start of a stopped container, same image, same run.
    let spec = ContainerSpec {
        id: "bare0".into(),
        image: image.name.clone(),
        hostname: "bare0".into(),
        ..Default::default()
    };
    runtime.create(&spec).await?;
    for c in runtime.list().await? {
        eprintln!(
            "container {} ip {:?} task {:?}",
            c.id,
            c.ip,
            c.task.map(|t| t.status)
        );
    }
    let mut bare = Vec::new();
    for _ in 0..10 {
        let started = Instant::now();
        let task = runtime.start("bare0").await?;
        first_answer(&client, SocketAddr::from((task.ip, 8080))).await?;
        bare.push(started.elapsed());
        runtime.stop("bare0", Duration::from_secs(5)).await?;
    }
    // The function's own path: a 1 MiB POST echoed, straight to the replica's address (no
    // gateway), next to the same image in bare containers on the same bridge (same network
    // namespace set-up, isolation rules and output capture): one without limits and one with
    // each of the limits bramble gives a function by default, so what each costs shows. The
    // containers take turns, five rounds, so a drift of the machine falls on all of them.
    let defaults = bramble_agent::config::Defaults::default();
    let memory = defaults.memory.bytes();
    let mut paths = vec![("function (bramble's defaults)", ip)];
    for (id, name, limits) in [
        ("own0", "bare container, no limits", Limits::default()),
        (
            "own1",
            "bare + the default memory limit (128 MiB)",
            Limits {
                memory_bytes: memory,
                ..Limits::default()
            },
        ),
        (
            "own2",
            "bare + the default process limit (512)",
            Limits {
                pids: Some(defaults.pids),
                ..Limits::default()
            },
        ),
    ] {
        runtime
            .create(&ContainerSpec {
                id: id.into(),
                image: image.name.clone(),
                hostname: id.into(),
                limits,
                ..Default::default()
            })
            .await?;
        let task = runtime.start(id).await?;
        first_answer(&client, SocketAddr::from((task.ip, 8080))).await?;
        paths.push((name, task.ip));
    }
    let mut own: Vec<Vec<wrk::WrkRun>> = vec![Vec::new(); paths.len()];
    for _ in 0..5 {
        for ((_, ip), runs) in paths.iter().zip(&mut own) {
            let url = format!("http://{ip}:8080/echo");
            wrk::post_bytes(&url, 1, Duration::from_secs(1), 1 << 20, scratch.path())?;
            runs.push(wrk::post_bytes(&url, 1, seconds, 1 << 20, scratch.path())?);
        }
    }
    for id in ["bare0", "own0", "own1", "own2"] {
        runtime.delete(id, Duration::from_secs(5)).await?;
    }

    println!(
        "gateway benchmark: wrk, 2 threads, keep-alive, {}-byte POST, {} s per run, {}",
        body.len(),
        seconds.as_secs(),
        std::env::consts::ARCH
    );
    println!("| connections | path | p50 | p99 | requests/s | bramble CPU per request |");
    println!("|---|---|---|---|---|---|");
    for (connections, gw, fn_direct, cpu) in &rows {
        println!(
            "| {connections} | through bramble (`/function/bench`) | {:.3} ms | {:.3} ms | {:.0} | {:.1} µs |",
            ms(gw.p50),
            ms(gw.p99),
            gw.requests_per_second,
            cpu.as_secs_f64() * 1e6 / gw.requests.max(1) as f64
        );
        println!(
            "| {connections} | direct to the function's IP | {:.3} ms | {:.3} ms | {:.0} | — |",
            ms(fn_direct.p50),
            ms(fn_direct.p99),
            fn_direct.requests_per_second
        );
        println!(
            "| {connections} | **bramble's cost** | **+{:.3} ms** | | **{:.2} of direct** | |",
            ms(gw.p50.saturating_sub(fn_direct.p50)),
            gw.requests_per_second / fn_direct.requests_per_second
        );
    }
    println!();
    println!(
        "| 1 MiB POST echoed, one connection, to the replica's address (median of 5 runs) | p50 | p99 | requests/s |"
    );
    println!("|---|---|---|---|");
    for ((name, _), runs) in paths.iter().zip(&own) {
        let p50 = Summary::of(&runs.iter().map(|r| r.p50).collect::<Vec<_>>()).p50;
        let p99 = Summary::of(&runs.iter().map(|r| r.p99).collect::<Vec<_>>()).p50;
        let mut rps: Vec<f64> = runs.iter().map(|r| r.requests_per_second).collect();
        rps.sort_by(f64::total_cmp);
        println!(
            "| {name} | {:.3} ms | {:.3} ms | {:.0} |",
            ms(p50),
            ms(p99),
            rps.get(rps.len() / 2).copied().unwrap_or_default()
        );
    }
    println!();
    println!("| cold start (10 runs) | median | min | max |");
    println!("|---|---|---|---|");
    for (name, samples) in [
        ("request to a scaled-to-zero function → first byte", &cold),
        (
            "runtime start of a stopped container → first HTTP answer",
            &bare,
        ),
    ] {
        let s = Summary::of(samples);
        println!(
            "| {name} | {:.1} ms | {:.1} ms | {:.1} ms |",
            ms(s.p50),
            ms(s.min),
            ms(s.max)
        );
    }
    Ok(())
}

async fn first_answer(client: &reqwest::Client, addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = client.get(format!("http://{addr}/")).send().await
            && r.status().as_u16() == 200
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{addr} never answered").into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn wait_task_gone(runtime: &Runtime) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while runtime
        .list()
        .await?
        .iter()
        .any(|c| c.id.starts_with("bench.") && c.task.is_some())
    {
        if Instant::now() > deadline {
            return Err("the scaled-down task never stopped".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

async fn wait_available(node: &Node, want: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = node.api("GET", "/system/function/bench", b"").await?;
        let status: serde_json::Value = serde_json::from_slice(&r.body)?;
        if status["availableReplicas"].as_u64().unwrap_or(0) == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("never {want} available: {status}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn expect(status: u16, want: u16) -> Result<()> {
    if status == want {
        Ok(())
    } else {
        Err(format!("expected {want}, got {status}").into())
    }
}
