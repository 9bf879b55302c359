//! The local provider: the gateway's [`Provider`] implemented with this board's runtime.
//!
//! Every change is validated first, then persisted, then handed to the function's supervisor:
//! a rejected request changes nothing, and an accepted one survives a restart. The code is
//! cut by concern:
//!
//! - `startup.rs`: adopting what runs after a restart, task events, image garbage collection;
//! - `functions.rs`: deploy, update, delete, scale, status, admission;
//! - `namespaces.rs`: namespaces and secrets;
//! - `images.rs`: listing, importing and removing images;
//! - `endpoint.rs`: the per-request lookup of a ready replica (scale from zero), and logs;
//! - `cpu.rs`: `usage.cpu` over the last minute.
//!
//! The runtime is reached through [`NodeRuntime`], so the provider runs against the scripted
//! fake in unit tests.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use bramble_gateway::provider::{
    Endpoint, LogStream, Provider, ProviderError, ProviderResult, UsageSample,
};
use bramble_gateway::types::{
    FunctionDeployment, FunctionNamespace, FunctionStatus, ImageSummary, LogRequest, ProviderInfo,
    Secret, VersionInfo,
};
use bramble_gateway::ui::model::Replica;
use bramble_runtime::keyed::KeyedLocks;
use bramble_runtime::{Error as RuntimeError, PullPolicy, Runtime};
use tokio::sync::watch;

use crate::function::{self, FunctionKey};
use crate::runtime::NodeRuntime;
use crate::store::{Store, StoreError};
use crate::supervisor::{Context, Handle};
use bramble_hardware::{ErrorKind as HardwareErrorKind, Hardware, HardwareError};

#[cfg(test)]
mod cluster_tests;
mod cpu;
mod endpoint;
mod functions;
mod images;
mod namespaces;
mod startup;
#[cfg(test)]
mod tests;

/// Settings of the provider.
#[derive(Clone, Debug)]
pub struct ProviderSettings {
    pub default_namespace: String,
    pub pull_policy: PullPolicy,
    pub defaults: function::Defaults,
    pub ready_timeout: Duration,
    pub stop_grace: Duration,
    /// Memory all functions may reserve together (None: no limit).
    pub memory_budget: Option<u64>,
    /// Unused images are removed after this long (None: never).
    pub image_gc_after: Option<Duration>,
}

/// The provider of one board.
#[derive(Debug)]
pub struct LocalProvider<R = Runtime> {
    ctx: Arc<Context<R>>,
    settings: ProviderSettings,
    functions: RwLock<HashMap<FunctionKey, Handle>>,
    /// One deploy/update/delete/scale per function at a time.
    locks: KeyedLocks,
    /// Set once the existing containers are adopted and every supervisor runs.
    started: watch::Sender<bool>,
    /// Functions deleted whose replicas are still stopping: the delete answered once it was
    /// stored; a deploy of the same name, or of one that wants hardware, waits for them.
    deleting: std::sync::Mutex<HashMap<FunctionKey, Deleting>>,
    /// CPU counter samples per task, for `usage.cpu` (see [`cpu`]).
    cpu: std::sync::Mutex<cpu::CpuSamples>,
}

/// A deleted function whose replicas are still stopping.
#[derive(Clone, Debug)]
struct Deleting {
    /// Turns `true` once its replicas are gone and its hardware is released.
    gone: watch::Receiver<bool>,
    /// It held hardware (lines, buses) until then.
    hardware: bool,
}

impl From<StoreError> for ProviderError {
    fn from(e: StoreError) -> Self {
        let message = format!("saving the state failed: {}", bramble_base::error_chain(&e));
        if e.is_disk_full() {
            ProviderError::InsufficientStorage(format!(
                "{message}; nothing was changed: free space on the state directory's filesystem and retry"
            ))
        } else {
            ProviderError::Internal(message)
        }
    }
}

/// Bytes as MiB for messages.
fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes / (1 << 20))
}

