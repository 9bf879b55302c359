//! Unit tests of placement: each rule and each bad input.

use std::collections::BTreeMap;

use bramble_gateway::types::{FunctionDeployment, FunctionResources};
use bramble_hardware::grants;

use super::*;
use crate::membership::{BoardInfo, BoardState, HardwareSummary, MemoryBudget};

pub(super) const MIB: u64 = 1 << 20;

pub(super) fn board(name: &str) -> Board {
    Board {
        name: name.into(),
        state: BoardState::Alive,
        leaving: false,
        arch: "arm64".into(),
        platform: Some("linux/arm64".parse().unwrap()),
        memory_budget: Some(1024 * MIB),
        hardware: HardwareSummary::default(),
        labels: BTreeMap::new(),
        outside: std::collections::BTreeSet::new(),
    }
}

fn armv7(name: &str) -> Board {
    Board {
        arch: "arm".into(),
        platform: Some("linux/arm/v7".parse().unwrap()),
        ..board(name)
    }
}

fn with_budget(name: &str, mib: u64) -> Board {
    Board {
        memory_budget: Some(mib * MIB),
        ..board(name)
    }
}

fn with_gpio(name: &str, lines: &[&str]) -> Board {
    let mut b = board(name);
    b.hardware.gpio_lines = lines.iter().map(|l| (*l).to_owned()).collect();
    b
}

fn in_state(mut b: Board, state: BoardState) -> Board {
    b.state = state;
    b
}

fn key(name: &str) -> FunctionKey {
    FunctionKey::of("openfaas-fn", name)
}

fn func(name: &str, replicas: u32, mib: u64) -> Function {
    Function {
        key: key(name),
        replicas,
        memory: mib * MIB,
        platforms: None,
        hardware: None,
        constraints: Vec::new(),
        prefers: None,
    }
}

fn constrained(mut f: Function, constraints: &[&str]) -> Function {
    let entries: Vec<String> = constraints.iter().map(|c| (*c).to_owned()).collect();
    f.constraints = parse_constraints(&entries).unwrap();
    f
}

fn granted(mut f: Function, key: &str, value: &str) -> Function {
    let annotations = BTreeMap::from([(key.to_owned(), value.to_owned())]);
    f.hardware = grants::parse(&annotations).unwrap();
    f
}

fn input(boards: Vec<Board>, functions: Vec<Function>) -> PlacementInput {
    PlacementInput {
        boards,
        functions,
        previous: Plan::default(),
    }
}

/// Places, checks the plan is stable when placed again, and returns it.
fn placed(input: &PlacementInput) -> Plan {
    let plan = place(input);
    let again = place(&PlacementInput {
        previous: plan.clone(),
        ..input.clone()
    });
    assert_eq!(again, plan, "placing again changed the plan");
    plan
}

fn boards_of(plan: &Plan, name: &str) -> BTreeMap<String, u32> {
    plan.function(&key(name))
        .unwrap_or_else(|| panic!("{name} is not placed: {plan:#?}"))
        .boards
        .clone()
}

fn counts(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
    pairs.iter().map(|(b, n)| ((*b).to_owned(), *n)).collect()
}

fn reason_of(plan: &Plan, name: &str) -> UnplacedReason {
    match plan.find(&key(name)) {
        Some(Placement::Unplaced(reason)) => reason.clone(),
        other => panic!("{name} is not unplaced: {other:?}"),
    }
}

