//! The [`Gateway`]: shared state, the server loop with graceful shutdown, the invocation entry.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tower::ServiceExt as _;
use tracing::{debug, info, warn};

use crate::config::GatewayConfig;
use crate::metrics::Metrics;
use crate::provider::Provider;
use crate::proxy::{HttpClient, new_client};
use crate::queue::{CallShare, Queue};
use crate::ui::NodeFeed;

/// Why a gateway could not be created.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The configuration cannot work (empty credentials, empty default namespace...).
    #[error("invalid gateway configuration: {0}")]
    Config(String),
    /// The async queue directory cannot be opened or read.
    #[error("cannot open the async queue in {path}")]
    Queue {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What request handlers, the proxy and the async workers share.
pub(crate) struct Shared<P: Provider> {
    pub(crate) provider: Arc<P>,
    pub(crate) config: GatewayConfig,
    pub(crate) client: HttpClient,
    /// The client callbacks are POSTed with (`http://` and `https://`).
    pub(crate) callbacks: reqwest::Client,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) queue: Queue,
    /// `uname -m`, for `/system/info`.
    pub(crate) arch: String,
    /// Becomes `true` when [`Gateway::serve`] starts shutting down: endless responses the
    /// gateway itself produces (followed logs, dashboard streams) end then, so draining does
    /// not wait for them.
    pub(crate) draining: watch::Sender<bool>,
    /// The host name, for the dashboard.
    pub(crate) hostname: String,
    /// The dashboard's logged-in browsers.
    pub(crate) sessions: crate::ui::session::Sessions,
    /// What the node shows on the dashboard beyond the provider (see [`Gateway::set_node_feed`]).
    pub(crate) feed: OnceLock<Arc<dyn NodeFeed>>,
    /// The client invocations for functions on other boards go with (cluster mode, see
    /// [`Gateway::set_board_tls`]).
    pub(crate) boards: OnceLock<crate::boards::BoardClient>,
    /// The cluster's work queue, in a cluster.
    pub(crate) share: OnceLock<Arc<dyn CallShare>>,
    /// Async calls executing at once (`async_workers`): those accepted here and those the
    /// cluster's queue delivered.
    pub(crate) async_slots: tokio::sync::Semaphore,
}

impl<P: Provider> Shared<P> {
    /// Resolves once the server starts shutting down.
    pub(crate) fn shutting_down(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.draining.subscribe();
        async move {
            let _ = rx.wait_for(|draining| *draining).await;
        }
    }
}

/// bramble's HTTP face: the OpenFaaS REST API, `/function` and `/async-function`, `/healthz`,
/// `/metrics`, in front of a [`Provider`].
///
/// Dropping the last `Arc<Gateway>` stops its async workers; calls they had not finished stay
/// on disk and are resumed by the next gateway on the same queue directory.
pub struct Gateway<P: Provider> {
    pub(crate) shared: Arc<Shared<P>>,
    jobs: Mutex<Option<mpsc::UnboundedReceiver<String>>>,
    /// Dropped with the gateway, which tells the workers to stop.
    stop: watch::Sender<()>,
    /// Administration routes the node adds, served behind the API's credentials.
    admin: Mutex<Vec<axum::Router>>,
    /// Routes the node adds that need no credentials (a cluster's public hello).
    public: Mutex<Vec<axum::Router>>,
}

impl<P: Provider> std::fmt::Debug for Gateway<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

fn machine_arch() -> String {
    nix::sys::utsname::uname()
        .ok()
        .and_then(|u| u.machine().to_str().map(str::to_owned))
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned())
}

fn host_name() -> String {
    nix::sys::utsname::uname()
        .ok()
        .and_then(|u| u.nodename().to_str().map(str::to_owned))
        .unwrap_or_default()
}

