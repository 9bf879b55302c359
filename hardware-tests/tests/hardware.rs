//! The hardware helper and the triggers end to end: a real `bramble up`, real containers of
//! the fixture function on a private containerd and network, and an output line wired to an
//! input line — by the simulator's jumper, or, with `BRAMBLE_HW_JUMPER=OUTPUT:INPUT` on a
//! Raspberry Pi, by a jumper wire between two pins (see `hardware-tests/README.md`). Both
//! run the same test code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bramble_hardware_tests::{
    FIXTURE, INPUT_GRANT, Result, Rig, WAIT, Wiring, edges_counted, expect, json_body,
};
use bramble_runtime::image::build::ImageBuilder;
use bramble_runtime::image::reference::ImageRef;
use bramble_testkit::example_image;
use bramble_testkit::harness::{self, Need};
use serde_json::{Value, json};

fn main() {
    let needs = [
        Need::Root,
        Need::Binary("containerd"),
        Need::Binary("runc"),
        Need::Binary("iptables"),
        Need::CniPlugins,
    ];
    let trials = vec![
        harness::async_trial(
            "a_granted_function_reads_its_line_across_node_restarts",
            a_granted_function_reads_its_line_across_node_restarts,
        ),
        harness::async_trial(
            "what_is_not_granted_is_refused_and_conflicts_are_409",
            what_is_not_granted_is_refused_and_conflicts_are_409,
        ),
        harness::async_trial(
            "a_gpio_edge_invokes_the_function_warm_and_from_zero",
            a_gpio_edge_invokes_the_function_warm_and_from_zero,
        ),
        harness::async_trial(
            "outputs_go_to_their_safe_state_on_crash_stop_and_delete",
            outputs_go_to_their_safe_state_on_crash_stop_and_delete,
        ),
        harness::async_trial(
            "a_burst_of_1000_edges_arrives_counted_without_loss",
            a_burst_of_1000_edges_arrives_counted_without_loss,
        ),
        harness::async_trial(
            "queued_edges_survive_a_node_crash_and_wait_for_the_function",
            queued_edges_survive_a_node_crash_and_wait_for_the_function,
        ),
        harness::async_trial(
            "schedules_invoke_like_the_cron_connector",
            schedules_invoke_like_the_cron_connector,
        ),
        harness::async_trial(
            "a_sensor_crossing_its_threshold_invokes_the_function",
            a_sensor_crossing_its_threshold_invokes_the_function,
        ),
        harness::async_trial(
            "a_function_running_as_a_user_reaches_its_socket",
            a_function_running_as_a_user_reaches_its_socket,
        ),
        // The simulator's SPI is a loopback and its PWM always present; on a Pi that takes
        // a MOSI–MISO jumper and the PWM overlay.
        harness::async_trial(
            "spi_and_pwm_serve_the_granted_function_only",
            spi_and_pwm_serve_the_granted_function_only,
        )
        .with_ignored_flag(real_pins()),
        // Needs a button and an LED on two unconnected lines: the simulator without a
        // wire. On jumpered pins the LED line would drive the button line.
        harness::async_trial(
            "the_led_button_example_lights_the_led_while_pressed",
            the_led_button_example_lights_the_led_while_pressed,
        )
        .with_ignored_flag(real_pins()),
    ];
    harness::main(&needs, trials);
}

/// Whether the tests run on real pins (`BRAMBLE_HW_JUMPER` set).
fn real_pins() -> bool {
    Wiring::from_env().is_ok_and(|w| w.is_real())
}

/// The level a function reads from a line through its socket.
async fn level_seen_by(rig: &Rig, function: &str, line: &str) -> Result<u64> {
    let r = rig
        .from_function(function, "GET", &format!("/v1/gpio/{line}"), "")
        .await?;
    expect(&r, 200, &format!("{function} reading {line}"))?;
    let v = json_body(&r)?;
    assert_eq!(v["line"], line);
    Ok(v["level"].as_u64().ok_or("no level")?)
}

