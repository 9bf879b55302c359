//! Boards that run functions: each with its own containerd (and the fixture image), its own
//! bramble and nats-server. A function deployed through one board answers on every board —
//! from the board that runs it, through one extra hop over TLS — and scaled to three it runs
//! on all three, each board answering from its own replica.

use std::time::{Duration, Instant};

use bramble_testkit::http;
use bramble_testkit::lan::Lan;
use bramble_testkit::node::FIXTURE_IMAGE;
use bramble_testkit::stats::{Summary, ms};
use serde_json::Value;

use crate::TestResult;
use crate::board::{API, Board, deploy_constrained, get, in_netns, placed_on, shelf, wait_for};

/// `GET /function/echo/headers` on `board` (from the board itself): status and body.
fn call(board: &Board) -> (u16, String) {
    call_function(board, "echo")
}

/// `GET /function/NAME/headers` on `board` (from the board itself): status and body.
fn call_function(board: &Board, name: &str) -> (u16, String) {
    get(board, &format!("/function/{name}/headers"))
}

/// Latencies of `n` calls of `/function/echo/` on `board`.
fn latencies(board: &Board, n: usize) -> Summary {
    in_netns(&board.netns, async || {
        let mut all = Vec::with_capacity(n);
        for _ in 0..n {
            let started = Instant::now();
            let r = http::request(
                API,
                "GET",
                "/function/echo/",
                &[],
                b"",
                Duration::from_secs(30),
            )
            .await
            .unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            all.push(started.elapsed());
        }
        Summary::of(&all)
    })
}

/// Where the plan puts function `name`, as `board` shows it: (board, replicas) placed.
fn placed(board: &Board, name: &str) -> Vec<(String, u64)> {
    board
        .describe(name)
        .map(|s| placed_on(&s))
        .unwrap_or_default()
}

/// Which board's replica answered a call of `/headers`: the one whose function bridge the
/// replica's address (`host:`, what the gateway connected to) is on.
fn answered_on(boards: &[Board], headers: &str) -> String {
    let host = headers
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .unwrap_or_default();
    boards
        .iter()
        .find(|b| {
            let subnet = &b.env.as_ref().unwrap().config.network.subnet;
            host.starts_with(subnet.trim_end_matches("0/24"))
        })
        .map(|b| b.name.clone())
        .unwrap_or_else(|| format!("no board (host {host})"))
}

/// Answered invocations of `ticker` that went through `board`'s gateway (its `/metrics`).
fn ticks(board: &Board) -> u64 {
    invocations(board, "ticker")
}

