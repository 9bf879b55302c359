//! Moving a standalone JetStream server's data into a cluster.
//!
//! nats-server does not carry a standalone server's streams into clustered mode: restarted with
//! a `cluster` block, it loads them from disk but they stay invisible ("stream not found"), and
//! upstream's advice is backup and restore (nats-io/nats-server#3267, #5467). A single server
//! cannot start clustered on its own either: its meta group expects at least 2 peers
//! (`bootstrapRaftNode` in server/raft.go raises the expected size to 2 when peers are not
//! known), so it never elects a leader alone. So the first growth of a one-board cluster goes
//! through [`migrate_standalone_to_clustered`]:
//!
//! 1. [`export`]: every stream's configuration; for KV buckets (`KV_*`) every key's latest
//!    value; for other streams (the `CALLS` work queue) every message with its headers, and the
//!    durable consumers' configurations.
//! 2. The snapshot is written to `<state_dir>/cluster/migration.json` (0600, fsynced) before
//!    anything is stopped.
//! 3. The standalone server stops; its `jetstream` directory is moved aside
//!    (`jetstream.standalone-<ms>`), so the clustered server starts empty.
//! 4. The server starts with the clustered configuration; once JetStream has a meta leader
//!    (which needs a second JetStream board), [`import`] recreates every stream with the
//!    cluster's replica count and writes the data back, skipping what is already there (a
//!    key that exists, a message whose id is present), so an interrupted import can simply be
//!    run again ([`finish_pending_migration`]).
//! 5. The counts are checked against the snapshot; then the snapshot and the old directory are
//!    removed.
//!
//! Consumer delivery state (which call was delivered how often) does not survive: calls that
//! were delivered but not acknowledged are delivered again (at-least-once, as after a crash).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, stream};
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use futures::TryStreamExt as _;
use serde::{Deserialize, Serialize};

use crate::engine::{EngineConfig, EngineError, NatsServer};
use crate::jserr::{self, Cause};
use crate::kv::{Bucket, KvError};

/// Header naming a migrated message's sequence in the old stream (for messages without a
/// `Nats-Msg-Id`), so a repeated import skips it.
const MIGRATED_FROM: &str = "Bramble-Migrated-From";

/// Everything JetStream held, in a form that can be written back.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Snapshot {
    /// The streams.
    pub streams: Vec<StreamData>,
}

/// One stream's configuration and data.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StreamData {
    /// Its configuration.
    pub config: stream::Config,
    /// Its data.
    pub data: Data,
}

/// A stream's data.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Data {
    /// A KV bucket: each key's latest value (deleted keys are not exported).
    Kv(Vec<KvPair>),
    /// Any other stream: its messages and durable consumers.
    Messages {
        /// Messages in sequence order.
        messages: Vec<Message>,
        /// Durable consumers' configurations.
        consumers: Vec<consumer::Config>,
    },
}

/// A key and its value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvPair {
    /// The key.
    pub key: String,
    /// The value, base64.
    #[serde(with = "b64")]
    pub value: Vec<u8>,
}

/// A stored message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Its sequence in the old stream.
    pub sequence: u64,
    /// Its subject.
    pub subject: String,
    /// Its headers.
    pub headers: Option<HeaderMap>,
    /// Its payload, base64.
    #[serde(with = "b64")]
    pub payload: Vec<u8>,
}

/// What an import did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Streams created.
    pub streams: usize,
    /// Keys written.
    pub keys_written: usize,
    /// Keys that existed already (kept as they were).
    pub keys_kept: usize,
    /// Messages written.
    pub messages_written: usize,
    /// Messages already present (from an earlier, interrupted import).
    pub messages_skipped: usize,
}

