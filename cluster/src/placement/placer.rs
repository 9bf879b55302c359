//! The placer: [`place`] and the admission check [`admit`].
//!
//! 1. **Keep** (functions by key): each function keeps its previous boards that still
//!    qualify (constraints, platform, hardware), are not dead or leaving (a suspect board
//!    keeps what it has), lend no hardware it needs to another function kept there, and have
//!    room; scaled down, replicas go first from the boards with the most, then from boards
//!    other than its home, suspect boards first.
//! 2. **Add** (functions by key; first every function's first replica or home, then the
//!    rest): the missing replicas go one at a time to the alive, qualifying board with room
//!    that has the fewest replicas of the function (spread first), then the most free memory
//!    (boards without a budget first), then the least memory reserved, the fewest
//!    reservations, the first name.
//! 3. **Explain**: from the final loads, why a function (or some of its replicas) is not
//!    placed, or which boards it waits for.
//!
//! A function scaled to zero is placed as one reservation: its home. Cost: O(functions ×
//! replicas × boards) for the spread, plus a grant-conflict check per function and board.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use bramble_hardware::grants::{Grants, check_conflicts};

use super::input::{Board, Function, FunctionKey, PlacementInput};
use super::plan::{FunctionPlan, Plan, Unplaced, UnplacedReason, Waiting};
use crate::membership::BoardState;

/// Places every function of `input` (pure and deterministic: the same input gives the same
/// plan; placing again with the result as `previous` gives the same plan).
pub fn place(input: &PlacementInput) -> Plan {
    let functions = unique_functions(input.functions.iter());
    run(&unique_boards(&input.boards), &functions, &input.previous)
}

/// The outcome of [`admit`] for a function that can be deployed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admitted {
    /// Placed; its entry in the plan the placer would make.
    Placed(FunctionPlan),
    /// Accepted, but its only qualifying boards are down: it waits for them.
    Waiting(Waiting),
}

/// A deploy, update or scale refused by [`admit`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key} cannot be placed: {reason}; nothing was changed")]
pub struct Refused {
    /// The function.
    pub key: FunctionKey,
    /// Why.
    pub reason: UnplacedReason,
}

/// Whether `function` (new, updated or rescaled) can be placed given `input` (the cluster's
/// boards and functions, `previous` the plan in force): what [`place`] would make of it with
/// `function` in place of its current version. Changes nothing.
///
/// Refused: a function that would be placed nowhere (with the reason and numbers); a new
/// function or a scale-up that would not get all its replicas; a change that would lose
/// replicas it has. Accepted: a function that waits for its boards (it says so).
pub fn admit(input: &PlacementInput, function: &Function) -> Result<Admitted, Refused> {
    let others = input.functions.iter().filter(|f| f.key != function.key);
    let functions = unique_functions(std::iter::once(function).chain(others));
    let plan = run(&unique_boards(&input.boards), &functions, &input.previous);
    let refuse = |reason: &UnplacedReason| Refused {
        key: function.key.clone(),
        reason: reason.clone(),
    };
    if let Some(waiting) = plan.waiting.iter().find(|w| w.key == function.key) {
        return Ok(Admitted::Waiting(waiting.clone()));
    }
    if let Some(unplaced) = plan.unplaced.iter().find(|u| u.key == function.key) {
        return Err(refuse(&unplaced.reason));
    }
    let Some(placed) = plan.functions.into_iter().find(|f| f.key == function.key) else {
        return Err(refuse(&UnplacedReason::NoBoards));
    };
    match &placed.short {
        None | Some(UnplacedReason::Waiting { .. }) => Ok(Admitted::Placed(placed)),
        Some(reason) => {
            let now = reservations(&placed);
            let asks_more = match input.previous.function(&function.key) {
                None => true,
                Some(before) => function.replicas > before.replicas || now < reservations(before),
            };
            if asks_more {
                Err(refuse(reason))
            } else {
                Ok(Admitted::Placed(placed))
            }
        }
    }
}

/// Replicas placed, counting a home as one.
fn reservations(plan: &FunctionPlan) -> u32 {
    if plan.replicas == 0 { 1 } else { plan.placed() }
}

