//! One nats-server process: preparing its files, spawning it, waiting for it to be ready,
//! stopping it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::EngineError;
use super::config::EngineConfig;
use super::monitor::{Health, HealthCheck, Monitor};
use super::version::ServerVersion;

/// How many log lines of the server are kept for error messages.
const LOG_LINES: usize = 40;

/// The last lines the server wrote, shared between the reader task and error messages.
#[derive(Clone, Default)]
pub(crate) struct LogTail(Arc<Mutex<VecDeque<String>>>);

impl LogTail {
    fn push(&self, line: String) {
        if let Ok(mut lines) = self.0.lock() {
            if lines.len() == LOG_LINES {
                lines.pop_front();
            }
            lines.push_back(line);
        }
    }

    /// The last `n` lines, joined with " | ".
    pub(crate) fn last(&self, n: usize) -> String {
        let Ok(lines) = self.0.lock() else {
            return String::new();
        };
        let skip = lines.len().saturating_sub(n);
        lines
            .iter()
            .skip(skip)
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(" | ")
    }

    /// Whether any kept line contains `needle`.
    fn contains(&self, needle: &str) -> bool {
        self.0
            .lock()
            .map(|lines| lines.iter().any(|l| l.contains(needle)))
            .unwrap_or(false)
    }
}

/// Writes the configuration file (mode 0600: it holds passwords) and has nats-server check it
/// (`-t`), creating `<state_dir>/cluster` (mode 0700) first.
pub(crate) async fn write_config(
    config: &EngineConfig,
    version: ServerVersion,
) -> Result<(), EngineError> {
    let text = config.render(version)?;
    let dir = config.cluster_dir();
    let path = config.config_file();
    {
        let dir = dir.clone();
        let file = path.clone();
        tokio::task::spawn_blocking(move || -> Result<(), EngineError> {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|source| EngineError::Io {
                    action: "creating",
                    path: dir.clone(),
                    source,
                })?;
            bramble_base::write_atomic(&file, text.as_bytes(), 0o600).map_err(|source| {
                EngineError::Io {
                    action: "writing",
                    path: file.clone(),
                    source,
                }
            })
        })
        .await
        .map_err(|e| EngineError::Io {
            action: "writing",
            path: path.clone(),
            source: std::io::Error::other(e),
        })??;
    }
    let output = Command::new(&config.binary)
        .arg("-t")
        .arg("-c")
        .arg(&path)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| spawn_error(&config.binary, source))?;
    if output.status.success() {
        Ok(())
    } else {
        let mut message = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        if message.is_empty() {
            message = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        }
        Err(EngineError::ConfigRejected { path, message })
    }
}

/// The error of a binary that could not be run: missing (naming the package) or not runnable.
pub(super) fn spawn_error(binary: &Path, source: std::io::Error) -> EngineError {
    if source.kind() == std::io::ErrorKind::NotFound {
        EngineError::BinaryMissing {
            binary: binary.to_path_buf(),
        }
    } else {
        EngineError::Spawn {
            binary: binary.to_path_buf(),
            source,
        }
    }
}

/// Stops a nats-server that a previous bramble (killed before it could stop it) left running
/// with this board's configuration: found by the pid file, recognised by its command line.
pub(crate) async fn stop_leftover(config: &EngineConfig) {
    let Ok(text) = tokio::fs::read_to_string(config.pid_file()).await else {
        return;
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return;
    };
    let Ok(cmdline) = tokio::fs::read(format!("/proc/{pid}/cmdline")).await else {
        return;
    };
    let ours = config.config_file();
    let ours = ours.to_string_lossy();
    let matches = cmdline.split(|b| *b == 0).any(|arg| arg == ours.as_bytes());
    if !matches {
        return;
    }
    tracing::warn!(
        pid,
        "stopping a nats-server left behind by a previous bramble"
    );
    terminate_pid(pid, Duration::from_secs(5)).await;
}

/// SIGTERM, then SIGKILL after `grace`; returns when the process is gone (or after the kill).
async fn terminate_pid(pid: i32, grace: Duration) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    if pid <= 0 {
        return;
    }
    let pid = Pid::from_raw(pid);
    if kill(pid, Signal::SIGTERM).is_err() {
        return;
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if kill(pid, None).is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = kill(pid, Signal::SIGKILL);
}

