//! Build OCI images without Docker: from directories, files or a single
//! static executable, written as an OCI image-layout tar archive (what
//! `ctr images import` and `skopeo copy oci-archive:...` read).
//!
//! The image has one gzip layer. The archive is reproducible: the same
//! inputs give the same bytes (sorted entries, fixed timestamps taken from
//! `SOURCE_DATE_EPOCH` or 0, owner root, fixed gzip settings).
//!
//! ```no_run
//! # use bramble_runtime::image::{build::ImageBuilder, reference::ImageRef};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let built = ImageBuilder::new(ImageRef::parse("hello")?)
//!     .binary("target/aarch64-unknown-linux-musl/release/hello")
//!     .expose(8080)
//!     .write_oci_archive(std::path::Path::new("hello.tar"))?;
//! println!("{} {}", built.name, built.manifest_digest);
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

use super::platform::{ElfInfo, Platform, PlatformError};
use super::reference::ImageRef;

const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_TYPE_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
/// Where [`ImageBuilder::binary`] puts the executable.
pub const BINARY_DIR: &str = "/usr/local/bin";
/// The PATH an image gets when no `PATH` is set (as BuildKit does for `FROM scratch`).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const GZIP_LEVEL: u32 = 6;
/// The latest timestamp accepted: 9999-12-31T23:59:59Z.
const MAX_EPOCH: u64 = 253_402_300_799;
/// How much of a binary is read at most to find its ELF program headers.
const ELF_READ_MAX: u64 = 16 << 20;
/// Prefix of the names containerd and overlayfs treat as deletion markers.
const WHITEOUT_PREFIX: &str = ".wh.";

/// Errors while building an image. Each names the path and what was being done.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A file-system operation failed.
    #[error("failed to {op} {}", path.display())]
    Io {
        /// What was being done: "read", "open", "read the directory"...
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A destination path inside the image is not acceptable.
    #[error("invalid destination {dest:?} in the image: {reason}")]
    InvalidDestination {
        /// The destination as given.
        dest: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A path would be placed under something that is not a directory.
    #[error("cannot add {path} to the image: {parent} is already there and is not a directory")]
    NotADirectoryInImage {
        /// The path being added, in the image.
        path: String,
        /// Its ancestor that is a file or a symlink.
        parent: String,
    },
    /// A file or symlink would replace a directory that has content.
    #[error(
        "cannot add {path} to the image as a non-directory: a directory with content is already there"
    )]
    ReplacesDirectory {
        /// The path, in the image.
        path: String,
    },
    /// A source is a socket, device or FIFO.
    #[error("cannot add {} to the image: it is a {kind}, and only regular files, directories and symlinks are supported", path.display())]
    UnsupportedFileType {
        /// The offending file.
        path: PathBuf,
        /// "socket", "FIFO", "block device", "character device".
        kind: &'static str,
    },
    /// `add_dir` was given something that is not a directory.
    #[error("cannot add {} as a directory: it is not a directory", path.display())]
    NotADirectory {
        /// The source path.
        path: PathBuf,
    },
    /// `add_file` or `binary` was given something that is not a regular file.
    #[error("cannot add {} as a file: it is not a regular file", path.display())]
    NotAFile {
        /// The source path.
        path: PathBuf,
    },
    /// A file name that is not UTF-8, or a path without a file name.
    #[error("cannot add {} to the image: its name is not valid UTF-8 or it has no file name", path.display())]
    BadFileName {
        /// The source path.
        path: PathBuf,
    },
    /// A file whose name would make it an overlay whiteout.
    #[error("cannot add {} to the image: names starting with \".wh.\" are reserved for layer whiteouts", path.display())]
    Whiteout {
        /// The source path.
        path: PathBuf,
    },
    /// The binary is not a usable ELF executable.
    #[error("binary {} is not a usable executable", path.display())]
    BinaryNotExecutable {
        /// The binary.
        path: PathBuf,
        /// What is wrong with its ELF header.
        #[source]
        source: PlatformError,
    },
    /// The binary needs a dynamic loader and shared libraries.
    #[error(
        "binary {} is dynamically linked: it needs the loader {interpreter} and shared libraries \
         that the image does not have; link it statically (RUSTFLAGS=\"-C target-feature=+crt-static\", \
         or a musl target such as aarch64-unknown-linux-musl or armv7-unknown-linux-musleabihf), \
         or add the loader and libraries with add_dir",
        path.display()
    )]
    DynamicBinary {
        /// The binary.
        path: PathBuf,
        /// Its PT_INTERP, e.g. `/lib/ld-linux-aarch64.so.1`.
        interpreter: String,
    },
    /// The binary is for another platform than the image.
    #[error("binary {} is {binary} but the image platform is {image}", path.display())]
    PlatformMismatch {
        /// The binary.
        path: PathBuf,
        /// The binary's platform, from its ELF header.
        binary: Box<Platform>,
        /// The image's platform.
        image: Box<Platform>,
    },
    /// An image being built cannot be named by digest: the digest is its result.
    #[error("cannot build an image named {name}: the name must have a tag, not a digest")]
    NamedByDigest {
        /// The name given.
        name: ImageRef,
    },
    /// An environment variable name that is empty or contains '=' or NUL.
    #[error("invalid environment variable name {key:?}")]
    InvalidEnv {
        /// The variable name.
        key: String,
    },
    /// A working directory that is not an absolute path.
    #[error("invalid working directory {dir:?}: it must be an absolute path")]
    InvalidWorkdir {
        /// The directory given.
        dir: String,
    },
    /// Port 0 cannot be exposed.
    #[error("cannot expose port 0")]
    InvalidPort,
    /// `SOURCE_DATE_EPOCH` is not a number of seconds up to year 9999.
    #[error("invalid SOURCE_DATE_EPOCH {value:?}: expected seconds since 1970 (up to year 9999)")]
    SourceDateEpoch {
        /// The value found.
        value: String,
    },
    /// Serialising image metadata failed.
    #[error("failed to serialise the image {what}")]
    Json {
        /// "config", "manifest" or "index".
        what: &'static str,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
}

/// Describes the image [`ImageBuilder::write_oci_archive`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    /// The image's name, e.g. `docker.io/library/hello:latest`.
    pub name: ImageRef,
    /// The platform it is for.
    pub platform: Platform,
    /// `sha256:...` of the manifest: the image's identity in a registry or containerd.
    pub manifest_digest: String,
    /// `sha256:...` of the config (the image ID Docker shows).
    pub config_digest: String,
    /// `sha256:...` of the compressed layer.
    pub layer_digest: String,
    /// `sha256:...` of the uncompressed layer tar.
    pub diff_id: String,
    /// Size of the archive in bytes.
    pub archive_size: u64,
}

/// What goes into the layer, in the order it was asked for.
#[derive(Debug, Clone)]
enum Source {
    Dir {
        src: PathBuf,
        dest: String,
    },
    File {
        src: PathBuf,
        dest: String,
        mode: Option<u32>,
    },
    Binary {
        src: PathBuf,
    },
}

/// Builds a single-layer OCI image and writes it as an OCI image-layout tar.
///
/// The methods only record what to do; everything is checked and read by
/// [`write_oci_archive`](Self::write_oci_archive). Later additions at the
/// same path replace earlier ones.
#[derive(Debug, Clone)]
pub struct ImageBuilder {
    name: ImageRef,
    platform: Option<Platform>,
    sources: Vec<Source>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    env: Vec<(String, String)>,
    workdir: Option<String>,
    user: Option<String>,
    exposed_ports: BTreeSet<u16>,
    labels: BTreeMap<String, String>,
    source_date_epoch: Option<u64>,
}

impl ImageBuilder {
    /// A builder for an image called `name` (which must have a tag, not a digest).
    pub fn new(name: ImageRef) -> Self {
        Self {
            name,
            platform: None,
            sources: Vec::new(),
            entrypoint: None,
            cmd: None,
            env: Vec::new(),
            workdir: None,
            user: None,
            exposed_ports: BTreeSet::new(),
            labels: BTreeMap::new(),
            source_date_epoch: None,
        }
    }

