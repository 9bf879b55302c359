//! Tests of `Hardware`, the broker and the admin routes, over real Unix sockets in a temp
//! dir, against the simulator.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::body::Body;
use futures::StreamExt as _;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::*;

const TIMEOUT: Duration = Duration::from_secs(5);

struct Node {
    hw: Arc<Hardware>,
    _tmp: tempfile::TempDir,
    socket_dir: PathBuf,
}

fn node() -> Node {
    let tmp = tempfile::tempdir().unwrap();
    let w1 = tmp.path().join("w1");
    std::fs::create_dir_all(w1.join("28-0316a27966ff")).unwrap();
    std::fs::write(w1.join("28-0316a27966ff/temperature"), "23125\n").unwrap();
    std::fs::create_dir_all(w1.join("28-00000000bad0")).unwrap();
    std::fs::write(
        w1.join("28-00000000bad0/w1_slave"),
        "72 01 4b 46 7f ff 0e 10 57 : crc=57 NO\n72 01 4b 46 7f ff 0e 10 57 t=23125\n",
    )
    .unwrap();
    let socket_dir = tmp.path().join("hw");
    let hw = Hardware::new(HardwareConfig {
        backend: BackendChoice::Simulator,
        socket_dir: Some(socket_dir.clone()),
        w1_dir: w1,
        ..HardwareConfig::default()
    })
    .unwrap();
    Node {
        hw,
        _tmp: tmp,
        socket_dir,
    }
}

fn grants(pairs: &[(&str, &str)]) -> Grants {
    let annotations: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Hardware::parse_grants(&annotations).unwrap().unwrap()
}

fn led_button() -> Grants {
    grants(&[
        ("bramble.gpio", "GPIO17:in:pull-up:active-low,GPIO27:out"),
        ("bramble.i2c", "1:0x76+0x77"),
        (
            "bramble.sensors",
            "w1:28-0316a27966ff,w1:28-00000000bad0,w1:28-ffffffffffff",
        ),
    ])
}

async fn connect(socket: &Path) -> hyper::client::conn::http1::SendRequest<Body> {
    let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

fn request(method: &str, uri: &str, body: &str) -> axum::http::Request<Body> {
    axum::http::Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "hw")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

/// One request on a new connection: status and body text.
async fn call(socket: &Path, method: &str, uri: &str, body: &str) -> (u16, String) {
    let mut sender = connect(socket).await;
    let response = tokio::time::timeout(TIMEOUT, sender.send_request(request(method, uri, body)))
        .await
        .unwrap()
        .unwrap();
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(Body::new(response.into_body()), 1 << 20)
        .await
        .unwrap();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

async fn call_json(socket: &Path, method: &str, uri: &str, body: &str) -> Value {
    let (status, text) = call(socket, method, uri, body).await;
    assert_eq!(status, 200, "{method} {uri}: {text}");
    serde_json::from_str(&text).unwrap()
}

/// An open NDJSON stream.
struct Lines {
    body: axum::body::BodyDataStream,
    buffer: String,
}

impl Lines {
    async fn open(socket: &Path, uri: &str) -> Lines {
        let mut sender = connect(socket).await;
        let response = tokio::time::timeout(TIMEOUT, sender.send_request(request("GET", uri, "")))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/x-ndjson");
        Lines {
            body: Body::new(response.into_body()).into_data_stream(),
            buffer: String::new(),
        }
    }

    /// The next line as JSON, or `None` when the stream ended.
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(end) = self.buffer.find('\n') {
                let line: String = self.buffer.drain(..=end).collect();
                return Some(serde_json::from_str(&line).unwrap());
            }
            let chunk = tokio::time::timeout(TIMEOUT, self.body.next())
                .await
                .expect("no event in time")?
                .ok()?;
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}

#[test]
fn backend_choice() {
    // This machine has no GPIO chip: auto picks the simulator, cdev refuses clearly.
    let tmp = tempfile::tempdir().unwrap();
    let auto = Hardware::new(HardwareConfig {
        socket_dir: Some(tmp.path().to_owned()),
        ..HardwareConfig::default()
    })
    .unwrap();
    assert_eq!(auto.backend(), "simulator");
    let Err(err) = Hardware::new(HardwareConfig {
        backend: BackendChoice::Cdev,
        ..HardwareConfig::default()
    }) else {
        panic!("cdev without chips must fail");
    };
    assert!(matches!(err, HardwareError::NoChip(_)));
    assert!(err.to_string().contains("pinctrl-bcm2711"), "{err}");
    // The configuration reads from TOML with defaults.
    let config: HardwareConfig = toml::from_str(
        "backend = \"simulator\"\nsim_lines = [\"LED\", \"BUTTON\"]\n\
         [[sim_i2c]]\nbus = 1\naddress = 0x48\nregisters = [[0x00, 0x12]]\n",
    )
    .unwrap();
    assert_eq!(config.backend, BackendChoice::Simulator);
    assert_eq!(config.sim_i2c[0].registers, [[0, 0x12]]);
    assert_eq!(config.socket_dir, None);
}

#[tokio::test]
async fn attach_makes_the_socket_with_the_right_permissions() {
    let node = node();
    let mount = node.hw.attach("led-button", led_button()).await.unwrap();
    assert_eq!(mount.host_path, node.socket_dir.join("led-button"));
    assert_eq!(mount.container_path, Path::new("/run/bramble"));
    assert_eq!(mount.socket, node.socket_dir.join("led-button/hw.sock"));
    assert!(mount.read_only);
    let dir_mode = std::fs::metadata(&mount.host_path)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o7777, 0o755);
    let meta = std::fs::metadata(&mount.socket).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()));
    assert_eq!(meta.permissions().mode() & 0o777, 0o666);
    // Only root passes the socket directory on the host.
    let top_mode = std::fs::metadata(&node.socket_dir)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(top_mode & 0o7777, 0o700);
    // Function names that cannot be directories are refused.
    for bad in ["", "..", "../x", "a/b", ".hidden"] {
        let err = node.hw.attach(bad, led_button()).await.unwrap_err();
        assert!(matches!(err, HardwareError::InvalidFunction(_)), "{bad}");
    }
}

