//! Beyond a shelf: one NATS cluster of 10, 25 and 50 boards on a namespace LAN, configured as
//! bramble configures a cluster (JetStream on three boards, the others members without it; every
//! board's routes name the JetStream boards and nats-server gossips the rest of the mesh), each
//! board running bramble's membership (a heartbeat a second, its record in the `boards`
//! bucket). Measures what grows with the number of boards: the time until every server routes
//! to every other and every board sees every other alive, route connections per server, RSS,
//! CPU and messages per second of an idle JetStream board and of an idle member, and a KV write
//! from a member. Prints a table.
//!
//! The same for the leaf-node shape (`LeafConfig`, not configured by bramble yet): the three
//! JetStream boards route to each other and are the hub; every other board is a standalone
//! server with one leaf link to a hub board.
//!
//! `sudo cargo bench -p bramble-cluster --bench fleet` (the nats-server on PATH, or
//! `BRAMBLE_NATS_SERVER=$(cluster/scripts/nats-server-trixie)` for 2.10; `BRAMBLE_FLEET=10,25`
//! for other sizes, `BRAMBLE_FLEET_SHAPE=mesh` or `leaf` for one shape).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    unreachable_pub,
    dead_code
)]

mod report;
#[path = "../tests/it/shelf.rs"]
mod shelf;

use std::time::{Duration, Instant};

use bramble_cluster::membership::{BoardState, Membership};
use bytes::Bytes;

use shelf::{Shelf, TestResult};

/// The boards carrying JetStream, as `cluster.max_jetstream = 3` chooses.
const JS: &[usize] = &[0, 1, 2];
/// How long an idle server is watched for its CPU time and messages.
const IDLE: Duration = Duration::from_secs(20);
const PUTS: usize = 200;

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1048576.0)
}

/// CPU seconds (user + system) the process `pid` has used.
fn cpu_seconds(pid: u32) -> TestResult<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command's closing parenthesis: state is field 3; utime 14, stime 15.
    let rest = stat.rsplit_once(')').ok_or("no )")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}

/// How the boards' servers connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// bramble's: one full mesh of routes.
    Mesh,
    /// The JetStream boards a routed hub, every other board a leaf of it.
    Leaf,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::Mesh => "full mesh",
            Shape::Leaf => "leaf nodes",
        }
    }
}

/// Leaf links of board `i`'s server.
async fn leaf_links(shelf: &mut Shelf, i: usize) -> TestResult<usize> {
    let varz = shelf.monitor_json(i, "/varz").await?;
    Ok(varz["leafnodes"].as_u64().unwrap_or(0) as usize)
}

/// Per server, whether it is connected as `shape` wants.
async fn connected(shelf: &mut Shelf, n: usize, shape: Shape) -> TestResult<Vec<bool>> {
    let mut linked = Vec::with_capacity(n);
    for i in 0..n {
        let peers = shelf.route_peers(i).await?.0;
        linked.push(match shape {
            Shape::Mesh => peers == n - 1,
            Shape::Leaf if JS.contains(&i) => peers == JS.len() - 1,
            Shape::Leaf => leaf_links(shelf, i).await? == 1,
        });
    }
    Ok(linked)
}

/// (messages in, messages out) of board `i`'s server so far.
async fn messages(shelf: &mut Shelf, i: usize) -> TestResult<(u64, u64)> {
    let varz = shelf.monitor_json(i, "/varz").await?;
    Ok((
        varz["in_msgs"].as_u64().unwrap_or(0),
        varz["out_msgs"].as_u64().unwrap_or(0),
    ))
}

