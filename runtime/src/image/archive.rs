//! Importing image archives: OCI image layouts (`skopeo copy oci-archive:`, `bramble image
//! build`, `docker save` since Docker 25) and legacy `docker save` tarballs, optionally gzipped.
//!
//! Pass 1 reads the archive's metadata (and keeps small blobs in memory), resolves every image
//! and checks its platform and name — nothing is written to containerd if that fails. Pass 2
//! streams the layers that are not already in the content store, verified by digest, and is
//! skipped when every needed blob was small enough to keep from pass 1. Archive paths are only
//! ever used as lookup keys; nothing is extracted to disk.

use std::collections::{BTreeSet, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::Deserialize;

use super::oci::{self, ConfigFile, Descriptor, Manifest, ManifestDocument};
use super::reference::ImageRef;
use super::{ImageService, LEASE_EXPIRY, Progress, ProgressFn, layer_labels};
use crate::content::{self, sha256_digest};
use crate::error::{Error, Result};

/// Entries up to this size are kept in memory during pass 1.
const SMALL_ENTRY: u64 = 4 << 20;
/// At most this much small-entry data is kept in memory in total.
const SMALL_TOTAL: u64 = 64 << 20;
/// Chunks handed from the tar reader to the content writer.
const CHUNK: usize = 1 << 20;

/// One image found in an archive, ready to be written.
struct Plan {
    name: String,
    index: Option<(Descriptor, Vec<u8>, Descriptor)>,
    manifest_descriptor: Descriptor,
    manifest_bytes: Vec<u8>,
    manifest: Manifest,
    config_bytes: Vec<u8>,
    config: ConfigFile,
    /// (archive path, descriptor, diff id) per layer.
    layers: Vec<(String, Descriptor, String)>,
}

/// What pass 1 learned about the archive.
struct Scan {
    /// Small entries, by normalised path.
    small: HashMap<String, Vec<u8>>,
    /// Every regular file, by normalised path, with its size.
    sizes: HashMap<String, u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerSaveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

pub(super) async fn import(
    service: &ImageService,
    path: &Path,
    rename: Option<&ImageRef>,
    progress: &ProgressFn<'_>,
) -> Result<Vec<String>> {
    let archive_path = path.to_path_buf();
    let limit = service.max_unpacked();
    let scan = tokio::task::spawn_blocking(move || scan(&archive_path, limit))
        .await
        .map_err(|e| archive_error(path, format!("reader task failed: {e}")))??;
    let plans = plan(service, path, &scan, rename)?;

    let conn = service.conn();
    let lease = conn.create_lease("import", LEASE_EXPIRY).await?;
    let result = async {
        // Layers: from memory when small, else streamed in pass 2.
        let mut to_stream: HashMap<String, (Descriptor, String)> = HashMap::new();
        let mut seen = BTreeSet::new();
        for plan in &plans {
            for (entry, descriptor, diff_id) in &plan.layers {
                if !seen.insert(descriptor.digest.clone()) {
                    continue;
                }
                if content::info(conn, &descriptor.digest).await?.is_some() {
                    content::add_labels(conn, &descriptor.digest, &layer_labels(diff_id)).await?;
                    progress(Progress::Fetched {
                        digest: descriptor.digest.clone(),
                        bytes: descriptor.size as u64,
                        cached: true,
                    });
                } else if let Some(bytes) = scan.small.get(entry) {
                    let mut meter = super::bound::Meter::new(
                        &format!("layer {entry}"),
                        &descriptor.media_type,
                        service.max_unpacked(),
                    );
                    meter
                        .feed(bytes)
                        .and_then(|()| meter.finish())
                        .map_err(|reason| archive_error(path, reason))?;
                    let chunks = futures::stream::iter([Ok::<_, std::convert::Infallible>(
                        Bytes::copy_from_slice(bytes),
                    )]);
                    content::write_blob(
                        conn,
                        &lease,
                        &descriptor.digest,
                        descriptor.size,
                        layer_labels(diff_id),
                        chunks,
                    )
                    .await?;
                    progress(Progress::Fetched {
                        digest: descriptor.digest.clone(),
                        bytes: descriptor.size as u64,
                        cached: false,
                    });
                } else {
                    to_stream.insert(entry.clone(), (descriptor.clone(), diff_id.clone()));
                }
            }
        }
        if !to_stream.is_empty() {
            stream_entries(service, &lease, path, to_stream, progress).await?;
        }
        for plan in &plans {
            let index = plan
                .index
                .as_ref()
                .map(|(d, bytes, chosen)| (d, &bytes[..], chosen));
            service
                .commit_image(
                    &lease,
                    &plan.name,
                    index,
                    &plan.manifest_descriptor,
                    &plan.manifest_bytes,
                    &plan.manifest,
                    &plan.config_bytes,
                    &plan.config,
                    progress,
                )
                .await?;
        }
        Ok(plans.iter().map(|p| p.name.clone()).collect())
    }
    .await;
    conn.delete_lease(lease).await?;
    result
}

fn archive_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Archive {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Reads at most `limit` bytes, then fails (a gzipped archive that decompresses without end).
struct Bounded<R> {
    inner: R,
    read: u64,
    limit: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read = self.read.saturating_add(n as u64);
        if self.read > self.limit {
            return Err(std::io::Error::other(super::bound::too_large(
                "the archive",
                self.limit,
            )));
        }
        Ok(n)
    }
}

/// Opens the archive, transparently gunzipping it (at most `limit` bytes decompressed).
fn open(path: &Path, limit: u64) -> Result<Box<dyn Read>> {
    let mut file = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("opening image archive {}", path.display()), e))?;
    let mut magic = [0u8; 2];
    let n = file
        .read(&mut magic)
        .map_err(|e| Error::io(format!("reading image archive {}", path.display()), e))?;
    let head = std::io::Cursor::new(magic[..n].to_vec());
    let reader = head.chain(file);
    if n == 2 && magic == [0x1f, 0x8b] {
        Ok(Box::new(Bounded {
            inner: flate2::read::GzDecoder::new(reader),
            read: 0,
            limit,
        }))
    } else {
        Ok(Box::new(reader))
    }
}

