//! Beyond one full mesh: members connected as leaf nodes to a JetStream hub of three boards
//! ([`bramble_cluster::engine::LeafConfig`], not configured by bramble yet; the fleet bench
//! measures the shape). A member uses the hub's KV through its one link, heartbeats cross from
//! leaf to leaf, and a member whose hub loses its power connects to another hub.

use std::time::{Duration, Instant};

use bramble_cluster::membership::BoardState;
use bytes::Bytes;

use crate::shelf::{Shelf, TestResult};

const HUBS: &[usize] = &[0, 1, 2];

/// The hub board member `i` is connected to, once it has a leaf link to one (other than
/// `not`), at most `timeout`.
async fn hub_of(
    shelf: &mut Shelf,
    i: usize,
    not: Option<usize>,
    timeout: Duration,
) -> TestResult<usize> {
    let deadline = Instant::now() + timeout;
    loop {
        let leafz = shelf.monitor_json(i, "/leafz").await?;
        let ip = leafz["leafs"]
            .as_array()
            .and_then(|l| l.first())
            .and_then(|l| l["ip"].as_str())
            .map(str::to_owned);
        if let Some(hub) = ip.and_then(|ip| {
            HUBS.iter()
                .copied()
                .find(|&h| shelf.boards[h].addr.to_string() == ip && Some(h) != not)
        }) {
            return Ok(hub);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{} has no leaf link to a hub after {timeout:?}: {leafz}",
                shelf.boards[i].name
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn members_use_the_hub_and_survive_its_power_cut() -> TestResult {
    let mut shelf = Shelf::new(5)?;
    let configs = (0..5).map(|i| (i, shelf.leaf_config(i, HUBS))).collect();
    shelf.start_all(configs).await?;
    for &h in HUBS {
        shelf.wait_jetstream(h, Duration::from_secs(60)).await?;
    }
    shelf.wait_meta_peers(HUBS, Duration::from_secs(60)).await?;
    let hub = hub_of(&mut shelf, 3, None, Duration::from_secs(30)).await?;
    hub_of(&mut shelf, 4, None, Duration::from_secs(30)).await?;
    // One link each: no routes on a member.
    for i in [3, 4] {
        assert_eq!(shelf.route_peers(i).await?.1, 0, "{}", shelf.boards[i].name);
    }

    // KV through the leaf: written on one member, read on the other. (A link shows in
    // `/leafz` a moment before the hub's interest has crossed it: the first ask may find no
    // JetStream.)
    let started = Instant::now();
    let written = loop {
        match shelf.boards[3].bucket("leafy", HUBS.len()).await {
            Ok(b) => break b,
            Err(e) if started.elapsed() < Duration::from_secs(20) => {
                println!("{:?}: {e}", started.elapsed());
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    };
    written.put("k", Bytes::from_static(b"v1")).await?;
    let read = shelf.boards[4].bucket("leafy", HUBS.len()).await?;
    assert_eq!(read.get("k").await?.as_deref(), Some(&b"v1"[..]));

    // Heartbeats cross leaf → hub → leaf: every board sees every other alive.
    let mut members = Vec::new();
    for i in 0..5 {
        members.push(shelf.membership(i, HUBS.contains(&i), HUBS.len()).await?);
    }
    for m in &members {
        let mut view = m.watch();
        tokio::time::timeout(
            Duration::from_secs(30),
            view.wait_for(|v| {
                v.boards.len() == 5 && v.boards.values().all(|b| b.state == BoardState::Alive)
            }),
        )
        .await
        .map_err(|_| "a board did not see all five alive across the leaf links")??;
    }

    // The hub member pi4 is linked to loses its power: pi4 links to another hub and writes.
    let cut = Instant::now();
    shelf.power_cut(hub);
    members.remove(hub);
    hub_of(&mut shelf, 3, Some(hub), Duration::from_secs(30)).await?;
    println!(
        "measured: a leaf member linked to another hub {:?} after its hub's power cut",
        cut.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match written.put("k", Bytes::from_static(b"v2")).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                println!("writing through the new hub: {e}; again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    println!(
        "measured: a leaf member's KV write answered {:?} after its hub's power cut",
        cut.elapsed()
    );
    assert_eq!(read.get("k").await?.as_deref(), Some(&b"v2"[..]));
    drop(members);
    Ok(())
}
