//! Reading the cgroup filesystem directly: which hierarchy the host runs (v1, v2, hybrid),
//! whether the memory controller is on (Raspberry Pi kernels turn it off unless the kernel
//! command line says `cgroup_enable=memory cgroup_memory=1`), and the limits a container's
//! cgroup actually carries. Limits are *set* through the OCI spec by runc, never here.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// The cgroup layout of the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupVersion {
    /// Legacy: one hierarchy per controller under `/sys/fs/cgroup/<controller>`.
    V1,
    /// Unified: one hierarchy at `/sys/fs/cgroup`.
    V2,
}

/// The limits found in a container's cgroup. `None` = unlimited (or unreadable).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CgroupLimits {
    pub memory_bytes: Option<u64>,
    pub cpu_quota_us: Option<u64>,
    pub cpu_period_us: Option<u64>,
    pub pids: Option<u64>,
}

/// The cgroup filesystem rooted at `root` (normally `/sys/fs/cgroup`).
#[derive(Clone, Debug)]
pub struct Cgroups {
    root: PathBuf,
}

impl Default for Cgroups {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/sys/fs/cgroup"),
        }
    }
}

impl Cgroups {
    /// A cgroup filesystem mounted somewhere else (tests).
    pub fn at(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    /// v2 when the root is the unified hierarchy, v1 otherwise (hybrid hosts count as v1:
    /// their controllers, and so runc's limits, live in the v1 hierarchies).
    pub fn version(&self) -> CgroupVersion {
        if self.root.join("cgroup.controllers").exists() {
            CgroupVersion::V2
        } else {
            CgroupVersion::V1
        }
    }

    /// Is the memory controller available? Without it memory limits silently do nothing.
    pub fn memory_controller_enabled(&self) -> bool {
        match self.version() {
            CgroupVersion::V2 => std::fs::read_to_string(self.root.join("cgroup.controllers"))
                .is_ok_and(|c| c.split_whitespace().any(|x| x == "memory")),
            CgroupVersion::V1 => {
                let enabled_in_proc = std::fs::read_to_string("/proc/cgroups").is_ok_and(|text| {
                    text.lines().any(|line| {
                        let fields: Vec<&str> = line.split_whitespace().collect();
                        fields.first() == Some(&"memory") && fields.get(3) == Some(&"1")
                    })
                });
                enabled_in_proc && self.root.join("memory").is_dir()
            }
        }
    }

    /// The limits of the cgroup at `path` (the spec's `cgroupsPath`, e.g. `/openfaas-fn/hello`).
    pub fn limits(&self, path: &str) -> CgroupLimits {
        let rel = path.trim_start_matches('/');
        match self.version() {
            CgroupVersion::V2 => {
                let dir = self.root.join(rel);
                let (quota, period) = read(&dir.join("cpu.max"))
                    .map(|text| {
                        let mut parts = text.split_whitespace();
                        (parts.next().and_then(number), parts.next().and_then(number))
                    })
                    .unwrap_or((None, None));
                CgroupLimits {
                    memory_bytes: read(&dir.join("memory.max")).as_deref().and_then(number),
                    cpu_quota_us: quota,
                    cpu_period_us: period,
                    pids: read(&dir.join("pids.max")).as_deref().and_then(number),
                }
            }
            CgroupVersion::V1 => {
                let memory = read(
                    &self
                        .root
                        .join("memory")
                        .join(rel)
                        .join("memory.limit_in_bytes"),
                )
                .as_deref()
                .and_then(number)
                .filter(|v| *v < (1 << 62));
                // `cpu` may be its own hierarchy or co-mounted as `cpu,cpuacct`.
                let cpu_dir = ["cpu", "cpu,cpuacct"]
                    .iter()
                    .map(|c| self.root.join(c).join(rel))
                    .find(|d| d.is_dir());
                let quota = cpu_dir
                    .as_ref()
                    .and_then(|d| read(&d.join("cpu.cfs_quota_us")))
                    .and_then(|v| v.trim().parse::<i64>().ok())
                    .and_then(|v| u64::try_from(v).ok());
                let period = cpu_dir
                    .as_ref()
                    .and_then(|d| read(&d.join("cpu.cfs_period_us")))
                    .as_deref()
                    .and_then(number);
                CgroupLimits {
                    memory_bytes: memory,
                    cpu_quota_us: quota,
                    cpu_period_us: period,
                    pids: read(&self.root.join("pids").join(rel).join("pids.max"))
                        .as_deref()
                        .and_then(number),
                }
            }
        }
    }
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// A number, or `None` for `max` and garbage.
fn number(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_v2_limits() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        let dir = root.path().join("ns/f");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("memory.max"), "67108864\n").unwrap();
        std::fs::write(dir.join("cpu.max"), "50000 100000\n").unwrap();
        std::fs::write(dir.join("pids.max"), "max\n").unwrap();
        let cg = Cgroups::at(root.path());
        assert_eq!(cg.version(), CgroupVersion::V2);
        assert!(cg.memory_controller_enabled());
        assert_eq!(
            cg.limits("/ns/f"),
            CgroupLimits {
                memory_bytes: Some(64 << 20),
                cpu_quota_us: Some(50_000),
                cpu_period_us: Some(100_000),
                pids: None
            }
        );
    }

    #[test]
    fn reads_v1_limits_with_separate_or_comounted_cpu() {
        let root = tempfile::tempdir().unwrap();
        for (controller, file, value) in [
            ("memory", "memory.limit_in_bytes", "9223372036854771712"),
            ("cpu,cpuacct", "cpu.cfs_quota_us", "-1"),
            ("cpu,cpuacct", "cpu.cfs_period_us", "100000"),
            ("pids", "pids.max", "32"),
        ] {
            let dir = root.path().join(controller).join("ns/f");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(file), value).unwrap();
        }
        let cg = Cgroups::at(root.path());
        assert_eq!(cg.version(), CgroupVersion::V1);
        assert_eq!(
            cg.limits("/ns/f"),
            CgroupLimits {
                memory_bytes: None,
                cpu_quota_us: None,
                cpu_period_us: Some(100_000),
                pids: Some(32)
            }
        );
    }
}
