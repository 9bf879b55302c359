//! Cold start of a function container: from "run" to its first successful HTTP answer, next
//! to bare containerd create+start of the same image, in one run. Two baselines:
//!
//! - in-process: `Containers.Create`, `Snapshots.Prepare`, `Tasks.Create`, `Tasks.Start` over
//!   the runtime's own gRPC connection, nothing else (no network, no files, no log capture, no
//!   readiness): the floor under bramble's create + start;
//! - `ctr run -d`: the same done by a whole `ctr` process (Go start-up, image lookup), as an
//!   operator would run it.
//!
//! `cargo bench -p bramble-runtime --bench cold_start [-- RUNS]` as root. Runs in a private
//! network namespace with a private containerd, like the integration tests. The fixture image
//! is present (imported once before measuring).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bramble_runtime::client::bare;
use bramble_runtime::image::{Image, no_progress};
use bramble_runtime::{ContainerSpec, Runtime};
use bramble_testkit::stats::{Summary, ms};
use bramble_testkit::{TestEnv, fixture_image, harness, http};
use containerd_client::services::v1::container::Runtime as CtrRuntime;
use containerd_client::services::v1::snapshots::PrepareSnapshotRequest;
use containerd_client::services::v1::{
    Container as CtrContainer, CreateContainerRequest, CreateTaskRequest, StartRequest,
};
use serde_json::{Value, json};

fn main() {
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20);
    let rt = harness::bench_runtime("cold_start");
    if let Err(e) = rt.block_on(bench(runs)) {
        eprintln!("cold_start failed: {e}");
        std::process::exit(1);
    }
}

#[derive(Default)]
struct Samples {
    create: Vec<Duration>,
    start: Vec<Duration>,
    ready: Vec<Duration>,
    total: Vec<Duration>,
    ctr: Vec<Duration>,
    bare: Vec<Duration>,
    restart: Vec<Duration>,
    restart_prepare: Vec<Duration>,
    restart_create: Vec<Duration>,
    restart_start: Vec<Duration>,
    restart_ready: Vec<Duration>,
    delete: Vec<Duration>,
}

async fn bench(runs: usize) -> Result<(), Box<dyn std::error::Error>> {
    let env = TestEnv::new("bench")?;
    let runtime = Runtime::new(env.config.clone())?;
    let (archive, _) = fixture_image(env.scratch(), "fixture:bench")?;
    let image = runtime
        .images()
        .import(&archive, None, &no_progress)
        .await?
        .remove(0);
    let mut samples = Samples::default();

    for i in 0..=runs {
        // bramble: network + spec + container + task, then wait for the first HTTP 200.
        let id = format!("cold{i}");
        let spec = ContainerSpec {
            id: id.clone(),
            image: image.name.clone(),
            hostname: id.clone(),
            ..Default::default()
        };
        let t0 = Instant::now();
        runtime.create(&spec).await?;
        let t1 = Instant::now();
        let started = runtime.start(&id).await?;
        let t2 = Instant::now();
        let addr = SocketAddr::from((started.ip, 8080));
        first_answer(addr).await?;
        let t3 = Instant::now();
        // Scale from zero: the container and its network stay, only the task is new.
        runtime.stop(&id, Duration::from_secs(5)).await?;
        let w0 = Instant::now();
        let restarted = runtime.start(&id).await?;
        let wr = Instant::now();
        first_answer(addr).await?;
        let w1 = Instant::now();
        let t4 = Instant::now();
        runtime.delete(&id, Duration::from_secs(5)).await?;
        let t5 = Instant::now();

        // Bare containerd in-process, over the runtime's own connection: the honest floor.
        let bare_id = format!("bare{i}");
        let b0 = Instant::now();
        bare_create_start(&runtime, &image, &bare_id).await?;
        let b1 = Instant::now();
        runtime.delete(&bare_id, Duration::ZERO).await?;

        // Bare containerd through `ctr`: the Go client's create + start of the same image, no
        // network setup, no readiness (the whole `ctr` process, as an operator would run it).
        let ctr_id = format!("ctr{i}");
        let c0 = Instant::now();
        ctr(&env, &["run", "-d", "--null-io", &image.name, &ctr_id])?;
        let c1 = Instant::now();
        ctr(&env, &["task", "kill", "-s", "SIGKILL", &ctr_id])?;
        wait_ctr_stopped(&env, &ctr_id)?;
        ctr(&env, &["task", "rm", &ctr_id])?;
        ctr(&env, &["container", "rm", &ctr_id])?;

        if i == 0 {
            continue; // warm-up
        }
        samples.create.push(t1 - t0);
        samples.start.push(t2 - t1);
        samples.ready.push(t3 - t2);
        samples.total.push(t3 - t0);
        samples.restart.push(w1 - w0);
        samples.restart_prepare.push(restarted.steps.prepare);
        samples.restart_create.push(restarted.steps.create);
        samples.restart_start.push(restarted.steps.start);
        samples.restart_ready.push(w1 - wr);
        samples.delete.push(t5 - t4);
        samples.ctr.push(c1 - c0);
        samples.bare.push(b1 - b0);
    }

    println!(
        "cold start, {runs} runs (median / min / max), fixture image present, {}",
        std::env::consts::ARCH
    );
    println!("| step | median | min | max |");
    println!("|---|---|---|---|");
    for (name, values) in [
        (
            "bramble create (netns, files, container, snapshot)",
            &samples.create,
        ),
        (
            "bramble start (CNI attach ∥ shim + runc create, then start)",
            &samples.start,
        ),
        ("first HTTP 200 after start", &samples.ready),
        ("**bramble run → first HTTP 200**", &samples.total),
        (
            "**bare containerd create+start, in-process** (Containers.Create, Snapshots.Prepare, Tasks.Create, Tasks.Start; no network, no readiness)",
            &samples.bare,
        ),
        (
            "bare containerd create+start by a `ctr run -d` process (Go start-up, image lookup)",
            &samples.ctr,
        ),
        (
            "**start of a stopped container → first HTTP 200** (scale from zero)",
            &samples.restart,
        ),
        (
            "– of it: the snapshot's mounts, network namespace, output FIFOs",
            &samples.restart_prepare,
        ),
        (
            "– of it: Tasks.Create (shim, runc create) ∥ CNI attach",
            &samples.restart_create,
        ),
        ("– of it: Tasks.Start (runc start)", &samples.restart_start),
        (
            "– of it: the function's process → its first HTTP 200",
            &samples.restart_ready,
        ),
        (
            "bramble delete (grace stop, snapshot, container, CNI detach)",
            &samples.delete,
        ),
    ] {
        let s = Summary::of(values);
        println!(
            "| {name} | {:.1} ms | {:.1} ms | {:.1} ms |",
            ms(s.p50),
            ms(s.min),
            ms(s.max)
        );
    }
    Ok(())
}

