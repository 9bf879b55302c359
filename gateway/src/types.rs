//! The OpenFaaS REST API's JSON types, byte-compatible with faas-provider (`types/*.go`) as
//! faas-cli, the go-sdk and the event connectors use them.
//!
//! Go's `encoding/json` writes nil maps and slices as `null` and drops `omitempty` fields that
//! hold their zero value; requests are therefore read leniently (`null` = empty) and responses
//! written with the same omissions, so clients see what they see from faasd.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

/// `null` (Go's nil map/slice) or absent reads as the default value.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

fn is_zero_f64(n: &f64) -> bool {
    *n == 0.0
}

/// Memory and CPU as Kubernetes quantities (`"128Mi"`, `"500m"`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionResources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
}

/// Body of `POST`/`PUT /system/functions`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionDeployment {
    pub service: String,
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_process: Option<String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub env_vars: BTreeMap<String, String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub constraints: Vec<String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub secrets: Vec<String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<FunctionResources>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<FunctionResources>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only_root_filesystem: bool,
}

/// CPU and memory in use by a function (all replicas).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionUsage {
    /// CPU in use by the replicas, in millicores (1000 = one core) averaged over about the
    /// last minute, as OpenFaaS reports it (`rate(pod_cpu_usage_seconds_total[1m]) * 1000`).
    pub cpu: f64,
    pub total_memory_bytes: f64,
}

/// A function's state, as bramble reports it in `bramble.state` (kebab-case words).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FunctionState {
    /// Replicas are being started (or restarted) and are not all ready yet.
    #[default]
    Starting,
    /// Every desired replica passed its health check.
    Ready,
    /// Desired replicas are 0: the next request starts one.
    ScaledToZero,
    /// Scaled to zero while its replicas finish their requests and stop (within the stop
    /// grace period); a request meanwhile starts a new replica at once.
    Stopping,
    /// A replica failed three times in a row and waits out its backoff.
    CrashLooping,
    /// A new version is starting beside the one that serves.
    Updating,
    /// In a cluster: no board can run it (the message says why: memory, platform, hardware,
    /// constraints).
    Unplaced,
}

impl FunctionState {
    /// The word the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            FunctionState::Starting => "starting",
            FunctionState::Ready => "ready",
            FunctionState::ScaledToZero => "scaled-to-zero",
            FunctionState::Stopping => "stopping",
            FunctionState::CrashLooping => "crash-looping",
            FunctionState::Updating => "updating",
            FunctionState::Unplaced => "unplaced",
        }
    }
}

impl std::fmt::Display for FunctionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a function's replica last stopped without being asked to: `oom`, `exit code N`,
/// `signal N` or `unhealthy` in the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExitReason {
    /// The kernel killed it for exceeding its memory limit.
    Oom,
    /// Its main process exited with this code.
    ExitCode(u32),
    /// Its main process was killed by this signal.
    Signal(u32),
    /// It never passed its health check and was stopped.
    Unhealthy,
}

impl ExitReason {
    /// The reason of a task's exit status (128 + N: killed by signal N).
    pub fn of_exit(status: u32, oom: bool) -> Self {
        match status {
            _ if oom => ExitReason::Oom,
            s if s > 128 => ExitReason::Signal(s - 128),
            s => ExitReason::ExitCode(s),
        }
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::Oom => f.write_str("oom"),
            ExitReason::ExitCode(code) => write!(f, "exit code {code}"),
            ExitReason::Signal(signal) => write!(f, "signal {signal}"),
            ExitReason::Unhealthy => f.write_str("unhealthy"),
        }
    }
}

impl std::str::FromStr for ExitReason {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let number = |rest: &str| {
            rest.parse::<u32>()
                .map_err(|_| format!("{text:?} is not an exit reason"))
        };
        match text {
            "oom" => Ok(ExitReason::Oom),
            "unhealthy" => Ok(ExitReason::Unhealthy),
            _ => match (
                text.strip_prefix("exit code "),
                text.strip_prefix("signal "),
            ) {
                (Some(code), _) => number(code).map(ExitReason::ExitCode),
                (_, Some(signal)) => number(signal).map(ExitReason::Signal),
                _ => Err(format!(
                    "{text:?} is not an exit reason (oom, exit code N, signal N, unhealthy)"
                )),
            },
        }
    }
}

