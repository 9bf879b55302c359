//! JetStream KV without the client's bucket-creation API.
//!
//! async-nats 0.52's `create_key_value` / `update_key_value` fail against nats-server 2.9 and
//! 2.10 (they read account fields the server sends only from 2.11). [`Bucket::open_or_create`]
//! creates the `KV_<bucket>` stream itself with the KV conventions (subjects `$KV.<bucket>.>`,
//! `max_messages_per_subject` = history, rollup allowed, delete denied, direct get, discard
//! new, 2-minute duplicate window) and then opens it with `get_key_value`.
//!
//! Writes are published here directly (`$KV.<bucket>.<key>`, `KV-Operation: DEL` for deletes),
//! so every failure maps to one typed [`KvError`]:
//! - [`KvError::Conflict`]: `create` of an existing key, `update`/`delete_if` on a stale
//!   revision (JetStream error 10071).
//! - [`KvError::NoQuorum`]: no JetStream server answered for the bucket ("no responders", or
//!   "cluster not available"): nothing was written. A stream without a leader answers so at
//!   once, also for the second or two while a new leader is elected (a board left, died or
//!   restarted): requests are sent again until the bucket's timeout before this is returned.
//! - [`KvError::Timeout`]: no answer in time; the write may or may not have been stored.
//!   A board cut off from the majority gets this for the first seconds of a partition (until
//!   its routes are found stale), `NoQuorum` after — unless it holds a replica of the bucket,
//!   in which case it keeps getting `Timeout`. A write that timed out can still be applied
//!   after the partition heals (seen on 2.9.10 when the cut-off board led the stream).
//!
//! Compare-and-set is enforced per [`CasMode`]: by default with the bucket's last revision
//! (`Nats-Expected-Last-Sequence`), because 2.9.10 checks the per-key revision
//! (`Nats-Expected-Last-Subject-Sequence`) on a clustered stream only before proposing, and
//! two racing updates from one revision both won in 17–29 of 50 rounds in the tests.
//!
//! Reads (`get`, `entry`) use direct get, which any replica answers — possibly one a little
//! behind (right after a partition heals, for a moment): compare-and-set with the revision
//! read is what makes a decision safe; [`Bucket::entry_from_leader`] reads from the leader.
//! Watches ([`Bucket::watch_all`], [`follow`]) deliver the current values, a
//! [`Change::Current`] marker, then every change; see `watch.rs` for what they survive.

mod error;
mod watch;

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishErrorKind, kv, stream};
use bytes::Bytes;

use crate::jserr::{self, Cause};

pub use error::KvError;
pub use watch::follow;

use error::{classify, nats};

/// How long a KV request waits for an answer by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// How a bucket is made.
#[derive(Clone, Debug)]
pub struct BucketConfig {
    /// The bucket's name.
    pub name: String,
    /// Values kept per key (1 = the latest only).
    pub history: i64,
    /// Replicas (1, 2 or 3; more than the JetStream boards is refused by the server).
    pub replicas: usize,
    /// Largest value in bytes (-1: no limit but the server's `max_payload`).
    pub max_value_size: i32,
    /// Largest bucket in bytes (-1: no limit).
    pub max_bytes: i64,
    /// How long a value is kept (zero: for ever). Expiry leaves no delete marker: watchers
    /// are not told.
    pub max_age: Duration,
}

impl BucketConfig {
    /// A bucket with one value per key, no size limits and `replicas` replicas.
    pub fn new(name: &str, replicas: usize) -> BucketConfig {
        BucketConfig {
            name: name.to_owned(),
            history: 1,
            replicas,
            max_value_size: -1,
            max_bytes: -1,
            max_age: Duration::ZERO,
        }
    }

    /// The stream configuration of the KV conventions.
    pub fn stream_config(&self) -> stream::Config {
        stream::Config {
            name: format!("KV_{}", self.name),
            subjects: vec![format!("$KV.{}.>", self.name)],
            max_messages_per_subject: self.history.max(1),
            max_bytes: self.max_bytes,
            max_age: self.max_age,
            max_message_size: self.max_value_size,
            storage: stream::StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            deny_purge: false,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            duplicate_window: Duration::from_secs(120),
            num_replicas: self.replicas.max(1),
            ..Default::default()
        }
    }
}

/// A value and its revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The value.
    pub value: Bytes,
    /// Its revision (the stream sequence of the write).
    pub revision: u64,
}

