//! `bramble cluster init|join|status|token|leave|remove`: talk to the local node's API, which
//! does the work (the node owns the state and restarts itself into or out of cluster mode).

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bramble_cluster::node::status::{BoardStatus, ClusterStatus};
use reqwest::Method;

use super::client::{Client, Target};
use super::functions::{out, report, table};

#[derive(clap::Subcommand, Debug)]
pub(crate) enum ClusterCommand {
    /// Form a cluster with this board as its first member; prints the join command.
    Init(Box<InitArgs>),
    /// Join this board to a cluster: TOKEN ADDRESS, as `bramble cluster init` printed it.
    Join(Box<JoinArgs>),
    /// List the boards of the cluster.
    Status(Box<StatusArgs>),
    /// Print the join command again.
    Token(Box<StatusArgs>),
    /// Move this board's functions off it and leave the cluster (back to single-board mode).
    Leave(Box<LeaveArgs>),
    /// Forget a dead board.
    Remove(Box<RemoveArgs>),
}

#[derive(clap::Args, Debug)]
pub(crate) struct InitArgs {
    /// The cluster's name.
    #[arg(long, default_value = "bramble")]
    name: String,
    /// Print the result as JSON: {"cluster","board","token","join"}.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: Target,
}

#[derive(clap::Args, Debug)]
pub(crate) struct JoinArgs {
    /// The join token.
    token: String,
    /// A board of the cluster: its API address (HOST:PORT).
    address: String,
    /// Print the result as JSON: {"cluster","board","address","jetstream"}.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: Target,
}

#[derive(clap::Args, Debug)]
pub(crate) struct StatusArgs {
    /// Print the node's JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: Target,
}

#[derive(clap::Args, Debug)]
pub(crate) struct LeaveArgs {
    /// Leave even when the cluster cannot be told (it is gone for good).
    #[arg(long)]
    force: bool,
    /// Print the node's JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: Target,
}

#[derive(clap::Args, Debug)]
pub(crate) struct RemoveArgs {
    /// The dead board's name.
    board: String,
    /// Print the node's JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: Target,
}

/// How long the CLI waits for the node to come back after it restarted.
const RESTART_WAIT: Duration = Duration::from_secs(60);

pub(crate) async fn run(command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Init(args) => init(&args).await,
        ClusterCommand::Join(args) => join(&args).await,
        ClusterCommand::Status(args) => status(&args).await,
        ClusterCommand::Token(args) => token(&args).await,
        ClusterCommand::Leave(args) => leave(&args).await,
        ClusterCommand::Remove(args) => remove(&args).await,
    }
}

async fn init(args: &InitArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.target)?;
    let body = serde_json::json!({ "cluster": args.name });
    let answer: serde_json::Value = client
        .send_json(Method::POST, "/system/cluster/init", &body)
        .await?
        .json()
        .await
        .context("the node's answer is not what bramble expects")?;
    if !args.json {
        eprintln!("cluster formed; waiting for the node to restart into cluster mode…");
    }
    wait_in_cluster(&args.target).await?;
    let join = answer["join"].as_str().unwrap_or_default();
    let text = format!(
        "cluster {} formed with board {}\njoin other boards with:\n  bramble cluster join {join}\n",
        answer["cluster"].as_str().unwrap_or_default(),
        answer["board"].as_str().unwrap_or_default(),
    );
    report(args.json, &text, &answer)
}

async fn join(args: &JoinArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.target)?;
    let body = serde_json::json!({ "token": args.token, "address": args.address });
    let answer: serde_json::Value = client
        .send_json(Method::POST, "/system/cluster/join", &body)
        .await?
        .json()
        .await
        .context("the node's answer is not what bramble expects")?;
    if !args.json {
        eprintln!("joined; waiting for the node to restart into cluster mode…");
    }
    // The board took the cluster's API login: read the credentials again.
    wait_in_cluster(&args.target).await?;
    let text = format!(
        "board {} joined cluster {}{}\n",
        answer["board"].as_str().unwrap_or_default(),
        answer["cluster"].as_str().unwrap_or_default(),
        if answer["jetstream"].as_bool() == Some(true) {
            " (it carries JetStream)"
        } else {
            ""
        }
    );
    report(args.json, &text, &answer)
}

/// Waits until the node answers `GET /system/cluster` and reaches its cluster.
async fn wait_in_cluster(target: &Target) -> anyhow::Result<ClusterStatus> {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < RESTART_WAIT {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let client = Client::new(target)?;
        match client.get_json::<ClusterStatus>("/system/cluster").await {
            Ok(status) if status.connected => return Ok(status),
            Ok(_) => last = "it does not reach its cluster yet".into(),
            Err(e) => last = format!("{e:#}"),
        }
    }
    bail!(
        "the node did not come back in cluster mode within {}s: {last}",
        RESTART_WAIT.as_secs()
    )
}

