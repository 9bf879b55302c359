//! Pulling an image from an OCI/Docker registry without containerd's Transfer service.
//!
//! The registry HTTP API (auth challenges, tokens, redirects) is `oci-client`'s job; this module
//! picks the manifest for this machine, checks the platform *before* writing anything, streams
//! layers into the content store (verified by digest) and hands over to the common commit +
//! unpack path.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;

use super::auth::CredentialStore;
use super::oci::{self, Descriptor, ManifestDocument};
use super::reference::ImageRef;
use super::{ImageService, LEASE_EXPIRY, Progress, ProgressFn, layer_labels};
use crate::content;
use crate::error::{Error, Result};

/// Layers fetched at the same time.
const PARALLEL_LAYERS: usize = 3;

const USER_AGENT: &str = concat!("bramble/", env!("CARGO_PKG_VERSION"));

/// Pulls `reference` and unpacks it. Called with the image's lock held.
pub(super) async fn pull(
    service: &ImageService,
    reference: &ImageRef,
    progress: &ProgressFn<'_>,
) -> Result<()> {
    let name = reference.to_string();
    let registry = reference.registry().to_owned();
    let wrap = |source: oci_client::errors::OciDistributionError| {
        registry_error(&name, &registry, service, source)
    };

    let auth = credentials(service, &registry)?;
    bramble_base::tls::install_crypto_provider();
    let client = Arc::new(oci_client::Client::new(ClientConfig {
        protocol: protocol_for(service, &registry),
        platform_resolver: None,
        connect_timeout: Some(Duration::from_secs(10)),
        read_timeout: Some(Duration::from_secs(60)),
        user_agent: USER_AGENT,
        ..Default::default()
    }));
    let oci_ref = to_oci_reference(reference);

    // 1. The top manifest document, then the one for this platform.
    let (top_bytes, top_digest) = client
        .pull_manifest_raw(&oci_ref, &auth, oci::MANIFEST_MEDIA_TYPES)
        .await
        .map_err(wrap)?;
    let top_document = oci::parse_manifest_document(&name, None, &top_bytes)?;
    let (index, manifest_descriptor, manifest_bytes, manifest) = match top_document {
        ManifestDocument::Manifest(manifest) => {
            let descriptor = descriptor_for(
                &top_digest,
                &top_bytes,
                manifest.media_type.as_deref(),
                oci::OCI_MANIFEST,
            );
            (None, descriptor, top_bytes.clone(), manifest)
        }
        ManifestDocument::Index(index_doc) => {
            let chosen = service
                .choose_manifest(&name, &index_doc.manifests)?
                .clone();
            let by_digest = oci_ref.clone_with_digest(chosen.digest.clone());
            let (bytes, digest) = client
                .pull_manifest_raw(&by_digest, &auth, oci::MANIFEST_MEDIA_TYPES)
                .await
                .map_err(wrap)?;
            if digest != chosen.digest {
                return Err(Error::InvalidImage {
                    image: name.clone(),
                    reason: format!(
                        "registry sent manifest {digest} when {} was asked",
                        chosen.digest
                    ),
                });
            }
            let ManifestDocument::Manifest(manifest) =
                oci::parse_manifest_document(&name, Some(&chosen.media_type), &bytes)?
            else {
                return Err(Error::InvalidImage {
                    image: name.clone(),
                    reason: "nested image indexes are not supported".into(),
                });
            };
            let index_descriptor = descriptor_for(
                &top_digest,
                &top_bytes,
                index_doc.media_type.as_deref(),
                oci::OCI_INDEX,
            );
            (
                Some((index_descriptor, chosen.clone())),
                chosen,
                bytes,
                manifest,
            )
        }
    };

    // 2. The config: platform check before anything is written.
    let mut config_bytes = Vec::new();
    client
        .pull_blob(
            &oci_ref,
            &to_oci_descriptor(&manifest.config),
            &mut config_bytes,
        )
        .await
        .map_err(wrap)?;
    let config = oci::parse_config(&name, &config_bytes, &manifest)?;
    service.check_platform(&name, &config.platform())?;
    let total: u64 = manifest
        .layers
        .iter()
        .map(|l| u64::try_from(l.size).unwrap_or(0))
        .sum();
    progress(Progress::Resolved {
        image: name.clone(),
        platform: config.platform(),
        layers: manifest.layers.len(),
        bytes: total,
    });

    // 3. Layers, streamed into the content store under a lease.
    let conn = service.conn();
    let lease = conn.create_lease("pull", LEASE_EXPIRY).await?;
    let result = async {
        // Owned items: a closure over borrowed pairs defeats the compiler's `Send` proof for
        // callers that need this future to be `Send`.
        let layers: Vec<(Descriptor, String)> = manifest
            .layers
            .iter()
            .cloned()
            .zip(config.rootfs.diff_ids.iter().cloned())
            .collect();
        futures::stream::iter(layers)
            .map(|(layer, diff_id)| {
                let client = Arc::clone(&client);
                let oci_ref = oci_ref.clone();
                let lease = &lease;
                let name = &name;
                let registry = &registry;
                async move {
                    if content::info(conn, &layer.digest).await?.is_some() {
                        content::add_labels(conn, &layer.digest, &layer_labels(&diff_id)).await?;
                        progress(Progress::Fetched {
                            digest: layer.digest.clone(),
                            bytes: layer.size as u64,
                            cached: true,
                        });
                        return Ok(());
                    }
                    let stream = client
                        .pull_blob_stream(&oci_ref, &to_oci_descriptor(&layer))
                        .await
                        .map_err(|e| registry_error(name, registry, service, e))?;
                    let meter = super::bound::Meter::new(
                        &format!("layer {}", layer.digest),
                        &layer.media_type,
                        service.max_unpacked(),
                    );
                    let chunks = super::bound::metered(meter, stream.stream);
                    content::write_blob(
                        conn,
                        lease,
                        &layer.digest,
                        layer.size,
                        layer_labels(&diff_id),
                        chunks,
                    )
                    .await?;
                    progress(Progress::Fetched {
                        digest: layer.digest.clone(),
                        bytes: layer.size as u64,
                        cached: false,
                    });
                    Ok::<(), Error>(())
                }
            })
            .buffer_unordered(PARALLEL_LAYERS)
            .try_collect::<Vec<()>>()
            .await?;
        let index_parts = index
            .as_ref()
            .map(|(descriptor, chosen)| (descriptor, &top_bytes[..], chosen));
        service
            .commit_image(
                &lease,
                &name,
                index_parts,
                &manifest_descriptor,
                &manifest_bytes,
                &manifest,
                &config_bytes,
                &config,
                progress,
            )
            .await
    }
    .await;
    conn.delete_lease(lease).await?;
    result
}

