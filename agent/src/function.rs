//! A function as the agent sees it: its key, the container ids of its replicas, and the
//! translation of an OpenFaaS deployment into a runtime [`ContainerSpec`].
//!
//! Container ids are `<name>.<namespace>-<generation>-<replica>`. Function and namespace names
//! are DNS labels (no dots), so an id parses back into its function without any lookup table,
//! and `ctr -n openfaas-fn c ls` stays readable.

use std::collections::BTreeMap;
use std::time::Duration;

use bramble_gateway::provider::ProviderError;
use bramble_gateway::types::FunctionDeployment;
use bramble_gateway::validate;
use bramble_runtime::image::reference::ImageRef;
use bramble_runtime::{ContainerSpec, Limits, Secret};

use crate::store::{FunctionRecord, Store};

/// Labels bramble puts on function containers.
pub const FUNCTION_LABEL: &str = "io.bramble.function";
pub const GENERATION_LABEL: &str = "io.bramble.generation";
pub const REPLICA_LABEL: &str = "io.bramble.replica";
/// faasd's prefix for annotations stored as container labels.
pub const ANNOTATION_PREFIX: &str = "com.openfaas.annotations.";

/// Per-function upstream timeout (`90s`, `5m`).
pub const TIMEOUT_ANNOTATION: &str = "bramble.timeout";
/// OpenFaaS Pro's idle scale-to-zero switch and idle time (labels or annotations).
pub const SCALE_ZERO: &str = "com.openfaas.scale.zero";
pub const SCALE_ZERO_DURATION: &str = "com.openfaas.scale.zero-duration";
/// OpenFaaS's minimum replicas label: the replicas a new deployment starts with.
pub const SCALE_MIN: &str = "com.openfaas.scale.min";
/// Most replicas one function may have on one board.
pub const MAX_REPLICAS: u64 = 8;
/// Container slots of one generation of a function: its replicas, and as many again for
/// replicas that are still stopping (a replica wanted meanwhile never waits for one).
pub const MAX_SLOTS: u64 = 2 * MAX_REPLICAS;

/// Longest period bramble accepts for a timeout, an idle time or a schedule (a year): a
/// longer one means "never" in practice, and one long enough would overflow a timer.
pub const MAX_PERIOD: Duration = Duration::from_secs(365 * 24 * 3600);

/// Identifies a function: name and namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FunctionKey {
    pub name: String,
    pub namespace: String,
}

impl FunctionKey {
    pub fn new(name: &str, namespace: &str) -> Self {
        Self {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
        }
    }

    /// The id of replica `replica` of generation `generation`.
    pub fn container_id(&self, generation: u64, replica: u64) -> String {
        format!("{}.{}-{generation}-{replica}", self.name, self.namespace)
    }

    /// Parses a container id back into (function, generation, replica).
    pub fn parse_container_id(id: &str) -> Option<(FunctionKey, u64, u64)> {
        let (name, rest) = id.split_once('.')?;
        let mut parts = rest.rsplitn(3, '-');
        let replica = parts.next()?.parse().ok()?;
        let generation = parts.next()?.parse().ok()?;
        let namespace = parts.next()?;
        if name.is_empty() || namespace.is_empty() {
            return None;
        }
        Some((FunctionKey::new(name, namespace), generation, replica))
    }
}

impl std::fmt::Display for FunctionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.name, self.namespace)
    }
}

/// Node-wide defaults that shape every function.
#[derive(Clone, Debug)]
pub struct Defaults {
    pub memory_bytes: Option<u64>,
    pub cpu_millis: Option<u64>,
    pub pids: u64,
    pub timeout: Duration,
}

/// A label or annotation of the deployment (annotations win).
pub fn setting<'a>(deployment: &'a FunctionDeployment, key: &str) -> Option<&'a str> {
    deployment
        .annotations
        .get(key)
        .or_else(|| deployment.labels.get(key))
        .map(String::as_str)
}

/// The function's upstream timeout.
pub fn timeout(deployment: &FunctionDeployment, defaults: &Defaults) -> Duration {
    setting(deployment, TIMEOUT_ANNOTATION)
        .and_then(|t| humantime::parse_duration(t).ok())
        .unwrap_or(defaults.timeout)
        .min(MAX_PERIOD)
}