    /// The image's platform. Default: the platform of the [`binary`](Self::binary)
    /// if there is one, else [`Platform::host`]. A binary for another platform
    /// is then an error.
    pub fn platform(mut self, platform: Platform) -> Self {
        self.platform = Some(platform);
        self
    }

    /// Copies the directory tree `src` into the image at `dest` (`/` for the
    /// root), keeping modes and symlinks (not followed); hard links become
    /// separate regular files.
    pub fn add_dir(mut self, src: impl AsRef<Path>, dest: impl Into<String>) -> Self {
        self.sources.push(Source::Dir {
            src: src.as_ref().to_path_buf(),
            dest: dest.into(),
        });
        self
    }

    /// Copies the file `src` (a symlink is followed) to `dest`; a `dest`
    /// ending in `/` is a directory to put it in. `mode` defaults to the
    /// file's own permission bits.
    pub fn add_file(
        mut self,
        src: impl AsRef<Path>,
        dest: impl Into<String>,
        mode: Option<u32>,
    ) -> Self {
        self.sources.push(Source::File {
            src: src.as_ref().to_path_buf(),
            dest: dest.into(),
            mode,
        });
        self
    }

    /// Adds a static ELF executable as `/usr/local/bin/<file name>` (mode
    /// 0755) and makes it the entrypoint unless [`entrypoint`](Self::entrypoint)
    /// is set. Its ELF header decides the platform unless
    /// [`platform`](Self::platform) is set. A dynamically linked binary is
    /// refused.
    pub fn binary(mut self, src: impl AsRef<Path>) -> Self {
        self.sources.push(Source::Binary {
            src: src.as_ref().to_path_buf(),
        });
        self
    }

    /// The image's `Entrypoint`.
    pub fn entrypoint(mut self, args: Vec<String>) -> Self {
        self.entrypoint = Some(args);
        self
    }

    /// The image's `Cmd` (the arguments to the entrypoint).
    pub fn cmd(mut self, args: Vec<String>) -> Self {
        self.cmd = Some(args);
        self
    }

    /// Sets an environment variable (a later value for the same key wins).
    /// Without a `PATH`, the image gets the usual default one.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The image's `WorkingDir` (absolute).
    pub fn workdir(mut self, dir: impl Into<String>) -> Self {
        self.workdir = Some(dir.into());
        self
    }

    /// The image's `User`: `name`, `uid`, `uid:gid`...
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// Declares a TCP port the image listens on (`ExposedPorts` `"8080/tcp"`).
    pub fn expose(mut self, port: u16) -> Self {
        self.exposed_ports.insert(port);
        self
    }

    /// Sets a label in the image config.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// The timestamp (seconds since 1970) of every file and of the image;
    /// overrides the `SOURCE_DATE_EPOCH` environment variable. Default 0.
    pub fn source_date_epoch(mut self, seconds: u64) -> Self {
        self.source_date_epoch = Some(seconds);
        self
    }

    /// Reads the sources, builds the image and writes it to `out` as an OCI
    /// image-layout tar archive, atomically (a temporary file next to `out`
    /// renamed into place). Entries come in the order `oci-layout`,
    /// `index.json`, `blobs/`, `blobs/sha256/`, manifest, config, layer.
    pub fn write_oci_archive(&self, out: &Path) -> Result<BuiltImage, BuildError> {
        if self.name.digest().is_some() {
            return Err(BuildError::NamedByDigest {
                name: self.name.clone(),
            });
        }
        let epoch = match self.source_date_epoch {
            Some(seconds) if seconds <= MAX_EPOCH => seconds,
            Some(seconds) => {
                return Err(BuildError::SourceDateEpoch {
                    value: seconds.to_string(),
                });
            }
            None => parse_source_date_epoch(std::env::var("SOURCE_DATE_EPOCH").ok().as_deref())?,
        };
        let platform = self.resolve_platform()?;
        let run_config = self.run_config()?;
        let tree = self.collect_tree()?;

        let dir = match out.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let layer_file = tempfile::Builder::new()
            .prefix(".bramble-layer-")
            .tempfile_in(dir)
            .map_err(io_error("create a temporary file in", dir))?;
        let layer = write_layer(&tree, epoch, layer_file.as_file(), layer_file.path())?;

        let created = rfc3339(epoch);
        let config = ConfigJson {
            created: &created,
            architecture: platform.architecture(),
            os: platform.os(),
            variant: platform.variant(),
            config: &run_config,
            rootfs: RootFsJson {
                kind: "layers",
                diff_ids: [layer.diff_id.as_str()],
            },
            history: [HistoryJson {
                created: &created,
                created_by: "bramble image build",
            }],
        };
        let config = to_json(&config, "config")?;
        let config_digest = sha256_digest(&config);
        let manifest = ManifestJson {
            schema_version: 2,
            media_type: MEDIA_TYPE_MANIFEST,
            config: DescriptorJson::new(MEDIA_TYPE_CONFIG, &config_digest, len64(&config)),
            layers: [DescriptorJson::new(
                MEDIA_TYPE_LAYER,
                &layer.digest,
                layer.size,
            )],
        };
        let manifest = to_json(&manifest, "manifest")?;
        let manifest_digest = sha256_digest(&manifest);
        let full_name = self.name.to_string();
        let tag = self.name.tag().unwrap_or(super::reference::DEFAULT_TAG);
        let index = IndexJson {
            schema_version: 2,
            media_type: MEDIA_TYPE_INDEX,
            manifests: [DescriptorJson {
                platform: Some(&platform),
                annotations: BTreeMap::from([
                    (ANNOTATION_CONTAINERD_NAME, full_name.as_str()),
                    (ANNOTATION_REF_NAME, tag),
                ]),
                ..DescriptorJson::new(MEDIA_TYPE_MANIFEST, &manifest_digest, len64(&manifest))
            }],
        };
        let index = to_json(&index, "index")?;

        let archive_size = write_archive(
            out,
            dir,
            epoch,
            &[
                ("oci-layout", OCI_LAYOUT),
                ("index.json", &index),
                (&blob_path(&manifest_digest), &manifest),
                (&blob_path(&config_digest), &config),
            ],
            (&blob_path(&layer.digest), layer_file.as_file(), layer.size),
            layer_file.path(),
        )?;

        Ok(BuiltImage {
            name: self.name.clone(),
            platform,
            manifest_digest,
            config_digest,
            layer_digest: layer.digest,
            diff_id: layer.diff_id,
            archive_size,
        })
    }

    /// The explicit platform, or the binaries', or the host's; checks that
    /// every binary is static and fits.
    fn resolve_platform(&self) -> Result<Platform, BuildError> {
        let mut platform = self.platform.clone();
        for source in &self.sources {
            let Source::Binary { src } = source else {
                continue;
            };
            let elf = read_elf(src)?;
            if let Some(interpreter) = elf.interpreter {
                return Err(BuildError::DynamicBinary {
                    path: src.clone(),
                    interpreter,
                });
            }
            match &platform {
                Some(image) if !binary_fits(image, &elf.platform) => {
                    return Err(BuildError::PlatformMismatch {
                        path: src.clone(),
                        binary: Box::new(elf.platform),
                        image: Box::new(image.clone()),
                    });
                }
                Some(_) => {}
                None if elf.platform.architecture() == "arm"
                    && elf.platform.variant().is_none() =>
                {
                    platform = Some(Platform::new(elf.platform.os(), "arm", Some("v7")));
                }
                None => platform = Some(elf.platform),
            }
        }
        Ok(platform.unwrap_or_else(Platform::host))
    }

