//! A 100 MB upload streams through `/function` to the fixture's `/echo` and back, with the
//! test process's memory (gateway included) staying flat.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "it/common/mod.rs"]
mod common;

use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt as _;

use common::*;

/// Resident memory of this process, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

const TOTAL: usize = 100 << 20;
const CHUNK: usize = 64 << 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_upload_streams_through_with_flat_memory() {
    let fixture = Fixture::start().await;
    let h = Harness::start(MemProvider::new(Some(fixture.addr))).await;
    h.provider.add_function("fn", "openfaas-fn");
    // Warm up the connections and buffers.
    let r = h
        .send("POST", "/function/fn/echo", &[], vec![7u8; 1 << 20])
        .await;
    assert_eq!((r.status, r.body.len()), (StatusCode::OK, 1 << 20));

    let before = rss_kib();
    // Byte i of the stream is i % 256; a chunk is a multiple of 256 long, so one chunk repeats.
    let chunk = Bytes::from((0..CHUNK).map(|i| (i % 256) as u8).collect::<Vec<u8>>());
    let body = Body::from_stream(futures::stream::iter(
        (0..TOTAL / CHUNK).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
    ));
    let response = h
        .request(
            "POST",
            "/function/fn/echo",
            &[("content-type", "application/octet-stream")],
            body,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut received = 0usize;
    let mut peak = before;
    let mut next_sample = 0usize;
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(60), body.frame())
        .await
        .expect("data keeps flowing")
    {
        let Ok(data) = frame.expect("frame").into_data() else {
            continue;
        };
        for (k, b) in data.iter().enumerate() {
            assert_eq!(
                *b,
                ((received + k) % 256) as u8,
                "byte {} differs",
                received + k
            );
        }
        received += data.len();
        if received >= next_sample {
            peak = peak.max(rss_kib());
            next_sample = received + (1 << 20);
        }
    }
    peak = peak.max(rss_kib());
    assert_eq!(received, TOTAL);
    let grown_mib = (peak.saturating_sub(before)) as f64 / 1024.0;
    println!(
        "100 MB through the gateway: RSS before {before} KiB, peak {peak} KiB, grew {grown_mib:.1} MiB"
    );
    assert!(
        grown_mib < 30.0,
        "memory grew by {grown_mib:.1} MiB while streaming 100 MiB"
    );
    assert_eq!(
        h.provider
            .in_flight
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}
