//! The durable queue of one trigger: what is waiting to be delivered, on disk before it is
//! dispatched.
//!
//! The queue holds at most two invocations: the one being delivered (retried until the
//! function answers) and the next one. Events that arrive while both slots are taken are
//! merged into the second with a count, so a burst faster than the function can take costs
//! neither memory nor disk, and no event goes unaccounted for: the counts of the
//! invocations add up to the events. The file is small and rewritten atomically (write,
//! fsync, rename) when it changes.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::store::{StoreError, write_atomic};

const VERSION: u32 = 1;
/// The invocation in delivery and the next one; later events merge into the next one.
const SLOTS: usize = 2;

/// One invocation waiting to be delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    /// Numbers the invocations of the trigger from 1 (the same on a retry, so a function
    /// can tell a redelivery).
    pub sequence: u64,
    /// How many events it stands for (more than 1 when a burst was coalesced).
    pub count: u64,
    /// The first of them, when it is known: events a source could only count (edges the
    /// kernel dropped or a watcher fell behind on) come before the one that carries their
    /// count.
    #[serde(default)]
    pub first: Option<Value>,
    /// The last of them.
    pub last: Value,
    /// When the first was queued (Unix milliseconds).
    pub queued_at_ms: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    version: u32,
    next_sequence: u64,
    queue: VecDeque<Pending>,
    /// The source's own state (e.g. which side of its threshold a sensor is on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    memo: Option<Value>,
}

