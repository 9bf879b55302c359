//! Soak: a constant load through the gateway for a bounded time, on a private containerd and
//! network namespace, with a release `bramble up`.
//!
//! - three warm functions (`GET /`, `POST /echo` with 1 KiB, `GET /sleep?ms=5`) served by
//!   `BRAMBLE_SOAK_CLIENTS` clients (default 4: three keep-alive, one opening a connection per
//!   request) at `BRAMBLE_SOAK_RATE` requests/s in total (default 200);
//! - `zero`, scaled to zero through the API every 20 s and woken by the next request;
//! - `idle`, scaled to zero by bramble after 5 s without requests, and woken every 15 s.
//!
//! Prints, per window (a minute; 10 s for runs under two minutes): requests, errors, p50/p99/max
//! of the warm requests, and bramble's RSS and open file descriptors. Exits with 1 if any
//! request failed, if RSS grew by more than `BRAMBLE_SOAK_RSS_MIB` (default 20 MiB) between
//! the end of the warm-up and the end, or if bramble's file descriptors grew by more than 32.
//!
//! `cargo build --release -p bramble-agent && BRAMBLE_SOAK_SECS=600 cargo bench -p bramble-agent --bench soak`
//! as root.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bramble_runtime::Runtime;
use bramble_runtime::image::no_progress;
use bramble_testkit::stats::{Summary, ms};
use bramble_testkit::{Node, TestEnv, fixture_image, harness, rss_kib};
use serde_json::json;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Growth of bramble's open file descriptors over the run that fails the soak.
const FD_GROWTH_BOUND: usize = 32;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; this harness takes its settings from the environment.
    let settings = Settings {
        duration: Duration::from_secs(env_number("BRAMBLE_SOAK_SECS", 600).max(10)),
        clients: env_number("BRAMBLE_SOAK_CLIENTS", 4).clamp(2, 64) as usize,
        rate: env_number("BRAMBLE_SOAK_RATE", 200).max(1),
        rss_bound_mib: env_number("BRAMBLE_SOAK_RSS_MIB", 20),
    };
    let rt = harness::bench_runtime("soak");
    match rt.block_on(soak(&settings)) {
        Ok(problems) if problems.is_empty() => {}
        Ok(problems) => {
            for p in problems {
                eprintln!("soak FAILED: {p}");
            }
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("soak failed: {e}");
            std::process::exit(1);
        }
    }
}

struct Settings {
    duration: Duration,
    clients: usize,
    rate: u64,
    rss_bound_mib: u64,
}

/// What happened in one window of the run.
#[derive(Default)]
struct Window {
    latencies: Vec<Duration>,
    requests: usize,
    errors: Vec<String>,
    cold: Vec<Duration>,
}

/// Windows by index, shared by the clients.
struct Record {
    started: Instant,
    window: Duration,
    windows: Mutex<Vec<Window>>,
}

impl Record {
    fn with<R>(&self, f: impl FnOnce(&mut Window) -> R) -> R {
        let index = (self.started.elapsed().as_secs_f64() / self.window.as_secs_f64()) as usize;
        let mut windows = self.windows.lock().unwrap();
        while windows.len() <= index {
            windows.push(Window::default());
        }
        f(&mut windows[index])
    }

    fn ok(&self, latency: Duration) {
        self.with(|w| {
            w.requests += 1;
            w.latencies.push(latency);
        });
    }

    fn cold(&self, latency: Duration) {
        self.with(|w| {
            w.requests += 1;
            w.cold.push(latency);
        });
    }