async fn a_granted_function_reads_its_line_across_node_restarts() -> Result {
    let mut rig = Rig::start("hwread", "").await?;
    let input = rig.wiring.input().to_owned();
    let grant = format!("{input}:in:pull-up");
    rig.deploy_ready("reader", &json!({ "bramble.gpio": grant }), &json!({}))
        .await?;

    rig.drive(0).await?;
    assert_eq!(level_seen_by(&rig, "reader", &input).await?, 0);
    rig.drive(1).await?;
    assert_eq!(level_seen_by(&rig, "reader", &input).await?, 1);

    let r = rig
        .from_function("reader", "GET", "/v1/capabilities", "")
        .await?;
    expect(&r, 200, "capabilities")?;
    let caps = json_body(&r)?;
    assert_eq!(caps["function"], "reader.openfaas-fn");
    assert_eq!(caps["gpio"][0]["line"], input.as_str());
    assert_eq!(caps["gpio"][0]["direction"], "in");
    assert_eq!(caps["gpio"].as_array().map(Vec::len), Some(1));

    // No device node in the container: the broker is the only way to the pins.
    let r = rig
        .node
        .call("GET", "/function/reader/read?path=/dev/gpiochip0", &[], b"")
        .await?;
    assert_eq!(r.status, 404, "{}", r.text());

    // The node crashes and comes back: the running container is adopted, not restarted,
    // and its mounted socket directory gets the new socket.
    let pid = rig
        .node
        .call("GET", "/function/reader/id", &[], b"")
        .await?
        .header("x-fixture-pid")
        .map(str::to_owned);
    rig.node.kill();
    rig.node.start_again()?;
    rig.node.wait_available("reader", 1).await?;
    rig.drive(0).await?;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        // The broker answers once the node has attached the adopted function again.
        let r = rig
            .from_function("reader", "GET", &format!("/v1/gpio/{input}"), "")
            .await?;
        if r.status == 200 {
            assert_eq!(json_body(&r)?["level"], 0);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the broker never answered after the restart: {} {}",
            r.status,
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid_after = rig
        .node
        .call("GET", "/function/reader/id", &[], b"")
        .await?
        .header("x-fixture-pid")
        .map(str::to_owned);
    assert_eq!(
        pid, pid_after,
        "the function was restarted instead of adopted"
    );
    Ok(())
}

async fn what_is_not_granted_is_refused_and_conflicts_are_409() -> Result {
    let rig = Rig::start("hwdeny", "").await?;
    let (input, output) = (rig.wiring.input(), rig.wiring.output());
    rig.deploy_ready(
        "reader",
        &json!({ "bramble.gpio": format!("{input}:in:pull-up") }),
        &json!({}),
    )
    .await?;
    rig.take_output("led", &format!("{output}:out")).await?;

    // Another function's output, from the reader: 403 naming what is missing.
    let r = rig
        .from_function("reader", "GET", &format!("/v1/gpio/{output}"), "")
        .await?;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(
        r.text().contains(&format!("{output} is not granted")),
        "{}",
        r.text()
    );
    assert!(r.text().contains("bramble.gpio"), "{}", r.text());
    // Its own input cannot be set.
    let r = rig
        .from_function(
            "reader",
            "PUT",
            &format!("/v1/gpio/{input}"),
            r#"{"level":1}"#,
        )
        .await?;
    assert_eq!(r.status, 403, "{}", r.text());
    // I2C and sensors it was not granted.
    let r = rig
        .from_function("reader", "POST", "/v1/i2c/1/0x76", r#"{"read":1}"#)
        .await?;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("bramble.i2c"), "{}", r.text());
    let r = rig
        .from_function("reader", "GET", "/v1/sensors/w1:28-00000000abcd", "")
        .await?;
    assert_eq!(r.status, 403, "{}", r.text());

    // A function with no grants has no socket at all.
    rig.deploy_ready("plain", &json!({}), &json!({})).await?;
    let r = rig
        .from_function("plain", "GET", "/v1/capabilities", "")
        .await?;
    assert_eq!(r.status, 502, "{}", r.text());

    // A second function asking for the same output: 409 naming the owner; nothing created.
    let body = json!({
        "service": "led2", "image": FIXTURE,
        "annotations": { "bramble.gpio": format!("{output}:out") },
    });
    let r = rig
        .node
        .api("POST", "/system/functions", body.to_string().as_bytes())
        .await?;
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("led.openfaas-fn"), "{}", r.text());
    assert!(rig.node.status("led2").await?.is_none());
    // Nor may a trigger read another function's output.
    let body = json!({
        "service": "spy", "image": FIXTURE,
        "annotations": { "bramble.trigger.gpio": format!("{output}:both") },
    });
    let r = rig
        .node
        .api("POST", "/system/functions", body.to_string().as_bytes())
        .await?;
    assert_eq!(r.status, 409, "{}", r.text());
    // Bad annotations: 400 naming the annotation; a line the node does not have.
    for (annotations, expected) in [
        (
            json!({ "bramble.gpio": "GPIO999:in" }),
            "no GPIO line named GPIO999",
        ),
        (json!({ "bramble.gpio": "GPIO5:sideways" }), "bramble.gpio"),
        (
            json!({ "bramble.trigger.gpio": "GPIO5:up" }),
            "bramble.trigger.gpio",
        ),
        (
            json!({ "topic": "cron-function", "schedule": "every minute" }),
            "schedule",
        ),
        (
            json!({ "bramble.trigger.sensor": "w1:28-00000000abcd" }),
            "missing threshold",
        ),
    ] {
        let body = json!({ "service": "bad", "image": FIXTURE, "annotations": annotations });
        let r = rig
            .node
            .api("POST", "/system/functions", body.to_string().as_bytes())
            .await?;
        assert_eq!(r.status, 400, "{annotations}: {}", r.text());
        assert!(r.text().contains(expected), "{annotations}: {}", r.text());
        assert!(rig.node.status("bad").await?.is_none());
    }
    // An update that would take the output is refused, and the reader keeps its grant.
    let body = json!({
        "service": "reader", "image": FIXTURE,
        "annotations": { "bramble.gpio": format!("{input}:in:pull-up,{output}:out") },
    });
    let r = rig
        .node
        .api("PUT", "/system/functions", body.to_string().as_bytes())
        .await?;
    assert_eq!(r.status, 409, "{}", r.text());
    rig.drive(0).await?;
    assert_eq!(level_seen_by(&rig, "reader", input).await?, 0);
    Ok(())
}

