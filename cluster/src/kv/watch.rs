//! Watching a bucket: its current values, then its changes; listing keys; following a bucket
//! across leader changes and partitions.

use std::time::Duration;

use async_nats::jetstream::kv;
use futures::{Stream, StreamExt as _};

use super::error::{classify, nats};
use super::{Bucket, Change, KvError};
use crate::jserr::{self, Cause};

impl Bucket {
    /// Every key with a value (not deleted).
    ///
    /// Read with a watch of the latest values, checked against the number of keys the stream
    /// leader counts, and read again when short: on 2.10.27, for a moment after a replica
    /// change, a new consumer can be told that fewer values are pending than there are (the
    /// client's own `keys()` then returns a partial list, even an empty one — seen in tests).
    pub async fn keys(&self) -> Result<Vec<String>, KvError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let mut watch = self.watch_all().await?.boxed();
            let mut keys = std::collections::BTreeMap::new();
            let attempt = tokio::time::timeout(Duration::from_secs(1), async {
                while let Some(change) = watch.next().await {
                    match change? {
                        Change::Put { key, .. } => {
                            keys.insert(key, true);
                        }
                        Change::Delete { key, .. } => {
                            keys.insert(key, false);
                        }
                        Change::Current => return Ok(true),
                    }
                }
                Ok::<_, KvError>(false)
            })
            .await;
            match attempt {
                Ok(Ok(true)) => {
                    return Ok(keys
                        .into_iter()
                        .filter_map(|(k, live)| live.then_some(k))
                        .collect());
                }
                Ok(Err(KvError::Incomplete { .. }) | Ok(false)) | Err(_) => {}
                Ok(Err(e)) => return Err(e),
            }
            if tokio::time::Instant::now() > deadline {
                return Err(KvError::Timeout {
                    bucket: self.name.clone(),
                    waited: self.timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The keys with a value that match `filter` (KV key tokens, `*` for one token, `>` for
    /// the rest: `openfaas-fn.*`), as the **stream leader** has them: the subjects it counts,
    /// each read from the leader to skip delete markers. Unlike [`Bucket::keys`] (a watch,
    /// which a replica that is behind can answer), a key written before this call is listed.
    /// One request per matching key: for small listings that decide something.
    pub async fn keys_from_leader(&self, filter: &str) -> Result<Vec<String>, KvError> {
        use futures::TryStreamExt as _;
        let stream = self
            .js
            .get_stream_no_info(self.stream_name())
            .await
            .map_err(|e| classify(&self.name, "listing keys", e))?;
        let prefix = format!("$KV.{}.", self.name);
        let mut subjects = stream
            .info_with_subjects(format!("{prefix}{filter}"))
            .await
            .map_err(|e| classify(&self.name, "listing keys", e))?;
        let mut keys = Vec::new();
        while let Some((subject, _)) = subjects
            .try_next()
            .await
            .map_err(|e| classify(&self.name, "listing keys", e))?
        {
            let Some(key) = subject.strip_prefix(&prefix) else {
                continue;
            };
            if self.entry_from_leader(key).await?.is_some() {
                keys.push(key.to_owned());
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// The current values, then every change, as a stream: puts and deletes of every key,
    /// starting with each key's latest value, and [`Change::Current`] once those have all been
    /// delivered — checked against the number of keys the stream leader counted when the
    /// watch started; a short snapshot (see [`Bucket::keys`]) yields [`KvError::Incomplete`]
    /// instead of its values, and the watch should be started again. The stream ends (or
    /// yields an error) when the watch breaks; [`follow`] handles all of this.
    pub async fn watch_all(
        &self,
    ) -> Result<impl Stream<Item = Result<Change, KvError>> + Send + use<>, KvError> {
        let expected = self.key_count().await?;
        let watch = self
            .store
            .watch_with_history(">")
            .await
            .map_err(|e| classify(&self.name, "watching", e))?;
        Ok(changes(self.name.clone(), watch, Some(expected)))
    }

    /// Every change from `revision` on (inclusive), for resuming a watch; starts with
    /// [`Change::Current`].
    pub async fn watch_from(
        &self,
        revision: u64,
    ) -> Result<impl Stream<Item = Result<Change, KvError>> + Send + use<>, KvError> {
        let watch = self
            .store
            .watch_all_from_revision(revision.max(1))
            .await
            .map_err(|e| classify(&self.name, "watching", e))?;
        Ok(changes(self.name.clone(), watch, None))
    }

    /// The changes from `revision` on (inclusive), at most `limit` revisions, read message by
    /// message from the stream leader, without a consumer: what [`follow`] delivers while it
    /// cannot create a watch. Revisions no longer in the stream (a key's older values) are
    /// skipped, as a watch skips them.
    pub async fn changes_from_leader(
        &self,
        revision: u64,
        limit: u64,
    ) -> Result<Vec<Change>, KvError> {
        let stream = self
            .js
            .get_stream_no_info(self.stream_name())
            .await
            .map_err(|e| classify(&self.name, "reading", e))?;
        let last = self.last_revision().await?;
        let prefix = format!("$KV.{}.", self.name);
        let mut changes = Vec::new();
        for sequence in revision..=last.min(revision.saturating_add(limit.saturating_sub(1))) {
            let message = match stream.get_raw_message(sequence).await {
                Ok(message) => message,
                Err(e) if jserr::cause(&e) == Cause::Code(jserr::NO_MESSAGE_FOUND) => continue,
                Err(e) => return Err(classify(&self.name, "reading", e)),
            };
            let Some(key) = message.subject.strip_prefix(prefix.as_str()) else {
                continue;
            };
            changes.push(if super::is_delete_marker(&message.headers) {
                Change::Delete {
                    key: key.to_owned(),
                    revision: sequence,
                }
            } else {
                Change::Put {
                    key: key.to_owned(),
                    value: message.payload,
                    revision: sequence,
                }
            });
        }
        Ok(changes)
    }

    /// The bucket's latest revision (the stream's last sequence), from the stream leader.
    pub async fn last_revision(&self) -> Result<u64, KvError> {
        let stream = self
            .js
            .get_stream(self.stream_name())
            .await
            .map_err(|e| classify(&self.name, "reading the bucket's state", e))?;
        Ok(stream.cached_info().state.last_sequence)
    }

    /// Keys with a value or a delete marker, as the stream leader counts them.
    async fn key_count(&self) -> Result<u64, KvError> {
        let stream = self
            .js
            .get_stream(self.stream_name())
            .await
            .map_err(|e| classify(&self.name, "reading the bucket's state", e))?;
        Ok(stream.cached_info().state.subjects_count)
    }
}

/// How long `follow` waits for a watch's consumer to be created before asking again.
const WATCH_CREATE_TIMEOUT: Duration = Duration::from_secs(3);

/// How often a silent watch asks the stream leader whether it missed something.
const STALL_CHECK: Duration = Duration::from_secs(2);

/// The most revisions read from the stream leader at once while a watch cannot be created.
const CATCH_UP_BATCH: u64 = 256;

/// Follows every change of `bucket` for as long as the returned receiver is kept: the current
/// values, [`Change::Current`] once, then every change. When the watch breaks (a leader change,
/// a partition), it is re-established from the revision after the last one delivered, with a
/// backoff (up to 2 s); a short first snapshot ([`KvError::Incomplete`]) is read again from
/// the start; a watch that stays silent while the stream leader has newer revisions (two
/// checks 2 s apart) is re-established too; while a watch cannot be created, the changes are
/// read from the stream leader message by message between attempts. The receiver sees every
/// change in order, a value possibly twice after such a re-read (apply changes idempotently:
/// by key, or by revision).
pub fn follow(bucket: Bucket) -> tokio::sync::mpsc::Receiver<Change> {
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(async move {
        // A new stream leader means the watch's consumer (on the old leader) may be gone:
        // re-establish at once instead of waiting for the client to miss its heartbeats.
        let mut elected = bucket
            .js
            .client()
            .subscribe(format!(
                "$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.{}",
                bucket.stream_name()
            ))
            .await
            .ok();
        let mut next: Option<u64> = None;
        let mut current_sent = false;
        let mut delay = Duration::from_millis(100);
        loop {
            // Consumer creation asked during a meta-leader election can go unanswered until
            // the client's own timeout (10 s in tests); ask again sooner.
            let create = async {
                match next {
                    None => bucket.watch_all().await.map(futures::StreamExt::boxed),
                    Some(revision) => bucket
                        .watch_from(revision)
                        .await
                        .map(futures::StreamExt::boxed),
                }
            };
            let watch = tokio::time::timeout(WATCH_CREATE_TIMEOUT, create)
                .await
                .unwrap_or_else(|_| {
                    Err(KvError::Timeout {
                        bucket: bucket.name.clone(),
                        waited: WATCH_CREATE_TIMEOUT,
                    })
                });
            match watch {
                Ok(mut changes) => {
                    // A watch whose consumer died with its stream leader can stay silent for
                    // a minute before the client notices (2.9.10, seen in tests): every few
                    // seconds of silence, ask the leader whether there is something newer.
                    let mut check = tokio::time::interval(STALL_CHECK);
                    check.reset();
                    let mut last_delivery = tokio::time::Instant::now();
                    let mut stalled = 0u8;
                    loop {
                        let item = tokio::select! {
                            item = changes.next() => item,
                            // The receiver is gone: stop now, not at the next change (a quiet
                            // bucket may have none for hours).
                            () = tx.closed() => return,
                            Some(_) = async {
                                match elected.as_mut() {
                                    Some(sub) => sub.next().await,
                                    None => std::future::pending().await,
                                }
                            } => {
                                tracing::debug!(bucket = bucket.name(), "new stream leader; re-establishing the watch");
                                break;
                            }
                            _ = check.tick() => {
                                let Some(expected) = next else { continue };
                                if last_delivery.elapsed() < STALL_CHECK {
                                    stalled = 0;
                                    continue;
                                }
                                // Bounded: while the stream has no leader the request goes
                                // unanswered until the client's timeout.
                                match tokio::time::timeout(STALL_CHECK / 2, bucket.last_revision()).await {
                                    Ok(Ok(last)) if last >= expected => {
                                        stalled += 1;
                                        if stalled >= 2 {
                                            tracing::debug!(bucket = bucket.name(), expected, "watch silent while the leader has newer revisions; resuming");
                                            break;
                                        }
                                    }
                                    Ok(Ok(_)) => stalled = 0,
                                    Ok(Err(_)) | Err(_) => {}
                                }
                                continue;
                            }
                        };
                        let Some(item) = item else { break };
                        match item {
                            Ok(Change::Current) if current_sent => {}
                            Ok(change) => {
                                delay = Duration::from_millis(100);
                                last_delivery = tokio::time::Instant::now();
                                stalled = 0;
                                if let Some(r) = change.revision() {
                                    next = Some(r + 1);
                                }
                                current_sent |= change == Change::Current;
                                if tx.send(change).await.is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                if matches!(e, KvError::Incomplete { .. }) {
                                    // Read every value again; the receiver sees some twice.
                                    next = None;
                                }
                                tracing::debug!(bucket = bucket.name(), error = %bramble_base::error_chain(&e), "watch broke; resuming");
                                break;
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(bucket = bucket.name(), error = %bramble_base::error_chain(&e), "cannot watch; retrying");
                    // On 2.9.10, after the stream leader's board dies, creating a consumer
                    // can go unanswered for over 15 s (seen in tests) while the new leader
                    // answers reads: meanwhile, read the changes from the leader.
                    if let Some(from) = next
                        && current_sent
                    {
                        let read = bucket.changes_from_leader(from, CATCH_UP_BATCH);
                        if let Ok(Ok(changes)) = tokio::time::timeout(STALL_CHECK, read).await {
                            if !changes.is_empty() {
                                tracing::debug!(
                                    bucket = bucket.name(),
                                    from,
                                    read = changes.len(),
                                    "read changes from the stream leader while the watch cannot be created"
                                );
                            }
                            for change in changes {
                                next = change.revision().map(|r| r + 1).or(next);
                                if tx.send(change).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }
            }
            if tx.is_closed() {
                return;
            }
            tracing::debug!(
                bucket = bucket.name(),
                ?next,
                ?delay,
                "re-establishing the watch"
            );
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    });
    rx
}

/// Turns a KV watch into [`Change`]s. `expected`: the number of keys (subjects) the snapshot
/// must hold before [`Change::Current`] (`None`: a resumed watch, current from the start).
/// The first snapshot's values are held back until it is known complete: a short one is
/// dropped whole ([`KvError::Incomplete`]), since what it holds may be older than the stream's
/// values (seen: a board's layout follower given the layout before the last join, right after
/// the streams grew to three replicas, dropped a JetStream board's route).
fn changes(
    bucket: String,
    watch: kv::Watch,
    expected: Option<u64>,
) -> impl Stream<Item = Result<Change, KvError>> + Send {
    let already_current = expected.is_none_or(|n| n == 0);
    let start: Vec<Result<Change, KvError>> = if already_current {
        vec![Ok(Change::Current)]
    } else {
        Vec::new()
    };
    let mut current_sent = already_current;
    let mut seen = std::collections::HashSet::new();
    let mut snapshot: Vec<Result<Change, KvError>> = Vec::new();
    let entries = watch.flat_map(move |item| {
        let mut out: Vec<Result<Change, KvError>> = Vec::with_capacity(2);
        match item {
            Ok(entry) => {
                let last = entry.delta == 0;
                if !current_sent {
                    seen.insert(entry.key.clone());
                }
                let change = match entry.operation {
                    kv::Operation::Put => Change::Put {
                        key: entry.key,
                        value: entry.value,
                        revision: entry.revision,
                    },
                    kv::Operation::Delete | kv::Operation::Purge => Change::Delete {
                        key: entry.key,
                        revision: entry.revision,
                    },
                };
                if current_sent {
                    out.push(Ok(change));
                } else {
                    snapshot.push(Ok(change));
                }
                if !current_sent && last {
                    current_sent = true;
                    let expected = expected.unwrap_or(0);
                    if seen.len() as u64 >= expected {
                        out.append(&mut snapshot);
                        out.push(Ok(Change::Current));
                    } else {
                        snapshot.clear();
                        out.push(Err(KvError::Incomplete {
                            bucket: bucket.clone(),
                            seen: seen.len() as u64,
                            expected,
                        }));
                    }
                    seen = std::collections::HashSet::new();
                }
            }
            Err(e) => out.push(Err(nats(&bucket, "watching", e))),
        }
        futures::stream::iter(out)
    });
    futures::stream::iter(start).chain(entries)
}
