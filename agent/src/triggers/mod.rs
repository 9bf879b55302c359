//! Triggers: GPIO edges, schedules and sensor thresholds that invoke functions.
//!
//! The triggers follow the desired state: when a function is deployed, updated or deleted
//! (a [`Store`] change), its annotations are parsed again ([`spec`]) and its triggers are
//! started, restarted or stopped. Each trigger is a source task ([`sources`]) feeding a
//! delivery task through its durable queue ([`journal`]):
//!
//! * an event is written to the trigger's file under `<state_dir>/triggers/<function>/`
//!   before it is dispatched; while the file cannot be written (a full disk), deliveries
//!   wait, the events stay counted in memory, and the write is retried (logged when it
//!   starts failing and when it works again);
//! * invocations go through [`Gateway::invoke`], the path of a LAN request (scale from
//!   zero, metrics, the function's timeout), one at a time per trigger, in order;
//! * 429, 502, 503 and 504 (the function starting, gone for a moment, overloaded) are
//!   retried with a backoff (100 ms doubling to 10 s) until the function answers; any other
//!   answer, 500 included, is the function's and ends the delivery;
//! * events that arrive while an invocation is in delivery are coalesced into the next
//!   invocation with a `count`; queued invocations survive a restart of the node (one in
//!   delivery when the node stopped is delivered again, with the same `sequence`).
//!
//! What a function receives: `POST` to the trigger's path with `Content-Type:
//! application/json`, headers `X-Bramble-Trigger` (`gpio`, `schedule`, `sensor`),
//! `X-Bramble-Sequence` and `X-Bramble-Count`, and a JSON body: the last event's fields
//! plus `trigger`, `sequence`, `count` and, when several events were coalesced, `first`
//! (the first event; absent when it is not known: edges the kernel dropped or the trigger
//! fell behind on, seen as gaps in `line_seqno`, are counted in the next event's `count`
//! only). A GPIO event is `{line, edge, level, timestamp_ns, seqno,
//! line_seqno}` (logical edge and level; `CLOCK_MONOTONIC` kernel timestamp); a sensor
//! event `{sensor, kind, value, unit, crossed, threshold, timestamp_ms}`. Schedules send
//! what the OpenFaaS cron-connector sends: an empty body with `X-Topic: cron-function` and
//! `X-Connector: cron-connector`.

pub mod deliveries;
pub mod journal;
pub mod sources;
pub mod spec;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use bramble_gateway::Gateway;
use bramble_gateway::ui::model::{Delivery, DeliveryOutcome};
use bramble_hardware::Hardware;
use futures::StreamExt as _;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::cluster::NodeProvider;
use crate::function::FunctionKey;
use crate::store::Store;
pub use deliveries::Deliveries;
use journal::{Journal, Pending};
use sources::Message;
pub use spec::{Trigger, hardware_grants, parse};

/// First retry delay; doubled per failed attempt.
const RETRY_START: Duration = Duration::from_millis(100);
/// Longest retry delay.
const RETRY_MAX: Duration = Duration::from_secs(10);
/// Most bytes of a function's answer kept for the log.
const ANSWER_LOG_BYTES: usize = 200;

/// What the triggers need from the node.
#[derive(Debug, Clone)]
pub struct Context {
    /// Where the functions' trigger queues are kept (`<state_dir>/triggers`).
    pub dir: PathBuf,
    /// The desired state.
    pub store: Arc<Store>,
    /// For GPIO edges and sensor readings.
    pub hardware: Arc<Hardware>,
    /// For invocations.
    pub gateway: Arc<Gateway<NodeProvider>>,
    /// Where each delivery is recorded, for the dashboard.
    pub deliveries: Arc<Deliveries>,
    /// Which functions' schedules fire on this board (in a cluster, one board fires each).
    pub schedules: tokio::sync::watch::Receiver<bramble_cluster::provider::Schedules>,
    /// This board's name: a trigger that names a board (`board=`) runs only there.
    pub board: String,
    /// The annotations of every function of the cluster (none on a single board): the
    /// triggers that name this board run here even when their function runs elsewhere.
    pub cluster: tokio::sync::watch::Receiver<Arc<bramble_cluster::provider::Annotations>>,
}

