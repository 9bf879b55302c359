//! Images: pull from registries, import tarballs, unpack into snapshots, build, and resolve
//! what a container needs from its image (entrypoint, env, user, top snapshot).
//!
//! An image lives in containerd as an image record (name → index or manifest descriptor), its
//! blobs in the content store linked by `containerd.io/gc.ref.*` labels, and its unpacked
//! layers as committed snapshots named by chain id. Everything is written under a lease, so a
//! crash half-way leaves nothing that garbage collection would not remove.

pub mod auth;
pub mod build;
pub mod oci;
pub mod platform;
pub mod reference;

mod archive;
mod bound;
mod fetch;
mod registry;
mod source;
mod unpack;
mod user;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use containerd_client::services::v1::{CreateImageRequest, UpdateImageRequest};
use containerd_client::services::v1::{
    DeleteImageRequest, GetImageRequest, Image as CtrImage, ListImagesRequest,
};
use containerd_client::types::Descriptor as CtrDescriptor;
use prost_types::FieldMask;
use serde::{Deserialize, Serialize};

use crate::client::Connection;
use crate::content;
use crate::error::{Error, Result};
use crate::keyed::KeyedLocks;
use oci::{ConfigFile, Descriptor, Manifest, ManifestDocument};
use platform::Platform;
use reference::ImageRef;

pub use bound::DEFAULT_MAX_UNPACKED;
pub use source::{Blobs, Chunks, Document, Found, ImageSource, SourceError};
pub(crate) use unpack::remove_quietly as remove_snapshot_quietly;
pub use user::ResolvedUser;

/// How long a lease protects content written by one pull or import.
const LEASE_EXPIRY: Duration = Duration::from_secs(3600);

/// When to fetch an image from its registry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum PullPolicy {
    /// Always ask the registry (cheap when nothing changed: one manifest request).
    Always,
    /// Use the local image when present; no network access at all then.
    #[default]
    IfNotPresent,
    /// Never use the network; fail when the image is absent.
    Never,
}

impl FromStr for PullPolicy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "always" => Ok(PullPolicy::Always),
            "ifnotpresent" | "if-not-present" => Ok(PullPolicy::IfNotPresent),
            "never" => Ok(PullPolicy::Never),
            _ => Err(Error::Invalid(format!(
                "unknown pull policy {s:?}; use Always, IfNotPresent or Never"
            ))),
        }
    }
}

impl<'de> Deserialize<'de> for PullPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Progress of a long image operation, for logs and CLIs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// The manifest for this machine's platform was chosen.
    Resolved {
        image: String,
        platform: Platform,
        layers: usize,
        bytes: u64,
    },
    /// A layer (or other blob) is in the content store, fetched or already present.
    Fetched {
        digest: String,
        bytes: u64,
        cached: bool,
    },
    /// `layer` of `of` layers is unpacked.
    Unpacked { layer: usize, of: usize },
}

/// A progress callback.
pub type ProgressFn<'a> = dyn Fn(Progress) + Send + Sync + 'a;

/// A progress callback that ignores everything.
pub fn no_progress(_: Progress) {}

/// How to reach registries.
#[derive(Clone, Debug, Default)]
pub struct RegistryConfig {
    /// Registries (`host` or `host:port`) spoken to over plain HTTP. Loopback registries always
    /// are.
    pub insecure: Vec<String>,
    /// A Docker `config.json` with credentials (missing file = anonymous everywhere).
    pub credentials_file: Option<PathBuf>,
}

/// An image as a container needs it, resolved for this machine's platform.
#[derive(Clone, Debug, Serialize)]
pub struct Image {
    /// The normalised name (`docker.io/library/alpine:3.20`).
    pub name: String,
    /// Digest of what the name points at (an index for multi-platform images).
    pub target_digest: String,
    /// Digest of the manifest chosen for this platform.
    pub manifest_digest: String,
    pub config_digest: String,
    pub platform: Platform,
    pub config: ImageConfig,
    /// The chain id of the top layer: the parent snapshot of every container of this image.
    pub top_chain_id: String,
    /// Sum of the (compressed) layer sizes.
    pub size: u64,
    pub layers: usize,
    /// Whether the layers are unpacked into snapshots.
    pub unpacked: bool,
}

