//! `bramble install` / `bramble uninstall`: the systemd service, the binary it runs, the state
//! directory with the API credentials, a commented default configuration and IP forwarding.
//!
//! Both are idempotent and report what they did to each file (`created`, `updated`,
//! `unchanged`, `removed`, `absent`). With `--root DIR` they work on a tree (an image being
//! built, a test) and touch nothing of the running system: no sysctl, no systemctl.
//!
//! The Debian package (`cross/deb`) is made from the same code: `--print-unit` and
//! `--print-config` give it the unit and the configuration template it ships, and its postinst
//! runs `install --packaged`, which prepares only what the package does not ship (state
//! directory, credentials, IP forwarding). On a packaged system plain `install` and
//! `uninstall` refuse: apt owns the unit, the binary and the configuration there.

use std::io::Read as _;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use bramble_agent::config::{Config, DEFAULT_CONFIG_FILE};
use bramble_agent::store::{ApiCredentials, Store, write_atomic};

/// The unit file.
pub(crate) const UNIT_PATH: &str = "/etc/systemd/system/bramble.service";
/// Where `enable` links the unit.
const WANTS_LINK: &str = "/etc/systemd/system/multi-user.target.wants/bramble.service";
/// Where the running binary is copied to.
pub(crate) const BINARY_PATH: &str = "/usr/local/bin/bramble";
/// The unit the Debian package ships (its presence means apt manages bramble here).
pub(crate) const PACKAGED_UNIT_PATH: &str = "/lib/systemd/system/bramble.service";
/// The binary the Debian package ships.
pub(crate) const PACKAGED_BINARY_PATH: &str = "/usr/bin/bramble";
/// Persistent IP forwarding.
pub(crate) const SYSCTL_PATH: &str = "/etc/sysctl.d/99-bramble.conf";
const SYSCTL_TEXT: &str = "# Written by `bramble install`: functions reach the LAN and the Internet through this host.\nnet.ipv4.ip_forward = 1\n";
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

#[derive(clap::Args, Debug)]
pub(crate) struct InstallArgs {
    /// Install into this directory instead of / (building an image, tests); nothing of the
    /// running system is touched.
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// The configuration file of the service (default /etc/bramble/config.toml); written with
    /// every default, commented out, unless it exists.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Enable the service without starting it.
    #[arg(long)]
    no_start: bool,
    /// The bramble binary the service runs, as is (default: this one, copied to
    /// /usr/local/bin/bramble).
    #[arg(long, value_name = "PATH")]
    binary: Option<PathBuf>,
    /// Print the unit file for --binary (default /usr/local/bin/bramble) and --config, and
    /// change nothing (the Debian package ships this unit).
    #[arg(long, conflicts_with_all = ["root", "no_start", "print_config", "packaged"])]
    print_unit: bool,
    /// Print the default configuration file (every key, commented out) and change nothing.
    #[arg(long, conflicts_with_all = ["root", "no_start", "binary", "config", "packaged"])]
    print_config: bool,
    /// What the Debian package's postinst runs: the state directory, the API credentials and
    /// IP forwarding only; no unit, binary or configuration file (the package ships them), no
    /// systemctl (the maintainer scripts enable and start the service), no password printed
    /// (dpkg's output is logged).
    #[arg(long, conflicts_with_all = ["no_start", "binary"])]
    packaged: bool,
}

#[derive(clap::Args, Debug)]
pub(crate) struct UninstallArgs {
    /// Uninstall from this directory instead of /.
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Also remove the state directory (functions, secrets, credentials) and the configuration.
    #[arg(long)]
    purge: bool,
    /// The configuration file of the service (to find the state directory).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// What a step did to a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Created,
    Updated,
    Unchanged,
    Removed,
    Absent,
}

/// The tree being worked on, and what changed in it.
struct Target {
    root: Option<PathBuf>,
    changed: bool,
}

impl Target {
    fn new(root: Option<&Path>) -> anyhow::Result<Target> {
        let root = match root {
            Some(r) if r == Path::new("/") => None,
            Some(r) => {
                Some(std::fs::canonicalize(r).with_context(|| format!("--root {}", r.display()))?)
            }
            None => None,
        };
        Ok(Target {
            root,
            changed: false,
        })
    }