    fn error(&self, what: String) {
        self.with(|w| {
            w.requests += 1;
            w.errors.push(what);
        });
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

async fn api(node: &Node, method: &str, path: &str, body: &serde_json::Value) -> Result<()> {
    let r = node.api(method, path, body.to_string().as_bytes()).await?;
    if r.status != 200 {
        return Err(format!("{method} {path}: {} {}", r.status, r.text()).into());
    }
    Ok(())
}

async fn soak(settings: &Settings) -> Result<Vec<String>> {
    let env = TestEnv::new("soak")?;
    let runtime = Runtime::new(env.config.clone())?;
    let (archive, _) = fixture_image(env.scratch(), "fixture:soak")?;
    let image = runtime
        .images()
        .import(&archive, None, &no_progress)
        .await?
        .remove(0)
        .name
        .clone();
    let node = Node::start(Path::new(env!("CARGO_BIN_EXE_bramble")), env, "")?;
    let pid = node.pid().ok_or("bramble is not running")?;
    for name in ["alpha", "beta", "gamma", "zero"] {
        api(
            &node,
            "POST",
            "/system/functions",
            &json!({"service": name, "image": image, "envVars": {"BODY": name}}),
        )
        .await?;
    }
    api(
        &node,
        "POST",
        "/system/functions",
        &json!({"service": "idle", "image": image, "labels": {
            "com.openfaas.scale.zero": "true", "com.openfaas.scale.zero-duration": "5s"}}),
    )
    .await?;
    for name in ["alpha", "beta", "gamma", "zero", "idle"] {
        node.wait_available(name, 1).await?;
    }

    let base = format!("http://{}", node.addr());
    let keep_alive = reqwest::Client::builder()
        .pool_max_idle_per_host(settings.clients)
        .timeout(Duration::from_secs(30))
        .build()?;
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()?;
    // Warm-up: connections, caches, allocator arenas; RSS is measured from after it.
    for _ in 0..200 {
        let r = keep_alive
            .get(format!("{base}/function/alpha"))
            .send()
            .await?;
        if r.status() != 200 {
            return Err(format!("warm-up: {}", r.status()).into());
        }
        r.bytes().await?;
    }
    let rss_start = rss_kib(pid);
    let fds_start = open_fds(pid);

    let window = if settings.duration < Duration::from_secs(120) {
        Duration::from_secs(10)
    } else {
        Duration::from_secs(60)
    };
    let record = Arc::new(Record {
        started: Instant::now(),
        window,
        windows: Mutex::new(Vec::new()),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let payload = bytes_of(1024);
    let per_client = Duration::from_secs_f64(settings.clients as f64 / settings.rate as f64);
    println!(
        "soak: {:?}, {} clients at {} requests/s in total (one without keep-alive), \
         warm alpha/beta/gamma; zero scaled to 0 and woken every 20 s; idle scaled to 0 by \
         bramble after 5 s and woken every 15 s",
        settings.duration, settings.clients, settings.rate
    );
    let mut tasks = Vec::new();
    for i in 0..settings.clients {
        let client = if i == 0 {
            fresh.clone()
        } else {
            keep_alive.clone()
        };
        let (record, stop, base, payload) = (
            Arc::clone(&record),
            Arc::clone(&stop),
            base.clone(),
            payload.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(per_client);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = i;
            while !stop.load(Ordering::Relaxed) {
                ticker.tick().await;
                n += 1;
                let (request, expected): (_, &[u8]) = match n % 3 {
                    0 => (client.get(format!("{base}/function/alpha")), &b"alpha"[..]),
                    1 => (
                        client
                            .post(format!("{base}/function/beta/echo"))
                            .body(payload.clone()),
                        payload.as_slice(),
                    ),
                    _ => (
                        client.get(format!("{base}/function/gamma/sleep?ms=5")),
                        &b"slept 5 ms"[..],
                    ),
                };
                let started = Instant::now();
                match call(request).await {
                    Ok((200, body)) if body == expected => record.ok(started.elapsed()),
                    Ok((status, body)) => record.error(format!(
                        "{status} {}",
                        String::from_utf8_lossy(&body[..body.len().min(200)])
                    )),
                    Err(e) => record.error(e),
                }
            }
        }));
    }
    // Scale `zero` to zero through the API every 20 s; the next request wakes it.
    let zero = {
        let (record, stop) = (Arc::clone(&record), Arc::clone(&stop));
        let (node_addr, auth) = (node.addr(), node.auth_header()?);
        let client = keep_alive.clone();
        let base = base.clone();
        tokio::spawn(async move {
            let body = json!({"serviceName": "zero", "replicas": 0}).to_string();
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(20)).await;
                let scaled = bramble_testkit::http::request(
                    node_addr,
                    "POST",
                    "/system/scale-function/zero",
                    &[("Authorization", &auth)],
                    body.as_bytes(),
                    Duration::from_secs(30),
                )
                .await;
                match scaled {
                    Ok(r) if r.status == 200 => {}
                    Ok(r) => record.error(format!("scale zero: {} {}", r.status, r.text())),
                    Err(e) => record.error(format!("scale zero: {e}")),
                }
                // The replica leaves the route at once; its task stops in the background.
                tokio::time::sleep(Duration::from_secs(2)).await;
                let started = Instant::now();
                match call(client.get(format!("{base}/function/zero"))).await {
                    Ok((200, body)) if body == b"zero" => record.cold(started.elapsed()),
                    Ok((status, body)) => {
                        record.error(format!("zero: {status} {}", String::from_utf8_lossy(&body)));
                    }
                    Err(e) => record.error(format!("zero: {e}")),
                }
            }
        })
    };
    // `idle` goes to zero by itself after 5 s; wake it every 15 s.
    let idle = {
        let (record, stop) = (Arc::clone(&record), Arc::clone(&stop));
        let client = keep_alive.clone();
        let base = base.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(15)).await;
                let started = Instant::now();
                match call(client.get(format!("{base}/function/idle"))).await {
                    Ok((200, _)) => record.cold(started.elapsed()),
                    Ok((status, body)) => {
                        record.error(format!("idle: {status} {}", String::from_utf8_lossy(&body)));
                    }
                    Err(e) => record.error(format!("idle: {e}")),
                }
            }
        })
    };

    // Report each window as it ends.
    println!("| window | requests | errors | p50 | p99 | max | wake-ups | bramble RSS | fds |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut printed = 0;
    let mut rss_by_window = Vec::new();
    let end = record.started + settings.duration;
    while Instant::now() < end {
        let next = record.started + window * (printed as u32 + 1);
        tokio::time::sleep_until(next.min(end).into()).await;
        if Instant::now() >= next {
            let rss = rss_kib(pid);
            rss_by_window.push(rss);
            print_window(&record, printed, rss, open_fds(pid));
            printed += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    zero.abort();
    idle.abort();
    let rss_end = rss_kib(pid);
    let fds_end = open_fds(pid);
    let containers = runtime.list().await?.len();

    let windows = std::mem::take(&mut *record.windows.lock().unwrap());
    let total: usize = windows.iter().map(|w| w.requests).sum();
    let errors: Vec<&String> = windows.iter().flat_map(|w| w.errors.iter()).collect();
    let cold: Vec<Duration> = windows
        .iter()
        .flat_map(|w| w.cold.iter().copied())
        .collect();
    let all: Vec<Duration> = windows
        .iter()
        .flat_map(|w| w.latencies.iter().copied())
        .collect();
    let first = windows.first().map(|w| Summary::of(&w.latencies));
    let last = windows
        .get(printed.saturating_sub(1))
        .map(|w| Summary::of(&w.latencies));
    let overall = Summary::of(&all);
    let cold = Summary::of(&cold);
    let growth = rss_end as i64 - rss_start as i64;
    println!(
        "\ntotal: {total} requests in {:?}, {} errors ({:.4} %); warm p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        settings.duration,
        errors.len(),
        100.0 * errors.len() as f64 / total.max(1) as f64,
        ms(overall.p50),
        ms(overall.p99),
        ms(overall.max)
    );
    if let (Some(first), Some(last)) = (first, last) {
        println!(
            "first window p50 {:.2} ms p99 {:.2} ms; last window p50 {:.2} ms p99 {:.2} ms",
            ms(first.p50),
            ms(first.p99),
            ms(last.p50),
            ms(last.p99)
        );
    }
    println!(
        "wake-ups from zero: {} (p50 {:.1} ms, max {:.1} ms)",
        cold.count,
        ms(cold.p50),
        ms(cold.max)
    );
    println!(
        "bramble RSS: {:.1} MiB after warm-up, {:.1} MiB at the end ({:+.1} MiB, {:+.1} %); open fds {fds_start} → {fds_end}",
        mib(rss_start),
        mib(rss_end),
        growth as f64 / 1024.0,
        100.0 * growth as f64 / rss_start.max(1) as f64
    );

    let mut problems = Vec::new();
    if !errors.is_empty() {
        problems.push(format!(
            "{} failed requests, first: {:?}",
            errors.len(),
            &errors[..errors.len().min(5)]
        ));
    }
    if growth > (settings.rss_bound_mib * 1024) as i64 {
        problems.push(format!(
            "RSS grew by {:.1} MiB, more than {} MiB (per window: {:?} KiB)",
            growth as f64 / 1024.0,
            settings.rss_bound_mib,
            rss_by_window
        ));
    }
    if fds_end > fds_start + FD_GROWTH_BOUND {
        problems.push(format!(
            "open file descriptors grew from {fds_start} to {fds_end}"
        ));
    }
    if containers != 5 {
        problems.push(format!("{containers} containers for 5 functions"));
    }
    Ok(problems)
}

fn bytes_of(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}

/// Sends a request; the status and body, or the error as text.
async fn call(request: reqwest::RequestBuilder) -> std::result::Result<(u16, Vec<u8>), String> {
    let response = request.send().await.map_err(|e| error_text(&e))?;
    let status = response.status().as_u16();
    let body = response.bytes().await.map_err(|e| error_text(&e))?;
    Ok((status, body.to_vec()))
}

fn error_text(e: &reqwest::Error) -> String {
    harness::error_chain(e)
}

fn print_window(record: &Record, index: usize, rss: u64, fds: usize) {
    let windows = record.windows.lock().unwrap();
    let Some(w) = windows.get(index) else {
        println!("| {index} | 0 | 0 | | | | | {:.1} MiB | {fds} |", mib(rss));
        return;
    };
    let s = Summary::of(&w.latencies);
    let from = record.window * index as u32;
    println!(
        "| {}–{} s | {} | {} | {:.2} ms | {:.2} ms | {:.2} ms | {} | {:.1} MiB | {fds} |",
        from.as_secs(),
        (from + record.window).as_secs(),
        w.requests,
        w.errors.len(),
        ms(s.p50),
        ms(s.p99),
        ms(s.max),
        w.cold.len(),
        mib(rss)
    );
}