/// What an image says about running it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub exposed_ports: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub stop_signal: Option<String>,
}

impl ImageConfig {
    fn from_config_file(config: &ConfigFile) -> Self {
        let c = config.config.clone().unwrap_or_default();
        ImageConfig {
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            env: c.env.unwrap_or_default(),
            working_dir: c.working_dir.filter(|w| !w.is_empty()),
            user: c.user.filter(|u| !u.is_empty()),
            exposed_ports: c
                .exposed_ports
                .map(|p| p.into_keys().collect())
                .unwrap_or_default(),
            labels: c.labels.unwrap_or_default(),
            stop_signal: c.stop_signal.filter(|s| !s.is_empty()),
        }
    }
}

/// One entry of [`ImageService::list`].
#[derive(Clone, Debug, Serialize)]
pub struct ImageSummary {
    pub name: String,
    pub target_digest: String,
    pub media_type: String,
    pub size: i64,
}

/// The image operations of the runtime.
#[derive(Debug)]
pub struct ImageService {
    conn: Connection,
    snapshotter: String,
    platform: Platform,
    registries: RegistryConfig,
    /// Resolved images by target digest: content is immutable, so entries never go stale
    /// (only their `unpacked` flag, which is re-checked).
    cache: Mutex<HashMap<String, Arc<Image>>>,
    /// One pull or import per image name at a time.
    locks: KeyedLocks,
    users: user::UserCache,
    /// Largest uncompressed size of one layer (and of an uncompressed image archive).
    max_unpacked: u64,
    /// Where images are looked for before their registry (another board of a cluster).
    source: OnceLock<Arc<dyn ImageSource>>,
}

impl ImageService {
    pub(crate) fn new(
        conn: Connection,
        snapshotter: String,
        platform: Platform,
        registries: RegistryConfig,
        max_unpacked: u64,
    ) -> Self {
        Self {
            conn,
            snapshotter,
            platform,
            registries,
            cache: Mutex::new(HashMap::new()),
            locks: KeyedLocks::default(),
            users: user::UserCache::default(),
            max_unpacked,
            source: OnceLock::new(),
        }
    }

    /// Largest uncompressed size of one layer (and of an uncompressed image archive).
    pub fn max_unpacked(&self) -> u64 {
        self.max_unpacked
    }

    /// Where image views are mounted briefly to read their account files.
    pub(crate) fn set_scratch_dir(&self, dir: PathBuf) {
        self.users.set_scratch_dir(dir);
    }

    /// The platform images are resolved for.
    pub fn platform(&self) -> &Platform {
        &self.platform
    }

