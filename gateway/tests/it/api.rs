//! The OpenFaaS REST API under `/system`: routes, status codes, JSON field names, quirks,
//! auth, validation.

use std::time::Duration;

use axum::body::Body;
use http::StatusCode;
use serde_json::{Value, json};

use crate::common::*;

const DEPLOY: &str = r#"{"service":"hello","image":"ghcr.io/x/hello:1","envProcess":"./handler","envVars":{"A":"1"},"labels":{},"annotations":{"topic":"cron-function"},"secrets":["api-key"],"limits":{"memory":"128Mi","cpu":"500m"}}"#;

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
    k.sort();
    k
}

#[tokio::test]
async fn every_route_answers_with_openfaas_status_codes_and_field_names() {
    let h = Harness::start(MemProvider::new(None)).await;

    // Functions.
    let r = h.admin("POST", "/system/functions", DEPLOY).await;
    assert_eq!(
        (r.status, r.text()),
        (StatusCode::OK, String::new()),
        "deploy answers 200 empty"
    );
    let r = h.admin("PUT", "/system/functions", DEPLOY).await;
    assert_eq!(
        (r.status, r.text()),
        (StatusCode::OK, String::new()),
        "update answers 200 empty"
    );
    let r = h.admin("GET", "/system/functions", "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let list = r.json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(
        keys(&list[0]),
        [
            "annotations",
            "availableReplicas",
            "createdAt",
            "envProcess",
            "envVars",
            "image",
            "limits",
            "name",
            "namespace",
            "replicas",
            "secrets"
        ]
    );
    assert_eq!(list[0]["name"], "hello");
    assert_eq!(
        list[0]["namespace"], "openfaas-fn",
        "the default namespace is filled in"
    );
    assert_eq!(list[0]["limits"], json!({"memory": "128Mi", "cpu": "500m"}));
    let r = h.admin("GET", "/system/function/hello?usage=1", "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["availableReplicas"], 1);
    assert!(
        h.provider
            .calls()
            .contains(&"get_function hello openfaas-fn usage=true".to_owned())
    );
    let r = h.admin("GET", "/system/function/nope", "").await;
    assert_eq!(
        (r.status, r.text().trim()),
        (StatusCode::NOT_FOUND, "function nope.openfaas-fn not found")
    );
    let r = h
        .admin(
            "POST",
            "/system/scale-function/hello",
            r#"{"serviceName":"hello","replicas":0}"#,
        )
        .await;
    assert_eq!(
        (r.status, r.text()),
        (StatusCode::OK, String::new()),
        "scale to zero is allowed"
    );
    let r = h.admin("GET", "/system/function/hello", "").await;
    assert!(
        r.json().get("replicas").is_none(),
        "replicas 0 is omitted like Go's omitempty"
    );

    // Info.
    let r = h.admin("GET", "/system/info", "").await;
    assert_eq!(r.status, StatusCode::OK);
    let info = r.json();
    assert_eq!(keys(&info), ["arch", "provider", "version"]);
    assert_eq!(
        info["provider"],
        json!({"provider":"bramble","version":{"sha":"abc123","release":"0.1.0"},"orchestration":"containerd"})
    );
    assert_eq!(keys(&info["version"]), ["release", "sha"]);
    let uname = std::process::Command::new("uname")
        .arg("-m")
        .output()
        .unwrap();
    assert_eq!(
        info["arch"],
        String::from_utf8_lossy(&uname.stdout).trim(),
        "uname -m"
    );

    // Namespaces.
    let r = h.admin("GET", "/system/namespaces", "").await;
    assert_eq!(
        (r.status, r.json()),
        (StatusCode::OK, json!(["openfaas-fn"]))
    );
    let r = h
        .admin(
            "POST",
            "/system/namespace/",
            r#"{"name":"dev","labels":{"openfaas":"1"},"annotations":{"openfaas":"1"}}"#,
        )
        .await;
    assert_eq!((r.status, r.text()), (StatusCode::CREATED, String::new()));
    let r = h.admin("GET", "/system/namespace/dev", "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json(),
        json!({"name":"dev","labels":{"openfaas":"1"},"annotations":{"openfaas":"1"}})
    );
    let r = h
        .admin(
            "PUT",
            "/system/namespace/dev",
            r#"{"name":"dev","labels":{"openfaas":"true","team":"a"}}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(
        h.admin("GET", "/system/namespace/dev", "").await.json()["labels"]["team"],
        "a"
    );
    let r = h
        .admin(
            "POST",
            "/system/namespace/",
            r#"{"name":"dev","labels":{"openfaas":"1"}}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = h
        .admin(
            "DELETE",
            "/system/namespace/dev",
            r#"{"name":"dev","labels":{"openfaas":"1"}}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(
        h.admin("GET", "/system/namespace/dev", "").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        h.admin("DELETE", "/system/namespace/dev", "").await.status,
        StatusCode::NOT_FOUND
    );

    // Secrets: names only, never values.
    let r = h
        .admin(
            "POST",
            "/system/secrets",
            r#"{"name":"api-key","value":"hunter2"}"#,
        )
        .await;
    assert_eq!((r.status, r.text()), (StatusCode::OK, String::new()));
    let r = h
        .admin(
            "PUT",
            "/system/secrets",
            r#"{"name":"raw","rawValue":"AAEC"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = h.admin("GET", "/system/secrets", "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json(),
        json!([{"name":"api-key","namespace":"openfaas-fn"},{"name":"raw","namespace":"openfaas-fn"}])
    );
    assert!(!r.text().contains("hunter2") && !r.text().contains("AAEC"));
    let r = h
        .admin("DELETE", "/system/secrets", r#"{"name":"raw"}"#)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        h.admin("DELETE", "/system/secrets", r#"{"name":"raw"}"#)
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    // Logs, health, metrics, root, unknown.
    let r = h.admin("GET", "/system/logs?name=hello", "").await;
    assert_eq!(
        (r.status, r.header("content-type")),
        (StatusCode::OK, Some("application/x-ndjson"))
    );
    let r = h.get("/healthz").await;
    assert_eq!((r.status, r.text()), (StatusCode::OK, "OK".to_owned()));
    let r = h.get("/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let r = h.get("/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.text().contains("bramble") && r.text().contains("/function/NAME"),
        "{}",
        r.text()
    );
    assert_eq!(h.get("/nothing/here").await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        h.admin("GET", "/system/nothing", "").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        h.admin("PATCH", "/system/functions", "").await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        h.get("/async-function/hello").await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );

    // Delete.
    let r = h
        .admin(
            "DELETE",
            "/system/functions",
            r#"{"functionName":"hello","namespace":"openfaas-fn"}"#,
        )
        .await;
    assert_eq!((r.status, r.text()), (StatusCode::OK, String::new()));
    let r = h
        .admin("DELETE", "/system/functions", r#"{"functionName":"hello"}"#)
        .await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "faas-cli prints 'No existing function to remove' on 404"
    );
}

/// Every `/system` route with a valid request.
const SYSTEM_ROUTES: &[(&str, &str, &str)] = &[
    ("GET", "/system/functions", ""),
    (
        "POST",
        "/system/functions",
        r#"{"service":"authfn","image":"x"}"#,
    ),
    (
        "PUT",
        "/system/functions",
        r#"{"service":"authfn","image":"x"}"#,
    ),
    ("GET", "/system/function/authfn", ""),
    (
        "POST",
        "/system/scale-function/authfn",
        r#"{"serviceName":"authfn","replicas":1}"#,
    ),
    ("GET", "/system/info", ""),
    ("GET", "/system/namespaces", ""),
    (
        "POST",
        "/system/namespace/",
        r#"{"name":"authns","labels":{"openfaas":"1"}}"#,
    ),
    ("GET", "/system/namespace/openfaas-fn", ""),
    (
        "PUT",
        "/system/namespace/authns",
        r#"{"name":"authns","labels":{"openfaas":"1"}}"#,
    ),
    ("DELETE", "/system/namespace/authns", ""),
    ("GET", "/system/secrets", ""),
    (
        "POST",
        "/system/secrets",
        r#"{"name":"authsecret","value":"v"}"#,
    ),
    (
        "PUT",
        "/system/secrets",
        r#"{"name":"authsecret","value":"v"}"#,
    ),
    ("DELETE", "/system/secrets", r#"{"name":"authsecret"}"#),
    ("GET", "/system/logs?name=authfn", ""),
    (
        "DELETE",
        "/system/functions",
        r#"{"functionName":"authfn"}"#,
    ),
];

#[tokio::test]
async fn basic_auth_guards_every_system_route_and_nothing_else() {
    let h = Harness::start(MemProvider::new(None)).await;
    let wrong_password = basic(USER, "wrong");
    let wrong_user = basic("root", PASSWORD);
    for (method, path, body) in SYSTEM_ROUTES {
        for headers in [
            vec![],
            vec![("authorization", wrong_password.as_str())],
            vec![("authorization", wrong_user.as_str())],
            vec![("authorization", "Bearer x")],
        ] {
            let r = h.send(method, path, &headers, (*body).to_owned()).await;
            assert_eq!(
                r.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} {headers:?}"
            );
            assert_eq!(
                r.header("www-authenticate"),
                Some("Basic realm=\"Restricted\""),
                "{method} {path}"
            );
            assert_eq!(r.text().trim(), "invalid credentials");
        }
    }
    assert!(
        h.provider.calls().is_empty(),
        "a refused request reaches no provider: {:?}",
        h.provider.calls()
    );
    assert!(h.provider.state.lock().unwrap().functions.is_empty());

    // Paths under /system that do not exist: 401 without credentials (a client without them
    // learns nothing about which routes exist), 404 with them; wrong methods alike.
    for (method, path) in [
        ("GET", "/system"),
        ("GET", "/system/"),
        ("GET", "/system/nosuch"),
        ("POST", "/system/function/x/y"),
        ("DELETE", "/system/info"),
    ] {
        let r = h.send(method, path, &[], "").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{method} {path}");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Basic realm=\"Restricted\""),
            "{method} {path}"
        );
        let r = h.admin(method, path, "").await;
        let want = if method == "DELETE" {
            StatusCode::METHOD_NOT_ALLOWED
        } else {
            StatusCode::NOT_FOUND
        };
        assert_eq!(r.status, want, "{method} {path} with credentials");
    }
    // Outside /system an unknown path is a plain 404.
    assert_eq!(h.get("/nosuch").await.status, StatusCode::NOT_FOUND);

    // With the right credentials, in order, every route succeeds.
    for (method, path, body) in SYSTEM_ROUTES {
        let r = h.admin(method, path, body).await;
        assert!(
            r.status.is_success(),
            "{method} {path}: {} {}",
            r.status,
            r.text()
        );
    }

    // The open routes need nothing.
    h.provider.add_function("open", "openfaas-fn");
    for path in ["/healthz", "/metrics", "/", "/function/open"] {
        let r = h.get(path).await;
        assert_ne!(r.status, StatusCode::UNAUTHORIZED, "{path}");
    }
    let r = h.send("POST", "/async-function/open", &[], "x").await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn invalid_requests_get_400_naming_the_field_and_change_nothing() {
    let h = Harness::start(MemProvider::new(None)).await;
    h.provider.add_function("hello", "openfaas-fn");
    h.provider.calls.lock().unwrap().clear();
    let long = "a".repeat(41);
    let cases: Vec<(&str, &str, String, &str)> = vec![
        (
            "POST",
            "/system/functions",
            r#"{"service":"f","image":"i","envVars":5}"#.into(),
            "envVars: invalid type: integer `5`, expected a map",
        ),
        (
            "POST",
            "/system/functions",
            r#"{"service":"f","image":"i","secrets":["ok",7]}"#.into(),
            "secrets[1]: invalid type: integer `7`",
        ),
        (
            "POST",
            "/system/functions",
            r#"{"image":"i"}"#.into(),
            "invalid JSON body: missing field `service`",
        ),
        (
            "POST",
            "/system/functions",
            "{not json".into(),
            "invalid JSON body:",
        ),
        (
            "POST",
            "/system/functions",
            "".into(),
            "request body is empty",
        ),
        (
            "POST",
            "/system/functions",
            r#"{"service":"Hello","image":"i"}"#.into(),
            "service: invalid function name \"Hello\"",
        ),
        (
            "POST",
            "/system/functions",
            format!(r#"{{"service":"{long}","image":"i"}}"#),
            "service: function name",
        ),
        (
            "POST",
            "/system/functions",
            r#"{"service":"f","image":""}"#.into(),
            "image: ",
        ),
        (
            "POST",
            "/system/functions",
            r#"{"service":"f","image":"i","namespace":"Bad_ns"}"#.into(),
            "namespace: invalid namespace name",
        ),
        (
            "POST",
            "/system/functions",
            r#"{"service":"f","image":"i","limits":{"memory":"128Qi"}}"#.into(),
            "limits.memory: quantity \"128Qi\" has an unknown suffix",
        ),
        (
            "POST",
            "/system/functions",
            r#"{"service":"f","image":"i","limits":{"memory":"2Ti"}}"#.into(),
            "limits.memory: memory quantity \"2Ti\" is larger",
        ),
        (
            "POST",
            "/system/functions",
            r#"{"service":"f","image":"i","limits":{"cpu":"-1"}}"#.into(),
            "limits.cpu: quantity \"-1\" is negative",
        ),
        (
            "POST",
            "/system/functions",
            r#"{"service":"f","image":"i","limits":{"memory":"0"}}"#.into(),
            "limits.memory: a memory limit must be more than 0",
        ),
        (
            "POST",
            "/system/functions",
            r#"{"service":"f","image":"i","requests":{"cpu":"2000"}}"#.into(),
            "requests.cpu: cpu quantity \"2000\" is larger",
        ),
        (
            "POST",
            "/system/functions",
            r#"{"service":"f","image":"i","secrets":["ok","../etc"]}"#.into(),
            "secrets[1]: invalid secret name",
        ),
        (
            "POST",
            "/system/functions",
            r#"{"service":"f","image":"i","envVars":{"A=B":"x"}}"#.into(),
            "envVars.A=B: ",
        ),
        (
            "PUT",
            "/system/functions",
            r#"{"service":"hello","image":"i","limits":{"memory":""}}"#.into(),
            "limits.memory: empty quantity",
        ),
        (
            "DELETE",
            "/system/functions",
            r#"{"functionName":"Bad"}"#.into(),
            "functionName: invalid function name",
        ),
        (
            "DELETE",
            "/system/functions",
            r#"{"functionName":"hello","namespace":"x/y"}"#.into(),
            "namespace: invalid namespace name",
        ),
        (
            "POST",
            "/system/scale-function/hello",
            r#"{"serviceName":"hello","replicas":9}"#.into(),
            "replicas: 9 is more than the maximum of 8",
        ),
        (
            "POST",
            "/system/scale-function/hello",
            r#"{"serviceName":"hello","replicas":-1}"#.into(),
            "replicas: invalid value: integer `-1`",
        ),
        (
            "POST",
            "/system/scale-function/hello",
            r#"{"serviceName":"hello"}"#.into(),
            "invalid JSON body: missing field `replicas`",
        ),
        (
            // A missing serviceName is Go's "": the path name is used, here an invalid one.
            "POST",
            "/system/scale-function/Bad",
            r#"{"replicas":1}"#.into(),
            "name: invalid function name",
        ),
        (
            "POST",
            "/system/scale-function/Bad",
            r#"{"serviceName":"","replicas":1}"#.into(),
            "name: invalid function name",
        ),
        (
            "POST",
            "/system/scale-function/hello",
            r#"{"serviceName":"x.y","replicas":1}"#.into(),
            "serviceName: invalid function name",
        ),
        (
            "GET",
            "/system/function/Bad_Name",
            String::new(),
            "name: invalid function name",
        ),
        (
            "GET",
            "/system/function/hello?usage=maybe",
            String::new(),
            "usage: \"maybe\" is not a boolean",
        ),
        (
            "GET",
            "/system/functions?namespace=NS",
            String::new(),
            "namespace: invalid namespace name",
        ),
        (
            "POST",
            "/system/namespace/",
            r#"{"name":"dev"}"#.into(),
            "labels.openfaas: a namespace needs the label",
        ),
        (
            "POST",
            "/system/namespace/",
            r#"{"name":"dev","labels":{"openfaas":"0"}}"#.into(),
            "labels.openfaas: ",
        ),
        (
            "POST",
            "/system/namespace/",
            r#"{"name":"","labels":{"openfaas":"1"}}"#.into(),
            "name: a namespace name is required",
        ),
        (
            "POST",
            "/system/namespace/",
            r#"{"name":"a-namespace-name-too-long","labels":{"openfaas":"1"}}"#.into(),
            "name: namespace name",
        ),
        (
            "PUT",
            "/system/namespace/openfaas-fn",
            r#"{"name":"other","labels":{"openfaas":"1"}}"#.into(),
            "name: \"other\" does not match",
        ),
        (
            "PUT",
            "/system/namespace/openfaas-fn",
            r#"{"name":"openfaas-fn"}"#.into(),
            "labels.openfaas: ",
        ),
        (
            "POST",
            "/system/secrets",
            r#"{"name":"../x","value":"v"}"#.into(),
            "name: invalid secret name",
        ),
        (
            "POST",
            "/system/secrets",
            r#"{"name":"k"}"#.into(),
            "value: a secret needs a value or a rawValue",
        ),
        (
            "POST",
            "/system/secrets",
            r#"{"name":"k","rawValue":"%%"}"#.into(),
            "rawValue: rawValue is not base64",
        ),
        (
            "POST",
            "/system/secrets",
            r#"{"name":"k","value":"v","namespace":"UP"}"#.into(),
            "namespace: invalid namespace name",
        ),
        (
            "DELETE",
            "/system/secrets",
            "".into(),
            "name: a secret name is required",
        ),
        (
            "DELETE",
            "/system/secrets",
            r#"{"name":"."}"#.into(),
            "name: invalid secret name",
        ),
    ];
    for (method, path, body, want) in &cases {
        let r = h.admin(method, path, body).await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{method} {path} {body}: {}",
            r.text()
        );
        assert!(
            r.text().starts_with(want),
            "{method} {path} {body}:\n got {:?}\nwant {want:?}",
            r.text()
        );
        assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    }
    let calls = h.provider.calls();
    assert!(
        calls.is_empty(),
        "validation happens before the provider is called: {calls:?}"
    );
    assert_eq!(h.provider.state.lock().unwrap().functions.len(), 1);

    // Logs: 422 for an unparsable query, naming the parameter.
    for (query, want) in [
        ("", "name: a function name is required"),
        ("name=hello&tail=ten", "tail: \"ten\" is not an integer"),
        (
            "name=hello&follow=maybe",
            "follow: \"maybe\" is not a boolean",
        ),
        (
            "name=hello&since=yesterday",
            "since: \"yesterday\" is not an RFC 3339 time",
        ),
    ] {
        let r = h.admin("GET", &format!("/system/logs?{query}"), "").await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{query}");
        assert!(r.text().starts_with(want), "{query}: {}", r.text());
    }
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let h = Harness::start_with(MemProvider::new(None), |c| {
        c.max_api_body = 1024;
        c.max_async_body = 2048;
    })
    .await;
    h.provider.add_function("hello", "openfaas-fn");
    let big = format!(r#"{{"service":"f","image":"{}"}}"#, "x".repeat(2000));
    let r = h.admin("POST", "/system/functions", &big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(r.text().contains("limit of 1024 bytes"), "{}", r.text());
    // Without a Content-Length (chunked), the limit still holds.
    let chunks = futures::stream::iter(vec![Ok::<_, std::io::Error>(bytes::Bytes::from(
        big.clone(),
    ))]);
    let auth = basic(USER, PASSWORD);
    let r = h
        .send(
            "PUT",
            "/system/functions",
            &[("authorization", &auth)],
            Body::from_stream(chunks),
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        h.provider
            .calls()
            .iter()
            .all(|c| !c.starts_with("deploy") && !c.starts_with("update"))
    );
    // Async bodies have their own limit.
    let r = h
        .send("POST", "/async-function/hello", &[], vec![b'x'; 2049])
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    let r = h
        .send("POST", "/async-function/hello", &[], vec![b'x'; 2048])
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn put_of_a_missing_function_is_404_so_faas_cli_falls_back_to_post() {
    let h = Harness::start(MemProvider::new(None)).await;
    let body = r#"{"service":"f","image":"i:1","labels":{},"annotations":{}}"#;
    let r = h.admin("PUT", "/system/functions", body).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.text().contains("f.openfaas-fn not found"), "{}", r.text());
    assert_eq!(
        h.admin("POST", "/system/functions", body).await.status,
        StatusCode::OK
    );
    assert_eq!(
        h.admin("PUT", "/system/functions", &body.replace("i:1", "i:2"))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        h.provider.state.lock().unwrap().functions[&("f".to_owned(), "openfaas-fn".to_owned())]
            .image,
        "i:2"
    );
    let r = h.admin("POST", "/system/functions", body).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn scale_takes_the_name_from_service_name_and_the_namespace_from_body_or_query() {
    let h = Harness::start(MemProvider::new(None)).await;
    h.provider.add_function("real", "openfaas-fn");
    h.provider.add_function("real", "dev");
    h.provider.calls.lock().unwrap().clear();
    // The path name is ignored when serviceName is given (faasd's behaviour).
    let r = h
        .admin(
            "POST",
            "/system/scale-function/ignored",
            r#"{"serviceName":"real","replicas":3}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // Namespace from the query when the body has none (the gateway sends both).
    let r = h
        .admin(
            "POST",
            "/system/scale-function/real?namespace=dev",
            r#"{"serviceName":"real","replicas":2}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // The body's namespace wins over the query.
    let r = h
        .admin(
            "POST",
            "/system/scale-function/real?namespace=openfaas-fn",
            r#"{"serviceName":"real","replicas":0,"namespace":"dev"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // An empty serviceName: the path name.
    let r = h
        .admin(
            "POST",
            "/system/scale-function/real",
            r#"{"serviceName":"","replicas":8}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = h
        .admin(
            "POST",
            "/system/scale-function/missing",
            r#"{"serviceName":"","replicas":1}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(
        h.provider.calls(),
        [
            "scale real openfaas-fn 3",
            "scale real dev 2",
            "scale real dev 0",
            "scale real openfaas-fn 8",
            "scale missing openfaas-fn 1"
        ]
    );
}

#[tokio::test]
async fn secret_delete_takes_the_namespace_from_the_body_or_the_query() {
    let h = Harness::start(MemProvider::new(None)).await;
    let r = h
        .admin(
            "POST",
            "/system/namespace/",
            r#"{"name":"dev","labels":{"openfaas":"1"}}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    for _ in 0..3 {
        assert_eq!(
            h.admin(
                "POST",
                "/system/secrets",
                r#"{"name":"k","namespace":"dev","value":"v"}"#
            )
            .await
            .status,
            StatusCode::OK
        );
        assert_eq!(
            h.admin("GET", "/system/secrets?namespace=dev", "")
                .await
                .json(),
            json!([{"name":"k","namespace":"dev"}])
        );
    }
    // faas-cli: namespace in the body.
    assert_eq!(
        h.admin(
            "DELETE",
            "/system/secrets",
            r#"{"name":"k","namespace":"dev"}"#
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_eq!(
        h.admin("GET", "/system/secrets?namespace=dev", "")
            .await
            .json(),
        json!([])
    );
    // faasd's own: namespace in the query.
    h.admin(
        "POST",
        "/system/secrets",
        r#"{"name":"k","namespace":"dev","value":"v"}"#,
    )
    .await;
    assert_eq!(
        h.admin("DELETE", "/system/secrets?namespace=dev", r#"{"name":"k"}"#)
            .await
            .status,
        StatusCode::OK
    );
    // Name and namespace both in the query, no body.
    h.admin(
        "POST",
        "/system/secrets",
        r#"{"name":"k","namespace":"dev","value":"v"}"#,
    )
    .await;
    assert_eq!(
        h.admin("DELETE", "/system/secrets?name=k&namespace=dev", "")
            .await
            .status,
        StatusCode::OK
    );
    let deletes: Vec<String> = h
        .provider
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("delete_secret"))
        .collect();
    assert_eq!(
        deletes,
        [
            "delete_secret k dev",
            "delete_secret k dev",
            "delete_secret k dev"
        ]
    );
    // Not there any more: 404.
    assert_eq!(
        h.admin(
            "DELETE",
            "/system/secrets",
            r#"{"name":"k","namespace":"dev"}"#
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn logs_are_ndjson_with_tail_since_and_follow() {
    let h = Harness::start(MemProvider::new(None)).await;
    h.provider.push_log("hello", "one", "2024-05-01T10:00:00Z");
    h.provider.push_log("hello", "two", "2024-05-01T11:00:00Z");
    h.provider
        .push_log("other", "not mine", "2024-05-01T11:00:00Z");
    h.provider
        .push_log("hello", "three", "2024-05-01T12:00:00Z");

    let r = h
        .admin(
            "GET",
            "/system/logs?name=hello&namespace=openfaas-fn&follow=false&tail=-1",
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let lines: Vec<Value> = r
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(
        keys(&lines[0]),
        ["instance", "name", "namespace", "text", "timestamp"]
    );
    assert_eq!(
        lines[0],
        json!({"name":"hello","namespace":"openfaas-fn","instance":"1234","timestamp":"2024-05-01T10:00:00Z","text":"one"})
    );

    let r = h.admin("GET", "/system/logs?name=hello&tail=2", "").await;
    let texts: Vec<String> = r
        .text()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(texts, ["two", "three"]);

    // since with an offset, as faas-cli writes it in local time: 12:30+01:00 = 11:30Z.
    let r = h
        .admin(
            "GET",
            "/system/logs?name=hello&since=2024-05-01T12:30:00%2B01:00",
            "",
        )
        .await;
    let texts: Vec<String> = r
        .text()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(texts, ["three"]);
    let asked = h.provider.last_log_request.lock().unwrap().clone().unwrap();
    assert_eq!(
        asked.since,
        Some(std::time::UNIX_EPOCH + Duration::from_secs(1_714_563_000))
    );

    // follow: lines arrive as they are produced, on a response that stays open.
    let auth = basic(USER, PASSWORD);
    let response = h
        .stream(
            "GET",
            "/system/logs?name=hello&follow=true&tail=1&instance=1234",
            &[("authorization", &auth)],
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    assert!(
        response.headers().get("content-length").is_none(),
        "streamed, not buffered"
    );
    let mut body = response.into_body();
    let first = read_until(&mut body, "\n").await;
    assert!(first.contains("\"three\""), "{first}");
    h.provider.push_log("hello", "four", "2024-05-01T12:00:00Z");
    let next = read_until(&mut body, "\n").await;
    assert!(next.contains("\"four\""), "{next}");
    h.provider.push_log("hello", "five", "2024-05-01T12:00:00Z");
    assert!(read_until(&mut body, "\n").await.contains("\"five\""));
    let asked = h.provider.last_log_request.lock().unwrap().clone().unwrap();
    assert_eq!(
        (asked.follow, asked.tail, asked.instance.as_deref()),
        (true, Some(1), Some("1234"))
    );
}

#[tokio::test]
async fn healthz_follows_the_provider() {
    let h = Harness::start(MemProvider::new(None)).await;
    assert_eq!(h.get("/healthz").await.status, StatusCode::OK);
    *h.provider.health.lock().unwrap() =
        Err("containerd is not reachable at /run/containerd/containerd.sock".into());
    let r = h.get("/healthz").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        r.text().contains("containerd is not reachable"),
        "{}",
        r.text()
    );
}

#[tokio::test]
async fn gateway_refuses_empty_credentials_and_an_unusable_queue_dir() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.credentials.password.clear();
    let err = bramble_gateway::Gateway::new(MemProvider::new(None), config).unwrap_err();
    assert!(err.to_string().contains("credentials"), "{err}");

    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let config = test_config(&file.join("queue"));
    let err = bramble_gateway::Gateway::new(MemProvider::new(None), config).unwrap_err();
    assert!(
        matches!(err, bramble_gateway::GatewayError::Queue { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("a-file/queue"), "{err}");

    // A CA file for https callbacks that is missing or holds no certificate.
    for (content, want) in [(None, "reading"), (Some("not a certificate"), "no PEM")] {
        let ca = dir.path().join("ca.pem");
        let _ = std::fs::remove_file(&ca);
        if let Some(content) = content {
            std::fs::write(&ca, content).unwrap();
        }
        let mut config = test_config(&dir.path().join("queue"));
        config.callback_ca_file = Some(ca);
        let err = bramble_gateway::Gateway::new(MemProvider::new(None), config).unwrap_err();
        assert!(
            matches!(err, bramble_gateway::GatewayError::Config(_))
                && err.to_string().contains("callback_ca_file")
                && err.to_string().contains(want),
            "{err}"
        );
    }
}

#[tokio::test]
async fn image_archives_are_uploaded_listed_and_removed() {
    let h = Harness::start(MemProvider::new(None)).await;
    let uploads = h.queue_dir.join("uploads");
    let leftovers = || std::fs::read_dir(&uploads).map(|d| d.count()).unwrap_or(0);

    let r = h.send("POST", "/system/images", &[], "pretend-tar").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(
        h.provider.calls.lock().unwrap().is_empty(),
        "no provider call without credentials"
    );

    let r = h
        .admin(
            "POST",
            "/system/images?name=docker.io/library/x:1",
            "pretend-tar",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let answer: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        answer,
        serde_json::json!({"images": ["docker.io/library/x:1"]})
    );
    assert_eq!(
        h.provider.calls.lock().unwrap().last().unwrap(),
        "import_images 11 docker.io/library/x:1"
    );
    assert_eq!(
        leftovers(),
        0,
        "the spooled archive is removed after the import"
    );

    let listed: serde_json::Value =
        serde_json::from_slice(&h.admin("GET", "/system/images", "").await.body).unwrap();
    assert_eq!(listed[0]["name"], "docker.io/library/x:1");
    assert_eq!(listed[0]["size"], 11);

    // Too large, empty, refused by the provider: clear errors, nothing imported, no file left.
    let big = "x".repeat(64 * 1024 + 1);
    let r = h.admin("POST", "/system/images", &big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());
    let r = h.admin("POST", "/system/images", "").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = h.admin("POST", "/system/images", "not an image").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text().contains("not a tar archive"), "{}", r.text());
    assert_eq!(leftovers(), 0);
    assert_eq!(h.provider.state.lock().unwrap().images.len(), 1);

    let r = h
        .admin(
            "DELETE",
            "/system/images",
            r#"{"name":"docker.io/library/x:1"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = h
        .admin("DELETE", "/system/images?name=docker.io/library/x:1", "")
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = h.admin("DELETE", "/system/images", "").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text().starts_with("name:"), "{}", r.text());
}
