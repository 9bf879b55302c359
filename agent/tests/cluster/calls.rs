//! Async calls across boards: a board accepts calls (202) for a function that runs on another
//! board and loses its power right after, while most calls wait or run (each takes 500 ms, at
//! most 4 at a time per board); every accepted call still runs and its callback arrives. When the board comes back, its own copies of the calls go without
//! running anything again.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use bramble_testkit::http;
use bramble_testkit::lan::Lan;

use crate::TestResult;
use crate::board::{Board, deploy_constrained, shelf, wait_for, wait_within};

/// Calls accepted before the power cut.
const CALLS: usize = 40;

/// The callbacks of one call.
#[derive(Debug, Default)]
pub(crate) struct Callback {
    /// The body of each callback (one per run of the call).
    pub bodies: Vec<String>,
    /// `X-Function-Status` of the first.
    pub status: String,
    /// The address each came from: the board that ran the call.
    pub from: Vec<IpAddr>,
}

/// Callbacks received: call id → its callbacks.
pub(crate) type Received = Arc<Mutex<BTreeMap<String, Callback>>>;

/// An HTTP server on the test's LAN address recording every callback.
pub(crate) async fn callback_receiver(
    on: std::net::Ipv4Addr,
) -> Result<(SocketAddr, Received), std::io::Error> {
    let received: Received = Arc::default();
    let listener = tokio::net::TcpListener::bind((on, 0)).await?;
    let addr = listener.local_addr()?;
    let seen = Arc::clone(&received);
    let app = axum::Router::new().fallback(
        move |ConnectInfo(peer): ConnectInfo<SocketAddr>,
              headers: axum::http::HeaderMap,
              body: axum::body::Bytes| {
            let seen = Arc::clone(&seen);
            async move {
                let text = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                let mut seen = seen.lock().unwrap();
                let entry = seen.entry(text("x-call-id")).or_insert_with(|| Callback {
                    status: text("x-function-status"),
                    ..Callback::default()
                });
                entry
                    .bodies
                    .push(String::from_utf8_lossy(&body).into_owned());
                entry.from.push(peer.ip());
                "ok"
            }
        },
    );
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await;
    });
    Ok((addr, received))
}

/// The records of async calls a board keeps (`<state>/queue/pending/*.call`).
fn kept(board: &crate::board::Board) -> usize {
    std::fs::read_dir(board.state_dir().join("queue/pending"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "call"))
                .count()
        })
        .unwrap_or(0)
}