async fn spi_and_pwm_serve_the_granted_function_only() -> Result {
    let rig = Rig::start("hwbus", "").await?;
    rig.deploy_ready(
        "bus",
        &json!({ "bramble.spi": "0.0", "bramble.pwm": "0" }),
        &json!({}),
    )
    .await?;

    // From inside the container, through its socket: the granted SPI device and channel.
    let r = rig
        .from_function(
            "bus",
            "POST",
            "/v1/spi/0/0",
            r#"{"write":[1,2,254],"mode":3}"#,
        )
        .await?;
    expect(&r, 200, "an SPI transfer on the granted device")?;
    assert_eq!(json_body(&r)?["data"], json!([1, 2, 254]), "the loopback");
    let r = rig
        .from_function(
            "bus",
            "PUT",
            "/v1/pwm/0",
            r#"{"period_ns":20000000,"duty_ns":1500000,"enabled":true}"#,
        )
        .await?;
    expect(&r, 200, "setting the granted PWM channel")?;
    let r = rig.from_function("bus", "GET", "/v1/pwm/0", "").await?;
    expect(&r, 200, "reading the granted PWM channel")?;
    assert_eq!(
        json_body(&r)?,
        json!({"channel": 0, "period_ns": 20000000, "duty_ns": 1500000, "enabled": true})
    );
    // What it was not granted: 403 naming the annotation.
    for (method, path, body, key) in [
        ("POST", "/v1/spi/0/1", r#"{"write":[1]}"#, "bramble.spi"),
        ("GET", "/v1/pwm/1", "", "bramble.pwm"),
    ] {
        let r = rig.from_function("bus", method, path, body).await?;
        assert_eq!(r.status, 403, "{path}: {}", r.text());
        assert!(r.text().contains(key), "{path}: {}", r.text());
    }
    // Bad settings: 400, nothing changed.
    let r = rig
        .from_function(
            "bus",
            "PUT",
            "/v1/pwm/0",
            r#"{"period_ns":1000,"duty_ns":2000,"enabled":true}"#,
        )
        .await?;
    assert_eq!(r.status, 400, "{}", r.text());
    let r = rig.from_function("bus", "GET", "/v1/pwm/0", "").await?;
    assert_eq!(json_body(&r)?["period_ns"], 20000000);

    // A PWM channel belongs to one function: a second one asking for it is refused, and
    // gets it once the holder is gone.
    let body = json!({
        "service": "bus2", "image": FIXTURE,
        "annotations": { "bramble.pwm": "0", "bramble.spi": "0.0" },
    });
    let r = rig
        .node
        .api("POST", "/system/functions", body.to_string().as_bytes())
        .await?;
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("bus.openfaas-fn"), "{}", r.text());
    assert!(rig.node.status("bus2").await?.is_none());
    rig.delete("bus").await?;
    rig.deploy_ready(
        "bus2",
        &json!({ "bramble.pwm": "0", "bramble.spi": "0.0" }),
        &json!({}),
    )
    .await?;
    // The holder's deletion left the channel in its safe state: disabled.
    let r = rig.from_function("bus2", "GET", "/v1/pwm/0", "").await?;
    expect(&r, 200, "reading the channel after its holder was deleted")?;
    assert_eq!(json_body(&r)?["enabled"], false, "{}", r.text());
    Ok(())
}

