//! The operator commands of a board, run as the real binary: `bramble doctor` against a
//! private containerd, `bramble install` / `bramble uninstall` into a temporary root checked
//! by `systemd-analyze verify`, and `bramble up`'s systemd notifications to a socket of the
//! test's.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use bramble_agent::config::Config;
use bramble_testkit::harness::{self, Failed, Need, Suite};
use bramble_testkit::{Containerd, Node, TestEnv};
use serde_json::Value;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const BRAMBLE: &str = env!("CARGO_BIN_EXE_bramble");
const UNIT: &str = "etc/systemd/system/bramble.service";
const SYSCTL: &str = "etc/sysctl.d/99-bramble.conf";
const STATE: &str = "var/lib/bramble";

/// The tests of this module, as a part of the `it` binary.
pub(crate) fn suite() -> Suite {
    let needs = [
        Need::Root,
        Need::Binary("containerd"),
        Need::Binary("systemd-analyze"),
        Need::Binary("systemctl"),
        Need::Binary("unshare"),
    ];
    Suite::new("ops", &needs)
        .trial("doctor_reports_a_reachable_containerd", || {
            harness::block_on(doctor_reports_a_reachable_containerd())
        })
        .async_trial(
            "up_notifies_ready_watchdog_and_stopping",
            up_notifies_ready_watchdog_and_stopping,
        )
        .trial(
            "doctor_and_up_name_a_mount_namespace_apart_from_containerd",
            blocking(doctor_and_up_name_a_mount_namespace_apart_from_containerd),
        )
        .trial(
            "doctor_names_containerd_and_the_fix_when_it_is_missing",
            blocking(doctor_names_containerd_and_the_fix_when_it_is_missing),
        )
        .trial(
            "install_writes_a_unit_systemd_analyze_verify_accepts",
            blocking(install_writes_a_unit_systemd_analyze_verify_accepts),
        )
        .trial(
            "install_prepares_state_and_config_and_twice_changes_nothing",
            blocking(install_prepares_state_and_config_and_twice_changes_nothing),
        )
        .trial(
            "uninstall_keeps_state_and_purge_removes_it",
            blocking(uninstall_keeps_state_and_purge_removes_it),
        )
}

/// A trial body that blocks, from a test function.
fn blocking(body: fn() -> TestResult) -> impl FnOnce() -> Result<(), Failed> + Send + 'static {
    move || body().map_err(|e| e.to_string().into())
}

/// Runs the binary.
fn bramble(args: &[&str]) -> std::io::Result<Output> {
    Command::new(BRAMBLE)
        .args(args)
        .env("BRAMBLE_LOG", "warn")
        .output()
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A configuration file of its own, so that the host's /etc/bramble plays no part.
fn doctor_args(dir: &Path, socket: &Path) -> Vec<String> {
    let config = dir.join("config.toml");
    std::fs::write(&config, "").unwrap();
    [
        "doctor",
        "--config",
        config.to_str().unwrap(),
        "--containerd-socket",
        socket.to_str().unwrap(),
        "--state-dir",
        dir.join("state").to_str().unwrap(),
    ]
    .map(str::to_owned)
    .to_vec()
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {report}"))
}

async fn doctor_reports_a_reachable_containerd() -> TestResult {
    let containerd = Containerd::start()?;
    let version = bramble_runtime::client::Connection::new(
        containerd.socket(),
        "openfaas-fn",
        Duration::from_secs(10),
    )?
    .version()
    .await?;
    let dir = tempfile::tempdir()?;
    let args = doctor_args(dir.path(), containerd.socket());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    let output = bramble(&args)?;
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("ok        containerd "))
        .unwrap_or_else(|| panic!("no containerd line in\n{stdout}"));
    assert!(line.contains(&version), "{version} not in {line}");
    assert!(!stdout.contains("BLOCKING"), "{stdout}");

    let output = bramble(&[args.as_slice(), &["--json"]].concat())?;
    assert_eq!(output.status.code(), Some(0));
    let report: Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["blocking"], 0, "{report}");
    let containerd_check = check(&report, "containerd");
    assert_eq!(containerd_check["status"], "ok");
    assert!(
        containerd_check["detail"]
            .as_str()
            .unwrap()
            .contains(&version)
    );
    assert_eq!(check(&report, "configuration")["status"], "ok");
    Ok(())
}

