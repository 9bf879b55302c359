//! Integration tests of the gateway over real HTTP, against the fixture function.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod api;
mod asyncq;
mod boards;
mod common;
mod proxy;
mod robust;
mod ui;