/// The edge fields of a GPIO trigger's record.
fn edge_of(record: &Value) -> (&str, &str, u64, u64) {
    let j = &record["json"];
    (
        j["trigger"].as_str().unwrap_or(""),
        j["edge"].as_str().unwrap_or(""),
        j["level"].as_u64().unwrap_or(9),
        j["sequence"].as_u64().unwrap_or(0),
    )
}

async fn a_gpio_edge_invokes_the_function_warm_and_from_zero() -> Result {
    let rig = Rig::start("hwtrig", "").await?;
    let input = rig.wiring.input().to_owned();
    let trigger = format!("{input}:falling:pull-up:path=/record?from=trigger");
    rig.deploy_ready(
        "button",
        &json!({ "bramble.trigger.gpio": trigger }),
        &json!({}),
    )
    .await?;
    rig.drive(1).await?;

    // A press: one invocation with the edge in the body, within a second.
    rig.drive(0).await?;
    let records = rig.wait_records("button", WAIT, |r| !r.is_empty()).await?;
    let record = &records[0];
    assert_eq!(edge_of(record), ("gpio", "falling", 0, 1));
    let body = &record["json"];
    assert_eq!(body["line"], input.as_str());
    assert_eq!(body["count"], 1);
    assert!(body.get("first").is_none());
    assert_eq!(record["path"], "/record?from=trigger");
    assert_eq!(record["headers"]["x-bramble-trigger"], "gpio");
    assert_eq!(record["headers"]["x-bramble-sequence"], "1");
    assert_eq!(record["headers"]["content-type"], "application/json");
    let edge_ns = body["timestamp_ns"].as_u64().ok_or("no timestamp")?;
    let received_ns = record["received_ns"].as_u64().ok_or("no received_ns")?;
    assert!(received_ns > edge_ns, "received before the edge?");
    let latency = Duration::from_nanos(received_ns - edge_ns);
    assert!(
        latency < Duration::from_secs(1),
        "edge to function took {latency:?}"
    );

    // A release is a rising edge: not subscribed. The next press is sequence 2.
    rig.drive(1).await?;
    rig.drive(0).await?;
    let records = rig.wait_records("button", WAIT, |r| r.len() >= 2).await?;
    assert_eq!(records.len(), 2, "{records:#?}");
    assert_eq!(edge_of(&records[1]), ("gpio", "falling", 0, 2));

    // Scaled to zero, a press starts the function and is delivered.
    rig.node.scale("button", 0).await?;
    rig.drive(1).await?;
    rig.drive(0).await?;
    // A fresh container: its records start again.
    let records = rig.wait_records("button", WAIT, |r| !r.is_empty()).await?;
    assert_eq!(edge_of(&records[0]), ("gpio", "falling", 0, 3));
    Ok(())
}

