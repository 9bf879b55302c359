//! Tests of the testkit itself: private containerd, private registry, fixture builds.

use std::collections::BTreeSet;
use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use bramble_testkit::harness::{self, Failed, Need, Trial};
use bramble_testkit::{Containerd, Registry, fixture, write_docker_config};

/// Child-process mode of this binary, used by the concurrent-build test.
const CHILD_ENV: &str = "BRAMBLE_TESTKIT_CHILD";

fn main() {
    if let Some(job) = std::env::var_os(CHILD_ENV) {
        child(&job.to_string_lossy());
    }
    let trials = vec![
        Trial::test(
            "containerd::starts_and_serves_ctr",
            containerd_starts_and_serves_ctr,
        ),
        Trial::test(
            "containerd::startup_failure_reports_the_log",
            containerd_startup_failure_reports_the_log,
        ),
        Trial::test(
            "containerd::two_instances_at_once",
            containerd_two_instances_at_once,
        ),
        Trial::test(
            "containerd::restart_keeps_tasks_and_drop_cleans_up",
            containerd_restart_keeps_tasks_and_drop_cleans_up,
        ),
        Trial::test(
            "registry::push_inspect_count_stop",
            registry_push_inspect_count_stop,
        ),
        Trial::test("registry::basic_auth", registry_basic_auth),
        Trial::test("fixture::binary_is_static", fixture_binary_is_static),
        Trial::test(
            "fixture::concurrent_builds_in_two_processes",
            fixture_concurrent_builds,
        ),
        Trial::test(
            "fixture::is_static_elf_rejects_dynamic",
            fixture_is_static_elf_rejects_dynamic,
        ),
    ];
    harness::main(
        &[
            Need::Root,
            Need::Binary("containerd"),
            Need::Binary("ctr"),
            Need::Binary("runc"),
            Need::Binary("docker-registry"),
            Need::Binary("skopeo"),
            Need::Binary("umoci"),
            Need::Binary("htpasswd"),
            Need::Binary("tar"),
        ],
        trials,
    )
}

/// `build <source> <out_dir>` or `fixture`: prints the built path and exits.
fn child(job: &str) -> ! {
    let result = match job.split('\n').collect::<Vec<_>>().as_slice() {
        ["build", source, out_dir] => {
            fixture::build_static_binary(Path::new(source), "concurrent", Path::new(out_dir))
        }
        ["fixture"] => fixture::fixture_binary(),
        _ => Err(std::io::Error::other(format!("unknown child job {job:?}"))),
    };
    match result {
        Ok(path) => {
            println!("{}", path.display());
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1)
        }
    }
}

type TestResult = Result<(), Failed>;

fn fail(message: impl std::fmt::Display) -> Failed {
    Failed::from(message.to_string())
}

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(fail(format!($($msg)+)));
        }
    };
}

/// Runs a command; the error says what ran and what it printed.
fn run(command: &mut Command) -> Result<Output, Failed> {
    let shown = format!("{command:?}");
    let output = command
        .output()
        .map_err(|e| fail(format!("{shown}: {e}")))?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(fail(format!(
            "{shown} failed ({}):\nstdout: {}\nstderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )))
    }
}

fn ctr(containerd: &Containerd, args: &[&str]) -> Result<String, Failed> {
    let output = run(Command::new("ctr")
        .arg("--address")
        .arg(containerd.socket())
        .args(args))
    .map_err(|e| {
        fail(format!(
            "{}\ncontainerd log:\n{}",
            e.message().unwrap_or_default(),
            containerd.log_tail(20)
        ))
    })?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A containerd namespace unique to this test process and test.
fn namespace(test: &str) -> String {
    format!("tk-{test}-{}", std::process::id())
}

/// An OCI archive (tar of an OCI layout) holding one image whose entrypoint is a static binary
/// that sleeps for an hour.
fn sleeper_archive(dir: &Path) -> Result<PathBuf, Failed> {
    let source = dir.join("sleeper.rs");
    fs::write(
        &source,
        "fn main() { std::thread::sleep(std::time::Duration::from_secs(3600)); }\n",
    )
    .map_err(fail)?;
    let binary =
        fixture::build_static_binary(&source, "sleeper", &fixture::fixture_dir()).map_err(fail)?;
    let layout = dir.join("layout");
    let bundle = dir.join("bundle");
    let image = format!("{}:latest", layout.display());
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout))?;
    run(Command::new("umoci").args(["new", "--image", &image]))?;
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&bundle))?;
    fs::copy(&binary, bundle.join("rootfs/sleeper")).map_err(fail)?;
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle))?;
    run(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.entrypoint",
        "/sleeper",
    ]))?;
    let archive = dir.join("sleeper.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&archive)
        .arg("."))?;
    Ok(archive)
}

