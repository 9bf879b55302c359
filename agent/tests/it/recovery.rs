//! A daemon to leave alone: crashes, reboots, crash loops, updates under load, admission,
//! image garbage collection, shutdown — against a real `bramble up` on a private containerd.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use bramble_runtime::image::no_progress;
use bramble_runtime::image::reference::ImageRef;
use bramble_runtime::{ContainerSpec, Runtime, TaskStatus};
use bramble_testkit::harness::{self, Need, Suite};
use bramble_testkit::http::Response;
use bramble_testkit::node::runtime_config_of;
use bramble_testkit::{Load, Node, Registry, TestEnv, fixture_image};
use serde_json::{Value, json};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const FIXTURE: &str = "docker.io/library/fixture:test";

/// The tests of this module, as a part of the `it` binary.
pub(crate) fn suite() -> Suite {
    let needs = [
        crate::NODE,
        &[
            Need::Binary("ctr"),
            Need::Binary("docker-registry"),
            Need::Binary("skopeo"),
        ],
    ]
    .concat();
    Suite::new("recovery", &needs)
        .async_trial(
            "sigkill_during_deploys_leaks_and_duplicates_nothing",
            sigkill_during_deploys,
        )
        .async_trial(
            "after_a_reboot_functions_serve_before_the_first_request",
            after_a_reboot,
        )
        .async_trial(
            "crash_loops_back_off_and_oom_is_reported",
            crash_loops_and_oom,
        )
        .async_trial(
            "updates_under_load_lose_no_request_and_broken_ones_roll_back",
            updates_under_load,
        )
        .async_trial(
            "sigkill_during_updates_loses_no_request_and_still_rolls_back",
            sigkill_during_updates,
        )
        .async_trial(
            "the_memory_budget_refuses_and_creates_nothing",
            memory_budget,
        )
        .async_trial("unused_images_are_collected", unused_images_are_collected)
        .async_trial(
            "sigterm_drains_requests_and_leaves_functions_running",
            sigterm_drains,
        )
        .async_trial(
            "stop_functions_on_shutdown_stops_them",
            stop_functions_on_shutdown,
        )
        .async_trial("orphans_are_removed_at_start", orphans_are_removed_at_start)
}

/// A node (with `extra_config`) and the fixture image present; also a runtime on the same
/// containerd namespace to inspect what the node did.
async fn node(
    name: &str,
    extra_config: &str,
) -> Result<(Node, Runtime), Box<dyn std::error::Error>> {
    let node =
        Node::with_fixture(Path::new(env!("CARGO_BIN_EXE_bramble")), name, extra_config).await?;
    let runtime = Runtime::new(node.runtime_config())?;
    Ok((node, runtime))
}

async fn deploy(node: &Node, body: &Value) -> Result<Response, Box<dyn std::error::Error>> {
    Ok(node
        .api("POST", "/system/functions", body.to_string().as_bytes())
        .await?)
}

fn function(name: &str, env: &Value) -> Value {
    json!({"service": name, "image": FIXTURE, "envVars": env})
}

async fn status(node: &Node, name: &str) -> Result<Value, Box<dyn std::error::Error>> {
    Ok(node.status(name).await?.unwrap_or_default())
}

async fn wait_available(node: &Node, name: &str, want: u64) -> TestResult {
    node.wait_available(name, want).await?;
    Ok(())
}

