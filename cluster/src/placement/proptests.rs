//! Property tests of the placer on random boards and functions, with and without a previous
//! plan made for other board states: budgets hold, dead and leaving boards run nothing, a
//! suspect board gets nothing new, constraints, platforms and hardware are respected, no
//! board lends a line to two functions that cannot share it, every function is accounted for
//! once, and placing is deterministic (order of the input too) and idempotent, whatever the
//! previous plan holds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use bramble_hardware::grants::{self, check_conflicts};
use proptest::collection::vec;
use proptest::prelude::*;

use super::tests::{MIB, board};
use super::*;
use crate::membership::BoardState;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

const ARCHES: [(&str, Option<&str>); 4] = [
    ("arm64", Some("linux/arm64")),
    ("arm", Some("linux/arm/v7")),
    ("amd64", Some("linux/amd64")),
    ("arm64", None),
];

fn state() -> impl Strategy<Value = BoardState> {
    prop_oneof![
        6 => Just(BoardState::Alive),
        1 => Just(BoardState::Suspect),
        1 => Just(BoardState::Dead),
    ]
}

/// Boards `b0`..: state, leaving, arch/platform, budget, GPIO lines, zone label.
fn boards() -> impl Strategy<Value = Vec<Board>> {
    vec(
        (
            state(),
            prop::bool::weighted(0.1),
            0..ARCHES.len(),
            prop::option::weighted(0.85, 0u64..=24),
            0u8..4,
            prop::option::of(0u8..2),
        ),
        0..6,
    )
    .prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(|(i, (state, leaving, arch, budget, gpio, zone))| {
                let (arch, platform) = ARCHES[arch];
                let mut b = board(&format!("b{i}"));
                b.state = state;
                b.leaving = leaving;
                b.arch = arch.into();
                b.platform = platform.map(|p| p.parse().unwrap());
                b.memory_budget = budget.map(|n| n * 64 * MIB);
                b.hardware.gpio_lines = [(1, "GPIO17"), (2, "GPIO27")]
                    .iter()
                    .filter(|(bit, _)| gpio & bit != 0)
                    .map(|(_, l)| (*l).to_owned())
                    .collect();
                if let Some(zone) = zone {
                    b.labels.insert("zone".into(), format!("z{zone}"));
                }
                b
            })
            .collect()
    })
}

const CONSTRAINTS: [&str; 7] = [
    "node=b0",
    "node=b1",
    "node!=b2",
    "arch=arm64",
    "arch=arm",
    "zone=z0",
    "zone!=z1",
];
const GRANTS: [&str; 3] = ["GPIO17:in", "GPIO27:out", "GPIO17:in:pull-up"];
const PLATFORMS: [&str; 3] = ["linux/arm64", "linux/arm/v7", "linux/amd64"];

/// Functions `f0`..: replicas, memory, platforms, GPIO grant, constraints.
fn functions() -> impl Strategy<Value = Vec<Function>> {
    vec(
        (
            0u32..=5,
            0u64..=8,
            prop::option::of(vec(0..PLATFORMS.len(), 1..=2)),
            prop::option::weighted(0.3, 0..GRANTS.len()),
            vec(0..CONSTRAINTS.len(), 0..=2),
        ),
        0..8,
    )
    .prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(|(i, (replicas, memory, platforms, gpio, constraints))| {
                let entries: Vec<String> =
                    constraints.iter().map(|c| CONSTRAINTS[*c].into()).collect();
                Function {
                    key: FunctionKey::of("fn", &format!("f{i}")),
                    replicas,
                    memory: memory * 32 * MIB,
                    platforms: platforms
                        .map(|ps| ps.iter().map(|p| PLATFORMS[*p].parse().unwrap()).collect()),
                    hardware: gpio.and_then(|g| {
                        let annotations =
                            BTreeMap::from([("bramble.gpio".to_owned(), GRANTS[g].to_owned())]);
                        grants::parse(&annotations).unwrap()
                    }),
                    constraints: parse_constraints(&entries).unwrap(),
                    prefers: None,
                }
            })
            .collect()
    })
}

