//! Membership and the lease when a board dies (a power cut: nats-server and bramble killed).

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bramble_cluster::lease::{LEASES_BUCKET, Lease, LeaseConfig, LeaseStatus};
use bramble_cluster::membership::{BOARDS_BUCKET, BoardState, Membership, MembershipConfig, View};

use crate::kv::three_boards;
use crate::shelf::{Shelf, TestResult};

/// Starts membership on board `i` (on the board: its tasks die with it).
pub(crate) async fn membership(
    shelf: &mut Shelf,
    i: usize,
    config: MembershipConfig,
) -> TestResult<Membership> {
    let bucket = shelf.boards[i].bucket(BOARDS_BUCKET, 3).await?;
    let client = shelf.boards[i].client();
    let me = shelf.board_info(i);
    let membership = shelf.boards[i]
        .run(async move { Membership::start(client, bucket, "shelf", me, config).await })
        .await??;
    Ok(membership)
}

async fn wait_view<F>(
    rx: &mut tokio::sync::watch::Receiver<Arc<View>>,
    timeout: Duration,
    mut check: F,
) -> TestResult<Arc<View>>
where
    F: FnMut(&View) -> bool,
{
    let result = tokio::time::timeout(timeout, async {
        loop {
            let view = rx.borrow_and_update().clone();
            if check(&view) {
                return Ok::<_, tokio::sync::watch::error::RecvError>(view);
            }
            rx.changed().await?;
        }
    })
    .await;
    match result {
        Ok(view) => Ok(view?),
        Err(_) => Err(format!(
            "view did not reach the state in {timeout:?}: {:?}",
            rx.borrow()
        )
        .into()),
    }
}

pub async fn killed_board_suspect_then_dead() -> TestResult {
    let mut shelf = three_boards().await?;
    let config = MembershipConfig::default();
    let mut members = Vec::new();
    for i in 0..3 {
        members.push(membership(&mut shelf, i, config).await?);
    }
    let mut views: Vec<_> = members.iter().map(Membership::watch).collect();
    for view in &mut views {
        let v = wait_view(view, Duration::from_secs(10), |v| {
            v.records_loaded
                && v.boards.len() == 3
                && v.boards
                    .values()
                    .all(|b| b.state == BoardState::Alive && b.info.is_some())
        })
        .await?;
        let pi2 = v.boards["pi2"].info.clone().ok_or("no record")?;
        assert_eq!(pi2.address, IpAddr::from([10, 77, 0, 2]));
        assert_eq!(pi2.hardware.i2c_buses, vec![1]);
        assert!(v.boards["pi2"].last_seen.is_some());
    }
    // A record is rewritten only when it changed.
    let mut changed = shelf.board_info(0);
    changed.functions = 2;
    members[0].update(&changed).await?;
    wait_view(&mut views[1], Duration::from_secs(5), |v| {
        v.boards["pi1"]
            .info
            .as_ref()
            .is_some_and(|i| i.functions == 2)
    })
    .await?;

    let killed = Instant::now();
    shelf.power_cut(2);
    drop(members.pop());
    let suspect = wait_view(&mut views[0], Duration::from_secs(8), |v| {
        v.boards["pi3"].state != BoardState::Alive
    })
    .await?;
    assert_eq!(suspect.boards["pi3"].state, BoardState::Suspect);
    let suspect_after = killed.elapsed();
    let dead = wait_view(
        &mut views[0],
        config.dead_after + Duration::from_secs(3),
        |v| v.boards["pi3"].state == BoardState::Dead,
    )
    .await?;
    let dead_after = killed.elapsed();
    eprintln!(
        "measured: SIGKILLed board suspect after {suspect_after:?}, dead after {dead_after:?} (heartbeat 1 s, dead_after 10 s)"
    );
    assert!(
        dead_after >= config.dead_after - config.heartbeat,
        "{dead_after:?}"
    );
    assert!(
        dead.boards["pi3"].info.is_some(),
        "a dead board keeps its record"
    );
    assert_eq!(dead.boards["pi1"].state, BoardState::Alive);
    assert_eq!(dead.boards["pi2"].state, BoardState::Alive);
    // The other survivor agrees.
    wait_view(&mut views[1], Duration::from_secs(3), |v| {
        v.boards["pi3"].state == BoardState::Dead
    })
    .await?;
    // Forgetting it removes it from every view.
    // (Bounded generously: on a loaded 2-core machine the deletion took over 5 s to arrive.)
    members[1].forget("pi3").await?;
    wait_view(&mut views[0], Duration::from_secs(15), |v| {
        !v.boards.contains_key("pi3")
    })
    .await?;
    Ok(())
}

pub async fn lease_moves_once() -> TestResult {
    let mut shelf = three_boards().await?;
    let config = LeaseConfig::default();
    let timeline: Arc<Mutex<Vec<(Instant, usize, bool)>>> = Arc::default();
    let mut leases = Vec::new();
    for i in 0..3 {
        let bucket = shelf.boards[i].bucket(LEASES_BUCKET, 3).await?;
        let name = shelf.boards[i].name.clone();
        let lease = shelf.boards[i]
            .run(async move { Lease::start(bucket, "placer", &name, config) })
            .await??;
        let mut rx = lease.watch();
        let timeline = timeline.clone();
        tokio::spawn(async move {
            let mut holding = false;
            loop {
                let now = rx.borrow_and_update().is_holder();
                if now != holding {
                    holding = now;
                    timeline.lock().unwrap().push((Instant::now(), i, now));
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
        leases.push(Some(lease));
    }
    let holders = |t: &[(Instant, usize, bool)]| {
        let mut state = [false; 3];
        for &(_, i, h) in t {
            state[i] = h;
        }
        state
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        let t = timeline.lock().unwrap().clone();
        let state = holders(&t);
        if state.iter().filter(|h| **h).count() == 1 {
            break state.iter().position(|h| *h).unwrap_or(0);
        }
        assert!(Instant::now() < deadline, "no single holder: {t:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Stable: nobody else takes it while the holder renews.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        timeline.lock().unwrap().len(),
        1,
        "{:?}",
        timeline.lock().unwrap()
    );

    let killed = Instant::now();
    shelf.power_cut(first);
    leases[first] = None;
    let before = timeline.lock().unwrap().len();
    let deadline = Instant::now() + config.dead_after + Duration::from_secs(10);
    let (taken_at, second) = loop {
        let t = timeline.lock().unwrap().clone();
        if let Some(&(at, i, true)) = t[before..].iter().find(|e| e.2) {
            break (at, i);
        }
        assert!(Instant::now() < deadline, "nobody took over: {t:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!(
        "measured: lease taken over {:?} after its holder's power cut (renew 1 s, dead_after 10 s)",
        taken_at - killed
    );
    assert_ne!(second, first);
    assert!(taken_at - killed >= config.dead_after - config.renew_every * 2);
    // Exactly one takeover, and it sticks.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let t = timeline.lock().unwrap().clone();
    let after: Vec<_> = t[before..].iter().map(|&(_, i, h)| (i, h)).collect();
    assert_eq!(after, vec![(second, true)], "{t:?}");
    let survivor = (0..3).find(|&i| i != first && i != second).unwrap_or(0);
    let status = leases[survivor]
        .as_ref()
        .ok_or("gone")?
        .watch()
        .borrow()
        .clone();
    assert_eq!(
        status,
        LeaseStatus::Following {
            holder: Some(shelf.boards[second].name.clone())
        }
    );
    Ok(())
}
