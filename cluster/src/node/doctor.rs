//! What `bramble doctor` checks of a board in a cluster: its nats-server is installed in a
//! version bramble supports, and the one bramble runs answers (with JetStream current where the
//! board carries it).

use std::path::Path;

use crate::engine::config::DEFAULT_MONITOR_PORT;
use crate::engine::{Health, HealthCheck, Monitor};

/// How a check ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Fine.
    Ok,
    /// Works, but something needs attention.
    Warning,
    /// Cluster mode cannot work.
    Blocking,
}

/// The finding about the board's nats-server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatsFinding {
    /// How it ended.
    pub verdict: Verdict,
    /// What was found.
    pub detail: String,
    /// What fixes it (problems only).
    pub fix: Option<String>,
}

/// Checks the nats-server of a board with cluster state under `state_dir` (`None`: the board is
/// in no cluster, there is nothing to check). `binary`: the configured nats-server.
pub async fn nats_server(state_dir: &Path, binary: &Path) -> Option<NatsFinding> {
    let node = {
        let state_dir = state_dir.to_path_buf();
        tokio::task::spawn_blocking(move || {
            super::files::is_member(&state_dir)
                .then(|| super::files::NodeFile::load(&state_dir).ok())
                .flatten()
        })
        .await
        .ok()
        .flatten()?
    };
    let finding = |verdict, detail: String, fix: Option<&str>| NatsFinding {
        verdict,
        detail,
        fix: fix.map(str::to_owned),
    };
    let version = match crate::engine::version::probe(binary).await {
        Ok(version) => version,
        Err(e) => {
            return Some(finding(
                Verdict::Blocking,
                format!(
                    "board {} of cluster {}: {}",
                    node.board,
                    node.cluster,
                    bramble_base::error_chain(&e)
                ),
                Some("apt install nats-server"),
            ));
        }
    };
    let monitor = Monitor::new(format!("http://127.0.0.1:{DEFAULT_MONITOR_PORT}"));
    let depth = if node.jetstream {
        HealthCheck::MetaLeader
    } else {
        HealthCheck::Server
    };
    let about = format!(
        "nats-server {version} for board {} of cluster {}{}",
        node.board,
        node.cluster,
        if node.jetstream {
            " (carries JetStream)"
        } else {
            ""
        }
    );
    Some(match monitor.health(depth).await {
        Ok(Health::Ok) => finding(Verdict::Ok, format!("{about}: answers"), None),
        Ok(Health::Unavailable(why)) => finding(
            Verdict::Warning,
            format!("{about}: runs but is not ready: {why}"),
            Some(
                "see `bramble cluster status`: the cluster may have no quorum (too few JetStream boards up)",
            ),
        ),
        Err(e) => finding(
            Verdict::Warning,
            format!("{about}: does not answer ({e})"),
            Some(
                "is `bramble up` running? it starts nats-server in cluster mode (journalctl -u bramble)",
            ),
        ),
    })
}
