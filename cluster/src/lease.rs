//! One actor at a time: a lease in the KV bucket `leases` (key `placer` for the placer).
//!
//! nats-server 2.9/2.10 have no per-key TTL, so the lease is kept alive by its holder and judged
//! by every contender's own monotonic clock:
//! - The holder renews every `renew_every` (1 s) with `update(key, revision)`: each renewal is
//!   a new revision. A renewal that fails with `Conflict` means someone else took the lease:
//!   the holder stops acting at once.
//! - A contender follows the key (a KV watch) and notes, by its own clock, when the revision
//!   last changed. After `dead_after` (10 s) without a change it takes over with
//!   `update(key, last revision)`; compare-and-set lets exactly one contender win. An absent or
//!   deleted key is taken with `create`.
//! - A holder that cannot renew (errors, no quorum) stops acting `dead_after − renew_every`
//!   after the last renewal it *sent* that succeeded — before any contender can have seen
//!   `dead_after` of silence (a contender's silence starts no earlier than the commit of that
//!   renewal, which comes after its sending). The brief's "stop after `dead_after` of failed
//!   renewals" would overlap a contender's takeover by up to one renewal period; this does not.
//!
//! The value is JSON `{"holder": "<board>", "term": n}`: `term` grows at every takeover, so
//! what a holder writes can be fenced by it.

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::kv::{self, Bucket, Change, KvError};
use crate::names;

/// The bucket holding leases.
pub const LEASES_BUCKET: &str = "leases";

/// Lease timing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// How often the holder renews.
    pub renew_every: Duration,
    /// Silence after which a contender takes over.
    pub dead_after: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            renew_every: Duration::from_secs(1),
            dead_after: Duration::from_secs(10),
        }
    }
}

/// This board's relation to the lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseStatus {
    /// Not known yet (the key has not been read).
    Unknown,
    /// This board holds it, in `term`; it may act.
    Holding {
        /// The term (grows at every takeover).
        term: u64,
    },
    /// Another board holds it (or nobody, for a moment).
    Following {
        /// The holder named in the lease, if any.
        holder: Option<String>,
    },
}

impl LeaseStatus {
    /// True while this board may act.
    pub fn is_holder(&self) -> bool {
        matches!(self, LeaseStatus::Holding { .. })
    }
}

/// A lease error.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Names that are not allowed.
    #[error(transparent)]
    Name(#[from] names::NameError),
    /// Timing that cannot work.
    #[error(
        "lease dead_after ({dead_after:?}) must be at least 3 renewal periods ({renew_every:?})"
    )]
    Timing {
        /// Renewal period.
        renew_every: Duration,
        /// dead_after.
        dead_after: Duration,
    },
    /// A KV key name KV refuses.
    #[error(transparent)]
    Kv(#[from] KvError),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    holder: String,
    term: u64,
}

/// A lease this board contends for.
pub struct Lease {
    status: watch::Receiver<LeaseStatus>,
    task: JoinHandle<()>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Lease {
    /// Starts contending for lease `key` in `bucket` as board `me`.
    pub fn start(
        bucket: Bucket,
        key: &str,
        me: &str,
        config: LeaseConfig,
    ) -> Result<Lease, LeaseError> {
        names::validate("board", me)?;
        kv::validate_name("key", key)?;
        if config.dead_after < config.renew_every * 3 {
            return Err(LeaseError::Timing {
                renew_every: config.renew_every,
                dead_after: config.dead_after,
            });
        }
        let (tx, status) = watch::channel(LeaseStatus::Unknown);
        let contender = Contender {
            bucket: bucket.clone(),
            key: key.to_owned(),
            me: me.to_owned(),
            config,
            seen: None,
            changed_at: Instant::now(),
            current: false,
            held_until: None,
            status: tx,
        };
        let task = tokio::spawn(contender.run(kv::follow(bucket)));
        Ok(Lease { status, task })
    }

    /// This board's status; `changed()` wakes on every change. Act only while
    /// [`LeaseStatus::is_holder`].
    pub fn watch(&self) -> watch::Receiver<LeaseStatus> {
        self.status.clone()
    }

    /// Whether this board holds the lease now.
    pub fn is_holder(&self) -> bool {
        self.status.borrow().is_holder()
    }
}

/// What the contender last saw of the key.
#[derive(Clone, Debug)]
struct Seen {
    revision: u64,
    record: Option<Record>,
}

struct Contender {
    bucket: Bucket,
    key: String,
    me: String,
    config: LeaseConfig,
    /// The key's latest revision and value as seen (`None`: never seen / absent).
    seen: Option<Seen>,
    /// When (own clock) the revision last changed.
    changed_at: Instant,
    /// The watch delivered the key's current state.
    current: bool,
    /// While holding: acting is allowed until this instant.
    held_until: Option<Instant>,
    status: watch::Sender<LeaseStatus>,
}

impl Contender {
    async fn run(mut self, mut changes: mpsc::Receiver<Change>) {
        let mut tick = tokio::time::interval(self.config.renew_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                change = changes.recv() => {
                    let Some(change) = change else { return };
                    self.observe(change);
                }
                _ = tick.tick() => self.step().await,
            }
            self.expire();
        }
    }