/// A change seen by [`Bucket::watch_all`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A key has a (new) value.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Bytes,
        /// Its revision.
        revision: u64,
    },
    /// A key was deleted (or purged).
    Delete {
        /// The key.
        key: String,
        /// The revision of the delete marker.
        revision: u64,
    },
    /// Every value that existed when the watch started has been delivered; what follows are
    /// new changes. Sent once.
    Current,
}

impl Change {
    /// The revision of a put or delete.
    pub fn revision(&self) -> Option<u64> {
        match self {
            Change::Put { revision, .. } | Change::Delete { revision, .. } => Some(*revision),
            Change::Current => None,
        }
    }
}

/// How a compare-and-set write (`update`, `delete_if`, `create` over a deleted key) is
/// enforced by the server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CasMode {
    /// `Nats-Expected-Last-Subject-Sequence` = the key's revision. nats-server 2.10+ checks it
    /// when the write is applied. **2.9 checks it only on the stream leader before proposing**
    /// (`processJetStreamMsg` skips the check for clustered streams when the expected revision
    /// is not 0), so on a clustered 2.9 stream two racing updates from the same revision can
    /// both succeed — seen in the tests. Use only when every JetStream board runs 2.10+.
    PerKey,
    /// `Nats-Expected-Last-Sequence` = the bucket's last revision, read from the stream leader
    /// before the key's revision; 2.9 and 2.10 both check it when the write is applied, on
    /// every replica alike. A write to another key in between makes the server refuse the
    /// write; it is then retried (not reported as a conflict) while the key's revision is
    /// still the expected one. Costs two reads from the leader per write. The default.
    #[default]
    BucketWide,
}

impl CasMode {
    /// The mode that is safe for a cluster whose JetStream boards run `versions`.
    pub fn for_versions(versions: &[crate::engine::ServerVersion]) -> CasMode {
        if !versions.is_empty() && versions.iter().all(|v| (v.major, v.minor) >= (2, 10)) {
            CasMode::PerKey
        } else {
            CasMode::BucketWide
        }
    }
}

/// What a write expects.
#[derive(Clone, Copy, Debug)]
enum Expect {
    Nothing,
    KeyRevision(u64),
    BucketRevision(u64),
}

/// A KV bucket.
#[derive(Clone, Debug)]
pub struct Bucket {
    js: jetstream::Context,
    store: kv::Store,
    name: String,
    timeout: Duration,
    cas: CasMode,
}

/// Checks a key or bucket name the way KV does.
pub fn validate_name(what: &'static str, name: &str) -> Result<(), KvError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && !name.ends_with('.')
        && !name.contains("..")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'=' | b'/' | b'.'))
        && (what == "key" || !name.contains(['.', '/', '=']));
    if ok {
        Ok(())
    } else {
        Err(KvError::InvalidName {
            what,
            name: name.chars().take(80).collect(),
        })
    }
}

impl Bucket {
    /// Opens the bucket, creating its stream first when it does not exist. An existing
    /// bucket's configuration is left as it is (see [`Bucket::ensure_replicas`]).
    pub async fn open_or_create(
        js: &jetstream::Context,
        config: &BucketConfig,
    ) -> Result<Bucket, KvError> {
        validate_name("bucket", &config.name)?;
        let bucket = config.name.clone();
        match js.get_stream(format!("KV_{bucket}")).await {
            Ok(_) => {}
            Err(e) if jserr::cause(&e) == Cause::Code(jserr::STREAM_NOT_FOUND) => {
                create_stream(js, config.stream_config())
                    .await
                    .map_err(|e| classify(&bucket, "creating the bucket", e))?;
            }
            Err(e) => return Err(classify(&bucket, "looking up the bucket", e)),
        }
        Bucket::open(js, &bucket).await
    }

    /// Opens an existing bucket.
    pub async fn open(js: &jetstream::Context, bucket: &str) -> Result<Bucket, KvError> {
        validate_name("bucket", bucket)?;
        let store = js.get_key_value(bucket).await.map_err(|e| {
            if jserr::cause(&e) == Cause::Code(jserr::STREAM_NOT_FOUND) {
                KvError::NoBucket {
                    bucket: bucket.to_owned(),
                }
            } else {
                classify(bucket, "opening the bucket", e)
            }
        })?;
        Ok(Bucket {
            js: js.clone(),
            store,
            name: bucket.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            cas: CasMode::default(),
        })
    }

