//! The durable work queue of accepted calls: the work-queue stream `CALLS`.
//!
//! - Subjects `bramble.<cluster>.calls.<namespace>.<function>`; a message's id
//!   (`Nats-Msg-Id`) is the call id, so a call enqueued twice within the stream's duplicate
//!   window (default 2 minutes) is stored once ([`Enqueued::duplicate`]).
//! - Retention `WorkQueue`: a message is removed when acknowledged.
//! - Durable pull consumers shared by the boards: boards pull from the same consumer and
//!   JetStream hands each message to one of them. One consumer per board is not possible on a
//!   work queue — JetStream refuses consumers whose filters overlap there, since each message
//!   must belong to exactly one consumer — and one consumer with several `filter_subjects`
//!   exists only from 2.10. Either one consumer per function (`<namespace>_<function>`,
//!   [`CallQueue::worker`]) or one for every call (`calls`, [`CallQueue::worker_for_all`]):
//!   bramble uses the latter, since every board can run every function (a call goes to the
//!   board that runs it); the two cannot be mixed on one stream.
//! - Explicit ack once the work (and its callback) is done ([`Call::done`]); an unacknowledged
//!   call comes back after `ack_wait` (a board that crashed mid-call loses nothing);
//!   [`Call::in_progress`] extends the wait for long calls. After `max_deliver` deliveries
//!   JetStream stops delivering but keeps the message (only an advisory says so).
//!
//! Durability: [`Durability`] says whether JetStream fsyncs before acknowledging a publish. On
//! 2.10+ with `sync_interval: always` on every JetStream board it does; on 2.9 JetStream fsyncs
//! every two minutes, so a power cut of the whole shelf can lose calls that were acknowledged:
//! the accepting board must then keep its own fsynced copy of a call until the call is done.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures::StreamExt as _;

use crate::engine::ServerVersion;
use crate::jserr::{self, Cause};
use crate::names;

/// The work-queue stream.
pub const STREAM: &str = "CALLS";

/// The consumer of every call ([`CallQueue::worker_for_all`]).
pub const ALL_CALLS: &str = "calls";

/// Whether an acknowledged enqueue is on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Every JetStream board fsyncs before acknowledging (2.10+, `sync_interval: always`).
    FsyncBeforeAck,
    /// JetStream fsyncs on a timer (2.9: every 2 minutes): keep your own fsynced copy of
    /// accepted work until it is done.
    Periodic,
}

impl Durability {
    /// The durability of a cluster whose JetStream boards run `versions`, all configured with
    /// `sync_always` (`SyncPolicy::Always`): fsync-before-ack only if every one can.
    pub fn of_cluster(versions: &[ServerVersion], sync_always: bool) -> Durability {
        if sync_always
            && !versions.is_empty()
            && versions.iter().all(|v| v.capabilities().sync_interval)
        {
            Durability::FsyncBeforeAck
        } else {
            Durability::Periodic
        }
    }
}

/// How the queue is made.
#[derive(Clone, Debug)]
pub struct QueueConfig {
    /// The cluster's name (the subjects' second token).
    pub cluster: String,
    /// Stream replicas.
    pub replicas: usize,
    /// How long a delivered call may stay unacknowledged before it is delivered again.
    pub ack_wait: Duration,
    /// Deliveries before JetStream gives up on a call (-1: never).
    pub max_deliver: i64,
    /// The dedupe window for call ids.
    pub duplicate_window: Duration,
}

impl QueueConfig {
    /// Defaults: 30 s ack wait, 5 deliveries, 2-minute dedupe window.
    pub fn new(cluster: &str, replicas: usize) -> QueueConfig {
        QueueConfig {
            cluster: cluster.to_owned(),
            replicas,
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            duplicate_window: Duration::from_secs(120),
        }
    }

    /// The stream configuration.
    pub fn stream_config(&self) -> stream::Config {
        stream::Config {
            name: STREAM.into(),
            subjects: vec![format!("bramble.{}.calls.>", self.cluster)],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: self.replicas.max(1),
            duplicate_window: self.duplicate_window,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        }
    }
}

/// A queue error.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// A namespace, function or call id that cannot be used.
    #[error(transparent)]
    Name(#[from] names::NameError),
    /// A call id that cannot be a message id.
    #[error("call id {0:?} is not valid (1-128 visible ASCII characters)")]
    CallId(String),
    /// The cluster cannot store it now (no quorum / no leader).
    #[error("the call queue is unavailable: the cluster has no quorum (nothing was enqueued)")]
    NoQuorum,
    /// No answer in time.
    #[error(
        "the call queue did not answer within {0:?} (the call may or may not have been enqueued; enqueue it again with the same call id)"
    )]
    Timeout(Duration),
    /// Any other failure.
    #[error("call queue: {op} failed")]
    Nats {
        /// The operation.
        op: &'static str,
        /// Why.
        #[source]
        source: async_nats::Error,
    },
}