impl Serialize for ExitReason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ExitReason {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// bramble's additions to a function's status (ignored by OpenFaaS clients).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BrambleStatus {
    pub state: FunctionState,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub restarts: u64,
    /// Why the last replica exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<ExitReason>,
    /// A human explanation when something is wrong (failed update, image error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// In a cluster: which boards the function's replicas are placed on (omitted on a single
    /// board).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<PlacedReplicas>,
}

/// A function's replicas on one board of a cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlacedReplicas {
    /// The board.
    pub board: String,
    /// Replicas placed there (0 on the home board of a function scaled to zero).
    pub replicas: u64,
    /// What they do.
    pub state: PlacedState,
}

/// What a function's replicas on a board do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlacedState {
    /// Placed there; the board runs them.
    Placed,
    /// Scaled to zero: this board wakes it.
    Home,
    /// The board that must run it is down; the function waits for it.
    Waiting,
}

/// A function as `GET /system/functions` and `GET /system/function/{name}` show it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionStatus {
    pub name: String,
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_process: Option<String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub env_vars: BTreeMap<String, String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub constraints: Vec<String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub secrets: Vec<String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<FunctionResources>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<FunctionResources>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only_root_filesystem: bool,
    #[serde(default, skip_serializing_if = "is_zero_f64")]
    pub invocation_count: f64,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub replicas: u64,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub available_replicas: u64,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<FunctionUsage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bramble: Option<BrambleStatus>,
}

impl FunctionStatus {
    /// The status of function `name` in `namespace` as deployed by `d`: what the deployment
    /// says, no replicas, no state.
    pub fn of_deployment(name: &str, namespace: &str, d: &FunctionDeployment) -> FunctionStatus {
        FunctionStatus {
            name: name.to_owned(),
            image: d.image.clone(),
            namespace: Some(namespace.to_owned()),
            env_process: d.env_process.clone(),
            env_vars: d.env_vars.clone(),
            constraints: d.constraints.clone(),
            secrets: d.secrets.clone(),
            labels: d.labels.clone(),
            annotations: d.annotations.clone(),
            limits: d.limits.clone(),
            requests: d.requests.clone(),
            read_only_root_filesystem: d.read_only_root_filesystem,
            ..FunctionStatus::default()
        }
    }
}

/// Body of `POST /system/scale-function/{name}`. The path name is ignored; `serviceName` counts
/// (faasd's behaviour, which faas-cli and the gateway rely on).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaleServiceRequest {
    /// Missing reads as empty (Go's zero value); the path name is used then.
    #[serde(default)]
    pub service_name: String,
    pub replicas: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Body of `DELETE /system/functions`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteFunctionRequest {
    pub function_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A secret: `value` (text) or `rawValue` (bytes, base64 in JSON).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Secret {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(
        default,
        with = "base64_bytes",
        skip_serializing_if = "Option::is_none"
    )]
    pub raw_value: Option<Vec<u8>>,
}

impl Secret {
    /// A secret as a listing shows it: its name in its namespace, never a value.
    pub fn name_only(name: String, namespace: &str) -> Secret {
        Secret {
            name,
            namespace: Some(namespace.to_owned()),
            value: None,
            raw_value: None,
        }
    }

    /// The value's bytes (`rawValue` before `value`); `Err` with the 400 message when neither
    /// is given.
    pub fn into_value(self) -> Result<Vec<u8>, &'static str> {
        match (self.value, self.raw_value) {
            (_, Some(raw)) => Ok(raw),
            (Some(text), None) => Ok(text.into_bytes()),
            (None, None) => Err("a secret needs a value or a rawValue"),
        }
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A secret's value never reaches a log line.
        f.debug_struct("Secret")
            .field("name", &self.name)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

mod base64_bytes {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    #[allow(clippy::ref_option)] // serde's `with` passes `&Option<T>`
    pub(super) fn serialize<S: Serializer>(
        value: &Option<Vec<u8>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(bytes) => {
                s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
            }
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(text) => base64::engine::general_purpose::STANDARD
                .decode(text.as_bytes())
                .map(Some)
                .map_err(|_| serde::de::Error::custom("rawValue is not base64")),
            None => Ok(None),
        }
    }
}

