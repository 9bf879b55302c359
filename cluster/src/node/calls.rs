//! Async calls across the cluster: any board accepts a call, any board runs it.
//!
//! - **Accepting** (`/async-function` on any board): the gateway stores the call on the
//!   board's disk (fsynced), then hands it to [`Share`], which puts it on the cluster's work
//!   queue ([`CallQueue`], stream `CALLS`) with the accepting board and the record's name in
//!   its headers and the call id as its message id (the same `X-Call-Id` within two minutes
//!   is stored once). The 202 goes out once the queue has it (or, when the cluster cannot
//!   take it now, once it is on disk: the board hands it over later).
//! - **Running** ([`serve`]): every board pulls from one shared consumer, at most
//!   `async_workers` calls at a time, and runs each call through its gateway (which sends it
//!   to the board that runs the function). While a call runs, the board tells JetStream it
//!   is still working on it every [`PROGRESS_EVERY`]; a board that dies mid-call stops
//!   doing so, and the call goes to another board after [`ACK_WAIT`].
//! - **Done**: once the call and its callback are over, the board writes
//!   `<accepting board>.<record>` in the `calls_done` bucket, then acknowledges the message
//!   (which removes it). A call delivered again whose key is there is acknowledged without
//!   running. The accepting board follows the bucket and deletes its record
//!   ([`Gateway::forget_call`]).
//!
//! Why the accepting board keeps its record: on nats-server 2.9 JetStream fsyncs every two
//! minutes, so a power cut of every board at once can lose what the queue acknowledged. The
//! record is handed over again at the next start; a call that ran already is recognised by
//! its key in `calls_done` (unless that write was lost too: delivery is at least once).

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use bramble_gateway::provider::Provider;
use bramble_gateway::{CallShare, Gateway, ShareOutcome, SharedCall};
use bytes::Bytes;
use tokio::sync::{Semaphore, watch};

use super::ClusterNode;
use crate::kv::{Bucket, BucketConfig, Change};
use crate::queue::{Call, CallQueue, Durability, QueueConfig, check_call_id};

/// The bucket of finished calls: `<accepting board>.<record>` → the board that ran it.
pub const DONE_BUCKET: &str = "calls_done";
/// How long a finished call is remembered (a board away longer runs its records again when
/// it comes back; every board reads the bucket at its start).
pub const REMEMBER_DONE: Duration = Duration::from_secs(2 * 24 * 3600);
/// Header naming the board that accepted a call.
pub const BOARD_HEADER: &str = "Bramble-Board";
/// Header naming the call's record on the accepting board.
pub const FILE_HEADER: &str = "Bramble-File";
/// How long a delivered call may go without news from its board before another board gets it.
pub const ACK_WAIT: Duration = Duration::from_secs(10);
/// How often a board running a call says it still is.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(3);
/// How long one pull waits for a call.
const PULL_WAIT: Duration = Duration::from_secs(5);

/// The queue's configuration on a cluster with `replicas` per stream.
pub fn queue_config(cluster: &str, replicas: usize) -> QueueConfig {
    let mut config = QueueConfig::new(cluster, replicas);
    config.ack_wait = ACK_WAIT;
    // Never given up: a call leaves the queue only once a board ran it.
    config.max_deliver = -1;
    config
}

/// The `calls_done` bucket's configuration.
pub fn done_config(replicas: usize) -> BucketConfig {
    let mut config = BucketConfig::new(DONE_BUCKET, replicas);
    config.max_age = REMEMBER_DONE;
    config
}

/// Opens the queue and the bucket of finished calls (creating them when absent).
pub(crate) async fn open(
    node: &ClusterNode,
    replicas: usize,
) -> Result<(CallQueue, Bucket), String> {
    let queue = CallQueue::open_or_create(
        node.jetstream(),
        queue_config(&node.cluster(), replicas),
        // Whatever JetStream does, the accepting board keeps its own fsynced record.
        Durability::Periodic,
    )
    .await
    .map_err(|e| bramble_base::error_chain(&e))?;
    let done = Bucket::open_or_create(node.jetstream(), &done_config(replicas))
        .await
        .map_err(|e| bramble_base::error_chain(&e))?;
    Ok((queue, done))
}

fn done_key(board: &str, file: &str) -> String {
    format!("{board}.{file}")
}

