//! Hostile clients over real HTTP: oversized heads and bodies, slowloris, idle connections by
//! the hundred, and arbitrary request bodies on every JSON route. The gateway answers a clear
//! 4xx (or closes the connection), changes nothing, keeps serving everyone else, and cuts off
//! clients that never finish a request head.

use std::time::{Duration, Instant};

use http::StatusCode;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::common::*;

/// Sends raw bytes and reads what comes back until the server closes or `wait` passes.
async fn raw(addr: std::net::SocketAddr, request: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The server may answer and close before reading everything: a failed write is fine.
    let _ = s.write_all(request).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The time one `/healthz` takes.
async fn healthz(h: &Harness) -> Duration {
    let started = Instant::now();
    let r = h.get("/healthz").await;
    assert_eq!(r.status, StatusCode::OK);
    started.elapsed()
}

/// Whether the server closed `s` (read gives EOF or an error) within `wait`.
async fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // A 408 or other answer before the close.
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn oversized_heads_are_refused_and_others_served() {
    let h = Harness::start(MemProvider::new(None)).await;
    let big_header = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let many_headers = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\n{}\r\n",
        (0..500)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(1 << 20));
    for (what, request) in [
        ("a 1 MiB header", big_header),
        ("500 headers", many_headers),
        ("a 1 MiB URI", long_uri),
    ] {
        let answer = raw(h.addr, request.as_bytes(), Duration::from_secs(5)).await;
        // Refused with 431/414/400, or the connection closed: never served, never a 5xx.
        let status = answer.get(9..12).unwrap_or("");
        assert!(
            answer.is_empty() || ["431", "414", "400"].contains(&status),
            "{what}: {}",
            &answer[..answer.len().min(200)]
        );
        eprintln!(
            "{what}: {}",
            answer.lines().next().unwrap_or("connection closed")
        );
        assert!(healthz(&h).await < Duration::from_secs(1));
    }
}

#[tokio::test]
async fn oversized_api_bodies_are_413_and_change_nothing() {
    let h = Harness::start(MemProvider::new(None)).await;
    let auth = basic(USER, PASSWORD);
    let huge = format!(
        r#"{{"service":"big","image":"x:1","envVars":{{"A":"{}"}}}}"#,
        "a".repeat(2 << 20)
    );
    // With a Content-Length: refused before reading.
    let r = h
        .send(
            "POST",
            "/system/functions",
            &[("authorization", &auth)],
            huge.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());
    assert!(
        r.text().contains("too large") || r.text().contains("1048576"),
        "{}",
        r.text()
    );
    // Chunked, without a length: refused once the limit is passed.
    let chunks = futures::stream::iter(
        huge.into_bytes()
            .chunks(64 << 10)
            .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    let response = h
        .request(
            "POST",
            "/system/secrets",
            &[("authorization", &auth)],
            axum::body::Body::from_stream(chunks),
        )
        .await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        !h.provider
            .calls()
            .iter()
            .any(|c| c.starts_with("deploy") || c.starts_with("put_secret")),
        "{:?}",
        h.provider.calls()
    );
    // Async bodies beyond max_async_body, too.
    h.provider.add_function("f", "openfaas-fn");
    let r = h
        .send("POST", "/async-function/f", &[], vec![0u8; 9 << 20])
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());
}

