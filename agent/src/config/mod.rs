//! Configuration of a node: one TOML file (`/etc/bramble/config.toml`), every key of which
//! can also be set by an environment variable (`BRAMBLE_<KEY>`) and a flag of `bramble up`.
//! Precedence: flag > environment > file > built-in default. Unknown keys are errors that name
//! the key, so a typo never silently falls back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bramble_runtime::PullPolicy;
use serde::{Deserialize, Serialize};

mod values;

pub use values::{ByteSize, CpuLimit, Expiry, MemoryBudget, MemoryLimit};

/// Where the configuration file is looked for when none is given.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/bramble/config.toml";

/// Errors reading or validating the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {key}: {message}")]
    Invalid { key: &'static str, message: String },
    #[error("invalid configuration: {0}")]
    Cluster(bramble_cluster::settings::SettingError),
}

/// The whole configuration. Every field has a default; see the README for each key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the gateway listens on.
    pub listen: SocketAddr,
    /// Persistent state: desired state, secrets, credentials, async queue.
    pub state_dir: PathBuf,
    /// Volatile runtime files (tmpfs): FIFOs, network namespaces, staged secrets.
    pub run_dir: PathBuf,
    /// containerd's gRPC socket.
    pub containerd_socket: PathBuf,
    /// The containerd namespace functions live in.
    pub containerd_namespace: String,
    /// The OpenFaaS namespace used when a request names none.
    pub default_namespace: String,
    /// `Always`, `IfNotPresent` or `Never`.
    pub pull_policy: PullPolicy,
    /// Default upstream timeout of a function (per function: annotation `bramble.timeout`).
    #[serde(with = "bramble_base::duration_text")]
    pub function_timeout: Duration,
    /// How long a request waits for a starting function before 503/504.
    #[serde(with = "bramble_base::duration_text")]
    pub ready_timeout: Duration,
    /// Grace period between SIGTERM and SIGKILL when a function is stopped.
    #[serde(with = "bramble_base::duration_text")]
    pub stop_grace: Duration,
    /// Output kept in memory per function (`256Ki`).
    pub log_buffer: ByteSize,
    /// Limits applied to functions that ask for none.
    pub defaults: Defaults,
    pub network: NetworkSection,
    pub registry: RegistrySection,
    #[serde(rename = "async")]
    pub async_queue: AsyncSection,
    /// Largest JSON body accepted by the API.
    pub max_api_body: ByteSize,
    /// Largest image archive accepted by `POST /system/images`.
    pub max_upload: ByteSize,
    /// Largest size one image layer may unpack to (and an uncompressed image archive may
    /// have): a decompression bomb is refused before it fills the disk.
    pub max_unpacked: ByteSize,
    /// Memory all functions may reserve together: `auto` (75 % of the board's RAM), `none`,
    /// or a quantity (`1Gi`). A deploy beyond it is refused with the numbers.
    pub memory_budget: MemoryBudget,
    /// Images no function uses are removed after this long (`1h`), or `never`.
    pub image_gc_after: Expiry,
    /// Stop every function when `bramble up` stops (default: they keep running and are
    /// adopted by the next start).
    pub stop_functions_on_shutdown: bool,
    /// The hardware helper: backend, socket directory, simulator lines.
    pub hardware: bramble_hardware::HardwareConfig,
    /// Cluster mode: this board's name, address and ports in a cluster, its labels, and a
    /// cluster to join at start. Without cluster state on disk none of it is used.
    pub cluster: bramble_cluster::ClusterConfig,
}

/// Limits applied when a function's deployment asks none.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Defaults {
    /// Memory limit (`128Mi`); empty = unlimited.
    pub memory: MemoryLimit,
    /// CPU limit (`500m`, `1`); empty = unlimited.
    pub cpu: CpuLimit,
    /// Processes/threads per function.
    pub pids: u64,
}

/// The function network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkSection {
    pub bridge: String,
    pub subnet: String,
    pub cni_plugin_dirs: Vec<PathBuf>,
}

/// Registry access.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrySection {
    /// Registries reached over plain HTTP (loopback ones always are).
    pub insecure: Vec<String>,
    /// Docker `config.json` with credentials; default `<state_dir>/docker/config.json`.
    pub credentials: Option<PathBuf>,
}

