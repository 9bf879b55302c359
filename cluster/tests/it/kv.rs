//! KV on a 3-board cluster: compare-and-set races, watch mirrors, leader loss, replicas.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bramble_cluster::engine::HealthCheck;
use bramble_cluster::kv::{self, Bucket, CasMode, Change, KvError};
use bramble_cluster::layout;
use bytes::Bytes;

use crate::shelf::{Shelf, TestResult};

pub(crate) async fn three_boards() -> TestResult<Shelf> {
    let mut shelf = Shelf::new(3)?;
    shelf.start_cluster(&[0, 1, 2], &[0, 1, 2]).await?;
    Ok(shelf)
}

pub async fn cas_race_has_one_winner() -> TestResult {
    let shelf = three_boards().await?;
    let a = shelf.boards[0].bucket("desired", 3).await?;
    let b = shelf.boards[1].bucket("desired", 3).await?;
    let c = shelf.boards[2].bucket("desired", 3).await?;
    for round in 0..20 {
        let key = format!("fn-{round}");
        // Two boards create the same key at once: one wins, the other gets Conflict.
        let (ra, rb) = tokio::join!(
            a.create(&key, Bytes::from_static(b"from-a")),
            b.create(&key, Bytes::from_static(b"from-b"))
        );
        let (winner, loser) = match (&ra, &rb) {
            (Ok(_), Err(e)) => (&b"from-a"[..], e),
            (Err(e), Ok(_)) => (&b"from-b"[..], e),
            _ => panic!("round {round}: both or neither won: {ra:?} {rb:?}"),
        };
        assert!(
            matches!(loser, KvError::Conflict { expected: None, .. }),
            "{loser:?}"
        );
        let entry = c.entry(&key).await?.ok_or("created key missing")?;
        assert_eq!(entry.value.as_ref(), winner);

        // Two boards update from the same revision (and a third writes another key): one
        // wins, the other gets Conflict naming the revision.
        let other = format!("other-{round}");
        let (ua, ub, _) = tokio::join!(
            a.update(&key, Bytes::from_static(b"a2"), entry.revision),
            b.update(&key, Bytes::from_static(b"b2"), entry.revision),
            c.put(&other, Bytes::from_static(b"noise"))
        );
        let loser = match (&ua, &ub) {
            (Ok(_), Err(e)) | (Err(e), Ok(_)) => e,
            _ => panic!("round {round}: update race: {ua:?} {ub:?}"),
        };
        assert!(
            matches!(loser, KvError::Conflict { expected: Some(r), .. } if *r == entry.revision),
            "{loser:?}"
        );
        assert!(
            loser.to_string().contains("no longer the latest"),
            "{loser}"
        );
    }
    // Delete with a stale revision is refused; with the latest it works; create works again.
    let latest = a.entry("fn-0").await?.ok_or("missing")?;
    let stale = a.delete_if("fn-0", latest.revision - 1).await;
    assert!(matches!(stale, Err(KvError::Conflict { .. })), "{stale:?}");
    a.delete_if("fn-0", latest.revision).await?;
    assert_eq!(b.get("fn-0").await?, None);
    b.create("fn-0", Bytes::from_static(b"again")).await?;
    assert!(matches!(
        a.create("fn-0", Bytes::from_static(b"x")).await,
        Err(KvError::Conflict { .. })
    ));

    // The per-key check: exact on 2.10+, raced on a clustered 2.9 stream.
    let version = shelf.boards[0].server().version();
    let (pa, pb) = (
        a.clone().with_cas(CasMode::PerKey),
        b.clone().with_cas(CasMode::PerKey),
    );
    let mut double = 0;
    for round in 0..50 {
        let key = format!("per-key-{round}");
        let revision = pa.create(&key, Bytes::from_static(b"0")).await?;
        let (ua, ub) = tokio::join!(
            pa.update(&key, Bytes::from_static(b"a"), revision),
            pb.update(&key, Bytes::from_static(b"b"), revision)
        );
        if ua.is_ok() && ub.is_ok() {
            double += 1;
        }
    }
    eprintln!(
        "measured: nats-server {version}: per-key CAS let both racing updates win in {double} of 50 rounds"
    );
    if (version.major, version.minor) >= (2, 10) {
        assert_eq!(double, 0, "2.10 checks the per-key revision when applying");
    }
    Ok(())
}

