//! The checks behind `bramble doctor`: can this machine run bramble, and, for everything that
//! is missing, the exact command or edit that fixes it.
//!
//! Every check reads the machine through a [`Host`] (where `/proc`, `/sys`, `/dev`, `/boot`
//! and `/run` are, where executables are looked for, what time it is), so tests point the
//! checks at fake trees. Checks never fail: what cannot be read is itself a finding.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bramble_runtime::cgroup::{CgroupVersion, Cgroups};
use bramble_runtime::client::{ContainerdVersion, SUPPORTED_CONTAINERD, Support};
use bramble_runtime::peer::{self, MountNamespace};
use serde::Serialize;

use crate::config::Config;

/// The CNI plugins bramble's network chain executes.
pub const CNI_PLUGINS: [&str; 4] = ["bridge", "host-local", "loopback", "firewall"];
/// The kernel parameters that turn the memory cgroup on where Raspberry Pi kernels disable it,
/// per hierarchy: with cgroup v2 (Raspberry Pi OS bookworm and trixie) `cgroup_enable=memory`
/// alone (6.12 kernels no longer know `cgroup_memory=1`), with v1 both, as older kernels need.
pub fn memory_cgroup_params(version: CgroupVersion) -> &'static str {
    match version {
        CgroupVersion::V2 => "cgroup_enable=memory",
        CgroupVersion::V1 => "cgroup_enable=memory cgroup_memory=1",
    }
}
/// Below this much free space on the state directory's filesystem: a warning.
pub const DISK_WARNING_BYTES: u64 = 1 << 30;
/// Below this much: blocking (image unpacking and state writes will fail).
pub const DISK_BLOCKING_BYTES: u64 = 100 << 20;
/// A clock before this (2024-01-01T00:00:00Z) has never been set: a Pi has no RTC.
const CLOCK_PLAUSIBLE_SINCE: Duration = Duration::from_secs(1_704_067_200);
/// How long the containerd check waits for an answer.
const CONTAINERD_TIMEOUT: Duration = Duration::from_secs(5);

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// bramble runs, but something works worse than it should.
    Warning,
    /// bramble cannot run functions (or cannot enforce their limits) until this is fixed.
    Blocking,
}

/// One check's finding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    /// What was found (for problems: what it breaks).
    pub detail: String,
    /// The command or edit that fixes it (problems only).
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    pub fn warning(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            status: Status::Warning,
            fix: Some(fix.into()),
            ..Check::ok(name, detail)
        }
    }

    pub fn blocking(
        name: &'static str,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            status: Status::Blocking,
            ..Check::warning(name, detail, fix)
        }
    }
}

/// Every check's finding, in order.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    /// How many checks ended with `status`.
    pub fn count(&self, status: Status) -> usize {
        self.checks.iter().filter(|c| c.status == status).count()
    }

    /// The report for people: one aligned line per check, the fix indented below it, and a
    /// verdict.
    pub fn human(&self) -> String {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        let mut out = String::new();
        for check in &self.checks {
            let label = match check.status {
                Status::Ok => "ok",
                Status::Warning => "warning",
                Status::Blocking => "BLOCKING",
            };
            out.push_str(&format!(
                "{label:<9} {:<width$}  {}\n",
                check.name, check.detail
            ));
            if let Some(fix) = &check.fix {
                out.push_str(&format!("{:<9} {:<width$}  fix: {fix}\n", "", ""));
            }
        }
        let (blocking, warnings) = (self.count(Status::Blocking), self.count(Status::Warning));
        out.push_str(&match (blocking, warnings) {
            (0, 0) => "\nall checks passed\n".to_owned(),
            (0, w) => format!("\n{w} warning(s); bramble can run\n"),
            (b, w) => format!(
                "\n{b} blocking problem(s), {w} warning(s): bramble cannot run functions here until the blocking ones are fixed\n"
            ),
        });
        out
    }
}

/// Where the checks find the machine.
#[derive(Clone, Debug)]
pub struct Host {
    pub proc: PathBuf,
    pub sys: PathBuf,
    pub dev: PathBuf,
    pub boot: PathBuf,
    pub run: PathBuf,
    /// Directories searched for executables (`runc`, `iptables`, `containerd`).
    pub path: Vec<PathBuf>,
    /// Whether checks may run commands (`timedatectl`, `runc --version`): the real machine
    /// only, never a fake tree.
    pub commands: bool,
    pub now: SystemTime,
}

impl Host {
    /// This machine: `PATH` plus the sbin directories a non-login root shell may lack.
    pub fn real() -> Host {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
        for extra in ["/usr/local/sbin", "/usr/sbin", "/sbin"] {
            if !dirs.iter().any(|d| d == Path::new(extra)) {
                dirs.push(extra.into());
            }
        }
        Host {
            proc: "/proc".into(),
            sys: "/sys".into(),
            dev: "/dev".into(),
            boot: "/boot".into(),
            run: "/run".into(),
            path: dirs,
            commands: true,
            now: SystemTime::now(),
        }
    }

    /// A fake machine under `root` (`root/proc`, `root/sys`, ..., executables in `root/bin`).
    pub fn under(root: &Path) -> Host {
        Host {
            proc: root.join("proc"),
            sys: root.join("sys"),
            dev: root.join("dev"),
            boot: root.join("boot"),
            run: root.join("run"),
            path: vec![root.join("bin")],
            commands: false,
            now: SystemTime::now(),
        }
    }

    /// The executable `name` on the search path.
    pub fn find(&self, name: &str) -> Option<PathBuf> {
        self.path
            .iter()
            .map(|d| d.join(name))
            .find(|p| is_executable(p))
    }

    /// The kernel command line file of the boot partition, if there is one.
    fn cmdline_txt(&self) -> Option<PathBuf> {
        [
            self.boot.join("firmware/cmdline.txt"),
            self.boot.join("cmdline.txt"),
        ]
        .into_iter()
        .find(|p| p.is_file())
    }

    /// How to add `params` to the kernel command line, and reboot.
    fn cmdline_fix(&self, params: &str) -> String {
        match self.cmdline_txt() {
            Some(file) => format!("sed -i '1 s/$/ {params}/' {} && reboot", file.display()),
            None => format!(
                "add `{params}` to the kernel command line (/boot/firmware/cmdline.txt on Raspberry Pi OS bookworm, /boot/cmdline.txt on older releases, GRUB_CMDLINE_LINUX in /etc/default/grub on a PC), then reboot"
            ),
        }
    }
}