/// `./blobs/sha256/x` → `blobs/sha256/x`.
fn normalise(path: &Path) -> String {
    let text = path.to_string_lossy();
    text.trim_start_matches("./")
        .trim_start_matches('/')
        .to_owned()
}

/// Pass 1.
fn scan(path: &Path, limit: u64) -> Result<Scan> {
    let mut archive = tar::Archive::new(open(path, limit)?);
    let mut small = HashMap::new();
    let mut sizes = HashMap::new();
    let mut kept: u64 = 0;
    let entries = archive
        .entries()
        .map_err(|e| archive_error(path, format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| {
            let text = e.to_string();
            if text.contains("max_unpacked") {
                archive_error(path, text)
            } else {
                archive_error(path, format!("corrupt tar archive: {text}"))
            }
        })?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = normalise(
            &entry
                .path()
                .map_err(|e| archive_error(path, format!("bad entry name: {e}")))?,
        );
        let size = entry.size();
        sizes.insert(name.clone(), size);
        if size <= SMALL_ENTRY && kept + size <= SMALL_TOTAL {
            let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
            entry
                .read_to_end(&mut data)
                .map_err(|e| archive_error(path, format!("reading {name}: {e}")))?;
            kept += size;
            small.insert(name, data);
        }
    }
    if sizes.is_empty() {
        return Err(archive_error(path, "the archive is empty"));
    }
    Ok(Scan { small, sizes })
}

