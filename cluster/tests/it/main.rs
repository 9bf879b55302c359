//! Integration tests of bramble-cluster against real nats-server processes, each board in its
//! own network namespace on a bridge that plays the LAN (see `bramble_testkit::lan`, `shelf.rs`).
//!
//! The nats-server under test is `BRAMBLE_NATS_SERVER` (default: `nats-server` on PATH, Debian
//! 12's 2.9.10); `cluster/test-nats-versions` runs this binary against 2.9.10 and 2.10.27.
//! Measured figures are printed (`measured: ...`), never asserted.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    unreachable_pub
)]

mod desired;
mod engine;
mod growth;
mod kv;
mod leaf;
mod liveness;
mod partition;
mod queue;
mod shelf;

use bramble_testkit::harness::{self, Need, Trial};

/// A trial whose async body returns a [`shelf::TestResult`].
fn trial<F, Fut>(name: &'static str, body: F) -> Trial
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = shelf::TestResult>,
{
    Trial::test(name, move || {
        harness::block_on(async move { body().await.map_err(|e| e as Box<dyn std::error::Error>) })
    })
}

fn main() {
    // RUST_LOG=bramble_cluster=debug shows what the library does during a test.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .init();
    }
    let binary: &'static str = Box::leak(
        shelf::binary()
            .to_string_lossy()
            .into_owned()
            .into_boxed_str(),
    );
    let trials = vec![
        trial(
            "desired_standalone_round_trips",
            desired::standalone_round_trips,
        ),
        trial(
            "desired_three_boards_race_and_converge",
            desired::three_boards_race_and_converge,
        ),
        trial(
            "desired_minority_writes_get_503",
            desired::minority_writes_get_503,
        ),
        trial(
            "engine_starts_reports_and_restarts_after_sigkill",
            engine::starts_reports_and_restarts_after_sigkill,
        ),
        trial(
            "engine_refuses_bad_setups_with_clear_errors",
            engine::refuses_bad_setups_with_clear_errors,
        ),
        trial(
            "engine_sync_interval_only_where_the_server_knows_it",
            engine::sync_interval_only_where_the_server_knows_it,
        ),
        trial(
            "engine_stop_leaves_nothing_running",
            engine::stop_leaves_nothing_running,
        ),
        trial(
            "growth_single_clustered_server_has_no_meta_leader_until_a_peer_joins",
            growth::single_clustered_server_waits_for_a_peer,
        ),
        trial(
            "growth_standalone_streams_are_invisible_after_a_clustered_restart",
            growth::standalone_streams_invisible_after_clustered_restart,
        ),
        trial(
            "growth_1_to_3_to_5_to_3_keeps_data",
            growth::one_three_five_three,
        ),
        trial(
            "kv_cas_race_between_boards_has_one_winner",
            kv::cas_race_has_one_winner,
        ),
        trial("kv_watch_mirrors_converge", kv::watch_mirrors_converge),
        trial(
            "kv_writes_resume_after_stream_leader_sigkill",
            kv::writes_resume_after_leader_sigkill,
        ),
        trial(
            "kv_a_server_that_hands_over_leadership_stops_without_a_gap",
            kv::hand_over_leaves_no_gap,
        ),
        trial(
            "kv_ensure_replicas_grows_and_shrinks_in_place",
            kv::ensure_replicas_in_place,
        ),
        trial(
            "leaf_members_use_the_hub_and_survive_its_power_cut",
            leaf::members_use_the_hub_and_survive_its_power_cut,
        ),
        trial(
            "liveness_killed_board_is_suspect_then_dead",
            liveness::killed_board_suspect_then_dead,
        ),
        trial(
            "liveness_lease_moves_exactly_once_when_holder_dies",
            liveness::lease_moves_once,
        ),
        trial(
            "partition_minority_has_no_quorum_majority_writes_and_heals",
            partition::minority_no_quorum_and_heal,
        ),
        trial(
            "partition_members_that_missed_each_other_connect_later",
            partition::members_that_missed_each_other_connect_later,
        ),
        trial(
            "queue_dedupes_redelivers_and_acks",
            queue::dedupes_redelivers_and_acks,
        ),
    ];
    harness::main(
        &[
            Need::Root,
            Need::Binary(binary),
            Need::Binary("ip"),
            Need::Binary("iptables"),
            Need::Binary("nsenter"),
        ],
        trials,
    )
}
