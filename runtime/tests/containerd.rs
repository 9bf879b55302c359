//! Acceptance tests of the runtime against a real containerd (private root and socket), real
//! CNI plugins in a private network namespace, and a real registry on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bramble_runtime::cgroup::Cgroups;
use bramble_runtime::image::platform::Platform;
use bramble_runtime::image::reference::ImageRef;
use bramble_runtime::image::{
    Blobs, Chunks, Found, Image, ImageSource, PullPolicy, RegistryConfig, SourceError, no_progress,
};
use bramble_runtime::logs::LogLine;
use bramble_runtime::{ContainerSpec, Error, Limits, Runtime, Secret, TaskEvent, TaskStatus};
use bramble_testkit::harness::{self, Need};
use bramble_testkit::{
    Registry, TestEnv, fixture_image, foreign_image, http, multi_platform_layout,
    write_docker_config,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn main() {
    let needs = [
        Need::Root,
        Need::Binary("containerd"),
        Need::Binary("runc"),
        Need::Binary("iptables"),
        Need::Binary("docker-registry"),
        Need::Binary("skopeo"),
        Need::Binary("htpasswd"),
        Need::CniPlugins,
    ];
    let trials = vec![
        harness::async_trial("run_fixture_and_answer_http", run_fixture_and_answer_http),
        harness::async_trial(
            "pull_from_registry_anonymous_then_offline",
            pull_from_registry_anonymous_then_offline,
        ),
        harness::async_trial(
            "pull_from_registry_with_basic_auth",
            pull_from_registry_with_basic_auth,
        ),
        harness::async_trial(
            "memory_limit_oom_is_reported_once_and_cgroups_carry_limits",
            memory_limit_oom_is_reported_once,
        ),
        harness::async_trial(
            "pids_limit_stops_thread_creation",
            pids_limit_stops_thread_creation,
        ),
        harness::async_trial(
            "read_only_rootfs_and_read_only_secrets",
            read_only_rootfs_and_read_only_secrets,
        ),
        harness::async_trial("stop_gives_grace_then_kills", stop_gives_grace_then_kills),
        harness::async_trial(
            "containerd_restart_keeps_function_served",
            containerd_restart_keeps_function_served,
        ),
        harness::async_trial(
            "platform_mismatch_refused_before_anything_is_created",
            platform_mismatch_refused,
        ),
        harness::async_trial(
            "multi_platform_index_pull_chooses_the_hosts_manifest",
            multi_platform_index_pull,
        ),
        harness::async_trial(
            "device_cgroup_denies_devices_outside_the_default_set",
            device_cgroup_denies_other_devices,
        ),
        harness::async_trial(
            "logs_are_readable_within_100ms",
            logs_are_readable_within_100ms,
        ),
        harness::async_trial(
            "delete_removes_task_snapshot_container_and_network",
            delete_removes_everything,
        ),
        harness::async_trial(
            "restarted_runtime_adopts_running_containers",
            restarted_runtime_adopts_running_containers,
        ),
        harness::async_trial(
            "docker_save_archives_import_and_run",
            docker_save_archives_import_and_run,
        ),
        harness::async_trial(
            "container_from_before_a_reboot_is_reported_stale",
            container_from_before_a_reboot_is_stale,
        ),
        harness::async_trial("bad_input_changes_nothing", bad_input_changes_nothing),
        harness::async_trial(
            "an_image_another_board_has_is_fetched_from_it_and_checked",
            an_image_another_board_has_is_fetched_from_it_and_checked,
        ),
    ];
    harness::main(&needs, trials);
}

/// A test environment with a runtime and the fixture image imported.
struct Setup {
    env: TestEnv,
    runtime: Runtime,
    image: std::sync::Arc<Image>,
}

async fn setup(name: &str) -> Result<Setup, Box<dyn std::error::Error>> {
    let env = TestEnv::new(name)?;
    let runtime = Runtime::new(env.config.clone())?;
    let (archive, _) = fixture_image(env.scratch(), "fixture:test")?;
    let images = runtime
        .images()
        .import(&archive, None, &no_progress)
        .await?;
    let image = images.into_iter().next().ok_or("no image imported")?;
    Ok(Setup {
        env,
        runtime,
        image,
    })
}

fn spec(id: &str, image: &Image) -> ContainerSpec {
    ContainerSpec {
        id: id.into(),
        image: image.name.clone(),
        hostname: id.into(),
        ..Default::default()
    }
}

fn addr_of(container: &bramble_runtime::Container) -> SocketAddr {
    SocketAddr::from((container.ip.expect("container has an IP"), 8080))
}

async fn run_healthy(
    runtime: &Runtime,
    spec: &ContainerSpec,
) -> Result<SocketAddr, Box<dyn std::error::Error>> {
    let container = runtime.run(spec).await?;
    let addr = addr_of(&container);
    http::wait_healthy(addr, Duration::from_secs(20)).await?;
    Ok(addr)
}

async fn run_fixture_and_answer_http() -> TestResult {
    let s = setup("run").await?;
    assert_eq!(s.image.name, "docker.io/library/fixture:test");
    assert!(s.image.unpacked);
    let mut spec = spec("hello", &s.image);
    spec.env = vec![
        ("BODY".into(), "hi from the test".into()),
        ("fprocess".into(), "cat".into()),
    ];
    let addr = run_healthy(&s.runtime, &spec).await?;
    let reply = http::get(addr, "/").await?;
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (200, "hi from the test")
    );
    assert_eq!(reply.header("x-fixture-hostname"), Some("hello"));

    let env = http::get(addr, "/env").await?.text();
    assert!(env.contains("fprocess=cat"), "{env}");
    assert!(env.contains("PATH="), "{env}");
    let hosts = http::get(addr, "/read?path=/etc/hosts").await?.text();
    assert!(hosts.contains(&format!("{}\thello", addr.ip())), "{hosts}");
    let resolv = http::get(addr, "/read?path=/etc/resolv.conf").await?;
    assert_eq!(resolv.status, 200);
    assert!(
        !resolv.text().contains("127.0.0."),
        "loopback resolvers are not reachable from a function"
    );

    // Hardening: no capabilities, no new privileges.
    let status = http::get(addr, "/read?path=/proc/self/status")
        .await?
        .text();
    for field in [
        "CapEff:\t0000000000000000",
        "CapBnd:\t0000000000000000",
        "NoNewPrivs:\t1",
    ] {
        assert!(status.contains(field), "{field} missing in\n{status}");
    }

    let listed = s.runtime.list().await?;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, "hello");
    assert_eq!(
        listed[0].ip,
        Some(match addr.ip() {
            std::net::IpAddr::V4(ip) => ip,
            std::net::IpAddr::V6(_) => panic!("IPv6"),
        })
    );
    assert_eq!(listed[0].task.map(|t| t.status), Some(TaskStatus::Running));
    assert_eq!(
        listed[0]
            .labels
            .get(bramble_runtime::MANAGED_LABEL)
            .map(String::as_str),
        Some("true")
    );
    s.runtime.delete("hello", Duration::from_secs(5)).await?;
    Ok(())
}