    /// `path` (as the installed system sees it) in the tree being worked on.
    fn at(&self, path: &Path) -> PathBuf {
        match &self.root {
            Some(root) => root.join(path.strip_prefix("/").unwrap_or(path)),
            None => path.to_path_buf(),
        }
    }

    /// systemctl may run: the real system, booted with systemd.
    fn systemd(&self) -> bool {
        self.root.is_none() && Path::new("/run/systemd/system").is_dir()
    }

    fn report(&mut self, outcome: Outcome, path: &Path) {
        let label = match outcome {
            Outcome::Created => "created",
            Outcome::Updated => "updated",
            Outcome::Unchanged => "unchanged",
            Outcome::Removed => "removed",
            Outcome::Absent => "absent",
        };
        self.changed |= !matches!(outcome, Outcome::Unchanged | Outcome::Absent);
        println!("  {label:<10} {}", path.display());
    }
}

pub(crate) fn install(args: &InstallArgs) -> anyhow::Result<()> {
    let config_path = absolute(
        args.config
            .as_deref()
            .unwrap_or(Path::new(DEFAULT_CONFIG_FILE)),
    )?;
    let config_arg =
        (config_path != Path::new(DEFAULT_CONFIG_FILE)).then_some(config_path.as_path());
    if args.print_config {
        print!("{DEFAULT_CONFIG}");
        return Ok(());
    }
    if args.print_unit {
        let binary = absolute(args.binary.as_deref().unwrap_or(Path::new(BINARY_PATH)))?;
        let origin = if binary == Path::new(PACKAGED_BINARY_PATH) {
            UnitOrigin::Package
        } else {
            UnitOrigin::Install
        };
        print!("{}", unit_text(&binary, config_arg, origin)?);
        return Ok(());
    }
    let mut target = Target::new(args.root.as_deref())?;
    if args.packaged {
        return install_packaged(&mut target, &config_path);
    }
    refuse_if_packaged(&target, "install")?;

    // The configuration first: it says where the state goes.
    let config_file = target.at(&config_path);
    let config = if config_file.exists() {
        let config = Config::load(&config_file, true)?;
        config
            .validate()
            .with_context(|| format!("fix {} first", config_file.display()))?;
        target.report(Outcome::Unchanged, &config_file);
        config
    } else {
        let outcome = write_file(&config_file, DEFAULT_CONFIG.as_bytes(), 0o644)?;
        target.report(outcome, &config_file);
        Config::default()
    };

    // The binary the service runs.
    let (binary, binary_changed) = match &args.binary {
        Some(binary) => {
            let binary = absolute(binary)?;
            if !is_executable(&target.at(&binary)) {
                let inside = target
                    .root
                    .as_ref()
                    .map_or(String::new(), |r| format!(" (inside {})", r.display()));
                bail!("--binary {}: no executable there{inside}", binary.display());
            }
            (binary, false)
        }
        None => {
            let running = std::env::current_exe().context("finding the running binary")?;
            let installed = target.at(Path::new(BINARY_PATH));
            let outcome = if same_file(&running, &installed) {
                Outcome::Unchanged
            } else {
                copy_binary(&running, &installed)?
            };
            target.report(outcome, &installed);
            (PathBuf::from(BINARY_PATH), outcome != Outcome::Unchanged)
        }
    };

    // The unit.
    let unit = target.at(Path::new(UNIT_PATH));
    let unit_outcome = write_file(
        &unit,
        unit_text(&binary, config_arg, UnitOrigin::Install)?.as_bytes(),
        0o644,
    )?;
    target.report(unit_outcome, &unit);

    let (credentials, generated, secrets) = prepare_state_and_forwarding(&mut target, &config)?;
    if generated {
        println!(
            "generated API password (shown once): {}",
            credentials.password
        );
        if let Some(root) = &target.root {
            println!(
                "note: every board made from {} shares these credentials; remove {} to have each board generate its own at its first start",
                root.display(),
                secrets.join("basic-auth-*").display()
            );
        }
    }

    // The service.
    let start = if args.no_start {
        "enable bramble"
    } else {
        "enable --now bramble"
    };
    if target.systemd() {
        if unit_outcome != Outcome::Unchanged {
            systemctl(&["daemon-reload"])?;
        }
        if !args.no_start && (binary_changed || unit_outcome == Outcome::Updated) {
            // A new binary or unit replaces a running node; its functions keep running.
            systemctl(&["enable", "bramble"])?;
            systemctl(&["restart", "bramble"])?;
        } else {
            systemctl(&start.split(' ').collect::<Vec<_>>())?;
        }
    } else if let Some(root) = &target.root {
        println!(
            "to enable the service in that tree: systemctl --root={} enable bramble",
            root.display()
        );
    } else {
        println!(
            "systemd is not running here (no /run/systemd/system): run the node with `bramble up`, or on a systemd machine: systemctl daemon-reload && systemctl {start}"
        );
    }
    if !target.changed {
        println!("unchanged: bramble was already installed like this");
    }
    Ok(())
}

