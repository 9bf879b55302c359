//! The invocation path: find a ready replica, forward the request to it, stream both bodies.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http::header::{EXPECT, HOST};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt as _;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tracing::{debug, warn};

use crate::gateway::Shared;
use crate::http_util::{append_forwarded_for, call_id_of, strip_hop_by_hop, text_response};
use crate::metrics::FunctionStats;
use crate::provider::{Endpoint, InFlight, Provider, ProviderError, Upstream};

/// Who sent an invocation: its headers and where it may go depend on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Caller {
    /// A client, from this address: any replica of the cluster may answer.
    Client(Option<IpAddr>),
    /// Another board of the cluster, which proxied a client's request here: only this board's
    /// replicas answer, and the forwarding headers it set are the client's.
    Board,
}

/// The pooled keep-alive client the gateway forwards with (one per gateway).
pub(crate) type HttpClient = Client<HttpConnector, Body>;

pub(crate) fn new_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(10)));
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(32)
        .build(connector)
}

/// Extra time given to the provider on top of `ready_wait` before the gateway stops waiting.
const ENDPOINT_GRACE: Duration = Duration::from_secs(5);

/// `2s`, `1.5s`, `250ms`.
pub(crate) fn human(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.3}s", d.as_secs_f64())
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn header_value(text: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(text).ok()
}

/// `name.namespace`, written where it is needed rather than allocated per request.
#[derive(Clone, Copy)]
pub(crate) struct Qualified<'a>(pub &'a str, pub &'a str);

impl std::fmt::Display for Qualified<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

impl Qualified<'_> {
    /// Calls `f` with the text, built on the stack when it fits (it does for valid names).
    fn with_text<R>(self, f: impl FnOnce(&str) -> R) -> R {
        let Qualified(name, namespace) = self;
        let mut buf = [0u8; 160];
        let len = name.len() + 1 + namespace.len();
        if let Some(out) = buf.get_mut(..len) {
            out[..name.len()].copy_from_slice(name.as_bytes());
            out[name.len()] = b'.';
            out[name.len() + 1..].copy_from_slice(namespace.as_bytes());
            if let Ok(text) = std::str::from_utf8(out) {
                return f(text);
            }
        }
        f(&self.to_string())
    }
}

/// An error answer of the invocation path, with the call id.
fn failure(status: StatusCode, message: String, call_id: HeaderValue) -> Response<Body> {
    let mut response = text_response(status, message);
    response.headers_mut().insert("x-call-id", call_id);
    response
}

/// Where an upstream is, for messages: `10.62.0.5:8080`, `board b1 (10.77.0.2:8443)`.
struct Where<'a>(&'a Upstream);

impl std::fmt::Display for Where<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Upstream::Replica(addr) => write!(f, "{addr}"),
            Upstream::Board(board) => write!(f, "board {} ({})", board.name, board.addr),
        }
    }
}

/// Why a call could not be sent, or got no answer.
#[derive(Debug)]
pub(crate) struct SendFailure {
    /// The answer the client gets (502, 504, 400).
    pub(crate) status: StatusCode,
    /// What went wrong, naming the function and where it was sent.
    pub(crate) message: String,
    /// The connection failed before anything was sent: sending it elsewhere is safe.
    pub(crate) unsent: bool,
    /// The connection broke after the call was sent, before an answer: the function may have
    /// run.
    pub(crate) broken: bool,
}

/// Sends `request` (its URI is set here from `path` and `query`) to `upstream` once, within
/// `timeout`.
pub(crate) async fn send_once<P: Provider>(
    shared: &Shared<P>,
    function: Qualified<'_>,
    upstream: &Upstream,
    path: &str,
    query: Option<&str>,
    mut request: Request<Body>,
    timeout: Duration,
) -> Result<Response<Incoming>, SendFailure> {
    let failure = |status, message| SendFailure {
        status,
        message,
        unsent: false,
        broken: false,
    };
    let uri = match upstream {
        Upstream::Replica(addr) => upstream_uri("http", *addr, "", path, query),
        Upstream::Board(board) => upstream_uri(
            "https",
            board.addr,
            crate::boards::INVOKE_PREFIX,
            &format!("{function}{}", if path.is_empty() { "/" } else { path }),
            query,
        ),
    };
    *request.uri_mut() = uri.map_err(|e| {
        failure(
            StatusCode::BAD_REQUEST,
            format!("invalid request path: {e}"),
        )
    })?;
    let sent = match upstream {
        Upstream::Replica(_) => shared.client.request(request),
        Upstream::Board(board) => match shared.boards.get() {
            Some(client) => client.request(request),
            None => {
                return Err(failure(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "function {function} runs on board {}, and this board cannot reach other boards (no board-to-board TLS set up)",
                        board.name
                    ),
                ));
            }
        },
    };
    match tokio::time::timeout(timeout, sent).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(e)) => {
            let cause = client_error(&e);
            let at = Where(upstream);
            let connect = e.is_connect();
            Err(SendFailure {
                status: StatusCode::BAD_GATEWAY,
                message: if connect {
                    format!("function {function} is unreachable at {at}: {cause}")
                } else {
                    format!("function {function} at {at} failed to answer: {cause}")
                },
                unsent: connect,
                broken: !connect,
            })
        }
        Err(_) => Err(failure(
            StatusCode::GATEWAY_TIMEOUT,
            format!("Function timed out after {}", human(timeout)),
        )),
    }
}

