//! The local provider: the gateway's [`Provider`] implemented with this board's runtime.
//!
//! Every change is validated first, then persisted, then handed to the function's supervisor:
//! a rejected request changes nothing, and an accepted one survives a restart. Deploys and
//! updates are checked against the memory budget before their image is pulled or their
//! hardware attached (and again when they are saved), then pull the image before anything is
//! persisted, so a bad or foreign image is refused with the registry's or the platform check's
//! message. An update is saved together with the record it replaces, so that its rollout
//! can be resumed — and rolled back — after a crash.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bramble_gateway::provider::{
    Endpoint, LogStream, Provider, ProviderError, ProviderResult, UsageSample,
};
use bramble_gateway::types::{
    BrambleStatus, FunctionDeployment, FunctionNamespace, FunctionStatus, FunctionUsage,
    ImageSummary, LogMessage, LogRequest, ProviderInfo, Secret, VersionInfo,
};
use bramble_hardware::{ErrorKind as HardwareErrorKind, Grants, Hardware, HardwareError};
use bramble_runtime::image::reference::ImageRef;
use bramble_runtime::keyed::KeyedLocks;
use bramble_runtime::{Error as RuntimeError, PullPolicy, Runtime, TaskEvent};
use futures::StreamExt;
use tokio::sync::{oneshot, watch};

use crate::function::{self, FunctionKey};
use crate::store::{FunctionRecord, NamespaceRecord, Store, StoreError};
use crate::supervisor::{self, Command, Context, Handle};

mod cpu;

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
pub struct LocalProvider {
    ctx: Arc<Context>,
    settings: ProviderSettings,
    functions: RwLock<HashMap<FunctionKey, Handle>>,
    /// One deploy/update/delete/scale per function at a time.
    locks: KeyedLocks,
    /// Set once the existing containers are adopted and every supervisor runs.
    started: watch::Sender<bool>,
    /// CPU counter samples per task, for `usage.cpu` (see [`cpu`]).
    cpu: std::sync::Mutex<cpu::CpuSamples>,
}

