//! A real `bramble up` process for end-to-end tests, on a [`TestEnv`]'s private containerd,
//! network and directories, listening on a free loopback port.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::env::TestEnv;
use crate::http::{self, Response};

/// The name of the fixture image in a node made by [`Node::with_fixture`].
pub const FIXTURE_IMAGE: &str = "docker.io/library/fixture:test";

/// How long a node may take to answer `/healthz`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `bramble up`.
#[derive(Debug)]
pub struct Node {
    pub env: TestEnv,
    binary: PathBuf,
    config_file: PathBuf,
    state_dir: PathBuf,
    log: PathBuf,
    addr: SocketAddr,
    child: Option<Child>,
    extra_config: String,
}

impl Node {
    /// Writes a configuration for `env` (plus `extra_config` TOML lines at the top level) and
    /// starts `binary up`, waiting until it listens.
    pub fn start(binary: &Path, env: TestEnv, extra_config: &str) -> io::Result<Node> {
        let port = free_port()?;
        let state_dir = env.containerd.dir().join("state");
        let mut node = Node {
            binary: binary.to_path_buf(),
            config_file: env.containerd.dir().join("bramble.toml"),
            log: env.containerd.dir().join("bramble.log"),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            state_dir,
            child: None,
            extra_config: extra_config.to_owned(),
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
        let env = TestEnv::new(name)?;
        let runtime = bramble_runtime::Runtime::new(env.config.clone())?;
        let (archive, _) = crate::fixture_image(env.scratch(), "fixture:test")?;
        runtime
            .images()
            .import(&archive, None, &bramble_runtime::image::no_progress)
            .await?;
        drop(runtime);
        Ok(Node::start(binary, env, extra_config)?)
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

    fn write_config(&self) -> io::Result<()> {
        let c = &self.env.config;
        let text = format!(
            "{extra}\nlisten = \"{addr}\"\nstate_dir = \"{state}\"\nrun_dir = \"{run}\"\ncontainerd_socket = \"{sock}\"\ncontainerd_namespace = \"{ns}\"\n\n[network]\nbridge = \"{bridge}\"\nsubnet = \"{subnet}\"\n",
            extra = self.extra_config,
            addr = self.addr,
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
    /// listens (its readiness signal; functions are then adopted in the background).
    pub fn start_again(&mut self) -> io::Result<()> {
        if self.child.is_some() {
            return Err(io::Error::other("bramble is already running"));
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.binary)
            .arg("up")
            .arg("--config")
            .arg(&self.config_file)
            .env("BRAMBLE_LOG", "info,bramble_agent=debug")
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
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
            if std::net::TcpStream::connect(self.addr).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "bramble did not listen within {READY_TIMEOUT:?}:\n{}",
                    self.log_tail(40)
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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
        let read = |f: &str| {
            std::fs::read_to_string(self.state_dir.join("secrets").join(f))
                .map(|s| s.trim().to_owned())
        };
        Ok((read("basic-auth-user")?, read("basic-auth-password")?))
    }

    /// The `Authorization` header value for the API.
    pub fn auth_header(&self) -> io::Result<String> {
        let (user, password) = self.credentials()?;
        Ok(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        ))
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

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