/// Idle time after which the function is scaled to zero, when it asked for it.
pub fn scale_to_zero_after(deployment: &FunctionDeployment) -> Option<Duration> {
    let enabled =
        setting(deployment, SCALE_ZERO).is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    enabled.then(|| {
        setting(deployment, SCALE_ZERO_DURATION)
            .and_then(|d| humantime::parse_duration(d).ok())
            .unwrap_or(Duration::from_secs(15 * 60))
            .min(MAX_PERIOD)
    })
}

/// Replicas a new deployment starts with (`com.openfaas.scale.min`, default 1).
pub fn initial_replicas(deployment: &FunctionDeployment) -> u64 {
    setting(deployment, SCALE_MIN)
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .min(MAX_REPLICAS)
}

/// Checks what a deployment says by itself, without looking at the node (settings, image name,
/// triggers, hardware grants): the checks of a single board and of a cluster alike. Returns
/// the parsed image and grants.
pub fn check_deployment(
    deployment: &FunctionDeployment,
) -> Result<(ImageRef, Option<bramble_hardware::Grants>), ProviderError> {
    validate_settings(deployment)
        .map_err(|(field, message)| ProviderError::invalid(field, message))?;
    let image = ImageRef::parse(&deployment.image)
        .map_err(|e| ProviderError::invalid("image", e.to_string()))?;
    crate::triggers::parse(&deployment.annotations)
        .map_err(|e| ProviderError::invalid("annotations", e.to_string()))?;
    let grants = crate::triggers::hardware_grants(&deployment.annotations)
        .map_err(|e| ProviderError::invalid("annotations", e.to_string()))?;
    Ok((image, grants))
}

/// Checks the parts of a deployment the gateway cannot: settings only bramble reads.
/// Returns the offending field and why.
pub fn validate_settings(deployment: &FunctionDeployment) -> Result<(), (String, String)> {
    for (key, what) in [
        (TIMEOUT_ANNOTATION, "a duration such as \"90s\""),
        (SCALE_ZERO_DURATION, "a duration such as \"15m\""),
    ] {
        if let Some(value) = setting(deployment, key) {
            match humantime::parse_duration(value) {
                Ok(d) if !d.is_zero() && d <= MAX_PERIOD => {}
                _ => {
                    return Err((
                        format!("annotations.{key}"),
                        format!(
                            "{value:?} is not {what} (more than 0, at most {})",
                            humantime::format_duration(MAX_PERIOD)
                        ),
                    ));
                }
            }
        }
    }
    if let Some(value) = setting(deployment, SCALE_MIN) {
        match value.parse::<u64>() {
            Ok(n) if n <= MAX_REPLICAS => {}
            _ => {
                return Err((
                    format!("labels.{SCALE_MIN}"),
                    format!("{value:?} is not a number of replicas from 0 to {MAX_REPLICAS}"),
                ));
            }
        }
    }
    for (key, value) in &deployment.annotations {
        if deployment
            .labels
            .contains_key(&format!("{ANNOTATION_PREFIX}{key}"))
            || key.is_empty()
            || value.contains('\0')
        {
            return Err((
                format!("annotations.{key}"),
                "clashes with a label or is not valid".into(),
            ));
        }
    }
    Ok(())
}

/// A memory or CPU quantity of `limits`/`requests`, if set.
fn quantity(
    resources: &Option<bramble_gateway::types::FunctionResources>,
    memory: bool,
) -> Option<String> {
    resources
        .as_ref()
        .and_then(|r| {
            if memory {
                r.memory.clone()
            } else {
                r.cpu.clone()
            }
        })
        .filter(|q| !q.is_empty())
}

/// The memory limit of each replica: the deployment's, or the node's default.
pub fn memory_limit(deployment: &FunctionDeployment, defaults: &Defaults) -> Option<u64> {
    quantity(&deployment.limits, true)
        .and_then(|q| validate::parse_memory(&q).ok())
        .or(defaults.memory_bytes)
}

/// Memory a function reserves against the node's budget: one limit per replica, and at least
/// one replica even when scaled to zero, so a request can always wake it.
pub fn memory_reservation(record: &FunctionRecord, defaults: &Defaults) -> u64 {
    memory_limit(&record.deployment, defaults)
        .unwrap_or(0)
        .saturating_mul(record.replicas.max(1))
}