/// A mirror of a bucket kept by `kv::follow` on a board.
pub(crate) struct Mirror {
    pub map: Arc<Mutex<BTreeMap<String, Bytes>>>,
    pub current: Arc<std::sync::atomic::AtomicBool>,
}

pub(crate) async fn mirror(shelf: &mut Shelf, i: usize, bucket: Bucket) -> TestResult<Mirror> {
    let map = Arc::new(Mutex::new(BTreeMap::new()));
    let current = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (m, c) = (map.clone(), current.clone());
    shelf.boards[i]
        .run(async move {
            let mut changes = kv::follow(bucket);
            tokio::spawn(async move {
                while let Some(change) = changes.recv().await {
                    match change {
                        Change::Put { key, value, .. } => {
                            m.lock().unwrap().insert(key, value);
                        }
                        Change::Delete { key, .. } => {
                            m.lock().unwrap().remove(&key);
                        }
                        Change::Current => c.store(true, std::sync::atomic::Ordering::SeqCst),
                    }
                }
            });
        })
        .await?;
    Ok(Mirror { map, current })
}

pub async fn watch_mirrors_converge() -> TestResult {
    let mut shelf = three_boards().await?;
    let seed = shelf.boards[0].bucket("state", 3).await?;
    // Values that exist before the watches start come first.
    for i in 0..10 {
        seed.put(&format!("old-{i}"), Bytes::from(format!("v{i}")))
            .await?;
    }
    seed.delete("old-3").await?;
    let mut mirrors = Vec::new();
    for i in 0..3 {
        let bucket = shelf.boards[i].bucket("state", 3).await?;
        mirrors.push(mirror(&mut shelf, i, bucket).await?);
    }
    let buckets = [
        shelf.boards[0].bucket("state", 3).await?,
        shelf.boards[1].bucket("state", 3).await?,
        shelf.boards[2].bucket("state", 3).await?,
    ];
    for n in 0..60u32 {
        let bucket = &buckets[(n % 3) as usize];
        let key = format!("k{}", n % 17);
        if n % 5 == 4 {
            bucket.delete(&key).await?;
        } else {
            bucket.put(&key, Bytes::from(format!("{n}"))).await?;
        }
    }
    let mut truth = BTreeMap::new();
    for key in seed.keys().await? {
        if let Some(v) = seed.get(&key).await? {
            truth.insert(key, v);
        }
    }
    assert!(truth.contains_key("old-1") && !truth.contains_key("old-3"));
    let deadline = Instant::now() + Duration::from_secs(10);
    for (i, m) in mirrors.iter().enumerate() {
        loop {
            let same = *m.map.lock().unwrap() == truth;
            if same && m.current.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "board {i}'s mirror did not converge: {:?} vs {truth:?}",
                m.map.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // What `follow` reads while it cannot create a watch: the same state, from the leader,
    // revision by revision (older values of a key skipped), at most `limit` at once.
    let changes = buckets[1].changes_from_leader(1, 1000).await?;
    let mut read = BTreeMap::new();
    let mut last = 0;
    for change in &changes {
        let revision = change.revision().ok_or("a change without a revision")?;
        assert!(revision > last, "revisions out of order: {changes:?}");
        last = revision;
        match change {
            Change::Put { key, value, .. } => {
                read.insert(key.clone(), value.clone());
            }
            Change::Delete { key, .. } => {
                read.remove(key);
            }
            Change::Current => {}
        }
    }
    assert_eq!(read, truth);
    assert_eq!(last, buckets[1].last_revision().await?);
    let first = changes[0].revision().ok_or("no revision")?;
    let two = buckets[2].changes_from_leader(first, 2).await?;
    assert_eq!(two, changes[..2]);
    assert!(
        buckets[0]
            .changes_from_leader(last + 1, 1000)
            .await?
            .is_empty()
    );
    Ok(())
}

/// A board about to leave hands over what its server leads (the bucket's stream, the meta
/// group): then its server stops, even by a power cut, and writes through the others never
/// meet a leaderless stream.
pub async fn hand_over_leaves_no_gap() -> TestResult {
    let mut shelf = three_boards().await?;
    let bucket = shelf.boards[0].bucket("handover", 3).await?;
    bucket.put("warm", Bytes::from_static(b"up")).await?;
    layout::wait_stream_replicas(
        &shelf.boards[0].js(),
        "KV_handover",
        3,
        Duration::from_secs(20),
    )
    .await?;
    // The victim leads the meta group; its stream leader is moved there (each hand-over by
    // another board moves it to one of the two others).
    let meta = shelf.meta(0).await?.leader;
    let victim = board_named(&shelf, &meta)?;
    let mut moves = 0;
    loop {
        let leader = layout::stream_placement(&shelf.boards[victim].js(), "KV_handover")
            .await?
            .leader
            .ok_or("no stream leader")?;
        if leader == meta {
            break;
        }
        moves += 1;
        assert!(moves <= 20, "the stream's leader never moved to {meta}");
        let board = board_named(&shelf, &leader)?;
        let done = hand_over(&mut shelf, board).await?;
        assert_eq!(done.streams, ["KV_handover"], "{done:?}");
        assert!(!done.meta, "{done:?}");
    }

    let started = Instant::now();
    let done = hand_over(&mut shelf, victim).await?;
    eprintln!(
        "measured: leadership handed over in {:?}: {done:?}",
        started.elapsed()
    );
    assert!(done.leaderless.is_empty(), "{done:?}");
    assert!(done.streams.contains(&"KV_handover".to_owned()), "{done:?}");
    assert!(done.meta, "{done:?}");
    let writer = (victim + 1) % 3;
    let after = layout::stream_placement(&shelf.boards[writer].js(), "KV_handover").await?;
    assert_ne!(after.leader.as_deref(), Some(meta.as_str()));
    assert_ne!(shelf.meta(writer).await?.leader, meta);

    // Its power goes: writes through another board go on, each within half a second.
    let bucket = shelf.boards[writer]
        .bucket("handover", 3)
        .await?
        .with_timeout(Duration::from_millis(500));
    shelf.power_cut(victim);
    let cut = Instant::now();
    let mut slowest = Duration::ZERO;
    for n in 0..30u32 {
        let asked = Instant::now();
        bucket
            .put(&format!("k{n}"), Bytes::from(n.to_string()))
            .await
            .map_err(|e| format!("write {n}, {:?} after the cut: {e}", cut.elapsed()))?;
        slowest = slowest.max(asked.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "measured: 30 writes over {:?} after the power cut of the board that handed over; slowest {slowest:?}",
        cut.elapsed()
    );
    Ok(())
}

fn board_named(shelf: &Shelf, name: &str) -> TestResult<usize> {
    Ok(shelf
        .boards
        .iter()
        .position(|b| b.name == name)
        .ok_or_else(|| format!("{name} is not a board"))?)
}

/// Board `i` hands over what its server leads.
async fn hand_over(shelf: &mut Shelf, i: usize) -> TestResult<layout::HandedOver> {
    let system = shelf.system_client(i).await?;
    let js = shelf.boards[i].js();
    let name = shelf.boards[i].name.clone();
    shelf.boards[i]
        .run(async move {
            layout::hand_over_leadership(&js, &system, &name, Duration::from_secs(10)).await
        })
        .await
}

pub async fn writes_resume_after_leader_sigkill() -> TestResult {
    let mut shelf = three_boards().await?;
    let bucket = shelf.boards[0].bucket("calls", 3).await?;
    bucket.put("warm", Bytes::from_static(b"up")).await?;
    let placement = layout::wait_stream_replicas(
        &shelf.boards[0].js(),
        "KV_calls",
        3,
        Duration::from_secs(20),
    )
    .await?;
    let leader = placement.leader.ok_or("no leader")?;
    let placement_meta = shelf.meta(0).await?.leader;
    let victim = shelf
        .boards
        .iter()
        .position(|b| b.name == leader)
        .ok_or("leader is not a board")?;
    let writer = (victim + 1) % 3;
    let bucket = shelf.boards[writer]
        .bucket("calls", 3)
        .await?
        .with_timeout(Duration::from_millis(500));

    let follower = shelf.boards[writer].bucket("calls", 3).await?;
    let mirror = mirror(&mut shelf, writer, follower).await?;
    let mut acked = BTreeMap::new();
    for n in 0..20u32 {
        let rev = bucket
            .put(&format!("k{n}"), Bytes::from(n.to_string()))
            .await?;
        acked.insert(format!("k{n}"), (n, rev));
    }
    let killed = Instant::now();
    tracing::debug!("power cut of the stream leader");
    shelf.power_cut(victim);
    let mut failures = 0u32;
    let mut n = 20u32;
    let resumed = loop {
        match bucket
            .put(&format!("k{n}"), Bytes::from(n.to_string()))
            .await
        {
            Ok(rev) => {
                acked.insert(format!("k{n}"), (n, rev));
                if failures > 0 {
                    tracing::debug!(rev, "writes resumed");
                    break killed.elapsed();
                }
                n += 1;
            }
            Err(e) => {
                assert!(
                    e.is_unavailable(),
                    "unexpected error while the leader is gone: {e:?}"
                );
                failures += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "writes did not resume"
        );
    };
    eprintln!(
        "measured: KV writes resumed {resumed:?} after SIGKILL of the stream leader ({failures} failed writes, 10 ms apart)"
    );
    let meta = shelf.boards[writer].server().monitor().clone();
    let meta_back = shelf.boards[writer]
        .run(async move {
            meta.wait_for(HealthCheck::MetaLeader, Duration::from_secs(60))
                .await
                .map(|()| killed.elapsed())
        })
        .await??;
    eprintln!(
        "measured: JetStream meta leader known again {meta_back:?} after the kill (the dead board led the meta group: {})",
        placement_meta == leader
    );
    // Nothing acknowledged is lost, and a watch started before the kill follows on.
    for (key, (n, _)) in &acked {
        assert_eq!(
            bucket
                .entry_from_leader(key)
                .await?
                .map(|e| e.value)
                .as_deref(),
            Some(n.to_string().as_bytes()),
            "{key}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let missing: Vec<String> = {
            let map = mirror.map.lock().unwrap();
            acked
                .keys()
                .filter(|k| !map.contains_key(*k))
                .cloned()
                .collect()
        };
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the watch lost {missing:?} after the leader died"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "measured: a watch kept across the leader's death had every write {:?} after the kill",
        killed.elapsed()
    );
    Ok(())
}

pub async fn ensure_replicas_in_place() -> TestResult {
    let shelf = three_boards().await?;
    let js = shelf.boards[0].js();
    let bucket = shelf.boards[0].bucket("grow", 1).await?;
    for i in 0..50 {
        bucket
            .put(&format!("k{i}"), Bytes::from(vec![b'x'; 256]))
            .await?;
    }
    for target in [2usize, 3, 1, 3] {
        let started = Instant::now();
        let before = bucket.ensure_replicas(target).await?;
        let placement =
            layout::wait_stream_replicas(&js, "KV_grow", target, Duration::from_secs(30)).await?;
        eprintln!(
            "measured: R{before} -> R{target} (50 keys) current in {:?} on {:?}",
            started.elapsed(),
            placement.peers
        );
        assert_eq!(placement.replicas, target);
        assert_eq!(placement.messages, 50);
        let keys = bucket.keys().await?;
        assert_eq!(keys.len(), 50, "R{target}: {keys:?}");
    }
    assert_eq!(bucket.ensure_replicas(3).await?, 3, "no change is a no-op");
    let refused = bucket.ensure_replicas(5).await;
    assert!(refused.is_err(), "R5 on 3 JetStream boards: {refused:?}");
    Ok(())
}