async fn pull_from_registry_anonymous_then_offline() -> TestResult {
    let mut registry = Registry::start(None)?;
    let s = setup("pull").await?;
    let (archive, built) = fixture_image(s.env.scratch(), "pushed:1")?;
    let pushed = registry.push_oci_archive(&archive, "team/fixture:1")?;
    let reference = ImageRef::parse(&pushed)?;

    let image = s
        .runtime
        .images()
        .ensure(&reference, PullPolicy::IfNotPresent, &no_progress)
        .await?;
    assert_eq!(image.name, format!("{}/team/fixture:1", registry.host()));
    assert_eq!(image.manifest_digest, built.manifest_digest);
    assert!(image.unpacked);
    let addr = run_healthy(&s.runtime, &spec("pulled", &image)).await?;
    assert_eq!(http::get(addr, "/").await?.status, 200);

    // Present + IfNotPresent: no request reaches the registry.
    let before = registry.request_count()?;
    let again = s
        .runtime
        .images()
        .ensure(&reference, PullPolicy::IfNotPresent, &no_progress)
        .await?;
    assert_eq!(again.manifest_digest, image.manifest_digest);
    assert_eq!(
        registry.request_count()?,
        before,
        "IfNotPresent must not touch the registry when the image is present"
    );

    // Offline: the registry is gone; IfNotPresent and Never still work, Always fails clearly.
    registry.stop();
    s.runtime
        .images()
        .ensure(&reference, PullPolicy::IfNotPresent, &no_progress)
        .await?;
    s.runtime
        .images()
        .ensure(&reference, PullPolicy::Never, &no_progress)
        .await?;
    let err = s
        .runtime
        .images()
        .ensure(&reference, PullPolicy::Always, &no_progress)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Registry { .. }), "{err:?}");
    assert!(err.chain().contains(&registry.host()), "{}", err.chain());

    // Never on an absent image: a clear error, nothing fetched.
    let absent = ImageRef::parse(&format!("{}/team/absent:1", registry.host()))?;
    let err = s
        .runtime
        .images()
        .ensure(&absent, PullPolicy::Never, &no_progress)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ImageNotPresent { .. }), "{err:?}");
    s.runtime.delete("pulled", Duration::from_secs(5)).await?;
    Ok(())
}

async fn pull_from_registry_with_basic_auth() -> TestResult {
    let registry = Registry::start(Some(("alice", "wonderland")))?;
    let mut s = setup("auth").await?;
    let (archive, _) = fixture_image(s.env.scratch(), "private:1")?;
    let pushed = registry.push_oci_archive(&archive, "private/fixture:1")?;
    let reference = ImageRef::parse(&pushed)?;

    // Without credentials: refused, with a message that says so.
    let err = s
        .runtime
        .images()
        .ensure(&reference, PullPolicy::Always, &no_progress)
        .await
        .unwrap_err();
    assert!(err.chain().contains("credentials"), "{}", err.chain());
    assert!(
        s.runtime
            .images()
            .list()
            .await?
            .iter()
            .all(|i| !i.name.contains("private")),
        "a refused pull creates nothing"
    );

    // With a docker config.json: pulled and runnable.
    let config = write_docker_config(s.env.scratch(), &registry.host(), "alice", "wonderland")?;
    s.env.config.registries = RegistryConfig {
        insecure: vec![],
        credentials_file: Some(config),
    };
    let runtime = Runtime::new(s.env.config.clone())?;
    let image = runtime
        .images()
        .ensure(&reference, PullPolicy::Always, &no_progress)
        .await?;
    let addr = run_healthy(&runtime, &spec("private", &image)).await?;
    assert_eq!(http::get(addr, "/").await?.status, 200);
    runtime.delete("private", Duration::from_secs(5)).await?;
    s.runtime = runtime;
    Ok(())
}