impl QueueError {
    /// True when the cluster cannot answer now (no quorum, no leader for the stream or the
    /// consumer, no answer): retry later (with the same call id, for an enqueue).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, QueueError::NoQuorum | QueueError::Timeout(_))
    }
}

fn classify<E>(op: &'static str, e: E) -> QueueError
where
    E: std::error::Error + Send + Sync + 'static,
{
    match jserr::cause(&e) {
        Cause::TimedOut => QueueError::Timeout(crate::kv::DEFAULT_TIMEOUT),
        cause if jserr::is_unavailable(cause) => QueueError::NoQuorum,
        _ => QueueError::Nats {
            op,
            source: Box::new(e),
        },
    }
}

/// The result of an enqueue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Enqueued {
    /// The stream sequence of the stored call.
    pub sequence: u64,
    /// The call id was already in the queue's dedupe window: nothing new was stored.
    pub duplicate: bool,
}

/// The queue of accepted calls.
#[derive(Clone, Debug)]
pub struct CallQueue {
    js: jetstream::Context,
    config: QueueConfig,
    durability: Durability,
}

impl CallQueue {
    /// Opens the `CALLS` stream, creating it when absent.
    pub async fn open_or_create(
        js: &jetstream::Context,
        config: QueueConfig,
        durability: Durability,
    ) -> Result<CallQueue, QueueError> {
        names::validate("cluster", &config.cluster)?;
        match js.get_stream(STREAM).await {
            Ok(_) => {}
            Err(e) if jserr::cause(&e) == Cause::Code(jserr::STREAM_NOT_FOUND) => {
                crate::kv::create_stream(js, config.stream_config())
                    .await
                    .map_err(|e| classify("creating the stream", e))?;
            }
            Err(e) => return Err(classify("looking up the stream", e)),
        }
        Ok(CallQueue {
            js: js.clone(),
            config,
            durability,
        })
    }

    /// Whether an acknowledged enqueue is on disk (see [`Durability`]).
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// The subject of a function's calls.
    pub fn subject(&self, namespace: &str, function: &str) -> String {
        format!(
            "bramble.{}.calls.{namespace}.{function}",
            self.config.cluster
        )
    }

