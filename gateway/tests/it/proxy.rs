//! `/function/...` through the gateway to a real HTTP server (the fixture function).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use bramble_gateway::provider::{ProviderError, UsageSample};
use http::StatusCode;
use http_body_util::BodyExt as _;

use crate::common::*;

async fn with_fixture() -> (Harness, Fixture) {
    let fixture = Fixture::start().await;
    let h = Harness::start(MemProvider::new(Some(fixture.addr))).await;
    h.provider.add_function("fn", "openfaas-fn");
    (h, fixture)
}

/// The fixture's `/headers` answer: request line, then `name: value` lines.
fn header_lines(text: &str) -> (String, Vec<(String, String)>) {
    let mut lines = text.lines();
    let request_line = lines.next().unwrap_or_default().to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    (request_line, headers)
}

fn get<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn forwards_method_path_query_and_adds_proxy_headers() {
    let (h, _f) = with_fixture().await;
    let r = h
        .send(
            "PUT",
            "/function/fn/headers?x=1&y=a%20b",
            &[
                ("x-custom", "kept"),
                ("host", "pi.local:8080"),
                ("x-forwarded-for", "10.1.2.3"),
                ("connection", "keep-alive, x-hop"),
                ("x-hop", "dropped"),
            ],
            "body",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let (request_line, headers) = header_lines(&r.text());
    assert_eq!(request_line, "PUT /headers?x=1&y=a%20b HTTP/1.1");
    assert_eq!(get(&headers, "x-custom"), Some("kept"));
    assert_eq!(get(&headers, "x-forwarded-host"), Some("pi.local:8080"));
    assert_eq!(
        get(&headers, "x-forwarded-for"),
        Some("10.1.2.3, 127.0.0.1")
    );
    assert_eq!(
        get(&headers, "host"),
        Some(
            h.provider
                .upstream
                .lock()
                .unwrap()
                .unwrap()
                .to_string()
                .as_str()
        )
    );
    assert_eq!(
        get(&headers, "x-hop"),
        None,
        "headers named by Connection are hop-by-hop"
    );
    let call_id = get(&headers, "x-call-id").expect("x-call-id").to_owned();
    assert_eq!(call_id.len(), 36, "{call_id}");
    let start: u128 = get(&headers, "x-start-time")
        .expect("x-start-time")
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    assert!(
        start <= now && now - start < 60_000_000_000,
        "X-Start-Time is unix nanoseconds: {start}"
    );
    // The response: the function's, plus the call id and duration.
    assert_eq!(r.header("x-call-id"), Some(call_id.as_str()));
    let seconds: f64 = r
        .header("x-duration-seconds")
        .expect("x-duration-seconds")
        .parse()
        .unwrap();
    assert!((0.0..30.0).contains(&seconds));
    assert!(
        r.header("x-fixture-pid").is_some(),
        "the function's own headers pass through"
    );

    // The caller's call id is kept; the root path is `/`.
    let r = h
        .send(
            "GET",
            "/function/fn/headers",
            &[("x-call-id", "my-call-1")],
            Body::empty(),
        )
        .await;
    assert_eq!(
        get(&header_lines(&r.text()).1, "x-call-id"),
        Some("my-call-1")
    );
    assert_eq!(r.header("x-call-id"), Some("my-call-1"));
    for path in ["/function/fn", "/function/fn/"] {
        let r = h.get(path).await;
        assert_eq!(
            (r.status, r.text()),
            (StatusCode::OK, "hello from fixture-fn\n".to_owned()),
            "{path}"
        );
    }
    // Function status codes and bodies pass through untouched.
    let r = h.get("/function/fn/status?code=418").await;
    assert_eq!(
        (r.status.as_u16(), r.text()),
        (418, "status 418".to_owned())
    );
    let r = h.get("/function/fn/status?code=500").await;
    assert_eq!(
        (r.status.as_u16(), r.text()),
        (500, "status 500".to_owned())
    );
    let r = h
        .send(
            "POST",
            "/function/fn/echo",
            &[("content-type", "application/x-test")],
            "ping",
        )
        .await;
    assert_eq!(
        (r.status, r.text(), r.header("content-type")),
        (
            StatusCode::OK,
            "ping".to_owned(),
            Some("application/x-test")
        )
    );
}

#[tokio::test]
async fn sequential_calls_reuse_kept_alive_connections_to_the_function() {
    let (h, f) = with_fixture().await;
    const CALLS: u64 = 20;
    for _ in 0..CALLS {
        let r = h.get("/function/fn").await;
        assert_eq!(
            (r.status, r.text().as_str()),
            (StatusCode::OK, "hello from fixture-fn\n")
        );
    }
    // Asked directly, which opens one more connection of its own.
    let connections = f.stat("connections").await - 1;
    assert!(
        (1..=2).contains(&connections),
        "{CALLS} sequential calls opened {connections} connections to the function"
    );
}

#[tokio::test]
async fn name_dot_namespace_is_split_on_the_last_dot() {
    let fixture = Fixture::start().await;
    let h = Harness::start(MemProvider::new(Some(fixture.addr))).await;
    h.provider.add_function("fn", "dev");
    let r = h.get("/function/fn.dev/headers").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(r.text().starts_with("GET /headers HTTP/1.1"));
    assert!(h.provider.calls().contains(&"endpoint fn dev".to_owned()));
    // Not in the default namespace.
    let r = h.get("/function/fn/headers").await;
    assert_eq!(
        (r.status, r.text().trim()),
        (StatusCode::NOT_FOUND, "function fn.openfaas-fn not found")
    );
    assert!(r.header("x-call-id").is_some());
    // Names that cannot exist are refused before the provider is asked.
    let calls = h.provider.calls().len();
    for bad in [
        "/function/a.b.c",
        "/function/Fn",
        "/function/fn.",
        "/function/fn.Dev/x",
    ] {
        assert_eq!(h.get(bad).await.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    assert_eq!(h.provider.calls().len(), calls);
    assert_eq!(h.get("/function/").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn server_sent_events_arrive_one_by_one() {
    let (h, _f) = with_fixture().await;
    // Event 2 is sent 30 s after event 1: receiving event 1 at all proves nothing is buffered.
    let response = h
        .stream(
            "GET",
            "/function/fn/sse?n=2&interval_ms=30000",
            &[("accept", "text/event-stream")],
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(response.headers()["cache-control"], "no-cache");
    let mut body = response.into_body();
    let first = read_until(&mut body, "\n\n").await;
    assert_eq!(first, "data: event 1\n\n");
    assert_eq!(
        h.provider.in_flight.load(Ordering::SeqCst),
        1,
        "in flight while the body streams"
    );
    drop(body);

    // Once a whole body has been read, the request is no longer in flight.
    let response = h.stream("GET", "/function/fn/sse?n=3", &[]).await;
    let all = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        &all[..],
        b"data: event 1\n\ndata: event 2\n\ndata: event 3\n\n"
    );
    let r = h.get("/function/fn/stream?chunks=4&size=1000").await;
    assert_eq!(r.body.len(), 4000);
    // The SSE connection dropped above may still count until the gateway notices; the last two
    // requests finished completely.
    assert!(h.provider.in_flight.load(Ordering::SeqCst) <= 1);
}

#[tokio::test]
async fn in_flight_guard_is_released_when_the_body_is_done() {
    let (h, _f) = with_fixture().await;
    for _ in 0..3 {
        let r = h.get("/function/fn/stream?chunks=3&size=10").await;
        assert_eq!(r.body.len(), 30);
        assert_eq!(h.provider.in_flight.load(Ordering::SeqCst), 0);
    }
}

#[tokio::test]
async fn slow_functions_get_504_after_their_timeout() {
    let (h, _f) = with_fixture().await;
    *h.provider.timeout.lock().unwrap() = Duration::from_millis(300);
    let r = h.get("/function/fn/sleep?ms=5000").await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(r.text().trim(), "Function timed out after 300ms");
    assert_eq!(h.provider.in_flight.load(Ordering::SeqCst), 0);
    // A streamed body is not cut by the timeout once the headers are there.
    let r = h
        .get("/function/fn/stream?chunks=3&size=10&interval_ms=250")
        .await;
    assert_eq!((r.status, r.body.len()), (StatusCode::OK, 30));
    let metrics = h.metrics().await;
    assert!(
        metrics.contains(
            "gateway_function_invocation_total{code=\"504\",function_name=\"fn.openfaas-fn\"} 1"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_dead_upstream_gives_502_naming_the_function() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = dead.local_addr().unwrap();
    drop(dead);
    let h = Harness::start(MemProvider::new(Some(addr))).await;
    h.provider.add_function("gone", "openfaas-fn");
    let r = h.get("/function/gone").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(
        r.text().starts_with(&format!(
            "function gone.openfaas-fn is unreachable at {addr}: tcp connect error: Connection refused"
        )),
        "{}",
        r.text()
    );
    assert_eq!(h.provider.in_flight.load(Ordering::SeqCst), 0);

    // A function that was answering and then died (the pooled connection to it goes bad): 502.
    let mut fixture = Fixture::start().await;
    *h.provider.upstream.lock().unwrap() = Some(fixture.addr);
    assert_eq!(h.get("/function/gone").await.status, StatusCode::OK);
    fixture.kill().await;
    let r = h.get("/function/gone").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert!(
        r.text().starts_with("function gone.openfaas-fn "),
        "{}",
        r.text()
    );
}

#[tokio::test]
async fn provider_errors_map_to_their_status() {
    let (h, _f) = with_fixture().await;
    for (error, status) in [
        (
            ProviderError::Unavailable("function fn is crash-looping".into()),
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        (
            ProviderError::Timeout("fn not ready within 60s".into()),
            StatusCode::GATEWAY_TIMEOUT,
        ),
        (
            ProviderError::Internal("boom".into()),
            StatusCode::INTERNAL_SERVER_ERROR,
        ),
        (ProviderError::Conflict("busy".into()), StatusCode::CONFLICT),
    ] {
        *h.provider.endpoint_error.lock().unwrap() = Some(error.clone());
        let r = h.get("/function/fn").await;
        assert_eq!(
            (r.status, r.text().trim()),
            (status, error.to_string().as_str())
        );
    }
    *h.provider.endpoint_error.lock().unwrap() = None;
    *h.provider.upstream.lock().unwrap() = None;
    let r = h.get("/function/fn").await;
    assert_eq!(
        (r.status, r.text().trim()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "function fn.openfaas-fn has no replica"
        )
    );
}

#[tokio::test]
async fn metrics_count_invocations_by_function_and_code() {
    let (h, _f) = with_fixture().await;
    h.provider.add_function("idle", "openfaas-fn");
    h.provider.usage.lock().unwrap().extend([
        (
            ("fn".to_owned(), "openfaas-fn".to_owned()),
            UsageSample {
                cpu_seconds_total: 2.5,
                memory_bytes: 4_194_304.0,
                replicas: 1,
            },
        ),
        (
            ("idle".to_owned(), "openfaas-fn".to_owned()),
            UsageSample {
                cpu_seconds_total: 0.0,
                memory_bytes: 0.0,
                replicas: 0,
            },
        ),
    ]);
    for _ in 0..3 {
        assert_eq!(h.get("/function/fn").await.status, StatusCode::OK);
    }
    assert_eq!(
        h.get("/function/fn/status?code=404").await.status,
        StatusCode::NOT_FOUND
    );
    // Unknown functions leave no trace (no unbounded label values from typos or scans).
    assert_eq!(
        h.get("/function/nosuch").await.status,
        StatusCode::NOT_FOUND
    );
    let text = h.metrics().await;
    for line in [
        "gateway_function_invocation_total{code=\"200\",function_name=\"fn.openfaas-fn\"} 3",
        "gateway_function_invocation_total{code=\"404\",function_name=\"fn.openfaas-fn\"} 1",
        "gateway_functions_seconds_count{code=\"200\",function_name=\"fn.openfaas-fn\"} 3",
        "gateway_functions_seconds_bucket{code=\"200\",function_name=\"fn.openfaas-fn\",le=\"+Inf\"} 3",
        "gateway_function_invocation_started{function_name=\"fn.openfaas-fn\"} 4",
        "gateway_service_count{function_name=\"fn.openfaas-fn\"} 1",
        "gateway_service_count{function_name=\"idle.openfaas-fn\"} 0",
        "pod_cpu_usage_seconds_total{function_name=\"fn.openfaas-fn\"} 2.5",
        "pod_memory_working_set_bytes{function_name=\"fn.openfaas-fn\"} 4194304",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    assert!(!text.contains("nosuch"), "{text}");
    // The bucket counts are cumulative and end at the count.
    let buckets: Vec<u64> = text
        .lines()
        .filter(|l| l.starts_with("gateway_functions_seconds_bucket{code=\"200\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(buckets.len(), 12);
    assert!(
        buckets.windows(2).all(|w| w[0] <= w[1]) && buckets[11] == 3,
        "{buckets:?}"
    );
    // The list shows the invocation count, as the OpenFaaS gateway does.
    let list = h.admin("GET", "/system/functions", "").await.json();
    let f = list
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "fn")
        .unwrap();
    assert_eq!(f["invocationCount"], 4.0);
}

#[tokio::test]
async fn invoke_serves_triggers_without_http() {
    let (h, _f) = with_fixture().await;
    let request = http::Request::builder()
        .method("POST")
        .uri("/echo?from=gpio")
        .body(Body::from("edge"))
        .unwrap();
    let response = h.gateway.invoke("fn", "openfaas-fn", request).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().contains_key("x-call-id"));
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"edge");
    let text = h.metrics().await;
    assert!(
        text.contains(
            "gateway_function_invocation_total{code=\"200\",function_name=\"fn.openfaas-fn\"} 1"
        ),
        "{text}"
    );
    let missing = h
        .gateway
        .invoke("nope", "openfaas-fn", http::Request::new(Body::empty()))
        .await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn shutdown_drains_requests_in_flight_and_stops_accepting() {
    let (mut h, _f) = with_fixture().await;
    h.provider
        .push_log("fn", "before shutdown", "2024-05-01T10:00:00Z");
    let auth = basic(USER, PASSWORD);
    let logs = h
        .stream(
            "GET",
            "/system/logs?name=fn&follow=true",
            &[("authorization", &auth)],
        )
        .await;
    let mut logs = logs.into_body();
    read_until(&mut logs, "before shutdown").await;

    let url = h.url("/function/fn/sleep?ms=700");
    let provider = Arc::clone(&h.provider);
    let called = provider.endpoint_called.notified();
    let slow =
        tokio::spawn(async move { send_with(&client(), &url, "GET", &[], Body::empty()).await });
    called.await;
    h.stop().await;
    let r = slow.await.unwrap();
    assert_eq!(
        (r.status, r.text()),
        (StatusCode::OK, "slept 700 ms".to_owned()),
        "the request in flight finished"
    );
    // A followed log stream ends cleanly instead of holding up the drain.
    let rest = tokio::time::timeout(Duration::from_secs(5), logs.collect())
        .await
        .expect("log stream ended");
    assert!(rest.is_ok(), "ended cleanly, not cut: {rest:?}");
    assert!(
        tokio::net::TcpStream::connect(h.addr).await.is_err(),
        "no longer accepting"
    );
}
