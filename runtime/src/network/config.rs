//! Network configuration and its validation.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::str::FromStr;

use super::NetworkError;

/// Where to find the CNI plugins and how to lay out the function network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkConfig {
    /// CNI network name (also the host-local lease directory and part of iptables comments).
    pub name: String,
    /// Name of the Linux bridge the plugins create (at most 15 bytes).
    pub bridge: String,
    /// IPv4 subnet in CIDR notation, e.g. `10.72.0.0/16`; the first host is the bridge address.
    pub subnet: String,
    /// Directories searched, in order, for the plugin executables.
    pub plugin_dirs: Vec<PathBuf>,
    /// Volatile directory (tmpfs) for pinned namespaces, the result cache and IPAM leases.
    pub state_dir: PathBuf,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            name: "bramble".to_owned(),
            bridge: "bramble0".to_owned(),
            subnet: "10.72.0.0/16".to_owned(),
            plugin_dirs: vec![PathBuf::from("/usr/lib/cni"), PathBuf::from("/opt/cni/bin")],
            state_dir: PathBuf::from("/run/bramble/net"),
        }
    }
}

/// An IPv4 network in CIDR form with its host bits clear.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Subnet {
    pub(super) addr: Ipv4Addr,
    pub(super) prefix_len: u8,
}

impl Subnet {
    /// The first host: the bridge address.
    pub(super) fn gateway(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr).wrapping_add(1))
    }

    fn mask(prefix_len: u8) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(prefix_len))
            .unwrap_or(0)
    }

    pub(super) fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask(self.prefix_len) == u32::from(self.addr)
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// Parses `a.b.c.d/n` (any prefix 0..=32, host bits allowed) into the address and prefix.
pub(super) fn parse_cidr(text: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, prefix) = text.split_once('/')?;
    if prefix.is_empty() || prefix.len() > 2 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let prefix_len: u8 = prefix.parse().ok()?;
    if prefix_len > 32 {
        return None;
    }
    Some((Ipv4Addr::from_str(addr).ok()?, prefix_len))
}

impl FromStr for Subnet {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (addr, prefix_len) = parse_cidr(text)
            .ok_or_else(|| format!("{text:?} is not an IPv4 CIDR like 10.72.0.0/16"))?;
        if !(8..=30).contains(&prefix_len) {
            return Err(format!("prefix /{prefix_len} of {text} is outside /8../30"));
        }
        let network = Ipv4Addr::from(u32::from(addr) & Subnet::mask(prefix_len));
        if network != addr {
            return Err(format!(
                "{text} has host bits set (did you mean {network}/{prefix_len}?)"
            ));
        }
        Ok(Subnet { addr, prefix_len })
    }
}

/// `[A-Za-z0-9][A-Za-z0-9_.-]{0,75}`: safe as a file name and as a CNI container id.
pub(super) fn validate_id(id: &str) -> Result<(), NetworkError> {
    let bytes = id.as_bytes();
    let ok = matches!(bytes.first(), Some(b) if b.is_ascii_alphanumeric())
        && bytes.len() <= 76
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(NetworkError::InvalidId { id: id.to_owned() })
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> NetworkError {
    NetworkError::InvalidConfig {
        field,
        reason: reason.into(),
    }
}

/// Checks every field; returns the parsed subnet.
pub(super) fn validate_config(config: &NetworkConfig) -> Result<Subnet, NetworkError> {
    let name = config.name.as_bytes();
    let name_ok = matches!(name.first(), Some(b) if b.is_ascii_alphanumeric())
        && name.len() <= 64
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !name_ok {
        return Err(invalid(
            "name",
            format!(
                "{:?} must be 1-64 characters of [A-Za-z0-9_.-] starting with a letter or digit",
                config.name
            ),
        ));
    }
    let bridge = config.bridge.as_bytes();
    if bridge.is_empty() || bridge.len() > 15 {
        return Err(invalid(
            "bridge",
            format!(
                "{:?} must be 1-15 bytes long (a Linux interface name)",
                config.bridge
            ),
        ));
    }
    if !bridge
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        || config.bridge == "."
        || config.bridge == ".."
    {
        return Err(invalid(
            "bridge",
            format!("{:?} may only use [A-Za-z0-9_.-]", config.bridge),
        ));
    }
    let subnet: Subnet = config
        .subnet
        .parse()
        .map_err(|reason: String| invalid("subnet", reason))?;
    if config.plugin_dirs.is_empty() {
        return Err(invalid(
            "plugin_dirs",
            "at least one plugin directory is needed",
        ));
    }
    for dir in &config.plugin_dirs {
        let text = dir.to_str().unwrap_or(":");
        if !dir.is_absolute() || text.contains(':') {
            return Err(invalid(
                "plugin_dirs",
                format!(
                    "{} must be an absolute UTF-8 path without ':' (it goes into CNI_PATH)",
                    dir.display()
                ),
            ));
        }
    }
    if !config.state_dir.is_absolute() || config.state_dir.to_str().is_none() {
        return Err(invalid(
            "state_dir",
            format!(
                "{} must be an absolute UTF-8 path",
                config.state_dir.display()
            ),
        ));
    }
    Ok(subnet)
}