    /// Makes an image present and unpacked according to the pull policy, and returns it.
    ///
    /// With `IfNotPresent` and `Never` an image that is present costs no network access.
    pub async fn ensure(
        &self,
        reference: &ImageRef,
        policy: PullPolicy,
        progress: &ProgressFn<'_>,
    ) -> Result<Arc<Image>> {
        let name = reference.to_string();
        let _guard = self.locks.lock(&name).await;
        let mut unusable = None;
        if policy != PullPolicy::Always
            && let Some(image) = self.get(&name).await?
        {
            if image.unpacked {
                return Ok(image);
            }
            match self.unpack_present(&name, progress).await {
                Ok(image) => return Ok(image),
                Err(e) if policy == PullPolicy::Never || e.is_unavailable() => return Err(e),
                Err(e) => {
                    tracing::info!(image = %name, error = %e.chain(), "local copy unusable, pulling");
                    unusable = Some(e);
                }
            }
        }
        // Another board's copy first (on the LAN, and what `image import` on one board gives
        // the others), unless the registry's current answer is asked for.
        let mut elsewhere = None;
        if policy != PullPolicy::Always {
            match self.fetch_from_source(&name, progress).await {
                Ok(true) => {
                    return self.get(&name).await?.ok_or(Error::NotFound {
                        kind: "image",
                        id: name,
                    });
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(image = %name, error = %e.chain(), "fetching a copy from another board failed; trying its registry");
                    elsewhere = Some(e);
                }
            }
            if policy == PullPolicy::Never {
                return Err(elsewhere.unwrap_or(Error::ImageNotPresent { image: name }));
            }
        }
        if let Err(pull) = registry::pull(self, reference, progress).await {
            // Say why the local copy was not used, not only why the pull failed.
            return Err(match (unusable, elsewhere) {
                (_, Some(elsewhere)) => Error::InvalidImage {
                    image: name,
                    reason: format!(
                        "fetching a copy from another board failed ({}), and so did pulling it ({})",
                        elsewhere.chain(),
                        pull.chain()
                    ),
                },
                (Some(local), None) => Error::InvalidImage {
                    image: name,
                    reason: format!(
                        "the local copy cannot be unpacked ({}), and pulling it again failed ({})",
                        match local {
                            Error::InvalidImage { reason, .. } => reason,
                            local => local.chain(),
                        },
                        pull.chain()
                    ),
                },
                (None, None) => pull,
            });
        }
        self.get(&name).await?.ok_or(Error::NotFound {
            kind: "image",
            id: name,
        })
    }

    /// Imports every image of an OCI image-layout or `docker save` tarball (optionally
    /// gzip-compressed). `name` renames the image when the archive holds exactly one.
    ///
    /// The archive's metadata is read and checked (platform included) before anything is
    /// written to containerd.
    pub async fn import(
        &self,
        path: &Path,
        name: Option<&ImageRef>,
        progress: &ProgressFn<'_>,
    ) -> Result<Vec<Arc<Image>>> {
        let names = archive::import(self, path, name, progress).await?;
        let mut images = Vec::with_capacity(names.len());
        for name in names {
            let image = self.get(&name).await?.ok_or(Error::NotFound {
                kind: "image",
                id: name,
            })?;
            images.push(image);
        }
        Ok(images)
    }

    /// Fetches image `name` from the [`ImageSource`] if one is set and has it; `Ok(false)` when
    /// none is set or it has no copy. Called with the image's lock held.
    async fn fetch_from_source(&self, name: &str, progress: &ProgressFn<'_>) -> Result<bool> {
        let Some(source) = self.source.get() else {
            return Ok(false);
        };
        let found = source.find(name).await.map_err(|source| Error::Source {
            image: name.to_owned(),
            from: "the other boards".to_owned(),
            source,
        })?;
        let Some(found) = found else {
            return Ok(false);
        };
        tracing::info!(image = %name, from = %found.from, digest = %found.top.digest, "fetching the image from another board");
        source::fetch(self, name, &found, progress).await?;
        Ok(true)
    }

