//! Membership: which boards are in the cluster, what they have, and whether they are alive.
//!
//! Board records ([`BoardInfo`]) live in the KV bucket `boards` and are written only when they
//! change. Liveness is **not** written to KV (an SD card would wear out): every board publishes
//! a small heartbeat on the core NATS subject `bramble.<cluster>.hb.<board>` every
//! `heartbeat` (default 1 s), and every board tracks, by its own monotonic clock, when it last
//! heard each board: [`BoardState::Alive`] within 3 heartbeats, [`BoardState::Suspect`] after,
//! [`BoardState::Dead`] after `dead_after` (default 10 s) of silence. No clock is compared
//! across boards. [`Membership::watch`] gives the current [`View`] and every change of it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::function_key::FunctionKey;
use crate::kv::{self, Bucket, Change, KvError};
use crate::names;

/// The bucket holding board records.
pub const BOARDS_BUCKET: &str = "boards";

/// What a board tells the cluster about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoardInfo {
    /// The board's name.
    pub name: String,
    /// Its LAN address (routes and board-to-board traffic).
    pub address: IpAddr,
    /// Its architecture, as OpenFaaS constraints name it: `arm64`, `arm`, `amd64`.
    pub arch: String,
    /// bramble's version on it.
    pub version: String,
    /// The nats-server version it runs (durability depends on it: see the queue module).
    pub nats_version: String,
    /// Memory budget for functions, bytes.
    pub memory: MemoryBudget,
    /// Function replicas running on it.
    pub functions: u32,
    /// Hardware it has.
    pub hardware: HardwareSummary,
    /// Labels from its configuration (`zone = "garage"`).
    pub labels: BTreeMap<String, String>,
    /// When its bramble started, milliseconds since the Unix epoch (display only).
    pub started_at_ms: u64,
    /// Whether it carries JetStream.
    pub jetstream: bool,
    /// The platform its runtime runs images for (`linux/arm64`, `linux/arm/v7`).
    #[serde(default)]
    pub platform: String,
    /// Its API port (`/system`, `/function`).
    #[serde(default)]
    pub api_port: u16,
    /// Its board-to-board listener's port.
    #[serde(default)]
    pub board_port: u16,
    /// Its nats-server's route port.
    #[serde(default)]
    pub route_port: u16,
    /// It is leaving the cluster: nothing new is placed on it.
    #[serde(default)]
    pub leaving: bool,
    /// Ready replicas per function it runs (`name.namespace`), as its supervisors see them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ready: BTreeMap<String, u64>,
    /// Functions it runs outside the cluster under these keys (its own from before it joined,
    /// that the cluster already had under the same name): the cluster's are not placed here.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub outside: BTreeSet<FunctionKey>,
}

/// A board's memory budget for functions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryBudget {
    /// Total bytes functions may use (`u64::MAX`: the board sets no budget).
    pub total: u64,
    /// Bytes reserved by the functions placed on it.
    pub used: u64,
}

/// The hardware a board lends to functions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardwareSummary {
    /// The GPIO chip's label (`pinctrl-bcm2711`, `pinctrl-rp1`), if any.
    pub gpio_chip: Option<String>,
    /// I2C bus numbers.
    pub i2c_buses: Vec<u32>,
    /// 1-Wire sensor ids.
    pub one_wire: Vec<String>,
    /// GPIO line names (`GPIO17`).
    #[serde(default)]
    pub gpio_lines: Vec<String>,
    /// SPI devices (`0.0`).
    #[serde(default)]
    pub spi: Vec<String>,
    /// PWM channels.
    #[serde(default)]
    pub pwm: Vec<u8>,
}

/// Whether a board is heard from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BoardState {
    /// Heard within the last 3 heartbeats.
    Alive,
    /// Silent for longer, but less than `dead_after` (or not heard yet since this board
    /// started, for less than `dead_after`).
    Suspect,
    /// Silent for `dead_after` or longer.
    Dead,
}

/// One board as this board sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct BoardView {
    /// Its record (`None` if only its heartbeat is known so far).
    pub info: Option<BoardInfo>,
    /// Its state.
    pub state: BoardState,
    /// When it was last heard, as wall time for display (`None`: not since this board started).
    pub last_seen: Option<SystemTime>,
}

