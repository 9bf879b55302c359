//! Test support: an in-memory provider whose functions are served by the real fixture function
//! (a child process), a gateway serving on loopback, an HTTP client and a callback receiver.

#![allow(dead_code, unreachable_pub)] // a helper module; each test binary uses a different part

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use base64::Engine as _;
use bramble_gateway::provider::{
    BoardAddr, Endpoint, LogStream, Provider, ProviderError, ProviderResult, Upstream, UsageSample,
};
use bramble_gateway::types::{
    FunctionDeployment, FunctionNamespace, FunctionStatus, ImageSummary, LogMessage, LogRequest,
    ProviderInfo, Secret, VersionInfo,
};
use bramble_gateway::{Credentials, Gateway, GatewayConfig};
use bytes::Bytes;
use futures::StreamExt as _;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt as _;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::{Notify, broadcast, mpsc, oneshot};

pub const USER: &str = "admin";
pub const PASSWORD: &str = "s3cret-pw";

// -------------------------------------------------------------------------------------------
// The fixture function, as a plain child process
// -------------------------------------------------------------------------------------------

/// A running `fixture-fn` on a free loopback port; killed on drop.
pub struct Fixture {
    pub addr: SocketAddr,
    child: tokio::process::Child,
}

impl Fixture {
    pub async fn start() -> Fixture {
        Self::start_with(&[]).await
    }

    pub async fn start_with(env: &[(&str, &str)]) -> Fixture {
        let binary = bramble_testkit::fixture_binary().expect("fixture binary");
        let mut command = tokio::process::Command::new(binary);
        command
            .env("PORT", "0")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("start fixture-fn");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        // The readiness signal: `fixture-fn listening on :PORT`.
        let port: u16 = loop {
            let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
                .await
                .expect("fixture-fn did not start within 20 s")
                .expect("read fixture stdout")
                .expect("fixture-fn exited before listening");
            if let Some(port) = line.strip_prefix("fixture-fn listening on :") {
                break port.trim().parse().expect("port");
            }
        };
        // Keep draining stdout so the function never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Fixture {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
        }
    }

    /// A counter of the fixture's `/stats` answer (`connections`, `in_flight`,
    /// `max_in_flight`), asked directly (this opens one connection of its own).
    pub async fn stat(&self, key: &str) -> u64 {
        let r = send_with(
            &client(),
            &format!("http://{}/stats", self.addr),
            "GET",
            &[("connection", "close")],
            Body::empty(),
        )
        .await;
        fixture_stat(&r.text(), key)
    }

    /// Kills the function and waits until it is gone.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("kill fixture-fn");
    }
}

/// The counter `key` in a fixture `/stats` answer (`connections=C in_flight=I ...`).
pub fn fixture_stat(stats: &str, key: &str) -> u64 {
    stats
        .split_whitespace()
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in the fixture's stats: {stats:?}"))
}

// -------------------------------------------------------------------------------------------
// The in-memory provider
// -------------------------------------------------------------------------------------------

#[derive(Default)]
pub struct State {
    pub functions: BTreeMap<(String, String), FunctionDeployment>,
    pub replicas: BTreeMap<(String, String), u64>,
    pub namespaces: BTreeMap<String, FunctionNamespace>,
    pub secrets: BTreeMap<(String, String), Secret>,
    /// Imported images: name → (archive bytes).
    pub images: BTreeMap<String, Vec<u8>>,
}