async fn memory_limit_oom_is_reported_once() -> TestResult {
    let s = setup("oom").await?;
    let mut events = s.runtime.subscribe();
    let mut spec = spec("hungry", &s.image);
    spec.limits = Limits {
        memory_bytes: Some(32 << 20),
        cpu_millis: Some(250),
        pids: Some(64),
        ..Default::default()
    };
    let addr = run_healthy(&s.runtime, &spec).await?;

    let limits = Cgroups::default().limits(&s.runtime.cgroup_path("hungry"));
    assert_eq!(limits.memory_bytes, Some(32 << 20));
    assert_eq!(limits.cpu_quota_us, Some(25_000));
    assert_eq!(limits.cpu_period_us, Some(100_000));
    assert_eq!(limits.pids, Some(64));

    let usage = s
        .runtime
        .usage("hungry")
        .await?
        .expect("usage of a running task");
    assert!(usage.memory_bytes > 0 && usage.pids >= 1, "{usage:?}");
    assert_eq!(usage.memory_limit_bytes, Some(32 << 20));

    let reply = http::get(addr, "/alloc?mb=64").await;
    assert!(
        reply.as_ref().map_or(true, |r| r.status != 200),
        "allocating past the limit must not succeed: {reply:?}"
    );

    let mut ooms = 0;
    let mut exit = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while exit.is_none()
        || Instant::now() < deadline.min(Instant::now() + Duration::from_millis(1500))
    {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining.min(Duration::from_millis(1500)), events.recv()).await
        {
            Ok(Ok(TaskEvent::Oom { container })) if container == "hungry" => ooms += 1,
            Ok(Ok(TaskEvent::Exited {
                container,
                exit_status,
                ..
            })) if container == "hungry" => exit = Some(exit_status),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("event stream: {e}").into()),
            Err(_) if exit.is_some() => break, // quiet for 1.5 s after the exit: no late duplicates
            Err(_) if Instant::now() >= deadline => break,
            Err(_) => {}
        }
    }
    assert_eq!(
        exit,
        Some(137),
        "the OOM-killed task exits with 128+SIGKILL"
    );
    assert_eq!(ooms, 1, "one OOM is reported exactly once");
    s.runtime.delete("hungry", Duration::from_secs(5)).await?;
    Ok(())
}

async fn pids_limit_stops_thread_creation() -> TestResult {
    let s = setup("pids").await?;
    let mut spec = spec("forky", &s.image);
    spec.limits.pids = Some(16);
    let addr = run_healthy(&s.runtime, &spec).await?;
    let reply = http::get(addr, "/threads?n=100").await?.text();
    let spawned: u32 = reply
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .ok_or(format!("bad reply {reply}"))?;
    assert!(spawned < 16, "pids limit 16 allowed {spawned} threads");
    s.runtime.delete("forky", Duration::from_secs(5)).await?;
    Ok(())
}

async fn read_only_rootfs_and_read_only_secrets() -> TestResult {
    let s = setup("ro").await?;
    let secret_source: PathBuf = s.env.scratch().join("api-key");
    std::fs::write(&secret_source, "s3cr3t-value")?;
    let mut spec = spec("locked", &s.image);
    spec.read_only_rootfs = true;
    spec.user = Some("app".into());
    spec.secrets = vec![Secret {
        name: "api-key".into(),
        source: secret_source,
    }];
    let addr = run_healthy(&s.runtime, &spec).await?;

    assert_eq!(
        http::get(addr, "/id").await?.text(),
        "uid=1000 gid=1000",
        "named user resolved from the image's /etc/passwd"
    );
    let root_write = http::get(addr, "/write?path=/should-fail").await?;
    assert_eq!(root_write.status, 500);
    assert!(
        root_write.text().contains("Read-only file system"),
        "{}",
        root_write.text()
    );
    assert_eq!(
        http::get(addr, "/write?path=/tmp/scratch").await?.status,
        200,
        "/tmp is writable"
    );
    let mounts = http::get(addr, "/read?path=/proc/mounts").await?.text();
    let tmp = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == Some("/tmp"))
        .ok_or(format!("no /tmp mount in\n{mounts}"))?;
    assert!(
        tmp.starts_with("tmpfs ") && tmp.contains("size=65536k"),
        "/tmp is a 64 MiB tmpfs without a memory limit: {tmp}"
    );

    let secret = http::get(addr, "/read?path=/var/openfaas/secrets/api-key").await?;
    assert_eq!(
        (secret.status, secret.text().as_str()),
        (200, "s3cr3t-value")
    );
    let overwrite = http::get(addr, "/write?path=/var/openfaas/secrets/api-key").await?;
    assert_eq!(
        overwrite.status,
        500,
        "secrets are read-only: {}",
        overwrite.text()
    );
    let create = http::get(addr, "/write?path=/var/openfaas/secrets/new").await?;
    assert_eq!(
        create.status,
        500,
        "the secrets directory is read-only: {}",
        create.text()
    );
    s.runtime.delete("locked", Duration::from_secs(5)).await?;
    Ok(())
}