    /// The same bucket with another request timeout (default [`DEFAULT_TIMEOUT`]): how long a
    /// write waits for the cluster before [`KvError::Timeout`].
    pub fn with_timeout(mut self, timeout: Duration) -> Bucket {
        self.js.set_timeout(timeout);
        self.timeout = timeout;
        self
    }

    /// The same bucket with another compare-and-set mode (default [`CasMode::BucketWide`]).
    pub fn with_cas(mut self, cas: CasMode) -> Bucket {
        self.cas = cas;
        self
    }

    /// The bucket's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The underlying stream's name (`KV_<bucket>`).
    pub fn stream_name(&self) -> String {
        format!("KV_{}", self.name)
    }

    /// The latest value of `key`, `None` when absent or deleted.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, KvError> {
        Ok(self.entry(key).await?.map(|e| e.value))
    }

    /// The latest value of `key` with its revision.
    pub async fn entry(&self, key: &str) -> Result<Option<Entry>, KvError> {
        validate_name("key", key)?;
        let entry = self.store.entry(key).await.map_err(|e| {
            if e.kind() == kv::EntryErrorKind::TimedOut {
                KvError::Timeout {
                    bucket: self.name.clone(),
                    waited: self.timeout,
                }
            } else {
                nats(&self.name, "reading", e)
            }
        })?;
        Ok(entry.and_then(|e| match e.operation {
            kv::Operation::Put => Some(Entry {
                value: e.value,
                revision: e.revision,
            }),
            kv::Operation::Delete | kv::Operation::Purge => None,
        }))
    }

    /// The latest value of `key` as the stream leader has it (not a direct get, which any
    /// replica answers — after a partition heals, a replica still catching up answers with
    /// old values for a moment). One request to the leader.
    pub async fn entry_from_leader(&self, key: &str) -> Result<Option<Entry>, KvError> {
        validate_name("key", key)?;
        self.while_electing(|| self.leader_entry(key)).await
    }

    async fn leader_entry(&self, key: &str) -> Result<Option<Entry>, KvError> {
        let stream = self
            .js
            .get_stream_no_info(self.stream_name())
            .await
            .map_err(|e| classify(&self.name, "reading", e))?;
        match stream
            .get_last_raw_message_by_subject(&format!("$KV.{}.{key}", self.name))
            .await
        {
            Ok(message) => {
                let deleted = is_delete_marker(&message.headers);
                Ok((!deleted).then(|| Entry {
                    value: message.payload,
                    revision: message.sequence,
                }))
            }
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(classify(&self.name, "reading", e)),
        }
    }

    /// Writes `key` only if it does not exist (or was deleted); `Conflict` otherwise.
    pub async fn create(&self, key: &str, value: Bytes) -> Result<u64, KvError> {
        // "No revision yet" (0) is checked when applied on 2.9 too.
        match self
            .publish(key, value.clone(), Expect::KeyRevision(0), false)
            .await
        {
            Err(KvError::Conflict { .. }) => {}
            other => return other,
        }
        // A deleted key can be created again, on top of its delete marker.
        let latest = self
            .store
            .entry(key)
            .await
            .map_err(|e| nats(&self.name, "reading", e))?;
        match latest {
            Some(e) if e.operation != kv::Operation::Put => self
                .cas_write(key, value, e.revision, false)
                .await
                .map_err(|err| match err {
                    KvError::Conflict { bucket, key, .. } => KvError::Conflict {
                        bucket,
                        key,
                        expected: None,
                    },
                    other => other,
                }),
            _ => Err(KvError::Conflict {
                bucket: self.name.clone(),
                key: key.to_owned(),
                expected: None,
            }),
        }
    }

    /// Writes `key` only if its latest revision is `revision`; `Conflict` otherwise.
    pub async fn update(&self, key: &str, value: Bytes, revision: u64) -> Result<u64, KvError> {
        self.cas_write(key, value, revision, false).await
    }

    /// Writes `key` whatever it holds.
    pub async fn put(&self, key: &str, value: Bytes) -> Result<u64, KvError> {
        self.publish(key, value, Expect::Nothing, false).await
    }

    /// Deletes `key` (a delete marker; watchers see it).
    pub async fn delete(&self, key: &str) -> Result<(), KvError> {
        self.publish(key, Bytes::new(), Expect::Nothing, true)
            .await
            .map(|_| ())
    }

    /// Deletes `key` only if its latest revision is `revision`; returns the revision of the
    /// delete marker (what a watch sees).
    pub async fn delete_if(&self, key: &str, revision: u64) -> Result<u64, KvError> {
        self.cas_write(key, Bytes::new(), revision, true).await
    }

    /// A compare-and-set write in this bucket's [`CasMode`].
    async fn cas_write(
        &self,
        key: &str,
        value: Bytes,
        revision: u64,
        delete: bool,
    ) -> Result<u64, KvError> {
        if revision == 0 || self.cas == CasMode::PerKey {
            return self
                .publish(key, value, Expect::KeyRevision(revision), delete)
                .await;
        }
        validate_name("key", key)?;
        let conflict = || KvError::Conflict {
            bucket: self.name.clone(),
            key: key.to_owned(),
            expected: Some(revision),
        };
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            // The bucket's last revision first, then the key's, both from the stream leader:
            // if the write below applies at that bucket revision, nothing changed the key
            // after it was read.
            let (last, current) = self.while_electing(|| self.revisions(key)).await?;
            if current != revision {
                return Err(conflict());
            }
            match self
                .publish(key, value.clone(), Expect::BucketRevision(last), delete)
                .await
            {
                Err(KvError::Conflict { .. }) if tokio::time::Instant::now() < deadline => {
                    // Another key was written meanwhile: read again.
                }
                Err(KvError::Conflict { .. }) => {
                    return Err(KvError::Timeout {
                        bucket: self.name.clone(),
                        waited: self.timeout,
                    });
                }
                other => return other,
            }
        }
    }

    /// The bucket's last revision and `key`'s, both from the stream leader.
    async fn revisions(&self, key: &str) -> Result<(u64, u64), KvError> {
        let stream = self
            .js
            .get_stream(self.stream_name())
            .await
            .map_err(|e| classify(&self.name, "reading the bucket's state", e))?;
        let last = stream.cached_info().state.last_sequence;
        let current = match stream
            .get_last_raw_message_by_subject(&format!("$KV.{}.{key}", self.name))
            .await
        {
            Ok(message) => message.sequence,
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => 0,
            Err(e) => return Err(classify(&self.name, "reading", e)),
        };
        Ok((last, current))
    }

    /// Runs `request` again while it fails with [`KvError::NoQuorum`], until the bucket's
    /// timeout has passed. Such a failure came at once and wrote nothing (nobody answered for
    /// the stream): it is what a stream says while it elects a leader, which takes a second or
    /// two after its leader's board left, died or restarted. Without a quorum it lasts, and the
    /// caller gets it after the timeout, as it gets [`KvError::Timeout`].
    async fn while_electing<T, Fut>(&self, mut request: impl FnMut() -> Fut) -> Result<T, KvError>
    where
        Fut: std::future::Future<Output = Result<T, KvError>>,
    {
        let started = tokio::time::Instant::now();
        let deadline = started + self.timeout;
        let mut pause = Duration::from_millis(50);
        let mut attempts = 0;
        loop {
            attempts += 1;
            match request().await {
                Err(KvError::NoQuorum { .. }) if tokio::time::Instant::now() + pause < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                other => {
                    if attempts > 1 {
                        tracing::debug!(bucket = %self.name, attempts, waited = ?started.elapsed(), "no JetStream leader answered at first");
                    }
                    return other;
                }
            }
        }
    }

    async fn publish(
        &self,
        key: &str,
        value: Bytes,
        expect: Expect,
        delete: bool,
    ) -> Result<u64, KvError> {
        validate_name("key", key)?;
        self.while_electing(|| self.publish_once(key, value.clone(), expect, delete))
            .await
    }

    async fn publish_once(
        &self,
        key: &str,
        value: Bytes,
        expect: Expect,
        delete: bool,
    ) -> Result<u64, KvError> {
        let mut headers = HeaderMap::new();
        let expected = match expect {
            Expect::Nothing => None,
            Expect::KeyRevision(revision) => {
                headers.insert(
                    async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                    revision.to_string().as_str(),
                );
                Some(revision)
            }
            Expect::BucketRevision(revision) => {
                headers.insert(
                    async_nats::header::NATS_EXPECTED_LAST_SEQUENCE,
                    revision.to_string().as_str(),
                );
                Some(revision)
            }
        };
        if delete {
            headers.insert("KV-Operation", "DEL");
        }
        let subject = format!("$KV.{}.{key}", self.name);
        let ack = self
            .js
            .publish_with_headers(subject, headers, value)
            .await
            .map_err(|e| self.classify_publish(key, expected, e))?;
        let ack = tokio::time::timeout(self.timeout + Duration::from_millis(100), ack)
            .await
            .map_err(|_| KvError::Timeout {
                bucket: self.name.clone(),
                waited: self.timeout,
            })?
            .map_err(|e| self.classify_publish(key, expected, e))?;
        Ok(ack.sequence)
    }

    fn classify_publish(
        &self,
        key: &str,
        expected: Option<u64>,
        e: jetstream::context::PublishError,
    ) -> KvError {
        let bucket = self.name.clone();
        match e.kind() {
            PublishErrorKind::WrongLastSequence => KvError::Conflict {
                bucket,
                key: key.to_owned(),
                expected: expected.filter(|r| *r != 0),
            },
            PublishErrorKind::StreamNotFound => KvError::NoQuorum { bucket },
            PublishErrorKind::TimedOut => KvError::Timeout {
                bucket,
                waited: self.timeout,
            },
            _ => classify(&bucket, "writing", e),
        }
    }

    /// Sets the bucket's replicas to `replicas` (in place: the stream's configuration is
    /// updated, JetStream copies the data to the new peers). Returns the previous count.
    pub async fn ensure_replicas(&self, replicas: usize) -> Result<usize, KvError> {
        crate::layout::ensure_stream_replicas(&self.js, &self.stream_name(), replicas)
            .await
            .map_err(|e| KvError::Nats {
                bucket: self.name.clone(),
                op: "changing replicas",
                source: Box::new(e),
            })
    }
}