/// A namespace (`/system/namespace/...`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionNamespace {
    pub name: String,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub annotations: BTreeMap<String, String>,
}

/// Version of the provider (`/system/info`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub commit_message: String,
    pub sha: String,
    pub release: String,
}

/// What the provider says about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderInfo {
    pub provider: String,
    pub version: VersionInfo,
    pub orchestration: String,
}

/// One log line, one JSON object per line of `GET /system/logs` (NDJSON).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogMessage {
    pub name: String,
    pub namespace: String,
    pub instance: String,
    /// RFC 3339 with nanoseconds.
    pub timestamp: String,
    pub text: String,
}

/// An image on the node (`GET /system/images`, a bramble extension).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSummary {
    /// Normalised reference (`docker.io/library/hello:latest`).
    pub name: String,
    /// Digest of what the name points at.
    pub digest: String,
    /// Size of the image's compressed content, in bytes.
    pub size: u64,
}

/// Answer of `POST /system/images`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportedImages {
    pub images: Vec<String>,
}

/// What `GET /system/logs` asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogRequest {
    pub name: String,
    pub namespace: String,
    pub instance: Option<String>,
    pub since: Option<std::time::SystemTime>,
    pub tail: Option<usize>,
    pub follow: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_nulls_and_omitted_fields_read_as_empty() {
        let body = r#"{"service":"f","image":"x","envVars":null,"secrets":null,"labels":{},"annotations":null,"network":"ignored"}"#;
        let d: FunctionDeployment = serde_json::from_str(body).unwrap();
        assert!(d.env_vars.is_empty() && d.secrets.is_empty() && d.annotations.is_empty());
        assert_eq!(d.namespace, None);
    }

    #[test]
    fn status_omits_zero_values_like_go() {
        let s = FunctionStatus {
            name: "f".into(),
            image: "x".into(),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"name":"f","image":"x"}"#
        );
        let s = FunctionStatus {
            replicas: 1,
            available_replicas: 1,
            ..s
        };
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["availableReplicas"], 1);
    }

    #[test]
    fn states_and_exit_reasons_keep_the_api_words() {
        let all = [
            (FunctionState::Starting, "starting"),
            (FunctionState::Ready, "ready"),
            (FunctionState::ScaledToZero, "scaled-to-zero"),
            (FunctionState::Stopping, "stopping"),
            (FunctionState::CrashLooping, "crash-looping"),
            (FunctionState::Updating, "updating"),
            (FunctionState::Unplaced, "unplaced"),
        ];
        for (state, word) in all {
            assert_eq!(serde_json::to_value(state).unwrap(), word);
            assert_eq!(state.to_string(), word);
            assert_eq!(
                serde_json::from_value::<FunctionState>(word.into()).unwrap(),
                state
            );
        }
        for (reason, text) in [
            (ExitReason::Oom, "oom"),
            (ExitReason::ExitCode(3), "exit code 3"),
            (ExitReason::Signal(9), "signal 9"),
            (ExitReason::Unhealthy, "unhealthy"),
        ] {
            assert_eq!(serde_json::to_value(reason).unwrap(), text);
            assert_eq!(text.parse::<ExitReason>().unwrap(), reason);
        }
        assert_eq!(ExitReason::of_exit(137, false), ExitReason::Signal(9));
        assert_eq!(ExitReason::of_exit(137, true), ExitReason::Oom);
        assert_eq!(ExitReason::of_exit(2, false), ExitReason::ExitCode(2));
        for bad in ["", "exit code", "exit code x", "signal -1", "boom"] {
            assert!(bad.parse::<ExitReason>().is_err(), "{bad}");
        }
    }

    #[test]
    fn secrets_take_value_or_base64_raw_value_and_never_debug_print_them() {
        let s: Secret = serde_json::from_str(r#"{"name":"k","rawValue":"AAEC"}"#).unwrap();
        assert_eq!(s.raw_value, Some(vec![0, 1, 2]));
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"name":"k","rawValue":"AAEC"}"#
        );
        let s = Secret {
            name: "k".into(),
            value: Some("hunter2".into()),
            ..Default::default()
        };
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(serde_json::from_str::<Secret>(r#"{"name":"k","rawValue":"%%"}"#).is_err());
    }
}