/// The HTTP meaning of a refused hardware grant: 400 for bad grants and lines (buses,
/// channels) the node does not have, 409 for conflicts and busy lines, 500 otherwise.
fn hardware_error(e: &HardwareError) -> ProviderError {
    let message = bramble_base::error_chain(e);
    match e.kind() {
        HardwareErrorKind::Invalid | HardwareErrorKind::NotFound => {
            ProviderError::invalid("annotations", message)
        }
        HardwareErrorKind::Conflict => ProviderError::Conflict(message),
        HardwareErrorKind::Device | HardwareErrorKind::Internal => {
            ProviderError::Internal(format!("hardware: {message}"))
        }
    }
}

/// The HTTP meaning of a runtime error.
fn runtime_error(field: &str, e: &RuntimeError) -> ProviderError {
    match e {
        RuntimeError::Unavailable { .. } => ProviderError::Unavailable(e.chain()),
        RuntimeError::PlatformMismatch { .. }
        | RuntimeError::ImageNotPresent { .. }
        | RuntimeError::Registry { .. }
        | RuntimeError::InvalidImage { .. }
        | RuntimeError::Reference(_)
        | RuntimeError::Invalid(_) => ProviderError::invalid(field, e.chain()),
        RuntimeError::NotFound { .. } => ProviderError::NotFound(e.chain()),
        _ => ProviderError::Internal(e.chain()),
    }
}

/// Deploys, updates, deletes and scales (every change of the desired state) are status
/// changes too, for the dashboard; ends with the provider.
async fn forward_store_changes<R>(
    mut store: watch::Receiver<Arc<crate::store::State>>,
    ctx: std::sync::Weak<Context<R>>,
) {
    while store.changed().await.is_ok() {
        let Some(ctx) = ctx.upgrade() else {
            return;
        };
        ctx.changes.send_replace(());
    }
}

impl<R: NodeRuntime> LocalProvider<R> {
    /// Creates the provider and, in the background, adopts what already runs, starts every
    /// function that should run, and removes leftovers (containers, writable snapshots,
    /// network namespaces, IP leases and attachments of containers that no longer exist).
    /// Waits for containerd if it is not up yet.
    pub fn start(
        runtime: R,
        store: Arc<Store>,
        hardware: Arc<Hardware>,
        settings: ProviderSettings,
    ) -> Arc<Self> {
        let ctx = Arc::new(Context {
            runtime,
            store,
            hardware,
            defaults: settings.defaults.clone(),
            ready_timeout: settings.ready_timeout,
            stop_grace: settings.stop_grace,
            changes: watch::Sender::new(()),
        });
        let provider = Arc::new(Self {
            ctx,
            settings,
            functions: RwLock::new(HashMap::new()),
            locks: KeyedLocks::default(),
            started: watch::channel(false).0,
            deleting: std::sync::Mutex::default(),
            cpu: std::sync::Mutex::default(),
        });
        // Subscribe before adopting, so no exit between the two is missed.
        let events = provider.ctx.runtime.subscribe();
        tokio::spawn(Arc::clone(&provider).pump_events(events));
        let cpu_events = provider.ctx.runtime.subscribe();
        tokio::spawn(cpu::sample(Arc::downgrade(&provider), cpu_events));
        tokio::spawn(Arc::clone(&provider).adopt_and_start());
        tokio::spawn(forward_store_changes(
            provider.ctx.store.subscribe(),
            Arc::downgrade(&provider.ctx),
        ));
        if let Some(after) = provider.settings.image_gc_after {
            tokio::spawn(Arc::clone(&provider).collect_images(after));
        }
        provider
    }

