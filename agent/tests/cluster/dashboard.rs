//! The dashboard's boards in a real cluster, in a real headless Chromium: three boards on the
//! test LAN, the test's own network namespace plugged into it as a laptop
//! ([`Lan::join_here`]), the browser there opening board pi0's `:8080/ui/`. A function deployed
//! through the CLI is placed on two boards, which the boards view shows; a power cut of one of
//! them shows it dead within its `dead_after`, and the replica moved to the third board (the
//! times are printed: `measured: ...`). Screenshots go to `target/dashboard/cluster-*.png`.

use std::time::{Duration, Instant};

use bramble_testkit::browser::{Browser, artifact};
use bramble_testkit::harness::{self, Need, Trial};
use bramble_testkit::lan::Lan;
use serde_json::Value;

use super::{TestResult, alive, names_states, wait_for, wait_status};

/// The boards' `--cluster-dead-after` (see `Board::start`).
const DEAD_AFTER: Duration = Duration::from_secs(5);
/// What the page may add to `dead_after`: the overview's read every second, and the browser's
/// polling.
const MARGIN: Duration = Duration::from_secs(3);
/// How long the page may take to show what the server pushed.
const SHOWN: Duration = Duration::from_secs(10);

/// This module's trial, which needs a browser besides what the binary needs.
pub(crate) fn trial() -> Trial {
    harness::needing(
        &[Need::Binary("chromium"), Need::Binary("chromedriver")],
        Trial::test("dashboard_shows_the_boards_and_a_dead_one", || {
            harness::block_on(dashboard_shows_the_boards_and_a_dead_one())
        }),
    )
}

/// The boards as the overview shows them: name, state, the card's text, memory used and
/// budget (from its meter; `null` without a budget).
const BOARDS: &str = "return [...document.querySelectorAll('article[data-board]')].map((a) => { \
     const m = a.querySelector('[role=meter]'); \
     return {name: a.dataset.board, state: a.dataset.state, text: a.textContent, \
             used: m && Number(m.getAttribute('aria-valuenow')), \
             budget: m && Number(m.getAttribute('aria-valuemax'))}; })";

