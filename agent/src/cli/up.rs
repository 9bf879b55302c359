//! `bramble up`'s flags and environment variables: every key of the configuration file, each
//! parsed into its type by clap — as the file's values are by serde — and laid over the file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bramble_agent::config::{
    ByteSize, Config, CpuLimit, DEFAULT_CONFIG_FILE, Expiry, MemoryBudget, MemoryLimit,
};
use bramble_runtime::PullPolicy;
use clap::Args;

/// Every key of the configuration file, as a flag and an environment variable.
#[derive(Args, Debug)]
pub(crate) struct UpArgs {
    /// Configuration file (default /etc/bramble/config.toml if it exists).
    #[arg(long, env = "BRAMBLE_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "BRAMBLE_LISTEN")]
    listen: Option<SocketAddr>,
    /// Persistent state directory.
    #[arg(long, env = "BRAMBLE_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Volatile runtime directory (tmpfs).
    #[arg(long, env = "BRAMBLE_RUN_DIR")]
    run_dir: Option<PathBuf>,
    /// containerd's socket.
    #[arg(long, env = "BRAMBLE_CONTAINERD_SOCKET")]
    containerd_socket: Option<PathBuf>,
    /// containerd namespace of functions.
    #[arg(long, env = "BRAMBLE_CONTAINERD_NAMESPACE")]
    containerd_namespace: Option<String>,
    /// OpenFaaS namespace used when a request names none.
    #[arg(long, env = "BRAMBLE_DEFAULT_NAMESPACE")]
    default_namespace: Option<String>,
    /// Image pull policy: Always, IfNotPresent, Never.
    #[arg(long, env = "BRAMBLE_PULL_POLICY")]
    pull_policy: Option<PullPolicy>,
    /// Default upstream timeout of functions (e.g. 60s).
    #[arg(long, env = "BRAMBLE_FUNCTION_TIMEOUT", value_parser = humantime::parse_duration)]
    function_timeout: Option<Duration>,
    /// How long a request waits for a starting function.
    #[arg(long, env = "BRAMBLE_READY_TIMEOUT", value_parser = humantime::parse_duration)]
    ready_timeout: Option<Duration>,
    /// Grace period between SIGTERM and SIGKILL.
    #[arg(long, env = "BRAMBLE_STOP_GRACE", value_parser = humantime::parse_duration)]
    stop_grace: Option<Duration>,
    /// Output kept in memory per function (e.g. 256Ki).
    #[arg(long, env = "BRAMBLE_LOG_BUFFER")]
    log_buffer: Option<ByteSize>,
    /// Default memory limit of functions (empty: unlimited).
    #[arg(long, env = "BRAMBLE_DEFAULT_MEMORY")]
    default_memory: Option<MemoryLimit>,
    /// Default CPU limit of functions (empty: unlimited).
    #[arg(long, env = "BRAMBLE_DEFAULT_CPU")]
    default_cpu: Option<CpuLimit>,
    /// Default pids limit of functions.
    #[arg(long, env = "BRAMBLE_DEFAULT_PIDS")]
    default_pids: Option<u64>,
    /// Name of the function bridge.
    #[arg(long, env = "BRAMBLE_BRIDGE")]
    bridge: Option<String>,
    /// Subnet of the function bridge.
    #[arg(long, env = "BRAMBLE_SUBNET")]
    subnet: Option<String>,
    /// CNI plugin directories (repeat the flag; comma-separated in the variable).
    #[arg(long, env = "BRAMBLE_CNI_PLUGIN_DIRS", value_delimiter = ',')]
    cni_plugin_dir: Option<Vec<PathBuf>>,
    /// Registries reached over plain HTTP (repeat; comma-separated in the variable).
    #[arg(long, env = "BRAMBLE_INSECURE_REGISTRIES", value_delimiter = ',')]
    insecure_registry: Option<Vec<String>>,
    /// Docker config.json with registry credentials.
    #[arg(long, env = "BRAMBLE_REGISTRY_CREDENTIALS")]
    registry_credentials: Option<PathBuf>,
    /// Async calls executed at the same time.
    #[arg(long, env = "BRAMBLE_ASYNC_WORKERS")]
    async_workers: Option<usize>,
    /// Largest async request body (e.g. 8Mi).
    #[arg(long, env = "BRAMBLE_ASYNC_MAX_BODY")]
    async_max_body: Option<ByteSize>,
    /// Largest API JSON body (e.g. 1Mi).
    #[arg(long, env = "BRAMBLE_MAX_API_BODY")]
    max_api_body: Option<ByteSize>,
    /// Largest uploaded image archive (e.g. 4Gi).
    #[arg(long, env = "BRAMBLE_MAX_UPLOAD")]
    max_upload: Option<ByteSize>,
    /// Largest size an image layer may unpack to (e.g. 4Gi).
    #[arg(long, env = "BRAMBLE_MAX_UNPACKED")]
    max_unpacked: Option<ByteSize>,
    /// Memory all functions may reserve: auto (75% of RAM), none, or a quantity.
    #[arg(long, env = "BRAMBLE_MEMORY_BUDGET")]
    memory_budget: Option<MemoryBudget>,
    /// Remove images no function uses after this long, or `never`.
    #[arg(long, env = "BRAMBLE_IMAGE_GC_AFTER")]
    image_gc_after: Option<Expiry>,
    /// Stop every function when bramble stops.
    #[arg(long, env = "BRAMBLE_STOP_FUNCTIONS_ON_SHUTDOWN")]
    stop_functions_on_shutdown: Option<bool>,
    /// GPIO backend: auto (the character device if a Pi chip is found, else the
    /// simulator), simulator, or cdev.
    #[arg(long, env = "BRAMBLE_HARDWARE_BACKEND", value_parser = parse_backend)]
    hardware_backend: Option<bramble_hardware::BackendChoice>,
    /// Where the per-function hardware socket directories are made (default <run_dir>/hw).
    #[arg(long, env = "BRAMBLE_HARDWARE_SOCKET_DIR")]
    hardware_socket_dir: Option<PathBuf>,
    /// The kernel's 1-Wire devices.
    #[arg(long, env = "BRAMBLE_HARDWARE_W1_DIR")]
    hardware_w1_dir: Option<PathBuf>,
    /// Labels of the GPIO chips functions may use, in order of preference (repeat the flag;
    /// comma-separated in the variable).
    #[arg(long, env = "BRAMBLE_HARDWARE_CHIP_LABELS", value_delimiter = ',')]
    hardware_chip_label: Option<Vec<String>>,
    /// The simulator's line names (repeat; comma-separated in the variable).
    #[arg(long, env = "BRAMBLE_HARDWARE_SIM_LINES", value_delimiter = ',')]
    hardware_sim_line: Option<Vec<String>>,
    /// A simulated I2C device, BUS:ADDRESS[:REGISTER=VALUE...], e.g. 1:0x76:0xD0=0x60
    /// (repeat; comma-separated in the variable).
    #[arg(long, env = "BRAMBLE_HARDWARE_SIM_I2C", value_delimiter = ',', value_parser = parse_sim_i2c)]
    hardware_sim_i2c: Option<Vec<bramble_hardware::SimI2cDevice>>,
    /// Two simulated lines wired together like a jumper wire, OUTPUT=INPUT, e.g. GPIO27=GPIO17
    /// (repeat; comma-separated in the variable).
    #[arg(long, env = "BRAMBLE_HARDWARE_SIM_JUMPERS", value_delimiter = ',', value_parser = parse_sim_jumper)]
    hardware_sim_jumper: Option<Vec<[String; 2]>>,
    /// This board's name in a cluster (default: the host name).
    #[arg(long, env = "BRAMBLE_CLUSTER_BOARD")]
    cluster_board: Option<String>,
    /// This board's LAN address as the other boards of a cluster reach it (default: the
    /// address of the default route's interface).
    #[arg(long, env = "BRAMBLE_CLUSTER_ADDRESS")]
    cluster_address: Option<std::net::IpAddr>,
    /// Port of the board-to-board listener (TLS under the cluster's CA).
    #[arg(long, env = "BRAMBLE_CLUSTER_BOARD_PORT")]
    cluster_board_port: Option<u16>,
    /// Port of nats-server's routes.
    #[arg(long, env = "BRAMBLE_CLUSTER_ROUTE_PORT")]
    cluster_route_port: Option<u16>,
    /// A label placement constraints can name, KEY=VALUE (repeat; comma-separated in the
    /// variable).
    #[arg(long, env = "BRAMBLE_CLUSTER_LABELS", value_delimiter = ',')]
    cluster_label: Option<Vec<bramble_cluster::settings::Label>>,
    /// A board silent this long is dead (`10s`).
    #[arg(long, env = "BRAMBLE_CLUSTER_DEAD_AFTER", value_parser = parse_duration)]
    cluster_dead_after: Option<std::time::Duration>,
    /// How many boards carry JetStream: 3 or 5.
    #[arg(long, env = "BRAMBLE_CLUSTER_MAX_JETSTREAM")]
    cluster_max_jetstream: Option<u8>,
    /// The nats-server executable.
    #[arg(long, env = "BRAMBLE_CLUSTER_NATS_SERVER")]
    cluster_nats_server: Option<PathBuf>,
    /// Join this cluster at start when the board is in none: "TOKEN ADDRESS".
    #[arg(long, env = "BRAMBLE_CLUSTER_JOIN")]
    cluster_join: Option<bramble_cluster::settings::JoinCommand>,
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e}"))
}

