//! The agent's integration tests, one binary (one link) for all of them: a real `bramble up`
//! (or the real `bramble` binary) on a private containerd with real CNI, each test process in a
//! private network namespace. A module per part, each with what it needs from the machine;
//! tests are named `<module>::<test>`, so `cargo nextest run -p bramble-agent --test it faults::`
//! runs one part.
//!
//! | module            | what                                                                  |
//! |-------------------|-----------------------------------------------------------------------|
//! | `node`            | `bramble up` end to end: every API route, restarts, scale to zero, proxying |
//! | `ops`             | `bramble doctor`, `install`/`uninstall`, `up`'s systemd notifications  |
//! | `cli`             | the operator CLI against a real node                                  |
//! | `recovery`        | crashes, reboots, crash loops, updates under load, admission, image GC |
//! | `isolation`       | what a function can and cannot reach, checked from inside it          |
//! | `hostile_clients` | idle connections, slowloris clients, oversized heads and bodies       |
//! | `faults`          | containerd killed, broken functions, a full disk, power cuts          |
//! | `stops`           | stops that answer at once and make no request wait for a stopping replica |
//! | `dashboard`       | the dashboard (`/ui/`) in a real headless Chromium over WebDriver     |
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bramble_testkit::harness::{self, Need};

mod cli;
mod dashboard;
mod faults;
mod hostile_clients;
mod isolation;
mod node;
mod ops;
mod recovery;
mod stops;

/// What a real node needs from the machine: root, containerd, runc, iptables, the CNI plugins.
const NODE: &[Need] = &[
    Need::Root,
    Need::Binary("containerd"),
    Need::Binary("runc"),
    Need::Binary("iptables"),
    Need::CniPlugins,
];

fn main() {
    harness::main_suites(vec![
        node::suite(),
        ops::suite(),
        cli::suite(),
        recovery::suite(),
        isolation::suite(),
        hostile_clients::suite(),
        faults::suite(),
        stops::suite(),
        dashboard::suite(),
    ]);
}
