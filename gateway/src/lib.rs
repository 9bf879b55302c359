//! bramble-gateway: the HTTP face of a bramble node.
//!
//! The OpenFaaS REST API (`/system/*`, behind HTTP Basic auth), the `/function` and
//! `/async-function` invocation paths, `/healthz` and Prometheus `/metrics`. It talks to a
//! [`provider::Provider`], never to containerd.

pub mod provider;
pub mod types;
