//! Which nats-server this is, and what that version can do.

use std::fmt;
use std::path::Path;

use super::EngineError;

/// The oldest nats-server bramble runs: Debian 12 (bookworm) ships 2.9.10.
pub const MINIMUM: ServerVersion = ServerVersion {
    major: 2,
    minor: 9,
    patch: 0,
};

/// A nats-server release, as `nats-server --version` prints it (`nats-server: v2.9.10`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServerVersion {
    /// Major release (2).
    pub major: u32,
    /// Minor release (9 in bookworm, 10 in trixie).
    pub minor: u32,
    /// Patch release.
    pub patch: u32,
}

impl ServerVersion {
    /// Parses `nats-server --version` output (`nats-server: v2.10.27`, also a bare `2.10.27`
    /// or one with a pre-release suffix such as `v2.11.0-RC.1`).
    pub fn parse(text: &str) -> Option<ServerVersion> {
        let word = text.split_whitespace().last()?;
        let word = word.strip_prefix('v').unwrap_or(word);
        let core = word.split(['-', '+']).next()?;
        let mut parts = core.split('.').map(str::parse::<u32>);
        let major = parts.next()?.ok()?;
        let minor = parts.next()?.ok()?;
        let patch = parts.next().unwrap_or(Ok(0)).ok()?;
        if parts.next().is_some() {
            return None;
        }
        Some(ServerVersion {
            major,
            minor,
            patch,
        })
    }

    /// What this version supports that bramble cares about.
    pub fn capabilities(self) -> Capabilities {
        let at_least = |major, minor| (self.major, self.minor) >= (major, minor);
        Capabilities {
            sync_interval: at_least(2, 10),
            per_key_ttl: at_least(2, 11),
        }
    }
}

impl fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Version-dependent behaviour of nats-server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// The `jetstream { sync_interval }` key (2.10+). 2.9 refuses the configuration file when
    /// it is present ("unknown field"), and fsyncs JetStream's files only every two minutes.
    pub sync_interval: bool,
    /// Per-message TTL on KV keys (2.11+, ADR-43). Not used by bramble: leases and liveness are
    /// computed from revisions and clocks so that 2.9 and 2.10 work.
    pub per_key_ttl: bool,
}

/// Runs `<binary> --version` and parses it. Fails when the binary is missing (naming the Debian
/// package), does not run, or is older than [`MINIMUM`].
pub async fn probe(binary: &Path) -> Result<ServerVersion, EngineError> {
    let output = tokio::process::Command::new(binary)
        .arg("--version")
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| super::process::spawn_error(binary, source))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let text = if text.trim().is_empty() {
        String::from_utf8_lossy(&output.stderr)
    } else {
        text
    };
    let version = ServerVersion::parse(text.trim()).ok_or_else(|| EngineError::VersionUnknown {
        binary: binary.to_path_buf(),
        output: text.trim().chars().take(200).collect(),
    })?;
    if version < MINIMUM {
        return Err(EngineError::VersionTooOld {
            found: version,
            minimum: MINIMUM,
        });
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_debian_binaries_print() {
        let v = ServerVersion::parse("nats-server: v2.9.10").unwrap();
        assert_eq!((v.major, v.minor, v.patch), (2, 9, 10));
        let v = ServerVersion::parse("nats-server: v2.10.27\n").unwrap();
        assert_eq!(v.to_string(), "2.10.27");
        let v = ServerVersion::parse("v2.11.0-RC.1").unwrap();
        assert_eq!(v.to_string(), "2.11.0");
        assert_eq!(ServerVersion::parse("2.10").unwrap().patch, 0);
    }

    #[test]
    fn refuses_garbage() {
        for text in [
            "",
            "nats-server",
            "v2",
            "vx.y.z",
            "2.10.1.4",
            "nats-server: v2.-1.0",
        ] {
            assert!(ServerVersion::parse(text).is_none(), "{text:?}");
        }
    }

    #[test]
    fn capabilities_follow_the_version() {
        let old = ServerVersion::parse("2.9.10").unwrap().capabilities();
        assert!(!old.sync_interval && !old.per_key_ttl);
        let trixie = ServerVersion::parse("2.10.27").unwrap().capabilities();
        assert!(trixie.sync_interval && !trixie.per_key_ttl);
        let new = ServerVersion::parse("2.11.4").unwrap().capabilities();
        assert!(new.sync_interval && new.per_key_ttl);
        assert!(ServerVersion::parse("2.8.4").unwrap() < MINIMUM);
    }
}
