//! `/async-function`: durable queue, workers, retries, callbacks, recovery after a restart.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::StatusCode;

use crate::common::*;

fn fast_retries(c: &mut bramble_gateway::GatewayConfig) {
    c.async_retry.initial_backoff = Duration::from_millis(20);
    c.async_retry.max_backoff = Duration::from_millis(100);
}

#[tokio::test]
async fn a_call_is_on_disk_before_the_202_and_its_result_is_called_back() {
    let fixture = Fixture::start().await;
    let provider = MemProvider::new(Some(fixture.addr));
    provider.add_function("fn", "openfaas-fn");
    let dir = tempfile::tempdir().unwrap();
    // A gateway whose workers are not started yet: what is on disk is all there is.
    let h = Harness::idle_in(Arc::clone(&provider), dir.path(), fast_retries).await;
    let (gateway, addr) = (&h.gateway, h.addr);
    let (callback_addr, mut callbacks) = callback_receiver(StatusCode::OK).await;

    let url = format!("http://{addr}/async-function/fn/headers?x=1");
    let callback_url = format!("http://{callback_addr}/done?job=7");
    let r = send_with(
        &client(),
        &url,
        "POST",
        &[
            ("x-callback-url", &callback_url),
            ("x-custom", "kept"),
            ("content-type", "text/plain"),
        ],
        axum::body::Body::from("payload"),
    )
    .await;
    assert_eq!((r.status, r.text()), (StatusCode::ACCEPTED, String::new()));
    let call_id = r.header("x-call-id").expect("x-call-id").to_owned();
    // Right after the 202: the record is in pending/, complete, with its body.
    let files = pending_files(dir.path());
    assert_eq!(files.len(), 1, "{files:?}");
    let raw = std::fs::read(&files[0]).unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(
        text.contains(&call_id) && text.contains(&callback_url) && text.ends_with("\npayload"),
        "{text}"
    );
    assert!(
        std::fs::read_dir(dir.path().join("tmp"))
            .unwrap()
            .next()
            .is_none(),
        "no temporary file left"
    );
    assert_eq!(
        provider.endpoint_calls.load(Ordering::SeqCst),
        0,
        "nothing ran yet"
    );

    gateway.start_workers();
    let cb = next_callback(&mut callbacks).await;
    assert_eq!(cb.path, "/done?job=7");
    assert_eq!(cb.header("x-function-status"), "200");
    assert_eq!(cb.header("x-call-id"), call_id);
    assert_eq!(cb.header("x-function-name"), "fn");
    assert!(cb.header("x-duration-seconds").parse::<f64>().unwrap() >= 0.0);
    assert!(
        !cb.header("x-fixture-pid").is_empty(),
        "the function's own headers come along"
    );
    // The function saw the original method, path, query and headers.
    let body = String::from_utf8_lossy(&cb.body).into_owned();
    assert!(body.starts_with("POST /headers?x=1 HTTP/1.1\n"), "{body}");
    assert!(
        body.contains("x-custom: kept\n") && body.contains(&format!("x-call-id: {call_id}\n")),
        "{body}"
    );
    assert!(body.contains("x-forwarded-for: 127.0.0.1\n"), "{body}");
    wait_queue_empty(dir.path()).await;
    let metrics = send_with(
        &client(),
        &format!("http://{addr}/metrics"),
        "GET",
        &[],
        axum::body::Body::empty(),
    )
    .await
    .text();
    assert!(
        metrics.contains(
            "gateway_function_invocation_total{code=\"200\",function_name=\"fn.openfaas-fn\"} 1"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_call_whose_function_this_board_has_not_heard_of_yet_waits_for_it() {
    use bramble_gateway::provider::Provider as _;
    // In a cluster the board that runs a call may learn of a deploy made through another board
    // a moment after that board accepted a call for it. Here: accepted while the function
    // existed, then this board's provider no longer knows it when the call runs.
    let fixture = Fixture::start().await;
    let provider = MemProvider::new(Some(fixture.addr));
    provider.add_function("late", "openfaas-fn");
    provider.add_function("gone", "openfaas-fn");
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::idle_in(Arc::clone(&provider), dir.path(), |c| {
        fast_retries(c);
        c.async_retry.unknown_function_grace = Duration::from_secs(2);
    })
    .await;
    let (gateway, addr) = (&h.gateway, h.addr);
    let (callback_addr, mut callbacks) = callback_receiver(StatusCode::OK).await;
    let callback_url = format!("http://{callback_addr}/cb");
    for name in ["late", "gone"] {
        let r = send_with(
            &client(),
            &format!("http://{addr}/async-function/{name}"),
            "POST",
            &[("x-callback-url", &callback_url)],
            axum::body::Body::from("payload"),
        )
        .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{name}");
        provider.delete(name, "openfaas-fn").await.unwrap();
    }
    // `late` comes back once the board has found it unknown (its lookup after the 404: the
    // second of its name, the first was the acceptance's); `gone` never does.
    gateway.start_workers();
    let p = Arc::clone(&provider);
    let comes_back = tokio::spawn(async move {
        while lookups_of(&p, "late") < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        p.add_function("late", "openfaas-fn");
    });
    let mut statuses = std::collections::BTreeMap::new();
    for _ in 0..2 {
        let cb = next_callback(&mut callbacks).await;
        statuses.insert(
            cb.header("x-function-name").to_owned(),
            cb.header("x-function-status").to_owned(),
        );
    }
    comes_back.abort();
    assert_eq!(statuses["late"], "200", "{statuses:?}");
    assert_eq!(statuses["gone"], "404", "{statuses:?}");
    assert!(
        lookups_of(&provider, "gone") > 2,
        "gone was looked up again before its 404"
    );
    wait_queue_empty(dir.path()).await;
}

/// How often the gateway asked `provider` whether function `name` exists.
fn lookups_of(provider: &MemProvider, name: &str) -> usize {
    provider
        .calls()
        .iter()
        .filter(|c| *c == &format!("get_function {name} openfaas-fn usage=false"))
        .count()
}

#[tokio::test]
async fn queued_calls_are_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt as _;
    // The usual umask: with it, files and directories made without an explicit mode are
    // world-readable, which is what the queue must not be.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = tempfile::tempdir().unwrap();
    // A queue left by an older version, world-readable.
    let queue = dir.path().join("queue");
    std::fs::create_dir_all(queue.join("pending")).unwrap();
    for d in [&queue, &queue.join("pending")] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let provider = MemProvider::new(None);
    provider.add_function("fn", "openfaas-fn");
    // Workers not started: the record stays on disk to be looked at.
    let h = Harness::idle_in(provider, &queue, |_| {}).await;
    let addr = h.addr;
    let r = send_with(
        &client(),
        &format!("http://{addr}/async-function/fn"),
        "POST",
        &[("authorization", "Bearer function-token")],
        axum::body::Body::from("private payload"),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    for d in [queue.clone(), queue.join("pending"), queue.join("tmp")] {
        assert_eq!(mode(&d), 0o700, "{}", d.display());
    }
    let files = pending_files(&queue);
    assert_eq!(files.len(), 1, "{files:?}");
    let record = String::from_utf8_lossy(&std::fs::read(&files[0]).unwrap()).into_owned();
    assert!(
        record.contains("Bearer function-token") && record.ends_with("private payload"),
        "the record holds the credentials and the body: {record}"
    );
    assert_eq!(mode(&files[0]), 0o600);
}

#[tokio::test]
async fn bad_async_requests_are_refused_and_nothing_is_queued() {
    let h = Harness::start(MemProvider::new(None)).await;
    h.provider.add_function("fn", "openfaas-fn");
    for (url, want) in [
        (
            "/done",
            "X-Callback-Url: \"/done\" is not an absolute http:// or https:// URL",
        ),
        (
            "ftp://host/x",
            "X-Callback-Url: \"ftp://host/x\" is not an absolute http:// or https:// URL",
        ),
        ("http://", "X-Callback-Url: "),
    ] {
        let r = h
            .send(
                "POST",
                "/async-function/fn",
                &[("x-callback-url", url)],
                "x",
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{url}");
        assert!(r.text().contains(want), "{url}: {}", r.text());
    }
    let r = h.send("POST", "/async-function/nosuch", &[], "x").await;
    assert_eq!(
        (r.status, r.text().trim()),
        (
            StatusCode::NOT_FOUND,
            "function nosuch.openfaas-fn not found"
        )
    );
    let r = h.send("POST", "/async-function/Bad", &[], "x").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(pending_files(&h.queue_dir).is_empty());
    assert_eq!(h.provider.endpoint_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn https_callbacks_reach_receivers_whose_certificate_is_trusted() {
    let fixture = Fixture::start().await;
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_certificates(certs.path());
    let (receiver, mut callbacks) = tls_callback_receiver(StatusCode::OK, &cert, &key).await;
    let cb_url = format!("https://127.0.0.1:{}/secure?job=1", receiver.port());

    // A gateway that trusts the receiver's CA delivers the result over TLS.
    let h = Harness::start_with(MemProvider::new(Some(fixture.addr)), |c| {
        fast_retries(c);
        c.callback_ca_file = Some(ca.clone());
    })
    .await;
    h.provider.add_function("fn", "openfaas-fn");
    let r = h
        .send(
            "POST",
            "/async-function/fn/echo",
            &[("x-callback-url", &cb_url)],
            "over tls",
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let call_id = r.header("x-call-id").unwrap().to_owned();
    let cb = next_callback(&mut callbacks).await;
    assert_eq!(cb.path, "/secure?job=1");
    assert_eq!(
        (cb.header("x-function-status"), cb.header("x-call-id")),
        ("200", call_id.as_str())
    );
    assert_eq!(&cb.body[..], b"over tls");
    wait_queue_empty(&h.queue_dir).await;

    // One that does not (only the system's CAs) refuses the certificate: nothing arrives.
    let untrusting = Harness::start_with(MemProvider::new(Some(fixture.addr)), |c| {
        fast_retries(c);
        c.async_retry.callback_attempts = 2;
    })
    .await;
    untrusting.provider.add_function("fn", "openfaas-fn");
    let r = untrusting
        .send(
            "POST",
            "/async-function/fn/echo",
            &[("x-callback-url", &cb_url)],
            "x",
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    // The record is removed only after the callback attempts are over.
    wait_queue_empty(&untrusting.queue_dir).await;
    assert_eq!(untrusting.provider.endpoint_calls.load(Ordering::SeqCst), 1);
    assert!(
        callbacks.try_recv().is_err(),
        "a callback went to a receiver whose certificate is not trusted"
    );
}

#[tokio::test]
async fn at_most_async_workers_calls_execute_at_once() {
    let fixture = Fixture::start().await;
    let h = Harness::start_with(MemProvider::new(Some(fixture.addr)), |c| {
        c.async_workers = 2;
    })
    .await;
    h.provider.add_function("fn", "openfaas-fn");
    let (callback_addr, mut callbacks) = callback_receiver(StatusCode::OK).await;
    let cb_url = format!("http://{callback_addr}/cb");
    const CALLS: usize = 6;
    for _ in 0..CALLS {
        let r = h
            .send(
                "POST",
                "/async-function/fn/sleep?ms=300",
                &[("x-callback-url", &cb_url)],
                "",
            )
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED);
    }
    for _ in 0..CALLS {
        let cb = next_callback(&mut callbacks).await;
        assert_eq!(cb.header("x-function-status"), "200");
        assert_eq!(&cb.body[..], b"slept 300 ms");
    }
    wait_queue_empty(&h.queue_dir).await;
    // The function counts the requests it answers at once: never more than the workers, and
    // the workers do run side by side (six 300 ms calls, two at a time).
    assert_eq!(fixture.stat("max_in_flight").await, 2);
    assert_eq!(fixture.stat("in_flight").await, 0);
}

#[tokio::test]
async fn calls_are_retried_while_the_function_is_unavailable() {
    let fixture = Fixture::start().await;
    let h = Harness::start_with(MemProvider::new(Some(fixture.addr)), fast_retries).await;
    h.provider.add_function("fn", "dev");
    h.provider.unavailable.store(3, Ordering::SeqCst);
    let (callback_addr, mut callbacks) = callback_receiver(StatusCode::OK).await;
    let cb_url = format!("http://{callback_addr}/cb");
    let r = h
        .send(
            "POST",
            "/async-function/fn.dev/echo",
            &[("x-callback-url", &cb_url), ("x-call-id", "given-id")],
            "hello",
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.header("x-call-id"), Some("given-id"));
    let cb = next_callback(&mut callbacks).await;
    assert_eq!(
        (cb.header("x-function-status"), cb.header("x-call-id")),
        ("200", "given-id")
    );
    assert_eq!(
        cb.header("x-function-name"),
        "fn.dev",
        "outside the default namespace the name says where"
    );
    assert_eq!(&cb.body[..], b"hello");
    assert_eq!(
        h.provider.endpoint_calls.load(Ordering::SeqCst),
        4,
        "three 503s, then success"
    );
    wait_queue_empty(&h.queue_dir).await;
    let metrics = h.metrics().await;
    assert!(
        metrics
            .contains("gateway_function_invocation_total{code=\"503\",function_name=\"fn.dev\"} 3"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_call_is_given_up_after_its_attempts_and_the_callback_says_so() {
    let h = Harness::start_with(MemProvider::new(None), |c| {
        fast_retries(c);
        c.async_retry.max_attempts = 3;
    })
    .await;
    h.provider.add_function("fn", "openfaas-fn");
    let (callback_addr, mut callbacks) = callback_receiver(StatusCode::OK).await;
    let cb_url = format!("http://{callback_addr}/cb");
    let r = h
        .send(
            "POST",
            "/async-function/fn",
            &[("x-callback-url", &cb_url)],
            "x",
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let cb = next_callback(&mut callbacks).await;
    assert_eq!(cb.header("x-function-status"), "503");
    assert_eq!(
        String::from_utf8_lossy(&cb.body).trim(),
        "function fn.openfaas-fn has no replica"
    );
    assert_eq!(h.provider.endpoint_calls.load(Ordering::SeqCst), 3);
    wait_queue_empty(&h.queue_dir).await;
    assert!(
        h.metrics()
            .await
            .contains("gateway_async_failed_total{function_name=\"fn.openfaas-fn\"} 1")
    );
}

#[tokio::test]
async fn function_errors_are_not_retried_and_callbacks_are() {
    let fixture = Fixture::start().await;
    let h = Harness::start_with(MemProvider::new(Some(fixture.addr)), fast_retries).await;
    h.provider.add_function("fn", "openfaas-fn");
    // The receiver fails (500): the callback is retried `callback_attempts` times.
    let (callback_addr, mut callbacks) = callback_receiver(StatusCode::INTERNAL_SERVER_ERROR).await;
    let cb_url = format!("http://{callback_addr}/cb");
    let r = h
        .send(
            "POST",
            "/async-function/fn/status?code=500",
            &[("x-callback-url", &cb_url)],
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    for _ in 0..3 {
        let cb = next_callback(&mut callbacks).await;
        assert_eq!(cb.header("x-function-status"), "500");
        assert_eq!(&cb.body[..], b"status 500");
    }
    wait_queue_empty(&h.queue_dir).await;
    assert!(
        callbacks.try_recv().is_err(),
        "three attempts, then dropped"
    );
    assert_eq!(
        h.provider.endpoint_calls.load(Ordering::SeqCst),
        1,
        "a function's own 500 is its answer"
    );
}

#[tokio::test]
async fn a_new_gateway_on_the_same_queue_runs_every_call_the_old_one_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let (callback_addr, mut callbacks) = callback_receiver(StatusCode::OK).await;
    let cb_url = format!("http://{callback_addr}/cb");

    // Gateway A: its function never becomes ready; the first call hangs in `endpoint`.
    let stuck = MemProvider::new(None);
    stuck.add_function("fn", "openfaas-fn");
    stuck.block.store(true, Ordering::SeqCst);
    let mut a = Harness::start_in(Arc::clone(&stuck), dir.path(), fast_retries).await;
    let mut accepted = Vec::new();
    for i in 0..5 {
        let r = a
            .send(
                "POST",
                &format!("/async-function/fn/echo?i={i}"),
                &[("x-callback-url", &cb_url)],
                format!("call {i}"),
            )
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED);
        accepted.push(r.header("x-call-id").unwrap().to_owned());
    }
    // Wait until A's workers are stuck executing.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while stuck.endpoint_calls.load(Ordering::SeqCst) < 4 {
        let notified = stuck.endpoint_called.notified();
        if stuck.endpoint_calls.load(Ordering::SeqCst) >= 4 {
            break;
        }
        tokio::time::timeout_at(deadline, notified)
            .await
            .expect("A's workers start the calls");
    }
    assert_eq!(pending_files(dir.path()).len(), 5);
    // A goes away (as in a crash: nothing was finished).
    a.stop().await;
    let weak = Arc::downgrade(&a.gateway);
    drop(a);
    assert!(weak.upgrade().is_none(), "gateway A is gone");
    assert!(callbacks.try_recv().is_err());

    // Gateway B on the same directory, with a working function.
    let fixture = Fixture::start().await;
    let working = MemProvider::new(Some(fixture.addr));
    working.add_function("fn", "openfaas-fn");
    let _b = Harness::start_in(Arc::clone(&working), dir.path(), fast_retries).await;
    let mut delivered = Vec::new();
    for _ in 0..5 {
        let cb = next_callback(&mut callbacks).await;
        assert_eq!(cb.header("x-function-status"), "200");
        let i = accepted
            .iter()
            .position(|id| id == cb.header("x-call-id"))
            .expect("a call id A accepted");
        assert_eq!(String::from_utf8_lossy(&cb.body), format!("call {i}"));
        delivered.push(i);
    }
    delivered.sort_unstable();
    assert_eq!(delivered, [0, 1, 2, 3, 4], "every accepted call ran once");
    wait_queue_empty(dir.path()).await;
    assert!(callbacks.try_recv().is_err());
}

#[tokio::test]
async fn half_written_records_are_dropped_and_corrupt_ones_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
    std::fs::create_dir_all(dir.path().join("pending")).unwrap();
    std::fs::write(dir.path().join("tmp/123.tmp"), b"half").unwrap();
    std::fs::write(dir.path().join("pending/0001-x.call"), b"not json\nbody").unwrap();
    let h = Harness::start_in(MemProvider::new(None), dir.path(), |_| {}).await;
    assert!(
        std::fs::read_dir(dir.path().join("tmp"))
            .unwrap()
            .next()
            .is_none()
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !dir.path().join("pending/0001-x.corrupt").exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            pending_files(dir.path())
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(h.provider.endpoint_calls.load(Ordering::SeqCst), 0);
}