    fn run_config(&self) -> Result<RunConfigJson, BuildError> {
        let mut env: Vec<(String, String)> = Vec::new();
        for (key, value) in &self.env {
            if key.is_empty() || key.contains(['=', '\0']) {
                return Err(BuildError::InvalidEnv { key: key.clone() });
            }
            match env.iter_mut().find(|(k, _)| k == key) {
                Some(slot) => slot.1.clone_from(value),
                None => env.push((key.clone(), value.clone())),
            }
        }
        if !env.iter().any(|(k, _)| k == "PATH") {
            env.insert(0, ("PATH".to_owned(), DEFAULT_PATH.to_owned()));
        }
        if let Some(dir) = &self.workdir
            && !dir.starts_with('/')
        {
            return Err(BuildError::InvalidWorkdir { dir: dir.clone() });
        }
        if self.exposed_ports.contains(&0) {
            return Err(BuildError::InvalidPort);
        }
        let binary_entrypoint = self.sources.iter().rev().find_map(|s| match s {
            Source::Binary { src } => Some(binary_dest(src)),
            _ => None,
        });
        let entrypoint = match (&self.entrypoint, binary_entrypoint) {
            (Some(args), _) => Some(args.clone()),
            (None, Some(dest)) => Some(vec![dest?]),
            (None, None) => None,
        };
        Ok(RunConfigJson {
            user: self.user.clone(),
            exposed_ports: self
                .exposed_ports
                .iter()
                .map(|port| (format!("{port}/tcp"), EmptyJson {}))
                .collect(),
            env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
            entrypoint: entrypoint.filter(|args| !args.is_empty()),
            cmd: self.cmd.clone().filter(|args| !args.is_empty()),
            working_dir: self.workdir.clone(),
            labels: self.labels.clone(),
        })
    }

    /// Everything the layer will hold, by path relative to the image root.
    fn collect_tree(&self) -> Result<Tree, BuildError> {
        let mut tree = Tree::new();
        for source in &self.sources {
            match source {
                Source::Dir { src, dest } => add_dir_tree(&mut tree, src, dest)?,
                Source::File { src, dest, mode } => {
                    let dest = if dest.ends_with('/') {
                        format!("{dest}{}", file_name(src)?)
                    } else {
                        dest.clone()
                    };
                    add_one_file(&mut tree, src, &dest, *mode)?;
                }
                Source::Binary { src } => {
                    add_one_file(&mut tree, src, &binary_dest(src)?, Some(0o755))?;
                }
            }
        }
        if !tree.contains_key("tmp") {
            tree.insert("tmp".to_owned(), Node::Dir { mode: 0o1777 });
        }
        Ok(tree)
    }
}

/// One entry of the layer.
#[derive(Debug, Clone)]
enum Node {
    Dir { mode: u32 },
    File { src: PathBuf, mode: u32 },
    Symlink { target: Vec<u8> },
}

/// Layer entries by path relative to the root, without leading or trailing
/// '/': sorted, and every ancestor of an entry is a `Node::Dir` in it.
type Tree = BTreeMap<String, Node>;

/// Inserts `path`, creating missing parent directories (0755), refusing to
/// put anything under a non-directory or a non-directory over a directory
/// that has content.
fn insert_node(tree: &mut Tree, path: &str, node: Node) -> Result<(), BuildError> {
    for (slash, _) in path.match_indices('/') {
        let ancestor = path.get(..slash).unwrap_or_default();
        match tree.get(ancestor) {
            Some(Node::Dir { .. }) => {}
            Some(_) => {
                return Err(BuildError::NotADirectoryInImage {
                    path: format!("/{path}"),
                    parent: format!("/{ancestor}"),
                });
            }
            None => {
                tree.insert(ancestor.to_owned(), Node::Dir { mode: 0o755 });
            }
        }
    }
    if !matches!(node, Node::Dir { .. }) {
        let prefix = format!("{path}/");
        if tree
            .range(prefix.clone()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(&prefix))
        {
            return Err(BuildError::ReplacesDirectory {
                path: format!("/{path}"),
            });
        }
    }
    tree.insert(path.to_owned(), node);
    Ok(())
}

/// Checks an absolute destination and returns it relative to the root
/// ("" for the root itself), without "." or empty components.
fn normalise_dest(dest: &str) -> Result<String, BuildError> {
    let invalid = |reason| BuildError::InvalidDestination {
        dest: dest.to_owned(),
        reason,
    };
    if !dest.starts_with('/') {
        return Err(invalid("it must be an absolute path"));
    }
    if dest.contains('\0') {
        return Err(invalid("it contains a NUL byte"));
    }
    let mut parts = Vec::new();
    for part in dest.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(invalid("'..' is not allowed")),
            p if p.starts_with(WHITEOUT_PREFIX) => {
                return Err(invalid(
                    "names starting with \".wh.\" are reserved for layer whiteouts",
                ));
            }
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

fn add_dir_tree(tree: &mut Tree, src: &Path, dest: &str) -> Result<(), BuildError> {
    let root = normalise_dest(dest)?;
    // The directory named by the caller may be reached through a symlink.
    let meta = fs::metadata(src).map_err(io_error("inspect", src))?;
    if !meta.is_dir() {
        return Err(BuildError::NotADirectory {
            path: src.to_path_buf(),
        });
    }
    if !root.is_empty() {
        insert_node(
            tree,
            &root,
            Node::Dir {
                mode: meta.mode() & 0o7777,
            },
        )?;
    }
    let mut stack = vec![(src.to_path_buf(), root)];
    while let Some((dir, image_dir)) = stack.pop() {
        let mut names = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_error("read the directory", &dir))? {
            names.push(
                entry
                    .map_err(io_error("read the directory", &dir))?
                    .file_name(),
            );
        }
        names.sort();
        for name in names {
            let path = dir.join(&name);
            let Some(name) = name.to_str() else {
                return Err(BuildError::BadFileName { path });
            };
            if name.starts_with(WHITEOUT_PREFIX) {
                return Err(BuildError::Whiteout { path });
            }
            let image_path = if image_dir.is_empty() {
                name.to_owned()
            } else {
                format!("{image_dir}/{name}")
            };
            let meta = fs::symlink_metadata(&path).map_err(io_error("inspect", &path))?;
            let file_type = meta.file_type();
            let mode = meta.mode() & 0o7777;
            if file_type.is_dir() {
                insert_node(tree, &image_path, Node::Dir { mode })?;
                stack.push((path, image_path));
            } else if file_type.is_file() {
                insert_node(tree, &image_path, Node::File { src: path, mode })?;
            } else if file_type.is_symlink() {
                let target = fs::read_link(&path)
                    .map_err(io_error("read the symlink", &path))?
                    .into_os_string()
                    .into_vec();
                insert_node(tree, &image_path, Node::Symlink { target })?;
            } else {
                let kind = if file_type.is_socket() {
                    "socket"
                } else if file_type.is_fifo() {
                    "FIFO"
                } else if file_type.is_block_device() {
                    "block device"
                } else if file_type.is_char_device() {
                    "character device"
                } else {
                    "special file"
                };
                return Err(BuildError::UnsupportedFileType { path, kind });
            }
        }
    }
    Ok(())
}

fn add_one_file(
    tree: &mut Tree,
    src: &Path,
    dest: &str,
    mode: Option<u32>,
) -> Result<(), BuildError> {
    let path = normalise_dest(dest)?;
    if path.is_empty() {
        return Err(BuildError::InvalidDestination {
            dest: dest.to_owned(),
            reason: "a file cannot replace the root directory",
        });
    }
    let meta = fs::metadata(src).map_err(io_error("inspect", src))?;
    if !meta.is_file() {
        return Err(BuildError::NotAFile {
            path: src.to_path_buf(),
        });
    }
    let mode = mode.unwrap_or(meta.mode()) & 0o7777;
    insert_node(
        tree,
        &path,
        Node::File {
            src: src.to_path_buf(),
            mode,
        },
    )
}

fn file_name(src: &Path) -> Result<&str, BuildError> {
    src.file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| BuildError::BadFileName {
            path: src.to_path_buf(),
        })
}

fn binary_dest(src: &Path) -> Result<String, BuildError> {
    Ok(format!("{BINARY_DIR}/{}", file_name(src)?))
}

/// Whether a binary for `binary` belongs in an image for `image`. An ELF
/// header does not tell the arm variant, so any arm variant fits.
fn binary_fits(image: &Platform, binary: &Platform) -> bool {
    image.os() == binary.os()
        && image.architecture() == binary.architecture()
        && (binary.variant().is_none() || image.variant() == binary.variant())
}