/// A migration step that failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// Reading or writing JetStream.
    #[error("{op}")]
    JetStream {
        /// What was being done.
        op: String,
        /// Why.
        #[source]
        source: async_nats::Error,
    },
    /// A KV operation.
    #[error("{op}")]
    Kv {
        /// What was being done.
        op: String,
        /// Why.
        #[source]
        source: KvError,
    },
    /// The engine (stopping, starting, readiness).
    #[error("the engine")]
    Engine(#[from] EngineError),
    /// Files of the migration.
    #[error("{action} {path:?}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// After the import the data does not match the snapshot.
    #[error("stream {stream}: {found} {what} after the import, the snapshot has {expected}")]
    Mismatch {
        /// The stream.
        stream: String,
        /// "keys" or "messages".
        what: &'static str,
        /// Found.
        found: u64,
        /// Expected at least.
        expected: u64,
    },
}

fn js_err<E>(op: String) -> impl FnOnce(E) -> MigrationError
where
    E: std::error::Error + Send + Sync + 'static,
{
    move |e| MigrationError::JetStream {
        op,
        source: Box::new(e),
    }
}

/// Reads every stream of the account.
pub async fn export(js: &jetstream::Context) -> Result<Snapshot, MigrationError> {
    let names: Vec<String> = js
        .stream_names()
        .try_collect()
        .await
        .map_err(js_err("listing streams".into()))?;
    let mut snapshot = Snapshot::default();
    for name in names {
        let mut stream = js
            .get_stream(&name)
            .await
            .map_err(js_err(format!("opening stream {name}")))?;
        let info = stream
            .info()
            .await
            .map_err(js_err(format!("reading stream {name}")))?
            .clone();
        let data = if let Some(bucket) = name.strip_prefix("KV_") {
            Data::Kv(export_kv(js, bucket).await?)
        } else {
            Data::Messages {
                messages: export_messages(&stream, &info.state).await?,
                consumers: export_consumers(&stream).await?,
            }
        };
        snapshot.streams.push(StreamData {
            config: info.config,
            data,
        });
    }
    Ok(snapshot)
}

async fn export_kv(js: &jetstream::Context, bucket: &str) -> Result<Vec<KvPair>, MigrationError> {
    let kv_err = |op: String| move |source| MigrationError::Kv { op, source };
    let bucket = Bucket::open(js, bucket)
        .await
        .map_err(kv_err(format!("opening bucket {bucket}")))?;
    let mut pairs = Vec::new();
    for key in bucket
        .keys()
        .await
        .map_err(kv_err(format!("listing bucket {}", bucket.name())))?
    {
        if let Some(value) = bucket
            .get(&key)
            .await
            .map_err(kv_err(format!("reading {}/{key}", bucket.name())))?
        {
            pairs.push(KvPair {
                key,
                value: value.to_vec(),
            });
        }
    }
    Ok(pairs)
}

async fn export_messages(
    stream: &stream::Stream,
    state: &stream::State,
) -> Result<Vec<Message>, MigrationError> {
    let mut messages = Vec::new();
    if state.messages == 0 {
        return Ok(messages);
    }
    for sequence in state.first_sequence..=state.last_sequence {
        match stream.get_raw_message(sequence).await {
            Ok(m) => messages.push(Message {
                sequence,
                subject: m.subject.to_string(),
                headers: (!m.headers.is_empty()).then_some(m.headers),
                payload: m.payload.to_vec(),
            }),
            Err(e) if jserr::cause(&e) == Cause::Code(jserr::NO_MESSAGE_FOUND) => {}
            Err(e) => {
                return Err(MigrationError::JetStream {
                    op: format!("reading message {sequence}"),
                    source: Box::new(e),
                });
            }
        }
    }
    Ok(messages)
}

async fn export_consumers(
    stream: &stream::Stream,
) -> Result<Vec<consumer::Config>, MigrationError> {
    let infos: Vec<consumer::Info> = stream
        .consumers()
        .try_collect()
        .await
        .map_err(js_err("listing consumers".into()))?;
    Ok(infos
        .into_iter()
        .filter(|i| i.config.durable_name.is_some())
        .map(|i| i.config)
        .collect())
}