/// The state directory with the API credentials, exactly as `bramble up` makes them, and IP
/// forwarding (persistently and, on the running system, now): what both `install` and
/// `install --packaged` prepare. Returns the credentials, whether they were generated now, and
/// the secrets directory.
fn prepare_state_and_forwarding(
    target: &mut Target,
    config: &Config,
) -> anyhow::Result<(ApiCredentials, bool, PathBuf)> {
    let state_dir = target.at(&config.state_dir);
    let store = Store::open(&state_dir, &config.default_namespace)
        .with_context(|| format!("preparing {}", state_dir.display()))?;
    let (credentials, generated) = store.api_credentials()?;
    let secrets = state_dir.join("secrets");
    let credential_outcome = if generated {
        Outcome::Created
    } else {
        Outcome::Unchanged
    };
    target.report(credential_outcome, &secrets.join("basic-auth-user"));
    target.report(credential_outcome, &secrets.join("basic-auth-password"));

    let sysctl = target.at(Path::new(SYSCTL_PATH));
    let outcome = write_file(&sysctl, SYSCTL_TEXT.as_bytes(), 0o644)?;
    target.report(outcome, &sysctl);
    if target.root.is_none() {
        enable_ip_forwarding(target);
    }

    println!(
        "API credentials: user {} in {}, password in {} (readable by root)",
        credentials.user,
        secrets.join("basic-auth-user").display(),
        secrets.join("basic-auth-password").display()
    );
    Ok((credentials, generated, secrets))
}

/// `install --packaged`: what the Debian package does not ship. The configuration file is the
/// package's conffile; when the administrator removed it, the defaults apply.
fn install_packaged(target: &mut Target, config_path: &Path) -> anyhow::Result<()> {
    let config_file = target.at(config_path);
    let config = Config::load(&config_file, false)?;
    config
        .validate()
        .with_context(|| format!("fix {} first", config_file.display()))?;
    let (_, generated, secrets) = prepare_state_and_forwarding(target, &config)?;
    let own_unit = target.at(Path::new(UNIT_PATH));
    if std::fs::read_to_string(&own_unit).is_ok_and(|u| u.starts_with(INSTALL_HEADER)) {
        println!(
            "warning: {} (from an earlier `bramble install`) overrides the package's unit: remove it and {}, then systemctl daemon-reload",
            own_unit.display(),
            target.at(Path::new(BINARY_PATH)).display()
        );
    }
    if generated {
        // Not printed: dpkg's output goes to /var/log/apt/term.log, readable by group adm.
        println!(
            "generated the API password: sudo cat {}",
            secrets.join("basic-auth-password").display()
        );
    }
    Ok(())
}

/// Plain `install` and `uninstall` would write a second unit over the package's, or remove
/// files apt owns: refused where the Debian package is installed.
fn refuse_if_packaged(target: &Target, command: &str) -> anyhow::Result<()> {
    let unit = target.at(Path::new(PACKAGED_UNIT_PATH));
    if unit.exists() {
        let how = if command == "install" {
            "the package already installed the unit, the binary and /etc/bramble/config.toml; start it with `systemctl enable --now bramble`"
        } else {
            "remove it with `apt remove bramble` (state kept) or `apt purge bramble` (state removed)"
        };
        bail!(
            "bramble is installed from its Debian package here ({} exists): {how}",
            unit.display()
        );
    }
    Ok(())
}