async fn stop_gives_grace_then_kills() -> TestResult {
    let s = setup("stop").await?;
    let mut polite = spec("polite", &s.image);
    polite.env = vec![("ON_SIGTERM".into(), "delay:600".into())];
    run_healthy(&s.runtime, &polite).await?;
    let started = Instant::now();
    let exit = s.runtime.stop("polite", Duration::from_secs(10)).await?;
    let took = started.elapsed();
    assert_eq!(
        exit,
        Some(0),
        "a function that handles SIGTERM exits cleanly"
    );
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_secs(5),
        "took {took:?}"
    );
    let logs = s
        .runtime
        .logs()
        .get("polite")
        .map(|b| b.read(None, None))
        .unwrap_or_default();
    assert!(
        logs.iter().any(|l| l.text.contains("got SIGTERM")),
        "{logs:?}"
    );

    let mut stubborn = spec("stubborn", &s.image);
    stubborn.env = vec![("ON_SIGTERM".into(), "ignore".into())];
    run_healthy(&s.runtime, &stubborn).await?;
    let started = Instant::now();
    let exit = s.runtime.stop("stubborn", Duration::from_secs(1)).await?;
    let took = started.elapsed();
    assert_eq!(
        exit,
        Some(137),
        "ignored SIGTERM: killed after the grace period"
    );
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(5),
        "took {took:?}"
    );

    // A stopped container starts again, on the same address.
    let before = s.runtime.get("polite").await?.and_then(|c| c.ip);
    s.runtime.start("polite").await?;
    let after = s.runtime.get("polite").await?.expect("still exists");
    assert_eq!(after.ip, before);
    http::wait_healthy(addr_of(&after), Duration::from_secs(20)).await?;
    for id in ["polite", "stubborn"] {
        s.runtime.delete(id, Duration::from_secs(5)).await?;
    }
    Ok(())
}

async fn containerd_restart_keeps_function_served() -> TestResult {
    let mut s = setup("restart").await?;
    let mut events = s.runtime.subscribe();
    let addr = run_healthy(&s.runtime, &spec("steady", &s.image)).await?;

    s.env.containerd.kill();
    let started = Instant::now();
    let err = s.runtime.version().await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert!(err.to_string().contains("containerd unavailable"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "calls fail fast while containerd is down"
    );
    // No Resync can be sent while containerd is down: what is queued now is from before.
    while events.try_recv().is_ok() {}
    assert_eq!(
        http::get(addr, "/").await?.status,
        200,
        "the function keeps serving without containerd"
    );

    s.env.containerd.start_again()?;
    // The event stream comes back and says so; from then on calls work again.
    let resync = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match events.recv().await {
                Ok(TaskEvent::Resync) => return Ok(()),
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    assert!(
        matches!(resync, Ok(Ok(()))),
        "no Resync event after containerd came back: {resync:?}"
    );
    s.runtime
        .version()
        .await
        .map_err(|e| format!("the runtime did not reconnect: {e}"))?;
    let listed = s.runtime.list().await?;
    assert_eq!(
        listed
            .iter()
            .find(|c| c.id == "steady")
            .and_then(|c| c.task)
            .map(|t| t.status),
        Some(TaskStatus::Running)
    );
    assert_eq!(http::get(addr, "/").await?.status, 200);
    s.runtime.delete("steady", Duration::from_secs(5)).await?;
    Ok(())
}

async fn platform_mismatch_refused() -> TestResult {
    let s = setup("arch").await?;
    let foreign_platform = if cfg!(target_arch = "x86_64") {
        "linux/arm64"
    } else {
        "linux/amd64"
    };
    let (archive, _) = foreign_image(s.env.scratch(), "foreign:1", foreign_platform)?;
    let before = s.runtime.images().list().await?.len();
    let err = s
        .runtime
        .images()
        .import(&archive, None, &no_progress)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::PlatformMismatch { .. }), "{err:?}");
    assert!(text.contains(foreign_platform), "{text}");
    assert!(
        text.contains(&s.runtime.images().platform().to_string()),
        "{text}"
    );
    assert_eq!(
        s.runtime.images().list().await?.len(),
        before,
        "no image record was created"
    );

    // The same through a registry: refused after reading only metadata.
    let registry = Registry::start(None)?;
    let pushed = registry.push_oci_archive(&archive, "foreign/fixture:1")?;
    let err = s
        .runtime
        .images()
        .ensure(&ImageRef::parse(&pushed)?, PullPolicy::Always, &no_progress)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PlatformMismatch { .. }), "{err:?}");
    assert_eq!(s.runtime.images().list().await?.len(), before);
    Ok(())
}