/// The container of replica `replica` of a function's current generation.
pub fn container_spec(
    key: &FunctionKey,
    record: &FunctionRecord,
    replica: u64,
    store: &Store,
    defaults: &Defaults,
    mounts: Vec<bramble_runtime::BindMount>,
) -> ContainerSpec {
    let d = &record.deployment;
    let mut env: Vec<(String, String)> = Vec::new();
    if let Some(process) = d.env_process.as_deref().filter(|p| !p.is_empty()) {
        env.push(("fprocess".into(), process.into()));
    }
    // envVars after fprocess: an explicit envVars.fprocess wins, as in faasd.
    env.extend(d.env_vars.iter().map(|(k, v)| (k.clone(), v.clone())));

    let mut labels: BTreeMap<String, String> = d.labels.clone();
    for (k, v) in &d.annotations {
        labels.insert(format!("{ANNOTATION_PREFIX}{k}"), v.clone());
    }
    labels.insert(FUNCTION_LABEL.into(), key.to_string());
    labels.insert(GENERATION_LABEL.into(), record.generation.to_string());
    labels.insert(REPLICA_LABEL.into(), replica.to_string());

    let limits = Limits {
        memory_bytes: memory_limit(d, defaults),
        memory_reservation_bytes: quantity(&d.requests, true)
            .and_then(|q| validate::parse_memory(&q).ok()),
        cpu_millis: quantity(&d.limits, false)
            .and_then(|q| validate::parse_cpu_millis(&q).ok())
            .or(defaults.cpu_millis),
        cpu_request_millis: quantity(&d.requests, false)
            .and_then(|q| validate::parse_cpu_millis(&q).ok()),
        pids: Some(defaults.pids),
    };
    ContainerSpec {
        id: key.container_id(record.generation, replica),
        image: d.image.clone(),
        hostname: key.name.clone(),
        env,
        args: None,
        user: None,
        labels,
        limits,
        read_only_rootfs: d.read_only_root_filesystem,
        secrets: d
            .secrets
            .iter()
            .map(|s| Secret {
                name: s.clone(),
                source: store.secret_path(&key.namespace, s),
            })
            .collect(),
        mounts,
        capabilities: Vec::new(),
        log_name: Some(key.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_round_trip() {
        let key = FunctionKey::new("hello-world", "openfaas-fn");
        let id = key.container_id(12, 3);
        assert_eq!(id, "hello-world.openfaas-fn-12-3");
        assert!(bramble_runtime::validate_id(&id).is_ok());
        assert_eq!(FunctionKey::parse_container_id(&id), Some((key, 12, 3)));
        for bad in ["nodot-1-2", "a.b-x-1", "a.-1-2", ".ns-1-2", "a.ns-1"] {
            assert_eq!(FunctionKey::parse_container_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_longest_names_still_make_valid_container_ids() {
        // 40 + 20 characters and a two-digit slot leave 11 digits of generation: a hundred
        // billion updates.
        let name = "f".repeat(bramble_gateway::validate::MAX_FUNCTION_NAME);
        let key = FunctionKey::new(
            &name,
            &"n".repeat(bramble_gateway::validate::MAX_NAMESPACE_NAME),
        );
        assert!(
            bramble_runtime::validate_id(&key.container_id(99_999_999_999, MAX_SLOTS - 1)).is_ok()
        );
    }

    #[test]
    fn settings_come_from_annotations_or_labels() {
        let mut d = FunctionDeployment {
            service: "f".into(),
            image: "x".into(),
            ..Default::default()
        };
        let defaults = Defaults {
            memory_bytes: None,
            cpu_millis: None,
            pids: 64,
            timeout: Duration::from_secs(60),
        };
        assert_eq!(timeout(&d, &defaults), Duration::from_secs(60));
        assert_eq!(scale_to_zero_after(&d), None);
        d.labels.insert(SCALE_ZERO.into(), "true".into());
        assert_eq!(scale_to_zero_after(&d), Some(Duration::from_secs(900)));
        d.annotations
            .insert(SCALE_ZERO_DURATION.into(), "2m".into());
        d.annotations
            .insert(TIMEOUT_ANNOTATION.into(), "90s".into());
        assert_eq!(scale_to_zero_after(&d), Some(Duration::from_secs(120)));
        assert_eq!(timeout(&d, &defaults), Duration::from_secs(90));
        assert!(validate_settings(&d).is_ok());
        d.annotations
            .insert(TIMEOUT_ANNOTATION.into(), "soon".into());
        let (field, message) = validate_settings(&d).unwrap_err();
        assert_eq!(field, "annotations.bramble.timeout");
        assert!(message.contains("soon"));
    }
}