    /// Waits until startup adoption is done (or `timeout`).
    pub async fn wait_started(&self, timeout: Duration) -> bool {
        let mut started = self.started.subscribe();
        tokio::time::timeout(timeout, started.wait_for(|s| *s))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn handle(&self, key: &FunctionKey) -> Option<Handle> {
        self.functions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    fn handles(&self) -> Vec<Handle> {
        self.functions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    fn namespace_of(&self, requested: Option<&str>) -> String {
        requested
            .filter(|n| !n.is_empty())
            .unwrap_or(&self.settings.default_namespace)
            .to_owned()
    }

    fn require_namespace(&self, namespace: &str) -> ProviderResult<()> {
        if self.ctx.store.snapshot().namespaces.contains_key(namespace) {
            Ok(())
        } else {
            Err(ProviderError::invalid(
                "namespace",
                format!("namespace {namespace} does not exist"),
            ))
        }
    }
}

impl<R: NodeRuntime> Provider for LocalProvider<R> {
    async fn list_functions(&self, namespace: &str) -> ProviderResult<Vec<FunctionStatus>> {
        self.list_function_statuses(namespace)
    }

    async fn get_function(
        &self,
        name: &str,
        namespace: &str,
        usage: bool,
    ) -> ProviderResult<Option<FunctionStatus>> {
        self.function_status(name, namespace, usage).await
    }

    async fn deploy(&self, request: FunctionDeployment) -> ProviderResult<()> {
        self.deploy_function(request).await
    }

    async fn update(&self, request: FunctionDeployment) -> ProviderResult<()> {
        self.update_function(request).await
    }

    async fn delete(&self, name: &str, namespace: &str) -> ProviderResult<()> {
        self.delete_function(name, namespace).await
    }

    async fn scale(&self, name: &str, namespace: &str, replicas: u64) -> ProviderResult<()> {
        self.scale_function(name, namespace, replicas).await
    }

    async fn list_namespaces(&self) -> ProviderResult<Vec<String>> {
        Ok(self.namespace_names())
    }

    async fn get_namespace(&self, name: &str) -> ProviderResult<Option<FunctionNamespace>> {
        Ok(self.namespace(name))
    }

    async fn create_namespace(&self, namespace: FunctionNamespace) -> ProviderResult<()> {
        self.add_namespace(namespace).await
    }

    async fn update_namespace(&self, namespace: FunctionNamespace) -> ProviderResult<()> {
        self.change_namespace(namespace).await
    }

    async fn delete_namespace(&self, name: &str) -> ProviderResult<()> {
        self.remove_namespace(name).await
    }

    async fn list_secrets(&self, namespace: &str) -> ProviderResult<Vec<Secret>> {
        self.secrets_of(namespace).await
    }

    async fn put_secret(&self, secret: Secret) -> ProviderResult<()> {
        self.store_secret(secret).await
    }

    async fn delete_secret(&self, name: &str, namespace: &str) -> ProviderResult<()> {
        self.remove_secret(name, namespace).await
    }

    async fn logs(&self, request: LogRequest) -> ProviderResult<LogStream> {
        self.log_stream(&request)
    }

    async fn list_images(&self) -> ProviderResult<Vec<ImageSummary>> {
        self.images().await
    }

    async fn import_images(
        &self,
        archive: &Path,
        name: Option<&str>,
    ) -> ProviderResult<Vec<String>> {
        self.import(archive, name).await
    }

    async fn remove_image(&self, name: &str) -> ProviderResult<()> {
        self.remove_unused_image(name).await
    }

    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            provider: "bramble".into(),
            orchestration: "containerd".into(),
            version: VersionInfo {
                commit_message: String::new(),
                sha: option_env!("BRAMBLE_GIT_SHA").unwrap_or("unknown").into(),
                release: env!("CARGO_PKG_VERSION").into(),
            },
        }
    }

    async fn health(&self) -> Result<(), String> {
        self.ctx
            .runtime
            .version()
            .await
            .map(|_| ())
            .map_err(|e| e.chain())
    }

    async fn endpoint(
        &self,
        name: &str,
        namespace: &str,
        wait: Duration,
    ) -> ProviderResult<Endpoint> {
        self.ready_endpoint(name, namespace, wait).await
    }

    async fn usage(&self) -> HashMap<(String, String), UsageSample> {
        self.usage_samples().await
    }

    fn status_changes(&self) -> Option<watch::Receiver<()>> {
        Some(self.ctx.changes.subscribe())
    }

    async fn replicas(&self, name: &str, namespace: &str) -> Vec<Replica> {
        self.handle(&FunctionKey::new(name, namespace))
            .map(|h| h.status.borrow().replicas.clone())
            .unwrap_or_default()
    }
}
