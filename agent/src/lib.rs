//! bramble-agent: the node. It keeps the desired state, supervises every function's
//! containers, implements the gateway's provider with the local runtime, and composes it all
//! into `bramble up`.

pub mod cluster;
pub mod config;
pub mod daemon;
pub mod dashboard;
pub mod doctor;
pub mod function;
pub mod probe;
#[cfg(test)]
mod proptests;
pub mod provider;
pub mod runtime;
pub mod store;
mod supervisor;
pub mod systemd;
pub mod triggers;
