//! End-to-end tests of `bramble up`: a real node process on a private containerd, real CNI in
//! a private network namespace, the fixture function image, driven over HTTP like faas-cli,
//! the go-sdk and curl drive it; and `scripts/demo`, the README's command that runs it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bramble_testkit::Node;
use bramble_testkit::harness::Suite;
use bramble_testkit::http::Response;
use serde_json::{Value, json};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const FIXTURE: &str = "docker.io/library/fixture:test";
const NS: &str = "openfaas-fn";

/// The tests of this module, as a part of the `it` binary.
pub(crate) fn suite() -> Suite {
    Suite::new("node", crate::NODE)
        .async_trial("api_conformance_every_route", api_conformance_every_route)
        .async_trial(
            "bad_input_is_refused_and_changes_nothing",
            bad_input_is_refused_and_changes_nothing,
        )
        .async_trial(
            "end_to_end_with_restarts_in_the_middle",
            end_to_end_with_restarts_in_the_middle,
        )
        .async_trial(
            "cold_requests_wait_for_readiness_instead_of_failing",
            cold_requests_wait_for_readiness,
        )
        .async_trial(
            "repeated_cold_starts_are_not_mistaken_for_crashes",
            repeated_cold_starts_are_not_mistaken_for_crashes,
        )
        .async_trial(
            "idle_functions_scale_to_zero_and_back",
            idle_functions_scale_to_zero_and_back,
        )
        .async_trial(
            "timeouts_and_broken_functions_get_clear_errors",
            timeouts_and_broken_functions_get_clear_errors,
        )
        .async_trial(
            "proxy_streams_large_bodies_and_events",
            proxy_streams_large_bodies_and_events,
        )
        .async_trial(
            "demo_fails_clearly_when_hello_does_not_answer",
            demo_fails_clearly_when_hello_does_not_answer,
        )
}

/// A node with the fixture image present in its containerd namespace.
async fn node(name: &str, extra_config: &str) -> Result<Node, Box<dyn std::error::Error>> {
    Node::with_fixture(Path::new(env!("CARGO_BIN_EXE_bramble")), name, extra_config).await
}

fn deployment(name: &str, env: &Value) -> Vec<u8> {
    json!({"service": name, "image": FIXTURE, "envVars": env, "labels": {}, "annotations": {}})
        .to_string()
        .into_bytes()
}

async fn deploy(node: &Node, name: &str, env: &Value) -> Result<(), Box<dyn std::error::Error>> {
    let r = node
        .api("POST", "/system/functions", &deployment(name, env))
        .await?;
    r.expect(200, "deploy")?;
    Ok(())
}

fn json_of(r: &Response) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.text()))
}

/// Polls the logs until a line containing `text` is there (output reaches the log buffer
/// through the task's FIFO a moment after the function printed it).
async fn wait_log(
    node: &Node,
    query: &str,
    text: &str,
) -> Result<Response, Box<dyn std::error::Error>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let logs = node.api("GET", query, b"").await?;
        if logs.text().contains(text) {
            return Ok(logs);
        }
        if Instant::now() > deadline {
            return Err(format!("{text:?} never appeared in {query}: {}", logs.text()).into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `availableReplicas` reaches `want`.
async fn wait_available(
    node: &Node,
    name: &str,
    want: u64,
) -> Result<Value, Box<dyn std::error::Error>> {
    Ok(node.wait_available(name, want).await?)
}

/// A one-shot HTTP listener that records the first request it receives (callback target).
async fn callback_listener() -> Result<
    (
        SocketAddr,
        tokio::sync::oneshot::Receiver<(String, Vec<u8>)>,
    ),
    std::io::Error,
> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let Ok(n) = s.read(&mut buf).await else {
                return;
            };
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw[..end]).to_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if raw.len() >= end + 4 + len {
                    let body = raw[end + 4..end + 4 + len].to_vec();
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                        .await;
                    let _ = tx.send((head, body));
                    return;
                }
            }
        }
    });
    Ok((addr, rx))
}

/// A `GET /system/logs?...&follow=true` read over HTTP as it streams.
struct FollowedLogs {
    stream: tokio::net::TcpStream,
    seen: Vec<u8>,
}

impl FollowedLogs {
    /// Sends the request and waits for the response head (200, NDJSON).
    async fn open(node: &Node, query: &str) -> Result<FollowedLogs, Box<dyn std::error::Error>> {
        use tokio::io::AsyncWriteExt;
        let mut stream = tokio::net::TcpStream::connect(node.addr()).await?;
        let request = format!(
            "GET /system/logs?{query}&follow=true HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\r\n",
            node.auth_header()?
        );
        stream.write_all(request.as_bytes()).await?;
        let mut logs = FollowedLogs {
            stream,
            seen: Vec::new(),
        };
        let head = logs.read_until("\r\n\r\n").await?;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_lowercase().contains("application/x-ndjson"),
            "{head}"
        );
        Ok(logs)
    }

    /// Reads until `needle` has arrived (10 s at most); answers everything read so far.
    async fn read_until(&mut self, needle: &str) -> Result<String, Box<dyn std::error::Error>> {
        use tokio::io::AsyncReadExt;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&self.seen).contains(needle) {
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut buf))
                .await
                .map_err(|_| {
                    format!(
                        "{needle:?} did not arrive on the followed logs: {}",
                        String::from_utf8_lossy(&self.seen)
                    )
                })??;
            if n == 0 {
                return Err(format!(
                    "the followed logs ended before {needle:?}: {}",
                    String::from_utf8_lossy(&self.seen)
                )
                .into());
            }
            self.seen.extend_from_slice(&buf[..n]);
        }
        Ok(String::from_utf8_lossy(&self.seen).into_owned())
    }
}