/// Containers, writable snapshots, pinned network namespaces and IP leases of the namespace
/// must all be the same set (every container here has run, so each holds one address), and
/// no attachment may lack its container: nothing leaked, nothing duplicated.
async fn assert_consistent(
    node: &Node,
    runtime: &Runtime,
    expected_containers: usize,
) -> TestResult {
    let containers: BTreeSet<String> = runtime.list().await?.into_iter().map(|c| c.id).collect();
    assert_eq!(
        containers.len(),
        expected_containers,
        "containers: {containers:?}\n{}",
        node.log_tail(40)
    );
    let attachments: BTreeSet<String> = runtime
        .network()
        .attachments()?
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert!(
        attachments.is_subset(&containers),
        "attachments without container: {attachments:?} vs {containers:?}"
    );
    let namespaces: BTreeSet<String> = runtime.network().namespaces()?.into_iter().collect();
    assert_eq!(
        namespaces, containers,
        "pinned network namespaces and containers differ"
    );
    let leases = runtime.network().leases()?;
    let holders: BTreeSet<String> = leases.iter().map(|l| l.id.clone()).collect();
    assert!(
        holders == containers && leases.len() == containers.len(),
        "IP leases are not one per container: {leases:?} vs {containers:?}"
    );
    let snapshots = ctr(node, &["snapshots", "ls"])?;
    let active: BTreeSet<String> = snapshots
        .lines()
        .skip(1)
        .filter(|l| l.split_whitespace().nth(2) == Some("Active"))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    assert_eq!(
        active, containers,
        "writable snapshots and containers differ"
    );
    Ok(())
}

