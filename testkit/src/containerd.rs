//! A private containerd per test.
//!
//! [`Containerd::start`] runs the system's `containerd` binary with its own configuration in a
//! fresh directory under `/tmp`: its own root, state, gRPC and ttrpc sockets and `opt` path, the
//! CRI plugin disabled. Several instances can run side by side, and alongside a system
//! containerd.
//!
//! [`Containerd::kill`] simulates a crash (SIGKILL to containerd only: shims and containers keep
//! running), [`Containerd::start_again`] brings it back with the same configuration. Dropping the
//! value removes everything the instance created, running containers included.
//!
//! # Sharing the host's runc state
//!
//! The runc shim keeps runc's state under `/run/containerd/runc/<namespace>/<id>` unless the
//! client passes a runc root in the task's runtime options (`containerd.runc.v1.Options.root`),
//! and cgroup paths come from the spec. Two instances running tasks with the **same namespace and
//! id** at the same time therefore collide (`runc create failed: container with given ID already
//! exists`). Tests that run concurrently should use a unique containerd namespace (or pass
//! [`Containerd::runc_root`] as the runc root, and unique cgroup paths).
//!
//! Dropping an instance also removes what its containers left outside its directory: runc state
//! directories whose `bundle=` label points into the instance, the cgroups runc recorded for
//! them, the shim sockets in `/run/containerd/s`, and the namespace-level parent directories of
//! the runc state and cgroups when they are empty.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::procfs;

/// How long [`Containerd::start`] waits for the gRPC socket.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Where the runc shim keeps runc state when the client does not choose a root.
const DEFAULT_RUNC_ROOT: &str = "/run/containerd/runc";

/// The task directory of the v2 runtime inside containerd's state directory.
const TASK_STATE_DIR: &str = "io.containerd.runtime.v2.task";

/// Longest unix socket path (`sun_path` is 108 bytes including the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Lines of containerd's log included in error messages.
const ERROR_LOG_LINES: usize = 40;

/// Written to the log before each start, so errors can show the current run's log only.
const START_MARKER: &str = "--- bramble-testkit: starting containerd";

/// A containerd daemon private to one test, with everything under one temporary directory.
#[derive(Debug)]
pub struct Containerd {
    dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    socket: PathBuf,
    root: PathBuf,
    state: PathBuf,
    child: Option<Child>,
}

impl Containerd {
    /// Starts a new containerd and waits until its gRPC socket accepts connections.
    pub fn start() -> io::Result<Containerd> {
        let dir = tempfile::Builder::new()
            .prefix("bctd-")
            .tempdir_in("/tmp")
            .map_err(|e| procfs::context("creating a temporary directory under /tmp", &e))?
            .keep();
        // From here on `Drop` cleans up, also when starting fails.
        let dir = fs::canonicalize(&dir).unwrap_or(dir);
        let mut containerd = Containerd {
            config: dir.join("config.toml"),
            log: dir.join("containerd.log"),
            socket: dir.join("c.sock"),
            root: dir.join("root"),
            state: dir.join("state"),
            dir,
            child: None,
        };
        containerd.write_config()?;
        containerd.start_again()?;
        Ok(containerd)
    }

