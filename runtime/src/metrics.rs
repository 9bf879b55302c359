//! CPU and memory usage of tasks, from containerd's `Tasks.Metrics`.
//!
//! The payload is `io.containerd.cgroups.v1.Metrics` or `io.containerd.cgroups.v2.Metrics`,
//! whose protos containerd-client does not ship. Only the fields bramble reports are declared
//! below, with the tag numbers of `containerd/cgroups` (`stats/v1/metrics.proto`,
//! `cgroup2/stats/metrics.proto`); prost skips every other field.

use std::collections::HashMap;

use containerd_client::services::v1::MetricsRequest;
use prost::Message;
use serde::Serialize;

use crate::client::Connection;
use crate::error::Result;

/// Resource usage of one task.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Memory in use now, in bytes (including page cache, as the cgroup counts it).
    pub memory_bytes: u64,
    /// The memory limit in bytes, if the cgroup has one.
    pub memory_limit_bytes: Option<u64>,
    /// CPU time used since the task started, in nanoseconds.
    pub cpu_ns: u64,
    /// Processes and threads.
    pub pids: u64,
}

mod v1 {
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub(super) struct Metrics {
        #[prost(message, optional, tag = "2")]
        pub pids: Option<PidsStat>,
        #[prost(message, optional, tag = "3")]
        pub cpu: Option<CpuStat>,
        #[prost(message, optional, tag = "4")]
        pub memory: Option<MemoryStat>,
    }
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub(super) struct PidsStat {
        #[prost(uint64, tag = "1")]
        pub current: u64,
    }
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub(super) struct CpuStat {
        #[prost(message, optional, tag = "1")]
        pub usage: Option<CpuUsage>,
    }
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub(super) struct CpuUsage {
        #[prost(uint64, tag = "1")]
        pub total: u64,
    }
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub(super) struct MemoryStat {
        #[prost(message, optional, tag = "33")]
        pub usage: Option<MemoryEntry>,
    }
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub(super) struct MemoryEntry {
        #[prost(uint64, tag = "1")]
        pub limit: u64,
        #[prost(uint64, tag = "2")]
        pub usage: u64,
    }
}

mod v2 {
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub(super) struct Metrics {
        #[prost(message, optional, tag = "1")]
        pub pids: Option<PidsStat>,
        #[prost(message, optional, tag = "2")]
        pub cpu: Option<CpuStat>,
        #[prost(message, optional, tag = "4")]
        pub memory: Option<MemoryStat>,
    }
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub(super) struct PidsStat {
        #[prost(uint64, tag = "1")]
        pub current: u64,
    }
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub(super) struct CpuStat {
        #[prost(uint64, tag = "1")]
        pub usage_usec: u64,
    }
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub(super) struct MemoryStat {
        #[prost(uint64, tag = "32")]
        pub usage: u64,
        #[prost(uint64, tag = "33")]
        pub usage_limit: u64,
    }
}

/// cgroup v1 reports "no limit" as a huge number (a page-aligned `i64::MAX`).
fn limit_or_none(limit: u64) -> Option<u64> {
    (limit != 0 && limit < (1 << 62)).then_some(limit)
}

/// Decodes one metrics payload by its type URL.
pub(crate) fn decode(any: &prost_types::Any) -> Option<Usage> {
    if any.type_url.ends_with("io.containerd.cgroups.v1.Metrics") {
        let m = v1::Metrics::decode(&any.value[..]).ok()?;
        let memory = m.memory.and_then(|m| m.usage).unwrap_or_default();
        Some(Usage {
            memory_bytes: memory.usage,
            memory_limit_bytes: limit_or_none(memory.limit),
            cpu_ns: m.cpu.and_then(|c| c.usage).map_or(0, |u| u.total),
            pids: m.pids.map_or(0, |p| p.current),
        })
    } else if any.type_url.ends_with("io.containerd.cgroups.v2.Metrics") {
        let m = v2::Metrics::decode(&any.value[..]).ok()?;
        let memory = m.memory.unwrap_or_default();
        Some(Usage {
            memory_bytes: memory.usage,
            memory_limit_bytes: limit_or_none(memory.usage_limit),
            cpu_ns: m.cpu.map_or(0, |c| c.usage_usec.saturating_mul(1000)),
            pids: m.pids.map_or(0, |p| p.current),
        })
    } else {
        None
    }
}

/// Usage of the running tasks, by container id. `filter` restricts to one container.
pub(crate) async fn collect(
    conn: &Connection,
    only: Option<&str>,
) -> Result<HashMap<String, Usage>> {
    let filters = only.map(|id| vec![format!("id=={id}")]).unwrap_or_default();
    let mut client = conn.tasks();
    let reply = conn
        .call(
            "Tasks.Metrics",
            client.metrics(conn.request(MetricsRequest { filters })),
        )
        .await?;
    Ok(reply
        .metrics
        .into_iter()
        .filter_map(|metric| Some((metric.id, decode(metric.data.as_ref()?)?)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_v1_and_v2_payloads() {
        let v1 = v1::Metrics {
            pids: Some(v1::PidsStat { current: 3 }),
            cpu: Some(v1::CpuStat {
                usage: Some(v1::CpuUsage { total: 5_000_000 }),
            }),
            memory: Some(v1::MemoryStat {
                usage: Some(v1::MemoryEntry {
                    limit: 64 << 20,
                    usage: 1 << 20,
                }),
            }),
        };
        let any = prost_types::Any {
            type_url: "io.containerd.cgroups.v1.Metrics".into(),
            value: v1.encode_to_vec(),
        };
        assert_eq!(
            decode(&any),
            Some(Usage {
                memory_bytes: 1 << 20,
                memory_limit_bytes: Some(64 << 20),
                cpu_ns: 5_000_000,
                pids: 3
            })
        );

        let v2 = v2::Metrics {
            pids: Some(v2::PidsStat { current: 1 }),
            cpu: Some(v2::CpuStat { usage_usec: 7 }),
            memory: Some(v2::MemoryStat {
                usage: 10,
                usage_limit: u64::MAX,
            }),
        };
        let any = prost_types::Any {
            type_url: "types.containerd.io/io.containerd.cgroups.v2.Metrics".into(),
            value: v2.encode_to_vec(),
        };
        assert_eq!(
            decode(&any),
            Some(Usage {
                memory_bytes: 10,
                memory_limit_bytes: None,
                cpu_ns: 7000,
                pids: 1
            })
        );

        let unknown = prost_types::Any {
            type_url: "something.Else".into(),
            value: vec![],
        };
        assert_eq!(decode(&unknown), None);
    }
}
