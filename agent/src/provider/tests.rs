//! The provider against the scripted runtime, on tokio's paused clock.

use std::sync::Arc;
use std::time::Duration;

use bramble_gateway::provider::{Provider, ProviderError};
use bramble_gateway::types::{FunctionDeployment, FunctionState};
use bramble_runtime::PullPolicy;
use tokio::time::Instant;

use super::{LocalProvider, ProviderSettings};
use crate::function::Defaults;
use crate::runtime::fake::{Call, FakeRuntime, Script};
use crate::store::Store;
use bramble_hardware::{BackendChoice, Hardware, HardwareConfig};

pub(super) struct Bench {
    pub(super) fake: FakeRuntime,
    pub(super) provider: Arc<LocalProvider<FakeRuntime>>,
    _dir: tempfile::TempDir,
}

pub(super) fn bench() -> Bench {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("state"), "openfaas-fn").unwrap());
    let hardware = Hardware::new(HardwareConfig {
        backend: BackendChoice::Simulator,
        socket_dir: Some(dir.path().join("hw")),
        ..HardwareConfig::default()
    })
    .unwrap();
    let fake = FakeRuntime::default();
    let settings = ProviderSettings {
        default_namespace: "openfaas-fn".into(),
        pull_policy: PullPolicy::IfNotPresent,
        defaults: Defaults {
            memory_bytes: Some(128 << 20),
            cpu_millis: None,
            pids: 64,
            timeout: Duration::from_secs(60),
        },
        ready_timeout: Duration::from_secs(60),
        stop_grace: Duration::from_secs(10),
        memory_budget: Some(512 << 20),
        image_gc_after: None,
    };
    let provider = LocalProvider::start(fake.clone(), store, hardware, settings);
    Bench {
        fake,
        provider,
        _dir: dir,
    }
}

pub(super) fn deployment(name: &str, image: &str) -> FunctionDeployment {
    FunctionDeployment {
        service: name.into(),
        image: image.into(),
        ..FunctionDeployment::default()
    }
}

