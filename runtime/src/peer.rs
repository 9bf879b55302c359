//! containerd's process, found through its socket, and whether it shares bramble's mount
//! namespace.
//!
//! bramble pins every function's network namespace as a bind mount under its run directory and
//! hands that path to runc. A containerd (and so runc) in another mount namespace cannot see
//! those mounts, and every task start fails with runc's "can't get final child's PID from pipe:
//! EOF", a crash loop with no hint of the cause. That happens when bramble runs under a unit
//! with `PrivateMounts=`, `ProtectSystem=`, `PrivateTmp=` (any setting that gives a service its
//! own mount namespace), under `ip netns exec`, or in a container beside a containerd outside.
//!
//! The process is the one that accepted our connection (`SO_PEERCRED`), never one found by
//! name: a second containerd, or one in a container, would be mistaken for it.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::Path;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

/// How bramble's mount namespace relates to containerd's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MountNamespace {
    /// containerd (process `pid`) is in bramble's mount namespace: pinned network namespaces
    /// are visible to runc.
    Shared { pid: i32, namespace: String },
    /// containerd is in another mount namespace: every function start would fail.
    Apart {
        pid: i32,
        ours: String,
        theirs: String,
    },
    /// It could not be told (no socket, not allowed to look, a containerd in another PID
    /// namespace), and why.
    Unknown(String),
}

impl MountNamespace {
    /// What a user must change when containerd is apart: the same text for `bramble doctor`
    /// and `bramble up`.
    pub const FIX: &'static str = "run bramble in containerd's mount namespace: remove PrivateMounts=, ProtectSystem=, ProtectHome=, PrivateTmp=, ReadWritePaths= and similar settings from bramble's unit (systemctl edit bramble; systemctl show bramble -p PrivateMounts,ProtectSystem,PrivateTmp), enter only the network namespace instead of using `ip netns exec` (nsenter --net=/run/netns/NAME bramble up), or run bramble where containerd runs (the same container or host)";

    /// The finding in words, without the fix.
    pub fn describe(&self) -> String {
        match self {
            MountNamespace::Shared { pid, namespace } => {
                format!("shared with containerd (pid {pid}, {namespace})")
            }
            MountNamespace::Apart { pid, ours, theirs } => format!(
                "bramble ({ours}) and containerd (pid {pid}, {theirs}) are in different mount namespaces: runc cannot see the network namespaces bramble pins, so every function start fails with \"can't get final child's PID from pipe: EOF\""
            ),
            MountNamespace::Unknown(reason) => format!("cannot tell: {reason}"),
        }
    }
}

/// Compares bramble's mount namespace with that of the process serving `socket`. Blocking
/// (a connect and a few `/proc` reads): call it from `spawn_blocking` on an async runtime.
pub fn containerd_mount_namespace(socket: &Path) -> MountNamespace {
    match peer_pid(socket) {
        Ok(Some(pid)) => compare(Path::new("/proc"), pid),
        Ok(None) => MountNamespace::Unknown(format!(
            "the process serving {} is in another PID namespace (a containerd outside bramble's container?)",
            socket.display()
        )),
        Err(e) => MountNamespace::Unknown(format!("connecting to {}: {e}", socket.display())),
    }
}

/// The pid of the process that accepted a connection to `socket`, as this process's PID
/// namespace numbers it; `None` when that process is not visible from here (the kernel then
/// reports pid 0).
pub fn peer_pid(socket: &Path) -> io::Result<Option<i32>> {
    let stream = UnixStream::connect(socket)?;
    let credentials = getsockopt(&stream, PeerCredentials).map_err(io::Error::from)?;
    let pid = credentials.pid();
    Ok((pid > 0).then_some(pid))
}

/// Compares `/proc/self/ns/mnt` with `/proc/<pid>/ns/mnt` under the proc filesystem at `proc`.
pub fn compare(proc: &Path, pid: i32) -> MountNamespace {
    let ours = match namespace(&proc.join("self/ns/mnt")) {
        Ok(ns) => ns,
        Err(reason) => return MountNamespace::Unknown(reason),
    };
    let theirs = match namespace(&proc.join(pid.to_string()).join("ns/mnt")) {
        Ok(ns) => ns,
        Err(reason) => return MountNamespace::Unknown(format!("containerd (pid {pid}): {reason}")),
    };
    if ours == theirs {
        MountNamespace::Shared {
            pid,
            namespace: ours,
        }
    } else {
        MountNamespace::Apart { pid, ours, theirs }
    }
}

/// The namespace a `/proc/<pid>/ns/<kind>` link names (`mnt:[4026531841]`).
fn namespace(link: &Path) -> Result<String, String> {
    match std::fs::read_link(link) {
        Ok(target) => Ok(target.to_string_lossy().into_owned()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Err(format!(
            "not allowed to read {} (run as root: sudo bramble doctor)",
            link.display()
        )),
        Err(e) => Err(format!("reading {}: {e}", link.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn fake_proc(ours: &str, pid: i32, theirs: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (who, ns) in [("self".to_owned(), ours), (pid.to_string(), theirs)] {
            let nsdir = dir.path().join(who).join("ns");
            std::fs::create_dir_all(&nsdir).unwrap();
            symlink(ns, nsdir.join("mnt")).unwrap();
        }
        dir
    }

    #[test]
    fn same_and_different_namespaces() {
        let proc = fake_proc("mnt:[4026531841]", 42, "mnt:[4026531841]");
        assert_eq!(
            compare(proc.path(), 42),
            MountNamespace::Shared {
                pid: 42,
                namespace: "mnt:[4026531841]".into()
            }
        );
        let proc = fake_proc("mnt:[4026532500]", 42, "mnt:[4026531841]");
        let apart = compare(proc.path(), 42);
        assert_eq!(
            apart,
            MountNamespace::Apart {
                pid: 42,
                ours: "mnt:[4026532500]".into(),
                theirs: "mnt:[4026531841]".into()
            }
        );
        let text = apart.describe();
        assert!(
            text.contains("can't get final child's PID from pipe"),
            "{text}"
        );
        assert!(text.contains("pid 42"), "{text}");
    }

    #[test]
    fn a_vanished_process_cannot_be_told() {
        let proc = fake_proc("mnt:[1]", 42, "mnt:[1]");
        match compare(proc.path(), 43) {
            MountNamespace::Unknown(reason) => assert!(reason.contains("pid 43"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_peer_of_a_socket_is_found_by_its_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("s.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        // This process listens, so it is the peer, and shares its own mount namespace.
        let pid = i32::try_from(std::process::id()).unwrap();
        assert_eq!(peer_pid(&socket).unwrap(), Some(pid));
        match containerd_mount_namespace(&socket) {
            MountNamespace::Shared { pid: found, .. } => assert_eq!(found, pid),
            other => panic!("{other:?}"),
        }
        match containerd_mount_namespace(&dir.path().join("none.sock")) {
            MountNamespace::Unknown(reason) => assert!(reason.contains("none.sock"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }
}
