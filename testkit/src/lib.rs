//! Shared test infrastructure for bramble's integration tests (not published).
//!
//! - [`harness`]: the test-binary entry point (private network namespace, requirement checks).

pub mod harness;
