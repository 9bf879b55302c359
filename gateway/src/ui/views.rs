//! What each dashboard event holds, read from the provider and the gateway's metrics.

use std::collections::HashMap;
use std::time::Instant;

use crate::gateway::Shared;
use crate::provider::{Provider, ProviderResult, UsageSample};
use crate::types::FunctionStatus;

use super::model::{FunctionSummary, FunctionView, Invocations, NodeInfo, Overview};
use super::stats::{CpuRate, p50_ms};

/// Usage readings of the functions, `(name, namespace)` → sample.
pub(crate) type Usage = HashMap<(String, String), UsageSample>;

/// What a page keeps between two reads: CPU needs the previous reading.
#[derive(Debug, Default)]
pub(crate) struct Memory {
    cpu: CpuRate,
    usage: Usage,
    usage_at: Option<Instant>,
}

impl Memory {
    /// Reads the usage of every function when the last reading is older than `every`.
    pub(crate) async fn refresh_usage<P: Provider>(
        &mut self,
        shared: &Shared<P>,
        every: std::time::Duration,
    ) {
        let now = Instant::now();
        if self
            .usage_at
            .is_some_and(|at| now.duration_since(at) < every)
        {
            return;
        }
        self.usage = shared.provider.usage().await;
        self.usage_at = Some(now);
        let mut seen = Vec::with_capacity(self.usage.len());
        for ((name, namespace), sample) in &self.usage {
            let key = format!("{name}.{namespace}");
            self.cpu.update(&key, now, sample.cpu_seconds_total);
            seen.push(key);
        }
        self.cpu.retain(|f| seen.iter().any(|s| s == f));
    }

    fn millicores(&self, function: &str) -> Option<f64> {
        self.cpu.rate(function)
    }
}

/// The summary of a function from its status, the metrics and the usage readings.
pub(crate) fn summary<P: Provider>(
    shared: &Shared<P>,
    memory: &Memory,
    status: &FunctionStatus,
    namespace: &str,
) -> FunctionSummary {
    let key = format!("{}.{namespace}", status.name);
    let counters = shared.metrics.summary(&key);
    let bramble = status.bramble.clone().unwrap_or_default();
    let usage = memory
        .usage
        .get(&(status.name.clone(), namespace.to_owned()));
    FunctionSummary {
        name: status.name.clone(),
        namespace: namespace.to_owned(),
        image: status.image.clone(),
        state: bramble.state,
        replicas: status.replicas,
        available: status.available_replicas,
        restarts: bramble.restarts,
        last_exit: bramble.last_exit,
        message: bramble.message,
        invocations: counters.invocations,
        errors: counters.errors,
        p50_ms: p50_ms(&counters.buckets),
        memory_bytes: usage.map(|u| u.memory_bytes),
        cpu_millis: usage.and_then(|_| memory.millicores(&key)),
    }
}

/// The overview: this node, every function of every namespace, the boards.
pub(crate) async fn overview<P: Provider>(shared: &Shared<P>, memory: &Memory) -> Overview {
    let health = shared.provider.health().await;
    let mut functions = Vec::new();
    let namespaces = shared.provider.list_namespaces().await.unwrap_or_default();
    for namespace in namespaces {
        let Ok(statuses) = shared.provider.list_functions(&namespace).await else {
            continue;
        };
        for status in &statuses {
            functions.push(summary(shared, memory, status, &namespace));
        }
    }
    functions.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Overview {
        node: NodeInfo {
            name: shared.hostname.clone(),
            arch: shared.arch.clone(),
            version: shared.config.version.release.clone(),
            healthy: health.is_ok(),
            problem: health.err(),
        },
        functions,
        boards: shared.provider.boards().await,
    }
}

/// A function's page; `Ok(None)` once it is gone.
pub(crate) async fn function<P: Provider>(
    shared: &Shared<P>,
    memory: &Memory,
    name: &str,
    namespace: &str,
) -> ProviderResult<Option<FunctionView>> {
    let Some(mut status) = shared.provider.get_function(name, namespace, true).await? else {
        return Ok(None);
    };
    status.namespace.get_or_insert_with(|| namespace.to_owned());
    let summary = summary(shared, memory, &status, namespace);
    status.invocation_count = summary.invocations as f64;
    // CPU over the last seconds rather than the minute OpenFaaS reports, like the overview.
    if let (Some(usage), Some(cpu)) = (status.usage.as_mut(), summary.cpu_millis) {
        usage.cpu = cpu;
    }
    let replicas = shared.provider.replicas(name, namespace).await;
    Ok(Some(FunctionView {
        status,
        summary,
        replicas,
    }))
}

/// A function's latest invocations.
pub(crate) fn invocations<P: Provider>(shared: &Shared<P>, function: &str) -> Invocations {
    let (total, recent) = shared.metrics.recent(function);
    Invocations { total, recent }
}
