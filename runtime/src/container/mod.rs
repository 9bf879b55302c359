//! Function containers: create (network, files, spec, container record, snapshot), start
//! (FIFOs, task), stop with a grace period, delete in containerd's safe order, list and adopt.
//!
//! Cut in three: `spec.rs` (what runs), `lifecycle.rs` (create, start, stop, delete) and
//! `inventory.rs` (list, get, adopt, leftovers).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use containerd_client::types::v1::Status as CtrStatus;
use serde::Serialize;

mod inventory;
mod lifecycle;
mod spec;

pub use spec::{ContainerSpec, Secret};

/// A managed container as containerd knows it.
#[derive(Clone, Debug, Serialize)]
pub struct Container {
    pub id: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    /// The function's address on the bridge, if attached.
    pub ip: Option<Ipv4Addr>,
    pub task: Option<TaskState>,
}

/// A task that was started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Started {
    pub pid: u32,
    /// The function's address on the bridge.
    pub ip: Ipv4Addr,
    /// Where the start's time went (zero for a task that was already running).
    #[serde(skip)]
    pub steps: StartSteps,
}

/// The steps of [`Runtime::start`](crate::Runtime::start), timed: what a cold start spends
/// before the function's own process runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StartSteps {
    /// The snapshot's mounts, the network namespace and the output FIFOs.
    pub prepare: Duration,
    /// containerd's `Tasks.Create` (shim start, `runc create`), with the CNI attach beside it.
    pub create: Duration,
    /// containerd's `Tasks.Start` (`runc start`: the function's process is let go).
    pub start: Duration,
}

/// A container's task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TaskState {
    pub pid: u32,
    pub status: TaskStatus,
    /// Set once stopped.
    pub exit_status: Option<u32>,
}

/// Lifecycle state of a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Created,
    Running,
    Stopped,
    Paused,
    Unknown,
}

impl TaskStatus {
    fn from_ctr(status: i32) -> Self {
        match CtrStatus::try_from(status) {
            Ok(CtrStatus::Created) => TaskStatus::Created,
            Ok(CtrStatus::Running) => TaskStatus::Running,
            Ok(CtrStatus::Stopped) => TaskStatus::Stopped,
            Ok(CtrStatus::Paused | CtrStatus::Pausing) => TaskStatus::Paused,
            _ => TaskStatus::Unknown,
        }
    }
}

pub(super) fn task_state(p: &containerd_client::types::v1::Process) -> TaskState {
    let status = TaskStatus::from_ctr(p.status);
    TaskState {
        pid: p.pid,
        status,
        exit_status: (status == TaskStatus::Stopped).then_some(p.exit_status),
    }
}