pub(crate) fn uninstall(args: &UninstallArgs) -> anyhow::Result<()> {
    let mut target = Target::new(args.root.as_deref())?;
    refuse_if_packaged(&target, "uninstall")?;
    let unit = target.at(Path::new(UNIT_PATH));
    if target.systemd()
        && unit.exists()
        && let Err(e) = systemctl(&["disable", "--now", "bramble"])
    {
        eprintln!("warning: {e:#}");
    }
    for path in [UNIT_PATH, WANTS_LINK, SYSCTL_PATH] {
        let path = target.at(Path::new(path));
        let outcome = remove(&path)?;
        target.report(outcome, &path);
    }
    if target.systemd() {
        systemctl(&["daemon-reload"])?;
    }

    let config_path = absolute(
        args.config
            .as_deref()
            .unwrap_or(Path::new(DEFAULT_CONFIG_FILE)),
    )?;
    let config_file = target.at(&config_path);
    let config = match Config::load(&config_file, false) {
        Ok(config) => config,
        Err(e) if !args.purge => {
            eprintln!(
                "warning: {:#} (assuming the default state directory)",
                anyhow::Error::new(e)
            );
            Config::default()
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "reading {} to find the state directory to purge",
                    config_file.display()
                )
            });
        }
    };
    let state_dir = target.at(&config.state_dir);
    let ns = &config.containerd_namespace;
    if args.purge {
        let functions = deployed_functions(&state_dir, &config.default_namespace);
        let outcome = remove(&state_dir)?;
        target.report(outcome, &state_dir);
        let config_dir = target.at(Path::new("/etc/bramble"));
        let path = if config_file.parent() == Some(config_dir.as_path()) {
            config_dir
        } else {
            config_file
        };
        let outcome = remove(&path)?;
        target.report(outcome, &path);
        if !functions.is_empty() {
            println!(
                "functions that were deployed: {}. Their containers keep running under containerd (namespace {ns}) until removed:\n  for id in $(ctr -n {ns} containers ls -q); do ctr -n {ns} tasks delete -f $id; ctr -n {ns} containers delete $id; done\n(their network namespaces under {} go away at the next reboot)",
                functions.join(", "),
                config.run_dir.display()
            );
        }
    } else {
        println!(
            "kept {} and {} (bramble uninstall --purge removes them)",
            state_dir.display(),
            config_file.display()
        );
        println!(
            "running functions keep running: their containers belong to containerd (namespace {ns}), not to the service. A reinstalled bramble adopts them; to get rid of them, delete them through the API (faas-cli remove NAME) before uninstalling"
        );
    }
    println!(
        "kept {} (rm it if you no longer want the CLI) and net.ipv4.ip_forward's current value (sysctl -w net.ipv4.ip_forward=0 to turn it off)",
        target.at(Path::new(BINARY_PATH)).display()
    );
    if !target.changed {
        println!("unchanged: bramble was not installed");
    }
    Ok(())
}

/// The unit file for `binary` (and a configuration file other than the default).
///
/// No `PrivateTmp=`, `ProtectSystem=`, `PrivateMounts=`, `ReadWritePaths=` or anything else
/// that gives the service a mount namespace of its own: the network namespaces bramble
/// bind-mounts under the run directory must be visible to runc, which containerd starts
/// outside this service.
pub(crate) fn unit_text(
    binary: &Path,
    config: Option<&Path>,
    origin: UnitOrigin,
) -> anyhow::Result<String> {
    let mut exec = format!("{} up", unit_word(binary)?);
    if let Some(config) = config {
        exec.push_str(&format!(" --config {}", unit_word(config)?));
    }
    let written_by = match origin {
        UnitOrigin::Install => INSTALL_HEADER,
        UnitOrigin::Package => {
            "# Shipped by the bramble Debian package (made by `bramble install --print-unit`)."
        }
    };
    Ok(format!(
        "\
{written_by}
# Local changes belong in a drop-in: systemctl edit bramble
#
# Do not add PrivateTmp=, ProtectSystem=, PrivateMounts=, ReadWritePaths= or any other setting
# that gives the service its own mount namespace: bramble bind-mounts the functions' network
# namespaces under /run/bramble, and runc (started by containerd, outside this service) must
# see them.

[Unit]
Description=bramble edge FaaS node (OpenFaaS API)
After=containerd.service network-online.target
Requires=containerd.service
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={exec}
WatchdogSec=30s
Restart=always
RestartSec=2s
# Functions' shims are containerd's children, not bramble's: stopping or restarting the
# service signals bramble alone and running functions are left alone.
KillMode=process
TimeoutStopSec=45s
LimitNOFILE=65536
# The node must outlive its functions under memory pressure.
OOMScoreAdjust=-500

[Install]
WantedBy=multi-user.target
"
    ))
}

