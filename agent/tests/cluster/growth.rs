//! A cluster grows from one board to five and shrinks back to three through the real CLI, every
//! board with its own containerd, bramble and nats-server, keeping what it had at every step:
//! the first board's functions, secrets and queued async calls from before `cluster init`,
//! another board's own function from before its `join` (taken into the cluster where it runs,
//! without a restart), and calls accepted along the way. A board whose own function collides
//! with one of the cluster's keeps it outside the cluster.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bramble_testkit::http;
use bramble_testkit::lan::Lan;
use bramble_testkit::node::FIXTURE_IMAGE;

use crate::TestResult;
use crate::board::{
    Board, alive, get, names_states, placed_on, wait_for, wait_status, wait_within,
};
use crate::calls::{call_id, callback_receiver};

/// Accepts `n` async calls of `name` (each sleeping `ms`) through `board`; their call ids.
async fn accept_calls(
    board: &Board,
    name: &str,
    n: usize,
    ms: u64,
    callback: &str,
    tag: &str,
) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let to = SocketAddr::from((board.address, 8080));
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let r = http::request(
            to,
            "POST",
            &format!("/async-function/{name}/sleep?ms={ms}"),
            &[("X-Callback-Url", callback)],
            format!("{tag}-{i}").as_bytes(),
            Duration::from_secs(10),
        )
        .await?;
        r.expect(202, "an async call")?;
        ids.push(call_id(&r)?);
    }
    Ok(ids)
}

/// Deploys through `board` with the CLI: the fixture image, 32 MiB, and `args`.
fn deploy(board: &Board, name: &str, args: &[&str]) {
    let mut all = vec![
        "deploy",
        "--name",
        name,
        "--image",
        FIXTURE_IMAGE,
        "--memory",
        "32Mi",
    ];
    all.extend_from_slice(args);
    board.bramble_ok(&all);
}

/// `GET /function/NAME/PATH` answered 200 through `board`: its body.
fn call_ok(board: &Board, name: &str, path: &str) -> String {
    let (status, body) = get(board, &format!("/function/{name}/{path}"));
    assert_eq!(status, 200, "{name}/{path} through {}: {body}", board.name);
    body
}