/// Resolves every image of the archive and checks platforms and names.
fn plan(
    service: &ImageService,
    path: &Path,
    scan: &Scan,
    rename: Option<&ImageRef>,
) -> Result<Vec<Plan>> {
    let small = |name: &str| -> Result<&Vec<u8>> {
        scan.small
            .get(name)
            .ok_or_else(|| match scan.sizes.get(name) {
                Some(size) => archive_error(
                    path,
                    format!("{name} is {size} bytes, too large for image metadata"),
                ),
                None => archive_error(path, format!("{name} is referenced but not in the archive")),
            })
    };
    let blob_path = |digest: &str| format!("blobs/{}", digest.replacen(':', "/", 1));

    let mut plans = Vec::new();
    if scan.small.contains_key("index.json") {
        let index_bytes = small("index.json")?;
        let ManifestDocument::Index(index) = oci::parse_manifest_document(
            &path.display().to_string(),
            Some(oci::OCI_INDEX),
            index_bytes,
        )?
        else {
            return Err(archive_error(path, "index.json is not an image index"));
        };
        for entry in &index.manifests {
            let Some(name) = image_name(entry, rename, index.manifests.len())? else {
                return Err(archive_error(
                    path,
                    format!(
                        "image {} has no name (annotation io.containerd.image.name); give one explicitly",
                        entry.digest
                    ),
                ));
            };
            let bytes = small(&blob_path(&entry.digest))?;
            check_digest(path, &entry.digest, bytes)?;
            let (index_part, manifest_descriptor, manifest_bytes) =
                match oci::parse_manifest_document(&name, Some(&entry.media_type), bytes)? {
                    ManifestDocument::Manifest(_) => (None, entry.clone(), bytes.clone()),
                    ManifestDocument::Index(nested) => {
                        let chosen = service.choose_manifest(&name, &nested.manifests)?.clone();
                        let manifest_bytes = small(&blob_path(&chosen.digest))?;
                        check_digest(path, &chosen.digest, manifest_bytes)?;
                        (
                            Some((entry.clone(), bytes.clone(), chosen.clone())),
                            chosen,
                            manifest_bytes.clone(),
                        )
                    }
                };
            let ManifestDocument::Manifest(manifest) = oci::parse_manifest_document(
                &name,
                Some(&manifest_descriptor.media_type),
                &manifest_bytes,
            )?
            else {
                return Err(archive_error(
                    path,
                    format!("{} is a nested index", manifest_descriptor.digest),
                ));
            };
            let config_bytes = small(&blob_path(&manifest.config.digest))?.clone();
            check_digest(path, &manifest.config.digest, &config_bytes)?;
            let config = oci::parse_config(&name, &config_bytes, &manifest)?;
            service.check_platform(&name, &config.platform())?;
            let layers = manifest
                .layers
                .iter()
                .zip(&config.rootfs.diff_ids)
                .map(|(l, diff_id)| (blob_path(&l.digest), l.clone(), diff_id.clone()))
                .collect();
            plans.push(Plan {
                name,
                index: index_part,
                manifest_descriptor,
                manifest_bytes,
                manifest,
                config_bytes,
                config,
                layers,
            });
        }
    } else if scan.small.contains_key("manifest.json") {
        let entries: Vec<DockerSaveEntry> = serde_json::from_slice(small("manifest.json")?)
            .map_err(|e| archive_error(path, format!("manifest.json does not parse: {e}")))?;
        for entry in &entries {
            plans.push(plan_docker_save(
                service,
                path,
                scan,
                entry,
                rename,
                entries.len(),
            )?);
        }
    } else {
        return Err(archive_error(
            path,
            "neither an OCI image layout (index.json) nor a docker save archive (manifest.json)",
        ));
    }
    if plans.is_empty() {
        return Err(archive_error(path, "the archive contains no image"));
    }
    for plan in &plans {
        for (entry, descriptor, _) in &plan.layers {
            let Some(&size) = scan.sizes.get(entry) else {
                return Err(archive_error(
                    path,
                    format!("layer {entry} of {} is not in the archive", plan.name),
                ));
            };
            if u64::try_from(descriptor.size).ok() != Some(size) {
                return Err(archive_error(
                    path,
                    format!(
                        "layer {entry} of {} is {size} bytes, but its manifest says {}",
                        plan.name, descriptor.size
                    ),
                ));
            }
        }
    }
    Ok(plans)
}

