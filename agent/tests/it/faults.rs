//! Faults from below and around bramble, against a real `bramble up` on a private containerd:
//! containerd killed under load, functions whose process or shim is killed, that hang on start
//! or never pass their health check, an image whose layer is corrupt in the content store, a
//! full state filesystem, and power cuts (SIGKILL) at random points of deploy, update, delete
//! and async enqueue.
//!
//! The power-cut loop is seeded: it prints `BRAMBLE_FAULT_SEED=N`; set that variable to replay
//! the same sequence (and `BRAMBLE_POWER_CUTS` to change the number of iterations).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use bramble_runtime::image::build::ImageBuilder;
use bramble_runtime::image::no_progress;
use bramble_runtime::image::reference::ImageRef;
use bramble_runtime::{Runtime, TaskStatus};
use bramble_testkit::harness::{self, Need, Suite};
use bramble_testkit::http::Response;
use bramble_testkit::{Load, LoadReport, Node, TestEnv, fixture_binary, fixture_image};
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

type TestResult = Result<(), Box<dyn std::error::Error>>;
type BoxError = Box<dyn std::error::Error>;

/// The fixture image every node made by `Node::with_fixture` holds.
const FIXTURE: &str = bramble_testkit::node::FIXTURE_IMAGE;
const NS: &str = "openfaas-fn";