/// Hands the calls this board accepts to the cluster's queue.
pub struct Share {
    node: Arc<ClusterNode>,
    open: watch::Receiver<bool>,
}

impl Share {
    /// The share of `node`, handing calls over once `open` is true (or its sender is gone):
    /// not before the board's own functions are the cluster's, or a call of one of them
    /// could reach a board that does not know the function yet.
    pub fn new(node: Arc<ClusterNode>, open: watch::Receiver<bool>) -> Share {
        Share { node, open }
    }

    async fn put(&self, call: SharedCall) -> Result<ShareOutcome, String> {
        if !*self.open.borrow() {
            let _ = self.open.clone().wait_for(|open| *open).await;
        }
        // Until the board reaches its cluster (after a start), calls wait for it here; the
        // gateway bounds the wait of a call being accepted.
        let parts = self
            .node
            .ready(Duration::MAX)
            .await
            .ok_or_else(|| "this board is leaving its cluster".to_owned())?;
        let mut headers = HeaderMap::new();
        headers.insert(BOARD_HEADER, self.node.board().as_str());
        headers.insert(FILE_HEADER, call.file.as_str());
        // A call id the queue cannot take as a message id is deduplicated by its record.
        let id = if check_call_id(&call.call_id).is_ok() {
            call.call_id.as_str()
        } else {
            call.file.as_str()
        };
        let enqueued = parts
            .calls
            .enqueue(&call.namespace, &call.function, id, headers, call.record)
            .await
            .map_err(|e| bramble_base::error_chain(&e))?;
        Ok(if enqueued.duplicate {
            ShareOutcome::Duplicate
        } else {
            ShareOutcome::Stored
        })
    }
}

impl CallShare for Share {
    fn share(
        &self,
        call: SharedCall,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<ShareOutcome, String>> + Send + '_>> {
        Box::pin(self.put(call))
    }
}

/// Runs this board's part of the cluster's async calls for as long as the node runs: pulls
/// calls (once `routes_ready`: the board knows every function and where it runs) and runs
/// them through `gateway` (at most `workers` at once), and deletes the records of calls this
/// board accepted once a board says they are done.
pub fn serve<P: Provider>(
    node: &Arc<ClusterNode>,
    gateway: Arc<Gateway<P>>,
    workers: usize,
    routes_ready: impl Future<Output = ()> + Send + 'static,
) {
    {
        let gateway = Arc::clone(&gateway);
        let count: super::KeptCalls = Arc::new(move || {
            let gateway = Arc::clone(&gateway);
            Box::pin(async move { gateway.kept_calls().await })
        });
        let _ = node.kept_calls.set(count);
    }
    let task = {
        let node = Arc::clone(node);
        let gateway = Arc::clone(&gateway);
        tokio::spawn(async move {
            let Some(parts) = node.ready(Duration::MAX).await else {
                return;
            };
            routes_ready.await;
            tracing::info!(workers, "running async calls from the cluster's queue");
            pull(
                &node,
                parts.calls.clone(),
                parts.done.clone(),
                gateway,
                workers,
            )
            .await;
        })
    };
    node.keep(task);
    let task = {
        let node = Arc::clone(node);
        tokio::spawn(async move {
            let Some(parts) = node.ready(Duration::MAX).await else {
                return;
            };
            forget_done(&node.board(), parts.done.clone(), gateway).await;
        })
    };
    node.keep(task);
}