async fn dashboard_shows_the_boards_and_a_dead_one() -> TestResult {
    let mut lan = Lan::new(3)?;
    lan.join_here()?;
    let mut boards = vec![
        // Names of their own: the other trial's boards (`b0`…) may run in this process too,
        // and a board's directory is named after its index and name.
        super::board(&lan, 0, "pi0"),
        super::board(&lan, 1, "pi1"),
        super::board(&lan, 2, "pi2"),
    ];
    for b in &mut boards {
        b.start();
    }
    for b in &boards {
        b.wait_up().await;
    }
    let init = boards[0].cluster_ok(&["init", "--name", "shelf"]);
    let join = init["join"].as_str().ok_or("no join command")?.to_owned();
    let (token, address) = join.split_once(' ').ok_or("join: no address")?;
    for b in &boards[1..] {
        b.cluster_ok(&["join", token, address]);
    }
    let status = wait_status(&boards[0], "three boards alive", |s| {
        names_states(s) == alive(&["pi0", "pi1", "pi2"])
    })
    .await;
    assert!(
        status["boards"][0]["memory"]["budget"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{status}"
    );

    // A function, deployed through pi0 and scaled to two replicas: placed on two boards.
    for args in [
        &[
            "deploy",
            "--name",
            "hello",
            "--image",
            "hello:latest",
            "--memory",
            "32Mi",
        ][..],
        &["scale", "hello", "2"],
    ] {
        let out = boards[0].bramble(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut hosts = Vec::new();
    wait_for("hello placed on two boards", || {
        hosts = boards[0]
            .describe("hello")
            .map(|s| placed_on(&s))
            .unwrap_or_default();
        hosts.len() == 2
    })
    .await;
    println!("hello placed on {hosts:?}");

    let browser = Browser::start(1280, 900).await?;
    let base = format!("http://{}:8080", Lan::address(0));
    browser.goto(&format!("{base}/")).await?;
    let url = browser.url().await?;
    assert!(
        url.contains("/ui/login"),
        "not sent to the login form: {url}"
    );
    let password =
        std::fs::read_to_string(boards[0].state_dir().join("secrets/basic-auth-password"))?;
    let user = std::fs::read_to_string(boards[0].state_dir().join("secrets/basic-auth-user"))?;
    browser.log_in(user.trim(), password.trim(), SHOWN).await?;

    // The three boards, alive, with their arch, address, memory used/budget as the cluster's
    // status says, and hello on the two boards it is placed on. (A board counts a function's
    // memory as used once its own provider has taken the deployment, which needs containerd:
    // none here, so the figures are 0 of the budget.)
    let shown = browser
        .wait_for(
            "three alive boards, hello on two",
            &format!(
                "const b = (() => {{ {BOARDS} }})(); \
                 return b.length === 3 && b.every((x) => x.state === 'alive') \
                     && b.filter((x) => x.text.includes('Runs hello')).length === 2 && b"
            ),
            SHOWN,
        )
        .await;
    let shown = match shown {
        Ok(shown) => shown,
        Err(e) => {
            let _ = browser.screenshot(&artifact("cluster-boards-failed")).await;
            let page = browser.run(BOARDS, &[]).await;
            return Err(format!("{e}; the page shows {page:?}").into());
        }
    };
    let shown = shown.as_array().ok_or("no boards")?;
    let status = boards[0].cluster_ok(&["status"]);
    let memory = |name: &str, what: &str| {
        status["boards"]
            .as_array()
            .and_then(|all| all.iter().find(|b| b["name"] == name))
            .and_then(|b| b["memory"][what].as_u64())
    };
    let names: Vec<&str> = shown.iter().filter_map(|b| b["name"].as_str()).collect();
    assert_eq!(names, ["pi0", "pi1", "pi2"]);
    for b in shown {
        let name = b["name"].as_str().unwrap_or_default();
        let text = b["text"].as_str().unwrap_or_default();
        assert!(text.contains("amd64"), "{name}: no arch in {text:?}");
        assert!(
            text.contains(&Lan::address(names_index(name)).to_string()),
            "{name}: no address in {text:?}"
        );
        // As the page holds them: JavaScript numbers.
        #[allow(clippy::cast_precision_loss)]
        let as_js = |n: Option<u64>| n.map(|n| n as f64);
        let budget = memory(name, "budget");
        assert!(budget.is_some_and(|b| b > 0), "{name}: {status}");
        assert_eq!(b["budget"].as_f64(), as_js(budget), "{name}: {b}");
        assert_eq!(
            b["used"].as_f64(),
            as_js(memory(name, "used")),
            "{name}: {b}"
        );
        let runs = hosts.iter().any(|h| h == name);
        assert_eq!(
            text.contains("Runs hello"),
            runs,
            "{name} (hello runs on {hosts:?}): {text:?}"
        );
        if !runs {
            assert!(text.contains("Runs nothing"), "{name}: {text:?}");
        }
    }
    assert!(
        shown[0]["text"]
            .as_str()
            .is_some_and(|t| t.contains("(this board)")),
        "{}",
        shown[0]
    );
    browser.screenshot(&artifact("cluster-boards")).await?;

    // A power cut of a board running hello, not pi0 (its bramble and its nats-server): dead
    // on the page within dead_after, with no reload; then hello's replica moves to the board
    // that had none, which the page shows too.
    let victim = hosts
        .iter()
        .find(|h| *h != "pi0")
        .cloned()
        .unwrap_or_else(|| "pi2".to_owned());
    browser
        .run("window.__bramble_not_reloaded = true; return null", &[])
        .await?;
    boards[names_index(&victim)].power_cut();
    let cut = Instant::now();
    browser
        .wait_for(
            &format!("{victim} dead"),
            &format!(
                "return window.__bramble_not_reloaded && document.querySelector('article[data-board={victim}]')?.dataset.state === 'dead'"
            ),
            DEAD_AFTER + MARGIN,
        )
        .await?;
    let dead = cut.elapsed();
    println!(
        "measured: power cut of {victim} → dead on pi0's page: {dead:?} (dead_after {DEAD_AFTER:?})"
    );
    assert!(
        dead <= DEAD_AFTER + MARGIN,
        "{victim} shown dead after {dead:?}"
    );
    let states: Value = browser
        .run(
            "return [...document.querySelectorAll('article[data-board]')].map((a) => a.dataset.board + ':' + a.dataset.state)",
            &[],
        )
        .await?;
    let want: Vec<String> = ["pi0", "pi1", "pi2"]
        .iter()
        .map(|b| format!("{b}:{}", if *b == victim { "dead" } else { "alive" }))
        .collect();
    assert_eq!(states, serde_json::json!(want), "{}", boards[0].log_tail());
    browser.screenshot(&artifact("cluster-board-dead")).await?;
    // Where the dead board's replica goes next is the placer's business, and its time depends
    // on which JetStream streams the dead board led (seconds, sometimes over a minute): the
    // cluster tests (`routing`) and the cluster benchmark measure it, this test does not wait.
    Ok(())
}

/// The boards `status` (`describe --json`) places replicas on.
fn placed_on(status: &Value) -> Vec<String> {
    status["bramble"]["replicas"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter(|p| p["state"] == "placed" && p["replicas"].as_u64().unwrap_or(0) > 0)
                .filter_map(|p| p["board"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// `piN`'s index on the LAN.
fn names_index(name: &str) -> usize {
    name.trim_start_matches("pi").parse().unwrap_or(usize::MAX)
}