/// Creates a stream, retrying for up to [`DEFAULT_TIMEOUT`] while JetStream answers "no
/// suitable peers" (10005): right after a cluster forms, the meta leader can count a peer as
/// offline for a moment (2.10.27 refused R3 buckets that way in the tests). Another board
/// creating the same stream at the same moment is not an error.
pub(crate) async fn create_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<(), jetstream::context::CreateStreamError> {
    let deadline = tokio::time::Instant::now() + DEFAULT_TIMEOUT;
    loop {
        let name = config.name.clone();
        match js.create_stream(config.clone()).await {
            Ok(_) => return Ok(()),
            Err(e) => {
                if js.get_stream(&name).await.is_ok() {
                    return Ok(());
                }
                let cause = jserr::cause(&e);
                let retry = matches!(
                    cause,
                    Cause::Code(jserr::NO_SUITABLE_PEERS | jserr::INSUFFICIENT_RESOURCES)
                ) || jserr::is_unavailable(cause);
                if !retry || tokio::time::Instant::now() > deadline {
                    return Err(e);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether a bucket's message is a delete (or purge) marker rather than a value.
pub(crate) fn is_delete_marker(headers: &async_nats::HeaderMap) -> bool {
    headers
        .get("KV-Operation")
        .is_some_and(|v| v.as_str() == "DEL" || v.as_str() == "PURGE")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_conventions() {
        let config = BucketConfig::new("boards", 3).stream_config();
        assert_eq!(config.name, "KV_boards");
        assert_eq!(config.subjects, vec!["$KV.boards.>".to_owned()]);
        assert_eq!(config.max_messages_per_subject, 1);
        assert!(config.allow_rollup && config.deny_delete && config.allow_direct);
        assert_eq!(config.discard, stream::DiscardPolicy::New);
        assert_eq!(config.num_replicas, 3);
        assert_eq!(config.duplicate_window, Duration::from_secs(120));
    }

    #[test]
    fn names() {
        for key in ["placer", "fn.default.hello", "a/b=c", "A-1_2"] {
            validate_name("key", key).unwrap();
        }
        for key in ["", ".a", "a.", "a..b", "a b", "a*", "a>", "ä"] {
            assert!(validate_name("key", key).is_err(), "{key:?}");
        }
        validate_name("bucket", "boards").unwrap();
        assert!(validate_name("bucket", "a.b").is_err());
    }

    #[test]
    fn conflict_messages_say_what_happened() {
        let create = KvError::Conflict {
            bucket: "b".into(),
            key: "k".into(),
            expected: None,
        };
        assert_eq!(
            create.to_string(),
            "b/k: another write came first (the key already exists)"
        );
        let update = KvError::Conflict {
            bucket: "b".into(),
            key: "k".into(),
            expected: Some(7),
        };
        assert!(
            update
                .to_string()
                .contains("revision 7 is no longer the latest")
        );
        assert!(update.is_conflict() && !update.is_unavailable());
        assert!(KvError::NoQuorum { bucket: "b".into() }.is_unavailable());
    }
}
