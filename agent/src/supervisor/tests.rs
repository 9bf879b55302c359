//! The supervisor against the scripted runtime, on tokio's paused clock: no root, no
//! containerd. Each test names the behaviour it pins down.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bramble_gateway::types::{ExitReason, FunctionDeployment, FunctionState};
use tokio::time::Instant;

use super::{Command, Context, Handle, StatusView, spawn};
use crate::function::{Defaults, FunctionKey, SCALE_ZERO, SCALE_ZERO_DURATION};
use crate::runtime::NodeRuntime;
use crate::runtime::fake::{Call, Exit, FakeRuntime, Script};
use crate::store::{FunctionRecord, Store, StoreError};
use bramble_hardware::{BackendChoice, Hardware, HardwareConfig};

const READY_TIMEOUT: Duration = Duration::from_secs(5);
const STOP_GRACE: Duration = Duration::from_secs(10);
/// A bound on every wait, so a broken behaviour fails instead of hanging (virtual time).
const PATIENCE: Duration = Duration::from_secs(600);

struct Bench {
    fake: FakeRuntime,
    ctx: Arc<Context<FakeRuntime>>,
    key: FunctionKey,
    _dir: tempfile::TempDir,
}

fn bench() -> Bench {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("state"), "openfaas-fn").unwrap());
    let hardware = Hardware::new(HardwareConfig {
        backend: BackendChoice::Simulator,
        socket_dir: Some(dir.path().join("hw")),
        ..HardwareConfig::default()
    })
    .unwrap();
    let fake = FakeRuntime::default();
    let ctx = Arc::new(Context {
        runtime: fake.clone(),
        store,
        hardware,
        defaults: Defaults {
            memory_bytes: None,
            cpu_millis: None,
            pids: 64,
            timeout: Duration::from_secs(60),
        },
        ready_timeout: READY_TIMEOUT,
        stop_grace: STOP_GRACE,
        changes: tokio::sync::watch::Sender::new(()),
    });
    Bench {
        fake,
        ctx,
        key: FunctionKey::new("f", "openfaas-fn"),
        _dir: dir,
    }
}

/// A one-replica record that scales to zero after `idle` (`"2m"`) without requests.
fn idle_record(idle: &str) -> FunctionRecord {
    let mut r = record("img", 1, 1);
    r.deployment.labels = BTreeMap::from([
        (SCALE_ZERO.to_owned(), "true".to_owned()),
        (SCALE_ZERO_DURATION.to_owned(), idle.to_owned()),
    ]);
    r
}

/// A stock OpenFaaS function: ready at once, it takes its whole grace period to exit after
/// SIGTERM.
fn slow_stopper() -> Script {
    Script {
        stop_takes: STOP_GRACE,
        ..Script::ready_after(Duration::from_millis(20))
    }
}

fn record(image: &str, replicas: u64, generation: u64) -> FunctionRecord {
    FunctionRecord {
        deployment: FunctionDeployment {
            service: "f".into(),
            image: image.into(),
            namespace: Some("openfaas-fn".into()),
            ..FunctionDeployment::default()
        },
        replicas,
        created_at: SystemTime::UNIX_EPOCH,
        generation,
        previous: None,
    }
}

