//! Hostile HTTP clients against a real `bramble up` (private containerd, real CNI, the fixture
//! function deployed): 500 idle connections, slowloris clients, oversized heads and bodies.
//! The node's memory stays bounded, it keeps serving everyone else at once, and a refused
//! request changes nothing. The figures are printed for the README.

use std::path::Path;
use std::time::{Duration, Instant};

use bramble_testkit::Node;
use bramble_testkit::harness::Suite;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The tests of this module, as a part of the `it` binary.
pub(crate) fn suite() -> Suite {
    Suite::new("hostile_clients", crate::NODE).async_trial(
        "the_node_survives_hostile_clients_and_serves_others",
        the_node_survives_hostile_clients_and_serves_others,
    )
}

/// The node's resident memory, in KiB.
fn rss_kib(node: &Node) -> u64 {
    let pid = node.pid().expect("the node runs");
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// The slowest of 20 invocations of the function and 20 `/healthz`.
async fn worst_latency(node: &Node) -> Result<Duration, Box<dyn std::error::Error>> {
    let mut worst = Duration::ZERO;
    for path in ["/function/f", "/healthz"] {
        for _ in 0..20 {
            let started = Instant::now();
            let r = node.call("GET", path, &[], b"").await?;
            assert_eq!(r.status, 200, "{path}: {}", r.text());
            worst = worst.max(started.elapsed());
        }
    }
    Ok(worst)
}

async fn the_node_survives_hostile_clients_and_serves_others() -> TestResult {
    let node = Node::with_fixture(
        Path::new(env!("CARGO_BIN_EXE_bramble")),
        "hostile-clients",
        "",
    )
    .await?;
    let deploy = json!({"service": "f", "image": "docker.io/library/fixture:test"}).to_string();
    let r = node
        .api("POST", "/system/functions", deploy.as_bytes())
        .await?;
    assert_eq!(r.status, 200, "{}", r.text());
    node.wait_available("f", 1).await?;
    let baseline = worst_latency(&node).await?;
    let rss_before = rss_kib(&node);

    // 500 idle connections, half of them with a request head begun and abandoned.
    let mut idle = Vec::new();
    for i in 0..500 {
        let mut s = TcpStream::connect(node.addr()).await?;
        if i % 2 == 0 {
            s.write_all(b"POST /system/functions HTTP/1.1\r\nHost: x\r\nContent-Le")
                .await?;
        }
        idle.push(s);
    }
    let with_idle = worst_latency(&node).await?;
    let rss_idle = rss_kib(&node);

    // 50 slowloris clients, one byte of a never-ending head every 100 ms, for 3 s.
    let addr = node.addr();
    let mut slow = Vec::new();
    for _ in 0..50 {
        slow.push(tokio::spawn(async move {
            let Ok(mut s) = TcpStream::connect(addr).await else {
                return;
            };
            let head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: "
                .iter()
                .chain(std::iter::repeat(&b'a'));
            let started = Instant::now();
            for byte in head {
                if s.write_all(&[*byte]).await.is_err()
                    || started.elapsed() > Duration::from_secs(3)
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    let with_slow = worst_latency(&node).await?;
    for s in slow {
        s.await?;
    }

    // Oversized heads: refused (431) or closed, never served.
    for request in [
        format!(
            "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(1 << 20)
        ),
        format!(
            "GET /function/f/{} HTTP/1.1\r\nHost: x\r\n\r\n",
            "a".repeat(1 << 20)
        ),
    ] {
        let mut s = TcpStream::connect(node.addr()).await?;
        let _ = s.write_all(request.as_bytes()).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
            "{}",
            &answer[..answer.len().min(200)]
        );
    }
    // An oversized API body: 413, and nothing deployed.
    let huge = json!({"service": "g", "image": "docker.io/library/fixture:test", "envVars": {"A": "a".repeat(2 << 20)}});
    let r = node
        .api("POST", "/system/functions", huge.to_string().as_bytes())
        .await?;
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(
        node.status("g").await?.is_none(),
        "a refused deploy created g"
    );

    let rss_end = rss_kib(&node);
    drop(idle);
    eprintln!(
        "node RSS: {rss_before} KiB before, {rss_idle} KiB with 500 idle connections (+{} KiB), {rss_end} KiB after slowloris and oversized requests",
        rss_idle.saturating_sub(rss_before)
    );
    eprintln!(
        "worst latency of 40 requests (/function/f, /healthz): {baseline:?} alone, {with_idle:?} beside 500 idle connections, {with_slow:?} beside 50 slowloris clients"
    );
    assert!(
        rss_idle.saturating_sub(rss_before) < 32 << 10,
        "500 idle connections cost {} KiB",
        rss_idle - rss_before
    );
    assert!(
        rss_end.saturating_sub(rss_before) < 64 << 10,
        "RSS {rss_before} -> {rss_end} KiB"
    );
    for (what, worst) in [("idle", with_idle), ("slowloris", with_slow)] {
        assert!(
            worst < Duration::from_secs(1),
            "beside {what} clients: {worst:?}"
        );
    }
    Ok(())
}