/// The first line of a unit written by `bramble install`.
const INSTALL_HEADER: &str =
    "# Written by `bramble install`, which rewrites it; `bramble uninstall` removes it.";

/// Who puts the unit on the system (only its comment differs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UnitOrigin {
    /// `bramble install`, into /etc/systemd/system.
    Install,
    /// The Debian package, into /lib/systemd/system.
    Package,
}

/// A path as one word of a unit's command line: only characters that need no quoting or
/// escaping (`%` is a specifier, `$` a variable, spaces split words).
fn unit_word(path: &Path) -> anyhow::Result<&str> {
    let text = path.to_str().unwrap_or_default();
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._+-@:,".contains(c));
    if !plain || !path.is_absolute() {
        bail!(
            "{} cannot go into the unit as is: use an absolute path of letters, digits and /._+-@:,",
            path.display()
        );
    }
    Ok(text)
}

/// The default configuration file: every key with its default, commented out.
pub(crate) const DEFAULT_CONFIG: &str = r#"# bramble configuration, read by `bramble up` at start (apply changes: systemctl restart bramble).
# Every key is shown with its default, commented out: uncomment what you change. Each key can
# also be set by an environment variable and a flag of `bramble up` (see the README);
# flag > environment > this file > default. Unknown keys and bad values stop the start.

# Address of the gateway: OpenFaaS API, /function/NAME, /healthz, /metrics.
#listen = "0.0.0.0:8080"
# Desired state, secrets, API credentials, async queue.
#state_dir = "/var/lib/bramble"
# Volatile files (keep it on a tmpfs): FIFOs, network namespaces, staged secrets.
#run_dir = "/run/bramble"
#containerd_socket = "/run/containerd/containerd.sock"
# containerd namespace of the function containers.
#containerd_namespace = "openfaas-fn"
# OpenFaaS namespace used when a request names none.
#default_namespace = "openfaas-fn"
# Always, IfNotPresent (no network when the image is present) or Never.
#pull_policy = "IfNotPresent"
# Upstream timeout of functions (per function: annotation bramble.timeout).
#function_timeout = "60s"
# How long a request waits for a starting function.
#ready_timeout = "60s"
# Between SIGTERM and SIGKILL when a function stops.
#stop_grace = "10s"
# Function output kept in memory per function.
#log_buffer = "256Ki"
# Largest JSON body of the API, largest uploaded image archive.
#max_api_body = "1Mi"
#max_upload = "4Gi"
# Largest size one image layer may unpack to (a decompression bomb is refused).
#max_unpacked = "4Gi"
# Memory all functions may reserve together: "auto" (75 % of the RAM), "none" or a quantity.
#memory_budget = "auto"
# Images no function uses are removed after this long, or "never".
#image_gc_after = "1h"
# Stop every function when the node stops (otherwise they keep running and are adopted).
#stop_functions_on_shutdown = false

# Limits of functions that set none.
#[defaults]
# Memory limit ("" = none).
#memory = "128Mi"
# CPU limit such as "500m" or "1" ("" = none).
#cpu = ""
# Processes and threads per function.
#pids = 512

# The function network.
#[network]
#bridge = "bramble0"
#subnet = "10.72.0.0/16"
#cni_plugin_dirs = ["/usr/lib/cni", "/opt/cni/bin"]

#[registry]
# Registries spoken to over plain HTTP (loopback ones always are).
#insecure = []
# Docker config.json with registry logins; default: <state_dir>/docker/config.json
# credentials = "/etc/bramble/docker-config.json"

# The durable queue behind /async-function.
#[async]
#workers = 4
#max_body = "8Mi"