/// Runs every check.
pub async fn run(config: &Config, host: &Host) -> Report {
    let mut checks = vec![
        containerd(config, host).await,
        mount_namespace(config, host).await,
        runc(host),
        cni_plugins(config),
        iptables(host),
    ];
    checks.extend(cgroups(host));
    checks.extend([
        ip_forwarding(host),
        disk_space(&config.state_dir),
        run_dir(&config.run_dir, host),
        gpio(host),
        time_sync(host),
        clock(host),
        state_permissions(&config.state_dir),
    ]);
    checks.extend(nats_server(config).await);
    Report { checks }
}

/// In cluster mode: the board's nats-server (see [`bramble_cluster::node::doctor`]).
pub async fn nats_server(config: &Config) -> Option<Check> {
    use bramble_cluster::node::doctor::{self, Verdict};
    let found = doctor::nats_server(&config.state_dir, &config.cluster.nats_server).await?;
    let fix = found.fix.unwrap_or_default();
    Some(match found.verdict {
        Verdict::Ok => Check::ok("nats-server", found.detail),
        Verdict::Warning => Check::warning("nats-server", found.detail, fix),
        Verdict::Blocking => Check::blocking("nats-server", found.detail, fix),
    })
}

/// containerd answers on the configured socket, in a release bramble supports.
pub async fn containerd(config: &Config, host: &Host) -> Check {
    let socket = &config.containerd_socket;
    let version = if socket.exists() {
        match bramble_runtime::client::Connection::new(
            socket,
            &config.containerd_namespace,
            CONTAINERD_TIMEOUT,
        ) {
            Ok(connection) => connection
                .server_version()
                .await
                .map_err(|e| bramble_base::error_chain(&e)),
            Err(e) => Err(bramble_base::error_chain(&e)),
        }
    } else {
        Err(format!("no socket at {}", socket.display()))
    };
    containerd_verdict(socket, version, host.find("containerd").is_some())
}

/// The containerd check's verdict on a version answer (or why there was none).
pub fn containerd_verdict(
    socket: &Path,
    version: Result<String, String>,
    installed: bool,
) -> Check {
    const NAME: &str = "containerd";
    match version {
        Ok(v) => match ContainerdVersion::parse(&v).map(ContainerdVersion::support) {
            Some(Support::Tested) => Check::ok(NAME, format!("{v} on {}", socket.display())),
            Some(Support::Untested) => Check::ok(
                NAME,
                format!(
                    "{v} on {} (supported; bramble is tested with 1.6 and 1.7)",
                    socket.display()
                ),
            ),
            Some(Support::Unsupported) | None => Check::blocking(
                NAME,
                format!(
                    "{v} on {} is not supported: bramble works with containerd {SUPPORTED_CONTAINERD}",
                    socket.display()
                ),
                "install a supported containerd: apt install containerd (1.6.20 in Debian 12 / Raspberry Pi OS bookworm, 1.7.24 in Debian 13 / trixie)",
            ),
        },
        Err(reason) => {
            let start = if installed {
                "systemctl enable --now containerd"
            } else {
                "apt install containerd && systemctl enable --now containerd"
            };
            let fix = if reason.contains("ermission denied") {
                "run as root: sudo bramble doctor".to_owned()
            } else if socket == Config::default().containerd_socket {
                start.to_owned()
            } else {
                format!(
                    "{start} (and make sure containerd's grpc.address is {}, or set containerd_socket)",
                    socket.display()
                )
            };
            Check::blocking(NAME, format!("not reachable: {reason}"), fix)
        }
    }
}

/// bramble shares containerd's mount namespace (the process serving the socket, found by its
/// peer credentials): otherwise runc cannot see the network namespaces bramble pins and every
/// function start fails.
pub async fn mount_namespace(config: &Config, host: &Host) -> Check {
    let socket = config.containerd_socket.clone();
    let proc = host.proc.clone();
    tokio::task::spawn_blocking(move || mount_namespace_verdict(&socket, &proc))
        .await
        .unwrap_or_else(|e| {
            Check::warning(
                MOUNT_NAMESPACE,
                format!("the check did not finish: {e}"),
                "run bramble doctor again",
            )
        })
}

const MOUNT_NAMESPACE: &str = "mount namespace";

/// The mount namespace check on the process serving `socket`, its namespace read under `proc`.
pub fn mount_namespace_verdict(socket: &Path, proc: &Path) -> Check {
    match peer::peer_pid(socket) {
        // The containerd check reports an unreachable socket.
        Err(_) => Check::ok(MOUNT_NAMESPACE, "not checked: containerd is not reachable"),
        Ok(None) => Check::warning(
            MOUNT_NAMESPACE,
            format!(
                "cannot tell: the process serving {} is in another PID namespace, so bramble probably runs in a container apart from containerd",
                socket.display()
            ),
            MountNamespace::FIX,
        ),
        Ok(Some(pid)) => match peer::compare(proc, pid) {
            found @ MountNamespace::Shared { .. } => Check::ok(MOUNT_NAMESPACE, found.describe()),
            found @ MountNamespace::Apart { .. } => {
                Check::blocking(MOUNT_NAMESPACE, found.describe(), MountNamespace::FIX)
            }
            found @ MountNamespace::Unknown(_) => Check::warning(
                MOUNT_NAMESPACE,
                found.describe(),
                "run as root: sudo bramble doctor",
            ),
        },
    }
}

/// runc, which containerd's shim executes.
pub fn runc(host: &Host) -> Check {
    match host.find("runc") {
        Some(path) => {
            let version = host
                .commands
                .then(|| command_output(&path, &["--version"]))
                .flatten()
                .and_then(|out| out.lines().next().map(str::to_owned));
            let detail = match version {
                Some(v) => format!("{} ({v})", path.display()),
                None => path.display().to_string(),
            };
            Check::ok("runc", detail)
        }
        None => Check::blocking(
            "runc",
            "runc not found: containerd cannot start any container",
            "apt install runc",
        ),
    }
}