/// Live (non-zombie) processes among `pids`.
fn alive(pids: &BTreeSet<i32>) -> Vec<i32> {
    pids.iter().copied().filter(|&pid| is_alive(pid)).collect()
}

fn is_alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next().map(str::to_owned))
        })
        .is_some_and(|state| state != "Z" && state != "X")
}

/// Live processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) && is_alive(pid) && pid != std::process::id() as i32 {
            found.push((pid, cmdline));
        }
    }
    found
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().into_owned();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&prefix)))
        .map(str::to_owned)
        .collect()
}

/// Checks that nothing of a dropped instance is left: process, mount, directory.
fn assert_gone(dir: &Path, socket: &Path) -> TestResult {
    ensure!(!dir.exists(), "{} still exists after drop", dir.display());
    let mounts = mounts_under(dir);
    ensure!(
        mounts.is_empty(),
        "mounts left under {}: {mounts:#?}",
        dir.display()
    );
    let processes = processes_mentioning(&socket.to_string_lossy());
    ensure!(
        processes.is_empty(),
        "processes left for {}: {processes:?}",
        socket.display()
    );
    let processes = processes_mentioning(&dir.to_string_lossy());
    ensure!(
        processes.is_empty(),
        "processes left for {}: {processes:?}",
        dir.display()
    );
    Ok(())
}

fn containerd_starts_and_serves_ctr() -> TestResult {
    let mut containerd = Containerd::start().map_err(fail)?;
    let dir = containerd.dir().to_path_buf();
    let socket = containerd.socket().to_path_buf();
    ensure!(
        socket.as_os_str().len() < 108,
        "socket path too long: {}",
        socket.display()
    );
    ensure!(
        socket.starts_with(&dir)
            && containerd.root().starts_with(&dir)
            && containerd.state().starts_with(&dir),
        "paths outside {}",
        dir.display()
    );
    let version = ctr(&containerd, &["version"])?;
    ensure!(
        version.contains("Server:"),
        "unexpected `ctr version` output:\n{version}"
    );
    let images = ctr(&containerd, &["-n", "t", "images", "ls"])?;
    ensure!(
        images.starts_with("REF"),
        "unexpected `ctr images ls` output:\n{images}"
    );
    ensure!(
        containerd
            .log_tail(50)
            .contains("containerd successfully booted"),
        "log:\n{}",
        containerd.log_tail(50)
    );

    let first = containerd.pid().ok_or_else(|| fail("no pid"))?;
    ensure!(
        containerd.start_again().is_err(),
        "start_again while running must fail"
    );
    containerd.restart().map_err(fail)?;
    let second = containerd
        .pid()
        .ok_or_else(|| fail("no pid after restart"))?;
    ensure!(first != second, "restart kept pid {first}");
    ensure!(
        !is_alive(first as i32),
        "old containerd {first} still alive"
    );
    ctr(&containerd, &["version"])?;
    containerd.kill();
    containerd.kill();
    ensure!(containerd.pid().is_none(), "pid after kill");
    ensure!(
        ctr(&containerd, &["version"]).is_err(),
        "ctr works after kill"
    );
    containerd.start_again().map_err(fail)?;
    ctr(&containerd, &["version"])?;

    drop(containerd);
    ensure!(
        !is_alive(second as i32),
        "containerd {second} alive after drop"
    );
    assert_gone(&dir, &socket)
}