    /// Stores a call; returns once the cluster has it (and, with
    /// [`Durability::FsyncBeforeAck`], once it is on disk).
    pub async fn enqueue(
        &self,
        namespace: &str,
        function: &str,
        call_id: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Enqueued, QueueError> {
        names::validate("namespace", namespace)?;
        names::validate("function", function)?;
        check_call_id(call_id)?;
        let mut headers = headers;
        headers.insert(async_nats::header::NATS_MESSAGE_ID, call_id);
        let ack = self
            .js
            .publish_with_headers(self.subject(namespace, function), headers, body)
            .await
            .map_err(|e| classify("enqueueing", e))?
            .await
            .map_err(|e| match e.kind() {
                jetstream::context::PublishErrorKind::StreamNotFound => QueueError::NoQuorum,
                jetstream::context::PublishErrorKind::TimedOut => {
                    QueueError::Timeout(crate::kv::DEFAULT_TIMEOUT)
                }
                _ => classify("enqueueing", e),
            })?;
        Ok(Enqueued {
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }

    /// The worker side for one function: its durable pull consumer, created when absent.
    pub async fn worker(&self, namespace: &str, function: &str) -> Result<Worker, QueueError> {
        names::validate("namespace", namespace)?;
        names::validate("function", function)?;
        self.consumer(
            format!("{namespace}_{function}"),
            self.subject(namespace, function),
        )
        .await
    }

    /// The worker side for every call: one durable pull consumer ([`ALL_CALLS`]), created
    /// when absent.
    pub async fn worker_for_all(&self) -> Result<Worker, QueueError> {
        self.consumer(
            ALL_CALLS.to_owned(),
            format!("bramble.{}.calls.>", self.config.cluster),
        )
        .await
    }

    async fn consumer(
        &self,
        durable: String,
        filter_subject: String,
    ) -> Result<Worker, QueueError> {
        let stream = self
            .js
            .get_stream(STREAM)
            .await
            .map_err(|e| classify("looking up the stream", e))?;
        let consumer = stream
            .get_or_create_consumer(
                &durable,
                consumer::pull::Config {
                    durable_name: Some(durable.clone()),
                    filter_subject,
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: self.config.ack_wait,
                    max_deliver: self.config.max_deliver,
                    num_replicas: 0,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| classify("creating the consumer", e))?;
        Ok(Worker { consumer })
    }

    /// Calls waiting (stored, not yet acknowledged).
    pub async fn pending(&self) -> Result<u64, QueueError> {
        // Looking the stream up is the info request: its answer holds the count.
        let stream = self
            .js
            .get_stream(STREAM)
            .await
            .map_err(|e| classify("looking up the stream", e))?;
        Ok(stream.cached_info().state.messages)
    }
}

pub(crate) fn check_call_id(id: &str) -> Result<(), QueueError> {
    if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(QueueError::CallId(id.chars().take(40).collect()));
    }
    Ok(())
}

/// Pulls one function's calls.
#[derive(Debug)]
pub struct Worker {
    consumer: consumer::PullConsumer,
}

/// A delivered call. Acknowledge it with [`Call::done`] after the work; dropping it without
/// means it comes back after `ack_wait`.
#[derive(Debug)]
pub struct Call {
    message: jetstream::Message,
    /// The call id.
    pub call_id: String,
    /// The namespace.
    pub namespace: String,
    /// The function.
    pub function: String,
    /// How many times it has been delivered (1 the first time).
    pub delivered: i64,
}

impl Call {
    /// The request body.
    pub fn body(&self) -> &Bytes {
        &self.message.payload
    }

    /// The headers stored with the call.
    pub fn headers(&self) -> Option<&HeaderMap> {
        self.message.headers.as_ref()
    }

    /// The work is done: remove the call (waits for the server's confirmation).
    pub async fn done(self) -> Result<(), QueueError> {
        self.message
            .double_ack()
            .await
            .map_err(|source| QueueError::Nats {
                op: "acknowledging a call",
                source,
            })
    }

    /// Still working: restart the `ack_wait` clock.
    pub async fn in_progress(&self) -> Result<(), QueueError> {
        self.message
            .ack_with(jetstream::AckKind::Progress)
            .await
            .map_err(|source| QueueError::Nats {
                op: "extending a call",
                source,
            })
    }

    /// Give it back for another delivery now (or after `delay`).
    pub async fn retry(self, delay: Option<Duration>) -> Result<(), QueueError> {
        self.message
            .ack_with(jetstream::AckKind::Nak(delay))
            .await
            .map_err(|source| QueueError::Nats {
                op: "returning a call",
                source,
            })
    }
}

impl Worker {
    /// Up to `max` calls, waiting at most `wait` for the first.
    pub async fn fetch(&self, max: usize, wait: Duration) -> Result<Vec<Call>, QueueError> {
        let mut batch = self
            .consumer
            .fetch()
            .max_messages(max)
            .expires(wait)
            .messages()
            .await
            .map_err(|e| classify("fetching calls", e))?;
        let mut calls = Vec::new();
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| match jserr::cause(e.as_ref()) {
                Cause::TimedOut => QueueError::Timeout(crate::kv::DEFAULT_TIMEOUT),
                cause if jserr::is_unavailable(cause) => QueueError::NoQuorum,
                _ => QueueError::Nats {
                    op: "fetching calls",
                    source: e,
                },
            })?;
            let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
            let call_id = message
                .headers
                .as_ref()
                .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default();
            // `bramble.<cluster>.calls.<namespace>.<function>`
            let mut tokens = message.subject.rsplitn(3, '.');
            let function = tokens.next().unwrap_or_default().to_owned();
            let namespace = tokens.next().unwrap_or_default().to_owned();
            calls.push(Call {
                message,
                call_id,
                namespace,
                function,
                delivered,
            });
        }
        Ok(calls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_is_a_work_queue_with_dedupe() {
        let config = QueueConfig::new("shelf", 3).stream_config();
        assert_eq!(config.name, "CALLS");
        assert_eq!(config.subjects, vec!["bramble.shelf.calls.>".to_owned()]);
        assert_eq!(config.retention, stream::RetentionPolicy::WorkQueue);
        assert_eq!(config.duplicate_window, Duration::from_secs(120));
        assert_eq!(config.num_replicas, 3);
    }

    #[test]
    fn durability_needs_every_board_to_fsync() {
        let v29 = ServerVersion::parse("2.9.10").unwrap();
        let v210 = ServerVersion::parse("2.10.27").unwrap();
        assert_eq!(
            Durability::of_cluster(&[v210, v210, v210], true),
            Durability::FsyncBeforeAck
        );
        assert_eq!(
            Durability::of_cluster(&[v210, v29, v210], true),
            Durability::Periodic
        );
        assert_eq!(Durability::of_cluster(&[v210], false), Durability::Periodic);
        assert_eq!(Durability::of_cluster(&[], true), Durability::Periodic);
    }

    #[test]
    fn call_ids() {
        check_call_id("b3c9e0a2-1").unwrap();
        for bad in ["", "a b", "é", &"x".repeat(129)] {
            assert!(check_call_id(bad).is_err(), "{bad:?}");
        }
    }
}
