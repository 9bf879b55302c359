//! A real `bramble up` process for end-to-end tests, on a [`TestEnv`]'s private containerd,
//! network and directories, listening on a free loopback port.
//!
//! # Another binary, another architecture
//!
//! Two environment variables make every [`Node`] run a different `bramble`, e.g. one
//! cross-compiled for the Pi, under qemu-user, against this machine's containerd
//! (`cross/smoke` does this):
//!
//! - `BRAMBLE_TEST_BINARY=/ABSOLUTE/PATH` replaces the binary the test passes to
//!   [`Node::start`] and [`Node::with_fixture`] (tests run in their package's directory, so a
//!   relative path would not mean what it seems);
//! - `BRAMBLE_TEST_RUNNER="qemu-aarch64-static -L /usr/aarch64-linux-gnu"` runs it through that
//!   command (words split on whitespace; no binfmt_misc registration needed).
//!
//! Before the first start the node runs `RUNNER BINARY version` and fails with what it printed
//! when that does not answer `bramble …`: a missing binary, a missing runner or a foreign
//! binary without a runner is an error, never a silent fallback to the host's binary. When the
//! binary is built for another architecture, [`Node::with_fixture`] labels the fixture image
//! with that architecture (the fixture inside stays this machine's binary: containerd and runc
//! run natively here, only bramble is emulated), so the node's platform check accepts it.

use std::ffi::OsString;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bramble_runtime::image::platform::Platform;

use crate::env::TestEnv;
use crate::http::{self, Response};

/// The name of the fixture image in a node made by [`Node::with_fixture`].
pub const FIXTURE_IMAGE: &str = "docker.io/library/fixture:test";

/// How long a node may take to answer `/healthz`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The environment variable naming a `bramble` binary to run instead of the test's.
pub const BINARY_ENV: &str = "BRAMBLE_TEST_BINARY";

/// The environment variable holding a command that runs the binary (qemu-user).
pub const RUNNER_ENV: &str = "BRAMBLE_TEST_RUNNER";

/// A running `bramble up`.
#[derive(Debug)]
pub struct Node {
    pub env: TestEnv,
    binary: PathBuf,
    runner: Vec<OsString>,
    config_file: PathBuf,
    state_dir: PathBuf,
    log: PathBuf,
    addr: SocketAddr,
    child: Option<Child>,
    extra_config: String,
    /// Environment variables of the `bramble up` process, on top of the test's.
    process_env: Vec<(OsString, OsString)>,
    /// Listen on every address (`0.0.0.0`), as a node on a LAN does, instead of loopback only.
    listen_everywhere: bool,
}

impl Node {
    /// Writes a configuration for `env` (plus `extra_config` TOML lines at the top level) and
    /// starts `binary up`, waiting until it listens.
    ///
    /// [`BINARY_ENV`] and [`RUNNER_ENV`] replace `binary` and run it through a runner (see the
    /// module documentation).
    pub fn start(binary: &Path, env: TestEnv, extra_config: &str) -> io::Result<Node> {
        Node::start_with_env(binary, env, extra_config, Vec::new())
    }

    /// [`Node::start`] with environment variables for the process (this start and every
    /// [`Node::start_again`]), e.g. systemd's `NOTIFY_SOCKET` and `WATCHDOG_USEC`.
    pub fn start_with_env(
        binary: &Path,
        env: TestEnv,
        extra_config: &str,
        process_env: Vec<(OsString, OsString)>,
    ) -> io::Result<Node> {
        let (binary, runner) = node_command(binary)?;
        let port = http::free_loopback_port()?;
        let state_dir = env.containerd.dir().join("state");
        let mut node = Node {
            binary,
            runner,
            config_file: env.containerd.dir().join("bramble.toml"),
            log: env.containerd.dir().join("bramble.log"),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            state_dir,
            child: None,
            extra_config: extra_config.to_owned(),
            process_env,
            listen_everywhere: false,
            env,
        };
        node.write_config()?;
        node.start_again()?;
        Ok(node)
    }

    /// A node on a new [`TestEnv`] named `name` whose containerd already holds the fixture
    /// image ([`FIXTURE_IMAGE`]), so deploys need no registry.
    pub async fn with_fixture(
        binary: &Path,
        name: &str,
        extra_config: &str,
    ) -> Result<Node, Box<dyn std::error::Error>> {
        // Checked before containerd starts: a binary that cannot run fails the test at once.
        let (node_binary, _) = node_command(binary)?;
        let platform = node_platform(&node_binary)?;
        let env = TestEnv::new(name)?;
        import_fixture(&env, platform).await?;
        Ok(Node::start(binary, env, extra_config)?)
    }