/// A legacy `docker save` entry: synthesise an OCI manifest for it, as containerd's importer
/// does. Legacy layers are uncompressed tars, so their digest is their diff id.
fn plan_docker_save(
    service: &ImageService,
    path: &Path,
    scan: &Scan,
    entry: &DockerSaveEntry,
    rename: Option<&ImageRef>,
    count: usize,
) -> Result<Plan> {
    let config_name = entry.config.trim_start_matches("./").to_owned();
    let config_bytes = scan
        .small
        .get(&config_name)
        .ok_or_else(|| archive_error(path, format!("config {config_name} is not in the archive")))?
        .clone();
    let name = match (rename, entry.repo_tags.as_ref().and_then(|t| t.first())) {
        (Some(r), _) if count == 1 => r.to_string(),
        (Some(_), _) => {
            return Err(archive_error(
                path,
                "a name can only be given for an archive with one image",
            ));
        }
        (None, Some(tag)) => ImageRef::parse(tag)?.to_string(),
        (None, None) => {
            return Err(archive_error(
                path,
                format!("image {config_name} has no RepoTags; give a name explicitly"),
            ));
        }
    };
    let config_descriptor = Descriptor {
        media_type: oci::OCI_CONFIG.into(),
        digest: sha256_digest(&config_bytes),
        size: config_bytes.len() as i64,
        platform: None,
        annotations: Default::default(),
    };
    let config_file: serde_json::Value = serde_json::from_slice(&config_bytes)
        .map_err(|e| archive_error(path, format!("config {config_name}: {e}")))?;
    let diff_ids: Vec<String> = config_file
        .pointer("/rootfs/diff_ids")
        .and_then(|d| serde_json::from_value(d.clone()).ok())
        .ok_or_else(|| {
            archive_error(path, format!("config {config_name} has no rootfs.diff_ids"))
        })?;
    if diff_ids.len() != entry.layers.len() {
        return Err(archive_error(
            path,
            format!(
                "{name}: {} layers but {} diff ids",
                entry.layers.len(),
                diff_ids.len()
            ),
        ));
    }
    let mut layers = Vec::new();
    for (layer_path, diff_id) in entry.layers.iter().zip(&diff_ids) {
        let layer_path = layer_path.trim_start_matches("./").to_owned();
        let size = *scan.sizes.get(&layer_path).ok_or_else(|| {
            archive_error(path, format!("layer {layer_path} is not in the archive"))
        })?;
        // Docker ≥ 25 stores layers as blobs/sha256/<digest>; older versions as <id>/layer.tar.
        let digest = match layer_path.strip_prefix("blobs/sha256/") {
            Some(hex) => format!("sha256:{hex}"),
            None => diff_id.clone(),
        };
        let descriptor = Descriptor {
            media_type: oci::OCI_LAYER_TAR.into(),
            digest,
            size: size as i64,
            platform: None,
            annotations: Default::default(),
        };
        layers.push((layer_path, descriptor, diff_id.clone()));
    }
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(oci::OCI_MANIFEST.into()),
        config: config_descriptor,
        layers: layers.iter().map(|(_, d, _)| d.clone()).collect(),
    };
    let manifest_bytes = serde_json::to_vec(&manifest)
        .map_err(|e| archive_error(path, format!("encoding a manifest: {e}")))?;
    let config = oci::parse_config(&name, &config_bytes, &manifest)?;
    service.check_platform(&name, &config.platform())?;
    let manifest_descriptor = Descriptor {
        media_type: oci::OCI_MANIFEST.into(),
        digest: sha256_digest(&manifest_bytes),
        size: manifest_bytes.len() as i64,
        platform: None,
        annotations: Default::default(),
    };
    Ok(Plan {
        name,
        index: None,
        manifest_descriptor,
        manifest_bytes,
        manifest,
        config_bytes,
        config,
        layers,
    })
}

/// The name of an OCI layout entry: the caller's, or `io.containerd.image.name`, or a full
/// reference in `org.opencontainers.image.ref.name`.
fn image_name(
    entry: &Descriptor,
    rename: Option<&ImageRef>,
    count: usize,
) -> Result<Option<String>> {
    if let Some(r) = rename {
        if count != 1 {
            return Err(Error::Invalid(
                "a name can only be given for an archive with one image".into(),
            ));
        }
        return Ok(Some(r.to_string()));
    }
    if let Some(name) = entry.annotations.get("io.containerd.image.name") {
        return Ok(Some(ImageRef::parse(name)?.to_string()));
    }
    match entry.annotations.get("org.opencontainers.image.ref.name") {
        // A bare tag ("latest") is not a name; a full reference is.
        Some(r) if r.contains('/') || r.contains('.') && r.contains(':') => {
            Ok(Some(ImageRef::parse(r)?.to_string()))
        }
        _ => Ok(None),
    }
}

