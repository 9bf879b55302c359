//! Pinned network namespaces, created the way `ip netns add` does it.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::sys::statfs::{NSFS_MAGIC, statfs};

use super::NetworkError;

fn sys_error(action: String, errno: Errno) -> NetworkError {
    NetworkError::io(action, io::Error::from(errno))
}

/// Creates `dir` and makes it a shared mount point (bound onto itself first if it is not a mount
/// point yet), so that unmounting a namespace file propagates to every mount namespace that got
/// a copy of it. Idempotent.
pub(super) fn ensure_shared_dir(dir: &Path) -> Result<(), NetworkError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| NetworkError::io(format!("create directory {}", dir.display()), e))?;
    let make_shared = || {
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match make_shared() {
        Ok(()) => return Ok(()),
        // Not a mount point yet.
        Err(Errno::EINVAL) => {}
        Err(e) => {
            return Err(sys_error(
                format!("make {} a shared mount", dir.display()),
                e,
            ));
        }
    }
    mount(
        Some(dir),
        dir,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| sys_error(format!("bind-mount {} onto itself", dir.display()), e))?;
    make_shared().map_err(|e| sys_error(format!("make {} a shared mount", dir.display()), e))
}

/// Creates a new network namespace pinned at `path` (which must not exist).
///
/// Network namespaces belong to threads: the namespace is made on a dedicated thread that
/// unshares, bind-mounts its own namespace onto `path` and ends. No other thread's namespace
/// ever changes.
pub(super) async fn create(path: &Path) -> Result<(), NetworkError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let target = path.to_path_buf();
    std::thread::Builder::new()
        .name("bramble-netns".to_owned())
        .spawn(move || {
            // The receiver is gone only if the attach task died; nothing to report to then.
            let _ = tx.send(pin_new_namespace(&target));
        })
        .map_err(|e| NetworkError::io("start a thread to create a network namespace", e))?;
    rx.await.map_err(|_| {
        NetworkError::Internal("the network namespace thread ended without an answer".to_owned())
    })?
}

/// Runs on a thread of its own, which is left in the new namespace.
fn pin_new_namespace(path: &Path) -> Result<(), NetworkError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(path)
        .map_err(|e| {
            NetworkError::io(
                format!("create network namespace file {}", path.display()),
                e,
            )
        })?;
    let pinned = unshare(CloneFlags::CLONE_NEWNET)
        .map_err(|e| sys_error("unshare a new network namespace".to_owned(), e))
        .and_then(|()| {
            mount(
                Some("/proc/thread-self/ns/net"),
                path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| {
                sys_error(
                    format!(
                        "bind-mount the new network namespace onto {}",
                        path.display()
                    ),
                    e,
                )
            })
        });
    if pinned.is_err()
        && let Err(e) = std::fs::remove_file(path)
    {
        tracing::warn!(path = %path.display(), "could not remove network namespace file: {e}");
    }
    pinned
}

/// True when `path` is a mounted namespace (nsfs), i.e. the namespace is alive and pinned.
pub(super) fn is_live(path: &Path) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == NSFS_MAGIC)
}

/// Unmounts (lazily, every stacked mount) and removes a namespace file. Missing is fine.
pub(super) fn remove(path: &Path) -> Result<(), NetworkError> {
    // Mounts may be stacked: unmount until the path is a plain file.
    for _ in 0..16 {
        if !is_live(path) {
            break;
        }
        match umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) => {}
            // Not (or no longer) a mount point, or already gone.
            Err(Errno::EINVAL | Errno::ENOENT) => break,
            Err(e) => {
                return Err(sys_error(
                    format!("unmount network namespace {}", path.display()),
                    e,
                ));
            }
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(NetworkError::io(
            format!("remove network namespace file {}", path.display()),
            e,
        )),
    }
}

/// Names of the namespace files in `dir` (pinned or not), sorted; a missing `dir` has none.
pub(super) fn list(dir: &Path) -> Result<Vec<String>, NetworkError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(NetworkError::io(format!("list {}", dir.display()), e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| NetworkError::io(format!("list {}", dir.display()), e))?;
        match entry.file_name().into_string() {
            Ok(name) => names.push(name),
            Err(name) => {
                tracing::warn!(file = ?name, dir = %dir.display(), "skipping a namespace file whose name is not UTF-8");
            }
        }
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_namespace_files_by_name() {
        let dir = tempfile::tempdir().unwrap();
        assert!(list(&dir.path().join("missing")).unwrap().is_empty());
        std::fs::write(dir.path().join("b"), "").unwrap();
        std::fs::write(dir.path().join("a"), "").unwrap();
        assert_eq!(list(dir.path()).unwrap(), ["a", "b"]);
    }

    #[test]
    fn plain_files_and_missing_paths_are_not_live() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("fn1");
        std::fs::write(&file, "").unwrap();
        assert!(!is_live(&file));
        assert!(!is_live(&dir.path().join("missing")));
    }

    #[test]
    fn remove_tolerates_plain_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("fn1");
        std::fs::write(&file, "").unwrap();
        remove(&file).unwrap();
        assert!(!file.exists());
        remove(&file).unwrap();
    }
}