async fn api_conformance_every_route() -> TestResult {
    let node = node("conform", "").await?;

    // Open routes and auth.
    node.call("GET", "/healthz", &[], b"")
        .await?
        .expect(200, "healthz")?;
    let unauth = node.call("GET", "/system/functions", &[], b"").await?;
    unauth.expect(401, "no credentials")?;
    assert_eq!(
        unauth.header("www-authenticate"),
        Some("Basic realm=\"Restricted\"")
    );
    let wrong = node
        .call(
            "GET",
            "/system/functions",
            &[("Authorization", "Basic YWRtaW46d3Jvbmc=")],
            b"",
        )
        .await?;
    wrong.expect(401, "wrong credentials")?;
    for route in ["/system/info", "/system/namespaces", "/system/secrets"] {
        node.call("GET", route, &[], b"")
            .await?
            .expect(401, route)?;
    }

    // Info.
    let info = json_of(&node.api("GET", "/system/info", b"").await?);
    assert_eq!(info["provider"]["provider"], "bramble");
    assert_eq!(info["provider"]["orchestration"], "containerd");
    assert!(
        info["version"]["release"].is_string() && info["arch"].is_string(),
        "{info}"
    );

    // Namespaces.
    let namespaces = json_of(&node.api("GET", "/system/namespaces", b"").await?);
    assert_eq!(namespaces, json!([NS]));
    let team = json!({"name": "team", "labels": {"openfaas": "1"}, "annotations": {"owner": "me"}})
        .to_string();
    node.api("POST", "/system/namespace/", team.as_bytes())
        .await?
        .expect(201, "create namespace")?;
    node.api("POST", "/system/namespace/", team.as_bytes())
        .await?
        .expect(409, "create it twice")?;
    let unlabelled = json!({"name": "plain", "labels": {}}).to_string();
    node.api("POST", "/system/namespace/", unlabelled.as_bytes())
        .await?
        .expect(400, "namespace without openfaas label")?;
    let got = json_of(&node.api("GET", "/system/namespace/team", b"").await?);
    assert_eq!(
        (got["name"].as_str(), got["labels"]["openfaas"].as_str()),
        (Some("team"), Some("1"))
    );
    let updated = json!({"name": "team", "labels": {"openfaas": "1", "tier": "b"}}).to_string();
    node.api("PUT", "/system/namespace/team", updated.as_bytes())
        .await?
        .expect(202, "update namespace")?;
    assert_eq!(
        json_of(&node.api("GET", "/system/namespace/team", b"").await?)["labels"]["tier"],
        "b"
    );
    node.api("GET", "/system/namespace/nope", b"")
        .await?
        .expect(404, "unknown namespace")?;

    // Secrets: value and rawValue, listed without values, updated, deleted via body or query.
    let secret = json!({"name": "api-key", "namespace": NS, "value": "s3cret"}).to_string();
    node.api("POST", "/system/secrets", secret.as_bytes())
        .await?
        .expect(200, "create secret")?;
    let raw = json!({"name": "raw-key", "rawValue": "AAEC"}).to_string();
    node.api("POST", "/system/secrets", raw.as_bytes())
        .await?
        .expect(200, "create raw secret")?;
    let listed = node
        .api("GET", &format!("/system/secrets?namespace={NS}"), b"")
        .await?;
    assert!(
        !listed.text().contains("s3cret"),
        "secret values are never listed"
    );
    let names: Vec<String> = json_of(&listed)
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["api-key", "raw-key"]);
    let changed = json!({"name": "api-key", "value": "n3w"}).to_string();
    node.api("PUT", "/system/secrets", changed.as_bytes())
        .await?
        .expect(200, "update secret")?;
    node.api(
        "DELETE",
        "/system/secrets",
        br#"{"name":"raw-key","namespace":"openfaas-fn"}"#,
    )
    .await?
    .expect(200, "delete (body)")?;
    node.api(
        "DELETE",
        &format!("/system/secrets?namespace={NS}"),
        br#"{"name":"raw-key"}"#,
    )
    .await?
    .expect(404, "delete again")?;

    // Functions: deploy (with the secret), list, status, PUT fallback, invoke on every method.
    let body =
        json!({"service": "echo", "image": FIXTURE, "envProcess": "cat", "envVars": {"BODY": "v1"},
        "secrets": ["api-key"], "labels": {"app": "echo"}, "annotations": {"topic": "t"},
        "limits": {"memory": "64Mi", "cpu": "500m"}, "requests": {"memory": "32Mi"}})
        .to_string();
    node.api("PUT", "/system/functions", body.as_bytes())
        .await?
        .expect(404, "PUT of a new function (faas-cli then POSTs)")?;
    let deployed = node
        .api("POST", "/system/functions", body.as_bytes())
        .await?;
    deployed.expect(200, "deploy")?;
    assert!(
        deployed.body.is_empty(),
        "deploy answers 200 with an empty body"
    );
    node.api("POST", "/system/functions", body.as_bytes())
        .await?
        .expect(409, "deploy twice")?;
    let status = wait_available(&node, "echo", 1).await?;
    for field in [
        "name",
        "image",
        "namespace",
        "envProcess",
        "envVars",
        "secrets",
        "labels",
        "annotations",
        "replicas",
        "availableReplicas",
        "createdAt",
    ] {
        assert!(
            status.get(field).is_some(),
            "status lacks {field}: {status}"
        );
    }
    assert_eq!(status["image"], FIXTURE);
    assert_eq!(status["replicas"], 1);
    let list = json_of(
        &node
            .api("GET", &format!("/system/functions?namespace={NS}"), b"")
            .await?,
    );
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    assert_eq!(list[0]["name"], "echo");
    let usage = json_of(
        &node
            .api(
                "GET",
                &format!("/system/function/echo?namespace={NS}&usage=1"),
                b"",
            )
            .await?,
    );
    assert!(
        usage["usage"]["totalMemoryBytes"].as_f64().unwrap_or(0.0) > 0.0,
        "usage has real memory: {usage}"
    );
    assert!(usage["usage"].get("cpu").is_some(), "{usage}");
    // `usage.cpu` is millicores averaged over about the last minute (measured from the
    // replica's start while it is younger): after a second of one busy core (at least 500 ms
    // of CPU under the 500m limit), even the first read shows it. At least 500 ms / 125 s =
    // 4 millicores (a value in cores would be below 1), at most one core (1000) and a margin.
    node.call("GET", "/function/echo/burn?ms=1000", &[], b"")
        .await?
        .expect(200, "burn CPU")?;
    let usage = json_of(
        &node
            .api(
                "GET",
                &format!("/system/function/echo?namespace={NS}&usage=1"),
                b"",
            )
            .await?,
    );
    let cpu = usage["usage"]["cpu"].as_f64().unwrap_or(0.0);
    assert!(
        (4.0..1500.0).contains(&cpu),
        "usage.cpu after a second of CPU: {usage}"
    );
    node.api("GET", "/system/function/nope", b"")
        .await?
        .expect(404, "unknown function")?;

    for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        let r = node.call(method, "/function/echo", &[], b"").await?;
        r.expect(200, method)?;
        assert_eq!(r.text(), "v1");
        assert!(
            r.header("x-call-id").is_some() && r.header("x-duration-seconds").is_some(),
            "{method}: {:?}",
            r.headers
        );
    }
    let head = node
        .call("HEAD", "/function/echo.openfaas-fn", &[], b"")
        .await?;
    head.expect(200, "HEAD name.namespace")?;
    let headers = node
        .call(
            "GET",
            "/function/echo.openfaas-fn/headers?x=1",
            &[("X-Call-Id", "my-call")],
            b"",
        )
        .await?
        .text();
    assert!(
        headers.starts_with("GET /headers?x=1 "),
        "path and query forwarded: {headers}"
    );
    assert!(
        headers.contains("x-call-id: my-call")
            && headers.contains("x-forwarded-for:")
            && headers.contains("x-forwarded-host:"),
        "{headers}"
    );
    let secret_read = node
        .call(
            "GET",
            "/function/echo/read?path=/var/openfaas/secrets/api-key",
            &[],
            b"",
        )
        .await?;
    assert_eq!(secret_read.text(), "n3w");
    let env = node
        .call("GET", "/function/echo/env", &[], b"")
        .await?
        .text();
    assert!(
        env.contains("fprocess=cat"),
        "envProcess becomes fprocess: {env}"
    );

    // Async with callback.
    let (callback, received) = callback_listener().await?;
    let cb = format!("http://{callback}/done");
    let accepted = node
        .call(
            "POST",
            "/async-function/echo",
            &[("X-Callback-Url", &cb)],
            b"payload",
        )
        .await?;
    accepted.expect(202, "async")?;
    let call_id = accepted
        .header("x-call-id")
        .expect("async answers with X-Call-Id")
        .to_owned();
    let (head, body) = tokio::time::timeout(Duration::from_secs(30), received).await??;
    assert!(head.contains("x-function-status: 200"), "{head}");
    assert!(head.contains(&format!("x-call-id: {call_id}")), "{head}");
    assert!(head.contains("x-duration-seconds:"), "{head}");
    assert_eq!(body, b"v1");

    // Scale to zero and back.
    let scale = |n: u64| json!({"serviceName": "echo", "replicas": n, "namespace": NS}).to_string();
    node.api(
        "POST",
        "/system/scale-function/ignored-path-name",
        scale(0).as_bytes(),
    )
    .await?
    .expect(200, "scale to 0")?;
    let zero = wait_available(&node, "echo", 0).await?;
    assert!(
        zero.get("replicas").is_none(),
        "replicas 0 is omitted like Go's omitempty: {zero}"
    );
    node.api("POST", "/system/scale-function/echo", scale(1).as_bytes())
        .await?
        .expect(200, "scale to 1")?;
    wait_available(&node, "echo", 1).await?;

    // Logs: NDJSON with the documented fields, tail and follow.
    node.call("GET", "/function/echo/log?line=conformance-line", &[], b"")
        .await?;
    let logs = wait_log(
        &node,
        &format!("/system/logs?name=echo&namespace={NS}&tail=5"),
        "conformance-line",
    )
    .await?;
    logs.expect(200, "logs")?;
    assert!(
        logs.header("content-type")
            .is_some_and(|t| t.contains("application/x-ndjson")),
        "{:?}",
        logs.headers
    );
    let lines: Vec<Value> = logs
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).expect("NDJSON line"))
        .collect();
    assert!(lines.len() <= 5 && !lines.is_empty());
    let last = lines
        .iter()
        .find(|l| l["text"] == "conformance-line")
        .expect("the logged line");
    for field in ["name", "namespace", "instance", "timestamp", "text"] {
        assert!(last.get(field).is_some(), "log line lacks {field}: {last}");
    }
    node.api("GET", "/system/logs?name=echo&tail=abc", b"")
        .await?
        .expect(422, "unparsable query")?;

    // since: lines from that instant on. The conformance line was already there before it.
    let since = humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string();
    node.call("GET", "/function/echo/log?line=after-since", &[], b"")
        .await?;
    let recent = wait_log(
        &node,
        &format!("/system/logs?name=echo&namespace={NS}&since={since}"),
        "after-since",
    )
    .await?
    .text();
    assert!(
        !recent.contains("conformance-line"),
        "since={since} still gave an older line: {recent}"
    );

    // follow: the response stays open and brings a line printed after it started.
    let mut follow = FollowedLogs::open(&node, &format!("name=echo&namespace={NS}&tail=1")).await?;
    follow.read_until("after-since").await?;
    node.call("GET", "/function/echo/log?line=followed-line", &[], b"")
        .await?
        .expect(200, "log while following")?;
    let seen = follow.read_until("followed-line").await?;
    let line: Value = serde_json::from_str(
        seen.lines()
            .find(|l| l.contains("followed-line"))
            .ok_or("no followed line")?,
    )?;
    assert_eq!(line["text"], "followed-line", "{line}");
    drop(follow);

    // Metrics after invocations.
    let metrics = node.call("GET", "/metrics", &[], b"").await?.text();
    assert!(
        metrics.contains(
            "gateway_function_invocation_total{code=\"200\",function_name=\"echo.openfaas-fn\"}"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("gateway_functions_seconds_bucket"),
        "histogram present"
    );
    assert!(
        metrics.contains("gateway_service_count{function_name=\"echo.openfaas-fn\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pod_memory_working_set_bytes{function_name=\"echo.openfaas-fn\"}"),
        "{metrics}"
    );

    // Update (PUT) and delete.
    let v2 = json!({"service": "echo", "image": FIXTURE, "envVars": {"BODY": "v2"}, "secrets": ["api-key"]}).to_string();
    node.api("PUT", "/system/functions", v2.as_bytes())
        .await?
        .expect(200, "update")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while node.call("GET", "/function/echo", &[], b"").await?.text() != "v2" {
        assert!(Instant::now() < deadline, "update never took effect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node.api("DELETE", "/system/namespace/team", br#"{"name":"team"}"#)
        .await?
        .expect(202, "delete namespace")?;
    node.api(
        "DELETE",
        "/system/functions",
        br#"{"functionName":"echo","namespace":"openfaas-fn"}"#,
    )
    .await?
    .expect(200, "delete")?;
    node.api("DELETE", "/system/functions", br#"{"functionName":"echo"}"#)
        .await?
        .expect(404, "delete again")?;
    node.call("GET", "/function/echo", &[], b"")
        .await?
        .expect(404, "invoke a deleted function")?;
    assert_eq!(
        json_of(&node.api("GET", "/system/functions", b"").await?),
        json!([])
    );
    Ok(())
}

async fn bad_input_is_refused_and_changes_nothing() -> TestResult {
    let node = node("badinput", "max_api_body = \"64Ki\"").await?;
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (
            br#"{"service":"Bad_Name","image":"x"}"#.to_vec(),
            400,
            "service",
        ),
        (
            br#"{"service":"ok","image":"x","namespace":"ghost"}"#.to_vec(),
            400,
            "namespace",
        ),
        (b"{not json".to_vec(), 400, "JSON"),
        (
            br#"{"service":"ok","image":"x","envVars":5}"#.to_vec(),
            400,
            "envVars",
        ),
        (
            br#"{"service":"ok","image":"x","limits":{"memory":"128Qi"}}"#.to_vec(),
            400,
            "limits.memory",
        ),
        (
            br#"{"service":"ok","image":"Not A Reference"}"#.to_vec(),
            400,
            "image",
        ),
        (
            br#"{"service":"ok","image":"x","secrets":["missing"]}"#.to_vec(),
            400,
            "secrets",
        ),
        (
            br#"{"service":"ok","image":"x","annotations":{"bramble.timeout":"soon"}}"#.to_vec(),
            400,
            "bramble.timeout",
        ),
        (
            format!(
                r#"{{"service":"ok","image":"x","envVars":{{"A":"{}"}}}}"#,
                "x".repeat(70_000)
            )
            .into_bytes(),
            413,
            "",
        ),
    ];
    for (body, status, field) in cases {
        let r = node.api("POST", "/system/functions", &body).await?;
        assert_eq!(r.status, status, "{field}: {}", r.text());
        assert!(
            r.text().contains(field),
            "the message names {field:?}: {}",
            r.text()
        );
    }
    let bad_secrets = [
        br#"{"name":"../etc","value":"x"}"#.to_vec(),
        br#"{"name":"a/b","value":"x"}"#.to_vec(),
    ];
    for body in bad_secrets {
        let r = node.api("POST", "/system/secrets", &body).await?;
        assert_eq!(r.status, 400, "{}", r.text());
    }
    let bad_scale = json!({"serviceName": "ghost", "replicas": 1}).to_string();
    node.api("POST", "/system/scale-function/ghost", bad_scale.as_bytes())
        .await?
        .expect(404, "scale unknown")?;
    // Nothing was created by any of that.
    assert_eq!(
        json_of(&node.api("GET", "/system/functions", b"").await?),
        json!([])
    );
    assert_eq!(
        json_of(&node.api("GET", "/system/secrets", b"").await?),
        json!([])
    );
    // The state file is only written by changes; if anything wrote it, it holds no function.
    if let Ok(bytes) = std::fs::read(node.state_dir().join("state.json")) {
        let state: Value = serde_json::from_slice(&bytes)?;
        assert_eq!(state["functions"], json!({}));
    }
    Ok(())
}

async fn end_to_end_with_restarts_in_the_middle() -> TestResult {
    let mut node = node("e2e", "").await?;
    deploy(&node, "hello", &json!({"BODY": "hello v1"})).await?;
    wait_available(&node, "hello", 1).await?;
    assert_eq!(
        node.call("GET", "/function/hello", &[], b"").await?.text(),
        "hello v1"
    );

    // Async with callback.
    let (callback, received) = callback_listener().await?;
    let accepted = node
        .call(
            "POST",
            "/async-function/hello",
            &[("X-Callback-Url", &format!("http://{callback}/"))],
            b"",
        )
        .await?;
    accepted.expect(202, "async")?;
    let (head, body) = tokio::time::timeout(Duration::from_secs(30), received).await??;
    assert!(
        head.contains("x-function-status: 200") && body == b"hello v1",
        "{head}"
    );

    // Clean restart of the daemon: function, namespace and secret survive; still served.
    node.api(
        "POST",
        "/system/secrets",
        br#"{"name":"token","value":"t"}"#,
    )
    .await?
    .expect(200, "create secret")?;
    let lab = json!({"name": "lab", "labels": {"openfaas": "1"}, "annotations": {"room": "shed"}});
    node.api("POST", "/system/namespace/", lab.to_string().as_bytes())
        .await?
        .expect(201, "create namespace")?;
    let status = node.stop()?;
    assert!(status.success(), "SIGTERM ends bramble cleanly: {status}");
    assert_eq!(
        node.call("GET", "/function/hello", &[], b"")
            .await
            .ok()
            .map(|r| r.status),
        None,
        "nothing listens while stopped"
    );
    node.start_again()?;
    assert_eq!(
        node.call("GET", "/function/hello", &[], b"").await?.text(),
        "hello v1"
    );
    let secrets = json_of(&node.api("GET", "/system/secrets", b"").await?);
    assert_eq!(secrets[0]["name"], "token");
    let got = node.api("GET", "/system/namespace/lab", b"").await?;
    got.expect(200, "namespace after the restart")?;
    let got = json_of(&got);
    assert_eq!(
        (&got["name"], &got["annotations"]["room"]),
        (&json!("lab"), &json!("shed")),
        "{got}"
    );
    assert_eq!(
        json_of(&node.api("GET", "/system/namespaces", b"").await?),
        json!([NS, "lab"])
    );

    // Scale to zero; the next request is a cold start answered with 200, not a 5xx.
    node.scale("hello", 0).await?;
    let cold = node.call("GET", "/function/hello", &[], b"").await?;
    cold.expect(200, "cold invocation")?;
    assert_eq!(cold.text(), "hello v1");
    assert_eq!(
        json_of(&node.api("GET", "/system/function/hello", b"").await?)["replicas"],
        1,
        "scaled back from zero"
    );

    // A crash of the daemon (SIGKILL): everything is adopted again, no duplicate containers.
    node.kill();
    node.start_again()?;
    wait_available(&node, "hello", 1).await?;
    assert_eq!(
        node.call("GET", "/function/hello", &[], b"").await?.text(),
        "hello v1"
    );
    let ctr = std::process::Command::new("ctr")
        .arg("--address")
        .arg(node.env.containerd.socket())
        .args(["-n", &node.env.config.namespace, "containers", "ls", "-q"])
        .output()?;
    let containers = String::from_utf8_lossy(&ctr.stdout);
    let tasks = std::process::Command::new("ctr")
        .arg("--address")
        .arg(node.env.containerd.socket())
        .args(["-n", &node.env.config.namespace, "tasks", "ls"])
        .output()?;
    let tasks = String::from_utf8_lossy(&tasks.stdout);
    // One replica running; at most one stopped container beside it, the spare a start
    // during the scale to zero above left (see the supervisor's `stopped`).
    assert_eq!(
        tasks.lines().filter(|l| l.contains("RUNNING")).count(),
        1,
        "one running task after adoption: {tasks}"
    );
    assert!(
        containers.lines().count() <= 2,
        "no duplicate containers after adoption: {containers}"
    );

    // Update to another image (uploaded, a distinct one whose `/` answers its own BODY);
    // logs show lines; delete.
    const V2: &str = "docker.io/library/fixture:v2";
    let uploaded = node
        .upload_fixture_variant("fixture:v2", &[("BODY", "hello from image v2")])
        .await?;
    uploaded.expect(200, "upload the second image")?;
    assert_eq!(
        json_of(&uploaded)["images"],
        json!([V2]),
        "{}",
        uploaded.text()
    );
    let v2 = json!({"service": "hello", "image": V2, "envVars": {}}).to_string();
    node.api("PUT", "/system/functions", v2.as_bytes())
        .await?
        .expect(200, "update")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while node.call("GET", "/function/hello", &[], b"").await?.text() != "hello from image v2" {
        assert!(Instant::now() < deadline, "update did not take effect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = wait_available(&node, "hello", 1).await?;
    assert_eq!(status["image"], V2, "{status}");
    let env = node
        .call("GET", "/function/hello/env", &[], b"")
        .await?
        .text();
    assert!(
        env.contains("BODY=hello from image v2\n"),
        "the new image's configuration: {env}"
    );
    for _ in 0..5 {
        assert_eq!(
            node.call("GET", "/function/hello", &[], b"").await?.text(),
            "hello from image v2",
            "every request goes to the new image once it took over"
        );
    }
    node.call("GET", "/function/hello/log?line=e2e-marker", &[], b"")
        .await?;
    let logs = wait_log(&node, "/system/logs?name=hello&tail=50", "e2e-marker")
        .await?
        .text();
    assert!(
        logs.contains("e2e-marker") && logs.contains("listening on"),
        "{logs}"
    );
    node.api(
        "DELETE",
        "/system/functions",
        br#"{"functionName":"hello"}"#,
    )
    .await?
    .expect(200, "delete")?;
    // The delete answered once stored; its replica stops in the background.
    node.wait_containers_gone("hello", Duration::from_secs(30))
        .await?;
    Ok(())
}

async fn cold_requests_wait_for_readiness() -> TestResult {
    let node = node("ready", "").await?;
    // The function listens at once but reports healthy only after 1.5 s (like an of-watchdog
    // whose upstream is still starting): requests must wait, not fail.
    deploy(&node, "slow", &json!({"HEALTH_DELAY_MS": "1500"})).await?;
    let started = Instant::now();
    let r = node.call("GET", "/function/slow", &[], b"").await?;
    r.expect(200, "first request during a cold start")?;
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "it waited for readiness ({:?})",
        started.elapsed()
    );
    let status = json_of(&node.api("GET", "/system/function/slow", b"").await?);
    assert_eq!(status["availableReplicas"], 1);
    Ok(())
}

async fn repeated_cold_starts_are_not_mistaken_for_crashes() -> TestResult {
    // The exit of a task stopped by scale-to-zero can arrive after the next request already
    // started the container again; it must not count as a crash of the new task (which would
    // back off and make every later cold start slower).
    let node = node("cold", "").await?;
    deploy(&node, "flip", &json!({})).await?;
    wait_available(&node, "flip", 1).await?;
    for cycle in 0..5 {
        node.scale("flip", 0).await?;
        let started = Instant::now();
        node.call("GET", "/function/flip", &[], b"")
            .await?
            .expect(200, "cold call")?;
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(3),
            "cold start {cycle} took {took:?}"
        );
    }
    // Let any late exit event arrive, then check nothing was counted as a crash.
    node.call("GET", "/function/flip", &[], b"")
        .await?
        .expect(200, "warm call")?;
    let status = json_of(&node.api("GET", "/system/function/flip", b"").await?);
    assert!(
        status["bramble"].get("restarts").is_none(),
        "stops were counted as crashes: {status}"
    );
    assert_eq!(status["bramble"]["state"], "ready", "{status}");
    Ok(())
}

async fn idle_functions_scale_to_zero_and_back() -> TestResult {
    let node = node("idle", "").await?;
    let body = json!({"service": "sleepy", "image": FIXTURE,
        "labels": {"com.openfaas.scale.zero": "true"}, "annotations": {"com.openfaas.scale.zero-duration": "2s"}}).to_string();
    node.api("POST", "/system/functions", body.as_bytes())
        .await?
        .expect(200, "deploy")?;
    wait_available(&node, "sleepy", 1).await?;
    // Taken before the call: the node's idle clock starts when the call reaches it.
    let idle_since = Instant::now();
    node.call("GET", "/function/sleepy", &[], b"")
        .await?
        .expect(200, "warm call")?;
    let status = wait_available(&node, "sleepy", 0).await?;
    assert!(
        idle_since.elapsed() >= Duration::from_secs(2),
        "scaled down {:?} after the call, before the idle time",
        idle_since.elapsed()
    );
    assert!(
        status.get("replicas").is_none(),
        "desired replicas went to 0: {status}"
    );
    // "stopping" while its replica finishes and stops, then "scaled-to-zero".
    assert!(
        ["stopping", "scaled-to-zero"].contains(&status["bramble"]["state"].as_str().unwrap_or("")),
        "{status}"
    );
    node.wait_state("sleepy", "scaled-to-zero").await?;
    node.call("GET", "/function/sleepy", &[], b"")
        .await?
        .expect(200, "cold call")?;
    // Functions without the label are never scaled down.
    deploy(&node, "awake", &json!({})).await?;
    wait_available(&node, "awake", 1).await?;
    tokio::time::sleep(Duration::from_secs(3)).await; // longer than any idle time in play
    assert_eq!(
        json_of(&node.api("GET", "/system/function/awake", b"").await?)["availableReplicas"],
        1
    );
    Ok(())
}

async fn timeouts_and_broken_functions_get_clear_errors() -> TestResult {
    let node = node("broken", "ready_timeout = \"4s\"").await?;
    let body =
        json!({"service": "slowpoke", "image": FIXTURE, "annotations": {"bramble.timeout": "1s"}})
            .to_string();
    node.api("POST", "/system/functions", body.as_bytes())
        .await?
        .expect(200, "deploy")?;
    wait_available(&node, "slowpoke", 1).await?;
    let started = Instant::now();
    let r = node
        .call("GET", "/function/slowpoke/sleep?ms=3000", &[], b"")
        .await?;
    r.expect(504, "function timeout")?;
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "cut at the function's timeout"
    );
    assert!(r.text().contains("timed out"), "{}", r.text());

    // A function that crashes on every start: clear 503, status says why, restarts grow.
    deploy(&node, "crashy", &json!({"EXIT_ON_START": "3"})).await?;
    let r = node.call("GET", "/function/crashy", &[], b"").await?;
    assert!(
        r.status == 503 || r.status == 504,
        "{} {}",
        r.status,
        r.text()
    );
    assert!(r.text().contains("crashy"), "{}", r.text());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = json_of(&node.api("GET", "/system/function/crashy", b"").await?);
        if status["bramble"]["restarts"].as_u64().unwrap_or(0) >= 3 {
            assert_eq!(status["bramble"]["lastExit"], "exit code 3", "{status}");
            assert_eq!(status["bramble"]["state"], "crash-looping", "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "restarts never grew: {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The rest of the board keeps serving.
    node.call("GET", "/function/slowpoke", &[], b"")
        .await?
        .expect(200, "other function")?;
    Ok(())
}

async fn proxy_streams_large_bodies_and_events() -> TestResult {
    let node = node("stream", "").await?;
    deploy(&node, "pipe", &json!({})).await?;
    wait_available(&node, "pipe", 1).await?;
    let pid = node.pid().expect("running");
    let rss_before = rss_kib(pid);
    let size = 100 * 1024 * 1024;
    let echoed = stream_through(node.addr(), "/function/pipe/echo", size).await?;
    assert_eq!(echoed, size as u64, "every byte came back");
    let rss_after = rss_kib(pid);
    assert!(
        rss_after < rss_before + 40 * 1024,
        "bramble's RSS grew from {rss_before} KiB to {rss_after} KiB for a 100 MB body"
    );

    // Server-sent events arrive one by one, not buffered to the end.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(node.addr()).await?;
    s.write_all(b"GET /function/pipe/sse?n=3&interval_ms=700 HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n").await?;
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("event 1") {
        let n = s.read(&mut buf).await?;
        assert!(n > 0, "stream ended early");
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(
        started.elapsed() < Duration::from_millis(1200),
        "first event arrived after {:?}: buffered?",
        started.elapsed()
    );
    assert!(
        String::from_utf8_lossy(&seen)
            .to_lowercase()
            .contains("text/event-stream")
    );
    Ok(())
}

/// Sends `size` zero bytes to `path` while reading the echo; returns the payload bytes echoed.
async fn stream_through(
    addr: SocketAddr,
    path: &str,
    size: usize,
) -> Result<u64, Box<dyn std::error::Error>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
    );
    let sender = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        let chunk = vec![0u8; 64 * 1024];
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len());
            writer.write_all(&chunk[..n]).await?;
            left -= n;
        }
        writer.flush().await?;
        Ok::<_, std::io::Error>(writer)
    });
    let mut raw = Vec::with_capacity(size + (1 << 20));
    reader.read_to_end(&mut raw).await?;
    let _writer = sender.await??;
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no response head")?;
    let head = String::from_utf8_lossy(&raw[..end]).to_lowercase();
    let body = &raw[end + 4..];
    if !head.contains("transfer-encoding: chunked") {
        return Ok(body.len() as u64);
    }
    // Count the payload of a chunked body exactly.
    let mut rest = body;
    let mut total = 0u64;
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("bad chunk framing")?;
        let len = usize::from_str_radix(
            std::str::from_utf8(&rest[..line_end])?
                .split(';')
                .next()
                .unwrap_or("")
                .trim(),
            16,
        )?;
        if len == 0 {
            return Ok(total);
        }
        total += len as u64;
        rest = rest
            .get(line_end + 2 + len + 2..)
            .ok_or("truncated chunk")?;
    }
}