/// A multi-platform image (an index of linux/amd64, linux/arm64 and linux/arm/v7 manifests, each
/// built by bramble's builder; only this machine's holds the runnable fixture) pushed to a
/// registry: this machine's manifest is chosen and runs; a machine the index has no manifest
/// for is refused before anything is written.
async fn multi_platform_index_pull() -> TestResult {
    let registry = Registry::start(None)?;
    let s = setup("multi").await?;
    let host = s.runtime.images().platform().clone();
    let dir = s.env.scratch();
    let mut images = Vec::new();
    // This machine's platform is not the first entry: it must be chosen, not merely taken.
    for platform in ["linux/arm/v7", "linux/arm64", "linux/amd64"] {
        let name = format!("multi-{}:1", platform.replace('/', "-"));
        images.push(if Platform::parse(platform)? == host {
            fixture_image(dir, &name)?
        } else {
            foreign_image(dir, &name, platform)?
        });
    }
    let native = images
        .iter()
        .map(|(_, built)| built)
        .find(|built| built.platform == host)
        .ok_or(format!(
            "this machine ({host}) is none of the index's platforms"
        ))?
        .clone();
    let (layout, index_digest) = multi_platform_layout(dir, "multi:1", &images)?;
    let pushed = registry.push_oci_layout(&layout, "team/multi:1")?;
    let reference = ImageRef::parse(&pushed)?;

    // A Pi Zero (arm/v6) runs none of them: refused, naming both sides, nothing written.
    let zero_platform = Platform::parse("linux/arm/v6")?;
    let mut config = s.env.config.clone();
    config.platform = Some(zero_platform.clone());
    let zero = Runtime::new(config)?;
    let images_before = s.runtime.images().list().await?.len();
    let content_before = ctr(&s.env, &["content", "ls", "--quiet"])?;
    let snapshots_before = ctr(&s.env, &["snapshots", "ls"])?;
    let err = zero
        .images()
        .ensure(&reference, PullPolicy::Always, &no_progress)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PlatformMismatch { .. }), "{err:?}");
    let text = err.to_string();
    for platform in ["linux/arm/v6", "linux/amd64", "linux/arm64", "linux/arm/v7"] {
        assert!(text.contains(platform), "{platform} not named: {text}");
    }
    assert!(text.contains(&pushed), "{text}");
    assert_eq!(s.runtime.images().list().await?.len(), images_before);
    assert_eq!(
        ctr(&s.env, &["content", "ls", "--quiet"])?,
        content_before,
        "a refused pull wrote content"
    );
    assert_eq!(ctr(&s.env, &["snapshots", "ls"])?, snapshots_before);
    drop(zero);

    // This machine gets its own manifest out of the index, and it runs.
    let image = s
        .runtime
        .images()
        .ensure(&reference, PullPolicy::IfNotPresent, &no_progress)
        .await?;
    assert_eq!(
        image.target_digest, index_digest,
        "the record names the index"
    );
    assert_eq!(image.manifest_digest, native.manifest_digest);
    assert_eq!(image.platform, host);
    let addr = run_healthy(&s.runtime, &spec("multi", &image)).await?;
    assert_eq!(http::get(addr, "/").await?.status, 200);
    // Only this machine's layer was fetched.
    let content = ctr(&s.env, &["content", "ls", "--quiet"])?;
    assert!(content.contains(&native.layer_digest), "{content}");
    for (_, other) in images.iter().filter(|(_, b)| b.platform != host) {
        assert!(
            !content.contains(&other.layer_digest),
            "the {} layer was fetched too",
            other.platform
        );
    }
    s.runtime.delete("multi", Duration::from_secs(5)).await?;
    Ok(())
}

/// The device cgroup denies every device outside runc's default set even where a node exists:
/// nodes made from outside in the function's root filesystem (not mounted `nodev`; the function
/// itself holds no CAP_MKNOD) are only usable when the cgroup allows them.
async fn device_cgroup_denies_other_devices() -> TestResult {
    use nix::sys::stat::{Mode, SFlag, makedev, mknod};
    let s = setup("devices").await?;
    let addr = run_healthy(&s.runtime, &spec("nodev", &s.image)).await?;
    let pid = s
        .runtime
        .get("nodev")
        .await?
        .and_then(|c| c.task)
        .map(|t| t.pid)
        .ok_or("no task")?;
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let mode = Mode::from_bits_truncate(0o666);
    // 1:3 is /dev/null (allowed), 1:11 is /dev/kmsg: writable without any capability, so only
    // the device cgroup keeps the function from writing into the host's kernel log.
    mknod(&root.join("null-copy"), SFlag::S_IFCHR, mode, makedev(1, 3))?;
    mknod(
        &root.join("kmsg-copy"),
        SFlag::S_IFCHR,
        mode,
        makedev(1, 11),
    )?;

    let allowed = http::get(addr, "/write?path=/null-copy").await?;
    assert_eq!(
        (allowed.status, allowed.text().as_str()),
        (200, "ok"),
        "an allowed device node in the root filesystem opens"
    );
    let denied = http::get(addr, "/write?path=/kmsg-copy&data=bramble-test").await?;
    assert_eq!(denied.status, 500, "{}", denied.text());
    assert!(
        denied.text().contains("Operation not permitted"),
        "{}",
        denied.text()
    );
    s.runtime.delete("nodev", Duration::from_secs(5)).await?;
    Ok(())
}