fn unique_boards(boards: &[Board]) -> Vec<&Board> {
    let mut boards: Vec<&Board> = boards.iter().collect();
    boards.sort_by(|a, b| a.name.cmp(&b.name));
    boards.dedup_by(|a, b| a.name == b.name);
    boards
}

fn unique_functions<'a>(functions: impl Iterator<Item = &'a Function>) -> Vec<&'a Function> {
    let mut functions: Vec<&Function> = functions.collect();
    functions.sort_by(|a, b| a.key.cmp(&b.key));
    functions.dedup_by(|a, b| a.key == b.key);
    functions
}

/// Memory and hardware in use per board, as the placer fills them.
struct Loads<'a> {
    boards: &'a [&'a Board],
    used: Vec<u64>,
    /// Reservations (replicas, and homes of functions at zero) per board.
    replicas: Vec<u32>,
    /// The functions granted hardware on each board, by function index (key order, so that
    /// a conflict message names the same function whatever the order of placing).
    granted: Vec<BTreeMap<usize, (&'a str, &'a Grants)>>,
}

impl<'a> Loads<'a> {
    fn new(boards: &'a [&'a Board]) -> Self {
        Loads {
            boards,
            used: vec![0; boards.len()],
            replicas: vec![0; boards.len()],
            granted: vec![BTreeMap::new(); boards.len()],
        }
    }

    /// Free memory on board `b` (`u64::MAX` when it has no budget).
    fn free(&self, b: usize) -> u64 {
        self.boards[b]
            .memory_budget
            .map_or(u64::MAX, |total| total.saturating_sub(self.used[b]))
    }

    /// How many replicas of `memory` bytes fit on board `b`, up to `wanted`.
    fn fitting(&self, b: usize, memory: u64, wanted: u32) -> u32 {
        if memory == 0 || self.boards[b].memory_budget.is_none() {
            return wanted;
        }
        let fit = self.free(b) / memory;
        u32::try_from(fit).unwrap_or(u32::MAX).min(wanted)
    }

    /// Why board `b` cannot lend `grants` to `function`, if it cannot.
    fn conflict(&self, b: usize, function: &str, grants: Option<&Grants>) -> Option<String> {
        let grants = grants?;
        check_conflicts(function, grants, self.granted[b].values().copied()).err()
    }

    fn add(&mut self, b: usize, function: &Slot<'a>, replicas: u32) {
        self.used[b] =
            self.used[b].saturating_add(function.f.memory.saturating_mul(u64::from(replicas)));
        self.replicas[b] = self.replicas[b].saturating_add(replicas);
        if let Some(grants) = &function.f.hardware {
            self.granted[b].insert(function.index, (function.label, grants));
        }
    }
}

/// One function while it is placed.
struct Slot<'a> {
    f: &'a Function,
    /// Its place in key order.
    index: usize,
    /// `name.namespace`, the name grant conflicts use.
    label: &'a str,
    /// Per board (by index): constraints, platform and hardware allow it.
    qualifies: Vec<bool>,
    /// Reservations per board index.
    counts: BTreeMap<usize, u32>,
    /// Reservations wanted: the replicas, or 1 (its home) when scaled to zero.
    target: u32,
}

impl Slot<'_> {
    fn total(&self) -> u32 {
        self.counts.values().sum()
    }
}