/// Writes `snapshot` into the account, with `replicas` replicas per stream, skipping what is
/// there already.
pub async fn import(
    js: &jetstream::Context,
    snapshot: &Snapshot,
    replicas: usize,
) -> Result<ImportReport, MigrationError> {
    let mut report = ImportReport::default();
    for stream_data in &snapshot.streams {
        let mut config = stream_data.config.clone();
        config.num_replicas = replicas.max(1);
        let name = config.name.clone();
        let stream = match js.get_stream(&name).await {
            Ok(s) => s,
            Err(e) if jserr::cause(&e) == Cause::Code(jserr::STREAM_NOT_FOUND) => {
                report.streams += 1;
                js.create_stream(config)
                    .await
                    .map_err(js_err(format!("creating stream {name}")))?
            }
            Err(e) => return Err(js_err(format!("opening stream {name}"))(e)),
        };
        match &stream_data.data {
            Data::Kv(pairs) => {
                let bucket_name = name.trim_start_matches("KV_");
                let bucket =
                    Bucket::open(js, bucket_name)
                        .await
                        .map_err(|source| MigrationError::Kv {
                            op: format!("opening bucket {bucket_name}"),
                            source,
                        })?;
                for pair in pairs {
                    match bucket
                        .create(&pair.key, Bytes::from(pair.value.clone()))
                        .await
                    {
                        Ok(_) => report.keys_written += 1,
                        Err(KvError::Conflict { .. }) => report.keys_kept += 1,
                        Err(source) => {
                            return Err(MigrationError::Kv {
                                op: format!("writing {bucket_name}/{}", pair.key),
                                source,
                            });
                        }
                    }
                }
            }
            Data::Messages {
                messages,
                consumers,
            } => {
                let present = present_ids(&stream).await?;
                for message in messages {
                    let id = message_id(message);
                    if present.contains(&id) {
                        report.messages_skipped += 1;
                        continue;
                    }
                    let mut headers = HeaderMap::new();
                    if let Some(old) = &message.headers {
                        for (name, values) in old.iter() {
                            if AsRef::<str>::as_ref(name).starts_with("Nats-Expected") {
                                continue;
                            }
                            for value in values {
                                headers.append(name.clone(), value.clone());
                            }
                        }
                    }
                    if headers.get(async_nats::header::NATS_MESSAGE_ID).is_none() {
                        headers.insert(MIGRATED_FROM, id.as_str());
                    }
                    js.publish_with_headers(
                        message.subject.clone(),
                        headers,
                        Bytes::from(message.payload.clone()),
                    )
                    .await
                    .map_err(js_err(format!(
                        "writing message {} of {name}",
                        message.sequence
                    )))?
                    .await
                    .map_err(js_err(format!(
                        "writing message {} of {name}",
                        message.sequence
                    )))?;
                    report.messages_written += 1;
                }
                for consumer_config in consumers {
                    let mut consumer_config = consumer_config.clone();
                    consumer_config.num_replicas = 0;
                    let durable = consumer_config.durable_name.clone().unwrap_or_default();
                    stream
                        .get_or_create_consumer(&durable, consumer_config)
                        .await
                        .map(|_: consumer::Consumer<consumer::Config>| ())
                        .map_err(js_err(format!("creating consumer {durable} of {name}")))?;
                }
            }
        }
    }
    verify(js, snapshot).await?;
    Ok(report)
}

/// The id an imported message is recognised by: its `Nats-Msg-Id`, else its old sequence.
fn message_id(message: &Message) -> String {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
        .map(|v| v.as_str().to_owned())
        .unwrap_or_else(|| format!("seq-{}", message.sequence))
}

