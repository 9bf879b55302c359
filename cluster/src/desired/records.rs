//! What the desired-state buckets hold: their keys (checked here, so that a refused name never
//! reaches KV) and their records (JSON).
//!
//! | bucket | key | value |
//! |---|---|---|
//! | [`FUNCTIONS_BUCKET`] | `<namespace>.<function>` | [`FunctionRecord`] |
//! | [`NAMESPACES_BUCKET`] | `<namespace>` | [`NamespaceRecord`] |
//! | [`SECRETS_BUCKET`] | `<namespace>.<secret, '.' written as '='>` | [`SecretRecord`] (the value sealed) |
//!
//! Function and namespace names are DNS-1123 labels (the gateway's rules: at most 40 and 20
//! characters), so they never contain a dot and the key splits at its one dot. Secret names
//! may contain dots (`[a-zA-Z0-9._-]`, the gateway's rules), which KV keys allow only inside
//! (never first, last or doubled): the dots of a secret's name are written as `=` (which a
//! secret name cannot contain), so every valid name maps to a valid key and back.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bramble_gateway::types::FunctionDeployment;
use bramble_gateway::validate;
use serde::{Deserialize, Serialize};

use super::DesiredError;

/// The bucket of functions.
pub const FUNCTIONS_BUCKET: &str = "functions";
/// The bucket of namespaces.
pub const NAMESPACES_BUCKET: &str = "namespaces";
/// The bucket of secrets (sealed values).
pub const SECRETS_BUCKET: &str = "secrets";

pub use crate::function_key::FunctionKey;

/// A function's KV key is `<namespace>.<name>`.
impl FunctionKey {
    /// A checked key: both names DNS-1123 labels (function ≤ 40, namespace ≤ 20 characters).
    pub fn new(namespace: &str, name: &str) -> Result<FunctionKey, DesiredError> {
        validate::namespace_name(namespace).map_err(|m| DesiredError::invalid("namespace", m))?;
        validate::function_name(name).map_err(|m| DesiredError::invalid("service", m))?;
        Ok(FunctionKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }

    /// The KV key.
    pub fn kv_key(&self) -> String {
        format!("{}.{}", self.namespace, self.name)
    }

    /// The key a KV key stands for (`None`: not one this module writes).
    pub fn from_kv_key(key: &str) -> Option<FunctionKey> {
        let (namespace, name) = key.split_once('.')?;
        FunctionKey::new(namespace, name).ok()
    }
}

/// A secret's name in its namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SecretKey {
    /// The namespace.
    pub namespace: String,
    /// The secret's name.
    pub name: String,
}

impl SecretKey {
    /// A checked key: a DNS-1123 namespace, a secret name of `[a-zA-Z0-9._-]` (not `.`/`..`).
    pub fn new(namespace: &str, name: &str) -> Result<SecretKey, DesiredError> {
        validate::namespace_name(namespace).map_err(|m| DesiredError::invalid("namespace", m))?;
        validate::secret_name(name).map_err(|m| DesiredError::invalid("name", m))?;
        Ok(SecretKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }

    /// The KV key; also the associated data of the sealed value, so a value copied to another
    /// key does not open.
    pub fn kv_key(&self) -> String {
        format!("{}.{}", self.namespace, self.name.replace('.', "="))
    }

    /// The key a KV key stands for (`None`: not one this module writes).
    pub fn from_kv_key(key: &str) -> Option<SecretKey> {
        let (namespace, name) = key.split_once('.')?;
        if name.contains('.') {
            return None;
        }
        SecretKey::new(namespace, &name.replace('=', ".")).ok()
    }
}

/// A namespace's KV key: the checked name itself.
pub fn namespace_key(name: &str) -> Result<String, DesiredError> {
    validate::namespace_name(name).map_err(|m| DesiredError::invalid("name", m))?;
    Ok(name.to_owned())
}

/// Who changed a record last, and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// The board whose API took the change.
    pub board: String,
    /// Its wall clock then, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

impl Stamp {
    /// Now, on `board`.
    pub fn now(board: &str) -> Stamp {
        Stamp {
            board: board.to_owned(),
            at_ms: crate::node::join::now_ms(),
        }
    }

    /// The time as a [`SystemTime`].
    pub fn at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.at_ms)
    }
}

/// A function as the cluster wants it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FunctionRecord {
    /// The deployment as received (namespace filled in).
    pub deployment: FunctionDeployment,
    /// Desired replicas (0 = scaled to zero).
    pub replicas: u64,
    /// Incremented by every update of the deployment (not by scaling), starting at 1: the
    /// supervisors tell old replicas from new ones by it.
    pub generation: u64,
    /// When and where it was first deployed.
    pub created: Stamp,
    /// When and where it was last changed (deployed, updated or scaled).
    pub changed: Stamp,
}

/// A namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceRecord {
    /// Its labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Its annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Set while a board deletes it (checked for functions first): deploys into it are
    /// refused meanwhile. A board that died in the middle leaves it set; deleting again or
    /// updating the namespace clears it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleting: bool,
    /// When and where it was last changed (`None` for the default namespace made at start).
    #[serde(default)]
    pub changed: Option<Stamp>,
}

