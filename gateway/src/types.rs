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

/// bramble's additions to a function's status (ignored by OpenFaaS clients).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BrambleStatus {
    /// `ready`, `starting`, `scaled-to-zero`, `crash-looping`, `updating`, `failed`.
    pub state: String,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub restarts: u64,
    /// Why the last replica exited: `oom`, `exit code N`, `signal N`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
    /// A human explanation when something is wrong (failed update, image error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
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
