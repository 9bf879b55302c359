//! Writing the image: the gzip layer (reproducible tar entries) and the OCI image layout
//! around it (blobs by digest, manifest, config, index), as one tar archive.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use flate2::Compression;
use flate2::write::GzEncoder;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

use crate::image::platform::Platform;

use super::*;

use super::tree::*;

/// Digests of the layer written by [`write_layer`].
pub(super) struct LayerInfo {
    /// sha256 of the compressed layer.
    pub(super) digest: String,
    /// sha256 of the uncompressed tar.
    pub(super) diff_id: String,
    /// Compressed size.
    pub(super) size: u64,
}

/// Writes the layer as a gzip-compressed tar to `file`, streaming file
/// contents, hashing the tar and the gzip stream on the way.
pub(super) fn write_layer(
    tree: &Tree,
    epoch: u64,
    file: &File,
    file_path: &Path,
) -> Result<LayerInfo, BuildError> {
    let write_error = io_error("write", file_path);
    let compressed = HashingWriter::new(BufWriter::new(file));
    let gzip = GzEncoder::new(compressed, Compression::new(GZIP_LEVEL));
    let mut tar = tar::Builder::new(HashingWriter::new(gzip));
    for (path, node) in tree {
        match node {
            Node::Dir { mode } => {
                let mut header = tar_header(EntryType::Directory, *mode, 0, epoch);
                tar.append_data(&mut header, format!("{path}/"), io::empty())
                    .map_err(io_error("write", file_path))?;
            }
            Node::Symlink { target } => {
                append_symlink(&mut tar, path, target, epoch)
                    .map_err(io_error("write", file_path))?;
            }
            Node::File { src, mode } => {
                let source = File::open(src).map_err(io_error("open", src))?;
                let size = source.metadata().map_err(io_error("inspect", src))?.len();
                let mut reader = ExactReader::new(BufReader::new(source), size);
                let mut header = tar_header(EntryType::Regular, *mode, size, epoch);
                if let Err(e) = tar.append_data(&mut header, path, &mut reader) {
                    let op = if reader.failed { "read" } else { "write" };
                    let path = if reader.failed { src } else { file_path };
                    return Err(io_error(op, path)(e));
                }
            }
        }
    }
    let uncompressed = tar.into_inner().map_err(io_error("write", file_path))?;
    let (gzip, diff_id, _) = uncompressed.finish();
    let compressed = gzip.finish().map_err(io_error("write", file_path))?;
    let (buffered, digest, size) = compressed.finish();
    buffered
        .into_inner()
        .map_err(|e| write_error(e.into_error()))?;
    Ok(LayerInfo {
        digest,
        diff_id,
        size,
    })
}

/// The archive: small metadata entries, then the layer streamed from its
/// temporary file. Returns the archive's size.
pub(super) fn write_archive(
    out: &Path,
    dir: &Path,
    epoch: u64,
    small: &[(&str, &[u8])],
    (layer_name, mut layer, layer_size): (&str, &File, u64),
    layer_path: &Path,
) -> Result<u64, BuildError> {
    let tmp = tempfile::Builder::new()
        .prefix(".bramble-image-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io_error("create a temporary file in", dir))?;
    let tmp_path = tmp.path().to_path_buf();
    let write_error = io_error("write", &tmp_path);
    let mut tar = tar::Builder::new(BufWriter::new(tmp.as_file()));
    let mut small = small.iter();
    // oci-layout and index.json first, then the blob directories.
    for (name, bytes) in small.by_ref().take(2) {
        let mut header = tar_header(EntryType::Regular, 0o644, len64(bytes), epoch);
        tar.append_data(&mut header, name, *bytes)
            .map_err(io_error("write", &tmp_path))?;
    }
    for name in ["blobs/", "blobs/sha256/"] {
        let mut header = tar_header(EntryType::Directory, 0o755, 0, epoch);
        tar.append_data(&mut header, name, io::empty())
            .map_err(io_error("write", &tmp_path))?;
    }
    for (name, bytes) in small {
        let mut header = tar_header(EntryType::Regular, 0o644, len64(bytes), epoch);
        tar.append_data(&mut header, name, *bytes)
            .map_err(io_error("write", &tmp_path))?;
    }
    layer
        .seek(SeekFrom::Start(0))
        .map_err(io_error("read", layer_path))?;
    let mut reader = ExactReader::new(BufReader::new(layer), layer_size);
    let mut header = tar_header(EntryType::Regular, 0o644, layer_size, epoch);
    if let Err(e) = tar.append_data(&mut header, layer_name, &mut reader) {
        let (op, path) = if reader.failed {
            ("read", layer_path)
        } else {
            ("write", tmp_path.as_path())
        };
        return Err(io_error(op, path)(e));
    }
    let buffered = tar.into_inner().map_err(io_error("write", &tmp_path))?;
    let file = buffered
        .into_inner()
        .map_err(|e| write_error(e.into_error()))?;
    file.set_permissions(fs::Permissions::from_mode(0o644))
        .and_then(|()| file.sync_all())
        .map_err(io_error("write", &tmp_path))?;
    let size = file
        .metadata()
        .map_err(io_error("inspect", &tmp_path))?
        .len();
    tmp.persist(out).map_err(|e| BuildError::Io {
        op: "move the finished archive to",
        path: out.to_path_buf(),
        source: e.error,
    })?;
    Ok(size)
}

/// A GNU tar header owned by root, with the build's timestamp.
pub(super) fn tar_header(kind: EntryType, mode: u32, size: u64, epoch: u64) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(epoch);
    header.set_size(size);
    header
}