/// How long a stopped trigger may take to finish the queue write it is in.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// A running trigger: its tasks stop when this is dropped.
struct Running {
    trigger: Trigger,
    /// Asks the delivery to return at its next step (never in the middle of a queue write).
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    delivery: JoinHandle<()>,
}

impl Running {
    /// Stops the trigger and waits until its delivery has returned, so nothing writes its
    /// queue afterwards.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(STOP_WAIT, &mut self.delivery).await;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.delivery.abort();
    }
}

/// Runs the triggers of every function and follows the desired state, until dropped (which
/// stops every trigger). Start it once the provider has adopted the functions, so that
/// their lines are requested.
pub async fn run(mut ctx: Context) {
    let mut changes = ctx.store.subscribe();
    let mut running: HashMap<(FunctionKey, String), Running> = HashMap::new();
    loop {
        let state = std::sync::Arc::clone(&changes.borrow_and_update());
        let schedules = ctx.schedules.borrow_and_update().clone();
        let cluster = Arc::clone(&ctx.cluster.borrow_and_update());
        reconcile(&ctx, &state, &schedules, &cluster, &mut running).await;
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            changed = ctx.schedules.changed() => if changed.is_err() { return },
            changed = ctx.cluster.changed() => if changed.is_err() { return },
        }
    }
}

/// Starts, restarts and stops triggers to match the functions' annotations, and removes the
/// queues of triggers and functions that are gone (once their deliveries have returned).
async fn reconcile(
    ctx: &Context,
    state: &crate::store::State,
    schedules: &bramble_cluster::provider::Schedules,
    cluster: &bramble_cluster::provider::Annotations,
    running: &mut HashMap<(FunctionKey, String), Running>,
) {
    let mut desired: BTreeMap<(FunctionKey, String), Trigger> = BTreeMap::new();
    let mut here = BTreeSet::new();
    for (namespace, name, record) in state.all_functions() {
        here.insert((namespace.to_owned(), name.to_owned()));
        let key = FunctionKey::new(name, namespace);
        match spec::parse(&record.deployment.annotations) {
            Ok(triggers) => {
                for trigger in triggers {
                    // A schedule fires on one board of a cluster (its queue elsewhere goes:
                    // a board that becomes the one fires from the next period on).
                    if matches!(trigger.source, spec::Source::Schedule(_))
                        && !schedules.fire(namespace, name)
                    {
                        continue;
                    }
                    // A trigger of another board's line or sensor.
                    if trigger.board().is_some_and(|board| board != ctx.board) {
                        continue;
                    }
                    desired.insert((key.clone(), trigger.id()), trigger);
                }
            }
            // Refused at deploy; only a state written by another version gets here.
            Err(e) => error!(function = %key, error = %e, "bad trigger annotations; no triggers"),
        }
    }
    // Functions of the cluster that run on other boards: only their triggers that name this
    // board (`board=`) run here, and invoke the function where it runs.
    for (key, annotations) in cluster {
        if here.contains(&(key.namespace.clone(), key.name.clone())) {
            continue;
        }
        let Ok(triggers) = spec::parse(annotations) else {
            continue;
        };
        let function = FunctionKey::new(&key.name, &key.namespace);
        for trigger in triggers {
            if trigger.board() == Some(ctx.board.as_str()) {
                desired.insert((function.clone(), trigger.id()), trigger);
            }
        }
    }
    let gone: Vec<(FunctionKey, String)> = running
        .iter()
        .filter(|(id, r)| desired.get(*id) != Some(&r.trigger))
        .map(|(id, _)| id.clone())
        .collect();
    let mut stopping = Vec::with_capacity(gone.len());
    for id in gone {
        if let Some(r) = running.remove(&id) {
            info!(function = %id.0, trigger = %id.1, "trigger stopped");
            stopping.push(r.stop());
        }
    }
    futures::future::join_all(stopping).await;
    let kept: BTreeSet<(String, &str)> = desired
        .keys()
        .map(|(function, trigger)| (function.to_string(), trigger.as_str()))
        .collect();
    ctx.deliveries
        .retain(|function, trigger| kept.contains(&(function.to_owned(), trigger)));
    for (id, trigger) in &desired {
        if running.contains_key(id) {
            continue;
        }
        let (function, trigger_id) = id;
        let path = queue_path(&ctx.dir, function, trigger_id);
        info!(function = %function, trigger = %trigger_id, path = %trigger.path, "trigger started");
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let delivery = tokio::spawn(deliver(
            ctx.clone(),
            function.clone(),
            trigger.clone(),
            path,
            stopped,
        ));
        running.insert(
            id.clone(),
            Running {
                trigger: trigger.clone(),
                stop: Some(stop),
                delivery,
            },
        );
    }
    let dir = ctx.dir.clone();
    let _ = tokio::task::spawn_blocking(move || remove_stale_queues(&dir, &desired)).await;
}