#[tokio::test]
async fn gpio_routes() {
    let node = node();
    let sock = node
        .hw
        .attach("led-button", led_button())
        .await
        .unwrap()
        .socket;

    // An input with pull-up, active-low: the wire is high, the function reads 0.
    let v = call_json(&sock, "GET", "/v1/gpio/GPIO17", "").await;
    assert_eq!(v, serde_json::json!({"line": "GPIO17", "level": 0}));
    node.hw.simulate("GPIO17", 0).unwrap(); // button pressed
    let v = call_json(&sock, "GET", "/v1/gpio/GPIO17", "").await;
    assert_eq!(v["level"], 1);

    // The output starts at its initial level (0) and can be set and read back.
    assert_eq!(
        call_json(&sock, "GET", "/v1/gpio/GPIO27", "").await["level"],
        0
    );
    let v = call_json(&sock, "PUT", "/v1/gpio/GPIO27", r#"{"level":1}"#).await;
    assert_eq!(v, serde_json::json!({"line": "GPIO27", "level": 1}));
    assert_eq!(
        call_json(&sock, "GET", "/v1/gpio/GPIO27", "").await["level"],
        1
    );
    let info = node
        .hw
        .lines()
        .into_iter()
        .find(|l| l.name == "GPIO27")
        .unwrap();
    assert_eq!(info.level, Some(1));
    assert_eq!(info.owners, ["led-button"]);

    // Not granted: 403 naming the line and the grants.
    let (status, text) = call(&sock, "GET", "/v1/gpio/GPIO22", "").await;
    assert_eq!(status, 403);
    assert_eq!(
        text,
        "GPIO22 is not granted to this function (grants: GPIO17:in:pull-up:active-low, \
         GPIO27:out); add it to the function's bramble.gpio annotation\n"
    );
    // An input cannot be set.
    let (status, text) = call(&sock, "PUT", "/v1/gpio/GPIO17", r#"{"level":1}"#).await;
    assert_eq!(status, 403);
    assert!(text.starts_with("GPIO17 is granted as input"), "{text}");
    // An output cannot be watched.
    let (status, text) = call(&sock, "GET", "/v1/gpio/GPIO27/watch", "").await;
    assert_eq!(status, 403);
    assert!(text.contains("needs an input grant"), "{text}");
    // No such line; bad bodies; unknown routes.
    let (status, _) = call(&sock, "GET", "/v1/gpio/GPIO99", "").await;
    assert_eq!(status, 404);
    for body in [
        "",
        "{",
        r#"{"level":2}"#,
        r#"{"level":"high"}"#,
        r#"{"level":1,"x":1}"#,
    ] {
        let (status, text) = call(&sock, "PUT", "/v1/gpio/GPIO27", body).await;
        assert_eq!(status, 400, "{body}: {text}");
    }
    let (status, text) = call(&sock, "GET", "/v2/anything", "").await;
    assert_eq!(status, 404);
    assert!(text.contains("/v1/capabilities"), "{text}");
}

#[tokio::test]
async fn capabilities_list_the_grants() {
    let node = node();
    let sock = node
        .hw
        .attach("led-button", led_button())
        .await
        .unwrap()
        .socket;
    let v = call_json(&sock, "GET", "/v1/capabilities", "").await;
    assert_eq!(v["function"], "led-button");
    assert_eq!(v["backend"], "simulator");
    assert_eq!(v["gpio"][0]["line"], "GPIO17");
    assert_eq!(v["gpio"][0]["direction"], "in");
    assert_eq!(v["gpio"][0]["bias"], "pull-up");
    assert_eq!(v["gpio"][0]["active_low"], true);
    assert_eq!(v["gpio"][0]["grant"], "GPIO17:in:pull-up:active-low");
    assert_eq!(v["gpio"][1]["direction"], "out");
    assert_eq!(v["gpio"][1]["safe"], 0);
    assert_eq!(
        v["i2c"],
        serde_json::json!([{"bus": 1, "addresses": ["0x76", "0x77"]}])
    );
    assert_eq!(v["sensors"][0], "w1:28-00000000bad0");
}

#[tokio::test]
async fn watch_streams_edges_in_order() {
    let node = node();
    let sock = node
        .hw
        .attach("led-button", led_button())
        .await
        .unwrap()
        .socket;
    let mut lines = Lines::open(&sock, "/v1/gpio/GPIO17/watch").await;
    // The wire is high (pull-up). Press, release, press: active-low makes a press rising.
    for level in [0, 1, 0] {
        node.hw.simulate("GPIO17", level).unwrap();
    }
    let mut last_seqno = 0;
    let mut last_line_seqno = 0;
    for (edge, level) in [("rising", 1), ("falling", 0), ("rising", 1)] {
        let event = lines.next().await.unwrap();
        assert_eq!(event["line"], "GPIO17");
        assert_eq!(event["edge"], edge);
        assert_eq!(event["level"], level);
        assert!(event["timestamp_ns"].as_u64().unwrap() > 0);
        let seqno = event["seqno"].as_u64().unwrap();
        let line_seqno = event["line_seqno"].as_u64().unwrap();
        assert!(
            seqno > last_seqno && line_seqno == last_line_seqno + 1,
            "{event}"
        );
        (last_seqno, last_line_seqno) = (seqno, line_seqno);
    }
    // Detaching ends the stream.
    node.hw.detach("led-button").await;
    assert!(lines.next().await.is_none());
}

#[tokio::test]
async fn i2c_routes() {
    let node = node();
    let sock = node
        .hw
        .attach("led-button", led_button())
        .await
        .unwrap()
        .socket;
    // write-read the BME280 chip id.
    let v = call_json(
        &sock,
        "POST",
        "/v1/i2c/1/0x76",
        r#"{"write":[208],"read":1}"#,
    )
    .await;
    assert_eq!(v, serde_json::json!({"data": [0x60]}));
    // write only, then read only (the register pointer is where the write left it).
    let v = call_json(&sock, "POST", "/v1/i2c/1/118", r#"{"write":[244,39]}"#).await;
    assert_eq!(v["data"], serde_json::json!([]));
    let v = call_json(&sock, "POST", "/v1/i2c/1/0x76", r#"{"write":[244]}"#).await;
    assert_eq!(v["data"], serde_json::json!([]));
    let v = call_json(&sock, "POST", "/v1/i2c/1/0x76", r#"{"read":1}"#).await;
    assert_eq!(v["data"], serde_json::json!([39]));
    // Granted, but no device there: like the kernel's ENXIO.
    let (status, text) = call(&sock, "POST", "/v1/i2c/1/0x77", r#"{"read":1}"#).await;
    assert_eq!(status, 502, "{text}");
    assert!(text.contains("no I2C device answered at 1:0x77"), "{text}");
    // Not granted.
    let (status, text) = call(&sock, "POST", "/v1/i2c/1/0x48", r#"{"read":1}"#).await;
    assert_eq!(status, 403);
    assert!(text.starts_with("I2C 1:0x48 is not granted to this function (grants: 1:0x76+0x77)"));
    let (status, _) = call(&sock, "POST", "/v1/i2c/2/0x76", r#"{"read":1}"#).await;
    assert_eq!(status, 403);
    // Bad input.
    for (uri, body) in [
        ("/v1/i2c/x/0x76", r#"{"read":1}"#),
        ("/v1/i2c/1/0x7f", r#"{"read":1}"#),
        ("/v1/i2c/1/0x76", r#"{}"#),
        ("/v1/i2c/1/0x76", r#"{"write":[256]}"#),
        ("/v1/i2c/1/0x76", r#"{"read":5000}"#),
        ("/v1/i2c/1/0x76", "nope"),
    ] {
        let (status, text) = call(&sock, "POST", uri, body).await;
        assert_eq!(status, 400, "{uri} {body}: {text}");
    }
}

#[tokio::test]
async fn sensor_routes() {
    let node = node();
    let sock = node
        .hw
        .attach("led-button", led_button())
        .await
        .unwrap()
        .socket;
    let v = call_json(&sock, "GET", "/v1/sensors/w1:28-0316a27966ff", "").await;
    assert_eq!(
        v,
        serde_json::json!({"id": "w1:28-0316a27966ff", "kind": "temperature",
                           "value": 23.125, "unit": "celsius"})
    );
    let (status, text) = call(&sock, "GET", "/v1/sensors/w1:28-00000000bad0", "").await;
    assert_eq!(status, 502);
    assert!(text.contains("CRC"), "{text}");
    let (status, _) = call(&sock, "GET", "/v1/sensors/w1:28-ffffffffffff", "").await;
    assert_eq!(status, 404);
    let (status, text) = call(&sock, "GET", "/v1/sensors/w1:28-000000000001", "").await;
    assert_eq!(status, 403);
    assert!(
        text.starts_with("sensor w1:28-000000000001 is not granted"),
        "{text}"
    );
}

#[tokio::test]
async fn one_function_cannot_use_another_ones_grants() {
    let node = node();
    let a = node
        .hw
        .attach(
            "a",
            grants(&[("bramble.gpio", "GPIO27:out"), ("bramble.i2c", "1:0x76")]),
        )
        .await
        .unwrap();
    let b = node
        .hw
        .attach("b", grants(&[("bramble.gpio", "GPIO22:out")]))
        .await
        .unwrap();
    assert_ne!(a.socket, b.socket);
    call_json(&a.socket, "PUT", "/v1/gpio/GPIO27", r#"{"level":1}"#).await;
    let (status, text) = call(&b.socket, "PUT", "/v1/gpio/GPIO27", r#"{"level":0}"#).await;
    assert_eq!(status, 403);
    assert!(text.contains("(grants: GPIO22:out)"), "{text}");
    let (status, _) = call(&b.socket, "POST", "/v1/i2c/1/0x76", r#"{"read":1}"#).await;
    assert_eq!(status, 403);
    assert_eq!(
        call_json(&a.socket, "GET", "/v1/gpio/GPIO27", "").await["level"],
        1
    );
    assert_eq!(
        call_json(&b.socket, "GET", "/v1/capabilities", "").await["function"],
        "b"
    );
}

#[tokio::test]
async fn conflicts_are_refused() {
    let node = node();
    node.hw.attach("a", led_button()).await.unwrap();
    let second = grants(&[("bramble.gpio", "GPIO27:out")]);
    let err = node.hw.check("b", &second).unwrap_err();
    assert!(matches!(err, HardwareError::Conflict(_)));
    assert_eq!(err.kind(), ErrorKind::Conflict);
    let text = err.to_string();
    assert!(
        text.contains("GPIO27") && text.contains("\"a\"") && text.contains("\"b\""),
        "{text}"
    );
    assert!(node.hw.attach("b", second).await.is_err());
    assert!(
        node.hw
            .lines()
            .iter()
            .all(|l| !l.owners.contains(&"b".to_owned()))
    );
    assert!(
        !node.socket_dir.join("b").exists(),
        "a refused attach makes no socket"
    );
    // Shared inputs with the same settings are fine, even with another active-low.
    let shared = grants(&[("bramble.gpio", "GPIO17:in:pull-up")]);
    node.hw.check("b", &shared).unwrap();
    let b = node.hw.attach("b", shared).await.unwrap();
    // b sees the wire (high), a sees it inverted.
    assert_eq!(
        call_json(&b.socket, "GET", "/v1/gpio/GPIO17", "").await["level"],
        1
    );
    let info = node
        .hw
        .lines()
        .into_iter()
        .find(|l| l.name == "GPIO17")
        .unwrap();
    assert_eq!(info.owners, ["a", "b"]);
    // Releasing one holder keeps the line for the other.
    node.hw.detach("b").await;
    let info = node
        .hw
        .lines()
        .into_iter()
        .find(|l| l.name == "GPIO17")
        .unwrap();
    assert_eq!(info.owners, ["a"]);
    // Unknown lines are refused at check.
    let err = node
        .hw
        .check("c", &grants(&[("bramble.gpio", "GPIO99:in")]))
        .unwrap_err();
    assert!(matches!(err, HardwareError::UnknownLine(_)));
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn safe_state_and_detach() {
    let node = node();
    let g = grants(&[(
        "bramble.gpio",
        "GPIO27:out,GPIO26:out:initial=1:safe=1,GPIO25:out:active-low",
    )]);
    let sock = node.hw.attach("f", g).await.unwrap().socket;
    let level = |line: &str| {
        node.hw
            .lines()
            .into_iter()
            .find(|l| l.name == line)
            .and_then(|l| l.level)
    };
    // Initial levels: 0, 1, and logical 0 of an active-low output = wire high.
    assert_eq!(
        (level("GPIO27"), level("GPIO26"), level("GPIO25")),
        (Some(0), Some(1), Some(1))
    );
    call_json(&sock, "PUT", "/v1/gpio/GPIO27", r#"{"level":1}"#).await;
    call_json(&sock, "PUT", "/v1/gpio/GPIO26", r#"{"level":0}"#).await;
    call_json(&sock, "PUT", "/v1/gpio/GPIO25", r#"{"level":1}"#).await;
    assert_eq!(
        (level("GPIO27"), level("GPIO26"), level("GPIO25")),
        (Some(1), Some(0), Some(0))
    );
    // The replicas stopped: safe levels; the socket stays.
    node.hw.safe_state("f");
    assert_eq!(
        (level("GPIO27"), level("GPIO26"), level("GPIO25")),
        (Some(0), Some(1), Some(1))
    );
    assert_eq!(
        call_json(&sock, "GET", "/v1/gpio/GPIO27", "").await["level"],
        0
    );
    // Deleted: safe levels, lines released, socket and its directory gone.
    call_json(&sock, "PUT", "/v1/gpio/GPIO27", r#"{"level":1}"#).await;
    node.hw.detach("f").await;
    assert_eq!(level("GPIO27"), Some(0));
    assert!(node.hw.lines().iter().all(|l| l.direction.is_none()));
    assert!(!sock.exists());
    assert!(!node.socket_dir.join("f").exists());
    assert!(tokio::net::UnixStream::connect(&sock).await.is_err());
    // The lines are free for another function, and detaching twice is harmless.
    node.hw.detach("f").await;
    node.hw
        .attach("g", grants(&[("bramble.gpio", "GPIO27:out")]))
        .await
        .unwrap();
    // shutdown releases everything but keeps the socket directory (still mounted in the
    // containers that keep running; the next start binds its socket there again).
    node.hw.shutdown().await;
    assert!(node.hw.lines().iter().all(|l| l.owners.is_empty()));
    assert!(!node.socket_dir.join("g").join(SOCKET_NAME).exists());
    assert!(node.socket_dir.join("g").is_dir());
}

#[tokio::test]
async fn attach_is_idempotent_and_applies_new_grants() {
    let node = node();
    let first = node.hw.attach("f", led_button()).await.unwrap();
    call_json(&first.socket, "PUT", "/v1/gpio/GPIO27", r#"{"level":1}"#).await;
    // An open connection survives a repeated attach.
    let mut lines = Lines::open(&first.socket, "/v1/gpio/GPIO17/watch").await;
    let again = node.hw.attach("f", led_button()).await.unwrap();
    assert_eq!(first, again);
    // Nothing was re-requested: the output keeps its level.
    assert_eq!(
        call_json(&again.socket, "GET", "/v1/gpio/GPIO27", "").await["level"],
        1
    );
    node.hw.simulate("GPIO17", 0).unwrap();
    assert_eq!(lines.next().await.unwrap()["edge"], "rising");
    // New grants: GPIO27 is no longer granted (released at its safe level), GPIO22 is.
    let changed = grants(&[(
        "bramble.gpio",
        "GPIO17:in:pull-up:active-low,GPIO22:out:initial=1",
    )]);
    node.hw.attach("f", changed).await.unwrap();
    let (status, _) = call(&first.socket, "GET", "/v1/gpio/GPIO27", "").await;
    assert_eq!(status, 403);
    assert_eq!(
        call_json(&first.socket, "GET", "/v1/gpio/GPIO22", "").await["level"],
        1
    );
    let info = node
        .hw
        .lines()
        .into_iter()
        .find(|l| l.name == "GPIO27")
        .unwrap();
    assert_eq!((info.direction, info.level), (None, Some(0)));
    // The watch stream of the still-granted input goes on.
    node.hw.simulate("GPIO17", 1).unwrap();
    assert_eq!(lines.next().await.unwrap()["edge"], "falling");
}

#[tokio::test]
async fn watch_for_triggers() {
    let node = node();
    let err = node.hw.watch("GPIO17").unwrap_err();
    assert!(matches!(err, HardwareError::NotWatchable(_)), "{err}");
    assert!(err.to_string().contains("bramble.gpio=GPIO17:in"), "{err}");
    assert!(matches!(
        node.hw.watch("GPIO99"),
        Err(HardwareError::UnknownLine(_))
    ));
    node.hw.attach("f", led_button()).await.unwrap();
    assert!(matches!(
        node.hw.watch("GPIO27"),
        Err(HardwareError::NotWatchable(_))
    ));
    let mut rx = node.hw.watch("GPIO17").unwrap();
    node.hw.simulate("GPIO17", 0).unwrap();
    let event = rx.recv().await.unwrap();
    // Physical: the wire went low.
    assert_eq!((event.edge, event.level), (Edge::Falling, 0));
    // The receiver outlives a detach and re-attach.
    node.hw.detach("f").await;
    node.hw.attach("f", led_button()).await.unwrap();
    node.hw.simulate("GPIO17", 1).unwrap();
    assert_eq!(rx.recv().await.unwrap().edge, Edge::Rising);
}

#[tokio::test]
async fn simulate_refuses_outputs_and_bad_levels() {
    let node = node();
    node.hw.attach("f", led_button()).await.unwrap();
    let err = node.hw.simulate("GPIO27", 1).unwrap_err();
    assert!(matches!(err, HardwareError::Busy(_)));
    assert!(err.to_string().contains("output of function f"), "{err}");
    assert!(matches!(
        node.hw.simulate("GPIO17", 2),
        Err(HardwareError::Invalid(_))
    ));
    assert!(matches!(
        node.hw.simulate("GPIO99", 1),
        Err(HardwareError::UnknownLine(_))
    ));
}

#[tokio::test]
async fn admin_routes() {
    let node = node();
    node.hw.attach("led-button", led_button()).await.unwrap();
    let sock = node.socket_dir.join("admin.sock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    let server = tokio::spawn(broker::serve(listener, admin::router(Arc::clone(&node.hw))));

    let v = call_json(&sock, "GET", "/system/gpio", "").await;
    assert_eq!(v["backend"], "simulator");
    assert_eq!(v["lines"].as_array().unwrap().len(), 28);
    let gpio17 = &v["lines"][17];
    assert_eq!(gpio17["name"], "GPIO17");
    assert_eq!(gpio17["direction"], "in");
    assert_eq!(gpio17["level"], 1);
    assert_eq!(gpio17["bias"], "pull-up");
    assert_eq!(gpio17["owners"], serde_json::json!(["led-button"]));
    assert_eq!(v["lines"][5]["direction"], Value::Null);

    let mut led = Lines::open(&sock, "/system/gpio/GPIO27/watch").await;
    let mut button = Lines::open(&sock, "/system/gpio/GPIO17/watch").await;
    let v = call_json(&sock, "PUT", "/system/gpio/GPIO17", r#"{"level":0}"#).await;
    assert_eq!(v, serde_json::json!({"line": "GPIO17", "level": 0}));
    let event = button.next().await.unwrap();
    assert_eq!(
        (event["edge"].as_str(), event["level"].as_u64()),
        (Some("falling"), Some(0))
    );
    assert_eq!(
        call_json(&sock, "GET", "/system/gpio/GPIO17", "").await["level"],
        0
    );
    // The simulator shows outputs changing too.
    let sock_fn = node.socket_dir.join("led-button/hw.sock");
    call_json(&sock_fn, "PUT", "/v1/gpio/GPIO27", r#"{"level":1}"#).await;
    assert_eq!(led.next().await.unwrap()["edge"], "rising");

    let (status, text) = call(&sock, "PUT", "/system/gpio/GPIO27", r#"{"level":0}"#).await;
    assert_eq!(status, 409, "{text}");
    let (status, _) = call(&sock, "PUT", "/system/gpio/GPIO99", r#"{"level":0}"#).await;
    assert_eq!(status, 404);
    let (status, _) = call(&sock, "GET", "/system/gpio/GPIO99", "").await;
    assert_eq!(status, 404);
    let (status, _) = call(&sock, "GET", "/system/gpio/GPIO99/watch", "").await;
    assert_eq!(status, 404);
    let (status, _) = call(&sock, "PUT", "/system/gpio/GPIO17", r#"{"level":3}"#).await;
    assert_eq!(status, 400);

    // Toggle: a press and release by default; a burst on request, every edge delivered.
    let v = call_json(&sock, "POST", "/system/gpio/GPIO17/toggle", "").await;
    assert_eq!(v, serde_json::json!({"line": "GPIO17", "level": 0}));
    let edges: Vec<Value> = vec![button.next().await.unwrap(), button.next().await.unwrap()];
    assert_eq!(
        (edges[0]["edge"].as_str(), edges[1]["edge"].as_str()),
        (Some("rising"), Some("falling"))
    );
    let v = call_json(
        &sock,
        "POST",
        "/system/gpio/GPIO17/toggle",
        r#"{"times":101}"#,
    )
    .await;
    assert_eq!(v["level"], 1);
    let first = button.next().await.unwrap()["line_seqno"].as_u64().unwrap();
    let mut last = first;
    for _ in 1..101 {
        last = button.next().await.unwrap()["line_seqno"].as_u64().unwrap();
    }
    assert_eq!(last - first, 100);
    for (body, status) in [
        (r#"{"times":0}"#, 400),
        (r#"{"times":100001}"#, 400),
        (r#"{"times":1000,"interval":"1s"}"#, 400),
        (r#"{"times":2,"interval":"soon"}"#, 400),
        (r#"{"edges":2}"#, 400),
    ] {
        let (got, text) = call(&sock, "POST", "/system/gpio/GPIO17/toggle", body).await;
        assert_eq!(got, status, "{body}: {text}");
    }
    let (status, _) = call(&sock, "POST", "/system/gpio/GPIO27/toggle", "").await;
    assert_eq!(status, 409, "outputs are not driven by the simulator");
    server.abort();
}

#[tokio::test]
async fn lifecycle_futures_are_send() {
    fn assert_send<T: Send>(t: T) -> T {
        t
    }
    let node = node();
    let hw = Arc::clone(&node.hw);
    // The node calls these from spawned tasks.
    tokio::spawn(async move {
        assert_send(hw.attach("f", led_button())).await.unwrap();
        assert_send(hw.detach("f")).await;
        assert_send(hw.shutdown()).await;
    })
    .await
    .unwrap();
}

/// Whether `uid` can see `path` (`test -e` in a shell running as that user).
fn visible_to(uid: u32, path: &Path) -> bool {
    use std::os::unix::process::CommandExt as _;
    std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg("test -e \"$0\"")
        .arg(path)
        .uid(uid)
        .gid(uid)
        .status()
        .unwrap()
        .success()
}

#[tokio::test]
async fn other_host_users_cannot_reach_the_sockets() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root to act as another user");
        return;
    }
    let node = node();
    // An older version made the socket directory 0755: tightened.
    std::fs::create_dir_all(&node.socket_dir).unwrap();
    std::fs::set_permissions(&node.socket_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The temp dir is 0700: open it so only bramble's own modes stand in the way.
    let top = node.socket_dir.parent().unwrap();
    std::fs::set_permissions(top, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mount = node.hw.attach("f", led_button()).await.unwrap();
    let nobody = 65534;
    assert!(visible_to(0, &mount.socket));
    assert!(
        visible_to(nobody, &node.socket_dir),
        "the test itself is blocked"
    );
    assert!(
        !visible_to(nobody, &mount.host_path),
        "another user reaches the function's directory"
    );
    assert!(!visible_to(nobody, &mount.socket));
    // A shared directory such as /tmp is refused rather than made root-only.
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let hw = Hardware::new(HardwareConfig {
        backend: BackendChoice::Simulator,
        socket_dir: Some(shared.path().to_path_buf()),
        ..HardwareConfig::default()
    })
    .unwrap();
    let err = hw.attach("f", led_button()).await.unwrap_err();
    assert!(err.to_string().contains("sticky"), "{err}");
    let mode = std::fs::metadata(shared.path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o1777, "a shared directory was changed");
}

#[tokio::test]
async fn a_deployed_function_keeps_its_output_when_its_lines_cannot_be_requested() {
    let node = node();
    // Another program holds GPIO27 when the node starts again.
    let squatter = node.hw.shared.gpio.request_output("GPIO27", 0).unwrap();
    let led = grants(&[("bramble.gpio", "GPIO27:out")]);
    let err = node.hw.adopt("led", led.clone()).await.unwrap_err();
    assert!(matches!(err, HardwareError::Busy(_)), "{err}");
    assert!(node.hw.mount_of("led").is_none());
    // Deployed all the same: nobody else may be given its output.
    let err = node.hw.check("thief", &led).unwrap_err();
    assert!(matches!(err, HardwareError::Conflict(_)), "{err}");
    assert!(err.to_string().contains("\"led\""), "{err}");
    drop(squatter);
    assert!(node.hw.attach("thief", led.clone()).await.is_err());
    // Its own attach works once the line is free, and keeps it reserved.
    node.hw.attach("led", led.clone()).await.unwrap();
    assert!(node.hw.check("thief", &led).is_err());
    // Deleted: free.
    node.hw.detach("led").await;
    node.hw.check("thief", &led).unwrap();
    // A refused deploy (not adopted) reserves nothing.
    let squatter = node.hw.shared.gpio.request_output("GPIO27", 0).unwrap();
    assert!(node.hw.attach("new", led.clone()).await.is_err());
    node.hw.check("thief", &led).unwrap();
    drop(squatter);
    // Nor does a failed update take the function's reservation away.
    node.hw.attach("led", led.clone()).await.unwrap();
    let squatter = node.hw.shared.gpio.request_output("GPIO5", 0).unwrap();
    let more = grants(&[("bramble.gpio", "GPIO27:out,GPIO5:out")]);
    assert!(node.hw.attach("led", more).await.is_err());
    assert!(node.hw.check("thief", &led).is_err());
    let gpio5 = grants(&[("bramble.gpio", "GPIO5:out")]);
    node.hw.check("thief", &gpio5).unwrap();
    drop(squatter);
}

#[tokio::test]
async fn a_trigger_waiting_for_its_line_gets_its_first_edges() {
    let node = node();
    let hw = Arc::clone(&node.hw);
    let (waiting_tx, waiting_rx) = tokio::sync::oneshot::channel();
    let mut waiting_tx = Some(waiting_tx);
    let watcher = tokio::spawn(async move {
        hw.watch_when_requested("GPIO17", |e| {
            if let Some(tx) = waiting_tx.take() {
                let _ = tx.send(e.to_string());
            }
        })
        .await
    });
    let reason = tokio::time::timeout(TIMEOUT, waiting_rx)
        .await
        .unwrap()
        .unwrap();
    assert!(reason.contains("not requested"), "{reason}");
    // Edges of the line before it is requested are not the trigger's.
    node.hw.simulate("GPIO17", 1).unwrap();
    // Requested, and an edge at once: received, not lost to a poll interval.
    node.hw
        .attach("f", grants(&[("bramble.gpio", "GPIO17:in")]))
        .await
        .unwrap();
    node.hw.simulate("GPIO17", 0).unwrap();
    let mut edges = tokio::time::timeout(TIMEOUT, watcher)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let first = tokio::time::timeout(TIMEOUT, edges.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.edge, Edge::Falling);
    assert!(
        tokio::time::timeout(Duration::from_millis(50), edges.recv())
            .await
            .is_err(),
        "an edge from before the request was delivered"
    );
    // Unknown lines fail at once; someone's output is waited out.
    assert!(matches!(
        node.hw.watch_when_requested("GPIO99", |_| {}).await,
        Err(HardwareError::UnknownLine(_))
    ));
}

#[tokio::test]
async fn spi_routes() {
    let node = node();
    let sock = node
        .hw
        .attach("spi", grants(&[("bramble.spi", "0.0,0.1")]))
        .await
        .unwrap()
        .socket;
    // The simulator's SPI is a loopback: what is written is read back.
    let v = call_json(&sock, "POST", "/v1/spi/0/0", r#"{"write":[159,0,0]}"#).await;
    assert_eq!(v, serde_json::json!({"data": [159, 0, 0]}));
    let v = call_json(
        &sock,
        "POST",
        "/v1/spi/0/1",
        r#"{"write":[1,2],"speed_hz":125000000,"mode":3}"#,
    )
    .await;
    assert_eq!(v["data"], serde_json::json!([1, 2]));
    let big = format!("{{\"write\":{:?}}}", vec![7u8; backend::MAX_SPI_TRANSFER]);
    let v = call_json(&sock, "POST", "/v1/spi/0/0", &big).await;
    assert_eq!(
        v["data"].as_array().map(Vec::len),
        Some(backend::MAX_SPI_TRANSFER)
    );
    let v = call_json(&sock, "GET", "/v1/capabilities", "").await;
    assert_eq!(v["spi"], serde_json::json!(["0.0", "0.1"]));
    assert_eq!(v["pwm"], serde_json::json!([]));
    // Not granted: 403 naming the device, the caller's grants and the annotation.
    let (status, text) = call(&sock, "POST", "/v1/spi/1/0", r#"{"write":[1]}"#).await;
    assert_eq!(status, 403, "{text}");
    assert!(
        text.starts_with("SPI 1.0 is not granted to this function (grants: 0.0, 0.1)"),
        "{text}"
    );
    assert!(text.contains("bramble.spi annotation"), "{text}");
    // Bad input.
    let too_big = format!(
        "{{\"write\":{:?}}}",
        vec![7u8; backend::MAX_SPI_TRANSFER + 1]
    );
    for (uri, body, what) in [
        ("/v1/spi/0/0", r#"{"write":[1],"mode":4}"#, "mode 4"),
        (
            "/v1/spi/0/0",
            r#"{"write":[1],"speed_hz":999}"#,
            "speed_hz 999",
        ),
        (
            "/v1/spi/0/0",
            r#"{"write":[1],"speed_hz":125000001}"#,
            "speed_hz 125000001",
        ),
        ("/v1/spi/0/0", too_big.as_str(), "at most 4096 bytes"),
        ("/v1/spi/0/0", r#"{"write":[]}"#, "nothing to do"),
        ("/v1/spi/0/0", r#"{"read":1}"#, "the body must be"),
        ("/v1/spi/0/0", r#"{"write":[256]}"#, "the body must be"),
        ("/v1/spi/7/0", r#"{"write":[1]}"#, "SPI bus \"7\""),
        ("/v1/spi/0/x", r#"{"write":[1]}"#, "SPI chip select \"x\""),
    ] {
        let (status, text) = call(&sock, "POST", uri, body).await;
        assert_eq!(status, 400, "{uri} {what}: {text}");
        assert!(text.contains(what), "{uri}: {text} should contain {what}");
    }
}

/// A PWM channel's state as the backend has it (not through a function's socket).
fn pwm_state(node: &Node, channel: u8) -> backend::PwmState {
    node.hw.shared.pwm().get(channel).unwrap()
}

#[tokio::test]
async fn pwm_routes() {
    let node = node();
    let sock = node
        .hw
        .attach("servo", grants(&[("bramble.pwm", "0")]))
        .await
        .unwrap()
        .socket;
    let v = call_json(&sock, "GET", "/v1/pwm/0", "").await;
    assert_eq!(
        v,
        serde_json::json!({"channel": 0, "period_ns": 0, "duty_ns": 0, "enabled": false})
    );
    let set = r#"{"period_ns":20000000,"duty_ns":1500000,"enabled":true}"#;
    let v = call_json(&sock, "PUT", "/v1/pwm/0", set).await;
    let expected = serde_json::json!({"channel": 0, "period_ns": 20_000_000,
                                      "duty_ns": 1_500_000, "enabled": true});
    assert_eq!(v, expected);
    assert_eq!(call_json(&sock, "GET", "/v1/pwm/0", "").await, expected);
    assert!(pwm_state(&node, 0).enabled);
    assert_eq!(
        call_json(&sock, "GET", "/v1/capabilities", "").await["pwm"],
        serde_json::json!([0])
    );
    // Not granted.
    for method in ["GET", "PUT"] {
        let (status, text) = call(&sock, method, "/v1/pwm/1", set).await;
        assert_eq!(status, 403, "{method}: {text}");
        assert!(
            text.starts_with("PWM channel 1 is not granted to this function (grants: 0)"),
            "{text}"
        );
        assert!(text.contains("bramble.pwm annotation"), "{text}");
    }
    // Bad input; the channel keeps its state.
    for (uri, body, what) in [
        (
            "/v1/pwm/0",
            r#"{"period_ns":1000000,"duty_ns":1000001,"enabled":true}"#,
            "longer than period_ns",
        ),
        (
            "/v1/pwm/0",
            r#"{"period_ns":0,"duty_ns":0,"enabled":true}"#,
            "period_ns 0",
        ),
        (
            "/v1/pwm/0",
            r#"{"period_ns":2000000000,"duty_ns":0,"enabled":true}"#,
            "outside",
        ),
        ("/v1/pwm/0", r#"{"period_ns":1000000}"#, "the body must be"),
        (
            "/v1/pwm/0",
            r#"{"channel":0,"period_ns":1000000,"duty_ns":0,"enabled":true}"#,
            "the body must be",
        ),
        ("/v1/pwm/2", set, "PWM channel \"2\""),
    ] {
        let (status, text) = call(&sock, "PUT", uri, body).await;
        assert_eq!(status, 400, "{uri} {body}: {text}");
        assert!(text.contains(what), "{text} should contain {what}");
    }
    assert_eq!(call_json(&sock, "GET", "/v1/pwm/0", "").await, expected);
    // Disabled from the function.
    let v = call_json(
        &sock,
        "PUT",
        "/v1/pwm/0",
        r#"{"period_ns":1000,"duty_ns":1000,"enabled":false}"#,
    )
    .await;
    assert_eq!(v["enabled"], false);
    assert_eq!(v["duty_ns"], 1000);
}

#[tokio::test]
async fn pwm_channels_go_to_their_safe_state() {
    let node = node();
    let sock = node
        .hw
        .attach("servo", grants(&[("bramble.pwm", "0 1")]))
        .await
        .unwrap()
        .socket;
    let on = r#"{"period_ns":20000000,"duty_ns":1500000,"enabled":true}"#;
    call_json(&sock, "PUT", "/v1/pwm/0", on).await;
    call_json(&sock, "PUT", "/v1/pwm/1", on).await;
    // The replicas stopped: disabled (period and duty kept); the socket stays.
    node.hw.safe_state("servo");
    for channel in [0, 1] {
        let state = pwm_state(&node, channel);
        assert!(!state.enabled, "channel {channel}");
        assert_eq!(state.period_ns, 20_000_000);
    }
    call_json(&sock, "PUT", "/v1/pwm/0", on).await;
    call_json(&sock, "PUT", "/v1/pwm/1", on).await;
    // Re-attached without channel 1: that one is disabled, channel 0 runs on.
    node.hw
        .attach("servo", grants(&[("bramble.pwm", "0")]))
        .await
        .unwrap();
    assert!(pwm_state(&node, 0).enabled);
    assert!(!pwm_state(&node, 1).enabled);
    // Deleted: disabled.
    node.hw.detach("servo").await;
    assert!(!pwm_state(&node, 0).enabled);
}

#[tokio::test]
async fn a_pwm_channel_belongs_to_one_function() {
    let node = node();
    node.hw
        .attach("a", grants(&[("bramble.pwm", "0")]))
        .await
        .unwrap();
    let second = grants(&[("bramble.pwm", "1,0")]);
    let err = node.hw.check("b", &second).unwrap_err();
    assert!(matches!(err, HardwareError::Conflict(_)), "{err}");
    assert_eq!(err.kind(), ErrorKind::Conflict);
    let text = err.to_string();
    assert!(
        text.contains("PWM channel 0") && text.contains("\"a\"") && text.contains("\"b\""),
        "{text}"
    );
    assert!(node.hw.attach("b", second.clone()).await.is_err());
    assert!(!node.socket_dir.join("b").exists());
    // Another channel is free; SPI devices may be shared.
    let spi = grants(&[("bramble.pwm", "1"), ("bramble.spi", "0.0")]);
    node.hw.attach("b", spi.clone()).await.unwrap();
    node.hw
        .attach("c", grants(&[("bramble.spi", "0.0")]))
        .await
        .unwrap();
    // Once the holder is deleted, the channel is free.
    node.hw.detach("a").await;
    node.hw.detach("b").await;
    node.hw.attach("b", second).await.unwrap();
}