/// A secret: its value sealed under the cluster's key, bound to its KV key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRecord {
    /// `SealKey::seal(kv_key, value)`, base64 in the JSON.
    #[serde(with = "sealed_b64")]
    pub sealed: Vec<u8>,
    /// When and where it was last written.
    pub changed: Stamp,
}

impl fmt::Debug for SecretRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretRecord")
            .field("sealed", &format_args!("<{} bytes>", self.sealed.len()))
            .field("changed", &self.changed)
            .finish()
    }
}

mod sealed_b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(value: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(value))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

/// Encodes a record for KV.
pub(super) fn encode<T: Serialize>(record: &T) -> bytes::Bytes {
    // Serialising these plain structs (string-keyed maps only) cannot fail.
    bytes::Bytes::from(serde_json::to_vec(record).unwrap_or_default())
}

/// Decodes a record read from KV.
pub(super) fn decode<T: serde::de::DeserializeOwned>(
    bucket: &'static str,
    key: &str,
    value: &[u8],
) -> Result<T, DesiredError> {
    serde_json::from_slice(value).map_err(|e| DesiredError::Corrupt {
        bucket,
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(name: &str) -> FunctionDeployment {
        serde_json::from_value(serde_json::json!({"service": name, "image": "nginx:1"})).unwrap()
    }

    #[test]
    fn function_keys_round_trip_and_refuse_what_is_not_a_label() {
        let key = FunctionKey::new("openfaas-fn", "hello").unwrap();
        assert_eq!(key.kv_key(), "openfaas-fn.hello");
        assert_eq!(key.to_string(), "hello.openfaas-fn");
        assert_eq!(FunctionKey::from_kv_key("openfaas-fn.hello"), Some(key));
        for (ns, name, field) in [
            ("openfaas-fn", "", "service"),
            ("openfaas-fn", "Hello", "service"),
            ("openfaas-fn", "a.b", "service"),
            ("openfaas-fn", "a*", "service"),
            ("openfaas-fn", &"x".repeat(41), "service"),
            ("", "hello", "namespace"),
            ("a.b", "hello", "namespace"),
            (&"n".repeat(21), "hello", "namespace"),
        ] {
            let err = FunctionKey::new(ns, name).unwrap_err();
            assert!(
                matches!(&err, DesiredError::Invalid { field: f, .. } if f == field),
                "{ns}/{name}: {err:?}"
            );
            assert_eq!(err.status(), http::StatusCode::BAD_REQUEST);
        }
        assert_eq!(FunctionKey::from_kv_key("nodot"), None);
        assert_eq!(FunctionKey::from_kv_key("a.b.c"), None);
    }

    #[test]
    fn secret_keys_keep_dots_and_are_valid_kv_keys() {
        for name in ["api-key", "tls.crt", ".hidden", "a..b", "end.", "A_B-1.x"] {
            let key = SecretKey::new("openfaas-fn", name).unwrap();
            let kv = key.kv_key();
            crate::kv::validate_name("key", &kv).unwrap();
            assert_eq!(SecretKey::from_kv_key(&kv), Some(key), "{name}");
        }
        assert_eq!(
            SecretKey::new("ns", "tls.crt").unwrap().kv_key(),
            "ns.tls=crt"
        );
        for name in ["", ".", "..", "a/b", "a b", "a=b", &"s".repeat(254)] {
            assert!(SecretKey::new("ns", name).is_err(), "{name:?}");
        }
        assert!(SecretKey::new("NS", "a").is_err());
    }

    #[test]
    fn records_round_trip_and_a_bad_one_is_corrupt() {
        let record = FunctionRecord {
            deployment: deployment("hello"),
            replicas: 2,
            generation: 1,
            created: Stamp::now("pi1"),
            changed: Stamp::now("pi2"),
        };
        let bytes = encode(&record);
        let back: FunctionRecord = decode(FUNCTIONS_BUCKET, "ns.hello", &bytes).unwrap();
        assert_eq!(back, record);
        let err = decode::<FunctionRecord>(FUNCTIONS_BUCKET, "ns.hello", b"{").unwrap_err();
        assert!(err.to_string().starts_with("functions/ns.hello"), "{err}");
        assert_eq!(err.status(), http::StatusCode::INTERNAL_SERVER_ERROR);

        let ns = NamespaceRecord::default();
        assert_eq!(
            &encode(&ns)[..],
            br#"{"labels":{},"annotations":{},"changed":null}"#
        );
        let secret = SecretRecord {
            sealed: vec![1, 2, 3],
            changed: Stamp::now("pi1"),
        };
        let text = String::from_utf8(encode(&secret).to_vec()).unwrap();
        assert!(text.contains(r#""sealed":"AQID""#), "{text}");
        assert_eq!(
            decode::<SecretRecord>(SECRETS_BUCKET, "k", text.as_bytes()).unwrap(),
            secret
        );
        assert!(!format!("{secret:?}").contains("[1, 2, 3]"));
    }
}