/// Arbitrary bodies on every JSON route, over HTTP: a 2xx or a 4xx with a message, never a
/// 5xx, and a refused request reaches the provider not at all.
#[test]
fn arbitrary_bodies_on_every_json_route() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let h = rt.block_on(Harness::start(MemProvider::new(None)));
    let routes = [
        ("POST", "/system/functions"),
        ("PUT", "/system/functions"),
        ("DELETE", "/system/functions"),
        ("POST", "/system/scale-function/f"),
        ("POST", "/system/secrets"),
        ("PUT", "/system/secrets"),
        ("DELETE", "/system/secrets"),
        ("POST", "/system/namespace/"),
    ];
    let body = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200),
        ".{0,100}".prop_map(String::into_bytes),
        (
            "[a-z0-9-]{0,12}|.{0,12}",
            "[a-z0-9:./-]{0,20}|.{0,10}",
            any::<u64>(),
            ".{0,16}"
        )
            .prop_map(|(name, image, n, value)| json!({
                "service": name, "image": image, "serviceName": name, "replicas": n,
                "functionName": name, "name": name, "value": value,
                "labels": {"openfaas": value}, "limits": {"memory": value},
            })
            .to_string()
            .into_bytes()),
    ];
    let auth = basic(USER, PASSWORD);
    let mut runner = TestRunner::new(Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    });
    let total = std::sync::atomic::AtomicUsize::new(0);
    runner
        .run(&(0..routes.len(), body), |(route, body)| {
            let (method, path) = routes[route];
            let before = h.provider.calls().len();
            let r = rt.block_on(h.send(method, path, &[("authorization", &auth)], body));
            prop_assert!(
                !r.status.is_server_error(),
                "{method} {path}: {} {}",
                r.status,
                r.text()
            );
            if r.status.is_client_error() {
                prop_assert!(r.text().len() > 5, "{method} {path}: vague {}", r.text());
            }
            // Refused by validation (not by the provider, e.g. 404 for an unknown function):
            // the provider never saw it.
            if [400, 413, 415, 422].contains(&r.status.as_u16()) {
                let calls = h.provider.calls();
                prop_assert_eq!(
                    calls.len(),
                    before,
                    "{} {} refused but called {:?}",
                    method,
                    path,
                    &calls[before..]
                );
            }
            total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        })
        .unwrap();
    eprintln!("{} requests", total.into_inner());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_do_not_block_others_and_are_cut_off() {
    let h = Harness::start_with(MemProvider::new(None), |c| {
        c.header_read_timeout = Duration::from_secs(1);
    })
    .await;
    let addr = h.addr;
    // 50 slowloris clients: a request head one byte every 100 ms, for ever.
    let mut slow = Vec::new();
    for _ in 0..50 {
        slow.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let started = Instant::now();
            let head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "
                .iter()
                .chain(std::iter::repeat(&b'a'));
            for byte in head {
                if s.write_all(&[*byte]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                if started.elapsed() > Duration::from_secs(10) {
                    break;
                }
            }
            started.elapsed()
        }));
    }
    // Idle ones: never a byte, and one idle after a first request (keep-alive).
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let mut kept = TcpStream::connect(addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();

    // Meanwhile everyone else is served at once.
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        worst = worst.max(healthz(&h).await);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    eprintln!("worst /healthz latency beside 50 slowloris clients: {worst:?}");
    assert!(worst < Duration::from_millis(500), "{worst:?}");

    // And every slow or idle client is cut off after the header timeout (1 s here).
    assert!(
        closed_within(&mut idle, Duration::from_secs(3)).await,
        "an idle connection stays open"
    );
    assert!(
        closed_within(&mut kept, Duration::from_secs(3)).await,
        "an idle keep-alive connection stays open"
    );
    for s in slow {
        let lasted = s.await.unwrap();
        assert!(
            lasted < Duration::from_secs(3),
            "a slowloris client lasted {lasted:?}"
        );
    }
}

/// RSS of this process, in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_idle_connections_cost_little_and_block_nobody() {
    let h = Harness::start(MemProvider::new(None)).await;
    healthz(&h).await;
    let before = rss_kib();
    let mut idle = Vec::new();
    for _ in 0..500 {
        idle.push(TcpStream::connect(h.addr).await.unwrap());
    }
    // Half of them started a request head and stopped.
    for s in idle.iter_mut().step_by(2) {
        s.write_all(b"POST /system/functions HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
    }
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        worst = worst.max(healthz(&h).await);
    }
    let after = rss_kib();
    eprintln!(
        "500 idle connections: RSS {before} KiB -> {after} KiB (+{} KiB, client sockets included); worst /healthz {worst:?}",
        after.saturating_sub(before)
    );
    assert!(worst < Duration::from_millis(500), "{worst:?}");
    assert!(
        after.saturating_sub(before) < 64 << 10,
        "RSS grew by {} KiB",
        after - before
    );
}