    /// The runtime configuration the node itself uses, for a runtime that inspects what the
    /// node made (see [`runtime_config_of`]).
    pub fn runtime_config(&self) -> bramble_runtime::RuntimeConfig {
        runtime_config_of(&self.env)
    }

    /// Waits until containerd holds no container of function `name` (a delete answers at
    /// once; its replicas go in the background), at most `timeout`.
    pub async fn wait_containers_gone(&self, name: &str, timeout: Duration) -> Result<(), String> {
        let runtime =
            bramble_runtime::Runtime::new(self.runtime_config()).map_err(|e| e.to_string())?;
        let prefix = format!("{name}.");
        let deadline = Instant::now() + timeout;
        loop {
            let left: Vec<String> = runtime
                .list()
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .filter(|c| c.id.starts_with(&prefix))
                .map(|c| c.id)
                .collect();
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "containers of {name} left after {timeout:?}: {left:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Ids of function `name`'s containers whose task runs now.
    pub async fn running_tasks(&self, name: &str) -> Result<Vec<String>, String> {
        let runtime =
            bramble_runtime::Runtime::new(self.runtime_config()).map_err(|e| e.to_string())?;
        let prefix = format!("{name}.");
        Ok(runtime
            .list()
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|c| {
                c.id.starts_with(&prefix)
                    && c.task
                        .is_some_and(|t| t.status == bramble_runtime::TaskStatus::Running)
            })
            .map(|c| c.id)
            .collect())
    }

    /// Waits until exactly `want` tasks of function `name` run (replicas that stop in the
    /// background are gone), at most `timeout`; returns their container ids.
    pub async fn wait_running_tasks(
        &self,
        name: &str,
        want: usize,
        timeout: Duration,
    ) -> Result<Vec<String>, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let ids = self.running_tasks(name).await?;
            if ids.len() == want {
                return Ok(ids);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{name}: {} tasks running after {timeout:?}, not {want}: {ids:?}",
                    ids.len()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Builds a second, distinct fixture image named `name` with `env` in its configuration
    /// (see [`crate::images::fixture_image_with_env`]), for this node's platform, and uploads
    /// it through `POST /system/images`; answers the upload's response.
    pub async fn upload_fixture_variant(
        &self,
        name: &str,
        env: &[(&str, &str)],
    ) -> Result<Response, Box<dyn std::error::Error>> {
        let platform = node_platform(&self.binary)?;
        let label = (platform != Platform::host()).then_some(platform);
        let (archive, _) =
            crate::images::fixture_image_with_env(self.env.scratch(), name, label, env)?;
        Ok(self
            .api("POST", "/system/images", &std::fs::read(&archive)?)
            .await?)
    }

    /// A function's status (`GET /system/function/NAME`), `None` when it does not exist.
    pub async fn status(&self, name: &str) -> io::Result<Option<serde_json::Value>> {
        let r = self
            .api("GET", &format!("/system/function/{name}"), b"")
            .await?;
        if r.status != 200 {
            return Ok(None);
        }
        serde_json::from_slice(&r.body)
            .map(Some)
            .map_err(io::Error::other)
    }

    /// Polls the status until `availableReplicas` reaches `want` (the readiness signal the
    /// node publishes) and returns it; fails after a minute with the node's log.
    pub async fn wait_available(&self, name: &str, want: u64) -> Result<serde_json::Value, String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = self.status(name).await.map_err(|e| e.to_string())?;
            if let Some(s) = &status
                && s["availableReplicas"].as_u64().unwrap_or(0) == want
            {
                return Ok(s.clone());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{name} never had {want} available replicas: {status:?}\n{}",
                    self.log_tail(30)
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until the function's `bramble.state` is `state` (`ready`, `stopping`, …).
    pub async fn wait_state(&self, name: &str, state: &str) -> Result<serde_json::Value, String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = self.status(name).await.map_err(|e| e.to_string())?;
            if let Some(s) = &status
                && s["bramble"]["state"] == state
            {
                return Ok(s.clone());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{name} never was {state}: {status:?}\n{}",
                    self.log_tail(30)
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Scales `name` to `replicas` through the API and waits until that many are available.
    pub async fn scale(&self, name: &str, replicas: u64) -> Result<serde_json::Value, String> {
        self.ask_scale(name, replicas).await?;
        self.wait_available(name, replicas).await
    }

    /// Asks the API to scale `name` to `replicas` (200 expected) without waiting for the
    /// replicas: what a test timing the API's answer needs.
    pub async fn ask_scale(&self, name: &str, replicas: u64) -> Result<(), String> {
        let body = serde_json::json!({ "serviceName": name, "replicas": replicas }).to_string();
        let r = self
            .api(
                "POST",
                &format!("/system/scale-function/{name}"),
                body.as_bytes(),
            )
            .await
            .map_err(|e| e.to_string())?;
        if r.status != 200 {
            return Err(format!(
                "scaling {name} to {replicas}: {} {}",
                r.status,
                r.text()
            ));
        }
        Ok(())
    }

    /// Restarts the node listening on every address (`0.0.0.0:PORT`) like a node on a LAN, so
    /// that functions can reach it through their bridge's address; [`Node::addr`] stays the
    /// loopback address.
    pub fn listen_everywhere(&mut self) -> io::Result<()> {
        self.kill();
        self.listen_everywhere = true;
        self.write_config()?;
        self.start_again()
    }

    fn write_config(&self) -> io::Result<()> {
        let c = &self.env.config;
        let listen = if self.listen_everywhere {
            SocketAddr::from(([0, 0, 0, 0], self.addr.port()))
        } else {
            self.addr
        };
        let text = format!(
            "{extra}\nlisten = \"{addr}\"\nstate_dir = \"{state}\"\nrun_dir = \"{run}\"\ncontainerd_socket = \"{sock}\"\ncontainerd_namespace = \"{ns}\"\n\n[network]\nbridge = \"{bridge}\"\nsubnet = \"{subnet}\"\n",
            extra = self.extra_config,
            addr = listen,
            state = self.state_dir.display(),
            run = c.run_dir.display(),
            sock = c.containerd_socket.display(),
            ns = c.namespace,
            bridge = c.network.bridge,
            subnet = c.network.subnet,
        );
        std::fs::write(&self.config_file, text)
    }

    /// Starts the process again (after [`Node::kill`] or [`Node::stop`]) and waits until it
    /// is ready: its log says that this process listens on the node's address, and `/healthz`
    /// answers HTTP (any status; functions are then adopted in the background).
    pub fn start_again(&mut self) -> io::Result<()> {
        if self.child.is_some() {
            return Err(io::Error::other("bramble is already running"));
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        // Only what this process writes counts: earlier runs said the same words.
        let log_start = log.metadata()?.len();
        let child = command(&self.binary, &self.runner)
            .arg("up")
            .arg("--config")
            .arg(&self.config_file)
            .env("BRAMBLE_LOG", "info,bramble_agent=debug")
            .envs(self.process_env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        self.wait_ready(log_start)
    }

    /// A connection alone is no proof: while this process starts, the port it will bind may
    /// briefly belong to another socket, so the wait is for this process's own "listening"
    /// line (printed right after the bind) and then for an HTTP answer.
    fn wait_ready(&mut self, log_start: u64) -> io::Result<()> {
        // `http://127.0.0.1:PORT`, or `http://0.0.0.0:PORT` for a node listening everywhere.
        let port = format!(":{}", self.addr.port());
        let listens = |log: &str| {
            log.lines().any(|l| {
                l.split_once(" listening on http://")
                    .is_some_and(|(_, addr)| addr.ends_with(&port))
            })
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last_probe = String::from("its log does not say it listens yet");
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                return Err(io::Error::other(format!(
                    "bramble exited with {status} during startup:\n{}",
                    self.log_tail(40)
                )));
            }
            if listens(&self.log_since(log_start)) {
                match http::get_status(self.addr, "/healthz") {
                    Ok(_) => return Ok(()),
                    Err(e) => last_probe = format!("GET /healthz: {e}"),
                }
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "bramble was not ready within {READY_TIMEOUT:?} ({last_probe}):\n{}",
                    self.log_tail(40)
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The log written from byte `start` on.
    fn log_since(&self, start: u64) -> String {
        use std::io::{Read, Seek, SeekFrom};
        let mut bytes = Vec::new();
        if let Ok(mut file) = std::fs::File::open(&self.log)
            && file.seek(SeekFrom::Start(start)).is_ok()
        {
            // A partly written line is read again on the next poll.
            let _ = file.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// SIGKILL (a crash or power cut of the daemon; functions keep running).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait (a clean stop).
    pub fn stop(&mut self) -> io::Result<std::process::ExitStatus> {
        let Some(mut child) = self.child.take() else {
            return Err(io::Error::other("not running"));
        };
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).map_err(io::Error::other)?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).map_err(io::Error::other)?;
        child.wait()
    }

    /// The gateway address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `user:password` as the node stored them.
    pub fn credentials(&self) -> io::Result<(String, String)> {
        credentials_in(&self.state_dir)
    }

    /// The `Authorization` header value for the API.
    pub fn auth_header(&self) -> io::Result<String> {
        auth_header_in(&self.state_dir)
    }

    /// An authenticated API request with a JSON (or any) body.
    pub async fn api(&self, method: &str, path: &str, body: &[u8]) -> io::Result<Response> {
        let auth = self.auth_header()?;
        http::request(
            self.addr,
            method,
            path,
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            body,
            Duration::from_secs(120),
        )
        .await
    }

    /// An unauthenticated request (invocations).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Response> {
        http::request(
            self.addr,
            method,
            path,
            headers,
            body,
            Duration::from_secs(120),
        )
        .await
    }

    /// The last `lines` lines of the node's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Imports the fixture image ([`FIXTURE_IMAGE`]) for `platform` into `env`'s containerd, so
/// that a node on it deploys with no registry.
pub async fn import_fixture(
    env: &TestEnv,
    platform: Platform,
) -> Result<(), Box<dyn std::error::Error>> {
    // The importing runtime takes the node's platform: it refuses images for another one.
    let mut config = env.config.clone();
    config.platform = Some(platform.clone());
    let runtime = bramble_runtime::Runtime::new(config)?;
    let (archive, _) = if platform == Platform::host() {
        crate::fixture_image(env.scratch(), "fixture:test")?
    } else {
        crate::images::fixture_image_labelled(env.scratch(), "fixture:test", platform)?
    };
    runtime
        .images()
        .import(&archive, None, &bramble_runtime::image::no_progress)
        .await?;
    Ok(())
}

/// The API credentials a node with state directory `state_dir` made (user, password).
pub fn credentials_in(state_dir: &Path) -> io::Result<(String, String)> {
    let read = |f: &str| {
        std::fs::read_to_string(state_dir.join("secrets").join(f)).map(|s| s.trim().to_owned())
    };
    Ok((read("basic-auth-user")?, read("basic-auth-password")?))
}

/// The `Authorization` header value for the API of a node with state directory `state_dir`.
pub fn auth_header_in(state_dir: &Path) -> io::Result<String> {
    let (user, password) = credentials_in(state_dir)?;
    Ok(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    ))
}

/// The runtime configuration a node started on `env` uses: `env`'s, but with the network
/// name every node gives its network (bramble's default; the configuration file has no key
/// for it). The host-local lease directory is named after it, so a runtime that lists or
/// makes leases the node must see needs this configuration rather than `env.config`.
pub fn runtime_config_of(env: &TestEnv) -> bramble_runtime::RuntimeConfig {
    let mut config = env.config.clone();
    config.network.name = bramble_runtime::NetworkConfig::default().name;
    config
}

/// The binary a node runs: [`BINARY_ENV`] when set, else `default`.
fn chosen_binary(default: &Path) -> PathBuf {
    match std::env::var_os(BINARY_ENV) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => default.to_path_buf(),
    }
}

/// `binary`, or `runner… binary` when there is a runner.
fn command(binary: &Path, runner: &[OsString]) -> Command {
    match runner.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(binary);
            c
        }
        None => Command::new(binary),
    }
}

/// The binary and the runner a node uses, checked by running `version` through them.
fn node_command(default: &Path) -> io::Result<(PathBuf, Vec<OsString>)> {
    node_command_with(
        &chosen_binary(default),
        default,
        &std::env::var(RUNNER_ENV).unwrap_or_default(),
    )
}

/// [`node_command`] for an explicit binary and runner (`default` is the test's binary).
fn node_command_with(
    binary: &Path,
    default: &Path,
    runner: &str,
) -> io::Result<(PathBuf, Vec<OsString>)> {
    let binary = binary.to_path_buf();
    let from_env = binary != default;
    let what = if from_env {
        format!("{BINARY_ENV}={}", binary.display())
    } else {
        binary.display().to_string()
    };
    let meta = std::fs::metadata(&binary).map_err(|e| {
        let relative = if binary.is_relative() {
            let cwd = std::env::current_dir().unwrap_or_default();
            format!(
                " (relative to the test's directory {}: give an absolute path)",
                cwd.display()
            )
        } else {
            String::new()
        };
        io::Error::other(format!("{what}: {e}{relative}"))
    })?;
    if !meta.is_file() || std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 == 0
    {
        return Err(io::Error::other(format!("{what}: not an executable file")));
    }
    let runner: Vec<OsString> = runner.split_whitespace().map(OsString::from).collect();
    if let Some(program) = runner.first()
        && crate::harness::find_executable(&program.to_string_lossy()).is_none()
    {
        return Err(io::Error::other(format!(
            "{RUNNER_ENV}: `{}` not found (apt install qemu-user-static)",
            program.to_string_lossy()
        )));
    }
    let platform = node_platform(&binary)?;
    let how = if runner.is_empty() {
        String::new()
    } else {
        format!(
            " through `{}`",
            runner
                .iter()
                .map(|w| w.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        )
    };
    let probe = command(&binary, &runner).arg("version").output();
    let answered = match &probe {
        Ok(out) => out.status.success() && out.stdout.starts_with(b"bramble "),
        Err(_) => false,
    };
    if !answered {
        let detail = match probe {
            Ok(out) => format!(
                "{}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => e.to_string(),
        };
        let hint = if platform != Platform::host() && runner.is_empty() {
            format!(
                " (a {platform} binary needs a runner: set {RUNNER_ENV}, e.g. \"qemu-aarch64-static -L /usr/aarch64-linux-gnu\")"
            )
        } else {
            String::new()
        };
        return Err(io::Error::other(format!(
            "{what} ({platform}){how} does not run `version`: {detail}{hint}"
        )));
    }
    if from_env || !runner.is_empty() {
        eprintln!(
            "bramble-testkit: node binary {} ({platform}){how}: {}",
            binary.display(),
            probe
                .as_ref()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_default()
        );
    }
    Ok((binary, runner))
}

/// The platform a `bramble` binary is built for, from its ELF header (32-bit arm, whose ELF
/// header does not say which version, counts as arm/v7, the oldest Raspberry Pi OS armhf runs).
pub fn node_platform(binary: &Path) -> io::Result<Platform> {
    use std::io::Read as _;
    let mut head = Vec::with_capacity(64 * 1024);
    std::fs::File::open(binary)
        .and_then(|f| f.take(64 * 1024).read_to_end(&mut head))
        .map_err(|e| io::Error::other(format!("reading {}: {e}", binary.display())))?;
    let info = Platform::from_elf(&head)
        .map_err(|e| io::Error::other(format!("{}: {e}", binary.display())))?;
    let platform = info.platform;
    Ok(
        if platform.architecture() == "arm" && platform.variant().is_none() {
            Platform::new(platform.os(), "arm", Some("v7"))
        } else {
            platform
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(binary: &Path, runner: &str) -> String {
        node_command_with(binary, Path::new("/default/bramble"), runner)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_binary_that_cannot_run_is_an_error_never_a_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("bramble");
        let e = error(&missing, "");
        assert!(
            e.starts_with(&format!("{BINARY_ENV}={}: ", missing.display())),
            "{e}"
        );

        let script = dir.path().join("script");
        std::fs::write(&script, "#!/bin/sh\necho bramble 0.1.0\n").unwrap();
        let e = error(&script, "");
        assert!(e.contains("not an executable file"), "{e}");
        std::fs::set_permissions(
            &script,
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
        )
        .unwrap();
        // Not an ELF file: its platform is unknown.
        let e = error(&script, "");
        assert!(e.contains(&script.display().to_string()), "{e}");

        // An ELF binary that is not bramble.
        let e = error(Path::new("/bin/true"), "");
        assert!(e.contains("does not run `version`"), "{e}");

        // A runner that does not exist.
        let e = error(Path::new("/bin/true"), "qemu-nonexistent-static -L /x");
        assert!(
            e.contains("qemu-nonexistent-static") && e.contains("not found"),
            "{e}"
        );
    }
}