fn containerd_startup_failure_reports_the_log() -> TestResult {
    let mut containerd = Containerd::start().map_err(fail)?;
    let dir = containerd.dir().to_path_buf();
    let socket = containerd.socket().to_path_buf();
    containerd.kill();
    fs::write(dir.join("config.toml"), "version = 2\nroot = [\n").map_err(fail)?;
    let started = Instant::now();
    let error = match containerd.start_again() {
        Ok(()) => return Err(fail("containerd started with a broken config")),
        Err(e) => e.to_string(),
    };
    ensure!(
        started.elapsed().as_secs() < 10,
        "failure took {:?}",
        started.elapsed()
    );
    ensure!(
        error.contains("exited during startup") && error.contains("failed to load TOML"),
        "error without log tail: {error}"
    );
    drop(containerd);
    assert_gone(&dir, &socket)
}

fn containerd_two_instances_at_once() -> TestResult {
    let handles: Vec<_> = (0..2)
        .map(|_| std::thread::spawn(Containerd::start))
        .collect();
    let mut instances = Vec::new();
    for handle in handles {
        instances.push(
            handle
                .join()
                .map_err(|_| fail("start panicked"))?
                .map_err(fail)?,
        );
    }
    ensure!(
        instances[0].socket() != instances[1].socket(),
        "both instances share a socket"
    );
    for containerd in &instances {
        ctr(containerd, &["version"])?;
        ctr(containerd, &["-n", "t", "images", "ls"])?;
    }
    let leftovers: Vec<(PathBuf, PathBuf)> = instances
        .iter()
        .map(|c| (c.dir().to_path_buf(), c.socket().to_path_buf()))
        .collect();
    drop(instances);
    for (dir, socket) in leftovers {
        assert_gone(&dir, &socket)?;
    }
    Ok(())
}