/// Type URL of a runtime spec in a container record.
const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

/// `Containers.Create`, `Snapshots.Prepare`, `Tasks.Create` and `Tasks.Start` of `image` over
/// the runtime's own containerd connection: what any client must do to start a container, and
/// nothing else. The task gets a fresh, empty network namespace and no stdio.
async fn bare_create_start(
    runtime: &Runtime,
    image: &Image,
    id: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let conn = runtime.connection();
    let config = runtime.config();
    let spec = serde_json::to_vec(&bare_spec(image, &runtime.cgroup_path(id)))?;
    let container = CtrContainer {
        id: id.to_owned(),
        image: image.name.clone(),
        runtime: Some(CtrRuntime {
            name: config.runtime.clone(),
            options: None,
        }),
        spec: Some(prost_types::Any {
            type_url: SPEC_TYPE_URL.into(),
            value: spec,
        }),
        snapshotter: config.snapshotter.clone(),
        snapshot_key: id.to_owned(),
        ..Default::default()
    };
    bare::containers(conn)
        .create(bare::request(
            conn,
            CreateContainerRequest {
                container: Some(container),
            },
        ))
        .await?;
    let mounts = bare::snapshots(conn)
        .prepare(bare::request(
            conn,
            PrepareSnapshotRequest {
                snapshotter: config.snapshotter.clone(),
                key: id.to_owned(),
                parent: image.top_chain_id.clone(),
                labels: HashMap::new(),
            },
        ))
        .await?
        .into_inner()
        .mounts;
    let mut tasks = bare::tasks(conn);
    tasks
        .create(bare::request(
            conn,
            CreateTaskRequest {
                container_id: id.to_owned(),
                rootfs: mounts,
                ..Default::default()
            },
        ))
        .await?;
    tasks
        .start(bare::request(
            conn,
            StartRequest {
                container_id: id.to_owned(),
                exec_id: String::new(),
            },
        ))
        .await?;
    Ok(())
}

/// A minimal runtime spec for `image`, like `ctr`'s default one: the image's command, env and
/// working directory as root, the standard mounts, new namespaces, all devices denied.
fn bare_spec(image: &Image, cgroups_path: &str) -> Value {
    let args: Vec<&String> = image
        .config
        .entrypoint
        .iter()
        .chain(&image.config.cmd)
        .collect();
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": image.config.env,
            "cwd": image.config.working_dir.as_deref().unwrap_or("/"),
            "noNewPrivileges": true,
        },
        "root": {"path": "rootfs"},
        "hostname": "bare",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        ],
        "linux": {
            "namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                {"type": "network"},
            ],
            "cgroupsPath": cgroups_path,
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
        },
    })
}

/// Polls `/` until the function answers 200 (its first successful answer).
async fn first_answer(addr: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = http::request(addr, "GET", "/", &[], b"", Duration::from_secs(2)).await
            && r.status == 200
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{addr} never answered").into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn ctr(env: &TestEnv, args: &[&str]) -> Result<String, Box<dyn std::error::Error>> {
    let fifo_dir = env.containerd.dir().join("ctr-fifo");
    let out = std::process::Command::new("ctr")
        .arg("--address")
        .arg(env.containerd.socket())
        .args(["-n", &env.config.namespace])
        .args(args.iter().take(1))
        .args(if args.first() == Some(&"run") {
            vec!["--fifo-dir".to_owned(), fifo_dir.display().to_string()]
        } else {
            vec![]
        })
        .args(args.iter().skip(1))
        .output()?;
    if !out.status.success() {
        return Err(format!("ctr {args:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wait_ctr_stopped(env: &TestEnv, id: &str) -> Result<(), Box<dyn std::error::Error>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ctr(env, &["task", "ls"])?
        .lines()
        .any(|l| l.starts_with(id) && l.contains("STOPPED"))
    {
        if Instant::now() > deadline {
            return Err(format!("ctr task {id} did not stop").into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}