/// Decrements on drop: counts requests the gateway holds as in flight.
struct InFlightGuard(Arc<AtomicUsize>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct MemProvider {
    pub state: Mutex<State>,
    /// Every call that changes state or looks something up, as `method name ns`.
    pub calls: Mutex<Vec<String>>,
    /// Where the functions are served; `None` = not ready (503).
    pub upstream: Mutex<Option<SocketAddr>>,
    /// When set, `endpoint` sends calls to this board instead (`endpoint_here` never does).
    pub board: Mutex<Option<BoardAddr>>,
    pub timeout: Mutex<Duration>,
    /// `endpoint` fails with Unavailable this many more times.
    pub unavailable: AtomicUsize,
    /// `endpoint` fails with this error (sticky) when set.
    pub endpoint_error: Mutex<Option<ProviderError>>,
    /// `endpoint` never answers.
    pub block: AtomicBool,
    pub endpoint_calls: AtomicUsize,
    pub endpoint_called: Notify,
    pub in_flight: Arc<AtomicUsize>,
    pub health: Mutex<Result<(), String>>,
    pub usage: Mutex<HashMap<(String, String), UsageSample>>,
    pub logs: Mutex<Vec<LogMessage>>,
    pub log_tx: broadcast::Sender<LogMessage>,
    pub last_log_request: Mutex<Option<LogRequest>>,
}

impl MemProvider {
    pub fn new(upstream: Option<SocketAddr>) -> Arc<MemProvider> {
        let mut state = State::default();
        state.namespaces.insert(
            "openfaas-fn".into(),
            FunctionNamespace {
                name: "openfaas-fn".into(),
                labels: BTreeMap::from([("openfaas".into(), "1".into())]),
                ..Default::default()
            },
        );
        Arc::new(MemProvider {
            state: Mutex::new(state),
            calls: Mutex::default(),
            upstream: Mutex::new(upstream),
            board: Mutex::new(None),
            timeout: Mutex::new(Duration::from_secs(30)),
            unavailable: AtomicUsize::new(0),
            endpoint_error: Mutex::new(None),
            block: AtomicBool::new(false),
            endpoint_calls: AtomicUsize::new(0),
            endpoint_called: Notify::new(),
            in_flight: Arc::new(AtomicUsize::new(0)),
            health: Mutex::new(Ok(())),
            usage: Mutex::default(),
            logs: Mutex::default(),
            log_tx: broadcast::channel(64).0,
            last_log_request: Mutex::default(),
        })
    }

    /// Adds a function directly (no API call).
    pub fn add_function(&self, name: &str, namespace: &str) {
        let mut s = self.state.lock().unwrap();
        if !s.namespaces.contains_key(namespace) {
            s.namespaces.insert(
                namespace.into(),
                FunctionNamespace {
                    name: namespace.into(),
                    labels: BTreeMap::from([("openfaas".into(), "1".into())]),
                    ..Default::default()
                },
            );
        }
        s.functions.insert(
            (name.into(), namespace.into()),
            FunctionDeployment {
                service: name.into(),
                image: "fixture:latest".into(),
                namespace: Some(namespace.into()),
                ..Default::default()
            },
        );
        s.replicas.insert((name.into(), namespace.into()), 1);
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn record(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }

    pub fn push_log(&self, name: &str, text: &str, timestamp: &str) {
        let message = LogMessage {
            name: name.into(),
            namespace: "openfaas-fn".into(),
            instance: "1234".into(),
            timestamp: timestamp.into(),
            text: text.into(),
        };
        self.logs.lock().unwrap().push(message.clone());
        let _ = self.log_tx.send(message);
    }

    fn status_of(
        &self,
        name: &str,
        ns: &str,
        d: &FunctionDeployment,
        replicas: u64,
    ) -> FunctionStatus {
        FunctionStatus {
            name: name.into(),
            image: d.image.clone(),
            namespace: Some(ns.into()),
            env_process: d.env_process.clone(),
            env_vars: d.env_vars.clone(),
            labels: d.labels.clone(),
            annotations: d.annotations.clone(),
            secrets: d.secrets.clone(),
            limits: d.limits.clone(),
            replicas,
            available_replicas: replicas,
            created_at: Some("2024-05-01T10:00:00Z".into()),
            ..Default::default()
        }
    }
}

fn ns_of(d: &FunctionDeployment) -> String {
    d.namespace
        .clone()
        .expect("the gateway fills in the namespace")
}

impl Provider for MemProvider {
    async fn list_functions(&self, namespace: &str) -> ProviderResult<Vec<FunctionStatus>> {
        let s = self.state.lock().unwrap();
        Ok(s.functions
            .iter()
            .filter(|((_, ns), _)| ns == namespace)
            .map(|((name, ns), d)| {
                self.status_of(name, ns, d, s.replicas[&(name.clone(), ns.clone())])
            })
            .collect())
    }

    async fn get_function(
        &self,
        name: &str,
        namespace: &str,
        usage: bool,
    ) -> ProviderResult<Option<FunctionStatus>> {
        self.record(format!("get_function {name} {namespace} usage={usage}"));
        let s = self.state.lock().unwrap();
        let key = (name.to_owned(), namespace.to_owned());
        Ok(s.functions
            .get(&key)
            .map(|d| self.status_of(name, namespace, d, s.replicas[&key])))
    }

    async fn deploy(&self, request: FunctionDeployment) -> ProviderResult<()> {
        let ns = ns_of(&request);
        self.record(format!("deploy {} {ns}", request.service));
        let mut s = self.state.lock().unwrap();
        if !s.namespaces.contains_key(&ns) {
            return Err(ProviderError::invalid(
                "namespace",
                format!("namespace {ns} does not exist"),
            ));
        }
        let key = (request.service.clone(), ns);
        if s.functions.contains_key(&key) {
            return Err(ProviderError::Conflict(format!(
                "function {}.{} already exists",
                key.0, key.1
            )));
        }
        s.replicas.insert(key.clone(), 1);
        s.functions.insert(key, request);
        Ok(())
    }

    async fn update(&self, request: FunctionDeployment) -> ProviderResult<()> {
        let ns = ns_of(&request);
        self.record(format!("update {} {ns}", request.service));
        let mut s = self.state.lock().unwrap();
        let key = (request.service.clone(), ns);
        match s.functions.get_mut(&key) {
            Some(d) => {
                *d = request;
                Ok(())
            }
            None => Err(ProviderError::NotFound(format!(
                "function {}.{} not found",
                key.0, key.1
            ))),
        }
    }

    async fn delete(&self, name: &str, namespace: &str) -> ProviderResult<()> {
        self.record(format!("delete {name} {namespace}"));
        let mut s = self.state.lock().unwrap();
        let key = (name.to_owned(), namespace.to_owned());
        s.replicas.remove(&key);
        s.functions.remove(&key).map(|_| ()).ok_or_else(|| {
            ProviderError::NotFound(format!("function {name}.{namespace} not found"))
        })
    }

    async fn scale(&self, name: &str, namespace: &str, replicas: u64) -> ProviderResult<()> {
        self.record(format!("scale {name} {namespace} {replicas}"));
        let mut s = self.state.lock().unwrap();
        let key = (name.to_owned(), namespace.to_owned());
        if !s.functions.contains_key(&key) {
            return Err(ProviderError::NotFound(format!(
                "function {name}.{namespace} not found"
            )));
        }
        s.replicas.insert(key, replicas);
        Ok(())
    }

    async fn list_namespaces(&self) -> ProviderResult<Vec<String>> {
        Ok(self
            .state
            .lock()
            .unwrap()
            .namespaces
            .keys()
            .cloned()
            .collect())
    }

    async fn get_namespace(&self, name: &str) -> ProviderResult<Option<FunctionNamespace>> {
        Ok(self.state.lock().unwrap().namespaces.get(name).cloned())
    }

    async fn create_namespace(&self, namespace: FunctionNamespace) -> ProviderResult<()> {
        self.record(format!("create_namespace {}", namespace.name));
        let mut s = self.state.lock().unwrap();
        if s.namespaces.contains_key(&namespace.name) {
            return Err(ProviderError::Conflict(format!(
                "namespace {} exists",
                namespace.name
            )));
        }
        s.namespaces.insert(namespace.name.clone(), namespace);
        Ok(())
    }

    async fn update_namespace(&self, namespace: FunctionNamespace) -> ProviderResult<()> {
        self.record(format!("update_namespace {}", namespace.name));
        let mut s = self.state.lock().unwrap();
        match s.namespaces.get_mut(&namespace.name) {
            Some(n) => {
                *n = namespace;
                Ok(())
            }
            None => Err(ProviderError::NotFound(format!(
                "namespace {} not found",
                namespace.name
            ))),
        }
    }

    async fn delete_namespace(&self, name: &str) -> ProviderResult<()> {
        self.record(format!("delete_namespace {name}"));
        let mut s = self.state.lock().unwrap();
        s.namespaces
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| ProviderError::NotFound(format!("namespace {name} not found")))
    }

    async fn list_secrets(&self, namespace: &str) -> ProviderResult<Vec<Secret>> {
        // Deliberately returns values: the gateway must strip them.
        let s = self.state.lock().unwrap();
        Ok(s.secrets
            .iter()
            .filter(|((_, ns), _)| ns == namespace)
            .map(|(_, v)| v.clone())
            .collect())
    }

    async fn put_secret(&self, secret: Secret) -> ProviderResult<()> {
        let ns = secret
            .namespace
            .clone()
            .expect("the gateway fills in the namespace");
        self.record(format!("put_secret {} {ns}", secret.name));
        self.state
            .lock()
            .unwrap()
            .secrets
            .insert((secret.name.clone(), ns), secret);
        Ok(())
    }

    async fn delete_secret(&self, name: &str, namespace: &str) -> ProviderResult<()> {
        self.record(format!("delete_secret {name} {namespace}"));
        let mut s = self.state.lock().unwrap();
        s.secrets
            .remove(&(name.to_owned(), namespace.to_owned()))
            .map(|_| ())
            .ok_or_else(|| ProviderError::NotFound(format!("secret {name}.{namespace} not found")))
    }

    async fn logs(&self, request: LogRequest) -> ProviderResult<LogStream> {
        *self.last_log_request.lock().unwrap() = Some(request.clone());
        let since = request.since;
        let matches = move |m: &LogMessage| {
            m.name == request.name
                && m.namespace == request.namespace
                && since.is_none_or(|since| {
                    let t: SystemTime = test_timestamp(&m.timestamp);
                    t >= since
                })
        };
        let live = self.log_tx.subscribe();
        let mut backlog: Vec<LogMessage> = self
            .logs
            .lock()
            .unwrap()
            .iter()
            .filter(|m| matches(m))
            .cloned()
            .collect();
        if let Some(tail) = request.tail {
            let skip = backlog.len().saturating_sub(tail);
            backlog.drain(..skip);
        }
        let backlog = futures::stream::iter(backlog);
        if !request.follow {
            return Ok(backlog.boxed());
        }
        let live = futures::stream::unfold(live, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(m) => return Some((m, rx)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .filter(move |m| std::future::ready(matches(m)));
        Ok(backlog.chain(live).boxed())
    }

    async fn list_images(&self) -> ProviderResult<Vec<ImageSummary>> {
        let s = self.state.lock().unwrap();
        Ok(s.images
            .iter()
            .map(|(name, bytes)| ImageSummary {
                name: name.clone(),
                digest: format!("len:{}", bytes.len()),
                size: bytes.len() as u64,
            })
            .collect())
    }

    async fn import_images(
        &self,
        archive: &std::path::Path,
        name: Option<&str>,
    ) -> ProviderResult<Vec<String>> {
        let bytes = std::fs::read(archive).map_err(|e| ProviderError::Internal(e.to_string()))?;
        self.record(format!(
            "import_images {} {}",
            bytes.len(),
            name.unwrap_or("-")
        ));
        if bytes.starts_with(b"not an image") {
            return Err(ProviderError::invalid("archive", "not a tar archive"));
        }
        let name = name
            .unwrap_or("docker.io/library/uploaded:latest")
            .to_owned();
        self.state
            .lock()
            .unwrap()
            .images
            .insert(name.clone(), bytes);
        Ok(vec![name])
    }

    async fn remove_image(&self, name: &str) -> ProviderResult<()> {
        self.record(format!("remove_image {name}"));
        match self.state.lock().unwrap().images.remove(name) {
            Some(_) => Ok(()),
            None => Err(ProviderError::NotFound(format!("image {name} not found"))),
        }
    }

    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            provider: "bramble".into(),
            version: VersionInfo {
                commit_message: String::new(),
                sha: "abc123".into(),
                release: "0.1.0".into(),
            },
            orchestration: "containerd".into(),
        }
    }

    async fn health(&self) -> Result<(), String> {
        self.health.lock().unwrap().clone()
    }

    async fn endpoint(
        &self,
        name: &str,
        namespace: &str,
        _wait: Duration,
    ) -> ProviderResult<Endpoint> {
        self.record(format!("endpoint {name} {namespace}"));
        self.endpoint_of(name, namespace, true).await
    }

    fn unreachable(&self, board: &BoardAddr) {
        self.record(format!("unreachable {}", board.name));
        // Routed around from now on: this provider's own replica answers.
        self.board.lock().unwrap().take();
    }

    async fn endpoint_here(
        &self,
        name: &str,
        namespace: &str,
        _wait: Duration,
    ) -> ProviderResult<Endpoint> {
        self.record(format!("endpoint_here {name} {namespace}"));
        self.endpoint_of(name, namespace, false).await
    }

    async fn usage(&self) -> HashMap<(String, String), UsageSample> {
        self.usage.lock().unwrap().clone()
    }
}

impl MemProvider {
    async fn endpoint_of(
        &self,
        name: &str,
        namespace: &str,
        may_go_elsewhere: bool,
    ) -> ProviderResult<Endpoint> {
        self.endpoint_calls.fetch_add(1, Ordering::SeqCst);
        self.endpoint_called.notify_waiters();
        if !self
            .state
            .lock()
            .unwrap()
            .functions
            .contains_key(&(name.to_owned(), namespace.to_owned()))
        {
            return Err(ProviderError::NotFound(format!(
                "no function {name}.{namespace}"
            )));
        }
        if self.block.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if let Some(e) = self.endpoint_error.lock().unwrap().clone() {
            return Err(e);
        }
        if self.unavailable.load(Ordering::SeqCst) > 0 {
            self.unavailable.fetch_sub(1, Ordering::SeqCst);
            return Err(ProviderError::Unavailable(format!(
                "function {name}.{namespace} is starting"
            )));
        }
        if may_go_elsewhere && let Some(board) = self.board.lock().unwrap().clone() {
            return Ok(Endpoint {
                upstream: Upstream::Board(board),
                timeout: *self.timeout.lock().unwrap(),
                in_flight: None,
            });
        }
        let Some(addr) = *self.upstream.lock().unwrap() else {
            return Err(ProviderError::Unavailable(format!(
                "function {name}.{namespace} has no replica"
            )));
        };
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Ok(Endpoint {
            upstream: Upstream::Replica(addr),
            timeout: *self.timeout.lock().unwrap(),
            in_flight: Some(Box::new(InFlightGuard(Arc::clone(&self.in_flight)))),
        })
    }
}

/// The test's log timestamps are whole-second UTC (`2024-05-01T10:00:00Z`).
fn test_timestamp(text: &str) -> SystemTime {
    let secs: u64 = match text {
        "2024-05-01T10:00:00Z" => 1_714_557_600,
        "2024-05-01T11:00:00Z" => 1_714_561_200,
        "2024-05-01T12:00:00Z" => 1_714_564_800,
        other => panic!("unexpected test timestamp {other}"),
    };
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

// -------------------------------------------------------------------------------------------
// The gateway under test
// -------------------------------------------------------------------------------------------

pub struct Harness {
    pub gateway: Arc<Gateway<MemProvider>>,
    pub provider: Arc<MemProvider>,
    pub addr: SocketAddr,
    pub queue_dir: std::path::PathBuf,
    _dir: Option<tempfile::TempDir>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    client: Client<HttpConnector, Body>,
}

pub fn test_config(queue_dir: &std::path::Path) -> GatewayConfig {
    GatewayConfig {
        credentials: Credentials {
            user: USER.into(),
            password: PASSWORD.into(),
        },
        queue_dir: queue_dir.to_path_buf(),
        upload_dir: queue_dir.join("uploads"),
        max_upload: 64 * 1024,
        ready_wait: Duration::from_secs(5),
        drain_timeout: Duration::from_secs(10),
        ..GatewayConfig::default()
    }
}

impl Harness {
    pub async fn start(provider: Arc<MemProvider>) -> Harness {
        Self::start_with(provider, |_| {}).await
    }

    pub async fn start_with(
        provider: Arc<MemProvider>,
        tweak: impl FnOnce(&mut GatewayConfig),
    ) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut h = Self::start_in(provider, dir.path(), tweak).await;
        h._dir = Some(dir);
        h
    }

    /// A gateway on `queue_dir` (kept by the caller), with its workers started.
    pub async fn start_in(
        provider: Arc<MemProvider>,
        queue_dir: &std::path::Path,
        tweak: impl FnOnce(&mut GatewayConfig),
    ) -> Harness {
        let h = Self::idle_in(provider, queue_dir, tweak).await;
        h.gateway.start_workers();
        h
    }

    /// A gateway on `queue_dir` (kept by the caller) whose async workers are not started yet
    /// (`gateway.start_workers()`): an accepted call stays on disk until then.
    pub async fn idle_in(
        provider: Arc<MemProvider>,
        queue_dir: &std::path::Path,
        tweak: impl FnOnce(&mut GatewayConfig),
    ) -> Harness {
        let mut config = test_config(queue_dir);
        tweak(&mut config);
        let gateway = Gateway::new(Arc::clone(&provider), config).expect("gateway");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let g = Arc::clone(&gateway);
        let server = tokio::spawn(async move {
            g.serve(listener, async move {
                let _ = rx.await;
            })
            .await
        });
        Harness {
            gateway,
            provider,
            addr,
            queue_dir: queue_dir.to_path_buf(),
            _dir: None,
            shutdown: Some(tx),
            server: Some(server),
            client: client(),
        }
    }

    /// Stops serving (draining) and waits for `serve` to return.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("serve task").expect("serve");
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Body>,
    ) -> Resp {
        send_with(&self.client, &self.url(path), method, headers, body.into()).await
    }

    /// With the right credentials.
    pub async fn admin(&self, method: &str, path: &str, body: &str) -> Resp {
        let auth = basic(USER, PASSWORD);
        self.send(method, path, &[("authorization", &auth)], body.to_owned())
            .await
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send("GET", path, &[], Body::empty()).await
    }

    /// The response head, with the body left to stream.
    pub async fn stream(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> http::Response<hyper::body::Incoming> {
        self.request(method, path, headers, Body::empty()).await
    }

    /// Sends `body` (streamed as the client polls it); answers the response head.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Body,
    ) -> http::Response<hyper::body::Incoming> {
        let mut request = Request::builder().method(method).uri(self.url(path));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        tokio::time::timeout(
            Duration::from_secs(30),
            self.client.request(request.body(body).unwrap()),
        )
        .await
        .expect("response head within 30 s")
        .expect("request")
    }

    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.text()
    }
}

