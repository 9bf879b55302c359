//! The placer's output: which boards run which replicas, and why a function is not placed.
//! Serialised as JSON into KV by the placer; read by every board.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::input::FunctionKey;
use crate::membership::BoardState;

/// Which boards run which replicas. Each list is sorted by key, as [`super::place`] makes it
/// ([`Plan::find`] searches them by bisection).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Functions placed (at least their home), by key.
    #[serde(default)]
    pub functions: Vec<FunctionPlan>,
    /// Functions placed nowhere, with the reason, by key.
    #[serde(default)]
    pub unplaced: Vec<Unplaced>,
    /// Functions whose only qualifying boards are down, by key.
    #[serde(default)]
    pub waiting: Vec<Waiting>,
}

/// Where one function runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionPlan {
    /// The function.
    #[serde(flatten)]
    pub key: FunctionKey,
    /// Replicas wanted (0: scaled to zero).
    pub replicas: u32,
    /// Replicas per board (empty when scaled to zero).
    pub boards: BTreeMap<String, u32>,
    /// The board that wakes it from zero (one of `boards` when it has replicas); one
    /// replica's memory stays reserved there when scaled to zero.
    pub home: String,
    /// Why fewer replicas than wanted are placed, if they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub short: Option<UnplacedReason>,
}

impl FunctionPlan {
    /// Replicas placed.
    pub fn placed(&self) -> u32 {
        self.boards
            .values()
            .fold(0, |sum, n| sum.saturating_add(*n))
    }
}

/// A function placed nowhere.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unplaced {
    /// The function.
    #[serde(flatten)]
    pub key: FunctionKey,
    /// Why.
    pub reason: UnplacedReason,
}

/// A function that waits for its boards to come back (pinned to them by hardware,
/// constraints or platform; nothing else qualifies).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    /// The function.
    #[serde(flatten)]
    pub key: FunctionKey,
    /// The boards it waits for, with their state.
    pub boards: BTreeMap<String, BoardState>,
}

/// Why a function (or some of its replicas) is not placed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum UnplacedReason {
    /// The cluster has no boards (none known yet).
    NoBoards,
    /// One constraint that no board of the cluster satisfies.
    ConstraintMatchesNoBoard {
        /// The constraint (normalised: `zone=attic`).
        constraint: String,
    },
    /// Each constraint is satisfied by some board, but no board satisfies them all.
    ConstraintsMatchNoBoard {
        /// The constraints.
        constraints: Vec<String>,
    },
    /// No board that satisfies the constraints runs the image's platforms.
    Platform {
        /// The image's platforms.
        image: Vec<String>,
        /// The boards that satisfy the constraints, with their platform (`unknown`).
        boards: BTreeMap<String, String>,
    },
    /// No board that satisfies the constraints and runs the image has all the hardware the
    /// function is granted.
    Hardware {
        /// Boards that satisfy the constraints and the platform, with what each lacks.
        lacking: BTreeMap<String, String>,
    },
    /// The boards it may go to run a function of their own under its name, outside the
    /// cluster (deployed before they joined).
    NameTaken {
        /// Those boards.
        boards: Vec<String>,
    },
    /// The qualifying boards are leaving the cluster.
    Leaving {
        /// Those boards.
        boards: Vec<String>,
    },
    /// Every qualifying board that takes work lends the same hardware to another function.
    HardwareTaken {
        /// Those boards, with the conflict.
        conflicts: BTreeMap<String, String>,
    },
    /// No qualifying board has room (for more) replicas.
    Memory {
        /// Bytes one replica reserves.
        needs: u64,
        /// Replicas placed (reservations, 1 for a function scaled to zero).
        placed: u32,
        /// Replicas wanted (reservations).
        wanted: u32,
        /// The qualifying board with the most free memory, and that much.
        most_free: Option<(String, u64)>,
    },
    /// The other qualifying boards are down: the missing replicas wait for them.
    Waiting {
        /// Those boards, with their state.
        boards: BTreeMap<String, BoardState>,
    },
}

/// `N MiB`, rounded down (free memory) or up (memory needed), with one decimal below 10 MiB.
pub(crate) fn mib(bytes: u64, up: bool) -> String {
    const MIB: u64 = 1 << 20;
    if bytes < 10 * MIB && !bytes.is_multiple_of(MIB) {
        let tenths = if up {
            bytes.saturating_mul(10).div_ceil(MIB)
        } else {
            bytes.saturating_mul(10) / MIB
        };
        return format!("{}.{} MiB", tenths / 10, tenths % 10);
    }
    let whole = if up { bytes.div_ceil(MIB) } else { bytes / MIB };
    format!("{whole} MiB")
}

fn list(items: impl IntoIterator<Item = String>) -> String {
    items.into_iter().collect::<Vec<_>>().join(", ")
}