/// An input whose previous plan was made for the same functions on boards in other states
/// (or is empty).
fn inputs() -> impl Strategy<Value = PlacementInput> {
    (
        boards(),
        functions(),
        prop::option::of(vec(state(), 6)),
        any::<bool>(),
    )
        .prop_map(|(boards, functions, earlier, scaled)| {
            let previous = match earlier {
                None => Plan::default(),
                Some(states) => {
                    let before: Vec<Board> = boards
                        .iter()
                        .zip(states)
                        .map(|(b, state)| Board {
                            state,
                            leaving: false,
                            ..b.clone()
                        })
                        .collect();
                    let mut earlier_functions = functions.clone();
                    if scaled {
                        for f in &mut earlier_functions {
                            f.replicas = (f.replicas + 2) % 6;
                        }
                    }
                    place(&PlacementInput {
                        boards: before,
                        functions: earlier_functions,
                        previous: Plan::default(),
                    })
                }
            };
            PlacementInput {
                boards,
                functions,
                previous,
            }
        })
}

/// Any plan at all as previous (as KV could hold it): known and unknown boards and functions,
/// any counts, homes anywhere.
fn any_previous() -> impl Strategy<Value = Plan> {
    vec(
        (0u8..10, 0u32..=6, vec((0u8..8, 0u32..=6), 0..4), 0u8..8),
        0..10,
    )
    .prop_map(|entries| {
        let mut functions: Vec<FunctionPlan> = entries
            .into_iter()
            .map(|(f, replicas, boards, home)| FunctionPlan {
                key: FunctionKey::of("fn", &format!("f{f}")),
                replicas,
                boards: boards
                    .into_iter()
                    .map(|(b, n)| (format!("b{b}"), n))
                    .collect(),
                home: format!("b{home}"),
                short: None,
            })
            .collect();
        functions.sort_by(|a, b| a.key.cmp(&b.key));
        functions.dedup_by(|a, b| a.key == b.key);
        Plan {
            functions,
            ..Plan::default()
        }
    })
}

/// Reservations per (board, function): replicas, or 1 for the home of a function at zero.
fn reservations(plan: &Plan) -> BTreeMap<(String, FunctionKey), u32> {
    let mut out = BTreeMap::new();
    for f in &plan.functions {
        if f.replicas == 0 {
            out.insert((f.home.clone(), f.key.clone()), 1);
        } else {
            for (b, n) in &f.boards {
                out.insert((b.clone(), f.key.clone()), *n);
            }
        }
    }
    out
}

