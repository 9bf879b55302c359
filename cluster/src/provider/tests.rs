//! What the cluster's API shows from a desired state, a plan and the boards' records.

use std::collections::BTreeMap;

use bramble_gateway::types::{FunctionState, PlacedState};

use super::status::{boards, function_status};
use crate::fixtures::{board, key, placed, record, view};
use crate::membership::BoardState;
use crate::placement::{Plan, Unplaced, UnplacedReason, Waiting};

#[test]
fn a_placed_function_sums_the_ready_replicas_of_the_boards_that_are_not_dead() {
    let plan = Plan {
        functions: vec![placed("f", &[("b0", 1), ("b1", 1)], "b0")],
        ..Plan::default()
    };
    let boards = view(vec![
        board("b0", BoardState::Alive, &[("f.openfaas-fn", 1)]),
        board("b1", BoardState::Alive, &[("f.openfaas-fn", 1)]),
        board("b2", BoardState::Dead, &[("f.openfaas-fn", 1)]),
    ]);
    let status = function_status(&key("f"), &record(2, &[]), Some(&plan), &boards, None);
    assert_eq!((status.replicas, status.available_replicas), (2, 2));
    let bramble = status.bramble.unwrap();
    assert_eq!(bramble.state, FunctionState::Ready);
    let on: Vec<(String, u64, PlacedState)> = bramble
        .replicas
        .iter()
        .map(|p| (p.board.clone(), p.replicas, p.state))
        .collect();
    assert_eq!(
        on,
        [
            ("b0".to_owned(), 1, PlacedState::Placed),
            ("b1".to_owned(), 1, PlacedState::Placed)
        ]
    );
    // One of them not ready yet: the state is this board's (starting by default).
    let boards = view(vec![
        board("b0", BoardState::Alive, &[("f.openfaas-fn", 1)]),
        board("b1", BoardState::Alive, &[]),
    ]);
    let status = function_status(&key("f"), &record(2, &[]), Some(&plan), &boards, None);
    assert_eq!(status.available_replicas, 1);
    assert_eq!(status.bramble.unwrap().state, FunctionState::Starting);
}

#[test]
fn unplaced_waiting_scaled_to_zero_and_not_yet_placed_functions_say_so() {
    let boards = view(vec![board("b0", BoardState::Alive, &[])]);
    let unplaced = Plan {
        unplaced: vec![Unplaced {
            key: key("f"),
            reason: UnplacedReason::NoBoards,
        }],
        ..Plan::default()
    };
    let status = function_status(&key("f"), &record(1, &[]), Some(&unplaced), &boards, None);
    let bramble = status.bramble.unwrap();
    assert_eq!(bramble.state, FunctionState::Unplaced);
    assert!(
        bramble
            .message
            .as_deref()
            .unwrap_or_default()
            .starts_with("cannot be placed: "),
        "{:?}",
        bramble.message
    );
    let waiting = Plan {
        waiting: vec![Waiting {
            key: key("f"),
            boards: BTreeMap::from([("b7".to_owned(), BoardState::Dead)]),
        }],
        ..Plan::default()
    };
    let status = function_status(&key("f"), &record(1, &[]), Some(&waiting), &boards, None);
    let bramble = status.bramble.unwrap();
    assert!(bramble.message.unwrap().contains("waiting for b7"));
    assert_eq!(bramble.replicas[0].state, PlacedState::Waiting);
    let home = Plan {
        functions: vec![placed("f", &[], "b0")],
        ..Plan::default()
    };
    let status = function_status(&key("f"), &record(0, &[]), Some(&home), &boards, None);
    let bramble = status.bramble.unwrap();
    assert_eq!(bramble.state, FunctionState::ScaledToZero);
    assert_eq!(bramble.replicas[0].state, PlacedState::Home);
    let status = function_status(&key("f"), &record(1, &[]), None, &boards, None);
    assert_eq!(
        status.bramble.unwrap().message.as_deref(),
        Some("not placed yet")
    );
}

#[test]
fn the_dashboard_sees_every_board_and_which_is_this_one() {
    // `f` runs on b0; `g` is placed on b0 and b1 (not ready yet); `h` is only b1's home.
    let plan = Plan {
        functions: vec![
            placed("g", &[("b0", 1), ("b1", 1)], "b0"),
            placed("h", &[], "b1"),
        ],
        ..Plan::default()
    };
    let boards = boards(
        &view(vec![
            board("b0", BoardState::Alive, &[("f.openfaas-fn", 1)]),
            board("b1", BoardState::Suspect, &[]),
        ]),
        Some(&plan),
        "b1",
    );
    assert_eq!(boards.len(), 2);
    assert!(!boards[0].this_board && boards[1].this_board);
    assert_eq!(boards[0].functions, ["f.openfaas-fn", "g.openfaas-fn"]);
    assert_eq!(boards[1].functions, ["g.openfaas-fn"]);
    assert_eq!(boards[0].last_seen_ms, Some(5000));
    assert_eq!(
        (boards[0].memory_used, boards[0].memory_budget),
        (64 << 20, 512 << 20)
    );
}
