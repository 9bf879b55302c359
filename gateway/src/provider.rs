//! The seam between the HTTP face and whatever runs functions.
//!
//! The gateway never talks to containerd; it asks a [`Provider`]. bramble's agent implements
//! it with the local runtime today; a cluster provider can implement it later.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;

use crate::types::{
    FunctionDeployment, FunctionNamespace, FunctionStatus, ImageSummary, LogMessage, LogRequest,
    ProviderInfo, Secret,
};
use crate::ui::model::{Board, Replica};

/// Why a provider refused or failed a request. Each kind maps to one HTTP status.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// 400: the request is malformed; `field` names the offending JSON field when there is one.
    #[error("{}{message}", field.as_ref().map(|f| format!("{f}: ")).unwrap_or_default())]
    Invalid {
        field: Option<String>,
        message: String,
    },
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 409: conflicts with existing state (a name taken, a hardware line owned by another
    /// function).
    #[error("{0}")]
    Conflict(String),
    /// 503: the function or its runtime cannot serve right now (containerd down, function
    /// failing its health check, replica budget exhausted).
    #[error("{0}")]
    Unavailable(String),
    /// 504: waiting for a function to become ready took longer than allowed.
    #[error("{0}")]
    Timeout(String),
    /// 507: the change cannot be saved because the node's disk is full; nothing changed.
    #[error("{0}")]
    InsufficientStorage(String),
    /// 500.
    #[error("{0}")]
    Internal(String),
}

impl ProviderError {
    /// A 400 about one field.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ProviderError::Invalid {
            field: Some(field.into()),
            message: message.into(),
        }
    }

    /// The HTTP status of this kind of error.
    pub fn status(&self) -> http::StatusCode {
        use http::StatusCode;
        match self {
            ProviderError::Invalid { .. } => StatusCode::BAD_REQUEST,
            ProviderError::NotFound(_) => StatusCode::NOT_FOUND,
            ProviderError::Conflict(_) => StatusCode::CONFLICT,
            ProviderError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProviderError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProviderError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            ProviderError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Result of provider calls.
pub type ProviderResult<T> = Result<T, ProviderError>;

/// Keeps an invocation counted as in flight (idle scale-down must not stop a function that is
/// streaming a long response) until dropped.
pub type InFlight = Box<dyn Send + Sync>;

/// Where one request to a function goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Upstream {
    /// A ready replica on this board (`IP:8080` on the function bridge).
    Replica(SocketAddr),
    /// Another board of the cluster, which answers from its own replicas (and starts one if it
    /// has none ready): the request goes to its board listener, over TLS under the cluster's CA
    /// (see [`crate::Gateway::set_board_tls`]). That board never sends it on again.
    Board(BoardAddr),
}

/// A board's listener for board-to-board traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoardAddr {
    /// The board's name (error messages, logs).
    pub name: Arc<str>,
    /// Its board listener (LAN address and board port; the address is in its certificate).
    pub addr: SocketAddr,
}

/// Where to send one request to a function.
pub struct Endpoint {
    /// Where it goes.
    pub upstream: Upstream,
    /// The function's upstream timeout (default 60 s, per-function annotation).
    pub timeout: Duration,
    /// Held for the duration of the request.
    pub in_flight: Option<InFlight>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("upstream", &self.upstream)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Resource use of one function (all its replicas), for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct UsageSample {
    /// CPU time used so far, in seconds (a counter).
    pub cpu_seconds_total: f64,
    /// Memory in use now, in bytes.
    pub memory_bytes: f64,
    /// Replicas running now.
    pub replicas: u64,
}

/// A stream of log lines.
pub type LogStream = Pin<Box<dyn Stream<Item = LogMessage> + Send>>;

/// What runs functions. Every method is called from the gateway's request handlers; a rejected
/// request must change no state.
pub trait Provider: Send + Sync + 'static {
    /// Functions of a namespace (`replicas`, `availableReplicas`, `createdAt` filled in).
    fn list_functions(
        &self,
        namespace: &str,
    ) -> impl Future<Output = ProviderResult<Vec<FunctionStatus>>> + Send;
    /// One function; `usage` filled in when asked.
    fn get_function(
        &self,
        name: &str,
        namespace: &str,
        usage: bool,
    ) -> impl Future<Output = ProviderResult<Option<FunctionStatus>>> + Send;
    /// Deploys a new function (409 if it exists).
    fn deploy(
        &self,
        request: FunctionDeployment,
    ) -> impl Future<Output = ProviderResult<()>> + Send;
    /// Updates an existing function (404 if it does not exist).
    fn update(
        &self,
        request: FunctionDeployment,
    ) -> impl Future<Output = ProviderResult<()>> + Send;
    /// Deletes a function (404 if it does not exist).
    fn delete(
        &self,
        name: &str,
        namespace: &str,
    ) -> impl Future<Output = ProviderResult<()>> + Send;
    /// Sets the desired replicas; 0 stops the function but keeps it.
    fn scale(
        &self,
        name: &str,
        namespace: &str,
        replicas: u64,
    ) -> impl Future<Output = ProviderResult<()>> + Send;