fn queue_path(dir: &Path, function: &FunctionKey, trigger: &str) -> PathBuf {
    dir.join(function.to_string())
        .join(format!("{trigger}.json"))
}

/// Removes the queues (and directories) of triggers that no longer exist: their function
/// was deleted or lost the trigger, so nothing would ever deliver them.
fn remove_stale_queues(dir: &Path, desired: &BTreeMap<(FunctionKey, String), Trigger>) {
    let wanted: BTreeSet<PathBuf> = desired
        .keys()
        .map(|(function, trigger)| queue_path(dir, function, trigger))
        .collect();
    // The directories of running triggers stay, even empty: their queues are saved there.
    let wanted_dirs: BTreeSet<PathBuf> = desired
        .keys()
        .map(|(function, _)| dir.join(function.to_string()))
        .collect();
    let Ok(functions) = std::fs::read_dir(dir) else {
        return;
    };
    for function in functions.flatten() {
        let function_dir = function.path();
        let Ok(queues) = std::fs::read_dir(&function_dir) else {
            continue;
        };
        for queue in queues.flatten() {
            let path = queue.path();
            let is_queue = path.extension().is_some_and(|e| e == "json");
            if is_queue && !wanted.contains(&path) {
                info!(queue = %path.display(), "removing the queue of a trigger that no longer exists");
                if let Err(e) = std::fs::remove_file(&path) {
                    warn!(queue = %path.display(), error = %e, "cannot remove");
                }
            }
        }
        // Only succeeds once empty (a .corrupt file stays for the operator).
        if !wanted_dirs.contains(&function_dir) {
            let _ = std::fs::remove_dir(&function_dir);
        }
    }
}

/// Runs one trigger: its line first when it holds one itself (on a named board), then its
/// source, queue and deliveries until `stop`; then gives the line back.
async fn deliver(
    ctx: Context,
    function: FunctionKey,
    trigger: Trigger,
    path: PathBuf,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    let held = match &trigger.source {
        spec::Source::Gpio(spec::GpioTrigger {
            line,
            hold: Some(grant),
            ..
        }) => match sources::Held::request(&ctx.hardware, &function, line, *grant).await {
            Ok(held) => Some(held),
            Err(e) => {
                error!(function = %function, %line, error = %e, "GPIO trigger cannot request its line; it never fires");
                return;
            }
        },
        _ => None,
    };
    run_trigger(ctx, function, trigger, path, stop).await;
    if let Some(held) = held {
        held.release().await;
    }
}