#[test]
fn constraints_parse_in_every_form() {
    let parse = |s: &str| s.parse::<Constraint>().unwrap().to_string();
    for (entry, normal) in [
        ("node=pi1", "node=pi1"),
        ("node==pi1", "node=pi1"),
        (" node == pi1 ", "node=pi1"),
        ("kubernetes.io/hostname=pi1", "node=pi1"),
        ("node.hostname==pi1", "node=pi1"),
        ("node!=pi1", "node!=pi1"),
        ("node != pi1", "node!=pi1"),
        ("arch=arm64", "arch=arm64"),
        ("arch=aarch64", "arch=arm64"),
        ("kubernetes.io/arch=armhf", "arch=arm"),
        ("beta.kubernetes.io/arch=armv7", "arch=arm"),
        ("node.platform.arch==x86_64", "arch=amd64"),
        ("arch=AMD64", "arch=amd64"),
        ("zone=garage", "zone=garage"),
        ("node.labels.zone==garage", "zone=garage"),
        (
            "topology.kubernetes.io/zone!=attic",
            "topology.kubernetes.io/zone!=attic",
        ),
    ] {
        assert_eq!(parse(entry), normal, "{entry}");
    }
    assert_eq!(
        parse_constraints(&["node=pi1".into(), "zone=garage".into()])
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn constraints_that_parse_to_nothing_are_errors_naming_the_entry() {
    for (entry, says) in [
        ("", "it is empty"),
        ("   ", "it is empty"),
        ("garage", "no = or !="),
        ("=pi1", "the key is empty"),
        ("node=", "the value is empty"),
        ("node==", "the value is empty"),
        ("!=x", "the key is empty"),
        ("node=Pi_1", "lowercase"),
        ("arch=sparc", "not an architecture"),
        ("zone=a b", "not a label value"),
        ("zone=a=b", "not a label value"),
        ("zo ne=a", "not a label key"),
        ("node=pi1!=x", "not a label key"),
    ] {
        let e = parse_constraints(&["node=pi1".into(), entry.into()]).unwrap_err();
        assert_eq!(e.entry, entry);
        let message = e.to_string();
        assert!(
            message.starts_with(&format!("constraint {entry:?}: ")),
            "{message}"
        );
        assert!(message.contains(says), "{entry:?}: {message}");
    }
}

#[test]
fn constraints_choose_boards_by_name_arch_and_label() {
    let mut garage = board("pi3");
    garage.labels.insert("zone".into(), "garage".into());
    let boards = vec![board("pi1"), armv7("pi2"), garage];
    let functions = vec![
        constrained(func("by-name", 3, 64), &["kubernetes.io/hostname=pi2"]),
        constrained(func("by-arch", 3, 64), &["arch=armhf"]),
        constrained(func("by-label", 1, 64), &["zone=garage"]),
        constrained(func("not-label", 2, 64), &["zone!=garage"]),
        constrained(func("not-arm", 2, 64), &["arch!=arm", "node!=pi3"]),
    ];
    let plan = placed(&input(boards, functions));
    assert_eq!(boards_of(&plan, "by-name"), counts(&[("pi2", 3)]));
    assert_eq!(boards_of(&plan, "by-arch"), counts(&[("pi2", 3)]));
    assert_eq!(boards_of(&plan, "by-label"), counts(&[("pi3", 1)]));
    assert_eq!(
        boards_of(&plan, "not-label"),
        counts(&[("pi1", 1), ("pi2", 1)])
    );
    assert_eq!(boards_of(&plan, "not-arm"), counts(&[("pi1", 2)]));
}

#[test]
fn a_constraint_matching_no_board_leaves_the_function_unplaced_saying_which() {
    let mut garage = board("pi2");
    garage.labels.insert("zone".into(), "garage".into());
    let functions = vec![
        constrained(func("attic", 1, 64), &["zone=attic"]),
        constrained(func("ghost", 1, 64), &["node=pi9"]),
        constrained(func("both", 1, 64), &["node=pi1", "zone=garage"]),
    ];
    let plan = placed(&input(vec![board("pi1"), garage], functions));
    assert!(plan.functions.is_empty(), "{plan:#?}");
    let attic = reason_of(&plan, "attic");
    assert_eq!(
        attic.to_string(),
        "constraint zone=attic matches no board of the cluster"
    );
    assert_eq!(
        reason_of(&plan, "ghost").to_string(),
        "constraint node=pi9 matches no board of the cluster"
    );
    assert_eq!(
        reason_of(&plan, "both").to_string(),
        "no board satisfies all of the constraints node=pi1, zone=garage"
    );
}

#[test]
fn a_deployment_that_fits_no_board_is_unplaced_with_the_numbers() {
    let boards = vec![with_budget("b1", 100), with_budget("b2", 120)];
    let plan = placed(&input(boards.clone(), vec![func("big", 1, 256)]));
    let reason = reason_of(&plan, "big");
    assert_eq!(
        reason.to_string(),
        "needs 256 MiB; the most free on a qualifying board is 120 MiB (b2)"
    );
    assert!(matches!(reason, UnplacedReason::Memory { needs, .. } if needs == 256 * MIB));
    // Three replicas of 70 MiB: two fit (one per board), the third does not.
    let plan = placed(&input(boards, vec![func("three", 3, 70)]));
    let entry = plan.function(&key("three")).unwrap();
    assert_eq!(entry.boards, counts(&[("b1", 1), ("b2", 1)]));
    assert_eq!(
        entry.short.as_ref().unwrap().to_string(),
        "2 of 3 replicas placed; one more needs 70 MiB; the most free on a qualifying board is 50 MiB (b2)"
    );
    // No budget: anything fits.
    let unlimited = Board {
        memory_budget: None,
        ..board("b3")
    };
    let plan = placed(&input(vec![unlimited], vec![func("big", 4, 4096)]));
    assert_eq!(boards_of(&plan, "big"), counts(&[("b3", 4)]));
}

#[test]
fn an_image_never_goes_to_a_board_whose_platform_it_lacks() {
    let arm64_only = |name: &str, replicas| Function {
        platforms: Some(vec!["linux/arm64".parse().unwrap()]),
        ..func(name, replicas, 64)
    };
    let plan = placed(&input(vec![armv7("zero")], vec![arm64_only("a", 1)]));
    assert_eq!(
        reason_of(&plan, "a").to_string(),
        "the image is built for linux/arm64 and no board it may go to runs that (zero: linux/arm/v7)"
    );
    // With an arm64 board beside it, every replica goes there, even though it is fuller.
    let boards = vec![armv7("zero"), with_budget("pi5", 512)];
    let plan = placed(&input(boards.clone(), vec![arm64_only("a", 3)]));
    assert_eq!(boards_of(&plan, "a"), counts(&[("pi5", 3)]));
    // An arm/v7 image runs on both (an arm64 board runs 32-bit arm images).
    let v7 = Function {
        platforms: Some(vec!["linux/arm/v7".parse().unwrap()]),
        ..func("v7", 2, 64)
    };
    let plan = placed(&input(boards, vec![v7]));
    assert_eq!(boards_of(&plan, "v7"), counts(&[("pi5", 1), ("zero", 1)]));
    // A board of unknown platform takes only images of unknown platform.
    let unknown = Board {
        platform: None,
        ..board("odd")
    };
    let plan = placed(&input(
        vec![unknown],
        vec![arm64_only("a", 1), func("any", 1, 64)],
    ));
    assert_eq!(boards_of(&plan, "any"), counts(&[("odd", 1)]));
    assert!(reason_of(&plan, "a").to_string().contains("odd: unknown"));
}

#[test]
fn hardware_goes_only_to_boards_that_have_it() {
    let button = || granted(func("button", 2, 32), "bramble.gpio", "GPIO17:in:pull-up");
    // One board has GPIO17: both replicas there.
    let boards = vec![board("pi1"), with_gpio("pi2", &["GPIO17", "GPIO27"])];
    let plan = placed(&input(boards, vec![button()]));
    assert_eq!(boards_of(&plan, "button"), counts(&[("pi2", 2)]));
    // Two boards have it: both are candidates, replicas spread.
    let boards = vec![with_gpio("pi1", &["GPIO17"]), with_gpio("pi2", &["GPIO17"])];
    let plan = placed(&input(boards.clone(), vec![button()]));
    assert_eq!(
        boards_of(&plan, "button"),
        counts(&[("pi1", 1), ("pi2", 1)])
    );
    // Unless a constraint names one.
    let plan = placed(&input(boards, vec![constrained(button(), &["node=pi2"])]));
    assert_eq!(boards_of(&plan, "button"), counts(&[("pi2", 2)]));
    // Nobody has it: the reason says what each board lacks.
    let mut i2c = with_gpio("pi2", &["GPIO17"]);
    i2c.hardware.i2c_buses = vec![1];
    let boards = vec![board("pi1"), i2c];
    let annotations = BTreeMap::from([
        ("bramble.gpio".to_owned(), "GPIO17:in".to_owned()),
        ("bramble.i2c".to_owned(), "3:0x76".to_owned()),
    ]);
    let both = Function {
        hardware: grants::parse(&annotations).unwrap(),
        ..func("button", 1, 32)
    };
    let plan = placed(&input(boards, vec![both]));
    assert_eq!(
        reason_of(&plan, "button").to_string(),
        "no board has all the hardware it is granted (pi1 has no GPIO17, pi2 has no I2C bus 3)"
    );
    // I2C buses, 1-Wire sensors (`w1:ID` against the board's ID), SPI, PWM.
    let mut full = board("pi3");
    full.hardware = HardwareSummary {
        i2c_buses: vec![1],
        one_wire: vec!["28-0316a27966ff".into()],
        spi: vec!["0.0".into()],
        pwm: vec![0],
        ..HardwareSummary::default()
    };
    let boards = vec![board("pi1"), full];
    let functions = vec![
        granted(func("i2c", 1, 8), "bramble.i2c", "1:0x76"),
        granted(func("w1", 1, 8), "bramble.sensors", "w1:28-0316a27966ff"),
        granted(func("spi", 1, 8), "bramble.spi", "0.0"),
        granted(func("pwm", 1, 8), "bramble.pwm", "0"),
        granted(func("pwm1", 1, 8), "bramble.pwm", "1"),
    ];
    let plan = placed(&input(boards, functions));
    for name in ["i2c", "w1", "spi", "pwm"] {
        assert_eq!(boards_of(&plan, name), counts(&[("pi3", 1)]), "{name}");
    }
    assert!(
        reason_of(&plan, "pwm1")
            .to_string()
            .contains("pi3 has no PWM channel 1")
    );
}

#[test]
fn a_board_never_lends_a_line_to_two_functions_that_cannot_share_it() {
    let led = |name: &str| granted(func(name, 1, 8), "bramble.gpio", "GPIO27:out");
    let boards = vec![with_gpio("pi1", &["GPIO27"]), with_gpio("pi2", &["GPIO27"])];
    let plan = placed(&input(boards, vec![led("a"), led("b"), led("c")]));
    assert_eq!(boards_of(&plan, "a"), counts(&[("pi1", 1)]));
    assert_eq!(boards_of(&plan, "b"), counts(&[("pi2", 1)]));
    let reason = reason_of(&plan, "c");
    assert!(matches!(reason, UnplacedReason::HardwareTaken { .. }));
    let message = reason.to_string();
    assert!(
        message.contains("pi1: GPIO27 is already granted to function \"a.openfaas-fn\""),
        "{message}"
    );
}

#[test]
fn a_hardware_pinned_function_whose_board_is_dead_waits_for_it() {
    let button = granted(func("button", 1, 32), "bramble.gpio", "GPIO17:in");
    let boards = vec![with_gpio("pi1", &["GPIO17"]), board("pi2")];
    let before = placed(&input(boards.clone(), vec![button.clone()]));
    assert_eq!(boards_of(&before, "button"), counts(&[("pi1", 1)]));
    let dead = vec![
        in_state(with_gpio("pi1", &["GPIO17"]), BoardState::Dead),
        board("pi2"),
    ];
    let plan = placed(&PlacementInput {
        boards: dead,
        functions: vec![button.clone()],
        previous: before,
    });
    assert!(
        plan.functions.is_empty() && plan.unplaced.is_empty(),
        "{plan:#?}"
    );
    let Some(Placement::Waiting(waiting)) = plan.find(&key("button")) else {
        panic!("not waiting: {plan:#?}");
    };
    assert_eq!(
        waiting,
        &BTreeMap::from([("pi1".to_owned(), BoardState::Dead)])
    );
    assert_eq!(
        plan.waiting[0].to_string(),
        "button.openfaas-fn is waiting for pi1 (dead): no other board it may go to is up"
    );
    assert!(plan.for_board("pi2").is_empty());
    // It comes back: the function is placed there again.
    let plan = placed(&PlacementInput {
        previous: plan,
        ..input(boards, vec![button])
    });
    assert_eq!(boards_of(&plan, "button"), counts(&[("pi1", 1)]));
}

#[test]
fn replicas_spread_over_boards_first() {
    let boards = vec![board("b1"), board("b2"), board("b3")];
    let plan = placed(&input(boards.clone(), vec![func("three", 3, 64)]));
    assert_eq!(
        boards_of(&plan, "three"),
        counts(&[("b1", 1), ("b2", 1), ("b3", 1)])
    );
    let plan = placed(&input(boards, vec![func("five", 5, 64)]));
    assert_eq!(
        boards_of(&plan, "five"),
        counts(&[("b1", 2), ("b2", 2), ("b3", 1)])
    );
}

#[test]
fn the_least_loaded_board_is_chosen_first() {
    let boards = vec![with_budget("b1", 512), with_budget("b2", 1024)];
    let plan = placed(&input(
        boards,
        vec![func("a", 1, 64), func("b", 1, 64), func("c", 3, 64)],
    ));
    // a: b2 (most free); b: b2 still (960 > 512); c: one each, then b2 (896 - 64 > 448).
    assert_eq!(boards_of(&plan, "a"), counts(&[("b2", 1)]));
    assert_eq!(boards_of(&plan, "b"), counts(&[("b2", 1)]));
    assert_eq!(boards_of(&plan, "c"), counts(&[("b1", 1), ("b2", 2)]));
}

#[test]
fn without_budgets_the_board_with_the_least_reserved_is_chosen() {
    let unlimited = |name: &str| Board {
        memory_budget: None,
        ..board(name)
    };
    let boards = vec![unlimited("b1"), unlimited("b2"), unlimited("b3")];
    let plan = placed(&input(
        boards.clone(),
        vec![func("a", 1, 128), func("b", 1, 64), func("c", 1, 64)],
    ));
    assert_eq!(boards_of(&plan, "a"), counts(&[("b1", 1)]));
    assert_eq!(boards_of(&plan, "b"), counts(&[("b2", 1)]));
    assert_eq!(boards_of(&plan, "c"), counts(&[("b3", 1)]));
    // Functions without a memory limit: the board with the fewest replicas.
    let plan = placed(&input(
        boards,
        vec![func("x", 2, 0), func("y", 1, 0), func("z", 0, 0)],
    ));
    assert_eq!(boards_of(&plan, "x"), counts(&[("b1", 1), ("b2", 1)]));
    // First replicas and homes first: x on b1, y on b2, z's home b3; then x's second.
    assert_eq!(boards_of(&plan, "y"), counts(&[("b2", 1)]));
    assert_eq!(plan.function(&key("z")).unwrap().home, "b3");
}

#[test]
fn every_function_gets_its_first_replica_before_any_its_second() {
    let plan = placed(&input(
        vec![with_budget("b1", 256)],
        vec![func("a", 4, 64), func("b", 1, 64)],
    ));
    assert_eq!(boards_of(&plan, "a"), counts(&[("b1", 3)]));
    assert_eq!(boards_of(&plan, "b"), counts(&[("b1", 1)]));
    assert!(plan.function(&key("a")).unwrap().short.is_some());
}

#[test]
fn a_board_that_joins_gets_only_new_work() {
    let functions = vec![func("a", 2, 64), func("b", 1, 64)];
    let before = placed(&input(vec![board("b1"), board("b2")], functions.clone()));
    let joined = vec![board("b1"), board("b2"), board("b3")];
    let mut more = functions.clone();
    more.push(func("c", 1, 64));
    let plan = placed(&PlacementInput {
        boards: joined,
        functions: more,
        previous: before.clone(),
    });
    for name in ["a", "b"] {
        assert_eq!(boards_of(&plan, name), boards_of(&before, name), "{name}");
    }
    assert_eq!(boards_of(&plan, "c"), counts(&[("b3", 1)]));
    // Scaling up after the join spreads the new replicas to the boards without one.
    let mut scaled = functions;
    scaled[0].replicas = 3;
    let plan = placed(&PlacementInput {
        boards: vec![board("b1"), board("b2"), board("b3")],
        functions: scaled,
        previous: before,
    });
    assert_eq!(
        boards_of(&plan, "a"),
        counts(&[("b1", 1), ("b2", 1), ("b3", 1)])
    );
}

#[test]
fn a_dead_boards_replicas_are_moved_and_a_suspect_board_keeps_its_own() {
    let boards = vec![board("b1"), board("b2"), board("b3")];
    let before = placed(&input(
        boards,
        vec![func("a", 2, 64), func("z", 0, 64), func("y", 1, 64)],
    ));
    assert_eq!(boards_of(&before, "a"), counts(&[("b1", 1), ("b2", 1)]));
    let z_home = before.function(&key("z")).unwrap().home.clone();
    // b2 dies, b3 is suspect: a's replica on b2 moves to b1 (b3 takes nothing new).
    let y_home = before.function(&key("y")).unwrap().home.clone();
    let boards = vec![
        board("b1"),
        in_state(board("b2"), BoardState::Dead),
        in_state(board("b3"), BoardState::Suspect),
    ];
    let functions = vec![func("a", 2, 64), func("z", 0, 64), func("y", 1, 64)];
    let plan = placed(&PlacementInput {
        boards,
        functions,
        previous: before,
    });
    assert_eq!(boards_of(&plan, "a"), counts(&[("b1", 2)]));
    assert!(plan.for_board("b2").is_empty());
    for (name, home) in [("z", z_home), ("y", y_home)] {
        let entry = plan.function(&key(name)).unwrap();
        if home == "b2" {
            assert_eq!(entry.home, "b1", "{name}");
        } else {
            assert_eq!(entry.home, home, "{name} kept its home");
        }
    }
}

#[test]
fn a_leaving_board_is_emptied() {
    let boards = vec![board("b1"), board("b2")];
    let functions = vec![func("a", 2, 64), func("z", 0, 64), func("y", 0, 64)];
    let before = placed(&input(boards, functions.clone()));
    assert!(!before.for_board("b2").is_empty(), "{before:#?}");
    let mut leaving = board("b2");
    leaving.leaving = true;
    let plan = placed(&PlacementInput {
        boards: vec![board("b1"), leaving],
        functions,
        previous: before,
    });
    assert!(plan.for_board("b2").is_empty(), "{plan:#?}");
    assert_eq!(boards_of(&plan, "a"), counts(&[("b1", 2)]));
    assert_eq!(plan.function(&key("z")).unwrap().home, "b1");
    assert_eq!(plan.function(&key("y")).unwrap().home, "b1");
    // A function that may only go to the leaving board is unplaced, saying so.
    let mut leaving = board("b2");
    leaving.leaving = true;
    let plan = placed(&input(
        vec![board("b1"), leaving],
        vec![constrained(func("pinned", 1, 64), &["node=b2"])],
    ));
    assert_eq!(
        reason_of(&plan, "pinned").to_string(),
        "the only boards it may go to are leaving the cluster (b2)"
    );
}

#[test]
fn a_function_scaled_to_zero_keeps_a_home_with_one_replica_reserved() {
    let boards = vec![with_budget("b1", 300)];
    let plan = placed(&input(
        boards,
        vec![func("idle", 0, 256), func("other", 1, 100)],
    ));
    let idle = plan.function(&key("idle")).unwrap();
    assert!(idle.boards.is_empty());
    assert_eq!(idle.home, "b1");
    assert_eq!(
        plan.for_board("b1"),
        vec![BoardWork {
            key: key("idle"),
            replicas: 0,
            home: true
        }]
    );
    assert_eq!(
        reason_of(&plan, "other").to_string(),
        "needs 100 MiB; the most free on a qualifying board is 44 MiB (b1)"
    );
    // Scaled up from zero, its home keeps the first replica; scaled down, the home stays.
    let boards = vec![board("b1"), board("b2"), board("b3")];
    let at_zero = placed(&input(boards.clone(), vec![func("f", 0, 64)]));
    let home = at_zero.function(&key("f")).unwrap().home.clone();
    let up = placed(&PlacementInput {
        previous: at_zero,
        ..input(boards.clone(), vec![func("f", 2, 64)])
    });
    let entry = up.function(&key("f")).unwrap();
    assert_eq!(entry.home, home);
    assert_eq!(entry.boards.get(&home), Some(&1));
    let down = placed(&PlacementInput {
        previous: up,
        ..input(boards, vec![func("f", 0, 64)])
    });
    let entry = down.function(&key("f")).unwrap();
    assert_eq!(
        (entry.home.as_str(), entry.boards.len()),
        (home.as_str(), 0)
    );
}

#[test]
fn scaling_down_takes_replicas_from_the_fullest_boards_first() {
    let boards = vec![board("b1"), board("b2"), board("b3")];
    let five = placed(&input(boards.clone(), vec![func("f", 5, 64)]));
    assert_eq!(
        boards_of(&five, "f"),
        counts(&[("b1", 2), ("b2", 2), ("b3", 1)])
    );
    let three = placed(&PlacementInput {
        previous: five,
        ..input(boards, vec![func("f", 3, 64)])
    });
    assert_eq!(
        boards_of(&three, "f"),
        counts(&[("b1", 1), ("b2", 1), ("b3", 1)])
    );
}

#[test]
fn a_changed_function_moves_when_its_boards_no_longer_qualify() {
    let boards = vec![board("b1"), board("b2")];
    let before = placed(&input(boards.clone(), vec![func("f", 1, 64)]));
    assert_eq!(boards_of(&before, "f"), counts(&[("b1", 1)]));
    let plan = placed(&PlacementInput {
        previous: before,
        ..input(boards, vec![constrained(func("f", 1, 64), &["node=b2"])])
    });
    assert_eq!(boards_of(&plan, "f"), counts(&[("b2", 1)]));
}

#[test]
fn a_previous_plan_with_absurd_numbers_is_read_safely() {
    let previous = Plan {
        functions: vec![FunctionPlan {
            key: key("f"),
            replicas: u32::MAX,
            boards: counts(&[("b1", u32::MAX), ("b2", u32::MAX), ("gone", 7)]),
            home: "nowhere".into(),
            short: None,
        }],
        ..Plan::default()
    };
    assert_eq!(previous.functions[0].placed(), u32::MAX);
    let plan = placed(&PlacementInput {
        previous,
        ..input(vec![board("b1"), board("b2")], vec![func("f", 3, 64)])
    });
    assert_eq!(boards_of(&plan, "f"), counts(&[("b1", 2), ("b2", 1)]));
    assert_eq!(plan.function(&key("f")).unwrap().home, "b1");
}

#[test]
fn without_boards_nothing_is_placed() {
    let plan = placed(&input(Vec::new(), vec![func("f", 1, 64)]));
    assert_eq!(reason_of(&plan, "f"), UnplacedReason::NoBoards);
    assert_eq!(
        UnplacedReason::NoBoards.to_string(),
        "the cluster has no boards yet"
    );
}

#[test]
fn admission_refuses_what_fits_nowhere_with_the_numbers() {
    let boards = vec![with_budget("b1", 100), with_budget("b2", 120)];
    let current = input(boards, vec![func("small", 1, 50)]);
    let current = PlacementInput {
        previous: place(&current),
        ..current
    };
    let e = admit(&current, &func("big", 1, 256)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "big.openfaas-fn cannot be placed: needs 256 MiB; the most free on a qualifying board is 100 MiB (b1); nothing was changed"
    );
    let e = admit(&current, &constrained(func("c", 1, 8), &["zone=attic"])).unwrap_err();
    assert!(matches!(
        e.reason,
        UnplacedReason::ConstraintMatchesNoBoard { .. }
    ));
    // What fits is admitted, with the entry the placer would make.
    let Ok(Admitted::Placed(entry)) = admit(&current, &func("ok", 1, 100)) else {
        panic!("not admitted");
    };
    assert_eq!(entry.boards, counts(&[("b1", 1)]));
    // A scale-up that does not fit entirely is refused ...
    let e = admit(&current, &func("small", 5, 50)).unwrap_err();
    assert!(
        e.to_string()
            .contains("4 of 5 replicas placed; one more needs 50 MiB"),
        "{e}"
    );
    // ... and scaling within room is admitted.
    let Ok(Admitted::Placed(entry)) = admit(&current, &func("small", 2, 50)) else {
        panic!("not admitted");
    };
    assert_eq!(entry.placed(), 2);
}

#[test]
fn admission_accepts_a_change_that_loses_nothing_and_a_function_that_waits() {
    // f had 2 replicas; a board died, it is short of one: changing it (same replicas) is
    // admitted, as it loses nothing it has.
    let boards = vec![with_budget("b1", 100), with_budget("b2", 100)];
    let before = place(&input(boards, vec![func("f", 2, 60)]));
    let degraded = PlacementInput {
        boards: vec![
            with_budget("b1", 100),
            in_state(with_budget("b2", 100), BoardState::Dead),
        ],
        functions: vec![func("f", 2, 60)],
        previous: before,
    };
    let degraded = PlacementInput {
        previous: place(&degraded),
        ..degraded
    };
    assert_eq!(degraded.previous.function(&key("f")).unwrap().placed(), 1);
    assert!(matches!(
        admit(&degraded, &func("f", 2, 60)),
        Ok(Admitted::Placed(_))
    ));
    // Asking for more memory per replica than any board has is refused.
    assert!(admit(&degraded, &func("f", 2, 200)).is_err());
    // A function pinned to the dead board waits: admitted, saying so.
    let pinned = constrained(func("p", 1, 10), &["node=b2"]);
    let Ok(Admitted::Waiting(waiting)) = admit(&degraded, &pinned) else {
        panic!("not waiting");
    };
    assert_eq!(waiting.boards.keys().collect::<Vec<_>>(), ["b2"]);
}

#[test]
fn the_plan_answers_per_board_and_per_function_and_round_trips_as_json() {
    let boards = vec![with_budget("b1", 100), board("b2")];
    let functions = vec![
        func("a", 3, 10),
        func("z", 0, 10),
        func("huge", 1, 4096),
        constrained(func("gone", 1, 1), &["node=b9"]),
    ];
    let mut plan = place(&input(boards, functions));
    plan.waiting.push(Waiting {
        key: key("w"),
        boards: BTreeMap::from([("b3".to_owned(), BoardState::Dead)]),
    });
    let work = plan.for_board("b1");
    assert!(work.iter().any(|w| w.key == key("a") && w.replicas >= 1));
    assert!(matches!(plan.find(&key("a")), Some(Placement::Placed(_))));
    assert!(matches!(
        plan.find(&key("huge")),
        Some(Placement::Unplaced(UnplacedReason::Memory { .. }))
    ));
    assert!(matches!(plan.find(&key("w")), Some(Placement::Waiting(_))));
    assert_eq!(plan.find(&key("nope")), None);
    let json = serde_json::to_string(&plan).unwrap();
    assert!(
        json.contains(r#""namespace":"openfaas-fn","name":"a""#),
        "{json}"
    );
    assert!(
        json.contains(r#""reason":"constraint-matches-no-board""#),
        "{json}"
    );
    assert!(json.contains(r#""reason":"memory""#), "{json}");
    let back: Plan = serde_json::from_str(&json).unwrap();
    assert_eq!(back, plan);
    assert_eq!(serde_json::from_str::<Plan>("{}").unwrap(), Plan::default());
}

#[test]
fn functions_come_from_deployments() {
    let deployment = FunctionDeployment {
        service: "button".into(),
        image: "ghcr.io/x/button:1".into(),
        constraints: vec!["node == pi1".into()],
        annotations: BTreeMap::from([("bramble.gpio".into(), "GPIO17:in".into())]),
        limits: Some(FunctionResources {
            memory: Some("128Mi".into()),
            cpu: None,
        }),
        ..FunctionDeployment::default()
    };
    let f = Function::from_deployment(
        key("button"),
        2,
        &deployment,
        Reading::grants_only(Some(MIB)),
        None,
    )
    .unwrap();
    assert_eq!(f.memory, 128 * MIB);
    assert_eq!(f.reservation(), 256 * MIB);
    assert_eq!(f.constraints[0].to_string(), "node=pi1");
    assert!(f.hardware.unwrap().gpio.contains_key("GPIO17"));
    let plain = FunctionDeployment {
        service: "p".into(),
        image: "p".into(),
        ..FunctionDeployment::default()
    };
    let f = Function::from_deployment(
        key("p"),
        0,
        &plain,
        Reading::grants_only(Some(64 * MIB)),
        None,
    )
    .unwrap();
    assert_eq!((f.memory, f.reservation()), (64 * MIB, 64 * MIB));
    assert!(f.hardware.is_none() && f.constraints.is_empty());
    let f =
        Function::from_deployment(key("p"), 0, &plain, Reading::grants_only(None), None).unwrap();
    assert_eq!(f.memory, 0);
    let bad = |d: FunctionDeployment| {
        Function::from_deployment(key("p"), 1, &d, Reading::grants_only(None), None)
            .unwrap_err()
            .to_string()
    };
    let e = bad(FunctionDeployment {
        constraints: vec!["garage".into()],
        ..plain.clone()
    });
    assert!(e.starts_with("constraint \"garage\""), "{e}");
    let e = bad(FunctionDeployment {
        annotations: BTreeMap::from([("bramble.gpio".into(), "GPIO17".into())]),
        ..plain.clone()
    });
    assert!(e.starts_with("annotation bramble.gpio"), "{e}");
    let e = bad(FunctionDeployment {
        limits: Some(FunctionResources {
            memory: Some("lots".into()),
            cpu: None,
        }),
        ..plain
    });
    assert!(e.starts_with("limits.memory: "), "{e}");
}

#[test]
fn boards_come_from_membership_records() {
    let info = BoardInfo {
        name: "zero".into(),
        address: std::net::IpAddr::from([10, 0, 0, 2]),
        arch: "armhf".into(),
        version: "0.1.0".into(),
        nats_version: "2.9.10".into(),
        memory: MemoryBudget {
            total: u64::MAX,
            used: 0,
        },
        functions: 0,
        hardware: HardwareSummary::default(),
        labels: BTreeMap::from([("zone".into(), "garage".into())]),
        started_at_ms: 0,
        jetstream: false,
        platform: String::new(),
        api_port: 8080,
        board_port: 7425,
        route_port: 7424,
        leaving: true,
        ready: Default::default(),
        outside: Default::default(),
    };
    let b = Board::from_info(&info, BoardState::Suspect);
    assert_eq!(b.arch, "arm");
    assert_eq!(b.platform.as_ref().unwrap().to_string(), "linux/arm/v7");
    assert_eq!(b.memory_budget, None);
    assert!(b.leaving && !b.keeps_work() && !b.takes_new_work());
    let b = Board::from_info(
        &BoardInfo {
            platform: "linux/arm64".into(),
            memory: MemoryBudget {
                total: 512 * MIB,
                used: 0,
            },
            leaving: false,
            ..info
        },
        BoardState::Suspect,
    );
    assert_eq!(b.platform.as_ref().unwrap().to_string(), "linux/arm64");
    assert_eq!(b.memory_budget, Some(512 * MIB));
    assert!(b.keeps_work() && !b.takes_new_work());
}

#[test]
fn memory_is_shown_in_mib_rounded_the_safe_way() {
    assert_eq!(plan::mib(256 * MIB, true), "256 MiB");
    assert_eq!(plan::mib(120 * MIB + 1, true), "121 MiB");
    assert_eq!(plan::mib(120 * MIB + 1, false), "120 MiB");
    assert_eq!(plan::mib(MIB / 2, true), "0.5 MiB");
    assert_eq!(plan::mib(1, true), "0.1 MiB");
    assert_eq!(plan::mib(1, false), "0.0 MiB");
}

/// A function imported from a board has its first replica there (it runs there already), even
/// when another board has more room; its other replicas spread as usual; a board it does not
/// fit or qualify for is not preferred.
#[test]
fn an_imported_function_goes_back_to_the_board_it_came_from() {
    let boards = || {
        vec![
            with_budget("b0", 1024),
            with_budget("b1", 1024),
            with_budget("b2", 256),
        ]
    };
    let imported = |name: &str, replicas, mib| Function {
        prefers: Some("b2".into()),
        ..func(name, replicas, mib)
    };
    let plan = placed(&input(boards(), vec![imported("f", 2, 64)]));
    assert_eq!(boards_of(&plan, "f"), counts(&[("b0", 1), ("b2", 1)]));
    let plan = placed(&input(boards(), vec![imported("f", 1, 64)]));
    assert_eq!(boards_of(&plan, "f"), counts(&[("b2", 1)]));
    // Too big for b2, or constrained elsewhere: placed as any function.
    let plan = placed(&input(boards(), vec![imported("big", 1, 512)]));
    assert_eq!(boards_of(&plan, "big"), counts(&[("b0", 1)]));
    let pinned = constrained(imported("pinned", 1, 64), &["node=b1"]);
    let plan = placed(&input(boards(), vec![pinned]));
    assert_eq!(boards_of(&plan, "pinned"), counts(&[("b1", 1)]));
    // From the deployment's annotation.
    let mut d = FunctionDeployment {
        service: "g".into(),
        image: "g:1".into(),
        ..FunctionDeployment::default()
    };
    d.annotations
        .insert(IMPORTED_FROM.to_owned(), "b2".to_owned());
    let f = Function::from_deployment(key("g"), 1, &d, Reading::grants_only(None), None).unwrap();
    assert_eq!(f.prefers.as_deref(), Some("b2"));
}

/// A board that runs a function of its own under a cluster function's name (outside the
/// cluster) is never given that function; when it is the only board the function may go to,
/// the function says so.
#[test]
fn a_board_holding_the_name_outside_the_cluster_is_not_given_the_function() {
    let holding = |name: &str| Board {
        outside: std::collections::BTreeSet::from([key("hello")]),
        ..board(name)
    };
    let plan = placed(&input(
        vec![holding("b0"), board("b1")],
        vec![func("hello", 2, 64), func("other", 2, 64)],
    ));
    assert_eq!(boards_of(&plan, "hello"), counts(&[("b1", 2)]));
    assert_eq!(boards_of(&plan, "other"), counts(&[("b0", 1), ("b1", 1)]));
    let pinned = constrained(func("hello", 1, 64), &["node=b0"]);
    let plan = placed(&input(vec![holding("b0"), board("b1")], vec![pinned]));
    assert_eq!(
        reason_of(&plan, "hello").to_string(),
        "the boards it may go to run a function of their own under that name, outside the cluster (b0)"
    );
}
