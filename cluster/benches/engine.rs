//! Benchmark of the cluster engine against real nats-server processes on a namespace LAN:
//! RSS, KV write latency (R1, R3, with and without `sync_interval: always`), and how long
//! writes stop when a stream leader is SIGKILLed. Prints a table.
//!
//! `sudo cargo bench -p bramble-cluster --bench engine` (the nats-server on PATH), or with
//! `BRAMBLE_NATS_SERVER=$(cluster/scripts/nats-server-trixie)` for 2.10.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    unreachable_pub,
    dead_code
)]

mod report;
#[path = "../tests/it/shelf.rs"]
mod shelf;

use std::time::{Duration, Instant};

use bramble_cluster::engine::{JetStreamConfig, SyncPolicy};
use bramble_cluster::kv::Bucket;
use bramble_cluster::layout;
use bytes::Bytes;

use shelf::{Shelf, TestResult};

const PUTS: usize = 1000;
const KILLS: usize = 3;

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1048576.0)
}

fn percentiles(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize];
    format!(
        "p50 {:.2} ms, p99 {:.2} ms",
        at(0.5).as_secs_f64() * 1000.0,
        at(0.99).as_secs_f64() * 1000.0
    )
}

async fn put_latency(bucket: &Bucket) -> TestResult<String> {
    let value = Bytes::from(vec![b'x'; 256]);
    for i in 0..50 {
        bucket.put(&format!("warm-{i}"), value.clone()).await?;
    }
    let mut samples = Vec::with_capacity(PUTS);
    for i in 0..PUTS {
        let started = Instant::now();
        bucket.put(&format!("k{}", i % 100), value.clone()).await?;
        samples.push(started.elapsed());
    }
    Ok(percentiles(samples))
}

async fn cas_latency(bucket: &Bucket, key: &str) -> TestResult<String> {
    let value = Bytes::from(vec![b'y'; 256]);
    let mut revision = bucket.create(key, value.clone()).await?;
    let mut samples = Vec::with_capacity(PUTS / 2);
    for _ in 0..PUTS / 2 {
        let started = Instant::now();
        revision = bucket.update(key, value.clone(), revision).await?;
        samples.push(started.elapsed());
    }
    Ok(percentiles(samples))
}

async fn standalone(sync: SyncPolicy, rows: &mut Vec<(String, String)>) -> TestResult {
    let mut shelf = Shelf::new(1)?;
    let mut config = shelf.config(0, None, true);
    config.jetstream = Some(JetStreamConfig {
        sync,
        ..JetStreamConfig::default()
    });
    shelf.start(0, config).await?;
    let version = shelf.boards[0].server().version();
    let label = match sync {
        SyncPolicy::Always if version.capabilities().sync_interval => "sync_interval: always",
        _ => "default fsync (2 min)",
    };
    if sync == SyncPolicy::ServerDefault {
        rows.push((
            "nats-server idle RSS, standalone, JetStream on".into(),
            mib(shelf.rss(0).await?),
        ));
    }
    let bucket = shelf.boards[0].bucket("bench", 1).await?;
    rows.push((
        format!("KV put R1 standalone, 256 B, {label}"),
        put_latency(&bucket).await?,
    ));
    if sync == SyncPolicy::ServerDefault {
        rows.push((
            "nats-server RSS after 1000 puts, standalone".into(),
            mib(shelf.rss(0).await?),
        ));
    }
    Ok(())
}

async fn no_jetstream(rows: &mut Vec<(String, String)>) -> TestResult {
    let mut shelf = Shelf::new(1)?;
    let config = shelf.config(0, None, false);
    shelf.start(0, config).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    rows.push((
        "nats-server idle RSS, standalone, JetStream off".into(),
        mib(shelf.rss(0).await?),
    ));
    Ok(())
}