fn states(boards: &BTreeMap<String, BoardState>) -> String {
    list(boards.iter().map(|(b, s)| {
        let state = match s {
            BoardState::Alive => "alive",
            BoardState::Suspect => "suspect",
            BoardState::Dead => "dead",
        };
        format!("{b} ({state})")
    }))
}

impl fmt::Display for UnplacedReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnplacedReason::NoBoards => f.write_str("the cluster has no boards yet"),
            UnplacedReason::ConstraintMatchesNoBoard { constraint } => {
                write!(f, "constraint {constraint} matches no board of the cluster")
            }
            UnplacedReason::ConstraintsMatchNoBoard { constraints } => write!(
                f,
                "no board satisfies all of the constraints {}",
                list(constraints.iter().cloned())
            ),
            UnplacedReason::Platform { image, boards } => write!(
                f,
                "the image is built for {} and no board it may go to runs that ({})",
                list(image.iter().cloned()),
                list(boards.iter().map(|(b, p)| format!("{b}: {p}")))
            ),
            UnplacedReason::Hardware { lacking } => write!(
                f,
                "no board has all the hardware it is granted ({})",
                list(lacking.iter().map(|(b, what)| format!("{b} has no {what}")))
            ),
            UnplacedReason::NameTaken { boards } => write!(
                f,
                "the boards it may go to run a function of their own under that name, outside the cluster ({})",
                list(boards.iter().cloned())
            ),
            UnplacedReason::Leaving { boards } => write!(
                f,
                "the only boards it may go to are leaving the cluster ({})",
                list(boards.iter().cloned())
            ),
            UnplacedReason::HardwareTaken { conflicts } => write!(
                f,
                "every board it may go to lends that hardware to another function ({})",
                list(conflicts.iter().map(|(b, why)| format!("{b}: {why}")))
            ),
            UnplacedReason::Memory {
                needs,
                placed,
                wanted,
                most_free,
            } => {
                if *placed == 0 {
                    write!(f, "needs {}", mib(*needs, true))?;
                } else {
                    write!(
                        f,
                        "{placed} of {wanted} replicas placed; one more needs {}",
                        mib(*needs, true)
                    )?;
                }
                match most_free {
                    Some((board, free)) => write!(
                        f,
                        "; the most free on a qualifying board is {} ({board})",
                        mib(*free, false)
                    ),
                    None => f.write_str("; no qualifying board takes new work"),
                }
            }
            UnplacedReason::Waiting { boards } => write!(
                f,
                "waiting for {}: no other board it may go to is up",
                states(boards)
            ),
        }
    }
}

impl fmt::Display for Waiting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is waiting for {}: no other board it may go to is up",
            self.key,
            states(&self.boards)
        )
    }
}

/// What a board must run of one function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoardWork {
    /// The function.
    pub key: FunctionKey,
    /// Replicas to run here (0: none now; it is the function's home, see `home`).
    pub replicas: u32,
    /// This board is the function's home: it wakes it from zero.
    pub home: bool,
}

/// Where one function stands in a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement<'a> {
    /// Placed (perhaps short of replicas: see [`FunctionPlan::short`]).
    Placed(&'a FunctionPlan),
    /// Placed nowhere.
    Unplaced(&'a UnplacedReason),
    /// Waiting for boards to come back.
    Waiting(&'a BTreeMap<String, BoardState>),
}

impl Plan {
    /// What `board` must run: every function with replicas there or whose home it is, by key.
    pub fn for_board(&self, board: &str) -> Vec<BoardWork> {
        self.functions
            .iter()
            .filter_map(|f| {
                let replicas = f.boards.get(board).copied().unwrap_or(0);
                let home = f.home == board;
                (replicas > 0 || home).then(|| BoardWork {
                    key: f.key.clone(),
                    replicas,
                    home,
                })
            })
            .collect()
    }

    /// Where `key` stands (`None`: not in the plan, e.g. deployed after it was made).
    pub fn find(&self, key: &FunctionKey) -> Option<Placement<'_>> {
        if let Ok(i) = self.functions.binary_search_by(|f| f.key.cmp(key)) {
            return Some(Placement::Placed(&self.functions[i]));
        }
        if let Ok(i) = self.unplaced.binary_search_by(|f| f.key.cmp(key)) {
            return Some(Placement::Unplaced(&self.unplaced[i].reason));
        }
        self.waiting
            .binary_search_by(|f| f.key.cmp(key))
            .ok()
            .map(|i| Placement::Waiting(&self.waiting[i].boards))
    }

    /// The plan entry of `key`, if it is placed.
    pub fn function(&self, key: &FunctionKey) -> Option<&FunctionPlan> {
        match self.find(key) {
            Some(Placement::Placed(p)) => Some(p),
            _ => None,
        }
    }
}