/// The CNI plugins of the function network, in the configured directories.
pub fn cni_plugins(config: &Config) -> Check {
    let dirs = &config.network.cni_plugin_dirs;
    let mut found_in = BTreeSet::new();
    let mut missing = Vec::new();
    for plugin in CNI_PLUGINS {
        match dirs.iter().find(|d| is_executable(&d.join(plugin))) {
            Some(dir) => {
                found_in.insert(dir.display().to_string());
            }
            None => missing.push(plugin),
        }
    }
    let dirs_text = dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if missing.is_empty() {
        let found_in: Vec<String> = found_in.into_iter().collect();
        Check::ok(
            "cni plugins",
            format!("{} in {}", CNI_PLUGINS.join(", "), found_in.join(", ")),
        )
    } else {
        Check::blocking(
            "cni plugins",
            format!(
                "{} not found in {dirs_text}: functions cannot get a network",
                missing.join(", ")
            ),
            "apt install containernetworking-plugins",
        )
    }
}

/// iptables, which the bridge (masquerading) and firewall plugins run.
pub fn iptables(host: &Host) -> Check {
    match host.find("iptables") {
        Some(path) => Check::ok("iptables", path.display().to_string()),
        None => Check::blocking(
            "iptables",
            "iptables not found: the CNI bridge and firewall plugins need it",
            "apt install iptables",
        ),
    }
}

/// The cgroup hierarchy and its controllers: memory (blocking: limits would silently do
/// nothing), then pids and cpu (warnings).
pub fn cgroups(host: &Host) -> [Check; 2] {
    let root = host.sys.join("fs/cgroup");
    let version = Cgroups::at(&root).version();
    let label = match version {
        CgroupVersion::V1 => "cgroup v1",
        CgroupVersion::V2 => "cgroup v2",
    };
    let enabled = enabled_controllers(host, version);
    let memory = if enabled.contains("memory") {
        Check::ok("cgroups", format!("{label}, memory controller enabled"))
    } else {
        let cmdline = std::fs::read_to_string(host.proc.join("cmdline")).unwrap_or_default();
        let on_command_line = cmdline
            .split_whitespace()
            .any(|p| p == "cgroup_enable=memory");
        let in_file = host.cmdline_txt().filter(|f| {
            std::fs::read_to_string(f).is_ok_and(|t| t.contains("cgroup_enable=memory"))
        });
        let detail = format!(
            "{label}, memory controller disabled: memory limits of functions silently do nothing"
        );
        let fix = match (on_command_line, in_file) {
            (true, _) if version == CgroupVersion::V1 => "the kernel ignores cgroup_enable=memory: kernels from 6.12 may be built without cgroup v1 memory support; boot with cgroup v2 (remove systemd.unified_cgroup_hierarchy=0 from the kernel command line) and reboot".to_owned(),
            (true, _) if cmdline_disables_memory_last(&cmdline) => "the kernel command line has cgroup_enable=memory but a later cgroup_disable=memory wins (see /proc/cmdline): Raspberry Pi kernels before the fix of raspberrypi/linux#6980 append it from their device tree after cmdline.txt; update the kernel and firmware (apt update && apt full-upgrade) and reboot".to_owned(),
            (true, _) => "the kernel command line has cgroup_enable=memory, yet the kernel keeps the memory controller off: check /proc/cmdline and dmesg | grep -i cgroup (a kernel built without CONFIG_MEMCG cannot have it)".to_owned(),
            (false, Some(file)) => format!("reboot ({} already has cgroup_enable=memory; it applies at the next boot)", file.display()),
            (false, None) => host.cmdline_fix(memory_cgroup_params(version)),
        };
        Check::blocking("cgroups", detail, fix)
    };
    let missing: Vec<&str> = ["pids", "cpu"]
        .into_iter()
        .filter(|c| !enabled.contains(*c))
        .collect();
    let others = if missing.is_empty() {
        Check::ok("cgroup controllers", "pids, cpu enabled")
    } else {
        let params = missing
            .iter()
            .map(|c| format!("cgroup_enable={c}"))
            .collect::<Vec<_>>()
            .join(" ");
        Check::warning(
            "cgroup controllers",
            format!(
                "{} controller(s) missing: process and CPU limits of functions are not enforced",
                missing.join(", ")
            ),
            host.cmdline_fix(&params),
        )
    };
    [memory, others]
}

/// True when the last `cgroup_enable=memory`/`cgroup_disable=memory` of a command line disables.
fn cmdline_disables_memory_last(cmdline: &str) -> bool {
    cmdline
        .split_whitespace()
        .filter(|p| p.starts_with("cgroup_enable=") || p.starts_with("cgroup_disable="))
        .rfind(|p| {
            p.split_once('=')
                .is_some_and(|(_, v)| v.split(',').any(|c| c == "memory"))
        })
        .is_some_and(|p| p.starts_with("cgroup_disable="))
}

/// The controllers a container's cgroup can use: v2 lists them at the root, v1 in
/// `/proc/cgroups` (enabled) with a mounted hierarchy (possibly co-mounted, `cpu,cpuacct`).
fn enabled_controllers(host: &Host, version: CgroupVersion) -> BTreeSet<String> {
    let root = host.sys.join("fs/cgroup");
    match version {
        CgroupVersion::V2 => std::fs::read_to_string(root.join("cgroup.controllers"))
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        CgroupVersion::V1 => {
            let mounted: BTreeSet<String> = std::fs::read_dir(&root)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.path().is_dir())
                .flat_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.split(',').map(str::to_owned).collect::<Vec<_>>()
                })
                .collect();
            std::fs::read_to_string(host.proc.join("cgroups"))
                .unwrap_or_default()
                .lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|line| {
                    // subsys_name hierarchy num_cgroups enabled
                    let f: Vec<&str> = line.split_whitespace().collect();
                    match (f.first(), f.get(3)) {
                        (Some(name), Some(&"1")) => Some((*name).to_owned()),
                        _ => None,
                    }
                })
                .filter(|c| mounted.contains(c))
                .collect()
        }
    }
}

