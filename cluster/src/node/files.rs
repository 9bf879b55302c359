//! A board's cluster state on disk, under `<state_dir>/cluster/` (directory 0700, files 0600):
//!
//! - `cluster.json`: what the cluster shares ([`ClusterIdentity`]: name, secret, CA, route user,
//!   sealing key);
//! - `board.json`: the board's own certificate and NATS users ([`BoardIdentity`]);
//! - `node.json`: this board's place in the cluster ([`NodeFile`]): its name, address and ports,
//!   whether it carries JetStream, and the routes its nats-server dials — what it needs to
//!   reach the cluster again after a reboot, before it can read anything from the cluster;
//! - `tls/`: the PEM files nats-server reads (written from the two identities at each start).
//!
//! `node.json` is written last when a board forms or joins a cluster, so its presence means
//! "this board is in a cluster": `bramble up` then starts in cluster mode.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::identity::{BoardIdentity, ClusterIdentity, IdentityError};

/// This board's place in its cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeFile {
    /// The cluster's name.
    pub cluster: String,
    /// This board's name.
    pub board: String,
    /// Its LAN address, as the other boards reach it.
    pub address: IpAddr,
    /// The port of its API (`/system`, `/function`).
    pub api_port: u16,
    /// The port of its board-to-board listener.
    pub board_port: u16,
    /// The port of its nats-server's routes.
    pub route_port: u16,
    /// Whether it carries JetStream.
    pub jetstream: bool,
    /// Whether its nats-server runs with a cluster block (false only for the one board of a
    /// one-board cluster, which runs standalone JetStream).
    pub clustered: bool,
    /// The route listeners its nats-server dials: every JetStream board, itself included
    /// when it carries JetStream (see [`crate::engine::RouteConfig::routes`]).
    pub routes: Vec<SocketAddr>,
    /// Whether this board made the cluster's buckets (the first board); the others only open
    /// them, so that a board that joins never makes an empty bucket before the first board's
    /// data is moved into the cluster.
    pub founder: bool,
    /// Set when the board joins, cleared once it has found its record in the cluster: until
    /// then a missing record means the cluster's data is still being moved (the first board
    /// moves its JetStream data into the cluster as the second joins), not that this board
    /// was removed while away.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub joining: bool,
}

/// Everything a board in a cluster keeps.
#[derive(Clone, Debug)]
pub struct ClusterFiles {
    /// The cluster's identity.
    pub cluster: ClusterIdentity,
    /// The board's identity.
    pub board: BoardIdentity,
    /// The board's place.
    pub node: NodeFile,
}

/// `<state_dir>/cluster/node.json`.
pub fn node_path(state_dir: &Path) -> PathBuf {
    state_dir.join("cluster").join("node.json")
}

/// `<state_dir>/cluster-left`: the name of the cluster this board left last. A board that
/// left is not joined again by `cluster.join` in its configuration (only by an explicit join).
pub fn left_path(state_dir: &Path) -> PathBuf {
    state_dir.join("cluster-left")
}

/// The cluster this board left last, if any.
pub fn left_cluster(state_dir: &Path) -> Option<String> {
    std::fs::read_to_string(left_path(state_dir))
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// Whether the board is in a cluster (its `node.json` exists).
pub fn is_member(state_dir: &Path) -> bool {
    node_path(state_dir).exists()
}

impl ClusterFiles {
    /// Reads all three files. Blocking.
    pub fn load(state_dir: &Path) -> Result<ClusterFiles, IdentityError> {
        Ok(ClusterFiles {
            cluster: ClusterIdentity::load(&ClusterIdentity::path(state_dir))?,
            board: BoardIdentity::load(&BoardIdentity::path(state_dir))?,
            node: NodeFile::load(state_dir)?,
        })
    }

    /// Writes all three, `node.json` last. Blocking.
    pub fn save(&self, state_dir: &Path) -> Result<(), IdentityError> {
        self.cluster.save(&ClusterIdentity::path(state_dir))?;
        self.board.save(&BoardIdentity::path(state_dir))?;
        self.node.save(state_dir)
    }

    /// Removes the board's cluster state (after it left): `node.json` first, so an interrupted
    /// removal leaves a board in single-board mode; then the rest of `<state_dir>/cluster/`,
    /// JetStream's data included. Blocking.
    pub fn remove(state_dir: &Path) -> std::io::Result<()> {
        match std::fs::remove_file(node_path(state_dir)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        match std::fs::remove_dir_all(state_dir.join("cluster")) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

impl NodeFile {
    /// Reads `node.json` (refusing a file others can read). Blocking.
    pub fn load(state_dir: &Path) -> Result<NodeFile, IdentityError> {
        crate::identity::load_json(&node_path(state_dir))
    }

    /// Writes `node.json` (0600, atomically). Blocking.
    pub fn save(&self, state_dir: &Path) -> Result<(), IdentityError> {
        crate::identity::save_json(self, &node_path(state_dir))
    }

    /// The board's route listener.
    pub fn route_listen(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.route_port)
    }

    /// The board's board-to-board listener.
    pub fn board_listen(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.board_port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_round_trip_and_node_json_means_member() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_member(dir.path()));
        let cluster = ClusterIdentity::init("shelf").unwrap();
        let address: IpAddr = "10.0.0.1".parse().unwrap();
        let board = cluster.issue_board("pi1", &[address]).unwrap();
        let files = ClusterFiles {
            cluster,
            board,
            node: NodeFile {
                cluster: "shelf".into(),
                board: "pi1".into(),
                address,
                api_port: 8080,
                board_port: 7425,
                route_port: 7424,
                jetstream: true,
                clustered: false,
                routes: vec![],
                founder: true,
                joining: false,
            },
        };
        files.save(dir.path()).unwrap();
        assert!(is_member(dir.path()));
        let back = ClusterFiles::load(dir.path()).unwrap();
        assert_eq!(back.node, files.node);
        assert_eq!(back.board.board, "pi1");
        ClusterFiles::remove(dir.path()).unwrap();
        assert!(!is_member(dir.path()));
        assert!(!dir.path().join("cluster").exists());
        ClusterFiles::remove(dir.path()).unwrap();
    }
}