/// Registries spoken to over plain HTTP: configured ones and anything on loopback.
fn protocol_for(service: &ImageService, registry: &str) -> ClientProtocol {
    if is_insecure(&service.registries().insecure, registry) {
        ClientProtocol::HttpsExcept(vec![registry.to_owned()])
    } else {
        ClientProtocol::Https
    }
}

pub(crate) fn is_insecure(insecure: &[String], registry: &str) -> bool {
    if insecure.iter().any(|r| r == registry) {
        return true;
    }
    let host = host_of(registry);
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `127.0.0.1:5000` → `127.0.0.1`; `[::1]:5000` → `::1`; `ghcr.io` → `ghcr.io`.
fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    registry.rsplit_once(':').map_or(registry, |(host, _)| host)
}

fn credentials(service: &ImageService, registry: &str) -> Result<RegistryAuth> {
    let Some(path) = &service.registries().credentials_file else {
        return Ok(RegistryAuth::Anonymous);
    };
    let store = CredentialStore::load(path)?;
    Ok(match store.lookup(registry) {
        Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
        None => RegistryAuth::Anonymous,
    })
}

fn registry_error(
    name: &str,
    registry: &str,
    service: &ImageService,
    source: oci_client::errors::OciDistributionError,
) -> Error {
    use oci_client::errors::OciDistributionError as E;
    let hint = match &source {
        E::AuthenticationFailure(_) | E::UnauthorizedError { .. } => {
            Some(match &service.registries().credentials_file {
                Some(path) => format!(
                    "the registry refused the credentials for {registry} in {}",
                    path.display()
                ),
                None => {
                    format!("the registry wants credentials for {registry}; none are configured")
                }
            })
        }
        _ => None,
    };
    let source: Box<dyn std::error::Error + Send + Sync> = match hint {
        Some(hint) => format!("{hint}: {source}").into(),
        None => Box::new(source),
    };
    Error::Registry {
        image: name.to_owned(),
        registry: registry.to_owned(),
        source,
    }
}

fn to_oci_reference(reference: &ImageRef) -> oci_client::Reference {
    let registry = reference.registry().to_owned();
    let repository = reference.repository().to_owned();
    match (reference.tag(), reference.digest()) {
        (Some(tag), Some(digest)) => oci_client::Reference::with_tag_and_digest(
            registry,
            repository,
            tag.to_owned(),
            digest.to_owned(),
        ),
        (None, Some(digest)) => {
            oci_client::Reference::with_digest(registry, repository, digest.to_owned())
        }
        (Some(tag), None) => oci_client::Reference::with_tag(registry, repository, tag.to_owned()),
        (None, None) => oci_client::Reference::with_tag(registry, repository, "latest".to_owned()),
    }
}

fn to_oci_descriptor(descriptor: &Descriptor) -> OciDescriptor {
    OciDescriptor {
        media_type: descriptor.media_type.clone(),
        digest: descriptor.digest.clone(),
        size: descriptor.size,
        ..Default::default()
    }
}

fn descriptor_for(digest: &str, bytes: &[u8], declared: Option<&str>, default: &str) -> Descriptor {
    Descriptor {
        media_type: declared.unwrap_or(default).to_owned(),
        digest: digest.to_owned(),
        size: bytes.len() as i64,
        platform: None,
        annotations: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_listed_registries_use_http() {
        let listed = vec!["registry.lan:5000".to_owned()];
        assert!(is_insecure(&listed, "registry.lan:5000"));
        assert!(is_insecure(&[], "127.0.0.1:5000"));
        assert!(is_insecure(&[], "localhost:5000"));
        assert!(is_insecure(&[], "[::1]:5000"));
        assert!(!is_insecure(&[], "ghcr.io"));
        assert!(!is_insecure(&listed, "registry.lan"));
    }
}
