//! Property tests of the gateway's parsers of outside input: resource quantities, names, JSON
//! bodies of every API route, `since` timestamps, log queries, callback URLs and the
//! `Authorization` header.
//!
//! Each property: no panic on any input; an error is a 4xx with a message that says what is
//! wrong; what parses prints back to itself where a formatter exists.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;

use base64::Engine as _;
use http::{HeaderMap, HeaderValue, StatusCode};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::config::Credentials;
use crate::http_util::{ApiError, parse_json};
use crate::types::{
    DeleteFunctionRequest, FunctionDeployment, FunctionNamespace, ScaleServiceRequest, Secret,
};
use crate::validate;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: ProptestConfig::default().cases.max(512),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// `s` as the message quotes it (`{s:?}`).
fn quoted(s: &str) -> String {
    format!("{s:?}")
}

/// Any JSON value, biased to the API's field names.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,24}".prop_map(Value::from),
    ];
    let key = prop_oneof![
        Just("service".to_owned()),
        Just("image".to_owned()),
        Just("namespace".to_owned()),
        Just("envVars".to_owned()),
        Just("envProcess".to_owned()),
        Just("secrets".to_owned()),
        Just("labels".to_owned()),
        Just("annotations".to_owned()),
        Just("limits".to_owned()),
        Just("requests".to_owned()),
        Just("memory".to_owned()),
        Just("cpu".to_owned()),
        Just("readOnlyRootFilesystem".to_owned()),
        Just("serviceName".to_owned()),
        Just("replicas".to_owned()),
        Just("functionName".to_owned()),
        Just("name".to_owned()),
        Just("value".to_owned()),
        Just("rawValue".to_owned()),
        ".{0,8}",
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A deployment shaped right, with each field valid or hostile.
fn deployment() -> impl Strategy<Value = Value> {
    let quantity = prop_oneof![
        "[0-9]{1,5}(Ki|Mi|Gi|m|k|M|G)?",
        "[0-9.eE+-]{0,12}[A-Za-z]{0,3}",
        ".{0,12}"
    ];
    (
        prop_oneof!["[a-z0-9-]{0,45}", ".{0,50}"],
        prop_oneof![Just("fixture:test".to_owned()), ".{0,40}"],
        prop::option::of(prop_oneof!["[a-z0-9-]{0,25}", ".{0,25}"]),
        btree_map(".{0,8}", ".{0,8}", 0..4),
        vec(prop_oneof!["[A-Za-z0-9._-]{0,10}", ".{0,10}"], 0..3),
        btree_map(".{0,30}", ".{0,30}", 0..4),
        prop::option::of((
            prop::option::of(quantity.clone()),
            prop::option::of(quantity),
        )),
        any::<bool>(),
    )
        .prop_map(
            |(service, image, namespace, env, secrets, annotations, limits, ro)| {
                let limits = limits.map(|(memory, cpu)| json!({"memory": memory, "cpu": cpu}));
                json!({
                    "service": service, "image": image, "namespace": namespace,
                    "envVars": env, "secrets": secrets, "annotations": annotations,
                    "labels": annotations, "limits": limits, "requests": limits,
                    "readOnlyRootFilesystem": ro,
                })
            },
        )
}

/// A JSON parse error is a 400 that says what is wrong (and, for a field, which one).
fn assert_clear(e: &ApiError) -> Result<(), TestCaseError> {
    prop_assert_eq!(e.status, StatusCode::BAD_REQUEST);
    prop_assert!(e.message.len() > 10, "vague error: {:?}", e.message);
    Ok(())
}

/// Parses `bytes` as every API body type.
fn parse_all(bytes: &[u8]) -> Result<(), TestCaseError> {
    macro_rules! each {
        ($($t:ty),*) => {$(
            if let Err(e) = parse_json::<$t>(bytes) {
                assert_clear(&e)?;
            }
        )*};
    }
    each!(
        FunctionDeployment,
        ScaleServiceRequest,
        DeleteFunctionRequest,
        Secret,
        FunctionNamespace
    );
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// Memory and CPU quantities (`limits`, `requests`, configuration): any text is a clear
    /// error quoting it, or a value within the maximum.
    #[test]
    fn quantities_never_panic(q in prop_oneof![
        ".{0,40}",
        "[+-]?[0-9]{0,40}(\\.[0-9]{0,40})?([eE][+-]?[0-9]{0,6}|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?",
    ]) {
        match validate::parse_memory(&q) {
            Ok(bytes) => prop_assert!(bytes <= validate::MAX_MEMORY_BYTES),
            Err(e) => prop_assert!(q.is_empty() || e.contains(&quoted(&q)), "{}", e),
        }
        match validate::parse_cpu_millis(&q) {
            Ok(millis) => prop_assert!(millis <= validate::MAX_CPU_MILLIS),
            Err(e) => prop_assert!(q.is_empty() || e.contains(&quoted(&q)), "{}", e),
        }
    }

    /// Quantities written the usual ways mean what they say.
    #[test]
    fn quantities_round_trip(n in 0u64..=validate::MAX_MEMORY_BYTES, k in 0u64..=(1 << 20), m in 0u64..=validate::MAX_CPU_MILLIS) {
        prop_assert_eq!(validate::parse_memory(&n.to_string()), Ok(n));
        prop_assert_eq!(validate::parse_memory(&format!("{k}Mi")), Ok(k << 20));
        prop_assert_eq!(validate::parse_memory(&format!("{k}Ki")), Ok(k << 10));
        prop_assert_eq!(validate::parse_cpu_millis(&format!("{m}m")), Ok(m));
        if m % 1000 == 0 {
            prop_assert_eq!(validate::parse_cpu_millis(&(m / 1000).to_string()), Ok(m));
        }
    }

    /// Names become container ids and file names: what is accepted is safe for both.
    #[test]
    fn names_accepted_are_safe(name in prop_oneof![".{0,60}", "[a-z0-9.-]{0,45}", "[A-Za-z0-9._/-]{0,12}"]) {
        for (ok, max) in [
            (validate::function_name(&name), validate::MAX_FUNCTION_NAME),
            (validate::namespace_name(&name), validate::MAX_NAMESPACE_NAME),
        ] {
            match ok {
                Ok(()) => {
                    prop_assert!(!name.is_empty() && name.len() <= max);
                    prop_assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
                    prop_assert!(!name.starts_with('-') && !name.ends_with('-'));
                }
                Err(e) => prop_assert!(e.len() > 10),
            }
        }
        match validate::secret_name(&name) {
            Ok(()) => {
                prop_assert!(!name.contains('/') && name != "." && name != ".." && !name.is_empty());
                prop_assert!(name.len() <= validate::MAX_SECRET_NAME);
            }
            Err(e) => prop_assert!(e.len() > 10),
        }
    }

    /// Request bodies of every JSON route, as arbitrary bytes.
    #[test]
    fn api_bodies_from_arbitrary_bytes(bytes in vec(any::<u8>(), 0..300)) {
        parse_all(&bytes)?;
    }

    /// Request bodies of every JSON route, as arbitrary JSON (deeply nested included).
    #[test]
    fn api_bodies_from_arbitrary_json(value in json_value(), depth in 0usize..200) {
        parse_all(&serde_json::to_vec(&value).unwrap())?;
        // Nesting far beyond any real body: refused, never a stack overflow.
        let nested = format!("{}{}", "[".repeat(depth * 10), "]".repeat(depth * 10));
        parse_all(nested.as_bytes())?;
    }

    /// Deployments with hostile fields: a clear 400 naming a field, or a deployment whose
    /// fields came through unchanged.
    #[test]
    fn deployments(value in deployment()) {
        match parse_json::<FunctionDeployment>(&serde_json::to_vec(&value).unwrap()) {
            Ok(d) => {
                prop_assert_eq!(Some(d.service.as_str()), value["service"].as_str());
                prop_assert_eq!(Some(d.image.as_str()), value["image"].as_str());
            }
            Err(e) => assert_clear(&e)?,
        }
    }

    /// `since` of `/system/logs`.
    #[test]
    fn rfc3339_never_panics(text in prop_oneof![
        ".{0,40}",
        "[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,12})?([Zz]|[+-][0-9]{2}:[0-9]{2})?",
    ]) {
        if let Err(e) = crate::rfc3339::parse(&text) {
            prop_assert!(e.contains(&quoted(&text)), "{}", e);
        }
    }

    /// Valid UTC timestamps mean the instant humantime reads in them.
    #[test]
    fn rfc3339_agrees_with_humantime(
        y in 1970u32..=9999, mo in 1u32..=12, d in 1u32..=28, h in 0u32..24, mi in 0u32..60, s in 0u32..60,
        frac in prop::option::of("[0-9]{1,9}"),
    ) {
        let text = format!(
            "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{}Z",
            frac.map(|f| format!(".{f}")).unwrap_or_default()
        );
        match humantime::parse_rfc3339(&text) {
            Ok(t) => prop_assert_eq!(crate::rfc3339::parse(&text), Ok(t)),
            // humantime refuses years after 2038 on 32-bit targets (armv7); bramble reads them.
            Err(_) => prop_assert!(crate::rfc3339::parse(&text).is_ok(), "{}", text),
        }
    }

    /// Query strings of `/system/logs`.
    #[test]
    fn log_queries(q in btree_map(
        prop_oneof![Just("name".to_owned()), Just("namespace".to_owned()), Just("tail".to_owned()),
                    Just("follow".to_owned()), Just("since".to_owned()), Just("instance".to_owned()), ".{0,6}"],
        prop_oneof![".{0,30}", "[a-z0-9-]{1,10}", "-?[0-9]{1,25}"],
        0..6,
    )) {
        let q: HashMap<String, String> = q.into_iter().collect();
        if let Err(e) = crate::api::logs::parse_log_request(&q, "openfaas-fn") {
            prop_assert!(e.status.is_client_error());
            prop_assert!(e.message.len() > 10, "{}", e.message);
        }
    }

    /// `X-Callback-Url` of async calls.
    #[test]
    fn callback_urls(text in prop_oneof![".{0,60}", "(http|https|ftp)?(://)?[a-z0-9.:@\\[\\]]{0,20}(/[ -~]{0,20})?"]) {
        if let Ok(value) = HeaderValue::from_str(&text) {
            match crate::queue::validate_callback_url(&value) {
                Ok(url) => prop_assert!(url.starts_with("http://") || url.starts_with("https://")),
                Err(e) => prop_assert!(!e.is_empty()),
            }
        }
    }

    /// `Authorization` headers: any bytes are refused unless they carry exactly the
    /// credentials; never a panic.
    #[test]
    fn authorization_headers(
        raw in vec(any::<u8>(), 0..100),
        user in "[ -9;-~]{1,12}",
        password in "[ -~]{1,24}",
        given_user in "[ -9;-~]{0,12}",
        given_password in "[ -~]{0,24}",
        scheme in prop_oneof![Just("Basic "), Just("basic "), Just("BASIC  "), Just("Bearer "), Just("Basic"), Just("")],
    ) {
        let credentials = Credentials { user: user.clone(), password: password.clone() };
        let with = |value: HeaderValue| {
            let mut headers = HeaderMap::new();
            headers.insert(http::header::AUTHORIZATION, value);
            headers
        };
        if let Ok(value) = HeaderValue::from_bytes(&raw) {
            let decoded_ok = raw.len() > 6
                && base64::engine::general_purpose::STANDARD.decode(raw[6..].trim_ascii())
                    .is_ok_and(|d| d == format!("{user}:{password}").as_bytes());
            prop_assert_eq!(crate::auth::authorized(&credentials, &with(value)), decoded_ok && raw[..6].eq_ignore_ascii_case(b"basic "));
        }
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{given_user}:{given_password}"));
        let value = HeaderValue::from_str(&format!("{scheme}{encoded}")).unwrap();
        let expected = scheme.eq_ignore_ascii_case("basic ") || scheme == "BASIC  ";
        let expected = expected && given_user == user && given_password == password;
        prop_assert_eq!(crate::auth::authorized(&credentials, &with(value)), expected);
    }
}