/// The upstream URI for `path` (after `prefix`) and `query`: one string, parsed once.
fn upstream_uri(
    scheme: &str,
    addr: SocketAddr,
    prefix: &str,
    path: &str,
    query: Option<&str>,
) -> Result<Uri, http::Error> {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(
        // "https://" + "255.255.255.255:65535" + "/" + "?"
        32 + prefix.len() + path.len() + query.map_or(0, str::len),
    );
    let _ = write!(text, "{scheme}://{addr}{prefix}");
    if prefix.is_empty() && !path.starts_with('/') {
        text.push('/');
    }
    text.push_str(path);
    if let Some(query) = query {
        text.push('?');
        text.push_str(query);
    }
    Ok(Uri::try_from(text)?)
}

/// Sends `request` (its URI is the path and query the function sees) to function
/// `name.namespace`; see [`crate::Gateway::invoke`].
pub(crate) async fn invoke<P: Provider>(
    shared: &Shared<P>,
    name: &str,
    namespace: &str,
    request: Request<Body>,
) -> Response<Body> {
    // Shares the request's bytes.
    let uri = request.uri().clone();
    let client_ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    forward(
        shared,
        name,
        namespace,
        uri.path(),
        uri.query(),
        Caller::Client(client_ip),
        request,
    )
    .await
}

/// Sends `request` to function `name.namespace` as `path` with `query` (the rest of a
/// `/function/NAME/…` path, taken as it is, without building another URI first); a client's
/// address is appended to `X-Forwarded-For`.
pub(crate) async fn forward<P: Provider>(
    shared: &Shared<P>,
    name: &str,
    namespace: &str,
    path: &str,
    query: Option<&str>,
    caller: Caller,
    request: Request<Body>,
) -> Response<Body> {
    let started = Instant::now();
    let start_time = SystemTime::now();
    let function = Qualified(name, namespace);
    let (mut parts, body) = request.into_parts();
    let call_id = call_id_of(&parts.headers);

    let wait = shared.config.ready_wait;
    let endpoint = async {
        match caller {
            Caller::Client(_) => shared.provider.endpoint(name, namespace, wait).await,
            Caller::Board => shared.provider.endpoint_here(name, namespace, wait).await,
        }
    };
    let endpoint: Endpoint = match tokio::time::timeout(wait + ENDPOINT_GRACE, endpoint).await {
        Ok(Ok(endpoint)) => endpoint,
        // Another board sent the call here because its routes place the function here: this
        // board has not set it up yet (it is starting, or the placement is new). Retryable.
        Ok(Err(ProviderError::NotFound(_))) if matches!(caller, Caller::Board) => {
            debug!(%function, "a board sent a call for a function not set up here yet");
            return failure(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("function {function} is not set up on this board yet"),
                call_id,
            );
        }
        Ok(Err(ProviderError::NotFound(_))) => {
            debug!(%function, "invocation of an unknown function");
            return failure(
                StatusCode::NOT_FOUND,
                format!("function {function} not found"),
                call_id,
            );
        }
        Ok(Err(e)) => {
            let status = e.status();
            warn!(%function, status = status.as_u16(), error = %e, "function not available");
            let stats = function.with_text(|f| shared.metrics.function(f));
            stats.started();
            stats.finished(status.as_u16(), started.elapsed().as_secs_f64());
            return failure(status, e.to_string(), call_id);
        }
        Err(_) => {
            warn!(%function, "provider did not answer within the ready wait");
            let stats = function.with_text(|f| shared.metrics.function(f));
            stats.started();
            stats.finished(504, started.elapsed().as_secs_f64());
            return failure(
                StatusCode::GATEWAY_TIMEOUT,
                format!("function {function} was not ready within {}", human(wait)),
                call_id,
            );
        }
    };
    let stats = function.with_text(|f| shared.metrics.function(f));
    stats.started();
    let Endpoint {
        upstream,
        timeout,
        in_flight,
    } = endpoint;
    let completion = Completion {
        stats,
        code: 0,
        started,
        in_flight,
    };

    let start_header = HeaderValue::from(unix_nanos(start_time));
    match caller {
        Caller::Client(client_ip) => {
            let original_host = parts
                .headers
                .get(HOST)
                .cloned()
                .or_else(|| parts.uri.authority().and_then(|a| header_value(a.as_str())));
            prepare_headers(
                &mut parts.headers,
                original_host,
                client_ip,
                call_id.clone(),
                start_header.clone(),
            );
        }
        // The board that sent it set the client's forwarding headers and the call's start.
        Caller::Board => {
            let start = parts.headers.get("x-start-time").cloned();
            prepare_headers(
                &mut parts.headers,
                None,
                None,
                call_id.clone(),
                start.unwrap_or_else(|| start_header.clone()),
            );
        }
    }
    let sent = match upstream {
        Upstream::Replica(_) => {
            let request = Request::from_parts(parts, body);
            send_once(shared, function, &upstream, path, query, request, timeout)
                .await
                .map(|response| (response, None))
        }
        Upstream::Board(board) => {
            let call = crate::boards::Call {
                function,
                path,
                query,
                wait,
            };
            crate::boards::send(shared, &call, board, timeout, parts, body).await
        }
    };
    let (response, completion) = match sent {
        Ok((response, None)) => (response, completion),
        // Sent again, to a replica of this board: held like one.
        Ok((response, Some(in_flight))) => (
            response,
            Completion {
                in_flight: Some(in_flight),
                ..completion
            },
        ),
        Err(failure) => {
            warn!(%function, error = %failure.message, "function not reached");
            return completion.fail(failure.status, failure.message, call_id);
        }
    };

    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.insert("x-call-id", call_id);
    if !parts.headers.contains_key("x-duration-seconds")
        && let Ok(v) = HeaderValue::try_from(format!("{:.6}", started.elapsed().as_secs_f64()))
    {
        parts.headers.insert("x-duration-seconds", v);
    }
    if !parts.headers.contains_key("x-start-time") {
        parts.headers.insert("x-start-time", start_header);
    }
    let completion = Completion {
        code: parts.status.as_u16(),
        ..completion
    };
    Response::from_parts(
        parts,
        Body::new(Tracked {
            inner: body,
            done: Some(completion),
        }),
    )
}