/// bramble's resident memory, KiB (0 when it cannot be read).
pub(crate) use bramble_testkit::rss_kib;

/// `scripts/demo`, run from a copy of the repository's scripts whose every outside command
/// (apt's `dpkg-query`, `cargo`, `rustc`, `ctr`, `curl`, and `target/release/bramble`) is a
/// stub, so that what the demo does with each answer of `/function/hello` can be seen without
/// building a release or touching the machine's containerd and port 8080.
struct Demo {
    dir: tempfile::TempDir,
}

impl Demo {
    fn new() -> Result<Demo, Box<dyn std::error::Error>> {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir()?;
        let root = bramble_testkit::fixture::workspace_dir();
        let scripts = dir.path().join("scripts");
        std::fs::create_dir_all(&scripts)?;
        for script in ["demo", "setup"] {
            std::fs::copy(root.join("scripts").join(script), scripts.join(script))?;
        }
        let pidfile = dir.path().join("bramble.pid");
        let stubs = [
            ("bin/dpkg-query", "echo 'install ok installed'".to_owned()),
            ("bin/cargo", "exit 0".to_owned()),
            (
                "bin/rustc",
                "echo 'host: x86_64-unknown-linux-gnu'".to_owned(),
            ),
            ("bin/ctr", "exit 0".to_owned()),
            (
                "bin/curl",
                r#"out=/dev/null; url=
while [ $# -gt 0 ]; do
    case "$1" in
        -o) out=$2; shift ;;
        -w|--max-time) shift ;;
        http*) url=$1 ;;
    esac
    shift
done
case "$url" in
    */healthz) exit 0 ;;
    */function/hello)
        if [ "$STUB_HELLO_STATUS" = 000 ]; then
            echo "curl: (7) Failed to connect to 127.0.0.1 port 8080: Connection refused" >&2
            printf 000
            exit 7
        fi
        printf '%s' "$STUB_HELLO_BODY" >"$out"
        printf '%s' "$STUB_HELLO_STATUS" ;;
    *) exit 7 ;;