impl Bench {
    /// Saves `record` as the function's, as the provider does before it tells the supervisor.
    async fn save(&self, record: &FunctionRecord) {
        self.ctx
            .store
            .update(|s| {
                s.functions
                    .entry("openfaas-fn".into())
                    .or_default()
                    .insert("f".into(), record.clone());
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
    }

    async fn deploy(&self, record: FunctionRecord) -> Handle {
        self.save(&record).await;
        spawn(Arc::clone(&self.ctx), self.key.clone(), record, Vec::new())
    }

    fn saved(&self) -> FunctionRecord {
        self.ctx
            .store
            .snapshot()
            .function("f", "openfaas-fn")
            .cloned()
            .unwrap()
    }

    /// Waits until the saved record satisfies `test` (the supervisor saves after it
    /// publishes).
    async fn saved_when(
        &self,
        what: &str,
        mut test: impl FnMut(&FunctionRecord) -> bool,
    ) -> FunctionRecord {
        let mut states = self.ctx.store.subscribe();
        let found = tokio::time::timeout(
            PATIENCE,
            states.wait_for(|s| s.function("f", "openfaas-fn").is_some_and(&mut test)),
        )
        .await;
        assert!(
            matches!(found, Ok(Ok(_))),
            "never saved {what}: {:?}",
            self.saved()
        );
        self.saved()
    }

    fn id(&self, generation: u64, replica: u64) -> String {
        self.key.container_id(generation, replica)
    }
}

/// Waits (in virtual time) until the status satisfies `test`.
async fn until(handle: &Handle, what: &str, test: impl FnMut(&StatusView) -> bool) -> StatusView {
    let mut status = handle.status.clone();
    match tokio::time::timeout(PATIENCE, status.wait_for(test)).await {
        Ok(Ok(view)) => view.clone(),
        _ => panic!("never {what}: {:?}", handle.status.borrow()),
    }
}

#[tokio::test(start_paused = true)]
async fn a_scaled_down_replica_leaves_the_route_then_stops_once_its_requests_finished() {
    let b = bench();
    b.fake
        .script("img", Script::ready_after(Duration::from_millis(20)));
    let handle = b.deploy(record("img", 2, 1)).await;
    until(&handle, "ready with 2", |v| v.available == 2).await;
    // One request in flight to each replica.
    let (first, first_guard) = handle.route.pick().unwrap();
    let (second, second_guard) = handle.route.pick().unwrap();
    assert_ne!(first, second);
    let gone = b.id(1, 1);
    let gone_addr = b
        .fake
        .list()
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.id == gone)
        .unwrap()
        .ip
        .unwrap();
    let (kept_guard, gone_guard) = if first.ip() == gone_addr {
        (second_guard, first_guard)
    } else {
        (first_guard, second_guard)
    };
    b.save(&record("img", 1, 1)).await;
    handle.commands.send(Command::Scale(1)).unwrap();
    until(&handle, "down to 1", |v| v.desired == 1 && v.available == 1).await;
    // Out of the route at once: every new request goes to the replica that stays.
    for _ in 0..10 {
        let (addr, _) = handle.route.pick().unwrap();
        assert_ne!(
            addr.ip(),
            gone_addr,
            "a request was routed to the replica scaled away"
        );
    }
    // ... but not stopped while its request runs (here for longer than the grace period).
    tokio::time::sleep(STOP_GRACE * 3).await;
    assert_eq!(
        b.fake.when(&Call::Stop(gone.clone())),
        None,
        "stopped while serving"
    );
    drop(kept_guard);
    let finished = Instant::now();
    drop(gone_guard);
    tokio::time::sleep(Duration::from_millis(1)).await;
    let stopped = b
        .fake
        .when(&Call::Stop(gone.clone()))
        .expect("never stopped");
    assert_eq!(
        stopped, finished,
        "the stop waited longer than the last request"
    );
    // Its container stays as the spare for a fast restart; the other replica runs on.
    assert!(b.fake.containers().contains(&gone));
    assert_eq!(b.fake.running(), vec![b.id(1, 0)]);
}

#[tokio::test(start_paused = true)]
async fn an_update_that_never_becomes_ready_is_rolled_back_and_reported() {
    let b = bench();
    b.fake
        .script("good", Script::ready_after(Duration::from_millis(20)));
    b.fake.script("bad", Script::never_ready());
    let old = record("good", 1, 1);
    let handle = b.deploy(old.clone()).await;
    until(&handle, "ready", |v| v.state == FunctionState::Ready).await;
    let serving = handle.route.pick().unwrap().0;
    let update = FunctionRecord {
        deployment: FunctionDeployment {
            image: "bad".into(),
            ..old.deployment.clone()
        },
        generation: 2,
        previous: Some(Box::new(old.clone())),
        ..old.clone()
    };
    b.save(&update).await;
    handle
        .commands
        .send(Command::Update(Box::new(update)))
        .unwrap();
    until(&handle, "updating", |v| v.state == FunctionState::Updating).await;
    // The old version serves throughout.
    assert_eq!(handle.route.pick().unwrap().0, serving);
    let view = until(&handle, "rolled back", |v| v.state == FunctionState::Ready).await;
    let message = view.message.unwrap_or_default();
    assert!(
        message.contains("update to bad failed") && message.contains("rolled back"),
        "{message}"
    );
    assert_eq!(handle.route.pick().unwrap().0, serving);
    // Saved as the version that serves, nothing pending; the new containers are gone.
    let saved = b.saved_when("the rollback", |r| r.generation == 1).await;
    assert_eq!(
        (saved.deployment.image.as_str(), saved.previous.is_none()),
        ("good", true)
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(b.fake.when(&Call::Delete(b.id(2, 0))).is_some());
    assert_eq!(b.fake.running(), vec![b.id(1, 0)]);
}

#[tokio::test(start_paused = true)]
async fn a_rollout_interrupted_by_a_crash_resumes_with_the_old_version_serving_meanwhile() {
    let b = bench();
    b.fake
        .script("v1", Script::ready_after(Duration::from_millis(20)));
    b.fake
        .script("v2", Script::ready_after(Duration::from_secs(2)));
    // What the crashed daemon left: generation 1 running, generation 2 saved with its
    // rollback target and its container created but not started.
    let v1 = record("v1", 1, 1);
    let first = b.deploy(v1.clone()).await;
    until(&first, "v1 ready", |v| v.state == FunctionState::Ready).await;
    drop(first); // the supervisor ends with its command channel
    let v2 = FunctionRecord {
        deployment: FunctionDeployment {
            image: "v2".into(),
            ..v1.deployment.clone()
        },
        generation: 2,
        previous: Some(Box::new(v1.clone())),
        ..v1.clone()
    };
    b.save(&v2).await;
    let adopted = b.fake.adopt().await.unwrap();
    let old_ip = adopted[0].ip.unwrap();
    let handle = spawn(Arc::clone(&b.ctx), b.key.clone(), v2, adopted);
    until(&handle, "the old version serving again", |v| {
        v.available == 1
    })
    .await;
    let view = handle.status.borrow().clone();
    assert_eq!(view.state, FunctionState::Updating);
    assert_eq!(handle.route.pick().unwrap().0.ip(), old_ip);
    until(&handle, "switched to v2", |v| {
        v.state == FunctionState::Ready
    })
    .await;
    let (addr, guard) = handle.route.pick().unwrap();
    assert_ne!(addr.ip(), old_ip);
    drop(guard);
    // Settled: nothing pending in the saved record; the old generation removed after its drain.
    let saved = b
        .saved_when("the settled rollout", |r| r.previous.is_none())
        .await;
    assert_eq!(saved.generation, 2);
    tokio::time::sleep(STOP_GRACE).await;
    assert!(b.fake.when(&Call::Delete(b.id(1, 0))).is_some());
    assert_eq!(b.fake.running(), vec![b.id(2, 0)]);
}

#[tokio::test(start_paused = true)]
async fn the_restart_backoff_doubles_and_resets_after_a_stable_run() {
    let b = bench();
    let crashing = Script {
        exits_after: Some((Duration::from_secs(1), Exit::Code(3))),
        ..Script::ready_after(Duration::from_millis(10))
    };
    b.fake.script("img", crashing);
    let handle = b.deploy(record("img", 1, 1)).await;
    let events = b.fake.subscribe();
    let provider = pump(&b, events, &handle);
    until(&handle, "five restarts", |v| v.restarts >= 5).await;
    let starts = start_times(&b);
    let gaps: Vec<Duration> = starts
        .windows(2)
        .map(|w| w[1] - w[0] - Duration::from_secs(1))
        .collect();
    assert_eq!(
        gaps[..4],
        [250, 500, 1000, 2000].map(Duration::from_millis),
        "backoff after each crash"
    );
    let view = until(&handle, "crash-looping", |v| {
        v.state == FunctionState::CrashLooping
    })
    .await;
    assert_eq!(view.last_exit, Some(ExitReason::ExitCode(3)));
    // A run longer than 30 s before the crash starts the backoff afresh.
    b.fake.script(
        "img",
        Script {
            exits_after: Some((Duration::from_secs(31), Exit::Oom)),
            ..crashing
        },
    );
    let before = start_times(&b).len();
    until(&handle, "a stable run and its crash", |v| {
        v.last_exit == Some(ExitReason::Oom)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let starts = start_times(&b);
    let last = starts[before..].windows(2).next().map(|w| w[1] - w[0]);
    assert_eq!(
        last,
        Some(Duration::from_secs(31) + Duration::from_millis(250))
    );
    provider.abort();
}

#[tokio::test(start_paused = true)]
async fn an_oom_reported_after_the_exit_is_still_an_oom_and_not_the_next_exits() {
    let b = bench();
    b.fake.script(
        "img",
        Script {
            exits_after: Some((Duration::from_secs(1), Exit::OomReportedLate)),
            ..Script::ready_after(Duration::from_millis(10))
        },
    );
    let handle = b.deploy(record("img", 1, 1)).await;
    let events = b.fake.subscribe();
    let provider = pump(&b, events, &handle);
    until(&handle, "the late OOM told", |v| {
        v.restarts == 1 && v.last_exit == Some(ExitReason::Oom)
    })
    .await;
    // The restarted task exits by itself: told as it is, not as the earlier OOM.
    b.fake.script(
        "img",
        Script {
            exits_after: Some((Duration::from_secs(1), Exit::Code(3))),
            ..Script::ready_after(Duration::from_millis(10))
        },
    );
    let view = until(&handle, "the next exit", |v| v.restarts >= 2).await;
    assert_eq!(view.last_exit, Some(ExitReason::ExitCode(3)));
    provider.abort();
}

/// Starts of the function's containers, in order.
fn start_times(b: &Bench) -> Vec<Instant> {
    b.fake
        .calls()
        .into_iter()
        .filter(|(_, c)| matches!(c, Call::Start(_)))
        .map(|(at, _)| at)
        .collect()
}

/// Hands task events to the supervisor, as the provider does.
fn pump(
    b: &Bench,
    mut events: tokio::sync::broadcast::Receiver<bramble_runtime::TaskEvent>,
    handle: &Handle,
) -> tokio::task::JoinHandle<()> {
    let commands = handle.commands.clone();
    let _ = b;
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            let command = match event {
                bramble_runtime::TaskEvent::Exited {
                    container,
                    pid,
                    exit_status,
                    ..
                } => Command::Exited {
                    container,
                    pid,
                    exit_status,
                },
                bramble_runtime::TaskEvent::Oom { container } => Command::Oom { container },
                _ => continue,
            };
            let _ = commands.send(command);
        }
    })
}

#[tokio::test(start_paused = true)]
async fn an_idle_function_is_scaled_to_zero() {
    let b = bench();
    b.fake
        .script("img", Script::ready_after(Duration::from_millis(20)));
    let handle = b.deploy(idle_record("2m")).await;
    until(&handle, "ready", |v| v.state == FunctionState::Ready).await;
    // A request at 1 min starts the idle clock afresh.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let used = Instant::now();
    drop(handle.route.pick().unwrap());
    let view = until(&handle, "scaled to zero", |v| {
        v.state == FunctionState::ScaledToZero
    })
    .await;
    assert_eq!(view.desired, 0);
    let after = Instant::now() - used;
    assert!(
        after >= Duration::from_secs(120) && after <= Duration::from_secs(122),
        "scaled to zero {after:?} after the last request"
    );
    b.saved_when("the scale to zero", |r| r.replicas == 0).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(b.fake.running().is_empty());
    assert!(
        b.fake.containers().contains(&b.id(1, 0)),
        "kept for a fast restart"
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_in_flight_keeps_an_idle_function_up() {
    let b = bench();
    b.fake
        .script("img", Script::ready_after(Duration::from_millis(20)));
    let handle = b.deploy(idle_record("2m")).await;
    until(&handle, "ready", |v| v.state == FunctionState::Ready).await;
    let (_, long_request) = handle.route.pick().unwrap();
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(
        handle.status.borrow().state,
        FunctionState::Ready,
        "scaled to zero during a request"
    );
    drop(long_request);
    until(&handle, "scaled to zero once it ended", |v| {
        v.state == FunctionState::ScaledToZero
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_request_during_a_stop_starts_another_replica_at_once() {
    let b = bench();
    b.fake.script("img", slow_stopper());
    let handle = b.deploy(record("img", 1, 1)).await;
    until(&handle, "ready", |v| v.state == FunctionState::Ready).await;
    b.save(&record("img", 0, 1)).await;
    handle.commands.send(Command::Scale(0)).unwrap();
    let view = until(&handle, "stopping", |v| v.state == FunctionState::Stopping).await;
    assert_eq!((view.desired, view.available), (0, 0));
    // A request arrives right after the scale to zero.
    let asked = Instant::now();
    handle.commands.send(Command::Wake).unwrap();
    until(&handle, "serving again", |v| v.available == 1).await;
    let waited = asked.elapsed();
    assert!(
        waited < Duration::from_secs(1),
        "the request waited {waited:?} (the old replica takes {STOP_GRACE:?} to stop)"
    );
    // The old replica still had its whole grace period, beside the new one.
    let old = b.id(1, 0);
    let new = b.id(1, 1);
    assert_eq!(
        b.fake.when(&Call::Stopped(old.clone())),
        None,
        "the old replica was cut short"
    );
    assert!(b.fake.running().contains(&old) && b.fake.running().contains(&new));
    tokio::time::sleep(STOP_GRACE).await;
    let stop = b.fake.when(&Call::Stop(old.clone())).unwrap();
    let stopped = b.fake.when(&Call::Stopped(old.clone())).unwrap();
    assert_eq!(stopped - stop, STOP_GRACE);
    assert_eq!(b.fake.running(), vec![new.clone()]);
    // Its stopped container stays as the spare: the next scale from zero restarts it.
    b.save(&record("img", 0, 1)).await;
    handle.commands.send(Command::Scale(0)).unwrap();
    until(&handle, "stopping", |v| v.state == FunctionState::Stopping).await;
    handle.commands.send(Command::Wake).unwrap();
    until(&handle, "serving again", |v| v.available == 1).await;
    let restarts = b
        .fake
        .calls()
        .into_iter()
        .filter(|(_, c)| *c == Call::Start(old.clone()))
        .count();
    assert_eq!(restarts, 2, "the spare container was not reused");
    tokio::time::sleep(STOP_GRACE * 2).await;
    // Never more than one spare: two containers in all, one running.
    assert_eq!(b.fake.containers().len(), 2, "{:?}", b.fake.containers());
    assert_eq!(b.fake.running(), vec![old]);
    let view = handle.status.borrow().clone();
    assert_eq!((view.state, view.available), (FunctionState::Ready, 1));
}

#[tokio::test(start_paused = true)]
async fn a_scale_to_zero_reads_stopping_until_the_replicas_are_gone() {
    let b = bench();
    b.fake.script(
        "img",
        Script {
            stop_takes: Duration::from_secs(4),
            ..Script::ready_after(Duration::from_millis(20))
        },
    );
    let handle = b.deploy(record("img", 2, 1)).await;
    until(&handle, "ready", |v| v.available == 2).await;
    b.save(&record("img", 0, 1)).await;
    let scaled = Instant::now();
    handle.commands.send(Command::Scale(0)).unwrap();
    until(&handle, "stopping", |v| v.state == FunctionState::Stopping).await;
    assert!(
        handle.route.pick().is_none(),
        "a stopping replica is still routed"
    );
    until(&handle, "scaled to zero", |v| {
        v.state == FunctionState::ScaledToZero
    })
    .await;
    assert_eq!(scaled.elapsed(), Duration::from_secs(4));
}

#[tokio::test(start_paused = true)]
async fn a_request_waits_for_a_stopping_replica_only_when_every_slot_is_held() {
    let b = bench();
    b.fake.script("img", slow_stopper());
    let max = crate::function::MAX_REPLICAS;
    let handle = b.deploy(record("img", max, 1)).await;
    until(&handle, "ready", |v| v.available == max).await;
    // Down, up and down again faster than the replicas exit: both halves of the slots stop.
    b.save(&record("img", 0, 1)).await;
    handle.commands.send(Command::Scale(0)).unwrap();
    let first_stop = Instant::now();
    until(&handle, "stopping", |v| v.state == FunctionState::Stopping).await;
    b.save(&record("img", max, 1)).await;
    handle.commands.send(Command::Scale(max)).unwrap();
    until(&handle, "ready beside the stopping ones", |v| {
        v.available == max
    })
    .await;
    b.save(&record("img", 0, 1)).await;
    handle.commands.send(Command::Scale(0)).unwrap();
    until(&handle, "stopping", |v| v.state == FunctionState::Stopping).await;
    assert_eq!(b.fake.running().len(), 2 * usize::try_from(max).unwrap());
    // A request now has no slot: it waits for the first replica to exit, and says so.
    handle.commands.send(Command::Wake).unwrap();
    let view = until(&handle, "waiting for a slot", |v| {
        v.message.as_deref().is_some_and(|m| m.contains("slots"))
    })
    .await;
    assert_eq!(view.available, 0);
    until(&handle, "serving again", |v| v.available == 1).await;
    let waited = first_stop.elapsed();
    assert!(
        waited >= STOP_GRACE && waited < STOP_GRACE + Duration::from_secs(1),
        "served {waited:?} after the first stop"
    );
    assert_eq!(handle.status.borrow().message, None);
}

#[tokio::test(start_paused = true)]
async fn a_request_during_an_idle_scale_down_starts_another_replica_at_once() {
    let b = bench();
    b.fake.script("img", slow_stopper());
    let handle = b.deploy(idle_record("1m")).await;
    until(&handle, "ready", |v| v.state == FunctionState::Ready).await;
    until(&handle, "stopping for idleness", |v| {
        v.state == FunctionState::Stopping
    })
    .await;
    let old = b.id(1, 0);
    assert_eq!(b.fake.running(), vec![old.clone()]);
    let asked = Instant::now();
    handle.commands.send(Command::Wake).unwrap();
    until(&handle, "serving again", |v| v.available == 1).await;
    let waited = asked.elapsed();
    assert!(
        waited < Duration::from_secs(1),
        "the request waited {waited:?} (the idle replica takes {STOP_GRACE:?} to stop)"
    );
    assert!(
        b.fake.running().contains(&old) && b.fake.running().len() == 2,
        "the idle replica was cut short: {:?}",
        b.fake.running()
    );
    tokio::time::sleep(STOP_GRACE).await;
    assert_eq!(
        b.fake.when(&Call::Stopped(old.clone())).unwrap() - b.fake.when(&Call::Stop(old)).unwrap(),
        STOP_GRACE
    );
    assert_eq!(b.fake.running(), vec![b.id(1, 1)]);
}