/// The forwarded request's headers: the client's, less hop-by-hop ones, plus the proxy's.
fn prepare_headers(
    headers: &mut HeaderMap,
    original_host: Option<HeaderValue>,
    client_ip: Option<std::net::IpAddr>,
    call_id: HeaderValue,
    start_time: HeaderValue,
) {
    strip_hop_by_hop(headers);
    // The client sets `Host` to the replica; the function sees the original in X-Forwarded-Host.
    headers.remove(HOST);
    // hyper's client does not do `Expect: 100-continue`; the gateway already answered it.
    headers.remove(EXPECT);
    if let Some(host) = original_host {
        headers.insert("x-forwarded-host", host);
    }
    if let Some(ip) = client_ip {
        append_forwarded_for(headers, ip);
    }
    headers.insert("x-call-id", call_id);
    headers.insert("x-start-time", start_time);
}

/// Finishes an invocation once: records its metrics and releases the in-flight guard.
struct Completion {
    stats: Arc<FunctionStats>,
    code: u16,
    started: Instant,
    in_flight: Option<InFlight>,
}

impl Completion {
    fn record(&mut self) {
        self.stats
            .finished(self.code, self.started.elapsed().as_secs_f64());
        self.in_flight = None;
    }

    fn fail(mut self, status: StatusCode, message: String, call_id: HeaderValue) -> Response<Body> {
        self.code = status.as_u16();
        self.record();
        failure(status, message, call_id)
    }
}

/// The function's response body, passed through frame by frame; the invocation is finished
/// (metrics, in-flight guard) when the last frame is handed on, or when the body is dropped.
struct Tracked {
    inner: Incoming,
    done: Option<Completion>,
}

impl Tracked {
    fn finish(&mut self) {
        if let Some(mut completion) = self.done.take() {
            completion.record();
        }
    }
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_frame(cx);
        match &poll {
            Poll::Ready(None | Some(Err(_))) => this.finish(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.finish(),
            _ => {}
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.finish();
    }
}

/// What went wrong with a client request, most specific last: hyper-util's top-level error
/// ("client error (Connect)") is left out when it has causes.
pub(crate) fn client_error(e: &dyn std::error::Error) -> String {
    bramble_base::error_chain(std::error::Error::source(e).unwrap_or(e))
}

/// Collects at most `limit` bytes of a body; `None` when it is longer or fails.
pub(crate) async fn collect_limited(body: Body, limit: usize) -> Option<Bytes> {
    http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .ok()
        .map(http_body_util::Collected::to_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(human(Duration::from_secs(2)), "2s");
        assert_eq!(human(Duration::from_millis(250)), "250ms");
        assert_eq!(human(Duration::from_millis(1500)), "1.500s");
    }

    #[test]
    fn forwarded_headers() {
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_static("pi.local:8080"));
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert("connection", HeaderValue::from_static("close"));
        h.insert(EXPECT, HeaderValue::from_static("100-continue"));
        let host = h.get(HOST).cloned();
        prepare_headers(
            &mut h,
            host,
            Some("127.0.0.2".parse().unwrap()),
            HeaderValue::from_static("id-1"),
            HeaderValue::from(unix_nanos(UNIX_EPOCH + Duration::from_secs(1))),
        );
        assert_eq!(h.get("x-forwarded-for").unwrap(), "10.0.0.1, 127.0.0.2");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "pi.local:8080");
        assert_eq!(h.get("x-call-id").unwrap(), "id-1");
        assert_eq!(h.get("x-start-time").unwrap(), "1000000000");
        assert!(h.get(HOST).is_none() && h.get("connection").is_none() && h.get(EXPECT).is_none());
    }
}
