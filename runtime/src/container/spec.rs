//! What a container runs: its spec, checked before anything happens, and the files it gets
//! (hosts, resolv.conf, secrets) in its private runtime directory.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::spec::{self, BindMount, Limits};
use crate::{Runtime, validate_id};

/// PATH when the image sets none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What to run.
#[derive(Clone, Debug, Default)]
pub struct ContainerSpec {
    /// containerd container id (also the network attachment and cgroup name).
    pub id: String,
    /// Normalised name of an image that is present and unpacked.
    pub image: String,
    pub hostname: String,
    /// Environment on top of the image's (same key: this wins).
    pub env: Vec<(String, String)>,
    /// Replaces the image's entrypoint + cmd.
    pub args: Option<Vec<String>>,
    /// Replaces the image's `User`.
    pub user: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub limits: Limits,
    /// Mount the image read-only with a writable tmpfs at `/tmp`.
    pub read_only_rootfs: bool,
    /// Secrets, readable only by the function's user at `/var/openfaas/secrets/NAME`.
    pub secrets: Vec<Secret>,
    /// Extra bind mounts (the hardware socket, for one).
    pub mounts: Vec<BindMount>,
    /// Capabilities to keep (none by default), e.g. `CAP_NET_RAW`.
    pub capabilities: Vec<String>,
    /// The log buffer output goes to (default: the id). Containers of one function share it.
    pub log_name: Option<String>,
}

/// A secret file for a function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Secret {
    /// File name under `/var/openfaas/secrets`.
    pub name: String,
    /// Where bramble keeps it on the host.
    pub source: PathBuf,
}

impl ContainerSpec {
    pub(super) fn validate(&self) -> Result<()> {
        validate_id(&self.id).map_err(|e| Error::Invalid(format!("container id {e}")))?;
        if self.hostname.is_empty()
            || self.hostname.len() > 63
            || !self
                .hostname
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err(Error::Invalid(format!(
                "hostname {:?} is not a valid host name",
                self.hostname
            )));
        }
        for (key, value) in &self.env {
            if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
                return Err(Error::Invalid(format!(
                    "environment variable {key:?} is not valid"
                )));
            }
        }
        for secret in &self.secrets {
            if !is_plain_file_name(&secret.name) {
                return Err(Error::Invalid(format!(
                    "secret name {:?} is not valid: use letters, digits, '.', '_' and '-' (no '/' or '..')",
                    secret.name
                )));
            }
        }
        for m in &self.mounts {
            if !m.destination.starts_with('/') || m.destination.split('/').any(|c| c == "..") {
                return Err(Error::Invalid(format!(
                    "mount destination {:?} must be an absolute path without '..'",
                    m.destination
                )));
            }
        }
        if self.limits.memory_bytes.is_some_and(|m| m < 4 << 20) {
            return Err(Error::Invalid(
                "a memory limit below 4 MiB cannot run a process".into(),
            ));
        }
        if self.limits.pids == Some(0) || self.limits.cpu_millis == Some(0) {
            return Err(Error::Invalid(
                "pids and cpu limits must be greater than zero".into(),
            ));
        }
        if let Some(name) = &self.log_name {
            validate_id(name).map_err(|e| Error::Invalid(format!("log name {e}")))?;
        }
        spec::normalise_capabilities(&self.capabilities).map_err(Error::Invalid)?;
        Ok(())
    }
}

pub(super) fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Runtime {
    /// The resolver configuration functions get: the host's, minus loopback nameservers they
    /// cannot reach (systemd-resolved's upstream list is used when the host points at its stub).
    pub(super) fn resolv_conf(&self) -> String {
        let host = std::fs::read_to_string(&self.inner.config.resolv_conf).unwrap_or_default();
        let upstream = std::fs::read_to_string("/run/systemd/resolve/resolv.conf").ok();
        function_resolv_conf(&host, upstream.as_deref())
    }
}

/// Image env, then ours (same key: ours wins), and a PATH if nobody set one.
pub(super) fn merge_env(image_env: &[String], ours: &[(String, String)]) -> Vec<String> {
    let mut merged: Vec<(String, String)> = Vec::new();
    let entries = image_env
        .iter()
        .filter_map(|e| e.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .chain(ours.iter().cloned());
    for (key, value) in entries {
        match merged.iter_mut().find(|(k, _)| *k == key) {
            Some(existing) => existing.1 = value,
            None => merged.push((key, value)),
        }
    }
    if !merged.iter().any(|(k, _)| k == "PATH") {
        merged.insert(0, ("PATH".into(), DEFAULT_PATH.into()));
    }
    merged
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect()
}

/// `/etc/hosts` of a function. It is bind-mounted, so it is rewritten in place (same inode)
/// once the function's address is known.
pub(super) fn hosts_file(ip: Option<Ipv4Addr>, hostname: &str) -> String {
    let mut hosts =
        String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if let Some(ip) = ip {
        hosts.push_str(&format!("{ip}\t{hostname}\n"));
    }
    hosts
}

/// Drops nameservers on loopback (unreachable from the function's network namespace). When
/// the host only has a loopback stub (systemd-resolved), its upstream list is used instead.
pub(super) fn function_resolv_conf(host: &str, systemd_upstream: Option<&str>) -> String {
    let is_loopback_ns = |line: &str| {
        line.split_whitespace()
            .nth(1)
            .and_then(|a| a.parse::<std::net::IpAddr>().ok())
            .is_some_and(|ip| ip.is_loopback())
    };
    let nameservers = |text: &str| {
        text.lines()
            .filter(|l| l.trim_start().starts_with("nameserver"))
            .filter(|l| !is_loopback_ns(l))
            .count()
    };
    let source = match systemd_upstream {
        Some(upstream) if nameservers(host) == 0 && nameservers(upstream) > 0 => upstream,
        _ => host,
    };
    let mut out = String::new();
    for line in source.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('#')
            || trimmed.is_empty()
            || (trimmed.starts_with("nameserver") && is_loopback_ns(trimmed))
        {
            continue;
        }
        out.push_str(trimmed);
        out.push('\n');
    }
    if nameservers(&out) == 0 {
        tracing::warn!(
            "the host has no nameserver a function can reach; DNS will not work in functions"
        );
    }
    out
}