    fn write_config(&self) -> io::Result<()> {
        let ttrpc = self.dir.join("c.sock.ttrpc");
        for socket in [&self.socket, &ttrpc] {
            let len = socket.as_os_str().len();
            if len > MAX_SOCKET_PATH {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "socket path {} is {len} bytes, longer than a unix socket path may be",
                        socket.display()
                    ),
                ));
            }
        }
        let opt = self.dir.join("opt");
        let config = format!(
            "# written by bramble-testkit\n\
             version = 2\n\
             root = {root}\n\
             state = {state}\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             \n\
             [grpc]\n  address = {grpc}\n\
             \n\
             [ttrpc]\n  address = {ttrpc}\n\
             \n\
             [debug]\n  level = \"info\"\n\
             \n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = {opt}\n",
            root = toml_string(&self.root),
            state = toml_string(&self.state),
            grpc = toml_string(&self.socket),
            ttrpc = toml_string(&ttrpc),
            opt = toml_string(&opt),
        );
        fs::write(&self.config, config)
            .map_err(|e| procfs::context(format!("writing {}", self.config.display()), &e))
    }

    /// The gRPC socket (`grpc.address`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// containerd's persistent root (content store, snapshots, metadata).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// containerd's state directory (task bundles, shim addresses).
    pub fn state(&self) -> &Path {
        &self.state
    }

    /// The temporary directory holding config, log, sockets, root and state.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// containerd's log file (stdout and stderr, appended across restarts).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// A runc root private to this instance (inside [`Containerd::dir`], created on demand by
    /// runc). Pass it as `root` in the runc runtime options of `Tasks.Create` to keep runc's state
    /// out of the shared `/run/containerd/runc`.
    pub fn runc_root(&self) -> PathBuf {
        self.dir.join("runc")
    }

    /// The pid of the running containerd, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills containerd with SIGKILL, like a crash, and waits for it. Shims and containers keep
    /// running. Does nothing when containerd is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts containerd again with the same configuration (after [`Containerd::kill`]) and waits
    /// until it is ready.
    pub fn start_again(&mut self) -> io::Result<()> {
        if let Some(child) = &mut self.child
            && matches!(child.try_wait(), Ok(None))
        {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "containerd (pid {}) is still running; kill() it first",
                    child.id()
                ),
            ));
        }
        self.child = None;
        // A socket left behind by a killed instance would only refuse connections; remove it so
        // readiness means "the new process listens".
        let _ = fs::remove_file(&self.socket);
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| procfs::context(format!("opening {}", self.log.display()), &e))?;
        let _ = writeln!(log, "{START_MARKER} --config {} ---", self.config.display());
        let stderr = log
            .try_clone()
            .map_err(|e| procfs::context("duplicating the log file", &e))?;
        let binary = crate::harness::find_executable("containerd")
            .unwrap_or_else(|| PathBuf::from("containerd"));
        let started = Instant::now();
        let child = Command::new(&binary)
            .arg("--config")
            .arg(&self.config)
            .env("PATH", procfs::daemon_path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .map_err(|e| procfs::context(format!("spawning {}", binary.display()), &e))?;
        self.child = Some(child);
        self.wait_ready(started)
    }

    /// Kills containerd (SIGKILL) and starts it again with the same configuration.
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill();
        self.start_again()
    }

    fn wait_ready(&mut self, started: Instant) -> io::Result<()> {
        let deadline = started + READY_TIMEOUT;
        loop {
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(io::Error::other(format!(
                    "containerd exited during startup ({status}); log {}:\n{}",
                    self.log.display(),
                    self.startup_log()
                )));
            }
            if UnixStream::connect(&self.socket).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let pid = self.pid().unwrap_or_default();
                self.kill();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "containerd (pid {pid}) did not accept connections on {} within {}s; log {}:\n{}",
                        self.socket.display(),
                        READY_TIMEOUT.as_secs(),
                        self.log.display(),
                        self.startup_log()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The end of the log of the current (last) start, for error messages.
    fn startup_log(&self) -> String {
        let log = self.log_tail(usize::MAX);
        let current = log.rfind(START_MARKER).map_or(log.as_str(), |i| &log[i..]);
        let lines: Vec<&str> = current.lines().collect();
        lines[lines.len().saturating_sub(ERROR_LOG_LINES)..].join("\n")
    }

    /// The last `lines` lines of containerd's log.
    pub fn log_tail(&self, lines: usize) -> String {
        procfs::file_tail(&self.log, lines)
    }

    /// The pids of the shims (`containerd-shim-*`) started by this instance: those whose command
    /// line has `-address <our socket>`.
    pub fn shim_pids(&self) -> Vec<i32> {
        let socket = self.socket.to_string_lossy();
        procfs::all_pids()
            .into_iter()
            .filter(|&pid| {
                let args = procfs::cmdline(pid);
                let is_shim = args
                    .first()
                    .and_then(|a| Path::new(a).file_name())
                    .is_some_and(|name| name.to_string_lossy().starts_with("containerd-shim"));
                is_shim
                    && args
                        .windows(2)
                        .any(|w| w[0] == "-address" && w[1] == socket)
            })
            .collect()
    }

    /// Task bundle directories (`state/io.containerd.runtime.v2.task/<namespace>/<id>`).
    fn bundles(&self) -> Vec<PathBuf> {
        let mut bundles = Vec::new();
        for namespace in read_dirs(&self.state.join(TASK_STATE_DIR)) {
            bundles.extend(read_dirs(&namespace));
        }
        bundles
    }

    /// Runc container directories (in the default or a client-chosen runc root) whose bundle is
    /// ours, with the cgroup directories they recorded.
    fn runc_containers(&self, bundles: &[PathBuf]) -> Vec<(PathBuf, Vec<PathBuf>)> {
        let mut roots: BTreeSet<PathBuf> =
            BTreeSet::from([PathBuf::from(DEFAULT_RUNC_ROOT), self.runc_root()]);
        for bundle in bundles {
            let root = fs::read(bundle.join("options.json"))
                .ok()
                .and_then(|raw| serde_json::from_slice::<serde_json::Value>(&raw).ok())
                .and_then(|v| v.get("root")?.as_str().map(PathBuf::from));
            roots.extend(root);
        }
        let mut found = Vec::new();
        for root in roots {
            for namespace in read_dirs(&root) {
                for container in read_dirs(&namespace) {
                    let Some(state) = fs::read(container.join("state.json"))
                        .ok()
                        .and_then(|raw| serde_json::from_slice::<serde_json::Value>(&raw).ok())
                    else {
                        continue;
                    };
                    let ours = state
                        .pointer("/config/labels")
                        .and_then(|l| l.as_array())
                        .into_iter()
                        .flatten()
                        .filter_map(|l| l.as_str()?.strip_prefix("bundle="))
                        .any(|bundle| Path::new(bundle).starts_with(&self.dir));
                    if ours {
                        let cgroups = state
                            .get("cgroup_paths")
                            .and_then(|c| c.as_object())
                            .into_iter()
                            .flat_map(|c| c.values())
                            .filter_map(|p| p.as_str().map(PathBuf::from))
                            .collect();
                        found.push((container, cgroups));
                    }
                }
            }
        }
        found
    }

    /// A power cut of the machine this containerd plays: SIGKILL to containerd, its shims and
    /// its containers, leaving its directories as they are (a [`Containerd::start_again`]
    /// finds the state a reboot would).
    pub fn power_cut(&mut self) {
        let runc = self.runc_containers(&self.bundles());
        self.kill_everything(&runc);
    }

    /// Everything the instance started: containerd, its shims, their descendants (the
    /// containers), anything left in the containers' cgroups. Killed with SIGKILL.
    fn kill_everything(&mut self, runc: &[(PathBuf, Vec<PathBuf>)]) {
        // containerd first, so it does not react to its shims dying.
        self.kill();
        let mut pids = procfs::with_descendants(&self.shim_pids());
        let me = std::process::id() as i32;
        let cgroup_roots = procfs::mounts_under(Path::new("/sys/fs/cgroup"));
        for (_, cgroups) in runc {
            for cgroup in cgroups.iter().filter(|c| !cgroup_roots.contains(c)) {
                let Ok(procs) = fs::read_to_string(cgroup.join("cgroup.procs")) else {
                    continue;
                };
                let members: Vec<i32> = procs
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect();
                // Never a cgroup we (or init) live in: that is not a container's.
                if !members.contains(&me) && !members.contains(&1) {
                    pids.extend(members);
                }
            }
        }
        pids.remove(&me);
        procfs::kill_and_wait(&pids, Duration::from_secs(5));
    }
}