impl From<StoreError> for ProviderError {
    fn from(e: StoreError) -> Self {
        let message = format!("saving the state failed: {}", crate::error_chain(&e));
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
    let message = crate::error_chain(e);
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

impl LocalProvider {
    /// Creates the provider and, in the background, adopts what already runs, starts every
    /// function that should run, and removes leftovers (containers, writable snapshots,
    /// network namespaces, IP leases and attachments of containers that no longer exist). Waits for containerd if it is not up yet.
    pub fn start(
        runtime: Runtime,
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
        });
        let provider = Arc::new(Self {
            ctx,
            settings,
            functions: RwLock::new(HashMap::new()),
            locks: KeyedLocks::default(),
            started: watch::channel(false).0,
            cpu: std::sync::Mutex::default(),
        });
        // Subscribe before adopting, so no exit between the two is missed.
        let events = provider.ctx.runtime.subscribe();
        tokio::spawn(Arc::clone(&provider).pump_events(events));
        let cpu_events = provider.ctx.runtime.subscribe();
        tokio::spawn(cpu::sample(Arc::downgrade(&provider), cpu_events));
        tokio::spawn(Arc::clone(&provider).adopt_and_start());
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

    async fn adopt_and_start(self: Arc<Self>) {
        let runtime = &self.ctx.runtime;
        let mut delay = Duration::from_millis(100);
        let containers = loop {
            match runtime.adopt().await {
                Ok(containers) => break containers,
                Err(e) => {
                    tracing::warn!(error = %e.chain(), "cannot list containers yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
        let state = self.ctx.store.snapshot();
        let mut by_function: HashMap<FunctionKey, Vec<bramble_runtime::Container>> = HashMap::new();
        let mut orphans = Vec::new();
        for c in containers {
            match FunctionKey::parse_container_id(&c.id) {
                Some((key, _, _)) if state.function(&key.name, &key.namespace).is_some() => {
                    by_function.entry(key).or_default().push(c);
                }
                _ => orphans.push(c.id),
            }
        }
        // Hardware first: the replicas started below get the socket mounted.
        for (namespace, name, record) in state.all_functions() {
            let key = FunctionKey::new(name, namespace);
            match crate::triggers::hardware_grants(&record.deployment.annotations) {
                Ok(Some(grants)) => {
                    // Adopted: its grants stay reserved even if its lines cannot be had now.
                    if let Err(e) = self.ctx.hardware.adopt(&key.to_string(), grants).await {
                        tracing::error!(function = %key, error = %crate::error_chain(&e), "cannot give the function its hardware; it runs without");
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(function = %key, error = %e, "bad hardware annotations; the function runs without hardware");
                }
            }
        }
        {
            let mut functions = self
                .functions
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (namespace, name, record) in state.all_functions() {
                let key = FunctionKey::new(name, namespace);
                let adopted = by_function.remove(&key).unwrap_or_default();
                functions.insert(
                    key.clone(),
                    supervisor::spawn(Arc::clone(&self.ctx), key, record.clone(), adopted),
                );
            }
        }
        self.started.send_replace(true);
        tracing::info!(
            functions = state.all_functions().count(),
            orphans = orphans.len(),
            "functions adopted and started"
        );
        for id in &orphans {
            tracing::info!(container = %id, "removing a container of a function that no longer exists");
            if let Err(e) = runtime.delete(id, self.settings.stop_grace).await {
                tracing::warn!(container = %id, error = %e.chain(), "cannot remove orphan container");
            }
        }
        match runtime.remove_orphan_snapshots().await {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!(?removed, "removed orphan snapshots");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e.chain(), "cannot check for orphan snapshots"),
        }
        // Namespaces, IP leases and attachments without a container (a crash between
        // preparing the namespace and recording the container, or in the middle of CNI ADD).
        match runtime.remove_orphan_networks().await {
            Ok(released) if !released.is_empty() => {
                tracing::info!(?released, "released orphan networks");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e.chain(), "cannot check for orphan networks"),
        }
    }

    /// Stops every function (keeping containers); their supervisors end. For a shutdown
    /// configured to stop functions.
    pub async fn stop_all(&self) {
        let handles = self.handles();
        let waits = handles.iter().map(|handle| {
            let (done, finished) = oneshot::channel();
            let sent = handle.commands.send(Command::Shutdown(done)).is_ok();
            async move {
                if sent {
                    let _ = finished.await;
                }
            }
        });
        futures::future::join_all(waits).await;
    }

    /// Removes images no function and no container uses, once they have been unused for
    /// `after` (so an image imported for a deploy a moment later is kept). containerd then
    /// frees their content and snapshots: an SD card does not fill up with old versions.
    async fn collect_images(self: Arc<Self>, after: Duration) {
        let interval = (after / 4).clamp(Duration::from_secs(1), Duration::from_secs(300));
        let mut unused_since: HashMap<String, Instant> = HashMap::new();
        let mut ticker = tokio::time::interval(interval);
        loop {
            ticker.tick().await;
            if let Err(e) = self.collect_images_once(after, &mut unused_since).await {
                tracing::warn!(error = %e.chain(), "image garbage collection skipped");
            }
        }
    }

    async fn collect_images_once(
        &self,
        after: Duration,
        unused_since: &mut HashMap<String, Instant>,
    ) -> bramble_runtime::Result<()> {
        let runtime = &self.ctx.runtime;
        let mut used: std::collections::HashSet<String> = self
            .ctx
            .store
            .snapshot()
            .all_functions()
            // A pending rollout's previous record: its image is what a rollback recreates.
            .flat_map(|(_, _, r)| {
                std::iter::once(r.deployment.image.clone())
                    .chain(r.previous.as_ref().map(|p| p.deployment.image.clone()))
            })
            .collect();
        // Containers keep their image in use too: an old generation draining during an
        // update, which a rollback would recreate.
        used.extend(runtime.list().await?.into_iter().map(|c| c.image));
        let images = runtime.images().list().await?;
        let now = Instant::now();
        unused_since
            .retain(|name, _| images.iter().any(|i| i.name == *name) && !used.contains(name));
        for image in images.iter().filter(|i| !used.contains(&i.name)) {
            let since = *unused_since.entry(image.name.clone()).or_insert(now);
            if now.duration_since(since) >= after {
                tracing::info!(image = %image.name, unused_for = ?now.duration_since(since), "removing an unused image");
                match runtime.images().remove(&image.name).await {
                    Ok(()) | Err(RuntimeError::NotFound { .. }) => {
                        unused_since.remove(&image.name);
                    }
                    Err(e) => {
                        tracing::warn!(image = %image.name, error = %e.chain(), "cannot remove image");
                    }
                }
            }
        }
        Ok(())
    }

    async fn pump_events(self: Arc<Self>, mut events: tokio::sync::broadcast::Receiver<TaskEvent>) {
        loop {
            let event = match events.recv().await {
                Ok(event) => event,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "task events were dropped; resynchronising");
                    TaskEvent::Resync
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            let (container, command) = match event {
                TaskEvent::Exited {
                    container,
                    pid,
                    exit_status,
                    ..
                } => (
                    container.clone(),
                    Command::Exited {
                        container,
                        pid,
                        exit_status,
                    },
                ),
                TaskEvent::Oom { container } => (container.clone(), Command::Oom { container }),
                TaskEvent::Resync => {
                    for handle in self.handles() {
                        let _ = handle.commands.send(Command::Resync);
                    }
                    continue;
                }
                TaskEvent::Started { .. } => continue,
            };
            if let Some((key, _, _)) = FunctionKey::parse_container_id(&container)
                && let Some(handle) = self.handle(&key)
            {
                let _ = handle.commands.send(command);
            }
        }
    }

    fn handle(&self, key: &FunctionKey) -> Option<Handle> {
        self.functions
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    fn handles(&self) -> Vec<Handle> {
        self.functions
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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

    /// Checks a deployment (settings, secrets, hardware grants and triggers) without side
    /// effects, and returns it with its image reference normalised and the hardware it asks
    /// for. [`Self::fetch_image`] then makes the image present.
    fn check(
        &self,
        mut request: FunctionDeployment,
    ) -> ProviderResult<(FunctionKey, FunctionDeployment, ImageRef, Option<Grants>)> {
        let namespace = self.namespace_of(request.namespace.as_deref());
        self.require_namespace(&namespace)?;
        request.namespace = Some(namespace.clone());
        function::validate_settings(&request)
            .map_err(|(field, message)| ProviderError::invalid(field, message))?;
        for (i, secret) in request.secrets.iter().enumerate() {
            if !self.ctx.store.has_secret(&namespace, secret) {
                return Err(ProviderError::invalid(
                    format!("secrets[{i}]"),
                    format!(
                        "secret {secret} does not exist in namespace {namespace}; create it first"
                    ),
                ));
            }
        }
        let image = ImageRef::parse(&request.image)
            .map_err(|e| ProviderError::invalid("image", e.to_string()))?;
        let key = FunctionKey::new(&request.service, &namespace);
        crate::triggers::parse(&request.annotations)
            .map_err(|e| ProviderError::invalid("annotations", e.to_string()))?;
        let grants = crate::triggers::hardware_grants(&request.annotations)
            .map_err(|e| ProviderError::invalid("annotations", e.to_string()))?;
        if let Some(grants) = &grants {
            self.ctx
                .hardware
                .check(&key.to_string(), grants)
                .map_err(|e| hardware_error(&e))?;
        }
        request.image = image.to_string();
        Ok((key, request, image, grants))
    }

    /// Pulls a checked deployment's image per the pull policy (nothing when it is present and
    /// the policy allows).
    async fn fetch_image(&self, key: &FunctionKey, image: &ImageRef) -> ProviderResult<()> {
        let progress =
            |p: bramble_runtime::image::Progress| tracing::info!(function = %key, ?p, "image");
        self.ctx
            .runtime
            .images()
            .ensure(image, self.settings.pull_policy, &progress)
            .await
            .map_err(|e| runtime_error("image", &e))?;
        Ok(())
    }

    /// Gives a function the hardware it asks for now (`None`: takes away the `previous`
    /// grants), before the change is persisted; [`Self::restore_hardware`] undoes it.
    async fn apply_hardware(
        &self,
        key: &FunctionKey,
        grants: Option<Grants>,
        previous: Option<Grants>,
    ) -> ProviderResult<()> {
        let function = key.to_string();
        match grants {
            Some(grants) => {
                self.ctx
                    .hardware
                    .attach(&function, grants)
                    .await
                    .map_err(|e| hardware_error(&e))?;
            }
            None if previous.is_some() => self.ctx.hardware.detach(&function).await,
            None => {}
        }
        Ok(())
    }

    /// Restores the hardware a function had before a change that could not be persisted.
    async fn restore_hardware(&self, key: &FunctionKey, previous: Option<Grants>) {
        let function = key.to_string();
        match previous {
            Some(grants) => {
                if let Err(e) = self.ctx.hardware.attach(&function, grants).await {
                    tracing::error!(function = %key, error = %crate::error_chain(&e), "cannot restore the function's hardware");
                }
            }
            None => self.ctx.hardware.detach(&function).await,
        }
    }

    /// Admission: refuses a function (new, updated or rescaled) whose memory would take the
    /// functions of this board beyond the budget, with the numbers.
    fn admit(
        &self,
        state: &crate::store::State,
        key: &FunctionKey,
        record: &FunctionRecord,
        field: &str,
    ) -> ProviderResult<()> {
        let Some(budget) = self.settings.memory_budget else {
            return Ok(());
        };
        let defaults = &self.settings.defaults;
        let others: u64 = state
            .all_functions()
            .filter(|(ns, name, _)| !(*ns == key.namespace && *name == key.name))
            .map(|(_, _, r)| function::memory_reservation(r, defaults))
            .sum();
        let needs = function::memory_reservation(record, defaults);
        if others.saturating_add(needs) <= budget {
            return Ok(());
        }
        let per_replica = function::memory_limit(&record.deployment, defaults).unwrap_or(0);
        Err(ProviderError::invalid(
            field,
            format!(
                "not enough memory for {key}: it needs {} ({} × {}) but only {} of the {} budget for functions is free ({} reserved by other functions); lower limits.memory or the replicas, or raise memory_budget",
                mib(needs),
                record.replicas.max(1),
                mib(per_replica),
                mib(budget.saturating_sub(others)),
                mib(budget),
                mib(others),
            ),
        ))
    }

    fn status_of(&self, key: &FunctionKey, record: &FunctionRecord) -> FunctionStatus {
        let d = &record.deployment;
        let view = self
            .handle(key)
            .map(|h| h.status.borrow().clone())
            .unwrap_or_default();
        FunctionStatus {
            name: key.name.clone(),
            image: d.image.clone(),
            namespace: Some(key.namespace.clone()),
            env_process: d.env_process.clone(),
            env_vars: d.env_vars.clone(),
            constraints: d.constraints.clone(),
            secrets: d.secrets.clone(),
            labels: d.labels.clone(),
            annotations: d.annotations.clone(),
            limits: d.limits.clone(),
            requests: d.requests.clone(),
            read_only_root_filesystem: d.read_only_root_filesystem,
            invocation_count: 0.0,
            replicas: record.replicas,
            available_replicas: view.available,
            created_at: Some(humantime::format_rfc3339_seconds(record.created_at).to_string()),
            usage: None,
            bramble: Some(BrambleStatus {
                state: if view.state.is_empty() {
                    "starting".into()
                } else {
                    view.state
                },
                restarts: view.restarts,
                last_exit: view.last_exit,
                message: view.message,
            }),
        }
    }

    /// CPU (millicores over about the last minute, see [`cpu`]) and memory of a function's
    /// replicas in service.
    async fn usage_of(&self, key: &FunctionKey) -> FunctionUsage {
        let Some(handle) = self.handle(key) else {
            return FunctionUsage::default();
        };
        let containers = handle.status.borrow().containers.clone();
        let mut readings = Vec::with_capacity(containers.len());
        let mut memory = 0.0;
        for id in &containers {
            if let Ok(Some(u)) = self.ctx.runtime.usage(id).await {
                readings.push((id, u.cpu_ns));
                memory += u.memory_bytes as f64;
            }
        }
        let now = Instant::now();
        let samples = self
            .cpu
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let millicores = readings
            .iter()
            .filter_map(|(id, cpu_ns)| samples.millicores(id, now, *cpu_ns))
            .fold(0.0, |total, m| total + m);
        FunctionUsage {
            cpu: millicores,
            total_memory_bytes: memory,
        }
    }
}

impl Provider for LocalProvider {
    async fn list_functions(&self, namespace: &str) -> ProviderResult<Vec<FunctionStatus>> {
        self.require_namespace(namespace)?;
        let state = self.ctx.store.snapshot();
        Ok(state
            .functions
            .get(namespace)
            .map(|fns| {
                fns.iter()
                    .map(|(name, r)| self.status_of(&FunctionKey::new(name, namespace), r))
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn get_function(
        &self,
        name: &str,
        namespace: &str,
        usage: bool,
    ) -> ProviderResult<Option<FunctionStatus>> {
        self.require_namespace(namespace)?;
        let key = FunctionKey::new(name, namespace);
        let Some(record) = self.ctx.store.snapshot().function(name, namespace).cloned() else {
            return Ok(None);
        };
        let mut status = self.status_of(&key, &record);
        if usage {
            status.usage = Some(self.usage_of(&key).await);
        }
        Ok(Some(status))
    }

    async fn deploy(&self, request: FunctionDeployment) -> ProviderResult<()> {
        let namespace = self.namespace_of(request.namespace.as_deref());
        let key = FunctionKey::new(&request.service, &namespace);
        let _guard = self.locks.lock(&key.to_string()).await;
        if self
            .ctx
            .store
            .snapshot()
            .function(&key.name, &key.namespace)
            .is_some()
        {
            return Err(ProviderError::Conflict(format!(
                "function {key} already exists; update it with PUT"
            )));
        }
        let (key, deployment, image, grants) = self.check(request)?;
        let record = FunctionRecord {
            replicas: function::initial_replicas(&deployment),
            deployment,
            created_at: SystemTime::now(),
            generation: 1,
            previous: None,
        };
        // Refused for memory before anything is pulled or attached; checked again when saved.
        self.admit(&self.ctx.store.snapshot(), &key, &record, "limits.memory")?;
        self.fetch_image(&key, &image).await?;
        // Containers of an earlier function of the same name, deleted while bramble was down.
        if let Ok(containers) = self.ctx.runtime.list().await {
            for c in containers
                .iter()
                .filter(|c| c.labels.get(function::FUNCTION_LABEL) == Some(&key.to_string()))
            {
                self.ctx
                    .runtime
                    .delete(&c.id, Duration::ZERO)
                    .await
                    .map_err(|e| runtime_error("service", &e))?;
            }
        }
        let saved = record.clone();
        self.apply_hardware(&key, grants, None).await?;
        let persisted = self.ctx.store.update(|state| {
            if !state.namespaces.contains_key(&key.namespace) {
                return Err(ProviderError::invalid(
                    "namespace",
                    format!("namespace {} does not exist", key.namespace),
                ));
            }
            self.admit(state, &key, &saved, "limits.memory")?;
            state
                .functions
                .entry(key.namespace.clone())
                .or_default()
                .insert(key.name.clone(), saved);
            Ok(())
        });
        if let Err(e) = persisted {
            self.restore_hardware(&key, None).await;
            return Err(e);
        }
        tracing::info!(function = %key, image = %record.deployment.image, "deployed");
        let handle = supervisor::spawn(Arc::clone(&self.ctx), key.clone(), record, Vec::new());
        self.functions
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key, handle);
        Ok(())
    }

    async fn update(&self, request: FunctionDeployment) -> ProviderResult<()> {
        let namespace = self.namespace_of(request.namespace.as_deref());
        let key = FunctionKey::new(&request.service, &namespace);
        let _guard = self.locks.lock(&key.to_string()).await;
        let Some(current) = self
            .ctx
            .store
            .snapshot()
            .function(&key.name, &key.namespace)
            .cloned()
        else {
            return Err(ProviderError::NotFound(format!("function {key} not found")));
        };
        let (key, deployment, image, grants) = self.check(request)?;
        // Parsed when it was deployed; `None` if the annotations no longer parse.
        let previous = crate::triggers::hardware_grants(&current.deployment.annotations)
            .ok()
            .flatten();
        // The rollback target: what serves now — during an unfinished rollout, the record
        // that rollout would roll back to (the supervisor corrects this if it just finished).
        let serving = current
            .previous
            .clone()
            .unwrap_or_else(|| Box::new(current.settled()));
        let record = FunctionRecord {
            deployment,
            generation: current.generation + 1,
            previous: Some(serving),
            ..current
        };
        // Refused for memory before anything is pulled or attached; checked again when saved.
        self.admit(&self.ctx.store.snapshot(), &key, &record, "limits.memory")?;
        self.fetch_image(&key, &image).await?;
        let saved = record.clone();
        self.apply_hardware(&key, grants, previous.clone()).await?;
        let persisted = self.ctx.store.update(|state| {
            self.admit(state, &key, &saved, "limits.memory")?;
            match state
                .functions
                .get_mut(&key.namespace)
                .and_then(|f| f.get_mut(&key.name))
            {
                Some(existing) => *existing = saved,
                None => return Err(ProviderError::NotFound(format!("function {key} not found"))),
            }
            Ok(())
        });
        if let Err(e) = persisted {
            self.restore_hardware(&key, previous).await;
            return Err(e);
        }
        tracing::info!(function = %key, image = %record.deployment.image, generation = record.generation, "updating");
        if let Some(handle) = self.handle(&key) {
            let _ = handle.commands.send(Command::Update(Box::new(record)));
        }
        Ok(())
    }

    async fn delete(&self, name: &str, namespace: &str) -> ProviderResult<()> {
        let key = FunctionKey::new(name, namespace);
        let _guard = self.locks.lock(&key.to_string()).await;
        self.ctx.store.update(|state| {
            match state
                .functions
                .get_mut(namespace)
                .and_then(|f| f.remove(name))
            {
                Some(_) => Ok(()),
                None => Err(ProviderError::NotFound(format!("function {key} not found"))),
            }
        })?;
        let handle = self
            .functions
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&key);
        if let Some(handle) = handle {
            let (done, finished) = oneshot::channel();
            let _ = handle.commands.send(Command::Delete(done));
            let _ = finished.await;
        }
        // After the replicas are gone: outputs to their safe level, lines released.
        self.ctx.hardware.detach(&key.to_string()).await;
        tracing::info!(function = %key, "deleted");
        Ok(())
    }

    async fn scale(&self, name: &str, namespace: &str, replicas: u64) -> ProviderResult<()> {
        if replicas > function::MAX_REPLICAS {
            return Err(ProviderError::invalid(
                "replicas",
                format!("at most {} replicas per function", function::MAX_REPLICAS),
            ));
        }
        let key = FunctionKey::new(name, namespace);
        let _guard = self.locks.lock(&key.to_string()).await;
        self.ctx.store.update(|state| {
            let Some(current) = state.function(name, namespace) else {
                return Err(ProviderError::NotFound(format!("function {key} not found")));
            };
            let scaled = FunctionRecord {
                replicas,
                ..current.clone()
            };
            self.admit(state, &key, &scaled, "replicas")?;
            if let Some(record) = state
                .functions
                .get_mut(namespace)
                .and_then(|f| f.get_mut(name))
            {
                record.replicas = replicas;
            }
            Ok(())
        })?;
        if let Some(handle) = self.handle(&key) {
            let _ = handle.commands.send(Command::Scale(replicas));
        }
        Ok(())
    }

    async fn list_namespaces(&self) -> ProviderResult<Vec<String>> {
        let state = self.ctx.store.snapshot();
        let default = &self.settings.default_namespace;
        let mut names: Vec<String> = vec![default.clone()];
        names.extend(state.namespaces.keys().filter(|n| *n != default).cloned());
        Ok(names)
    }

    async fn get_namespace(&self, name: &str) -> ProviderResult<Option<FunctionNamespace>> {
        Ok(self
            .ctx
            .store
            .snapshot()
            .namespaces
            .get(name)
            .map(|r| FunctionNamespace {
                name: name.to_owned(),
                labels: r.labels.clone(),
                annotations: r.annotations.clone(),
            }))
    }

    async fn create_namespace(&self, namespace: FunctionNamespace) -> ProviderResult<()> {
        self.ctx.store.update(|state| {
            if state.namespaces.contains_key(&namespace.name) {
                return Err(ProviderError::Conflict(format!(
                    "namespace {} already exists",
                    namespace.name
                )));
            }
            state.namespaces.insert(
                namespace.name.clone(),
                NamespaceRecord {
                    labels: namespace.labels.clone(),
                    annotations: namespace.annotations.clone(),
                },
            );
            Ok(())
        })
    }

    async fn update_namespace(&self, namespace: FunctionNamespace) -> ProviderResult<()> {
        self.ctx
            .store
            .update(|state| match state.namespaces.get_mut(&namespace.name) {
                Some(record) => {
                    record.labels = namespace.labels.clone();
                    record.annotations = namespace.annotations.clone();
                    Ok(())
                }
                None => Err(ProviderError::NotFound(format!(
                    "namespace {} not found",
                    namespace.name
                ))),
            })
    }

    async fn delete_namespace(&self, name: &str) -> ProviderResult<()> {
        if name == self.settings.default_namespace {
            return Err(ProviderError::invalid(
                "name",
                format!("the default namespace {name} cannot be deleted"),
            ));
        }
        self.ctx.store.update(|state| {
            if !state.namespaces.contains_key(name) {
                return Err(ProviderError::NotFound(format!(
                    "namespace {name} not found"
                )));
            }
            if let Some(functions) = state.functions.get(name).filter(|f| !f.is_empty()) {
                let names: Vec<&str> = functions.keys().map(String::as_str).collect();
                return Err(ProviderError::Conflict(format!(
                    "namespace {name} still has functions: {}",
                    names.join(", ")
                )));
            }
            state.namespaces.remove(name);
            state.functions.remove(name);
            Ok(())
        })?;
        for secret in self.ctx.store.list_secrets(name)? {
            self.ctx.store.delete_secret(name, &secret)?;
        }
        Ok(())
    }

    async fn list_secrets(&self, namespace: &str) -> ProviderResult<Vec<Secret>> {
        self.require_namespace(namespace)?;
        Ok(self
            .ctx
            .store
            .list_secrets(namespace)?
            .into_iter()
            .map(|name| Secret {
                name,
                namespace: Some(namespace.to_owned()),
                value: None,
                raw_value: None,
            })
            .collect())
    }

    async fn put_secret(&self, secret: Secret) -> ProviderResult<()> {
        let namespace = self.namespace_of(secret.namespace.as_deref());
        self.require_namespace(&namespace)?;
        let value = match (&secret.value, &secret.raw_value) {
            (_, Some(raw)) => raw.clone(),
            (Some(text), None) => text.as_bytes().to_vec(),
            (None, None) => {
                return Err(ProviderError::invalid(
                    "value",
                    "a secret needs a value or a rawValue",
                ));
            }
        };
        self.ctx
            .store
            .put_secret(&namespace, &secret.name, &value)?;
        Ok(())
    }

    async fn delete_secret(&self, name: &str, namespace: &str) -> ProviderResult<()> {
        self.require_namespace(namespace)?;
        let users: Vec<String> = self
            .ctx
            .store
            .snapshot()
            .functions
            .get(namespace)
            .map(|f| {
                f.iter()
                    .filter(|(_, r)| r.deployment.secrets.iter().any(|s| s == name))
                    .map(|(n, _)| n.clone())
                    .collect()
            })
            .unwrap_or_default();
        if !users.is_empty() {
            return Err(ProviderError::Conflict(format!(
                "secret {name} is used by: {}",
                users.join(", ")
            )));
        }
        if self.ctx.store.delete_secret(namespace, name)? {
            Ok(())
        } else {
            Err(ProviderError::NotFound(format!(
                "secret {name} not found in namespace {namespace}"
            )))
        }
    }

    async fn logs(&self, request: LogRequest) -> ProviderResult<LogStream> {
        self.require_namespace(&request.namespace)?;
        let key = FunctionKey::new(&request.name, &request.namespace);
        if self
            .ctx
            .store
            .snapshot()
            .function(&key.name, &key.namespace)
            .is_none()
        {
            return Err(ProviderError::NotFound(format!("function {key} not found")));
        }
        let buffer = self.ctx.runtime.logs().buffer(&key.to_string());
        let instance = request.instance.clone();
        let to_message = {
            move |line: bramble_runtime::logs::LogLine| -> Option<LogMessage> {
                if instance.as_ref().is_some_and(|i| *i != line.container) {
                    return None;
                }
                Some(LogMessage {
                    name: key.name.clone(),
                    namespace: key.namespace.clone(),
                    instance: line.container,
                    timestamp: humantime::format_rfc3339_nanos(line.time).to_string(),
                    text: line.text,
                })
            }
        };
        if !request.follow {
            let lines: Vec<LogMessage> = buffer
                .read(request.since, request.tail)
                .into_iter()
                .filter_map(to_message)
                .collect();
            return Ok(Box::pin(futures::stream::iter(lines)));
        }
        let (past, live) = buffer.follow(request.since, request.tail);
        let past_messages: Vec<LogMessage> =
            past.into_iter().filter_map(to_message.clone()).collect();
        let live =
            tokio_stream_from(live).filter_map(move |line| std::future::ready(to_message(line)));
        Ok(Box::pin(futures::stream::iter(past_messages).chain(live)))
    }

    async fn list_images(&self) -> ProviderResult<Vec<ImageSummary>> {
        let images = self.ctx.runtime.images();
        let mut out = Vec::new();
        for summary in images.list().await.map_err(|e| runtime_error("name", &e))? {
            // The size of what this board runs: the layers of its platform's manifest.
            let size = match images.get(&summary.name).await {
                Ok(Some(image)) => image.size,
                _ => u64::try_from(summary.size).unwrap_or(0),
            };
            out.push(ImageSummary {
                name: summary.name,
                digest: summary.target_digest,
                size,
            });
        }
        Ok(out)
    }

    async fn import_images(
        &self,
        archive: &std::path::Path,
        name: Option<&str>,
    ) -> ProviderResult<Vec<String>> {
        let rename = name
            .map(ImageRef::parse)
            .transpose()
            .map_err(|e| ProviderError::invalid("name", e.to_string()))?;
        let progress = |p: bramble_runtime::image::Progress| tracing::info!(?p, "import");
        let images = self
            .ctx
            .runtime
            .images()
            .import(archive, rename.as_ref(), &progress)
            .await
            .map_err(|e| match e {
                RuntimeError::Archive { .. } | RuntimeError::Io { .. } => {
                    ProviderError::invalid("archive", e.chain())
                }
                other => runtime_error("archive", &other),
            })?;
        let names: Vec<String> = images.iter().map(|i| i.name.clone()).collect();
        tracing::info!(?names, "images imported");
        Ok(names)
    }

    async fn remove_image(&self, name: &str) -> ProviderResult<()> {
        let image = ImageRef::parse(name)
            .map_err(|e| ProviderError::invalid("name", e.to_string()))?
            .to_string();
        let users: Vec<String> = self
            .ctx
            .store
            .snapshot()
            .all_functions()
            .filter(|(_, _, r)| r.deployment.image == image)
            .map(|(ns, n, _)| format!("{n}.{ns}"))
            .collect();
        if !users.is_empty() {
            return Err(ProviderError::Conflict(format!(
                "image {image} is used by: {}",
                users.join(", ")
            )));
        }
        self.ctx
            .runtime
            .images()
            .remove(&image)
            .await
            .map_err(|e| runtime_error("name", &e))
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
        let key = FunctionKey::new(name, namespace);
        let handle = match self.handle(&key) {
            Some(handle) => handle,
            None => {
                let known = self
                    .ctx
                    .store
                    .snapshot()
                    .function(name, namespace)
                    .is_some();
                if !known {
                    return Err(ProviderError::NotFound(format!("function {key} not found")));
                }
                // Deployed, but the node is still adopting its functions after a start.
                if !self.wait_started(wait).await {
                    return Err(ProviderError::Timeout(format!(
                        "function {key} is not started yet"
                    )));
                }
                self.handle(&key)
                    .ok_or_else(|| ProviderError::NotFound(format!("function {key} not found")))?
            }
        };
        if let Some((addr, guard)) = handle.route.pick() {
            return Ok(Endpoint {
                addr,
                timeout: handle.route.timeout(),
                in_flight: Some(Box::new(guard)),
            });
        }
        let mut status = handle.status.clone();
        let failed_before = status.borrow_and_update().unavailable_starts;
        let _ = handle.commands.send(Command::Wake);
        // Wait for a ready replica — unless starting one fails because containerd cannot be
        // reached: that is a 503 now, not after the whole ready timeout.
        let ready = tokio::select! {
            ready = handle.route.wait_ready(wait) => ready,
            Ok(view) = status.wait_for(|v| v.unavailable_starts > failed_before) => {
                let reason = view.message.clone().unwrap_or_default();
                return Err(ProviderError::Unavailable(format!(
                    "function {key} cannot be started: {reason}"
                )));
            }
        };
        if ready && let Some((addr, guard)) = handle.route.pick() {
            return Ok(Endpoint {
                addr,
                timeout: handle.route.timeout(),
                in_flight: Some(Box::new(guard)),
            });
        }
        let view = handle.status.borrow().clone();
        let detail = match (&view.message, &view.last_exit) {
            (Some(message), _) => format!(": {message}"),
            (None, Some(exit)) => format!(" (last exit: {exit}, {} restarts)", view.restarts),
            (None, None) => String::new(),
        };
        let message = format!(
            "function {key} is not ready after {wait:?}: {}{detail}",
            view.state
        );
        Err(if view.state == "crash-looping" {
            ProviderError::Unavailable(message)
        } else {
            ProviderError::Timeout(message)
        })
    }

    async fn usage(&self) -> HashMap<(String, String), UsageSample> {
        let mut out: HashMap<(String, String), UsageSample> = HashMap::new();
        for (key, _, _) in self
            .ctx
            .store
            .snapshot()
            .all_functions()
            .map(|(ns, name, r)| (FunctionKey::new(name, ns), r.replicas, ()))
        {
            out.insert((key.name, key.namespace), UsageSample::default());
        }
        let Ok(all) = self.ctx.runtime.usage_all().await else {
            return out;
        };
        for (id, usage) in all {
            let Some((key, _, _)) = FunctionKey::parse_container_id(&id) else {
                continue;
            };
            let sample = out.entry((key.name, key.namespace)).or_default();
            sample.cpu_seconds_total += usage.cpu_ns as f64 / 1e9;
            sample.memory_bytes += usage.memory_bytes as f64;
            sample.replicas += 1;
        }
        out
    }
}

/// A broadcast receiver as a stream; lagging followers skip what they missed.
fn tokio_stream_from<T: Clone + Send + 'static>(
    receiver: tokio::sync::broadcast::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::unfold(receiver, |mut receiver| async move {
        loop {
            match receiver.recv().await {
                Ok(item) => return Some((item, receiver)),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}
