//! The OCI runtime spec of a function container.
//!
//! Defaults are containerd's (`oci.populateDefaultUnixSpec`) tightened for functions: no
//! capabilities unless asked, `noNewPrivileges`, device cgroup deny-all (runc adds its small
//! allow-list of `/dev/null`, `/dev/zero`, ...), masked `/proc` paths, a pinned network
//! namespace made by bramble, and the limits from the request.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::image::ResolvedUser;

/// CFS period used to express CPU limits (100 ms, the kernel default).
pub const CPU_PERIOD_US: u64 = 100_000;

/// Size of the writable `/tmp` of a read-only root filesystem when the function has no memory
/// limit (64 MiB). With a memory limit, `/tmp` may be as large as that limit (its pages are
/// charged to the function's memory anyway).
pub const DEFAULT_TMP_BYTES: u64 = 64 << 20;

/// The size of the `/tmp` tmpfs of a read-only root filesystem, in bytes.
pub fn tmp_size_bytes(limits: &Limits) -> u64 {
    limits.memory_bytes.unwrap_or(DEFAULT_TMP_BYTES)
}

/// Resource limits of a container. `None` means unlimited.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Hard memory limit in bytes; exceeding it gets the function OOM-killed.
    pub memory_bytes: Option<u64>,
    /// Soft memory limit (reclaimed first under pressure), from OpenFaaS `requests.memory`.
    pub memory_reservation_bytes: Option<u64>,
    /// CPU limit in millicores (`500` = half a core), enforced with a CFS quota.
    pub cpu_millis: Option<u64>,
    /// Relative CPU weight in millicores, from OpenFaaS `requests.cpu` (cgroup `cpu.shares`).
    pub cpu_request_millis: Option<u64>,
    /// Maximum number of processes and threads.
    pub pids: Option<u64>,
}

impl Limits {
    /// The CFS quota (µs per [`CPU_PERIOD_US`]) for the CPU limit.
    pub fn cpu_quota_us(&self) -> Option<u64> {
        // The kernel's minimum quota is 1 ms.
        self.cpu_millis
            .map(|m| (m * CPU_PERIOD_US / 1000).max(1000))
    }
}

/// A host path bind-mounted into the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindMount {
    pub source: PathBuf,
    pub destination: String,
    pub read_only: bool,
}

/// Everything the spec is made from, resolved.
#[derive(Debug)]
pub(crate) struct SpecInput<'a> {
    pub hostname: &'a str,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: &'a str,
    pub user: &'a ResolvedUser,
    pub capabilities: &'a [String],
    pub read_only_rootfs: bool,
    pub netns: &'a Path,
    pub cgroups_path: String,
    pub limits: &'a Limits,
    pub hosts_file: &'a Path,
    pub resolv_file: &'a Path,
    pub secrets_dir: Option<&'a Path>,
    pub mounts: &'a [BindMount],
}

/// Where OpenFaaS functions find their secrets.
pub const SECRETS_MOUNT: &str = "/var/openfaas/secrets";

const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];

const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Builds the spec as JSON (what runc reads as `config.json`).
pub(crate) fn build(input: &SpecInput<'_>) -> Value {
    let bind_ro = |source: &Path, destination: &str| {
        json!({
            "destination": destination,
            "type": "bind",
            "source": source,
            "options": ["rbind", "ro", "nosuid", "nodev", "noexec"],
        })
    };
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
        bind_ro(input.hosts_file, "/etc/hosts"),
        bind_ro(input.resolv_file, "/etc/resolv.conf"),
    ];
    if input.read_only_rootfs {
        // Memory-backed and charged to the function's memory cgroup; bounded by its own size
        // too, so a function without a memory limit cannot fill the board's RAM through it.
        let size = format!("size={}", tmp_size_bytes(input.limits));
        mounts.push(json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777", size]}));
    }
    if let Some(dir) = input.secrets_dir {
        mounts.push(bind_ro(dir, SECRETS_MOUNT));
    }
    for m in input.mounts {
        let mode = if m.read_only { "ro" } else { "rw" };
        mounts.push(json!({
            "destination": m.destination,
            "type": "bind",
            "source": m.source,
            "options": ["rbind", mode, "nosuid", "nodev", "noexec"],
        }));
    }

    let mut resources = json!({"devices": [{"allow": false, "access": "rwm"}]});
    let limits = input.limits;
    let mut memory = serde_json::Map::new();
    if let Some(limit) = limits.memory_bytes {
        memory.insert("limit".into(), json!(limit));
    }
    if let Some(reservation) = limits.memory_reservation_bytes {
        memory.insert("reservation".into(), json!(reservation));
    }
    if !memory.is_empty() {
        resources["memory"] = Value::Object(memory);
    }
    let mut cpu = serde_json::Map::new();
    if let Some(quota) = limits.cpu_quota_us() {
        cpu.insert("quota".into(), json!(quota));
        cpu.insert("period".into(), json!(CPU_PERIOD_US));
    }
    if let Some(request) = limits.cpu_request_millis {
        // 1 core = 1024 shares, the Kubernetes conversion; the kernel minimum is 2.
        cpu.insert("shares".into(), json!((request * 1024 / 1000).max(2)));
    }
    if !cpu.is_empty() {
        resources["cpu"] = Value::Object(cpu);
    }
    if let Some(pids) = limits.pids {
        resources["pids"] = json!({"limit": pids});
    }

    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {
                "uid": input.user.uid,
                "gid": input.user.gid,
                "additionalGids": input.user.additional_gids,
            },
            "args": input.args,
            "env": input.env,
            "cwd": input.cwd,
            "capabilities": {
                "bounding": input.capabilities,
                "effective": input.capabilities,
                "permitted": input.capabilities,
                "inheritable": [],
                "ambient": [],
            },
            // containerd's default. runc applies rlimits after dropping capabilities, so a hard
            // limit above the host's would need CAP_SYS_RESOURCE and fail.
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true,
        },
        "root": {"path": "rootfs", "readonly": input.read_only_rootfs},
        "hostname": input.hostname,
        "mounts": mounts,
        "linux": {
            "namespaces": [
                {"type": "pid"},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
                {"type": "cgroup"},
                {"type": "network", "path": input.netns},
            ],
            "cgroupsPath": input.cgroups_path,
            "resources": resources,
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
        },
    })
}