/// Runs one trigger's source, queue and deliveries until `stop`.
async fn run_trigger(
    ctx: Context,
    function: FunctionKey,
    trigger: Trigger,
    path: PathBuf,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    if let Some(parent) = path.parent()
        && let Err(e) = std::fs::create_dir_all(parent)
    {
        error!(function = %function, error = %e, dir = %parent.display(), "cannot create the trigger's queue directory; trigger not started");
        return;
    }
    let (mut journal, problem) = Journal::open(&path);
    if let Some(problem) = problem {
        warn!(function = %function, "trigger queue unreadable: {problem}");
    }
    let (events, mut incoming) = mpsc::unbounded_channel::<Message>();
    let source = match &trigger.source {
        spec::Source::Gpio(g) => {
            tokio::spawn(sources::gpio(Arc::clone(&ctx.hardware), g.clone(), events))
        }
        spec::Source::Schedule(s) => tokio::spawn(sources::schedule(s.clone(), events)),
        spec::Source::Sensor(s) => tokio::spawn(sources::sensor(
            Arc::clone(&ctx.hardware),
            s.clone(),
            journal.memo().cloned(),
            events,
        )),
    };
    let _source = AbortOnDrop(source);
    let mut retry = RETRY_START;
    let mut attempt: Option<std::pin::Pin<Box<dyn Future<Output = Outcome> + Send>>> = None;
    let mut waiting: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    let mut saving = SaveRetry::default();
    loop {
        // Only what is on disk is dispatched: while the queue cannot be saved, deliveries
        // wait (the events stay counted in memory) and the save is retried.
        if attempt.is_none()
            && waiting.is_none()
            && let Some(head) = journal.dispatchable()
        {
            attempt = Some(Box::pin(invoke(
                Arc::clone(&ctx.gateway),
                Arc::clone(&ctx.deliveries),
                function.clone(),
                trigger.clone(),
                head.clone(),
            )));
        }
        tokio::select! {
            _ = &mut stop => return,
            received = incoming.recv() => {
                let Some(message) = received else { return };
                take(&mut journal, message);
                // Everything already there goes into the same write.
                while let Ok(message) = incoming.try_recv() {
                    take(&mut journal, message);
                }
                saving.after(persist(&mut journal).await, &function);
            }
            outcome = optional(&mut attempt), if attempt.is_some() => {
                attempt = None;
                match outcome {
                    Outcome::Answered => {
                        retry = RETRY_START;
                        journal.pop();
                        saving.after(persist(&mut journal).await, &function);
                    }
                    Outcome::Retry(reason) => {
                        debug!(function = %function, trigger = %trigger.id(), %reason, retry_in = ?retry, "trigger invocation will be retried");
                        waiting = Some(Box::pin(tokio::time::sleep(retry)));
                        retry = (retry * 2).min(RETRY_MAX);
                    }
                }
            }
            () = optional(&mut waiting), if waiting.is_some() => {
                waiting = None;
            }
            () = optional(&mut saving.timer), if saving.timer.is_some() => {
                saving.timer = None;
                saving.after(persist(&mut journal).await, &function);
            }
        }
    }
}