pub fn client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// A whole response.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub async fn send_with(
    client: &Client<HttpConnector, Body>,
    url: &str,
    method: &str,
    headers: &[(&str, &str)],
    body: Body,
) -> Resp {
    let mut request = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).unwrap())
        .uri(url);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = tokio::time::timeout(
        Duration::from_secs(30),
        client.request(request.body(body).unwrap()),
    )
    .await
    .unwrap_or_else(|_| panic!("{method} {url}: no answer within 30 s"))
    .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(30), body.collect())
        .await
        .expect("body within 30 s")
        .expect("body")
        .to_bytes();
    Resp {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

// -------------------------------------------------------------------------------------------
// A callback receiver
// -------------------------------------------------------------------------------------------

#[derive(Debug)]
pub struct Callback {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Callback {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("callback has no {name}: {self:?}"))
    }
}

/// A router that sends every request it gets to `tx` and answers `status`.
fn recording_app(status: StatusCode, tx: mpsc::UnboundedSender<Callback>) -> axum::Router {
    axum::Router::new().fallback(move |request: axum::extract::Request| {
        let tx = tx.clone();
        async move {
            let (parts, body) = request.into_parts();
            let body = body
                .collect()
                .await
                .map(http_body_util::Collected::to_bytes)
                .unwrap_or_default();
            let _ = tx.send(Callback {
                path: parts.uri.to_string(),
                headers: parts.headers,
                body,
            });
            status
        }
    })
}