/// `LINE=LINE`: a simulated jumper wire.
fn parse_sim_jumper(text: &str) -> Result<[String; 2], String> {
    match text.split_once('=') {
        Some((a, b)) if !a.trim().is_empty() && !b.trim().is_empty() && !b.contains('=') => {
            Ok([a.trim().to_owned(), b.trim().to_owned()])
        }
        _ => Err(format!(
            "{text:?} is not a jumper: write two line names joined by '=', e.g. GPIO27=GPIO17"
        )),
    }
}

/// `BUS:ADDRESS[:REGISTER=VALUE...]`, numbers decimal or `0x` hexadecimal.
fn parse_sim_i2c(text: &str) -> Result<bramble_hardware::SimI2cDevice, String> {
    fn number<T: TryFrom<u32>>(what: &str, text: &str, device: &str) -> Result<T, String> {
        let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
            Some(hex) => u32::from_str_radix(hex, 16),
            None => text.parse(),
        };
        parsed
            .ok()
            .and_then(|n| T::try_from(n).ok())
            .ok_or_else(|| format!("{device:?}: {what} {text:?} is not a number in range"))
    }
    let mut parts = text.split(':');
    let (Some(bus), Some(address)) = (parts.next(), parts.next()) else {
        return Err(format!(
            "{text:?} is not BUS:ADDRESS[:REGISTER=VALUE...] (e.g. 1:0x76:0xD0=0x60)"
        ));
    };
    let address: u16 = number("address", address, text)?;
    if address > 0x7f {
        return Err(format!(
            "{text:?}: address {address:#x} is not a 7-bit address"
        ));
    }
    let registers = parts
        .map(|pair| {
            let (register, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("{text:?}: {pair:?} is not REGISTER=VALUE"))?;
            Ok([
                number("register", register, text)?,
                number("value", value, text)?,
            ])
        })
        .collect::<Result<Vec<[u8; 2]>, String>>()?;
    Ok(bramble_hardware::SimI2cDevice {
        bus: number("bus", bus, text)?,
        address,
        registers,
    })
}