esac"#
                    .to_owned(),
            ),
            (
                "target/release/bramble",
                format!(
                    "if [ \"$1\" = up ]; then\n    echo 'bramble (stub) listening on 0.0.0.0:8080'\n    echo $$ >{}\n    exec sleep 600\nfi\nexit 0",
                    pidfile.display()
                ),
            ),
        ];
        for (path, body) in stubs {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().ok_or("no parent")?)?;
            std::fs::write(&path, format!("#!/bin/bash\n{body}\n"))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        }
        Ok(Demo { dir })
    }

    /// The demo, started with `/function/hello` answering `status` and `body` (`000`: no
    /// connection).
    fn start(&self, status: &str, body: &str) -> std::io::Result<tokio::process::Child> {
        let path = format!(
            "{}:{}",
            self.dir.path().join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        tokio::process::Command::new("bash")
            .arg(self.dir.path().join("scripts/demo"))
            .env("PATH", path)
            .env("STUB_HELLO_STATUS", status)
            .env("STUB_HELLO_BODY", body)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
    }

    /// The stub `bramble up` the demo started last, while it runs.
    fn bramble(&self) -> Option<nix::unistd::Pid> {
        std::fs::read_to_string(self.dir.path().join("bramble.pid"))
            .ok()
            .and_then(|pid| pid.trim().parse::<i32>().ok())
            // The stub execs `sleep 600`: a reused pid is someone else's process.
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c == b"sleep\x00600\x00")
            })
            .map(nix::unistd::Pid::from_raw)
    }

    fn bramble_running(&self) -> bool {
        self.bramble().is_some()
    }
}

