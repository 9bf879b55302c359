//! A partition (iptables on the LAN's bridge): the minority's writes fail with "no quorum",
//! the majority keeps writing, and after the heal everything converges.

use std::time::{Duration, Instant};

use bramble_cluster::kv::KvError;
use bytes::Bytes;

use crate::kv::three_boards;
use crate::shelf::TestResult;

pub async fn minority_no_quorum_and_heal() -> TestResult {
    let mut shelf = three_boards().await?;
    let majority = shelf.boards[0]
        .bucket("desired", 3)
        .await?
        .with_timeout(Duration::from_secs(2));
    let minority = shelf.boards[2]
        .bucket("desired", 3)
        .await?
        .with_timeout(Duration::from_secs(2));
    majority.put("before", Bytes::from_static(b"1")).await?;
    let seen = minority.entry("before").await?.ok_or("not replicated")?;

    let before_cut =
        bramble_cluster::layout::stream_placement(&shelf.boards[0].js(), "KV_desired").await?;
    let cut = Instant::now();
    shelf.lan.partition(&[2])?;

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
    let keys = loop {
        match majority.keys().await {
            Ok(keys) => break keys,
            Err(e) if e.is_unavailable() => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => return Err(e.into()),
        }
    };
    assert_eq!(
        keys.iter().filter(|k| k.starts_with("majority-")).count(),
        21,
        "{keys:?}"
    );
    let create = minority.create("before", Bytes::from_static(b"x")).await;
    assert!(
        matches!(create, Err(KvError::Conflict { .. })),
        "{create:?}"
    );
    Ok(())
}