    /// The descriptor an image record points at, if the record exists.
    async fn target(&self, name: &str) -> Result<Option<CtrDescriptor>> {
        let mut client = self.conn.images();
        let request = self.conn.request(GetImageRequest {
            name: name.to_owned(),
        });
        match self.conn.call("Images.Get", client.get(request)).await {
            Ok(reply) => Ok(reply.image.and_then(|r| r.target)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The image named `name` (normalised), resolved for this platform, if present.
    pub async fn get(&self, name: &str) -> Result<Option<Arc<Image>>> {
        let Some(target) = self.target(name).await? else {
            return Ok(None);
        };
        // The cache is by content; several names can share it, so the name comes from here.
        let cached = self.cache_get(&target.digest).map(|image| {
            if image.name == name {
                image
            } else {
                Arc::new(Image {
                    name: name.to_owned(),
                    ..(*image).clone()
                })
            }
        });
        let image = match cached {
            Some(image) => image,
            None => {
                let image = Arc::new(self.resolve(name, &target).await?);
                self.cache_put(&target.digest, Arc::clone(&image));
                image
            }
        };
        if image.unpacked {
            // Snapshots can be removed behind our back (GC, an operator with ctr): re-check.
            if unpack::snapshot_exists(&self.conn, &self.snapshotter, &image.top_chain_id).await? {
                return Ok(Some(image));
            }
        } else if !unpack::snapshot_exists(&self.conn, &self.snapshotter, &image.top_chain_id)
            .await?
        {
            return Ok(Some(image));
        }
        let mut refreshed = (*image).clone();
        refreshed.unpacked = !image.unpacked;
        let refreshed = Arc::new(refreshed);
        self.cache_put(&target.digest, Arc::clone(&refreshed));
        Ok(Some(refreshed))
    }

    /// All image records in the namespace.
    pub async fn list(&self) -> Result<Vec<ImageSummary>> {
        let mut client = self.conn.images();
        let reply = self
            .conn
            .call(
                "Images.List",
                client.list(self.conn.request(ListImagesRequest { filters: vec![] })),
            )
            .await?;
        Ok(reply
            .images
            .into_iter()
            .filter_map(|i| {
                let target = i.target?;
                Some(ImageSummary {
                    name: i.name,
                    target_digest: target.digest,
                    media_type: target.media_type,
                    size: target.size,
                })
            })
            .collect())
    }

    /// Removes an image record. Its content and snapshots are garbage-collected by containerd
    /// once no container uses them.
    pub async fn remove(&self, name: &str) -> Result<()> {
        let mut client = self.conn.images();
        let request = self.conn.request(DeleteImageRequest {
            name: name.to_owned(),
            sync: false,
            target: None,
        });
        match self
            .conn
            .call("Images.Delete", client.delete(request))
            .await
        {
            Err(e) if e.is_not_found() => Err(Error::NotFound {
                kind: "image",
                id: name.to_owned(),
            }),
            other => other.map(|_| ()),
        }
    }

    /// The numeric user and groups a container of `image` runs as, given the image's `User`
    /// (or an override): names are looked up in the image's `/etc/passwd` and `/etc/group`.
    pub async fn resolve_user(&self, image: &Image, user: Option<&str>) -> Result<ResolvedUser> {
        self.users
            .resolve(&self.conn, &self.snapshotter, image, user)
            .await
    }

    fn cache_get(&self, digest: &str) -> Option<Arc<Image>> {
        self.cache.lock().ok().and_then(|c| c.get(digest).cloned())
    }

    fn cache_put(&self, digest: &str, image: Arc<Image>) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(digest.to_owned(), image);
        }
    }

    /// Reads index → manifest → config from the content store.
    async fn resolve(&self, name: &str, target: &CtrDescriptor) -> Result<Image> {
        let bytes = content::read_blob(&self.conn, &target.digest).await?;
        let (manifest_digest, manifest) =
            match oci::parse_manifest_document(name, Some(&target.media_type), &bytes)? {
                ManifestDocument::Manifest(m) => (target.digest.clone(), m),
                ManifestDocument::Index(index) => {
                    let chosen = self.choose_manifest(name, &index.manifests)?;
                    let bytes = content::read_blob(&self.conn, &chosen.digest).await?;
                    match oci::parse_manifest_document(name, Some(&chosen.media_type), &bytes)? {
                        ManifestDocument::Manifest(m) => (chosen.digest.clone(), m),
                        ManifestDocument::Index(_) => {
                            return Err(Error::InvalidImage {
                                image: name.to_owned(),
                                reason: "nested image indexes are not supported".into(),
                            });
                        }
                    }
                }
            };
        let config_bytes = content::read_blob(&self.conn, &manifest.config.digest).await?;
        let config = oci::parse_config(name, &config_bytes, &manifest)?;
        self.check_platform(name, &config.platform())?;
        let top_chain_id = oci::chain_ids(&config.rootfs.diff_ids)
            .pop()
            .ok_or_else(|| Error::InvalidImage {
                image: name.to_owned(),
                reason: "the image has no layers".into(),
            })?;
        let unpacked =
            unpack::snapshot_exists(&self.conn, &self.snapshotter, &top_chain_id).await?;
        Ok(Image {
            name: name.to_owned(),
            target_digest: target.digest.clone(),
            manifest_digest,
            config_digest: manifest.config.digest.clone(),
            platform: config.platform(),
            config: ImageConfig::from_config_file(&config),
            top_chain_id,
            size: manifest
                .layers
                .iter()
                .map(|l| u64::try_from(l.size).unwrap_or(0))
                .sum(),
            layers: manifest.layers.len(),
            unpacked,
        })
    }

    /// The index entry this machine should run (see [`choose_manifest`]).
    pub(crate) fn choose_manifest<'d>(
        &self,
        image: &str,
        manifests: &'d [Descriptor],
    ) -> Result<&'d Descriptor> {
        choose_manifest(&self.platform, image, manifests)
    }

    /// Refuses an image this machine cannot run.
    pub(crate) fn check_platform(&self, image: &str, platform: &Platform) -> Result<()> {
        if self.platform.run_rank(platform).is_some() {
            Ok(())
        } else {
            Err(Error::PlatformMismatch {
                image: image.to_owned(),
                available: vec![platform.clone()],
                host: self.platform.clone(),
            })
        }
    }

    /// Unpacks an image whose content is complete in the store, without the network.
    async fn unpack_present(&self, name: &str, progress: &ProgressFn<'_>) -> Result<Arc<Image>> {
        let image = self
            .get(name)
            .await?
            .ok_or_else(|| Error::ImageNotPresent {
                image: name.to_owned(),
            })?;
        let manifest_bytes = content::read_blob(&self.conn, &image.manifest_digest).await?;
        let ManifestDocument::Manifest(manifest) =
            oci::parse_manifest_document(name, None, &manifest_bytes)?
        else {
            return Err(Error::InvalidImage {
                image: name.to_owned(),
                reason: "manifest is an index".into(),
            });
        };
        for layer in &manifest.layers {
            if content::info(&self.conn, &layer.digest).await?.is_none() {
                return Err(Error::ImageNotPresent {
                    image: format!("{name} (layer {} is missing)", layer.digest),
                });
            }
        }
        let config_bytes = content::read_blob(&self.conn, &image.config_digest).await?;
        let config = oci::parse_config(name, &config_bytes, &manifest)?;
        let lease = self.conn.create_lease("unpack", LEASE_EXPIRY).await?;
        let result = unpack::unpack(
            &self.conn,
            &lease,
            &self.snapshotter,
            name,
            &manifest,
            &config,
            &image.config_digest,
            self.max_unpacked,
            progress,
        )
        .await;
        self.conn.delete_lease(lease).await?;
        result?;
        self.get(name).await?.ok_or_else(|| Error::ImageNotPresent {
            image: name.to_owned(),
        })
    }

    /// Creates or updates the image record `name` → `target`.
    pub(crate) async fn put_record(
        &self,
        lease: &crate::client::Lease,
        name: &str,
        target: &Descriptor,
    ) -> Result<()> {
        let image = CtrImage {
            name: name.to_owned(),
            labels: HashMap::new(),
            target: Some(CtrDescriptor {
                media_type: target.media_type.clone(),
                digest: target.digest.clone(),
                size: target.size,
                annotations: HashMap::new(),
            }),
            created_at: None,
            updated_at: None,
        };
        let mut client = self.conn.images();
        let create = CreateImageRequest {
            image: Some(image.clone()),
            source_date_epoch: None,
        };
        match self
            .conn
            .call(
                "Images.Create",
                client.create(self.conn.leased_request(create, lease)),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_already_exists() => {
                let update = UpdateImageRequest {
                    image: Some(image),
                    update_mask: Some(FieldMask {
                        paths: vec!["target".into()],
                    }),
                    source_date_epoch: None,
                };
                self.conn
                    .call(
                        "Images.Update",
                        client.update(self.conn.leased_request(update, lease)),
                    )
                    .await
                    .map(|_| ())
            }
            Err(e) => Err(e),
        }
    }

    /// Writes manifest (and config) metadata with their GC labels, the record, and unpacks:
    /// the common tail of pull and import. Layers must already be in the store.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn commit_image(
        &self,
        lease: &crate::client::Lease,
        name: &str,
        index: Option<(&Descriptor, &[u8], &Descriptor)>,
        manifest_descriptor: &Descriptor,
        manifest_bytes: &[u8],
        manifest: &Manifest,
        config_bytes: &[u8],
        config: &ConfigFile,
        progress: &ProgressFn<'_>,
    ) -> Result<()> {
        content::write_bytes(
            &self.conn,
            lease,
            bytes::Bytes::copy_from_slice(config_bytes),
            HashMap::new(),
        )
        .await?;
        let mut manifest_labels: HashMap<String, String> = [(
            "containerd.io/gc.ref.content.config".to_owned(),
            manifest.config.digest.clone(),
        )]
        .into_iter()
        .collect();
        for (i, layer) in manifest.layers.iter().enumerate() {
            manifest_labels.insert(
                format!("containerd.io/gc.ref.content.l.{i}"),
                layer.digest.clone(),
            );
        }
        let written = content::write_bytes(
            &self.conn,
            lease,
            bytes::Bytes::copy_from_slice(manifest_bytes),
            manifest_labels,
        )
        .await?;
        if written != manifest_descriptor.digest {
            return Err(Error::InvalidImage {
                image: name.to_owned(),
                reason: format!(
                    "manifest bytes hash to {written}, not {}",
                    manifest_descriptor.digest
                ),
            });
        }
        let target = match index {
            Some((index_descriptor, index_bytes, chosen)) => {
                let labels = [(
                    "containerd.io/gc.ref.content.m.0".to_owned(),
                    chosen.digest.clone(),
                )]
                .into_iter()
                .collect();
                let written = content::write_bytes(
                    &self.conn,
                    lease,
                    bytes::Bytes::copy_from_slice(index_bytes),
                    labels,
                )
                .await?;
                if written != index_descriptor.digest {
                    return Err(Error::InvalidImage {
                        image: name.to_owned(),
                        reason: format!(
                            "index bytes hash to {written}, not {}",
                            index_descriptor.digest
                        ),
                    });
                }
                index_descriptor
            }
            None => manifest_descriptor,
        };
        unpack::unpack(
            &self.conn,
            lease,
            &self.snapshotter,
            name,
            manifest,
            config,
            &manifest.config.digest,
            self.max_unpacked,
            progress,
        )
        .await?;
        self.put_record(lease, name, target).await
    }

    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    pub(crate) fn registries(&self) -> &RegistryConfig {
        &self.registries
    }
}

