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
use std::io;
use std::path::{Path, PathBuf};

use super::platform::{Platform, PlatformError};
use super::reference::ImageRef;

pub(super) const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(super) const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(super) const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub(super) const MEDIA_TYPE_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub(super) const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
pub(super) const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
pub(super) const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

mod archive;
#[cfg(test)]
mod tests;
mod tree;

use archive::*;
use tree::*;

/// Where [`ImageBuilder::binary`] puts the executable.
pub const BINARY_DIR: &str = "/usr/local/bin";
/// The PATH an image gets when no `PATH` is set (as BuildKit does for `FROM scratch`).
pub(super) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
pub(super) const GZIP_LEVEL: u32 = 6;
/// The latest timestamp accepted: 9999-12-31T23:59:59Z.
pub(super) const MAX_EPOCH: u64 = 253_402_300_799;
/// How much of a binary is read at most to find its ELF program headers.
pub(super) const ELF_READ_MAX: u64 = 16 << 20;
/// Prefix of the names containerd and overlayfs treat as deletion markers.
pub(super) const WHITEOUT_PREFIX: &str = ".wh.";

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
pub(super) enum Source {
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
