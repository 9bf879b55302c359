//! `/function/NAME[.NS]/…` and `/async-function/…`: invocations, proxied or queued.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use http::{StatusCode, Uri};
use tracing::{debug, warn};

use crate::gateway::Shared;
use crate::http_util::{ApiError, append_forwarded_for, call_id_of, empty, read_body};
use crate::provider::Provider;
use crate::queue::{CallRecord, validate_callback_url};
use crate::validate;

use super::{ApiResult, Gw};

/// Splits `/PREFIX/NAME[.NS][/rest]` into name, namespace and the path the function sees.
pub(crate) fn split_function_path<'a>(
    path: &'a str,
    prefix: &str,
    default_namespace: &'a str,
) -> Result<(&'a str, &'a str, &'a str), ApiError> {
    let rest = path.strip_prefix(prefix).unwrap_or(path);
    let (target, function_path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (name, namespace) = match target.rsplit_once('.') {
        Some((name, ns)) => (name, ns),
        None => (target, default_namespace),
    };
    validate::function_name(name).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    validate::namespace_name(namespace).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    Ok((name, namespace, function_path))
}

/// The function's view of a request URI: `rest` plus the original query.
pub(super) fn function_uri(rest: &str, original: &Uri) -> Result<Uri, ApiError> {
    let pq = match original.query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_owned(),
    };
    // As a path (never an authority, whatever it starts with).
    let pq: http::uri::PathAndQuery = pq
        .parse()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid path: {e}")))?;
    Ok(Uri::from(pq))
}

pub(super) async fn function<P: Provider>(State(shared): Gw<P>, request: Request) -> Response {
    let client_ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    invoke_path(&shared, client_ip, request).await
}

/// `/function/NAME[.NS]/rest`: the route's handler, and the server's shortcut to it (see
/// [`crate::Gateway::serve`]).
pub(crate) async fn invoke_path<P: Provider>(
    shared: &Shared<P>,
    client_ip: Option<IpAddr>,
    mut request: Request,
) -> Response {
    crate::ui::session::strip_dashboard_credentials(request.headers_mut());
    // Shares the request's bytes: the parts of the path are borrowed from it, not copied.
    let uri = request.uri().clone();
    match split_function_path(uri.path(), "/function/", &shared.config.default_namespace) {
        Ok((name, namespace, rest)) => {
            crate::proxy::forward(
                shared,
                name,
                namespace,
                rest,
                uri.query(),
                crate::proxy::Caller::Client(client_ip),
                request,
            )
            .await
        }
        Err(e) => e.into_response(),
    }
}

pub(super) async fn async_function<P: Provider>(
    State(shared): Gw<P>,
    request: Request,
) -> ApiResult {
    let original = request.uri().clone();
    let (name, namespace, rest) = split_function_path(
        original.path(),
        "/async-function/",
        &shared.config.default_namespace,
    )?;
    let uri = function_uri(rest, &original)?;
    let (parts, body) = request.into_parts();
    let callback_url = match parts.headers.get("x-callback-url") {
        Some(value) => {
            Some(validate_callback_url(value).map_err(|e| ApiError::field("X-Callback-Url", e))?)
        }
        None => None,
    };
    let body = read_body(&parts.headers, body, shared.config.max_async_body).await?;
    // A clear 404 now rather than a callback saying 404 later; when the provider cannot tell
    // (it is down), the call is queued and retried.
    if let Ok(None) = shared.provider.get_function(name, namespace, false).await {
        return Err(ApiError::not_found(format!(
            "function {name}.{namespace} not found"
        )));
    }
    let call_id_value = call_id_of(&parts.headers);
    // Visible ASCII: call_id_of keeps no other.
    let call_id = call_id_value.to_str().unwrap_or_default().to_owned();
    let mut headers = parts.headers;
    // Never stored with the call, never sent to the function.
    crate::ui::session::strip_dashboard_credentials(&mut headers);
    headers.insert("x-call-id", call_id_value.clone());
    if let Some(peer) = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
    {
        append_forwarded_for(&mut headers, peer.0.ip());
    }
    let record = CallRecord::new(
        call_id.clone(),
        name,
        namespace,
        &parts.method,
        uri.to_string(),
        &headers,
        callback_url,
    );
    crate::queue::accept(&shared, &record, body)
        .await
        .map_err(|e| {
            warn!(error = %e, "cannot queue an async call");
            if matches!(
                e.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            ) {
                // Refused, not accepted and lost: the caller can retry once there is space.
                ApiError::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    format!("cannot queue the call, the disk is full: {e}"),
                )
            } else {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot queue the call: {e}"),
                )
            }
        })?;
    debug!(call_id = %call_id, function = %format!("{name}.{namespace}"), "async call queued");
    let mut response = empty(StatusCode::ACCEPTED);
    response.headers_mut().insert("x-call-id", call_id_value);
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_paths_split_on_the_last_dot() {
        fn split(p: &str) -> Result<(&str, &str, &str), ApiError> {
            split_function_path(p, "/function/", "openfaas-fn")
        }
        assert_eq!(
            split("/function/hello").unwrap(),
            ("hello", "openfaas-fn", "/")
        );
        assert_eq!(
            split("/function/hello/").unwrap(),
            ("hello", "openfaas-fn", "/")
        );
        assert_eq!(
            split("/function/hello.dev/a/b.c").unwrap(),
            ("hello", "dev", "/a/b.c")
        );
        assert!(
            split("/function/a.b.c")
                .unwrap_err()
                .message
                .contains("function name \"a.b\"")
        );
        assert!(split("/function/hello.").is_err());
        assert!(split("/function/Hello").is_err());
        let uri: Uri = "/function/hello/x?y=1&z".parse().unwrap();
        assert_eq!(function_uri("/x", &uri).unwrap(), "/x?y=1&z");
        assert_eq!(function_uri("//x", &uri).unwrap().path(), "//x");
    }
}