/// Normalises capability names: `net_raw`, `NET_RAW` and `CAP_NET_RAW` all mean
/// `CAP_NET_RAW`. Unknown names are refused.
pub fn normalise_capabilities(names: &[String]) -> Result<Vec<String>, String> {
    const KNOWN: &[&str] = &[
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "KILL",
        "SETGID",
        "SETUID",
        "SETPCAP",
        "LINUX_IMMUTABLE",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_ADMIN",
        "NET_RAW",
        "IPC_LOCK",
        "IPC_OWNER",
        "SYS_MODULE",
        "SYS_RAWIO",
        "SYS_CHROOT",
        "SYS_PTRACE",
        "SYS_PACCT",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_NICE",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "MKNOD",
        "LEASE",
        "AUDIT_WRITE",
        "AUDIT_CONTROL",
        "SETFCAP",
        "MAC_OVERRIDE",
        "MAC_ADMIN",
        "SYSLOG",
        "WAKE_ALARM",
        "BLOCK_SUSPEND",
        "AUDIT_READ",
        "PERFMON",
        "BPF",
        "CHECKPOINT_RESTORE",
    ];
    let mut out = Vec::new();
    for name in names {
        let upper = name.trim().to_ascii_uppercase();
        let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
        if !KNOWN.contains(&bare) {
            return Err(format!("unknown capability {name:?}"));
        }
        let full = format!("CAP_{bare}");
        if !out.contains(&full) {
            out.push(full);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(
        user: &'a ResolvedUser,
        limits: &'a Limits,
        mounts: &'a [BindMount],
        caps: &'a [String],
    ) -> SpecInput<'a> {
        SpecInput {
            hostname: "hello",
            args: vec!["/usr/local/bin/fixture-fn".into()],
            env: vec!["PATH=/usr/bin".into(), "fprocess=cat".into()],
            cwd: "/",
            user,
            capabilities: caps,
            read_only_rootfs: true,
            netns: Path::new("/run/bramble/net/netns/hello"),
            cgroups_path: "/openfaas-fn/hello".into(),
            limits,
            hosts_file: Path::new("/run/bramble/containers/hello/hosts"),
            resolv_file: Path::new("/run/bramble/containers/hello/resolv.conf"),
            secrets_dir: Some(Path::new("/run/bramble/containers/hello/secrets")),
            mounts,
        }
    }

    #[test]
    fn the_spec_is_a_valid_oci_runtime_spec_with_our_settings() {
        let user = ResolvedUser {
            uid: 1000,
            gid: 1000,
            additional_gids: vec![50],
        };
        let limits = Limits {
            memory_bytes: Some(64 << 20),
            memory_reservation_bytes: Some(32 << 20),
            cpu_millis: Some(500),
            cpu_request_millis: Some(250),
            pids: Some(32),
        };
        let mounts = [BindMount {
            source: "/run/bramble/hw/hello.sock".into(),
            destination: "/run/bramble/hw.sock".into(),
            read_only: false,
        }];
        let caps = vec!["CAP_NET_RAW".to_owned()];
        let json = build(&input(&user, &limits, &mounts, &caps));
        let spec: oci_spec::runtime::Spec =
            serde_json::from_value(json.clone()).expect("parses as an OCI spec");
        let process = spec.process().as_ref().unwrap();
        assert_eq!(process.user().uid(), 1000);
        assert_eq!(process.no_new_privileges(), Some(true));
        let linux = spec.linux().as_ref().unwrap();
        let resources = linux.resources().as_ref().unwrap();
        assert_eq!(resources.memory().as_ref().unwrap().limit(), Some(64 << 20));
        assert_eq!(
            resources.memory().as_ref().unwrap().reservation(),
            Some(32 << 20)
        );
        assert_eq!(resources.cpu().as_ref().unwrap().quota(), Some(50_000));
        assert_eq!(resources.cpu().as_ref().unwrap().period(), Some(100_000));
        assert_eq!(resources.cpu().as_ref().unwrap().shares(), Some(256));
        assert_eq!(resources.pids().as_ref().unwrap().limit(), 32);
        let devices = resources.devices().as_ref().unwrap();
        assert_eq!(devices.len(), 1);
        assert!(!devices[0].allow());
        assert!(spec.root().as_ref().unwrap().readonly().unwrap_or(false));
        let destinations: Vec<String> = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.destination().display().to_string())
            .collect();
        for expected in [
            "/tmp",
            "/etc/hosts",
            "/etc/resolv.conf",
            SECRETS_MOUNT,
            "/run/bramble/hw.sock",
        ] {
            assert!(
                destinations.iter().any(|d| d == expected),
                "{expected} missing from {destinations:?}"
            );
        }
        let netns = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .find(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Network)
            .unwrap();
        assert_eq!(
            netns.path().as_deref(),
            Some(Path::new("/run/bramble/net/netns/hello"))
        );
        assert_eq!(
            json["process"]["capabilities"]["bounding"],
            json!(["CAP_NET_RAW"])
        );
        assert_eq!(json["linux"]["cgroupsPath"], "/openfaas-fn/hello");
    }

    #[test]
    fn no_limits_means_no_resource_sections_but_devices_stay_denied() {
        let user = ResolvedUser::default();
        let limits = Limits::default();
        let json = build(&input(&user, &limits, &[], &[]));
        let resources = &json["linux"]["resources"];
        assert!(
            resources.get("memory").is_none()
                && resources.get("cpu").is_none()
                && resources.get("pids").is_none()
        );
        assert_eq!(
            resources["devices"],
            json!([{"allow": false, "access": "rwm"}])
        );
        assert_eq!(json["process"]["capabilities"]["effective"], json!([]));
    }

    /// The options of the spec's `/tmp` mount, if it has one.
    fn tmp_options(json: &Value) -> Option<Vec<String>> {
        let spec: oci_spec::runtime::Spec = serde_json::from_value(json.clone()).unwrap();
        spec.mounts()
            .as_ref()?
            .iter()
            .find(|m| m.destination() == Path::new("/tmp"))
            .map(|m| m.options().clone().unwrap_or_default())
    }

    #[test]
    fn tmp_of_a_read_only_root_is_a_bounded_tmpfs() {
        let user = ResolvedUser::default();
        let limited = Limits {
            memory_bytes: Some(48 << 20),
            ..Default::default()
        };
        let options = tmp_options(&build(&input(&user, &limited, &[], &[]))).unwrap();
        assert!(
            options.contains(&format!("size={}", 48u64 << 20)),
            "the memory limit bounds /tmp: {options:?}"
        );
        for option in ["nosuid", "nodev", "mode=1777"] {
            assert!(options.iter().any(|o| o == option), "{option}: {options:?}");
        }

        let unlimited = Limits::default();
        let options = tmp_options(&build(&input(&user, &unlimited, &[], &[]))).unwrap();
        assert!(
            options.contains(&"size=67108864".to_owned()),
            "64 MiB without a memory limit: {options:?}"
        );
        assert_eq!(
            options.iter().filter(|o| o.starts_with("size=")).count(),
            1,
            "{options:?}"
        );

        // A writable root has no /tmp mount: /tmp is the image's, in the container's snapshot.
        let mut writable = input(&user, &limited, &[], &[]);
        writable.read_only_rootfs = false;
        assert_eq!(tmp_options(&build(&writable)), None);
    }

    #[test]
    fn tiny_cpu_limits_respect_the_kernel_minimum() {
        assert_eq!(
            Limits {
                cpu_millis: Some(1),
                ..Default::default()
            }
            .cpu_quota_us(),
            Some(1000)
        );
        assert_eq!(
            Limits {
                cpu_millis: Some(2000),
                ..Default::default()
            }
            .cpu_quota_us(),
            Some(200_000)
        );
    }

    #[test]
    fn capabilities_are_normalised_and_checked() {
        let names = vec![
            "net_raw".to_owned(),
            "CAP_NET_RAW".to_owned(),
            "Chown".to_owned(),
        ];
        assert_eq!(
            normalise_capabilities(&names).unwrap(),
            vec!["CAP_NET_RAW", "CAP_CHOWN"]
        );
        assert!(
            normalise_capabilities(&["CAP_EVERYTHING".to_owned()])
                .unwrap_err()
                .contains("CAP_EVERYTHING")
        );
    }
}