/// Ids of the messages a stream holds (`Nats-Msg-Id` or `Bramble-Migrated-From`).
async fn present_ids(stream: &stream::Stream) -> Result<HashSet<String>, MigrationError> {
    let mut stream = stream.clone();
    let state = stream
        .info()
        .await
        .map_err(js_err("reading a stream".into()))?
        .state
        .clone();
    let mut ids = HashSet::new();
    if state.messages == 0 {
        return Ok(ids);
    }
    for sequence in state.first_sequence..=state.last_sequence {
        match stream.get_raw_message(sequence).await {
            Ok(m) => {
                for header in [async_nats::header::NATS_MESSAGE_ID.as_ref(), MIGRATED_FROM] {
                    if let Some(v) = m.headers.get(header) {
                        ids.insert(v.as_str().to_owned());
                    }
                }
            }
            Err(e) if jserr::cause(&e) == Cause::Code(jserr::NO_MESSAGE_FOUND) => {}
            Err(e) => return Err(js_err(format!("reading message {sequence}"))(e)),
        }
    }
    Ok(ids)
}

/// Checks that every stream has at least what the snapshot has.
async fn verify(js: &jetstream::Context, snapshot: &Snapshot) -> Result<(), MigrationError> {
    for stream_data in &snapshot.streams {
        let name = &stream_data.config.name;
        match &stream_data.data {
            Data::Kv(pairs) => {
                let bucket = Bucket::open(js, name.trim_start_matches("KV_"))
                    .await
                    .map_err(|source| MigrationError::Kv {
                        op: format!("opening bucket {name}"),
                        source,
                    })?;
                let keys: HashSet<String> = bucket
                    .keys()
                    .await
                    .map_err(|source| MigrationError::Kv {
                        op: format!("listing bucket {name}"),
                        source,
                    })?
                    .into_iter()
                    .collect();
                let found = pairs.iter().filter(|p| keys.contains(&p.key)).count();
                at_least(name, "keys", found, pairs.len())?;
            }
            Data::Messages { messages, .. } => {
                let stream = js
                    .get_stream(name)
                    .await
                    .map_err(js_err(format!("opening stream {name}")))?;
                let ids = present_ids(&stream).await?;
                let found = messages
                    .iter()
                    .filter(|m| ids.contains(&message_id(m)))
                    .count();
                at_least(name, "messages", found, messages.len())?;
            }
        }
    }
    Ok(())
}

fn at_least(
    stream: &str,
    what: &'static str,
    found: usize,
    expected: usize,
) -> Result<(), MigrationError> {
    if found < expected {
        return Err(MigrationError::Mismatch {
            stream: stream.to_owned(),
            what,
            found: found as u64,
            expected: expected as u64,
        });
    }
    Ok(())
}

/// `<state_dir>/cluster/migration.json`.
pub fn snapshot_path(config: &EngineConfig) -> PathBuf {
    config.cluster_dir().join("migration.json")
}

/// Writes the snapshot (0600, fsynced, atomically).
pub async fn save_snapshot(snapshot: &Snapshot, path: &Path) -> Result<(), MigrationError> {
    let bytes = serde_json::to_vec(snapshot).map_err(|e| MigrationError::Io {
        action: "encoding",
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    let file = path.to_path_buf();
    blocking(path, "writing", move || {
        bramble_base::write_atomic(&file, &bytes, 0o600)
    })
    .await
}

/// Reads a snapshot written by [`save_snapshot`]; `None` when there is none.
pub async fn load_snapshot(path: &Path) -> Result<Option<Snapshot>, MigrationError> {
    let bytes = match tokio::fs::read(path).await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(MigrationError::Io {
                action: "reading",
                path: path.to_path_buf(),
                source,
            });
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| MigrationError::Io {
            action: "decoding",
            path: path.to_path_buf(),
            source: std::io::Error::other(e),
        })
}

async fn blocking<F>(path: &Path, action: &'static str, f: F) -> Result<(), MigrationError>
where
    F: FnOnce() -> std::io::Result<()> + Send + 'static,
{
    let io = |source| MigrationError::Io {
        action,
        path: path.to_path_buf(),
        source,
    };
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io(std::io::Error::other(e)))?
        .map_err(io)
}

/// What a migration did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationReport {
    /// The import's counts.
    pub import: ImportReport,
    /// Time from stopping the standalone server to the data being written back.
    pub downtime: Duration,
}