impl<P: Provider> Gateway<P> {
    /// A gateway for `provider`; opens the async queue directory and queues every call a
    /// previous gateway left pending (they run once [`Gateway::start_workers`] is called).
    pub fn new(provider: Arc<P>, config: GatewayConfig) -> Result<Arc<Self>, GatewayError> {
        if config.credentials.user.is_empty() || config.credentials.password.is_empty() {
            return Err(GatewayError::Config(
                "credentials: user and password must not be empty".to_owned(),
            ));
        }
        crate::validate::namespace_name(&config.default_namespace)
            .map_err(|e| GatewayError::Config(format!("default_namespace: {e}")))?;
        if config.max_api_body == 0 || config.max_async_body == 0 {
            return Err(GatewayError::Config(
                "max_api_body and max_async_body must be more than 0".to_owned(),
            ));
        }
        let callbacks = crate::queue::callback_client(config.callback_ca_file.as_deref())
            .map_err(GatewayError::Config)?;
        let (queue, jobs) =
            Queue::open(&config.queue_dir).map_err(|source| GatewayError::Queue {
                path: config.queue_dir.clone(),
                source,
            })?;
        let (stop, _) = watch::channel(());
        let shared = Arc::new(Shared {
            provider,
            client: new_client(),
            callbacks,
            metrics: Arc::new(Metrics::default()),
            queue,
            arch: machine_arch(),
            draining: watch::Sender::new(false),
            hostname: host_name(),
            sessions: crate::ui::session::Sessions::default(),
            feed: OnceLock::new(),
            boards: OnceLock::new(),
            share: OnceLock::new(),
            async_slots: tokio::sync::Semaphore::new(config.async_workers.max(1)),
            config,
        });
        Ok(Arc::new(Self {
            shared,
            jobs: Mutex::new(Some(jobs)),
            stop,
            admin: Mutex::new(Vec::new()),
            public: Mutex::new(Vec::new()),
        }))
    }

    /// The configuration in use.
    pub fn config(&self) -> &GatewayConfig {
        &self.shared.config
    }

    /// Every route: `/system/*` (Basic auth or a dashboard session), `/function/*`,
    /// `/async-function/*`, `/healthz`, `/metrics`, `/`, the dashboard under `/ui/`.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        let admin = self.admin.lock().map(|a| a.clone()).unwrap_or_default();
        let public = self.public.lock().map(|a| a.clone()).unwrap_or_default();
        crate::api::router(&self.shared, &admin, &public)
    }

    /// Adds routes (under `/system/...`, by convention) that need the API's credentials, for
    /// what the node administers beyond the OpenFaaS API. Call before [`Gateway::serve`].
    pub fn add_admin_routes(&self, routes: axum::Router) {
        if let Ok(mut admin) = self.admin.lock() {
            admin.push(routes);
        }
    }

    /// Adds routes that need no credentials (outside `/system`, by convention), e.g. what a
    /// board that wants to join a cluster asks first. Call before [`Gateway::serve`].
    pub fn add_public_routes(&self, routes: axum::Router) {
        if let Ok(mut public) = self.public.lock() {
            public.push(routes);
        }
    }

    /// Plugs in what the node shows on the dashboard beyond the provider: its hardware and
    /// its triggers' deliveries (see [`NodeFeed`]). Only the first call counts.
    pub fn set_node_feed(&self, feed: Arc<dyn NodeFeed>) {
        if self.shared.feed.set(feed).is_err() {
            warn!("a node feed was already set; the dashboard keeps the first");
        }
    }

    /// In a cluster: accepted async calls are handed to `share` (the cluster's work queue)
    /// and run by whichever board takes them ([`Gateway::run_shared_call`]); this board keeps
    /// each record until [`Gateway::forget_call`]. Set it before [`Gateway::start_workers`]:
    /// calls pending from before are then handed over too. Only the first call counts.
    pub fn set_call_share(&self, share: Arc<dyn CallShare>) {
        if self.shared.share.set(share).is_err() {
            warn!("a call share was already set; the gateway keeps the first");
        }
    }

    /// Runs an async call the cluster's queue delivered (a [`SharedCall`]'s record) to the
    /// end: invocation with retries, callback. `Err` when the record is not one.
    ///
    /// [`SharedCall`]: crate::queue::SharedCall
    pub async fn run_shared_call(&self, record: bytes::Bytes) -> Result<(), String> {
        crate::queue::run_shared(&self.shared, record).await
    }

    /// How many async calls this board accepted are not done yet (in a cluster: not run by
    /// any board yet); their records are on this board's disk.
    pub async fn kept_calls(&self) -> std::io::Result<usize> {
        crate::queue::kept(&self.shared).await
    }

    /// A call this board accepted was run by a board of the cluster: its record here goes.
    pub async fn forget_call(&self, file: &str) {
        crate::queue::forget(&self.shared, file).await;
    }

    /// Starts the async queue's workers (pending calls from before included) on the current
    /// Tokio runtime. Only the first call starts them; later calls do nothing.
    pub fn start_workers(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            warn!("start_workers called outside a Tokio runtime; async calls stay queued");
            return;
        };
        let jobs = self
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(jobs) = jobs else {
            debug!("async workers already started");
            return;
        };
        runtime.spawn(crate::queue::run_workers(
            Arc::clone(&self.shared),
            jobs,
            self.stop.subscribe(),
        ));
    }

    /// Serves [`Gateway::router`] on `listener` (HTTP/1.1) until `shutdown` resolves; then stops
    /// accepting, lets requests in flight finish for at most `drain_timeout` and closes the
    /// connections that are left. Followed log streams end when shutdown starts. The async
    /// workers are not stopped: they run until the gateway is dropped.
    pub async fn serve(
        self: &Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let router = self.router();
        serve_connections(
            &self.shared,
            listener,
            router,
            Shortcut::Invocations,
            shutdown,
            |stream| async move { Ok::<_, std::io::Error>((stream, ())) },
        )
        .await;
        Ok(())
    }

    /// Invokes function `name` in `namespace` with `request`, whose URI is the path and query
    /// the function sees (`/`, `/a/b?x=1`). The path of `/function`, of the async workers and
    /// of the agent's triggers: scale from zero (waiting at most `ready_wait`), the function's
    /// timeout, metrics. Answers the function's response, streamed, or an error response:
    /// 404 unknown function, 502 unreachable, 503/504 not ready, 504 timed out.
    ///
    /// A `ConnectInfo<SocketAddr>` extension, when present, is appended to `X-Forwarded-For`.
    pub async fn invoke(
        &self,
        name: &str,
        namespace: &str,
        request: http::Request<Body>,
    ) -> http::Response<Body> {
        crate::proxy::invoke(&self.shared, name, namespace, request).await
    }
}

