//! Board-to-board traffic of a cluster: a second listener, TLS under the cluster's CA.
//!
//! [`crate::Gateway::serve_boards`] serves the routes a cluster adds (the join handshake) and
//! the gateway's own internal invocation path on a listener of their own, with TLS: the board's
//! certificate as server certificate, and a client certificate the cluster CA signed asked of
//! every peer. A peer without one (a board that is joining and has no certificate yet) may
//! connect; the routes that only boards may use check [`BoardPeer::authenticated`].
//!
//! The internal invocation path, `/cluster/function/NAME.NS/…`, is where a board sends a
//! request for a function that runs elsewhere ([`crate::provider::Upstream::Board`]): the board
//! that receives it answers from its own replicas ([`crate::provider::Provider::endpoint_here`])
//! and never sends it on, so a request takes one extra hop at most. The sending board proxies
//! with [`BoardClient`]: hyper's pooled keep-alive client over TLS, showing its own board
//! certificate ([`crate::Gateway::set_board_tls`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

use crate::gateway::{Gateway, Shared, Shortcut, serve_connections};
use crate::http_util::ApiError;
use crate::provider::{BoardAddr, InFlight, Provider, Upstream};
use crate::proxy::{Caller, Qualified, SendFailure, send_once};

/// The path prefix of the internal invocation path on the board listener.
pub(crate) const INVOKE_PREFIX: &str = "/cluster/function/";

/// The client a board proxies to other boards with.
pub(crate) type BoardClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, axum::body::Body>;

fn board_client(mut tls: rustls::ClientConfig) -> BoardClient {
    // hyper-rustls offers the protocols it speaks itself (and refuses a configuration that
    // names some already).
    tls.alpn_protocols.clear();
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(3)));
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(32)
        .build(connector)
}

/// How long a peer has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What every request of the board listener carries as an extension: whether the peer showed a
/// certificate the cluster CA signed (rustls checked it during the handshake).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BoardPeer {
    /// True when the peer is a board of the cluster.
    pub authenticated: bool,
}

impl BoardPeer {
    /// A route layer for the routes of the board listener that only boards may use: a
    /// request from a peer that is no board of the cluster is refused with 403
    /// (`router.route_layer(axum::middleware::from_fn(BoardPeer::only_boards))`).
    pub async fn only_boards(request: Request, next: axum::middleware::Next) -> Response {
        let authenticated = request
            .extensions()
            .get::<BoardPeer>()
            .is_some_and(|peer| peer.authenticated);
        if authenticated {
            return next.run(request).await;
        }
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string())
            .unwrap_or_default();
        tracing::info!(%peer, path = %request.uri().path(), "a request from a peer that is no board of the cluster refused");
        ApiError::new(
            StatusCode::FORBIDDEN,
            "only boards of the cluster may use this path (no client certificate the cluster's CA signed)",
        )
        .into_response()
    }
}

impl<P: Provider> Gateway<P> {
    /// Lets this gateway send invocations to other boards ([`crate::provider::Upstream::Board`])
    /// with `tls`: trusting the cluster's CA and showing this board's certificate. Only the
    /// first call counts; until then such an invocation answers 502.
    pub fn set_board_tls(&self, tls: rustls::ClientConfig) {
        if self.shared.boards.set(board_client(tls)).is_err() {
            tracing::warn!("the board-to-board client was set already; keeping the first");
        }
    }

    /// Serves `routes` and the internal invocation path on `listener` with TLS
    /// (`tls` must verify client certificates against the cluster CA, and may allow peers
    /// without one) until `shutdown` resolves; drains like [`Gateway::serve`].
    pub async fn serve_boards(
        self: &Arc<Self>,
        listener: TcpListener,
        tls: Arc<rustls::ServerConfig>,
        routes: axum::Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let acceptor = TlsAcceptor::from(tls);
        let invoke = axum::Router::new()
            .route(
                &format!("{INVOKE_PREFIX}{{*function}}"),
                axum::routing::any(invoke_here::<P>),
            )
            .route_layer(axum::middleware::from_fn(BoardPeer::only_boards))
            .with_state(Arc::clone(&self.shared));
        let router = routes
            .merge(invoke)
            .layer(axum::middleware::from_fn(crate::api::log_request));
        serve_connections(
            &self.shared,
            listener,
            router,
            Shortcut::None,
            shutdown,
            move |stream| {
                let accept = acceptor.accept(stream);
                async move {
                    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, accept)
                        .await
                        .map_err(|_| std::io::Error::other("TLS handshake timed out"))??;
                    let authenticated = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .is_some_and(|certs| !certs.is_empty());
                    Ok((stream, BoardPeer { authenticated }))
                }
            },
        )
        .await;
        Ok(())
    }
}