/// bramble in a mount namespace of its own (as under `PrivateMounts=`, `ProtectSystem=` or
/// `ip netns exec`) against a containerd outside it: `bramble doctor` names the cause and the
/// fix as blocking, and `bramble up` refuses to start, before it creates any state, instead of
/// crash-looping every function on runc's "can't get final child's PID from pipe: EOF".
fn doctor_and_up_name_a_mount_namespace_apart_from_containerd() -> TestResult {
    let containerd = Containerd::start()?;
    let containerd_pid = containerd.pid().ok_or("containerd has no pid")?;
    let dir = tempfile::tempdir()?;
    let args = doctor_args(dir.path(), containerd.socket());
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.push("--json");
    let apart = |args: &[&str]| {
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", BRAMBLE])
            .args(args)
            .env("BRAMBLE_LOG", "warn")
            .output()
    };

    // The same mount namespace: fine, and the process found is containerd (by the socket's
    // peer credentials).
    let output = bramble(&args)?;
    let report: Value = serde_json::from_slice(&output.stdout)?;
    let found = check(&report, "mount namespace");
    assert_eq!(found["status"], "ok", "{report}");
    let detail = found["detail"].as_str().unwrap();
    assert!(
        detail.starts_with(&format!(
            "shared with containerd (pid {containerd_pid}, mnt:["
        )),
        "{detail}"
    );

    let output = apart(&args)?;
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1), "{stdout}{stderr}");
    let report: Value = serde_json::from_slice(&output.stdout)?;
    let found = check(&report, "mount namespace");
    assert_eq!(found["status"], "blocking", "{report}");
    let detail = found["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!(") and containerd (pid {containerd_pid}, mnt:["))
            && detail.contains("are in different mount namespaces")
            && detail.contains("can't get final child's PID from pipe: EOF"),
        "{detail}"
    );
    let fix = found["fix"].as_str().unwrap();
    assert!(
        fix.contains("PrivateMounts=") && fix.contains("nsenter --net="),
        "{fix}"
    );
    // Everything else about containerd is fine from there.
    assert_eq!(check(&report, "containerd")["status"], "ok", "{report}");

    // `bramble up` from there: refused at once, nothing created.
    let state = dir.path().join("state");
    let run = dir.path().join("run");
    let config = dir.path().join("config.toml");
    let mut up = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", BRAMBLE, "up"])
        .args(["--config", config.to_str().unwrap()])
        .args(["--containerd-socket", containerd.socket().to_str().unwrap()])
        .args(["--state-dir", state.to_str().unwrap()])
        .args(["--run-dir", run.to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0"])
        .env("BRAMBLE_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while up.try_wait()?.is_none() {
        if std::time::Instant::now() > deadline {
            up.kill()?;
            let output = up.wait_with_output()?;
            let (stdout, stderr) = text(&output);
            return Err(format!(
                "bramble up kept running in another mount namespace:\n{stdout}{stderr}"
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = up.wait_with_output()?;
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("refusing to start: bramble (mnt:[")
            && stderr.contains("are in different mount namespaces")
            && stderr.contains("fix: run bramble in containerd's mount namespace"),
        "{stderr}"
    );
    assert!(
        !state.exists(),
        "the refused start created {}",
        state.display()
    );
    Ok(())
}

/// The next notification on `socket`, within `timeout`.
async fn notification(
    socket: &tokio::net::UnixDatagram,
    timeout: Duration,
) -> Result<String, Box<dyn std::error::Error>> {
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(timeout, socket.recv(&mut buf))
        .await
        .map_err(|_| format!("no notification within {timeout:?}"))??;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// `bramble up` as systemd runs a `Type=notify` unit with `WatchdogSec=`: READY=1 once its
/// gateway answers, WATCHDOG=1 at half the interval while it works, STOPPING=1 on SIGTERM.
/// Its output (the journal, under systemd) names the password file, never the password.
async fn up_notifies_ready_watchdog_and_stopping() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&path)?;
    // A 400 ms watchdog: a ping every 200 ms.
    let watchdog = Duration::from_millis(400);
    let mut node = Node::start_with_env(
        Path::new(BRAMBLE),
        TestEnv::new("notify")?,
        "",
        vec![
            ("NOTIFY_SOCKET".into(), path.clone().into()),
            (
                "WATCHDOG_USEC".into(),
                watchdog.as_micros().to_string().into(),
            ),
        ],
    )?;

    let first = notification(&socket, Duration::from_secs(30)).await?;
    assert_eq!(
        first,
        "READY=1",
        "the first notification\n{}",
        node.log_tail(20)
    );
    let health = node.call("GET", "/healthz", &[], b"").await?;
    assert_eq!(
        health.status, 200,
        "the gateway answers once READY=1 is sent"
    );

    // Repeated pings, each within ten intervals, and nothing but pings meanwhile.
    for _ in 0..5 {
        let message = notification(&socket, watchdog * 10).await?;
        assert_eq!(message, "WATCHDOG=1", "after READY=1");
    }

    let status = node.stop()?;
    assert!(
        status.success(),
        "bramble up after SIGTERM: {status}\n{}",
        node.log_tail(20)
    );
    let mut after = Vec::new();
    loop {
        let message = notification(&socket, Duration::from_secs(5)).await?;
        if message == "STOPPING=1" {
            break;
        }
        assert_eq!(message, "WATCHDOG=1", "before STOPPING=1 (after {after:?})");
        after.push(message);
    }

    let (user, password) = node.credentials()?;
    let log = node.log_tail(200);
    assert!(
        !log.contains(&password),
        "the generated password was printed:\n{log}"
    );
    let password_file = node.state_dir().join("secrets/basic-auth-password");
    assert!(
        log.contains(&format!(
            "generated new API credentials for user {user}: read the password from {}",
            password_file.display()
        )),
        "{log}"
    );
    Ok(())
}

fn doctor_names_containerd_and_the_fix_when_it_is_missing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("no-containerd.sock");
    let args = doctor_args(dir.path(), &socket);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    let output = bramble(&args)?;
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1), "{stdout}{stderr}");
    let mut lines = stdout
        .lines()
        .skip_while(|l| !l.starts_with("BLOCKING  containerd "));
    let line = lines.next().unwrap_or_else(|| panic!("{stdout}"));
    assert!(line.contains(&socket.display().to_string()), "{line}");
    let fix = lines.next().unwrap();
    assert!(
        fix.trim_start()
            .starts_with("fix: systemctl enable --now containerd"),
        "{fix}"
    );
    assert!(stderr.contains("blocking problem"), "{stderr}");

    let output = bramble(&[args.as_slice(), &["--json"]].concat())?;
    assert_eq!(output.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(report["ok"], false);
    let containerd = check(&report, "containerd");
    assert_eq!(containerd["status"], "blocking");
    assert!(
        containerd["fix"]
            .as_str()
            .unwrap()
            .starts_with("systemctl enable --now containerd")
    );

    // A broken configuration is a finding too, and the other checks still run.
    std::fs::write(dir.path().join("config.toml"), "lisen = \"x\"\n")?;
    let output = bramble(&[args.as_slice(), &["--json"]].concat())?;
    assert_eq!(output.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&output.stdout)?;
    let configuration = check(&report, "configuration");
    assert_eq!(configuration["status"], "blocking");
    assert!(
        configuration["detail"].as_str().unwrap().contains("lisen"),
        "{configuration}"
    );
    assert_eq!(check(&report, "runc")["status"], "ok");
    Ok(())
}

/// `bramble install --root DIR --no-start`, checked to succeed.
fn install(root: &Path) -> Result<String, Box<dyn std::error::Error>> {
    let output = bramble(&["install", "--root", root.to_str().unwrap(), "--no-start"])?;
    let (stdout, stderr) = text(&output);
    if !output.status.success() {
        return Err(format!("install failed: {stdout}{stderr}").into());
    }
    Ok(stdout)
}

/// `systemd-analyze verify --root=ROOT UNIT`: exit status and everything it printed.
fn verify(root: &Path, unit: &Path) -> (bool, String) {
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .arg(unit)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&output);
    (output.status.success(), format!("{stdout}{stderr}"))
}

fn install_writes_a_unit_systemd_analyze_verify_accepts() -> TestResult {
    let root = tempfile::tempdir()?;
    let root = root.path();
    install(root)?;
    let unit = root.join(UNIT);
    let text = std::fs::read_to_string(&unit)?;
    for line in [
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=30s",
        "Restart=always",
        "RestartSec=2s",
        "After=containerd.service network-online.target",
        "Requires=containerd.service",
        "Wants=network-online.target",
        "ExecStart=/usr/local/bin/bramble up",
        "KillMode=process",
        "TimeoutStopSec=45s",
        "LimitNOFILE=65536",
        "OOMScoreAdjust=-500",
        "WantedBy=multi-user.target",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
    }
    for key in [
        "PrivateTmp",
        "ProtectSystem",
        "PrivateMounts",
        "ReadWritePaths",
        "ProtectHome",
    ] {
        assert!(
            !text.lines().any(|l| l.starts_with(key)),
            "{key} in\n{text}"
        );
    }
    let binary = root.join("usr/local/bin/bramble");
    assert!(std::fs::metadata(&binary)?.permissions().mode() & 0o111 != 0);

    // verify loads the unit's Requires= (containerd.service, and sysinit.target through the
    // default dependencies) from the root: give it the unit library of this system, as an
    // image with systemd and containerd has.
    let (ok, out) = verify(root, &unit);
    assert!(
        !ok && out.contains("not found"),
        "without units to depend on: {out}"
    );
    copy_dir(
        Path::new("/usr/lib/systemd/system"),
        &root.join("usr/lib/systemd/system"),
    )?;
    let (ok, out) = verify(root, &unit);
    assert!(ok && out.trim().is_empty(), "systemd-analyze verify: {out}");

    // verify does look at what matters: ExecStart inside the root, and every key and value
    // (which it only warns about, hence the check for empty output above).
    std::fs::rename(&binary, root.join("bramble.moved"))?;
    let (ok, out) = verify(root, &unit);
    assert!(
        !ok && out.contains("/usr/local/bin/bramble is not executable"),
        "{out}"
    );
    std::fs::rename(root.join("bramble.moved"), &binary)?;
    let typo = root.join("etc/systemd/system/typo.service");
    std::fs::write(
        &typo,
        text.replace("KillMode=process", "KillMode=process\nPrivateTmpp=yes"),
    )?;
    let (_, out) = verify(root, &typo);
    assert!(out.contains("Unknown key 'PrivateTmpp'"), "{out}");
    std::fs::remove_file(typo)?;

    // What install tells the image builder to run works offline.
    let status = Command::new("systemctl")
        .arg(format!("--root={}", root.display()))
        .args(["enable", "bramble"])
        .output()?;
    assert!(status.status.success(), "{status:?}");
    let link = root.join("etc/systemd/system/multi-user.target.wants/bramble.service");
    assert_eq!(
        std::fs::read_link(link)?,
        Path::new("/etc/systemd/system/bramble.service")
    );
    Ok(())
}

fn install_prepares_state_and_config_and_twice_changes_nothing() -> TestResult {
    let root = tempfile::tempdir()?;
    let root = root.path();
    let first = install(root)?;
    assert!(
        first.contains("generated API password (shown once): "),
        "{first}"
    );
    for path in [
        UNIT,
        SYSCTL,
        "etc/bramble/config.toml",
        "usr/local/bin/bramble",
    ] {
        assert!(
            first.contains(&format!("created    {}", root.join(path).display())),
            "{path}: {first}"
        );
    }
    assert!(first.contains(&format!(
        "systemctl --root={} enable bramble",
        root.display()
    )));

    let mode = |p: &str| {
        std::fs::metadata(root.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode(&format!("{STATE}/secrets")), 0o700);
    for file in ["basic-auth-user", "basic-auth-password"] {
        assert_eq!(mode(&format!("{STATE}/secrets/{file}")), 0o600, "{file}");
    }
    let password = std::fs::read_to_string(root.join(STATE).join("secrets/basic-auth-password"))?;
    assert!(
        first.contains(password.trim()),
        "the password is shown once"
    );
    assert_eq!(
        std::fs::read_to_string(root.join(STATE).join("secrets/basic-auth-user"))?,
        "admin"
    );
    assert_eq!(mode(UNIT), 0o644);
    assert_eq!(
        std::fs::read_to_string(root.join(SYSCTL))?.lines().last(),
        Some("net.ipv4.ip_forward = 1")
    );
    let config = std::fs::read_to_string(root.join("etc/bramble/config.toml"))?;
    assert_eq!(Config::parse(&config)?, Config::default());
    assert!(
        config.contains("\n#listen = \"0.0.0.0:8080\"\n"),
        "{config}"
    );

    let before = snapshot(root);
    let second = install(root)?;
    assert_eq!(snapshot(root), before, "a second install changed files");
    assert!(
        !second.contains("created") && !second.contains("updated"),
        "{second}"
    );
    assert!(!second.contains("password (shown once)"), "{second}");
    assert!(
        second.contains("unchanged: bramble was already installed like this"),
        "{second}"
    );

    // An edited configuration is the admin's: kept as is, and obeyed.
    std::fs::write(
        root.join("etc/bramble/config.toml"),
        "state_dir = \"/srv/bramble\"\n",
    )?;
    let third = install(root)?;
    assert!(
        third.contains(&format!(
            "created    {}",
            root.join("srv/bramble/secrets/basic-auth-user").display()
        )),
        "{third}"
    );
    Ok(())
}

fn uninstall_keeps_state_and_purge_removes_it() -> TestResult {
    let root = tempfile::tempdir()?;
    let root = root.path();
    let root_arg = root.to_str().unwrap();
    install(root)?;
    let link = root.join("etc/systemd/system/multi-user.target.wants/bramble.service");
    std::fs::create_dir_all(link.parent().unwrap())?;
    std::os::unix::fs::symlink("/etc/systemd/system/bramble.service", &link)?;

    let output = bramble(&["uninstall", "--root", root_arg])?;
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}{stderr}");
    for gone in [UNIT, SYSCTL] {
        assert!(!root.join(gone).exists(), "{gone}");
        assert!(
            stdout.contains(&format!("removed    {}", root.join(gone).display())),
            "{stdout}"
        );
    }
    assert!(
        std::fs::symlink_metadata(&link).is_err(),
        "the enable link is gone"
    );
    assert!(
        root.join(STATE)
            .join("secrets/basic-auth-password")
            .is_file()
    );
    assert!(root.join("etc/bramble/config.toml").is_file());
    assert!(root.join("usr/local/bin/bramble").is_file());
    assert!(
        stdout.contains("running functions keep running"),
        "{stdout}"
    );
    assert!(stdout.contains("--purge removes them"), "{stdout}");

    let output = bramble(&["uninstall", "--root", root_arg])?;
    let (stdout, _) = text(&output);
    assert!(output.status.success());
    assert!(
        stdout.contains(&format!("absent     {}", root.join(UNIT).display())),
        "{stdout}"
    );
    assert!(
        stdout.contains("unchanged: bramble was not installed"),
        "{stdout}"
    );

    let output = bramble(&["uninstall", "--root", root_arg, "--purge"])?;
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(!root.join(STATE).exists(), "{stdout}");
    assert!(!root.join("etc/bramble").exists(), "{stdout}");
    assert!(
        stdout.contains(&format!("removed    {}", root.join(STATE).display())),
        "{stdout}"
    );
    Ok(())
}

/// What [`snapshot`] records of a file: mode, inode, modification time (s, ns), contents.
type FileState = (u32, u64, i64, i64, Option<Vec<u8>>);

/// Every file and directory under `root`: mode, inode, modification time and (for small
/// files) contents. A file rewritten in place or replaced shows up as a difference.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, FileState> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let m = std::fs::symlink_metadata(&path).unwrap();
            let contents =
                (m.is_file() && m.len() < 1 << 20).then(|| std::fs::read(&path).unwrap());
            if m.is_dir() {
                stack.push(path.clone());
            }
            out.insert(
                path,
                (m.mode(), m.ino(), m.mtime(), m.mtime_nsec(), contents),
            );
        }
    }
    out
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let status = Command::new("cp").arg("-a").arg(from).arg(to).status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "cp -a {} {}: {status}",
            from.display(),
            to.display()
        )))
    }
}
