//! Stopping without making anyone wait (issue 14), against a stock-OpenFaaS-like function
//! that takes its whole grace period to exit after SIGTERM (the fixture with
//! `ON_SIGTERM=ignore`: of-watchdog waits out its timeouts the same way): a request that
//! arrives while replicas stop is served at once by a new replica; deletes and scale-downs
//! answer as soon as the change is stored; a redeploy of a deleted name waits for the old
//! replicas instead of mixing with them; a rollout never holds requests for the old version.

use std::path::Path;
use std::time::{Duration, Instant};

use bramble_testkit::harness::Suite;
use bramble_testkit::{Load, Node};
use serde_json::{Value, json};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const FIXTURE: &str = "docker.io/library/fixture:test";
/// The node's stop grace period in these tests: every old replica takes all of it.
const GRACE: Duration = Duration::from_secs(6);
/// What "at once" must stay under, on a loaded 2-core CI machine (the goals are ~60 ms for a
/// cold start and < 100 ms for a delete; the printed figures are what was measured).
const AT_ONCE: Duration = Duration::from_secs(2);

pub(crate) fn suite() -> Suite {
    Suite::new("stops", crate::NODE)
        .async_trial(
            "a_request_during_a_stop_is_served_without_waiting_for_the_old_replica",
            a_request_during_a_stop_is_served_without_waiting_for_the_old_replica,
        )
        .async_trial(
            "deletes_and_scale_downs_answer_at_once_while_replicas_take_their_grace",
            deletes_and_scale_downs_answer_at_once_while_replicas_take_their_grace,
        )
        .async_trial(
            "a_redeploy_right_after_a_delete_waits_for_the_old_replicas",
            a_redeploy_right_after_a_delete_waits_for_the_old_replicas,
        )
        .async_trial(
            "a_rollout_with_a_slow_draining_old_version_holds_no_request",
            a_rollout_with_a_slow_draining_old_version_holds_no_request,
        )
}

async fn node(name: &str) -> Result<Node, Box<dyn std::error::Error>> {
    let config = format!("stop_grace = \"{}s\"\n", GRACE.as_secs());
    Node::with_fixture(Path::new(env!("CARGO_BIN_EXE_bramble")), name, &config).await
}

fn slow_stopper(name: &str, body: &str) -> Vec<u8> {
    json!({"service": name, "image": FIXTURE,
           "envVars": {"ON_SIGTERM": "ignore", "BODY": body}})
    .to_string()
    .into_bytes()
}

async fn a_request_during_a_stop_is_served_without_waiting_for_the_old_replica() -> TestResult {
    let node = node("stopreq").await?;
    node.api("POST", "/system/functions", &slow_stopper("slow", "hi"))
        .await?
        .expect(200, "deploy")?;
    node.wait_available("slow", 1).await?;
    let old = node.running_tasks("slow").await?;
    let scaled = Instant::now();
    node.ask_scale("slow", 0).await?;
    let scale_took = scaled.elapsed();
    // A request while the old replica stops: served by a new replica, not after the old one.
    node.wait_state("slow", "stopping").await?;
    let asked = Instant::now();
    let r = node.call("GET", "/function/slow", &[], b"").await?;
    let answered = asked.elapsed();
    r.expect(200, "a request while the old replica stops")?;
    assert_eq!(r.text(), "hi");
    println!(
        "scale to zero answered in {:.1} ms; a request during the stop answered in {:.1} ms (grace {GRACE:?})",
        scale_took.as_secs_f64() * 1e3,
        answered.as_secs_f64() * 1e3
    );
    assert!(
        answered < AT_ONCE,
        "the request waited {answered:?} for the old replica"
    );
    // The old replica still has its grace period, beside the new one.
    let both = node.running_tasks("slow").await?;
    assert!(both.contains(&old[0]) && both.len() == 2, "{both:?}");
    // ... and it is gone after it: only the new one runs.
    let left = node.wait_running_tasks("slow", 1, GRACE * 3).await?;
    assert_ne!(left, old, "the old replica outlived its grace period");
    let status = node.wait_available("slow", 1).await?;
    assert_eq!(status["bramble"]["state"], "ready", "{status}");
    Ok(())
}