impl Drop for Demo {
    /// A failed test leaves no stub behind.
    fn drop(&mut self) {
        if let Some(pid) = self.bramble() {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

async fn demo_fails_clearly_when_hello_does_not_answer() -> TestResult {
    use tokio::io::AsyncBufReadExt as _;
    let demo = Demo::new()?;
    const BANNER: &str = "bramble is serving the function hello";
    for (status, body, want) in [
        (
            "503",
            "function hello.openfaas-fn is not ready after 60s: crash-looping",
            "demo failed: http://127.0.0.1:8080/function/hello answered 503: function hello.openfaas-fn is not ready after 60s: crash-looping",
        ),
        (
            "000",
            "",
            "demo failed: http://127.0.0.1:8080/function/hello never answered: curl: (7) Failed to connect",
        ),
    ] {
        let child = demo.start(status, body)?;
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .map_err(|_| format!("the demo did not end with hello answering {status}"))??;
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
        assert!(stderr.contains(want), "{status}: {stderr}");
        assert!(
            stderr.contains("the last lines bramble printed")
                && stderr.contains("bramble (stub) listening on 0.0.0.0:8080"),
            "the node's log tail comes with the failure: {stderr}"
        );
        assert!(!stdout.contains(BANNER), "success claimed: {stdout}");
        assert!(!demo.bramble_running(), "bramble up left running");
    }

    // When hello answers, the banner comes, and Ctrl-C (here SIGTERM) stops bramble.
    let mut child = demo.start("200", "Hello from bramble")?;
    let stdout = child.stdout.take().ok_or("stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await? {
            if line.contains(BANNER) {
                return Ok(());
            }
        }
        Err(std::io::Error::other("the demo ended without its banner"))
    })
    .await
    .map_err(|_| "no banner within 60 s")??;
    assert!(demo.bramble_running(), "bramble up runs after the banner");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().ok_or("demo pid")?)?);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await??;
    assert!(!status.success(), "{status}");
    assert!(
        !demo.bramble_running(),
        "bramble up left running after Ctrl-C"
    );
    Ok(())
}
