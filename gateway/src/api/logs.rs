//! `/system/logs`: a function's output, optionally followed.

use std::collections::HashMap;
use std::convert::Infallible;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt as _;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, StatusCode};
use tracing::warn;

use crate::http_util::ApiError;
use crate::provider::Provider;
use crate::types::LogRequest;
use crate::validate;

use super::{ApiResult, Gw, Params, provider_error, query_bool};

pub(crate) fn parse_log_request(
    q: &HashMap<String, String>,
    default_namespace: &str,
) -> Result<LogRequest, ApiError> {
    let unprocessable = |field: &str, message: String| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{field}: {message}"),
        )
    };
    let name = q.get("name").map(String::as_str).unwrap_or_default();
    validate::function_name(name).map_err(|e| unprocessable("name", e))?;
    let namespace = match q
        .get("namespace")
        .map(String::as_str)
        .filter(|s| !s.is_empty())
    {
        Some(ns) => {
            validate::namespace_name(ns).map_err(|e| unprocessable("namespace", e))?;
            ns.to_owned()
        }
        None => default_namespace.to_owned(),
    };
    let tail = match q.get("tail").map(String::as_str).filter(|s| !s.is_empty()) {
        None => None,
        Some(t) => {
            let n: i64 = t
                .parse()
                .map_err(|_| unprocessable("tail", format!("{t:?} is not an integer")))?;
            // Go's -1 (and any negative) means every line.
            usize::try_from(n).ok()
        }
    };
    let follow = query_bool(q, "follow", StatusCode::UNPROCESSABLE_ENTITY)?;
    let since = match q.get("since").map(String::as_str).filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(crate::rfc3339::parse(s).map_err(|e| unprocessable("since", e))?),
    };
    let instance = q.get("instance").filter(|s| !s.is_empty()).cloned();
    Ok(LogRequest {
        name: name.to_owned(),
        namespace,
        instance,
        since,
        tail,
        follow,
    })
}

pub(super) async fn logs<P: Provider>(State(shared): Gw<P>, Query(q): Params) -> ApiResult {
    let request = parse_log_request(&q, &shared.config.default_namespace)?;
    let stream = shared
        .provider
        .logs(request)
        .await
        .map_err(provider_error)?;
    // A followed stream ends when the server shuts down, so it does not hold up draining.
    let lines = stream
        .take_until(shared.shutting_down())
        .filter_map(|message| async move {
            match serde_json::to_vec(&message) {
                Ok(mut line) => {
                    line.push(b'\n');
                    Some(Ok::<_, Infallible>(Bytes::from(line)))
                }
                Err(e) => {
                    warn!(error = %e, "cannot encode a log line");
                    None
                }
            }
        });
    let mut response = Response::new(Body::from_stream(lines));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_queries() {
        let q = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<HashMap<_, _>>()
        };
        let r = parse_log_request(
            &q(&[("name", "f"), ("tail", "-1"), ("follow", "false")]),
            "openfaas-fn",
        )
        .unwrap();
        assert_eq!(
            (r.namespace.as_str(), r.tail, r.follow, r.since),
            ("openfaas-fn", None, false, None)
        );
        let r = parse_log_request(
            &q(&[
                ("name", "f"),
                ("tail", "5"),
                ("follow", "1"),
                ("since", "2024-05-01T10:00:00Z"),
                ("instance", "i"),
            ]),
            "x",
        )
        .unwrap();
        assert_eq!(
            (r.tail, r.follow, r.instance.as_deref()),
            (Some(5), true, Some("i"))
        );
        assert!(r.since.is_some());
        for (bad, field) in [
            (q(&[]), "name"),
            (q(&[("name", "f"), ("tail", "x")]), "tail"),
            (q(&[("name", "f"), ("follow", "yes")]), "follow"),
            (q(&[("name", "f"), ("since", "yesterday")]), "since"),
            (q(&[("name", "f"), ("namespace", "Bad")]), "namespace"),
        ] {
            let e = parse_log_request(&bad, "x").unwrap_err();
            assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
            assert!(
                e.message.starts_with(&format!("{field}: ")),
                "{}",
                e.message
            );
        }
    }
}