/// An HTTP server on loopback that sends every request it gets to the returned channel and
/// answers `status`.
pub async fn callback_receiver(
    status: StatusCode,
) -> (SocketAddr, mpsc::UnboundedReceiver<Callback>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = recording_app(status, tx);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, rx)
}

/// A test CA and a server certificate it signed for `127.0.0.1`, made with `openssl` in
/// `dir`: (CA certificate, server certificate, server key), PEM files.
pub fn test_certificates(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| {
                panic!("running openssl (install it: apt-get install openssl): {e}")
            });
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=bramble test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec,
        &[
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    ]
    .concat());
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write server.ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

/// Like [`callback_receiver`], over TLS with `cert` and `key` (PEM files).
pub async fn tls_callback_receiver(
    status: StatusCode,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> (SocketAddr, mpsc::UnboundedReceiver<Callback>) {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .expect("server certificate")
        .collect::<Result<_, _>>()
        .expect("server certificate");
    let key = PrivateKeyDer::from_pem_file(key).expect("server key");
    let config = rustls::ServerConfig::builder_with_provider(bramble_base::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server TLS configuration");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let (tx, rx) = mpsc::unbounded_channel();
    let app = recording_app(status, tx);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake: nothing to serve.
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, rx)
}

pub async fn next_callback(rx: &mut mpsc::UnboundedReceiver<Callback>) -> Callback {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("a callback within 30 s")
        .expect("receiver open")
}

/// Files in the queue's `pending/` directory.
pub fn pending_files(queue_dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(queue_dir.join("pending"))
        .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default();
    files.sort();
    files
}

/// Waits (polling: deleting a file has no other signal) until `pending/` is empty.
pub async fn wait_queue_empty(queue_dir: &std::path::Path) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !pending_files(queue_dir).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "queue not empty: {:?}",
            pending_files(queue_dir)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads frames of a streamed body until `needle` has arrived; returns everything read.
pub async fn read_until(body: &mut hyper::body::Incoming, needle: &str) -> String {
    let mut seen = String::new();
    while !seen.contains(needle) {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .unwrap_or_else(|_| panic!("{needle:?} did not arrive within 10 s; got {seen:?}"))
            .unwrap_or_else(|| panic!("body ended before {needle:?}; got {seen:?}"))
            .expect("frame");
        if let Ok(data) = frame.into_data() {
            seen.push_str(&String::from_utf8_lossy(&data));
        }
    }
    seen
}