fn parse_backend(text: &str) -> Result<bramble_hardware::BackendChoice, String> {
    serde_json::from_value(serde_json::Value::String(text.to_owned()))
        .map_err(|_| format!("{text:?} is not auto, simulator or cdev"))
}

impl UpArgs {
    /// The configuration: file, then environment and flags on top.
    pub(crate) fn into_config(self) -> anyhow::Result<Config> {
        let (path, required) = match &self.config {
            Some(path) => (path.clone(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_FILE), false),
        };
        let mut c = Config::load(&path, required)?;
        macro_rules! set {
            ($($field:ident).+ = $value:expr) => {
                if let Some(v) = $value {
                    c.$($field).+ = v;
                }
            };
        }
        set!(listen = self.listen);
        set!(state_dir = self.state_dir);
        set!(run_dir = self.run_dir);
        set!(containerd_socket = self.containerd_socket);
        set!(containerd_namespace = self.containerd_namespace);
        set!(default_namespace = self.default_namespace);
        set!(pull_policy = self.pull_policy);
        set!(function_timeout = self.function_timeout);
        set!(ready_timeout = self.ready_timeout);
        set!(stop_grace = self.stop_grace);
        set!(log_buffer = self.log_buffer);
        set!(defaults.memory = self.default_memory);
        set!(defaults.cpu = self.default_cpu);
        set!(defaults.pids = self.default_pids);
        set!(network.bridge = self.bridge);
        set!(network.subnet = self.subnet);
        set!(network.cni_plugin_dirs = self.cni_plugin_dir);
        set!(registry.insecure = self.insecure_registry);
        set!(registry.credentials = self.registry_credentials.map(Some));
        set!(async_queue.workers = self.async_workers);
        set!(async_queue.max_body = self.async_max_body);
        set!(max_api_body = self.max_api_body);
        set!(max_upload = self.max_upload);
        set!(max_unpacked = self.max_unpacked);
        set!(memory_budget = self.memory_budget);
        set!(image_gc_after = self.image_gc_after);
        set!(stop_functions_on_shutdown = self.stop_functions_on_shutdown);
        set!(hardware.backend = self.hardware_backend);
        set!(hardware.socket_dir = self.hardware_socket_dir.map(Some));
        set!(hardware.w1_dir = self.hardware_w1_dir);
        set!(hardware.chip_labels = self.hardware_chip_label);
        set!(hardware.sim_lines = self.hardware_sim_line);
        set!(hardware.sim_i2c = self.hardware_sim_i2c);
        set!(hardware.sim_jumpers = self.hardware_sim_jumper);
        set!(cluster.board = self.cluster_board.map(Some));
        set!(cluster.address = self.cluster_address.map(Some));
        set!(cluster.board_port = self.cluster_board_port);
        set!(cluster.route_port = self.cluster_route_port);
        set!(cluster.labels = self.cluster_label);
        set!(cluster.dead_after = self.cluster_dead_after);
        set!(cluster.max_jetstream = self.cluster_max_jetstream);
        set!(cluster.nats_server = self.cluster_nats_server);
        set!(cluster.join = self.cluster_join.map(Some));
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cli, Command};
    use clap::CommandFactory as _;
    use clap::Parser as _;