/// Fails with `PortTaken` when a listener's address is in use (a clear error before the server
/// prints a fatal one).
pub(crate) async fn check_ports(config: &EngineConfig) -> Result<(), EngineError> {
    let mut wanted: Vec<(&'static str, SocketAddr)> = vec![
        (
            "client",
            SocketAddr::from(([127, 0, 0, 1], config.client_port)),
        ),
        (
            "monitoring",
            SocketAddr::from(([127, 0, 0, 1], config.monitor_port)),
        ),
    ];
    if let Some(cluster) = &config.cluster {
        wanted.push(("route", cluster.listen));
    }
    for (what, addr) in wanted {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => drop(listener),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(EngineError::PortTaken { what, addr });
            }
            Err(source) => {
                return Err(EngineError::Io {
                    action: "listening on (is the address this board's own?)",
                    path: addr.to_string().into(),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// A running nats-server child.
pub(crate) struct Process {
    pub(crate) child: Child,
    pub(crate) pid: u32,
}

/// Spawns the server with `GOMEMLIMIT` and `GOGC` set and its log piped into `log` (and `tracing`).
pub(crate) fn spawn(config: &EngineConfig, log: &LogTail) -> Result<Process, EngineError> {
    let mut command = Command::new(&config.binary);
    command
        .arg("-c")
        .arg(config.config_file())
        .env("GOMEMLIMIT", format!("{}B", config.gomemlimit))
        .env("GOGC", config.gogc.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(|source| spawn_error(&config.binary, source))?;
    let pid = child.id().unwrap_or(0);
    for pipe in [
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let log = log.clone();
        let board = config.board.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                // Its warnings stay at debug: every start prints some that mean nothing here
                // (plaintext passwords in the root-only config, health checks while routes form).
                if line.contains("[ERR]") || line.contains("[FTL]") {
                    tracing::warn!(target: "nats_server", board = %board, "{line}");
                } else {
                    tracing::debug!(target: "nats_server", board = %board, "{line}");
                }
                log.push(line);
            }
        });
    }
    Ok(Process { child, pid })
}

/// Waits until `/healthz` (server level) answers ok, the child exits, or `timeout` passes.
pub(crate) async fn wait_ready(
    process: &mut Process,
    monitor: &Monitor,
    log: &LogTail,
    config: &EngineConfig,
) -> Result<(), EngineError> {
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = process.child.try_wait() {
            // Let the log reader catch the last lines.
            tokio::time::sleep(Duration::from_millis(50)).await;
            return Err(classify_exit(config, log, status.to_string()));
        }
        if let Ok(Health::Ok) = monitor.health(HealthCheck::Server).await {
            return Ok(());
        }
        if started.elapsed() > config.ready_timeout {
            return Err(EngineError::NotReady {
                waited: config.ready_timeout,
                log: log.last(5),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Turns an early exit into the most precise error the log allows.
fn classify_exit(config: &EngineConfig, log: &LogTail, status: String) -> EngineError {
    if log.contains("address already in use") {
        let last = log.last(3);
        let (what, addr) = if last.contains(&format!(":{}", config.monitor_port)) {
            (
                "monitoring",
                SocketAddr::from(([127, 0, 0, 1], config.monitor_port)),
            )
        } else if let Some(route) = config
            .cluster
            .as_ref()
            .filter(|c| last.contains(&c.listen.to_string()))
        {
            ("route", route.listen)
        } else {
            (
                "client",
                SocketAddr::from(([127, 0, 0, 1], config.client_port)),
            )
        };
        return EngineError::PortTaken { what, addr };
    }
    EngineError::ExitedEarly {
        status,
        log: log.last(5),
    }
}

/// SIGTERM (nats-server shuts down cleanly on it), then SIGKILL after `grace`.
pub(crate) async fn terminate(process: &mut Process, grace: Duration) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    if let Ok(Some(_)) = process.child.try_wait() {
        return;
    }
    // pid 0 would signal bramble's own process group.
    if let Ok(pid) = i32::try_from(process.pid)
        && pid > 0
    {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    if tokio::time::timeout(grace, process.child.wait())
        .await
        .is_err()
    {
        let _ = process.child.kill().await;
    }
}

/// Resident memory of a process in bytes (`VmRSS`).
pub(crate) async fn rss(pid: u32) -> Option<u64> {
    let status = tokio::fs::read_to_string(format!("/proc/{pid}/status"))
        .await
        .ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