    /// A change of the bucket (other keys are ignored).
    fn observe(&mut self, change: Change) {
        let (revision, record) = match change {
            Change::Current => {
                self.current = true;
                return;
            }
            Change::Put {
                key,
                value,
                revision,
            } if key == self.key => (revision, serde_json::from_slice::<Record>(&value).ok()),
            Change::Delete { key, revision } if key == self.key => (revision, None),
            Change::Put { .. } | Change::Delete { .. } => return,
        };
        if self.seen.as_ref().is_some_and(|s| s.revision >= revision) {
            return;
        }
        self.changed_at = Instant::now();
        let ours = record.as_ref().is_some_and(|r| r.holder == self.me);
        self.seen = Some(Seen { revision, record });
        if !ours && self.held_until.is_some() {
            tracing::info!(lease = %self.key, "lease taken by another board; stopping at once");
            self.lose();
        }
    }

    /// Stops acting when renewals have failed for too long.
    fn expire(&mut self) {
        if self.held_until.is_some_and(|until| Instant::now() >= until) {
            tracing::warn!(lease = %self.key, "lease renewals failing (no quorum?); stopping");
            self.lose();
        }
    }

    fn lose(&mut self) {
        self.held_until = None;
        let holder = self
            .seen
            .as_ref()
            .and_then(|s| s.record.as_ref())
            .map(|r| r.holder.clone())
            .filter(|h| *h != self.me);
        self.status.send_replace(LeaseStatus::Following { holder });
    }

    async fn step(&mut self) {
        if !self.current {
            return;
        }
        let sent = Instant::now();
        let seen = self.seen.clone();
        let holding = self.held_until.is_some();
        let record = |term| {
            Bytes::from(
                serde_json::to_vec(&Record {
                    holder: self.me.clone(),
                    term,
                })
                .unwrap_or_default(),
            )
        };
        let attempt = match &seen {
            // Absent or deleted: take it.
            None | Some(Seen { record: None, .. }) => {
                let term = seen.as_ref().map_or(0, |s| s.revision) + 1;
                Some((self.bucket.create(&self.key, record(term)).await, term))
            }
            Some(Seen {
                revision,
                record: Some(r),
            }) => {
                let ours = r.holder == self.me;
                let silent = sent.duration_since(self.changed_at) >= self.config.dead_after;
                if ours {
                    // Renew (also after this board restarted while the lease named it).
                    Some((
                        self.bucket
                            .update(&self.key, record(r.term), *revision)
                            .await,
                        r.term,
                    ))
                } else if silent {
                    let term = r.term + 1;
                    Some((
                        self.bucket.update(&self.key, record(term), *revision).await,
                        term,
                    ))
                } else {
                    None
                }
            }
        };
        match attempt {
            None => {
                if !holding {
                    let holder = seen.and_then(|s| s.record).map(|r| r.holder);
                    self.status.send_if_modified(|s| {
                        let new = LeaseStatus::Following { holder };
                        let changed = *s != new;
                        *s = new;
                        changed
                    });
                }
            }
            Some((Ok(revision), term)) => {
                if self.seen.as_ref().is_none_or(|s| s.revision < revision) {
                    self.seen = Some(Seen {
                        revision,
                        record: Some(Record {
                            holder: self.me.clone(),
                            term,
                        }),
                    });
                    self.changed_at = Instant::now();
                }
                self.held_until = Some(
                    sent + self
                        .config
                        .dead_after
                        .saturating_sub(self.config.renew_every),
                );
                if !holding {
                    tracing::info!(lease = %self.key, term, "lease taken");
                }
                self.status.send_if_modified(|s| {
                    let new = LeaseStatus::Holding { term };
                    let changed = *s != new;
                    *s = new;
                    changed
                });
            }
            Some((Err(e), _)) if e.is_conflict() => {
                // Someone else wrote first: if we held it, we lost it.
                if holding {
                    tracing::info!(lease = %self.key, "lease renewal lost a compare-and-set; stopping at once");
                    self.lose();
                }
                // Learn the newer revision from the leader now rather than from the watch,
                // which may be behind (it re-subscribes after a leader change).
                if let Ok(latest) = self.bucket.entry_from_leader(&self.key).await {
                    let change = match latest {
                        Some(entry) => Change::Put {
                            key: self.key.clone(),
                            value: entry.value,
                            revision: entry.revision,
                        },
                        None => return,
                    };
                    self.observe(change);
                }
            }
            Some((Err(e), _)) => {
                tracing::debug!(lease = %self.key, error = %bramble_base::error_chain(&e), "lease write failed");
            }
        }
    }
}