/// The entry of an image index that `host` should run: among the image manifests with a
/// platform `host` can run ([`Platform::run_rank`]), the best-ranked one (the first of equals).
/// Entries that are not image manifests (nested indexes) or carry no platform are never chosen;
/// buildx attestation manifests (`unknown/unknown`) cannot run anywhere. When nothing fits, the
/// error names every platform the index offers (attestations left out) and the host's.
pub(crate) fn choose_manifest<'d>(
    host: &Platform,
    image: &str,
    manifests: &'d [Descriptor],
) -> Result<&'d Descriptor> {
    manifests
        .iter()
        .filter(|m| oci::is_manifest_media_type(&m.media_type) || m.media_type.is_empty())
        .filter_map(|m| {
            let platform = m.platform.as_ref()?.to_platform();
            host.run_rank(&platform).map(|rank| (rank, m))
        })
        .min_by_key(|(rank, _)| *rank)
        .map(|(_, m)| m)
        .ok_or_else(|| Error::PlatformMismatch {
            image: image.to_owned(),
            available: manifests
                .iter()
                .filter_map(|m| {
                    m.platform
                        .as_ref()
                        .map(oci::DescriptorPlatform::to_platform)
                })
                .filter(|p| p.os() != "unknown")
                .fold(Vec::new(), |mut platforms, p| {
                    if !platforms.contains(&p) {
                        platforms.push(p);
                    }
                    platforms
                }),
            host: host.clone(),
        })
}