async fn logs_are_readable_within_100ms() -> TestResult {
    let s = setup("logs").await?;
    let mut spec = spec("chatty", &s.image);
    spec.log_name = Some("chatty-fn".into());
    let addr = run_healthy(&s.runtime, &spec).await?;
    let buffer = s
        .runtime
        .logs()
        .get("chatty-fn")
        .expect("the log buffer exists once the task runs");
    assert!(
        buffer
            .read(None, None)
            .iter()
            .any(|l| l.text.contains("listening on")),
        "startup line captured"
    );

    for stream in ["stdout", "stderr"] {
        let marker = format!("marker-{stream}-{}", std::process::id());
        let (_, mut live) = buffer.follow(None, Some(0));
        let asked = Instant::now();
        let reply = http::get(addr, &format!("/log?line={marker}&stream={stream}")).await?;
        assert_eq!(reply.status, 200);
        let line = next_line_reading(&mut live, &marker).await?;
        let latency = asked.elapsed();
        assert!(
            latency < Duration::from_millis(100),
            "{stream} line took {latency:?}"
        );
        assert_eq!(line.container, "chatty");
        assert_eq!(format!("{:?}", line.stream).to_lowercase(), stream);
    }
    s.runtime.delete("chatty", Duration::from_secs(5)).await?;
    Ok(())
}

async fn delete_removes_everything() -> TestResult {
    let s = setup("delete").await?;
    run_healthy(&s.runtime, &spec("ephemeral", &s.image)).await?;
    let netns = s
        .runtime
        .network()
        .attachments()?
        .into_iter()
        .find(|a| a.id == "ephemeral")
        .map(|a| a.netns)
        .expect("attached");
    s.runtime
        .delete("ephemeral", Duration::from_secs(5))
        .await?;

    assert!(s.runtime.get("ephemeral").await?.is_none());
    assert!(s.runtime.list().await?.is_empty());
    assert!(s.runtime.network().attachments()?.is_empty());
    assert!(!netns.exists(), "netns file removed");
    let snapshots = ctr(&s.env, &["snapshots", "ls"])?;
    assert!(
        !snapshots.contains("ephemeral"),
        "snapshot left behind:\n{snapshots}"
    );
    assert!(!s.env.config.run_dir.join("containers/ephemeral").exists());
    // Deleting again is fine (idempotent cleanup).
    s.runtime
        .delete("ephemeral", Duration::from_secs(5))
        .await?;

    // Many create/delete cycles: the snapshot-before-container order keeps GC from racing us.
    for i in 0..10 {
        let id = format!("cycle{i}");
        s.runtime.run(&spec(&id, &s.image)).await?;
        s.runtime.delete(&id, Duration::from_secs(5)).await?;
    }
    assert!(s.runtime.list().await?.is_empty());
    Ok(())
}

async fn restarted_runtime_adopts_running_containers() -> TestResult {
    let s = setup("adopt").await?;
    let addr = run_healthy(&s.runtime, &spec("survivor", &s.image)).await?;
    let config = s.env.config.clone();
    drop(s.runtime);

    let runtime = Runtime::new(config)?;
    let adopted = runtime.adopt().await?;
    let survivor = adopted
        .iter()
        .find(|c| c.id == "survivor")
        .expect("adopted");
    assert_eq!(survivor.task.map(|t| t.status), Some(TaskStatus::Running));
    assert_eq!(
        survivor.ip.map(|ip| SocketAddr::from((ip, 8080))),
        Some(addr)
    );
    let attachment_count = runtime.network().attachments()?.len();
    runtime.network().attach("survivor").await?;
    assert_eq!(
        runtime.network().attachments()?.len(),
        attachment_count,
        "no second address"
    );

    let buffer = runtime
        .logs()
        .get("survivor")
        .expect("log capture re-attached");
    let (_, mut live) = buffer.follow(None, Some(0));
    http::get(addr, "/log?line=after-adoption").await?;
    next_line_reading(&mut live, "after-adoption")
        .await
        .map_err(|e| format!("output after adoption not captured: {e}"))?;
    runtime.delete("survivor", Duration::from_secs(5)).await?;
    Ok(())
}

async fn docker_save_archives_import_and_run() -> TestResult {
    let s = setup("save").await?;
    let (oci, _) = fixture_image(s.env.scratch(), "saved:1")?;
    let saved = s.env.scratch().join("saved.docker.tar");
    oci_to_docker_save(&oci, &saved, "docker.io/library/legacy:1")?;
    let images = s
        .runtime
        .images()
        .import(&saved, None, &no_progress)
        .await?;
    assert_eq!(images[0].name, "docker.io/library/legacy:1");
    let addr = run_healthy(&s.runtime, &spec("legacy", &images[0])).await?;
    assert_eq!(http::get(addr, "/").await?.status, 200);
    s.runtime.delete("legacy", Duration::from_secs(5)).await?;
    Ok(())
}

