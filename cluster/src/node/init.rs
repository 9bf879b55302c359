//! Forming a cluster on the first board (`bramble cluster init`), and this board's LAN address.

use std::net::IpAddr;
use std::path::Path;

use super::files::{ClusterFiles, NodeFile};
use crate::identity::{ClusterIdentity, IdentityError, JoinToken};

/// What the first board is.
#[derive(Clone, Debug)]
pub struct Founding {
    /// The cluster's name.
    pub cluster: String,
    /// The board's name.
    pub board: String,
    /// Its LAN address.
    pub address: IpAddr,
    /// Its API port.
    pub api_port: u16,
    /// Its board-to-board port.
    pub board_port: u16,
    /// Its route port.
    pub route_port: u16,
}

/// Makes the cluster's identity and the first board's, and writes them under
/// `<state_dir>/cluster/` (root-only). Returns the join token. Blocking.
pub fn create(state_dir: &Path, founding: &Founding) -> Result<JoinToken, IdentityError> {
    let cluster = ClusterIdentity::init(&founding.cluster)?;
    let board = cluster.issue_board(&founding.board, &[founding.address])?;
    let token = cluster.join_token()?;
    let files = ClusterFiles {
        cluster,
        board,
        node: NodeFile {
            cluster: founding.cluster.clone(),
            board: founding.board.clone(),
            address: founding.address,
            api_port: founding.api_port,
            board_port: founding.board_port,
            route_port: founding.route_port,
            jetstream: true,
            clustered: false,
            routes: Vec::new(),
            founder: true,
            joining: false,
        },
    };
    files.save(state_dir)?;
    Ok(token)
}

/// The join command other boards run: `TOKEN ADDRESS` with this board's API address.
pub fn join_command(token: &JoinToken, address: IpAddr, api_port: u16) -> String {
    let host = match address {
        IpAddr::V6(v6) => format!("[{v6}]"),
        IpAddr::V4(v4) => v4.to_string(),
    };
    format!("{token} {host}:{api_port}")
}

/// This board's LAN address: the IPv4 address of the interface the default route uses; else
/// the first IPv4 address that is not loopback, link-local or on an interface named in
/// `exclude` (the function bridge) or a container's (`veth*`, `cni*`, `docker*`).
pub fn detect_address(exclude: &[&str]) -> Option<IpAddr> {
    let default_interface = std::fs::read_to_string("/proc/net/route")
        .ok()
        .and_then(|table| default_route_interface(&table));
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    let mut candidates = Vec::new();
    for ifaddr in addrs {
        let Some(ip) = ifaddr
            .address
            .as_ref()
            .and_then(|a| a.as_sockaddr_in())
            .map(|a| IpAddr::V4(a.ip()))
        else {
            continue;
        };
        let name = ifaddr.interface_name;
        let container = ["veth", "cni", "docker"]
            .iter()
            .any(|p| name.starts_with(p));
        if ip.is_loopback() || is_link_local(ip) || container || exclude.contains(&name.as_str()) {
            continue;
        }
        if default_interface.as_deref() == Some(name.as_str()) {
            return Some(ip);
        }
        candidates.push(ip);
    }
    candidates.into_iter().next()
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// The interface of the default route in `/proc/net/route`.
fn default_route_interface(table: &str) -> Option<String> {
    table.lines().skip(1).find_map(|line| {
        let mut fields = line.split_whitespace();
        let (name, destination) = (fields.next()?, fields.next()?);
        (destination == "00000000").then(|| name.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_route_names_the_interface() {
        let table = "Iface\tDestination\tGateway\tFlags\n\
                     eth0\t0000A8C0\t00000000\t0001\n\
                     wlan0\t00000000\t0101A8C0\t0003\n";
        assert_eq!(default_route_interface(table).as_deref(), Some("wlan0"));
        assert_eq!(default_route_interface("Iface\tDestination\n"), None);
    }

    #[test]
    fn a_cluster_is_made_with_a_token_that_pins_its_ca() {
        let dir = tempfile::tempdir().unwrap();
        let founding = Founding {
            cluster: "shelf".into(),
            board: "pi1".into(),
            address: "10.0.0.1".parse().unwrap(),
            api_port: 8080,
            board_port: 7425,
            route_port: 7424,
        };
        let token = create(dir.path(), &founding).unwrap();
        let files = ClusterFiles::load(dir.path()).unwrap();
        files.cluster.check_token(&token).unwrap();
        assert!(files.node.founder && files.node.jetstream && !files.node.clustered);
        assert_eq!(
            join_command(&token, founding.address, 8080),
            format!("{token} 10.0.0.1:8080")
        );
        assert!(
            join_command(&token, "fe80::1".parse().unwrap(), 8080).ends_with(" [fe80::1]:8080")
        );
    }
}