/// The cluster as this board sees it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct View {
    /// Every known board, by name.
    pub boards: BTreeMap<String, BoardView>,
    /// Whether the board records have been read once (before that, only heartbeats are known).
    pub records_loaded: bool,
}

impl View {
    /// The boards in a state.
    pub fn in_state(&self, state: BoardState) -> impl Iterator<Item = &str> {
        self.boards
            .iter()
            .filter(move |(_, b)| b.state == state)
            .map(|(name, _)| name.as_str())
    }
}

/// Timing of membership.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MembershipConfig {
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// Silence after which a board is dead.
    pub dead_after: Duration,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        MembershipConfig {
            heartbeat: Duration::from_secs(1),
            dead_after: Duration::from_secs(10),
        }
    }
}

/// A membership error.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// A board or cluster name that is not allowed.
    #[error(transparent)]
    Name(#[from] names::NameError),
    /// `dead_after` must exceed 3 heartbeats.
    #[error("dead_after ({dead_after:?}) must be longer than 3 heartbeats ({heartbeat:?} each)")]
    Timing {
        /// The heartbeat.
        heartbeat: Duration,
        /// dead_after.
        dead_after: Duration,
    },
    /// Reading or writing board records.
    #[error("board records")]
    Kv(#[from] KvError),
    /// Subscribing to heartbeats.
    #[error("subscribing to heartbeats")]
    Subscribe(#[source] async_nats::SubscribeError),
    /// A record that cannot be encoded.
    #[error("encoding the board record")]
    Encode(#[source] serde_json::Error),
}

/// The subject boards heartbeat on.
pub fn heartbeat_subject(cluster: &str, board: &str) -> String {
    format!("bramble.{cluster}.hb.{board}")
}

/// This board's membership: its heartbeat, its record, and its view of the others.
pub struct Membership {
    bucket: Bucket,
    me: String,
    view: watch::Receiver<Arc<View>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Membership {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Membership {
    /// Writes `me` to the `boards` bucket, starts heartbeating and following the others.
    pub async fn start(
        client: async_nats::Client,
        bucket: Bucket,
        cluster: &str,
        me: BoardInfo,
        config: MembershipConfig,
    ) -> Result<Membership, MembershipError> {
        names::validate("cluster", cluster)?;
        names::validate("board", &me.name)?;
        if config.dead_after <= config.heartbeat * 3 {
            return Err(MembershipError::Timing {
                heartbeat: config.heartbeat,
                dead_after: config.dead_after,
            });
        }
        write_record(&bucket, &me).await?;
        let heard = client
            .subscribe(format!("bramble.{cluster}.hb.*"))
            .await
            .map_err(MembershipError::Subscribe)?;
        let (view_tx, view) = watch::channel(Arc::new(View::default()));
        let prefix = format!("bramble.{cluster}.hb.");
        let tracker = Tracker {
            config,
            started: Instant::now(),
            heard: HashMap::new(),
            records: BTreeMap::new(),
            records_loaded: false,
            view: view_tx,
        };
        let beat = tokio::spawn(heartbeat(
            client,
            heartbeat_subject(cluster, &me.name),
            me.started_at_ms,
            config.heartbeat,
        ));
        let follow = tokio::spawn(tracker.run(heard, prefix, kv::follow(bucket.clone())));
        Ok(Membership {
            bucket,
            me: me.name,
            view,
            tasks: vec![beat, follow],
        })
    }

    /// The current view; `changed()` on the receiver wakes on every change of a board's state
    /// or record.
    pub fn watch(&self) -> watch::Receiver<Arc<View>> {
        self.view.clone()
    }

    /// Writes this board's record again if it changed (functions running, memory used, ...).
    pub async fn update(&self, me: &BoardInfo) -> Result<(), MembershipError> {
        if me.name != self.me {
            return Err(names::NameError {
                what: "board",
                name: me.name.clone(),
                reason: "a board can only update its own record",
            }
            .into());
        }
        let current = self
            .view
            .borrow()
            .boards
            .get(&me.name)
            .and_then(|b| b.info.clone());
        if current.as_ref() == Some(me) {
            return Ok(());
        }
        write_record(&self.bucket, me).await
    }

    /// Forgets a board (`bramble cluster remove NAME`): deletes its record.
    pub async fn forget(&self, board: &str) -> Result<(), MembershipError> {
        names::validate("board", board)?;
        self.bucket.delete(board).await.map_err(Into::into)
    }

    /// Stops heartbeating and following (what a power cut does, minus the cut).
    pub fn stop(self) {}
}

async fn write_record(bucket: &Bucket, me: &BoardInfo) -> Result<(), MembershipError> {
    let bytes = serde_json::to_vec(me).map_err(MembershipError::Encode)?;
    bucket.put(&me.name, Bytes::from(bytes)).await?;
    Ok(())
}

async fn heartbeat(
    client: async_nats::Client,
    subject: String,
    started_at_ms: u64,
    every: Duration,
) {
    let payload = Bytes::from(started_at_ms.to_string());
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // A failed publish (disconnected from the local server) is retried on the next tick.
        let _ = client.publish(subject.clone(), payload.clone()).await;
    }
}

struct Tracker {
    config: MembershipConfig,
    started: Instant,
    heard: HashMap<String, Instant>,
    records: BTreeMap<String, BoardInfo>,
    records_loaded: bool,
    view: watch::Sender<Arc<View>>,
}

impl Tracker {
    async fn run(
        mut self,
        mut heard: async_nats::Subscriber,
        prefix: String,
        mut records: tokio::sync::mpsc::Receiver<Change>,
    ) {
        // States change with time alone: re-evaluate four times per heartbeat.
        let mut tick = tokio::time::interval(self.config.heartbeat / 4);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = heard.next() => {
                    let Some(message) = message else { return };
                    if let Some(board) = message.subject.as_str().strip_prefix(&prefix)
                        && names::validate("board", board).is_ok()
                    {
                        self.heard.insert(board.to_owned(), Instant::now());
                    }
                }
                change = records.recv() => {
                    let Some(change) = change else { return };
                    self.apply(change);
                }
                _ = tick.tick() => {}
            }
            self.forget_silent(Instant::now());
            self.publish();
        }
    }

    fn apply(&mut self, change: Change) {
        match change {
            Change::Put { key, value, .. } => match serde_json::from_slice::<BoardInfo>(&value) {
                Ok(info) if info.name == key => {
                    self.records.insert(key, info);
                }
                Ok(_) | Err(_) => {
                    tracing::warn!(board = %key, "ignoring a board record that does not parse");
                }
            },
            Change::Delete { key, .. } => {
                self.records.remove(&key);
                self.heard.remove(&key);
            }
            Change::Current => self.records_loaded = true,
        }
    }

    /// Forgets boards heard without a record that have been silent for `dead_after`: a
    /// heartbeat that arrives after a board's record was deleted (it left, or was removed)
    /// must not leave it in the view as dead for good. Only once the records are loaded (a
    /// board heard before its record is read is not forgotten).
    fn forget_silent(&mut self, now: Instant) {
        if !self.records_loaded {
            return;
        }
        let dead_after = self.config.dead_after;
        let records = &self.records;
        self.heard
            .retain(|name, at| records.contains_key(name) || now.duration_since(*at) < dead_after);
    }

    fn state(&self, last: Option<Instant>, now: Instant) -> BoardState {
        let silent = match last {
            Some(at) => now.duration_since(at),
            None => now.duration_since(self.started),
        };
        if silent >= self.config.dead_after {
            BoardState::Dead
        } else if last.is_some() && silent <= self.config.heartbeat * 3 {
            BoardState::Alive
        } else {
            BoardState::Suspect
        }
    }

    fn publish(&self) {
        let now = Instant::now();
        let wall = SystemTime::now();
        let mut boards = BTreeMap::new();
        let names = self.records.keys().chain(self.heard.keys());
        for name in names {
            if boards.contains_key(name) {
                continue;
            }
            let last = self.heard.get(name).copied();
            boards.insert(
                name.clone(),
                BoardView {
                    info: self.records.get(name).cloned(),
                    state: self.state(last, now),
                    last_seen: last.and_then(|at| wall.checked_sub(now.duration_since(at))),
                },
            );
        }
        let records_loaded = self.records_loaded;
        // Only wake watchers when something they can see changed (not last_seen alone).
        self.view.send_if_modified(|view| {
            let changed = view.records_loaded != records_loaded
                || view.boards.len() != boards.len()
                || view
                    .boards
                    .iter()
                    .zip(boards.iter())
                    .any(|((a, va), (b, vb))| a != b || va.state != vb.state || va.info != vb.info);
            *view = Arc::new(View {
                boards,
                records_loaded,
            });
            changed
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker() -> Tracker {
        let (view, _) = watch::channel(Arc::new(View::default()));
        Tracker {
            config: MembershipConfig::default(),
            started: Instant::now(),
            heard: HashMap::new(),
            records: BTreeMap::new(),
            records_loaded: false,
            view,
        }
    }

    #[test]
    fn states_follow_silence() {
        let t = tracker();
        let now = t.started + Duration::from_secs(30);
        let at = |ago: u64| Some(now - Duration::from_millis(ago));
        assert_eq!(t.state(at(500), now), BoardState::Alive);
        assert_eq!(t.state(at(3000), now), BoardState::Alive);
        assert_eq!(t.state(at(3001), now), BoardState::Suspect);
        assert_eq!(t.state(at(9999), now), BoardState::Suspect);
        assert_eq!(t.state(at(10_000), now), BoardState::Dead);
        // Never heard: suspect until dead_after has passed since this board started.
        assert_eq!(
            t.state(None, t.started + Duration::from_secs(2)),
            BoardState::Suspect
        );
        assert_eq!(t.state(None, now), BoardState::Dead);
    }

    /// A board heard after its record was deleted (a late heartbeat of a board that left) is
    /// forgotten once silent, not shown dead for good; one heard before its record is read,
    /// or still heard, stays.
    #[test]
    fn a_board_heard_after_its_record_went_is_forgotten_once_silent() {
        let mut t = tracker();
        let info = crate::fixtures::info("pi2");
        t.apply(Change::Put {
            key: "pi2".into(),
            value: Bytes::from(serde_json::to_vec(&info).unwrap()),
            revision: 1,
        });
        let now = t.started + Duration::from_secs(60);
        let long_ago = now - Duration::from_secs(11);
        t.heard.insert("pi2".into(), long_ago);
        t.heard.insert("pi3".into(), long_ago);
        // Records not loaded yet: nothing is forgotten.
        t.forget_silent(now);
        assert_eq!(t.heard.len(), 2);
        t.apply(Change::Current);
        t.apply(Change::Delete {
            key: "pi2".into(),
            revision: 2,
        });
        // The late heartbeat after the delete.
        t.heard.insert("pi2".into(), long_ago);
        t.heard.insert("pi4".into(), now);
        t.forget_silent(now);
        let mut heard: Vec<&str> = t.heard.keys().map(String::as_str).collect();
        heard.sort_unstable();
        assert_eq!(
            heard,
            ["pi4"],
            "silent boards without a record are forgotten"
        );
        t.publish();
        let view = t.view.borrow();
        assert!(!view.boards.contains_key("pi2") && !view.boards.contains_key("pi3"));
        assert_eq!(view.boards["pi4"].state, BoardState::Alive);
    }

    #[test]
    fn records_with_a_foreign_name_are_ignored() {
        let mut t = tracker();
        let info = crate::fixtures::info("pi2");
        let value = Bytes::from(serde_json::to_vec(&info).unwrap());
        t.apply(Change::Put {
            key: "pi1".into(),
            value: value.clone(),
            revision: 1,
        });
        assert!(t.records.is_empty());
        t.apply(Change::Put {
            key: "pi2".into(),
            value,
            revision: 2,
        });
        assert_eq!(t.records.get("pi2"), Some(&info));
        t.apply(Change::Delete {
            key: "pi2".into(),
            revision: 3,
        });
        assert!(t.records.is_empty());
    }
}