/// Appends a symlink with its target byte for byte (a long one goes in a
/// GNU long-link entry, as GNU tar does).
pub(super) fn append_symlink<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    target: &[u8],
    epoch: u64,
) -> io::Result<()> {
    const LINK_FIELD: usize = 100;
    let mut header = tar_header(EntryType::Symlink, 0o777, 0, epoch);
    match target.get(..LINK_FIELD) {
        Some(head) if target.len() > LINK_FIELD => {
            let mut long = Header::new_gnu();
            let name = b"././@LongLink";
            if let Some(slot) = long.as_old_mut().name.get_mut(..name.len()) {
                slot.copy_from_slice(name);
            }
            long.set_mode(0o644);
            long.set_uid(0);
            long.set_gid(0);
            long.set_mtime(0);
            long.set_size(len64(target) + 1);
            long.set_entry_type(EntryType::GNULongLink);
            long.set_cksum();
            tar.append(&long, target.chain(&[0u8][..]))?;
            header.set_link_name_literal(head)?;
        }
        _ => header.set_link_name_literal(target)?,
    }
    tar.append_data(&mut header, path, io::empty())
}

/// Passes writes through and computes their sha256 and length.
pub(super) struct HashingWriter<W> {
    pub(super) inner: W,
    pub(super) hasher: Sha256,
    pub(super) written: u64,
}

impl<W> HashingWriter<W> {
    pub(super) fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }

    /// The inner writer, the `sha256:<hex>` digest and the byte count.
    pub(super) fn finish(self) -> (W, String, u64) {
        let digest = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        (self.inner, digest, self.written)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        let written = buf.get(..n).unwrap_or(buf);
        self.hasher.update(written);
        self.written += len64(written);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Yields exactly `remaining` bytes of `inner`: stops there if the file
/// grew, fails if it shrank, and remembers whether reading failed.
pub(super) struct ExactReader<R> {
    pub(super) inner: R,
    pub(super) remaining: u64,
    pub(super) failed: bool,
}

impl<R> ExactReader<R> {
    pub(super) fn new(inner: R, size: u64) -> Self {
        Self {
            inner,
            remaining: size,
            failed: false,
        }
    }
}

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let max = usize::try_from(self.remaining).map_or(buf.len(), |r| r.min(buf.len()));
        let Some(slot) = buf.get_mut(..max) else {
            return Ok(0);
        };
        match self.inner.read(slot) {
            Ok(0) => {
                self.failed = true;
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file shrank while it was being read",
                ))
            }
            Ok(n) => {
                self.remaining = self.remaining.saturating_sub(n as u64);
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        }
    }
}

pub(super) fn io_error(op: &'static str, path: &Path) -> impl Fn(io::Error) -> BuildError {
    move |source| BuildError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

pub(super) fn len64(bytes: &[u8]) -> u64 {
    u64::try_from(bytes.len()).unwrap_or(u64::MAX)
}

pub(super) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// `blobs/sha256/<hex>` for `sha256:<hex>`.
pub(super) fn blob_path(digest: &str) -> String {
    format!("blobs/{}", digest.replacen(':', "/", 1))
}

pub(super) fn to_json<T: Serialize>(value: &T, what: &'static str) -> Result<Vec<u8>, BuildError> {
    serde_json::to_vec(value).map_err(|source| BuildError::Json { what, source })
}

/// `1970-01-01T00:00:00Z` for 0. `seconds` is at most [`MAX_EPOCH`].
pub(super) fn rfc3339(seconds: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds.min(MAX_EPOCH));
    humantime::format_rfc3339_seconds(time).to_string()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct DescriptorJson<'a> {
    pub(super) media_type: &'a str,
    pub(super) digest: &'a str,
    pub(super) size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) platform: Option<&'a Platform>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) annotations: BTreeMap<&'a str, &'a str>,
}

impl<'a> DescriptorJson<'a> {
    pub(super) fn new(media_type: &'a str, digest: &'a str, size: u64) -> Self {
        Self {
            media_type,
            digest,
            size,
            platform: None,
            annotations: BTreeMap::new(),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct IndexJson<'a> {
    pub(super) schema_version: u32,
    pub(super) media_type: &'a str,
    pub(super) manifests: [DescriptorJson<'a>; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ManifestJson<'a> {
    pub(super) schema_version: u32,
    pub(super) media_type: &'a str,
    pub(super) config: DescriptorJson<'a>,
    pub(super) layers: [DescriptorJson<'a>; 1],
}

#[derive(Serialize)]
pub(super) struct ConfigJson<'a> {
    pub(super) created: &'a str,
    pub(super) architecture: &'a str,
    pub(super) os: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) variant: Option<&'a str>,
    pub(super) config: &'a RunConfigJson,
    pub(super) rootfs: RootFsJson<'a>,
    pub(super) history: [HistoryJson<'a>; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct RunConfigJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) user: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) exposed_ports: BTreeMap<String, EmptyJson>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) env: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) entrypoint: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) cmd: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) working_dir: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) labels: BTreeMap<String, String>,
}

/// Serialises as `{}`.
#[derive(Serialize)]
pub(super) struct EmptyJson {}

#[derive(Serialize)]
pub(super) struct RootFsJson<'a> {
    #[serde(rename = "type")]
    pub(super) kind: &'a str,
    pub(super) diff_ids: [&'a str; 1],
}

#[derive(Serialize)]
pub(super) struct HistoryJson<'a> {
    pub(super) created: &'a str,
    pub(super) created_by: &'a str,
}