async fn deletes_and_scale_downs_answer_at_once_while_replicas_take_their_grace() -> TestResult {
    let node = node("stopfast").await?;
    node.api("POST", "/system/functions", &slow_stopper("slow", "hi"))
        .await?
        .expect(200, "deploy")?;
    node.scale("slow", 2).await?;
    // A scale down answers once stored; the status says "stopping" meanwhile.
    let asked = Instant::now();
    node.ask_scale("slow", 0).await?;
    let scale_took = asked.elapsed();
    let status = node.wait_state("slow", "stopping").await?;
    assert_eq!(
        status["availableReplicas"].as_u64().unwrap_or(0),
        0,
        "{status}"
    );
    assert_eq!(
        node.running_tasks("slow").await?.len(),
        2,
        "the replicas were cut short"
    );
    node.wait_state("slow", "scaled-to-zero").await?;
    assert!(node.running_tasks("slow").await?.is_empty());
    // A delete answers once stored: not listed any more, while its replica takes its grace.
    node.scale("slow", 1).await?;
    let asked = Instant::now();
    node.api("DELETE", "/system/functions", br#"{"functionName":"slow"}"#)
        .await?
        .expect(200, "delete")?;
    let delete_took = asked.elapsed();
    let list: Value =
        serde_json::from_slice(&node.api("GET", "/system/functions", b"").await?.body)?;
    assert_eq!(list, json!([]), "listed after its delete");
    node.api("GET", "/system/function/slow", b"")
        .await?
        .expect(404, "status after the delete")?;
    assert_eq!(
        node.running_tasks("slow").await?.len(),
        1,
        "the replica was cut short"
    );
    println!(
        "scale 2 → 0 answered in {:.1} ms, delete in {:.1} ms, for replicas taking {GRACE:?} to stop",
        scale_took.as_secs_f64() * 1e3,
        delete_took.as_secs_f64() * 1e3
    );
    assert!(scale_took < AT_ONCE && delete_took < AT_ONCE);
    // Gone after its grace: no task, no container left.
    node.wait_running_tasks("slow", 0, GRACE * 3).await?;
    node.wait_containers_gone("slow", GRACE).await?;
    Ok(())
}

async fn a_redeploy_right_after_a_delete_waits_for_the_old_replicas() -> TestResult {
    let node = node("redeploy").await?;
    node.api("POST", "/system/functions", &slow_stopper("twice", "first"))
        .await?
        .expect(200, "deploy")?;
    node.wait_available("twice", 1).await?;
    node.api(
        "DELETE",
        "/system/functions",
        br#"{"functionName":"twice"}"#,
    )
    .await?
    .expect(200, "delete")?;
    // Queued behind the old replica: answered once it is gone, never a mix of the two.
    let asked = Instant::now();
    node.api(
        "POST",
        "/system/functions",
        &slow_stopper("twice", "second"),
    )
    .await?
    .expect(200, "deploy of the same name")?;
    let waited = asked.elapsed();
    assert!(
        waited >= GRACE - Duration::from_millis(500),
        "the deploy did not wait for the old replica ({waited:?})"
    );
    let r = node.call("GET", "/function/twice", &[], b"").await?;
    r.expect(200, "the new deployment")?;
    assert_eq!(r.text(), "second");
    assert_eq!(node.running_tasks("twice").await?.len(), 1);
    println!(
        "a deploy right after a delete waited {:.2} s for the old replica",
        waited.as_secs_f64()
    );
    Ok(())
}

async fn a_rollout_with_a_slow_draining_old_version_holds_no_request() -> TestResult {
    let node = node("rollslow").await?;
    node.api("POST", "/system/functions", &slow_stopper("roll", "v1"))
        .await?
        .expect(200, "deploy")?;
    node.wait_available("roll", 1).await?;
    let load = Load::start(node.addr(), "/function/roll", 4);
    tokio::time::sleep(Duration::from_millis(500)).await;
    node.api("PUT", "/system/functions", &slow_stopper("roll", "v2"))
        .await?
        .expect(200, "update")?;
    // Switched: v2 answers while v1 still takes its grace period.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = node.call("GET", "/function/roll", &[], b"").await?;
        if r.status == 200 && r.text() == "v2" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the update never switched: {}",
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let switched = Instant::now();
    assert_eq!(
        node.running_tasks("roll").await?.len(),
        2,
        "v1 was cut short"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = load.finish().await?;
    assert!(
        report.failures.is_empty(),
        "failed during the rollout: {:?}",
        report.failures
    );
    assert!(
        report.slowest < AT_ONCE,
        "a request waited {:?} during the rollout",
        report.slowest
    );
    assert_eq!(
        report.bodies.iter().map(String::as_str).collect::<Vec<_>>(),
        ["v1", "v2"]
    );
    node.wait_running_tasks("roll", 1, GRACE * 3).await?;
    println!(
        "rollout under load: {} requests, 0 failed, slowest {:.1} ms; v1 stopped {:.1} s after the switch",
        report.ok,
        report.slowest.as_secs_f64() * 1e3,
        switched.elapsed().as_secs_f64()
    );
    Ok(())
}