/// The durable queue behind `/async-function`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AsyncSection {
    /// Calls executed at the same time.
    pub workers: usize,
    /// Largest body accepted.
    pub max_body: ByteSize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            state_dir: PathBuf::from("/var/lib/bramble"),
            run_dir: PathBuf::from("/run/bramble"),
            containerd_socket: PathBuf::from("/run/containerd/containerd.sock"),
            containerd_namespace: "openfaas-fn".into(),
            default_namespace: "openfaas-fn".into(),
            pull_policy: PullPolicy::IfNotPresent,
            function_timeout: Duration::from_secs(60),
            ready_timeout: Duration::from_secs(60),
            stop_grace: Duration::from_secs(10),
            log_buffer: ByteSize::from_bytes(256 << 10),
            defaults: Defaults::default(),
            network: NetworkSection::default(),
            registry: RegistrySection::default(),
            async_queue: AsyncSection::default(),
            max_api_body: ByteSize::from_bytes(1 << 20),
            max_upload: ByteSize::from_bytes(4 << 30),
            max_unpacked: ByteSize::from_bytes(4 << 30),
            memory_budget: MemoryBudget::Auto,
            image_gc_after: Expiry::After(Duration::from_secs(3600)),
            stop_functions_on_shutdown: false,
            hardware: bramble_hardware::HardwareConfig::default(),
            cluster: bramble_cluster::ClusterConfig::default(),
        }
    }
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            memory: MemoryLimit::Limit(ByteSize::from_bytes(128 << 20)),
            cpu: CpuLimit::Unlimited,
            pids: 512,
        }
    }
}

impl Default for NetworkSection {
    fn default() -> Self {
        Self {
            bridge: "bramble0".into(),
            subnet: "10.72.0.0/16".into(),
            cni_plugin_dirs: vec![PathBuf::from("/usr/lib/cni"), PathBuf::from("/opt/cni/bin")],
        }
    }
}

impl Default for AsyncSection {
    fn default() -> Self {
        Self {
            workers: 4,
            max_body: ByteSize::from_bytes(8 << 20),
        }
    }
}

impl Config {
    /// Reads a configuration file. With `required`, a missing file is an error; otherwise it
    /// means "all defaults".
    pub fn load(path: &Path, required: bool) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Config::default());
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks values that parse but make no sense; returns the first problem, naming its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: String| Err(ConfigError::Invalid { key, message });
        for (key, path) in [
            ("state_dir", &self.state_dir),
            ("run_dir", &self.run_dir),
            ("containerd_socket", &self.containerd_socket),
        ] {
            if !path.is_absolute() {
                return invalid(key, format!("{} must be an absolute path", path.display()));
            }
        }
        if bramble_gateway::validate::namespace_name(&self.default_namespace).is_err() {
            return invalid(
                "default_namespace",
                format!("{:?} is not a valid namespace name", self.default_namespace),
            );
        }
        if bramble_runtime::validate_id(&self.containerd_namespace).is_err() {
            return invalid(
                "containerd_namespace",
                format!(
                    "{:?} is not a valid containerd namespace",
                    self.containerd_namespace
                ),
            );
        }
        for (key, value) in [
            ("log_buffer", self.log_buffer),
            ("max_api_body", self.max_api_body),
            ("max_upload", self.max_upload),
            ("max_unpacked", self.max_unpacked),
            ("async.max_body", self.async_queue.max_body),
        ] {
            if value.bytes() == 0 {
                return invalid(key, "must be more than 0".into());
            }
        }
        if self.defaults.pids == 0 {
            return invalid("defaults.pids", "must be at least 1".into());
        }
        if self.async_queue.workers == 0 {
            return invalid("async.workers", "must be at least 1".into());
        }
        for (key, value) in [
            ("function_timeout", self.function_timeout),
            ("ready_timeout", self.ready_timeout),
        ] {
            if value.is_zero() {
                return invalid(key, "must be longer than zero".into());
            }
        }
        for (key, value) in [
            ("function_timeout", self.function_timeout),
            ("ready_timeout", self.ready_timeout),
            ("stop_grace", self.stop_grace),
        ] {
            if value > crate::function::MAX_PERIOD {
                return invalid(
                    key,
                    format!(
                        "{} is longer than the maximum of {}",
                        humantime::format_duration(value),
                        humantime::format_duration(crate::function::MAX_PERIOD)
                    ),
                );
            }
        }
        self.cluster.validate().map_err(ConfigError::Cluster)?;
        Ok(())
    }

    /// The memory budget of functions in bytes on this board (`None`: unlimited).
    pub fn memory_budget_bytes(&self) -> Option<u64> {
        self.memory_budget.bytes(total_memory())
    }

    /// Every key of the configuration file, dotted for tables (`network.bridge`); options
    /// are included whether set or not.
    pub fn keys() -> Vec<String> {
        fn walk(prefix: &str, value: &serde_json::Value, out: &mut Vec<String>) {
            match value {
                serde_json::Value::Object(map) => {
                    for (k, v) in map {
                        walk(&format!("{prefix}{k}."), v, out);
                    }
                }
                _ => out.push(prefix.trim_end_matches('.').to_owned()),
            }
        }
        let mut out = Vec::new();
        // `None` options serialize as `null` in JSON (TOML would leave them out).
        if let Ok(value) = serde_json::to_value(Config::default()) {
            walk("", &value, &mut out);
        }
        out
    }

    /// The registry credentials file in effect.
    pub fn registry_credentials(&self) -> PathBuf {
        self.registry
            .credentials
            .clone()
            .unwrap_or_else(|| self.state_dir.join("docker/config.json"))
    }
}

