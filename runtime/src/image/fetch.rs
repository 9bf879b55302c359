//! The steps of fetching an image that do not depend on where it comes from: choose this
//! platform's manifest, check the platform *before* writing anything, stream the layers into
//! the content store (verified by digest, bounded in size) and hand over to the common commit
//! and unpack path. A registry ([`super::registry`]) and another board ([`super::source`]) are
//! two [`Fetcher`]s.

use std::future::Future;

use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};

use super::oci::{self, Descriptor, ManifestDocument};
use super::source::Chunks;
use super::{ImageService, LEASE_EXPIRY, Progress, ProgressFn, layer_labels};
use crate::content;
use crate::error::{Error, Result};

/// Layers fetched at the same time.
const PARALLEL_LAYERS: usize = 3;

/// Where an image's documents and blobs come from.
pub(super) trait Fetcher: Sync {
    /// The manifest `digest` (chosen from an index); its bytes hash to `digest`.
    fn manifest(&self, descriptor: &Descriptor) -> impl Future<Output = Result<Bytes>> + Send;
    /// A small blob (the image configuration); its bytes hash to its digest.
    fn config(&self, descriptor: &Descriptor) -> impl Future<Output = Result<Vec<u8>>> + Send;
    /// A layer's bytes, verified by the content store as they are written.
    fn layer(&self, descriptor: &Descriptor) -> impl Future<Output = Result<Chunks>> + Send;
}

/// Fetches image `name` whose top document (a manifest or an index) is `top_bytes`, hashing to
/// `top_digest`, from `fetcher`, and commits it. Called with the image's lock held.
pub(super) async fn fetch<F: Fetcher>(
    service: &ImageService,
    name: &str,
    top_bytes: Bytes,
    top_digest: &str,
    fetcher: &F,
    progress: &ProgressFn<'_>,
) -> Result<()> {
    // 1. The manifest for this platform.
    let top_document = oci::parse_manifest_document(name, None, &top_bytes)?;
    let (index, manifest_descriptor, manifest_bytes, manifest) = match top_document {
        ManifestDocument::Manifest(manifest) => {
            let descriptor = descriptor_for(
                top_digest,
                &top_bytes,
                manifest.media_type.as_deref(),
                oci::OCI_MANIFEST,
            );
            (None, descriptor, top_bytes.clone(), manifest)
        }
        ManifestDocument::Index(index_doc) => {
            let chosen = service.choose_manifest(name, &index_doc.manifests)?.clone();
            let bytes = fetcher.manifest(&chosen).await?;
            let ManifestDocument::Manifest(manifest) =
                oci::parse_manifest_document(name, Some(&chosen.media_type), &bytes)?
            else {
                return Err(Error::InvalidImage {
                    image: name.to_owned(),
                    reason: "nested image indexes are not supported".into(),
                });
            };
            let index_descriptor = descriptor_for(
                top_digest,
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
    let config_bytes = fetcher.config(&manifest.config).await?;
    let config = oci::parse_config(name, &config_bytes, &manifest)?;
    service.check_platform(name, &config.platform())?;
    let total: u64 = manifest
        .layers
        .iter()
        .map(|l| u64::try_from(l.size).unwrap_or(0))
        .sum();
    progress(Progress::Resolved {
        image: name.to_owned(),
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
                let lease = &lease;
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
                    let stream = fetcher.layer(&layer).await?;
                    let meter = super::bound::Meter::new(
                        &format!("layer {}", layer.digest),
                        &layer.media_type,
                        service.max_unpacked(),
                    );
                    let chunks = super::bound::metered(meter, stream);
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
                name,
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

fn descriptor_for(digest: &str, bytes: &[u8], declared: Option<&str>, default: &str) -> Descriptor {
    Descriptor {
        media_type: declared.unwrap_or(default).to_owned(),
        digest: digest.to_owned(),
        size: bytes.len() as i64,
        platform: None,
        annotations: Default::default(),
    }
}