    /// Every key with its flag, environment variable and a value different from its default.
    const SETTINGS: &[(&str, &str, &str, &str)] = &[
        ("listen", "--listen", "BRAMBLE_LISTEN", "127.0.0.1:9999"),
        (
            "state_dir",
            "--state-dir",
            "BRAMBLE_STATE_DIR",
            "/srv/bramble",
        ),
        ("run_dir", "--run-dir", "BRAMBLE_RUN_DIR", "/run/b2"),
        (
            "containerd_socket",
            "--containerd-socket",
            "BRAMBLE_CONTAINERD_SOCKET",
            "/run/c.sock",
        ),
        (
            "containerd_namespace",
            "--containerd-namespace",
            "BRAMBLE_CONTAINERD_NAMESPACE",
            "other",
        ),
        (
            "default_namespace",
            "--default-namespace",
            "BRAMBLE_DEFAULT_NAMESPACE",
            "other-fn",
        ),
        (
            "pull_policy",
            "--pull-policy",
            "BRAMBLE_PULL_POLICY",
            "Always",
        ),
        (
            "function_timeout",
            "--function-timeout",
            "BRAMBLE_FUNCTION_TIMEOUT",
            "90s",
        ),
        (
            "ready_timeout",
            "--ready-timeout",
            "BRAMBLE_READY_TIMEOUT",
            "5s",
        ),
        ("stop_grace", "--stop-grace", "BRAMBLE_STOP_GRACE", "3s"),
        ("log_buffer", "--log-buffer", "BRAMBLE_LOG_BUFFER", "1Mi"),
        (
            "defaults.memory",
            "--default-memory",
            "BRAMBLE_DEFAULT_MEMORY",
            "64Mi",
        ),
        (
            "defaults.cpu",
            "--default-cpu",
            "BRAMBLE_DEFAULT_CPU",
            "500m",
        ),
        (
            "defaults.pids",
            "--default-pids",
            "BRAMBLE_DEFAULT_PIDS",
            "64",
        ),
        ("network.bridge", "--bridge", "BRAMBLE_BRIDGE", "br9"),
        (
            "network.subnet",
            "--subnet",
            "BRAMBLE_SUBNET",
            "10.9.0.0/24",
        ),
        (
            "network.cni_plugin_dirs",
            "--cni-plugin-dir",
            "BRAMBLE_CNI_PLUGIN_DIRS",
            "/x",
        ),
        (
            "registry.insecure",
            "--insecure-registry",
            "BRAMBLE_INSECURE_REGISTRIES",
            "r.lan:5000",
        ),
        (
            "registry.credentials",
            "--registry-credentials",
            "BRAMBLE_REGISTRY_CREDENTIALS",
            "/etc/d.json",
        ),
        (
            "async.workers",
            "--async-workers",
            "BRAMBLE_ASYNC_WORKERS",
            "2",
        ),
        (
            "async.max_body",
            "--async-max-body",
            "BRAMBLE_ASYNC_MAX_BODY",
            "1Mi",
        ),
        (
            "max_api_body",
            "--max-api-body",
            "BRAMBLE_MAX_API_BODY",
            "2Mi",
        ),
        ("max_upload", "--max-upload", "BRAMBLE_MAX_UPLOAD", "1Gi"),
        (
            "max_unpacked",
            "--max-unpacked",
            "BRAMBLE_MAX_UNPACKED",
            "2Gi",
        ),
        (
            "memory_budget",
            "--memory-budget",
            "BRAMBLE_MEMORY_BUDGET",
            "1Gi",
        ),
        (
            "image_gc_after",
            "--image-gc-after",
            "BRAMBLE_IMAGE_GC_AFTER",
            "never",
        ),
        (
            "stop_functions_on_shutdown",
            "--stop-functions-on-shutdown",
            "BRAMBLE_STOP_FUNCTIONS_ON_SHUTDOWN",
            "true",
        ),
        (
            "hardware.backend",
            "--hardware-backend",
            "BRAMBLE_HARDWARE_BACKEND",
            "simulator",
        ),
        (
            "hardware.socket_dir",
            "--hardware-socket-dir",
            "BRAMBLE_HARDWARE_SOCKET_DIR",
            "/run/hw2",
        ),
        (
            "hardware.w1_dir",
            "--hardware-w1-dir",
            "BRAMBLE_HARDWARE_W1_DIR",
            "/tmp/w1",
        ),
        (
            "hardware.chip_labels",
            "--hardware-chip-label",
            "BRAMBLE_HARDWARE_CHIP_LABELS",
            "my-chip",
        ),
        (
            "hardware.sim_lines",
            "--hardware-sim-line",
            "BRAMBLE_HARDWARE_SIM_LINES",
            "LED",
        ),
        (
            "hardware.sim_i2c",
            "--hardware-sim-i2c",
            "BRAMBLE_HARDWARE_SIM_I2C",
            "2:0x40:0x00=0x12",
        ),
        (
            "hardware.sim_jumpers",
            "--hardware-sim-jumper",
            "BRAMBLE_HARDWARE_SIM_JUMPERS",
            "GPIO27=GPIO17",
        ),
        (
            "cluster.board",
            "--cluster-board",
            "BRAMBLE_CLUSTER_BOARD",
            "pi-two",
        ),
        (
            "cluster.address",
            "--cluster-address",
            "BRAMBLE_CLUSTER_ADDRESS",
            "192.168.1.20",
        ),
        (
            "cluster.board_port",
            "--cluster-board-port",
            "BRAMBLE_CLUSTER_BOARD_PORT",
            "7500",
        ),
        (
            "cluster.route_port",
            "--cluster-route-port",
            "BRAMBLE_CLUSTER_ROUTE_PORT",
            "7501",
        ),
        (
            "cluster.labels",
            "--cluster-label",
            "BRAMBLE_CLUSTER_LABELS",
            "zone=garage",
        ),
        (
            "cluster.dead_after",
            "--cluster-dead-after",
            "BRAMBLE_CLUSTER_DEAD_AFTER",
            "20s",
        ),
        (
            "cluster.max_jetstream",
            "--cluster-max-jetstream",
            "BRAMBLE_CLUSTER_MAX_JETSTREAM",
            "5",
        ),
        (
            "cluster.nats_server",
            "--cluster-nats-server",
            "BRAMBLE_CLUSTER_NATS_SERVER",
            "/opt/nats-server",
        ),
        (
            "cluster.join",
            "--cluster-join",
            "BRAMBLE_CLUSTER_JOIN",
            "bramble1.shelf.AAECAwQFBgcICQoLDA0OD2RlZmdoaWprbG1ub3BxcnPMWzwP 192.168.1.10:8080",
        ),
    ];