async fn state_of(provider: &LocalProvider<FakeRuntime>, name: &str) -> FunctionState {
    provider
        .get_function(name, "openfaas-fn", false)
        .await
        .unwrap()
        .and_then(|f| f.bramble)
        .map(|b| b.state)
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_start_while_containerd_is_down_answers_503_at_once() {
    let b = bench();
    assert!(b.provider.wait_started(Duration::from_secs(5)).await);
    b.fake.script(
        "docker.io/library/img:latest",
        Script::ready_after(Duration::from_millis(20)),
    );
    b.provider.deploy(deployment("f", "img")).await.unwrap();
    b.provider.scale("f", "openfaas-fn", 0).await.unwrap();
    while state_of(&b.provider, "f").await != FunctionState::ScaledToZero {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    b.fake.set_unavailable(true);
    let asked = Instant::now();
    let answer = b
        .provider
        .endpoint("f", "openfaas-fn", Duration::from_secs(60))
        .await;
    let took = asked.elapsed();
    match answer {
        Err(ProviderError::Unavailable(message)) => {
            assert!(message.contains("containerd unavailable"), "{message}");
        }
        other => panic!("expected 503, got {other:?}"),
    }
    assert!(
        took < Duration::from_millis(100),
        "answered after {took:?}, not at once"
    );
    // containerd back: the next request is served.
    b.fake.set_unavailable(false);
    let endpoint = b
        .provider
        .endpoint("f", "openfaas-fn", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(endpoint.timeout, Duration::from_secs(60));
}

#[tokio::test(start_paused = true)]
async fn a_deploy_beyond_the_memory_budget_is_refused_with_the_numbers_and_changes_nothing() {
    let b = bench();
    assert!(b.provider.wait_started(Duration::from_secs(5)).await);
    b.fake.script(
        "docker.io/library/img:latest",
        Script::ready_after(Duration::from_millis(20)),
    );
    for name in ["a", "b", "c", "d"] {
        b.provider.deploy(deployment(name, "img")).await.unwrap();
    }
    let refused = b.provider.deploy(deployment("e", "img")).await.unwrap_err();
    let text = refused.to_string();
    assert!(
        text.contains("needs 128 MiB") && text.contains("only 0 MiB of the 512 MiB"),
        "{text}"
    );
    assert!(
        b.provider
            .get_function("e", "openfaas-fn", false)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        b.fake
            .containers()
            .iter()
            .filter(|c| c.starts_with("e."))
            .count(),
        0
    );
}

#[tokio::test(start_paused = true)]
async fn a_delete_answers_at_once_and_a_deploy_of_the_same_name_waits_for_its_replicas() {
    let b = bench();
    assert!(b.provider.wait_started(Duration::from_secs(5)).await);
    let image = "docker.io/library/img:latest";
    b.fake.script(
        image,
        Script {
            stop_takes: Duration::from_secs(10),
            ..Script::ready_after(Duration::from_millis(20))
        },
    );
    b.provider.deploy(deployment("f", "img")).await.unwrap();
    b.provider
        .endpoint("f", "openfaas-fn", Duration::from_secs(5))
        .await
        .unwrap();
    let asked = Instant::now();
    b.provider.delete("f", "openfaas-fn").await.unwrap();
    assert_eq!(
        asked.elapsed(),
        Duration::ZERO,
        "the delete waited for the replica"
    );
    // Gone from the API at once, while its replica still takes its grace period.
    assert!(
        b.provider
            .get_function("f", "openfaas-fn", false)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        b.provider
            .list_functions("openfaas-fn")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(b.fake.running().len(), 1);
    // A deploy of the same name is queued behind the old replicas, never mixed with them.
    let redeployed = Instant::now();
    b.provider.deploy(deployment("f", "img")).await.unwrap();
    let old = "f.openfaas-fn-1-0".to_owned();
    let gone = b
        .fake
        .when(&Call::Delete(old.clone()))
        .expect("the old container was removed");
    assert!(gone <= Instant::now());
    assert_eq!(redeployed.elapsed(), Duration::from_secs(10));
    b.provider
        .endpoint("f", "openfaas-fn", Duration::from_secs(5))
        .await
        .unwrap();
    // In order: the old container removed, then the new deployment's made and started.
    let calls: Vec<Call> = b.fake.calls().into_iter().map(|(_, c)| c).collect();
    let position = |call: &Call| calls.iter().rposition(|c| c == call);
    let (deleted, created, started) = (
        position(&Call::Delete(old.clone())),
        position(&Call::Create(old.clone())),
        position(&Call::Start(old.clone())),
    );
    assert!(deleted < created && created < started, "{calls:?}");
}

#[tokio::test(start_paused = true)]
async fn a_deploy_of_a_name_whose_replicas_are_not_gone_in_time_is_refused_and_changes_nothing() {
    let b = bench();
    assert!(b.provider.wait_started(Duration::from_secs(5)).await);
    let gone_after = Duration::from_secs(3600);
    b.fake.script(
        "docker.io/library/img:latest",
        Script {
            remove_takes: gone_after,
            ..Script::ready_after(Duration::from_millis(20))
        },
    );
    b.provider.deploy(deployment("f", "img")).await.unwrap();
    b.provider
        .endpoint("f", "openfaas-fn", Duration::from_secs(5))
        .await
        .unwrap();
    b.provider.delete("f", "openfaas-fn").await.unwrap();
    let asked = Instant::now();
    let refused = b.provider.deploy(deployment("f", "img")).await;
    // Patient for the grace period, the function's timeout and some slack (10 + 60 + 10 s).
    assert_eq!(asked.elapsed(), Duration::from_secs(80));
    match refused {
        Err(ProviderError::Conflict(message)) => {
            assert!(message.contains("still stopping"), "{message}");
        }
        other => panic!("not a conflict: {other:?}"),
    }
    // Nothing of the refused deploy is left: not listed, nothing new created.
    assert!(
        b.provider
            .list_functions("openfaas-fn")
            .await
            .unwrap()
            .is_empty()
    );
    let creates = |b: &Bench| {
        b.fake
            .calls()
            .into_iter()
            .filter(|(_, c)| matches!(c, Call::Create(_)))
            .count()
    };
    assert_eq!(creates(&b), 1);
    // Once the old replica is gone, the same deploy goes through.
    tokio::time::sleep(gone_after).await;
    b.provider.deploy(deployment("f", "img")).await.unwrap();
    b.provider
        .endpoint("f", "openfaas-fn", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(creates(&b), 2);
}
