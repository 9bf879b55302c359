//! Updates: the new generation starts beside the one that serves, traffic switches when all
//! its replicas are ready, then the old ones are drained and removed; a new version that never
//! becomes ready (its deadline passes, or a replica fails [`CRASH_LOOP_FAILURES`] times) is
//! removed and the old one keeps serving — rolled back, and reported so.
//!
//! A rollout survives a crash of the daemon: the new record is saved together with the one
//! that served before it ([`FunctionRecord::previous`]), in one atomic write. A supervisor
//! started with such a record resumes the rollout: it adopts the old generation's containers
//! and keeps them serving, adopts (or starts) the new generation's, switches when those are
//! ready, and rolls back to the previous record when they never are. The saved rollout is
//! settled (cleared, or replaced by the previous record) when the switch or the rollback
//! happens.

use std::time::Duration;

use tokio::time::Instant;

use super::{CRASH_LOOP_FAILURES, Phase, Replica, Supervisor};
use crate::function::{self, FunctionKey};
use crate::runtime::Containers;
use crate::store::FunctionRecord;

/// An update in progress; the supervisor's `record` is the one still serving meanwhile.
#[derive(Debug)]
pub(super) struct Rollout {
    pub(super) record: FunctionRecord,
    pub(super) replicas: Vec<Replica>,
    pub(super) deadline: Instant,
}

/// Splits a saved record into what serves now and the rollout to resume, if any. The third
/// value is a generation whose saved rollout must be settled (it was scaled to zero
/// meanwhile: nothing serves to protect, the new record simply applies).
pub(super) fn resume(
    key: &FunctionKey,
    record: FunctionRecord,
    ready_timeout: Duration,
) -> (FunctionRecord, Option<Rollout>, Option<u64>) {
    let generation = record.generation;
    let replicas = record.replicas;
    match record.previous {
        // The replicas wanted now apply to the old generation too while the rollout resumes.
        Some(previous) if replicas > 0 => {
            tracing::info!(function = %key, generation, "resuming an interrupted update");
            let rollout = Rollout {
                record: FunctionRecord {
                    previous: None,
                    ..record
                },
                replicas: Vec::new(),
                deadline: Instant::now() + ready_timeout,
            };
            let serving = FunctionRecord {
                replicas,
                ..previous.settled()
            };
            (serving, Some(rollout), None)
        }
        previous => {
            let settled = FunctionRecord {
                previous: None,
                ..record
            };
            (settled, None, previous.is_some().then_some(generation))
        }
    }
}

impl Rollout {
    /// Takes the new generation's adopted containers; replicas missing among them are made.
    pub(super) fn adopt(&mut self, key: &FunctionKey, mut adopted: Vec<Replica>) {
        for index in 0..self.record.replicas.max(1) {
            if !adopted.iter().any(|r| r.index == index) {
                adopted.push(Replica::new(key, self.record.generation, index));
            }
        }
        adopted.sort_by_key(|r| r.index);
        self.replicas = adopted;
    }
}

impl<C: Containers> Supervisor<C> {
    /// `saved` is the record as the provider saved it, with the rollback target it chose.
    pub(super) async fn begin_update(&mut self, saved: FunctionRecord) {
        let record = saved.settled();
        // A rollout still in progress is superseded by the newer one.
        if let Some(old) = self.rollout.take() {
            for r in old.replicas {
                self.remove_in_background(r.id);
            }
        }
        self.route
            .set_timeout(function::timeout(&record.deployment, &self.ctx.defaults));
        if self.replicas.iter().all(|r| r.phase != Phase::Ready) {
            // Nothing serving (scaled to zero, or broken): nothing to protect; replace at once.
            self.record = record;
            for r in std::mem::take(&mut self.replicas) {
                self.remove_in_background(r.id);
            }
            self.message = None;
            self.persist_if_generation(self.record.generation, |r| r.previous = None)
                .await;
            return;
        }
        // Keep the old generation serving under its own record until the new one is ready. The
        // saved rollback target must be that record: the provider's guess is wrong when a
        // rollout finished between its write and this command.
        let serving = self.record.settled();
        let guessed = saved.previous.as_deref().is_some_and(|p| {
            p.generation == serving.generation && p.deployment == serving.deployment
        });
        if !guessed {
            self.persist_if_generation(record.generation, |r| {
                r.previous = Some(Box::new(serving));
            })
            .await;
        }
        let count = record.replicas.max(1);
        let replicas = (0..count)
            .map(|i| Replica::new(&self.key, record.generation, i))
            .collect();
        tracing::info!(function = %self.key, generation = record.generation, "rolling out an update");
        self.rollout = Some(Rollout {
            record,
            replicas,
            deadline: Instant::now() + self.ctx.ready_timeout,
        });
    }

    /// Switches traffic to the new generation once all its replicas are ready.
    pub(super) async fn finish_rollout_if_ready(&mut self) {
        let ready = self
            .rollout
            .as_ref()
            .is_some_and(|r| r.replicas.iter().all(|x| x.phase == Phase::Ready));
        if !ready {
            return;
        }
        let Some(rollout) = self.rollout.take() else {
            return;
        };
        tracing::info!(function = %self.key, generation = rollout.record.generation, "update ready; switching traffic");
        let old = std::mem::replace(&mut self.replicas, rollout.replicas);
        self.record = rollout.record;
        self.message = None;
        // Publish first: new requests go to the new replicas; the old ones finish what they
        // are serving, then stop with their grace period.
        self.publish();
        self.persist_if_generation(self.record.generation, |r| r.previous = None)
            .await;
        for r in old {
            match r.slot {
                Some(slot) => self.stop_after_drain(r.id, slot, true),
                None => self.remove_in_background(r.id),
            }
        }
    }

    /// Rolls an update back when its deadline passed or a new replica keeps failing.
    pub(super) async fn check_rollout_deadline(&mut self) {
        let failed = self.rollout.as_ref().is_some_and(|r| {
            Instant::now() >= r.deadline
                || r.replicas.iter().any(|x| x.failures >= CRASH_LOOP_FAILURES)
        });
        if !failed {
            return;
        }
        let Some(rollout) = self.rollout.take() else {
            return;
        };
        let why = format!(
            "update to {} failed: the new version did not become ready within {:?}{}; rolled back, the previous version keeps serving",
            rollout.record.deployment.image,
            self.ctx.ready_timeout,
            self.message
                .as_ref()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default()
        );
        tracing::warn!(function = %self.key, "{why}");
        for r in rollout.replicas {
            self.remove_in_background(r.id);
        }
        // The record that keeps serving is saved again, with the replicas wanted now.
        let previous = self.record.settled();
        self.persist_if_generation(rollout.record.generation, |r| {
            *r = FunctionRecord {
                replicas: r.replicas,
                ..previous
            };
        })
        .await;
        self.message = Some(why);
    }
}