    /// Serializes the tests that read or change the process environment.
    static ENV: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// `bramble up ARGS` with an explicit (maybe empty) configuration file, as configured.
    fn up(file: &std::path::Path, args: &[&str]) -> anyhow::Result<Config> {
        let argv = ["bramble", "up", "--config", file.to_str().unwrap()]
            .into_iter()
            .chain(args.iter().copied());
        match Cli::try_parse_from(argv)?.command {
            Command::Up(args) => args.into_config(),
            other => panic!("parsed as {other:?}"),
        }
    }

    fn at<'v>(value: &'v serde_json::Value, key: &str) -> &'v serde_json::Value {
        key.split('.').fold(value, |v, k| &v[k])
    }

    #[test]
    fn every_key_has_a_flag_and_a_variable_that_set_it_and_the_readme_names_them() {
        let _env = ENV
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(&file, "").unwrap();
        let listed: Vec<&str> = SETTINGS.iter().map(|s| s.0).collect();
        let mut keys = Config::keys();
        keys.sort();
        let mut sorted = listed.clone();
        sorted.sort_unstable();
        assert_eq!(
            keys, sorted,
            "every key of the configuration has a row here"
        );

        let up_command = Cli::command();
        let up_command = up_command.find_subcommand("up").unwrap();
        for arg in up_command.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if ["config", "help"].contains(&long) {
                continue;
            }
            let flag = format!("--{long}");
            let row = SETTINGS.iter().find(|s| s.1 == flag);
            let row = row.unwrap_or_else(|| panic!("{flag} sets no key listed here"));
            assert_eq!(
                arg.get_env().and_then(|e| e.to_str()),
                Some(row.2),
                "{flag}'s variable"
            );
        }

        let readme = include_str!("../../../README.md");
        let defaults = serde_json::to_value(Config::default()).unwrap();
        for (key, flag, env, value) in SETTINGS {
            assert!(
                up_command.get_arguments().any(|a| a
                    .get_long()
                    .map(|l| format!("--{l}"))
                    .as_deref()
                    == Some(*flag)),
                "{flag} exists"
            );
            let row = format!("| `{key}` | `{env}` / `{flag}` |");
            assert!(readme.contains(&row), "README.md lacks the row {row}");
            let config = up(&file, &[flag, value]).unwrap_or_else(|e| panic!("{flag}: {e:#}"));
            let config = serde_json::to_value(config).unwrap();
            assert_ne!(
                at(&config, key),
                at(&defaults, key),
                "{flag} {value} sets {key}"
            );
        }
    }

    #[test]
    fn flags_beat_the_environment_which_beats_the_file() {
        let _env = ENV
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:1001\"\nstate_dir = \"/file/state\"\ncontainerd_socket = \"/file/c.sock\"\n",
        )
        .unwrap();
        let vars = [
            ("BRAMBLE_LISTEN", "127.0.0.1:2002"),
            ("BRAMBLE_STATE_DIR", "/env/state"),
            ("BRAMBLE_CONTAINERD_SOCKET", "/env/c.sock"),
        ];
        let set = |on: bool| {
            for (k, v) in vars {
                // SAFETY: the tests that touch the environment hold `ENV`; nextest runs
                // each test in a process of its own.
                unsafe {
                    if on {
                        std::env::set_var(k, v);
                    } else {
                        std::env::remove_var(k);
                    }
                }
            }
        };
        let seen = |c: &Config| {
            (
                c.listen.to_string(),
                c.state_dir.display().to_string(),
                c.containerd_socket.display().to_string(),
            )
        };
        set(false);
        let file_only = up(&file, &[]).unwrap();
        assert_eq!(
            seen(&file_only),
            (
                "127.0.0.1:1001".into(),
                "/file/state".into(),
                "/file/c.sock".into()
            )
        );
        set(true);
        let with_env = up(&file, &[]);
        let with_flags = up(
            &file,
            &[
                "--listen",
                "127.0.0.1:3003",
                "--state-dir",
                "/flag/state",
                "--containerd-socket",
                "/flag/c.sock",
            ],
        );
        let one_flag = up(&file, &["--state-dir", "/flag/state"]);
        set(false);
        assert_eq!(
            seen(&with_env.unwrap()),
            (
                "127.0.0.1:2002".into(),
                "/env/state".into(),
                "/env/c.sock".into()
            )
        );
        assert_eq!(
            seen(&with_flags.unwrap()),
            (
                "127.0.0.1:3003".into(),
                "/flag/state".into(),
                "/flag/c.sock".into()
            )
        );
        assert_eq!(
            seen(&one_flag.unwrap()),
            (
                "127.0.0.1:2002".into(),
                "/flag/state".into(),
                "/env/c.sock".into()
            )
        );
        // What the file does not say stays the default.
        assert_eq!(file_only.run_dir, Config::default().run_dir);
    }

    #[test]
    fn simulated_jumpers_parse_and_bad_ones_are_named() {
        assert_eq!(
            parse_sim_jumper("GPIO27=GPIO17").unwrap(),
            ["GPIO27".to_owned(), "GPIO17".to_owned()]
        );
        for bad in ["GPIO27", "=GPIO17", "GPIO27=", "A=B=C"] {
            let e = parse_sim_jumper(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn simulated_i2c_devices_parse_and_bad_ones_are_named() {
        let d = parse_sim_i2c("1:0x76:0xD0=0x60:1=2").unwrap();
        assert_eq!((d.bus, d.address), (1, 0x76));
        assert_eq!(d.registers, vec![[0xD0, 0x60], [1, 2]]);
        assert_eq!(parse_sim_i2c("3:64").unwrap().address, 64);
        for (bad, needle) in [
            ("1", "BUS:ADDRESS"),
            ("1:0x80", "7-bit"),
            ("x:0x10", "bus \"x\""),
            ("1:0x10:0xD0", "REGISTER=VALUE"),
            ("1:0x10:0xD0=0x100", "value \"0x100\""),
        ] {
            let e = parse_sim_i2c(bad).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }
}