    fn list_namespaces(&self) -> impl Future<Output = ProviderResult<Vec<String>>> + Send;
    fn get_namespace(
        &self,
        name: &str,
    ) -> impl Future<Output = ProviderResult<Option<FunctionNamespace>>> + Send;
    /// 409 if it exists.
    fn create_namespace(
        &self,
        namespace: FunctionNamespace,
    ) -> impl Future<Output = ProviderResult<()>> + Send;
    /// 404 if it does not exist.
    fn update_namespace(
        &self,
        namespace: FunctionNamespace,
    ) -> impl Future<Output = ProviderResult<()>> + Send;
    /// 404 if it does not exist; refused while functions live in it.
    fn delete_namespace(&self, name: &str) -> impl Future<Output = ProviderResult<()>> + Send;

    /// Secret names (never values) of a namespace.
    fn list_secrets(
        &self,
        namespace: &str,
    ) -> impl Future<Output = ProviderResult<Vec<Secret>>> + Send;
    /// Creates or replaces a secret.
    fn put_secret(&self, secret: Secret) -> impl Future<Output = ProviderResult<()>> + Send;
    /// 404 if it does not exist.
    fn delete_secret(
        &self,
        name: &str,
        namespace: &str,
    ) -> impl Future<Output = ProviderResult<()>> + Send;

    /// Log lines of a function; the stream ends after the backlog unless `follow`.
    fn logs(&self, request: LogRequest) -> impl Future<Output = ProviderResult<LogStream>> + Send;

    /// Images present on the node.
    fn list_images(&self) -> impl Future<Output = ProviderResult<Vec<ImageSummary>>> + Send;
    /// Imports the image archive spooled at `archive` (OCI layout or `docker save`, possibly
    /// gzipped); `name` renames a single image. Returns the names imported.
    fn import_images(
        &self,
        archive: &Path,
        name: Option<&str>,
    ) -> impl Future<Output = ProviderResult<Vec<String>>> + Send;
    /// Removes an image (404 if absent, 409 while a function uses it).
    fn remove_image(&self, name: &str) -> impl Future<Output = ProviderResult<()>> + Send;

    /// Name, version and orchestration of the provider.
    fn info(&self) -> ProviderInfo;
    /// `Ok` when functions can be run (containerd reachable); otherwise why not.
    fn health(&self) -> impl Future<Output = Result<(), String>> + Send;

    /// A ready replica of the function to send one request to. When none is ready (scaled to
    /// zero, starting, restarting) this starts one if needed and waits at most `wait` for it
    /// to pass its health check. Must be an in-memory lookup when a replica is ready: it runs
    /// for every request.
    fn endpoint(
        &self,
        name: &str,
        namespace: &str,
        wait: Duration,
    ) -> impl Future<Output = ProviderResult<Endpoint>> + Send;

    /// Like [`Provider::endpoint`], for a request another board of the cluster sent here: only
    /// this board's own replicas (and starting one here), never another board — so a request
    /// takes one extra hop at most. The default suits a provider in no cluster.
    fn endpoint_here(
        &self,
        name: &str,
        namespace: &str,
        wait: Duration,
    ) -> impl Future<Output = ProviderResult<Endpoint>> + Send {
        self.endpoint(name, namespace, wait)
    }

    /// A call sent to `board` failed at the connection (refused, or broken before an
    /// answer): route around it for a while. The default (a provider in no cluster) does
    /// nothing.
    fn unreachable(&self, _board: &BoardAddr) {}

    /// Resource use per function (`(name, namespace)`), for `/metrics`.
    fn usage(&self) -> impl Future<Output = HashMap<(String, String), UsageSample>> + Send;

    // For the dashboard (`/ui/`). The defaults suit a provider that cannot tell.

    /// Marked changed whenever a function's status may have changed (deployed, deleted,
    /// scaled, a replica ready, crashed, restarting): an open dashboard re-reads the
    /// functions then instead of waiting for its next periodic read. `None` (the default):
    /// the dashboard re-reads every second only.
    fn status_changes(&self) -> Option<tokio::sync::watch::Receiver<()>> {
        None
    }

    /// A function's replicas and where they run (empty by default).
    fn replicas(&self, _name: &str, _namespace: &str) -> impl Future<Output = Vec<Replica>> + Send {
        async { Vec::new() }
    }

    /// The boards of the cluster as this board sees them, this board included; `None` (the
    /// default) on a board that is in no cluster.
    fn boards(&self) -> impl Future<Output = Option<Vec<Board>>> + Send {
        async { None }
    }
}