async fn container_from_before_a_reboot_is_stale() -> TestResult {
    let s = setup("stale").await?;
    run_healthy(&s.runtime, &spec("old", &s.image)).await?;
    // What a reboot does to it: the task is gone and so are the runtime's tmpfs files, while
    // containerd keeps the record. (The full reboot is covered by the daemon's tests.)
    s.runtime.stop("old", Duration::from_secs(5)).await?;
    std::fs::remove_dir_all(s.env.config.run_dir.join("containers/old"))?;
    let err = s.runtime.start("old").await.unwrap_err();
    assert!(matches!(err, Error::Stale { .. }), "{err:?}");
    assert!(
        err.to_string().contains("delete and create it again"),
        "{err}"
    );
    // The prescribed way out works and reuses nothing stale.
    s.runtime.delete("old", Duration::from_secs(5)).await?;
    let addr = run_healthy(&s.runtime, &spec("old", &s.image)).await?;
    assert_eq!(http::get(addr, "/").await?.status, 200);
    s.runtime.delete("old", Duration::from_secs(5)).await?;
    Ok(())
}

async fn bad_input_changes_nothing() -> TestResult {
    let s = setup("bad").await?;
    let good = spec("good", &s.image);
    let cases: Vec<(ContainerSpec, &str)> = vec![
        (
            ContainerSpec {
                id: "../x".into(),
                ..good.clone()
            },
            "container id",
        ),
        (
            ContainerSpec {
                image: "docker.io/library/absent:1".into(),
                ..good.clone()
            },
            "not found",
        ),
        (
            ContainerSpec {
                secrets: vec![Secret {
                    name: "../../etc".into(),
                    source: "/etc/passwd".into(),
                }],
                ..good.clone()
            },
            "secret name",
        ),
        (
            ContainerSpec {
                secrets: vec![Secret {
                    name: "missing".into(),
                    source: s.env.scratch().join("nope"),
                }],
                ..good.clone()
            },
            "secret missing",
        ),
        (
            ContainerSpec {
                user: Some("ghost".into()),
                ..good.clone()
            },
            "no user",
        ),
    ];
    for (spec, expected) in cases {
        let err = s.runtime.run(&spec).await.unwrap_err();
        assert!(
            err.chain().contains(expected),
            "{expected:?} not in {:?}",
            err.chain()
        );
        assert!(
            s.runtime.list().await?.is_empty(),
            "a refused run left a container ({expected})"
        );
        assert!(
            s.runtime.network().attachments()?.is_empty(),
            "a refused run left a network attachment ({expected})"
        );
    }
    // A second run of a running container's id is refused and leaves the first one alone:
    // its files, its network and its task.
    let addr = run_healthy(&s.runtime, &good).await?;
    let attachments = s.runtime.network().attachments()?;
    let err = s.runtime.run(&good).await.unwrap_err();
    assert!(
        matches!(err, Error::AlreadyExists { .. }),
        "a duplicate run: {err:?}"
    );
    assert_eq!(s.runtime.network().attachments()?, attachments);
    assert_eq!(
        http::get(addr, "/").await?.status,
        200,
        "the first one serves on"
    );
    let hosts = s.env.config.run_dir.join("containers/good/hosts");
    assert!(
        hosts.exists(),
        "the duplicate run removed the first one's {}",
        hosts.display()
    );
    s.runtime.delete("good", Duration::from_secs(5)).await?;

    let garbage = s.env.scratch().join("garbage.tar");
    std::fs::write(&garbage, b"this is not a tarball")?;
    let err = s
        .runtime
        .images()
        .import(&garbage, None, &no_progress)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Archive { .. }), "{err:?}");
    Ok(())
}

/// The next line of a followed log buffer that reads `text` (5 s at most).
async fn next_line_reading(
    live: &mut tokio::sync::broadcast::Receiver<LogLine>,
    text: &str,
) -> Result<LogLine, Box<dyn std::error::Error>> {
    let found = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let line = live.recv().await?;
            if line.text == text {
                return Ok::<_, tokio::sync::broadcast::error::RecvError>(line);
            }
        }
    })
    .await;
    match found {
        Ok(line) => Ok(line?),
        Err(_) => Err(format!("no log line {text:?} within 5 s").into()),
    }
}

/// `ctr` against the test's containerd, in its namespace.
fn ctr(env: &TestEnv, args: &[&str]) -> Result<String, Box<dyn std::error::Error>> {
    let out = std::process::Command::new("ctr")
        .arg("--address")
        .arg(env.containerd.socket())
        .args(["-n", &env.config.namespace])
        .args(args)
        .output()?;
    if !out.status.success() {
        return Err(format!("ctr {args:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Rewrites an OCI archive as a legacy `docker save` archive (uncompressed `layer.tar`,
/// `<config>.json`, `manifest.json` with RepoTags), the format of Docker before 25.
fn oci_to_docker_save(
    oci: &std::path::Path,
    out: &std::path::Path,
    tag: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    use std::io::Read;
    let mut blobs = std::collections::HashMap::new();
    let mut archive = tar::Archive::new(std::fs::File::open(oci)?);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = entry.path()?.to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data)?;
        blobs.insert(name, data);
    }
    let index: serde_json::Value = serde_json::from_slice(&blobs["index.json"])?;
    let blob = |digest: &str| {
        blobs[&format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))].clone()
    };
    let manifest: serde_json::Value = serde_json::from_slice(&blob(
        index["manifests"][0]["digest"].as_str().ok_or("digest")?,
    ))?;
    let config = blob(manifest["config"]["digest"].as_str().ok_or("config")?);
    let mut layer = Vec::new();
    flate2::read::GzDecoder::new(
        &blob(manifest["layers"][0]["digest"].as_str().ok_or("layer")?)[..],
    )
    .read_to_end(&mut layer)?;
    let mut builder = tar::Builder::new(std::fs::File::create(out)?);
    let mut add = |name: &str, data: &[u8]| -> std::io::Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, name, data)
    };
    add("abc123/layer.tar", &layer)?;
    add("cfg.json", &config)?;
    let manifest_json = serde_json::json!([{"Config": "cfg.json", "RepoTags": [tag], "Layers": ["abc123/layer.tar"]}]);
    add("manifest.json", manifest_json.to_string().as_bytes())?;
    builder.finish()?;
    Ok(())
}

