//! The error type of the network module.

use std::path::PathBuf;
use std::time::Duration;

/// What can go wrong while attaching or detaching function networks.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A [`NetworkConfig`](super::NetworkConfig) field is unusable.
    #[error("invalid network config: {field}: {reason}")]
    InvalidConfig {
        /// The offending field.
        field: &'static str,
        /// Why it is rejected.
        reason: String,
    },
    /// A container id that is not safe to use as a file name.
    #[error("invalid container id {id:?}: must match [A-Za-z0-9][A-Za-z0-9_.-]{{0,75}}")]
    InvalidId {
        /// The rejected id.
        id: String,
    },
    /// Plugin executables that are not in any of the plugin directories.
    #[error(
        "CNI plugins {} not found in {} (install them: apt install containernetworking-plugins)",
        .missing.join(", "),
        display_paths(.searched)
    )]
    MissingPlugins {
        /// Plugin names not found.
        missing: Vec<String>,
        /// Directories searched.
        searched: Vec<PathBuf>,
    },
    /// The installed plugins share no CNI version with bramble.
    #[error(
        "the installed CNI plugins support no common CNI version bramble speaks ({wanted}): {found}"
    )]
    UnsupportedPlugins {
        /// Versions bramble can use, best first.
        wanted: String,
        /// What each plugin reported.
        found: String,
    },
    /// A plugin reported a CNI error.
    #[error(
        "CNI plugin {plugin} {command} failed (code {code}): {msg}{}",
        details_suffix(.details)
    )]
    Plugin {
        /// The plugin type, e.g. `bridge`.
        plugin: String,
        /// `ADD`, `DEL` or `VERSION`.
        command: String,
        /// The CNI error code (1-99 are defined by the spec, 100+ by the plugin).
        code: u32,
        /// The error message.
        msg: String,
        /// Extra detail (may be empty).
        details: String,
    },
    /// A plugin failed without printing a CNI error.
    #[error(
        "CNI plugin {plugin} {command} exited with {status} and no CNI error; output: {output}"
    )]
    PluginExit {
        /// The plugin type.
        plugin: String,
        /// The CNI command.
        command: String,
        /// Exit status as text.
        status: String,
        /// What it printed (stdout, then stderr), truncated.
        output: String,
    },
    /// A plugin did not finish in time and was killed.
    #[error("CNI plugin {plugin} {command} did not finish within {timeout:?} and was killed")]
    PluginTimeout {
        /// The plugin type.
        plugin: String,
        /// The CNI command.
        command: String,
        /// The time limit.
        timeout: Duration,
    },
    /// A plugin could not be started or talked to.
    #[error("could not run CNI plugin {}", .path.display())]
    PluginExec {
        /// The executable.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A plugin succeeded but printed something that is not a CNI result.
    #[error("CNI plugin {plugin} {command} printed an invalid result")]
    PluginOutput {
        /// The plugin type.
        plugin: String,
        /// The CNI command.
        command: String,
        /// Why it does not parse.
        #[source]
        source: serde_json::Error,
    },
    /// A network configuration list (rendered or cached) that cannot be run.
    #[error("unusable CNI netconf: {reason}")]
    BadNetconf {
        /// What is wrong.
        reason: String,
    },
    /// The chain's result has no usable IPv4 address.
    #[error("CNI result is unusable: {reason}")]
    BadResult {
        /// What is missing or wrong.
        reason: String,
    },
    /// A file-system or kernel operation failed.
    #[error("could not {action}")]
    Io {
        /// What was being done, e.g. `create network namespace file /run/x`.
        action: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A bug or a vanished worker: should not happen.
    #[error("internal error: {0}")]
    Internal(String),
}

fn display_paths(paths: &[PathBuf]) -> String {
    let list: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    list.join(", ")
}

fn details_suffix(details: &str) -> String {
    if details.is_empty() {
        String::new()
    } else {
        format!(" ({details})")
    }
}

impl NetworkError {
    pub(super) fn io(action: impl Into<String>, source: std::io::Error) -> Self {
        NetworkError::Io {
            action: action.into(),
            source,
        }
    }
}