/// `MemTotal` of the board, in bytes.
fn total_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones_and_valid() {
        let c = Config::default();
        assert_eq!(c.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(
            c.containerd_socket,
            Path::new("/run/containerd/containerd.sock")
        );
        assert_eq!(c.state_dir, Path::new("/var/lib/bramble"));
        assert_eq!(c.default_namespace, "openfaas-fn");
        c.validate().unwrap();
    }

    #[test]
    fn a_file_overrides_only_what_it_says() {
        let c = Config::parse("listen = \"127.0.0.1:9090\"\nready_timeout = \"5s\"\n[network]\nsubnet = \"10.9.0.0/24\"\n").unwrap();
        assert_eq!(c.listen.port(), 9090);
        assert_eq!(c.ready_timeout, Duration::from_secs(5));
        assert_eq!(c.network.subnet, "10.9.0.0/24");
        assert_eq!(c.network.bridge, "bramble0");
        assert_eq!(c.function_timeout, Duration::from_secs(60));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = Config::parse("lisen = \"x\"").unwrap_err();
        assert!(e.contains("lisen"), "{e}");
        let e = Config::parse("[network]\nbrige = \"b\"").unwrap_err();
        assert!(e.contains("brige"), "{e}");
        let e = Config::parse("ready_timeout = \"soon\"").unwrap_err();
        assert!(e.contains("soon") && e.contains("duration"), "{e}");
        for (text, needles) in [
            ("pull_policy = \"Sometimes\"", ["pull_policy", "Sometimes"]),
            ("[defaults]\nmemory = \"128Qi\"", ["memory", "Qi"]),
            ("[defaults]\ncpu = \"0\"", ["cpu", "zero"]),
            (
                "memory_budget = \"lots\"",
                ["memory_budget", "`auto`, `none`"],
            ),
            ("image_gc_after = \"soon\"", ["image_gc_after", "never"]),
            ("log_buffer = \"1Xi\"", ["log_buffer", "Xi"]),
        ] {
            let e = Config::parse(text).unwrap_err();
            assert!(needles.iter().all(|n| e.contains(n)), "{text}: {e}");
        }
        let e = Config::parse("max_api_body = \"0\"")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_api_body"), "{e}");
        let c = Config {
            state_dir: "relative".into(),
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("state_dir"));
    }

    #[test]
    fn a_zero_timeout_names_its_own_key() {
        let error = |c: Config| c.validate().unwrap_err().to_string();
        let e = error(Config {
            function_timeout: Duration::ZERO,
            ..Config::default()
        });
        assert!(
            e.contains("function_timeout: must be longer than zero"),
            "{e}"
        );
        assert!(!e.contains("ready_timeout"), "{e}");
        let e = error(Config {
            ready_timeout: Duration::ZERO,
            ..Config::default()
        });
        assert!(e.contains("ready_timeout: must be longer than zero"), "{e}");
        assert!(!e.contains("function_timeout"), "{e}");
        let e = Config::parse("function_timeout = \"0s\"")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("function_timeout"), "{e}");
    }

    /// The keys the README's configuration table documents (its first column).
    fn readme_table() -> Vec<Vec<String>> {
        let readme = include_str!("../../../README.md");
        let section = readme
            .split("\n## Configuration\n")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .expect("the README has a Configuration section");
        section
            .lines()
            .filter(|l| l.starts_with("| `"))
            .map(|l| {
                l.trim_matches('|')
                    .split(" | ")
                    .map(|cell| cell.trim().to_owned())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn the_readme_documents_every_key_and_only_real_ones() {
        let all: std::collections::BTreeSet<String> = Config::keys().into_iter().collect();
        // Nested tables are there, options included.
        for key in [
            "network.subnet",
            "defaults.memory",
            "registry.credentials",
            "async.workers",
            "hardware.backend",
            "hardware.socket_dir",
            "max_unpacked",
        ] {
            assert!(all.contains(key), "{key} not in {all:?}");
        }
        let documented: std::collections::BTreeSet<String> = readme_table()
            .iter()
            .map(|row| row[0].trim_matches('`').to_owned())
            .collect();
        let missing: Vec<&String> = all.difference(&documented).collect();
        assert!(
            missing.is_empty(),
            "keys missing in README.md's configuration table: {missing:?}"
        );
        let unknown: Vec<&String> = documented.difference(&all).collect();
        assert!(
            unknown.is_empty(),
            "README.md's configuration table documents keys that do not exist: {unknown:?}"
        );
    }

    #[test]
    fn a_missing_optional_file_means_defaults_and_a_required_one_is_an_error() {
        assert_eq!(
            Config::load(Path::new("/nonexistent/bramble.toml"), false).unwrap(),
            Config::default()
        );
        assert!(Config::load(Path::new("/nonexistent/bramble.toml"), true).is_err());
    }
}