pub(crate) async fn accepted_calls_run_after_the_accepting_boards_power_cut() -> TestResult {
    let mut lan = Lan::new(3)?;
    let laptop = lan.join_here()?;
    let mut boards = shelf(&crate::bramble(), &lan).await;
    let (callback, received) = callback_receiver(laptop).await?;

    // `echo` runs on b2 only; b1 accepts the calls.
    deploy_constrained(&boards[0], &[("echo", "node=b2")]);
    wait_for("echo ready, seen by b1", || {
        boards[1]
            .describe("echo")
            .is_some_and(|s| s["availableReplicas"] == 1)
    })
    .await;

    let b1 = SocketAddr::from((Lan::address(1), 8080));
    let url = format!("http://{callback}/done");
    let mut accepted = Vec::new();
    let started = Instant::now();
    for i in 0..CALLS {
        let body = format!("call-{i}");
        let r = http::request(
            b1,
            "POST",
            "/async-function/echo/sleep?ms=500",
            &[("X-Callback-Url", &url)],
            body.as_bytes(),
            Duration::from_secs(10),
        )
        .await?;
        r.expect(202, "an async call")?;
        accepted.push(call_id(&r)?);
    }
    let accepting = started.elapsed();
    // The power goes right after the last 202: whatever b1 had not run yet, others run.
    boards[1].power_cut();
    println!(
        "measured: {CALLS} async calls accepted by b1 in {accepting:?} ({:.2} ms each), then b1's power cut",
        accepting.as_secs_f64() * 1000.0 / CALLS as f64
    );

    let cut = Instant::now();
    wait_for("every accepted call's callback", || {
        let seen = received.lock().unwrap();
        accepted.iter().all(|id| seen.contains_key(id))
    })
    .await;
    println!(
        "measured: the last callback {:?} after the power cut",
        cut.elapsed()
    );
    {
        let seen = received.lock().unwrap();
        for id in &accepted {
            assert_eq!(seen[id].status, "200", "{id}");
            assert_eq!(
                seen[id].bodies[0], "slept 500 ms",
                "{id}: the function's answer"
            );
        }
        let twice: Vec<_> = seen.iter().filter(|(_, c)| c.bodies.len() > 1).collect();
        println!(
            "measured: calls run twice (a board died while running them): {}",
            twice.len()
        );
    }

    // b1 comes back: the calls ran elsewhere, so its copies go, and nothing runs again.
    let copies = kept(&boards[1]);
    let runs = |seen: &BTreeMap<String, Callback>| -> usize {
        seen.values().map(|c| c.bodies.len()).sum()
    };
    let before = runs(&received.lock().unwrap());
    boards[1].start();
    boards[1].wait_up().await;
    wait_for("b1's copies of the calls gone", || kept(&boards[1]) == 0).await;
    println!("measured: b1 kept {copies} of the {CALLS} calls until it came back");
    // Copies handed to the queue again at the start are recognised as done there: once the
    // queue is empty, no callback came twice. On nats-server 2.9 the queue's stream can stop
    // answering for minutes once the board that led it before the cut is back (README: known
    // with 2.9.10; seen in about one run in four on a loaded machine): there the test says so
    // and goes on to the power strip below; on 2.10 the queue must empty.
    let binary = std::env::var(bramble_cluster::engine::config::BINARY_ENV)
        .unwrap_or_else(|_| "nats-server".into());
    let server = bramble_cluster::engine::version::probe(std::path::Path::new(&binary)).await?;
    let stalls = (server.major, server.minor) < (2, 10);
    let back = Instant::now();
    let deadline = back + Duration::from_secs(60);
    let drained = loop {
        let status = boards[0].cluster_ok(&["status"]);
        if status["queuedCalls"] == 0 {
            println!(
                "measured: the cluster's call queue empty {:?} after b1 was back",
                back.elapsed()
            );
            break true;
        }
        if Instant::now() >= deadline {
            let report = format!(
                "the cluster's call queue is not empty {:?} after b1 was back: {}\n{}\n{}\n{}",
                back.elapsed(),
                status["replication"],
                boards[0].log_tail(),
                boards[1].log_tail(),
                boards
                    .iter()
                    .map(Board::nats_log)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            assert!(stalls, "{report}");
            println!("measured: nats-server {server}'s known stall: {report}");
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if drained {
        assert_eq!(runs(&received.lock().unwrap()), before);
    }

    // Idle, the boards' call workers wait at the server for work: a board's nats-server
    // sees heartbeats and watches, not a pull request per round trip.
    let idle = Duration::from_secs(3);
    let counted = messages_in(&boards[0]);
    tokio::time::sleep(idle).await;
    let rate = (messages_in(&boards[0]) - counted) as f64 / idle.as_secs_f64();
    println!("measured: idle, b0's nats-server receives {rate:.0} messages/s");
    assert!(rate < 300.0, "{rate:.0} messages/s on an idle board");

    // The shelf's power strip: every board loses power right after b2 accepted more calls;
    // once the boards are back, every one of them runs.
    let b2 = SocketAddr::from((Lan::address(2), 8080));
    let mut second = Vec::new();
    for i in 0..CALLS / 2 {
        let r = http::request(
            b2,
            "POST",
            "/async-function/echo/sleep?ms=500",
            &[("X-Callback-Url", &url)],
            format!("strip-{i}").as_bytes(),
            Duration::from_secs(10),
        )
        .await?;
        r.expect(202, "an async call")?;
        second.push(call_id(&r)?);
    }
    for b in &mut boards {
        b.power_cut();
    }
    let cut = Instant::now();
    for b in &mut boards {
        b.start();
    }
    for b in &boards {
        b.wait_up().await;
    }
    wait_within(
        Duration::from_secs(120),
        "every call accepted before the whole shelf lost power",
        || {
            let seen = received.lock().unwrap();
            second.iter().all(|id| seen.contains_key(id))
        },
    )
    .await;
    println!(
        "measured: whole shelf powered off and on: the last of {} calls ran {:?} after the cut",
        second.len(),
        cut.elapsed()
    );
    let seen = received.lock().unwrap();
    for id in &second {
        assert_eq!(seen[id].status, "200", "{id}: {:?}", seen[id]);
    }
    Ok(())
}

/// Messages `board`'s nats-server has received (its monitoring port's `/varz`).
fn messages_in(board: &crate::board::Board) -> u64 {
    let varz = crate::board::in_netns(&board.netns, async || {
        http::request(
            SocketAddr::from((
                [127, 0, 0, 1],
                bramble_cluster::engine::config::DEFAULT_MONITOR_PORT,
            )),
            "GET",
            "/varz",
            &[],
            b"",
            Duration::from_secs(5),
        )
        .await
        .unwrap()
        .text()
    });
    let varz: serde_json::Value = serde_json::from_str(&varz).unwrap();
    varz["in_msgs"].as_u64().unwrap()
}

/// The call id a 202 names.
pub(crate) fn call_id(r: &http::Response) -> Result<String, String> {
    r.headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("x-call-id"))
        .map(|(_, v)| v.clone())
        .ok_or_else(|| "no X-Call-Id on the 202".to_owned())
}