/// Reads as much of `path` as its ELF program headers need.
fn read_elf(path: &Path) -> Result<ElfInfo, BuildError> {
    let mut file = File::open(path).map_err(io_error("open", path))?;
    let meta = file.metadata().map_err(io_error("inspect", path))?;
    if !meta.is_file() {
        return Err(BuildError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let mut want: u64 = 64 * 1024;
    loop {
        let mut head = Vec::new();
        file.seek(SeekFrom::Start(0))
            .and_then(|_| (&mut file).take(want).read_to_end(&mut head))
            .map_err(io_error("read", path))?;
        match Platform::from_elf(&head) {
            Err(PlatformError::TruncatedElf { needed, .. })
                if needed > want && needed <= ELF_READ_MAX && len64(&head) == want =>
            {
                want = needed;
            }
            result => {
                return result.map_err(|source| BuildError::BinaryNotExecutable {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
    }
}

fn parse_source_date_epoch(value: Option<&str>) -> Result<u64, BuildError> {
    let Some(value) = value.filter(|v| !v.trim().is_empty()) else {
        return Ok(0);
    };
    match value.trim().parse::<u64>() {
        Ok(seconds) if seconds <= MAX_EPOCH => Ok(seconds),
        _ => Err(BuildError::SourceDateEpoch {
            value: value.to_owned(),
        }),
    }
}

/// Digests of the layer written by [`write_layer`].
struct LayerInfo {
    /// sha256 of the compressed layer.
    digest: String,
    /// sha256 of the uncompressed tar.
    diff_id: String,
    /// Compressed size.
    size: u64,
}

/// Writes the layer as a gzip-compressed tar to `file`, streaming file
/// contents, hashing the tar and the gzip stream on the way.
fn write_layer(
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
fn write_archive(
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
fn tar_header(kind: EntryType, mode: u32, size: u64, epoch: u64) -> Header {
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
fn append_symlink<W: Write>(
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
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W> HashingWriter<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }

    /// The inner writer, the `sha256:<hex>` digest and the byte count.
    fn finish(self) -> (W, String, u64) {
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
struct ExactReader<R> {
    inner: R,
    remaining: u64,
    failed: bool,
}

impl<R> ExactReader<R> {
    fn new(inner: R, size: u64) -> Self {
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

fn io_error(op: &'static str, path: &Path) -> impl Fn(io::Error) -> BuildError {
    move |source| BuildError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn len64(bytes: &[u8]) -> u64 {
    u64::try_from(bytes.len()).unwrap_or(u64::MAX)
}

fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// `blobs/sha256/<hex>` for `sha256:<hex>`.
fn blob_path(digest: &str) -> String {
    format!("blobs/{}", digest.replacen(':', "/", 1))
}

fn to_json<T: Serialize>(value: &T, what: &'static str) -> Result<Vec<u8>, BuildError> {
    serde_json::to_vec(value).map_err(|source| BuildError::Json { what, source })
}

/// `1970-01-01T00:00:00Z` for 0. `seconds` is at most [`MAX_EPOCH`].
fn rfc3339(seconds: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds.min(MAX_EPOCH));
    humantime::format_rfc3339_seconds(time).to_string()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DescriptorJson<'a> {
    media_type: &'a str,
    digest: &'a str,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<&'a Platform>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<&'a str, &'a str>,
}

impl<'a> DescriptorJson<'a> {
    fn new(media_type: &'a str, digest: &'a str, size: u64) -> Self {
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
struct IndexJson<'a> {
    schema_version: u32,
    media_type: &'a str,
    manifests: [DescriptorJson<'a>; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ManifestJson<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: DescriptorJson<'a>,
    layers: [DescriptorJson<'a>; 1],
}

#[derive(Serialize)]
struct ConfigJson<'a> {
    created: &'a str,
    architecture: &'a str,
    os: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<&'a str>,
    config: &'a RunConfigJson,
    rootfs: RootFsJson<'a>,
    history: [HistoryJson<'a>; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RunConfigJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    exposed_ports: BTreeMap<String, EmptyJson>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    env: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    entrypoint: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cmd: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    working_dir: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
}

/// Serialises as `{}`.
#[derive(Serialize)]
struct EmptyJson {}

#[derive(Serialize)]
struct RootFsJson<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    diff_ids: [&'a str; 1],
}

#[derive(Serialize)]
struct HistoryJson<'a> {
    created: &'a str,
    created_by: &'a str,
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;
    use std::process::Command;

    use bramble_testkit::harness::cannot_run_here;
    use flate2::read::GzDecoder;
    use oci_spec::image::{Arch, ImageConfiguration, ImageIndex, ImageManifest, MediaType, Os};
    use serde_json::{Value, json};

    use super::*;

    const EM_X86_64: u16 = 62;
    const EM_ARM: u16 = 40;
    const EM_AARCH64: u16 = 183;

    /// One entry of a tar archive, read back.
    #[derive(Debug)]
    struct Entry {
        path: String,
        kind: EntryType,
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: u64,
        user_name: Vec<u8>,
        link: Option<Vec<u8>>,
        data: Vec<u8>,
    }

    fn read_tar(reader: impl Read) -> Vec<Entry> {
        let mut archive = tar::Archive::new(reader);
        let mut out = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let header = entry.header().clone();
            let mut data = Vec::new();
            let path = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
            let link = entry.link_name_bytes().map(|l| l.into_owned());
            entry.read_to_end(&mut data).unwrap();
            out.push(Entry {
                path,
                kind: header.entry_type(),
                mode: header.mode().unwrap(),
                uid: header.uid().unwrap(),
                gid: header.gid().unwrap(),
                mtime: header.mtime().unwrap(),
                user_name: header.username_bytes().unwrap_or_default().to_vec(),
                link,
                data,
            });
        }
        out
    }

    fn find<'a>(entries: &'a [Entry], path: &str) -> &'a Entry {
        entries
            .iter()
            .find(|e| e.path == path)
            .unwrap_or_else(|| panic!("{path} missing from {:?}", paths(entries)))
    }

    fn paths(entries: &[Entry]) -> Vec<&str> {
        entries.iter().map(|e| e.path.as_str()).collect()
    }

    fn sha(bytes: &[u8]) -> String {
        sha256_digest(bytes)
    }

    fn write(path: &Path, contents: &[u8], mode: u32) {
        fs::write(path, contents).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn mkdir(path: &Path, mode: u32) {
        fs::create_dir_all(path).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A little-endian ELF executable with one PT_LOAD and, if asked, a PT_INTERP.
    fn fake_elf(machine: u16, interp: Option<&str>) -> Vec<u8> {
        let bits64 = machine != EM_ARM;
        let (ehsize, phentsize) = if bits64 { (64, 56) } else { (52, 32) };
        let phnum = 1 + usize::from(interp.is_some());
        let interp_off = ehsize + phnum * phentsize;
        let mut out = vec![0u8; interp_off];
        let put = |out: &mut Vec<u8>, at: usize, value: u64, width: usize| {
            out[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
        };
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = if bits64 { 2 } else { 1 };
        out[5] = 1;
        out[6] = 1;
        put(&mut out, 16, 2, 2); // ET_EXEC
        put(&mut out, 18, u64::from(machine), 2);
        let word = if bits64 { 8 } else { 4 };
        let (phoff_at, phentsize_at, phnum_at) = if bits64 { (32, 54, 56) } else { (28, 42, 44) };
        put(&mut out, phoff_at, ehsize as u64, word);
        put(&mut out, phentsize_at, phentsize as u64, 2);
        put(&mut out, phnum_at, phnum as u64, 2);
        put(&mut out, ehsize, 1, 4); // PT_LOAD
        if let Some(interp) = interp {
            let at = ehsize + phentsize;
            let (off_at, filesz_at) = if bits64 { (8, 32) } else { (4, 16) };
            put(&mut out, at, 3, 4); // PT_INTERP
            put(&mut out, at + off_at, interp_off as u64, word);
            put(&mut out, at + filesz_at, interp.len() as u64 + 1, word);
            out.extend_from_slice(interp.as_bytes());
            out.push(0);
        }
        out.extend_from_slice(b"...the rest of the program...");
        out
    }

    /// A source tree with a bit of everything.
    fn sample_tree(root: &Path) {
        mkdir(root, 0o755);
        write(&root.join("hello.txt"), b"hello\n", 0o644);
        write(&root.join("run.sh"), b"#!/bin/sh\necho hi\n", 0o755);
        mkdir(&root.join("nested/a/b"), 0o755);
        write(&root.join("nested/a/b/deep.txt"), b"deep", 0o600);
        mkdir(&root.join("empty"), 0o700);
        symlink("hello.txt", root.join("link")).unwrap();
        symlink("/etc/passwd", root.join("abs")).unwrap();
        symlink("does/not/../exist//", root.join("dangling")).unwrap();
        symlink("x/".repeat(80), root.join("longlink")).unwrap();
        fs::hard_link(root.join("hello.txt"), root.join("hard")).unwrap();
        let long_dir = root.join("d".repeat(120));
        mkdir(&long_dir, 0o755);
        write(&long_dir.join("f"), b"long path", 0o644);
    }

    fn sample_builder(src: &Path, extra: &Path) -> ImageBuilder {
        ImageBuilder::new(ImageRef::parse("hello").unwrap())
            .platform(Platform::parse("linux/arm64").unwrap())
            .add_dir(src, "/app")
            .add_file(extra, "/etc/app/config.json", Some(0o600))
            .add_file(extra, "/etc/app/", None)
            .entrypoint(vec!["/app/run.sh".to_owned()])
            .cmd(vec!["--flag".to_owned()])
            .env("FOO", "bar")
            .env("LANG", "C.UTF-8")
            .env("FOO", "baz")
            .workdir("/app")
            .user("1000:1000")
            .expose(9090)
            .expose(8080)
            .label("org.opencontainers.image.title", "hello")
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        src: PathBuf,
        extra: PathBuf,
        out_dir: PathBuf,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        sample_tree(&src);
        let extra = dir.path().join("extra.json");
        write(&extra, br#"{"debug":true}"#, 0o640);
        let out_dir = dir.path().join("out");
        fs::create_dir(&out_dir).unwrap();
        Fixture {
            _dir: dir,
            src,
            extra,
            out_dir,
        }
    }

    #[test]
    fn builds_a_valid_oci_archive_from_a_directory() {
        let f = fixture();
        let out = f.out_dir.join("hello.tar");
        let built = sample_builder(&f.src, &f.extra)
            .write_oci_archive(&out)
            .unwrap();

        assert_eq!(built.name.to_string(), "docker.io/library/hello:latest");
        assert_eq!(built.platform.to_string(), "linux/arm64");
        let meta = fs::metadata(&out).unwrap();
        assert_eq!(built.archive_size, meta.len());
        assert_eq!(meta.permissions().mode() & 0o777, 0o644);
        // No temporary files are left behind.
        let left: Vec<_> = fs::read_dir(&f.out_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("hello.tar")]);

        let entries = read_tar(File::open(&out).unwrap());
        let blob = |digest: &str| blob_path(digest);
        // Metadata first, then the blobs, layer last.
        assert_eq!(
            paths(&entries),
            vec![
                "oci-layout",
                "index.json",
                "blobs/",
                "blobs/sha256/",
                blob(&built.manifest_digest).as_str(),
                blob(&built.config_digest).as_str(),
                blob(&built.layer_digest).as_str(),
            ]
        );
        for e in &entries {
            assert_eq!((e.uid, e.gid, e.mtime), (0, 0, 0), "{}", e.path);
            assert!(e.user_name.is_empty(), "{}", e.path);
            if let Some(hex) = e
                .path
                .strip_prefix("blobs/sha256/")
                .filter(|h| !h.is_empty())
            {
                assert_eq!(
                    sha(&e.data),
                    format!("sha256:{hex}"),
                    "blob content matches its name"
                );
            }
        }
        assert_eq!(
            find(&entries, "oci-layout").data,
            br#"{"imageLayoutVersion":"1.0.0"}"#
        );

        // index.json
        let index_bytes = &find(&entries, "index.json").data;
        let index: ImageIndex = serde_json::from_slice(index_bytes).unwrap();
        assert_eq!(index.schema_version(), 2);
        assert_eq!(index.media_type(), &Some(MediaType::ImageIndex));
        let [descriptor] = index.manifests().as_slice() else {
            panic!("one manifest expected")
        };
        let manifest_bytes = &find(&entries, &blob(&built.manifest_digest)).data;
        assert_eq!(descriptor.digest().to_string(), built.manifest_digest);
        assert_eq!(descriptor.size(), manifest_bytes.len() as u64);
        assert_eq!(descriptor.media_type(), &MediaType::ImageManifest);
        let raw_index: Value = serde_json::from_slice(index_bytes).unwrap();
        assert_eq!(
            raw_index["manifests"][0]["platform"],
            json!({"os": "linux", "architecture": "arm64"})
        );
        assert_eq!(
            raw_index["manifests"][0]["annotations"],
            json!({
                "io.containerd.image.name": "docker.io/library/hello:latest",
                "org.opencontainers.image.ref.name": "latest",
            })
        );

        // The manifest.
        let manifest: ImageManifest = serde_json::from_slice(manifest_bytes).unwrap();
        assert_eq!(manifest.schema_version(), 2);
        assert_eq!(manifest.media_type(), &Some(MediaType::ImageManifest));
        let config_bytes = &find(&entries, &blob(&built.config_digest)).data;
        assert_eq!(manifest.config().digest().to_string(), built.config_digest);
        assert_eq!(manifest.config().size(), config_bytes.len() as u64);
        assert_eq!(manifest.config().media_type(), &MediaType::ImageConfig);
        let [layer] = manifest.layers().as_slice() else {
            panic!("one layer expected")
        };
        let layer_bytes = &find(&entries, &blob(&built.layer_digest)).data;
        assert_eq!(layer.digest().to_string(), built.layer_digest);
        assert_eq!(layer.size(), layer_bytes.len() as u64);
        assert_eq!(layer.media_type(), &MediaType::ImageLayerGzip);

        // The gzip stream has no timestamp and no file name.
        assert_eq!(&layer_bytes[..4], &[0x1f, 0x8b, 8, 0]);
        assert_eq!(&layer_bytes[4..8], &[0, 0, 0, 0]);
        let mut layer_tar = Vec::new();
        GzDecoder::new(layer_bytes.as_slice())
            .read_to_end(&mut layer_tar)
            .unwrap();
        assert_eq!(sha(&layer_tar), built.diff_id);

        // The config.
        let config: ImageConfiguration = serde_json::from_slice(config_bytes).unwrap();
        assert_eq!(config.architecture(), &Arch::ARM64);
        assert_eq!(config.os(), &Os::Linux);
        assert_eq!(config.rootfs().diff_ids(), &[built.diff_id.as_str()]);
        let run = config.config().as_ref().unwrap();
        assert_eq!(run.entrypoint(), &Some(vec!["/app/run.sh".to_owned()]));
        assert_eq!(run.cmd(), &Some(vec!["--flag".to_owned()]));
        assert_eq!(run.working_dir().as_deref(), Some("/app"));
        assert_eq!(run.user().as_deref(), Some("1000:1000"));
        let raw_config: Value = serde_json::from_slice(config_bytes).unwrap();
        assert_eq!(
            raw_config["config"]["Env"],
            json!([format!("PATH={DEFAULT_PATH}"), "FOO=baz", "LANG=C.UTF-8"])
        );
        assert_eq!(
            raw_config["config"]["ExposedPorts"],
            json!({"8080/tcp": {}, "9090/tcp": {}})
        );
        assert_eq!(
            raw_config["config"]["Labels"],
            json!({"org.opencontainers.image.title": "hello"})
        );
        assert_eq!(raw_config["created"], "1970-01-01T00:00:00Z");
        assert_eq!(raw_config["rootfs"]["type"], "layers");
        assert_eq!(raw_config["history"].as_array().unwrap().len(), 1);
        assert!(raw_config.get("variant").is_none());

        // The layer.
        let layer = read_tar(layer_tar.as_slice());
        let layer_paths = paths(&layer);
        let mut sorted = layer_paths.clone();
        sorted.sort_unstable();
        assert_eq!(layer_paths, sorted, "layer entries are sorted");
        let long_dir = "d".repeat(120);
        let mut expected = vec![
            "app/".to_owned(),
            "app/abs".to_owned(),
            "app/dangling".to_owned(),
            format!("app/{long_dir}/"),
            format!("app/{long_dir}/f"),
            "app/empty/".to_owned(),
            "app/hard".to_owned(),
            "app/hello.txt".to_owned(),
            "app/link".to_owned(),
            "app/longlink".to_owned(),
            "app/nested/".to_owned(),
            "app/nested/a/".to_owned(),
            "app/nested/a/b/".to_owned(),
            "app/nested/a/b/deep.txt".to_owned(),
            "app/run.sh".to_owned(),
            "etc/".to_owned(),
            "etc/app/".to_owned(),
            "etc/app/config.json".to_owned(),
            "etc/app/extra.json".to_owned(),
            "tmp/".to_owned(),
        ];
        expected.sort_unstable();
        assert_eq!(layer_paths, expected);
        for e in &layer {
            assert_eq!((e.uid, e.gid, e.mtime), (0, 0, 0), "{}", e.path);
            assert!(e.user_name.is_empty(), "{}", e.path);
        }
        let check = |path: &str, kind: EntryType, mode: u32| {
            let e = find(&layer, path);
            assert_eq!(e.kind, kind, "{path}");
            assert_eq!(e.mode, mode, "{path}: {:o}", e.mode);
            e
        };
        check("tmp/", EntryType::Directory, 0o1777);
        check("etc/", EntryType::Directory, 0o755);
        check("app/", EntryType::Directory, 0o755);
        check("app/empty/", EntryType::Directory, 0o700);
        assert_eq!(
            check("app/hello.txt", EntryType::Regular, 0o644).data,
            b"hello\n"
        );
        assert_eq!(
            check("app/hard", EntryType::Regular, 0o644).data,
            b"hello\n"
        );
        assert_eq!(
            check("app/run.sh", EntryType::Regular, 0o755).data,
            b"#!/bin/sh\necho hi\n"
        );
        assert_eq!(
            check("app/nested/a/b/deep.txt", EntryType::Regular, 0o600).data,
            b"deep"
        );
        assert_eq!(
            check(&format!("app/{long_dir}/f"), EntryType::Regular, 0o644).data,
            b"long path"
        );
        assert_eq!(
            check("etc/app/config.json", EntryType::Regular, 0o600).data,
            br#"{"debug":true}"#
        );
        check("etc/app/extra.json", EntryType::Regular, 0o640);
        let link = |path: &str| check(path, EntryType::Symlink, 0o777).link.clone().unwrap();
        assert_eq!(link("app/link"), b"hello.txt");
        assert_eq!(link("app/abs"), b"/etc/passwd");
        assert_eq!(
            link("app/dangling"),
            b"does/not/../exist//",
            "targets are stored as-is"
        );
        assert_eq!(link("app/longlink"), "x/".repeat(80).as_bytes());
    }

    #[test]
    fn archives_are_reproducible() {
        let f = fixture();
        let builder = sample_builder(&f.src, &f.extra);
        let a = f.out_dir.join("a.tar");
        let b = f.out_dir.join("b.tar");
        let built_a = builder.write_oci_archive(&a).unwrap();
        // Touching the sources changes nothing.
        let hello = File::options()
            .write(true)
            .open(f.src.join("hello.txt"))
            .unwrap();
        hello
            .set_modified(
                std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_234_567),
            )
            .unwrap();
        let built_b = builder.write_oci_archive(&b).unwrap();
        assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
        assert_eq!(built_a, built_b);

        // Overwriting an existing archive works and gives the same bytes again.
        builder.write_oci_archive(&b).unwrap();
        assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());

        // A different timestamp changes the archive, and is used everywhere.
        let c = f.out_dir.join("c.tar");
        let built_c = builder
            .clone()
            .source_date_epoch(1_700_000_000)
            .write_oci_archive(&c)
            .unwrap();
        assert_ne!(built_c.manifest_digest, built_a.manifest_digest);
        assert_ne!(built_c.diff_id, built_a.diff_id);
        let entries = read_tar(File::open(&c).unwrap());
        assert!(entries.iter().all(|e| e.mtime == 1_700_000_000));
        let config: Value =
            serde_json::from_slice(&find(&entries, &blob_path(&built_c.config_digest)).data)
                .unwrap();
        assert_eq!(config["created"], "2023-11-14T22:13:20Z");
        assert_eq!(config["history"][0]["created"], "2023-11-14T22:13:20Z");
        let layer_bytes = &find(&entries, &blob_path(&built_c.layer_digest)).data;
        let layer = read_tar(GzDecoder::new(layer_bytes.as_slice()));
        assert!(layer.iter().all(|e| e.mtime == 1_700_000_000));

        let err = builder
            .source_date_epoch(MAX_EPOCH + 1)
            .write_oci_archive(&c)
            .unwrap_err();
        assert!(matches!(err, BuildError::SourceDateEpoch { .. }), "{err}");
    }

    #[test]
    fn source_date_epoch_parsing() {
        assert_eq!(parse_source_date_epoch(None).unwrap(), 0);
        assert_eq!(parse_source_date_epoch(Some("")).unwrap(), 0);
        assert_eq!(
            parse_source_date_epoch(Some("1700000000")).unwrap(),
            1_700_000_000
        );
        assert_eq!(parse_source_date_epoch(Some(" 42\n")).unwrap(), 42);
        for bad in ["-1", "1.5", "yesterday", "99999999999999"] {
            let err = parse_source_date_epoch(Some(bad)).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with(&format!("invalid SOURCE_DATE_EPOCH {bad:?}")),
                "{err}"
            );
        }
    }

    #[test]
    fn rfc3339_dates() {
        for (seconds, want) in [
            (0, "1970-01-01T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_700_000_000, "2023-11-14T22:13:20Z"),
            (1_709_251_199, "2024-02-29T23:59:59Z"),
            (4_107_542_400, "2100-03-01T00:00:00Z"),
            (MAX_EPOCH, "9999-12-31T23:59:59Z"),
        ] {
            assert_eq!(rfc3339(seconds), want);
        }
    }

    #[test]
    fn static_binary_sets_platform_and_entrypoint() {
        let dir = tempfile::tempdir().unwrap();
        for (machine, platform) in [
            (EM_AARCH64, "linux/arm64"),
            (EM_ARM, "linux/arm/v7"),
            (EM_X86_64, "linux/amd64"),
        ] {
            let bin = dir.path().join("hello");
            write(&bin, &fake_elf(machine, None), 0o700);
            let out = dir.path().join("hello.tar");
            let built = ImageBuilder::new(ImageRef::parse("ghcr.io/me/hello:1").unwrap())
                .binary(&bin)
                .expose(8080)
                .write_oci_archive(&out)
                .unwrap();
            assert_eq!(built.platform.to_string(), platform);
            assert_eq!(built.name.to_string(), "ghcr.io/me/hello:1");

            let entries = read_tar(File::open(&out).unwrap());
            let index: Value = serde_json::from_slice(&find(&entries, "index.json").data).unwrap();
            let want_platform = serde_json::to_value(Platform::parse(platform).unwrap()).unwrap();
            assert_eq!(index["manifests"][0]["platform"], want_platform);
            assert_eq!(
                index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
                "1"
            );
            let config: Value =
                serde_json::from_slice(&find(&entries, &blob_path(&built.config_digest)).data)
                    .unwrap();
            assert_eq!(
                config["config"]["Entrypoint"],
                json!(["/usr/local/bin/hello"])
            );
            assert!(config["config"].get("Cmd").is_none());
            let layer_bytes = &find(&entries, &blob_path(&built.layer_digest)).data;
            let layer = read_tar(GzDecoder::new(layer_bytes.as_slice()));
            assert_eq!(
                paths(&layer),
                vec![
                    "tmp/",
                    "usr/",
                    "usr/local/",
                    "usr/local/bin/",
                    "usr/local/bin/hello"
                ]
            );
            let binary = find(&layer, "usr/local/bin/hello");
            assert_eq!(binary.mode, 0o755);
            assert_eq!(binary.data, fake_elf(machine, None));
            assert_eq!(find(&layer, "usr/local/").mode, 0o755);
        }

        // An explicit entrypoint wins; an arm binary fits any arm variant.
        let bin = dir.path().join("tool");
        write(&bin, &fake_elf(EM_ARM, None), 0o755);
        let built = ImageBuilder::new(ImageRef::parse("tool").unwrap())
            .platform(Platform::parse("linux/arm/v6").unwrap())
            .binary(&bin)
            .entrypoint(vec!["/bin/sh".to_owned(), "-c".to_owned()])
            .write_oci_archive(&dir.path().join("tool.tar"))
            .unwrap();
        assert_eq!(built.platform.to_string(), "linux/arm/v6");
    }

    #[test]
    fn refuses_a_binary_for_another_platform() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("hello");
        write(&bin, &fake_elf(EM_X86_64, None), 0o755);
        let out = dir.path().join("out.tar");
        let err = ImageBuilder::new(ImageRef::parse("hello").unwrap())
            .platform(Platform::parse("linux/arm64").unwrap())
            .binary(&bin)
            .write_oci_archive(&out)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "binary {} is linux/amd64 but the image platform is linux/arm64",
                bin.display()
            )
        );
        assert!(!out.exists());

        // Two binaries must agree too.
        let arm = dir.path().join("arm");
        write(&arm, &fake_elf(EM_ARM, None), 0o755);
        let err = ImageBuilder::new(ImageRef::parse("hello").unwrap())
            .binary(&arm)
            .binary(&bin)
            .write_oci_archive(&out)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "binary {} is linux/amd64 but the image platform is linux/arm/v7",
                bin.display()
            )
        );
    }

    #[test]
    fn refuses_dynamic_and_non_elf_binaries() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.tar");
        let bin = dir.path().join("dyn");
        write(
            &bin,
            &fake_elf(EM_AARCH64, Some("/lib/ld-linux-aarch64.so.1")),
            0o755,
        );
        let err = ImageBuilder::new(ImageRef::parse("x").unwrap())
            .binary(&bin)
            .write_oci_archive(&out)
            .unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(&err, BuildError::DynamicBinary { interpreter, .. } if interpreter == "/lib/ld-linux-aarch64.so.1")
        );
        for words in [
            &format!("binary {} is dynamically linked", bin.display()),
            "/lib/ld-linux-aarch64.so.1",
            "+crt-static",
            "musl",
            "add_dir",
        ] {
            assert!(message.contains(words), "{message}");
        }

        // A real dynamic executable.
        if Path::new("/bin/ls").exists() {
            let err = ImageBuilder::new(ImageRef::parse("x").unwrap())
                .binary("/bin/ls")
                .write_oci_archive(&out)
                .unwrap_err();
            assert!(matches!(err, BuildError::DynamicBinary { .. }), "{err}");
        } else {
            println!("note: /bin/ls absent, skipped the real dynamic binary check");
        }

        let script = dir.path().join("script.sh");
        write(&script, b"#!/bin/sh\necho hi\n", 0o755);
        let err = ImageBuilder::new(ImageRef::parse("x").unwrap())
            .binary(&script)
            .write_oci_archive(&out)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("binary {} is not a usable executable", script.display())
        );
        assert_eq!(
            std::error::Error::source(&err).unwrap().to_string(),
            "not an ELF executable"
        );

        let truncated = dir.path().join("truncated");
        write(&truncated, &fake_elf(EM_AARCH64, None)[..40], 0o755);
        let err = ImageBuilder::new(ImageRef::parse("x").unwrap())
            .binary(&truncated)
            .write_oci_archive(&out)
            .unwrap_err();
        assert!(matches!(
            err,
            BuildError::BinaryNotExecutable {
                source: PlatformError::TruncatedElf { .. },
                ..
            }
        ));

        let err = ImageBuilder::new(ImageRef::parse("x").unwrap())
            .binary(dir.path())
            .write_oci_archive(&out)
            .unwrap_err();
        assert!(matches!(err, BuildError::NotAFile { .. }), "{err}");
        assert!(!out.exists());
    }

    #[test]
    fn real_static_binary() -> Result<(), String> {
        // Debian's ldconfig is static-pie.
        let ldconfig = Path::new("/sbin/ldconfig");
        let is_static = fs::read(ldconfig)
            .ok()
            .and_then(|b| Platform::from_elf(&b).ok())
            .is_some_and(|info| info.is_static());
        if !is_static {
            return cannot_run_here(
                "real_static_binary",
                "/sbin/ldconfig is missing or not a static executable (Debian's is)",
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let built = ImageBuilder::new(ImageRef::parse("ldconfig").unwrap())
            .binary(ldconfig)
            .write_oci_archive(&dir.path().join("ldconfig.tar"))
            .unwrap();
        assert_eq!(built.platform, Platform::host());
        Ok(())
    }

    #[test]
    fn refuses_bad_destinations() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        write(&file, b"x", 0o644);
        let out = dir.path().join("out.tar");
        let cases = [
            ("relative/path", "it must be an absolute path"),
            ("/a/../etc/passwd", "'..' is not allowed"),
            ("/..", "'..' is not allowed"),
            ("/etc/.wh.passwd", "reserved for layer whiteouts"),
            ("/.", "a file cannot replace the root directory"),
            ("//.", "a file cannot replace the root directory"),
            ("/a\0b", "NUL"),
        ];
        for (dest, reason) in cases {
            let err = ImageBuilder::new(ImageRef::parse("x").unwrap())
                .add_file(&file, dest, None)
                .write_oci_archive(&out)
                .unwrap_err();
            let message = err.to_string();
            assert!(
                message.starts_with(&format!("invalid destination {dest:?} in the image: ")),
                "{message}"
            );
            assert!(message.contains(reason), "{message}");
        }
        let err = ImageBuilder::new(ImageRef::parse("x").unwrap())
            .add_dir(dir.path(), "../up")
            .write_oci_archive(&out)
            .unwrap_err();
        assert!(
            matches!(err, BuildError::InvalidDestination { .. }),
            "{err}"
        );
        // "." and repeated slashes are fine; a trailing '/' means "into this directory".
        let built = ImageBuilder::new(ImageRef::parse("x").unwrap())
            .add_file(&file, "//opt/./x//f", None)
            .add_file(&file, "/", None)
            .write_oci_archive(&out)
            .unwrap();
        let entries = read_tar(File::open(&out).unwrap());
        let layer = read_tar(GzDecoder::new(
            find(&entries, &blob_path(&built.layer_digest))
                .data
                .as_slice(),
        ));
        assert_eq!(
            paths(&layer),
            vec!["f", "opt/", "opt/x/", "opt/x/f", "tmp/"]
        );
    }

    #[test]
    fn refuses_special_files_and_whiteouts() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        mkdir(&src.join("sub"), 0o755);
        let socket = src.join("sub/control.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let out = dir.path().join("out.tar");
        let err = ImageBuilder::new(ImageRef::parse("x").unwrap())
            .add_dir(&src, "/")
            .write_oci_archive(&out)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "cannot add {} to the image: it is a socket, and only regular files, directories and symlinks are supported",
                socket.display()
            )
        );
        if Path::new("/dev/null").exists() {
            let err = ImageBuilder::new(ImageRef::parse("x").unwrap())
                .add_file("/dev/null", "/null", None)
                .write_oci_archive(&out)
                .unwrap_err();
            assert!(matches!(err, BuildError::NotAFile { .. }), "{err}");
        }

        let src2 = dir.path().join("src2");
        mkdir(&src2, 0o755);
        write(&src2.join(".wh.secret"), b"", 0o644);
        let err = ImageBuilder::new(ImageRef::parse("x").unwrap())
            .add_dir(&src2, "/")
            .write_oci_archive(&out)
            .unwrap_err();
        assert!(matches!(err, BuildError::Whiteout { .. }), "{err}");
        assert!(!out.exists());
    }

    #[test]
    fn path_conflicts_and_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let one = dir.path().join("one");
        let two = dir.path().join("two");
        write(&one, b"1", 0o644);
        write(&two, b"2", 0o644);
        let out = dir.path().join("out.tar");
        let name = ImageRef::parse("x").unwrap();

        let err = ImageBuilder::new(name.clone())
            .add_file(&one, "/a/b", None)
            .add_file(&two, "/a/b/c", None)
            .write_oci_archive(&out)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot add /a/b/c to the image: /a/b is already there and is not a directory"
        );
        let err = ImageBuilder::new(name.clone())
            .add_file(&one, "/a/b/c", None)
            .add_file(&two, "/a", None)
            .write_oci_archive(&out)
            .unwrap_err();
        assert!(
            matches!(err, BuildError::ReplacesDirectory { ref path } if path == "/a"),
            "{err}"
        );

        // A later file at the same path wins; a user-provided /tmp is kept.
        let src = dir.path().join("src");
        mkdir(&src.join("tmp"), 0o700);
        let built = ImageBuilder::new(name)
            .add_file(&one, "/a", None)
            .add_file(&two, "/a", Some(0o4755))
            .add_dir(&src, "/")
            .write_oci_archive(&out)
            .unwrap();
        let entries = read_tar(File::open(&out).unwrap());
        let layer = read_tar(GzDecoder::new(
            find(&entries, &blob_path(&built.layer_digest))
                .data
                .as_slice(),
        ));
        assert_eq!(paths(&layer), vec!["a", "tmp/"]);
        assert_eq!(find(&layer, "a").data, b"2");
        assert_eq!(find(&layer, "a").mode, 0o4755);
        assert_eq!(find(&layer, "tmp/").mode, 0o700);
    }

    #[test]
    fn io_errors_name_the_path_and_operation() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let out = dir.path().join("out.tar");
        let err = ImageBuilder::new(ImageRef::parse("x").unwrap())
            .add_dir(&missing, "/")
            .write_oci_archive(&out)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("failed to inspect {}", missing.display())
        );
        assert!(std::error::Error::source(&err).is_some());

        let err = ImageBuilder::new(ImageRef::parse("x").unwrap())
            .binary(&missing)
            .write_oci_archive(&out)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("failed to open {}", missing.display())
        );

        let no_dir = dir.path().join("no/such/dir/out.tar");
        let err = ImageBuilder::new(ImageRef::parse("x").unwrap())
            .write_oci_archive(&no_dir)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "failed to create a temporary file in {}",
                dir.path().join("no/such/dir").display()
            )
        );

        // The output path is a directory: the rename fails, nothing is left over.
        let out_dir = dir.path().join("taken");
        mkdir(&out_dir.join("content"), 0o755);
        let err = ImageBuilder::new(ImageRef::parse("x").unwrap())
            .write_oci_archive(&out_dir)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "failed to move the finished archive to {}",
                out_dir.display()
            )
        );
        let left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(".bramble"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn config_validation() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.tar");
        let base = || ImageBuilder::new(ImageRef::parse("x").unwrap());
        let cases: [(ImageBuilder, &str); 5] = [
            (
                base().env("", "x"),
                "invalid environment variable name \"\"",
            ),
            (
                base().env("A=B", "x"),
                "invalid environment variable name \"A=B\"",
            ),
            (
                base().workdir("app"),
                "invalid working directory \"app\": it must be an absolute path",
            ),
            (base().expose(0), "cannot expose port 0"),
            (
                ImageBuilder::new(
                    ImageRef::parse(&format!("x@sha256:{}", "a".repeat(64))).unwrap(),
                ),
                "the name must have a tag, not a digest",
            ),
        ];
        for (builder, message) in cases {
            let err = builder.write_oci_archive(&out).unwrap_err();
            assert!(err.to_string().contains(message), "{err}");
        }

        // Defaults: host platform, PATH, no entrypoint; an explicit PATH is kept.
        let built = base().env("PATH", "/bin").write_oci_archive(&out).unwrap();
        assert_eq!(built.platform, Platform::host());
        let entries = read_tar(File::open(&out).unwrap());
        let config: Value =
            serde_json::from_slice(&find(&entries, &blob_path(&built.config_digest)).data).unwrap();
        assert_eq!(config["config"], json!({"Env": ["PATH=/bin"]}));
    }

    #[test]
    fn exact_reader_guards_against_changing_files() {
        let mut grown = ExactReader::new(&b"0123456789"[..], 4);
        let mut out = Vec::new();
        grown.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"0123");
        assert!(!grown.failed);

        let mut shrunk = ExactReader::new(&b"01"[..], 4);
        let err = shrunk.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(shrunk.failed);
    }

    #[test]
    fn hashing_writer_counts_and_hashes() {
        let mut writer = HashingWriter::new(Vec::new());
        writer.write_all(b"hello ").unwrap();
        writer.write_all(b"world").unwrap();
        let (inner, digest, count) = writer.finish();
        assert_eq!(inner, b"hello world");
        assert_eq!(count, 11);
        assert_eq!(digest, sha(b"hello world"));
        assert_eq!(
            digest,
            "sha256:b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
    }

    fn tool(name: &str) -> bool {
        Command::new(name)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Cross-checks with skopeo and umoci (in CI they must be installed).
    #[test]
    fn external_tools_accept_the_archive() -> Result<(), String> {
        let f = fixture();
        let out = f.out_dir.join("hello.tar");
        let built = sample_builder(&f.src, &f.extra)
            .platform(Platform::host())
            .write_oci_archive(&out)
            .unwrap();

        if tool("skopeo") {
            let raw = Command::new("skopeo")
                .args(["inspect", "--raw"])
                .arg(format!("oci-archive:{}", out.display()))
                .output()
                .unwrap();
            assert!(
                raw.status.success(),
                "{}",
                String::from_utf8_lossy(&raw.stderr)
            );
            assert_eq!(sha(&raw.stdout), built.manifest_digest);

            let inspect = Command::new("skopeo")
                .arg("inspect")
                .arg(format!("oci-archive:{}:latest", out.display()))
                .output()
                .unwrap();
            assert!(
                inspect.status.success(),
                "{}",
                String::from_utf8_lossy(&inspect.stderr)
            );
            let info: Value = serde_json::from_slice(&inspect.stdout).unwrap();
            assert_eq!(info["Digest"], built.manifest_digest);
            assert_eq!(info["Architecture"], built.platform.architecture());
            assert_eq!(info["Layers"], json!([built.layer_digest]));

            // A copy verifies every blob's digest.
            let copy = f.out_dir.join("copy");
            let status = Command::new("skopeo")
                .args(["--insecure-policy", "copy", "--quiet"])
                .arg(format!("oci-archive:{}", out.display()))
                .arg(format!("dir:{}", copy.display()))
                .status()
                .unwrap();
            assert!(status.success());
        } else {
            cannot_run_here(
                "the skopeo cross-check",
                "skopeo is not installed (scripts/setup --test)",
            )?;
        }

        if tool("umoci") {
            let layout = f.out_dir.join("layout");
            fs::create_dir(&layout).unwrap();
            tar::Archive::new(File::open(&out).unwrap())
                .unpack(&layout)
                .unwrap();
            let bundle = f.out_dir.join("bundle");
            let unpack = Command::new("umoci")
                .args(["unpack", "--rootless", "--image"])
                .arg(format!("{}:latest", layout.display()))
                .arg(&bundle)
                .output()
                .unwrap();
            assert!(
                unpack.status.success(),
                "{}",
                String::from_utf8_lossy(&unpack.stderr)
            );
            let rootfs = bundle.join("rootfs");
            assert_eq!(fs::read(rootfs.join("app/hello.txt")).unwrap(), b"hello\n");
            assert_eq!(
                fs::read_link(rootfs.join("app/link")).unwrap(),
                Path::new("hello.txt")
            );
            let mode = |p: &str| {
                fs::symlink_metadata(rootfs.join(p))
                    .unwrap()
                    .permissions()
                    .mode()
                    & 0o7777
            };
            assert_eq!(mode("app/run.sh"), 0o755);
            assert_eq!(mode("tmp"), 0o1777);
            let config: Value =
                serde_json::from_slice(&fs::read(bundle.join("config.json")).unwrap()).unwrap();
            assert_eq!(config["process"]["cwd"], "/app");
            assert_eq!(config["process"]["args"], json!(["/app/run.sh", "--flag"]));
        } else {
            cannot_run_here(
                "the umoci cross-check",
                "umoci is not installed (scripts/setup --test)",
            )?;
        }
        Ok(())
    }
}