fn ctr(node: &Node, args: &[&str]) -> Result<String, Box<dyn std::error::Error>> {
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

async fn sigkill_during_deploys() -> TestResult {
    let (mut node, runtime) = node("kill", "").await?;
    // Kill the daemon at different moments of a deploy: before it answered, while the
    // container is being created, while its task starts.
    let delays = [0u64, 5, 20, 40, 80, 150];
    for (i, delay) in delays.iter().enumerate() {
        let name = format!("f{i}");
        let body = function(&name, &json!({})).to_string();
        let addr = node.addr();
        let auth = node.auth_header()?;
        let request = tokio::spawn(async move {
            bramble_testkit::http::request(
                addr,
                "POST",
                "/system/functions",
                &[("Authorization", &auth)],
                body.as_bytes(),
                Duration::from_secs(30),
            )
            .await
        });
        tokio::time::sleep(Duration::from_millis(*delay)).await;
        node.kill();
        let answered = request.await?.map(|r| r.status).ok();
        node.start_again()?;
        let persisted = status(&node, &name).await? != Value::Null;
        if answered == Some(200) {
            assert!(
                persisted,
                "{name}: a deploy that answered 200 must survive a crash"
            );
        }
        if persisted {
            wait_available(&node, &name, 1).await?;
        }
    }
    // Whatever was accepted runs exactly once; nothing else exists.
    let functions: Vec<Value> =
        serde_json::from_slice(&node.api("GET", "/system/functions", b"").await?.body)?;
    for f in &functions {
        let name = f["name"].as_str().unwrap();
        wait_available(&node, name, 1).await?;
        assert_eq!(
            node.call("GET", &format!("/function/{name}"), &[], b"")
                .await?
                .status,
            200
        );
    }
    harness::wait_until("orphan cleanup", Duration::from_secs(20), async || {
        Ok(runtime.list().await?.len() == functions.len()
            && runtime.network().holders()?.len() == functions.len())
    })
    .await?;
    assert_consistent(&node, &runtime, functions.len()).await
}

async fn after_a_reboot() -> TestResult {
    let (mut node, runtime) = node("reboot", "").await?;
    for name in ["alpha", "beta"] {
        assert_eq!(
            deploy(&node, &function(name, &json!({"BODY": name})))
                .await?
                .status,
            200
        );
    }
    let zero =
        json!({"service": "gamma", "image": FIXTURE, "labels": {"com.openfaas.scale.min": "0"}});
    assert_eq!(deploy(&node, &zero).await?.status, 200);
    wait_available(&node, "alpha", 1).await?;
    wait_available(&node, "beta", 1).await?;

    // The reboot: the daemon stops, every task dies, containerd restarts, tmpfs is emptied.
    node.stop()?;
    for c in runtime.list().await? {
        runtime.stop(&c.id, Duration::ZERO).await?;
    }
    node.env.containerd.restart()?;
    let run_dir = node.env.config.run_dir.clone();
    for a in runtime.network().attachments()? {
        let _ = nix::mount::umount2(&a.netns, nix::mount::MntFlags::MNT_DETACH);
    }
    let _ = nix::mount::umount2(&run_dir.join("net/netns"), nix::mount::MntFlags::MNT_DETACH);
    std::fs::remove_dir_all(&run_dir)?;

    node.start_again()?;
    // No request is sent: the functions must come up on their own.
    wait_available(&node, "alpha", 1).await?;
    wait_available(&node, "beta", 1).await?;
    for name in ["alpha", "beta"] {
        let r = node
            .call("GET", &format!("/function/{name}"), &[], b"")
            .await?;
        assert_eq!((r.status, r.text()), (200, name.to_owned()));
    }
    assert_eq!(
        status(&node, "gamma").await?["availableReplicas"]
            .as_u64()
            .unwrap_or(0),
        0,
        "scaled-to-zero functions stay at zero"
    );
    // Two containers: a function at zero gets its container when a request wakes it.
    assert_consistent(&node, &runtime, 2).await
}

async fn crash_loops_and_oom() -> TestResult {
    let (node, _runtime) = node("crash", "").await?;
    assert_eq!(
        deploy(&node, &function("crashy", &json!({"EXIT_ON_START": "1"})))
            .await?
            .status,
        200
    );
    // Record when each restart happens: the gaps must grow (exponential backoff).
    let mut seen = 0u64;
    let mut times = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while times.len() < 5 && Instant::now() < deadline {
        let restarts = status(&node, "crashy").await?["bramble"]["restarts"]
            .as_u64()
            .unwrap_or(0);
        if restarts > seen {
            seen = restarts;
            times.push(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(times.len() >= 5, "only {} restarts in 20 s", times.len());
    // Delays double (250 ms, 500 ms, 1 s, 2 s, ...); each gap also holds a start, which a busy
    // machine can stretch, so compare the last gap with the first ones rather than each pair.
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    let last = gaps[gaps.len() - 1];
    assert!(
        last >= Duration::from_millis(1500),
        "the fourth restart came too soon: {gaps:?}"
    );
    assert!(
        last >= gaps[0].max(gaps[1]) * 2,
        "restart delays do not grow: {gaps:?}"
    );
    let s = status(&node, "crashy").await?;
    assert_eq!(s["bramble"]["lastExit"], "exit code 1", "{s}");
    assert_eq!(s["bramble"]["state"], "crash-looping", "{s}");

    let oom = json!({"service": "hungry", "image": FIXTURE, "limits": {"memory": "32Mi"}});
    assert_eq!(deploy(&node, &oom).await?.status, 200);
    wait_available(&node, "hungry", 1).await?;
    let r = node
        .call("GET", "/function/hungry/alloc?mb=64", &[], b"")
        .await?;
    assert_ne!(r.status, 200, "allocating past the limit cannot succeed");
    harness::wait_until(
        "the OOM to show in the status",
        Duration::from_secs(20),
        async || Ok(status(&node, "hungry").await?["bramble"]["lastExit"] == "oom"),
    )
    .await?;
    wait_available(&node, "hungry", 1).await?;
    assert_eq!(
        node.call("GET", "/function/hungry", &[], b"").await?.status,
        200,
        "restarted after the OOM"
    );
    Ok(())
}

async fn updates_under_load() -> TestResult {
    let (node, _runtime) = node("update", "ready_timeout = \"4s\"").await?;
    assert_eq!(
        deploy(&node, &function("svc", &json!({"BODY": "v1"})))
            .await?
            .status,
        200
    );
    wait_available(&node, "svc", 1).await?;

    // A steady request loop (4 concurrent clients, bounded by the test's duration).
    let load = Load::start(node.addr(), "/function/svc", 4);
    harness::wait_until("the load to run", Duration::from_secs(20), async || {
        Ok(load.ok() >= 20)
    })
    .await?;

    // A good update: switched over without a failed request.
    update(&node, &function("svc", &json!({"BODY": "v2"}))).await?;
    harness::wait_until("v2 to serve", Duration::from_secs(30), async || {
        Ok(load.bodies().contains("v2"))
    })
    .await?;
    let served = load.ok();
    harness::wait_until("v2 to serve a while", Duration::from_secs(20), async || {
        Ok(load.ok() >= served + 50)
    })
    .await?;

    // A broken update (never healthy): rolled back, v2 keeps serving, nothing fails.
    let broken = function("svc", &json!({"BODY": "v3", "NEVER_HEALTHY": "1"}));
    update(&node, &broken).await?;
    wait_rolled_back(&node, "svc").await?;
    let served = load.ok();
    harness::wait_until(
        "v2 to serve after the rollback",
        Duration::from_secs(20),
        async || Ok(load.ok() >= served + 50),
    )
    .await?;
    let report = load.finish().await?;
    assert!(
        report.failures.is_empty(),
        "{} failed requests during the updates: {:?}",
        report.failures.len(),
        &report.failures[..report.failures.len().min(5)]
    );
    assert!(
        !report.bodies.contains("v3"),
        "the broken version never served"
    );
    assert!(
        report.ok > 100,
        "the load loop ran ({} requests)",
        report.ok
    );
    let s = status(&node, "svc").await?;
    assert_eq!(
        s["envVars"]["BODY"], "v2",
        "the record was rolled back too: {s}"
    );
    assert_eq!(
        node.call("GET", "/function/svc", &[], b"").await?.text(),
        "v2"
    );
    Ok(())
}

async fn update(node: &Node, body: &Value) -> TestResult {
    node.api("PUT", "/system/functions", body.to_string().as_bytes())
        .await?
        .expect(200, "update")?;
    Ok(())
}

/// Waits until the status reports the update rolled back.
async fn wait_rolled_back(node: &Node, name: &str) -> TestResult {
    harness::wait_until("the rollback", Duration::from_secs(60), async || {
        Ok(status(node, name).await?["bramble"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("rolled back")))
    })
    .await
    .map_err(|e| format!("{e}\n{}", node.log_tail(30)).into())
}

/// Kills the daemon (SIGKILL) while an update rolls out, under a steady request loop that
/// runs whenever the daemon is up: the old version keeps serving across the restart, a good
/// update completes afterwards, and a broken one is still rolled back.
async fn sigkill_during_updates() -> TestResult {
    let (mut node, runtime) = node("killupdate", "ready_timeout = \"8s\"").await?;
    deploy(&node, &function("svc", &json!({"BODY": "v1"})))
        .await?
        .expect(200, "deploy")?;
    wait_available(&node, "svc", 1).await?;
    let mut reports = Vec::new();

    // A good update whose new version takes 4 s to pass its health check: killed half-way.
    let load = Load::start(node.addr(), "/function/svc", 3);
    let slow = function("svc", &json!({"BODY": "v2", "HEALTH_DELAY_MS": "4000"}));
    update(&node, &slow).await?;
    wait_updating(&node, &runtime, "svc", 2).await?;
    reports.push(load.finish().await?);
    node.kill();
    node.start_again()?;
    let load = Load::start(node.addr(), "/function/svc", 3);
    harness::wait_until("v2 to serve", Duration::from_secs(30), async || {
        Ok(load.bodies().contains("v2"))
    })
    .await?;
    let s = status(&node, "svc").await?;
    assert_eq!(
        (&s["envVars"]["BODY"], &s["bramble"]["state"]),
        (&json!("v2"), &json!("ready")),
        "{s}"
    );

    // A broken update (never healthy): killed half-way, rolled back after the restart.
    let broken = function("svc", &json!({"BODY": "v3", "NEVER_HEALTHY": "1"}));
    update(&node, &broken).await?;
    wait_updating(&node, &runtime, "svc", 3).await?;
    reports.push(load.finish().await?);
    node.kill();
    node.start_again()?;
    let load = Load::start(node.addr(), "/function/svc", 3);
    wait_rolled_back(&node, "svc").await?;
    let served = load.ok();
    harness::wait_until(
        "v2 to serve after the rollback",
        Duration::from_secs(20),
        async || Ok(load.ok() >= served + 50),
    )
    .await?;
    reports.push(load.finish().await?);

    let failures: Vec<&String> = reports.iter().flat_map(|r| &r.failures).collect();
    let ok: usize = reports.iter().map(|r| r.ok).sum();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed around the crashes: {:?}",
        failures.len(),
        ok + failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        reports.iter().all(|r| r.ok > 0),
        "every load phase was served: {reports:?}"
    );
    // The old version served right after each restart, and the broken one never did.
    assert!(reports[1].bodies.contains("v1"), "{:?}", reports[1].bodies);
    assert!(
        reports.iter().all(|r| !r.bodies.contains("v3")),
        "the broken version never served"
    );
    let s = status(&node, "svc").await?;
    assert_eq!(
        s["envVars"]["BODY"], "v2",
        "the record was rolled back: {s}"
    );
    assert!(
        s["bramble"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("update to") && m.contains("failed")),
        "the update is reported failed: {s}"
    );
    // The saved state is settled: no rollout left to resume.
    let saved: Value =
        serde_json::from_slice(&std::fs::read(node.state_dir().join("state.json"))?)?;
    assert_eq!(
        saved["functions"]["openfaas-fn"]["svc"]["previous"],
        Value::Null,
        "{saved}"
    );
    harness::wait_until(
        "the broken replica and its network to go",
        Duration::from_secs(20),
        async || Ok(runtime.list().await?.len() == 1 && runtime.network().holders()?.len() == 1),
    )
    .await?;
    assert_consistent(&node, &runtime, 1).await
}

/// Waits until `name` rolls out `generation`: its new container runs beside the old one.
async fn wait_updating(node: &Node, runtime: &Runtime, name: &str, generation: u64) -> TestResult {
    let prefix = format!("{name}.openfaas-fn-{generation}-");
    harness::wait_until(
        "the rollout to start",
        Duration::from_secs(20),
        async || {
            let running = runtime.list().await?.into_iter().any(|c| {
                c.id.starts_with(&prefix) && c.task.is_some_and(|t| t.status == TaskStatus::Running)
            });
            Ok(running && status(node, name).await?["bramble"]["state"] == "updating")
        },
    )
    .await
}

async fn memory_budget() -> TestResult {
    let (node, runtime) = node("budget", "memory_budget = \"100Mi\"").await?;
    // An image only a registry has: a deploy refused for memory must not pull it.
    let registry = Registry::start(None)?;
    let (archive, _) = fixture_image(node.env.scratch(), "remote:1")?;
    let remote = registry.push_oci_archive(&archive, "team/remote:1")?;
    let pushed = registry.request_count()?;
    let pulled = async || -> Result<bool, Box<dyn std::error::Error>> {
        Ok(runtime
            .images()
            .list()
            .await?
            .iter()
            .any(|i| i.name == remote))
    };
    let small = json!({"service": "small", "image": FIXTURE, "limits": {"memory": "64Mi"}});
    assert_eq!(deploy(&node, &small).await?.status, 200);
    let big = json!({"service": "big", "image": remote, "limits": {"memory": "64Mi"}});
    let r = deploy(&node, &big).await?;
    assert_eq!(r.status, 400, "{}", r.text());
    for number in ["64 MiB", "36 MiB", "100 MiB"] {
        assert!(
            r.text().contains(number),
            "the refusal gives the numbers ({number}): {}",
            r.text()
        );
    }
    assert_eq!(
        status(&node, "big").await?,
        Value::Null,
        "nothing persisted"
    );
    let scale = json!({"serviceName": "small", "replicas": 2}).to_string();
    let r = node
        .api("POST", "/system/scale-function/small", scale.as_bytes())
        .await?;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().starts_with("replicas:"), "{}", r.text());
    // Functions without a limit get the default (128Mi here), which does not fit either.
    let defaulted = json!({"service": "defaulted", "image": remote});
    let r = deploy(&node, &defaulted).await?;
    assert_eq!(r.status, 400, "{}", r.text());
    // An update beyond the budget is refused before its image is pulled too.
    let grown = json!({"service": "small", "image": remote, "limits": {"memory": "128Mi"}});
    let r = node
        .api("PUT", "/system/functions", grown.to_string().as_bytes())
        .await?;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        registry.request_count()?,
        pushed,
        "refused deploys and updates asked the registry nothing"
    );
    assert!(!pulled().await?, "no image record was created");
    wait_available(&node, "small", 1).await?;
    assert!(
        runtime
            .list()
            .await?
            .iter()
            .all(|c| c.id.starts_with("small.")),
        "refused functions created no container"
    );
    assert_eq!(status(&node, "small").await?["image"], FIXTURE);
    // Within the budget the same image is pulled: the refusals above did need a pull.
    let fits = json!({"service": "small", "image": remote, "limits": {"memory": "64Mi"}});
    update(&node, &fits).await?;
    assert!(registry.request_count()? > pushed && pulled().await?);
    Ok(())
}

async fn unused_images_are_collected() -> TestResult {
    // The grace covers the time between the node's start and the first deploy, even on a
    // busy machine: the fixture image was imported before the node started.
    let (node, runtime) = node("gc", "image_gc_after = \"5s\"").await?;
    assert_eq!(
        deploy(&node, &function("user", &json!({}))).await?.status,
        200
    );
    let names = async || -> Result<BTreeSet<String>, Box<dyn std::error::Error>> {
        Ok(runtime
            .images()
            .list()
            .await?
            .into_iter()
            .map(|i| i.name)
            .collect())
    };
    // Another name nothing uses: kept for the grace time (5 s) from its import, then removed.
    let grace = Duration::from_secs(5);
    let (archive, _) = fixture_image(node.env.scratch(), "spare:1")?;
    let imported = std::time::Instant::now();
    runtime
        .images()
        .import(&archive, None, &no_progress)
        .await?;
    // Still there shortly before the grace time has passed (polled: a removal at any moment
    // of the grace time fails here).
    while imported.elapsed() < grace - Duration::from_millis(500) {
        assert!(
            names().await?.contains("docker.io/library/spare:1"),
            "the unused image was removed {:?} after its import, before the grace time of {grace:?}",
            imported.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    harness::wait_until(
        "the unused images to be removed",
        Duration::from_secs(20),
        async || Ok(!names().await?.contains("docker.io/library/spare:1")),
    )
    .await?;
    assert!(
        imported.elapsed() >= grace,
        "removed {:?} after its import, within the grace time of {grace:?}",
        imported.elapsed()
    );
    wait_available(&node, "user", 1).await?;
    // Moving the function to another image frees the first one.
    let moved = json!({"service": "user", "image": "docker.io/library/next:1"}).to_string();
    assert!(names().await?.contains(FIXTURE), "an image in use is kept");
    let (archive, _) = fixture_image(node.env.scratch(), "next:1")?;
    runtime
        .images()
        .import(&archive, Some(&ImageRef::parse("next:1")?), &no_progress)
        .await?;
    assert_eq!(
        node.api("PUT", "/system/functions", moved.as_bytes())
            .await?
            .status,
        200
    );
    harness::wait_until(
        "the old image to be removed",
        Duration::from_secs(30),
        async || {
            let names = names().await?;
            Ok(!names.contains(FIXTURE) && names.contains("docker.io/library/next:1"))
        },
    )
    .await?;
    assert_eq!(
        node.call("GET", "/function/user", &[], b"").await?.status,
        200,
        "the function still serves"
    );
    Ok(())
}

async fn sigterm_drains() -> TestResult {
    let (mut node, runtime) = node("drain", "").await?;
    assert_eq!(
        deploy(&node, &function("slow", &json!({}))).await?.status,
        200
    );
    wait_available(&node, "slow", 1).await?;
    let addr = node.addr();
    let in_flight = tokio::spawn(async move {
        bramble_testkit::http::request(
            addr,
            "GET",
            "/function/slow/sleep?ms=1500",
            &[],
            b"",
            Duration::from_secs(20),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let exit = node.stop()?;
    assert!(exit.success(), "{exit}");
    let r = in_flight.await??;
    assert_eq!(
        (r.status, r.text()),
        (200, "slept 1500 ms".to_owned()),
        "the request in flight finished"
    );
    let tasks: Vec<_> = runtime
        .list()
        .await?
        .into_iter()
        .filter_map(|c| c.task)
        .collect();
    assert!(
        tasks.iter().all(|t| t.status == TaskStatus::Running) && !tasks.is_empty(),
        "functions keep running: {tasks:?}"
    );
    node.start_again()?;
    assert_eq!(
        node.call("GET", "/function/slow", &[], b"").await?.status,
        200
    );
    Ok(())
}

async fn stop_functions_on_shutdown() -> TestResult {
    let (mut node, runtime) = node("stopall", "stop_functions_on_shutdown = true").await?;
    assert_eq!(deploy(&node, &function("a", &json!({}))).await?.status, 200);
    wait_available(&node, "a", 1).await?;
    assert!(node.stop()?.success());
    let containers = runtime.list().await?;
    assert_eq!(containers.len(), 1, "the container is kept");
    assert!(
        containers[0].task.is_none(),
        "its task was stopped: {:?}",
        containers[0].task
    );
    node.start_again()?;
    wait_available(&node, "a", 1).await?;
    Ok(())
}

async fn orphans_are_removed_at_start() -> TestResult {
    let env = TestEnv::new("orphans")?;
    // The node's own network, so that the leases made here are in the node's lease directory.
    let runtime = Runtime::new(runtime_config_of(&env))?;
    let (archive, _) = fixture_image(env.scratch(), "fixture:test")?;
    let image = runtime
        .images()
        .import(&archive, None, &no_progress)
        .await?
        .remove(0);
    // A container of a function bramble does not know, a network attachment and a writable
    // snapshot without container: what a crash half-way through a delete leaves.
    let ghost = ContainerSpec {
        id: "ghost.openfaas-fn-1-0".into(),
        image: image.name.clone(),
        hostname: "ghost".into(),
        ..Default::default()
    };
    runtime.run(&ghost).await?;
    runtime.network().attach("lonely").await?;
    // A crash between preparing a container's namespace and recording the container: a
    // pinned namespace and nothing else.
    runtime.network().prepare("halfway.openfaas-fn-1-0").await?;
    // A crash in the middle of CNI ADD: namespace and IP lease, but no attachment record.
    runtime.network().attach("midadd").await?;
    std::fs::remove_file(env.config.network.state_dir.join("cache/midadd.json"))?;
    let namespaces = runtime.network().namespaces()?;
    for id in ["halfway.openfaas-fn-1-0", "lonely", "midadd"] {
        assert!(namespaces.iter().any(|n| n == id), "{namespaces:?}");
    }
    let leases = runtime.network().leases()?;
    assert!(leases.iter().any(|l| l.id == "midadd"), "{leases:?}");
    let out = std::process::Command::new("ctr")
        .arg("--address")
        .arg(env.containerd.socket())
        .args([
            "-n",
            &env.config.namespace,
            "snapshots",
            "prepare",
            "stray",
            &image.top_chain_id,
        ])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(runtime);
    let node = Node::start(Path::new(env!("CARGO_BIN_EXE_bramble")), env, "")?;
    let runtime = Runtime::new(node.runtime_config())?;
    harness::wait_until(
        "orphans to be removed",
        Duration::from_secs(30),
        async || {
            let snapshots = ctr(&node, &["snapshots", "ls"])?;
            Ok(runtime.list().await?.is_empty()
                && runtime.network().attachments()?.is_empty()
                && runtime.network().namespaces()?.is_empty()
                && runtime.network().leases()?.is_empty()
                && !snapshots.contains("stray"))
        },
    )
    .await?;
    assert_consistent(&node, &runtime, 0).await
}
