//! One replica of a function: its phase, its container and task, its restart backoff, and
//! where the next wanted replica goes.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use bramble_gateway::ui::model::{Replica as ReplicaView, ReplicaState};
use tokio::time::Instant;

use super::Slot;
use crate::function::{self, FunctionKey};

/// First restart delay; doubled per consecutive failure.
const BACKOFF_START: Duration = Duration::from_millis(250);
/// Longest restart delay.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// No task (never started, stopped on purpose).
    Stopped,
    /// Task running, health check in progress.
    Starting,
    Ready,
    /// Waiting to (re)start: after a failure, or at once when just wanted.
    Backoff(Instant),
    /// Out of the route; finishing its requests, then stopped with its grace period. Its
    /// slot is taken until the task is gone.
    Stopping,
}

#[derive(Debug)]
pub(super) struct Replica {
    pub(super) index: u64,
    pub(super) id: String,
    /// The container record exists in containerd.
    pub(super) created: bool,
    pub(super) phase: Phase,
    pub(super) ip: Option<Ipv4Addr>,
    /// Where requests to the task this replica runs now are counted.
    pub(super) slot: Option<Arc<Slot>>,
    /// The pid of the task this replica runs now.
    pub(super) pid: Option<u32>,
    pub(super) started_at: Option<Instant>,
    /// Consecutive failed runs (drives the backoff).
    pub(super) failures: u32,
}

impl Replica {
    pub(super) fn new(key: &FunctionKey, generation: u64, index: u64) -> Self {
        Self {
            index,
            id: key.container_id(generation, index),
            created: false,
            phase: Phase::Stopped,
            ip: None,
            slot: None,
            pid: None,
            started_at: None,
            failures: 0,
        }
    }

    /// The task runs (probing or serving).
    pub(super) fn is_live(&self) -> bool {
        matches!(self.phase, Phase::Starting | Phase::Ready)
    }

    /// Counted among the replicas wanted: running, or to be (re)started.
    pub(super) fn is_wanted(&self) -> bool {
        matches!(
            self.phase,
            Phase::Starting | Phase::Ready | Phase::Backoff(_)
        )
    }

    /// What the dashboard shows of it.
    pub(super) fn view(&self) -> ReplicaView {
        ReplicaView {
            id: self.id.clone(),
            state: match self.phase {
                Phase::Stopped => ReplicaState::Stopped,
                Phase::Starting => ReplicaState::Starting,
                // A wait without a failed run (containerd unreachable) is a start to come.
                Phase::Backoff(_) if self.failures == 0 => ReplicaState::Starting,
                Phase::Ready => ReplicaState::Ready,
                Phase::Backoff(_) => ReplicaState::Restarting,
                Phase::Stopping => ReplicaState::Stopping,
            },
            board: None,
            address: self.ip.map(|ip| ip.to_string()),
            failures: self.failures,
        }
    }

    /// Marks a failed run and schedules the next start.
    pub(super) fn backoff(&mut self) {
        let delay = BACKOFF_START
            .saturating_mul(1 << self.failures.min(7))
            .min(BACKOFF_MAX);
        self.failures = self.failures.saturating_add(1);
        self.phase = Phase::Backoff(Instant::now() + delay);
    }
}

/// Where a wanted replica goes.
pub(super) enum Free {
    /// The replica at this position has a stopped (or never created) container to start.
    Stopped(usize),
    /// A new slot with this index.
    New(u64),
}

/// A slot for one more replica: a stopped replica's (lowest index first), else the lowest
/// index no replica holds; `None` when every slot is held by a replica still stopping.
pub(super) fn free_slot(replicas: &[Replica]) -> Option<Free> {
    let stopped = replicas
        .iter()
        .enumerate()
        .filter(|(_, r)| r.phase == Phase::Stopped)
        .min_by_key(|(_, r)| r.index)
        .map(|(i, _)| Free::Stopped(i));
    stopped.or_else(|| {
        (0..function::MAX_SLOTS)
            .find(|index| !replicas.iter().any(|r| r.index == *index))
            .map(Free::New)
    })
}
