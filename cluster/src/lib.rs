//! bramble-cluster: boards joined through NATS JetStream (work in progress).

pub mod engine;
pub mod identity;
pub mod names;