fn containerd_restart_keeps_tasks_and_drop_cleans_up() -> TestResult {
    let work = tempfile::tempdir().map_err(fail)?;
    let archive = sleeper_archive(work.path())?;
    let mut containerd = Containerd::start().map_err(fail)?;
    let ns = namespace("restart");
    let id = "sleeper";
    let archive_arg = archive.to_string_lossy().into_owned();
    ctr(
        &containerd,
        &[
            "-n",
            &ns,
            "images",
            "import",
            "--base-name",
            "testkit/sleeper",
            &archive_arg,
        ],
    )?;
    let fifo_dir = containerd.dir().join("fifo");
    let fifo_arg = fifo_dir.to_string_lossy().into_owned();
    ctr(
        &containerd,
        &[
            "-n",
            &ns,
            "run",
            "-d",
            "--fifo-dir",
            &fifo_arg,
            "testkit/sleeper:latest",
            id,
        ],
    )?;

    let task_pid = |containerd: &Containerd| -> Result<i32, Failed> {
        let tasks = ctr(containerd, &["-n", &ns, "tasks", "ls"])?;
        tasks
            .lines()
            .find_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                (cols.first() == Some(&id) && cols.get(2) == Some(&"RUNNING"))
                    .then(|| cols.get(1)?.parse().ok())?
            })
            .ok_or_else(|| fail(format!("no running task {id}:\n{tasks}")))
    };
    let container = task_pid(&containerd)?;
    let shims = containerd.shim_pids();
    ensure!(shims.len() == 1, "expected one shim, found {shims:?}");

    // A crash: containerd dies, shim and container live on; the new containerd finds them.
    containerd.kill();
    ensure!(
        is_alive(container) && is_alive(shims[0]),
        "container or shim died with containerd"
    );
    containerd.start_again().map_err(fail)?;
    ensure!(
        task_pid(&containerd)? == container,
        "task changed across restart"
    );
    containerd.restart().map_err(fail)?;
    ensure!(
        task_pid(&containerd)? == container,
        "task changed across second restart"
    );
    ensure!(
        containerd.shim_pids() == shims,
        "shims changed: {:?} vs {shims:?}",
        containerd.shim_pids()
    );

    // What drop must clean up beyond the directory.
    let dir = containerd.dir().to_path_buf();
    let socket = containerd.socket().to_path_buf();
    let runc_state = PathBuf::from("/run/containerd/runc").join(&ns).join(id);
    let state: serde_json::Value =
        serde_json::from_slice(&fs::read(runc_state.join("state.json")).map_err(fail)?)
            .map_err(fail)?;
    let cgroups: Vec<PathBuf> = state["cgroup_paths"]
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
        .filter_map(|v| v.as_str().map(PathBuf::from))
        .collect();
    ensure!(
        !cgroups.is_empty() && cgroups.iter().any(|c| c.exists()),
        "no cgroups recorded: {state}"
    );
    let shim_address = fs::read_to_string(
        containerd
            .state()
            .join("io.containerd.runtime.v2.task")
            .join(&ns)
            .join(id)
            .join("address"),
    )
    .map_err(fail)?;
    let shim_socket = PathBuf::from(shim_address.trim().trim_start_matches("unix://"));
    ensure!(
        shim_socket.exists(),
        "shim socket {} missing",
        shim_socket.display()
    );
    ensure!(
        !mounts_under(&dir).is_empty(),
        "expected the container's rootfs mount under {}",
        dir.display()
    );

    let watched: BTreeSet<i32> = shims.iter().copied().chain([container]).collect();
    drop(containerd);
    let left = alive(&watched);
    ensure!(left.is_empty(), "processes alive after drop: {left:?}");
    assert_gone(&dir, &socket)?;
    ensure!(
        !runc_state.exists(),
        "runc state {} left",
        runc_state.display()
    );
    // The namespace is unique to this test, so its parent directories go too.
    let runc_namespace = runc_state.parent().ok_or_else(|| fail("no parent"))?;
    ensure!(
        !runc_namespace.exists(),
        "{} left",
        runc_namespace.display()
    );
    let cgroups_left: Vec<&Path> = cgroups
        .iter()
        .flat_map(|c| [c.as_path(), c.parent().unwrap_or(c)])
        .filter(|c| c.exists())
        .collect();
    ensure!(cgroups_left.is_empty(), "cgroups left: {cgroups_left:?}");
    ensure!(
        !shim_socket.exists(),
        "shim socket {} left",
        shim_socket.display()
    );
    Ok(())
}

fn skopeo_inspect(registry: &Registry, reference: &str, extra: &[&str]) -> Result<Output, Failed> {
    // An empty auth file keeps the machine's own credentials out of the test.
    let authfile = registry.dir().join("empty-auth.json");
    let mut command = Command::new("skopeo");
    command
        .args(["inspect", "--tls-verify=false", "--authfile"])
        .arg(&authfile)
        .args(extra);
    command.arg(format!("docker://{reference}"));
    command
        .output()
        .map_err(|e| fail(format!("skopeo inspect: {e}")))
}