/// IP forwarding, without which functions cannot reach the LAN or the Internet.
pub fn ip_forwarding(host: &Host) -> Check {
    const NAME: &str = "ip forwarding";
    const FIX: &str = "sysctl -w net.ipv4.ip_forward=1 && echo 'net.ipv4.ip_forward = 1' > /etc/sysctl.d/99-bramble.conf";
    match std::fs::read_to_string(host.proc.join("sys/net/ipv4/ip_forward")) {
        Ok(v) if v.trim() == "1" => Check::ok(NAME, "net.ipv4.ip_forward = 1"),
        Ok(v) => Check::warning(
            NAME,
            format!(
                "net.ipv4.ip_forward = {}: functions cannot reach the LAN or the Internet",
                v.trim()
            ),
            FIX,
        ),
        Err(e) => Check::warning(NAME, format!("cannot read net.ipv4.ip_forward: {e}"), FIX),
    }
}

/// Free space on the filesystem of the state directory (or of its nearest existing parent).
pub fn disk_space(state_dir: &Path) -> Check {
    let dir = existing_ancestor(state_dir);
    match nix::sys::statvfs::statvfs(&dir) {
        // The field types are 32 bits wide on 32-bit ARM.
        #[allow(clippy::useless_conversion)]
        Ok(s) => disk_verdict(
            state_dir,
            u64::from(s.blocks_available()).saturating_mul(u64::from(s.fragment_size())),
        ),
        Err(e) => Check::warning(
            "disk space",
            format!("cannot measure free space at {}: {e}", dir.display()),
            format!("df -h {}", dir.display()),
        ),
    }
}

/// The disk check's verdict on `free` bytes.
pub fn disk_verdict(state_dir: &Path, free: u64) -> Check {
    const NAME: &str = "disk space";
    let detail = format!("{} free for {}", human_bytes(free), state_dir.display());
    let fix = "free space: apt clean; journalctl --vacuum-size=50M; remove unused images (bramble image rm NAME)";
    if free < DISK_BLOCKING_BYTES {
        Check::blocking(
            NAME,
            format!("{detail}: images cannot be unpacked nor state written"),
            fix,
        )
    } else if free < DISK_WARNING_BYTES {
        Check::warning(NAME, format!("{detail}: less than 1 GiB"), fix)
    } else {
        Check::ok(NAME, detail)
    }
}

/// The run directory is on a tmpfs: network namespaces and FIFOs live in memory, and a reboot
/// leaves no stale state behind.
pub fn run_dir(run_dir: &Path, host: &Host) -> Check {
    const NAME: &str = "run dir";
    let mounts = std::fs::read_to_string(host.proc.join("self/mounts")).unwrap_or_default();
    let path = resolve(run_dir);
    let mount = mounts
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (_, point, fstype) = (f.next()?, f.next()?, f.next()?);
            Some((PathBuf::from(unescape_mount(point)), fstype.to_owned()))
        })
        .filter(|(point, _)| path.starts_with(point))
        // The longest mount point wins; among equal ones (stacked mounts) the last one.
        .max_by_key(|(point, _)| point.as_os_str().len());
    match mount {
        Some((point, fstype)) if fstype == "tmpfs" => Check::ok(
            NAME,
            format!("{} on tmpfs ({})", run_dir.display(), point.display()),
        ),
        Some((point, fstype)) => Check::warning(
            NAME,
            format!(
                "{} is on {fstype} ({}), not tmpfs: network namespaces and FIFOs should live in memory, and stale state survives reboots",
                run_dir.display(),
                point.display()
            ),
            "mount a tmpfs on /run (systemd does) or set run_dir to a directory on a tmpfs",
        ),
        None => Check::warning(
            NAME,
            format!("cannot tell the filesystem of {}", run_dir.display()),
            "set run_dir to a directory on a tmpfs (e.g. /run/bramble)",
        ),
    }
}

/// The GPIO character devices and their labels; none is fine (the simulator is used).
pub fn gpio(host: &Host) -> Check {
    let mut chips: Vec<(u32, String)> = std::fs::read_dir(&host.dev)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name.strip_prefix("gpiochip")?.parse().ok()?;
            Some((n, name))
        })
        .collect();
    chips.sort();
    if chips.is_empty() {
        return Check::ok("gpio", "none (the GPIO simulator will be used)");
    }
    let list: Vec<String> = chips
        .iter()
        .map(|(_, name)| match gpio_label(host, name) {
            Some(label) => format!("{name} ({label})"),
            None => name.clone(),
        })
        .collect();
    Check::ok("gpio", list.join(", "))
}

/// A chip's label from sysfs: its device directory, or the legacy `/sys/class/gpio` entry
/// (named by base number there, so matched through its `device` link).
fn gpio_label(host: &Host, chip: &str) -> Option<String> {
    let read = |p: PathBuf| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    let class = host.sys.join("class/gpio");
    read(host.sys.join("bus/gpio/devices").join(chip).join("label"))
        .or_else(|| read(class.join(chip).join("label")))
        .or_else(|| {
            std::fs::read_dir(&class)
                .ok()?
                .flatten()
                .find(|e| {
                    std::fs::read_link(e.path().join("device"))
                        .is_ok_and(|t| t.file_name().is_some_and(|n| n == chip))
                })
                .and_then(|e| read(e.path().join("label")))
        })
}

/// The clock is synchronized (timedatectl, systemd-timesyncd's flag, or a running NTP daemon).
pub fn time_sync(host: &Host) -> Check {
    const NAME: &str = "time sync";
    const FIX: &str = "timedatectl set-ntp true (apt install systemd-timesyncd if it is missing)";
    let timedatectl = host
        .commands
        .then(|| {
            command_output(
                Path::new("timedatectl"),
                &["show", "-p", "NTPSynchronized", "--value"],
            )
        })
        .flatten();
    match timedatectl.as_deref().map(str::trim) {
        Some("yes") => return Check::ok(NAME, "synchronized (timedatectl)"),
        Some("no") => {
            return Check::warning(
                NAME,
                "not synchronized (timedatectl): TLS to registries and schedules need a right clock",
                FIX,
            );
        }
        _ => {}
    }
    if host.run.join("systemd/timesync/synchronized").exists() {
        return Check::ok(NAME, "synchronized (systemd-timesyncd)");
    }
    let daemons = running_commands(host);
    if let Some(d) = ["chronyd", "ntpd", "openntpd"]
        .into_iter()
        .find(|d| daemons.contains(*d))
    {
        return Check::ok(NAME, format!("{d} is running"));
    }
    // The kernel truncates command names to 15 characters.
    let detail = if daemons.contains("systemd-timesyn") {
        "systemd-timesyncd runs but has not synchronized yet"
    } else {
        "no time synchronization found (timedatectl, systemd-timesyncd, chronyd, ntpd)"
    };
    Check::warning(NAME, detail, FIX)
}

