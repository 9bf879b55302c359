//! The test harness of bramble's integration tests.
//!
//! Integration test binaries set `harness = false` and call [`main`] from their `main` (a binary
//! that merges several, one module each, calls [`main_suites`] with a [`Suite`] per module). Before
//! any thread exists, the harness moves the whole process into a fresh network namespace (when
//! running as root), so that every bridge, veth, iptables rule, registry and containerd a test
//! creates lives there and vanishes with the process. Under `cargo nextest` every test is its own
//! process and therefore gets its own namespace.
//!
//! Requirements (root, containerd, runc, CNI plugins, ...) are checked once. When one is missing
//! the tests are reported as *ignored* with the reason on a developer machine, and as *failed* in
//! CI (`CI=true`): a CI run must never go green because something was skipped.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

pub use libtest_mimic::{Failed, Trial};

/// Something a group of tests needs from the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Running as uid 0.
    Root,
    /// An executable on `PATH` (or at an absolute path).
    Binary(&'static str),
    /// The standard CNI plugins bramble uses (`bridge`, `host-local`, `loopback`, `firewall`).
    CniPlugins,
}

/// Where Debian and upstream install CNI plugins.
pub const CNI_PLUGIN_DIRS: &[&str] = &["/usr/lib/cni", "/opt/cni/bin"];

/// The CNI plugins bramble's network chain executes.
pub const CNI_PLUGINS: &[&str] = &["bridge", "host-local", "loopback", "firewall"];

impl Need {
    /// `Ok` when the machine satisfies the need, otherwise what is missing and how to get it.
    pub fn check(self) -> Result<(), String> {
        match self {
            Need::Root => {
                if nix::unistd::Uid::effective().is_root() {
                    Ok(())
                } else {
                    Err("must run as root (containerd, CNI and network namespaces need it)".into())
                }
            }
            Need::Binary(name) => {
                if find_executable(name).is_some() {
                    Ok(())
                } else {
                    Err(format!(
                        "`{name}` not found on PATH (install it: see .ci/run)"
                    ))
                }
            }
            Need::CniPlugins => {
                let missing: Vec<&str> = CNI_PLUGINS
                    .iter()
                    .copied()
                    .filter(|p| {
                        !CNI_PLUGIN_DIRS
                            .iter()
                            .any(|d| is_executable(&Path::new(d).join(p)))
                    })
                    .collect();
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "CNI plugins {missing:?} not found in {CNI_PLUGIN_DIRS:?} (apt install containernetworking-plugins)"
                    ))
                }
            }
        }
    }
}