fn check_digest(path: &Path, digest: &str, bytes: &[u8]) -> Result<()> {
    let actual = sha256_digest(bytes);
    if actual == digest {
        Ok(())
    } else {
        Err(archive_error(
            path,
            format!("blob {digest} is corrupt (its bytes hash to {actual})"),
        ))
    }
}

/// Pass 2: streams the listed entries into the content store.
async fn stream_entries(
    service: &ImageService,
    lease: &crate::client::Lease,
    path: &Path,
    mut wanted: HashMap<String, (Descriptor, String)>,
    progress: &ProgressFn<'_>,
) -> Result<()> {
    type Chunks = tokio::sync::mpsc::Receiver<std::result::Result<Bytes, String>>;
    let (entry_tx, mut entry_rx) = tokio::sync::mpsc::channel::<(String, Chunks)>(1);
    let media_types: HashMap<String, String> = wanted
        .iter()
        .map(|(name, (d, _))| (name.clone(), d.media_type.clone()))
        .collect();
    let limit = service.max_unpacked();
    let archive_path: PathBuf = path.to_path_buf();
    let reader = tokio::task::spawn_blocking(move || -> Result<()> {
        let mut archive = tar::Archive::new(open(&archive_path, limit)?);
        let entries = archive
            .entries()
            .map_err(|e| archive_error(&archive_path, format!("not a tar archive: {e}")))?;
        for entry in entries {
            let mut entry = entry
                .map_err(|e| archive_error(&archive_path, format!("corrupt tar archive: {e}")))?;
            let Ok(name) = entry.path().map(|p| normalise(&p)) else {
                continue;
            };
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let Some(media_type) = media_types.get(&name) else {
                continue;
            };
            let mut meter = super::bound::Meter::new(&format!("layer {name}"), media_type, limit);
            let (chunk_tx, chunk_rx) = tokio::sync::mpsc::channel(2);
            if entry_tx.blocking_send((name, chunk_rx)).is_err() {
                return Ok(()); // the writer gave up; it reports why
            }
            loop {
                let mut buf = vec![0u8; CHUNK];
                match entry.read(&mut buf) {
                    Ok(0) => {
                        if let Err(e) = meter.finish() {
                            let _ = chunk_tx.blocking_send(Err(e));
                            return Ok(());
                        }
                        break;
                    }
                    Ok(n) => {
                        buf.truncate(n);
                        if let Err(e) = meter.feed(&buf) {
                            let _ = chunk_tx.blocking_send(Err(e));
                            return Ok(());
                        }
                        if chunk_tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                            return Ok(());
                        }
                    }
                    Err(e) => {
                        let _ = chunk_tx.blocking_send(Err(e.to_string()));
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    });
    let conn = service.conn();
    while let Some((name, chunks)) = entry_rx.recv().await {
        let Some((descriptor, diff_id)) = wanted.remove(&name) else {
            continue;
        };
        let stream = tokio_stream::wrappers::ReceiverStream::new(chunks);
        content::write_blob(
            conn,
            lease,
            &descriptor.digest,
            descriptor.size,
            layer_labels(&diff_id),
            stream,
        )
        .await
        .map_err(|e| archive_error(path, format!("layer {name}: {}", e.chain())))?;
        progress(Progress::Fetched {
            digest: descriptor.digest.clone(),
            bytes: descriptor.size as u64,
            cached: false,
        });
    }
    reader
        .await
        .map_err(|e| archive_error(path, format!("reader task failed: {e}")))??;
    match wanted.keys().next() {
        Some(missing) => Err(archive_error(
            path,
            format!("layer {missing} vanished from the archive between reads"),
        )),
        None => Ok(()),
    }
}