fn registry_push_inspect_count_stop() -> TestResult {
    let work = tempfile::tempdir().map_err(fail)?;
    let archive = sleeper_archive(work.path())?;
    let mut registry = Registry::start(None).map_err(fail)?;
    ensure!(
        registry.host().starts_with("127.0.0.1:"),
        "host {}",
        registry.host()
    );
    let fresh = registry.request_count().map_err(fail)?;
    ensure!(fresh == 0, "fresh registry counted {fresh}");

    let reference = registry
        .push_oci_archive(&archive, "testkit/sleeper:v1")
        .map_err(fail)?;
    ensure!(
        reference == format!("{}/testkit/sleeper:v1", registry.host()),
        "reference {reference}"
    );
    let after_push = registry.request_count().map_err(fail)?;
    ensure!(
        after_push > 0,
        "push not counted:\n{}",
        registry.log_tail(20)
    );

    let inspect = skopeo_inspect(&registry, &reference, &[])?;
    ensure!(
        inspect.status.success(),
        "inspect failed: {}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    ensure!(
        String::from_utf8_lossy(&inspect.stdout).contains("\"Digest\": \"sha256:"),
        "inspect output"
    );
    let after_inspect = registry.request_count().map_err(fail)?;
    ensure!(
        after_inspect > after_push,
        "inspect not counted ({after_inspect} after {after_push})"
    );
    ensure!(
        registry.request_count().map_err(fail)? == after_inspect,
        "counting changed the count"
    );

    let missing = work.path().join("missing.tar");
    let error = match registry.push_oci_archive(&missing, "testkit/missing:v1") {
        Ok(reference) => return Err(fail(format!("pushed a missing archive as {reference}"))),
        Err(e) => e.to_string(),
    };
    ensure!(
        error.contains("skopeo copy") && error.contains("missing.tar"),
        "error: {error}"
    );

    let addr = registry.host();
    registry.stop();
    ensure!(
        TcpStream::connect(&addr).is_err(),
        "{addr} still accepts connections after stop"
    );
    ensure!(
        registry.request_count().map_err(fail)? == after_inspect,
        "count changed after stop"
    );
    let dir = registry.dir().to_path_buf();
    drop(registry);
    ensure!(!dir.exists(), "{} left after drop", dir.display());
    Ok(())
}

fn registry_basic_auth() -> TestResult {
    let work = tempfile::tempdir().map_err(fail)?;
    let archive = sleeper_archive(work.path())?;
    let registry = Registry::start(Some(("tester", "s3cret pass"))).map_err(fail)?;
    ensure!(
        registry.credentials() == Some(("tester", "s3cret pass")),
        "credentials"
    );
    let reference = registry
        .push_oci_archive(&archive, "private/sleeper:v1")
        .map_err(fail)?;

    let before = registry.request_count().map_err(fail)?;
    let anonymous = skopeo_inspect(&registry, &reference, &[])?;
    ensure!(
        !anonymous.status.success(),
        "anonymous inspect succeeded on an auth registry"
    );
    let stderr = String::from_utf8_lossy(&anonymous.stderr);
    ensure!(
        stderr.contains("unauthorized") || stderr.contains("authentication required"),
        "unexpected error: {stderr}"
    );
    let after_anonymous = registry.request_count().map_err(fail)?;
    ensure!(after_anonymous > before, "rejected request not counted");

    let wrong = skopeo_inspect(&registry, &reference, &["--creds", "tester:wrong"])?;
    ensure!(
        !wrong.status.success(),
        "inspect with a wrong password succeeded"
    );

    let with_creds = skopeo_inspect(&registry, &reference, &["--creds", "tester:s3cret pass"])?;
    ensure!(
        with_creds.status.success(),
        "inspect with creds failed: {}",
        String::from_utf8_lossy(&with_creds.stderr)
    );

    let config = write_docker_config(work.path(), &registry.host(), "tester", "s3cret pass")
        .map_err(fail)?;
    let output = run(Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--authfile"])
        .arg(&config)
        .arg(format!("docker://{reference}")))?;
    ensure!(
        String::from_utf8_lossy(&output.stdout).contains("sha256:"),
        "inspect via docker config"
    );
    ensure!(
        registry.request_count().map_err(fail)? > after_anonymous,
        "authorized requests not counted"
    );
    Ok(())
}