/// Function `led` sets the output line to 1.
async fn led_on(rig: &Rig) -> Result {
    let output = rig.wiring.output();
    let r = rig
        .from_function(
            "led",
            "PUT",
            &format!("/v1/gpio/{output}"),
            r#"{"level":1}"#,
        )
        .await?;
    expect(&r, 200, "switching the LED on")
}

/// What the falling edges of the input add up to, as recorded by function `edges`.
async fn falling_edges(rig: &Rig, want: u64) -> Result<Vec<Value>> {
    let records = rig
        .wait_records("edges", WAIT, |r| edges_counted(r) >= want)
        .await?;
    assert_eq!(edges_counted(&records), want, "{records:#?}");
    Ok(records)
}

async fn outputs_go_to_their_safe_state_on_crash_stop_and_delete() -> Result {
    let rig = Rig::start("hwsafe", "").await?;
    let (input, output) = (
        rig.wiring.input().to_owned(),
        rig.wiring.output().to_owned(),
    );
    // The level of a released output is the kernel's (Raspberry Pi OS keeps driving it,
    // upstream kernels and the simulator let the input's pull-up raise it): the safe level
    // a delete sets before the release is seen as the falling edge it makes on the input.
    rig.deploy_ready(
        "edges",
        &json!({ "bramble.trigger.gpio": format!("{input}:falling:pull-up:path=/record") }),
        &json!({}),
    )
    .await?;
    // Taken from the idle level (1) at its initial level: the first falling edge.
    rig.take_output("led", &format!("{output}:out:initial=0:safe=0"))
        .await?;
    rig.wait_output(0).await?;
    falling_edges(&rig, 1).await?;
    led_on(&rig).await?;
    rig.wait_output(1).await?;

    // The function crashes: its output goes to the safe level; it is restarted.
    let r = rig
        .node
        .call("GET", "/function/led/exit?code=3", &[], b"")
        .await?;
    expect(&r, 200, "crashing the function")?;
    rig.wait_output(0).await?;
    rig.node.wait_available("led", 1).await?;
    led_on(&rig).await?;
    rig.wait_output(1).await?;

    // Scaled to zero: its replica stops, the output goes to the safe level.
    rig.node.scale("led", 0).await?;
    rig.wait_output(0).await?;
    rig.node.scale("led", 1).await?;
    led_on(&rig).await?;
    rig.wait_output(1).await?;
    falling_edges(&rig, 3).await?;

    // Deleted: the safe level, then the line is released.
    rig.delete("led").await?;
    let records = falling_edges(&rig, 4).await?;
    let last = &records[records.len() - 1]["json"];
    assert_eq!(
        (last["line"].as_str(), last["level"].as_u64()),
        (Some(input.as_str()), Some(0))
    );
    let r = rig
        .node
        .api("GET", &format!("/system/gpio/{output}"), b"")
        .await?;
    let line = json_body(&r)?;
    assert_eq!(line["direction"], Value::Null, "{line}");
    assert_eq!(line["owners"], json!([]), "{line}");
    // The line can be taken by another function now.
    rig.take_output("led2", &format!("{output}:out")).await?;
    rig.wait_output(0).await?;
    Ok(())
}

/// `(last line_seqno, count)` of a GPIO trigger's record.
fn span(record: &Value) -> (u64, u64) {
    let j = &record["json"];
    (
        j["line_seqno"].as_u64().unwrap_or(0),
        j["count"].as_u64().unwrap_or(0),
    )
}