fn run(boards: &[&Board], functions: &[&Function], previous: &Plan) -> Plan {
    let index: BTreeMap<&str, usize> = boards
        .iter()
        .enumerate()
        .map(|(i, b)| (b.name.as_str(), i))
        .collect();
    let before: BTreeMap<&FunctionKey, &FunctionPlan> =
        previous.functions.iter().map(|p| (&p.key, p)).collect();
    let labels: Vec<String> = functions.iter().map(|f| f.key.to_string()).collect();
    let mut slots: Vec<Slot<'_>> = functions
        .iter()
        .zip(&labels)
        .enumerate()
        .map(|(index, (f, label))| Slot {
            index,
            f,
            label,
            qualifies: boards.iter().map(|b| f.fits_board(b)).collect(),
            counts: BTreeMap::new(),
            target: f.replicas.max(1),
        })
        .collect();
    let mut loads = Loads::new(boards);
    for slot in &mut slots {
        if let Some(prev) = before.get(&slot.f.key) {
            keep(slot, prev, &index, &mut loads);
        }
    }
    // Every function its first reservation before any its second.
    for slot in &mut slots {
        add(slot, 1, &mut loads);
    }
    for slot in &mut slots {
        let target = slot.target;
        add(slot, target, &mut loads);
    }
    let mut plan = Plan::default();
    for slot in &slots {
        let total = slot.total();
        if total == 0 {
            match explain(slot, &loads, 0) {
                UnplacedReason::Waiting { boards } => plan.waiting.push(Waiting {
                    key: slot.f.key.clone(),
                    boards,
                }),
                reason => plan.unplaced.push(Unplaced {
                    key: slot.f.key.clone(),
                    reason,
                }),
            }
            continue;
        }
        let previous_home = before
            .get(&slot.f.key)
            .and_then(|p| index.get(p.home.as_str()))
            .filter(|b| slot.counts.contains_key(b));
        let home = previous_home.copied().or_else(|| {
            slot.counts
                .iter()
                .max_by_key(|(b, n)| (**n, Reverse(**b)))
                .map(|(b, _)| *b)
        });
        let Some(home) = home else { continue };
        plan.functions.push(FunctionPlan {
            key: slot.f.key.clone(),
            replicas: slot.f.replicas,
            boards: if slot.f.replicas == 0 {
                BTreeMap::new()
            } else {
                slot.counts
                    .iter()
                    .map(|(b, n)| (boards[*b].name.clone(), *n))
                    .collect()
            },
            home: boards[home].name.clone(),
            short: (total < slot.target).then(|| explain(slot, &loads, total)),
        });
    }
    plan
}

/// Keeps what is still valid of a function's previous placement.
fn keep<'a>(
    slot: &mut Slot<'a>,
    prev: &FunctionPlan,
    index: &BTreeMap<&str, usize>,
    loads: &mut Loads<'a>,
) {
    let home = index.get(prev.home.as_str()).copied();
    let mut counts: BTreeMap<usize, u32> = if prev.replicas == 0 {
        home.into_iter().map(|b| (b, 1)).collect()
    } else {
        prev.boards
            .iter()
            .filter(|(_, n)| **n > 0)
            .filter_map(|(name, n)| {
                index
                    .get(name.as_str())
                    .map(|b| (*b, (*n).min(slot.target)))
            })
            .collect()
    };
    let grants = slot.f.hardware.as_ref();
    counts.retain(|b, _| {
        loads.boards[*b].keeps_work()
            && slot.qualifies[*b]
            && loads.conflict(*b, slot.label, grants).is_none()
    });
    let mut total: u32 = counts.values().sum();
    while total > slot.target {
        let victim = counts
            .iter()
            .max_by_key(|(b, n)| {
                (
                    **n,
                    Some(**b) != home,
                    loads.boards[**b].state == BoardState::Suspect,
                    **b,
                )
            })
            .map(|(b, _)| *b);
        let Some(victim) = victim else { break };
        if let Some(n) = counts.get_mut(&victim) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&victim);
            }
        }
        total -= 1;
    }
    for (b, n) in counts {
        let kept = loads.fitting(b, slot.f.memory, n);
        if kept > 0 {
            loads.add(b, slot, kept);
            slot.counts.insert(b, kept);
        }
    }
}

/// Places a function's missing replicas, up to `upto`: spread first, then the board it was
/// imported from, the most free memory, the least reserved, the fewest reservations, the first
/// name.
fn add<'a>(slot: &mut Slot<'a>, upto: u32, loads: &mut Loads<'a>) {
    let upto = upto.min(slot.target);
    let mut total = slot.total();
    if total >= upto {
        return;
    }
    let grants = slot.f.hardware.as_ref();
    let candidates: Vec<usize> = (0..loads.boards.len())
        .filter(|b| {
            loads.boards[*b].takes_new_work()
                && slot.qualifies[*b]
                && loads.conflict(*b, slot.label, grants).is_none()
        })
        .collect();
    while total < upto {
        let best = candidates
            .iter()
            .copied()
            .filter(|b| loads.fitting(*b, slot.f.memory, 1) == 1)
            .min_by_key(|b| {
                (
                    slot.counts.get(b).copied().unwrap_or(0),
                    slot.f.prefers.as_deref() != Some(loads.boards[*b].name.as_str()),
                    Reverse(loads.free(*b)),
                    loads.used[*b],
                    loads.replicas[*b],
                    *b,
                )
            });
        let Some(b) = best else { break };
        loads.add(b, slot, 1);
        *slot.counts.entry(b).or_insert(0) += 1;
        total += 1;
    }
}

