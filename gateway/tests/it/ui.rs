//! The dashboard's server side over real HTTP: the redirect of `/`, the embedded files (gzip,
//! `ETag`, CSP), the login, the session cookie, CSRF and same-origin checks, the event stream
//! and logout. The pages themselves run in a real Chromium in the agent's `dashboard` tests.

use axum::body::Body;
use http::StatusCode;
use http_body_util::BodyExt as _;

use crate::common::*;

/// Logs in through the form; returns the cookie pair (`bramble_session=…`) and the `Host`.
async fn log_in(h: &Harness) -> (String, String) {
    let form = format!("username={USER}&password={PASSWORD}&next=%2Fui%2Fhardware");
    let r = h
        .send(
            "POST",
            "/ui/login",
            &[("content-type", "application/x-www-form-urlencoded")],
            form,
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    assert_eq!(r.header("location"), Some("/ui/hardware"));
    let cookie = r.header("set-cookie").unwrap().to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    let pair = cookie.split(';').next().unwrap().to_owned();
    (pair, h.addr.to_string())
}

#[tokio::test]
async fn browsers_log_in_and_changes_need_the_csrf_token_and_the_same_origin() {
    let h = Harness::start(MemProvider::new(None)).await;
    h.provider.add_function("hello", "openfaas-fn");

    // `/`: a browser goes to the dashboard, everyone else gets the text as before.
    let r = h
        .send("GET", "/", &[("accept", "text/html,*/*")], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.header("location"), Some("/ui/"));
    let r = h.get("/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text().starts_with("bramble"), "{}", r.text());

    // Pages without a session go to the login form, which says where to come back.
    let r = h.get("/ui/functions/hello.openfaas-fn").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(
        r.header("location"),
        Some("/ui/login?next=%2Fui%2Ffunctions%2Fhello.openfaas-fn")
    );
    let r = h.get("/ui/login").await;
    assert_eq!(r.status, StatusCode::OK);
    let form = r.text();
    assert!(
        form.contains(r#"autocomplete="username""#)
            && form.contains(r#"autocomplete="current-password""#)
    );
    let csp = r.header("content-security-policy").unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));

    // Files: gzip when accepted, a strong ETag, 304 when the browser has it.
    let r = h
        .send(
            "GET",
            "/ui/assets/js/app.js",
            &[("accept-encoding", "gzip, br")],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("text/javascript")
    );
    let etag = r.header("etag").unwrap().to_owned();
    assert!(etag.starts_with('"') && !etag.starts_with("W/"), "{etag}");
    let r = h
        .send(
            "GET",
            "/ui/assets/js/app.js",
            &[("accept-encoding", "gzip, br"), ("if-none-match", &etag)],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    // The plain file is another representation, with its own tag.
    let r = h
        .send(
            "GET",
            "/ui/assets/js/app.js",
            &[("if-none-match", &etag)],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.header("content-encoding").is_none());
    assert_eq!(
        h.get("/ui/assets/nope.js").await.status,
        StatusCode::NOT_FOUND
    );

    // A wrong password: 401 with the form again, no cookie.
    let r = h
        .send(
            "POST",
            "/ui/login",
            &[("content-type", "application/x-www-form-urlencoded")],
            format!("username={USER}&password=wrong"),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.header("set-cookie").is_none());
    assert!(r.text().contains("Wrong user name or password"));

    let (cookie, host) = log_in(&h).await;
    let r = h
        .send("GET", "/ui/session", &[("cookie", &cookie)], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let session = r.json();
    assert_eq!(session["user"], USER);
    let token = session["csrfToken"].as_str().unwrap().to_owned();
    // Reads need only the cookie: the API as faas-cli sees it.
    let r = h
        .send(
            "GET",
            "/system/functions",
            &[("cookie", &cookie)],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    // Changes: refused without the token or from another origin, and nothing changes.
    let scale = r#"{"serviceName":"hello","replicas":3}"#;
    let origin = format!("http://{host}");
    for headers in [
        vec![("cookie", cookie.as_str()), ("origin", origin.as_str())],
        vec![
            ("cookie", cookie.as_str()),
            ("origin", "http://evil.example"),
            ("x-bramble-csrf", token.as_str()),
        ],
        vec![
            ("cookie", cookie.as_str()),
            ("x-bramble-csrf", token.as_str()),
        ],
    ] {
        let r = h
            .send(
                "POST",
                "/system/scale-function/hello",
                &headers,
                scale.to_owned(),
            )
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{headers:?}: {}", r.text());
    }
    assert!(
        !h.provider.calls().iter().any(|c| c.starts_with("scale")),
        "{:?}",
        h.provider.calls()
    );
    let own = [
        ("cookie", cookie.as_str()),
        ("origin", origin.as_str()),
        ("x-bramble-csrf", token.as_str()),
    ];
    let r = h
        .send(
            "POST",
            "/system/scale-function/hello",
            &own,
            scale.to_owned(),
        )
        .await;
    assert!(r.status.is_success(), "{}: {}", r.status, r.text());
    assert!(
        h.provider
            .calls()
            .contains(&"scale hello openfaas-fn 3".to_owned())
    );

    // The overview's stream: server-sent events, the first one at once.
    let response = h.stream("GET", "/ui/events", &[("cookie", &cookie)]).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers().get("content-type").unwrap(),
        "text/event-stream"
    );
    let mut body = response.into_body();
    let mut text = String::new();
    while !text.contains("\n\n") {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(10), body.frame())
            .await
            .expect("an event within 10 s")
            .expect("the stream goes on")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            text.push_str(&String::from_utf8_lossy(&data));
        }
    }
    assert!(text.contains("event: overview"), "{text}");
    assert!(text.contains(r#""name":"hello""#), "{text}");
    drop(body);

    // Logging out ends the session: its cookie opens nothing any more.
    let r = h.send("POST", "/ui/logout", &own, Body::empty()).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = h
        .send("GET", "/ui/session", &[("cookie", &cookie)], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = h
        .send(
            "GET",
            "/system/functions",
            &[("cookie", &cookie)],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}
