//! Mounting containerd `Mount` descriptions on the host (for brief inspections of an image's
//! files), translated the way containerd's own `mount.Mount.Mount` does.

use std::path::Path;

use containerd_client::types::Mount;
use nix::mount::{MntFlags, MsFlags};

use crate::error::{Error, Result};

/// Mounts `mounts` one over the other at `target`. With `read_only`, the mounts are read-only.
pub(crate) fn mount_all(mounts: &[Mount], target: &Path, read_only: bool) -> Result<()> {
    for m in mounts {
        let (mut flags, data) = translate(&m.options);
        if read_only {
            flags |= MsFlags::MS_RDONLY;
        }
        let fstype = if m.r#type == "bind" || flags.contains(MsFlags::MS_BIND) {
            None
        } else {
            Some(m.r#type.as_str())
        };
        let data = (!data.is_empty()).then_some(data.as_str());
        nix::mount::mount(Some(m.source.as_str()), target, fstype, flags, data).map_err(
            |errno| {
                Error::io(
                    format!(
                        "mounting {} ({}) at {}",
                        m.source,
                        m.r#type,
                        target.display()
                    ),
                    std::io::Error::from(errno),
                )
            },
        )?;
        if flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY) {
            // A bind mount ignores MS_RDONLY on creation; it takes a remount.
            let remount = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
            nix::mount::mount(None::<&str>, target, None::<&str>, remount, None::<&str>).map_err(
                |errno| {
                    Error::io(
                        format!("making {} read-only", target.display()),
                        std::io::Error::from(errno),
                    )
                },
            )?;
        }
    }
    Ok(())
}

/// Lazily unmounts everything at `target` (ignoring "not mounted").
pub(crate) fn unmount_quietly(target: &Path) {
    loop {
        match nix::mount::umount2(target, MntFlags::MNT_DETACH) {
            Ok(()) => continue, // stacked mounts: unmount them all
            Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => break,
            Err(e) => {
                tracing::warn!(path = %target.display(), error = %e, "unmount failed");
                break;
            }
        }
    }
}

/// Splits mount options into flags and the filesystem-specific data string.
fn translate(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data: Vec<&str> = Vec::new();
    for option in options {
        match option.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => flags &= !MsFlags::MS_RDONLY,
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "sync" => flags |= MsFlags::MS_SYNCHRONOUS,
            "dirsync" => flags |= MsFlags::MS_DIRSYNC,
            "suid" | "dev" | "exec" | "async" | "defaults" => {}
            other => data.push(other),
        }
    }
    (flags, data.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let options: Vec<String> = ["ro", "rbind", "index=off", "lowerdir=/a:/b"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let (flags, data) = translate(&options);
        assert!(flags.contains(MsFlags::MS_RDONLY | MsFlags::MS_BIND | MsFlags::MS_REC));
        assert_eq!(data, "index=off,lowerdir=/a:/b");
    }
}
