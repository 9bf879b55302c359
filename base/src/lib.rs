//! bramble-base: the few helpers every bramble crate shares — one copy each.
//!
//! - [`write_atomic`] / [`write_atomic_with`]: crash-safe file replacement (temporary file in
//!   the same directory, fsync, rename, fsync of the directory), used for the desired state,
//!   the network's lease cache, the async queue and installed binaries alike.
//! - [`error_chain`]: an error and its sources on one line, for messages and logs.
//! - [`duration_text`]: durations in configuration files as humane text (`"10s"`).
//! - [`tls`]: the rustls crypto provider every TLS user shares, and its process-wide install.

pub mod duration_text;
pub mod tls;

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Writes `bytes` to `path` atomically, created with `mode`: see [`write_atomic_with`].
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    write_atomic_with(path, mode, |file| file.write_all(bytes))
}

/// Replaces `path` atomically with what `fill` writes: `fill` writes a temporary file
/// (`.<name>.<random>`, created with `mode`, in `path`'s directory), which is fsynced and
/// renamed over `path`; then the directory is fsynced, so the rename itself survives a power
/// cut. Readers see the old file or the new one, never a part. On any failure the temporary
/// file is removed and `path` is untouched.
///
/// Blocking: call it from `spawn_blocking` (or a blocking context), never on an async worker.
pub fn write_atomic_with(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    write_atomic_via(parent_of(path), path, mode, fill)
}

/// [`write_atomic_with`], with the temporary file in `tmp_dir` (on the same filesystem as
/// `path`) instead of beside `path`: for directories whose every entry must be complete, such
/// as a queue that workers list.
pub fn write_atomic_via(
    tmp_dir: &Path,
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let dir = parent_of(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let tmp = tmp_dir.join(temp_name(&name));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        fill(&mut file)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// The name of a temporary file for `name` (hidden, so directory listings can skip it).
fn temp_name(name: &str) -> String {
    format!(".{name}.{:016x}", rand::random::<u64>())
}

/// Whether `file_name` is a temporary file [`write_atomic`] left behind when it was
/// interrupted (a crash between create and rename): safe to remove at start-up.
pub fn is_leftover_temp(file_name: &str, of: &str) -> bool {
    file_name
        .strip_prefix('.')
        .and_then(|rest| rest.strip_prefix(of))
        .and_then(|rest| rest.strip_prefix('.'))
        .is_some_and(|hex| hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// An error and its sources on one line, `outer: inner: innermost`, for messages and logs.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_the_file_whole_with_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"one", 0o600).unwrap();
        write_atomic(&path, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }

    #[test]
    fn a_failed_fill_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_atomic(&path, b"old", 0o644).unwrap();
        let err = write_atomic_with(&path, 0o644, |file| {
            file.write_all(b"half")?;
            Err(io::Error::other("disk full"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "disk full");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn leftover_temporaries_are_recognised() {
        let name = temp_name("state.json");
        assert!(is_leftover_temp(&name, "state.json"));
        for other in [
            "state.json",
            ".state.json.",
            ".state.json.xyz",
            ".other.0123456789abcdef",
        ] {
            assert!(!is_leftover_temp(other, "state.json"), "{other}");
        }
    }

    #[test]
    fn chains_join_every_source() {
        #[derive(Debug)]
        struct Outer(io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("reading /x")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Outer(io::Error::new(io::ErrorKind::NotFound, "gone"));
        assert_eq!(error_chain(&e), "reading /x: gone");
    }
}
