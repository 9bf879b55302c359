//! Resolving an image's `User` (`app`, `1000`, `app:staff`, `1000:50`) to numeric ids.
//!
//! runc needs numbers. Names are looked up in the image's own `/etc/passwd` and `/etc/group`,
//! read from a read-only view of the image's top snapshot mounted for a moment (what
//! containerd's Go client does for `WithUser`). Results are cached per image and user string:
//! an image's content never changes under the same chain id.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use containerd_client::services::v1::snapshots::ViewSnapshotRequest;
use containerd_client::types::Mount;
use serde::Serialize;

use super::Image;
use super::unpack::remove_quietly;
use crate::client::{Connection, random_suffix};
use crate::error::{Error, Result};
use crate::mount;

/// Numeric identity of a container's process.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

/// Cache of resolutions by (top chain id, user string).
#[derive(Debug, Default)]
pub(crate) struct UserCache {
    resolved: Mutex<HashMap<(String, String), ResolvedUser>>,
    scratch: Mutex<Option<PathBuf>>,
}

/// The account databases of an image (empty when the image has none).
#[derive(Debug, Default)]
struct Accounts {
    passwd: String,
    group: String,
}

impl UserCache {
    /// Sets the directory under which image views are mounted briefly.
    pub(crate) fn set_scratch_dir(&self, dir: PathBuf) {
        if let Ok(mut scratch) = self.scratch.lock() {
            *scratch = Some(dir);
        }
    }

    pub(crate) async fn resolve(
        &self,
        conn: &Connection,
        snapshotter: &str,
        image: &Image,
        user: Option<&str>,
    ) -> Result<ResolvedUser> {
        let spec = user
            .or(image.config.user.as_deref())
            .unwrap_or("")
            .trim()
            .to_owned();
        if spec.is_empty() || spec == "0" || spec == "root" || spec == "0:0" || spec == "root:root"
        {
            return Ok(ResolvedUser::default());
        }
        let key = (image.top_chain_id.clone(), spec.clone());
        if let Some(hit) = self.resolved.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(hit);
        }
        let (user_part, group_part) = match spec.split_once(':') {
            Some((u, g)) => (u.to_owned(), Some(g.to_owned())),
            None => (spec.clone(), None),
        };
        let all_numeric = user_part.parse::<u32>().is_ok()
            && group_part
                .as_deref()
                .is_none_or(|g| g.parse::<u32>().is_ok());
        let accounts = if all_numeric && group_part.is_some() {
            Accounts::default()
        } else {
            self.read_accounts(conn, snapshotter, image).await?
        };
        let resolved =
            resolve_with(&accounts, &user_part, group_part.as_deref()).map_err(|reason| {
                Error::Invalid(format!("image {}: user {spec:?}: {reason}", image.name))
            })?;
        if let Ok(mut map) = self.resolved.lock() {
            map.insert(key, resolved.clone());
        }
        Ok(resolved)
    }

    /// Mounts a read-only view of the image and reads `/etc/passwd` and `/etc/group`.
    async fn read_accounts(
        &self,
        conn: &Connection,
        snapshotter: &str,
        image: &Image,
    ) -> Result<Accounts> {
        let scratch = self
            .scratch
            .lock()
            .ok()
            .and_then(|s| s.clone())
            .unwrap_or_else(std::env::temp_dir);
        let lease = conn.create_lease("user", Duration::from_secs(300)).await?;
        let key = format!("bramble-user-{}", random_suffix());
        let mut snapshots = conn.snapshots();
        let view = ViewSnapshotRequest {
            snapshotter: snapshotter.to_owned(),
            key: key.clone(),
            parent: image.top_chain_id.clone(),
            labels: HashMap::new(),
        };
        let result = match conn
            .call(
                "Snapshots.View",
                snapshots.view(conn.leased_request(view, &lease)),
            )
            .await
        {
            Ok(reply) => {
                let target = scratch.join(&key);
                tokio::task::spawn_blocking(move || read_from_mounts(&reply.mounts, &target))
                    .await
                    .map_err(|e| {
                        Error::Invalid(format!("reading the image's account files: {e}"))
                    })?
            }
            Err(e) => Err(e),
        };
        remove_quietly(conn, snapshotter, &key).await;
        conn.delete_lease(lease).await?;
        result
    }
}

fn read_from_mounts(mounts: &[Mount], target: &Path) -> Result<Accounts> {
    std::fs::create_dir_all(target)
        .map_err(|e| Error::io(format!("creating {}", target.display()), e))?;
    let mounted = mount::mount_all(mounts, target, true);
    let result = mounted.and_then(|()| {
        Ok(Accounts {
            passwd: read_confined(target, "etc/passwd")?,
            group: read_confined(target, "etc/group")?,
        })
    });
    mount::unmount_quietly(target);
    let _ = std::fs::remove_dir(target);
    result
}