/// The queue of one trigger and its file.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    saved: Saved,
    dirty: bool,
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Journal {
    /// Opens the queue kept at `path` (an empty one when the file does not exist). An
    /// unreadable file is moved aside to `<path>.corrupt` (and the error returned with the
    /// empty journal, to be logged), so that one bad file never stops a trigger.
    pub fn open(path: &Path) -> (Journal, Option<String>) {
        let mut journal = Journal {
            path: path.to_path_buf(),
            saved: Saved {
                version: VERSION,
                next_sequence: 1,
                queue: VecDeque::new(),
                memo: None,
            },
            dirty: false,
        };
        let problem = match std::fs::read(path) {
            Ok(bytes) => match serde_json::from_slice::<Saved>(&bytes) {
                Ok(saved) if saved.version == VERSION && saved.queue.len() <= SLOTS => {
                    journal.saved = saved;
                    None
                }
                Ok(saved) => Some(format!(
                    "unexpected layout (version {}, {} entries)",
                    saved.version,
                    saved.queue.len()
                )),
                Err(e) => Some(e.to_string()),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => Some(e.to_string()),
        };
        let problem = problem.map(|reason| {
            let aside = path.with_extension("json.corrupt");
            let moved = std::fs::rename(path, &aside);
            format!(
                "{}: {reason}; {}",
                path.display(),
                match moved {
                    Ok(()) => format!("moved to {} and starting empty", aside.display()),
                    Err(e) => format!("starting empty (cannot move it aside: {e})"),
                }
            )
        });
        (journal, problem)
    }

    /// Queues an event standing for `count` events (normally 1).
    pub fn push(&mut self, event: Value, count: u64) {
        if self.saved.queue.len() >= SLOTS
            && let Some(next) = self.saved.queue.back_mut()
        {
            next.count = next.count.saturating_add(count);
            next.last = event;
        } else {
            let sequence = self.saved.next_sequence;
            self.saved.next_sequence += 1;
            self.saved.queue.push_back(Pending {
                sequence,
                count,
                first: (count == 1).then(|| event.clone()),
                last: event,
                queued_at_ms: now_ms(),
            });
        }
        self.dirty = true;
    }

    /// The invocation to deliver now.
    pub fn head(&self) -> Option<&Pending> {
        self.saved.queue.front()
    }

    /// The invocation to deliver now, if the queue is saved as it is: nothing is dispatched
    /// before it is on disk.
    pub fn dispatchable(&self) -> Option<&Pending> {
        if self.dirty {
            return None;
        }
        self.head()
    }

    /// Drops the head once the function has answered it.
    pub fn pop(&mut self) {
        if self.saved.queue.pop_front().is_some() {
            self.dirty = true;
        }
    }

    /// The source's state, as last set.
    pub fn memo(&self) -> Option<&Value> {
        self.saved.memo.as_ref()
    }

    /// Keeps the source's state (saved with the queue).
    pub fn set_memo(&mut self, memo: Value) {
        if self.saved.memo.as_ref() != Some(&memo) {
            self.saved.memo = Some(memo);
            self.dirty = true;
        }
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.saved.queue.is_empty()
    }

    /// The file and its new contents when the queue changed since it was last saved: write
    /// them with [`write_atomic`] and call [`Journal::saved`].
    pub fn unsaved(&self) -> Option<(PathBuf, Vec<u8>)> {
        if !self.dirty {
            return None;
        }
        // JSON values with string keys: encoding cannot fail.
        let bytes = serde_json::to_vec(&self.saved).ok()?;
        Some((self.path.clone(), bytes))
    }

    /// Marks the contents from [`Journal::unsaved`] as written.
    pub fn saved(&mut self) {
        self.dirty = false;
    }

    /// Writes the queue if it changed since the last save (blocking: a write, an fsync and
    /// a rename).
    pub fn save(&mut self) -> Result<(), StoreError> {
        if let Some((path, bytes)) = self.unsaved() {
            write_atomic(&path, &bytes, 0o600)?;
            self.saved();
        }
        Ok(())
    }

    /// The file of the queue.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_burst_coalesces_into_the_second_slot_and_counts_add_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.json");
        let (mut journal, problem) = Journal::open(&path);
        assert_eq!(problem, None);
        assert!(journal.is_empty());
        for n in 1..=1000 {
            journal.push(json!({ "n": n }), 1);
        }
        journal.push(json!({ "n": 1001 }), 5);
        let head = journal.head().unwrap().clone();
        assert_eq!((head.sequence, head.count), (1, 1));
        journal.pop();
        let next = journal.head().unwrap().clone();
        assert_eq!(next.sequence, 2);
        assert_eq!(next.count, 999 + 5);
        assert_eq!(
            (next.first.clone(), next.last["n"].clone()),
            (Some(json!({ "n": 2 })), json!(1001))
        );
        journal.pop();
        assert!(journal.is_empty());
        // An event standing for edges nobody saw: the first of them is not known.
        journal.push(json!({ "n": 2000 }), 7);
        assert_eq!(journal.head().unwrap().first, None);
        journal.pop();
        journal.push(json!({ "n": 1002 }), 1);
        assert_eq!(journal.head().unwrap().sequence, 4);
    }

    #[test]
    fn only_a_saved_queue_is_dispatched() {
        let dir = tempfile::tempdir().unwrap();
        // The queue's directory is a file: every save fails (as on a full disk).
        let blocked = dir.path().join("f");
        std::fs::write(&blocked, b"").unwrap();
        let (mut journal, _unreadable) = Journal::open(&blocked.join("t.json"));
        journal.push(json!({"n": 1}), 1);
        assert!(journal.save().is_err());
        assert_eq!(journal.head().map(|p| p.sequence), Some(1));
        assert!(
            journal.dispatchable().is_none(),
            "dispatched before it is on disk"
        );
        // Events keep being counted meanwhile.
        journal.push(json!({"n": 2}), 1);
        journal.push(json!({"n": 3}), 1);
        assert!(journal.save().is_err());
        assert!(journal.dispatchable().is_none());
        // The disk works again: saved, then dispatched.
        std::fs::remove_file(&blocked).unwrap();
        std::fs::create_dir(&blocked).unwrap();
        journal.save().unwrap();
        assert_eq!(journal.dispatchable().map(|p| p.sequence), Some(1));
        let (reopened, _) = Journal::open(&blocked.join("t.json"));
        let counts: Vec<u64> = reopened.saved.queue.iter().map(|p| p.count).collect();
        assert_eq!(counts, [1, 2]);
    }

    #[test]
    fn the_queue_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.json");
        let (mut journal, _) = Journal::open(&path);
        journal.push(json!("a"), 1);
        journal.push(json!("b"), 1);
        journal.push(json!("c"), 1);
        journal.save().unwrap();
        let (mut reopened, problem) = Journal::open(&path);
        assert_eq!(problem, None);
        assert_eq!(reopened.head().unwrap().last, json!("a"));
        reopened.pop();
        let next = reopened.head().unwrap();
        assert_eq!((next.count, next.last.clone()), (2, json!("c")));
        reopened.pop();
        reopened.push(json!("d"), 1);
        assert_eq!(reopened.head().unwrap().sequence, 3, "numbering continues");
        reopened.set_memo(json!({"beyond": true}));
        reopened.save().unwrap();
        let (again, _) = Journal::open(&path);
        assert_eq!(again.memo(), Some(&json!({"beyond": true})));
    }

    #[test]
    fn a_corrupt_file_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.json");
        std::fs::write(&path, b"{not json").unwrap();
        let (journal, problem) = Journal::open(&path);
        assert!(journal.is_empty());
        let problem = problem.unwrap();
        assert!(problem.contains("moved to"), "{problem}");
        assert!(dir.path().join("t.json.corrupt").exists());
        assert!(!path.exists());
    }
}
