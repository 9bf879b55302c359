//! The operator commands of the `bramble` binary. They talk to a node's gateway over HTTP,
//! like faas-cli does, so they work from a laptop as well as on the board.

pub(crate) mod client;
pub(crate) mod cluster;
pub(crate) mod deploy;
pub(crate) mod doctor;
pub(crate) mod functions;
pub(crate) mod gpio;
pub(crate) mod image;
#[cfg(test)]
mod proptests;
pub(crate) mod secret;
pub(crate) mod stack;
pub(crate) mod system;
pub(crate) mod up;

/// Parses `KEY=VALUE`.
pub(crate) fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}