async fn fleet(n: usize, shape: Shape, rows: &mut Vec<(String, String)>) -> TestResult {
    let mut shelf = Shelf::new(n)?;
    let started = Instant::now();
    let configs = (0..n)
        .map(|i| {
            let config = match shape {
                Shape::Mesh => shelf.config(i, Some(JS), JS.contains(&i)),
                Shape::Leaf => shelf.leaf_config(i, JS),
            };
            (i, config)
        })
        .collect();
    shelf.start_all(configs).await?;
    for &i in JS {
        shelf.wait_jetstream(i, Duration::from_secs(60)).await?;
    }
    shelf.wait_meta_peers(JS, Duration::from_secs(60)).await?;
    loop {
        let linked = connected(&mut shelf, n, shape).await?;
        if linked.iter().all(|&l| l) {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            let worst = linked.iter().position(|&l| !l).unwrap_or(0);
            eprintln!(
                "board {} log:\n{}",
                shelf.boards[worst].name,
                shelf.boards[worst].server().log_tail(200)
            );
            return Err(format!(
                "{n} servers did not connect as a {} in 120 s: connected {linked:?}",
                shape.name()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let connected_at = started.elapsed();

    // Every board's membership, on the board.
    let mut members: Vec<Membership> = Vec::new();
    for i in 0..n {
        members.push(shelf.membership(i, JS.contains(&i), JS.len()).await?);
    }
    let mut views: Vec<_> = members.iter().map(Membership::watch).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    for view in &mut views {
        loop {
            let all_alive = {
                let v = view.borrow_and_update();
                v.boards.len() == n
                    && v.boards
                        .values()
                        .all(|b| b.state == BoardState::Alive && b.info.is_some())
            };
            if all_alive {
                break;
            }
            if tokio::time::timeout_at(deadline.into(), view.changed())
                .await
                .is_err()
            {
                return Err(format!("a board did not see all {n} boards alive in 120 s").into());
            }
        }
    }
    let everyone_alive = started.elapsed();

    // Idle: heartbeats only.
    let member = n - 1;
    let watched = [0, member];
    let mut before = Vec::new();
    for &i in &watched {
        let pid = shelf.boards[i].pid().ok_or("not running")?;
        before.push((cpu_seconds(pid)?, messages(&mut shelf, i).await?));
    }
    tokio::time::sleep(IDLE).await;
    let mut idle = Vec::new();
    for (&i, (cpu, (msgs_in, msgs_out))) in watched.iter().zip(before) {
        let pid = shelf.boards[i].pid().ok_or("not running")?;
        let (now_in, now_out) = messages(&mut shelf, i).await?;
        let secs = IDLE.as_secs_f64();
        idle.push(format!(
            "{:.1} % CPU, {:.0} msgs/s in, {:.0} out, {}",
            (cpu_seconds(pid)? - cpu) / secs * 100.0,
            (now_in - msgs_in) as f64 / secs,
            (now_out - msgs_out) as f64 / secs,
            mib(shelf.rss(i).await?)
        ));
    }

    let bucket = shelf.boards[member].bucket("fleet", JS.len()).await?;
    let value = Bytes::from(vec![b'x'; 256]);
    for i in 0..20 {
        bucket.put(&format!("warm-{i}"), value.clone()).await?;
    }
    let mut samples = Vec::with_capacity(PUTS);
    for i in 0..PUTS {
        let put = Instant::now();
        bucket.put(&format!("k{}", i % 50), value.clone()).await?;
        samples.push(put.elapsed());
    }
    samples.sort();
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize].as_secs_f64() * 1000.0;

    let links = |routes: usize, leaves: usize| match (routes, leaves) {
        (r, 0) => format!("{r} routes"),
        (0, l) => format!("{l} leaf links"),
        (r, l) => format!("{r} routes + {l} leaf links"),
    };
    let member_links = links(
        shelf.route_peers(member).await?.1,
        leaf_links(&mut shelf, member).await?,
    );
    let hub_links = links(
        shelf.route_peers(0).await?.1,
        leaf_links(&mut shelf, 0).await?,
    );
    let at_n = format!("{n} boards, {}", shape.name());
    rows.push((
        format!("{at_n}: connected / everyone sees everyone alive"),
        format!(
            "{:.1} s / {:.1} s after the servers start",
            connected_at.as_secs_f64(),
            everyone_alive.as_secs_f64()
        ),
    ));
    rows.push((
        format!("{at_n}: connections of a JetStream board / of a member"),
        format!("{hub_links} / {member_links}"),
    ));
    rows.push((format!("{at_n}: a JetStream board idle"), idle[0].clone()));
    rows.push((format!("{at_n}: a member idle"), idle[1].clone()));
    rows.push((
        format!("{at_n}: KV put R3 from a member, 256 B"),
        format!("p50 {:.2} ms, p99 {:.2} ms", at(0.5), at(0.99)),
    ));
    drop(members);
    Ok(())
}

/// `net.ipv4.neigh.default.gc_thresh3`: the most ARP entries the kernel keeps, shared by every
/// network namespace (readable only from the host's). Every board talks to every other: `n`
/// boards on one kernel need about n × (n − 1) entries; past the limit a board cannot resolve
/// the others' addresses ("neighbor table overflow") and its routes to them time out — a limit
/// of the simulation, not of a real shelf (each Pi keeps n − 1).
fn arp_limit() -> Option<usize> {
    std::fs::read_to_string("/proc/sys/net/ipv4/neigh/default/gc_thresh3")
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn main() {
    let sizes: Vec<usize> = std::env::var("BRAMBLE_FLEET")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10, 25, 50]);
    if sizes.is_empty() || sizes.iter().any(|n| !(4..=200).contains(n)) {
        eprintln!("cluster fleet bench: BRAMBLE_FLEET: board counts between 4 and 200, like 10,25");
        std::process::exit(2);
    }
    let largest = sizes.iter().copied().max().unwrap_or(4);
    if let Some(limit) = arp_limit()
        && largest * (largest - 1) + 128 > limit
    {
        let want = (largest * largest + 128).next_power_of_two();
        eprintln!(
            "cluster fleet bench: {largest} boards on one kernel need about {} ARP entries, and \
             net.ipv4.neigh.default.gc_thresh3 is {limit} (shared by every network namespace). \
             Raise it for the run: sudo sysctl -w net.ipv4.neigh.default.gc_thresh2={want} \
             net.ipv4.neigh.default.gc_thresh3={want} (or fewer boards: BRAMBLE_FLEET=10,25)",
            largest * (largest - 1)
        );
        std::process::exit(2);
    }
    let shapes: Vec<Shape> = match std::env::var("BRAMBLE_FLEET_SHAPE").ok().as_deref() {
        None | Some("") => vec![Shape::Mesh, Shape::Leaf],
        Some("mesh") => vec![Shape::Mesh],
        Some("leaf") => vec![Shape::Leaf],
        Some(other) => {
            eprintln!("cluster fleet bench: BRAMBLE_FLEET_SHAPE: mesh or leaf, not {other:?}");
            std::process::exit(2);
        }
    };
    let runtime = bramble_testkit::harness::bench_runtime("cluster fleet bench");
    let result = runtime.block_on(async {
        let mut rows = Vec::new();
        for &n in &sizes {
            for &shape in &shapes {
                let from = rows.len();
                fleet(n, shape, &mut rows).await?;
                for (what, value) in &rows[from..] {
                    eprintln!("{what}: {value}");
                }
            }
        }
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(rows)
    });
    match result {
        Ok(rows) => report::print_table(
            &format!(
                "{}: JetStream on 3 boards, the others members (full mesh: routed to every board; \
                 leaf nodes: one link to a JetStream board); heartbeats every 1 s; network \
                 namespaces on one 2-core x86_64 machine",
                report::server_version(&shelf::binary())
            ),
            &rows,
        ),
        Err(e) => {
            eprintln!("cluster fleet bench: {e}");
            std::process::exit(1);
        }
    }
}
