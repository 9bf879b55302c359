//! The layer's file tree: what goes where, checked (no escaping paths, nothing under a
//! file), from directories, single files and binaries (read as ELF for their platform).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::image::platform::{ElfInfo, Platform, PlatformError};

use super::*;

/// One entry of the layer.
#[derive(Debug, Clone)]
pub(super) enum Node {
    Dir { mode: u32 },
    File { src: PathBuf, mode: u32 },
    Symlink { target: Vec<u8> },
}

/// Layer entries by path relative to the root, without leading or trailing
/// '/': sorted, and every ancestor of an entry is a `Node::Dir` in it.
pub(super) type Tree = BTreeMap<String, Node>;

/// Inserts `path`, creating missing parent directories (0755), refusing to
/// put anything under a non-directory or a non-directory over a directory
/// that has content.
pub(super) fn insert_node(tree: &mut Tree, path: &str, node: Node) -> Result<(), BuildError> {
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
pub(super) fn normalise_dest(dest: &str) -> Result<String, BuildError> {
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

pub(super) fn add_dir_tree(tree: &mut Tree, src: &Path, dest: &str) -> Result<(), BuildError> {
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

pub(super) fn add_one_file(
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

pub(super) fn file_name(src: &Path) -> Result<&str, BuildError> {
    src.file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| BuildError::BadFileName {
            path: src.to_path_buf(),
        })
}

pub(super) fn binary_dest(src: &Path) -> Result<String, BuildError> {
    Ok(format!("{BINARY_DIR}/{}", file_name(src)?))
}

/// Whether a binary for `binary` belongs in an image for `image`. An ELF
/// header does not tell the arm variant, so any arm variant fits.
pub(super) fn binary_fits(image: &Platform, binary: &Platform) -> bool {
    image.os() == binary.os()
        && image.architecture() == binary.architecture()
        && (binary.variant().is_none() || image.variant() == binary.variant())
}

/// Reads as much of `path` as its ELF program headers need.
pub(super) fn read_elf(path: &Path) -> Result<ElfInfo, BuildError> {
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

pub(super) fn parse_source_date_epoch(value: Option<&str>) -> Result<u64, BuildError> {
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
