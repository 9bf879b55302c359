//! The JSON documents of OCI and Docker images, as far as bramble reads them.
//!
//! Docker schema 2 manifests and manifest lists share the OCI shapes, so one set of types reads
//! both. Fields bramble does not use are ignored; fields it relies on are required, and every
//! digest is validated before it is used as a content-store key.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::platform::Platform;
use crate::content::validate_digest;
use crate::error::{Error, Result};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// Media types a registry may answer a manifest request with, in order of preference.
pub const MANIFEST_MEDIA_TYPES: &[&str] = &[OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];

/// A content descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<DescriptorPlatform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The platform of an index entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescriptorPlatform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl DescriptorPlatform {
    pub fn to_platform(&self) -> Platform {
        Platform::new(&self.os, &self.architecture, self.variant.as_deref())
    }
}

/// An image index or Docker manifest list.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// The image configuration file.
#[derive(Clone, Debug, Deserialize)]
pub struct ConfigFile {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
    #[serde(default)]
    pub config: Option<ContainerConfig>,
    pub rootfs: RootFs,
}

/// The part of the image configuration that describes how to run it.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub stop_signal: Option<String>,
}

/// The layer list of an image configuration.
#[derive(Clone, Debug, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<String>,
}

/// A manifest document as fetched: either an index or a single-image manifest.
#[derive(Clone, Debug)]
pub enum ManifestDocument {
    Index(Index),
    Manifest(Manifest),
}

/// Does this media type name an index (OCI index or Docker manifest list)?
pub fn is_index_media_type(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}

/// Does this media type name a single-image manifest?
pub fn is_manifest_media_type(media_type: &str) -> bool {
    media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST
}

/// Parses a manifest document. The media type comes from the HTTP `Content-Type` or the
/// referencing descriptor; when absent or generic, the document's own fields decide.
pub fn parse_manifest_document(
    image: &str,
    media_type: Option<&str>,
    bytes: &[u8],
) -> Result<ManifestDocument> {
    let invalid = |reason: String| Error::InvalidImage {
        image: image.to_owned(),
        reason,
    };
    if media_type == Some(DOCKER_SCHEMA1) {
        return Err(invalid(
            "uses the Docker schema 1 manifest format, which is deprecated and not supported; re-push the image with a current tool".into(),
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| invalid(format!("manifest is not valid JSON: {e}")))?;
    let declared = value
        .get("mediaType")
        .and_then(|m| m.as_str())
        .or(media_type);
    let looks_like_index = match declared {
        Some(t) if is_index_media_type(t) => true,
        Some(t) if is_manifest_media_type(t) => false,
        _ => value.get("manifests").is_some(),
    };
    if value
        .get("schemaVersion")
        .and_then(serde_json::Value::as_u64)
        == Some(1)
    {
        return Err(invalid(
            "uses the Docker schema 1 manifest format, which is not supported".into(),
        ));
    }
    if looks_like_index {
        let index: Index = serde_json::from_value(value)
            .map_err(|e| invalid(format!("image index does not parse: {e}")))?;
        for m in &index.manifests {
            check_descriptor(image, m)?;
        }
        Ok(ManifestDocument::Index(index))
    } else {
        let manifest: Manifest = serde_json::from_value(value)
            .map_err(|e| invalid(format!("image manifest does not parse: {e}")))?;
        check_descriptor(image, &manifest.config)?;
        for layer in &manifest.layers {
            check_descriptor(image, layer)?;
        }
        Ok(ManifestDocument::Manifest(manifest))
    }
}

/// Parses an image configuration and checks it matches its manifest.
pub fn parse_config(image: &str, bytes: &[u8], manifest: &Manifest) -> Result<ConfigFile> {
    let invalid = |reason: String| Error::InvalidImage {
        image: image.to_owned(),
        reason,
    };
    let config: ConfigFile = serde_json::from_slice(bytes)
        .map_err(|e| invalid(format!("image config does not parse: {e}")))?;
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(invalid(format!(
            "config lists {} layer diff ids but the manifest has {} layers",
            config.rootfs.diff_ids.len(),
            manifest.layers.len()
        )));
    }
    for diff_id in &config.rootfs.diff_ids {
        validate_digest(diff_id)
            .map_err(|_| invalid(format!("config has an invalid diff id {diff_id:?}")))?;
    }
    Ok(config)
}

fn check_descriptor(image: &str, descriptor: &Descriptor) -> Result<()> {
    validate_digest(&descriptor.digest).map_err(|_| Error::InvalidImage {
        image: image.to_owned(),
        reason: format!("descriptor has an invalid digest {:?}", descriptor.digest),
    })?;
    if descriptor.size < 0 {
        return Err(Error::InvalidImage {
            image: image.to_owned(),
            reason: format!("descriptor {} has a negative size", descriptor.digest),
        });
    }
    Ok(())
}

impl ConfigFile {
    /// The platform the image was built for.
    pub fn platform(&self) -> Platform {
        Platform::new(&self.os, &self.architecture, self.variant.as_deref())
    }
}

/// The chain ids of a layer stack: `chain(L0) = diff(L0)`,
/// `chain(Ln) = sha256(chain(Ln-1) + " " + diff(Ln))` (OCI image spec, "Layer ChainID").
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut chain: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match chain.last() {
            None => diff_id.clone(),
            Some(parent) => crate::content::sha256_digest(format!("{parent} {diff_id}").as_bytes()),
        };
        chain.push(next);
    }
    chain
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn chain_ids_follow_the_spec() {
        let ids = chain_ids(&[D1.to_owned(), D2.to_owned()]);
        assert_eq!(ids[0], D1);
        assert_eq!(
            ids[1],
            crate::content::sha256_digest(format!("{D1} {D2}").as_bytes())
        );
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn documents_are_told_apart_without_media_type() {
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":10,"platform":{{"architecture":"arm","os":"linux","variant":"v7"}}}}]}}"#
        );
        match parse_manifest_document("x", None, index.as_bytes()).unwrap() {
            ManifestDocument::Index(i) => {
                assert_eq!(
                    i.manifests[0].platform.as_ref().unwrap().variant.as_deref(),
                    Some("v7")
                );
            }
            ManifestDocument::Manifest(_) => panic!("index read as a manifest"),
        }
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"x","digest":"{D1}","size":1}},"layers":[{{"mediaType":"y","digest":"{D2}","size":2}}]}}"#
        );
        assert!(matches!(
            parse_manifest_document("x", Some(DOCKER_MANIFEST), manifest.as_bytes()).unwrap(),
            ManifestDocument::Manifest(_)
        ));
    }

    #[test]
    fn bad_documents_get_clear_errors() {
        let e = parse_manifest_document("img", None, b"{not json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("img") && e.contains("not valid JSON"), "{e}");
        let e = parse_manifest_document("img", Some(DOCKER_SCHEMA1), b"{}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("schema 1"), "{e}");
        let bad_digest = r#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:../../etc","size":1},"layers":[]}"#;
        let e = parse_manifest_document("img", None, bad_digest.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid digest"), "{e}");
    }

    #[test]
    fn config_must_match_manifest() {
        let manifest = Manifest {
            schema_version: 2,
            media_type: None,
            config: Descriptor {
                media_type: OCI_CONFIG.into(),
                digest: D1.into(),
                size: 1,
                platform: None,
                annotations: BTreeMap::new(),
            },
            layers: vec![],
        };
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{D2}"]}}}}"#
        );
        let e = parse_config("img", config.as_bytes(), &manifest)
            .unwrap_err()
            .to_string();
        assert!(e.contains("1 layer diff ids but the manifest has 0"), "{e}");
    }
}
