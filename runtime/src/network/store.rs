//! The attachment cache (`<state_dir>/cache/<id>.json`) and host-local's lease files.

use std::fs::{self, OpenOptions};
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Attachment, NetworkError, cni, validate_id};

/// Version of the cache file layout.
const FORMAT: u32 = 1;

/// Everything needed to undo an attachment, even after a daemon restart or upgrade.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct CacheEntry {
    pub(super) format: u32,
    pub(super) attachment: Attachment,
    /// `CNI_IFNAME` the chain ran with.
    pub(super) ifname: String,
    /// The exact network configuration list the chain ran with.
    pub(super) netconf: Value,
    /// The chain's final CNI result (the `prevResult` of every DEL).
    pub(super) result: Value,
}

impl CacheEntry {
    pub(super) fn new(attachment: Attachment, ifname: &str, netconf: Value, result: Value) -> Self {
        CacheEntry {
            format: FORMAT,
            attachment,
            ifname: ifname.to_owned(),
            netconf,
            result,
        }
    }
}

pub(super) enum ReadError {
    Io(NetworkError),
    /// The entry exists but cannot be used; why.
    Corrupt(String),
}

fn entry_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.json"))
}

/// The cache entry of `id`, `None` if there is none.
pub(super) fn read(dir: &Path, id: &str) -> Result<Option<CacheEntry>, ReadError> {
    let path = entry_path(dir, id);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(ReadError::Io(NetworkError::io(
                format!("read {}", path.display()),
                e,
            )));
        }
    };
    let entry: CacheEntry = serde_json::from_slice(&bytes)
        .map_err(|e| ReadError::Corrupt(format!("{}: {e}", path.display())))?;
    if entry.format != FORMAT {
        return Err(ReadError::Corrupt(format!(
            "{}: unknown format {}",
            path.display(),
            entry.format
        )));
    }
    if entry.attachment.id != id {
        return Err(ReadError::Corrupt(format!(
            "{}: records id {:?}",
            path.display(),
            entry.attachment.id
        )));
    }
    check_netconf(&entry.netconf)
        .map_err(|reason| ReadError::Corrupt(format!("{}: {reason}", path.display())))?;
    Ok(Some(entry))
}

/// The cached netconf must be a list of plugins bramble runs, or DEL could never succeed.
fn check_netconf(netconf: &Value) -> Result<(), String> {
    let dummy = cni::Plugins {
        bridge: PathBuf::new(),
        host_local: PathBuf::new(),
        loopback: PathBuf::new(),
        firewall: PathBuf::new(),
    };
    cni::chain_steps(netconf, &dummy)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Writes the entry atomically: temporary file, fsync, rename, fsync of the directory.
pub(super) fn write(dir: &Path, entry: &CacheEntry) -> Result<(), NetworkError> {
    fs::create_dir_all(dir)
        .map_err(|e| NetworkError::io(format!("create directory {}", dir.display()), e))?;
    let id = &entry.attachment.id;
    let path = entry_path(dir, id);
    let bytes = serde_json::to_vec_pretty(entry)
        .map_err(|e| NetworkError::Internal(format!("could not serialise cache entry: {e}")))?;
    bramble_base::write_atomic(&path, &bytes, 0o600)
        .map_err(|e| NetworkError::io(format!("write {}", path.display()), e))
}

/// Removes the entry of `id`; missing is fine.
pub(super) fn remove(dir: &Path, id: &str) -> Result<(), NetworkError> {
    let path = entry_path(dir, id);
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(NetworkError::io(format!("remove {}", path.display()), e)),
    }
}

/// Every readable entry's attachment, sorted by id; bad entries are logged and skipped.
pub(super) fn list(dir: &Path) -> Result<Vec<Attachment>, NetworkError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(NetworkError::io(format!("list {}", dir.display()), e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| NetworkError::io(format!("list {}", dir.display()), e))?;
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
            continue;
        };
        if id.starts_with('.') {
            continue; // a temporary file
        }
        if validate_id(id).is_err() {
            tracing::warn!(file = %entry.path().display(), "skipping network cache file with an invalid id");
            continue;
        }
        match read(dir, id) {
            Ok(Some(e)) => found.push(e.attachment),
            Ok(None) => {} // removed meanwhile
            Err(ReadError::Corrupt(reason)) => {
                tracing::warn!("skipping unreadable network cache entry: {reason}");
            }
            Err(ReadError::Io(e)) => tracing::warn!("skipping network cache entry: {e}"),
        }
    }
    found.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(found)
}

/// Runs `f` holding host-local's lock on `lease_dir` (`flock` on `<lease_dir>/lock`, as the
/// plugin's disk store does). Without a lease directory there is nothing to lock or read.
fn with_lease_lock<T: Default>(
    lease_dir: &Path,
    f: impl FnOnce() -> io::Result<T>,
) -> io::Result<T> {
    if !lease_dir.is_dir() {
        return Ok(T::default());
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(lease_dir.join("lock"))?;
    let _lock =
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| io::Error::from(errno))?;
    f()
}

/// Every lease file (named by IP) with the id on its first line, sorted by path.
fn read_leases(lease_dir: &Path) -> io::Result<Vec<(PathBuf, IpAddr, String)>> {
    let mut leases = Vec::new();
    for entry in fs::read_dir(lease_dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(ip) = name.to_str().and_then(|n| n.parse::<IpAddr>().ok()) else {
            continue; // lock, last_reserved_ip.N
        };
        let content = match fs::read_to_string(entry.path()) {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => continue,
            Err(e) => return Err(e),
        };
        let owner = content.lines().next().map(str::trim).unwrap_or_default();
        leases.push((entry.path(), ip, owner.to_owned()));
    }
    leases.sort();
    Ok(leases)
}