/// The full path of an executable named `name`, searched on `PATH` (and `/usr/sbin`, `/sbin`,
/// which a non-login root shell may lack).
pub fn find_executable(name: &str) -> Option<std::path::PathBuf> {
    let candidate = Path::new(name);
    if candidate.is_absolute() {
        return is_executable(candidate).then(|| candidate.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            ["/usr/local/sbin", "/usr/sbin", "/sbin"]
                .iter()
                .map(Into::into),
        )
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// True when running in CI (`CI` set to anything but `false`/`0`/empty).
pub fn in_ci() -> bool {
    std::env::var_os("CI")
        .is_some_and(|v| !v.is_empty() && v != OsStr::new("false") && v != OsStr::new("0"))
}

/// For a unit test (or part of one) that cannot run on this machine because a tool or a
/// privilege is missing: in CI an error naming what is missing, so the run fails; elsewhere a
/// note on stderr and `Ok`, after which the test skips that part.
pub fn cannot_run_here(what: &str, reason: &str) -> Result<(), String> {
    if in_ci() {
        Err(format!("{what}: requirement not met in CI: {reason}"))
    } else {
        eprintln!("note: {what} skipped here: {reason}");
        Ok(())
    }
}

/// Runs the integration tests of one test binary and exits the process.
///
/// `needs` lists what every trial of this binary requires. The process enters a private network
/// namespace first when it runs as root.
pub fn main(needs: &[Need], trials: Vec<Trial>) -> ! {
    main_suites(vec![Suite {
        name: None,
        needs: needs.to_vec(),
        trials,
    }])
}

/// One part of a test binary that merges several (`tests/it/`, one module per part): its
/// trials, named `<name>::<trial>` as the standard harness names the tests of a module, and
/// what all of them need from the machine. Run the parts with [`main_suites`].
pub struct Suite {
    name: Option<&'static str>,
    needs: Vec<Need>,
    trials: Vec<Trial>,
}

impl Suite {
    /// An empty part named `name` whose trials need `needs`.
    pub fn new(name: &'static str, needs: &[Need]) -> Suite {
        Suite {
            name: Some(name),
            needs: needs.to_vec(),
            trials: Vec::new(),
        }
    }

    /// The full name of trial `name` of this part.
    fn trial_name(&self, name: &str) -> String {
        match self.name {
            Some(part) => format!("{part}::{name}"),
            None => name.to_owned(),
        }
    }

    /// Adds a trial whose body is async (see [`async_trial`]).
    pub fn async_trial<F, Fut, E>(mut self, name: &str, body: F) -> Suite
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<(), E>>,
        E: Into<Box<dyn std::error::Error>>,
    {
        let trial = async_trial(self.trial_name(name), body);
        self.trials.push(trial);
        self
    }

    /// Adds a trial whose body blocks.
    pub fn trial(
        mut self,
        name: &str,
        body: impl FnOnce() -> Result<(), Failed> + Send + 'static,
    ) -> Suite {
        let trial = Trial::test(self.trial_name(name), body);
        self.trials.push(trial);
        self
    }
}

/// Runs the parts of a merged test binary and exits the process: each part's trials run when
/// the machine meets that part's needs, and are reported as [`main`] reports them otherwise.
/// The process enters a private network namespace first when it runs as root and some part can
/// run.
pub fn main_suites(suites: Vec<Suite>) -> ! {
    // Tests build reqwest clients of their own, which need the process's rustls provider.
    bramble_base::tls::install_crypto_provider();
    let args = libtest_mimic::Arguments::from_args();
    // Listing tests (nextest does this) must neither fail nor touch the machine.
    if args.list {
        let trials = suites.into_iter().flat_map(|s| s.trials).collect();
        libtest_mimic::run(&args, trials).exit();
    }
    let parts: Vec<(Vec<Trial>, Vec<String>)> = suites
        .into_iter()
        .map(|s| {
            let unmet = s.needs.iter().filter_map(|n| n.check().err()).collect();
            (s.trials, unmet)
        })
        .collect();
    let namespace = if parts.iter().any(|(_, unmet)| unmet.is_empty()) {
        enter_private_network_namespace()
            .map_err(|e| format!("could not enter a private network namespace: {e}"))
    } else {
        Ok(())
    };
    let mut trials = Vec::new();
    for (part, unmet) in parts {
        let reason = match &namespace {
            _ if !unmet.is_empty() => Some(unmet.join("; ")),
            Err(e) => Some(e.clone()),
            Ok(()) => None,
        };
        match reason {
            Some(reason) => trials.extend(part.iter().map(|t| unrunnable(t, &reason))),
            None => trials.extend(part),
        }
    }
    libtest_mimic::run(&args, trials).exit()
}

/// `trial` when the machine meets `needs` (beyond those of its binary), otherwise reported
/// as [`main`] reports a trial that cannot run here: one trial of a binary that needs more.
pub fn needing(needs: &[Need], trial: Trial) -> Trial {
    let unmet: Vec<String> = needs.iter().filter_map(|n| n.check().err()).collect();
    if unmet.is_empty() {
        trial
    } else {
        unrunnable(&trial, &unmet.join("; "))
    }
}

/// A trial that cannot run here: a failure in CI, an ignored test (with the reason) elsewhere.
fn unrunnable(trial: &Trial, reason: &str) -> Trial {
    let name = trial.name().to_owned();
    if in_ci() {
        let message = format!("requirement not met in CI: {reason}");
        Trial::test(name, move || Err(Failed::from(message)))
    } else {
        eprintln!("note: {name} cannot run here: {reason}");
        Trial::test(name, || Ok(())).with_ignored_flag(true)
    }
}

/// Moves this process into a new network namespace with `lo` up (benchmarks call it from
/// `main`; [`main`] does it for tests). Does nothing when not root.
///
/// Must be called while the process has a single thread: `unshare(CLONE_NEWNET)` affects only
/// the calling thread, and threads created later inherit it.
pub fn enter_private_network_namespace() -> Result<(), String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Ok(());
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("unshare(CLONE_NEWNET): {e}"))?;
    let ip = find_executable("ip").ok_or("`ip` (iproute2) not found")?;
    let status = Command::new(ip)
        .args(["link", "set", "lo", "up"])
        .status()
        .map_err(|e| format!("ip link set lo up: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("ip link set lo up: {status}"))
    }
}

/// Polls `check` every 25 ms until it holds (for states with no readiness signal to wait on);
/// fails after `timeout`, naming `what`.
pub async fn wait_until<F>(
    what: &str,
    timeout: std::time::Duration,
    mut check: F,
) -> Result<(), Box<dyn std::error::Error>>
where
    F: AsyncFnMut() -> Result<bool, Box<dyn std::error::Error>>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if check().await? {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}").into());
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

/// The start of a benchmark's `main`: installs the process's rustls provider (for the
/// benchmark's own reqwest clients), moves into a private network namespace and builds the
/// runtime the benchmark runs on (two workers, like a Pi 3's share of cores for bramble).
/// Exits with status 2 and a message naming `bench` when either cannot be done.
pub fn bench_runtime(bench: &str) -> tokio::runtime::Runtime {
    // Benchmarks build reqwest clients of their own, which need the process's rustls provider.
    bramble_base::tls::install_crypto_provider();
    let runtime = enter_private_network_namespace().and_then(|()| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))
    });
    runtime.unwrap_or_else(|e| {
        eprintln!("{bench}: {e}");
        std::process::exit(2)
    })
}

/// A trial whose body is async (run with [`block_on`]).
pub fn async_trial<F, Fut, E>(name: impl Into<String>, body: F) -> Trial
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: Into<Box<dyn std::error::Error>>,
{
    Trial::test(name, move || block_on(body()))
}

/// Runs an async test body on a fresh multi-threaded tokio runtime and turns its result into a
/// libtest outcome.
pub fn block_on<F, E>(body: F) -> Result<(), Failed>
where
    F: std::future::Future<Output = Result<(), E>>,
    E: Into<Box<dyn std::error::Error>>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failed::from(format!("tokio runtime: {e}")))?;
    runtime
        .block_on(body)
        .map_err(|e| Failed::from(error_chain(&*e.into())))
}

/// An error and all its sources on one line: `outer: inner: innermost`.
pub use bramble_base::error_chain;