# The hardware helper: GPIO, I2C, SPI, PWM and sensors for functions granted them (see the README).
#[hardware]
# "auto" (the GPIO character device where a chip below exists, else the simulator),
# "cdev" or "simulator".
#backend = "auto"
# GPIO chips functions may use, by label, in order of preference (never by number).
#chip_labels = ["pinctrl-rp1", "pinctrl-bcm2711", "pinctrl-bcm2835"]
# The kernel's 1-Wire devices (DS18B20 temperature sensors).
#w1_dir = "/sys/bus/w1/devices"
# Per-function socket directories; default: <run_dir>/hw
# socket_dir = "/run/bramble/hw"
# The simulator's lines and I2C devices (register files; a BME280 by default).
#sim_lines = ["GPIO0", "GPIO1", "GPIO2", "GPIO3", "GPIO4", "GPIO5", "GPIO6", "GPIO7", "GPIO8", "GPIO9", "GPIO10", "GPIO11", "GPIO12", "GPIO13", "GPIO14", "GPIO15", "GPIO16", "GPIO17", "GPIO18", "GPIO19", "GPIO20", "GPIO21", "GPIO22", "GPIO23", "GPIO24", "GPIO25", "GPIO26", "GPIO27"]
#sim_i2c = [{ bus = 1, address = 0x76, registers = [[0xD0, 0x60]] }]
# Pairs of simulated lines wired together like a jumper: an output on one drives the other.
#sim_jumpers = []

#[cluster]
# Used only once the board is in a cluster (`bramble cluster init` / `join`).
# This board's name and LAN address; default: the host name, the default route's address.
# board = "pi1"
# address = "192.168.1.10"
# Board-to-board listener (TLS) and nats-server's route port.
#board_port = 7425
#route_port = 7424
# Labels placement constraints can name.
#labels = []
# A board silent this long is dead.
#dead_after = "10s"
# How many boards carry JetStream (the shared state): 3 or 5.
#max_jetstream = 3
#nats_server = "nats-server"
# Join this cluster at start when the board is in none (as `bramble cluster init` prints it).
# join = "bramble1.NAME.TOKEN 192.168.1.10:8080"
"#;

/// Writes `bytes` with `mode` unless the file already has exactly them.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<Outcome> {
    let existing = std::fs::read(path).ok();
    let same_mode = std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o7777 == mode);
    if existing.as_deref() == Some(bytes) && same_mode {
        return Ok(Outcome::Unchanged);
    }
    create_parent(path)?;
    write_atomic(path, bytes, mode)?;
    // The temp file's mode went through the umask.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok(if existing.is_some() {
        Outcome::Updated
    } else {
        Outcome::Created
    })
}

/// Copies the binary `from` over `to` (atomically: a running copy keeps its inode), unless
/// `to` already holds the same bytes.
fn copy_binary(from: &Path, to: &Path) -> anyhow::Result<Outcome> {
    let existed = to.exists();
    if existed && same_contents(from, to)? {
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("setting the mode of {}", to.display()))?;
        return Ok(Outcome::Unchanged);
    }
    create_parent(to)?;
    bramble_base::write_atomic_with(to, 0o755, |file| {
        std::io::copy(&mut std::fs::File::open(from)?, file)?;
        // Whatever the umask: the binary is executable by everyone.
        file.set_permissions(std::fs::Permissions::from_mode(0o755))
    })
    .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(if existed {
        Outcome::Updated
    } else {
        Outcome::Created
    })
}

/// Whether two files hold the same bytes (read in chunks: a debug binary is 200 MB).
fn same_contents(a: &Path, b: &Path) -> anyhow::Result<bool> {
    let open =
        |p: &Path| std::fs::File::open(p).with_context(|| format!("reading {}", p.display()));
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        let chunk = bb.get_mut(..n).unwrap_or_default();
        fb.read_exact(chunk)?;
        if ba.get(..n) != Some(&*chunk) {
            return Ok(false);
        }
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn remove(path: &Path) -> anyhow::Result<Outcome> {
    let result = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Outcome::Absent),
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        _ => std::fs::remove_file(path),
    };
    result.with_context(|| format!("removing {}", path.display()))?;
    Ok(Outcome::Removed)
}

fn create_parent(path: &Path) -> anyhow::Result<()> {
    match path.parent() {
        Some(dir) => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display())),
        None => Ok(()),
    }
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    if path.is_absolute() {
        Ok(path.to_path_buf())
    } else {
        bail!("{} must be an absolute path", path.display())
    }
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The names of the functions recorded in a state directory (none when it cannot be read).
fn deployed_functions(state_dir: &Path, default_namespace: &str) -> Vec<String> {
    if !state_dir.join("state.json").exists() {
        return Vec::new();
    }
    Store::open(state_dir, default_namespace)
        .map(|store| {
            store
                .snapshot()
                .all_functions()
                .map(|(ns, name, _)| format!("{name}.{ns}"))
                .collect()
        })
        .unwrap_or_default()
}