async fn a_burst_of_1000_edges_arrives_counted_without_loss() -> Result {
    const EDGES: u64 = 1000;
    let rig = Rig::start("hwburst", "").await?;
    let input = rig.wiring.input().to_owned();
    // A function slower than the burst: 20 ms per invocation.
    let trigger = format!("{input}:both:pull-up:path=/record?delay_ms=20");
    rig.deploy_ready(
        "counter",
        &json!({ "bramble.trigger.gpio": trigger }),
        &json!({}),
    )
    .await?;
    // One edge first, waited for: the trigger is watching, and the line's sequence number
    // the burst starts from is known (on a Pi the line may have had edges before).
    rig.drive(0).await?;
    let first = rig.wait_records("counter", WAIT, |r| !r.is_empty()).await?;
    let (start, count) = span(&first[0]);
    assert_eq!((first.len(), count), (1, 1), "{first:#?}");

    rig.toggle(EDGES as u32).await?;
    let records = rig
        .wait_records("counter", Duration::from_secs(60), |r| {
            edges_counted(r) > EDGES
        })
        .await?;
    assert_eq!(
        edges_counted(&records),
        EDGES + 1,
        "more edges than were made"
    );
    assert!(
        records.len() < EDGES as usize / 2,
        "the burst was not coalesced: {} invocations",
        records.len()
    );
    // In order, none lost, none twice: the line's sequence numbers count every edge, so
    // each invocation's count is the distance from the previous invocation's last edge
    // (edges missed by a lagging watcher or dropped by the kernel included).
    let mut previous_last = start;
    for (i, record) in records.iter().enumerate().skip(1) {
        let (last, count) = span(record);
        assert_eq!(record["json"]["sequence"], i as u64 + 1, "{record}");
        assert_eq!(last - previous_last, count, "{record}");
        previous_last = last;
    }
    assert_eq!(
        previous_last - start,
        EDGES,
        "the last invocation is not the last edge"
    );
    Ok(())
}

/// The events in a trigger's queue file (the sum of the queued counts).
fn queued_events(rig: &Rig, function: &str, trigger: &str) -> u64 {
    let path = rig
        .node
        .state_dir()
        .join("triggers")
        .join(format!("{function}.openfaas-fn"))
        .join(format!("{trigger}.json"));
    let Ok(text) = std::fs::read_to_string(path) else {
        return 0;
    };
    let Ok(saved) = serde_json::from_str::<Value>(&text) else {
        return 0;
    };
    saved["queue"]
        .as_array()
        .map(|q| q.iter().map(|p| p["count"].as_u64().unwrap_or(0)).sum())
        .unwrap_or(0)
}