/// Migrates the standalone `server` to `clustered` (see the module docs). Returns the new
/// server. Waits up to `jetstream_timeout` for the cluster's meta leader (the other JetStream
/// board must be up). On failure after the stop, the snapshot stays on disk and
/// [`finish_pending_migration`] completes the job once the clustered server runs.
pub async fn migrate_standalone_to_clustered(
    server: NatsServer,
    clustered: EngineConfig,
    replicas: usize,
    jetstream_timeout: Duration,
) -> Result<(NatsServer, MigrationReport), MigrationError> {
    let client = server.connect().await?;
    let snapshot = export(&jetstream::new(client.clone())).await?;
    let path = snapshot_path(server.config());
    save_snapshot(&snapshot, &path).await?;
    drop(client);
    let store = server.config().jetstream_dir();
    let stopped = std::time::Instant::now();
    server.stop().await;
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let aside = store.with_file_name(format!("jetstream.standalone-{millis}"));
    match tokio::fs::rename(&store, &aside).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(MigrationError::Io {
                action: "moving aside",
                path: store,
                source,
            });
        }
    }
    let server = NatsServer::start(clustered).await?;
    server.wait_jetstream(jetstream_timeout).await?;
    let import = finish_pending_migration(&server, replicas)
        .await?
        .unwrap_or_default();
    let downtime = stopped.elapsed();
    if let Err(e) = tokio::fs::remove_dir_all(&aside).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = ?aside, error = %e, "could not remove the standalone JetStream directory");
    }
    Ok((server, MigrationReport { import, downtime }))
}

/// Imports a snapshot left on disk by an interrupted migration (`None` when there is none) and
/// removes it once the data is verified.
pub async fn finish_pending_migration(
    server: &NatsServer,
    replicas: usize,
) -> Result<Option<ImportReport>, MigrationError> {
    let path = snapshot_path(server.config());
    let Some(snapshot) = load_snapshot(&path).await? else {
        return Ok(None);
    };
    let client = server.connect().await?;
    let report = import(&jetstream::new(client), &snapshot, replicas).await?;
    blocking(&path, "removing", {
        let path = path.clone();
        move || std::fs::remove_file(&path)
    })
    .await?;
    Ok(Some(report))
}

mod b64 {
    use super::STANDARD;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD
            .decode(text)
            .map_err(|_| serde::de::Error::custom("not base64"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_round_trips_through_json() {
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, "call-1");
        let snapshot = Snapshot {
            streams: vec![
                StreamData {
                    config: crate::kv::BucketConfig::new("boards", 1).stream_config(),
                    data: Data::Kv(vec![KvPair {
                        key: "pi1".into(),
                        value: b"\x00\xffbinary".to_vec(),
                    }]),
                },
                StreamData {
                    config: crate::queue::QueueConfig::new("shelf", 1).stream_config(),
                    data: Data::Messages {
                        messages: vec![Message {
                            sequence: 7,
                            subject: "bramble.shelf.calls.default.hello".into(),
                            headers: Some(headers),
                            payload: b"body".to_vec(),
                        }],
                        consumers: vec![],
                    },
                },
            ],
        };
        let text = serde_json::to_string(&snapshot).unwrap();
        let back: Snapshot = serde_json::from_str(&text).unwrap();
        assert_eq!(back.streams.len(), 2);
        let Data::Kv(pairs) = &back.streams[0].data else {
            panic!("not kv")
        };
        assert_eq!(pairs[0].value, b"\x00\xffbinary");
        let Data::Messages { messages, .. } = &back.streams[1].data else {
            panic!("not messages")
        };
        assert_eq!(message_id(&messages[0]), "call-1");
        let anonymous = Message {
            sequence: 9,
            subject: "s".into(),
            headers: None,
            payload: vec![],
        };
        assert_eq!(message_id(&anonymous), "seq-9");
    }
}