fn fixture_binary_is_static() -> TestResult {
    let started = Instant::now();
    let binary = fixture::fixture_binary().map_err(fail)?;
    let first = started.elapsed();
    ensure!(
        binary.starts_with(fixture::fixture_dir()),
        "{} outside target/fixture",
        binary.display()
    );
    let name = binary
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let hash = name.strip_prefix("fixture-fn-").unwrap_or_default();
    ensure!(
        hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()),
        "name {name}"
    );
    ensure!(
        fixture::is_static_elf(&binary).map_err(fail)?,
        "{} has a PT_INTERP",
        binary.display()
    );
    if let Ok(output) = Command::new("file").arg(&binary).output() {
        let text = String::from_utf8_lossy(&output.stdout);
        ensure!(
            text.contains("statically linked") || text.contains("static-pie"),
            "file says: {text}"
        );
    }
    let again = fixture::fixture_binary().map_err(fail)?;
    ensure!(again == binary, "memoised path changed");
    eprintln!("fixture binary {} ({first:?})", binary.display());
    Ok(())
}

fn fixture_concurrent_builds() -> TestResult {
    let work = tempfile::tempdir().map_err(fail)?;
    let source = work.path().join("concurrent.rs");
    // Unique code, so that this is a cold build.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(fail)?
        .as_nanos();
    let nonce = format!("{}-{nanos}", std::process::id());
    fs::write(&source, format!("fn main() {{ println!(\"{nonce}\"); }}\n")).map_err(fail)?;
    let out_dir = work.path().join("out");
    let exe = std::env::current_exe().map_err(fail)?;
    let spawn = |job: String| {
        Command::new(&exe)
            .env(CHILD_ENV, job)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
    };

    let jobs = [
        format!("build\n{}\n{}", source.display(), out_dir.display()),
        format!("build\n{}\n{}", source.display(), out_dir.display()),
        "fixture".to_owned(),
        "fixture".to_owned(),
    ];
    let children: Vec<_> = jobs
        .iter()
        .map(|j| spawn(j.clone()))
        .collect::<Result<_, _>>()
        .map_err(fail)?;
    let mut paths = Vec::new();
    for child in children {
        let output = child.wait_with_output().map_err(fail)?;
        ensure!(
            output.status.success(),
            "child failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        paths.push(PathBuf::from(
            String::from_utf8_lossy(&output.stdout).trim(),
        ));
    }
    ensure!(paths[0] == paths[1], "two builds gave {paths:?}");
    ensure!(paths[2] == paths[3], "two fixture builds gave {paths:?}");
    ensure!(
        paths[2] == fixture::fixture_binary().map_err(fail)?,
        "fixture path differs from this process's"
    );
    let built = Command::new(&paths[0]).output().map_err(fail)?;
    ensure!(
        String::from_utf8_lossy(&built.stdout).trim() == nonce,
        "built program printed {:?}",
        built.stdout
    );

    let mut entries: Vec<String> = fs::read_dir(&out_dir)
        .map_err(fail)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    ensure!(
        entries.len() == 2 && entries[0] == ".lock" && entries[1].starts_with("concurrent-"),
        "out dir holds {entries:?}"
    );
    Ok(())
}

fn fixture_is_static_elf_rejects_dynamic() -> TestResult {
    let sh = fs::canonicalize("/bin/sh").map_err(fail)?;
    ensure!(
        !fixture::is_static_elf(&sh).map_err(fail)?,
        "{} reported static",
        sh.display()
    );
    let work = tempfile::tempdir().map_err(fail)?;
    let text = work.path().join("script");
    fs::write(
        &text,
        "#!/bin/sh\necho this is not an ELF file, but it is longer than sixty-four bytes\n",
    )
    .map_err(fail)?;
    ensure!(
        !fixture::is_static_elf(&text).map_err(fail)?,
        "a script reported static"
    );
    Ok(())
}