/// The layer labels containerd expects: `containerd.io/uncompressed=<diff id>`.
pub(crate) fn layer_labels(diff_id: &str) -> HashMap<String, String> {
    [("containerd.io/uncompressed".to_owned(), diff_id.to_owned())]
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policies_parse_like_kubernetes_and_faas_cli() {
        assert_eq!("Always".parse::<PullPolicy>().unwrap(), PullPolicy::Always);
        assert_eq!(
            "IfNotPresent".parse::<PullPolicy>().unwrap(),
            PullPolicy::IfNotPresent
        );
        assert_eq!("never".parse::<PullPolicy>().unwrap(), PullPolicy::Never);
        let e = "sometimes".parse::<PullPolicy>().unwrap_err().to_string();
        assert!(e.contains("sometimes") && e.contains("IfNotPresent"), "{e}");
    }

    /// An index entry: an image manifest for `platform` (`os/arch[/variant]` as written in
    /// indexes, not normalised), its digest naming the platform so tests can tell entries apart.
    fn entry(platform: &str) -> Descriptor {
        entry_of(oci::OCI_MANIFEST, platform)
    }

    fn entry_of(media_type: &str, platform: &str) -> Descriptor {
        let mut parts = platform.split('/');
        let os = parts.next().unwrap().to_owned();
        let architecture = parts.next().unwrap().to_owned();
        let variant = parts.next().map(str::to_owned);
        Descriptor {
            media_type: media_type.to_owned(),
            digest: format!("sha256:{platform}"),
            size: 500,
            platform: Some(oci::DescriptorPlatform {
                architecture,
                os,
                variant,
            }),
            annotations: BTreeMap::new(),
        }
    }

    /// The digest of the entry `host` chooses from `index`.
    fn chosen(host: &str, index: &[Descriptor]) -> String {
        let host = Platform::parse(host).unwrap();
        choose_manifest(&host, "img", index)
            .map(|d| d.digest.trim_start_matches("sha256:").to_owned())
            .unwrap_or_else(|e| panic!("{host} chose nothing: {e}"))
    }

    /// The three platforms of a typical multi-arch function image, in every order.
    #[test]
    fn each_pi_and_pc_platform_gets_its_own_manifest() {
        let platforms = ["linux/amd64", "linux/arm64", "linux/arm/v7"];
        for rotation in 0..3 {
            let mut order = platforms.to_vec();
            order.rotate_left(rotation);
            let index: Vec<Descriptor> = order.iter().map(|p| entry(p)).collect();
            for host in platforms {
                assert_eq!(chosen(host, &index), host, "order {order:?}");
            }
            // A Pi 3/4/5 running a 32-bit system reports arm/v8 and takes the v7 image.
            assert_eq!(chosen("linux/arm/v8", &index), "linux/arm/v7");
        }
    }

    #[test]
    fn variants_follow_containerds_matching_rules() {
        // A 64-bit Pi runs 32-bit arm images, preferring the newest variant.
        let arm32 = [
            entry("linux/arm/v5"),
            entry("linux/arm/v7"),
            entry("linux/arm/v6"),
        ];
        assert_eq!(chosen("linux/arm64", &arm32), "linux/arm/v7");
        assert_eq!(chosen("linux/arm64", &arm32[..1]), "linux/arm/v5");
        // An arm/v7 host runs v7 and older, never v8 or arm64; a Pi Zero (v6) not v7.
        assert_eq!(chosen("linux/arm/v7", &arm32), "linux/arm/v7");
        assert_eq!(chosen("linux/arm/v6", &arm32), "linux/arm/v6");
        let v7_host = Platform::parse("linux/arm/v7").unwrap();
        assert!(choose_manifest(&v7_host, "img", &[entry("linux/arm/v8")]).is_err());
        assert!(choose_manifest(&v7_host, "img", &[entry("linux/arm64")]).is_err());
        // `arm` without a variant counts as v7.
        assert_eq!(chosen("linux/arm/v7", &[entry("linux/arm")]), "linux/arm");
        let v6_host = Platform::parse("linux/arm/v6").unwrap();
        assert!(choose_manifest(&v6_host, "img", &[entry("linux/arm")]).is_err());
        // arm64/v8 is arm64; an exact arm64 beats the 32-bit fallback.
        let index = [entry("linux/arm/v7"), entry("linux/arm64/v8")];
        assert_eq!(chosen("linux/arm64", &index), "linux/arm64/v8");
        // Aliases as some tools write them.
        assert_eq!(
            chosen("linux/arm64", &[entry("linux/aarch64")]),
            "linux/aarch64"
        );
        assert_eq!(
            chosen("linux/amd64", &[entry("linux/x86_64")]),
            "linux/x86_64"
        );
        // amd64 microarchitecture levels: a plain (v1) host cannot run a v3 build.
        let amd64_host = Platform::parse("linux/amd64").unwrap();
        assert!(choose_manifest(&amd64_host, "img", &[entry("linux/amd64/v3")]).is_err());
        let index = [entry("linux/amd64/v3"), entry("linux/amd64")];
        assert_eq!(chosen("linux/amd64", &index), "linux/amd64");
        // The os must match.
        assert!(choose_manifest(&amd64_host, "img", &[entry("windows/amd64")]).is_err());
    }

    #[test]
    fn attestations_nested_indexes_and_platformless_entries_are_never_chosen() {
        let mut no_platform = entry("linux/amd64");
        no_platform.platform = None;
        let mut nested = entry_of(oci::OCI_INDEX, "linux/amd64");
        nested.digest = "sha256:nested".into();
        let index = [
            entry("unknown/unknown"),
            nested,
            no_platform,
            entry_of(oci::DOCKER_MANIFEST, "linux/arm64"),
        ];
        // The Docker schema 2 manifest is a manifest like any other.
        assert_eq!(chosen("linux/arm64", &index), "linux/arm64");
        let amd64 = Platform::parse("linux/amd64").unwrap();
        assert!(choose_manifest(&amd64, "img", &index).is_err());
    }

    #[test]
    fn an_index_without_the_hosts_platform_names_what_it_offers_and_the_host() {
        let host = Platform::parse("linux/arm/v6").unwrap();
        let index = [
            entry("linux/amd64"),
            entry("linux/arm64"),
            entry("linux/arm/v7"),
            entry("linux/arm64"),
            entry("unknown/unknown"),
        ];
        let err = choose_manifest(&host, "docker.io/library/fn:1", &index).unwrap_err();
        let Error::PlatformMismatch {
            image,
            available,
            host: reported,
        } = &err
        else {
            panic!("{err:?}");
        };
        assert_eq!(image, "docker.io/library/fn:1");
        assert_eq!(reported, &host);
        let available: Vec<String> = available.iter().map(ToString::to_string).collect();
        assert_eq!(
            available,
            ["linux/amd64", "linux/arm64", "linux/arm/v7"],
            "each platform once, attestations left out"
        );
        let text = err.to_string();
        for platform in ["linux/amd64", "linux/arm64", "linux/arm/v7", "linux/arm/v6"] {
            assert!(text.contains(platform), "{platform} missing: {text}");
        }
        assert!(text.contains("docker.io/library/fn:1"), "{text}");

        let empty = choose_manifest(&host, "img", &[]).unwrap_err().to_string();
        assert!(
            empty.contains("no platform at all") && empty.contains("linux/arm/v6"),
            "{empty}"
        );
    }
}