async fn clustered(sync: SyncPolicy, rows: &mut Vec<(String, String)>) -> TestResult {
    let mut shelf = Shelf::new(4)?;
    let members = [0, 1, 2, 3];
    let js = [0, 1, 2];
    let mut starts = Vec::new();
    for &i in &members {
        let mut config = shelf.cluster_config(i, &js, &js);
        if let Some(j) = config.jetstream.as_mut() {
            j.sync = sync;
        }
        starts.push((i, config));
    }
    for (i, config) in starts {
        shelf.start(i, config).await?;
    }
    for &i in &js {
        shelf.wait_jetstream(i, Duration::from_secs(60)).await?;
    }
    shelf.wait_meta_peers(&js, Duration::from_secs(60)).await?;
    let version = shelf.boards[0].server().version();
    let label = match sync {
        SyncPolicy::Always if version.capabilities().sync_interval => "sync_interval: always",
        _ => "default fsync",
    };
    if sync == SyncPolicy::ServerDefault {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rows.push((
            "nats-server idle RSS, 3 JetStream boards clustered (each)".into(),
            format!(
                "{} / {} / {}",
                mib(shelf.rss(0).await?),
                mib(shelf.rss(1).await?),
                mib(shelf.rss(2).await?)
            ),
        ));
        rows.push((
            "nats-server idle RSS, cluster member without JetStream".into(),
            mib(shelf.rss(3).await?),
        ));
        let r1 = shelf.boards[0].bucket("bench-r1", 1).await?;
        rows.push((
            "KV put R1 in the cluster, 256 B, default fsync".into(),
            put_latency(&r1).await?,
        ));
    }
    let r3 = shelf.boards[0].bucket("bench-r3", 3).await?;
    layout::wait_stream_replicas(
        &shelf.boards[0].js(),
        "KV_bench-r3",
        3,
        Duration::from_secs(30),
    )
    .await?;
    rows.push((
        format!("KV put R3, 256 B, {label}"),
        put_latency(&r3).await?,
    ));
    rows.push((
        format!("KV update (CAS, bucket-wide) R3, {label}"),
        cas_latency(&r3, "cas-bucket-wide").await?,
    ));
    let per_key = r3.clone().with_cas(bramble_cluster::kv::CasMode::PerKey);
    rows.push((
        format!("KV update (CAS, per-key) R3, {label}"),
        cas_latency(&per_key, "cas-per-key").await?,
    ));
    let via_member = shelf.boards[3].bucket("bench-r3", 3).await?;
    rows.push((
        "KV put R3 from a board without JetStream".into(),
        put_latency(&via_member).await?,
    ));
    if sync == SyncPolicy::ServerDefault {
        rows.push((
            "nats-server RSS after the load (JetStream boards)".into(),
            format!(
                "{} / {} / {}",
                mib(shelf.rss(0).await?),
                mib(shelf.rss(1).await?),
                mib(shelf.rss(2).await?)
            ),
        ));
    }
    Ok(())
}

async fn leader_kill(rows: &mut Vec<(String, String)>) -> TestResult {
    let mut resumed = Vec::new();
    for _ in 0..KILLS {
        let mut shelf = Shelf::new(3)?;
        shelf.start_cluster(&[0, 1, 2], &[0, 1, 2]).await?;
        let bucket = shelf.boards[0].bucket("kill", 3).await?;
        bucket.put("warm", Bytes::from_static(b"x")).await?;
        let p = layout::wait_stream_replicas(
            &shelf.boards[0].js(),
            "KV_kill",
            3,
            Duration::from_secs(30),
        )
        .await?;
        let leader = p.leader.ok_or("no leader")?;
        let victim = shelf
            .boards
            .iter()
            .position(|b| b.name == leader)
            .ok_or("?")?;
        let writer = (victim + 1) % 3;
        let bucket = shelf.boards[writer]
            .bucket("kill", 3)
            .await?
            .with_timeout(Duration::from_millis(500));
        let killed = Instant::now();
        shelf.power_cut(victim);
        loop {
            if bucket.put("after", Bytes::from_static(b"x")).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            if killed.elapsed() > Duration::from_secs(60) {
                return Err("writes did not resume".into());
            }
        }
        resumed.push(killed.elapsed());
    }
    rows.push((
        format!("KV writes stopped after SIGKILL of the stream leader ({KILLS} runs)"),
        resumed
            .iter()
            .map(|d| format!("{:.1} s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", "),
    ));
    Ok(())
}

fn main() {
    let runtime = bramble_testkit::harness::bench_runtime("cluster engine bench");
    let result = runtime.block_on(async {
        let mut rows = Vec::new();
        let version = report::server_version(&shelf::binary());
        no_jetstream(&mut rows).await?;
        standalone(SyncPolicy::ServerDefault, &mut rows).await?;
        standalone(SyncPolicy::Always, &mut rows).await?;
        clustered(SyncPolicy::ServerDefault, &mut rows).await?;
        clustered(SyncPolicy::Always, &mut rows).await?;
        leader_kill(&mut rows).await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((version, rows))
    });
    match result {
        Ok((version, rows)) => report::print_table(
            &format!("{version} (GOMEMLIMIT 48 MiB; loopback network namespaces; 2-core x86_64)"),
            &rows,
        ),
        Err(e) => {
            eprintln!("cluster engine bench: {e}");
            std::process::exit(1);
        }
    }
}