impl Drop for Containerd {
    /// Best-effort cleanup; never panics. Problems are reported on stderr.
    fn drop(&mut self) {
        let bundles = self.bundles();
        let runc = self.runc_containers(&bundles);
        // Shim sockets live in /run/containerd/s, outside our directory.
        let shim_sockets: Vec<PathBuf> = bundles
            .iter()
            .filter_map(|b| fs::read_to_string(b.join("address")).ok())
            .filter_map(|a| a.trim().strip_prefix("unix://").map(PathBuf::from))
            .filter(|p| p.starts_with("/run/containerd/s"))
            .collect();

        self.kill_everything(&runc);

        let cgroup_roots = procfs::mounts_under(Path::new("/sys/fs/cgroup"));
        for (container, cgroups) in &runc {
            let _ = fs::remove_dir_all(container);
            // The namespace directory, when this was its last container.
            if let Some(namespace) = container.parent() {
                let _ = fs::remove_dir(namespace);
            }
            for cgroup in cgroups {
                if remove_cgroup(cgroup)
                    && let Some(parent) = cgroup.parent()
                    && !cgroup_roots.iter().any(|root| root == parent)
                {
                    // The parent (usually named after the namespace), when empty.
                    let _ = fs::remove_dir(parent);
                }
            }
        }
        for socket in &shim_sockets {
            let _ = fs::remove_file(socket);
        }
        let stuck = procfs::unmount_all_under(&self.dir);
        if !stuck.is_empty() {
            eprintln!("bramble-testkit: could not unmount {stuck:?}");
        }
        if let Err(e) = fs::remove_dir_all(&self.dir)
            && e.kind() != io::ErrorKind::NotFound
        {
            eprintln!(
                "bramble-testkit: could not remove {}: {e}",
                self.dir.display()
            );
        }
    }
}

/// Removes an (empty) cgroup directory, retrying briefly while the kernel still counts dying
/// tasks in it. True when it is gone.
fn remove_cgroup(path: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return true,
            Err(e) if Instant::now() >= deadline => {
                eprintln!(
                    "bramble-testkit: could not remove cgroup {}: {e}",
                    path.display()
                );
                return false;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Subdirectories of `dir` (none when it cannot be read).
fn read_dirs(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// A TOML basic string holding `path`.
fn toml_string(path: &Path) -> String {
    let mut quoted = String::from("\"");
    for c in path.to_string_lossy().chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            c if c.is_control() => quoted.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_string(Path::new("/tmp/a")), "\"/tmp/a\"");
        assert_eq!(
            toml_string(Path::new("/tmp/a\"b\\c")),
            "\"/tmp/a\\\"b\\\\c\""
        );
    }
}