/// Pulls calls from the shared consumer and runs each in its own task. A leaving board takes
/// none (it waits until it is no longer leaving: a refused leave), and hands one it was given
/// as it began to leave straight back to the queue for another board.
async fn pull<P: Provider>(
    node: &Arc<ClusterNode>,
    queue: CallQueue,
    done: Bucket,
    gateway: Arc<Gateway<P>>,
    workers: usize,
) {
    let board = node.board();
    let mut me = node.me();
    let slots = Arc::new(Semaphore::new(workers.max(1)));
    let mut worker = None;
    loop {
        let leaving = me.borrow_and_update().leaving;
        if leaving && me.wait_for(|info| !info.leaving).await.is_err() {
            return;
        }
        let Some(current) = worker.as_ref() else {
            match queue.worker_for_all().await {
                Ok(w) => worker = Some(w),
                Err(e) => {
                    tracing::debug!(error = %bramble_base::error_chain(&e), "opening the call queue's consumer; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            continue;
        };
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        match current.fetch(1, PULL_WAIT).await {
            Ok(calls) => {
                let Some(call) = calls.into_iter().next() else {
                    continue;
                };
                if node.leaving() {
                    let call_id = call.call_id.clone();
                    if let Err(e) = call.retry(None).await {
                        tracing::debug!(%call_id, error = %bramble_base::error_chain(&e), "handing a call back as this board leaves; another board gets it after the ack wait");
                    }
                    continue;
                }
                let running = Running::start(node);
                let (board, done, gateway) = (board.clone(), done.clone(), Arc::clone(&gateway));
                tokio::spawn(async move {
                    run(&board, call, &done, &gateway).await;
                    drop((slot, running));
                });
            }
            Err(e) => {
                tracing::debug!(error = %bramble_base::error_chain(&e), "pulling calls; retrying");
                if !e.is_unavailable() {
                    worker = None;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// One call from the queue this board runs, counted in [`ClusterNode::running_calls`] (a
/// leaving board waits for them) until dropped.
struct Running(watch::Sender<usize>);

impl Running {
    fn start(node: &ClusterNode) -> Running {
        node.running_calls.send_modify(|n| *n += 1);
        Running(node.running_calls.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Runs one delivered call (unless it ran already), says so in `calls_done`, acknowledges it.
async fn run<P: Provider>(board: &str, call: Call, done: &Bucket, gateway: &Gateway<P>) {
    let header = |name: &str| {
        call.headers()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    let key = match (header(BOARD_HEADER), header(FILE_HEADER)) {
        (Some(from), Some(file)) => Some(done_key(&from, &file)),
        _ => None,
    };
    let ran_before = match &key {
        Some(key) => matches!(done.get(key).await, Ok(Some(_))),
        None => false,
    };
    if ran_before {
        tracing::debug!(call_id = %call.call_id, "call delivered again after it ran; acknowledged");
    } else {
        let outcome = {
            let work = gateway.run_shared_call(call.body().clone());
            tokio::pin!(work);
            loop {
                tokio::select! {
                    outcome = &mut work => break outcome,
                    () = tokio::time::sleep(PROGRESS_EVERY) => {
                        if let Err(e) = call.in_progress().await {
                            tracing::debug!(call_id = %call.call_id, error = %bramble_base::error_chain(&e), "telling the queue the call is still running");
                        }
                    }
                }
            }
        };
        if let Err(e) = outcome {
            tracing::warn!(call_id = %call.call_id, function = %call.function, namespace = %call.namespace, error = %e, "a queued call is not a call; dropped");
        }
        if let Some(key) = &key {
            mark_done(&call, key, board, done).await;
        }
    }
    let call_id = call.call_id.clone();
    if let Err(e) = call.done().await {
        tracing::warn!(call_id = %call_id, error = %bramble_base::error_chain(&e), "cannot acknowledge a finished call; it will be delivered again and recognised as done");
    }
}

/// Writes `key` in `calls_done`, retrying for a while (the call stays in progress meanwhile).
async fn mark_done(call: &Call, key: &str, board: &str, done: &Bucket) {
    let mut delay = Duration::from_millis(100);
    for _ in 0..10 {
        match done.put(key, Bytes::from(board.to_owned())).await {
            Ok(_) => return,
            Err(e) => {
                tracing::debug!(call_id = %call.call_id, error = %bramble_base::error_chain(&e), "writing that a call is done; retrying");
                let _ = call.in_progress().await;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(PROGRESS_EVERY);
            }
        }
    }
    tracing::warn!(call_id = %call.call_id, "cannot write that a call is done; the accepting board keeps its record and hands it over again at its next start");
}

/// Deletes this board's records of calls other boards (or this one) finished.
async fn forget_done<P: Provider>(board: &str, done: Bucket, gateway: Arc<Gateway<P>>) {
    let prefix = format!("{board}.");
    let mut changes = crate::kv::follow(done);
    while let Some(change) = changes.recv().await {
        if let Change::Put { key, .. } = change
            && let Some(file) = key.strip_prefix(&prefix)
        {
            gateway.forget_call(file).await;
        }
    }
}