/// Why no (further) replica of a function can be placed, from the final loads.
fn explain(slot: &Slot<'_>, loads: &Loads<'_>, placed: u32) -> UnplacedReason {
    let boards = loads.boards;
    if boards.is_empty() {
        return UnplacedReason::NoBoards;
    }
    let qualifying: Vec<usize> = (0..boards.len()).filter(|b| slot.qualifies[*b]).collect();
    if qualifying.is_empty() {
        return unqualified(slot.f, boards);
    }
    let up: Vec<usize> = qualifying
        .iter()
        .copied()
        .filter(|b| boards[*b].takes_new_work())
        .collect();
    if up.is_empty() {
        let down: BTreeMap<String, BoardState> = qualifying
            .iter()
            .map(|b| boards[*b])
            .filter(|b| !b.leaving)
            .map(|b| (b.name.clone(), b.state))
            .collect();
        if down.is_empty() {
            return UnplacedReason::Leaving {
                boards: qualifying.iter().map(|b| boards[*b].name.clone()).collect(),
            };
        }
        return UnplacedReason::Waiting { boards: down };
    }
    let grants = slot.f.hardware.as_ref();
    let mut conflicts = BTreeMap::new();
    let mut free: Option<(usize, u64)> = None;
    for b in up {
        if let Some(why) = loads.conflict(b, slot.label, grants) {
            conflicts.insert(boards[b].name.clone(), why);
        } else if free.is_none_or(|(_, most)| loads.free(b) > most) {
            free = Some((b, loads.free(b)));
        }
    }
    match free {
        None => UnplacedReason::HardwareTaken { conflicts },
        Some((b, bytes)) => UnplacedReason::Memory {
            needs: slot.f.memory,
            placed,
            wanted: slot.target,
            most_free: Some((boards[b].name.clone(), bytes)),
        },
    }
}

/// Why no board qualifies at all: the first constraint no board satisfies, the constraints
/// together, the platform, the hardware, or a function of the board's own under its name.
fn unqualified(f: &Function, boards: &[&Board]) -> UnplacedReason {
    if let Some(c) = f
        .constraints
        .iter()
        .find(|c| !boards.iter().any(|b| c.matches(b)))
    {
        return UnplacedReason::ConstraintMatchesNoBoard {
            constraint: c.to_string(),
        };
    }
    let matching: Vec<&Board> = boards
        .iter()
        .copied()
        .filter(|b| f.constraints.iter().all(|c| c.matches(b)))
        .collect();
    if matching.is_empty() {
        return UnplacedReason::ConstraintsMatchNoBoard {
            constraints: f.constraints.iter().map(ToString::to_string).collect(),
        };
    }
    let running: Vec<&Board> = matching
        .iter()
        .copied()
        .filter(|b| b.runs(f.platforms.as_deref()))
        .collect();
    if running.is_empty() {
        return UnplacedReason::Platform {
            image: f
                .platforms
                .iter()
                .flatten()
                .map(ToString::to_string)
                .collect(),
            boards: matching
                .iter()
                .map(|b| {
                    let platform = b
                        .platform
                        .as_ref()
                        .map_or_else(|| "unknown".to_owned(), ToString::to_string);
                    (b.name.clone(), platform)
                })
                .collect(),
        };
    }
    let lacking: BTreeMap<String, String> = running
        .iter()
        .filter_map(|b| {
            let lacks = f.hardware.as_ref().and_then(|g| b.lacks(g))?;
            Some((b.name.clone(), lacks))
        })
        .collect();
    if lacking.is_empty() {
        return UnplacedReason::NameTaken {
            boards: running
                .iter()
                .filter(|b| b.outside.contains(&f.key))
                .map(|b| b.name.clone())
                .collect(),
        };
    }
    UnplacedReason::Hardware { lacking }
}