/// The clock is plausible: a Pi without RTC starts in the past until the network sets it.
pub fn clock(host: &Host) -> Check {
    let now = humantime::format_rfc3339_seconds(host.now).to_string();
    match host.now.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(since) if since >= CLOCK_PLAUSIBLE_SINCE => Check::ok("clock", now),
        _ => Check::warning(
            "clock",
            format!(
                "{now} is before 2024: the clock was never set (no RTC, no network time yet); TLS certificates look invalid"
            ),
            "timedatectl set-ntp true, or set it by hand: date -s 'YYYY-MM-DD HH:MM:SS'",
        ),
    }
}

/// The secrets under the state directory are private: directories 0700, files 0600.
pub fn state_permissions(state_dir: &Path) -> Check {
    const NAME: &str = "state permissions";
    if !state_dir.exists() {
        return Check::ok(
            NAME,
            format!(
                "{} does not exist yet (created on first start)",
                state_dir.display()
            ),
        );
    }
    let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777);
    let mut problems = Vec::new();
    let mut fixes = Vec::new();
    for dir in ["secrets", "function-secrets"].map(|d| state_dir.join(d)) {
        match mode(&dir) {
            Ok(0o700) => {}
            Ok(m) => {
                problems.push(format!("{} is {m:04o}", dir.display()));
                fixes.push(format!("chmod 700 {}", dir.display()));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => problems.push(format!("cannot read {}: {e}", dir.display())),
        }
    }
    let secrets = state_dir.join("secrets");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&secrets)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let open: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let m = mode(f).ok()?;
            (m & 0o077 != 0).then(|| {
                problems.push(format!("{} is {m:04o}", f.display()));
                f.display().to_string()
            })
        })
        .collect();
    if !open.is_empty() {
        fixes.push(format!("chmod 600 {}", open.join(" ")));
    }
    if problems.is_empty() {
        return Check::ok(NAME, "secrets private (0700, files 0600)");
    }
    let detail = format!(
        "{}: other users may read API credentials or secrets",
        problems.join(", ")
    );
    let fix = if fixes.is_empty() {
        "run as root: sudo bramble doctor".to_owned()
    } else {
        fixes.join(" && ")
    };
    Check::warning(NAME, detail, fix)
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A command's standard output when it succeeds.
fn command_output(program: &Path, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The command names (`comm`) of every process.
fn running_commands(host: &Host) -> BTreeSet<String> {
    std::fs::read_dir(&host.proc)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
        .map(|c| c.trim().to_owned())
        .collect()
}

/// The nearest existing directory at or above `path`.
fn existing_ancestor(path: &Path) -> PathBuf {
    path.ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"))
        .to_path_buf()
}

/// `path` with symlinks of its existing part resolved (`/var/run/x` → `/run/x`).
fn resolve(path: &Path) -> PathBuf {
    let base = existing_ancestor(path);
    let rest = path.strip_prefix(&base).unwrap_or(Path::new(""));
    std::fs::canonicalize(&base).unwrap_or(base).join(rest)
}

/// Mount points in `/proc/self/mounts` escape space, tab, newline and backslash as `\ooo`.
fn unescape_mount(field: &str) -> String {
    let mut out = String::new();
    let mut rest = field;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(char::from(c));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake machine in a temporary directory.
    struct Fake {
        dir: tempfile::TempDir,
        host: Host,
    }

    impl Fake {
        fn new() -> Fake {
            let dir = tempfile::tempdir().unwrap();
            let host = Host::under(dir.path());
            Fake { dir, host }
        }

        fn path(&self, rel: &str) -> PathBuf {
            self.dir.path().join(rel)
        }

        fn write(&self, rel: &str, text: &str) -> PathBuf {
            let path = self.path(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
            path
        }

        fn executable(&self, rel: &str) -> PathBuf {
            let path = self.write(rel, "#!/bin/sh\necho fake\n");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            path
        }

        /// A cgroup v2 host with these root controllers.
        fn cgroup_v2(&self, controllers: &str) {
            self.write(
                "sys/fs/cgroup/cgroup.controllers",
                &format!("{controllers}\n"),
            );
        }
    }

    fn assert_check(check: &Check, status: Status, detail: &str, fix: Option<&str>) {
        assert_eq!(check.status, status, "{check:?}");
        assert!(check.detail.contains(detail), "{detail:?} not in {check:?}");
        match fix {
            Some(fix) => assert!(
                check.fix.as_deref().is_some_and(|f| f.contains(fix)),
                "fix {fix:?} not in {check:?}"
            ),
            None => assert_eq!(check.fix, None, "{check:?}"),
        }
    }

    #[test]
    fn containerd_versions_and_unreachable_sockets() {
        let socket = Path::new("/run/containerd/containerd.sock");
        let ok = containerd_verdict(socket, Ok("1.6.20~ds1".into()), true);
        assert_check(
            &ok,
            Status::Ok,
            "1.6.20~ds1 on /run/containerd/containerd.sock",
            None,
        );
        assert_check(
            &containerd_verdict(socket, Ok("1.7.24~ds1".into()), true),
            Status::Ok,
            "1.7.24~ds1 on /run/containerd/containerd.sock",
            None,
        );
        assert_check(
            &containerd_verdict(socket, Ok("v2.1.0".into()), true),
            Status::Ok,
            "v2.1.0 on /run/containerd/containerd.sock (supported; bramble is tested with 1.6 and 1.7)",
            None,
        );
        for unsupported in ["1.5.9", "3.0.0", "dev"] {
            assert_check(
                &containerd_verdict(socket, Ok(unsupported.into()), true),
                Status::Blocking,
                &format!(
                    "{unsupported} on /run/containerd/containerd.sock is not supported: bramble works with containerd 1.6, 1.7 or 2.x"
                ),
                Some("apt install containerd (1.6.20 in Debian 12"),
            );
        }
        let down = containerd_verdict(socket, Err("no socket at x".into()), true);
        assert_check(
            &down,
            Status::Blocking,
            "not reachable: no socket at x",
            Some("systemctl"),
        );
        assert_eq!(
            down.fix.as_deref(),
            Some("systemctl enable --now containerd")
        );
        let missing = containerd_verdict(socket, Err("no socket".into()), false);
        assert_eq!(
            missing.fix.as_deref(),
            Some("apt install containerd && systemctl enable --now containerd")
        );
        for socket in [socket, Path::new("/tmp/c.sock")] {
            let denied =
                containerd_verdict(socket, Err("Permission denied (os error 13)".into()), true);
            assert_eq!(
                denied.fix.as_deref(),
                Some("run as root: sudo bramble doctor")
            );
        }
        let elsewhere = containerd_verdict(Path::new("/tmp/c.sock"), Err("no".into()), true);
        assert!(
            elsewhere
                .fix
                .unwrap()
                .contains("grpc.address is /tmp/c.sock")
        );
    }

    #[tokio::test]
    async fn containerd_is_blocking_without_a_socket_or_a_listener() {
        let fake = Fake::new();
        let mut config = Config {
            containerd_socket: fake.path("missing.sock"),
            ..Config::default()
        };
        let check = containerd(&config, &fake.host).await;
        assert_check(&check, Status::Blocking, "no socket at", Some("containerd"));
        // A socket file nobody listens on any more.
        config.containerd_socket = fake.path("dead.sock");
        drop(std::os::unix::net::UnixListener::bind(&config.containerd_socket).unwrap());
        let check = containerd(&config, &fake.host).await;
        assert_check(
            &check,
            Status::Blocking,
            "containerd unavailable",
            Some("containerd"),
        );
    }

    #[test]
    fn the_mount_namespace_is_compared_with_the_socket_peers() {
        let fake = Fake::new();
        let socket = fake.path("c.sock");
        // Nobody listens: the containerd check says so; this one does not repeat it.
        assert_check(
            &mount_namespace_verdict(&socket, &fake.host.proc),
            Status::Ok,
            "not checked: containerd is not reachable",
            None,
        );
        // This process listens, so it is the peer; its namespace is read from the fake /proc.
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let pid = std::process::id().to_string();
        let link = |who: &str, ns: &str| {
            let dir = fake.path(&format!("proc/{who}/ns"));
            std::fs::create_dir_all(&dir).unwrap();
            let _ = std::fs::remove_file(dir.join("mnt"));
            symlink(ns, dir.join("mnt")).unwrap();
        };
        link("self", "mnt:[4026531841]");
        link(&pid, "mnt:[4026531841]");
        assert_check(
            &mount_namespace_verdict(&socket, &fake.host.proc),
            Status::Ok,
            &format!("shared with containerd (pid {pid}, mnt:[4026531841])"),
            None,
        );
        link("self", "mnt:[4026532999]");
        assert_check(
            &mount_namespace_verdict(&socket, &fake.host.proc),
            Status::Blocking,
            &format!(
                "bramble (mnt:[4026532999]) and containerd (pid {pid}, mnt:[4026531841]) are in different mount namespaces"
            ),
            Some("remove PrivateMounts=, ProtectSystem="),
        );
    }

    #[test]
    fn executables_are_found_on_the_search_path() {
        let fake = Fake::new();
        assert_check(
            &runc(&fake.host),
            Status::Blocking,
            "runc not found",
            Some("apt install runc"),
        );
        assert_check(
            &iptables(&fake.host),
            Status::Blocking,
            "iptables not found",
            Some("apt install iptables"),
        );
        // Present but not executable does not count.
        fake.write("bin/runc", "");
        assert_eq!(runc(&fake.host).status, Status::Blocking);
        let runc_path = fake.executable("bin/runc");
        fake.executable("bin/iptables");
        assert_check(
            &runc(&fake.host),
            Status::Ok,
            &runc_path.display().to_string(),
            None,
        );
        assert_check(&iptables(&fake.host), Status::Ok, "bin/iptables", None);
    }

    #[test]
    fn cni_plugins_are_looked_for_in_every_configured_dir() {
        let fake = Fake::new();
        let mut config = Config::default();
        config.network.cni_plugin_dirs = vec![fake.path("cni-a"), fake.path("cni-b")];
        for plugin in ["bridge", "host-local", "loopback"] {
            fake.executable(&format!("cni-a/{plugin}"));
        }
        let check = cni_plugins(&config);
        assert_check(
            &check,
            Status::Blocking,
            "firewall not found in",
            Some("apt install containernetworking-plugins"),
        );
        assert!(check.detail.contains("cni-b"), "{check:?}");
        fake.executable("cni-b/firewall");
        assert_check(
            &cni_plugins(&config),
            Status::Ok,
            "bridge, host-local, loopback, firewall in",
            None,
        );
    }

    #[test]
    fn cgroup_v2_controllers() {
        let fake = Fake::new();
        fake.cgroup_v2("cpuset cpu io memory hugetlb pids rdma misc");
        let [memory, others] = cgroups(&fake.host);
        assert_check(
            &memory,
            Status::Ok,
            "cgroup v2, memory controller enabled",
            None,
        );
        assert_check(&others, Status::Ok, "pids, cpu enabled", None);

        // A Raspberry Pi kernel without cgroup_enable=memory, Pi OS bookworm layout.
        fake.cgroup_v2("cpuset cpu io pids");
        let cmdline = fake.write(
            "boot/firmware/cmdline.txt",
            "console=serial0,115200 root=PARTUUID=1234-02 rootwait\n",
        );
        let [memory, others] = cgroups(&fake.host);
        let fix = format!(
            "sed -i '1 s/$/ cgroup_enable=memory/' {} && reboot",
            cmdline.display()
        );
        assert_check(
            &memory,
            Status::Blocking,
            "memory limits of functions silently do nothing",
            Some(&fix),
        );
        assert_eq!(memory.fix.as_deref(), Some(fix.as_str()));
        assert_eq!(others.status, Status::Ok);
        // The command does what it says (minus the reboot).
        let edit = fix.trim_end_matches(" && reboot");
        let status = std::process::Command::new("sh")
            .args(["-c", edit])
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(
            std::fs::read_to_string(&cmdline).unwrap(),
            "console=serial0,115200 root=PARTUUID=1234-02 rootwait cgroup_enable=memory\n"
        );
        // Edited but not rebooted yet.
        let [memory, _] = cgroups(&fake.host);
        assert_check(&memory, Status::Blocking, "disabled", Some("reboot ("));
        // Booted with it, and still off: the device tree of a 6.12 Raspberry Pi kernel appended
        // cgroup_disable=memory after cmdline.txt (raspberrypi/linux#6980).
        fake.write(
            "proc/cmdline",
            "console=tty1 rootwait cgroup_enable=memory cgroup_memory=1 cgroup_disable=memory\n",
        );
        let [memory, _] = cgroups(&fake.host);
        assert_check(
            &memory,
            Status::Blocking,
            "disabled",
            Some(
                "a later cgroup_disable=memory wins (see /proc/cmdline): Raspberry Pi kernels before the fix of raspberrypi/linux#6980",
            ),
        );
        // Enabled last, and still off: no reordering helps.
        fake.write(
            "proc/cmdline",
            "cgroup_disable=memory cgroup_enable=memory x\n",
        );
        let [memory, _] = cgroups(&fake.host);
        assert_check(
            &memory,
            Status::Blocking,
            "disabled",
            Some("yet the kernel keeps the memory controller off"),
        );
    }

    #[test]
    fn the_memory_fix_names_the_cmdline_file_there_is() {
        let fake = Fake::new();
        fake.cgroup_v2("cpu pids");
        let [memory, _] = cgroups(&fake.host);
        let fix = memory.fix.unwrap();
        assert!(
            fix.contains("/boot/firmware/cmdline.txt on Raspberry Pi OS bookworm"),
            "{fix}"
        );
        assert!(fix.contains("/boot/cmdline.txt on older releases"), "{fix}");
        // cgroup v2: cgroup_enable=memory alone (cgroup_memory=1 is unknown to 6.12 kernels).
        assert!(fix.contains("add `cgroup_enable=memory` to"), "{fix}");
        // cgroup v1: both parameters, as older Raspberry Pi kernels need.
        assert_eq!(
            memory_cgroup_params(CgroupVersion::V1),
            "cgroup_enable=memory cgroup_memory=1"
        );
        let old = fake.write("boot/cmdline.txt", "root=/dev/mmcblk0p2\n");
        let [memory, _] = cgroups(&fake.host);
        assert!(
            memory
                .fix
                .unwrap()
                .contains(&format!(" {} && reboot", old.display()))
        );
    }

    #[test]
    fn cgroup_v1_controllers_must_be_enabled_and_mounted() {
        let fake = Fake::new();
        let proc_cgroups = |memory_enabled: u8| {
            format!(
                "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpuset\t3\t1\t1\ncpu\t1\t1\t1\ncpuacct\t1\t1\t1\nmemory\t4\t1\t{memory_enabled}\npids\t0\t1\t1\n"
            )
        };
        fake.write("proc/cgroups", &proc_cgroups(1));
        for dir in ["cpu,cpuacct", "memory", "cpuset"] {
            std::fs::create_dir_all(fake.path("sys/fs/cgroup").join(dir)).unwrap();
        }
        let [memory, others] = cgroups(&fake.host);
        assert_check(
            &memory,
            Status::Ok,
            "cgroup v1, memory controller enabled",
            None,
        );
        // pids is enabled but has no hierarchy mounted.
        assert_check(
            &others,
            Status::Warning,
            "pids controller(s) missing",
            Some("cgroup_enable=pids"),
        );
        std::fs::create_dir_all(fake.path("sys/fs/cgroup/pids")).unwrap();
        assert_eq!(cgroups(&fake.host)[1].status, Status::Ok);

        fake.write("proc/cgroups", &proc_cgroups(0));
        let [memory, _] = cgroups(&fake.host);
        assert_check(
            &memory,
            Status::Blocking,
            "cgroup v1, memory controller disabled",
            Some("cgroup_enable=memory"),
        );
        fake.write("proc/cmdline", "cgroup_enable=memory\n");
        let [memory, _] = cgroups(&fake.host);
        assert_check(
            &memory,
            Status::Blocking,
            "disabled",
            Some("boot with cgroup v2"),
        );
    }

    #[test]
    fn ip_forwarding_is_read_from_proc() {
        let fake = Fake::new();
        let fix = "sysctl -w net.ipv4.ip_forward=1 && echo 'net.ipv4.ip_forward = 1' > /etc/sysctl.d/99-bramble.conf";
        assert_check(
            &ip_forwarding(&fake.host),
            Status::Warning,
            "cannot read",
            Some(fix),
        );
        fake.write("proc/sys/net/ipv4/ip_forward", "0\n");
        assert_check(
            &ip_forwarding(&fake.host),
            Status::Warning,
            "functions cannot reach the LAN or the Internet",
            Some(fix),
        );
        fake.write("proc/sys/net/ipv4/ip_forward", "1\n");
        assert_check(&ip_forwarding(&fake.host), Status::Ok, "= 1", None);
    }

    #[test]
    fn disk_space_thresholds() {
        let dir = Path::new("/var/lib/bramble");
        assert_check(
            &disk_verdict(dir, 5 << 30),
            Status::Ok,
            "5.0 GiB free for /var/lib/bramble",
            None,
        );
        assert_check(
            &disk_verdict(dir, 500 << 20),
            Status::Warning,
            "less than 1 GiB",
            Some("apt clean"),
        );
        assert_check(
            &disk_verdict(dir, 50 << 20),
            Status::Blocking,
            "cannot be unpacked",
            Some("apt clean"),
        );
        // The real filesystem, through a directory that does not exist yet.
        let tmp = tempfile::tempdir().unwrap();
        let check = disk_space(&tmp.path().join("not/yet"));
        assert!(check.detail.contains("free for"), "{check:?}");
    }

    #[test]
    fn the_run_dir_should_be_on_tmpfs() {
        let fake = Fake::new();
        let run = Path::new("/nonexistent-bramble/run/bramble");
        assert_check(
            &run_dir(run, &fake.host),
            Status::Warning,
            "cannot tell",
            Some("tmpfs"),
        );
        fake.write(
            "proc/self/mounts",
            "/dev/mmcblk0p2 / ext4 rw,noatime 0 0\ntmpfs /nonexistent-bramble/run tmpfs rw,nosuid 0 0\n",
        );
        assert_check(
            &run_dir(run, &fake.host),
            Status::Ok,
            "on tmpfs (/nonexistent-bramble/run)",
            None,
        );
        let elsewhere = Path::new("/nonexistent-bramble/var/bramble");
        assert_check(
            &run_dir(elsewhere, &fake.host),
            Status::Warning,
            "is on ext4 (/), not tmpfs",
            Some("mount a tmpfs on /run"),
        );
        // Mount points with spaces are octal-escaped.
        fake.write(
            "proc/self/mounts",
            "/dev/sda1 / ext4 rw 0 0\ntmpfs /nonexistent\\040bramble tmpfs rw 0 0\n",
        );
        assert_eq!(
            run_dir(Path::new("/nonexistent bramble/x"), &fake.host).status,
            Status::Ok
        );
        assert_eq!(unescape_mount("a\\040b\\134c\\"), "a b\\c\\");
    }

    #[test]
    fn gpio_chips_are_listed_with_their_labels() {
        let fake = Fake::new();
        assert_check(
            &gpio(&fake.host),
            Status::Ok,
            "none (the GPIO simulator will be used)",
            None,
        );
        for chip in ["gpiochip0", "gpiochip1", "gpiochip10"] {
            fake.write(&format!("dev/{chip}"), "");
        }
        fake.write("dev/gpiomem", "");
        fake.write("sys/bus/gpio/devices/gpiochip0/label", "pinctrl-bcm2711\n");
        // The legacy class entry is named by base number; its `device` link names the chip.
        fake.write("sys/class/gpio/gpiochip512/label", "raspberrypi-exp-gpio\n");
        std::fs::create_dir_all(fake.path("sys/devices/gpiochip1")).unwrap();
        symlink(
            "../../devices/gpiochip1",
            fake.path("sys/class/gpio/gpiochip512/device"),
        )
        .unwrap();
        assert_check(
            &gpio(&fake.host),
            Status::Ok,
            "gpiochip0 (pinctrl-bcm2711), gpiochip1 (raspberrypi-exp-gpio), gpiochip10",
            None,
        );
    }

    #[test]
    fn time_sync_sources() {
        let fake = Fake::new();
        let fix = "timedatectl set-ntp true";
        assert_check(
            &time_sync(&fake.host),
            Status::Warning,
            "no time synchronization found",
            Some(fix),
        );
        fake.write("proc/412/comm", "systemd-timesyn\n");
        assert_check(
            &time_sync(&fake.host),
            Status::Warning,
            "has not synchronized yet",
            Some(fix),
        );
        fake.write("run/systemd/timesync/synchronized", "");
        assert_check(
            &time_sync(&fake.host),
            Status::Ok,
            "synchronized (systemd-timesyncd)",
            None,
        );
        let other = Fake::new();
        other.write("proc/self/comm", "chronyd\n");
        assert_eq!(
            time_sync(&other.host).status,
            Status::Warning,
            "only processes count"
        );
        other.write("proc/77/comm", "chronyd\n");
        assert_check(
            &time_sync(&other.host),
            Status::Ok,
            "chronyd is running",
            None,
        );
    }

    #[test]
    fn a_clock_before_2024_was_never_set() {
        let mut host = Host::under(Path::new("/nonexistent"));
        host.now = SystemTime::UNIX_EPOCH + Duration::from_secs(86_400);
        assert_check(
            &clock(&host),
            Status::Warning,
            "1970-01-02T00:00:00Z is before 2024",
            Some("timedatectl set-ntp true"),
        );
        host.now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000);
        assert_check(&clock(&host), Status::Ok, "2025-06-15", None);
    }

    #[test]
    fn secrets_must_be_private() {
        let fake = Fake::new();
        let state = fake.path("state");
        assert_check(
            &state_permissions(&state),
            Status::Ok,
            "does not exist yet",
            None,
        );
        let store = crate::store::Store::open(&state, "openfaas-fn").unwrap();
        store.api_credentials().unwrap();
        assert_check(
            &state_permissions(&state),
            Status::Ok,
            "secrets private",
            None,
        );
        let secrets = state.join("secrets");
        let password = secrets.join("basic-auth-password");
        std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o644)).unwrap();
        let fix = format!(
            "chmod 700 {} && chmod 600 {}",
            secrets.display(),
            password.display()
        );
        let check = state_permissions(&state);
        assert_check(&check, Status::Warning, "secrets is 0755", Some(&fix));
        assert!(
            check.detail.contains("basic-auth-password is 0644"),
            "{check:?}"
        );
        // A stricter file is fine.
        std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(state_permissions(&state).status, Status::Ok);
    }

    #[tokio::test]
    async fn a_whole_report_on_a_bare_machine() {
        let fake = Fake::new();
        let config = Config {
            containerd_socket: fake.path("c.sock"),
            state_dir: fake.path("state"),
            run_dir: fake.path("run/bramble"),
            ..Config::default()
        };
        let report = run(&config, &fake.host).await;
        let names: Vec<&str> = report.checks.iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            [
                "containerd",
                "mount namespace",
                "runc",
                "cni plugins",
                "iptables",
                "cgroups",
                "cgroup controllers",
                "ip forwarding",
                "disk space",
                "run dir",
                "gpio",
                "time sync",
                "clock",
                "state permissions"
            ]
        );
        assert!(report.count(Status::Blocking) >= 4, "{report:?}");
        let human = report.human();
        let containerd_line = human.lines().next().unwrap();
        assert!(
            containerd_line.starts_with("BLOCKING  containerd          not reachable"),
            "{human}"
        );
        let fix_line = human.lines().nth(1).unwrap();
        assert!(fix_line.starts_with(&format!("{:30}fix: ", "")), "{human}");
        assert!(
            human.contains("\nok        gpio                none"),
            "{human}"
        );
        assert!(
            human
                .trim_end()
                .ends_with("until the blocking ones are fixed"),
            "{human}"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["checks"][0]["status"], "blocking");
        assert_eq!(json["checks"][10]["fix"], serde_json::Value::Null);
    }

    #[test]
    fn the_verdict_line_counts_problems() {
        let report = |checks| Report { checks };
        assert!(
            report(vec![Check::ok("a", "x")])
                .human()
                .ends_with("\nall checks passed\n")
        );
        let warned = report(vec![Check::ok("a", "x"), Check::warning("bb", "y", "do z")]);
        assert_eq!(
            warned.human(),
            "ok        a   x\nwarning   bb  y\n              fix: do z\n\n1 warning(s); bramble can run\n"
        );
    }
}
