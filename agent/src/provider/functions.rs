//! Functions: deploy, update, delete and scale — each checked, then persisted, then handed to
//! the function's supervisor — their status, and admission against the memory budget.
//!
//! Deploys and updates are checked against the memory budget before their image is pulled or
//! their hardware attached (and again when they are saved), then pull the image before
//! anything is persisted, so a bad or foreign image is refused with the registry's or the
//! platform check's message. An update is saved together with the record it replaces, so that
//! its rollout can be resumed — and rolled back — after a crash.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use bramble_gateway::provider::{ProviderError, ProviderResult, UsageSample};
use bramble_gateway::types::{BrambleStatus, FunctionDeployment, FunctionStatus, FunctionUsage};
use bramble_runtime::image::reference::ImageRef;
use tokio::sync::{oneshot, watch};

/// Time allowed beyond grace and timeout for a deleted function's replicas to go.
const DELETE_SLACK: Duration = Duration::from_secs(10);

use super::{Deleting, LocalProvider, hardware_error, mib, runtime_error};
use crate::function::{self, FunctionKey};
use crate::runtime::NodeRuntime;
use crate::store::{FunctionRecord, State};
use crate::supervisor::{self, Command};
use bramble_hardware::Grants;

impl<R: NodeRuntime> LocalProvider<R> {
    /// Checks a deployment (settings, secrets, hardware grants and triggers) without side
    /// effects, and returns it with its image reference normalised and the hardware it asks
    /// for. [`Self::fetch_image`] then makes the image present.
    async fn check(
        &self,
        mut request: FunctionDeployment,
    ) -> ProviderResult<(FunctionKey, FunctionDeployment, ImageRef, Option<Grants>)> {
        let namespace = self.namespace_of(request.namespace.as_deref());
        self.require_namespace(&namespace)?;
        request.namespace = Some(namespace.clone());
        let (image, grants) = function::check_deployment(&request)?;
        for (i, secret) in request.secrets.iter().enumerate() {
            if !self.ctx.store.has_secret(&namespace, secret).await {
                return Err(ProviderError::invalid(
                    format!("secrets[{i}]"),
                    format!(
                        "secret {secret} does not exist in namespace {namespace}; create it first"
                    ),
                ));
            }
        }
        let key = FunctionKey::new(&request.service, &namespace);
        if let Some(grants) = &grants {
            // A deleted function keeps its lines until its replicas are gone.
            self.wait_hardware_released().await?;
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
    async fn fetch_image(&self, image: &ImageRef) -> ProviderResult<()> {
        self.ctx
            .runtime
            .ensure_image(image, self.settings.pull_policy)
            .await
            .map_err(|e| runtime_error("image", &e))
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
                    tracing::error!(function = %key, error = %bramble_base::error_chain(&e), "cannot restore the function's hardware");
                }
            }
            None => self.ctx.hardware.detach(&function).await,
        }
    }

    /// Admission: refuses a function (new, updated or rescaled) whose memory would take the
    /// functions of this board beyond the budget, with the numbers.
    fn admit(
        &self,
        state: &State,
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
            replicas: record.replicas,
            available_replicas: view.available,
            created_at: Some(humantime::format_rfc3339_seconds(record.created_at).to_string()),
            bramble: Some(BrambleStatus {
                state: view.state,
                restarts: view.restarts,
                last_exit: view.last_exit,
                message: view.message,
                replicas: Vec::new(),
            }),
            ..FunctionStatus::of_deployment(&key.name, &key.namespace, d)
        }
    }

    /// CPU (millicores over about the last minute, see [`super::cpu`]) and memory of a
    /// function's replicas in service.
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
        let samples = self.cpu.lock().unwrap_or_else(PoisonError::into_inner);
        let millicores = readings
            .iter()
            .filter_map(|(id, cpu_ns)| samples.millicores(id, now, *cpu_ns))
            .fold(0.0, |total, m| total + m);
        FunctionUsage {
            cpu: millicores,
            total_memory_bytes: memory,
        }
    }

    pub(super) fn list_function_statuses(
        &self,
        namespace: &str,
    ) -> ProviderResult<Vec<FunctionStatus>> {
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

    pub(super) async fn function_status(
        &self,
        name: &str,
        namespace: &str,
        usage: bool,
    ) -> ProviderResult<Option<FunctionStatus>> {
        self.require_namespace(namespace)?;
        let key = FunctionKey::new(name, namespace);
        let state = self.ctx.store.snapshot();
        let Some(record) = state.function(name, namespace) else {
            return Ok(None);
        };
        let mut status = self.status_of(&key, record);
        if usage {
            status.usage = Some(self.usage_of(&key).await);
        }
        Ok(Some(status))
    }

    pub(super) async fn deploy_function(&self, request: FunctionDeployment) -> ProviderResult<()> {
        let namespace = self.namespace_of(request.namespace.as_deref());
        let key = FunctionKey::new(&request.service, &namespace);
        let _guard = self.locks.lock(&key.to_string()).await;
        self.wait_deleted(&key).await?;
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
        let (key, deployment, image, grants) = self.check(request).await?;
        let record = FunctionRecord {
            replicas: function::initial_replicas(&deployment),
            deployment,
            created_at: SystemTime::now(),
            generation: 1,
            previous: None,
        };
        // Refused for memory before anything is pulled or attached; checked again when saved.
        self.admit(&self.ctx.store.snapshot(), &key, &record, "limits.memory")?;
        self.fetch_image(&image).await?;
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
        let persisted = self
            .ctx
            .store
            .update(|state| {
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
            })
            .await;
        if let Err(e) = persisted {
            self.restore_hardware(&key, None).await;
            return Err(e);
        }
        tracing::info!(function = %key, image = %record.deployment.image, "deployed");
        let handle = supervisor::spawn(Arc::clone(&self.ctx), key.clone(), record, Vec::new());
        self.functions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, handle);
        Ok(())
    }

    pub(super) async fn update_function(&self, request: FunctionDeployment) -> ProviderResult<()> {
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
        let (key, deployment, image, grants) = self.check(request).await?;
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
        self.fetch_image(&image).await?;
        let saved = record.clone();
        self.apply_hardware(&key, grants, previous.clone()).await?;
        let persisted = self
            .ctx
            .store
            .update(|state| {
                self.admit(state, &key, &saved, "limits.memory")?;
                match state
                    .functions
                    .get_mut(&key.namespace)
                    .and_then(|f| f.get_mut(&key.name))
                {
                    Some(existing) => *existing = saved,
                    None => {
                        return Err(ProviderError::NotFound(format!("function {key} not found")));
                    }
                }
                Ok(())
            })
            .await;
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

    pub(super) async fn delete_function(&self, name: &str, namespace: &str) -> ProviderResult<()> {
        let key = FunctionKey::new(name, namespace);
        let _guard = self.locks.lock(&key.to_string()).await;
        self.ctx
            .store
            .update(|state| {
                match state
                    .functions
                    .get_mut(namespace)
                    .and_then(|f| f.remove(name))
                {
                    Some(_) => Ok(()),
                    None => Err(ProviderError::NotFound(format!("function {key} not found"))),
                }
            })
            .await?;
        let handle = self
            .functions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key);
        // The answer does not wait for the replicas: they finish their requests and stop with
        // their grace period in the background (a deploy of the same name waits for that).
        let (finished, gone) = watch::channel(false);
        let hardware = self.ctx.hardware.mount_of(&key.to_string()).is_some();
        {
            let mut deleting = self.deleting.lock().unwrap_or_else(PoisonError::into_inner);
            deleting.retain(|_, d| !*d.gone.borrow());
            deleting.insert(key.clone(), Deleting { gone, hardware });
        }
        let hardware = std::sync::Arc::clone(&self.ctx.hardware);
        tokio::spawn(async move {
            if let Some(handle) = handle {
                let (done, stopped) = oneshot::channel();
                let _ = handle.commands.send(Command::Delete(done));
                let _ = stopped.await;
            }
            // After the replicas are gone: outputs to their safe level, lines released.
            hardware.detach(&key.to_string()).await;
            tracing::info!(function = %key, "deleted; its replicas are gone");
            finished.send_replace(true);
        });
        Ok(())
    }

    pub(super) async fn scale_function(
        &self,
        name: &str,
        namespace: &str,
        replicas: u64,
    ) -> ProviderResult<()> {
        if replicas > function::MAX_REPLICAS {
            return Err(ProviderError::invalid(
                "replicas",
                format!("at most {} replicas per function", function::MAX_REPLICAS),
            ));
        }
        let key = FunctionKey::new(name, namespace);
        let _guard = self.locks.lock(&key.to_string()).await;
        self.ctx
            .store
            .update(|state| {
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
            })
            .await?;
        if let Some(handle) = self.handle(&key) {
            let _ = handle.commands.send(Command::Scale(replicas));
        }
        Ok(())
    }

    /// Waits until the replicas of a deleted function of this name are gone (a deploy right
    /// after a delete is queued behind it, never mixed with it).
    async fn wait_deleted(&self, key: &FunctionKey) -> ProviderResult<()> {
        let deleting = self
            .deleting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned();
        match deleting {
            Some(deleting) => self.wait_gone(key, deleting).await,
            None => Ok(()),
        }
    }

    /// Waits until every deleted function that held hardware has released it (a function
    /// deployed right after the delete of another that had its lines gets them then).
    async fn wait_hardware_released(&self) -> ProviderResult<()> {
        let holding: Vec<(FunctionKey, Deleting)> = self
            .deleting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, d)| d.hardware && !*d.gone.borrow())
            .map(|(k, d)| (k.clone(), d.clone()))
            .collect();
        for (key, deleting) in holding {
            self.wait_gone(&key, deleting).await?;
        }
        Ok(())
    }

    async fn wait_gone(&self, key: &FunctionKey, mut deleting: Deleting) -> ProviderResult<()> {
        // Each replica gets its grace period; the drain before it is bounded by the timeout.
        let patience = self.settings.stop_grace + self.settings.defaults.timeout + DELETE_SLACK;
        match tokio::time::timeout(patience, deleting.gone.wait_for(|done| *done)).await {
            Ok(_) => {
                let mut deleting = self.deleting.lock().unwrap_or_else(PoisonError::into_inner);
                if deleting.get(key).is_some_and(|d| *d.gone.borrow()) {
                    deleting.remove(key);
                }
                Ok(())
            }
            Err(_) => Err(ProviderError::Conflict(format!(
                "function {key} was deleted and its replicas are still stopping after {}; retry when they are gone",
                humantime::format_duration(patience)
            ))),
        }
    }

    /// CPU time, memory and replicas of every function, for `/metrics`.
    pub(super) async fn usage_samples(&self) -> HashMap<(String, String), UsageSample> {
        let mut out: HashMap<(String, String), UsageSample> = self
            .ctx
            .store
            .snapshot()
            .all_functions()
            .map(|(ns, name, _)| ((name.to_owned(), ns.to_owned()), UsageSample::default()))
            .collect();
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