pub(crate) async fn one_board_grows_to_five_and_back_to_three() -> TestResult {
    let suite = Instant::now();
    let mut lan = Lan::new(5)?;
    let laptop = lan.join_here()?;
    let (callback, received) = callback_receiver(laptop).await?;
    let callback = format!("http://{callback}/done");
    let mut boards = Vec::new();
    for i in 0..5 {
        boards.push(Board::with_containerd(&crate::bramble(), &lan, i, &format!("b{i}")).await);
    }

    // b0 alone: a function with a secret, a mark in its /tmp (gone if it restarts), and async
    // calls still queued (12 calls of 1 s, 4 at a time) when the cluster is formed.
    boards[0].start();
    boards[0].wait_up().await;
    boards[0].bramble_ok(&["secret", "create", "token", "--from-literal", "s3cret-b0"]);
    deploy(&boards[0], "hello", &["--secret", "token"]);
    wait_for("hello ready on b0 alone", || {
        boards[0]
            .describe("hello")
            .is_some_and(|s| s["availableReplicas"] == 1)
    })
    .await;
    call_ok(&boards[0], "hello", "write?path=/tmp/mark&data=b0");
    let mut calls = accept_calls(&boards[0], "hello", 12, 1000, &callback, "alone").await?;

    let init = boards[0].cluster_ok(&["init", "--name", "shelf"]);
    let join = init["join"].as_str().unwrap_or_default().to_owned();
    let (token, address) = join.split_once(' ').ok_or("no join command")?;
    let (token, address) = (token.to_owned(), address.to_owned());
    // The cluster lists b0's function, placed on b0, still the same container with its secret.
    wait_for("hello in the cluster's state, placed on b0", || {
        boards[0]
            .describe("hello")
            .is_some_and(|s| placed_on(&s) == [("b0".to_owned(), 1)])
    })
    .await;
    assert_eq!(call_ok(&boards[0], "hello", "read?path=/tmp/mark"), "b0");
    assert_eq!(
        call_ok(&boards[0], "hello", "read?path=/var/openfaas/secrets/token"),
        "s3cret-b0"
    );
    let secrets = boards[0].bramble_ok(&["secret", "list"]);
    assert!(String::from_utf8_lossy(&secrets.stdout).contains("token"));

    // b1 alone first, with its own function and secret; then it joins.
    boards[1].start();
    boards[1].wait_up().await;
    boards[1].bramble_ok(&["secret", "create", "key", "--from-literal", "s3cret-b1"]);
    deploy(&boards[1], "solo", &["--secret", "key"]);
    wait_for("solo ready on b1 alone", || {
        boards[1]
            .describe("solo")
            .is_some_and(|s| s["availableReplicas"] == 1)
    })
    .await;
    call_ok(&boards[1], "solo", "write?path=/tmp/mark&data=b1");
    // b2 alone has a function named like the cluster's, with another deployment.
    boards[2].start();
    boards[2].wait_up().await;
    deploy(&boards[2], "hello", &["-e", "MINE=1"]);
    for b in &boards[1..3] {
        b.cluster_ok(&["join", &token, &address]);
    }
    for b in &boards[..3] {
        wait_status(b, "three boards alive", |s| {
            names_states(s) == alive(&["b0", "b1", "b2"])
        })
        .await;
    }
    // b1's function is the cluster's, on b1 where it ran (no restart), and every board answers.
    wait_for("solo in the cluster's state, placed on b1", || {
        boards[0]
            .describe("solo")
            .is_some_and(|s| placed_on(&s) == [("b1".to_owned(), 1)])
    })
    .await;
    assert_eq!(call_ok(&boards[0], "solo", "read?path=/tmp/mark"), "b1");
    assert_eq!(
        call_ok(&boards[2], "solo", "read?path=/var/openfaas/secrets/key"),
        "s3cret-b1"
    );
    // b2's own `hello` stays outside the cluster, and says so; the cluster's is unchanged.
    wait_for("b2 says its own hello stays outside", || {
        boards[2]
            .log()
            .contains("stays outside the cluster (it keeps running here")
    })
    .await;
    let hello = boards[1].describe("hello").ok_or("hello not listed")?;
    assert!(
        hello["envVars"].get("MINE").is_none(),
        "b2's hello replaced the cluster's: {hello}"
    );
    calls.extend(accept_calls(&boards[1], "solo", 8, 500, &callback, "three").await?);

    // Five: b3 and b4 join without JetStream; hello scaled to five spreads over every board
    // but b2, which runs its own `hello`.
    for b in &mut boards[3..] {
        b.start();
    }
    for b in &boards[3..] {
        b.wait_up().await;
        b.cluster_ok(&["join", &token, &address]);
    }
    wait_status(&boards[0], "five boards alive", |s| {
        names_states(s) == alive(&["b0", "b1", "b2", "b3", "b4"])
    })
    .await;
    boards[4].bramble_ok(&["scale", "hello", "5"]);
    wait_for("hello on the four boards that do not hold its name", || {
        boards[3].describe("hello").is_some_and(|s| {
            let on: Vec<String> = placed_on(&s).into_iter().map(|(b, _)| b).collect();
            on == ["b0", "b1", "b3", "b4"]
        })
    })
    .await;
    calls.extend(accept_calls(&boards[4], "hello", 8, 500, &callback, "five").await?);
    // b4 accepts more calls of `solo` (on b1) than the five boards run at once (4 each), and
    // leaves right after: from then on it takes no call from the queue, finishes those it
    // runs, and waits until the others ran the rest.
    let leaving = accept_calls(&boards[4], "solo", 40, 3000, &callback, "leaving").await?;
    calls.extend(leaving.iter().cloned());

    // Back to three: a JetStream board (b2) and a member (b4) leave; b3 takes JetStream over.
    let left = Instant::now();
    boards[4].cluster_ok(&["leave"]);
    println!(
        "measured: b4 left in {:?}, the 40 calls of 3 s it accepted all run",
        left.elapsed()
    );
    {
        let seen = received
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let ran: Vec<&crate::calls::Callback> =
            leaving.iter().filter_map(|id| seen.get(id)).collect();
        assert_eq!(ran.len(), leaving.len(), "b4 left before its calls ran");
        let on_b4 = ran
            .iter()
            .filter(|c| c.from.contains(&IpAddr::from(boards[4].address)))
            .count();
        println!("measured: {on_b4} of them ran on b4, which took no more once leaving");
        assert!(
            on_b4 <= 4,
            "b4 ran {on_b4} calls: it kept taking calls from the queue while it left"
        );
        let twice: Vec<_> = ran.iter().filter(|c| c.bodies.len() > 1).collect();
        assert!(
            twice.is_empty(),
            "calls run twice across b4's leave: {twice:?}"
        );
    }
    boards[2].cluster_ok(&["leave"]);
    let three = || alive(&["b0", "b1", "b3"]);
    for b in [&boards[0], &boards[1], &boards[3]] {
        wait_status(b, "b0, b1, b3 left, b3 with JetStream", |s| {
            names_states(s) == three()
                && s["boards"]
                    .as_array()
                    .is_some_and(|all| all.iter().all(|b| b["jetstream"] == true))
        })
        .await;
    }
    calls.extend(accept_calls(&boards[3], "solo", 4, 500, &callback, "back").await?);
    for b in [&boards[0], &boards[1], &boards[3]] {
        let listed = b.bramble_ok(&["list", "--json"]);
        let listed = String::from_utf8_lossy(&listed.stdout);
        assert!(
            listed.contains("\"hello\"") && listed.contains("\"solo\""),
            "{}: {listed}",
            b.name
        );
        let secrets = b.bramble_ok(&["secret", "list"]);
        let secrets = String::from_utf8_lossy(&secrets.stdout);
        assert!(
            secrets.contains("token") && secrets.contains("key"),
            "{secrets}"
        );
    }
    assert_eq!(
        call_ok(&boards[3], "solo", "read?path=/var/openfaas/secrets/key"),
        "s3cret-b1"
    );

    // Every call accepted on the way ran, the ones queued on b0 before the cluster included.
    wait_within(
        Duration::from_secs(120),
        "every accepted call's callback",
        || {
            let seen = received
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            calls.iter().all(|id| seen.contains_key(id))
        },
    )
    .await;
    let seen = received
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for id in &calls {
        assert_eq!(seen[id].status, "200", "{id}: {:?}", seen[id]);
    }
    println!(
        "measured: 1 → 3 → 5 → 3 boards with {} calls: {:?}",
        calls.len(),
        suite.elapsed()
    );
    Ok(())
}