async fn queued_edges_survive_a_node_crash_and_wait_for_the_function() -> Result {
    // A short readiness wait, so deliveries to the unready function fail fast and retry.
    let mut rig = Rig::start("hwdurable", "ready_timeout = \"1s\"\n").await?;
    let input = rig.wiring.input().to_owned();
    let annotations = json!({
        "bramble.trigger.gpio": format!("{input}:falling:pull-up:path=/record"),
    });
    rig.deploy("late", &annotations, &json!({ "NEVER_HEALTHY": "1" }))
        .await?;
    rig.drive(1).await?;
    for _ in 0..3 {
        rig.drive(0).await?;
        rig.drive(1).await?;
    }
    let trigger = format!("gpio-{input}");
    let deadline = std::time::Instant::now() + WAIT;
    while queued_events(&rig, "late", &trigger) < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the presses never reached the queue file\n{}",
            rig.node.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rig.node.kill();
    assert_eq!(queued_events(&rig, "late", &trigger), 3);
    rig.node.start_again()?;

    // The function becomes healthy: the queued presses arrive, the first on its own, the
    // two that came while it was being retried coalesced.
    let body = json!({ "service": "late", "image": FIXTURE, "annotations": annotations });
    let r = rig
        .node
        .api("PUT", "/system/functions", body.to_string().as_bytes())
        .await?;
    expect(&r, 200, "updating the function to a healthy one")?;
    // Reading its records goes through the gateway, which waits only 1 s (above) for a
    // function that is not ready: read once the update has switched traffic.
    harness::wait_until(
        "the updated late to be ready",
        Duration::from_secs(60),
        async || {
            let s = rig.node.status("late").await?.ok_or("late vanished")?;
            Ok(s["bramble"]["state"] == "ready" && s["availableReplicas"] == 1)
        },
    )
    .await?;
    let records = rig
        .wait_records("late", Duration::from_secs(60), |r| edges_counted(r) >= 3)
        .await?;
    let summary: Vec<(u64, u64)> = records
        .iter()
        .map(|r| {
            (
                r["json"]["sequence"].as_u64().unwrap_or(0),
                r["json"]["count"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(summary, [(1, 1), (2, 2)], "{records:#?}");
    // Delivered: the queue is empty on disk.
    let deadline = std::time::Instant::now() + WAIT;
    while queued_events(&rig, "late", &trigger) != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the queue never emptied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn schedules_invoke_like_the_cron_connector() -> Result {
    let rig = Rig::start("hwcron", "").await?;
    rig.deploy_ready(
        "ticker",
        &json!({ "topic": "cron-function", "schedule": "@every 1s" }),
        &json!({ "RECORD_ROOT": "1" }),
    )
    .await?;
    let records = rig
        .wait_records("ticker", Duration::from_secs(20), |r| r.len() >= 3)
        .await?;
    for (i, record) in records.iter().enumerate() {
        assert_eq!(record["path"], "/", "{record}");
        assert_eq!(record["body"], "", "{record}");
        assert_eq!(record["headers"]["x-topic"], "cron-function", "{record}");
        assert_eq!(
            record["headers"]["x-connector"], "cron-connector",
            "{record}"
        );
        assert_eq!(
            record["headers"]["x-bramble-trigger"], "schedule",
            "{record}"
        );
        assert_eq!(
            record["headers"]["x-bramble-sequence"],
            (i + 1).to_string(),
            "{record}"
        );
    }
    let at = |i: usize| records[i]["received_ns"].as_u64().unwrap_or(0);
    let two_periods = Duration::from_nanos(at(2) - at(0));
    assert!(
        two_periods >= Duration::from_millis(1500),
        "three invocations of a 1 s schedule within {two_periods:?}"
    );
    // Deleting the function stops its schedule and removes its queue.
    let r = rig
        .node
        .api(
            "DELETE",
            "/system/functions",
            br#"{"functionName":"ticker"}"#,
        )
        .await?;
    expect(&r, 200, "deleting")?;
    let dir = rig
        .node
        .state_dir()
        .join("triggers")
        .join("ticker.openfaas-fn");
    let deadline = std::time::Instant::now() + WAIT;
    while dir.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{} stayed",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn a_sensor_crossing_its_threshold_invokes_the_function() -> Result {
    let w1 = tempfile::tempdir()?;
    let sensor = w1.path().join("28-00000000abcd");
    std::fs::create_dir(&sensor)?;
    std::fs::write(sensor.join("temperature"), "21000\n")?;
    let rig = Rig::start(
        "hwsensor",
        &format!("hardware.w1_dir = \"{}\"\n", w1.path().display()),
    )
    .await?;
    rig.deploy_ready(
        "thermo",
        &json!({
            "bramble.trigger.sensor": "w1:28-00000000abcd:above=25:every=1s:path=/record",
        }),
        &json!({}),
    )
    .await?;
    std::fs::write(sensor.join("temperature"), "26500\n")?;
    let records = rig.wait_records("thermo", WAIT, |r| !r.is_empty()).await?;
    let body = &records[0]["json"];
    assert_eq!(body["trigger"], "sensor");
    assert_eq!(body["sensor"], "w1:28-00000000abcd");
    assert_eq!(body["value"], 26.5);
    assert_eq!(body["unit"], "celsius");
    assert_eq!(body["crossed"], "above");
    assert_eq!(body["threshold"], 25.0);
    assert_eq!(body["count"], 1);
    Ok(())
}

/// The fixture function in an image whose `User` is `user` (built like the fixture image,
/// by bramble's image builder), as an OCI archive in `dir`.
fn fixture_image_running_as(dir: &Path, name: &str, user: &str) -> Result<PathBuf> {
    let binary = bramble_testkit::fixture_binary()?;
    let path = bramble_testkit::images::FIXTURE_PATH;
    let out = dir.join("fixture-user.oci.tar");
    ImageBuilder::new(ImageRef::parse(name)?)
        .add_file(&binary, path, Some(0o755))
        .entrypoint(vec![path.to_owned()])
        .expose(8080)
        .user(user)
        .write_oci_archive(&out)?;
    Ok(out)
}

/// A function running as a user of its image (not root) reaches its socket; on the host,
/// nobody but root reaches the socket directory.
async fn a_function_running_as_a_user_reaches_its_socket() -> Result {
    let rig = Rig::start("hwuser", "").await?;
    let input = rig.wiring.input().to_owned();
    let archive =
        fixture_image_running_as(rig.node.env.scratch(), "fixture-user:test", "1000:1000")?;
    let r = rig
        .node
        .api("POST", "/system/images", &std::fs::read(&archive)?)
        .await?;
    expect(&r, 200, "uploading the image")?;
    let body = json!({
        "service": "user", "image": "fixture-user:test",
        "annotations": { "bramble.gpio": format!("{input}:{INPUT_GRANT}") },
    });
    let r = rig
        .node
        .api("POST", "/system/functions", body.to_string().as_bytes())
        .await?;
    expect(&r, 200, "deploying")?;
    rig.node.wait_available("user", 1).await?;
    let r = rig.node.call("GET", "/function/user/id", &[], b"").await?;
    expect(&r, 200, "asking who it runs as")?;
    assert_eq!(r.text(), "uid=1000 gid=1000");
    rig.drive(0).await?;
    assert_eq!(level_seen_by(&rig, "user", &input).await?, 0);
    let r = rig
        .node
        .call("GET", "/function/user/ls?path=/run/bramble", &[], b"")
        .await?;
    expect(&r, 200, "listing its socket directory")?;
    assert_eq!(r.text().trim(), "hw.sock socket");
    // The host side: root-only above the function's directory.
    let socket_dir = rig.node.env.config.run_dir.join("hw");
    let mode = std::fs::metadata(&socket_dir)?.permissions().mode();
    assert_eq!(mode & 0o7777, 0o700, "{}", socket_dir.display());
    Ok(())
}

/// `examples/led-button`, built by bramble's image builder as its README says, uploaded and
/// deployed with the README's grant: the LED follows the button.
async fn the_led_button_example_lights_the_led_while_pressed() -> Result {
    let rig = Rig::start_unwired("hwled", "").await?;
    let (button, led) = (
        rig.wiring.input().to_owned(),
        rig.wiring.output().to_owned(),
    );
    let (archive, _) = example_image(rig.node.env.scratch(), "led-button", "led-button:test")?;
    let r = rig
        .node
        .api("POST", "/system/images", &std::fs::read(&archive)?)
        .await?;
    expect(&r, 200, "uploading the led-button image")?;
    rig.drive(1).await?;
    let body = json!({
        "service": "led-button",
        "image": "led-button:test",
        "annotations": {
            "bramble.gpio": format!("{button}:in:pull-up:active-low:debounce=5ms,{led}:out"),
        },
        "envVars": { "LED": led, "BUTTON": button },
    });
    let r = rig
        .node
        .api("POST", "/system/functions", body.to_string().as_bytes())
        .await?;
    expect(&r, 200, "deploying led-button")?;
    rig.node.wait_available("led-button", 1).await?;
    rig.wait_output(0).await?;

    for press in 1..=2 {
        rig.drive(0).await?;
        rig.wait_output(1).await?;
        let r = rig
            .node
            .call("GET", "/function/led-button", &[], b"")
            .await?;
        expect(&r, 200, "asking led-button")?;
        assert!(
            r.text().starts_with(&format!("LED {led} is on")),
            "{}",
            r.text()
        );
        rig.drive(1).await?;
        rig.wait_output(0).await?;
        let r = rig
            .node
            .call("GET", "/function/led-button", &[], b"")
            .await?;
        assert!(
            r.text().contains(&format!("{press} presses")),
            "{}",
            r.text()
        );
    }
    // Deleted while the LED is on: the delete answers at once, and the LED goes to its safe
    // state (off) once the function's replica is gone.
    rig.drive(0).await?;
    rig.wait_output(1).await?;
    let r = rig
        .node
        .api(
            "DELETE",
            "/system/functions",
            br#"{"functionName":"led-button"}"#,
        )
        .await?;
    expect(&r, 200, "deleting led-button")?;
    rig.wait_output(0).await?;
    Ok(())
}