/// Reads `root/relative` without following symlinks anywhere on the way: an image may not
/// point bramble at a file of the host. A missing (or symlinked) file reads as empty.
fn read_confined(root: &Path, relative: &str) -> Result<String> {
    let mut path = root.to_path_buf();
    for component in relative.split('/') {
        path.push(component);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => return Ok(String::new()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }
    let meta = std::fs::symlink_metadata(&path)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    if !meta.is_file() || meta.len() > 4 << 20 {
        return Ok(String::new());
    }
    let bytes =
        std::fs::read(&path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The pure part: user (and optional group) → ids, following Docker's rules.
fn resolve_with(
    accounts: &Accounts,
    user: &str,
    group: Option<&str>,
) -> std::result::Result<ResolvedUser, String> {
    let passwd_entry = accounts
        .passwd
        .lines()
        .filter_map(parse_passwd_line)
        .find(|(name, uid, _)| *name == user || user.parse::<u32>().ok() == Some(*uid));
    let (uid, primary_gid, user_name) = match (user.parse::<u32>(), passwd_entry) {
        (Ok(uid), Some((name, _, gid))) => (uid, gid, Some(name)),
        (Ok(uid), None) => (uid, 0, None),
        (Err(_), Some((name, uid, gid))) => (uid, gid, Some(name)),
        (Err(_), None) => return Err(format!("no user {user:?} in the image's /etc/passwd")),
    };
    let groups: Vec<(&str, u32, Vec<&str>)> = accounts
        .group
        .lines()
        .filter_map(parse_group_line)
        .collect();
    let gid = match group {
        None => primary_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|(name, _, _)| *name == g)
                .map(|(_, gid, _)| *gid)
                .ok_or_else(|| format!("no group {g:?} in the image's /etc/group"))?,
        },
    };
    let mut additional_gids: Vec<u32> = match (group, user_name) {
        // An explicit group replaces supplementary groups, as in Docker.
        (None, Some(name)) => groups
            .iter()
            .filter(|(_, _, members)| members.contains(&name))
            .map(|(_, gid, _)| *gid)
            .collect(),
        _ => Vec::new(),
    };
    additional_gids.retain(|g| *g != gid);
    additional_gids.sort_unstable();
    additional_gids.dedup();
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
    })
}

fn parse_passwd_line(line: &str) -> Option<(&str, u32, u32)> {
    let mut fields = line.split(':');
    let name = fields.next()?;
    let _password = fields.next()?;
    let uid = fields.next()?.parse().ok()?;
    let gid = fields.next()?.parse().ok()?;
    Some((name, uid, gid))
}

fn parse_group_line(line: &str) -> Option<(&str, u32, Vec<&str>)> {
    let mut fields = line.split(':');
    let name = fields.next()?;
    let _password = fields.next()?;
    let gid = fields.next()?.parse().ok()?;
    let members = fields
        .next()
        .unwrap_or("")
        .split(',')
        .filter(|m| !m.is_empty())
        .collect();
    Some((name, gid, members))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accounts() -> Accounts {
        Accounts {
            passwd: "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\nbroken line\nnobody:x:65534:65534::/:/sbin/nologin\n".into(),
            group: "root:x:0:\napp:x:1000:\nstaff:x:50:app,other\ngpio:x:997:app\n".into(),
        }
    }

    #[test]
    fn names_and_numbers_resolve_like_docker() {
        let a = accounts();
        assert_eq!(
            resolve_with(&a, "app", None).unwrap(),
            ResolvedUser {
                uid: 1000,
                gid: 1000,
                additional_gids: vec![50, 997]
            }
        );
        assert_eq!(
            resolve_with(&a, "1000", None).unwrap().gid,
            1000,
            "numeric uid takes the passwd gid"
        );
        assert_eq!(
            resolve_with(&a, "4242", None).unwrap(),
            ResolvedUser {
                uid: 4242,
                gid: 0,
                additional_gids: vec![]
            }
        );
        assert_eq!(
            resolve_with(&a, "app", Some("staff")).unwrap(),
            ResolvedUser {
                uid: 1000,
                gid: 50,
                additional_gids: vec![]
            }
        );
        assert_eq!(resolve_with(&a, "nobody", Some("7")).unwrap().gid, 7);
    }

    #[test]
    fn unknown_names_are_explained() {
        let a = accounts();
        assert!(
            resolve_with(&a, "ghost", None)
                .unwrap_err()
                .contains("no user \"ghost\"")
        );
        assert!(
            resolve_with(&a, "app", Some("ghosts"))
                .unwrap_err()
                .contains("no group \"ghosts\"")
        );
        assert!(resolve_with(&Accounts::default(), "app", None).is_err());
    }

    #[test]
    fn symlinked_account_files_are_not_followed() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.path().join("etc/passwd")).unwrap();
        assert_eq!(read_confined(root.path(), "etc/passwd").unwrap(), "");
        std::fs::write(root.path().join("etc/group"), "g:x:5:\n").unwrap();
        assert_eq!(read_confined(root.path(), "etc/group").unwrap(), "g:x:5:\n");
        let other = tempfile::tempdir().unwrap();
        std::fs::create_dir(other.path().join("real")).unwrap();
        std::os::unix::fs::symlink(other.path().join("real"), root.path().join("linkdir")).unwrap();
        assert_eq!(read_confined(root.path(), "linkdir/passwd").unwrap(), "");
    }
}