/// Copies secrets into the container's (tmpfs) directory, readable only by the function's
/// user: directory 0500, files 0400, owned by its uid and gid.
pub(super) fn stage_secrets(
    dir: &Path,
    secrets: &[Secret],
    user: &crate::image::ResolvedUser,
) -> Result<PathBuf> {
    let target = dir.join("secrets");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&target)
        .map_err(|e| Error::io(format!("creating {}", target.display()), e))?;
    for secret in secrets {
        let value = std::fs::read(&secret.source).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound {
                kind: "secret",
                id: secret.name.clone(),
            },
            _ => Error::io(format!("reading secret {}", secret.name), e),
        })?;
        let path = target.join(&secret.name);
        write_file(&path, &value, 0o400)?;
        chown(&path, user)?;
    }
    chown(&target, user)?;
    std::fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(0o500))
        .map_err(|e| Error::io(format!("restricting {}", target.display()), e))?;
    Ok(target)
}

pub(super) fn chown(path: &Path, user: &crate::image::ResolvedUser) -> Result<()> {
    std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
        .map_err(|e| Error::io(format!("changing the owner of {}", path.display()), e))
}

pub(super) fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    file.write_all(contents)
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_merges_with_ours_winning_and_a_default_path() {
        let merged = merge_env(
            &["PATH=/bin".into(), "A=1".into(), "junk".into()],
            &[("A".into(), "2".into()), ("fprocess".into(), "cat".into())],
        );
        assert_eq!(merged, ["PATH=/bin", "A=2", "fprocess=cat"]);
        assert_eq!(merge_env(&[], &[])[0], format!("PATH={DEFAULT_PATH}"));
    }

    #[test]
    fn loopback_nameservers_are_dropped_or_replaced_by_upstream() {
        let stub = "# generated\nnameserver 127.0.0.53\noptions edns0 trust-ad\nsearch lan\n";
        let upstream = "nameserver 192.168.1.1\nsearch lan\n";
        assert_eq!(
            function_resolv_conf(stub, Some(upstream)),
            "nameserver 192.168.1.1\nsearch lan\n"
        );
        assert_eq!(
            function_resolv_conf("nameserver 10.0.0.2\nnameserver 127.0.0.1\n", None),
            "nameserver 10.0.0.2\n"
        );
        assert_eq!(
            function_resolv_conf(stub, None),
            "options edns0 trust-ad\nsearch lan\n"
        );
    }

    #[test]
    fn specs_are_validated_before_anything_happens() {
        let good = ContainerSpec {
            id: "f".into(),
            image: "x".into(),
            hostname: "f".into(),
            ..Default::default()
        };
        assert!(good.validate().is_ok());
        let bad = |f: fn(&mut ContainerSpec)| {
            let mut s = good.clone();
            f(&mut s);
            s.validate().unwrap_err().to_string()
        };
        assert!(bad(|s| s.id = "../etc".into()).contains("container id"));
        assert!(bad(|s| s.hostname = "a b".into()).contains("hostname"));
        assert!(bad(|s| s.env = vec![("A=B".into(), "x".into())]).contains("environment"));
        assert!(
            bad(|s| s.secrets = vec![Secret {
                name: "../x".into(),
                source: "/x".into()
            }])
            .contains("secret name")
        );
        assert!(
            bad(|s| s.secrets = vec![Secret {
                name: "a/b".into(),
                source: "/x".into()
            }])
            .contains("secret name")
        );
        assert!(
            bad(|s| s.mounts = vec![BindMount {
                source: "/x".into(),
                destination: "rel".into(),
                read_only: true
            }])
            .contains("absolute")
        );
        assert!(bad(|s| s.limits.memory_bytes = Some(1024)).contains("4 MiB"));
        assert!(bad(|s| s.capabilities = vec!["CAP_FLY".into()]).contains("CAP_FLY"));
    }

    #[test]
    fn secrets_are_staged_owned_by_the_function_user() -> Result<(), String> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("src");
        std::fs::write(&source, "s3cret").unwrap();
        let user = crate::image::ResolvedUser {
            uid: 4242,
            gid: 4343,
            additional_gids: vec![],
        };
        if !nix::unistd::Uid::effective().is_root() {
            return bramble_testkit::harness::cannot_run_here(
                "secrets_are_staged_owned_by_the_function_user",
                "staging chowns to the function's user, which needs root",
            );
        }
        let staged = stage_secrets(
            dir.path(),
            &[Secret {
                name: "api-key".into(),
                source,
            }],
            &user,
        )
        .unwrap();
        let file = std::fs::metadata(staged.join("api-key")).unwrap();
        assert_eq!(
            (file.uid(), file.gid(), file.permissions().mode() & 0o777),
            (4242, 4343, 0o400)
        );
        assert_eq!(
            std::fs::metadata(&staged).unwrap().permissions().mode() & 0o777,
            0o500
        );
        assert_eq!(
            std::fs::read_to_string(staged.join("api-key")).unwrap(),
            "s3cret"
        );
        Ok(())
    }
}