/// Turns IP forwarding on now (the sysctl file does it at every boot).
fn enable_ip_forwarding(target: &mut Target) {
    let path = Path::new(IP_FORWARD);
    if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "1") {
        target.report(Outcome::Unchanged, path);
        return;
    }
    match std::fs::write(path, "1\n") {
        Ok(()) => target.report(Outcome::Updated, path),
        Err(e) => eprintln!(
            "warning: cannot enable IP forwarding now ({e}): sysctl -w net.ipv4.ip_forward=1"
        ),
    }
}

fn systemctl(args: &[&str]) -> anyhow::Result<()> {
    let command = format!("systemctl {}", args.join(" "));
    println!("  running    {command}");
    let status = Command::new("systemctl")
        .args(args)
        .status()
        .with_context(|| format!("running {command}"))?;
    if !status.success() {
        bail!("{command} failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_has_what_the_node_needs_and_no_private_mount_namespace() {
        let unit = unit_text(Path::new(BINARY_PATH), None, UnitOrigin::Install).unwrap();
        assert!(unit.starts_with(INSTALL_HEADER));
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
            assert!(unit.lines().any(|l| l == line), "missing {line}:\n{unit}");
        }
        for key in FORBIDDEN_KEYS {
            assert!(
                !unit.lines().any(|l| l.trim_start().starts_with(key)),
                "{key} in\n{unit}"
            );
        }
        assert!(unit.contains("# Do not add PrivateTmp="));
        let with_config = unit_text(
            Path::new("/opt/b/bramble"),
            Some(Path::new("/srv/b.toml")),
            UnitOrigin::Install,
        )
        .unwrap();
        assert!(with_config.contains("\nExecStart=/opt/b/bramble up --config /srv/b.toml\n"));
        // The package's unit differs in its first comment only.
        let packaged = unit_text(Path::new(BINARY_PATH), None, UnitOrigin::Package).unwrap();
        assert_eq!(
            packaged.lines().skip(1).collect::<Vec<_>>(),
            unit.lines().skip(1).collect::<Vec<_>>()
        );
        assert!(packaged.starts_with("# Shipped by the bramble Debian package"));
    }

    /// Settings that would give the service a private mount namespace.
    const FORBIDDEN_KEYS: &[&str] = &[
        "PrivateTmp",
        "ProtectSystem",
        "ProtectHome",
        "PrivateMounts",
        "ReadWritePaths",
        "ReadOnlyPaths",
        "InaccessiblePaths",
        "TemporaryFileSystem",
        "BindPaths",
        "RootDirectory",
        "MountFlags",
    ];

    #[test]
    fn paths_that_need_quoting_are_refused() {
        for bad in [
            "/opt/my bramble",
            "/opt/100%",
            "/opt/$HOME",
            "relative/bramble",
            "",
        ] {
            assert!(
                unit_text(Path::new(bad), None, UnitOrigin::Package).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_default_config_is_every_default_commented_out() {
        assert_eq!(Config::parse(DEFAULT_CONFIG).unwrap(), Config::default());
        // Uncommenting every setting and section header gives the defaults too.
        let uncommented: String = DEFAULT_CONFIG
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest)
                    if rest.starts_with('[')
                        || (rest.contains(" = ") && !rest.starts_with(' ')) =>
                {
                    rest
                }
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(Config::parse(&uncommented).unwrap(), Config::default());
        // And it names every key there is.
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        for (key, value) in &defaults {
            match value.as_table() {
                Some(section) => {
                    assert!(DEFAULT_CONFIG.contains(&format!("\n#[{key}]\n")), "[{key}]");
                    for key in section.keys() {
                        assert!(DEFAULT_CONFIG.contains(&format!("\n#{key} = ")), "{key}");
                    }
                }
                None => assert!(DEFAULT_CONFIG.contains(&format!("\n#{key} = ")), "{key}"),
            }
        }
        assert!(DEFAULT_CONFIG.contains("\n# credentials = "));
    }

    #[test]
    fn files_are_written_once_and_then_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/file");
        assert_eq!(write_file(&path, b"x", 0o644).unwrap(), Outcome::Created);
        assert_eq!(write_file(&path, b"x", 0o644).unwrap(), Outcome::Unchanged);
        assert_eq!(write_file(&path, b"x", 0o600).unwrap(), Outcome::Updated);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(write_file(&path, b"y", 0o600).unwrap(), Outcome::Updated);
        assert_eq!(std::fs::read(&path).unwrap(), b"y");

        let from = dir.path().join("from");
        std::fs::write(&from, vec![7u8; 200_000]).unwrap();
        let to = dir.path().join("bin/bramble");
        assert_eq!(copy_binary(&from, &to).unwrap(), Outcome::Created);
        assert_eq!(copy_binary(&from, &to).unwrap(), Outcome::Unchanged);
        assert_eq!(
            std::fs::metadata(&to).unwrap().permissions().mode() & 0o777,
            0o755
        );
        let mut other = vec![7u8; 200_000];
        other[150_000] = 8;
        std::fs::write(&from, other).unwrap();
        assert_eq!(copy_binary(&from, &to).unwrap(), Outcome::Updated);
        assert!(same_contents(&from, &to).unwrap());

        assert_eq!(remove(&to).unwrap(), Outcome::Removed);
        assert_eq!(remove(&to).unwrap(), Outcome::Absent);
    }

    fn install_args(root: &Path) -> InstallArgs {
        InstallArgs {
            root: Some(root.to_path_buf()),
            config: None,
            no_start: true,
            binary: None,
            print_unit: false,
            print_config: false,
            packaged: false,
        }
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn packaged_install_prepares_state_only_and_twice_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let args = InstallArgs {
            packaged: true,
            no_start: false,
            ..install_args(root)
        };
        install(&args).unwrap();
        let state = root.join("var/lib/bramble");
        assert_eq!(mode(&state), 0o755);
        assert_eq!(mode(&state.join("secrets")), 0o700);
        for file in ["basic-auth-user", "basic-auth-password"] {
            assert_eq!(mode(&state.join("secrets").join(file)), 0o600, "{file}");
        }
        let password = std::fs::read(state.join("secrets/basic-auth-password")).unwrap();
        assert!(password.len() >= 16);
        assert_eq!(
            std::fs::read_to_string(root.join("etc/sysctl.d/99-bramble.conf")).unwrap(),
            SYSCTL_TEXT
        );
        // The package ships these: not written.
        for shipped in [UNIT_PATH, BINARY_PATH, DEFAULT_CONFIG_FILE] {
            let path = root.join(shipped.trim_start_matches('/'));
            assert!(!path.exists(), "{shipped} written");
        }
        // Again (an upgrade, dpkg-reconfigure): the credentials stay.
        install(&args).unwrap();
        assert_eq!(
            std::fs::read(state.join("secrets/basic-auth-password")).unwrap(),
            password
        );
        // The conffile's state_dir is honoured.
        std::fs::create_dir_all(root.join("etc/bramble")).unwrap();
        std::fs::write(
            root.join("etc/bramble/config.toml"),
            "state_dir = \"/srv/bramble\"\n",
        )
        .unwrap();
        install(&args).unwrap();
        assert!(
            root.join("srv/bramble/secrets/basic-auth-password")
                .exists()
        );
        // A broken conffile stops the configuration with the key named.
        std::fs::write(root.join("etc/bramble/config.toml"), "stat_dir = 1\n").unwrap();
        let e = install(&args).unwrap_err();
        assert!(format!("{e:#}").contains("stat_dir"), "{e:#}");
    }

    #[test]
    fn plain_install_and_uninstall_refuse_on_a_packaged_system() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let unit = root.join(PACKAGED_UNIT_PATH.trim_start_matches('/'));
        std::fs::create_dir_all(unit.parent().unwrap()).unwrap();
        std::fs::write(&unit, "").unwrap();
        let e = install(&install_args(root)).unwrap_err().to_string();
        assert!(
            e.contains("Debian package") && e.contains("systemctl enable --now bramble"),
            "{e}"
        );
        let e = uninstall(&UninstallArgs {
            root: Some(root.to_path_buf()),
            purge: true,
            config: None,
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("apt purge bramble"), "{e}");
        assert!(!root.join("etc/systemd/system/bramble.service").exists());
        assert!(!root.join("var/lib/bramble").exists());
        // What the postinst runs still works.
        install(&InstallArgs {
            packaged: true,
            no_start: false,
            ..install_args(root)
        })
        .unwrap();
        assert!(
            root.join("var/lib/bramble/secrets/basic-auth-user")
                .exists()
        );
    }
}