/// Lease files (named by IP) whose first line is `id`.
fn matching_leases(lease_dir: &Path, id: &str) -> io::Result<Vec<PathBuf>> {
    Ok(read_leases(lease_dir)?
        .into_iter()
        .filter(|(_, _, owner)| owner == id)
        .map(|(path, _, _)| path)
        .collect())
}

/// Every lease in `lease_dir` as (address, owner id), sorted by address file name.
pub(super) fn all_leases(lease_dir: &Path) -> io::Result<Vec<(IpAddr, String)>> {
    with_lease_lock(lease_dir, || {
        Ok(read_leases(lease_dir)?
            .into_iter()
            .map(|(_, ip, owner)| (ip, owner))
            .collect())
    })
}

/// The lease files naming `id`.
pub(super) fn leases_of(lease_dir: &Path, id: &str) -> io::Result<Vec<PathBuf>> {
    with_lease_lock(lease_dir, || matching_leases(lease_dir, id))
}

/// Removes the lease files naming `id`; returns what was removed.
pub(super) fn release_leases(lease_dir: &Path, id: &str) -> io::Result<Vec<PathBuf>> {
    with_lease_lock(lease_dir, || {
        let leases = matching_leases(lease_dir, id)?;
        for lease in &leases {
            match fs::remove_file(lease) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(leases)
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use serde_json::json;

    use super::*;

    fn entry(id: &str) -> CacheEntry {
        CacheEntry::new(
            Attachment {
                id: id.to_owned(),
                netns: PathBuf::from(format!("/run/bramble/net/netns/{id}")),
                ip: Ipv4Addr::new(10, 72, 0, 2),
                gateway: Ipv4Addr::new(10, 72, 0, 1),
                prefix_len: 16,
            },
            "eth0",
            json!({"cniVersion": "1.0.0", "name": "bramble", "plugins": [{"type": "bridge"}, {"type": "firewall"}]}),
            json!({"cniVersion": "1.0.0", "ips": [{"address": "10.72.0.2/16"}]}),
        )
    }

    #[test]
    fn cache_round_trip_and_removal() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        assert!(matches!(read(&cache, "fn1"), Ok(None)));
        assert!(list(&cache).unwrap().is_empty());
        write(&cache, &entry("fn1")).unwrap();
        let Ok(Some(back)) = read(&cache, "fn1") else {
            panic!("entry not read back")
        };
        assert_eq!(back, entry("fn1"));
        assert_eq!(
            fs::read_dir(&cache).unwrap().count(),
            1,
            "no temporary file left"
        );
        remove(&cache, "fn1").unwrap();
        remove(&cache, "fn1").unwrap();
        assert!(matches!(read(&cache, "fn1"), Ok(None)));
    }

    #[test]
    fn list_skips_bad_entries() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &entry("b")).unwrap();
        write(dir.path(), &entry("a")).unwrap();
        fs::write(dir.path().join("broken.json"), "{not json").unwrap();
        let mut wrong_id = entry("x");
        wrong_id.attachment.id = "y".to_owned();
        fs::write(
            dir.path().join("x.json"),
            serde_json::to_vec(&wrong_id).unwrap(),
        )
        .unwrap();
        let mut bad_conf = entry("z");
        bad_conf.netconf = json!({"plugins": "none"});
        fs::write(
            dir.path().join("z.json"),
            serde_json::to_vec(&bad_conf).unwrap(),
        )
        .unwrap();
        fs::write(dir.path().join(".c.json.tmp"), "partial").unwrap();
        fs::write(dir.path().join("notes.txt"), "hello").unwrap();
        fs::write(
            dir.path().join("-bad.json"),
            serde_json::to_vec(&entry("-bad")).unwrap(),
        )
        .unwrap();
        let ids: Vec<String> = list(dir.path())
            .unwrap()
            .into_iter()
            .map(|a| a.id)
            .collect();
        assert_eq!(ids, ["a", "b"]);
        assert!(matches!(
            read(dir.path(), "broken"),
            Err(ReadError::Corrupt(_))
        ));
    }

    #[test]
    fn releases_only_the_leases_of_the_id() {
        let dir = tempfile::tempdir().unwrap();
        let leases = dir.path().join("bramble");
        assert!(
            release_leases(&leases, "fn1").unwrap().is_empty(),
            "no lease dir yet"
        );
        fs::create_dir(&leases).unwrap();
        fs::write(leases.join("10.72.0.2"), "fn1\r\neth0").unwrap();
        fs::write(leases.join("10.72.0.3"), "fn10\r\neth0").unwrap();
        fs::write(leases.join("10.72.0.4"), "fn1").unwrap(); // old host-local: id only
        fs::write(leases.join("10.72.0.5"), "other\r\neth0").unwrap();
        fs::write(leases.join("last_reserved_ip.0"), "10.72.0.5").unwrap();
        fs::write(leases.join("lock"), "").unwrap();
        fs::write(leases.join("notes"), "fn1").unwrap();

        assert_eq!(
            leases_of(&leases, "fn1").unwrap(),
            [leases.join("10.72.0.2"), leases.join("10.72.0.4")]
        );
        let freed = release_leases(&leases, "fn1").unwrap();
        assert_eq!(freed.len(), 2);
        let mut left: Vec<String> = fs::read_dir(&leases)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "10.72.0.3",
                "10.72.0.5",
                "last_reserved_ip.0",
                "lock",
                "notes"
            ]
        );
        assert!(leases_of(&leases, "fn1").unwrap().is_empty());
        assert_eq!(
            all_leases(&leases).unwrap(),
            [
                ("10.72.0.3".parse().unwrap(), "fn10".to_owned()),
                ("10.72.0.5".parse().unwrap(), "other".to_owned())
            ]
        );
    }
}
