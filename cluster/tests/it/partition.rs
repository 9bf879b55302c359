//! A partition (iptables on the LAN's bridge): the minority's writes fail with "no quorum",
//! the majority keeps writing, and after the heal everything converges.

use std::time::{Duration, Instant};

use bramble_cluster::kv::KvError;
use bytes::Bytes;

use crate::kv::three_boards;
use crate::shelf::TestResult;

pub async fn minority_no_quorum_and_heal() -> TestResult {
    let mut shelf = three_boards().await?;
    shelf.boards[0]
        .bucket("desired", 3)
        .await?
        .put("before", Bytes::from_static(b"1"))
        .await?;
    // The board cut off is the one leading the bucket's stream: the majority must elect a new
    // leader, and the cut-off board holds writes it could not commit (the harder case).
    let before_cut =
        bramble_cluster::layout::stream_placement(&shelf.boards[0].js(), "KV_desired").await?;
    let cut_off = shelf
        .boards
        .iter()
        .position(|b| Some(&b.name) == before_cut.leader.as_ref())
        .ok_or("the stream has no leader")?;
    let majority = shelf.boards[(cut_off + 1) % 3]
        .bucket("desired", 3)
        .await?
        .with_timeout(Duration::from_secs(2));
    let minority = shelf.boards[cut_off]
        .bucket("desired", 3)
        .await?
        .with_timeout(Duration::from_secs(2));
    let seen = minority.entry("before").await?.ok_or("not replicated")?;

    let cut = Instant::now();
    shelf.lan.partition(&[cut_off])?;

    // The majority keeps (or quickly regains) a leader and writes, meanwhile.
    let writer = {
        let majority = majority.clone();
        tokio::spawn(async move {
            let mut recovered = None;
            let mut m = 0;
            while m <= 20 {
                match majority
                    .put(&format!("majority-{m}"), Bytes::from_static(b"y"))
                    .await
                {
                    Ok(_) => {
                        recovered.get_or_insert(cut.elapsed());
                        m += 1;
                    }
                    Err(e) => {
                        assert!(e.is_unavailable(), "{e:?}");
                        assert!(
                            cut.elapsed() < Duration::from_secs(30),
                            "majority did not recover"
                        );
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            recovered.unwrap_or_default()
        })
    };

    // The minority cannot commit: every write fails as unavailable — "no quorum" once its
    // routes are found stale (nothing was sent), "no answer" before (the write may still be
    // applied later: counted below).
    let mut refused = Vec::new();
    let mut unanswered = Vec::new();
    let mut n = 0;
    while cut.elapsed() < Duration::from_secs(12) {
        let key = format!("minority-{n}");
        n += 1;
        let started = cut.elapsed();
        match minority.put(&key, Bytes::from_static(b"x")).await {
            Ok(_) => panic!("{key}: a write on the minority succeeded {started:?} after the cut"),
            Err(e @ KvError::NoQuorum { .. }) => {
                assert!(e.to_string().contains("no quorum"), "{e}");
                refused.push(key);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e @ KvError::Timeout { .. }) => {
                assert!(e.to_string().contains("may have lost quorum"), "{e}");
                unanswered.push(key);
            }
            Err(e) => panic!("{key}: {e:?}"),
        }
    }
    // A compare-and-set on the minority fails the same way (not as a conflict).
    let cas = minority
        .update("before", Bytes::from_static(b"2"), seen.revision)
        .await;
    assert!(matches!(&cas, Err(e) if e.is_unavailable()), "{cas:?}");

    let recovered = writer.await?;
    eprintln!("measured: majority writing {recovered:?} after the partition");
    majority
        .update("before", Bytes::from_static(b"majority"), seen.revision)
        .await?;

    let healed = Instant::now();
    shelf.lan.heal()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = minority
            .put("after-heal", Bytes::from_static(b"z"))
            .await
            .is_ok()
            && minority.get("before").await.ok().flatten().as_deref() == Some(&b"majority"[..]);
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "minority did not rejoin");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "measured: minority writing again {:?} after the heal",
        healed.elapsed()
    );

    // Refused writes exist nowhere. Unanswered ones may have been applied after the heal.
    let leader_read = async |key: &str| -> TestResult<Option<Bytes>> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match majority.entry_from_leader(key).await {
                Ok(entry) => return Ok(entry.map(|e| e.value)),
                Err(e) if e.is_unavailable() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    for key in &refused {
        assert_eq!(
            leader_read(key).await?,
            None,
            "{key} was refused but stored"
        );
    }
    let mut ghosts = 0;
    for key in &unanswered {
        if leader_read(key).await?.is_some() {
            ghosts += 1;
        }
    }
    eprintln!(
        "measured: stream leader at the cut {:?}; minority writes: {} refused (none stored), {} unanswered of which {ghosts} were applied after the heal",
        before_cut.leader,
        refused.len(),
        unanswered.len()
    );
    assert_eq!(
        leader_read("before").await?.as_deref(),
        Some(&b"majority"[..])
    );
    assert_eq!(
        leader_read("majority-20").await?.as_deref(),
        Some(&b"y"[..])
    );
    // Every write the majority had acknowledged is on the leader, and nothing else.
    let leaders_keys = loop {
        match majority.keys_from_leader(">").await {
            Ok(keys) => break keys,
            Err(e) if e.is_unavailable() => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => return Err(e.into()),
        }
    };
    let mut expected: Vec<String> = (0..=20).map(|m| format!("majority-{m}")).collect();
    expected.extend(["after-heal".to_owned(), "before".to_owned()]);
    expected.sort();
    let mut on_leader = leaders_keys.clone();
    on_leader.retain(|k| !k.starts_with("minority-"));
    assert_eq!(on_leader, expected, "the leader lost an acknowledged write");
    // What a watch lists (a consumer, placed on any replica) is the same, once the replicas
    // agree. On nats-server 2.9.10 they did not, once in a loaded full run (the leader cut off):
    // a watch listed `minority-0`, a write the cut-off leader had taken into its log but never
    // committed (the leader, asked, did not have it), and not `majority-0` — most likely the
    // cut-off board's replica kept its uncommitted entry at the sequence where the new leader
    // had put `majority-0`, where raft truncates it (whether the leader had `majority-0` was
    // not asked in that run: the check above asks now, on every version). Reported on 2.9; on
    // 2.10 the replicas must agree.
    let version = shelf.boards[0].server().version();
    let known = (version.major, version.minor) < (2, 10);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let watched = match majority.keys().await {
            Ok(keys) => keys,
            Err(e) if e.is_unavailable() => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if watched == leaders_keys {
            break;
        }
        if Instant::now() > deadline {
            let report = format!(
                "20 s after the heal a watch lists {watched:?}, the leader {leaders_keys:?}"
            );
            assert!(known, "{report}");
            eprintln!("measured: nats-server {version}'s known divergence of a replica: {report}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let create = minority.create("before", Bytes::from_static(b"x")).await;
    assert!(
        matches!(create, Err(KvError::Conflict { .. })),
        "{create:?}"
    );
    Ok(())
}

/// Two boards without JetStream learn of each other from the JetStream boards (their only
/// routes). A first attempt to connect that fails (here the link between them is cut while
/// they start) is retried: once the link is back they route to each other, and a message one
/// publishes reaches a subscriber on the other (NATS forwards one hop only: without that
/// route they would never hear each other's heartbeats).
pub async fn members_that_missed_each_other_connect_later() -> TestResult {
    const JS: &[usize] = &[0, 1, 2];
    let (a, b) = (3, 4);
    let mut shelf = crate::shelf::Shelf::new(5)?;
    shelf.lan.cut(a, b)?;
    for i in 0..5 {
        let config = shelf.config(i, Some(JS), JS.contains(&i));
        shelf.start(i, config).await?;
    }
    // One has tried the other and failed (its log says so; one side of a pair connects).
    let tried = |shelf: &crate::shelf::Shelf, from: usize, to: usize| {
        let addr = format!("{}:", shelf.boards[to].addr);
        shelf.boards[from]
            .server()
            .log_tail(500)
            .split(" | ")
            .any(|l| l.contains("connect to route") && l.contains(&addr))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(tried(&shelf, a, b) || tried(&shelf, b, a)) {
        assert!(
            Instant::now() < deadline,
            "no failed attempt logged:\n{}\n{}",
            shelf.boards[a].server().log_tail(50),
            shelf.boards[b].server().log_tail(50)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(shelf.route_peers(a).await?.0, 3);

    let healed = Instant::now();
    shelf.lan.heal()?;
    let deadline = healed + Duration::from_secs(20);
    while shelf.route_peers(a).await?.0 < 4 || shelf.route_peers(b).await?.0 < 4 {
        assert!(
            Instant::now() < deadline,
            "no route between the two boards 20 s after the link came back:\n{}",
            shelf.boards[a].server().log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "measured: route between two boards that missed each other: {:?} after the link came back",
        healed.elapsed()
    );
    let mut heard = shelf.boards[b].client().subscribe("hb.a").await?;
    shelf.boards[b].client().flush().await?;
    // The subscription's interest reaches board a over the new route; publish until it does.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        shelf.boards[a]
            .client()
            .publish("hb.a", bytes::Bytes::from_static(b"1"))
            .await?;
        if tokio::time::timeout(
            Duration::from_millis(200),
            futures::StreamExt::next(&mut heard),
        )
        .await
        .is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "board b never heard board a");
    }
    Ok(())
}