fn check(input: &PlacementInput, plan: &Plan) {
    let boards: BTreeMap<&str, &Board> =
        input.boards.iter().map(|b| (b.name.as_str(), b)).collect();
    let functions: BTreeMap<&FunctionKey, &Function> =
        input.functions.iter().map(|f| (&f.key, f)).collect();
    let now = reservations(plan);
    let before = reservations(&input.previous);
    let mut used: BTreeMap<&str, u64> = BTreeMap::new();
    for ((b, key), n) in &now {
        let board = boards[b.as_str()];
        let f = functions[key];
        assert!(*n > 0);
        assert!(board.keeps_work(), "{key} on {b}, which is dead or leaving");
        if !board.takes_new_work() {
            let had = before.get(&(b.clone(), key.clone())).copied().unwrap_or(0);
            assert!(*n <= had, "{key}: {n} on suspect {b}, which had {had}");
        }
        assert!(f.fits_board(board), "{key} on {b}, which does not qualify");
        *used.entry(b.as_str()).or_default() += f.memory * u64::from(*n);
    }
    for (b, used) in used {
        if let Some(budget) = boards[b].memory_budget {
            assert!(used <= budget, "{b}: {used} reserved of {budget}");
        }
    }
    // No board lends hardware to two functions that cannot share it.
    for b in boards.keys() {
        let here: Vec<(String, &grants::Grants)> = now
            .keys()
            .filter(|(board, _)| board == b)
            .filter_map(|(_, key)| Some((key.to_string(), functions[key].hardware.as_ref()?)))
            .collect();
        for (name, g) in &here {
            let others = here.iter().map(|(n, g)| (n.as_str(), *g));
            assert!(check_conflicts(name, g, others).is_ok(), "{b}: {name}");
        }
    }
    // Every function once, in key order; placed ≤ wanted; short says why.
    let mut seen: Vec<&FunctionKey> = plan.functions.iter().map(|f| &f.key).collect();
    assert!(seen.is_sorted());
    let unplaced: Vec<&FunctionKey> = plan.unplaced.iter().map(|f| &f.key).collect();
    let waiting: Vec<&FunctionKey> = plan.waiting.iter().map(|f| &f.key).collect();
    assert!(unplaced.is_sorted() && waiting.is_sorted());
    seen.extend(unplaced);
    seen.extend(waiting);
    seen.sort();
    assert_eq!(seen, functions.keys().copied().collect::<Vec<_>>());
    for f in &plan.functions {
        let wanted = f.replicas.max(1);
        let placed = if f.replicas == 0 { 1 } else { f.placed() };
        assert!(placed <= wanted, "{}", f.key);
        assert_eq!(f.short.is_some(), placed < wanted, "{}", f.key);
        assert!(
            f.replicas == 0 || f.boards.contains_key(&f.home),
            "{}",
            f.key
        );
        if let Some(UnplacedReason::Memory {
            needs,
            most_free: Some((_, free)),
            ..
        }) = &f.short
        {
            assert!(free < needs, "{}: {free} free, needs {needs}", f.key);
        }
    }
    for u in &plan.unplaced {
        if let UnplacedReason::Memory {
            needs,
            most_free: Some((_, free)),
            ..
        } = &u.reason
        {
            assert!(free < needs, "{}: {free} free, needs {needs}", u.key);
        }
    }
    for w in &plan.waiting {
        for b in w.boards.keys() {
            assert!(
                !boards[b.as_str()].takes_new_work(),
                "{} waits for {b}",
                w.key
            );
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn plans_respect_every_rule(input in inputs()) {
        let plan = place(&input);
        check(&input, &plan);
    }

    #[test]
    fn any_previous_plan_gives_a_plan_that_respects_every_rule(
        input in inputs(),
        previous in any_previous(),
    ) {
        let input = PlacementInput { previous, ..input };
        let plan = place(&input);
        check(&input, &plan);
        let again = PlacementInput { previous: plan.clone(), ..input };
        prop_assert_eq!(&place(&again), &plan);
    }

    #[test]
    fn placing_is_deterministic_and_idempotent(input in inputs(), seed in any::<u64>()) {
        let plan = place(&input);
        prop_assert_eq!(&place(&input), &plan);
        // The order of boards and functions does not matter.
        let mut shuffled = input.clone();
        let n = shuffled.boards.len().max(1);
        shuffled.boards.rotate_left(usize::try_from(seed).unwrap_or(0) % n);
        shuffled.boards.reverse();
        shuffled.functions.reverse();
        prop_assert_eq!(&place(&shuffled), &plan);
        // Placing again with the plan as previous changes nothing.
        let again = PlacementInput { previous: plan.clone(), ..input };
        prop_assert_eq!(&place(&again), &plan);
        // And the plan survives its trip through KV.
        let json = serde_json::to_vec(&plan).unwrap();
        prop_assert_eq!(&serde_json::from_slice::<Plan>(&json).unwrap(), &plan);
    }

    #[test]
    fn what_is_admitted_is_placed(input in inputs(), extra in functions()) {
        let current = PlacementInput { previous: place(&input), ..input };
        let Some(candidate) = extra.into_iter().next() else { return Ok(()) };
        let candidate = Function {
            key: FunctionKey::of("fn", "new"),
            ..candidate
        };
        let admitted = admit(&current, &candidate);
        let mut with = current;
        with.functions.push(candidate.clone());
        let plan = place(&with);
        match admitted {
            Ok(Admitted::Placed(entry)) => {
                prop_assert_eq!(plan.function(&candidate.key), Some(&entry));
                let fine = entry.short.is_none()
                    || matches!(entry.short, Some(UnplacedReason::Waiting { .. }));
                prop_assert!(fine, "admitted short: {:?}", entry.short);
            }
            Ok(Admitted::Waiting(w)) => {
                prop_assert_eq!(plan.find(&candidate.key), Some(Placement::Waiting(&w.boards)));
            }
            Err(refused) => {
                let placed_fully = plan
                    .function(&candidate.key)
                    .is_some_and(|f| f.short.is_none());
                prop_assert!(!placed_fully, "refused ({refused}) but placed");
            }
        }
    }
}