/// Answered invocations of function `name` that went through `board`'s gateway (its
/// `/metrics`).
fn invocations(board: &Board, name: &str) -> u64 {
    let text = in_netns(&board.netns, async || {
        http::request(API, "GET", "/metrics", &[], b"", Duration::from_secs(10))
            .await
            .unwrap()
            .text()
    });
    let function = format!("function_name=\"{name}.");
    text.lines()
        .filter(|l| {
            l.starts_with("gateway_function_invocation_total{")
                && l.contains(&function)
                && l.contains("code=\"200\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn available(board: &Board) -> u64 {
    available_of(board, "echo")
}

fn available_of(board: &Board, name: &str) -> u64 {
    board
        .describe(name)
        .map_or(0, |s: Value| s["availableReplicas"].as_u64().unwrap_or(0))
}

/// A function deployed through one board answers on every board; scaled to three, each board
/// answers from its own replica; a schedule fires on one board; an image imported on one board
/// runs on another; a button on one board invokes a function on another; a board that leaves
/// moves its functions first.
pub(crate) async fn deploy_on_one_board_invoke_on_every_board() -> TestResult {
    let lan = Lan::new(3)?;
    let mut boards = shelf(&crate::bramble(), &lan).await;

    // Deployed through b1, placed on one board, answered by every board.
    let deployed = Instant::now();
    let out = boards[1].bramble(&["deploy", "--name", "echo", "--image", FIXTURE_IMAGE]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        boards[1].log_tail()
    );
    wait_for("echo ready", || available(&boards[1]) == 1).await;
    println!(
        "measured: deploy through b1 → one replica ready, shown by b1: {:?}",
        deployed.elapsed()
    );
    let on = placed(&boards[1], "echo");
    assert_eq!(on.len(), 1, "{on:?}");
    let host = on[0].0.clone();
    for b in &boards {
        // Every board knows where it runs before it is asked (the routes follow the records).
        wait_for(&format!("{} sees echo ready", b.name), || available(b) == 1).await;
        let (status, text) = call(b);
        assert_eq!(
            status,
            200,
            "{} answered {status}: {text}\n{}",
            b.name,
            b.log_tail()
        );
        // The replica on the host's function bridge answered…
        assert_eq!(answered_on(&boards, &text), host, "{}: {text}", b.name);
        // …and saw the client's request as if it ran on the board asked.
        assert!(
            text.contains("\nx-forwarded-host: 127.0.0.1:8080\n"),
            "{}: {text}",
            b.name
        );
        assert!(
            text.contains("\nx-forwarded-for: 127.0.0.1\n"),
            "{}: {text}",
            b.name
        );
    }

    // The extra hop's cost: calls on the board that runs it against calls on one that does not.
    let here = boards.iter().find(|b| b.name == host).unwrap();
    let there = boards.iter().find(|b| b.name != host).unwrap();
    let _ = latencies(there, 20);
    let local = latencies(here, 200);
    let remote = latencies(there, 200);
    println!(
        "measured: invoke on the board that runs it ({}) p50 {:.3} ms p99 {:.3} ms; through another board ({}) p50 {:.3} ms p99 {:.3} ms (one connection per call; `cargo bench --bench cluster` for release figures)",
        here.name,
        ms(local.p50),
        ms(local.p99),
        there.name,
        ms(remote.p50),
        ms(remote.p99),
    );

    // Scaled through b2 to three: one replica on each board, and each board answers itself.
    boards[2].bramble_ok(&["scale", "echo", "3"]);
    let scaled = Instant::now();
    wait_for("echo on three boards, three ready", || {
        let on = placed(&boards[0], "echo");
        on.len() == 3 && on.iter().all(|(_, n)| *n == 1) && available(&boards[0]) == 3
    })
    .await;
    println!(
        "measured: scale 1 → 3 over three boards, all ready: {:?}",
        scaled.elapsed()
    );
    for b in &boards {
        let (status, text) = call(b);
        assert_eq!(status, 200, "{}: {text}", b.name);
        assert_eq!(
            answered_on(&boards, &text),
            b.name,
            "the call left {}: {text}",
            b.name
        );
    }

    // A schedule of a function running on all three boards fires on one of them, once per
    // period: the invocations the boards' gateways count over five seconds of `@every 1s`.
    let stack = format!(
        "version: 1.0\nprovider:\n  name: openfaas\nfunctions:\n  ticker:\n    image: {FIXTURE_IMAGE}\n    limits:\n      memory: 32Mi\n    annotations:\n      topic: cron-function\n      schedule: \"@every 1s\"\n"
    );
    let file = boards[0].dir.join("ticker.yml");
    std::fs::write(&file, stack)?;
    boards[0].bramble_ok(&["deploy", "-f", file.to_str().unwrap()]);
    boards[0].bramble_ok(&["scale", "ticker", "3"]);
    wait_for("ticker ready on three boards", || {
        available_of(&boards[0], "ticker") == 3
    })
    .await;
    let before: Vec<u64> = boards.iter().map(ticks).collect();
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after: Vec<u64> = boards.iter().map(ticks).collect();
    let fired: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    println!(
        "measured: `@every 1s` on a function with a replica on each board: {fired:?} invocations per board in {:?}",
        window.elapsed()
    );
    assert_eq!(
        fired.iter().filter(|n| **n > 0).count(),
        1,
        "one board fires the schedule: {fired:?}"
    );
    let total: u64 = fired.iter().sum();
    assert!((4..=7).contains(&total), "once per second: {fired:?}");

    // An image imported on one board runs on another: b2 fetches it from b0 (by digest,
    // checked; no registry anywhere), and any board answers from it.
    let (archive, _) = bramble_testkit::images::fixture_image_with_env(
        &boards[0].dir,
        "docker.io/team/shared:1",
        None,
        &[("BODY", "shared by b0\n")],
    )?;
    boards[0].bramble_ok(&["image", "import", archive.to_str().unwrap()]);
    let has_shared = |b: &Board| {
        let out = b.bramble(&["image", "list", "--json"]);
        String::from_utf8_lossy(&out.stdout).contains("docker.io/team/shared:1")
    };
    assert!(
        !has_shared(&boards[2]),
        "b2 has the image before it needs it"
    );
    let stack = "version: 1.0\nprovider:\n  name: openfaas\nfunctions:\n  shared:\n    image: docker.io/team/shared:1\n    limits:\n      memory: 32Mi\n    constraints:\n      - node=b2\n";
    let file = boards[1].dir.join("shared.yml");
    std::fs::write(&file, stack)?;
    let started = Instant::now();
    boards[1].bramble_ok(&["deploy", "-f", file.to_str().unwrap()]);
    while available_of(&boards[1], "shared") != 1 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "shared not ready on b2 after 30 s: {:?}\n{}",
            boards[1].describe("shared"),
            boards[2].log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "measured: deploy of an image only b0 has, on b2 → ready: {:?}",
        started.elapsed()
    );
    assert_eq!(placed(&boards[1], "shared"), [("b2".to_owned(), 1)]);
    assert!(has_shared(&boards[2]), "b2 keeps the image it fetched");
    // A peer on the LAN without the cluster's certificate gets none of it: 403.
    let url = format!(
        "https://{}:7425/cluster/images/document?name=docker.io/team/shared:1",
        Lan::address(0)
    );
    let stranger = in_netns(&boards[1].netns, async || {
        bramble_base::tls::install_crypto_provider();
        let client = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .build()
            .unwrap();
        let r = client.get(&url).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    });
    assert_eq!(stranger.0, 403, "{}", stranger.1);
    assert!(
        stranger.1.contains("only boards of the cluster"),
        "{}",
        stranger.1
    );
    for b in &boards {
        let answer = in_netns(&b.netns, async || {
            http::request(
                API,
                "GET",
                "/function/shared/",
                &[],
                b"",
                Duration::from_secs(30),
            )
            .await
            .unwrap()
        });
        assert_eq!(answer.status, 200, "{}: {}", b.name, answer.text());
        assert_eq!(answer.text(), "shared by b0\n", "{}", b.name);
    }

    // A button on b0 invokes a function that runs on b2: the trigger names b0 (`board=b0`),
    // which requests the line for it, and its invocation goes where the function runs.
    let stack = "version: 1.0\nprovider:\n  name: openfaas\nfunctions:\n  pressed:\n    image: docker.io/team/shared:1\n    limits:\n      memory: 32Mi\n    constraints:\n      - node=b2\n    annotations:\n      bramble.trigger.gpio: \"GPIO17:rising:board=b0\"\n";
    let file = boards[1].dir.join("pressed.yml");
    std::fs::write(&file, stack)?;
    boards[1].bramble_ok(&["deploy", "-f", file.to_str().unwrap()]);
    wait_for("pressed ready on b2", || {
        available_of(&boards[0], "pressed") == 1
    })
    .await;
    assert_eq!(placed(&boards[0], "pressed"), [("b2".to_owned(), 1)]);
    let holders = |b: &Board| {
        let out = b.bramble(&["gpio", "get", "GPIO17", "--json"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    wait_for("b0 holds GPIO17 for the trigger", || {
        holders(&boards[0]).contains("trigger-pressed.openfaas-fn")
    })
    .await;
    for b in &boards[1..] {
        assert!(
            !holders(b).contains("trigger-pressed"),
            "{}: {}",
            b.name,
            holders(b)
        );
    }
    let pressed = Instant::now();
    boards[0].bramble_ok(&["gpio", "set", "GPIO17", "1"]);
    while invocations(&boards[0], "pressed") != 1 {
        assert!(
            pressed.elapsed() < Duration::from_secs(30),
            "the press on b0 did not invoke pressed on b2 within 30 s\n{}\n{}",
            boards[0].log_tail(),
            boards[2].log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "measured: a GPIO edge on b0 → its function answered on b2: {:?} (polled every 100 ms)",
        pressed.elapsed()
    );
    assert_eq!(invocations(&boards[1], "pressed"), 0);

    // Called through b0 the moment its deploy through b0 answers, a function that runs on b1
    // or b2 answers from there: b0 waits for it to be placed and started elsewhere (a cold
    // start), not for the call's whole timeout (it did, 30 s, while it looked for the
    // replica on itself only).
    deploy_constrained(&boards[0], &[("mover", "node!=b0")]);
    let deployed = Instant::now();
    let (status, text) = call_function(&boards[0], "mover");
    assert_eq!(status, 200, "{text}\n{}", boards[0].log_tail());
    let first = deployed.elapsed();
    assert!(first < Duration::from_secs(10), "{first:?}");
    assert_ne!(answered_on(&boards, &text), "b0", "{text}");
    println!("measured: deploy through b0 → first answer through b0 from another board: {first:?}");

    // A board leaves: what runs on it runs elsewhere before it goes. `mover` runs on b1 or b2.
    wait_for("mover ready", || available_of(&boards[0], "mover") == 1).await;
    let from = placed(&boards[0], "mover")[0].0.clone();
    let to = if from == "b1" { "b2" } else { "b1" };
    let leaving = boards.iter().position(|b| b.name == from).unwrap();
    let started = Instant::now();
    let out = boards[leaving].cluster(&["leave"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        boards[leaving].log_tail()
    );
    println!(
        "measured: {from} leaves, its functions started elsewhere first: {:?}",
        started.elapsed()
    );
    // At once, not after a while: it answers from the board it moved to.
    let (status, text) = call_function(&boards[0], "mover");
    assert_eq!(status, 200, "{text}\n{}", boards[0].log_tail());
    assert_eq!(answered_on(&boards, &text), to, "{text}");
    let left = boards.remove(leaving);

    // Removed through b0 at once: the boards that stay have every leader already (the board
    // that left handed over what it led). Gone everywhere, its containers too.
    let out = boards[0].bramble(&["rm", "echo"]);
    assert!(
        out.status.success(),
        "{}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        boards[0].log_tail(),
        left.log_tail()
    );
    drop(left);
    for b in &boards {
        wait_for(&format!("echo gone from {}", b.name), || {
            b.describe("echo").is_none()
        })
        .await;
        let (status, _) = call(b);
        assert_eq!(status, 404, "{}", b.name);
    }
    Ok(())
}

/// A board powered off under load: calls through another board to a function with a replica
/// on a third never fail; a function whose only replica was on it serves again once the
/// cluster declares the board dead and starts it elsewhere.
pub(crate) async fn a_board_powered_off_under_load() -> TestResult {
    let lan = Lan::new(3)?;
    let mut boards = shelf(&crate::bramble(), &lan).await;
    // Both functions run only on b1 and b2; the load comes through b0.
    deploy_constrained(&boards[0], &[("echo", "node!=b0"), ("single", "node!=b0")]);
    boards[0].bramble_ok(&["scale", "echo", "2"]);
    wait_for("echo on b1 and b2, single ready", || {
        let on = placed(&boards[0], "echo");
        on.len() == 2
            && available_of(&boards[0], "echo") == 2
            && available_of(&boards[0], "single") == 1
    })
    .await;
    let victim_name = placed(&boards[0], "single")[0].0.clone();
    let survivor_name = if victim_name == "b1" { "b2" } else { "b1" }.to_owned();
    println!("single runs on {victim_name}; {victim_name} will be powered off");

    let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let b0_netns = boards[0].netns.clone();
    let loaded = std::thread::spawn(move || {
        in_netns(&b0_netns, async move || {
            let load = bramble_testkit::Load::start(API, "/function/echo/headers", 4);
            while load.ok() < 50 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let _ = started_tx.send(());
            let _ = stop_rx.await;
            load.finish().await.unwrap()
        })
    });
    started_rx.recv()?;
    let victim = boards.iter_mut().find(|b| b.name == victim_name).unwrap();
    let cut = Instant::now();
    victim.power_cut();
    // The lost single replica: how long until a call through b0 is answered again.
    let b0 = &boards[0];
    let back = loop {
        let (status, text) = call_function(b0, "single");
        if status == 200 {
            assert_eq!(answered_on(&boards, &text), survivor_name, "{text}");
            break cut.elapsed();
        }
        assert!(
            cut.elapsed() < Duration::from_secs(60),
            "single never answered again: {status} {text}\n{}",
            b0.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!(
        "measured: power cut of {victim_name} → its only replica of single serves again (on {survivor_name}): {back:?} (dead_after 5s)"
    );
    // Keep the load on until echo is placed afresh (two replicas again, one per alive board).
    let _ = stop_tx.send(());
    let report = loaded.join().map_err(|_| "the load thread panicked")?;
    println!(
        "measured: load through b0 on echo (replicas on b1 and b2) across the power cut: {} answered, {} failed, slowest {:?}",
        report.ok,
        report.failures.len(),
        report.slowest
    );
    assert!(
        report.failures.is_empty(),
        "calls failed while echo had a replica on {survivor_name}: {:?}\n{}",
        &report.failures[..report.failures.len().min(5)],
        boards[0].log_tail()
    );
    // After the cut, the survivor answered.
    assert!(report.ok > 50, "{report:?}");
    Ok(())
}
