//! bramble-cluster: boards joined through NATS JetStream (work in progress).

pub mod engine;
pub mod identity;
mod jserr;
pub mod kv;
pub mod layout;
pub mod lease;
pub mod membership;
pub mod migrate;
pub mod names;
pub mod queue;