/// Another board, played by a second runtime (its own containerd namespace) serving what its
/// image service has; `tamper` changes what it sends.
#[derive(Debug)]
struct Peer {
    runtime: std::sync::Arc<Runtime>,
    tamper: Tamper,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Tamper {
    Nothing,
    /// The top document's bytes do not hash to the digest it names.
    Top,
    /// The image configuration's bytes are not the ones its digest names.
    Config,
}

impl ImageSource for Peer {
    fn find<'a>(
        &'a self,
        name: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Option<Found>, SourceError>> {
        Box::pin(async move {
            let Some(mut top) = self.runtime.images().document(name).await? else {
                return Ok(None);
            };
            let config = match self.runtime.images().get(name).await? {
                Some(image) => image.config_digest.clone(),
                None => return Ok(None),
            };
            if self.tamper == Tamper::Top {
                top.bytes = bytes::Bytes::from([&top.bytes[..], b" "].concat());
            }
            Ok(Some(Found {
                from: "board peer".to_owned(),
                top,
                blobs: Box::new(PeerBlobs {
                    runtime: std::sync::Arc::clone(&self.runtime),
                    tamper: (self.tamper == Tamper::Config).then_some(config),
                }),
            }))
        })
    }
}

struct PeerBlobs {
    runtime: std::sync::Arc<Runtime>,
    /// The configuration digest whose bytes are altered.
    tamper: Option<String>,
}

impl Blobs for PeerBlobs {
    fn blob<'a>(
        &'a self,
        digest: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Chunks, SourceError>> {
        use futures::StreamExt as _;
        Box::pin(async move {
            let (_, chunks) = self
                .runtime
                .images()
                .blob(digest)
                .await?
                .ok_or_else(|| format!("no blob {digest}"))?;
            if self.tamper.as_deref() == Some(digest) {
                let extra = futures::stream::iter([Ok(bytes::Bytes::from_static(b" "))]);
                return Ok(chunks.chain(extra).boxed());
            }
            Ok(chunks)
        })
    }
}

/// An image only another board has (here another containerd namespace): `ensure` fetches it
/// from there (no registry is involved) and it runs. What the other board sends is checked: a
/// top document or configuration whose bytes are not what its digest says is refused with a
/// clear error and nothing is created. A source without the image leaves the pull policy's
/// answer as before.
async fn an_image_another_board_has_is_fetched_from_it_and_checked() -> TestResult {
    let (tx, rx) = (setup("source").await?, setup("fetcher").await?);
    let (archive, built) = bramble_testkit::images::fixture_image_with_env(
        tx.env.scratch(),
        "docker.io/team/shared:1",
        None,
        &[("BODY", "shared")],
    )?;
    tx.runtime
        .images()
        .import(&archive, None, &no_progress)
        .await?;
    let reference = ImageRef::parse("docker.io/team/shared:1")?;
    let name = reference.to_string();
    let source = std::sync::Arc::new(tx.runtime);

    for tamper in [Tamper::Top, Tamper::Config] {
        let fetcher = Runtime::new(rx.env.config.clone())?;
        fetcher.images().set_source(std::sync::Arc::new(Peer {
            runtime: std::sync::Arc::clone(&source),
            tamper,
        }));
        let err = fetcher
            .images()
            .ensure(&reference, PullPolicy::Never, &no_progress)
            .await
            .unwrap_err();
        assert!(
            err.chain().contains("board peer sent sha256:"),
            "{tamper:?}: {}",
            err.chain()
        );
        assert!(fetcher.images().get(&name).await?.is_none(), "{tamper:?}");
    }

    let fetcher = Runtime::new(rx.env.config.clone())?;
    fetcher.images().set_source(std::sync::Arc::new(Peer {
        runtime: std::sync::Arc::clone(&source),
        tamper: Tamper::Nothing,
    }));
    let started = Instant::now();
    let image = fetcher
        .images()
        .ensure(&reference, PullPolicy::Never, &no_progress)
        .await?;
    println!(
        "measured: fetched from the other namespace in {:?}",
        started.elapsed()
    );
    assert_eq!(image.manifest_digest, built.manifest_digest);
    assert!(image.unpacked);
    let addr = run_healthy(&fetcher, &spec("shared", &image)).await?;
    let answer = http::get(addr, "/").await?;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), "shared");
    fetcher.delete("shared", Duration::from_secs(5)).await?;

    // An image no board has: Never says it is not present, as without a source.
    let absent = ImageRef::parse("docker.io/team/absent:1")?;
    let err = fetcher
        .images()
        .ensure(&absent, PullPolicy::Never, &no_progress)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ImageNotPresent { .. }), "{err:?}");
    Ok(())
}