/// Whether a listener answers `/function/NAME/...` without the router (see [`serve_connections`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shortcut {
    /// The public listener: invocations skip the router.
    Invocations,
    /// Every request goes through the router (the board listener: its routes check the peer).
    None,
}

/// Serves `router` on the connections of `listener` until `shutdown` resolves, then drains (see
/// [`Gateway::serve`]). `handshake` turns each accepted TCP stream into the stream HTTP is
/// spoken on (TLS for board-to-board traffic) and a value every request of that connection
/// carries as an extension; a failed handshake closes the connection. Shutdown also tells the
/// gateway's own endless responses to end.
pub(crate) async fn serve_connections<P, H, Fut, S, E>(
    shared: &Arc<Shared<P>>,
    listener: TcpListener,
    router: axum::Router,
    shortcut: Shortcut,
    shutdown: impl Future<Output = ()> + Send + 'static,
    handshake: H,
) where
    P: Provider,
    H: Fn(tokio::net::TcpStream) -> Fut,
    Fut: Future<Output = std::io::Result<(S, E)>> + Send + 'static,
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    E: Clone + Send + Sync + 'static,
{
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.config.header_read_timeout);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors or a connection reset before accept: keep going,
                    // without spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let shared = Arc::clone(shared);
        let handshake = handshake(stream);
        let watcher = graceful.watcher();
        let builder = builder.clone();
        connections.spawn(async move {
            let (stream, extension) = match handshake.await {
                Ok(done) => done,
                Err(e) => {
                    debug!(%peer, error = %e, "connection handshake failed");
                    return;
                }
            };
            let service =
                hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
                    // Invocations are the hot path: on the public listener they go straight to
                    // their handler, without the router's matching and the per-request log
                    // line's middleware (taken as before when debug logging is on, so that line
                    // is still written).
                    let take_shortcut = shortcut == Shortcut::Invocations && {
                        let path = request.uri().path();
                        path.len() > "/function/".len()
                            && path.starts_with("/function/")
                            && !crate::api::request_lines_enabled()
                    };
                    if !take_shortcut {
                        request
                            .extensions_mut()
                            .insert(ConnectInfo::<SocketAddr>(peer));
                        request.extensions_mut().insert(extension.clone());
                    }
                    let router = router.clone();
                    let shared = Arc::clone(&shared);
                    async move {
                        if take_shortcut {
                            return Ok::<_, Infallible>(
                                crate::api::invoke::invoke_path(
                                    &shared,
                                    Some(peer.ip()),
                                    request.map(Body::new),
                                )
                                .await,
                            );
                        }
                        let response = router.oneshot(request.map(Body::new)).await;
                        Ok::<_, Infallible>(match response {
                            Ok(response) => response,
                            Err(never) => match never {},
                        })
                    }
                });
            let connection = watcher.watch(builder.serve_connection(TokioIo::new(stream), service));
            if let Err(e) = connection.await {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    shared.draining.send_replace(true);
    let open = connections.len();
    info!(open, "gateway shutting down; draining requests in flight");
    let drain = shared.config.drain_timeout;
    let drained = tokio::time::timeout(drain, async {
        graceful.shutdown().await;
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(open = connections.len(), timeout = %crate::proxy::human(drain), "requests still in flight after the drain timeout; closing them");
        connections.shutdown().await;
    }
}