/// Retrying the save of a trigger's queue that failed (a full or read-only disk): logged
/// once when it starts failing and once when it works again, retried with a backoff.
#[derive(Default)]
struct SaveRetry {
    failing_since: Option<Instant>,
    delay: Duration,
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl SaveRetry {
    /// Takes the outcome of a save.
    fn after(&mut self, saved: Result<(), String>, function: &FunctionKey) {
        let Err(e) = saved else {
            if let Some(since) = self.failing_since.take() {
                info!(function = %function, after = ?since.elapsed(), "trigger queue saved again; deliveries resume");
            }
            self.timer = None;
            return;
        };
        if self.failing_since.is_none() {
            self.failing_since = Some(Instant::now());
            self.delay = RETRY_START;
            error!(function = %function, error = %e, "trigger deliveries paused: the queue cannot be saved, and only saved events are delivered (they stay counted in memory); retrying");
        } else {
            debug!(function = %function, error = %e, "trigger queue still cannot be saved");
        }
        self.timer = Some(Box::pin(tokio::time::sleep(self.delay)));
        self.delay = (self.delay * 2).min(RETRY_MAX);
    }
}

fn take(journal: &mut Journal, message: Message) {
    match message {
        Message::Event { event, count } => journal.push(event, count),
        Message::Memo(memo) => journal.set_memo(memo),
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Saves the queue off the async threads (on failure the events stay in memory, not
/// delivered until they are saved).
async fn persist(journal: &mut Journal) -> Result<(), String> {
    let Some((path, bytes)) = journal.unsaved() else {
        return Ok(());
    };
    let written = tokio::task::spawn_blocking(move || {
        // Made again if someone removed it meanwhile.
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        crate::store::write_atomic(&path, &bytes, 0o600)
    })
    .await;
    match written {
        Ok(Ok(())) => {
            journal.saved();
            Ok(())
        }
        Ok(Err(e)) => Err(format!(
            "{}: {}",
            journal.path().display(),
            bramble_base::error_chain(&e)
        )),
        Err(e) => Err(format!("saving {} panicked: {e}", journal.path().display())),
    }
}

/// Waits for an optional future; never ready when there is none.
async fn optional<F: Future + Unpin>(future: &mut Option<F>) -> F::Output {
    match future {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

enum Outcome {
    /// The function answered (any status but the retried ones).
    Answered,
    /// Not delivered; try again.
    Retry(String),
}

/// One delivery attempt of `pending`, recorded in `deliveries` once it ended.
async fn invoke(
    gateway: Arc<Gateway<NodeProvider>>,
    deliveries: Arc<Deliveries>,
    function: FunctionKey,
    trigger: Trigger,
    pending: Pending,
) -> Outcome {
    let started = Instant::now();
    let (outcome, status) = attempt(&gateway, &function, &trigger, &pending).await;
    deliveries.record(Delivery {
        at_ms: journal::now_ms(),
        function: function.to_string(),
        trigger: trigger.id(),
        kind: trigger.kind().to_owned(),
        source: source_of(&trigger, &pending),
        sequence: pending.sequence,
        count: pending.count,
        status,
        outcome: match (&outcome, status) {
            (Outcome::Retry(_), _) => DeliveryOutcome::Retrying,
            (Outcome::Answered, s) if (1..400).contains(&s) => DeliveryOutcome::Delivered,
            (Outcome::Answered, _) => DeliveryOutcome::Failed,
        },
        ms: started.elapsed().as_secs_f64() * 1000.0,
    });
    outcome
}

/// What fired a delivery, for the dashboard: `GPIO17 falling`, the schedule, the reading.
fn source_of(trigger: &Trigger, pending: &Pending) -> String {
    let field = |name: &str| {
        pending.last.get(name).map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    };
    match &trigger.source {
        spec::Source::Gpio(g) => match field("edge") {
            Some(edge) => format!("{} {edge}", g.line),
            None => g.line.clone(),
        },
        spec::Source::Schedule(s) => s.text.clone(),
        spec::Source::Sensor(s) => match (field("value"), field("unit")) {
            (Some(value), Some(unit)) => format!("{} {value} {unit}", s.sensor),
            _ => s.sensor.clone(),
        },
    }
}

/// One delivery attempt: its outcome and the status answered (0 when the answer could not
/// be read).
async fn attempt(
    gateway: &Gateway<NodeProvider>,
    function: &FunctionKey,
    trigger: &Trigger,
    pending: &Pending,
) -> (Outcome, u16) {
    let request = match request(trigger, pending) {
        Ok(request) => request,
        Err(e) => {
            // Cannot happen with a parsed trigger; dropping the event beats retrying forever.
            error!(function = %function, error = %e, "cannot build the trigger's request; event dropped");
            return (Outcome::Answered, 0);
        }
    };
    let started = Instant::now();
    let response = gateway
        .invoke(&function.name, &function.namespace, request)
        .await;
    let status = response.status();
    // Read the answer to the end, so the connection to the function is reused.
    let mut body = response.into_body().into_data_stream();
    let mut answer = Vec::new();
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(chunk) if answer.len() < ANSWER_LOG_BYTES => answer.extend_from_slice(&chunk),
            Ok(_) => {}
            Err(e) => {
                return (
                    Outcome::Retry(format!("reading the answer failed: {e}")),
                    status.as_u16(),
                );
            }
        }
    }
    let answer = String::from_utf8_lossy(&answer[..answer.len().min(ANSWER_LOG_BYTES)]);
    let answer = answer.trim();
    if matches!(status.as_u16(), 429 | 502 | 503 | 504) {
        return (
            Outcome::Retry(format!("{status}: {answer}")),
            status.as_u16(),
        );
    }
    if status.is_success() {
        debug!(function = %function, trigger = %trigger.id(), sequence = pending.sequence, count = pending.count, %status, took = ?started.elapsed(), "trigger delivered");
    } else {
        warn!(function = %function, trigger = %trigger.id(), sequence = pending.sequence, %status, %answer, "trigger delivered; the function answered with an error");
    }
    (Outcome::Answered, status.as_u16())
}

/// The request a function receives for `pending`.
fn request(trigger: &Trigger, pending: &Pending) -> Result<axum::http::Request<Body>, String> {
    let builder = axum::http::Request::post(&trigger.path)
        .header("X-Bramble-Trigger", trigger.kind())
        .header("X-Bramble-Sequence", pending.sequence)
        .header("X-Bramble-Count", pending.count)
        .header(
            "X-Call-Id",
            format!("trigger-{}-{}", trigger.id(), pending.sequence),
        );
    let request = match &trigger.source {
        spec::Source::Schedule(_) => builder
            .header("X-Topic", spec::CRON_TOPIC)
            .header("X-Connector", "cron-connector")
            .body(Body::empty()),
        spec::Source::Gpio(_) | spec::Source::Sensor(_) => builder
            .header("Content-Type", "application/json")
            .body(Body::from(body(trigger, pending).to_string())),
    };
    request.map_err(|e| e.to_string())
}

/// The JSON body: the last event, plus `trigger`, `sequence`, `count` and (coalesced) `first`.
fn body(trigger: &Trigger, pending: &Pending) -> Value {
    let mut body = match &pending.last {
        Value::Object(fields) => fields.clone(),
        other => {
            let mut fields = serde_json::Map::new();
            fields.insert("event".to_owned(), other.clone());
            fields
        }
    };
    body.insert("trigger".to_owned(), trigger.kind().into());
    body.insert("sequence".to_owned(), pending.sequence.into());
    body.insert("count".to_owned(), pending.count.into());
    if pending.count > 1
        && let Some(first) = &pending.first
    {
        body.insert("first".to_owned(), first.clone());
    }
    Value::Object(body)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn gpio_trigger() -> Trigger {
        let annotations = BTreeMap::from([(
            spec::GPIO_KEY.to_owned(),
            "GPIO17:falling:path=/press".to_owned(),
        )]);
        spec::parse(&annotations).unwrap().remove(0)
    }

    #[test]
    fn the_body_is_the_last_event_with_the_count() {
        let pending = Pending {
            sequence: 7,
            count: 3,
            first: Some(json!({"line": "GPIO17", "line_seqno": 10})),
            last: json!({"line": "GPIO17", "edge": "falling", "level": 0, "line_seqno": 14}),
            queued_at_ms: 0,
        };
        let body = body(&gpio_trigger(), &pending);
        assert_eq!(body["trigger"], "gpio");
        assert_eq!(body["sequence"], 7);
        assert_eq!(body["count"], 3);
        assert_eq!(body["edge"], "falling");
        assert_eq!(body["line_seqno"], 14);
        assert_eq!(body["first"]["line_seqno"], 10);
        let single = Pending {
            count: 1,
            ..pending
        };
        assert!(super::body(&gpio_trigger(), &single).get("first").is_none());
    }

    #[test]
    fn requests_carry_the_path_and_headers() {
        let pending = Pending {
            sequence: 2,
            count: 1,
            first: Some(json!({})),
            last: json!({}),
            queued_at_ms: 0,
        };
        let r = request(&gpio_trigger(), &pending).unwrap();
        assert_eq!(r.method(), "POST");
        assert_eq!(r.uri(), "/press");
        assert_eq!(r.headers()["X-Bramble-Trigger"], "gpio");
        assert_eq!(r.headers()["X-Bramble-Sequence"], "2");
        assert_eq!(r.headers()["Content-Type"], "application/json");
        let cron = spec::parse(&BTreeMap::from([
            (spec::TOPIC_KEY.to_owned(), spec::CRON_TOPIC.to_owned()),
            (spec::SCHEDULE_KEY.to_owned(), "@hourly".to_owned()),
        ]))
        .unwrap()
        .remove(0);
        let r = request(&cron, &pending).unwrap();
        assert_eq!(r.uri(), "/");
        assert_eq!(r.headers()["X-Topic"], "cron-function");
        assert_eq!(r.headers()["X-Connector"], "cron-connector");
    }

    #[test]
    fn stale_queues_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let kept = FunctionKey::new("a", "ns");
        let gone = FunctionKey::new("b", "ns");
        for (function, trigger) in [
            (&kept, "gpio-GPIO17"),
            (&kept, "schedule"),
            (&gone, "schedule"),
        ] {
            let path = queue_path(dir.path(), function, trigger);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, b"{}").unwrap();
        }
        let desired = BTreeMap::from([((kept.clone(), "gpio-GPIO17".to_owned()), gpio_trigger())]);
        remove_stale_queues(dir.path(), &desired);
        assert!(queue_path(dir.path(), &kept, "gpio-GPIO17").exists());
        assert!(!queue_path(dir.path(), &kept, "schedule").exists());
        assert!(!dir.path().join(gone.to_string()).exists());
        // A running trigger's directory stays, even before its queue is first saved.
        std::fs::remove_file(queue_path(dir.path(), &kept, "gpio-GPIO17")).unwrap();
        remove_stale_queues(dir.path(), &desired);
        assert!(dir.path().join(kept.to_string()).is_dir());
    }
}