/// The tests of this module, as a part of the `it` binary.
pub(crate) fn suite() -> Suite {
    Suite::new("faults", &[crate::NODE, &[Need::Binary("ctr")]].concat())
        .async_trial(
            "containerd_killed_under_load_is_reported_and_recovered",
            containerd_killed_under_load,
        )
        .async_trial(
            "broken_functions_end_in_a_clear_status_and_the_rest_keeps_serving",
            broken_functions,
        )
        .async_trial(
            "a_full_state_filesystem_refuses_changes_and_keeps_the_state",
            full_state_filesystem,
        )
        .async_trial(
            "power_cuts_at_random_points_leave_a_consistent_node",
            power_cuts,
        )
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A node with the fixture image, and a runtime on the same containerd namespace.
async fn node(name: &str, extra_config: &str) -> Result<(Node, Runtime), BoxError> {
    let node =
        Node::with_fixture(Path::new(env!("CARGO_BIN_EXE_bramble")), name, extra_config).await?;
    let runtime = Runtime::new(node.runtime_config())?;
    Ok((node, runtime))
}

fn function(name: &str, env: &Value) -> Value {
    json!({"service": name, "image": FIXTURE, "envVars": env})
}

async fn deploy(node: &Node, body: &Value) -> Result<Response, BoxError> {
    Ok(node
        .api("POST", "/system/functions", body.to_string().as_bytes())
        .await?)
}

async fn status(node: &Node, name: &str) -> Result<Value, BoxError> {
    Ok(node.status(name).await?.unwrap_or_default())
}

fn ctr(node: &Node, args: &[&str]) -> Result<String, BoxError> {
    let out = std::process::Command::new("ctr")
        .arg("--address")
        .arg(node.env.containerd.socket())
        .args(["-n", &node.env.config.namespace])
        .args(args)
        .output()?;
    if !out.status.success() {
        return Err(format!("ctr {args:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Names of the functions the API lists.
async fn listed(node: &Node) -> Result<BTreeSet<String>, BoxError> {
    let r = node.api("GET", "/system/functions", b"").await?;
    r.expect(200, "list")?;
    let list: Vec<Value> = serde_json::from_slice(&r.body)?;
    Ok(list
        .iter()
        .filter_map(|f| f["name"].as_str().map(str::to_owned))
        .collect())
}

/// What `state.json` holds for the default namespace: name → `BODY` of the function.
fn state_file(node: &Node) -> Result<BTreeMap<String, String>, BoxError> {
    let path = node.state_dir().join("state.json");
    let raw = std::fs::read(&path)?;
    let state: Value = serde_json::from_slice(&raw)
        .map_err(|e| format!("{} does not parse: {e}", path.display()))?;
    Ok(state["functions"][NS]
        .as_object()
        .map(|fns| {
            fns.iter()
                .map(|(name, record)| {
                    let body = record["deployment"]["envVars"]["BODY"]
                        .as_str()
                        .unwrap_or_default();
                    (name.clone(), body.to_owned())
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Containers, writable snapshots and the network of the namespace: one container per function
/// the node knows (one replica each, running), a writable snapshot, a pinned network
/// namespace and one IP lease per container, and no attachment without a container. `Err`
/// says what differs.
async fn leftovers(
    node: &Node,
    runtime: &Runtime,
    functions: &BTreeSet<String>,
) -> Result<Result<(), String>, BoxError> {
    let containers: BTreeSet<String> = runtime.list().await?.into_iter().map(|c| c.id).collect();
    let owners: Vec<String> = containers
        .iter()
        .map(|id| id.split('.').next().unwrap_or_default().to_owned())
        .collect();
    let owned: BTreeSet<String> = owners.iter().cloned().collect();
    if owners.len() != functions.len() || &owned != functions {
        return Ok(Err(format!(
            "containers {containers:?} are not one per function of {functions:?}"
        )));
    }
    let attachments: BTreeSet<String> = runtime
        .network()
        .attachments()?
        .into_iter()
        .map(|a| a.id)
        .collect();
    if !attachments.is_subset(&containers) {
        return Ok(Err(format!(
            "network attachments without container: {attachments:?} vs {containers:?}"
        )));
    }
    // Every replica runs here: each has exactly its pinned namespace and one address.
    let namespaces: BTreeSet<String> = runtime.network().namespaces()?.into_iter().collect();
    if namespaces != containers {
        return Ok(Err(format!(
            "pinned network namespaces {namespaces:?} differ from containers {containers:?}"
        )));
    }
    let leases = runtime.network().leases()?;
    let holders: BTreeSet<String> = leases.iter().map(|l| l.id.clone()).collect();
    if holders != containers || leases.len() != containers.len() {
        return Ok(Err(format!(
            "IP leases {leases:?} are not one per container of {containers:?}"
        )));
    }
    let active: BTreeSet<String> = ctr(node, &["snapshots", "ls"])?
        .lines()
        .skip(1)
        .filter(|l| l.split_whitespace().nth(2) == Some("Active"))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    if active != containers {
        return Ok(Err(format!(
            "writable snapshots {active:?} differ from containers {containers:?}"
        )));
    }
    Ok(Ok(()))
}

/// Waits until [`leftovers`] finds nothing (orphans are removed in the background).
async fn wait_consistent(
    node: &Node,
    runtime: &Runtime,
    functions: &BTreeSet<String>,
) -> TestResult {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match leftovers(node, runtime, functions)
            .await
            .map_err(|e| format!("checking leftovers: {e}\n{}", node.log_tail(40)))?
        {
            Ok(()) => return Ok(()),
            Err(problem) if Instant::now() > deadline => {
                return Err(format!("{problem}\n{}", node.log_tail(40)).into());
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The pid of the running task of `function`'s first container.
async fn task_pid(runtime: &Runtime, function: &str) -> Result<u32, BoxError> {
    runtime
        .list()
        .await?
        .into_iter()
        .filter(|c| c.id.starts_with(&format!("{function}.")))
        .find_map(|c| c.task.filter(|t| t.status == TaskStatus::Running))
        .map(|t| t.pid)
        .ok_or_else(|| format!("{function} has no running task").into())
}

/// The container id of `function`'s running replica.
async fn container_of(runtime: &Runtime, function: &str) -> Result<String, BoxError> {
    runtime
        .list()
        .await?
        .into_iter()
        .find(|c| {
            c.id.starts_with(&format!("{function}."))
                && c.task
                    .as_ref()
                    .is_some_and(|t| t.status == TaskStatus::Running)
        })
        .map(|c| c.id)
        .ok_or_else(|| format!("{function} has no running container").into())
}

/// The pid of the shim serving container `id` (its command line has `-id ID`).
fn shim_of(id: &str) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
        let is_shim = args
            .first()
            .is_some_and(|a| a.windows(15).any(|w| w == b"containerd-shim"));
        let serves = args
            .windows(2)
            .any(|w| w[0] == b"-id" && w[1] == id.as_bytes());
        (is_shim && serves).then_some(pid)
    })
}

fn sigkill(pid: i32) -> TestResult {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    Ok(())
}

/// The bodies the fixture's `/record` route kept, in arrival order.
async fn records(node: &Node, function: &str) -> Result<Vec<String>, BoxError> {
    let r = node
        .call("GET", &format!("/function/{function}/records"), &[], b"")
        .await?;
    r.expect(200, "records")?;
    Ok(r.text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["body"].as_str().map(str::to_owned))
        .collect())
}

// ---------------------------------------------------------------------------------------------
// containerd killed and restarted
// ---------------------------------------------------------------------------------------------

async fn containerd_killed_under_load() -> TestResult {
    // Default ready_timeout (60 s): a request must not wait for it when containerd is gone.
    let (mut node, runtime) = node("ctrd", "").await?;
    deploy(&node, &function("warm", &json!({"BODY": "warm"})))
        .await?
        .expect(200, "deploy warm")?;
    let cold = json!({"service": "cold", "image": FIXTURE,
                      "labels": {"com.openfaas.scale.min": "0"}});
    deploy(&node, &cold).await?.expect(200, "deploy cold")?;
    node.wait_available("warm", 1).await?;
    let load = Load::start(node.addr(), "/function/warm", 2);
    harness::wait_until("the load to run", Duration::from_secs(20), async || {
        Ok(load.ok() >= 20)
    })
    .await?;

    node.env.containerd.kill();
    let killed = Instant::now();

    // Unavailability is reported, clearly.
    let health = node.call("GET", "/healthz", &[], b"").await?;
    assert_eq!(
        health.status,
        503,
        "/healthz with containerd down: {}",
        health.text()
    );
    assert!(
        health.text().contains("containerd unavailable"),
        "{}",
        health.text()
    );
    let r = deploy(&node, &function("late", &json!({}))).await?;
    assert_eq!(r.status, 503, "deploy with containerd down: {}", r.text());
    assert!(r.text().contains("containerd unavailable"), "{}", r.text());
    assert!(
        node.status("late").await?.is_none(),
        "a refused deploy persists nothing"
    );
    let asked = Instant::now();
    let r = node.call("GET", "/function/cold", &[], b"").await?;
    let cold_answer = asked.elapsed();
    assert_eq!(
        r.status,
        503,
        "a cold start with containerd down: {}",
        r.text()
    );
    assert!(
        r.text().contains("cold") && r.text().contains("containerd unavailable"),
        "{}",
        r.text()
    );
    assert!(
        cold_answer < Duration::from_secs(10),
        "answered at once, not after the ready timeout ({cold_answer:?})"
    );
    // Again, while the replica waits to retry its start: still a prompt 503.
    let asked = Instant::now();
    let r = node.call("GET", "/function/cold", &[], b"").await?;
    assert_eq!(r.status, 503, "a second cold start: {}", r.text());
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(
        status(&node, "cold").await?["bramble"]["state"],
        "starting",
        "containerd being down is not the function crash-looping"
    );
    // Accepted while containerd is down: the queue is on bramble's disk.
    let accepted = node
        .call("POST", "/async-function/cold/record", &[], b"during-outage")
        .await?;
    accepted.expect(202, "async call during the outage")?;
    assert_eq!(
        listed(&node).await?,
        BTreeSet::from(["cold".to_owned(), "warm".to_owned()]),
        "no function lost"
    );
    // The running function keeps serving for a while with containerd down.
    let served_before = load.ok();
    harness::wait_until(
        "requests during the outage",
        Duration::from_secs(20),
        async || Ok(load.ok() >= served_before + 100),
    )
    .await?;
    let outage = killed.elapsed();

    node.env.containerd.start_again()?;
    let restarted = Instant::now();
    harness::wait_until("/healthz to recover", Duration::from_secs(30), async || {
        Ok(node.call("GET", "/healthz", &[], b"").await?.status == 200)
    })
    .await?;
    let healthy_after = restarted.elapsed();
    // The async call accepted during the outage runs (and wakes the function).
    harness::wait_until(
        "the async call accepted during the outage to run",
        Duration::from_secs(60),
        async || {
            let r = node.call("GET", "/function/cold/records", &[], b"").await?;
            Ok(r.status == 200 && r.text().contains("during-outage"))
        },
    )
    .await?;
    let async_after = restarted.elapsed();
    deploy(&node, &function("late", &json!({})))
        .await?
        .expect(200, "deploy after the restart")?;
    node.wait_available("late", 1).await?;
    // Task events flow again: a crash after the restart is seen and repaired.
    let pid = task_pid(&runtime, "warm").await?;
    let LoadReport {
        ok: served,
        failures,
        ..
    } = load.finish().await?;
    sigkill(i32::try_from(pid)?)?;
    harness::wait_until("warm to restart", Duration::from_secs(30), async || {
        let s = status(&node, "warm").await?;
        Ok(s["bramble"]["lastExit"] == "signal 9" && s["availableReplicas"] == 1)
    })
    .await?;
    assert!(
        failures.is_empty(),
        "{} of {} requests to a running function failed while containerd was down: {:?}",
        failures.len(),
        served + failures.len(),
        &failures[..failures.len().min(5)]
    );
    let all: BTreeSet<String> = ["cold", "late", "warm"].map(str::to_owned).into();
    assert_eq!(listed(&node).await?, all);
    wait_consistent(&node, &runtime, &all).await?;
    eprintln!(
        "containerd down {outage:?}: {served} requests to a running function, 0 failed; \
         cold start refused in {cold_answer:?}; /healthz OK {healthy_after:?} after the \
         restart, queued call executed after {async_after:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Broken functions
// ---------------------------------------------------------------------------------------------

/// An image like the fixture with one more file, so its layer is its own.
fn distinct_image(dir: &Path, name: &str) -> Result<(std::path::PathBuf, String), BoxError> {
    let marker = dir.join("marker");
    std::fs::write(&marker, format!("{name}\n"))?;
    let out = dir.join("distinct.oci.tar");
    let built = ImageBuilder::new(ImageRef::parse(name)?)
        .add_file(fixture_binary()?, "/usr/local/bin/fixture-fn", Some(0o755))
        .add_file(&marker, "/marker", Some(0o644))
        .entrypoint(vec!["/usr/local/bin/fixture-fn".to_owned()])
        .expose(8080)
        .write_oci_archive(&out)?;
    Ok((out, built.layer_digest))
}

async fn broken_functions() -> TestResult {
    let (node, runtime) = node("broken", "ready_timeout = \"3s\"").await?;
    deploy(&node, &function("steady", &json!({})))
        .await?
        .expect(200, "deploy steady")?;
    deploy(&node, &function("victim", &json!({"BODY": "victim"})))
        .await?
        .expect(200, "deploy victim")?;
    node.wait_available("steady", 1).await?;
    node.wait_available("victim", 1).await?;
    let load = Load::start(node.addr(), "/function/steady", 1);
    let mut report = Vec::new();

    // The function's process is killed: restarted, the status says how it died.
    let killed = Instant::now();
    sigkill(i32::try_from(task_pid(&runtime, "victim").await?)?)?;
    harness::wait_until("victim to restart", Duration::from_secs(30), async || {
        let s = status(&node, "victim").await?;
        Ok(s["bramble"]["lastExit"] == "signal 9"
            && s["bramble"]["restarts"] == 1
            && s["availableReplicas"] == 1)
    })
    .await?;
    report.push(format!(
        "process SIGKILL: serving again after {:?}",
        killed.elapsed()
    ));
    node.call("GET", "/function/victim", &[], b"")
        .await?
        .expect(200, "victim after its process was killed")?;

    // Its shim is killed: containerd cleans the task up; the function restarts.
    let id = container_of(&runtime, "victim").await?;
    let shim = shim_of(&id).ok_or(format!("no shim serves {id}"))?;
    let killed = Instant::now();
    sigkill(shim)?;
    harness::wait_until(
        "victim to restart after its shim died",
        Duration::from_secs(30),
        async || {
            let s = status(&node, "victim").await?;
            Ok(s["bramble"]["restarts"] == 2 && s["availableReplicas"] == 1)
        },
    )
    .await?;
    let s = status(&node, "victim").await?;
    report.push(format!(
        "shim SIGKILL: serving again after {:?} (lastExit {})",
        killed.elapsed(),
        s["bramble"]["lastExit"]
    ));
    assert!(
        s["bramble"]["lastExit"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{s}"
    );
    node.call("GET", "/function/victim", &[], b"")
        .await?
        .expect(200, "victim after its shim was killed")?;
    harness::wait_until(
        "the dead shim's task to be gone",
        Duration::from_secs(10),
        async || Ok(node.env.containerd.shim_pids().len() == 2),
    )
    .await
    .map_err(|e| format!("{e}: one shim per running function, none left behind"))?;

    // One that hangs on start and one that never passes its health check: accepted, then
    // each gets a status that says why it does not serve; requests get that reason.
    let started = Instant::now();
    let hang = function("hang", &json!({"START_DELAY_MS": "3600000"}));
    deploy(&node, &hang).await?.expect(200, "deploy hang")?;
    let sick = function("sick", &json!({"NEVER_HEALTHY": "1"}));
    deploy(&node, &sick).await?.expect(200, "deploy sick")?;
    let cases = [
        ("hang", "nothing answered on port 8080"),
        ("sick", "its health check answered 503"),
    ];
    for (name, why) in cases {
        let mut last = Value::Null;
        harness::wait_until(
            &format!("{name} to report why it is not ready"),
            Duration::from_secs(30),
            async || {
                last = status(&node, name).await?;
                Ok(last["bramble"]["lastExit"] == "unhealthy"
                    && last["bramble"]["message"]
                        .as_str()
                        .is_some_and(|m| m.contains(why))
                    && last["availableReplicas"].as_u64().unwrap_or(0) == 0)
            },
        )
        .await
        .map_err(|e| format!("{e}: {last}\n{}", node.log_tail(30)))?;
        report.push(format!(
            "{name}: status unhealthy (\"{why}\") {:?} after its deploy",
            started.elapsed()
        ));
    }
    let paths = cases.map(|(name, _)| format!("/function/{name}"));
    let answers =
        futures::future::join_all(paths.iter().map(|p| node.call("GET", p, &[], b""))).await;
    for ((name, why), r) in cases.iter().zip(answers) {
        let r = r?;
        assert!(
            matches!(r.status, 503 | 504) && r.text().contains(why),
            "a request to {name} gets the reason: {} {}",
            r.status,
            r.text()
        );
    }
    // After a few attempts, the state says so.
    harness::wait_until("crash-looping", Duration::from_secs(40), async || {
        Ok(
            status(&node, "hang").await?["bramble"]["state"] == "crash-looping"
                && status(&node, "sick").await?["bramble"]["state"] == "crash-looping",
        )
    })
    .await?;
    report.push(format!(
        "hang, sick: crash-looping after {:?}",
        started.elapsed()
    ));

    // An image whose layer is corrupt in the content store (and not unpacked): the deploy is
    // refused with the reason, nothing is persisted.
    let (archive, layer) = distinct_image(node.env.scratch(), "corrupt:1")?;
    let image = runtime
        .images()
        .import(&archive, None, &no_progress)
        .await?
        .remove(0);
    ctr(&node, &["snapshots", "rm", &image.top_chain_id])?;
    let hex = layer.strip_prefix("sha256:").ok_or("layer digest")?;
    let blob = node
        .env
        .containerd
        .root()
        .join("io.containerd.content.v1.content/blobs/sha256")
        .join(hex);
    let mut bytes = std::fs::read(&blob)?;
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 64] {
        *b = !*b;
    }
    std::fs::write(&blob, &bytes)?;
    let corrupt = json!({"service": "corrupt", "image": "corrupt:1"});
    let r = deploy(&node, &corrupt).await?;
    assert_eq!(r.status, 400, "deploy of a corrupt image: {}", r.text());
    assert!(
        r.text().contains("the local copy cannot be unpacked") && r.text().contains(&layer),
        "the refusal says the local layer is broken, naming it: {}",
        r.text()
    );
    assert!(node.status("corrupt").await?.is_none(), "nothing persisted");
    report.push(format!("corrupt layer: deploy refused: {}", r.text()));

    // The rest of the board kept serving throughout.
    let LoadReport {
        ok: served,
        failures,
        ..
    } = load.finish().await?;
    assert!(
        failures.is_empty(),
        "{} requests to a healthy function failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(served > 0);
    node.call("GET", "/function/victim", &[], b"")
        .await?
        .expect(200, "victim at the end")?;
    eprintln!(
        "{served} requests to steady, 0 failed\n{}",
        report.join("\n")
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Full state filesystem
// ---------------------------------------------------------------------------------------------

/// A small tmpfs mounted on `dir`, unmounted on drop (the private containerd's cleanup would
/// unmount it too).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, BoxError> {
        std::fs::create_dir_all(dir)?;
        nix::mount::mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some(format!("size={size},mode=0755").as_str()),
        )?;
        Ok(Tmpfs(dir.to_path_buf()))
    }

    /// Fills the filesystem to the last byte (a filler file); returns its path.
    fn fill(&self) -> Result<std::path::PathBuf, BoxError> {
        let path = self.0.join("filler");
        let mut file = std::fs::File::create(&path)?;
        let chunk = vec![0x5a_u8; 64 * 1024];
        for size in [chunk.len(), 1] {
            loop {
                match file.write_all(&chunk[..size]) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(path)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

async fn full_state_filesystem() -> TestResult {
    let env = TestEnv::new("full")?;
    let runtime = Runtime::new(env.config.clone())?;
    let (archive, _) = fixture_image(env.scratch(), "fixture:test")?;
    runtime
        .images()
        .import(&archive, None, &no_progress)
        .await?;
    // The node's state directory (where Node puts it) on a 4 MiB tmpfs.
    let tmpfs = Tmpfs::mount(&env.containerd.dir().join("state"), "4m")?;
    // One async worker, so calls accepted before the disk fills are still queued when it does.
    let mut node = Node::start(
        Path::new(env!("CARGO_BIN_EXE_bramble")),
        env,
        "async = { workers = 1 }",
    )?;
    deploy(&node, &function("keeper", &json!({"BODY": "kept"})))
        .await?
        .expect(200, "deploy keeper")?;
    node.wait_available("keeper", 1).await?;
    let before = std::fs::read(node.state_dir().join("state.json"))?;
    let queued: Vec<String> = (0..6).map(|i| format!("queued-{i}")).collect();
    for body in &queued {
        let r = node
            .call(
                "POST",
                "/async-function/keeper/record?delay_ms=300",
                &[],
                body.as_bytes(),
            )
            .await?;
        r.expect(202, "async call before the disk fills")?;
    }
    let filler = tmpfs.fill()?;

    // A deploy: refused with a clear error naming the full disk; nothing changes.
    let r = deploy(&node, &function("second", &json!({}))).await?;
    assert_eq!(r.status, 507, "deploy on a full disk: {}", r.text());
    assert!(
        r.text().contains("No space left on device") && r.text().contains("state.json"),
        "{}",
        r.text()
    );
    assert!(
        node.status("second").await?.is_none(),
        "nothing half-deployed"
    );
    eprintln!("full disk, deploy: {} {}", r.status, r.text());
    let scale = json!({"serviceName": "keeper", "replicas": 0}).to_string();
    let r = node
        .api("POST", "/system/scale-function/keeper", scale.as_bytes())
        .await?;
    assert_eq!(r.status, 507, "scale on a full disk: {}", r.text());
    assert_eq!(status(&node, "keeper").await?["replicas"], 1);
    // A new async call cannot be stored: refused, not accepted and lost.
    let r = node
        .call("POST", "/async-function/keeper/record", &[], b"refused")
        .await?;
    assert_eq!(r.status, 507, "async call on a full disk: {}", r.text());
    assert!(r.text().contains("No space left on device"), "{}", r.text());
    eprintln!("full disk, async call: {} {}", r.status, r.text());
    assert_eq!(
        std::fs::read(node.state_dir().join("state.json"))?,
        before,
        "state.json unchanged"
    );
    // Calls accepted before the disk filled all run.
    harness::wait_until(
        "the queued calls to run",
        Duration::from_secs(30),
        async || Ok(records(&node, "keeper").await?.len() >= queued.len()),
    )
    .await?;
    let seen = records(&node, "keeper").await?;
    for body in &queued {
        assert!(
            seen.contains(body),
            "{body} was accepted but never ran: {seen:?}"
        );
    }
    assert!(!seen.iter().any(|b| b == "refused"));

    // A crash on the full disk: bramble starts again with the previous state.
    node.kill();
    node.start_again()?;
    assert_eq!(
        std::fs::read(node.state_dir().join("state.json"))?,
        before,
        "state.json unchanged across the restart"
    );
    assert_eq!(listed(&node).await?, BTreeSet::from(["keeper".to_owned()]));
    node.wait_available("keeper", 1).await?;
    assert_eq!(
        node.call("GET", "/function/keeper", &[], b"").await?.text(),
        "kept"
    );
    // Space freed: the same deploy works.
    std::fs::remove_file(&filler)?;
    deploy(&node, &function("second", &json!({})))
        .await?
        .expect(200, "deploy after freeing space")?;
    node.wait_available("second", 1).await?;
    drop(node);
    drop(tmpfs);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Power cuts
// ---------------------------------------------------------------------------------------------

/// What one iteration asks of the node while it is killed.
#[derive(Clone, Debug)]
enum Op {
    Deploy(String),
    Update(String, String),
    Delete(String),
}

async fn power_cuts() -> TestResult {
    let seed: u64 = std::env::var("BRAMBLE_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let iterations: usize = std::env::var("BRAMBLE_POWER_CUTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    eprintln!("power cuts: BRAMBLE_FAULT_SEED={seed} BRAMBLE_POWER_CUTS={iterations}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let started = Instant::now();

    let (mut node, runtime) = node("power", "").await?;
    // The recorder is never touched by the loop: it counts async executions.
    deploy(&node, &function("rec", &json!({"BODY": "rec"})))
        .await?
        .expect(200, "deploy rec")?;
    node.wait_available("rec", 1).await?;
    // name → BODY, as the node must have it (known after each restart).
    let mut model: BTreeMap<String, String> = BTreeMap::from([("rec".into(), "rec".into())]);
    let mut accepted: Vec<String> = Vec::new();
    let mut counts: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut next = 0usize;

    for iteration in 0..iterations {
        let others: Vec<String> = model.keys().filter(|n| *n != "rec").cloned().collect();
        let op = match rng.random_range(0..3) {
            _ if others.is_empty() => Op::Deploy(format!("f{next}")),
            0 if others.len() < 4 => Op::Deploy(format!("f{next}")),
            0 | 1 => Op::Update(
                others[rng.random_range(0..others.len())].clone(),
                format!("v{iteration}"),
            ),
            _ => Op::Delete(others[rng.random_range(0..others.len())].clone()),
        };
        if matches!(op, Op::Deploy(_)) {
            next += 1;
        }
        let (method, body) = match &op {
            Op::Deploy(name) => (
                "POST",
                function(name, &json!({"BODY": format!("{name}-v0")})),
            ),
            Op::Update(name, version) => (
                "PUT",
                function(name, &json!({"BODY": format!("{name}-{version}")})),
            ),
            Op::Delete(name) => ("DELETE", json!({"functionName": name})),
        };
        let addr = node.addr();
        let auth = node.auth_header()?;
        let request = tokio::spawn(async move {
            bramble_testkit::http::request(
                addr,
                method,
                "/system/functions",
                &[("Authorization", &auth)],
                body.to_string().as_bytes(),
                Duration::from_secs(30),
            )
            .await
        });
        let calls: Vec<(String, tokio::task::JoinHandle<std::io::Result<Response>>)> = (0..rng
            .random_range(1..=3))
            .map(|j| {
                let body = format!("call-{iteration}-{j}");
                let sent = body.clone();
                let call = tokio::spawn(async move {
                    bramble_testkit::http::request(
                        addr,
                        "POST",
                        "/async-function/rec/record",
                        &[],
                        sent.as_bytes(),
                        Duration::from_secs(30),
                    )
                    .await
                });
                (body, call)
            })
            .collect();
        // Half the cuts early (most land before the answer), half anywhere in the operation
        // and the work that follows it (container creation, start, stop).
        let delay = Duration::from_millis(if rng.random_bool(0.5) {
            rng.random_range(0..=40)
        } else {
            rng.random_range(0..=400)
        });
        tokio::time::sleep(delay).await;
        node.kill();
        let answered = request.await?.ok().map(|r| r.status);
        for (body, call) in calls {
            if call.await?.is_ok_and(|r| r.status == 202) {
                accepted.push(body);
            }
        }
        let kind = match &op {
            Op::Deploy(_) => "deploy",
            Op::Update(..) => "update",
            Op::Delete(_) => "delete",
        };
        let entry = counts.entry(kind).or_default();
        entry.0 += 1;
        if answered == Some(200) {
            entry.1 += 1;
        }

        node.start_again()?;
        let context = format!(
            "iteration {iteration} (BRAMBLE_FAULT_SEED={seed}): {op:?} killed after {delay:?}, answered {answered:?}"
        );
        // The state file parses and is what the node serves; interrupted writes of the state
        // and of async calls were cleaned up.
        let on_disk = state_file(&node).map_err(|e| format!("{context}: {e}"))?;
        let debris: Vec<String> = std::fs::read_dir(node.state_dir())?
            .chain(std::fs::read_dir(node.state_dir().join("queue/tmp"))?)
            .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
            .filter(|n| n.starts_with(".state.json.") || n.ends_with(".tmp"))
            .collect();
        assert!(
            debris.is_empty(),
            "{context}: half-written files left: {debris:?}"
        );
        let names = listed(&node)
            .await
            .map_err(|e| format!("{context}: listing: {e}\n{}", node.log_tail(40)))?;
        assert_eq!(
            on_disk.keys().cloned().collect::<BTreeSet<_>>(),
            names,
            "{context}: state.json and the API differ"
        );
        // What was acknowledged happened; what was not may or may not have.
        match &op {
            Op::Deploy(name) => {
                if answered == Some(200) {
                    assert!(
                        names.contains(name),
                        "{context}: an acknowledged deploy was lost"
                    );
                }
                if names.contains(name) {
                    model.insert(name.clone(), format!("{name}-v0"));
                }
            }
            Op::Update(name, version) => {
                let new = format!("{name}-{version}");
                let body = on_disk
                    .get(name)
                    .ok_or(format!("{context}: an updated function vanished"))?;
                if answered == Some(200) {
                    assert_eq!(body, &new, "{context}: an acknowledged update was lost");
                } else {
                    assert!(
                        body == &new || Some(body) == model.get(name),
                        "{context}: {name} has {body}, neither the old nor the new version"
                    );
                }
                model.insert(name.clone(), body.clone());
            }
            Op::Delete(name) => {
                if answered == Some(200) {
                    assert!(
                        !names.contains(name),
                        "{context}: an acknowledged delete came back"
                    );
                }
                if !names.contains(name) {
                    model.remove(name);
                }
            }
        }
        assert_eq!(
            model.keys().cloned().collect::<BTreeSet<_>>(),
            names,
            "{context}: functions other than the one in flight changed"
        );
        for (name, body) in &on_disk {
            assert_eq!(Some(body), model.get(name), "{context}: {name}");
        }
        // No half functions: each one serves its version; nothing else is left. An update the
        // cut interrupted resumes: the old version serves until the new one is ready.
        for (name, body) in &model {
            harness::wait_until(
                &format!("{name} to be ready and not updating"),
                Duration::from_secs(60),
                async || {
                    let s = status(&node, name)
                        .await
                        .map_err(|e| format!("status of {name}: {e}"))?;
                    Ok(s["bramble"]["state"] == "ready" && s["availableReplicas"] == 1)
                },
            )
            .await
            .map_err(|e| format!("{context}: {e}\n{}", node.log_tail(30)))?;
            let r = node
                .call("GET", &format!("/function/{name}"), &[], b"")
                .await
                .map_err(|e| format!("{context}: calling {name}: {e}\n{}", node.log_tail(40)))?;
            assert_eq!(
                (r.status, r.text()),
                (200, body.clone()),
                "{context}: {name} does not serve its version\n{}",
                node.log_tail(40)
            );
        }
        wait_consistent(&node, &runtime, &names)
            .await
            .map_err(|e| format!("{context}: {e}"))?;
    }

    // Every async call that got its 202 ran at least once.
    let mut missing = Vec::new();
    harness::wait_until(
        "every accepted async call to run",
        Duration::from_secs(60),
        async || {
            let seen = records(&node, "rec")
                .await
                .map_err(|e| format!("records: {e}\n{}", node.log_tail(40)))?;
            missing = accepted
                .iter()
                .filter(|a| !seen.contains(a))
                .cloned()
                .collect();
            Ok(missing.is_empty())
        },
    )
    .await
    .map_err(|e| format!("{e} (BRAMBLE_FAULT_SEED={seed}): never ran: {missing:?}"))?;
    let seen = records(&node, "rec").await?;
    let duplicates = seen.len() - seen.iter().collect::<BTreeSet<_>>().len();
    eprintln!(
        "power cuts: {iterations} iterations in {:?} (seed {seed}); operations (tried, acknowledged): {counts:?}; \
         {} async calls accepted, all executed ({} executions, {duplicates} repeated)",
        started.elapsed(),
        accepted.len(),
        seen.len(),
    );
    Ok(())
}