fn bytes(n: u64) -> String {
    const MI: u64 = 1 << 20;
    if n >= 10 * 1024 * MI {
        format!("{}Gi", n / (1024 * MI))
    } else {
        format!("{}Mi", n / MI)
    }
}

fn row(board: &BoardStatus) -> Vec<String> {
    let state = serde_json::to_value(board.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let memory = match board.memory.budget {
        Some(budget) => format!("{}/{}", bytes(board.memory.used), bytes(budget)),
        None => format!("{}/-", bytes(board.memory.used)),
    };
    let mut hardware = Vec::new();
    if let Some(chip) = &board.hardware.gpio_chip {
        hardware.push(format!("gpio:{chip}"));
    }
    if !board.hardware.i2c_buses.is_empty() {
        let buses: Vec<String> = board
            .hardware
            .i2c_buses
            .iter()
            .map(u32::to_string)
            .collect();
        hardware.push(format!("i2c:{}", buses.join(",")));
    }
    if !board.hardware.sensors.is_empty() {
        hardware.push(format!("1-wire:{}", board.hardware.sensors.len()));
    }
    let mut name = board.name.clone();
    if board.jetstream {
        name.push('*');
    }
    vec![
        name,
        board.address.clone(),
        if board.leaving {
            format!("{state} (leaving)")
        } else {
            state
        },
        board.last_seen.clone().unwrap_or_else(|| "-".into()),
        board.arch.clone(),
        board.version.clone(),
        memory,
        board.functions.to_string(),
        if hardware.is_empty() {
            "-".into()
        } else {
            hardware.join(" ")
        },
    ]
}

async fn status(args: &StatusArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.target)?;
    let response = client
        .send(client.request(Method::GET, "/system/cluster"))
        .await?;
    let text = response.text().await.context("reading the node's answer")?;
    if args.json {
        return out(&format!("{}\n", text.trim()));
    }
    let status: ClusterStatus =
        serde_json::from_str(&text).context("the node's answer is not what bramble expects")?;
    let rows = status.boards.iter().map(row).collect();
    let mut text = format!(
        "cluster {} as seen from {}{}{}{}\n",
        status.cluster,
        status.board,
        if status.connected {
            ""
        } else {
            " (which does not reach the cluster now)"
        },
        status
            .placer
            .as_deref()
            .map(|p| format!("; placer: {p}"))
            .unwrap_or_default(),
        status
            .queued_calls
            .map(|n| format!("; async calls queued: {n}"))
            .unwrap_or_default()
    );
    if let Some(r) = &status.replication {
        text.push_str(&if r.behind.is_empty() {
            format!("state: {} copies, all current\n", r.copies)
        } else {
            format!(
                "state: {} copies wanted, not there yet for {}\n",
                r.copies,
                r.behind.join(", ")
            )
        });
    }
    text.push_str(&table(
        &[
            "BOARD",
            "ADDRESS",
            "STATE",
            "LAST SEEN",
            "ARCH",
            "VERSION",
            "MEMORY",
            "FUNCTIONS",
            "HARDWARE",
        ],
        rows,
    ));
    text.push_str("* carries JetStream\n");
    out(&text)
}

async fn token(args: &StatusArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.target)?;
    let answer: serde_json::Value = client.get_json("/system/cluster/token").await?;
    let text = format!(
        "bramble cluster join {}\n",
        answer["join"].as_str().unwrap_or_default()
    );
    report(args.json, &text, &answer)
}

async fn leave(args: &LeaveArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.target)?;
    if !args.json {
        eprintln!("leaving: this board's functions start on other boards first…");
    }
    let body = serde_json::json!({ "force": args.force });
    let answer: serde_json::Value = client
        .send_json(Method::POST, "/system/cluster/leave", &body)
        .await?
        .json()
        .await
        .context("the node's answer is not what bramble expects")?;
    let promoted = answer["promoted"]
        .as_str()
        .map(|p| format!("; {p} carries JetStream in its place"))
        .unwrap_or_default();
    let text = format!(
        "left cluster {}{promoted}; the node restarts in single-board mode\n",
        answer["cluster"].as_str().unwrap_or_default()
    );
    report(args.json, &text, &answer)
}

async fn remove(args: &RemoveArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.target)?;
    let body = serde_json::json!({ "board": args.board });
    let answer: serde_json::Value = client
        .send_json(Method::POST, "/system/cluster/remove", &body)
        .await?
        .json()
        .await
        .context("the node's answer is not what bramble expects")?;
    let text = format!("removed board {}\n", args.board);
    report(args.json, &text, &answer)
}
