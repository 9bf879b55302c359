//! Shared test infrastructure for bramble's integration tests (not published).
//!
//! - [`harness`]: the test-binary entry point (private network namespace, requirement checks).
//! - [`containerd`]: a private containerd per test ([`Containerd`]): own root, state and
//!   sockets under `/tmp`, crash/restart, full cleanup on drop (shims, containers, mounts).
//! - [`registry`]: a private OCI registry on `127.0.0.1` ([`Registry`], Debian
//!   `docker-registry`), optionally with basic auth; push OCI archives with skopeo, count the
//!   requests it served; [`write_docker_config`] for credentials.
//! - [`fixture`]: the statically linked fixture function binary ([`fixture_binary`]), built with
//!   plain `rustc` and cached under `target/fixture`; [`images`] packages it as an OCI image
//!   with bramble's own builder ([`multi_platform_layout`] combines several into one
//!   multi-platform image).
//! - [`http`]: a minimal async HTTP client, the readiness wait on `/_/health`, and the
//!   blocking probe and free-port helpers of the servers the testkit starts.
//! - [`lan`]: [`lan::Lan`], a LAN on one machine (a bridge namespace and a namespace per
//!   board, private addresses inside), partitions by iptables; for the multi-board tests.
//! - [`load`]: [`Load`], a steady request loop counting successes, failures and bodies.
//! - [`node`]: [`Node`], a real `bramble up` process on a [`TestEnv`], with its API at hand.
//! - [`wrk`]: the `wrk` load generator, for the benchmarks.
//! - [`env`]: [`TestEnv`], a private containerd with a runtime configuration (namespace,
//!   bridge, subnet, state directory) unique to one test.

pub mod browser;
pub mod containerd;
pub mod env;
pub mod fixture;
pub mod harness;
pub mod http;
pub mod images;
pub mod lan;
pub mod load;
pub mod node;
pub mod registry;
pub mod stats;
pub mod wrk;

mod procfs;

pub use containerd::Containerd;
pub use env::TestEnv;
pub use fixture::{fixture_binary, is_static_elf};
pub use images::{example_image, fixture_image, foreign_image, multi_platform_layout};
pub use load::{Load, LoadReport};
pub use node::Node;
pub use procfs::{cpu_time, rss_kib};
pub use registry::{Registry, write_docker_config};
