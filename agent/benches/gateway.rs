//! Gateway benchmark, in one run on a private containerd and network namespace:
//!
//! - latency (p50/p99) and requests/s through `http://node/function/NAME`, next to the same
//!   load sent straight to the function's IP;
//! - cold start through the gateway (request to a scaled-to-zero function → first byte), next
//!   to the runtime's bare start of a stopped container (→ first HTTP answer).
//!
//! `cargo bench -p bramble-agent --bench gateway [-- REQUESTS CONCURRENCY]` as root.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bramble_runtime::image::no_progress;
use bramble_runtime::{ContainerSpec, Runtime};
use bramble_testkit::stats::{Summary, ms};
use bramble_testkit::{Node, TestEnv, fixture_image, harness};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse::<usize>().ok());
    let requests = args.next().unwrap_or(5000);
    let concurrency = args.next().unwrap_or(8);
    let rt = harness::bench_runtime("gateway bench");
    if let Err(e) = rt.block_on(bench(requests, concurrency)) {
        eprintln!("gateway bench failed: {e}");
        std::process::exit(1);
    }
}

async fn bench(requests: usize, concurrency: usize) -> Result<()> {
    let env = TestEnv::new("gwbench")?;
    let runtime = Runtime::new(env.config.clone())?;
    let (archive, _) = fixture_image(env.scratch(), "fixture:bench")?;
    let image = runtime
        .images()
        .import(&archive, None, &no_progress)
        .await?
        .remove(0);
    let node = Node::start(Path::new(env!("CARGO_BIN_EXE_bramble")), env, "")?;
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
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let through = format!("http://{}/function/bench", node.addr());
    let direct = format!("http://{ip}:8080/");
    // Warm both paths (connections, caches).
    load(&client, &through, concurrency * 10, concurrency).await?;
    load(&client, &direct, concurrency * 10, concurrency).await?;
    let gw = load(&client, &through, requests, concurrency).await?;
    let fn_direct = load(&client, &direct, requests, concurrency).await?;

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
    let mut bare = Vec::new();
    for _ in 0..10 {
        let started = Instant::now();
        let task = runtime.start("bare0").await?;
        first_answer(&client, SocketAddr::from((task.ip, 8080))).await?;
        bare.push(started.elapsed());
        runtime.stop("bare0", Duration::from_secs(5)).await?;
    }
    runtime.delete("bare0", Duration::from_secs(5)).await?;

    println!(
        "gateway benchmark: {requests} requests, {concurrency} concurrent, keep-alive, {}",
        std::env::consts::ARCH
    );
    println!("| path | p50 | p99 | requests/s |");
    println!("|---|---|---|---|");
    for (name, run) in [
        ("through bramble (`/function/bench`)", &gw),
        ("direct to the function's IP", &fn_direct),
    ] {
        let s = Summary::of(&run.latencies);
        println!(
            "| {name} | {:.2} ms | {:.2} ms | {:.0} |",
            ms(s.p50),
            ms(s.p99),
            run.rps
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

struct Run {
    latencies: Vec<Duration>,
    rps: f64,
}

/// `requests` GETs spread over `concurrency` workers; every answer must be 200.
async fn load(
    client: &reqwest::Client,
    url: &str,
    requests: usize,
    concurrency: usize,
) -> Result<Run> {
    let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, url, counter) = (client.clone(), url.to_owned(), Arc::clone(&counter));
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < requests {
                let t = Instant::now();
                let response = client.get(&url).send().await?;
                let status = response.status().as_u16();
                response.bytes().await?;
                if status != 200 {
                    return Err(format!("{url} answered {status}").into());
                }
                latencies.push(t.elapsed());
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(requests);
    for worker in workers {
        latencies.extend(worker.await??);
    }
    let elapsed = started.elapsed();
    Ok(Run {
        rps: latencies.len() as f64 / elapsed.as_secs_f64(),
        latencies,
    })
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
