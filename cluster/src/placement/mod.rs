//! Placement: which boards run which replicas (issue 15, step 2b).
//!
//! [`place`] is pure and deterministic (no I/O, no clock): the placer (the lease holder) runs
//! it whenever boards or functions change and writes the [`Plan`] to KV as JSON; each board
//! runs what [`Plan::for_board`] gives it. [`admit`] tells the API at once whether a deploy,
//! update or scale can be placed, with the numbers, changing nothing.
//! [`parse_constraints`] checks a deployment's `constraints` (a 400 at deploy time).
//!
//! # Rules
//!
//! - **Qualifying boards** satisfy every constraint ([`constraints`]), run one of the image's
//!   platforms when they are known (an `arm64` board also runs `arm/v7` images, as containerd
//!   does; an `arm/v7` board never runs `arm64`), and have every GPIO line, I2C bus, SPI
//!   device, PWM channel and 1-Wire sensor the function is granted (`bramble.gpio`, …: two
//!   boards with a GPIO17 are both candidates unless a constraint names one). A board also
//!   never lends a line or PWM channel to two functions that may not share it
//!   ([`bramble_hardware::grants::check_conflicts`], as on a single board).
//! - **Memory**: each replica reserves the function's memory limit (or the node default); a
//!   function scaled to zero keeps a *home* board with one replica's memory reserved, so a
//!   request can wake it there. The reservations on a board never exceed its budget.
//! - **Liveness**: nothing new goes to a dead, suspect or leaving board; a suspect board
//!   keeps what it runs; a dead or leaving board keeps nothing (its replicas are placed
//!   elsewhere). A function whose qualifying boards are all dead or suspect *waits* for them
//!   ([`Plan::waiting`]) instead of being moved.
//! - **Spread**: a function's new replicas go to qualifying boards that have none of it yet,
//!   then to those with the fewest; among equals the board the function was imported from
//!   ([`IMPORTED_FROM`]: it runs there already), then the one with the most free memory (no
//!   budget counts as the most), then the least memory reserved, the fewest replicas, the
//!   first name.
//! - **Stability**: what is still valid in the previous plan is kept (a board that joins gets
//!   only new work); placing again with the result as previous changes nothing.
//! - Functions are placed in key order (namespace, name), every function's first replica (or
//!   home) before any function's second: when memory is short, functions already placed keep
//!   theirs, then the first keys get it. An unplaced function carries a typed [`UnplacedReason`] whose message names
//!   the cause, e.g. "needs 256 MiB; the most free on a qualifying board is 120 MiB (b2)".

pub mod constraints;
mod input;
mod placer;
mod plan;

pub use constraints::{Constraint, ConstraintError, parse_constraints};
pub use input::{
    Board, Function, FunctionError, FunctionKey, HardwareOf, IMPORTED_FROM, PlacementInput, Reading,
};
pub use placer::{Admitted, Refused, admit, place};
pub use plan::{BoardWork, FunctionPlan, Placement, Plan, Unplaced, UnplacedReason, Waiting};

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