/// A call on its way to another board: what [`send`] needs to send it again elsewhere.
pub(crate) struct Call<'a> {
    pub(crate) function: Qualified<'a>,
    /// The path and query the function sees.
    pub(crate) path: &'a str,
    pub(crate) query: Option<&'a str>,
    /// How long the provider may take to find where it goes next.
    pub(crate) wait: Duration,
}

/// Bodies up to this size are kept while a call goes to another board, so that it can be sent
/// again elsewhere when that board does not answer; longer ones stream, sent once.
const KEPT_BODY: u64 = 64 * 1024;

/// How many times a call is sent again after a board failed it at the connection.
const RESENDS: usize = 2;

/// Sends a call (its headers prepared) to `board`. When the board cannot be reached (the
/// connection refused: nothing was sent), or, for an idempotent method, the connection breaks
/// before its answer (the board died with the call), the provider hears that the board is
/// unreachable ([`Provider::unreachable`]) and the call goes where the provider says now —
/// another board, or a replica of this one — as long as its body was short enough to keep.
/// Answers the response and, when it ended on a replica of this board, its in-flight guard.
pub(crate) async fn send<P: Provider>(
    shared: &Shared<P>,
    call: &Call<'_>,
    board: BoardAddr,
    timeout: Duration,
    parts: http::request::Parts,
    body: Body,
) -> Result<(http::Response<Incoming>, Option<InFlight>), SendFailure> {
    let Call {
        function,
        path,
        query,
        wait,
    } = *call;
    let kept = match hyper::body::Body::size_hint(&body).exact() {
        Some(len) if len <= KEPT_BODY => {
            let limit = usize::try_from(KEPT_BODY).unwrap_or(usize::MAX);
            let Some(bytes) = crate::proxy::collect_limited(body, limit).await else {
                return Err(SendFailure {
                    status: StatusCode::BAD_REQUEST,
                    message: "the request body ended before its Content-Length".into(),
                    unsent: true,
                    broken: false,
                });
            };
            bytes
        }
        _ => {
            // Too long to keep: sent once.
            let request = Request::from_parts(parts, body);
            let upstream = Upstream::Board(board);
            let sent = send_once(shared, function, &upstream, path, query, request, timeout).await;
            if let (Err(failure), Upstream::Board(board)) = (&sent, &upstream)
                && (failure.unsent || failure.broken)
            {
                shared.provider.unreachable(board);
            }
            return sent.map(|response| (response, None));
        }
    };
    let idempotent = parts.method.is_idempotent();
    let mut upstream = Upstream::Board(board);
    let mut timeout = timeout;
    let mut in_flight = None;
    let mut resends = 0;
    loop {
        let mut request = Request::new(Body::from(kept.clone()));
        *request.method_mut() = parts.method.clone();
        *request.version_mut() = parts.version;
        *request.headers_mut() = parts.headers.clone();
        let failure =
            match send_once(shared, function, &upstream, path, query, request, timeout).await {
                Ok(response) => return Ok((response, in_flight)),
                Err(failure) => failure,
            };
        let dropped = failure.unsent || failure.broken;
        if let Upstream::Board(board) = &upstream
            && dropped
        {
            shared.provider.unreachable(board);
        }
        let again = failure.unsent || (failure.broken && idempotent);
        if !again || resends == RESENDS {
            return Err(failure);
        }
        let Qualified(name, namespace) = function;
        let next = match shared.provider.endpoint(name, namespace, wait).await {
            Ok(next) if next.upstream != upstream => next,
            _ => return Err(failure),
        };
        tracing::info!(
            %function,
            failed = %failure.message,
            to = ?next.upstream,
            "a board failed a call; sending it again elsewhere"
        );
        upstream = next.upstream;
        timeout = next.timeout;
        in_flight = next.in_flight;
        resends += 1;
    }
}

/// `/cluster/function/NAME.NS/…` on the board listener: an invocation another board sent here,
/// answered from this board's replicas only. Boards only: 403 for a peer without a certificate
/// the cluster's CA signed.
async fn invoke_here<P: Provider>(
    State(shared): State<Arc<Shared<P>>>,
    request: Request,
) -> Response {
    let uri = request.uri().clone();
    // The sending board named the namespace; a bare name is refused rather than guessed.
    let Some(target) = uri.path().strip_prefix(INVOKE_PREFIX) else {
        return ApiError::not_found("no such path").into_response();
    };
    if !target.split('/').next().is_some_and(|t| t.contains('.')) {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "the internal invocation path needs NAME.NAMESPACE",
        )
        .into_response();
    }
    match crate::api::invoke::split_function_path(uri.path(), INVOKE_PREFIX, "") {
        Ok((name, namespace, rest)) => {
            crate::proxy::forward(
                &shared,
                name,
                namespace,
                rest,
                uri.query(),
                Caller::Board,
                request,
            )
            .await
        }
        Err(e) => e.into_response(),
    }
}
