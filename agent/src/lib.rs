//! bramble-agent: the node. It keeps the desired state, supervises every function's
//! containers, implements the gateway's provider with the local runtime, and composes it all
//! into `bramble up`.

pub mod config;
pub mod daemon;
pub mod doctor;
pub mod function;
pub mod probe;
#[cfg(test)]
mod proptests;
pub mod provider;
pub mod store;
mod supervisor;
pub mod systemd;
pub mod triggers;

/// An error and its sources, `outer: inner: innermost`, for messages and logs.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
